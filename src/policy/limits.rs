//! Per-session rate limits: calls per minute with a burst, write bytes per minute, and the
//! cooldown that follows repeated refusals. Pure arithmetic over a clock the caller passes in,
//! so tests need no sleeping.

use serde::Deserialize;

/// The `[rates]` section. Every knob is optional; an absent one does not limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    pub calls_per_minute: Option<u32>,
    pub burst: Option<u32>,
    pub write_bytes_per_minute: Option<u64>,
    pub cooldown_after_refusals: Option<u32>,
    pub cooldown_seconds: Option<u64>,
    pub end_session_after_cooldowns: Option<u32>,
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
    /// In (or just entered) a cooldown: every call is refused until it ends.
    Cooldown {
        retry_after_ms: u64,
    },
    /// Too many cooldowns: the session ends.
    End,
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

/// One session's rate state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rates: Rates,
    calls: Option<Bucket>,
    bytes: Option<Bucket>,
    consecutive_refusals: u32,
    cooldown_until: u64,
    cooldowns: u32,
}

impl RateLimiter {
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
            cooldown_until: 0,
            cooldowns: 0,
        }
    }

    /// Decides one call that would write `write_bytes` (0 for reads), consuming its tokens if
    /// it is allowed.
    pub fn check(&mut self, now_ms: u64, write_bytes: u64) -> Decision {
        if now_ms < self.cooldown_until {
            return Decision::Cooldown {
                retry_after_ms: self.cooldown_until - now_ms,
            };
        }
        let mut wait = 0;
        if let Some(b) = &mut self.calls {
            b.refill(now_ms);
            wait = wait.max(b.wait_for(1.0));
        }
        if let Some(b) = &mut self.bytes
            && write_bytes > 0
        {
            b.refill(now_ms);
            wait = wait.max(b.wait_for(write_bytes as f64));
        }
        if wait == 0 {
            if let Some(b) = &mut self.calls {
                b.tokens -= 1.0;
            }
            if let Some(b) = &mut self.bytes
                && write_bytes > 0
            {
                b.tokens = (b.tokens - write_bytes as f64).max(0.0);
            }
            self.consecutive_refusals = 0;
            return Decision::Allow;
        }
        self.consecutive_refusals += 1;
        match (
            self.rates.cooldown_after_refusals,
            self.rates.cooldown_seconds,
        ) {
            (Some(after), Some(secs)) if self.consecutive_refusals >= after => {
                self.consecutive_refusals = 0;
                self.cooldowns += 1;
                if let Some(end) = self.rates.end_session_after_cooldowns
                    && self.cooldowns >= end
                {
                    return Decision::End;
                }
                self.cooldown_until = now_ms + secs * 1000;
                Decision::Cooldown {
                    retry_after_ms: secs * 1000,
                }
            }
            _ => Decision::Limited {
                retry_after_ms: wait,
            },
        }
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
            assert_eq!(r.check(0, 0), Decision::Allow);
        }
        assert_eq!(
            r.check(0, 0),
            Decision::Limited {
                retry_after_ms: 1000
            }
        );
        assert_eq!(
            r.check(1000, 0),
            Decision::Allow,
            "one call per second refills"
        );
        assert_eq!(
            r.check(1000, 0),
            Decision::Limited {
                retry_after_ms: 1000
            }
        );
    }

    #[test]
    fn write_bytes_are_a_second_bucket() {
        let mut r = RateLimiter::new(
            &Rates {
                burst: Some(100),
                ..rates()
            },
            0,
        );
        assert_eq!(r.check(0, 800), Decision::Allow);
        assert_eq!(
            r.check(0, 300),
            Decision::Limited {
                retry_after_ms: 6000
            }
        );
        assert_eq!(
            r.check(0, 0),
            Decision::Allow,
            "reads are not write-limited"
        );
        assert_eq!(r.check(6000, 300), Decision::Allow);
    }

    #[test]
    fn refusals_lead_to_cooldown_then_end() {
        let mut r = RateLimiter::new(&rates(), 0);
        for _ in 0..3 {
            r.check(0, 0);
        }
        assert!(matches!(r.check(0, 0), Decision::Limited { .. }));
        assert!(matches!(r.check(0, 0), Decision::Limited { .. }));
        assert_eq!(
            r.check(0, 0),
            Decision::Cooldown {
                retry_after_ms: 10_000
            }
        );
        assert_eq!(
            r.check(5_000, 0),
            Decision::Cooldown {
                retry_after_ms: 5_000
            }
        );
        // After the cooldown the bucket has refilled.
        assert_eq!(r.check(10_000, 0), Decision::Allow);
        for _ in 0..2 {
            r.check(10_000, 0);
        }
        r.check(10_000, 0);
        r.check(10_000, 0);
        assert_eq!(
            r.check(10_000, 0),
            Decision::End,
            "second cooldown ends the session"
        );
    }
}
