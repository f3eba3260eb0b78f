//! Schema of memory.db, versioned by `PRAGMA user_version`.
//!
//! Each migration runs inside one `BEGIN IMMEDIATE` transaction, so concurrent servers opening a
//! fresh file serialise and exactly one of them creates the schema. A file newer than this binary
//! is refused rather than guessed at.

use rusqlite::Connection;

use crate::sqlite_file::MigrateError;

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
    r#"
-- Scope inside the index (issue 13): a search or list costs what the caller's scope holds, not
-- what the store holds. The old index and its triggers go; the new one is built below.
DROP TRIGGER entries_fts_insert;
DROP TRIGGER entries_fts_delete;
DROP TRIGGER entries_fts_update;
DROP TABLE entries_fts;

-- Row ids in creation order, so that since/until become row-id ranges the index can use. Rows
-- written by concurrent servers could commit out of order; they trade row ids (the set of ids
-- stays, only the rows out of place move). Writers keep the order from here on (Store::stamp).
CREATE TEMP TABLE renumber AS
    WITH by_age AS (SELECT rowid AS old, row_number() OVER (ORDER BY created_at, rowid) AS k
                    FROM entries),
         slots AS (SELECT rowid AS slot, row_number() OVER (ORDER BY rowid) AS k FROM entries)
    SELECT by_age.old AS old, slots.slot AS new FROM by_age JOIN slots USING (k)
    WHERE by_age.old != slots.slot;
UPDATE entries SET rowid = -r.new FROM temp.renumber AS r WHERE r.old = entries.rowid;
UPDATE entries SET rowid = -rowid WHERE rowid < 0;
DROP TABLE temp.renumber;

-- One token for the namespace and one per tag, each a single unicode61 token ('z' escapes the
-- characters that would split it: zz z, zu _, zd ., zc :, zh -). Tags are stored as a JSON array
-- of strings that never need JSON escapes. store/scope.rs builds the same tokens.
ALTER TABLE entries ADD COLUMN scope TEXT GENERATED ALWAYS AS (
    'n' || replace(replace(replace(replace(replace(namespace,
        'z', 'zz'), '_', 'zu'), '.', 'zd'), ':', 'zc'), '-', 'zh')
    || CASE WHEN tags = '[]' THEN '' ELSE ' t' || replace(
        replace(replace(replace(replace(replace(substr(tags, 3, length(tags) - 4),
            'z', 'zz'), '_', 'zu'), '.', 'zd'), ':', 'zc'), '-', 'zh'),
        '","', ' t') END
) VIRTUAL;

CREATE VIRTUAL TABLE entries_fts USING fts5 (
    content, tags, scope,
    content = 'entries', content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO entries_fts (rowid, content, tags, scope)
    SELECT rowid, content, tags, scope FROM entries WHERE status = 'active';
CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries WHEN new.status = 'active' BEGIN
    INSERT INTO entries_fts (rowid, content, tags, scope)
        VALUES (new.rowid, new.content, new.tags, new.scope);
END;
CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries WHEN old.status = 'active' BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, content, tags, scope)
        VALUES ('delete', old.rowid, old.content, old.tags, old.scope);
END;
CREATE TRIGGER entries_fts_update AFTER UPDATE ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, content, tags, scope)
        SELECT 'delete', old.rowid, old.content, old.tags, old.scope WHERE old.status = 'active';
    INSERT INTO entries_fts (rowid, content, tags, scope)
        SELECT new.rowid, new.content, new.tags, new.scope WHERE new.status = 'active';
END;

-- List: one namespace's active rows newest first ((namespace, status, rowid)); every namespace's
-- for a "*" scope ((status, rowid)); since/until to row ids (created_at grows with rowid).
CREATE INDEX entries_scope ON entries (namespace, status);
CREATE INDEX entries_by_status ON entries (status);
CREATE INDEX entries_created ON entries (created_at);
"#,
    r#"
