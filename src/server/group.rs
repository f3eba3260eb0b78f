//! Group commit: the writes of several sessions share one commit of audit.db and one of
//! memory.db, so a daemon with many sessions pays one pair of fsyncs for a group of writes
//! instead of one pair per write.
//!
//! The order of one write does not change (DESIGN.md §3): its event is durable no later than
//! its change, and the agent hears nothing before both are. What changes is when the commit
//! happens:
//!
//! - A write runs in a savepoint inside the store's open group transaction, and its event is
//!   staged inside audit.db's open group transaction (both opened by the first write). A write
//!   that fails is undone alone; its event is never staged. (On PostgreSQL a staged write's
//!   last inserts go out with the group's next statement, to save their round trip: should
//!   the database refuse them then, the whole group fails, acknowledged to nobody.)
//! - The writer then leaves the store and waits on its [`Staged`] slot.
//! - Whoever holds the store commits the groups (audit.db first, then memory.db) and settles
//!   every slot: a writer as it leaves the store when nobody else is waiting to enter it (or
//!   the group is full), and anyone else who needs the store or the audit log for something
//!   other than a grouped write, before they use it. So reads never see a write that is not
//!   committed, and no other event can slip between a staged event and its commit.
//!
//! One session alone never waits: nobody else is queued, so its write commits as it leaves,
//! exactly as before. Under load the writes that queue during one commit form the next group.
//! A crash before the groups commit loses the whole group, none of which was acknowledged; a
//! crash between the two commits leaves the group's events "audited, not applied", which
//! `memwarden verify` reports, as for a single write.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Shared;
use crate::audit::sink::Sink;
use crate::error::Error;
use crate::store::Store;
use crate::store::backend::CommitError;

/// A group commits, whatever else is queued, once it holds this many writes.
const GROUP_MAX: usize = 64;

/// How long a writer waits for its group before taking the store itself to commit it.
const WAIT_BEFORE_TAKING_OVER: Duration = Duration::from_secs(2);

/// The store and the writes staged in its open group.
pub(super) struct StoreCell {
    pub(super) store: Option<Store>,
    staged: Vec<Arc<Staged>>,
    /// The PostgreSQL log was told a group may be open ([`StoreGuard::expect_group`]) and has
    /// not been told otherwise.
    expected: bool,
}

impl StoreCell {
    pub(super) fn new(store: Store) -> Self {
        Self {
            store: Some(store),
            staged: Vec::new(),
            expected: false,
        }
    }
}

/// Why a group did not commit, for every write in it.
#[derive(Debug, Clone)]
struct Failure {
    /// audit.db's commit failed: no event of the group was written.
    audit: bool,
    /// The engine's answer is one a retry may cure (busy, disk full, I/O).
    unavailable: bool,
    /// The database connection was lost: retry after this many ms (PostgreSQL).
    retry_after_ms: Option<u64>,
    /// The group's events are in the log all the same (SQLite: audit.db committed, memory.db
    /// did not — "audited, not applied"); false when they went with the group (PostgreSQL).
    audited: bool,
    message: String,
}

impl Failure {
    fn store(err: &Error, audited: bool) -> Self {
        Self {
            audit: false,
            unavailable: !matches!(err, Error::Internal(_)),
            retry_after_ms: match err {
                Error::Disconnected { retry_after_ms } => Some(*retry_after_ms),
                _ => None,
            },
            audited,
            message: err.to_string(),
        }
    }

    fn audit(message: String) -> Self {
        Self {
            audit: true,
            unavailable: false,
            retry_after_ms: None,
            audited: false,
            message,
        }
    }

    fn into_error(self) -> CommitError {
        let error = match (self.audit, self.unavailable, self.retry_after_ms) {
            (true, _, _) => Error::Audit(self.message),
            (false, _, Some(retry_after_ms)) => Error::Disconnected { retry_after_ms },
            (false, true, None) => Error::Unavailable(self.message),
            (false, false, None) => Error::Internal(self.message),
        };
        CommitError {
            error,
            audited: self.audited,
        }
    }
}

