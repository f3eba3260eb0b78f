//! One MCP connection: its id, its principal, and what happened during it.
//!
//! A session is one process (DESIGN.md §2); its id is random, issued by the server, and goes into
//! every row it writes and every log line about it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::principal::Principal;

/// The state of the session this process serves.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub principal: Principal,
    pub started: Instant,
    calls: AtomicU64,
    refused: AtomicU64,
}

impl Session {
    /// A new session of `principal`, with a fresh id.
    pub fn new(principal: Principal) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            principal,
            started: Instant::now(),
            calls: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts a finished call.
    pub fn record(&self, ok: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (calls, of which not ok)
    pub fn counts(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
