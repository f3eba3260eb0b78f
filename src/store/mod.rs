//! The store: sealed entry rows, their full-text index, and every read verified.
//!
//! [`Store`] is the one storage interface the tools, the server and the CLI use. It holds what
//! every backend shares — the entry keys, sealing ([`seal`]), row verification ([`rows`]), the
//! ledger's rules ([`ledger`]), visibility ([`scope`]), quotas, the ranking rules ([`rank`]) and
//! the order of a write's steps ([`write`]) — and drives a [`Backend`] that moves rows in and
//! out: [`sqlite`] (memory.db) is the first. Every row it hands out has passed its MAC check and
//! is no less retired than its ledger records say (a seal proves authorship, not freshness); a
//! row that fails either is never returned as data (get → [`Error::Integrity`], search and list
//! count it as withheld).

mod admin;
pub mod backend;
pub mod ledger;
mod model;
pub mod portable;
pub mod postgres;
pub mod rank;
pub mod rows;
pub mod scope;
pub mod seal;
pub mod snippet;
pub mod sqlite;
#[doc(hidden)]
pub mod testing;
pub mod transfer;
mod verifier;
pub mod words;
mod write;

use std::path::Path;

pub use backend::{Backend, IndexShape, MaintainReport, PurgeRule};
pub use model::*;
pub use rank::SEARCH_WINDOW;
pub use scope::{Rights, Scope, Visibility};
pub use write::PendingWrite;

use crate::error::{Error, Result};
use crate::keys::KeySet;
use rows::withheld_log;
use verifier::Verifier;

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The engine refused to open or configure the file.
    #[error("cannot open memory.db: {0}")]
    Engine(String),
    /// The schema could not be brought up to date, or holds objects it should not.
    #[error(transparent)]
    Migration(#[from] sqlite::migrations::MigrationError),
    /// The PostgreSQL store could not be reached or is not ready (never the settings).
    #[error("cannot open the PostgreSQL store: {0}")]
    Postgres(String),
}

/// The entry store: a backend plus the keys and rules every backend shares.
pub struct Store {
    backend: Box<dyn Backend>,
    verifier: Verifier,
    quota: Quota,
    /// Writes join the backend's group ([`Store::set_grouped`]).
    grouped: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite store at `path` and brings its schema up to date.
    pub fn open(path: &Path, keys: KeySet, options: StoreOptions) -> Result<Self, OpenError> {
        let backend = sqlite::Sqlite::open(path, &keys, options)?;
        Ok(Self::with_backend(Box::new(backend), keys))
    }

    /// Opens an existing SQLite store read-only (for `verify`); no migrations run.
    pub fn open_read_only(path: &Path, keys: KeySet) -> Result<Self, OpenError> {
        let backend = sqlite::Sqlite::open_read_only(path)?;
        Ok(Self::with_backend(Box::new(backend), keys))
    }

    /// A store over any backend.
    pub fn with_backend(backend: Box<dyn Backend>, keys: KeySet) -> Self {
        Self {
            backend,
            verifier: Verifier::new(keys),
            quota: Quota::default(),
            grouped: false,
        }
    }

    /// Sets the per-namespace quotas checked on every insert.
    pub fn set_quota(&mut self, quota: Quota) {
        self.quota = quota;
    }

    /// Groups this store's agent writes when the backend can (both do): each insert, update and
    /// delete then runs inside the open group and is ended with [`PendingWrite::stage`]; the
    /// group commits with [`Store::commit_group`]. Returns whether writes are grouped.
    pub fn set_grouped(&mut self, on: bool) -> bool {
        self.grouped = on && self.backend.groups();
        self.grouped
    }

    /// Whether agent writes are grouped (see [`Store::set_grouped`]).
    pub fn grouped(&self) -> bool {
        self.grouped
    }

    /// Whether a group of writes is open (staged, not yet committed).
    pub fn group_open(&self) -> bool {
        self.backend.group_open()
    }

