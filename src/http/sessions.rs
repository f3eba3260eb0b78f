//! The daemon's MCP sessions: which principal owns each `Mcp-Session-Id`, the caps on how many
//! are open (in total and per principal, places reserved before `initialize` runs so that
//! concurrent handshakes cannot overshoot), and each session's end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::principal::Principal;
use crate::server::Server;

/// One open session.
#[derive(Clone)]
pub struct Open {
    /// Who opened it (the token's principal).
    pub principal: Principal,
    /// Its server handle.
    pub server: Server,
    /// Cancelled when the client ends it (`DELETE`).
    pub closed: CancellationToken,
    /// Set once the handshake's `notifications/initialized` went through (free, once).
    pub handshake_done: Arc<AtomicBool>,
}

impl Open {
    /// True the first time the handshake's notification is seen.
    pub fn first_initialized(&self) -> bool {
        !self.handshake_done.swap(true, Ordering::SeqCst)
    }
}

/// Which cap a new session hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// All principals together.
    Total,
    /// This principal's.
    Principal,
}

#[derive(Default)]
struct Table {
    open: HashMap<String, Open>,
    /// Places held by handshakes in progress, by principal.
    reserved: HashMap<String, usize>,
}

impl Table {
    fn count(&self, principal: &str) -> usize {
        self.open
            .values()
            .filter(|o| o.principal.name() == principal)
            .count()
            + self.reserved.get(principal).copied().unwrap_or(0)
    }
}

/// The registry.
pub struct Sessions {
    table: Mutex<Table>,
    max_total: usize,
    max_per_principal: usize,
}

impl Sessions {
    /// An empty registry with these caps.
    pub fn new(max_total: usize, max_per_principal: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::default(),
            max_total,
            max_per_principal,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a place for a new session of `principal`, or says which cap is reached.
    pub fn reserve(self: &Arc<Self>, principal: &Principal) -> Result<Reservation, Cap> {
        let mut t = self.table();
        let total = t.open.len() + t.reserved.values().sum::<usize>();
        if total >= self.max_total {
            return Err(Cap::Total);
        }
        if t.count(principal.name()) >= self.max_per_principal {
            return Err(Cap::Principal);
        }
        *t.reserved.entry(principal.name().to_string()).or_default() += 1;
        Ok(Reservation {
            sessions: self.clone(),
            principal: principal.name().to_string(),
        })
    }

    /// The session `id`, if open.
    pub fn get(&self, id: &str) -> Option<Open> {
        self.table().open.get(id).cloned()
    }

    /// Removes the session `id` (its end is being recorded); later requests get 404.
    pub fn remove(&self, id: &str) -> Option<Open> {
        self.table().open.remove(id)
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.table().open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions open now by principal.
    pub fn by_principal(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for o in self.table().open.values() {
            *out.entry(o.principal.name().to_string()).or_default() += 1;
        }
        out
    }
}

/// A place held for a session being opened; released on drop unless it became the session.
pub struct Reservation {
    sessions: Arc<Sessions>,
    principal: String,
}

impl Reservation {
    /// The handshake succeeded: the place becomes session `id`.
    pub fn open(self, id: String, open: Open) {
        let mut t = self.sessions.table();
        t.open.insert(id, open);
        // `self` drops after the insert, releasing the reservation it turned into.
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut t = self.sessions.table();
        if let Some(n) = t.reserved.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                t.reserved.remove(&self.principal);
            }
        }
    }
}
