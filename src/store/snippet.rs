//! Snippets: up to [`WORDS`] words of a memory around the query's matches, with the matched
//! words marked «like this». Cut in Rust from the verified content, after the row is read, so
//! every backend and every index gives the same snippet for the same row and query, and a
//! snippet costs no index lookup (with a cold page cache, FTS5's `snippet()` read each word's
//! doclist again for every row returned).
//!
//! A query word matches where its words (split and folded like the index's, see
//! [`super::words`]) occur in a row, in order and adjacent, as the index's phrase match does.

use super::words::{fold, spans};

/// The most words a snippet shows.
pub const WORDS: usize = 16;

/// The snippet of `content` for a query of `query` words.
pub fn cut(content: &str, query: &[String]) -> String {
    let spans: Vec<(usize, &str)> = spans(content).collect();
    if spans.is_empty() {
        return String::new();
    }
    let folded: Vec<String> = spans.iter().map(|(_, w)| fold(w)).collect();
    let phrases: Vec<Vec<String>> = query
        .iter()
        .map(|q| super::words::words(q).map(fold).collect::<Vec<_>>())
        .filter(|p| !p.is_empty())
        .collect();
    let mut hits: Vec<Hit> = Vec::new();
    for at in 0..folded.len() {
        for (phrase, words) in phrases.iter().enumerate() {
            if folded[at..].starts_with(words) {
                hits.push(Hit {
                    at,
                    len: words.len(),
                    phrase,
                });
            }
        }
    }
    let (start, end) = window(spans.len(), &hits);
    render(content, &spans, &marked_runs(&hits), start, end)
}

/// One occurrence of a query word: `len` words from word `at`.
#[derive(Debug, Clone, Copy)]
struct Hit {
    at: usize,
    len: usize,
    phrase: usize,
}

/// The words shown, `start..end`: all of them when they fit, else the [`WORDS`]-word window
/// holding the most different query words (then the most occurrences), starting two words
/// before an occurrence; the earliest such window on ties.
fn window(n: usize, hits: &[Hit]) -> (usize, usize) {
    if n <= WORDS {
        return (0, n);
    }
    let last_start = n - WORDS;
    let mut best = (0, (0, 0));
    let starts = std::iter::once(0).chain(hits.iter().map(|h| h.at.saturating_sub(2)));
    for start in starts.map(|s| s.min(last_start)) {
        let inside: Vec<&Hit> = hits
            .iter()
            .filter(|h| h.at >= start && h.at + h.len <= start + WORDS)
            .collect();
        let mut phrases: Vec<usize> = inside.iter().map(|h| h.phrase).collect();
        phrases.sort_unstable();
        phrases.dedup();
        let score = (phrases.len(), inside.len());
        if score > best.1 || (score == best.1 && start < best.0) {
            best = (start, score);
        }
    }
    (best.0, best.0 + WORDS)
}

/// The word ranges to mark: occurrences, overlapping ones merged.
fn marked_runs(hits: &[Hit]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = hits.iter().map(|h| (h.at, h.at + h.len)).collect();
    runs.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(runs.len());
    for (from, to) in runs {
        match merged.last_mut() {
            Some(last) if from < last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

/// The text of words `start..end`, the text between them kept, marks around `runs` (cut at
/// the window's edges), `…` where text is left out.
fn render(
    content: &str,
    spans: &[(usize, &str)],
    runs: &[(usize, usize)],
    start: usize,
    end: usize,
) -> String {
    let run_of = |i: usize| runs.iter().position(|&(from, to)| from <= i && i < to);
    let mut out = String::new();
    let mut pos = if start == 0 {
        0
    } else {
        out.push('…');
        spans[start].0
    };
    for (i, &(at, word)) in spans.iter().enumerate().take(end).skip(start) {
        out.push_str(&content[pos..at]);
        let run = run_of(i);
        if run.is_some() && (i == start || run_of(i - 1) != run) {
            out.push('«');
        }
        out.push_str(word);
        if run.is_some() && (i + 1 == end || run_of(i + 1) != run) {
            out.push('»');
        }
        pos = at + word.len();
    }
    if end == spans.len() {
        out.push_str(&content[pos..]);
    } else {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn short_content_is_whole_with_marks() {
        assert_eq!(
            cut("Deploy the API server tonight.", &q(&["deploy", "SERVER"])),
            "«Deploy» the API «server» tonight."
        );
        assert_eq!(
            cut("notes: the café-bar rollout", &q(&["cafe-bar"])),
            "notes: the «café-bar» rollout"
        );
        assert_eq!(cut("nothing here", &q(&["absent"])), "nothing here");
        assert_eq!(cut("!!!", &q(&["x"])), "");
        // A word without letters or digits marks nothing.
        assert_eq!(cut("a * b", &q(&["*"])), "a * b");
    }

    #[test]
    fn long_content_shows_the_window_with_most_words() {
        let text: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let text = text.join(" ");
        let s = cut(&text, &q(&["w50", "w55", "w90"]));
        assert_eq!(
            s,
            "…w48 w49 «w50» w51 w52 w53 w54 «w55» w56 w57 w58 w59 w60 w61 w62 w63…"
        );
        // No match in the text (a tag matched): its start.
        let s = cut(&text, &q(&["zzz"]));
        assert!(s.starts_with("w0 w1 ") && s.ends_with("w15…"), "{s}");
        // The end of the text: no trailing mark, the rest kept.
        let s = cut(&format!("{text}!"), &q(&["w99"]));
        assert!(s.ends_with("«w99»!") && s.starts_with("…w84 "), "{s}");
    }

    #[test]
    fn phrases_mark_as_one_and_must_be_adjacent() {
        assert_eq!(
            cut("foo-bar and bar foo", &q(&["foo-bar"])),
            "«foo-bar» and bar foo"
        );
        assert_eq!(cut("foo x bar", &q(&["foo-bar"])), "foo x bar");
        // Overlapping occurrences merge.
        assert_eq!(cut("a b c", &q(&["a-b", "b-c"])), "«a b c»");
    }
}
