//! The storage interface: what a backend does with rows. Backends move rows in and out and
//! hold the transactions; sealing, verification, quotas, visibility and the order of a write's
//! steps stay above them, in [`super::Store`], so every backend gets the same guarantees by the
//! same code. The interface is synchronous: SQLite is a blocking library, and the server runs
//! store calls on blocking threads (`tokio::task::spawn_blocking`), never on its async ones.
//!
//! A write's audit event reaches the backend's commit as a [`CommitEvent`]: the event, and
//! audit.db's writer for a backend whose events live in another database. SQLite uses the
//! writer (audit.db commits first, then memory.db) and refuses an event without one; PostgreSQL
//! keeps its events in `audit.events` beside the rows and appends the event inside the write's
//! own transaction, with the audit keys it was opened with, so the writer is not needed there
//! and not touched.

use std::collections::HashSet;
use std::time::Duration;

use super::ledger::{ChainReport, Kind};
use super::model::{Filter, IndexDrift, IndexRepair, Query, UsageDrift};
use super::rows::{Checked, RawRow, SealedRow};
use super::transfer::{Batch, Copied, CopySink, Resume};
use crate::audit::{AuditLog, NewEvent};
use crate::error::Result;
use crate::keys::KeySet;

/// A search match as a backend reads it: the row, unverified, and a key that tells the row
/// apart from every other (for de-duplicating the two groups of a search). Its snippet is cut
/// above the backend, from the verified content ([`super::snippet`]).
#[derive(Debug)]
pub struct Match {
    /// Unique per row within one store.
    pub key: i64,
    /// The row, or the label of one that could not be read.
    pub row: Checked<RawRow>,
}

/// What retention removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeRule {
    /// Rows of any status created before the bound (unix ms).
    CreatedBefore(i64),
    /// Tombstones deleted before the bound (unix ms).
    DeletedBefore(i64),
}

/// How fragmented the full-text index is (fewer segments, fewer lists to merge per word on
/// every query).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexShape {
    /// Levels of the segment tree.
    pub levels: u64,
    /// Segments over all levels.
    pub segments: u64,
}

/// What index upkeep did.
#[derive(Debug, Clone, Default)]
pub struct MaintainReport {
    /// Index segments (or the backend's unit of fragmentation) before.
    pub segments_before: u64,
    /// Index levels before.
    pub levels_before: u64,
    /// Segments after.
    pub segments_after: u64,
    /// Levels after.
    pub levels_after: u64,
    /// Write transactions the merge took.
    pub steps: u64,
    /// The longest of them, in ms.
    pub longest_step_ms: f64,
    /// All of them, in ms.
    pub total_ms: f64,
    /// Log frames at the checkpoint, and how many it copied.
    pub log_frames: i64,
    /// See `log_frames`.
    pub log_copied: i64,
}

/// A storage engine for entries, their index, the ledger and session starts.
pub trait Backend: Send {
    /// The row with id `id`, unverified.
    fn load(&self, id: &str) -> Result<Option<Checked<RawRow>>>;

    /// Up to `want` active rows inside `filter`, newest first, continuing below the entry
    /// `after` (a cursor; when it is not in the filter's scope its timestamp places it).
    fn list(
        &self,
        filter: &Filter,
        after: Option<&str>,
        want: usize,
    ) -> Result<Vec<Checked<RawRow>>>;

    /// Up to `limit` rows inside `filter` holding every word of `query`, newest first.
    fn all_words(&self, query: &Query, filter: &Filter, limit: usize) -> Result<Vec<Match>>;

    /// Up to `need` rows inside `filter` holding some of `query`'s words, best first by
    /// [`super::rank`], drawn from the newest [`super::rank::SEARCH_WINDOW`] (or `need`, if
    /// more) such matches in the filter; rows whose `key` is in `skip` are passed over.
    fn some_words(
        &self,
        query: &Query,
        filter: &Filter,
        need: usize,
        skip: &HashSet<i64>,
    ) -> Result<Vec<Match>>;

    /// Starts a write transaction, holding the store's write lock until it ends.
    fn begin(&mut self) -> Result<Box<dyn WriteTx + '_>>;

    /// Whether this backend can group several writes into one commit ([`Backend::begin_grouped`]).
    /// A backend that cannot commits each write on its own.
    fn groups(&self) -> bool {
        false
    }

