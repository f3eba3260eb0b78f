//! memory.db's write transactions: `BEGIN IMMEDIATE` (so concurrent servers serialise), the row
//! statements, and the commit that puts the audit event first.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{COLUMNS, ledger, read_row};
use crate::error::{Error, Result};
use crate::keys::KeySet;
use crate::sqlite_file::storage_error as sql;
use crate::store::backend::{CommitError, CommitEvent, PurgeRule, WriteTx};
use crate::store::ledger::Kind;
use crate::store::rows::{Checked, RawRow, SealedRow};

/// The row with id `id`, unverified.
pub(super) fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Checked<RawRow>>> {
    let sql = format!("SELECT {COLUMNS} FROM entries WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .query_row([id], |r| Ok(read_row(r)))
        .optional()
}

/// A write transaction on memory.db.
pub(super) struct SqliteTx<'c> {
    tx: Transaction<'c>,
}

impl<'c> SqliteTx<'c> {
    pub(super) fn begin(conn: &'c Connection) -> Result<Self> {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(sql)?;
        Ok(Self { tx })
    }

    /// Fails closed when a statement touched another number of rows than one (a trigger
    /// answering RAISE(IGNORE) would make it a silent no-op).
    fn one_row(what: &str, changed: usize) -> Result<()> {
        if changed == 1 {
            Ok(())
        } else {
            Err(Error::Internal(format!("{what} touched {changed} rows")))
        }
    }

    fn purge_where(
        &mut self,
        keys: &KeySet,
        condition: &str,
        bound: i64,
        now_ms: i64,
    ) -> rusqlite::Result<(usize, usize)> {
        let ids: Vec<String> = {
            let mut stmt = self.tx.prepare(&format!(
                "SELECT id FROM entries WHERE {condition} ORDER BY rowid"
            ))?;
            let mapped = stmt.query_map([bound], |r| r.get(0))?;
            mapped.collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            ledger::append(&self.tx, keys, id, Kind::Purged, now_ms)?;
        }
        let n = self
            .tx
            .execute(&format!("DELETE FROM entries WHERE {condition}"), [bound])?;
        Ok((ids.len(), n))
    }
}

impl WriteTx for SqliteTx<'_> {
    fn newest_created_at(&mut self) -> Result<Option<i64>> {
        self.tx
            .prepare_cached("SELECT created_at FROM entries ORDER BY rowid DESC LIMIT 1")
            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
            .map_err(sql)
    }

    fn load(&mut self, id: &str) -> Result<Option<Checked<RawRow>>> {
        load(&self.tx, id).map_err(sql)
    }

    fn usage(&mut self, namespace: &str) -> Result<(u64, u64)> {
        let (count, used): (i64, i64) = self
            .tx
            .query_row(
                "SELECT count(*), coalesce(sum(length(CAST(content AS BLOB))), 0) FROM entries \
                 WHERE namespace = ?1",
                [namespace],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sql)?;
        Ok((count.max(0) as u64, used.max(0) as u64))
    }

    fn insert(&mut self, row: &SealedRow<'_>) -> Result<()> {
        let entry = row.entry;
        let tags =
            serde_json::to_string(&entry.tags).map_err(|e| Error::Internal(e.to_string()))?;
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT INTO entries (id, namespace, content, tags, metadata, status, supersedes, \
                 principal, session_id, created_at, updated_at, content_sha256, key_id, mac) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    entry.id,
                    entry.namespace,
                    entry.content,
                    tags,
                    entry.metadata,
                    entry.status.as_str(),
                    entry.supersedes,
                    entry.principal,
                    entry.session_id,
                    entry.created_at,
                    entry.updated_at,
                    &entry.content_sha256[..],
                    row.key_id,
                    &row.mac[..],
                ])
            })
            .map_err(sql)?;
        Self::one_row("insert", inserted)
    }

    fn reseal(&mut self, row: &SealedRow<'_>) -> Result<()> {
        let entry = row.entry;
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE entries SET status = ?2, updated_at = ?3, key_id = ?4, mac = ?5 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    entry.id,
                    entry.status.as_str(),
                    entry.updated_at,
                    row.key_id,
                    &row.mac[..]
                ])
            })
            .map_err(sql)?;
        Self::one_row("reseal", changed)
    }

    fn record(&mut self, keys: &KeySet, entry_id: &str, kind: Kind, at: i64) -> Result<()> {
        ledger::append(&self.tx, keys, entry_id, kind, at)
            .map(drop)
            .map_err(sql)
    }

    fn remove(&mut self, id: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM entries WHERE id = ?1", [id])
            .map(drop)
            .map_err(sql)
    }

    fn purge(&mut self, keys: &KeySet, rule: PurgeRule, now_ms: i64) -> Result<u64> {
        let (condition, bound) = match rule {
            PurgeRule::DeletedBefore(t) => ("status = 'deleted' AND updated_at < ?1", t),
            PurgeRule::CreatedBefore(t) => ("created_at < ?1", t),
        };
        let (recorded, deleted) = self
            .purge_where(keys, condition, bound, now_ms)
            .map_err(sql)?;
        if recorded != deleted {
            return Err(Error::Internal(format!(
                "purge recorded {recorded} rows and deleted {deleted}"
            )));
        }
        Ok(deleted as u64)
    }

    fn sealed_with_other_than(
        &mut self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<Checked<RawRow>>> {
        let sql_text =
            format!("SELECT {COLUMNS} FROM entries WHERE key_id != ?1 ORDER BY rowid LIMIT ?2");
        let mut stmt = self.tx.prepare(&sql_text).map_err(sql)?;
        let mapped = stmt
            .query_map(params![key_id, limit as i64], |r| Ok(read_row(r)))
            .map_err(sql)?;
        mapped.collect::<rusqlite::Result<_>>().map_err(sql)
    }

    fn reseal_ledger(
        &mut self,
        keys: &KeySet,
        batch: usize,
        skip: &[String],
    ) -> Result<(usize, Vec<String>)> {
        ledger::reseal_batch(&self.tx, keys, batch, skip).map_err(sql)
    }

    fn commit(self: Box<Self>, audit: Option<CommitEvent<'_, '_>>) -> Result<(), CommitError> {
        // audit.db commits first: a crash between the two commits leaves an event "audited,
        // not applied" (which `memwarden verify` reports), never a change without its event.
        let audited = match audit {
            Some(CommitEvent { log: None, .. }) => {
                // The event has nowhere to go, so the change may not go anywhere either.
                return Err(CommitError {
                    error: Error::Audit("no audit log for this store's events".into()),
                    audited: false,
                });
            }
            Some(CommitEvent {
                log: Some(log),
                event,
            }) => {
                log.append(event, crate::clock::now_ms())
                    .map_err(|e| CommitError {
                        error: Error::Audit(e.to_string()),
                        audited: false,
                    })?;
                true
            }
            None => false,
        };
        self.tx.commit().map_err(|e| CommitError {
            error: sql(e),
            audited,
        })
    }
}
