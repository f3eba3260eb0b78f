//! memory_get: one verified memory by id, if this principal may see it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallContext, MemoryView, to_json};
use crate::error::Result;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub id: String,
}

#[derive(Serialize)]
struct Output<'a> {
    memory: MemoryView<'a>,
}

pub fn apply(p: Params, ctx: &mut CallContext<'_>) -> Result<Value> {
    ctx.record.ids.push(p.id.clone());
    let entry = ctx.store.get(&p.id, &ctx.read_access())?;
    to_json(&Output {
        memory: MemoryView::new(&entry)?,
    })
}
