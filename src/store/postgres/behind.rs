//! Postings written behind the stores (migration 8). A 60-word store spent most of its time in
//! the database posting its words: at 100k entries the row itself took 0.07 ms of the backend,
//! its 60 postings 0.26 ms more, all of it inside the write's transaction and before its
//! acknowledgement. Now a store commits its row and event alone, and the rows are posted by a
//! second connection of the serving process ([`Behind`]) while the first goes on, in short
//! transactions of their own.
//!
//! `memory.posted.upto` says how far the postings go, and every committed state keeps one
//! invariant: an active row at or below `upto` has exactly its postings, and no row above it has
//! any. So a search reads the postings at or below `upto` and checks the rows above it (the
//! tail, in its namespaces only) against its lexemes directly, both in one statement's snapshot
//! ([`super::postings::newest_in`]): what it finds does not depend on how far posting has got.
//!
//! How the invariant holds without a lock that stores would wait on:
//! - [`POST_BEHIND`] moves `upto` over the oldest rows above it, after locking them `FOR SHARE
//!   NOWAIT` (whatever their status), and posts the active ones in the same transaction. A row
//!   being changed cannot be locked, so the step fails and is tried again later; a row it has
//!   locked cannot be changed until it commits.
//! - The triggers of a row's insert, update and delete keep its postings only when its position
//!   is at or below `upto` as they read it. A writer changing a row above `upto` holds its lock,
//!   so `upto` cannot pass the row before the writer commits; a writer blocked by the step's
//!   lock reads `upto` after the step has committed.
//! - Every writer of memwarden's numbers rows and commits them under the store's write lock, so
//!   rows commit in the order of their positions: no row below a committed row is still in
//!   flight when a step reads which rows to post.
//!
//! A step commits with `synchronous_commit` off: its postings are derived from rows already
//! durable, and a crash that loses it loses `upto`'s move with it (WAL is replayed in order), so
//! the rows are simply posted again. A lagging indexer costs searches time, never results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, GenericClient};

use super::connect::{self, Backoff};
use super::fail::detail;
use crate::pgconn::DatabaseSettings;

/// Rows posted per step: a step holds their row locks (an update of one of them waits for it),
/// and at 100k entries posts about four rows a millisecond.
pub(super) const STEP: i32 = 64;

/// A write of its own (not grouped: the CLI's) ends with one step before its COMMIT (guarded
/// as [`super::group::COMMIT`] is), so what it writes is posted with it.
pub(super) const STEP_THEN_COMMIT: &str = "SELECT memory.post_behind(64); SELECT 1; COMMIT";

/// How soon a step that could not run (its rows being changed, another process posting, the
/// connection down) is tried again when no new write comes to prompt it.
const RETRY: Duration = Duration::from_millis(50);

/// How long a nudged poster waits before it steps, so that one step posts the rows of many
/// commits.
const GATHER: Duration = Duration::from_millis(20);

/// How long a poster whose process is ending goes on posting what is behind (rows stored just
/// before the end, a few steps' worth), so that searches after it do not read them from the
/// table; whatever is left waits for the next write or `maintain`.
const FINISH: Duration = Duration::from_secs(2);

/// Migration 8: `memory.posted`, the triggers that keep postings only at or below it, and the
/// step that moves it (`memory.post_behind`). Every row there is now was posted by migration 7's
/// triggers, so `upto` starts at the newest.
pub(super) const POSTED: &str = r#"
CREATE TABLE memory.posted (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    upto bigint NOT NULL
);
INSERT INTO memory.posted (upto) SELECT coalesce(max(pos), 0) FROM memory.entries;

CREATE OR REPLACE FUNCTION memory.post_entry() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    upto bigint := (SELECT p.upto FROM memory.posted p);
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.status = 'active' AND OLD.pos <= upto THEN
        DELETE FROM memory.postings
         WHERE lexeme = ANY(tsvector_to_array(OLD.scoped)) AND pos = OLD.pos;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'active' AND NEW.pos <= upto THEN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, NEW.pos FROM unnest(tsvector_to_array(NEW.scoped)) AS l;
    END IF;
    RETURN NULL;