-- Namespace-qualified terms (store/sqlite/scoped.rs): a search inside a few namespaces reads
-- their postings alone. Contentless: rows leave it by row id, and nothing reads text back.
CREATE VIRTUAL TABLE scoped_fts USING fts5 (
    words,
    content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO scoped_fts (rowid, words)
    SELECT rowid, memwarden_scoped_words(namespace, content, tags) FROM entries
    WHERE status = 'active';
CREATE TRIGGER scoped_fts_insert AFTER INSERT ON entries WHEN new.status = 'active' BEGIN
    INSERT INTO scoped_fts (rowid, words)
        VALUES (new.rowid, memwarden_scoped_words(new.namespace, new.content, new.tags));
END;
CREATE TRIGGER scoped_fts_delete AFTER DELETE ON entries WHEN old.status = 'active' BEGIN
    DELETE FROM scoped_fts WHERE rowid = old.rowid;
END;
CREATE TRIGGER scoped_fts_update AFTER UPDATE ON entries BEGIN
    DELETE FROM scoped_fts WHERE rowid = old.rowid AND old.status = 'active';
    INSERT INTO scoped_fts (rowid, words)
        SELECT new.rowid, memwarden_scoped_words(new.namespace, new.content, new.tags)
        WHERE new.status = 'active';
END;
"#,
    r#"
-- Each namespace's quota usage (store/write.rs `check_quota`): its rows, whatever their status,
-- and their content's bytes, kept in step by triggers inside the transaction that changes a
-- row, so a quota is checked by one lookup instead of reading every row of the namespace on
-- every store. Triggers, not the writer, so no path that changes rows (purge, retention,
-- import, migrate) can leave the count behind.
CREATE TABLE namespace_usage (
    namespace TEXT PRIMARY KEY,
    entries   INTEGER NOT NULL,
    bytes     INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO namespace_usage (namespace, entries, bytes)
    SELECT namespace, count(*), coalesce(sum(length(CAST(content AS BLOB))), 0) FROM entries
    GROUP BY namespace;
CREATE TRIGGER namespace_usage_insert AFTER INSERT ON entries BEGIN
    INSERT INTO namespace_usage (namespace, entries, bytes)
        VALUES (new.namespace, 1, length(CAST(new.content AS BLOB)))
        ON CONFLICT (namespace) DO UPDATE
        SET entries = entries + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER namespace_usage_delete AFTER DELETE ON entries BEGIN
    UPDATE namespace_usage
        SET entries = entries - 1, bytes = bytes - length(CAST(old.content AS BLOB))
        WHERE namespace = old.namespace;
END;
CREATE TRIGGER namespace_usage_update AFTER UPDATE OF namespace, content ON entries BEGIN
    UPDATE namespace_usage
        SET entries = entries - 1, bytes = bytes - length(CAST(old.content AS BLOB))
        WHERE namespace = old.namespace;
    INSERT INTO namespace_usage (namespace, entries, bytes)
        VALUES (new.namespace, 1, length(CAST(new.content AS BLOB)))
        ON CONFLICT (namespace) DO UPDATE
        SET entries = entries + 1, bytes = bytes + excluded.bytes;
END;
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
    // Migration 5's triggers and backfill call it, here and on every later write.
    super::scoped::register(conn)?;
    crate::sqlite_file::migrate(conn, MIGRATIONS, after_step).map_err(|e| match e {
        MigrateError::TooNew { found } => MigrationError::TooNew { found },
        MigrateError::Sqlite(e) => MigrationError::Sqlite(e),
    })
}

/// Refuses a memory.db holding any schema object these migrations did not create (a trigger
/// could drop or rewrite every insert; see [`crate::sqlite_schema`]).
pub fn check_schema(conn: &Connection) -> Result<(), MigrationError> {
    // The expected objects come from the same steps on an empty database (the ledger's
    // backfill adds rows, never objects).
    crate::sqlite_schema::check(conn, |c| migrate(c, &|_, _| Ok(())))?
        .map_err(MigrationError::Schema)
}