    /// Whether the open group may commit (see [`Backend::group_sound`]).
    pub fn group_sound(&self) -> bool {
        self.backend.group_sound()
    }

    /// Commits the open group of writes (their events must be durable first).
    ///
    /// # Errors
    /// The group could not commit; none of its writes is applied.
    pub fn commit_group(&mut self) -> Result<()> {
        self.backend.commit_group()
    }

    /// Rolls the open group of writes back.
    pub fn rollback_group(&mut self) {
        self.backend.rollback_group();
    }

    /// Follows the keyring at `path` (the one the keys were read from): each
    /// [`Store::refresh_keys`] rereads it when it has changed.
    pub fn watch_keyring(&self, path: &Path) -> std::io::Result<()> {
        self.verifier.watch_keyring(path)
    }

    /// Rereads a followed keyring that changed since it was read (see [`Verifier`]).
    pub fn refresh_keys(&self) -> Result<()> {
        self.verifier.refresh_keys()
    }

    /// Brings the backend's lost connection back (see [`Backend::reconnect`]).
    ///
    /// # Errors
    /// [`Error::Disconnected`] while the database cannot be reached.
    pub fn reconnect(&mut self) -> Result<()> {
        self.backend.reconnect()
    }

    /// Closes the backend, reporting what it says about it.
    pub fn close(self) -> Result<()> {
        self.backend.close()
    }

    /// One entry by id. Active and superseded versions are readable (history); deleted and
    /// quarantined ones are not found.
    pub fn get(&self, id: &str, view: &Visibility) -> Result<Entry> {
        let entry = self
            .verifier
            .checked_row(self.backend.load(id)?, id, view, false)?;
        match entry.status {
            Status::Active | Status::Superseded => Ok(entry),
            Status::Deleted | Status::Quarantined => Err(Error::NotFound),
        }
    }

    /// Newest first, `limit` at most, continuing below `after` (an entry id) when given.
    pub fn list(&self, filter: &Filter, after: Option<&str>, limit: usize) -> Result<Page> {
        let mut page = Page::default();
        if filter.scope.is_empty() || limit == 0 {
            return Ok(page);
        }
        // One more than asked tells whether another page exists.
        let rows = self.backend.list(filter, after, limit + 1)?;
        let mut last_id = None;
        for (n, raw) in rows.into_iter().enumerate() {
            if n == limit {
                page.next_after = last_id;
                break;
            }
            let id = match &raw {
                Ok(row) => row.id.clone(),
                Err(label) => label.clone(),
            };
            match self.verifier.verified(raw) {
                Ok(entry) => page.entries.push(entry),
                Err(_) => {
                    withheld_log(&id);
                    page.withheld += 1;
                    page.withheld_ids.push(id.clone());
                    page.withheld_at.push(page.entries.len());
                }
            }
            last_id = Some(id);
        }
        self.verifier.take_failure()?;
        Ok(page)
    }

    /// Full-text search inside `filter` (see [`rank`] for the order). Neither group's cost
    /// grows with the store or with other namespaces: the first reads only the rows it
    /// returns, the second a bounded window of the scope's matches.
    pub fn search(&self, query: &Query, filter: &Filter, limit: usize) -> Result<Hits> {
        let mut results = rank::Collector::new(limit, query);
        if filter.scope.is_empty() || limit == 0 {
            return Ok(results.finish());
        }
        let mut verify = |raw| self.verifier.verified(raw);
        let all = self.backend.all_words(query, filter, limit)?;
        results.add(all, Matched::All, &mut verify);
        if query.words().len() > 1 && results.room() > 0 {
            let some = self
                .backend
                .some_words(query, filter, results.room(), results.seen())?;
            results.add(some, Matched::Some, &mut verify);
        }
        self.verifier.take_failure()?;
        Ok(results.finish())
    }
}
