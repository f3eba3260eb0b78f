//! Live counters of one process's calls, for the daemon's `/metrics`: calls by tool and
//! outcome, refusals by code, and a call-latency histogram. Cheap enough to keep on every
//! call of every transport; only `serve-http` exposes them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::prometheus::BUCKETS;

/// The counters.
#[derive(Debug, Default)]
pub struct Live {
    inner: Mutex<Counts>,
}

/// A snapshot of the counters.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Calls by (tool, outcome).
    pub calls: BTreeMap<(&'static str, &'static str), u64>,
    /// Refused calls by error code.
    pub refusals: BTreeMap<&'static str, u64>,
    /// Calls per latency bucket (not cumulative), the last one past every bound.
    pub buckets: [u64; BUCKETS.len() + 1],
    /// Sum of the latencies, seconds.
    pub sum_seconds: f64,
}

impl Live {
    /// Counts one call: its tool, its outcome (`ok`, `denied`, `error`), the refusal's code
    /// and how long it took.
    pub fn record(
        &self,
        tool: &'static str,
        outcome: &'static str,
        code: Option<&'static str>,
        micros: u64,
    ) {
        let seconds = micros as f64 / 1e6;
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *c.calls.entry((tool, outcome)).or_default() += 1;
        if let Some(code) = code {
            *c.refusals.entry(code).or_default() += 1;
        }
        let bucket = BUCKETS.partition_point(|le| *le < seconds);
        c.buckets[bucket] += 1;
        c.sum_seconds += seconds;
    }

    /// The counters now.
    pub fn snapshot(&self) -> Counts {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
