//! `memwarden maintain`: brings the full-text indexes and both databases back into shape while
//! servers keep running (FTS5 merges in short write transactions, `PRAGMA optimize`, passive WAL
//! checkpoints). Audited as admin events; prints what it did. A nightly timer runs it. On
//! PostgreSQL autovacuum does this work: maintain reports what it has left. On both, a
//! namespace whose kept quota usage disagrees with its rows (what `memwarden verify` reports)
//! is counted again from them, and on PostgreSQL the entries the search index (postings) has
//! drifted from are posted again.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::DataDirArg;
use super::review::{admin_event, open};
use crate::audit::sink::Sink;
use crate::store::{IndexRepair, MaintainReport, UsageDrift};

/// `memwarden maintain`'s arguments.
#[derive(Debug, clap::Args)]
pub struct MaintainArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
    /// Longest the write lock is held by one merge step, in ms (agents' writes wait that long
    /// at most).
    #[arg(long, value_name = "MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_lock_ms: u64,
}

/// Runs the upkeep and reports it.
pub fn run(args: &MaintainArgs) -> anyhow::Result<ExitCode> {
    // The data dir lock is held shared for the run: a restore waits for maintain to finish.
    let (mut store, mut audit, _lock) = open(&args.data_dir, &args.store)?;
    let before = store.index_shape()?;
    // Audit first: if the log cannot be written, nothing is touched.
    admin_event(
        &mut audit,
        json!({"event": "maintain_start", "fts_segments": before.segments}),
    )?;
    let m = store.maintain(Duration::from_millis(args.max_lock_ms))?;
    let recounted = store.recount_usage()?;
    let reposted = store.repair_index()?;
    drop(store);
    report_recount(&recounted);
    if let Some(r) = &reposted {
        report_repost(r);
    }
    match audit {
        Sink::File(_) => sqlite_audit_upkeep(args, &m, recounted.len(), &mut audit),
        Sink::Postgres(_) => postgres_report(&m, recounted.len(), reposted.as_ref(), &mut audit),
    }
}

/// What the search index's repair did: each entry posted again, each stray position cleared.
fn report_repost(r: &IndexRepair) {
    if r.found.is_empty() {
        println!("search index: holds every active entry's words and nothing else");
        return;
    }
    println!(
        "search index: {} postings inserted, {} stray postings deleted; what disagreed:",
        r.inserted, r.deleted
    );
    for line in super::verify::index_lines(&r.found) {
        println!("{line}");
    }
}

/// What the quota recount corrected: each namespace whose kept usage disagreed with its rows.
fn report_recount(recounted: &[UsageDrift]) {
    if recounted.is_empty() {
        println!("quota usage: every namespace's counts match its rows");
        return;
    }
    println!(
        "quota usage: {} namespaces counted again from their rows:",
        recounted.len()
    );
    for d in recounted {
        println!("{}", super::verify::drift_line(d));
    }
}

/// SQLite: the audit log gets the same care as memory.db through a plain connection (optimize
/// and a checkpoint only, never a write of its own); then the report.
fn sqlite_audit_upkeep(
    args: &MaintainArgs,
    m: &MaintainReport,
    recounted: usize,
    audit: &mut Sink,
) -> anyhow::Result<ExitCode> {
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
        "usage_recounted": recounted,
    });
    admin_event(audit, detail)?;
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

/// PostgreSQL: autovacuum does the upkeep (the app role may not VACUUM or ANALYZE tables it
/// does not own), so maintain changes nothing else and says so, with what autovacuum has left.
fn postgres_report(
    m: &MaintainReport,
    recounted: usize,
    reposted: Option<&IndexRepair>,
    audit: &mut Sink,
) -> anyhow::Result<ExitCode> {
    let found = reposted.map(|r| &r.found);
    admin_event(
        audit,
        json!({
            "event": "maintain",
            "engine": "postgres",
            "dead_rows_before": m.segments_before,
            "dead_rows_after": m.segments_after,
            "usage_recounted": recounted,
            "entries_reposted": found.map_or(0, |f| f.missing.len()),
            "stray_positions": found.map_or(0, |f| f.stray.len()),
            "postings_inserted": reposted.map_or(0, |r| r.inserted),
            "postings_deleted": reposted.map_or(0, |r| r.deleted),
        }),
    )?;
    println!(
        "memory.entries: {} dead row versions awaiting autovacuum (was {}); vacuum is left to \
         PostgreSQL's autovacuum, which also analyses the tables, and the app role may not run \
         VACUUM",
        m.segments_after, m.segments_before
    );
    Ok(ExitCode::SUCCESS)
}
