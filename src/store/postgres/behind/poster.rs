//! The store's one poster. Every serving process that writes starts a thread ([`Behind`]) with
//! a connection of its own, but only the thread holding the session-level advisory lock
//! [`POSTER_LOCK`] runs steps; the others stand by and ask for the lock once a [`STANDBY`], so
//! one of them takes over within a second of the poster's process ending or losing its
//! connection. With a thread posting in every process, 16 separate `serve` processes stored a
//! third fewer rows than without posting behind: each process's steps contended for
//! `memory.posted`, and 16 more backends shared the cores.
//!
//! The poster's own process nudges it after each commit; rows other processes store it finds by
//! looking every few milliseconds while there are some, and ever less often (up to [`IDLE`])
//! while there are none. Rows not yet posted cost searches time, never results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::{STEP, Step, step};
use crate::pgconn::DatabaseSettings;
use crate::store::postgres::connect::{self, Backoff};
use crate::store::postgres::fail::detail;

/// The session-level advisory lock whose holder is the store's poster ("mwpost").
const POSTER_LOCK: i64 = 0x6d77_706f_7374;

/// How often a process standing by asks for [`POSTER_LOCK`].
const STANDBY: Duration = Duration::from_secs(1);

/// How soon a step that could not run (its rows being changed, a write of the CLI's posting,
/// the connection down) is tried again when no new write comes to prompt it.
const RETRY: Duration = Duration::from_millis(50);

/// How long a nudged poster waits before it steps, so that one step posts the rows of many
/// commits; also how soon it looks again after posting some.
const GATHER: Duration = Duration::from_millis(20);

/// The longest an idle poster waits before it looks for rows other processes stored.
const IDLE: Duration = Duration::from_secs(1);

/// How long a poster whose process is ending goes on posting what is behind (rows stored just
/// before the end, a few steps' worth), so that searches after it do not read them from the
/// table; whatever is left waits for the next poster, write or `maintain`.
const FINISH: Duration = Duration::from_secs(2);

/// The serving process's posting thread, started by its first commit. A failure (the database
/// restarting, say) is logged without the settings, and the thread connects again with the
/// backend's backoff; meanwhile searches read the rows behind directly.
pub(in crate::store::postgres) struct Behind {
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
    /// Starts the thread; it connects with `settings` and asks for the poster's lock at once.
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

    /// A write committed: has `slot`'s thread (started, with `settings`, if there is none)
    /// post it soon if it is the poster. A thread that cannot start is logged, and searches
    /// read the rows behind.
    pub(in crate::store::postgres) fn nudge_or_start(
        slot: &mut Option<Self>,
        settings: &DatabaseSettings,
    ) {
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
        if let Some(behind) = slot
            && let Some(nudge) = &behind.nudge
        {
            // Full: a nudge is already waiting, which covers this one.
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Behind {
    /// Stops the thread; a poster first posts what is behind (for at most [`FINISH`]).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.nudge.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a round of steps found.
enum Round {
    /// It posted rows, and none are left.
    Posted,
    /// Nothing was behind.
    Idle,
    /// A step could not run; try again soon.
    Busy,
}

/// The thread: stands by until it holds the poster's lock; then waits for a nudge or its next
/// look, and steps until nothing is behind or a step cannot run. Asked to stop, a poster (or a
/// thread that can become one then) posts what is left first ([`finish`]).
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
        elected: false,
        asked: None,
    };
    // How long a poster waits for a nudge before it looks anyway.
    let mut wait = GATHER;
    loop {
        let timeout = if poster.elected {
            wait
        } else {
            poster.until_asking()
        };
        let woke = nudged.recv_timeout(timeout);
        if matches!(woke, Err(RecvTimeoutError::Disconnected)) || stop.load(Ordering::Relaxed) {
            if poster.elect(true)
                && let Some(c) = poster.client()
            {
                rt.block_on(finish(c));
            }
            return;
        }
        if !poster.elect(false) {
            continue;
        }
        if woke.is_ok() {
            std::thread::sleep(GATHER);
        }
        let Some(c) = poster.client() else { continue };
        wait = match steps(&rt, c, stop) {
            Round::Posted => GATHER,
            Round::Busy => RETRY,
            Round::Idle => (wait * 2).clamp(GATHER, IDLE),
        };
    }
}

/// Steps until nothing is behind, a step cannot run, or the thread is asked to stop.
fn steps(rt: &tokio::runtime::Runtime, c: &Client, stop: &AtomicBool) -> Round {
    let mut posted = false;
    while !stop.load(Ordering::Relaxed) {
        match rt.block_on(step(c)) {
            Ok(Step::Posted(STEP)) => posted = true,
            Ok(Step::Posted(n)) if posted || n > 0 => return Round::Posted,
            Ok(Step::Posted(_)) => return Round::Idle,
            Ok(Step::Busy) => return Round::Busy,
            Err(e) => {
                tracing::warn!(target: "memwarden::store", error = %detail(&e),
                    "posting rows behind failed; it is tried again");
                return Round::Busy;
            }
        }
    }
    Round::Busy
}

/// The thread's connection, opened when first needed, and whether it holds the poster's lock.
struct Poster<'a> {
    rt: &'a tokio::runtime::Runtime,
    settings: &'a DatabaseSettings,
    client: Option<Client>,
    backoff: Backoff,
    /// This connection holds [`POSTER_LOCK`].
    elected: bool,
    /// When this thread last asked for it.
    asked: Option<Instant>,
}

impl Poster<'_> {
    /// The connection, opened again if it was lost (which loses the lock with it); `None` while
    /// the backoff has not passed or opening fails (logged without the settings).
    fn client(&mut self) -> Option<&Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.elected = false;
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

    /// How long until a thread standing by asks for the lock again.
    fn until_asking(&self) -> Duration {
        self.asked
            .map_or(Duration::ZERO, |t| STANDBY.saturating_sub(t.elapsed()))
    }

    /// Whether this thread is the poster: it asks for the lock (without waiting) if it does not
    /// hold it, and either `now` or a [`STANDBY`] has passed since it last asked.
    fn elect(&mut self, now: bool) -> bool {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.elected = false;
        }
        if self.elected || !(now || self.until_asking().is_zero()) {
            return self.elected;
        }
        self.asked = Some(Instant::now());
        let rt = self.rt;
        let Some(c) = self.client() else { return false };
        let asked = rt.block_on(c.query_one("SELECT pg_try_advisory_lock($1)", &[&POSTER_LOCK]));
        self.elected = match asked.and_then(|row| row.try_get::<_, bool>(0)) {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(target: "memwarden::store", error = %detail(&e),
                    "asking to post rows behind failed; it is asked again");
                false
            }
        };
        self.elected
    }
}

/// The process is ending: steps until nothing is behind, a step cannot run, or [`FINISH`] has
/// passed.
async fn finish(client: &Client) {
    let deadline = tokio::time::Instant::now() + FINISH;
    while let Ok(Ok(Step::Posted(STEP))) = tokio::time::timeout_at(deadline, step(client)).await {}
}
