//! memory_search: full-text search where the query is only ever plain words.
//!
//! Every whitespace-separated word becomes one FTS5 string literal (`"` doubled inside). Entries
//! holding every word come first, newest first, then entries holding some (the literals AND-ed,
//! then OR-ed), those holding more and rarer words first (see [`crate::store::Store::search`]).
//! So `NEAR(`, `*`, `col:`, `-x`, quotes and SQL in a query are text to look for, never syntax,
//! and the whole expression is bound as one SQL parameter.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, MemoryView, deserialize_limit, filter, to_json};
use crate::error::{Error, Result};
use crate::store::{FtsQuery, Matched};

/// Results when the caller gives no limit.
pub const DEFAULT_LIMIT: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub query: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    #[serde(default, deserialize_with = "deserialize_limit")]
    pub limit: Option<usize>,
}

#[derive(Serialize)]
struct Hit<'a> {
    memory: MemoryView<'a>,
    snippet: &'a str,
    matched: Matched,
}

#[derive(Serialize)]
struct Output<'a> {
    results: Vec<Hit<'a>>,
    withheld: usize,
    /// True when the byte bound cut the results short.
    truncated: bool,
}

/// The FTS5 expressions for a plain-words query, or `None` when it has no words.
pub fn fts_query(query: &str) -> Option<FtsQuery> {
    // FTS5 reads its expression as a C string, so a NUL would end it mid-literal: control
    // characters separate words like whitespace does.
    // A word repeated in another case is one word: the index folds case, and counting it
    // twice would weigh it twice in the some-words ranking.
    let mut terms: Vec<String> = Vec::new();
    let mut folded: Vec<String> = Vec::new();
    for word in query.split(|c: char| c.is_whitespace() || c.is_control()) {
        let key = word.to_lowercase();
        if !word.is_empty() && !folded.contains(&key) {
            terms.push(format!("\"{}\"", word.replace('"', "\"\"")));
            folded.push(key);
        }
    }
    match terms.len() {
        0 => None,
        1 => Some(FtsQuery {
            all: terms[0].clone(),
            any: None,
            words: terms,
        }),
        _ => Some(FtsQuery {
            all: terms.join(" AND "),
            any: Some(terms.join(" OR ")),
            words: terms,
        }),
    }
}

pub fn apply(p: Params, ctx: &mut CallContext<'_>) -> Result<Value> {
    let filter = filter(
        ctx,
        p.namespace,
        p.tags,
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let limit = ctx.page_size(p.limit, DEFAULT_LIMIT)?;
    let chars = p.query.chars().count();
    if chars > ctx.limits.query_chars {
        return Err(Error::InvalidArgument(format!(
            "query: at most {} characters for this principal",
            ctx.limits.query_chars
        )));
    }
    let hits = match fts_query(&p.query) {
        Some(query) => ctx.store.search(&query, &filter, limit)?,
        None => Default::default(),
    };
    let mut budget = ctx.limits.response_bytes;
    let mut results = Vec::with_capacity(hits.hits.len());
    let mut truncated = false;
    for hit in &hits.hits {
        let memory = MemoryView::new(&hit.entry)?;
        let size = memory.serialized_len()? + hit.snippet.len() * 2;
        if !results.is_empty() && size > budget {
            truncated = true;
            break;
        }
        budget = budget.saturating_sub(size);
        results.push(Hit {
            memory,
            snippet: &hit.snippet,
            matched: hit.matched,
        });
    }
    ctx.record.results = Some(results.len());
    ctx.record.ids = results.iter().map(|h| h.memory.id().to_string()).collect();
    ctx.record.withheld = hits.withheld_ids.clone();
    to_json(&Output {
        results,
        withheld: hits.withheld,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::fts_query;

    fn any(q: &str) -> String {
        fts_query(q).and_then(|f| f.any).unwrap_or_default()
    }

    #[test]
    fn every_word_is_one_quoted_literal() {
        assert_eq!(fts_query("  "), None);
        assert_eq!(fts_query("\u{0}\t"), None);
        let one = fts_query("x\u{0}x").unwrap();
        assert_eq!((one.all.as_str(), one.any), (r#""x""#, None));
        let two = fts_query("a b a").unwrap();
        assert_eq!(two.all, r#""a" AND "b""#);
        let cased = fts_query("Deploy key DEPLOY deploy").unwrap();
        assert_eq!(cased.words, [r#""Deploy""#, r#""key""#]);
        assert_eq!(cased.any.as_deref(), Some(r#""Deploy" OR "key""#));
        assert_eq!(two.any.as_deref(), Some(r#""a" OR "b""#));
        assert_eq!(
            any(r#"say "hi" NEAR(x"#),
            r#""say" OR """hi""" OR "NEAR(x""#
        );
        assert_eq!(
            any("'; DROP TABLE entries; --"),
            r#""';" OR "DROP" OR "TABLE" OR "entries;" OR "--""#
        );
    }
}
