//! Namespace-qualified index terms (migration 5), so a search inside a few namespaces reads only
//! their postings.
//!
//! `entries_fts` is one index over every namespace: a word common in a big namespace has one
//! long doclist, and a search in a small namespace that uses it walks that list even though
//! nearly none of it is in scope. `scoped_fts` holds every active row's words again, each
//! prefixed with its namespace's token (`n<namespace>zw<word>`), plus one token per tag
//! (`n<namespace>zt<tag>`). A word's doclist there is its doclist inside one namespace, so a
//! search or a tag list inside a narrow scope costs what the scope holds, whatever the rest of the
//! store holds.
//!
//! The terms come from [`document`], registered on every memory.db connection as the SQL
//! function `memwarden_scoped_words` that migration 5's triggers call. It splits text exactly
//! where `unicode61` splits it ([`super::terms`]); `unicode61` then folds each prefixed term as
//! it does for `entries_fts`, and finds no further split inside it (the prefix is ASCII letters
//! and digits). Query words are split the same way, so a narrow lookup finds what the shared
//! index finds inside the scope (a test holds the two to the same rows). Rows are still checked
//! against the whole filter after the lookup.

use rusqlite::Connection;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;

use super::fts::escape;
use super::terms::terms;
use crate::store::model::Filter;
use crate::store::scope::Scope;

/// The SQL function migration 5's triggers call.
pub const FUNCTION: &str = "memwarden_scoped_words";

/// Scopes of more namespaces than this are looked up in `entries_fts` with scope tokens (the
/// bound every backend shares, [`crate::store::scope::MAX_NARROW_NAMESPACES`]).
pub const MAX_NAMESPACES: usize = crate::store::scope::MAX_NARROW_NAMESPACES;

/// Registers [`FUNCTION`] on `conn`. Deterministic and innocuous (it reads only its
/// arguments), so the triggers may call it with `trusted_schema` off.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        FUNCTION,
        3,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_INNOCUOUS,
        |ctx| {
            // A column of the wrong type (a hand edit) indexes as no text: the row fails its
            // seal on read anyway, and the write that carries it must not fail here.
            let text = |i: usize| match ctx.get_raw(i) {
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                _ => String::new(),
            };
            document(&text(0), &text(1), &text(2))
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        },
    )
}

/// The prefix of a namespace's terms.
fn namespace_token(namespace: &str) -> String {
    format!("n{}", escape(namespace))
}

/// What `scoped_fts` indexes for a row: its content's and tags' words prefixed with the
/// namespace's token, a boundary term (so no phrase spans content and tags), and one term per
/// tag for tag filters. `tags` is the row's JSON array.
pub fn document(namespace: &str, content: &str, tags: &str) -> rusqlite::Result<String> {
    let ns = namespace_token(namespace);
    let mut out = String::with_capacity(content.len() * 2 + tags.len() * 2);
    let mut push = |term: std::fmt::Arguments<'_>| {
        use std::fmt::Write as _;
        let _ = write!(out, "{term} ");
    };
    for w in terms(content)? {
        push(format_args!("{ns}zw{w}"));
    }
    push(format_args!("{ns}zb"));
    for w in terms(tags)? {
        push(format_args!("{ns}zw{w}"));
    }
    for tag in serde_json::from_str::<Vec<String>>(tags).unwrap_or_default() {
        push(format_args!("{ns}zt{}", escape(&tag)));
    }
    Ok(out)
}

/// A narrow scope's lookups in `scoped_fts`: every expression is an OR over the scope's
/// namespaces of that namespace's terms, ANDed with its tag terms. Built only from our
/// tokens and the query's alphanumeric runs, so no input becomes FTS5 syntax.
#[derive(Debug, Clone, Copy)]
pub struct Narrow<'a> {
    namespaces: &'a [String],
    tags: &'a [String],
}

impl<'a> Narrow<'a> {
    /// The narrow lookup of `filter`, or `None` for a `"*"` scope, an empty one or one wider
    /// than [`MAX_NAMESPACES`].
    pub fn of(filter: &'a Filter) -> Option<Self> {
        match &filter.scope {
            Scope::Only(namespaces)
                if !namespaces.is_empty() && namespaces.len() <= MAX_NAMESPACES =>
            {
                Some(Self {
                    namespaces,
                    tags: &filter.tags,
                })
            }
            _ => None,
        }
    }

