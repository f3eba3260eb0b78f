//! memory_update: a new version that supersedes the old one, which stays readable by id.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, CallRecord, Done, check_bytes, metadata_text, to_json};
use crate::clock::format_ms;
use crate::error::Result;
use crate::store::Changes;

/// memory_update's arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub id: String,
    pub content: Option<String>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Serialize)]
struct Output<'a> {
    id: &'a str,
    supersedes: &'a str,
    namespace: &'a str,
    status: &'static str,
    created_at: String,
    content_sha256: String,
    redacted_by: Vec<String>,
}

/// Writes a new version; the result goes back once it commits with its event.
pub fn apply<'c>(
    mut p: Params,
    ctx: &'c mut CallContext<'_>,
    record: &mut CallRecord,
) -> Result<Done<'c>> {
    record.ids.push(p.id.clone());
    if let Some(content) = &p.content {
        check_bytes("content", content.len(), ctx.limits.content_bytes)?;
    }
    let mut content = p.content.take().unwrap_or_default();
    let tags_given = p.tags.is_some();
    let mut tag_list = p.tags.take().unwrap_or_default();
    let (verdict, status) = ctx.police(&mut content, &mut tag_list, &mut p.metadata)?;
    let tags = tags_given.then_some(tag_list);
    let content = (!content.is_empty()).then_some(content);
    if let Some(content) = &content {
        check_bytes("content", content.len(), ctx.limits.content_bytes)?;
    }
    let metadata = metadata_text(p.metadata, ctx.limits)?;
    record.fired(&verdict);
    record.content_bytes = content.as_ref().map(String::len);
    record.metadata_bytes = metadata.as_ref().map(String::len);
    let changes = Changes {
        content,
        tags,
        metadata,
        status: Some(status),
    };
    let pending = ctx
        .store
        .update(ctx.author, &p.id, changes, ctx.now_ms, &ctx.view)?;
    let entry = pending.entry();
    record.created(entry);
    let output = to_json(&Output {
        id: &entry.id,
        supersedes: entry.supersedes.as_deref().unwrap_or_default(),
        namespace: &entry.namespace,
        status: entry.status.as_str(),
        created_at: format_ms(entry.created_at),
        content_sha256: hex::encode(entry.content_sha256),
        redacted_by: verdict.redacted_by,
    })?;
    Ok(Done::Write(output, Box::new(pending)))
}
