//! The normalised view content rules match: what a reader (a model, a browser, a person) takes
//! the text to say, with the tricks that hide a word from a regex taken out.
//!
//! One pass over a string, char by char, keeping for every char of the view the byte range of
//! the original it came from, so a match in the view redacts the right bytes of the stored
//! original. The view is never stored or served.
//!
//! In order, per original char:
//! 1. HTML character references (`&#106;`, `&#x6A`, `&colon;`, `&Tab;` …) and `%XX` escapes of
//!    letters, digits and `:` are decoded once, as a browser decodes an attribute or a URL.
//! 2. Compatibility decomposition (the K of NFKC: fullwidth, mathematical alphanumerics,
//!    ligatures, NBSP → plain forms), without recomposition: a composed `á` would hide the `a`
//!    that an `a` + U+0301 attacker relies on.
//! 3. Combining marks, format characters (Cf: zero-width, soft hyphen, bidi controls, tag
//!    characters), default-ignorable code points and control characters are dropped.
//! 4. Whatever is still not ASCII is replaced by its UTS #39 confusables prototype
//!    (`unicode_security::skeleton`): Cyrillic `а` reads as `a`. ASCII is left as it is, because
//!    the skeleton of ASCII itself folds `0`→`O`, `1`→`l` and `m`→`rn`, which no pattern expects.
//! 5. Each run of white space becomes one `\n` if it holds a line break, else one space.
//!
//! Case is not folded here: case-insensitive rules say `(?i)`, and the regex engine folds.

use unicode_general_category::{GeneralCategory, get_general_category};

/// One char of the view: where it sits in the view and the original bytes it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Byte offset of the char in the view text.
    pub at: u32,
    /// Original byte range (start inclusive, end exclusive), on char boundaries.
    pub start: u32,
    /// End of the original byte range (exclusive).
    pub end: u32,
}

/// A normalised string and its map back to the original.
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    /// The normalised text.
    pub text: String,
    /// One unit per char of `text`, in order; original ranges never go backwards.
    pub units: Vec<Unit>,
}

impl Normalized {
    /// The original byte range a view byte range `[from, to)` came from, or `None` if it covers
    /// no char of the view.
    pub fn original_span(&self, from: usize, to: usize) -> Option<(usize, usize)> {
        let lo = self.units.partition_point(|u| (u.at as usize) < from);
        let hi = self.units.partition_point(|u| (u.at as usize) < to);
        let units = self.units.get(lo..hi)?;
        let start = units.iter().map(|u| u.start).min()?;
        let end = units.iter().map(|u| u.end).max()?;
        Some((start as usize, end as usize))
    }
}

/// Normalises `s` in one pass, with the map back. See the module doc for what the view keeps.
pub fn normalize(s: &str) -> Normalized {
    run(s, true)
}

/// The view text alone, without the map: what a clean write costs.
pub fn normalize_text(s: &str) -> String {
    run(s, false).text
}

fn run(s: &str, mapped: bool) -> Normalized {
    let mut out = Builder {
        norm: Normalized {
            text: String::with_capacity(s.len()),
            units: Vec::with_capacity(if mapped { s.len() } else { 0 }),
        },
        mapped,
        space: None,
        last_was_char: false,
    };
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < s.len() {
        // Printable ASCII other than `&` and `%` is its own view: copied a run at a time.
        let plain = bytes[i..]
            .iter()
            .take_while(|&&b| b.is_ascii_graphic() && b != b'&' && b != b'%')
            .count();
        if plain > 0 {
            out.flush_space();
            out.norm.text.push_str(&s[i..i + plain]);
            if mapped {
                let at = out.norm.text.len() - plain;
                out.norm.units.extend((0..plain).map(|k| Unit {
                    at: (at + k) as u32,
                    start: (i + k) as u32,
                    end: (i + k + 1) as u32,
                }));
            }
            out.last_was_char = true;
            i += plain;
            continue;
        }
        let (c, len) = match bytes[i] {
            b'&' => entity(&s[i..]),
            b'%' => percent(&bytes[i..]),
            _ => None,
        }
        .unwrap_or_else(|| {
            let c = s[i..].chars().next().unwrap_or('\u{FFFD}');
            (c, c.len_utf8())
        });
        out.push(c, i, i + len);
        i += len;
    }
    out.flush_space();
    out.norm
}

