//! A group of writes on the store's connection: one transaction that holds several sessions'
//! writes, each in a savepoint of its own, with their audit events, committed at once (see
//! `server::group`). It holds the store's write lock and the audit chain's from its first
//! write until it ends.
//!
//! Round trips are what a write costs here (each is two thread switches on each side), and
//! the store's connection runs one group's statements one after another, so a grouped write
//! pays few and the server never waits for the database while it has the next write to
//! prepare:
//! - the group opens in one round trip: the transaction, both locks, the first write's
//!   savepoint, and the newest row's time and the chain's head, which only the group's own
//!   writes move while it holds both locks ([`open_group`]);
//! - a write's savepoint goes out with its first statement, and a row insert with the
//!   statement after it; each text is prepared once per connection;
//! - a staged write's statements still to be sent (its savepoint, its row's insert, its event,
//!   linked to the head the group keeps) are sent at once, and their answers are read with
//!   whatever the group waits for next: the next write's first statement, or its COMMIT
//!   ([`Group::send`]). The database runs them while the server prepares the next write.
//!
//! A store alone is two round trips, the opening and its COMMIT; a store joining a group (with
//! no quota to count) waits for none: it sends its three statements and leaves.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use super::fail::db;
use super::write::{SAVEPOINT, begin_sql};
use crate::audit::Head;
use crate::error::{Error, Result};
use crate::pgconn::sql::Cached;

/// Commits only a transaction in good standing: in an aborted one, PostgreSQL would answer a
/// bare COMMIT by rolling back *without an error*. Here `SELECT 1` fails first and the COMMIT
/// in the same message is never run.
pub(super) const COMMIT: &str = "SELECT 1; COMMIT";

/// The state of the store connection's group: its transaction is open (holding the write lock
/// and the audit chain's), and whether it must be rolled back whole (a
/// write in it could not be undone alone, or the connection was lost).
///
/// Each write in the group runs in a savepoint of its own, sent in the same round trip as its
/// first statement and never released: savepoints nest, `ROLLBACK TO` undoes only the newest,
/// and the group's COMMIT ends them all.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) open: Cell<bool>,
    pub(super) broken: Cell<bool>,
    /// The chain's head, read when the group took the chain's lock: the next event links to
    /// it without reading the tail again (nobody else can append while the lock is held).
    pub(super) head: RefCell<Option<Head>>,
    /// The newest row's `created_at` once known in the group (it holds the write lock, so only
    /// its own writes move it): `Some(None)` for an empty table.
    pub(super) newest: Cell<Option<Option<i64>>>,
    /// The answers still to come to the staged writes' statements ([`Group::send`]).
    in_flight: RefCell<Vec<InFlight>>,
    /// Quota usage as the group's writes so far leave it.
    pub(super) usage: UsageMemo,
}

/// Each namespace's quota usage (entries, content bytes) as the group's writes so far leave
/// it, for the namespaces a write in the group has read. The group holds the store's write
/// lock, so only its own writes move `memory.namespace_usage`: a store adds its row (one entry
/// and its content's bytes, as migration 6's trigger counts them) as it is staged, and a write
/// that did anything else (an update, a delete) makes the group forget it all. So a store
/// joining a group needs no round trip for its quota check, and its inserts go out with the
/// group's next statement (its COMMIT, usually).
#[derive(Debug, Default)]
pub(super) struct UsageMemo(RefCell<HashMap<String, (i64, i64)>>);

impl UsageMemo {
    /// What the group knows of `namespace`'s usage.
    pub(super) fn get(&self, namespace: &str) -> Option<(i64, i64)> {
        self.0.borrow().get(namespace).copied()
    }

    /// Keeps `usage`, read in the group before any write in it changed `namespace` unseen.
    pub(super) fn learn(&self, namespace: &str, usage: (i64, i64)) {
        self.0.borrow_mut().insert(namespace.to_owned(), usage);
    }

    /// A write was staged: `added` holds the rows it inserted (namespace, content bytes), or
    /// is `None` when it did anything else.
    pub(super) fn staged(&self, added: Option<&[(String, i64)]>) {
        let mut memo = self.0.borrow_mut();
        let Some(added) = added else {
            memo.clear();
            return;
        };
        for (namespace, bytes) in added {
            if let Some((entries, used)) = memo.get_mut(namespace) {
                *entries += 1;
                *used += bytes;
            }
        }
    }
}

/// A statement of a staged write that the group sends at once without waiting for its answer
/// ([`Group::send`]): the write's savepoint, its row's insert, its event's. Sent inside the
/// group's transaction and before anything sent after them, they fail the whole group if they
/// fail: the write they belong to was staged, so only the group can undo it.
#[derive(Debug)]
pub(super) struct Held {
    /// The prepared statement.
    pub(super) statement: Statement,
    /// Its values.
    pub(super) params: Vec<Box<dyn ToSql + Sync + Send>>,
    /// What it does, for the error when it touches other than `rows` rows.
    pub(super) what: &'static str,
    /// The rows it must touch: 1 for an insert, 0 for a savepoint.
    pub(super) rows: u64,
}

