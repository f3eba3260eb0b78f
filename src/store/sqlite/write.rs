//! memory.db's write transactions: `BEGIN IMMEDIATE` (so concurrent servers serialise), the row
//! statements, and the commit that puts the audit event first.

use std::cell::Cell;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{COLUMNS, ledger, quota, read_row};
use crate::audit::{AuditLog, NewEvent};
use crate::error::{Error, Result};
use crate::keys::KeySet;
use crate::sqlite_file::storage_error as sql;
use crate::store::backend::{CommitError, CommitEvent, PurgeRule, WriteTx};
use crate::store::ledger::Kind;
use crate::store::model::UsageDrift;
use crate::store::rows::{Checked, RawRow, SealedRow};

/// The row with id `id`, unverified.
pub(super) fn load(conn: &Connection, id: &str) -> rusqlite::Result<Option<Checked<RawRow>>> {
    let sql = format!("SELECT {COLUMNS} FROM entries WHERE id = ?1");
    conn.prepare_cached(&sql)?
        .query_row([id], |r| Ok(read_row(r)))
        .optional()
}

/// A write transaction on memory.db: its own, or a savepoint in the group's.
pub(super) struct SqliteTx<'c> {
    conn: &'c Connection,
    kind: TxKind<'c>,
}

enum TxKind<'c> {
    /// Its own `BEGIN IMMEDIATE`, committed by [`WriteTx::commit`] (rolled back on drop).
    Own(Transaction<'c>),
    /// A savepoint in the group's transaction ([`Group`]).
    Grouped(Savepoint<'c>),
}

/// A grouped write's savepoint: released by [`WriteTx::stage`], rolled back to on drop.
struct Savepoint<'c> {
    conn: &'c Connection,
    released: bool,
    group: &'c Group,
}

/// The state of memory.db's group: its transaction is open, and whether it must be rolled back
/// whole (a write in it could not be undone alone, or the transaction was lost).
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) open: Cell<bool>,
    pub(super) broken: Cell<bool>,
}

/// The savepoint each grouped write runs in.
const SAVEPOINT: &str = "memwarden_write";

impl<'c> SqliteTx<'c> {
    pub(super) fn begin(conn: &'c Connection) -> Result<Self> {
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(sql)?;
        Ok(Self {
            conn,
            kind: TxKind::Own(tx),
        })
    }

    /// A write inside `group`'s transaction, opening it (`BEGIN IMMEDIATE`) when none is.
    pub(super) fn begin_grouped(conn: &'c Connection, group: &'c Group) -> Result<Self> {
        if group.open.get() && conn.is_autocommit() {
            // SQLite rolled the group's transaction back itself (I/O error, disk full): its
            // staged writes are gone, so the group may not commit.
            group.broken.set(true);
        }
        if !group.open.get() {
            conn.execute_batch("BEGIN IMMEDIATE").map_err(sql)?;
            group.open.set(true);
        }
        conn.execute_batch(&format!("SAVEPOINT {SAVEPOINT}"))
            .map_err(sql)?;
        Ok(Self {
            conn,
            kind: TxKind::Grouped(Savepoint {
                conn,
                released: false,
                group,
            }),
        })
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
            let mut stmt = self.conn.prepare(&format!(
                "SELECT id FROM entries WHERE {condition} ORDER BY rowid"
            ))?;
            let mapped = stmt.query_map([bound], |r| r.get(0))?;
            mapped.collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            ledger::append(self.conn, keys, id, Kind::Purged, now_ms)?;
        }
        let n = self
            .conn
            .execute(&format!("DELETE FROM entries WHERE {condition}"), [bound])?;
        Ok((ids.len(), n))
    }
}

impl WriteTx for SqliteTx<'_> {
    fn newest_created_at(&mut self) -> Result<Option<i64>> {
        self.conn
            .prepare_cached("SELECT created_at FROM entries ORDER BY rowid DESC LIMIT 1")
            .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
            .map_err(sql)
    }

    fn load(&mut self, id: &str) -> Result<Option<Checked<RawRow>>> {
        load(self.conn, id).map_err(sql)
    }

    fn usage(&mut self, namespace: &str) -> Result<(u64, u64)> {
        // Kept by migration 6's triggers; no row yet: nothing stored there.
        let (count, used): (i64, i64) = self
            .conn
            .prepare_cached("SELECT entries, bytes FROM namespace_usage WHERE namespace = ?1")
            .and_then(|mut s| {
                s.query_row([namespace], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(sql)?
            .unwrap_or((0, 0));
        Ok((count.max(0) as u64, used.max(0) as u64))
    }

    fn recount_usage(&mut self, namespace: &str) -> Result<Option<UsageDrift>> {
        quota::recount(self.conn, namespace).map_err(sql)
    }

    fn insert(&mut self, row: &SealedRow<'_>) -> Result<()> {
        let entry = row.entry;
        let tags =
            serde_json::to_string(&entry.tags).map_err(|e| Error::Internal(e.to_string()))?;
        let inserted = self
            .conn
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
            .conn
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
        ledger::append(self.conn, keys, entry_id, kind, at)
            .map(drop)
            .map_err(sql)
    }

    fn remove(&mut self, id: &str) -> Result<()> {
        self.conn
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
        let mut stmt = self.conn.prepare(&sql_text).map_err(sql)?;
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
        ledger::reseal_batch(self.conn, keys, batch, skip).map_err(sql)
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
        let TxKind::Own(tx) = self.kind else {
            return Err(CommitError {
                error: Error::Internal("a grouped write commits with its group".into()),
                audited,
            });
        };
        tx.commit().map_err(|e| CommitError {
            error: sql(e),
            audited,
        })
    }

    fn stage(
        mut self: Box<Self>,
        log: Option<&mut AuditLog>,
        event: &NewEvent<'_>,
    ) -> Result<(), CommitError> {
        let Some(log) = log else {
            // Nothing is staged without its event in audit.db (DESIGN.md §3).
            return Err(CommitError {
                error: Error::Audit("audit.db's writer is needed to stage a write".into()),
                audited: false,
            });
        };
        let TxKind::Grouped(savepoint) = &mut self.kind else {
            return Err(CommitError {
                error: Error::Internal("this write is not grouped".into()),
                audited: false,
            });
        };
        log.stage(event, crate::clock::now_ms())
            .map_err(|e| CommitError {
                error: Error::Audit(e.to_string()),
                audited: false,
            })?;
        // The event is in audit.db's group: from here the write goes with it, or the whole
        // group is rolled back (released stays false, and drop breaks the group).
        self.conn
            .execute_batch(&format!("RELEASE {SAVEPOINT}"))
            .map_err(|e| {
                // Its event is staged: the group may not commit without the write.
                savepoint.group.broken.set(true);
                CommitError {
                    error: sql(e),
                    audited: false,
                }
            })?;
        savepoint.released = true;
        Ok(())
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let undone = self
            .conn
            .execute_batch(&format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}"));
        if let Err(e) = undone {
            // Its changes may still be in the group's transaction: the group may not commit.
            tracing::warn!(error = %e, "undoing a grouped write failed: the group will roll back");
            self.group.broken.set(true);
        }
    }
}
