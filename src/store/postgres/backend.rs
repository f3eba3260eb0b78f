//! The PostgreSQL backend: [`Postgres`] moves rows in and out of `memory.entries` and holds the
//! transactions; sealing, verification, quotas and the order of a write's steps stay in
//! [`crate::store::Store`], as for SQLite. It must never log connection settings, SQL text with
//! values, or row contents.
//!
//! **Sync over async.** The [`Backend`] trait is synchronous and the server calls it on blocking
//! threads. tokio-postgres is async, so each `Postgres` owns a small current-thread tokio
//! runtime (I/O and timers only) and one connection: the connection's driver future is spawned
//! on that runtime, and every method runs `block_on(async { … })` on it. The driver runs only
//! while a call is in progress, which is all a request/response client needs; nothing is shared
//! between backends, so one slow call never stalls another connection, and no second runtime
//! thread exists. (The sync `postgres` crate does this same thing internally but panics when
//! called inside a tokio context, FACTS §PostgreSQL.) `block_on` may not run on an async worker
//! thread: use the backend from blocking threads only (`spawn_blocking`), as the server does.
//! Dropping it stops its runtime without waiting; [`Backend::close`] ends the session cleanly.
//!
//! **Audit in the write's transaction.** A `Postgres` is opened with the audit keys, and a
//! write's [`WriteTx::commit`] appends the call's event to `audit.events` inside the write's own
//! transaction ([`crate::audit::postgres::append`]) — one commit for both, so there is neither a
//! change without its event nor an event "audited, not applied". The commit's
//! [`crate::store::backend::CommitEvent::log`] (audit.db's writer, SQLite's) is not used here.
//!
//! **Groups.** [`Backend::begin_grouped`] runs a write inside the connection's open group
//! ([`super::group::Group`]): the server's sessions then share one transaction, one COMMIT and
//! one WAL flush per group, and the chain stays one chain (the group holds its lock). A
//! connection lost with a group open fails the whole group; nothing in it was acknowledged.
//!
//! **Conflicts.** A statement that loses a serialization or deadlock conflict (40001, 40P01) is
//! run again a bounded number of times when it is a whole unit of work: a read, a snapshot walk,
//! a session admission. Inside a write transaction that spans several store steps only the
//! whole could run again, so there the error fails the call as UNAVAILABLE (never INTERNAL);
//! writers take one lock order (the store's write lock, then the audit chain's), so they do not
//! deadlock each other.
//!
//! **Upkeep.** PostgreSQL's autovacuum vacuums, analyses and flushes the text index's pending
//! list; the app role may not run VACUUM (only the owner may, PostgreSQL 15). So
//! [`Backend::index_shape`] reports `memory.entries`' dead row versions awaiting vacuum (as
//! `segments`, no levels) from the statistics views, and [`Backend::maintain`] changes nothing:
//! it reports those figures, as they stand, before and after.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::behind::Behind;
use super::connect::{self, Backoff, Driver, configure};
use super::fail::{Failure, RETRY_AFTER_MS, detail, retry};
use super::group::Group;
use super::rows::{COLUMNS, read_row};
use super::write::PgTx;
use super::{ledger, read, schema, snapshot};
use crate::error::Result;
use crate::keys::KeySet;
use crate::pgconn::DatabaseSettings;
use crate::pgconn::sql::{Cached, Statements};
use crate::store::OpenError;
use crate::store::backend::{Backend, IndexShape, MaintainReport, Match, WriteTx};
use crate::store::ledger::ChainReport;
use crate::store::model::{Filter, IndexDrift, IndexRepair, Query, UsageDrift};
use crate::store::rows::{Checked, RawRow};
use crate::store::transfer::{Batch, Copied, CopySink, Resume};

/// How long a connection attempt may take when the settings do not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows read per statement when walking the whole table.
const PAGE: i64 = 1000;

