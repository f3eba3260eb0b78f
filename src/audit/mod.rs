//! audit.db: one hash-chained, MAC'd event per call, allowed or refused (DESIGN.md §7).
//!
//! The agent-facing path only ever *appends* here; it never reads events back. Events carry
//! ids, sizes, hashes and codes — never memory content, metadata values, queries or keys.
//! Appends from concurrent processes serialise on `BEGIN IMMEDIATE`, so the chain never forks.

pub mod append;
mod chain;
pub mod checkpoint;
mod checkpointer;
pub mod copy;
pub mod inspect;
pub mod pg_log;
pub mod postgres;
pub mod query;
mod reader;
pub mod sink;
pub mod verify;
pub mod witness;

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

pub use append::{AuditLog, CheckpointPolicy, Head, NewEvent};
pub use chain::LinkedEvent;
pub use reader::AuditReader;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SessionStart,
    Call,
    SessionEnd,
    Security,
    Admin,
    /// A signed checkpoint of the event before it (see [`checkpoint`]).
    Checkpoint,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 6] = [
        Self::SessionStart,
        Self::Call,
        Self::SessionEnd,
        Self::Security,
        Self::Admin,
        Self::Checkpoint,
    ];

    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SessionStart => "session_start",
            Self::Call => "call",
            Self::SessionEnd => "session_end",
            Self::Security => "security",
            Self::Admin => "admin",
            Self::Checkpoint => "checkpoint",
        }
    }

    /// The kind stored as `s`, if any.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done as asked.
    Ok,
    /// Refused because of the caller: schema, limits, not found, policy.
    Denied,
    /// Failed inside: storage, integrity, internal.
    Error,
}

impl Outcome {
    /// The name stored in the `outcome` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// Why audit.db could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit.db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "audit.db has schema version {found}, which this memwarden (version {CURRENT_VERSION}) does not know"
    )]
    TooNew { found: i64 },
    #[error("audit.db: {0}")]
    Corrupt(String),
    #[error("audit.db: {0}")]
    Schema(String),
    #[error(
        "{why}, but memory.db beside it has been used: starting a new chain here would hide \
         everything audited before. Put audit.db back (from a backup: `memwarden restore`), or \
         start a new chain on purpose with `memwarden audit reset \
         --i-understand-the-chain-restarts` (audited)"
    )]
    ChainMissing { why: String },
    #[error("{0}")]
    Open(String),
    /// The database holding the events cannot be reached or cannot take them right now
    /// (PostgreSQL restarting, the network down, its disk full, a lock wait timed out): nothing
    /// is done without its event, but the log is not broken, and the server tries again on the
    /// next call instead of failing closed for good.
    #[error("{0}")]
    Unreachable(String),
}

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY,
    ts         TEXT NOT NULL,
    kind       TEXT NOT NULL,
    session_id TEXT,
    principal  TEXT,
    tool       TEXT,
    outcome    TEXT,
    code       TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    mac        TEXT NOT NULL
);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_session ON events (session_id);
"#];

/// The schema version this binary writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) audit.db for appending: WAL, FULL sync, migrations.
pub fn open_rw(path: &Path) -> Result<Connection, AuditError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut conn = Connection::open_with_flags(path, flags)?;
    crate::sqlite_file::wait_when_busy(&mut conn)?;
    crate::sqlite_file::set_wal(&conn)?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA trusted_schema = OFF;")?;
    migrate(&mut conn)?;
    check_schema(&conn)?;
    Ok(conn)
}

