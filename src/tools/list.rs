//! memory_list: a page of memories, newest first, continued with an opaque cursor.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, CallRecord, MemoryView, deserialize_limit, to_json};
use crate::error::{Error, Result};

/// Page size when the caller gives no limit.
pub const DEFAULT_LIMIT: usize = 20;

/// memory_list's arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub namespace: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    #[serde(default, deserialize_with = "deserialize_limit")]
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Serialize)]
struct Output<'a> {
    memories: Vec<MemoryView<'a>>,
    next_cursor: Option<String>,
    withheld: usize,
}

/// The cursor is the last id served, in uuid's 32-hex "simple" form.
fn decode_cursor(cursor: &str) -> Result<String> {
    uuid::Uuid::try_parse(cursor)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Error::InvalidArgument("cursor: not a cursor from memory_list".into()))
}

fn encode_cursor(id: &str) -> Option<String> {
    uuid::Uuid::try_parse(id)
        .ok()
        .map(|u| u.simple().to_string())
}

/// A page of the caller's memories, newest first.
pub fn apply(p: Params, ctx: &mut CallContext<'_>, record: &mut CallRecord) -> Result<Value> {
    let filter = ctx.filter(p.namespace, p.tags, p.since.as_deref(), p.until.as_deref())?;
    let after = p.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = ctx.page_size(p.limit, DEFAULT_LIMIT)?;
    let page = ctx.store.list(&filter, after.as_deref(), limit)?;

    // Bound the response in bytes as well as entries: stop early and let the cursor continue.
    let mut budget = ctx.limits.response_bytes;
    let mut memories = Vec::with_capacity(page.entries.len());
    let mut next_after = page.next_after.clone();
    for (i, entry) in page.entries.iter().enumerate() {
        let view = MemoryView::new(entry)?;
        let size = view.serialized_len()?;
        if i > 0 && size > budget {
            next_after = Some(page.entries[i - 1].id.clone());
            break;
        }
        budget = budget.saturating_sub(size);
        memories.push(view);
    }
    // Withheld rows past an early cut belong to the next page, which meets them again: count
    // each on one page only.
    let withheld: Vec<String> = page
        .withheld_ids
        .iter()
        .zip(&page.withheld_at)
        .filter(|&(_, &at)| at < memories.len() || memories.len() == page.entries.len())
        .map(|(id, _)| id.clone())
        .collect();
    record.results = Some(memories.len());
    record.ids = memories.iter().map(|m| m.id().to_string()).collect();
    let count = withheld.len();
    record.withheld = withheld;
    to_json(&Output {
        memories,
        next_cursor: next_after.as_deref().and_then(encode_cursor),
        withheld: count,
    })
}