END $$;

-- One step: posts the oldest `step` rows above `upto` and moves it over them. Returns how many
-- rows it passed (fewer than `step`: none are left), or -1 when another process is posting or
-- one of the rows is being changed. It never waits for a lock.
CREATE OR REPLACE FUNCTION memory.post_behind(step int) RETURNS int
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    done bigint;
    last bigint;
    n int;
BEGIN
    SELECT p.upto INTO done FROM memory.posted p FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    BEGIN
        SELECT count(*), max(s.pos) INTO n, last FROM (
            SELECT e.pos FROM memory.entries e WHERE e.pos > done ORDER BY e.pos LIMIT step
            FOR SHARE NOWAIT) AS s;
    EXCEPTION WHEN lock_not_available THEN
        RETURN -1;
    END;
    IF n = 0 THEN
        RETURN 0;
    END IF;
    BEGIN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(e.scoped)) AS l
             WHERE e.pos > done AND e.pos <= last AND e.status = 'active';
    EXCEPTION WHEN unique_violation THEN
        -- Postings above `upto` that an owner wrote by hand: keep what is right, and let
        -- `verify` report the rest.
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(e.scoped)) AS l
             WHERE e.pos > done AND e.pos <= last AND e.status = 'active'
            ON CONFLICT DO NOTHING;
    END;
    UPDATE memory.posted SET upto = last;
    RETURN n;
END $$;
"#;

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Posted this many rows; fewer than [`STEP`] means none are left.
    Posted(i32),
    /// Another process is posting, or a row of the step is being changed: try again later.
    Busy,
}

/// Runs one step on `client`, in its own transaction.
pub(super) async fn step(client: &impl GenericClient) -> Result<Step, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT memory.post_behind($1)", &[&STEP])
        .await?;
    Ok(match row.try_get::<_, i32>(0)? {
        n if n < 0 => Step::Busy,
        n => Step::Posted(n),
    })
}