struct Builder {
    norm: Normalized,
    mapped: bool,
    /// A white-space run not yet written: original range and whether it holds a line break.
    space: Option<(usize, usize, bool)>,
    /// Whether the last thing written was a char (not white space), which absorbs dropped chars.
    last_was_char: bool,
}

impl Builder {
    fn push(&mut self, c: char, start: usize, end: usize) {
        if c.is_ascii() && !c.is_ascii_control() {
            if c == ' ' {
                self.space(start, end, false);
            } else {
                self.emit(c, start, end);
            }
            return;
        }
        if c.is_whitespace() {
            self.space(start, end, is_line_break(c));
            return;
        }
        let mut kept = false;
        unicode_normalization::char::decompose_compatible(c, |d| {
            if d.is_whitespace() {
                self.space(start, end, is_line_break(d));
                kept = true;
            } else if dropped(d) {
            } else if d.is_ascii() {
                self.emit(d, start, end);
                kept = true;
            } else {
                let upper = d.is_uppercase();
                for p in unicode_security::skeleton(d.encode_utf8(&mut [0; 4])) {
                    if dropped(p) {
                        continue;
                    }
                    // The prototype of I-like capitals (Greek Ι, Cyrillic І) is `l`; read as `I`.
                    let p = if p == 'l' && upper { 'I' } else { p };
                    self.emit(p, start, end);
                    kept = true;
                }
            }
        });
        if !kept && self.last_was_char {
            // A dropped char inside or right after a word belongs to it: redacting the word
            // takes the zero-width joiner or combining mark with it.
            if let Some(u) = self.norm.units.last_mut() {
                u.end = end as u32;
            }
        }
    }

    fn space(&mut self, start: usize, end: usize, line_break: bool) {
        self.last_was_char = false;
        self.space = Some(match self.space {
            Some((s, _, b)) => (s, end, b || line_break),
            None => (start, end, line_break),
        });
    }

    fn flush_space(&mut self) {
        if let Some((s, e, line_break)) = self.space.take() {
            self.write(if line_break { '\n' } else { ' ' }, s, e);
        }
    }

    fn emit(&mut self, c: char, start: usize, end: usize) {
        self.flush_space();
        self.write(c, start, end);
        self.last_was_char = true;
    }

    fn write(&mut self, c: char, start: usize, end: usize) {
        if self.mapped {
            self.norm.units.push(Unit {
                at: self.norm.text.len() as u32,
                start: start as u32,
                end: end as u32,
            });
        }
        self.norm.text.push(c);
    }
}

fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// Invisible or attaching chars: combining marks, format and control characters, and the
/// default-ignorable code points (whose UTS #39 skeleton is empty: Hangul fillers, variation
/// selectors …).
fn dropped(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::NonspacingMark
            | GeneralCategory::EnclosingMark
            | GeneralCategory::SpacingMark
            | GeneralCategory::Format
            | GeneralCategory::Control
    ) || unicode_security::skeleton(c.encode_utf8(&mut [0; 4]))
        .next()
        .is_none()
}

