//! Read-only looks at an audit.db file for `health`, `metrics` and `maintain`: integrity, schema,
//! the counts the metrics report, and upkeep (optimize, checkpoint) that never writes an event.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::AuditError;

/// What the metrics report from the audit log.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Call events by (tool, outcome), in that order.
    pub calls: Vec<(String, String, i64)>,
    /// Every call's duration, in microseconds.
    pub durations_us: Vec<i64>,
    /// Session starts.
    pub sessions: i64,
    /// Security events by their `event`, in that order.
    pub security: Vec<(String, i64)>,
    /// Reconnections to PostgreSQL that serving processes recorded (`store_reconnected`).
    pub reconnects: i64,
    /// Connection attempts that failed before those reconnections.
    pub connection_errors: i64,
}

/// The `event` of the security event a store's reconnection to its database records (written by
/// the PostgreSQL backend, counted by `memwarden metrics`).
pub const RECONNECTED: &str = "store_reconnected";

/// `PRAGMA quick_check` on the file: `Ok("ok")`, or what SQLite found.
pub fn quick_check(path: &Path) -> Result<String, String> {
    crate::sqlite_file::quick_check(path)
}

/// Whether the file holds only what the migrations create (a trigger on `events` could drop or
/// rewrite events while the chain still verifies).
pub fn schema_check(path: &Path) -> Result<(), String> {
    crate::sqlite_file::schema_check(path, |c| super::check_schema(c).map_err(|e| e.to_string()))
}

/// The metrics' counts, read in one pass per series.
pub fn stats(path: &Path) -> Result<Stats, AuditError> {
    let conn = super::open_ro(path)?;
    let calls = conn
        .prepare(
            "SELECT coalesce(tool, 'unknown'), outcome, count(*) FROM events \
             WHERE kind = 'call' GROUP BY 1, 2 ORDER BY 1, 2",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let durations_us = conn
        .prepare(
            "SELECT json_extract(detail, '$.duration_us') FROM events WHERE kind = 'call' \
             AND json_extract(detail, '$.duration_us') IS NOT NULL",
        )?
        .query_map([], |r| r.get::<_, i64>(0))?
        .filter_map(Result::ok)
        .collect();
    let sessions = conn.query_row(
        "SELECT count(*) FROM events WHERE kind = 'session_start'",
        [],
        |r| r.get(0),
    )?;
    let security = conn
        .prepare(
            "SELECT coalesce(json_extract(detail, '$.event'), 'unknown'), count(*) FROM events \
             WHERE kind = 'security' GROUP BY 1 ORDER BY 1",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let (reconnects, connection_errors) = conn.query_row(
        "SELECT count(*), coalesce(sum(json_extract(detail, '$.failed_attempts')), 0) \
         FROM events WHERE kind = 'security' AND json_extract(detail, '$.event') = ?1",
        [RECONNECTED],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Stats {
        calls,
        durations_us,
        sessions,
        security,
        reconnects,
        connection_errors,
    })
}

/// `PRAGMA optimize` and a passive WAL checkpoint on audit.db, through a plain connection that
/// never appends. Returns the checkpoint's (log frames, frames copied).
pub fn optimize_and_checkpoint(path: &Path) -> Result<(i64, i64), AuditError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    crate::sqlite_file::wait_when_busy(&mut conn)?;
    Ok(crate::sqlite_file::optimize_and_checkpoint(&conn)?)
}

/// The chain head of an audit.db file (one without a WAL beside it, e.g. a kept copy).
pub fn head(path: &Path) -> Result<super::append::Head, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    // The file is not checked for stray objects here: run none of its SQL.
    conn.execute_batch("PRAGMA trusted_schema = OFF;")?;
    super::append::head(&conn)
}

/// One audited agent write, or operator reject or import (for reconciling the store with the
/// log).
#[derive(Debug, Clone)]
pub struct AuditedWrite {
    /// `memory_store`, `memory_update`, `memory_delete`, `review_reject`, or `import` (one per
    /// imported entry: an import creates the entries it lists).
    pub tool: String,
    /// The entry the write created (store, update).
    pub created: Option<String>,
    /// The entry it retired (update, delete, reject).
    pub target: Option<String>,
    /// No later event of its session went through the store: it may be the one a crash left.
    pub last: bool,
}

/// Every audited write, in the log's order.
pub fn audited_writes(path: &Path) -> Result<Vec<AuditedWrite>, AuditError> {
    let conn = super::open_ro(path)?;
    // An ok call or the session's end after the write means the process lived past its commit.
    let mut stmt = conn.prepare(
        "SELECT tool, json_extract(detail, '$.created'), json_extract(detail, '$.ids[0]'), \
         NOT EXISTS (SELECT 1 FROM events AS later WHERE later.session_id = events.session_id \
             AND later.seq > events.seq \
             AND (later.kind = 'session_end' OR (later.kind = 'call' AND later.outcome = 'ok'))) \
         FROM events WHERE kind = 'call' AND outcome = 'ok' \
         AND tool IN ('memory_store', 'memory_update', 'memory_delete') \
         UNION ALL \
         SELECT 'review_reject', NULL, json_extract(detail, '$.id'), 0 FROM events \
         WHERE kind = 'admin' AND json_extract(detail, '$.event') = 'review_reject' \
         UNION ALL \
         SELECT 'import', ids.value, NULL, 0 FROM events, json_each(events.detail, '$.ids') AS ids \
         WHERE events.kind = 'admin' AND json_extract(events.detail, '$.event') = 'import'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AuditedWrite {
            tool: r.get(0)?,
            created: r.get(1)?,
            target: r.get(2)?,
            last: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
