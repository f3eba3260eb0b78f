//! Per-session rate limits: calls per minute with a burst, write bytes per minute, and the
//! cooldown that follows repeated refusals. Pure arithmetic over a clock the caller passes in,
//! so tests need no sleeping: it never reads the clock or sleeps itself.

use serde::Deserialize;

/// The `[rates]` section. Every knob is optional; an absent one does not limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Calls admitted per minute, refilled continuously.
    pub calls_per_minute: Option<u32>,
    /// Calls admitted at once (default: `calls_per_minute`).
    pub burst: Option<u32>,
    /// Bytes writes may add per minute.
    pub write_bytes_per_minute: Option<u64>,
    /// Consecutive refusals that start a cooldown.
    pub cooldown_after_refusals: Option<u32>,
    /// How long a cooldown lasts.
    pub cooldown_seconds: Option<u64>,
    /// Cooldowns after which the session ends.
    pub end_session_after_cooldowns: Option<u32>,
    /// Sessions a principal may start per hour.
    pub sessions_per_hour: Option<u32>,
}

/// What the rate gate says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Over a rate: try again after this long.
    Limited {
        retry_after_ms: u64,
    },
    /// In a cooldown: every call is refused until it ends. `started` is true for the call
    /// that began it.
    Cooldown {
        retry_after_ms: u64,
        started: bool,
    },
    /// Too many cooldowns: the session ends (reported once).
    End,
    /// The session was ended earlier; the call is refused without a new report.
    Ended,
}

/// A token bucket: `capacity` tokens, refilled at `per_ms`.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    fn new(capacity: f64, per_minute: f64, now_ms: u64) -> Self {
        Self {
            capacity,
            per_ms: per_minute / 60_000.0,
            tokens: capacity,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last_ms = now_ms.max(self.last_ms);
    }

    /// Milliseconds until `n` tokens are there (0 when they are now).
    fn wait_for(&self, n: f64) -> u64 {
        let n = n.min(self.capacity);
        if self.tokens >= n {
            0
        } else {
            ((n - self.tokens) / self.per_ms).ceil() as u64
        }
    }
}

/// Where a session stands with the cooldown, said outright rather than read off a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Calls are admitted by the buckets; refusals count toward a cooldown.
    Open,
    /// A cooldown began and lasts until this instant (ms); every call is refused until then,
    /// and refusals meanwhile do not count.
    Cooling { until_ms: u64 },
    /// The session has been ended: every later call is refused, and the end is reported once.
    Ended,
}

/// One session's rate state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rates: Rates,
    calls: Option<Bucket>,
    bytes: Option<Bucket>,
    consecutive_refusals: u32,
    cooldowns: u32,
    phase: Phase,
}

impl RateLimiter {
    /// A fresh session's state at `now_ms`: full buckets, no refusals.
    pub fn new(rates: &Rates, now_ms: u64) -> Self {
        let calls = rates.calls_per_minute.map(|per_min| {
            let burst = rates.burst.unwrap_or(per_min).max(1);
            Bucket::new(f64::from(burst), f64::from(per_min), now_ms)
        });
        let bytes = rates
            .write_bytes_per_minute
            .map(|b| Bucket::new(b as f64, b as f64, now_ms));
        Self {
            rates: rates.clone(),
            calls,
            bytes,
            consecutive_refusals: 0,
            cooldowns: 0,
            phase: Phase::Open,
        }
    }

    /// True once a decision has ended the session.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The phase at `now_ms`: a cooldown whose time is up is over.
    fn phase(&mut self, now_ms: u64) -> Phase {
        if let Phase::Cooling { until_ms } = self.phase
            && now_ms >= until_ms
        {
            self.phase = Phase::Open;
        }
        self.phase
    }

    /// Admits one call (any request, valid or not), spending a token from the calls bucket.
    /// Runs before any other work on the call, so a flood of invalid calls costs the agent the
    /// same as a flood of valid ones. A call that is not admitted counts as a refusal.
    pub fn admit(&mut self, now_ms: u64) -> Decision {
        match self.phase(now_ms) {
            Phase::Ended => return Decision::Ended,
            Phase::Cooling { until_ms } => {
                return Decision::Cooldown {
                    retry_after_ms: until_ms - now_ms,
                    started: false,
                };
            }
            Phase::Open => {}
        }
        let Some(b) = &mut self.calls else {
            return Decision::Allow;
        };
        b.refill(now_ms);
        let wait = b.wait_for(1.0);
        if wait == 0 {
            b.tokens -= 1.0;
            return Decision::Allow;
        }
        self.refused(now_ms).unwrap_or(Decision::Limited {
            retry_after_ms: wait,
        })
    }

