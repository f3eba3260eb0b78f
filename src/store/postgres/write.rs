//! Write transactions on PostgreSQL: READ COMMITTED (never REPEATABLE READ: its snapshot would
//! predate the locks and read stale tails, FACTS §PostgreSQL), the store's write lock taken
//! first, the row statements, and a commit that appends the call's audit event to
//! `audit.events` in the same transaction — nothing applied without its event, and no event
//! for a change that was not applied.
//!
//! The write lock is a transaction-scoped advisory lock, the counterpart of SQLite's `BEGIN
//! IMMEDIATE`: writers on every host serialise on it, so a new row's `created_at` and `pos`
//! grow together (see `Store::stamp`), quotas are counted with no other writer between count and
//! insert, and the ledger's tail cannot move under an append. Locks are always taken in one
//! order — the store's, then the audit chain's at commit — so writers cannot deadlock.

use tokio::runtime::Runtime;
use tokio_postgres::{IsolationLevel, Transaction};

use super::fail::db;
use super::ledger;
use super::rows::{COLUMNS, read_row};
use crate::audit::postgres::PgAuditError;
use crate::error::{Error, Result};
use crate::keys::KeySet;
use crate::store::backend::{CommitError, CommitEvent, PurgeRule, WriteTx};
use crate::store::ledger::Kind;
use crate::store::rows::{Checked, RawRow, SealedRow};

/// Key of the advisory lock every store write takes ("mwstor").
const WRITE_LOCK: i64 = 0x6d77_7374_6f72;

/// An open write transaction. Dropping it without [`WriteTx::commit`] rolls back at once (and
/// so releases the write lock): tokio-postgres would only queue the ROLLBACK until this
/// connection's runtime next runs, which may be long after.
pub(super) struct PgTx<'c> {
    rt: &'c Runtime,
    tx: Option<Transaction<'c>>,
    audit_keys: &'c KeySet,
}

impl<'c> PgTx<'c> {
    /// Starts a transaction and takes the store's write lock (waiting at most the session's
    /// `lock_timeout`).
    pub(super) fn begin(
        rt: &'c Runtime,
        client: &'c mut tokio_postgres::Client,
        audit_keys: &'c KeySet,
    ) -> Result<Self> {
        let tx = rt
            .block_on(async {
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::ReadCommitted)
                    .start()
                    .await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                    .await?;
                Ok(tx)
            })
            .map_err(db)?;
        Ok(Self {
            rt,
            tx: Some(tx),
            audit_keys,
        })
    }

    /// Runs `work` on the open transaction.
    fn run<T>(
        &mut self,
        work: impl AsyncFnOnce(&Transaction<'c>) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::Internal("write transaction already ended".into()))?;
        self.rt.block_on(work(tx)).map_err(db)
    }

    /// Fails closed when a statement touched another number of rows than one.
    fn one_row(what: &str, changed: u64) -> Result<()> {
        if changed == 1 {
            Ok(())
        } else {
            Err(Error::Internal(format!("{what} touched {changed} rows")))
        }
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Nothing to report to: the transaction is abandoned either way, and a lost
            // connection rolls it back on the server.
            let _ = self.rt.block_on(tx.rollback());
        }
    }
}

