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
//! order — the store's, then the audit chain's (as a group opens, or at commit) — so writers
//! cannot deadlock.
//!
//! **Groups** of writes, and the round trips they save, are in [`super::group`].

use std::sync::Arc;

use tokio::runtime::Runtime;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::behind::STEP_THEN_COMMIT;
use super::fail::{db, one_row};
use super::group::{Group, NEWEST, answered_then, open_group};
use super::ledger;
use super::rows::{COLUMNS, read_row};
use crate::audit::{AuditLog, NewEvent};
use crate::error::{Error, Result};
use crate::keys::KeySet;
use crate::pgconn::sql::{Cached, Sql};
use crate::store::backend::{CommitError, CommitEvent, PurgeRule, WriteTx};
use crate::store::ledger::Kind;
use crate::store::model::UsageDrift;
use crate::store::rows::{Checked, RawRow, SealedRow};

mod event;

/// Key of the advisory lock every store write takes ("mwstor").
const WRITE_LOCK: i64 = 0x6d77_7374_6f72;

/// Opens a write transaction and takes the store's write lock, in one round trip.
pub(super) fn begin_sql() -> String {
    format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
}

/// The savepoint each grouped write runs in.
pub(super) const SAVEPOINT: &str = "memwarden_write";

/// An open write transaction: its own, or a savepoint inside the group's. Dropping it without
/// [`WriteTx::commit`] (or [`WriteTx::stage`]) undoes it at once, and its own transaction's
/// locks go with it. The statements run on the connection itself (`BEGIN`, `SAVEPOINT` and
/// `COMMIT` by hand), because a group's transaction outlives any one write's borrow; each text
/// is prepared once per connection ([`crate::pgconn::sql::Statements`]).
pub(super) struct PgTx<'c> {
    rt: &'c Runtime,
    sql: Cached<'c>,
    /// A grouped write's connection, shared with the tasks that read its answers later
    /// ([`Group::send`]).
    shared: Option<&'c Arc<Client>>,
    /// Not yet committed, staged or undone.
    open: bool,
    /// The group this write runs in, as a savepoint; `None`: its own transaction.
    group: Option<&'c Group>,
    /// The write's savepoint is still to be sent, with its first statement.
    savepoint_pending: bool,
    /// A row insert still to be sent, with the next statement (the call's event, usually).
    deferred: Option<Deferred>,
    /// `created_at` of the last row this write inserted.
    inserted: Option<i64>,
    /// The rows this write inserted (namespace, content bytes); `None` once it did anything
    /// else that may change a namespace's usage ([`super::group::UsageMemo`]).
    added: Option<Vec<(String, i64)>>,
    audit_keys: &'c KeySet,
}

/// A row insert held back to share a round trip with the statement after it.
struct Deferred {
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

/// The insert of one row; its parameters are [`Deferred::params`].
const INSERT: &str = "INSERT INTO memory.entries (id, namespace, content, tags, metadata, status, \
     supersedes, principal, session_id, created_at, updated_at, content_sha256, key_id, mac) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

impl<'c> PgTx<'c> {
    /// Starts a transaction and takes the store's write lock (waiting at most the session's
    /// `lock_timeout`).
    pub(super) fn begin(rt: &'c Runtime, sql: Cached<'c>, audit_keys: &'c KeySet) -> Result<Self> {
        if let Err(e) = rt.block_on(sql.client.batch_execute(&begin_sql())) {
            let _ = rt.block_on(sql.client.batch_execute("ROLLBACK"));
            return Err(db(e));
        }
        Ok(Self {
            rt,
            sql,
            shared: None,
            open: true,
            group: None,
            savepoint_pending: false,
            deferred: None,
            inserted: None,
            added: Some(Vec::new()),
            audit_keys,
        })
    }

    /// A write inside `group`'s transaction, opening it (and taking the write lock) when none is.
    pub(super) fn begin_grouped(
        rt: &'c Runtime,
        sql: Cached<'c>,
        client: &'c Arc<Client>,
        audit_keys: &'c KeySet,
        group: &'c Group,
    ) -> Result<Self> {
        if group.broken.get() {
            return Err(Error::Unavailable(
                "the open group of writes was lost".into(),
            ));
        }
        // The group's first write opens it with its savepoint; later ones send theirs with
        // their first statement.
        let joining = group.open.get();
        if !joining {
            open_group(rt, sql, group)?;
        }
        Ok(Self {
            rt,
            sql,
            shared: Some(client),
            open: true,
            savepoint_pending: joining,
            group: Some(group),
            deferred: None,
            inserted: None,
            added: Some(Vec::new()),
            audit_keys,
        })
    }