/// The answers to a staged write's statements, read with whatever the group waits for next.
type InFlight = JoinHandle<Result<()>>;

/// Sends each of `held` in order and waits for every answer; `sent` is set once all of them
/// are queued on the connection (each request is queued when its future is first polled, and
/// they are first polled in order, so the server runs them in that order). `Ok` when each
/// touched the rows it must.
async fn send_in_order(client: Arc<Client>, held: Vec<Held>, sent: Arc<AtomicBool>) -> Result<()> {
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = held
        .iter()
        .map(|h| h.params.iter().map(|p| p.as_ref() as _).collect())
        .collect();
    let mut sends: Vec<Pin<Box<dyn Future<Output = _> + Send + '_>>> = held
        .iter()
        .zip(&params)
        .map(|(h, p)| Box::pin(client.execute(&h.statement, p)) as _)
        .collect();
    let mut answers: Vec<Option<Result<u64, tokio_postgres::Error>>> =
        sends.iter().map(|_| None).collect();
    poll_fn(|cx| {
        for (send, answer) in sends.iter_mut().zip(answers.iter_mut()) {
            if answer.is_none()
                && let Poll::Ready(r) = send.as_mut().poll(cx)
            {
                *answer = Some(r);
            }
        }
        sent.store(true, Ordering::Release);
        match answers.iter().all(Option::is_some) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    })
    .await;
    for (h, answer) in held.iter().zip(answers) {
        match answer {
            Some(Ok(n)) if n == h.rows => {}
            Some(Ok(n)) => return Err(Error::Internal(format!("{} touched {n} rows", h.what))),
            Some(Err(e)) => return Err(db(e)),
            None => return Err(Error::Internal("a statement was not answered".into())),
        }
    }
    Ok(())
}

/// Waits for `then` and for the answers to the statements sent before it (`in_flight`), which
/// are read from the connection first, so this costs no round trip of its own. The first
/// failure among the earlier statements is the group's; else `then`'s answer.
pub(super) async fn answered_then<T>(
    in_flight: Vec<InFlight>,
    then: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    let earlier = async {
        for task in in_flight {
            task.await
                .map_err(|e| Error::Internal(format!("a sent statement's task ended: {e}")))??;
        }
        Ok::<_, Error>(())
    };
    let (earlier, answer) = tokio::join!(earlier, then);
    earlier?;
    answer.map_err(db)
}

/// The newest row's `created_at`, which a new row's time must not precede (`store/write.rs`,
/// `stamp`).
pub(super) const NEWEST: &str = "SELECT created_at FROM memory.entries ORDER BY pos DESC LIMIT 1";

/// Opens `group`'s transaction in one round trip: the transaction, the store's lock, then the
/// audit chain's (the one order every writer takes them in), the first write's savepoint, and
/// the two things the group's writes need and that only they can move while it holds both
/// locks: the newest row's time and the chain's head. The reads are sent after the batch that
/// takes the locks, and a connection answers in order, so each reads under them (READ
/// COMMITTED: a statement's snapshot is taken when it starts).
///
/// The server marks its audit log as waiting for the group before a grouped write begins
/// (`server::group`, `StoreGuard::expect_group`): from then on an append asks for the group's
/// commit instead of waiting for the chain's lock while holding the log.
pub(super) fn open_group(rt: &Runtime, sql: Cached<'_>, group: &Group) -> Result<()> {
    let start = format!(
        "{}; SET LOCAL synchronous_commit = off; SELECT pg_advisory_xact_lock({}); \
         SAVEPOINT {SAVEPOINT}",
        begin_sql(),
        crate::audit::postgres::APPEND_LOCK
    );
    let opened = rt.block_on(async {
        // Prepared before anything is sent, so that each goes out in one piece after the batch.
        let newest = sql.prepare(NEWEST).await?;
        let tail = sql.prepare(crate::audit::postgres::HEAD).await?;
        let (begun, newest, tail) = tokio::join!(
            biased;
            sql.client.batch_execute(&start),
            sql.client.query_opt(&newest, &[]),
            sql.client.query_opt(&tail, &[]),
        );
        begun?;
        let newest = newest?.map(|r| r.try_get(0)).transpose()?;
        Ok::<_, tokio_postgres::Error>((newest, tail?))
    });
    match opened {
        Ok((newest, tail)) => {
            group.open.set(true);
            group.newest.set(Some(newest));
            group
                .head
                .replace(Some(crate::audit::postgres::head_of(tail)));
            Ok(())
        }
        Err(e) => {
            // Whatever was begun ends here, and its locks with it.
            let _ = rt.block_on(sql.client.batch_execute("ROLLBACK"));
            Err(db(e))
        }
    }
}