impl WriteTx for PgTx<'_> {
    fn newest_created_at(&mut self) -> Result<Option<i64>> {
        self.run(async |tx| {
            let row = tx
                .query_opt(
                    "SELECT created_at FROM memory.entries ORDER BY pos DESC LIMIT 1",
                    &[],
                )
                .await?;
            row.map(|r| r.try_get(0)).transpose()
        })
    }

    fn load(&mut self, id: &str) -> Result<Option<Checked<RawRow>>> {
        self.run(async |tx| {
            let sql = format!("SELECT {COLUMNS} FROM memory.entries e WHERE e.id = $1");
            Ok(tx.query_opt(&sql, &[&id]).await?.as_ref().map(read_row))
        })
    }

    fn usage(&mut self, namespace: &str) -> Result<(u64, u64)> {
        let (count, used): (i64, i64) = self.run(async |tx| {
            let r = tx
                .query_one(
                    // Content's own bytes: the column keeps a backslash as `\\` and U+0000
                    // as `\0`, two bytes each (rows.rs), which the quota does not count.
                    "SELECT count(*), coalesce(sum(CASE WHEN strpos(content, '\\') > 0 \
                     THEN octet_length(regexp_replace(content, '\\\\(.)', '\\1', 'g')) \
                     ELSE octet_length(content) END), 0)::bigint \
                     FROM memory.entries WHERE namespace = $1",
                    &[&namespace],
                )
                .await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })?;
        Ok((count.max(0) as u64, used.max(0) as u64))
    }

    fn insert(&mut self, row: &SealedRow<'_>) -> Result<()> {
        let e = row.entry;
        let tags = serde_json::to_string(&e.tags).map_err(|e| Error::Internal(e.to_string()))?;
        let content = super::rows::content_to_column(&e.content);
        let inserted = self.run(async |tx| {
            tx.execute(
                "INSERT INTO memory.entries (id, namespace, content, tags, metadata, status, \
                 supersedes, principal, session_id, created_at, updated_at, content_sha256, \
                 key_id, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &[
                    &e.id,
                    &e.namespace,
                    &content,
                    &tags,
                    &e.metadata,
                    &e.status.as_str(),
                    &e.supersedes,
                    &e.principal,
                    &e.session_id,
                    &e.created_at,
                    &e.updated_at,
                    &&e.content_sha256[..],
                    &row.key_id,
                    &&row.mac[..],
                ],
            )
            .await
        })?;
        Self::one_row("insert", inserted)
    }

    fn reseal(&mut self, row: &SealedRow<'_>) -> Result<()> {
        let e = row.entry;
        let changed = self.run(async |tx| {
            tx.execute(
                "UPDATE memory.entries SET status = $2, updated_at = $3, key_id = $4, mac = $5 \
                 WHERE id = $1",
                &[
                    &e.id,
                    &e.status.as_str(),
                    &e.updated_at,
                    &row.key_id,
                    &&row.mac[..],
                ],
            )
            .await
        })?;
        Self::one_row("reseal", changed)
    }

    fn record(&mut self, keys: &KeySet, entry_id: &str, kind: Kind, at: i64) -> Result<()> {
        self.run(async |tx| ledger::append(tx, keys, entry_id, kind, at).await)
            .map(drop)
    }

    fn remove(&mut self, id: &str) -> Result<()> {
        self.run(async |tx| {
            tx.execute("DELETE FROM memory.entries WHERE id = $1", &[&id])
                .await
        })
        .map(drop)
    }

    fn purge(&mut self, keys: &KeySet, rule: PurgeRule, now_ms: i64) -> Result<u64> {
        let (condition, bound) = match rule {
            PurgeRule::DeletedBefore(t) => ("status = 'deleted' AND updated_at < $1", t),
            PurgeRule::CreatedBefore(t) => ("created_at < $1", t),
        };
        let (recorded, deleted) = self.run(async |tx| {
            let rows = tx
                .query(
                    &format!("SELECT id FROM memory.entries WHERE {condition} ORDER BY pos"),
                    &[&bound],
                )
                .await?;
            for row in &rows {
                let id: String = row.try_get(0)?;
                ledger::append(tx, keys, &id, Kind::Purged, now_ms).await?;
            }
            let deleted = tx
                .execute(
                    &format!("DELETE FROM memory.entries WHERE {condition}"),
                    &[&bound],
                )
                .await?;
            Ok((rows.len() as u64, deleted))
        })?;
        if recorded != deleted {
            return Err(Error::Internal(format!(
                "purge recorded {recorded} rows and deleted {deleted}"
            )));
        }
        Ok(deleted)
    }

    fn sealed_with_other_than(
        &mut self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<Checked<RawRow>>> {
        self.run(async |tx| {
            let sql = format!(
                "SELECT {COLUMNS} FROM memory.entries e WHERE e.key_id <> $1 \
                 ORDER BY e.pos LIMIT $2"
            );
            let rows = tx.query(&sql, &[&key_id, &(limit as i64)]).await?;
            Ok(rows.iter().map(read_row).collect())
        })
    }

    fn reseal_ledger(
        &mut self,
        keys: &KeySet,
        batch: usize,
        skip: &[String],
    ) -> Result<(usize, Vec<String>)> {
        self.run(async |tx| ledger::reseal_batch(tx, keys, batch, skip).await)
    }

    fn commit(mut self: Box<Self>, audit: Option<CommitEvent<'_, '_>>) -> Result<(), CommitError> {
        let fail = |error| CommitError {
            error,
            audited: false,
        };
        let tx = self
            .tx
            .take()
            .ok_or_else(|| fail(Error::Internal("write transaction already ended".into())))?;
        let keys = self.audit_keys;
        // The event and the change commit together or not at all, so `audited` is false on
        // every failure: a failed COMMIT took the event with it. (Should the connection drop
        // during COMMIT itself, the outcome is unknown to the client — PostgreSQL decides it
        // atomically, event and change alike.)
        self.rt.block_on(async move {
            if let Some(CommitEvent { event, .. }) = audit
                && let Err(e) =
                    crate::audit::postgres::append(&tx, keys, event, crate::clock::now_ms()).await
            {
                // Roll back now, not when the runtime next runs: the locks go with it.
                let _ = tx.rollback().await;
                return Err(fail(match e {
                    PgAuditError::Database(e) => db(e),
                    other => Error::Audit(other.to_string()),
                }));
            }
            tx.commit().await.map_err(|e| fail(db(e)))
        })
    }
}