    /// Runs `work` on the open transaction, for upkeep that is no row write
    /// ([`super::upkeep`]).
    pub(super) fn run_upkeep<T>(
        &mut self,
        work: impl AsyncFnOnce(&Cached<'c>) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.added = None;
        self.run(work)
    }

    /// Runs `work` on the open transaction. What is still to be sent goes first, in the same
    /// round trip and in this order: a grouped write's savepoint, then a held-back insert; the
    /// answers to earlier writes' statements, sent already, are read first.
    fn run<T>(
        &mut self,
        work: impl AsyncFnOnce(&Cached<'c>) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        if !self.open {
            return Err(Error::Internal("write transaction already ended".into()));
        }
        let sql = self.sql;
        // Earlier writes' statements went out before anything of this write.
        let in_flight = self.group.map(Group::take_in_flight).unwrap_or_default();
        if in_flight.is_empty() && !self.savepoint_pending && self.deferred.is_none() {
            return self.rt.block_on(work(&sql)).map_err(db);
        }
        // Prepared before anything is sent, so that each statement's messages go out in turn.
        let insert = match &self.deferred {
            Some(_) => Some(self.rt.block_on(sql.prepare(INSERT)).map_err(db)?),
            None => None,
        };
        let savepoint = std::mem::take(&mut self.savepoint_pending);
        let deferred = self.deferred.take();
        let params: Vec<&(dyn ToSql + Sync)> = deferred
            .iter()
            .flat_map(|d| d.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)))
            .collect();
        let (saved, inserted, done) = self.rt.block_on(async {
            tokio::join!(
                biased;
                answered_then(in_flight, async {
                    match savepoint {
                        true => sql.client.batch_execute(&format!("SAVEPOINT {SAVEPOINT}")).await,
                        false => Ok(()),
                    }
                }),
                async {
                    match &insert {
                        Some(statement) => sql.client.execute(statement, &params).await.map(Some),
                        None => Ok(None),
                    }
                },
                work(&sql),
            )
        });
        if let Err(e) = saved {
            // Earlier writes' statements failed, or what followed is not inside a savepoint of
            // its own: only the whole group can undo it.
            if let Some(group) = self.group {
                group.broken.set(true);
            }
            self.open = false;
            return Err(e);
        }
        match inserted.map_err(db)? {
            Some(n) if n != 1 => one_row("insert", n)?,
            _ => {}
        }
        done.map_err(db)
    }

    /// Sends whatever is still held back.
    fn flush(&mut self) -> Result<()> {
        self.run(async |_| Ok(()))
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        if !self.open || self.savepoint_pending {
            // Ended, or nothing sent yet: nothing to undo.
            return;
        }
        let undo = match self.group {
            None => "ROLLBACK".to_string(),
            Some(_) => format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}"),
        };
        // A lost connection rolls everything back on the server; a group that could not undo
        // this write alone must not commit.
        if self
            .rt
            .block_on(self.sql.client.batch_execute(&undo))
            .is_err()
            && let Some(group) = self.group
        {
            group.broken.set(true);
        }
    }
}

