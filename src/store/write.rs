//! Writes, in one order for every backend: inside one write transaction, check visibility and
//! quota, seal, write the row and its ledger records — then hand the caller a [`PendingWrite`]
//! that commits only together with the call's audit event. Audit-before-commit lives here and in
//! the backend's `commit`, nowhere else: a write cannot commit without its event (DESIGN.md §3).

use super::backend::{Backend, CommitError, CommitEvent, WriteTx};
use super::ledger::Kind;
use super::model::{Author, Changes, Entry, NewEntry, Quota, Status, normalize_tags};
use super::rows::seal_entry;
use super::{Store, Visibility, seal};
use crate::audit::{AuditLog, NewEvent};
use crate::error::{Error, Result};

/// A write in its open transaction: the entry it writes is known, nothing is committed yet.
/// Dropping it rolls the write back.
pub struct PendingWrite<'s> {
    tx: Box<dyn WriteTx + 's>,
    entry: Entry,
    /// It runs in the store's group: end it with [`PendingWrite::stage`].
    grouped: bool,
}

impl std::fmt::Debug for PendingWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingWrite")
            .field("id", &self.entry.id)
            .finish_non_exhaustive()
    }
}

impl PendingWrite<'_> {
    /// Whether the write runs in the store's group (end it with [`PendingWrite::stage`], not
    /// [`PendingWrite::commit`]).
    pub fn grouped(&self) -> bool {
        self.grouped
    }

    /// The entry as it will be committed (a new one, or the tombstoned one).
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Commits with the call's audit event: the event is durable first, and if it cannot be
    /// written nothing is committed.
    ///
    /// # Errors
    /// [`CommitError`] says whether the event was written before the failure.
    pub fn commit(self, audit: &mut AuditLog, event: &NewEvent<'_>) -> Result<Entry, CommitError> {
        self.tx.commit(Some(CommitEvent {
            event,
            log: Some(audit),
        }))?;
        Ok(self.entry)
    }

    /// Commits with the call's audit event on a store that keeps its events beside its rows
    /// (PostgreSQL's `audit.events`): the change and its event commit in one transaction, or
    /// neither does. A store whose events live in audit.db (SQLite) commits nothing here and
    /// fails with [`crate::error::Error::Audit`]; use [`PendingWrite::commit`] there.
    ///
    /// # Errors
    /// [`CommitError`] says whether the event was written before the failure.
    pub fn commit_in_store(self, event: &NewEvent<'_>) -> Result<Entry, CommitError> {
        self.tx.commit(Some(CommitEvent { event, log: None }))?;
        Ok(self.entry)
    }

    /// Ends a grouped write ([`Store::set_grouped`]): its event is staged — in audit.db's open
    /// group through `audit` (SQLite), or in the group's own transaction (PostgreSQL, `audit`
    /// `None`) — and the write joins the store's group. Neither is durable, and the caller may
    /// not answer, until the groups commit (audit.db's first, then [`Store::commit_group`]).
    ///
    /// # Errors
    /// [`CommitError`]: the event could not be staged (the write is undone), or the write not
    /// joined (the group is then rolled back whole).
    pub fn stage(
        self,
        audit: Option<&mut AuditLog>,
        event: &NewEvent<'_>,
    ) -> Result<Entry, CommitError> {
        self.tx.stage(audit, event)?;
        Ok(self.entry)
    }

    /// Commits without an audit event: for loaders outside any session (benchmarks, tests).
    /// Agents' writes always go through [`PendingWrite::commit`].
    #[doc(hidden)]
    pub fn commit_unaudited(self) -> Result<Entry> {
        self.tx.commit(None).map_err(|e| e.error)?;
        Ok(self.entry)
    }
}

/// A write transaction: inside the group when writes are grouped, else its own.
fn begin_write(backend: &mut dyn Backend, grouped: bool) -> Result<Box<dyn WriteTx + '_>> {
    if grouped {
        backend.begin_grouped()
    } else {
        backend.begin()
    }
}

/// The creation time and id of a row about to be inserted in `tx` (which holds the write lock):
/// now, or the newest row's time when the clock is behind it (another server's write committed
/// first, or the clock stepped back). So creation order is storage order and since/until are
/// ranges of it. The id is a UUIDv7 of that same millisecond, so ids sort the same way.
fn stamp(tx: &mut dyn WriteTx, now_ms: i64) -> Result<(i64, String)> {
    let newest = tx.newest_created_at()?;
    let at = newest.map_or(now_ms, |n| n.max(now_ms)).max(0);
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (at / 1000) as u64,
        ((at % 1000) * 1_000_000) as u32,
    );
    Ok((at, uuid::Uuid::new_v7(ts).to_string()))
}