/// A connection to the PostgreSQL store, as the app role `memwarden db init` made.
pub struct Postgres {
    /// Shared only with the tasks reading a group's answers ([`Group::send`]).
    client: Arc<Client>,
    audit_keys: KeySet,
    connection: Option<JoinHandle<()>>,
    /// What it connects with, again after a lost connection.
    settings: DatabaseSettings,
    backoff: Backoff,
    /// The open group of writes on this connection, if any ([`Backend::begin_grouped`]).
    group: Group,
    /// The connection's prepared statements (writes').
    statements: Statements,
    /// Posts what grouped writes stored, once there have been some ([`super::behind`]).
    behind: Option<Behind>,
    // Last: fields drop in order, and the client must go before the runtime stops.
    driver: Driver,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connects with `settings`, configures the session and checks that the schema is the one
    /// this binary writes (`memwarden db init`) on a UTF-8 database. `audit_keys` MAC the audit
    /// events that commits append.
    ///
    /// # Errors
    /// [`OpenError::Postgres`] names the failure (a SQLSTATE or the connection's state), never
    /// the settings.
    pub fn connect(settings: &DatabaseSettings, audit_keys: KeySet) -> Result<Self, OpenError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| OpenError::Postgres(format!("cannot start its runtime: {e}")))?;
        let driver = Driver(Some(rt));
        let settings = settings.tuned(|config| {
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(CONNECT_TIMEOUT);
            }
            if config.get_application_name().is_none() {
                config.application_name("memwarden");
            }
        });
        let (client, connection) = connect::open(driver.rt(), &settings)
            .map_err(|e| OpenError::Postgres(format!("cannot connect: {}", detail(&e))))?;
        let pg = Self {
            client: Arc::new(client),
            audit_keys,
            connection: Some(connection),
            settings,
            backoff: Backoff::default(),
            group: Group::default(),
            statements: Statements::default(),
            behind: None,
            driver,
        };
        pg.check_session()?;
        Ok(pg)
    }

    fn check_session(&self) -> Result<(), OpenError> {
        let rt = self.driver.rt();
        rt.block_on(configure(&self.client))
            .map_err(|e| OpenError::Postgres(e.describe()))?;
        let check = "SELECT current_setting('server_encoding'), \
                     (SELECT coalesce(max(version), 0)::bigint FROM memory.schema_version)";
        let (encoding, version): (String, i64) = rt
            .block_on(self.client.query_one(check, &[]))
            .and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .map_err(|e| {
                OpenError::Postgres(format!("cannot read the schema version: {}", detail(&e)))
            })?;
        if encoding != "UTF8" {
            return Err(OpenError::Postgres(format!(
                "the database's encoding is {encoding}; memwarden needs UTF8 (createdb -E UTF8)"
            )));
        }
        if version != schema::CURRENT_VERSION {
            return Err(OpenError::Postgres(format!(
                "the schema is at version {version}, this binary needs {}: run `memwarden db init`",
                schema::CURRENT_VERSION
            )));
        }
        Ok(())
    }

    /// The connection, its statements prepared once.
    fn cached(&self) -> Cached<'_> {
        Cached {
            client: &self.client,
            statements: &self.statements,
        }
    }

    /// Runs a whole unit of work on the backend's runtime, again after a lost conflict.
    fn block_on<T>(&self, op: impl AsyncFnMut() -> Result<T, Failure>) -> Result<T> {
        self.driver.rt().block_on(retry(op))
    }

    fn count(&self, sql: &str, args: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64> {
        let n: i64 =
            self.block_on(async || Ok(self.client.query_one(sql, args).await?.try_get(0)?))?;
        Ok(n.max(0) as u64)
    }

    fn ids(&self, sql: &str) -> Result<Vec<String>> {
        self.block_on(async || {
            let rows = self.client.query(sql, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }
}

impl Backend for Postgres {
    fn load(&self, id: &str) -> Result<Option<Checked<RawRow>>> {
        let sql = format!("SELECT {COLUMNS} FROM memory.entries e WHERE e.id = $1");
        self.block_on(async || {
            Ok(self
                .client
                .query_opt(&sql, &[&id])
                .await?
                .as_ref()
                .map(read_row))
        })
    }

    fn list(
        &self,
        filter: &Filter,
        after: Option<&str>,
        want: usize,
    ) -> Result<Vec<Checked<RawRow>>> {
        self.block_on(async || read::list(&self.client, filter, after, want).await)
    }

    fn all_words(&self, query: &Query, filter: &Filter, limit: usize) -> Result<Vec<Match>> {
        self.block_on(async || {
            snapshot::in_search(self.cached(), async |c| {
                read::all_words(c, query, filter, limit).await
            })
            .await
        })
    }

    fn some_words(
        &self,
        query: &Query,
        filter: &Filter,
        need: usize,
        skip: &HashSet<i64>,
    ) -> Result<Vec<Match>> {
        self.block_on(async || {
            snapshot::in_search(self.cached(), async |c| {
                read::some_words(c, query, filter, need, skip).await
            })
            .await
        })
    }

    fn begin(&mut self) -> Result<Box<dyn WriteTx + '_>> {
        if self.group.open.get() {
            return Err(crate::error::Error::Internal(
                "a write of its own while a group is open".into(),
            ));
        }
        Ok(Box::new(PgTx::begin(
            self.driver.rt(),
            self.cached(),
            &self.audit_keys,
        )?))
    }

    fn groups(&self) -> bool {
        true
    }

    fn begin_grouped(&mut self) -> Result<Box<dyn WriteTx + '_>> {
        Ok(Box::new(PgTx::begin_grouped(
            self.driver.rt(),
            self.cached(),
            &self.client,
            &self.audit_keys,
            &self.group,
        )?))
    }

    fn group_open(&self) -> bool {
        self.group.open.get()
    }

    fn group_sound(&self) -> bool {
        !(self.group.broken.get() || self.client.is_closed())
    }

    fn commit_group(&mut self) -> Result<()> {
        if self.client.is_closed() && self.group.open.get() {
            self.group.broken.set(true);
        }
        self.group.commit(self.driver.rt(), &self.client)?;
        Behind::nudge_or_start(&mut self.behind, &self.settings);
        Ok(())
    }

    fn rollback_group(&mut self) {
        self.group.roll_back(self.driver.rt(), &self.client);
    }

    fn each_row(&self, each: &mut dyn FnMut(Checked<RawRow>)) -> Result<()> {
        let sql = format!(
            "SELECT {COLUMNS} FROM memory.entries e WHERE e.pos > $1 ORDER BY e.pos LIMIT $2"
        );
        // Not retried: `each` has seen the rows already handed over.
        self.driver
            .rt()
            .block_on(snapshot::in_snapshot(&self.client, async |client| {
                let mut after = i64::MIN;
                loop {
                    let rows = client.query(&sql, &[&after, &PAGE]).await?;
                    for row in &rows {
                        after = row.try_get(super::rows::COLUMN_COUNT - 1)?;
                        each(read_row(row));
                    }
                    if (rows.len() as i64) < PAGE {
                        return Ok(());
                    }
                }
            }))
            .map_err(Into::into)
    }

    fn copy_out(&self, from: &Resume, sink: &mut dyn CopySink) -> Result<()> {
        // Not retried: `sink` has seen what was handed over.
        let copy = snapshot::in_snapshot(&self.client, async |c| {
            super::transfer::copy_out(c, from, sink).await
        });
        self.driver.rt().block_on(copy).map_err(Into::into)
    }

    fn copy_in(&mut self, batch: &Batch) -> Result<()> {
        let Self { client, driver, .. } = self;
        // Shared only with the tasks of a group's answers; those of a group that ended are
        // dropped when the runtime next runs.
        if Arc::get_mut(client).is_none() {
            driver.rt().block_on(tokio::task::yield_now());
        }
        let client = Arc::get_mut(client).ok_or_else(|| {
            crate::error::Error::Internal("a copy into a store with a group open".into())
        })?;
        driver
            .rt()
            .block_on(super::transfer::copy_in(client, batch))
            .map_err(Into::into)
    }

    fn copied(&self) -> Result<Copied> {
        self.block_on(async || super::transfer::copied(&self.client).await)
    }

    fn ledger_chain(&self, keys: &KeySet) -> Result<ChainReport> {
        self.block_on(async || {
            snapshot::in_snapshot(&self.client, async |client| {
                Ok(ledger::check_chain(client, keys).await?)
            })
            .await
        })
    }

    fn quarantined(&self) -> Result<Vec<Checked<RawRow>>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM memory.entries e WHERE e.status = 'quarantined' ORDER BY e.id"
        );
        self.block_on(async || {
            Ok(self
                .client
                .query(&sql, &[])
                .await?
                .iter()
                .map(read_row)
                .collect())
        })
    }

    fn rows_sealed_with(&self, key_id: &str) -> Result<u64> {
        self.count(
            "SELECT (SELECT count(*) FROM memory.entries WHERE key_id = $1) \
             + (SELECT count(*) FROM memory.ledger WHERE key_id = $1)",
            &[&key_id],
        )
    }

    fn all_ids(&self) -> Result<Vec<String>> {
        self.ids("SELECT id FROM memory.entries")
    }

    fn active_ids(&self) -> Result<Vec<String>> {
        self.ids("SELECT id FROM memory.entries WHERE status = 'active'")
    }

    fn count_rows(&self) -> Result<u64> {
        self.count("SELECT count(*) FROM memory.entries", &[])
    }

    fn admit_session(&mut self, principal: &str, now_ms: i64, per_hour: u32) -> Result<bool> {
        self.block_on(async || {
            Ok(super::sessions::admit(&self.client, principal, now_ms, per_hour).await?)
        })
    }

    fn usage_drift(&self) -> Result<Vec<UsageDrift>> {
        self.block_on(async || Ok(super::quota::drift(&self.cached()).await?))
    }

    fn index_shape(&self) -> Result<IndexShape> {
        let segments = self.block_on(async || super::upkeep::dead_rows(&*self.client).await)?;
        Ok(IndexShape {
            levels: 0,
            segments,
        })
    }

    fn maintain(&mut self, _step_lock: Duration) -> Result<MaintainReport> {
        let dead = self.index_shape()?.segments;
        Ok(MaintainReport {
            segments_before: dead,
            segments_after: dead,
            ..MaintainReport::default()
        })
    }

    fn index_drift(&self) -> Result<Option<IndexDrift>> {
        let found = self.block_on(async || Ok(super::upkeep::drift(&self.cached()).await?))?;
        Ok(Some(found.report()))
    }

    fn repair_index(&mut self) -> Result<Option<IndexRepair>> {
        self.block_on(async || Ok(super::behind::catch_up(&*self.client).await?))?;
        let found = self.block_on(async || Ok(super::upkeep::drift(&self.cached()).await?))?;
        let (rt, sql) = (self.driver.rt(), self.cached());
        super::upkeep::repost(rt, sql, &self.audit_keys, &found).map(Some)
    }

    fn reconnect(&mut self) -> Result<()> {
        // Let the connection task see what happened to the socket since the last call.
        self.driver
            .rt()
            .block_on(async { tokio::task::yield_now().await });
        if !self.client.is_closed() {
            return Ok(());
        }
        let now = std::time::Instant::now();
        let wait = self.backoff.wait(now);
        if !wait.is_zero() {
            return Err(crate::error::Error::Disconnected {
                retry_after_ms: wait.as_millis() as u64,
            });
        }
        let opened = connect::open(self.driver.rt(), &self.settings).and_then(|(client, task)| {
            self.driver
                .rt()
                .block_on(configure(&client))
                .map_err(connect::Refused::error)
                .map(|()| (client, task))
        });
        match opened {
            Ok((mut client, task)) => {
                // The group's transaction died with the old connection: its writes are gone,
                // and it may only be rolled back (a COMMIT on the new one would commit nothing
                // and say nothing).
                if self.group.open.get() {
                    self.group.broken.set(true);
                }
                // Statements live on the connection that prepared them.
                self.statements.clear();
                if let Some(old) = self.connection.replace(task) {
                    old.abort();
                }
                let failed = self.backoff.reset();
                tracing::info!(target: "memwarden::store", failed_attempts = failed,
                    "reconnected to PostgreSQL");
                connect::record_reconnect(self.driver.rt(), &mut client, &self.audit_keys, failed);
                self.client = Arc::new(client);
                Ok(())
            }
            Err(e) => {
                let delay = self.backoff.failed(now);
                tracing::warn!(target: "memwarden::store", error = %detail(&e),
                    retry_in_ms = delay.as_millis() as u64, "reconnecting to PostgreSQL failed");
                Err(crate::error::Error::Disconnected {
                    retry_after_ms: (delay.as_millis() as u64).max(RETRY_AFTER_MS / 4),
                })
            }
        }
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        let connection = self.connection.take();
        let Self { client, driver, .. } = *self;
        driver.rt().block_on(async move {
            // Dropping the client sends Terminate; the driver then ends on its own.
            drop(client);
            if let Some(connection) = connection {
                tokio::time::timeout(Duration::from_secs(5), connection)
                    .await
                    .map_err(|_| {
                        crate::error::Error::Unavailable("postgresql: close timed out".into())
                    })?
                    .map_err(|e| {
                        crate::error::Error::Internal(format!("postgresql driver: {e}"))
                    })?;
            }
            Ok(())
        })
    }
}
