//! Queries and scopes as FTS5 sees them: plain words as string literals, the caller's scope as
//! index tokens inside the MATCH expression, and since/until as row-id ranges.
//!
//! Every entry's `scope` column (a generated column, migration 4) holds one token for its
//! namespace and one per tag, indexed by `entries_fts` beside the text. A search or a tag filter
//! over a wide scope ANDs the caller's scope tokens into the MATCH expression, so FTS5 walks only
//! the scope's matches (seeking through the others' doclists); nothing outside the scope is
//! counted or ranked. A narrow scope (a few namespaces) is looked up in `scoped_fts` instead
//! (see [`super::scoped`]), whose doclists hold the scope's postings alone. Row ids grow with `created_at` (migration 4 and `Store::stamp`), so since/until are a
//! row-id range FTS5 and the B-tree indexes apply directly. Rows are still checked against the
//! whole filter after the lookup: a damaged index can hide a row, never show a foreign one.

use rusqlite::{Connection, OptionalExtension};

use crate::store::model::{Filter, Query};
use crate::store::scope::Scope;

/// A plain-words query as safe FTS5 expressions: every word one string literal (`"` doubled
/// inside), so `NEAR(`, `*`, `col:`, `-x`, quotes and SQL in a query are text to look for, never
/// syntax; the whole expression is bound as one SQL parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtsQuery {
    /// Every word must occur.
    pub all: String,
    /// Any word may occur; `None` for a one-word query, where it equals `all`.
    pub any: Option<String>,
    /// Each word alone, in query order, without repeats.
    pub words: Vec<String>,
}

/// The FTS5 expressions of `query`.
pub fn expressions(query: &Query) -> FtsQuery {
    let terms: Vec<String> = query
        .words()
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    FtsQuery {
        all: terms.join(" AND "),
        any: (terms.len() > 1).then(|| terms.join(" OR ")),
        words: terms,
    }
}

/// The character escapes of migration 4's `scope` column, which keep a namespace or tag one
/// unicode61 token: letters and digits stand for themselves, `z` and the separators become `z`
/// plus a letter. Injective, so distinct names never share a token.
pub(super) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            'z' => out.push_str("zz"),
            '_' => out.push_str("zu"),
            '.' => out.push_str("zd"),
            ':' => out.push_str("zc"),
            '-' => out.push_str("zh"),
            c => out.push(c),
        }
    }
    out
}

/// The index token of a namespace, as an FTS5 string literal (names are `[a-z0-9_.-]`, tags
/// `[a-z0-9_.:-]`, so no quote can occur; it is doubled anyway).
fn literal(prefix: char, name: &str) -> String {
    format!("\"{prefix}{}\"", escape(name).replace('"', "\"\""))
}

/// The part of a MATCH expression that restricts to the filter's namespaces and tags, or `None`
/// when nothing restricts (a `"*"` scope without tags).
pub fn scope_expr(filter: &Filter) -> Option<String> {
    let mut parts = Vec::new();
    if let Scope::Only(namespaces) = &filter.scope {
        let tokens: Vec<String> = namespaces.iter().map(|n| literal('n', n)).collect();
        parts.push(format!("scope : ({})", tokens.join(" OR ")));
    }
    for tag in &filter.tags {
        parts.push(format!("scope : {}", literal('t', tag)));
    }
    (!parts.is_empty()).then(|| parts.join(" AND "))
}

/// `words` (a safe expression of quoted literals) looked for in the text columns only, within
/// the filter's scope.
pub fn scoped(words: &str, filter: &Filter) -> String {
    match scope_expr(filter) {
        Some(scope) => format!("{{content tags}} : ({words}) AND {scope}"),
        None => format!("{{content tags}} : ({words})"),
    }
}

/// The row ids a time filter spans: `lo <= rowid < hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRange {
    /// The lowest row id inside.
    pub lo: i64,
    /// The first row id past the end.
    pub hi: i64,
}

impl RowRange {
    /// Every row.
    pub const ALL: Self = Self {
        lo: i64::MIN,
        hi: i64::MAX,
    };

    /// Narrowed to row ids below `below`.
    pub fn below(self, below: i64) -> Self {
        Self {
            hi: self.hi.min(below),
            ..self
        }
    }

    /// True when no row can be inside.
    pub fn is_empty(self) -> bool {
        self.lo >= self.hi
    }
}

/// The first row id created at or after `ms`, or `None` when every row is older. One index
/// probe (`entries_created`); exact because row ids grow with `created_at`.
pub fn first_rowid_at(conn: &Connection, ms: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT rowid FROM entries WHERE created_at >= ?1 ORDER BY created_at, rowid LIMIT 1",
    )?
    .query_row([ms], |r| r.get(0))
    .optional()
}

/// The row-id range of the filter's since/until.
pub fn row_range(conn: &Connection, filter: &Filter) -> rusqlite::Result<RowRange> {
    let mut range = RowRange::ALL;
    if let Some(since) = filter.since {
        range.lo = first_rowid_at(conn, since)?.unwrap_or(i64::MAX);
    }
    if let Some(until) = filter.until {
        range.hi = first_rowid_at(conn, until)?.unwrap_or(i64::MAX);
    }
    Ok(range)
}

/// The unix-ms timestamp of a UUIDv7 in hyphenated form (its first 48 bits).
pub fn uuid_ms(id: &str) -> Option<i64> {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    i64::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_injective_and_one_word() {
        assert_eq!(escape("a_b.c:d-z"), "azubzdczcdzhzz");
        assert_ne!(escape("a-b"), escape("azhb"));
        assert_ne!(escape("zh"), escape("-"));
        for name in ["ops", "a_b.c-d", "x:y", "zz"] {
            assert!(escape(name).chars().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn words_become_literals() {
        let q = expressions(&Query::parse(r#"a "b" NEAR(c"#).unwrap());
        assert_eq!(q.all, r#""a" AND """b""" AND "NEAR(c""#);
        assert_eq!(q.any.as_deref(), Some(r#""a" OR """b""" OR "NEAR(c""#));
        assert_eq!(expressions(&Query::parse("one").unwrap()).any, None);
    }

    #[test]
    fn scope_expressions() {
        let f = Filter {
            scope: Scope::only(["b".to_string(), "a".to_string(), "a".to_string()]),
            tags: vec!["x-1".into()],
            ..Default::default()
        };
        assert_eq!(
            scope_expr(&f).unwrap(),
            r#"scope : ("na" OR "nb") AND scope : "txzh1""#
        );
        assert_eq!(
            scoped(r#""w""#, &f),
            r#"{content tags} : ("w") AND scope : ("na" OR "nb") AND scope : "txzh1""#
        );
        let all = Filter {
            scope: Scope::All,
            ..Default::default()
        };
        assert_eq!(scope_expr(&all), None);
    }

    #[test]
    fn uuid_timestamps() {
        assert_eq!(
            uuid_ms("0190c9a2-8b3c-7d1e-9f00-000000000000"),
            Some(0x0190_c9a2_8b3c)
        );
        assert_eq!(uuid_ms("xyz"), None);
    }
}
