//! The SQLite backend: memory.db. SQL, the FTS5 index and its query expressions, migrations, the
//! ledger's table and index upkeep live here and nowhere else. Writes run in `BEGIN IMMEDIATE`
//! so concurrent server processes on one file serialise instead of failing half-way. Only
//! parameterized statements touch input values.

pub mod fts;
pub mod inspect;
mod ledger;
pub mod maintain;
pub mod migrations;
mod quota;
mod read;
pub mod scoped;
mod terms;
mod transfer;
mod write;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row, Transaction, TransactionBehavior, params};

use super::OpenError;
use super::backend::{Backend, IndexShape, MaintainReport, Match, WriteTx};
use super::ledger::ChainReport;
use super::model::{Filter, Query, StoreOptions, Synchronous, UsageDrift};
use super::rows::{Checked, RawRow};
use crate::error::Result;
use crate::keys::KeySet;
use crate::sqlite_file::storage_error as sql;

/// The columns a row is read with, in [`read_row`]'s order.
const COLUMNS: &str = concat!(
    "entries.id, entries.namespace, entries.content, entries.tags, entries.metadata, \
     entries.status, entries.supersedes, entries.principal, entries.session_id, \
     entries.created_at, entries.updated_at, entries.content_sha256, entries.key_id, \
     entries.mac, ",
    ledger::rank_sql!(),
    ", entries.rowid"
);
const COLUMN_COUNT: usize = 16;

/// Reads a row. A column without its expected type or encoding (a hand edit can store a blob
/// where text belongs) makes the whole row fail verification, named by its id or, if even that
/// is unreadable, its rowid — it must never abort a whole page.
fn read_row(row: &Row<'_>) -> Checked<RawRow> {
    read_typed(row).map_err(|_| {
        row.get::<_, String>(0).unwrap_or_else(|_| {
            format!(
                "rowid:{}",
                row.get::<_, i64>(COLUMN_COUNT - 1).unwrap_or(-1)
            )
        })
    })
}

fn read_typed(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        namespace: row.get(1)?,
        content: row.get(2)?,
        tags: row.get(3)?,
        metadata: row.get(4)?,
        status: row.get(5)?,
        supersedes: row.get(6)?,
        principal: row.get(7)?,
        session_id: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
        content_sha256: row.get(11)?,
        key_id: row.get(12)?,
        mac: row.get(13)?,
        ledger_rank: row.get::<_, Option<i64>>(14)?.unwrap_or(0),
    })
}

/// An open memory.db.
pub struct Sqlite {
    conn: Connection,
    /// The open group of writes, if any ([`Backend::begin_grouped`]).
    group: write::Group,
}

impl Sqlite {
    /// Opens (creating if needed) memory.db, applies the pragmas and migrations (the ledger's
    /// backfill seals with `keys`).
    pub fn open(path: &Path, keys: &KeySet, options: StoreOptions) -> Result<Self, OpenError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(path, flags).map_err(engine)?;
        configure(&mut conn, options).map_err(engine)?;
        migrations::migrate(&mut conn, &|tx, version| {
            if version == migrations::LEDGER_VERSION {
                ledger::backfill(tx, keys)?;
            }
            Ok(())
        })?;
        migrations::check_schema(&conn)?;
        Ok(Self {
            conn,
            group: write::Group::default(),
        })
    }

    /// Opens an existing memory.db read-only (for `verify`); no migrations run.
    pub fn open_read_only(path: &Path) -> Result<Self, OpenError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(path, flags).map_err(engine)?;
        crate::sqlite_file::wait_when_busy(&mut conn).map_err(engine)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(engine)?;
        if version != migrations::CURRENT_VERSION {
            return Err(migrations::MigrationError::TooNew { found: version }.into());
        }
        migrations::check_schema(&conn)?;
        Ok(Self {
            conn,
            group: write::Group::default(),
        })
    }

    /// Rows read by `sql` (our own text; `args` bound), unverified.
    fn rows(
        &self,
        query: &str,
        args: impl rusqlite::Params,
    ) -> rusqlite::Result<Vec<Checked<RawRow>>> {
        let mut stmt = self.conn.prepare_cached(query)?;
        let mapped = stmt.query_map(args, |r| Ok(read_row(r)))?;
        mapped.collect()
    }

    fn ids(&self, query: &str) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(query).map_err(sql)?;
        let ids = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(sql)?;
        Ok(ids)
    }

    fn session_start(
        &mut self,
        principal: &str,
        now_ms: i64,
        per_hour: u32,
    ) -> rusqlite::Result<bool> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let hour_ago = now_ms - 3_600_000;
        tx.execute(
            "DELETE FROM session_starts WHERE started_at < ?1",
            [hour_ago],
        )?;
        let n: i64 = tx.query_row(
            "SELECT count(*) FROM session_starts WHERE principal = ?1 AND started_at >= ?2",
            params![principal, hour_ago],
            |r| r.get(0),
        )?;
        if n >= i64::from(per_hour) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO session_starts (principal, started_at) VALUES (?1, ?2)",
            params![principal, now_ms],
        )?;
        tx.commit()?;
        Ok(true)
    }
}

fn engine(e: rusqlite::Error) -> OpenError {
    OpenError::Engine(e.to_string())
}

