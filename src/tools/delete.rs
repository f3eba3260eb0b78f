//! memory_delete: tombstone a memory. Its content stays until the operator purges it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, format_ms, to_json};
use crate::error::Result;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub id: String,
}

#[derive(Serialize)]
struct Output<'a> {
    id: &'a str,
    status: &'static str,
    deleted_at: String,
}

pub fn apply(p: Params, ctx: &mut CallContext<'_>) -> Result<Value> {
    // First, so an integrity failure is recorded against the id.
    ctx.record.ids.push(p.id.clone());
    let access = ctx.write_access();
    let (record, audit) = (&mut *ctx.record, ctx.audit);
    let entry = ctx.store.delete(&p.id, ctx.now_ms, &access, |_| {
        record.audit_write(audit, &[], None)
    })?;
    to_json(&Output {
        id: &entry.id,
        status: entry.status.as_str(),
        deleted_at: format_ms(entry.updated_at),
    })
}
