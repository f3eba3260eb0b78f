//! What every SQLite file of ours gets, memory.db and audit.db alike: the WAL switch and the
//! migration runner (numbered steps, `PRAGMA user_version`, one `BEGIN IMMEDIATE` per step).
//! The stray-object check beside it is [`crate::sqlite_schema`].

pub mod snapshot;

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::Error;

/// How long a statement waits for a lock another connection holds before it fails with
/// SQLITE_BUSY (which a call answers `UNAVAILABLE`).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes `conn` wait up to [`BUSY_TIMEOUT`] for a lock another connection holds.
///
/// Why not SQLite's own `busy_timeout`: its handler sleeps 1, 2, 5, … ms and then 100 ms
/// between attempts, so a writer that has waited a while looks ten times a second while every
/// writer that began waiting in the last quarter second looks every few milliseconds and takes
/// the lock first, turn after turn. With many writers (16 sessions on one data dir on a loaded
/// machine) the oldest waiter starved past the timeout though the lock was never held for long.
/// Here the first retries come after 0.5–1, 1–2 and 2–4 ms, and every later one after a random
/// 4–8 ms however long the wait has lasted: at each release every waiter past its first few
/// milliseconds has the same chance, so the length of a wait does not count against it.
pub fn wait_when_busy(conn: &mut Connection) -> rusqlite::Result<()> {
    let mut waiting_since = Instant::now();
    // SQLite calls the handler with `attempt` 0 for the first retry of each lock.
    conn.busy_handler(Some(move |attempt: i32| {
        let now = Instant::now();
        if attempt == 0 {
            waiting_since = now;
        }
        if now.duration_since(waiting_since) >= BUSY_TIMEOUT {
            return false;
        }
        // A fresh `RandomState` is randomly keyed: hashing nothing with it is a cheap random
        // number, and the sleep needs no better.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let ceiling_us = 1_000_u64 << attempt.clamp(0, 3);
        std::thread::sleep(Duration::from_micros(
            ceiling_us / 2 + random % (ceiling_us / 2 + 1),
        ));
        true
    }))
}

/// Switches a connection to WAL, which lets readers run beside one writer.
///
/// On a fresh file another process may hold the lock while it creates the schema, and SQLite
/// answers a journal-mode change with SQLITE_BUSY without consulting the busy handler: retry
/// until the busy timeout.
pub fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
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
///
/// The optimize runs inside `BEGIN IMMEDIATE`. It may ANALYZE a table (one whose indexes have
/// no statistics yet, as on a new file), and that write begins inside the pragma's own read:
/// SQLite answers a write begun there BUSY at once, without the busy handler (waiting could
/// deadlock), so beside busy writers `maintain` failed with "database is locked". Taking the
/// write lock first makes it wait its turn like any writer; a failed optimize rolls back.
pub fn optimize_and_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    tx.execute_batch("PRAGMA optimize")?;
    tx.commit()?;
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