/// Posts every row behind, waiting out other processes' steps: `maintain`, and a bulk copy.
/// Returns the rows this call posted.
pub(super) async fn catch_up(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let mut posted = 0u64;
    loop {
        match step(client).await? {
            Step::Posted(n) => {
                posted += n as u64;
                if n < STEP {
                    return Ok(posted);
                }
            }
            Step::Busy => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The serving process's poster: a thread with a connection of its own that runs steps
/// whenever a write commits ([`Behind::nudge`]) until nothing is left behind. A failure
/// (the database restarting, say) is logged without the settings, and the thread connects
/// again with the backend's backoff; meanwhile searches read the rows behind directly.
pub(super) struct Behind {
    nudge: Option<SyncSender<()>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behind").finish_non_exhaustive()
    }
}

impl Behind {
    /// Starts the thread; it connects with `settings` when first nudged.
    fn start(settings: DatabaseSettings) -> std::io::Result<Self> {
        let (nudge, nudged) = sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memwarden-posting".into())
            .spawn(move || run(&settings, &nudged, &stopping))?;
        Ok(Self {
            nudge: Some(nudge),
            stop,
            thread: Some(thread),
        })
    }

    /// A write committed: has `slot`'s poster (started, with `settings`, if there is none)
    /// post it soon. A thread that cannot start is logged, and searches read the rows behind.
    pub(super) fn nudge_or_start(slot: &mut Option<Self>, settings: &DatabaseSettings) {
        if slot.is_none() {
            match Self::start(settings.clone()) {
                Ok(started) => *slot = Some(started),
                Err(e) => {
                    tracing::error!(target: "memwarden::store", error = %e,
                        "cannot start the posting thread; searches read unposted rows directly");
                    return;
                }
            }
        }
        if let Some(behind) = slot {
            behind.nudge();
        }
    }

    /// A write committed: post it (and whatever else is behind) soon.
    fn nudge(&self) {
        if let Some(nudge) = &self.nudge {
            // Full: a nudge is already waiting, which covers this one.
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Behind {
    /// Stops the thread once it has posted what is behind (for at most [`FINISH`]).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.nudge.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: waits for a nudge (or, with work left, at most [`RETRY`]), then steps until
/// nothing is behind or a step cannot run. Asked to stop, it posts what is left first
/// ([`finish`]).
fn run(settings: &DatabaseSettings, nudged: &Receiver<()>, stop: &AtomicBool) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(target: "memwarden::store", error = %e,
                "cannot start the posting thread's runtime; searches read unposted rows directly");
            return;
        }
    };
    let mut poster = Poster {
        rt: &rt,
        settings,
        client: None,
        backoff: Backoff::default(),
    };
    let mut behind = false;
    loop {
        let woke = if behind {
            nudged.recv_timeout(RETRY)
        } else {
            nudged.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        if matches!(woke, Err(RecvTimeoutError::Disconnected)) || stop.load(Ordering::Relaxed) {
            // A nudge still waiting is a write not yet posted.
            if (behind || woke.is_ok())
                && let Some(c) = poster.client()
            {
                rt.block_on(finish(c));
            }
            return;
        }
        behind = true;
        // Let the writes of the next few milliseconds join this one: a step per commit would
        // have every process's poster contend for `memory.posted` hundreds of times a second.
        std::thread::sleep(GATHER);
        let Some(c) = poster.client() else { continue };
        while !stop.load(Ordering::Relaxed) {
            match rt.block_on(step(c)) {
                Ok(Step::Posted(n)) if n == STEP => {}
                Ok(Step::Posted(_)) => {
                    behind = false;
                    break;
                }
                Ok(Step::Busy) => break,
                Err(e) => {
                    tracing::warn!(target: "memwarden::store", error = %detail(&e),
                        "posting rows behind failed; it is tried again");
                    break;
                }
            }
        }
    }
}

/// The thread's connection, opened when there is something to post.
struct Poster<'a> {
    rt: &'a tokio::runtime::Runtime,
    settings: &'a DatabaseSettings,
    client: Option<Client>,
    backoff: Backoff,
}

impl Poster<'_> {
    /// The connection, opened again if it was lost; `None` while the backoff has not passed or
    /// opening fails (logged without the settings).
    fn client(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let now = Instant::now();
            if !self.backoff.wait(now).is_zero() {
                return None;
            }
            let opened = connect::open(self.rt, self.settings).and_then(|(c, _task)| {
                self.rt.block_on(async {
                    connect::configure(&c)
                        .await
                        .map_err(connect::Refused::error)?;
                    c.batch_execute("SET synchronous_commit = off").await?;
                    Ok(c)
                })
            });
            match opened {
                Ok(c) => {
                    self.backoff.reset();
                    self.client = Some(c);
                }
                Err(e) => {
                    self.backoff.failed(now);
                    tracing::warn!(target: "memwarden::store", error = %detail(&e),
                        "the posting connection could not be opened");
                }
            }
        }
        self.client.as_ref()
    }
}

/// The process is ending: steps until nothing is behind, a step cannot run, or [`FINISH`] has
/// passed.
async fn finish(client: &Client) {
    let deadline = tokio::time::Instant::now() + FINISH;
    while let Ok(Ok(Step::Posted(STEP))) = tokio::time::timeout_at(deadline, step(client)).await {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_of_its_own_posts_one_step() {
        assert!(STEP_THEN_COMMIT.starts_with(&format!("SELECT memory.post_behind({STEP}); ")));
        assert!(STEP_THEN_COMMIT.ends_with(super::super::group::COMMIT));
    }
}
