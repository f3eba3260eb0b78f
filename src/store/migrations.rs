//! Schema of memory.db, versioned by `PRAGMA user_version`.
//!
//! Each migration runs inside one `BEGIN IMMEDIATE` transaction, so concurrent servers opening a
//! fresh file serialise and exactly one of them creates the schema. A file newer than this binary
//! is refused rather than guessed at.

use rusqlite::{Connection, TransactionBehavior};

/// Migrations in order; index + 1 is the `user_version` after it runs.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE entries (
    rowid          INTEGER PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    namespace      TEXT NOT NULL,
    content        TEXT NOT NULL,
    tags           TEXT NOT NULL,
    metadata       TEXT,
    status         TEXT NOT NULL,
    supersedes     TEXT,
    principal      TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    content_sha256 BLOB NOT NULL,
    key_id         TEXT NOT NULL,
    mac            BLOB NOT NULL
);
CREATE INDEX entries_listing ON entries (namespace, status, id);
CREATE INDEX entries_supersedes ON entries (supersedes) WHERE supersedes IS NOT NULL;

-- Full-text index over active entries only; the triggers keep it in step with `entries`, so a
-- row leaves the index the moment it stops being active.
CREATE VIRTUAL TABLE entries_fts USING fts5 (
    content, tags,
    content = 'entries', content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries WHEN new.status = 'active' BEGIN
    INSERT INTO entries_fts (rowid, content, tags) VALUES (new.rowid, new.content, new.tags);
END;
CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries WHEN old.status = 'active' BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, content, tags)
        VALUES ('delete', old.rowid, old.content, old.tags);
END;
CREATE TRIGGER entries_fts_update AFTER UPDATE ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, content, tags)
        SELECT 'delete', old.rowid, old.content, old.tags WHERE old.status = 'active';
    INSERT INTO entries_fts (rowid, content, tags)
        SELECT new.rowid, new.content, new.tags WHERE new.status = 'active';
END;
"#,
    r#"
-- Session starts per principal, so a rate on new sessions survives restarts and reconnects.
CREATE TABLE session_starts (
    principal  TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
CREATE INDEX session_starts_by_principal ON session_starts (principal, started_at);
"#,
    r#"
-- Insert-only, chained, sealed records of every change to an entry's served state after it was
-- written (store/ledger.rs). Reads look an entry's records up by (entry_id, kind) alone.
CREATE TABLE ledger (
    seq       INTEGER PRIMARY KEY,
    entry_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    at        INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    key_id    TEXT NOT NULL,
    mac       BLOB NOT NULL
);
CREATE INDEX ledger_by_entry ON ledger (entry_id, kind);
"#,
];

/// The version that creates the ledger; its records for rows already retired are sealed in the
/// same transaction (it needs the entry keys, so the caller's `after_step` does it).
pub const LEDGER_VERSION: i64 = 3;

/// The schema version this binary writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    #[error(
        "memory.db has schema version {found}, newer than this memwarden ({CURRENT_VERSION}); upgrade memwarden"
    )]
    TooNew { found: i64 },
    #[error("memory.db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("memory.db: {0}")]
    Schema(String),
}

/// Brings the schema to `CURRENT_VERSION`. `after_step` runs inside each step's transaction
/// with the version it reaches, for data a step needs that SQL alone cannot make (seals).
pub fn migrate(
    conn: &mut Connection,
    after_step: &dyn Fn(&Connection, i64) -> rusqlite::Result<()>,
) -> Result<(), MigrationError> {
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if !(0..=CURRENT_VERSION).contains(&version) {
            return Err(MigrationError::TooNew { found: version });
        }
        let Some(step) = MIGRATIONS.get(version as usize) else {
            return Ok(());
        };
        tx.execute_batch(step)?;
        after_step(&tx, version + 1)?;
        // PRAGMA takes no parameters; the value is our own integer, never input.
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))?;
        tx.commit()?;
    }
}

/// Refuses a memory.db holding any schema object these migrations did not create (a trigger
/// could drop or rewrite every insert; see [`crate::sqlite_schema`]).
pub fn check_schema(conn: &Connection) -> Result<(), MigrationError> {
    // The expected objects come from the same steps on an empty database (the ledger's
    // backfill adds rows, never objects).
    crate::sqlite_schema::check(conn, |c| migrate(c, &|_, _| Ok(())))?
        .map_err(MigrationError::Schema)
}
