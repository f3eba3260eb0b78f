//! What every SQLite file of ours gets, memory.db and audit.db alike: the WAL switch and the
//! migration runner (numbered steps, `PRAGMA user_version`, one `BEGIN IMMEDIATE` per step).
//! The stray-object check beside it is [`crate::sqlite_schema`].

pub mod snapshot;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::Error;

/// Switches a connection to WAL, which lets readers run beside one writer.
///
/// On a fresh file another process may hold the lock while it creates the schema, and SQLite
/// answers a journal-mode change with SQLITE_BUSY without consulting the busy handler: retry
/// until the busy timeout.
pub fn set_wal(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why a migration run stopped.
#[derive(Debug)]
pub enum MigrateError {
    /// The file's schema is newer than this binary's steps.
    TooNew { found: i64 },
    /// SQLite refused a step.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

/// Brings the schema up through `steps` (step `n` takes version `n` to `n + 1`), one
/// `BEGIN IMMEDIATE` transaction per step, so concurrent openers of a fresh file serialise.
/// `after_step` runs inside each step's transaction with the version it reaches, for data a step
/// needs that SQL alone cannot make (seals).
pub fn migrate(
    conn: &mut Connection,
    steps: &[&str],
    after_step: &dyn Fn(&Connection, i64) -> rusqlite::Result<()>,
) -> Result<(), MigrateError> {
    let current = steps.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if !(0..=current).contains(&version) {
            return Err(MigrateError::TooNew { found: version });
        }
        let Some(step) = steps.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(step)?;
        after_step(&tx, version + 1)?;
        // PRAGMA takes no parameters; the value is our own integer, never input.
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
        tx.commit()?;
    }
}

/// `PRAGMA optimize` and a passive checkpoint on any of our databases.
pub fn optimize_and_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.execute_batch("PRAGMA optimize")?;
    let (log, copied): (i64, i64) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })?;
    Ok((log, copied))
}

/// The error a call gets when SQLite fails. Busy, locked, full, read-only, I/O and corruption failures are environmental: the store
/// cannot serve now (the operator's `health` and `verify` say why). Anything else from
/// SQLite is a bug on our side.
pub fn storage_error(err: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    match err.sqlite_error_code() {
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::DiskFull
            | C::ReadOnly
            | C::SystemIoFailure
            | C::CannotOpen
            | C::OutOfMemory
            | C::FileLockingProtocolFailed
            | C::DatabaseCorrupt
            | C::NotADatabase,
        ) => Error::Unavailable(format!("sqlite: {err}")),
        _ => Error::Internal(format!("sqlite: {err}")),
    }
}

/// `PRAGMA quick_check` on a file opened read-only: `Ok("ok")`, or what SQLite found.
pub fn quick_check(path: &std::path::Path) -> Result<String, String> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| e.to_string())?;
    let r: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if r == "ok" { Ok(r) } else { Err(r) }
}

/// Rows in `table` of the database at `path`, opened read-only without following links;
/// `None` when it cannot be read. `table` is one of our table names, never input.
pub fn count_rows(path: &Path, table: &'static str) -> Option<i64> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).ok()?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()
}

/// The read-only `file:` URI of `path`, with `extra` query parameters (`&immutable=1`, …).
pub fn ro_uri(path: &std::path::Path, extra: &str) -> String {
    let mut u = String::from("file:");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'?' | b'#' | b'%' => u.push_str(&format!("%{b:02X}")),
            _ => u.push(b as char),
        }
    }
    u.push_str("?mode=ro");
    u.push_str(extra);
    u
}

/// Runs `check` (a stray-object check) on the file opened read-only.
pub fn schema_check(
    path: &std::path::Path,
    check: impl FnOnce(&Connection) -> Result<(), String>,
) -> Result<(), String> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| e.to_string())?;
    check(&conn)
}