/// One staged write's wait for its group.
#[derive(Debug, Default)]
pub(super) struct Staged {
    outcome: Mutex<Option<Result<(), Failure>>>,
    settled: Condvar,
}

impl Staged {
    fn settle(&self, outcome: Result<(), Failure>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.settled.notify_all();
    }

    /// The group's outcome, once it has one (`None` after `timeout`).
    fn wait(&self, timeout: Duration) -> Option<Result<(), Failure>> {
        let guard = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .settled
            .wait_timeout_while(guard, timeout, |o| o.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }
}

/// The store, locked. Whoever drops it last while a group is open commits the group.
pub(super) struct StoreGuard<'a> {
    shared: &'a Shared,
    cell: MutexGuard<'a, StoreCell>,
}

impl Deref for StoreGuard<'_> {
    type Target = Option<Store>;

    fn deref(&self) -> &Option<Store> {
        &self.cell.store
    }
}

impl DerefMut for StoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Store> {
        &mut self.cell.store
    }
}

impl StoreGuard<'_> {
    /// Registers the write just staged in the open group; wait on the slot after dropping
    /// the guard ([`Shared::settle`]).
    pub(super) fn staged(&mut self) -> Arc<Staged> {
        let slot = Arc::new(Staged::default());
        self.cell.staged.push(slot.clone());
        slot
    }

    /// Tells the audit log, before a grouped write begins, that the store's connection may
    /// hold the audit chain's lock: on PostgreSQL a group takes it as it opens
    /// (`store/postgres/group.rs`, `open_group`), and the write wants the log's mutex later, to
    /// stage its event. From here an append asks for the group's commit (which waits for the
    /// store) instead of waiting for the chain's lock while holding the log's mutex. The store
    /// is held, so this is the order a write's commit takes them in: the store, then the log.
    fn expect_group(&mut self) {
        if !self.cell.store.as_ref().is_some_and(Store::grouped) {
            return;
        }
        if let Some(Sink::Postgres(log)) = self.shared.audit_raw().as_mut() {
            log.set_store_group(true);
            self.cell.expected = true;
        }
    }

    /// Commits the open group now, if there is one, and settles its writes.
    pub(super) fn commit_group(&mut self) {
        let cell = &mut *self.cell;
        let open = cell.store.as_ref().is_some_and(Store::group_open);
        let expected = std::mem::take(&mut cell.expected);
        if !open && cell.staged.is_empty() {
            // A write expected to open a group and did not (it failed first): appends need
            // not ask for a commit any more.
            if expected && let Some(Sink::Postgres(log)) = self.shared.audit_raw().as_mut() {
                log.set_store_group(false);
            }
            return;
        }
        let outcome = match cell.store.as_mut() {
            Some(store) => self.shared.commit_groups(store),
            None => Err(Failure::store(
                &Error::Unavailable("store closed".into()),
                false,
            )),
        };
        for slot in cell.staged.drain(..) {
            slot.settle(outcome.clone());
        }
    }
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        let waiting = self.shared.queued.load(Ordering::SeqCst);
        if waiting == 0 || self.cell.staged.len() >= GROUP_MAX {
            self.commit_group();
        }
    }
}

/// The audit log, locked, with no group open in it (so an append commits at once).
pub(super) struct AuditGuard<'a> {
    // Declared first, so dropped first: the store guard's drop may take the audit lock.
    audit: MutexGuard<'a, Option<Sink>>,
    _store: Option<StoreGuard<'a>>,
}

impl Deref for AuditGuard<'_> {
    type Target = Option<Sink>;

    fn deref(&self) -> &Option<Sink> {
        &self.audit
    }
}

impl DerefMut for AuditGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Sink> {
        &mut self.audit
    }
}

