//! `memwarden maintain`: brings the full-text index and both databases back into shape while
//! servers keep running (FTS5 merges in short write transactions, `PRAGMA optimize`, passive WAL
//! checkpoints). Audited as admin events; prints what it did. A nightly timer runs it.

use std::process::ExitCode;
use std::time::Duration;

use rusqlite::OpenFlags;
use serde_json::json;

use super::DataDirArg;
use super::review::{admin_event, open};

#[derive(Debug, clap::Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Longest the write lock is held by one merge step, in ms (agents' writes wait that long
    /// at most).
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_lock_ms: u64,
}

pub fn run(args: &MaintainArgs) -> anyhow::Result<ExitCode> {
    // The data dir lock is held shared for the run: a restore waits for maintain to finish.
    let (mut store, mut audit, _lock) = open(&args.data_dir)?;
    let before = store.fts_shape()?;
    // Audit first: if the log cannot be written, nothing is touched.
    admin_event(
        &mut audit,
        json!({"event": "maintain_start", "fts_segments": before.segments}),
    )?;
    let merge = store.merge_fts(Duration::from_millis(args.max_lock_ms))?;
    let (memory_log, memory_copied) = store.optimize_and_checkpoint()?;
    drop(store);
    // The audit log gets the same care through a plain connection: optimize and a checkpoint
    // only, never a write of its own.
    let dir = args.data_dir.open()?;
    let conn = rusqlite::Connection::open_with_flags(
        dir.audit_db(),
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let (audit_log, audit_copied) = crate::store::maintain::optimize_and_checkpoint(&conn)?;
    drop(conn);
    let detail = json!({
        "event": "maintain",
        "fts_segments_before": merge.before.segments,
        "fts_segments_after": merge.after.segments,
        "fts_levels_after": merge.after.levels,
        "merge_steps": merge.steps,
        "longest_step_ms": (merge.longest_step_ms * 10.0).round() / 10.0,
        "memory_wal_frames": memory_log,
        "memory_wal_copied": memory_copied,
        "audit_wal_frames": audit_log,
        "audit_wal_copied": audit_copied,
    });
    admin_event(&mut audit, detail)?;
    println!(
        "full-text index: {} segments on {} levels -> {} on {} ({} merge steps, longest {:.1} ms, {:.0} ms in all)",
        merge.before.segments,
        merge.before.levels,
        merge.after.segments,
        merge.after.levels,
        merge.steps,
        merge.longest_step_ms,
        merge.total_ms
    );
    println!("memory.db: optimized; WAL checkpoint copied {memory_copied} of {memory_log} frames");
    println!("audit.db: optimized; WAL checkpoint copied {audit_copied} of {audit_log} frames");
    Ok(ExitCode::SUCCESS)
}
