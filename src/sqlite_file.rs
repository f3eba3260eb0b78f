//! What every SQLite file of ours gets, memory.db and audit.db alike: the WAL switch and the
//! migration runner (numbered steps, `PRAGMA user_version`, one `BEGIN IMMEDIATE` per step).
//! The stray-object check beside it is [`crate::sqlite_schema`].

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

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

/// Rows in `table` of the database at `path`, opened read-only without following links;
/// `None` when it cannot be read. `table` is one of our table names, never input.
pub fn count_rows(path: &Path, table: &'static str) -> Option<i64> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).ok()?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()
}