/// Takes the chain's lock and reads its head in one round trip: the read is sent after the
/// lock, and a connection answers in order, so it reads the tail under the lock (READ
/// COMMITTED: a statement's snapshot is taken when it starts; FACTS §PostgreSQL).
pub(super) async fn locked_head(sql: &Cached<'_>) -> Result<Head, tokio_postgres::Error> {
    // Prepared before anything is sent, so that each goes out in one piece, in order.
    let lock = sql.prepare(crate::audit::postgres::LOCK).await?;
    let tail = sql.prepare(crate::audit::postgres::HEAD).await?;
    let (locked, tail) = tokio::join!(
        biased;
        sql.client.execute(&lock, &[&crate::audit::postgres::APPEND_LOCK]),
        sql.client.query_opt(&tail, &[]),
    );
    locked?;
    Ok(crate::audit::postgres::head_of(tail?))
}

impl Group {
    /// Sends a staged write's statements (`held`) now, in order, without waiting for their
    /// answers: the server runs them while the next write is prepared, and their answers are
    /// read with whatever the group waits for next ([`answered_then`]): the next write's first
    /// statement, or the group's COMMIT.
    ///
    /// They are sent by a task of their own on the backend's runtime, since their answers
    /// outlive this call. This waits until the task has queued them on the connection, so
    /// nothing sent later can overtake them, then yields once more so that the connection's
    /// driver writes them out now rather than with the next call.
    pub(super) fn send(&self, rt: &Runtime, client: &Arc<Client>, held: Vec<Held>) {
        let sent = Arc::new(AtomicBool::new(false));
        let task = rt.spawn(send_in_order(client.clone(), held, sent.clone()));
        rt.block_on(async {
            // (A task that ended without setting it failed before sending anything.)
            while !sent.load(Ordering::Acquire) && !task.is_finished() {
                tokio::task::yield_now().await;
            }
            tokio::task::yield_now().await;
        });
        self.in_flight.borrow_mut().push(task);
    }

    /// The answers still to come, which the caller now waits for ([`answered_then`]).
    pub(super) fn take_in_flight(&self) -> Vec<InFlight> {
        self.in_flight.take()
    }

    /// Commits the open group: every write staged in it, with their events, in one transaction;
    /// the answers still to come to their statements are read with the COMMIT's.
    ///
    /// The group's transaction commits without waiting for its WAL to reach disk
    /// (`synchronous_commit` off, set as the group opens), so the store's and the chain's locks
    /// are released as soon as its commit record is written, and other processes' writes
    /// (other hosts', other `serve` processes') proceed while it is flushed, and share flushes
    /// with it. [`crate::audit::postgres::FLUSH`] follows in the same round trip: its commit
    /// record comes after the group's and its COMMIT returns once the WAL is on disk past it,
    /// so the group is durable before this returns, before any write in it is acknowledged.
    ///
    /// A group's writes are visible to others from its COMMIT, a flush before they are durable.
    /// No answer shows them early: every call's event commits, synchronously, after the call
    /// read what it answers with (`server::call`), and the offline readers flush before they
    /// report (`export_sqlite`).
    pub(super) fn commit(&self, rt: &Runtime, client: &Client) -> Result<()> {
        if !self.open.get() {
            return Ok(());
        }
        if self.broken.get() {
            self.roll_back(rt, client);
            return Err(Error::Unavailable(
                "a group of writes was lost and rolled back".into(),
            ));
        }
        let in_flight = self.take_in_flight();
        self.end();
        let commit = format!("{COMMIT}; {}", crate::audit::postgres::FLUSH);
        rt.block_on(answered_then(in_flight, client.batch_execute(&commit)))
            .inspect_err(|_| {
                // Not committed (a sent statement failed, and `SELECT 1` with it): end the
                // transaction so the locks go now. Or committed and not known durable (the
                // connection went during the flush): the outcome is unknown, as when it goes
                // during a COMMIT, and nothing of it is acknowledged.
                let _ = rt.block_on(client.batch_execute("ROLLBACK"));
            })
    }

    /// Rolls the open group back: none of its writes, nor their events, is applied.
    pub(super) fn roll_back(&self, rt: &Runtime, client: &Client) {
        let was_open = self.open.get();
        self.end();
        if was_open && let Err(e) = rt.block_on(client.batch_execute("ROLLBACK")) {
            tracing::warn!(target: "memwarden::store", error = %super::fail::detail(&e),
                "rolling back a group of writes failed");
        }
    }

    pub(super) fn end(&self) {
        self.open.set(false);
        self.broken.set(false);
        self.head.replace(None);
        self.newest.set(None);
        // Their answers are not wanted any more (the COMMIT took what it needed, or the group
        // is rolled back); the statements are on the connection already.
        for task in self.in_flight.take() {
            task.abort();
        }
        self.usage.0.borrow_mut().clear();
    }
}