/// Whether the memory.db beside `audit_db` has ever been initialised: a file (or WAL) with any
/// bytes in it. Every opener opens audit.db first and gives a new audit.db its `chain_start`
/// event before memory.db gets its first byte, so an initialised memory.db means a chain with
/// at least one event existed. (Holding entries would be a weaker test: a data dir used only
/// for reads, or purged, holds none, and its read history would vanish unnoticed.)
pub fn memory_used(audit_db: &Path) -> bool {
    let size = |name: &str| {
        std::fs::symlink_metadata(audit_db.with_file_name(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    size("memory.db") > 0 || size("memory.db-wal") > 0
}

/// Why the data dir's audit chain is gone — audit.db missing, empty, or without a single
/// event — while its memory.db has been used; `None` when the chain is there or the data dir
/// is new. Reads only.
pub fn vanished_chain(audit_db: &Path) -> Result<Option<String>, AuditError> {
    if !memory_used(audit_db) {
        return Ok(None);
    }
    let meta = match std::fs::symlink_metadata(audit_db) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Some("audit.db is missing".into()));
        }
        Err(e) => return Err(AuditError::Open(format!("{}: {e}", audit_db.display()))),
    };
    let mut wal = audit_db.as_os_str().to_owned();
    wal.push("-wal");
    let wal_len = std::fs::symlink_metadata(&wal)
        .map(|m| m.len())
        .unwrap_or(0);
    if meta.len() == 0 && wal_len == 0 {
        return Ok(Some("audit.db is empty (0 bytes)".into()));
    }
    let conn = Connection::open_with_flags(
        audit_db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(Some("audit.db has no events table".into()));
    }
    let any: bool = conn.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))?;
    Ok((!any).then(|| "audit.db holds no events (a chain restarted from genesis)".into()))
}

/// Brings the schema to `CURRENT_VERSION`, one `BEGIN IMMEDIATE` step at a time.
fn migrate(conn: &mut Connection) -> Result<(), AuditError> {
    crate::sqlite_file::migrate(conn, MIGRATIONS, &|_, _| Ok(())).map_err(|e| match e {
        crate::sqlite_file::MigrateError::TooNew { found } => AuditError::TooNew { found },
        crate::sqlite_file::MigrateError::Sqlite(e) => e.into(),
    })
}

/// Refuses an audit.db holding any schema object the migrations did not create: a trigger on
/// `events` could drop or rewrite events while the chain still verifies.
pub fn check_schema(conn: &Connection) -> Result<(), AuditError> {
    crate::sqlite_schema::check(conn, migrate)?.map_err(AuditError::Schema)
}

/// Opens audit.db for reading only, as an auditor would: a copy, possibly in a read-only
/// directory, without memory.db. Never writes, never creates.
pub fn open_ro(path: &Path) -> Result<Connection, AuditError> {
    check_ro_file(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal_pending = std::fs::metadata(&wal)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    let dir_writable = path.parent().map(dir_writable).unwrap_or(false);
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    let shm_present = std::path::Path::new(&shm).is_file();
    let conn = if dir_writable || !wal_pending {
        // Without a pending WAL, the file alone is the whole database: read it as immutable so
        // no -shm needs creating (a read-only directory allows none).
        let extra = if dir_writable { "" } else { "&immutable=1" };
        Connection::open_with_flags(crate::sqlite_file::ro_uri(path, extra), flags)?
    } else if shm_present {
        // A live server's WAL in a directory this process may only read (the audit-head and
        // metrics units): SQLite reads through the existing -shm without writing it.
        Connection::open_with_flags(crate::sqlite_file::ro_uri(path, ""), flags)?
    } else {
        return Err(AuditError::Open(format!(
            "{} has un-checkpointed changes in its -wal file and its directory is read-only; \
             copy it to a writable directory (with the -wal file) first",
            path.display()
        )));
    };
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != CURRENT_VERSION {
        return Err(AuditError::TooNew { found: version });
    }
    check_schema(&conn)?;
    Ok(conn)
}

/// Refuses, with a clear message, what [`open_ro`] cannot read: a path through a link, no
/// file, an empty file.
fn check_ro_file(path: &Path) -> Result<(), AuditError> {
    // SQLite refuses the link anyway (SQLITE_OPEN_NOFOLLOW); name it. A copy handed to an
    // auditor may have any mode: only data dirs are held to 0600 (config::DataDir::open_dir).
    if let Ok(Some(link)) = crate::fsafe::first_symlink(path) {
        return Err(AuditError::Open(format!(
            "{}: {} is a symbolic link; audit databases are opened without following links \
             (give the real path)",
            path.display(),
            link.display()
        )));
    }
    if !path.is_file() {
        return Err(AuditError::Open(format!(
            "{}: no such audit database",
            path.display()
        )));
    }
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(AuditError::Open(format!(
            "{}: the file is empty (0 bytes): no audit chain",
            path.display()
        )));
    }
    Ok(())
}

/// Whether this process may create files in `dir` (SQLite's -shm), by creating one.
fn dir_writable(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(format!(
        ".memwarden-probe-{}",
        uuid::Uuid::new_v4().simple()
    ));
    // Exclusive and no-follow: the probe never writes through anything already there.
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
