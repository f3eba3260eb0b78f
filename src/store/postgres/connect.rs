//! Connecting, and connecting again: one client and its connection task on the backend's
//! runtime, and the bounded backoff between attempts after the connection is lost (a server
//! restart, a network cut), so the server comes back on its own without hammering a database
//! that is down.

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::fail::detail;
use crate::audit::inspect::RECONNECTED;
use crate::keys::KeySet;
use crate::pgconn::DatabaseSettings;

/// The first wait after a failed attempt; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Session settings: a writer waits for the store's write lock at most as long as SQLite's
/// busy wait ([`crate::sqlite_file::BUSY_TIMEOUT`]; then the call fails UNAVAILABLE), and a transaction left open by a stuck
/// process ends on its own rather than holding the lock.
const SESSION: &str = "SET lock_timeout = '10s'; \
     SET idle_in_transaction_session_timeout = '60s'; \
     SET default_transaction_isolation = 'read committed'";

/// Sets up a new connection's session: [`SESSION`], and the server's side of the dead-peer
/// bounds ([`crate::pgconn::DEAD_PEER_SESSION`]); then runs the flush a group's commit ends
/// with ([`crate::audit::postgres::FLUSH`]) once, so a database where it cannot run (its
/// function's EXECUTE revoked) is refused here, before any write, and never after a commit.
pub(super) async fn configure(client: &Client) -> Result<(), Refused> {
    client
        .batch_execute(SESSION)
        .await
        .map_err(Refused::Session)?;
    client
        .batch_execute(crate::pgconn::DEAD_PEER_SESSION)
        .await
        .map_err(Refused::Session)?;
    client
        .batch_execute(crate::audit::postgres::FLUSH)
        .await
        .map_err(Refused::Flush)
}

/// What [`configure`] could not do.
#[derive(Debug)]
pub(super) enum Refused {
    /// Setting the session up.
    Session(tokio_postgres::Error),
    /// The flush a group's commit ends with.
    Flush(tokio_postgres::Error),
}

impl Refused {
    /// What an operator reads: the step, and the database's reason in fixed words.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Session(e) => format!("cannot set the session up: {}", detail(e)),
            Self::Flush(e) => format!(
                "the database refuses the flush each commit ends with ({}): \
                 the app role needs EXECUTE on pg_logical_emit_message(boolean, text, text), \
                 which PostgreSQL grants to PUBLIC by default",
                detail(e)
            ),
        }
    }

    /// The database's error.
    pub(super) fn error(self) -> tokio_postgres::Error {
        match self {
            Self::Session(e) | Self::Flush(e) => e,
        }
    }
}

/// The backend's runtime, stopped without blocking when dropped (a blocking shutdown would
/// panic if the last owner were ever dropped on an async thread).
pub(super) struct Driver(pub(super) Option<Runtime>);

impl Driver {
    pub(super) fn rt(&self) -> &Runtime {
        // Only `drop` takes it out.
        self.0
            .as_ref()
            .expect("the runtime lives as long as the backend")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Connects with `settings` on `rt` (TLS or not as they say): the client, and the task that
/// drives its connection (polled whenever the runtime runs, i.e. during the backend's calls).
pub(super) fn open(
    rt: &Runtime,
    settings: &DatabaseSettings,
) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = rt.block_on(settings.connect())?;
    let task = rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(target: "memwarden::store", error = %detail(&e), "the PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

/// Records a reconnection in the audit chain (a security event `store_reconnected` with the
/// attempts that failed before it), so `memwarden metrics`, a process of its own, can count
/// reconnections and connection errors from a durable place. An outage is recorded when it
/// ends: while the database is down nothing can be written to it. Failing to record one loses
/// a metric, not a write, so it is logged and the reconnection stands.
pub(super) fn record_reconnect(rt: &Runtime, client: &mut Client, keys: &KeySet, failed: u32) {
    let event = crate::audit::NewEvent::new(
        crate::audit::Kind::Security,
        serde_json::json!({"event": RECONNECTED, "failed_attempts": failed}),
    );
    let recorded = rt.block_on(async {
        let tx = client.transaction().await?;
        crate::audit::postgres::append(&tx, keys, &event, crate::clock::now_ms()).await?;
        tx.commit().await?;
        Ok::<_, crate::audit::postgres::PgAuditError>(())
    });
    if let Err(e) = recorded {
        let why = match &e {
            crate::audit::postgres::PgAuditError::Database(e) => detail(e),
            other => other.to_string(),
        };
        tracing::warn!(target: "memwarden::store", error = %why,
            "the reconnection could not be recorded in the audit log");
    }
}

/// When the next attempt may be made.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    not_before: Option<Instant>,
    delay: Option<Duration>,
    /// Attempts that failed since the last success.
    failures: u32,
}

impl Backoff {
    /// How long until an attempt may be made (zero: now).
    pub(super) fn wait(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// An attempt failed at `now`: the next waits twice as long as the last, up to the cap.
    pub(super) fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.delay.map_or(FIRST_DELAY, |d| (d * 2).min(MAX_DELAY));
        self.delay = Some(delay);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + delay);
        delay
    }

    /// An attempt succeeded: returns how many failed before it, and starts afresh.
    pub(super) fn reset(&mut self) -> u32 {
        std::mem::take(self).failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let t = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.wait(t), Duration::ZERO);
        assert_eq!(b.failed(t), FIRST_DELAY);
        assert_eq!(b.wait(t), FIRST_DELAY);
        let delays: Vec<Duration> = (0..6).map(|_| b.failed(t)).collect();
        assert_eq!(delays[0], FIRST_DELAY * 2);
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(b.wait(t + MAX_DELAY), Duration::ZERO);
        assert_eq!(b.reset(), 7, "every failed attempt is counted");
        assert_eq!(b.reset(), 0);
        assert_eq!(b.wait(t), Duration::ZERO);
    }
}
