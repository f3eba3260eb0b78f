//! memory_store: police, seal and keep one new memory.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, CallRecord, Done, check_bytes, metadata_text, to_json};
use crate::clock::format_ms;
use crate::error::Result;
use crate::store::NewEntry;

/// memory_store's arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub content: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Serialize)]
struct Output<'a> {
    id: &'a str,
    namespace: &'a str,
    status: &'static str,
    created_at: String,
    content_sha256: String,
    /// Rules that replaced parts of the content before it was sealed.
    redacted_by: Vec<String>,
}

/// Stores a new memory; the result goes back once it commits with its event.
pub fn apply<'c>(
    mut p: Params,
    ctx: &'c mut CallContext<'_>,
    record: &mut CallRecord,
) -> Result<Done<'c>> {
    let namespace = ctx.write_namespace(p.namespace.take())?;
    check_bytes("content", p.content.len(), ctx.limits.content_bytes)?;
    let (verdict, status) = ctx.police(&mut p.content, &mut p.tags, &mut p.metadata)?;
    check_bytes("content", p.content.len(), ctx.limits.content_bytes)?;
    let metadata = metadata_text(p.metadata, ctx.limits)?;
    record.fired(&verdict);
    record.content_bytes = Some(p.content.len());
    record.metadata_bytes = metadata.as_ref().map(String::len);
    let new = NewEntry {
        namespace,
        content: p.content,
        tags: p.tags,
        metadata,
        status,
    };
    let pending = ctx.store.insert(ctx.author, new, ctx.now_ms)?;
    let entry = pending.entry();
    record.created(entry);
    let output = to_json(&Output {
        id: &entry.id,
        namespace: &entry.namespace,
        status: entry.status.as_str(),
        created_at: format_ms(entry.created_at),
        content_sha256: hex::encode(entry.content_sha256),
        redacted_by: verdict.redacted_by,
    })?;
    Ok(Done::Write(output, Box::new(pending)))
}
