//! memory_store: police, seal and keep one new memory.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, check_bytes, format_ms, metadata_text, to_json};
use crate::error::Result;
use crate::store::NewEntry;

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

pub fn apply(mut p: Params, ctx: &mut CallContext<'_>) -> Result<Value> {
    let namespace = ctx.namespace(p.namespace.take());
    ctx.check_write(&namespace)?;
    check_bytes("content", p.content.len(), ctx.limits.content_bytes)?;
    let verdict = ctx.police(&mut p.content, &mut p.tags, &mut p.metadata)?;
    // Redaction markers can be longer than what they replace.
    check_bytes("content", p.content.len(), ctx.limits.content_bytes)?;
    let metadata = metadata_text(p.metadata, ctx.limits)?;
    ctx.record.content_bytes = Some(p.content.len());
    ctx.record.metadata_bytes = metadata.as_ref().map(String::len);
    let status = ctx.settle(&verdict);
    let (record, audit) = (&mut *ctx.record, ctx.audit);
    let entry = ctx.store.insert(
        ctx.author,
        NewEntry {
            namespace,
            content: p.content,
            tags: p.tags,
            metadata,
            status,
        },
        ctx.now_ms,
        |entry| {
            record.created = Some(entry.id.clone());
            record.audit_write(audit, &[&entry.id], Some(entry))
        },
    )?;
    to_json(&Output {
        id: &entry.id,
        namespace: &entry.namespace,
        status: entry.status.as_str(),
        created_at: format_ms(entry.created_at),
        content_sha256: hex::encode(entry.content_sha256),
        redacted_by: verdict.redacted_by,
    })
}