impl Shared {
    /// The store's lock, counted while waited for (a leaving writer commits its group only
    /// when nobody waits).
    fn lock_cell(&self) -> MutexGuard<'_, StoreCell> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let cell = self.store.lock().unwrap_or_else(|p| p.into_inner());
        self.queued.fetch_sub(1, Ordering::SeqCst);
        cell
    }

    /// The store for a grouped write: the open group is left open for it to join.
    pub(super) fn store_for_write(&self) -> StoreGuard<'_> {
        let mut guard = StoreGuard {
            shared: self,
            cell: self.lock_cell(),
        };
        reconnect(&mut guard);
        if guard.as_ref().is_some_and(|s| !s.group_sound()) {
            // A group lost with its connection fails now, not with the next write in it.
            guard.commit_group();
        }
        guard.expect_group();
        guard
    }

    /// The store for anything but a grouped write: the open group is committed first, so
    /// nothing reads a write that is not committed.
    pub(super) fn store(&self) -> StoreGuard<'_> {
        let mut guard = self.store_as_is();
        reconnect(&mut guard);
        guard
    }

    /// The store with its group committed, without bringing back a lost connection (to close).
    pub(super) fn store_as_is(&self) -> StoreGuard<'_> {
        let mut guard = StoreGuard {
            shared: self,
            cell: self.lock_cell(),
        };
        guard.commit_group();
        guard
    }

    /// The audit log for an append of its own: an open group is committed first (which takes
    /// the store, so the store must not be held by the caller).
    pub(super) fn audit(&self) -> AuditGuard<'_> {
        let audit = self.audit_raw();
        if !audit.as_ref().is_some_and(Sink::group_open) {
            return AuditGuard {
                audit,
                _store: None,
            };
        }
        drop(audit);
        // Holding the store, nobody can open another group before this append.
        let store = self.store_as_is();
        AuditGuard {
            audit: self.audit_raw(),
            _store: Some(store),
        }
    }

    /// The audit log as it is, group open or not (a grouped write stages into it).
    pub(super) fn audit_raw(&self) -> MutexGuard<'_, Option<Sink>> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the open group: on SQLite both groups, audit.db's first (a lost group rolls
    /// both back); on PostgreSQL the one transaction that holds the writes and their events.
    fn commit_groups(&self, store: &mut Store) -> Result<(), Failure> {
        let mut audit = self.audit_raw();
        let log = match audit.as_mut() {
            Some(Sink::File(log)) => log,
            Some(Sink::Postgres(log)) => {
                log.set_store_group(false);
                return store.commit_group().map_err(|e| Failure::store(&e, false));
            }
            None => {
                store.rollback_group();
                return Err(Failure::audit("closed".into()));
            }
        };
        if !store.group_sound() {
            log.rollback_group();
            store.rollback_group();
            return Err(Failure::store(
                &Error::Unavailable("a group of writes was lost".into()),
                false,
            ));
        }
        if let Err(e) = log.commit_group() {
            store.rollback_group();
            self.trip();
            tracing::error!(target: "memwarden::security", event = "audit_unwritable", error = %e,
                "audit.db's group could not be committed: refusing every call");
            return Err(Failure::audit(e.to_string()));
        }
        store.commit_group().map_err(|e| Failure::store(&e, true))
    }

    /// Waits for the group holding a staged write to commit (committing it itself if nobody
    /// has after a while): `Ok` once the write and its event are durable.
    pub(super) fn settle(&self, slot: &Staged) -> Result<(), CommitError> {
        loop {
            if let Some(outcome) = slot.wait(WAIT_BEFORE_TAKING_OVER) {
                return outcome.map_err(Failure::into_error);
            }
            // Taking the store commits the open group.
            drop(self.store_as_is());
        }
    }
}

/// Brings a lost database connection back before a call (PostgreSQL); the call then fails
/// UNAVAILABLE with a retry hint while it is still down, nothing applied.
fn reconnect(guard: &mut StoreGuard<'_>) {
    if let Some(store) = guard.as_mut()
        && let Err(e) = store.reconnect()
    {
        tracing::debug!(error = %e, "the store's database is still unreachable");
    }
}
