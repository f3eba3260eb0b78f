//! memory_get: one verified memory by id, if this principal may see it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, CallRecord, MemoryView, to_json};
use crate::error::Result;

/// memory_get's arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub id: String,
}

#[derive(Serialize)]
struct Output<'a> {
    memory: MemoryView<'a>,
}

/// The entry, if the caller can see it and it verifies.
pub fn apply(p: Params, ctx: &mut CallContext<'_>, record: &mut CallRecord) -> Result<Value> {
    record.ids.push(p.id.clone());
    let entry = ctx.store.get(&p.id, &ctx.view)?;
    to_json(&Output {
        memory: MemoryView::new(&entry)?,
    })
}