    /// Starts a write inside the open group (opening it when none is): the write is undone
    /// alone if it fails, and becomes durable only with [`Backend::commit_group`]. Only on a
    /// backend that [`Backend::groups`]; commit it with [`WriteTx::stage`].
    fn begin_grouped(&mut self) -> Result<Box<dyn WriteTx + '_>> {
        Err(crate::error::Error::Internal(
            "this backend does not group writes".into(),
        ))
    }

    /// Whether a group is open.
    fn group_open(&self) -> bool {
        false
    }

    /// Whether the open group may commit: false once a write in it could not be undone alone
    /// or its transaction was lost (then it must roll back whole, audit.db's group too).
    fn group_sound(&self) -> bool {
        true
    }

    /// Commits the open group: every write staged in it at once. Fails, committing nothing,
    /// when a staged write could not be undone alone or the group's transaction was lost.
    fn commit_group(&mut self) -> Result<()> {
        Ok(())
    }

    /// Rolls the open group back: none of its writes is applied.
    fn rollback_group(&mut self) {}

    /// Every row, unverified, in storage order, each handed to `each`.
    fn each_row(&self, each: &mut dyn FnMut(Checked<RawRow>)) -> Result<()>;

    /// Walks the ledger's chain with `keys`.
    fn ledger_chain(&self, keys: &KeySet) -> Result<ChainReport>;

    /// Quarantined rows, unverified, by id.
    fn quarantined(&self) -> Result<Vec<Checked<RawRow>>>;

    /// Rows and ledger records still sealed with key `key_id`.
    fn rows_sealed_with(&self, key_id: &str) -> Result<u64>;

    /// Every entry id, whatever its status.
    fn all_ids(&self) -> Result<Vec<String>>;

    /// Ids of rows whose status says active (verified or not).
    fn active_ids(&self) -> Result<Vec<String>>;

    /// Rows of any status.
    fn count_rows(&self) -> Result<u64>;

    /// Namespaces whose kept quota usage disagrees with their rows, by namespace.
    fn usage_drift(&self) -> Result<Vec<UsageDrift>>;

    /// Where the search index kept beside the rows disagrees with them; `None` (the default)
    /// when the backend keeps no such index to check (SQLite's FTS5 tables are contentless:
    /// they cannot be read back against the rows).
    fn index_drift(&self) -> Result<Option<IndexDrift>> {
        Ok(None)
    }

    /// Posts again what [`Backend::index_drift`] finds, in short write transactions, each
    /// checking the rows again under the write lock; returns what it found and did.
    fn repair_index(&mut self) -> Result<Option<IndexRepair>> {
        Ok(None)
    }

    /// Admits a session start of `principal` if fewer than `per_hour` started in the hour
    /// before `now_ms`, and records it. Kept in the store, so restarts reset nothing.
    fn admit_session(&mut self, principal: &str, now_ms: i64, per_hour: u32) -> Result<bool>;

    /// The full-text index's current shape.
    fn index_shape(&self) -> Result<IndexShape>;

    /// Brings the index and files back into shape in steps holding the write lock for about
    /// `step_lock` at most, so writers interleave.
    fn maintain(&mut self, step_lock: Duration) -> Result<MaintainReport>;

    /// Brings a lost connection back, at most once per backoff step; a no-op while it is up
    /// and for an embedded engine. Called before each use: a call that meets a lost connection
    /// fails ([`crate::error::Error::Disconnected`]), and a later one finds it restored.
    ///
    /// # Errors
    /// [`crate::error::Error::Disconnected`] while the database cannot be reached.
    fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }

    /// Ends the connection, reporting what the engine says about it.
    fn close(self: Box<Self>) -> Result<()>;

    /// Hands `sink` what `from` says is not copied yet, from one consistent snapshot: audit
    /// events (only where this database holds them, and only when `from` asks), entries in
    /// storage order, ledger records, session starts. See [`super::transfer`].
    ///
    /// # Errors
    /// The backend cannot be read, an entry `from` names is gone, or `sink` fails.
    fn copy_out(&self, from: &Resume, sink: &mut dyn CopySink) -> Result<()>;

    /// Writes `batch` exactly as given, in one transaction.
    ///
    /// # Errors
    /// The backend refuses a row (a repeated id or seq), or cannot write.
    fn copy_in(&mut self, batch: &Batch) -> Result<()>;

    /// What the store holds, as a copy's target: where the next batch continues.
    ///
    /// # Errors
    /// The backend cannot be read.
    fn copied(&self) -> Result<Copied>;
}

