//! `memwarden purge`: retention. Deletes entries older than the policy's `retention.max_age`
//! and hard-deletes tombstones older than `retention.deleted_retention`, printing counts.

use std::process::ExitCode;

use serde_json::json;

use super::DataDirArg;
use super::review::{admin_event, open};
use super::serve::PolicyArgs;

/// `memwarden purge`'s arguments.
#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
}

/// Applies the policy's retention, recording each removal in the ledger.
pub fn run(args: &PurgeArgs) -> anyhow::Result<ExitCode> {
    let policy = args.policy.load()?;
    let (mut store, mut audit, _lock) = open(&args.data_dir, &args.store)?;
    let now = crate::clock::now_ms();
    let before = |d: Option<std::time::Duration>| d.map(|d| now - d.as_millis() as i64);
    let older_than = before(policy.retention.max_age);
    let tombstones_before = before(policy.retention.deleted_retention);
    if older_than.is_none() && tombstones_before.is_none() {
        println!("the policy sets no retention: nothing to purge");
        return Ok(ExitCode::SUCCESS);
    }
    admin_event(
        &mut audit,
        json!({"event": "purge_start", "older_than": older_than, "tombstones_before": tombstones_before, "policy_sha256": policy.sha256}),
    )?;
    let (removed, tombstones) = store.purge(older_than, tombstones_before, now)?;
    admin_event(
        &mut audit,
        json!({"event": "purge", "entries_removed": removed, "tombstones_removed": tombstones}),
    )?;
    println!("purged {removed} entries past max age and {tombstones} tombstones past retention");
    Ok(ExitCode::SUCCESS)
}
