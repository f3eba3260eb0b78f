//! Consistent copies of a data dir's two databases (SQLite's online backup API), and the
//! file-level operations backup and restore need. Holds no keys and reads no rows: what the
//! copies hold is checked by the store and the audit log.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::fsafe::Dir;

/// Why a snapshot or copy failed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A read snapshot of a live database, held open until dropped.
fn snapshot_of(path: &Path, table: &str) -> Result<Connection, Error> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    super::wait_when_busy(&mut conn)?;
    // A read transaction pins the snapshot (WAL: writers go on; this connection sees none of
    // their commits until it ends). Our own table name, never input.
    conn.execute_batch(&format!("BEGIN; SELECT count(*) FROM {table};"))?;
    Ok(conn)
}

/// Read snapshots of memory.db and audit.db taken at one moment with no write in flight:
/// every write holds memory.db's write lock from before its audit event until its commit
/// (audit before commit), so holding that lock while both snapshots are pinned means the
/// audit copy records exactly the writes the memory copy holds. Writers wait only for the
/// pinning (milliseconds), not for the copy.
fn consistent_snapshots(memory: &Path, audit_db: &Path) -> Result<(Connection, Connection), Error> {
    let mut lock = Connection::open_with_flags(
        memory,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    super::wait_when_busy(&mut lock)?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    let pinned = snapshot_of(audit_db, "events")
        .and_then(|audit| Ok((snapshot_of(memory, "entries")?, audit)));
    lock.execute_batch("ROLLBACK")?;
    pinned
}

/// Copies a pinned snapshot into `out/name` with SQLite's online backup API, in one step inside
/// the snapshot's read transaction. The file is created empty by us first (exclusive,
/// no-follow, 0600); SQLite only opens it, without following links.
fn copy_online(src: &Connection, out: &Dir, name: &str) -> Result<(), Error> {
    drop(out.create_new(name)?);
    let mut dst = Connection::open_with_flags(
        out.join(name),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    {
        let backup = rusqlite::backup::Backup::new(src, &mut dst)?;
        backup.run_to_completion(i32::MAX, Duration::from_millis(1), None)?;
    }
    // A self-contained file: no WAL beside it.
    let _: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    dst.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// memory.db and audit.db pinned at one moment (see [`Snapshots::pin`]).
pub struct Snapshots {
    memory: Connection,
    audit: Connection,
}

impl Snapshots {
    /// Read snapshots of `memory` and `audit_db` taken with no write in flight.
    pub fn pin(memory: &Path, audit_db: &Path) -> Result<Self, Error> {
        let (memory, audit) = consistent_snapshots(memory, audit_db)?;
        Ok(Self { memory, audit })
    }

    /// Copies both into `out` as `memory.db` and `audit.db`.
    pub fn copy_to(&self, out: &Dir) -> Result<(), Error> {
        copy_online(&self.memory, out, "memory.db")?;
        copy_online(&self.audit, out, "audit.db")
    }
}

/// `PRAGMA integrity_check` on a file opened read-only.
pub fn integrity_check(path: &Path) -> Result<(), Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check == "ok" {
        Ok(())
    } else {
        Err(format!("integrity_check says {check}").into())
    }
}

/// Checkpoints a database kept aside into a single file (no WAL beside it). Runs no trigger
/// (only a pragma), whatever the file holds.
pub fn fold_wal(path: &Path) -> Result<(), String> {
    let len = std::fs::symlink_metadata(path)
        .map_err(|e| e.to_string())?
        .len();
    if len == 0 {
        return Err("empty (0 bytes)".into());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA trusted_schema = OFF;")
        .map_err(|e| e.to_string())?;
    let _: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok(())
}
