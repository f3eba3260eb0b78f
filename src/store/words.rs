//! Words of a memory for its snippet ([`super::snippet`]), split by the rules of SQLite's
//! `unicode61` tokenizer: a word starts with a letter, digit or private-use character (Unicode
//! categories L*, N*, Co; unassigned characters too, as `unicode61` counts them) and goes on over
//! those and over the combining diacritics `unicode61` keeps inside a word (a fixed set in
//! U+0300–U+0331); anything else separates. `unicode61`'s tables are an older Unicode than
//! Rust's, so a character assigned since (a new symbol, an extended combining mark) may split
//! differently here: that changes which words a snippet marks, never which rows a search
//! finds. Index terms are split by SQLite itself (`sqlite::terms`). Folding (case and
//! diacritics) is left to the index where it can be; [`fold`] is for comparing words here.

use unicode_general_category::{GeneralCategory as G, get_general_category};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// True for the characters a word is made of.
pub fn is_word_char(c: char) -> bool {
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
            | G::DecimalNumber
            | G::LetterNumber
            | G::OtherNumber
            | G::PrivateUse
            | G::Unassigned
    )
}

/// True for the combining diacritics `unicode61` keeps inside a word (and, with
/// `remove_diacritics`, drops from it): U+0300–U+0331 less a few, as SQLite's table has them.
pub fn is_inner_diacritic(c: char) -> bool {
    const LOW: u32 = 0x0802_9FDF; // U+0300..=U+031F
    const HIGH: u32 = 0x0003_61F8; // U+0320..=U+0331
    match u32::from(c) {
        c @ 0x300..=0x31F => LOW & (1 << (c - 0x300)) != 0,
        c @ 0x320..=0x331 => HIGH & (1 << (c - 0x320)) != 0,
        _ => false,
    }
}

/// The words of `text`, each with its byte offset.
pub fn spans(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        let (start, _) = rest.by_ref().find(|&(_, c)| is_word_char(c))?;
        let mut end = text.len();
        while let Some(&(i, c)) = rest.peek() {
            if !is_word_char(c) && !is_inner_diacritic(c) {
                end = i;
                break;
            }
            rest.next();
        }
        Some((start, &text[start..end]))
    })
}

/// The words of `text`.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    spans(text).map(|(_, w)| w)
}

/// A word folded for comparison: lower case, without diacritics (canonical decomposition,
/// combining marks dropped), as the index folds with `remove_diacritics 2`.
pub fn fold(word: &str) -> String {
    // ASCII decomposes to itself and holds no combining mark: the common case, without the
    // decomposition's buffering.
    if word.is_ascii() {
        return word.to_ascii_lowercase();
    }
    word.nfd()
        .filter(|&c| !is_combining_mark(c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_folds_as_the_full_decomposition_folds_it() {
        let every: String = (0u8..128).map(char::from).collect();
        let full: String = every
            .nfd()
            .filter(|&c| !is_combining_mark(c))
            .flat_map(char::to_lowercase)
            .collect();
        assert_eq!(fold(&every), full);
        assert_eq!(fold("CaFé"), "cafe");
    }

    #[test]
    fn words_split_like_unicode61() {
        let text = "Deploy the café-bar, x:1_y! 日本語 e\u{301}t\u{e000}z ½ \u{301}a नमस्ते";
        let got: Vec<(usize, &str)> = spans(text).collect();
        assert_eq!(
            got,
            vec![
                (0, "Deploy"),
                (7, "the"),
                (11, "café"),
                (17, "bar"),
                (22, "x"),
                (24, "1"),
                (26, "y"),
                (29, "日本語"),
                // A combining diacritic stays inside a word; private use joins.
                (39, "e\u{301}t\u{e000}z"),
                (48, "½"),
                // Not at a word's start; other marks (a virama, a vowel sign) separate.
                (53, "a"),
                (55, "नमस"),
                (67, "त"),
            ]
        );
        assert_eq!(words("  ...  ").count(), 0);
        assert_eq!(words("end").collect::<Vec<_>>(), ["end"]);
    }

    #[test]
    fn folding_drops_case_and_diacritics() {
        assert_eq!(fold("Café"), "cafe");
        assert_eq!(fold("ÜBER"), "uber");
        assert_eq!(fold("e\u{301}"), "e");
        assert_eq!(fold("日本語"), "日本語");
    }
}