fn configure(conn: &mut Connection, options: StoreOptions) -> rusqlite::Result<()> {
    crate::sqlite_file::wait_when_busy(conn)?;
    if let Some(limit) = options.heap_limit {
        // Our own integer, never input; the pragma takes no parameters.
        let _: i64 = conn.query_row(&format!("PRAGMA hard_heap_limit = {limit}"), [], |r| {
            r.get(0)
        })?;
    }
    crate::sqlite_file::set_wal(conn)?;
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA trusted_schema = OFF; \
         PRAGMA temp_store = MEMORY;"
    ))
}

impl Backend for Sqlite {
    fn load(&self, id: &str) -> Result<Option<Checked<RawRow>>> {
        write::load(&self.conn, id).map_err(sql)
    }

    fn list(
        &self,
        filter: &Filter,
        after: Option<&str>,
        want: usize,
    ) -> Result<Vec<Checked<RawRow>>> {
        read::list(&self.conn, filter, after, want)
    }

    fn all_words(&self, query: &Query, filter: &Filter, limit: usize) -> Result<Vec<Match>> {
        read::all_words(&self.conn, query, filter, limit)
    }

    fn some_words(
        &self,
        query: &Query,
        filter: &Filter,
        need: usize,
        skip: &std::collections::HashSet<i64>,
    ) -> Result<Vec<Match>> {
        read::some_words(&self.conn, query, filter, need, skip)
    }

    fn begin(&mut self) -> Result<Box<dyn WriteTx + '_>> {
        if self.group.open.get() {
            return Err(crate::error::Error::Internal(
                "a write of its own while a group is open".into(),
            ));
        }
        Ok(Box::new(write::SqliteTx::begin(&self.conn)?))
    }

    fn groups(&self) -> bool {
        true
    }

    fn begin_grouped(&mut self) -> Result<Box<dyn WriteTx + '_>> {
        Ok(Box::new(write::SqliteTx::begin_grouped(
            &self.conn,
            &self.group,
        )?))
    }

    fn group_open(&self) -> bool {
        self.group.open.get()
    }

    fn group_sound(&self) -> bool {
        let lost = self.group.open.get() && self.conn.is_autocommit();
        !(self.group.broken.get() || lost)
    }

    fn commit_group(&mut self) -> Result<()> {
        if !self.group.open.get() {
            return Ok(());
        }
        if !self.group_sound() {
            self.rollback_group();
            return Err(crate::error::Error::Unavailable(
                "a group of writes was lost and rolled back".into(),
            ));
        }
        self.group.open.set(false);
        self.conn.execute_batch("COMMIT").map_err(|e| {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            sql(e)
        })
    }

    fn rollback_group(&mut self) {
        self.group.open.set(false);
        self.group.broken.set(false);
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "rolling back memory.db's group failed");
        }
    }

    fn each_row(&self, each: &mut dyn FnMut(Checked<RawRow>)) -> Result<()> {
        let query = format!("SELECT {COLUMNS} FROM entries ORDER BY rowid");
        let mut stmt = self.conn.prepare(&query).map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            each(read_row(row));
        }
        Ok(())
    }

    fn ledger_chain(&self, keys: &KeySet) -> Result<ChainReport> {
        ledger::check_chain(&self.conn, keys).map_err(sql)
    }

    fn copy_out(
        &self,
        from: &crate::store::transfer::Resume,
        sink: &mut dyn crate::store::transfer::CopySink,
    ) -> Result<()> {
        transfer::copy_out(&self.conn, from, sink)
    }

    fn copy_in(&mut self, batch: &crate::store::transfer::Batch) -> Result<()> {
        transfer::copy_in(&self.conn, batch)
    }

    fn copied(&self) -> Result<crate::store::transfer::Copied> {
        transfer::copied(&self.conn)
    }

    fn quarantined(&self) -> Result<Vec<Checked<RawRow>>> {
        let query =
            format!("SELECT {COLUMNS} FROM entries WHERE status = 'quarantined' ORDER BY id");
        self.rows(&query, []).map_err(sql)
    }

    fn rows_sealed_with(&self, key_id: &str) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row(
                "SELECT (SELECT count(*) FROM entries WHERE key_id = ?1) \
                 + (SELECT count(*) FROM ledger WHERE key_id = ?1)",
                [key_id],
                |r| r.get(0),
            )
            .map_err(sql)?;
        Ok(n.max(0) as u64)
    }

    fn all_ids(&self) -> Result<Vec<String>> {
        self.ids("SELECT id FROM entries")
    }

    fn active_ids(&self) -> Result<Vec<String>> {
        self.ids("SELECT id FROM entries WHERE status = 'active'")
    }

    fn count_rows(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .map_err(sql)?;
        Ok(n.max(0) as u64)
    }

    fn usage_drift(&self) -> Result<Vec<UsageDrift>> {
        quota::drift(&self.conn).map_err(sql)
    }

    fn admit_session(&mut self, principal: &str, now_ms: i64, per_hour: u32) -> Result<bool> {
        self.session_start(principal, now_ms, per_hour).map_err(sql)
    }

    fn index_shape(&self) -> Result<IndexShape> {
        Ok(self.fts_shape())
    }

    fn maintain(&mut self, step_lock: Duration) -> Result<MaintainReport> {
        self.merge_and_checkpoint(step_lock).map_err(sql)
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.conn.close().map_err(|(_, e)| sql(e))
    }
}