    /// The OR over namespaces of the phrases (each a list of terms, joined by `join`) ANDed
    /// with the tag terms; no phrases means "the tags alone".
    fn each_namespace(&self, phrases: &[Vec<String>], join: &str) -> String {
        let parts: Vec<String> = self
            .namespaces
            .iter()
            .map(|n| {
                let ns = namespace_token(n);
                let mut parts: Vec<String> = Vec::new();
                if !phrases.is_empty() {
                    let quoted: Vec<String> = phrases
                        .iter()
                        .map(|terms| {
                            let terms: Vec<String> =
                                terms.iter().map(|t| format!("{ns}zw{t}")).collect();
                            format!("\"{}\"", terms.join(" "))
                        })
                        .collect();
                    parts.push(format!("({})", quoted.join(join)));
                }
                parts.extend(self.tags.iter().map(|t| format!("\"{ns}zt{}\"", escape(t))));
                format!("({})", parts.join(" AND "))
            })
            .collect();
        parts.join(" OR ")
    }

    /// Each query word as the terms of one phrase (none, so `""` matching nothing, for a word
    /// without letters or digits — as its literal does in `entries_fts`). Terms are letters and
    /// digits only, so no input becomes FTS5 syntax.
    fn phrases(words: &[String]) -> rusqlite::Result<Vec<Vec<String>>> {
        words.iter().map(|w| terms(w)).collect()
    }

    /// Rows holding every word.
    pub fn all(&self, query: &[String]) -> rusqlite::Result<String> {
        Ok(self.each_namespace(&Self::phrases(query)?, " AND "))
    }

    /// Rows holding some of the words.
    pub fn any(&self, query: &[String]) -> rusqlite::Result<String> {
        Ok(self.each_namespace(&Self::phrases(query)?, " OR "))
    }

    /// Rows holding `word`.
    pub fn word(&self, word: &str) -> rusqlite::Result<String> {
        self.all(std::slice::from_ref(&word.to_string()))
    }

    /// Rows carrying every tag of the filter, or `None` when it has none.
    pub fn tagged(&self) -> Option<String> {
        (!self.tags.is_empty()).then(|| self.each_namespace(&[], ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_prefix_every_word() {
        assert_eq!(
            document("a-b", "Deploy the café-bar!", r#"["x:1","y"]"#).unwrap(),
            "nazhbzwdeploy nazhbzwthe nazhbzwcafe nazhbzwbar nazhbzb nazhbzwx nazhbzw1 \
             nazhbzwy nazhbztxzc1 nazhbzty "
        );
        assert_eq!(document("n", "", "[]").unwrap(), "nnzb ");
        assert_eq!(
            document("n", "Deploy it", "[]").unwrap(),
            "nnzwDeploy nnzwit nnzb "
        );
        // A tags column that is not a JSON array indexes its words and no tag terms.
        assert_eq!(document("n", "", "oops").unwrap(), "nnzb nnzwoops ");
    }

    #[test]
    fn expressions_per_namespace() {
        let filter = Filter {
            scope: Scope::only(["b".to_string(), "a".to_string()]),
            tags: vec!["t-1".into()],
            ..Default::default()
        };
        let n = Narrow::of(&filter).unwrap();
        let q = [
            "Deploy".to_string(),
            "foo-bar".to_string(),
            "!!".to_string(),
        ];
        assert_eq!(
            n.all(&q[..2]).unwrap(),
            r#"(("nazwDeploy" AND "nazwfoo nazwbar") AND "nazttzh1") OR (("nbzwDeploy" AND "nbzwfoo nbzwbar") AND "nbzttzh1")"#
        );
        assert_eq!(
            n.any(&q[..2]).unwrap(),
            r#"(("nazwDeploy" OR "nazwfoo nazwbar") AND "nazttzh1") OR (("nbzwDeploy" OR "nbzwfoo nbzwbar") AND "nbzttzh1")"#
        );
        assert_eq!(
            n.word(&q[2]).unwrap(),
            r#"(("") AND "nazttzh1") OR (("") AND "nbzttzh1")"#
        );
        assert_eq!(n.tagged().unwrap(), r#"("nazttzh1") OR ("nbzttzh1")"#);
    }

    #[test]
    fn wide_scopes_are_not_narrow() {
        let all = Filter {
            scope: Scope::All,
            ..Default::default()
        };
        assert!(Narrow::of(&all).is_none());
        assert!(Narrow::of(&Filter::default()).is_none());
        let wide = Filter {
            scope: Scope::only((0..=MAX_NAMESPACES).map(|i| format!("n{i}"))),
            ..Default::default()
        };
        assert!(Narrow::of(&wide).is_none());
    }

    #[test]
    fn query_text_never_becomes_syntax() {
        let filter = Filter {
            scope: Scope::only(["a".to_string()]),
            ..Default::default()
        };
        let n = Narrow::of(&filter).unwrap();
        let e = n.word(r#"x" OR NEAR(y) * col:z"#).unwrap();
        assert_eq!(e, r#"(("nazwx nazwOR nazwNEAR nazwy nazwcol nazwz"))"#);
    }
}
