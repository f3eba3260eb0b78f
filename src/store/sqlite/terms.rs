//! Text split into the terms SQLite's `unicode61` tokenizer makes of it, for the
//! namespace-qualified index ([`super::scoped`]), which must split documents and query words
//! exactly where `entries_fts` does.
//!
//! ASCII text is split here: `unicode61` makes a term of every run of ASCII letters and digits
//! and separates at every other ASCII character (a test checks all 128). Any other text is
//! handed to `unicode61` itself, in a per-thread in-memory FTS5 table read back through
//! `fts5vocab`: its Unicode tables are older than Rust's (characters assigned since count as
//! letters there) and it keeps some combining marks inside words, so no Rust splitter agrees
//! with it everywhere. Those terms come back folded (lower case, no diacritics); `unicode61`
//! folds ASCII terms the same way when it indexes them, so both paths meet in the index.

use std::cell::RefCell;

use rusqlite::Connection;

thread_local! {
    /// This thread's tokenizer table, made on first use.
    static SCRATCH: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// The in-memory database whose `t` is tokenized like `entries_fts` and whose `v` lists the
/// terms of what `t` holds.
fn scratch() -> rusqlite::Result<Connection> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(
        "CREATE VIRTUAL TABLE t USING fts5 (x, content = '', \
             tokenize = 'unicode61 remove_diacritics 2'); \
         CREATE VIRTUAL TABLE v USING fts5vocab (t, 'instance');",
    )?;
    Ok(conn)
}

/// The terms of `text`, in order.
pub fn terms(text: &str) -> rusqlite::Result<Vec<String>> {
    if text.is_ascii() {
        return Ok(text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect());
    }
    SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(scratch()?);
        }
        let conn = cell.as_ref().expect("made above");
        conn.execute("INSERT INTO t (rowid, x) VALUES (1, ?1)", [text])?;
        let terms = conn
            .prepare_cached("SELECT term FROM v ORDER BY offset")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>();
        conn.execute("INSERT INTO t (t) VALUES ('delete-all')", [])?;
        terms
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The terms unicode61 makes of `text`, always through SQLite.
    fn sqlite_terms(text: &str) -> Vec<String> {
        let conn = scratch().unwrap();
        conn.execute("INSERT INTO t (rowid, x) VALUES (1, ?1)", [text])
            .unwrap();
        conn.prepare("SELECT term FROM v ORDER BY offset")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<Vec<String>>>()
            .unwrap()
    }

    #[test]
    fn ascii_splits_where_unicode61_splits() {
        for c in (0u8..128).map(char::from) {
            for text in [
                format!("a{c}b"),
                format!("{c}b"),
                format!("a{c}"),
                format!("{c}"),
            ] {
                let ours: Vec<String> = terms(&text)
                    .unwrap()
                    .iter()
                    .map(|t| t.to_ascii_lowercase())
                    .collect();
                assert_eq!(ours, sqlite_terms(&text), "{text:?}");
            }
        }
    }

    #[test]
    fn other_text_is_split_and_folded_by_unicode61() {
        assert_eq!(
            terms("Café re\u{301}sume\u{301} नमस्ते a\u{1F600}b 日本語").unwrap(),
            ["cafe", "resume", "नमस", "त", "a", "b", "日本語"]
        );
        // Characters newer than SQLite's tables are letters there.
        assert_eq!(terms("a\u{1AB0}b").unwrap(), sqlite_terms("a\u{1AB0}b"));
        assert!(terms("—").unwrap().is_empty());
    }
}