impl WriteTx for PgTx<'_> {
    fn newest_created_at(&mut self) -> Result<Option<i64>> {
        if let Some(known) = self.group.and_then(|g| g.newest.get()) {
            return Ok(self.inserted.or(known));
        }
        let newest = self.run(async |tx| {
            let row = tx.query_opt(NEWEST, &[]).await?;
            row.map(|r| r.try_get(0)).transpose()
        })?;
        if let Some(group) = self.group {
            group.newest.set(Some(newest));
        }
        Ok(self.inserted.or(newest))
    }

    fn load(&mut self, id: &str) -> Result<Option<Checked<RawRow>>> {
        self.run(async |tx| {
            let sql = format!("SELECT {COLUMNS} FROM memory.entries e WHERE e.id = $1");
            Ok(tx.query_opt(&sql, &[&id]).await?.as_ref().map(read_row))
        })
    }

    fn usage(&mut self, namespace: &str) -> Result<(u64, u64)> {
        let known = self.group.and_then(|g| g.usage.get(namespace));
        let (count, used) = match known {
            Some(known) => known,
            None => self.run(async |tx| super::quota::usage(tx, namespace).await)?,
        };
        if let (Some(group), None, Some([])) = (self.group, known, self.added.as_deref()) {
            group.usage.learn(namespace, (count, used));
        }
        Ok((count.max(0) as u64, used.max(0) as u64))
    }

    fn recount_usage(&mut self, namespace: &str) -> Result<Option<UsageDrift>> {
        self.added = None;
        self.run(async |tx| super::quota::recount(tx, namespace).await)
    }

    fn insert(&mut self, row: &SealedRow<'_>) -> Result<()> {
        if !self.open {
            return Err(Error::Internal("write transaction already ended".into()));
        }
        // One held back at a time. A grouped write's savepoint still to be sent waits too:
        // the statement after it takes it along, or the write's staging ([`Self::send_staged`]).
        if self.deferred.is_some() {
            self.flush()?;
        }
        let e = row.entry;
        let tags = serde_json::to_string(&e.tags).map_err(|e| Error::Internal(e.to_string()))?;
        let content = super::rows::content_to_column(&e.content).into_owned();
        let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(e.id.clone()),
            Box::new(e.namespace.clone()),
            Box::new(content),
            Box::new(tags),
            Box::new(e.metadata.clone()),
            Box::new(e.status.as_str()),
            Box::new(e.supersedes.clone()),
            Box::new(e.principal.clone()),
            Box::new(e.session_id.clone()),
            Box::new(e.created_at),
            Box::new(e.updated_at),
            Box::new(e.content_sha256.to_vec()),
            Box::new(row.key_id.to_owned()),
            Box::new(row.mac.to_vec()),
        ];
        // Sent with the next statement; its failure (or a row count other than one) fails that
        // statement's step, and the write is undone as for any failed step.
        self.deferred = Some(Deferred { params });
        self.inserted = Some(e.created_at);
        if let Some(added) = &mut self.added {
            added.push((e.namespace.clone(), e.content.len() as i64));
        }
        Ok(())
    }

    fn reseal(&mut self, row: &SealedRow<'_>) -> Result<()> {
        self.added = None;
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
        one_row("reseal", changed)
    }

    fn record(&mut self, keys: &KeySet, entry_id: &str, kind: Kind, at: i64) -> Result<()> {
        self.added = None;
        self.run(async |tx| ledger::append(tx, keys, entry_id, kind, at).await)
            .map(drop)
    }

    fn remove(&mut self, id: &str) -> Result<()> {
        self.added = None;
        self.run(async |tx| {
            tx.execute("DELETE FROM memory.entries WHERE id = $1", &[&id])
                .await
        })
        .map(drop)
    }

    fn purge(&mut self, keys: &KeySet, rule: PurgeRule, now_ms: i64) -> Result<u64> {
        self.added = None;
        let (recorded, deleted) =
            self.run(async |tx| ledger::purge(tx, keys, rule, now_ms).await)?;
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
        self.added = None;
        self.run(async |tx| ledger::reseal_batch(tx, keys, batch, skip).await)
    }

    fn commit(mut self: Box<Self>, audit: Option<CommitEvent<'_, '_>>) -> Result<(), CommitError> {
        // The event and the change commit together or not at all, so `audited` is false on
        // every failure: a failed COMMIT took the event with it. (Should the connection drop
        // during COMMIT itself, the outcome is unknown to the client — PostgreSQL decides it
        // atomically, event and change alike.)
        let fail = |error| CommitError {
            error,
            audited: false,
        };
        if !self.open || self.group.is_some() {
            return Err(fail(Error::Internal(
                "a grouped or ended write cannot commit on its own".into(),
            )));
        }
        // On failure, drop rolls back now, not when the runtime next runs: the locks go.
        match audit {
            Some(CommitEvent { event, .. }) => self.append(event).map_err(fail)?,
            None => self.flush().map_err(fail)?,
        }
        self.open = false;
        self.rt
            .block_on(self.sql.client.batch_execute(STEP_THEN_COMMIT))
            .map_err(|e| {
                let _ = self.rt.block_on(self.sql.client.batch_execute("ROLLBACK"));
                fail(db(e))
            })
    }

    fn stage(
        mut self: Box<Self>,
        _log: Option<&mut AuditLog>,
        event: &NewEvent<'_>,
    ) -> Result<(), CommitError> {
        if self.group.is_none() || !self.open {
            return Err(CommitError {
                error: Error::Internal("this write is not grouped".into()),
                audited: false,
            });
        }
        let fail = |error| CommitError {
            error,
            audited: false,
        };
        // The group read the chain's head when it took the chain's lock: the event is linked
        // here and sent with what of the write is still to be sent, and their answers are read
        // with whatever the group waits for next (its COMMIT, or the next write's first
        // statement). From here they stand or fall with the group: a savepoint sent is left for
        // the group's COMMIT to end.
        self.send_staged(event).map_err(fail)?;
        self.open = false;
        if let Some(group) = self.group {
            group.usage.staged(self.added.as_deref());
        }
        if let (Some(group), Some(at)) = (self.group, self.inserted) {
            // Its row is now the group's newest (by position, which `stamp` keeps in step).
            group.newest.set(Some(Some(at)));
        }
        Ok(())
    }
}
