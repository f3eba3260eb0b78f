//! `memwarden maintain`: brings the full-text indexes and both databases back into shape while
//! servers keep running (FTS5 merges in short write transactions, `PRAGMA optimize`, passive WAL
//! checkpoints). Audited as admin events; prints what it did. A nightly timer runs it.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::DataDirArg;
use super::review::{admin_event, open};

/// `memwarden maintain`'s arguments.
#[derive(Debug, clap::Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Longest the write lock is held by one merge step, in ms (agents' writes wait that long
    /// at most).
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_lock_ms: u64,
}

/// Runs the upkeep and reports it.
pub fn run(args: &MaintainArgs) -> anyhow::Result<ExitCode> {
    // The data dir lock is held shared for the run: a restore waits for maintain to finish.
    let (mut store, mut audit, _lock) = open(&args.data_dir)?;
    let before = store.index_shape()?;
    // Audit first: if the log cannot be written, nothing is touched.
    admin_event(
        &mut audit,
        json!({"event": "maintain_start", "fts_segments": before.segments}),
    )?;
    let m = store.maintain(Duration::from_millis(args.max_lock_ms))?;
    drop(store);
    // The audit log gets the same care through a plain connection: optimize and a checkpoint
    // only, never a write of its own.
    let dir = args.data_dir.open()?;
    let (audit_log, audit_copied) =
        crate::audit::inspect::optimize_and_checkpoint(&dir.audit_db())?;
    let detail = json!({
        "event": "maintain",
        "fts_segments_before": m.segments_before,
        "fts_segments_after": m.segments_after,
        "fts_levels_after": m.levels_after,
        "merge_steps": m.steps,
        "longest_step_ms": (m.longest_step_ms * 10.0).round() / 10.0,
        "memory_wal_frames": m.log_frames,
        "memory_wal_copied": m.log_copied,
        "audit_wal_frames": audit_log,
        "audit_wal_copied": audit_copied,
    });
    admin_event(&mut audit, detail)?;
    println!(
        "full-text indexes: {} segments -> {} (one per index is fully merged; {} merge steps, longest {:.1} ms, {:.0} ms in all)",
        m.segments_before, m.segments_after, m.steps, m.longest_step_ms, m.total_ms
    );
    println!(
        "memory.db: optimized; WAL checkpoint copied {} of {} frames",
        m.log_copied, m.log_frames
    );
    println!("audit.db: optimized; WAL checkpoint copied {audit_copied} of {audit_log} frames");
    Ok(ExitCode::SUCCESS)
}
