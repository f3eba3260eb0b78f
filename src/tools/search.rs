//! memory_search: full-text search where the query is only ever plain words.
//!
//! The query is split into words ([`Query::parse`]); each backend looks each word up as text,
//! never as syntax (SQLite: one FTS5 string literal per word, bound as one parameter, see
//! `store::sqlite::fts`). Entries holding every word come first, newest first, then entries
//! holding some, those holding more and rarer words first (see [`crate::store::rank`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, CallRecord, MemoryView, deserialize_limit, to_json};
use crate::error::{Error, Result};
use crate::store::{Matched, Query};

/// Results when the caller gives no limit.
pub const DEFAULT_LIMIT: usize = 20;

/// memory_search's arguments.
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

/// The caller's memories holding the query's words, best first.
pub fn apply(p: Params, ctx: &mut CallContext<'_>, record: &mut CallRecord) -> Result<Value> {
    let filter = ctx.filter(p.namespace, p.tags, p.since.as_deref(), p.until.as_deref())?;
    let limit = ctx.page_size(p.limit, DEFAULT_LIMIT)?;
    let chars = p.query.chars().count();
    if chars > ctx.limits.query_chars {
        return Err(Error::InvalidArgument(format!(
            "query: at most {} characters for this principal",
            ctx.limits.query_chars
        )));
    }
    let hits = match Query::parse(&p.query) {
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
    record.results = Some(results.len());
    record.ids = results.iter().map(|h| h.memory.id().to_string()).collect();
    record.withheld = hits.withheld_ids.clone();
    to_json(&Output {
        results,
        withheld: hits.withheld,
        truncated,
    })
}