/// One write transaction. Dropping it without [`WriteTx::commit`] rolls everything back.
pub trait WriteTx {
    /// The newest row's `created_at`, if any row exists.
    fn newest_created_at(&mut self) -> Result<Option<i64>>;

    /// The row with id `id`, unverified, read inside the transaction.
    fn load(&mut self, id: &str) -> Result<Option<Checked<RawRow>>>;

    /// Rows in `namespace` and their content bytes (every status: each holds content).
    fn usage(&mut self, namespace: &str) -> Result<(u64, u64)>;

    /// Sets `namespace`'s kept quota usage to what its rows hold; the drift it corrected, if
    /// there was one.
    fn recount_usage(&mut self, namespace: &str) -> Result<Option<UsageDrift>>;

    /// Inserts a new row.
    fn insert(&mut self, row: &SealedRow<'_>) -> Result<()>;

    /// Rewrites an existing row's status, `updated_at` and seal (its other fields are sealed
    /// as they are).
    fn reseal(&mut self, row: &SealedRow<'_>) -> Result<()>;

    /// Appends a ledger record for `entry_id`, sealed with `keys`' active key.
    fn record(&mut self, keys: &KeySet, entry_id: &str, kind: Kind, at: i64) -> Result<()>;

    /// Deletes the row `id` (its ledger record must already be appended).
    fn remove(&mut self, id: &str) -> Result<()>;

    /// Records and deletes the rows `rule` selects; returns how many.
    fn purge(&mut self, keys: &KeySet, rule: PurgeRule, now_ms: i64) -> Result<u64>;

    /// Up to `limit` rows not sealed with `key_id`, unverified, oldest first.
    fn sealed_with_other_than(
        &mut self,
        key_id: &str,
        limit: usize,
    ) -> Result<Vec<Checked<RawRow>>>;

    /// Re-seals up to `batch` ledger records not sealed with `keys`' active key, passing over
    /// the labels in `skip`; returns (re-sealed, labels of records that do not verify).
    fn reseal_ledger(
        &mut self,
        keys: &KeySet,
        batch: usize,
        skip: &[String],
    ) -> Result<(usize, Vec<String>)>;

    /// Commits, with the call's audit event when there is one. The backend owns the order:
    /// the event is durable no later than the change (SQLite: audit.db commits first, then
    /// memory.db; a crash between leaves an event "audited, not applied", which `memwarden
    /// verify` reports; PostgreSQL: one transaction holds both). If the event cannot be
    /// written, nothing is committed.
    fn commit(self: Box<Self>, audit: Option<CommitEvent<'_, '_>>) -> Result<(), CommitError>;

    /// Ends a grouped write ([`Backend::begin_grouped`]): its event is staged (SQLite: in
    /// `log`'s open group, audit.db's writer; PostgreSQL: in the group's own transaction, `log`
    /// unused), then the write joins the store's group. Neither is durable until the groups
    /// commit (audit.db's first). If the event cannot be staged, the write is undone.
    fn stage(
        self: Box<Self>,
        log: Option<&mut AuditLog>,
        event: &NewEvent<'_>,
    ) -> Result<(), CommitError> {
        let _ = (log, event);
        Err(CommitError {
            error: crate::error::Error::Internal("this write is not grouped".into()),
            audited: false,
        })
    }
}

/// A commit's audit event, and the log it goes to when the backend keeps its events apart.
#[derive(Debug)]
pub struct CommitEvent<'a, 'e> {
    /// The call's event.
    pub event: &'a NewEvent<'e>,
    /// audit.db's writer. SQLite needs it (its events live in another file) and commits
    /// nothing without it; PostgreSQL appends to `audit.events` in the write's own transaction
    /// and leaves it alone.
    pub log: Option<&'a mut AuditLog>,
}

/// Why a commit failed, and whether its audit event is already in the log (then it stands as
/// the call's one event, and no other may be written for it).
#[derive(Debug)]
pub struct CommitError {
    /// What failed.
    pub error: crate::error::Error,
    /// True when the audit event was written before the failure.
    pub audited: bool,
}
