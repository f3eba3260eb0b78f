//! The test-only path for tampering with a store: what an attacker with write access to the
//! database could do to rows and ledger records, named by what it changes rather than by SQL,
//! so a tamper test reads the same on every backend (this one drives memory.db). Hidden from the
//! documentation; never used by the binary.

use std::path::Path;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params};

/// A column of an entry row, as tampering sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The text.
    Content,
    /// The stored SHA-256 of the text.
    ContentSha256,
    /// The namespace.
    Namespace,
    /// The tags (JSON text).
    Tags,
    /// The status.
    Status,
    /// The seal.
    Mac,
    /// The id of the key it is sealed with.
    KeyId,
    /// When it last changed (unix ms).
    UpdatedAt,
}

impl Field {
    fn column(self) -> &'static str {
        match self {
            Self::Content => "content",
            Self::ContentSha256 => "content_sha256",
            Self::Namespace => "namespace",
            Self::Tags => "tags",
            Self::Status => "status",
            Self::Mac => "mac",
            Self::KeyId => "key_id",
            Self::UpdatedAt => "updated_at",
        }
    }
}

/// A value written into a row: any type, including the wrong one for the column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// An integer.
    Int(i64),
}

impl Value {
    fn sql(&self) -> SqlValue {
        match self {
            Self::Text(s) => SqlValue::Text(s.clone()),
            Self::Blob(b) => SqlValue::Blob(b.clone()),
            Self::Int(n) => SqlValue::Integer(*n),
        }
    }

    fn from_sql(v: SqlValue) -> Self {
        match v {
            SqlValue::Text(s) => Self::Text(s),
            SqlValue::Blob(b) => Self::Blob(b),
            SqlValue::Integer(n) => Self::Int(n),
            SqlValue::Real(f) => Self::Text(f.to_string()),
            SqlValue::Null => Self::Text(String::new()),
        }
    }

    /// The text, or an empty string for another type.
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            _ => String::new(),
        }
    }
}

/// A whole row as it was, to put back later (an older sealed copy).
#[derive(Debug, Clone)]
pub struct SavedRow(Vec<SqlValue>);

/// Every column of `entries` a saved row carries (the rest are generated).
const ROW_COLUMNS: &str = "rowid, id, namespace, content, tags, metadata, status, supersedes, \
    principal, session_id, created_at, updated_at, content_sha256, key_id, mac";
const ROW_WIDTH: usize = 15;

/// Tampers with one data dir's store.
pub struct Tamper {
    conn: Connection,
}

impl Tamper {
    /// Opens the data dir's store for tampering.
    ///
    /// # Panics
    /// When it cannot be opened: this is test code.
    pub fn open(data_dir: &Path) -> Self {
        let conn = Connection::open(data_dir.join("memory.db")).expect("open memory.db");
        // The index triggers call it (migration 5): without it every edit of an active row
        // fails, as it does for a tool that lacks it.
        crate::store::sqlite::scoped::register(&conn).expect("register the index function");
        Self { conn }
    }

    /// Overwrites one field of entry `id`.
    pub fn set(&self, id: &str, field: Field, value: Value) {
        let sql = format!("UPDATE entries SET {} = ?2 WHERE id = ?1", field.column());
        let n = self
            .conn
            .execute(&sql, params![id, value.sql()])
            .expect("update");
        assert_eq!(n, 1, "no row {id}");
    }

    /// One field of entry `id`.
    pub fn get(&self, id: &str, field: Field) -> Value {
        let sql = format!("SELECT {} FROM entries WHERE id = ?1", field.column());
        let v: SqlValue = self
            .conn
            .query_row(&sql, [id], |r| r.get(0))
            .expect("select");
        Value::from_sql(v)
    }

    /// The whole row of entry `id`, to put back later.
    pub fn save(&self, id: &str) -> SavedRow {
        let sql = format!("SELECT {ROW_COLUMNS} FROM entries WHERE id = ?1");
        let values = self
            .conn
            .query_row(&sql, [id], |r| (0..ROW_WIDTH).map(|i| r.get(i)).collect())
            .expect("select row");
        SavedRow(values)
    }

    /// Puts a saved row back in place of whatever the row is now (or where a purged row was):
    /// an older sealed copy, which verifies on its own.
    pub fn put_back(&self, row: &SavedRow) {
        self.conn
            .execute("DELETE FROM entries WHERE rowid = ?1", [&row.0[0]])
            .expect("delete");
        let marks: Vec<String> = (1..=ROW_WIDTH).map(|i| format!("?{i}")).collect();
        self.conn
            .execute(
                &format!(
                    "INSERT INTO entries ({ROW_COLUMNS}) VALUES ({})",
                    marks.join(", ")
                ),
                rusqlite::params_from_iter(row.0.iter()),
            )
            .expect("insert");
    }

    /// Sets `namespace`'s kept quota usage (migration 6's counts), as a hand edit would.
    pub fn set_usage(&self, namespace: &str, entries: i64, bytes: i64) {
        self.conn
            .execute(
                "INSERT INTO namespace_usage (namespace, entries, bytes) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (namespace) DO UPDATE SET entries = ?2, bytes = ?3",
                rusqlite::params![namespace, entries, bytes],
            )
            .expect("set usage");
    }

    /// Removes entry `id`'s row.
    pub fn delete(&self, id: &str) {
        self.conn
            .execute("DELETE FROM entries WHERE id = ?1", [id])
            .expect("delete");
    }

    /// Removes the ledger records of entry `id`, or every record.
    pub fn delete_ledger(&self, entry_id: Option<&str>) {
        match entry_id {
            Some(id) => self
                .conn
                .execute("DELETE FROM ledger WHERE entry_id = ?1", [id]),
            None => self.conn.execute("DELETE FROM ledger", []),
        }
        .expect("delete ledger");
    }

    /// Adds a forged, unsealed "deleted" record for entry `id` at the head of an empty ledger.
    pub fn forge_ledger_delete(&self, entry_id: &str) {
        self.conn
            .execute(
                "INSERT INTO ledger (seq, entry_id, kind, at, prev_hash, hash, key_id, mac) \
                 VALUES (1, ?1, 'deleted', 0, zeroblob(32), zeroblob(32), 'e1', zeroblob(32))",
                [entry_id],
            )
            .expect("insert ledger");
    }

    /// The distinct key ids rows are sealed with, sorted.
    pub fn entry_key_ids(&self) -> Vec<String> {
        self.strings("SELECT DISTINCT key_id FROM entries ORDER BY key_id")
    }

    /// The key ids of the ledger records, in chain order.
    pub fn ledger_key_ids(&self) -> Vec<String> {
        self.strings("SELECT key_id FROM ledger ORDER BY seq")
    }

    /// Every entry id.
    pub fn ids(&self) -> Vec<String> {
        self.strings("SELECT id FROM entries ORDER BY rowid")
    }

    /// Rows of any status.
    pub fn count(&self) -> i64 {
        self.conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .expect("count")
    }

    /// Rows in the full-text index.
    pub fn index_count(&self) -> i64 {
        self.conn
            .query_row("SELECT count(*) FROM entries_fts", [], |r| r.get(0))
            .expect("count index")
    }

    /// The engine's own check of the whole file: "ok", or the first thing it found wrong (what a
    /// crash or a race must never leave behind).
    pub fn engine_check(&self) -> String {
        self.conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity check")
    }

    fn strings(&self, sql: &str) -> Vec<String> {
        let mut stmt = self.conn.prepare(sql).expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .expect("query")
    }
}
