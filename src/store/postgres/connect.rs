//! Connecting, and connecting again: one client and its connection task on the backend's
//! runtime, and the bounded backoff between attempts after the connection is lost (a server
//! restart, a network cut), so the server comes back on its own without hammering a database
//! that is down.

use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::fail::detail;
use crate::pgconn::DatabaseSettings;

/// The first wait after a failed attempt; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

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
