//! memory_delete: tombstone a memory. Its content stays until the operator purges it.

use serde::{Deserialize, Serialize};

use super::{CallContext, CallRecord, Done, to_json};
use crate::clock::format_ms;
use crate::error::Result;

/// memory_delete's arguments.
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

/// Tombstones the entry; the result goes back once the delete commits with its event.
pub fn apply<'c>(
    p: Params,
    ctx: &'c mut CallContext<'_>,
    record: &mut CallRecord,
) -> Result<Done<'c>> {
    record.ids.push(p.id.clone());
    let pending = ctx.store.delete(&p.id, ctx.now_ms, &ctx.view)?;
    let entry = pending.entry();
    let output = to_json(&Output {
        id: &entry.id,
        status: entry.status.as_str(),
        deleted_at: format_ms(entry.updated_at),
    })?;
    Ok(Done::Write(output, Box::new(pending)))
}