/// An HTML character reference at the start of `s`: the char and the bytes it takes.
/// Numeric references need no `;` (browsers accept `&#106avascript:`); named ones do.
fn entity(s: &str) -> Option<(char, usize)> {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'#') {
        let hex = matches!(b.get(2), Some(b'x' | b'X'));
        let digits_at = if hex { 3 } else { 2 };
        let radix = if hex { 16 } else { 10 };
        let n = b[digits_at..]
            .iter()
            .take_while(|d| (d.is_ascii_hexdigit() && hex) || d.is_ascii_digit())
            .count();
        if n == 0 {
            return None;
        }
        let digits = &s[digits_at..digits_at + n];
        let value = u32::from_str_radix(digits.trim_start_matches('0'), radix)
            .ok()
            .or_else(|| digits.bytes().all(|d| d == b'0').then_some(0));
        // Out of range, zero or a surrogate reads as U+FFFD, as in a browser.
        let c = value.and_then(char::from_u32).unwrap_or('\u{FFFD}');
        let mut len = digits_at + n;
        if b.get(len) == Some(&b';') {
            len += 1;
        }
        return Some((c, len));
    }
    let n = b[1..]
        .iter()
        .take(10)
        .take_while(|d| d.is_ascii_alphabetic())
        .count();
    if b.get(1 + n) != Some(&b';') {
        return None;
    }
    let c = match &s[1..1 + n] {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "colon" => ':',
        "semi" => ';',
        "Tab" => '\t',
        "NewLine" => '\n',
        "nbsp" => '\u{A0}',
        "sol" => '/',
        "bsol" => '\\',
        "lpar" => '(',
        "rpar" => ')',
        "equals" => '=',
        "period" => '.',
        "comma" => ',',
        "excl" => '!',
        "num" => '#',
        "percnt" => '%',
        "plus" => '+',
        "lsqb" | "lbrack" => '[',
        "rsqb" | "rbrack" => ']',
        "lcub" | "lbrace" => '{',
        "rcub" | "rbrace" => '}',
        "grave" => '`',
        "commat" => '@',
        "dollar" => '$',
        "ast" => '*',
        "hyphen" | "dash" => '-',
        _ => return None,
    };
    Some((c, n + 2))
}

/// A `%XX` escape of a letter, digit or `:` (`javascript%3A`, `%6Aavascript`). Other escapes
/// stay as they are: decoding `%40` to `@` would move where a URL's userinfo ends.
fn percent(b: &[u8]) -> Option<(char, usize)> {
    let hex = std::str::from_utf8(b.get(1..3)?).ok()?;
    let c = u8::from_str_radix(hex, 16).ok()? as char;
    (c.is_ascii_alphanumeric() || c == ':').then_some((c, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &str) -> String {
        normalize(s).text
    }

    #[test]
    fn evasions_collapse_to_the_plain_word() {
        for s in [
            "pass\u{200B}word",
            "pass\u{AD}word",
            "pass\u{202E}word\u{202C}",
            "ｐａｓｓｗｏｒｄ",
            "𝐩𝐚𝐬𝐬𝐰𝐨𝐫𝐝",
            "pa\u{301}ssword",
            "p\u{430}ssword",
            "pаsswоrd",
            "pass\u{E0041}word",
            "pass\u{3164}word",
            "pass\u{FE0F}word",
            "pass&#x77;ord",
            "pass&#0000119ord",
            "pass%77ord",
        ] {
            assert_eq!(view(s), "password", "{s:?}");
        }
        assert_eq!(view("Ιgnore"), "Ignore", "Greek capital iota");
        assert_eq!(view("a\u{A0}\u{2003} b\r\n\t c"), "a b\nc");
        assert_eq!(view("jav&#x61;script&colon;"), "javascript:");
        assert_eq!(view("java&Tab;script"), "java script");
        assert_eq!(view("AKIA0l1m"), "AKIA0l1m", "ASCII is never skeletonised");
        assert_eq!(view("50%40 &unknown; &"), "50%40 &unknown; &");
    }

    #[test]
    fn every_view_char_maps_back_to_original_bytes() {
        let s = "x\u{200B}y &#106; ｐ\u{301}\u{301}\r\n z%3A";
        let n = normalize(s);
        assert_eq!(n.text, "xy j p\nz:");
        assert_eq!(n.units.len(), n.text.chars().count());
        assert_eq!(normalize_text(s), n.text);
        for (u, (at, _)) in n.units.iter().zip(n.text.char_indices()) {
            assert_eq!(u.at as usize, at);
            assert!(s.is_char_boundary(u.start as usize) && s.is_char_boundary(u.end as usize));
        }
        // "xy" stands for "x\u{200B}y"; the zero-width space goes with the x.
        assert_eq!(n.original_span(0, 2), Some((0, "x\u{200B}y".len())));
        let j = n.text.find('j').unwrap();
        assert_eq!(
            &s[n.original_span(j, j + 1).unwrap().0..n.original_span(j, j + 1).unwrap().1],
            "&#106;"
        );
        let p = n.text.find('p').unwrap();
        let (a, b) = n.original_span(p, p + 1).unwrap();
        assert_eq!(&s[a..b], "ｐ\u{301}\u{301}", "marks go with their base");
        assert_eq!(n.original_span(3, 3), None);
    }
}