/// Refuses an insert that would take the namespace over its quota. Counted inside the write
/// transaction, so concurrent writers cannot both squeeze past the limit.
fn check_quota(quota: Quota, tx: &mut dyn WriteTx, namespace: &str, bytes: usize) -> Result<()> {
    let Quota {
        max_entries,
        max_bytes,
    } = quota;
    if max_entries.is_none() && max_bytes.is_none() {
        return Ok(());
    }
    let (count, used) = tx.usage(namespace)?;
    if let Some(max) = max_entries
        && count >= max
    {
        return Err(Error::TooLarge {
            what: "the namespace's entry quota",
            actual: count as usize + 1,
            limit: max as usize,
        });
    }
    if let Some(max) = max_bytes
        && used + bytes as u64 > max
    {
        return Err(Error::TooLarge {
            what: "the namespace's content quota",
            actual: used as usize + bytes,
            limit: max as usize,
        });
    }
    Ok(())
}

impl Store {
    /// Stores a new entry (active, or quarantined by a content rule); commit it with
    /// [`PendingWrite::commit`].
    pub fn insert(
        &mut self,
        author: Author<'_>,
        new: NewEntry,
        now_ms: i64,
    ) -> Result<PendingWrite<'_>> {
        let mut tx = begin_write(&mut *self.backend, self.grouped)?;
        let (created_at, id) = stamp(&mut *tx, now_ms)?;
        let entry = Entry {
            id,
            content_sha256: seal::content_sha256(&new.content),
            namespace: new.namespace,
            content: new.content,
            tags: normalize_tags(new.tags),
            metadata: new.metadata,
            status: new.status,
            supersedes: None,
            principal: author.principal.to_string(),
            session_id: author.session_id.to_string(),
            created_at,
            updated_at: created_at,
        };
        check_quota(self.quota, &mut *tx, &entry.namespace, entry.content.len())?;
        let keys = self.verifier.keys();
        let (key_id, key) = keys.active();
        tx.insert(&seal_entry(&entry, key_id, key))?;
        Ok(PendingWrite {
            tx,
            entry,
            grouped: self.grouped,
        })
    }

    /// Writes a new version of an active entry visible and writable in `view`; the old one
    /// becomes superseded (and is recorded in the ledger). Commit with [`PendingWrite::commit`].
    pub fn update(
        &mut self,
        author: Author<'_>,
        id: &str,
        changes: Changes,
        now_ms: i64,
        view: &Visibility,
    ) -> Result<PendingWrite<'_>> {
        let mut tx = begin_write(&mut *self.backend, self.grouped)?;
        let old = self.verifier.checked_row(tx.load(id)?, id, view, true);
        self.verifier.take_failure()?;
        let mut old = old?;
        match old.status {
            Status::Active => {}
            Status::Superseded => {
                return Err(Error::InvalidArgument(
                    "this version has been superseded; update the latest version".into(),
                ));
            }
            Status::Deleted | Status::Quarantined => return Err(Error::NotFound),
        }
        let content = changes.content.unwrap_or_else(|| old.content.clone());
        let (created_at, new_id) = stamp(&mut *tx, now_ms)?;
        let new = Entry {
            id: new_id,
            namespace: old.namespace.clone(),
            content_sha256: seal::content_sha256(&content),
            content,
            tags: changes
                .tags
                .map(normalize_tags)
                .unwrap_or_else(|| old.tags.clone()),
            metadata: changes.metadata.or_else(|| old.metadata.clone()),
            status: changes.status.unwrap_or(Status::Active),
            supersedes: Some(old.id.clone()),
            principal: author.principal.to_string(),
            session_id: author.session_id.to_string(),
            created_at,
            updated_at: created_at,
        };
        // The old version stays until purge: the new one adds a row and all of its content.
        check_quota(self.quota, &mut *tx, &new.namespace, new.content.len())?;
        old.status = Status::Superseded;
        old.updated_at = now_ms;
        let keys = self.verifier.keys();
        let (key_id, key) = keys.active();
        tx.reseal(&seal_entry(&old, key_id, key))?;
        tx.record(&keys, &old.id, Kind::Superseded, now_ms)?;
        tx.insert(&seal_entry(&new, key_id, key))?;
        Ok(PendingWrite {
            tx,
            entry: new,
            grouped: self.grouped,
        })
    }

    /// Tombstones an active entry visible and writable in `view`: it disappears from get,
    /// search and list, but its content stays until purge so an operator can restore it.
    /// Commit with [`PendingWrite::commit`].
    pub fn delete(&mut self, id: &str, now_ms: i64, view: &Visibility) -> Result<PendingWrite<'_>> {
        let mut tx = begin_write(&mut *self.backend, self.grouped)?;
        let entry = self.verifier.checked_row(tx.load(id)?, id, view, true);
        self.verifier.take_failure()?;
        let mut entry = entry?;
        if entry.status != Status::Active {
            return Err(Error::NotFound);
        }
        entry.status = Status::Deleted;
        entry.updated_at = now_ms;
        let keys = self.verifier.keys();
        let (key_id, key) = keys.active();
        tx.reseal(&seal_entry(&entry, key_id, key))?;
        tx.record(&keys, &entry.id, Kind::Deleted, now_ms)?;
        Ok(PendingWrite {
            tx,
            entry,
            grouped: self.grouped,
        })
    }
}