    /// Spends `n` bytes from the write bucket for bytes a write is about to add. `Err` carries
    /// how long until they would fit; nothing is spent then.
    pub fn spend_write_bytes(&mut self, now_ms: u64, n: u64) -> Result<(), u64> {
        let Some(b) = &mut self.bytes else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        b.refill(now_ms);
        match b.wait_for(n as f64) {
            0 => {
                b.tokens = (b.tokens - n as f64).max(0.0);
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// A call that succeeded: the run of consecutive refusals is over.
    pub fn succeeded(&mut self) {
        self.consecutive_refusals = 0;
    }

    /// Counts one refused call (for any reason: rate, schema, grant, policy). Returns the
    /// cooldown or end it triggers, if this refusal is the one that does.
    pub fn refused(&mut self, now_ms: u64) -> Option<Decision> {
        if self.phase(now_ms) != Phase::Open {
            return None;
        }
        self.consecutive_refusals += 1;
        let (Some(after), Some(secs)) = (
            self.rates.cooldown_after_refusals,
            self.rates.cooldown_seconds,
        ) else {
            return None;
        };
        if self.consecutive_refusals < after {
            return None;
        }
        self.consecutive_refusals = 0;
        self.cooldowns += 1;
        if let Some(end) = self.rates.end_session_after_cooldowns
            && self.cooldowns >= end
        {
            self.phase = Phase::Ended;
            return Some(Decision::End);
        }
        self.phase = Phase::Cooling {
            until_ms: now_ms + secs * 1000,
        };
        Some(Decision::Cooldown {
            retry_after_ms: secs * 1000,
            started: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates() -> Rates {
        Rates {
            calls_per_minute: Some(60),
            burst: Some(3),
            write_bytes_per_minute: Some(1000),
            cooldown_after_refusals: Some(3),
            cooldown_seconds: Some(10),
            end_session_after_cooldowns: Some(2),
            sessions_per_hour: None,
        }
    }

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(&rates(), 0);
        for _ in 0..3 {
            assert_eq!(r.admit(0), Decision::Allow);
        }
        assert_eq!(
            r.admit(0),
            Decision::Limited {
                retry_after_ms: 1000
            }
        );
        assert_eq!(
            r.admit(1000),
            Decision::Allow,
            "one call per second refills"
        );
        assert_eq!(
            r.admit(1000),
            Decision::Limited {
                retry_after_ms: 1000
            }
        );
    }

    #[test]
    fn write_bytes_are_a_second_bucket() {
        let mut r = RateLimiter::new(&rates(), 0);
        assert_eq!(r.spend_write_bytes(0, 800), Ok(()));
        assert_eq!(r.spend_write_bytes(0, 300), Err(6000));
        assert_eq!(r.spend_write_bytes(0, 0), Ok(()), "reads spend nothing");
        assert_eq!(r.spend_write_bytes(6000, 300), Ok(()));
    }

    #[test]
    fn every_refusal_counts_toward_cooldown_then_end_once() {
        let mut r = RateLimiter::new(&rates(), 0);
        assert_eq!(r.admit(0), Decision::Allow);
        // Refusals by later gates (schema, grant) count like rate refusals.
        assert_eq!(r.refused(0), None);
        assert_eq!(r.refused(0), None);
        assert_eq!(
            r.refused(0),
            Some(Decision::Cooldown {
                retry_after_ms: 10_000,
                started: true
            })
        );
        assert_eq!(
            r.admit(5_000),
            Decision::Cooldown {
                retry_after_ms: 5_000,
                started: false
            }
        );
        assert_eq!(
            r.refused(5_000),
            None,
            "refusals in a cooldown do not stack"
        );
        // After the cooldown the bucket has refilled; a success resets the run.
        assert_eq!(r.admit(10_000), Decision::Allow);
        r.succeeded();
        r.refused(10_000);
        r.refused(10_000);
        r.succeeded();
        r.refused(10_000);
        r.refused(10_000);
        assert_eq!(
            r.refused(10_000),
            Some(Decision::End),
            "second cooldown ends"
        );
        assert!(r.ended());
        for _ in 0..100 {
            assert_eq!(r.admit(10_000), Decision::Ended, "the end is reported once");
            assert_eq!(r.refused(10_000), None);
        }
    }

    #[test]
    fn rate_refusals_alone_reach_the_cooldown() {
        let mut r = RateLimiter::new(&rates(), 0);
        for _ in 0..3 {
            r.admit(0);
        }
        assert!(matches!(r.admit(0), Decision::Limited { .. }));
        assert!(matches!(r.admit(0), Decision::Limited { .. }));
        assert!(matches!(
            r.admit(0),
            Decision::Cooldown { started: true, .. }
        ));
    }
}
