//! The ranking rules of search, the same on every backend: entries holding every word first,
//! newest first; then, while there is room, entries holding some of the words, scored by the
//! words they hold, drawn from a bounded window of the newest such matches inside the caller's
//! scope. Only rows inside the scope are ever counted, so nothing outside it moves the window,
//! the weights, or the order a caller sees.

use std::collections::{HashMap, HashSet};

use super::backend::Match;
use super::model::{Hit, Hits, Matched};
use super::rows::{Checked, withheld_log};
use crate::store::model::Entry;

/// How many of its newest matches the some-words group of a search ranks. Ranking reads which
/// words each candidate holds, so without a bound a query on a common word costs time linear in
/// the store; the bound keeps search flat from a thousand entries to millions, at the price of
/// not reaching some-words matches older than the window (entries holding every word are
/// reached at any age). The window counts matches inside the caller's scope only (namespaces,
/// tags, times), so what other namespaces hold never moves it.
pub const SEARCH_WINDOW: usize = 500;

/// Rows best first, given for each query word the rows (by key) of the window that hold it:
/// each row scores the sum of the weights of its words, a word weighing more the fewer rows of
/// the window hold it (bm25's inverse document frequency, counted in the window rather than the
/// whole store); newest (highest key) first among equal scores.
pub fn by_word_weight(rows_by_word: &[Vec<i64>]) -> Vec<i64> {
    let mut held: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, rows) in rows_by_word.iter().enumerate() {
        for &row in rows {
            held.entry(row).or_default().push(i);
        }
    }
    let n = held.len() as f64;
    let weight: Vec<f64> = rows_by_word
        .iter()
        .map(|rows| {
            let c = rows.len() as f64;
            ((n - c + 0.5) / (c + 0.5) + 1.0).ln()
        })
        .collect();
    let mut scored: Vec<(f64, i64)> = held
        .into_iter()
        .map(|(row, words)| (words.iter().map(|&i| weight[i]).sum(), row))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    scored.into_iter().map(|(_, row)| row).collect()
}

/// Builds the results of a search, one group at a time: hits up to `limit` served, rows that
/// fail verification counted as withheld, and no row answered twice.
#[derive(Debug, Default)]
pub struct Collector {
    hits: Hits,
    seen: HashSet<i64>,
    limit: usize,
    words: Vec<String>,
}

impl Collector {
    /// An empty result of at most `limit` hits for `query` (whose words its snippets mark).
    pub fn new(limit: usize, query: &super::Query) -> Self {
        Self {
            limit,
            words: query.words().to_vec(),
            ..Self::default()
        }
    }

    /// How many more hits fit.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.hits.hits.len())
    }

    /// Keys of the rows already answered (served or withheld).
    pub fn seen(&self) -> &HashSet<i64> {
        &self.seen
    }

    /// Adds one group's matches, in order, each checked by `verify`.
    pub fn add(
        &mut self,
        matches: Vec<Match>,
        matched: Matched,
        verify: &mut dyn FnMut(Checked<super::rows::RawRow>) -> Checked<Entry>,
    ) {
        for m in matches {
            if self.room() == 0 {
                break;
            }
            if !self.seen.insert(m.key) {
                continue;
            }
            match verify(m.row) {
                Ok(entry) => self.hits.hits.push(Hit {
                    snippet: super::snippet::cut(&entry.content, &self.words),
                    entry,
                    matched,
                }),
                Err(id) => {
                    withheld_log(&id);
                    self.hits.withheld += 1;
                    self.hits.withheld_ids.push(id);
                }
            }
        }
    }

    /// The results.
    pub fn finish(self) -> Hits {
        self.hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarer_words_weigh_more_and_newer_wins_ties() {
        // Word 0 in rows 1..=4, word 1 only in row 2: row 2 holds both and comes first; then
        // the rows holding only the common word, newest first.
        let order = by_word_weight(&[vec![4, 3, 2, 1], vec![2]]);
        assert_eq!(order, vec![2, 4, 3, 1]);
        // A rare word alone beats a common one alone.
        let order = by_word_weight(&[vec![5, 4, 3], vec![1]]);
        assert_eq!(order[0], 1);
        assert!(by_word_weight(&[]).is_empty());
    }
}
