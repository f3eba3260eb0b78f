//! Operator commands on the store (verify, review, retention, key rotation, upkeep): never
//! reachable as agent tools. They go through the same verification and ledger rules as agents'
//! writes; their audit events are the CLI's (an operator's event comes before the change).

use std::time::Duration;

use super::backend::{IndexShape, MaintainReport, PurgeRule};
use super::ledger::{self, Kind};
use super::model::{Entry, IndexRepair, Status, UsageDrift, VerifyReport};
use super::rows::{seal_entry, withheld_log};
use super::{Store, Visibility};
use crate::error::{Error, Result};

impl Store {
    /// Checks every row's seal and its status against its ledger records, and walks the
    /// ledger's chain.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let keys = self.verifier.keys();
        let mut report = VerifyReport::default();
        self.backend.each_row(&mut |raw| {
            report.checked += 1;
            let raw = match raw {
                Ok(raw) => raw,
                Err(label) => {
                    // Present, if unreadable: not to be taken for a missing entry.
                    report.statuses.insert(label.clone(), "unreadable".into());
                    report.failed.push(label);
                    return;
                }
            };
            let (id, status) = (raw.id.clone(), raw.status.clone());
            let own = ledger::status_rank(&status);
            if raw.rolled_back() {
                report.rolled_back.push((id.clone(), status.clone()));
            } else if own > raw.ledger_rank && own >= Kind::Superseded.rank() {
                report.unrecorded.push((id.clone(), status.clone()));
            }
            if raw.verify_seal(&keys).is_none() {
                report.failed.push(id.clone());
            }
            report.statuses.insert(id, status);
        })?;
        report.ledger = self.backend.ledger_chain(&keys)?;
        report.usage = self.backend.usage_drift()?;
        report.index = self.backend.index_drift()?;
        Ok(report)
    }

    /// Admits a new session of `principal` if fewer than `per_hour` started in the last hour.
    /// Kept in the store, so restarting the server or reconnecting resets nothing.
    pub fn admit_session(&mut self, principal: &str, now_ms: i64, per_hour: u32) -> Result<bool> {
        self.backend.admit_session(principal, now_ms, per_hour)
    }

    /// Quarantined entries, verified (rows that fail are left out and logged).
    pub fn quarantined(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for raw in self.backend.quarantined()? {
            match self.verifier.verified(raw) {
                Ok(entry) => out.push(entry),
                Err(_) => withheld_log("quarantined row"),
            }
        }
        Ok(out)
    }

    /// One entry of any status, verified (operator use: review).
    pub fn get_any(&self, id: &str) -> Result<Entry> {
        let raw = self.backend.load(id)?;
        self.verifier
            .checked_row(raw, id, &Visibility::everything(), false)
    }

    /// Releases a quarantined entry: it becomes active (re-sealed) and visible to agents.
    pub fn approve(&mut self, id: &str, now_ms: i64) -> Result<Entry> {
        let mut tx = self.backend.begin()?;
        let raw = tx.load(id)?;
        let mut entry = self
            .verifier
            .checked_row(raw, id, &Visibility::everything(), true)?;
        if entry.status != Status::Quarantined {
            return Err(Error::InvalidArgument(format!("{id} is not quarantined")));
        }
        entry.status = Status::Active;
        entry.updated_at = now_ms;
        let keys = self.verifier.keys();
        let (key_id, key) = keys.active();
        tx.reseal(&seal_entry(&entry, key_id, key))?;
        // Recorded, so the quarantined copy put back is not taken for an entry still in review.
        tx.record(&keys, &entry.id, Kind::Approved, now_ms)?;
        tx.commit(None).map_err(|e| e.error)?;
        Ok(entry)
    }

    /// Drops a quarantined entry for good.
    pub fn reject_quarantined(&mut self, id: &str, now_ms: i64) -> Result<Entry> {
        let mut tx = self.backend.begin()?;
        let raw = tx.load(id)?;
        let entry = self
            .verifier
            .checked_row(raw, id, &Visibility::everything(), true)?;
        if entry.status != Status::Quarantined {
            return Err(Error::InvalidArgument(format!("{id} is not quarantined")));
        }
        tx.record(&self.verifier.keys(), id, Kind::Rejected, now_ms)?;
        tx.remove(id)?;
        tx.commit(None).map_err(|e| e.error)?;
        Ok(entry)
    }

    /// Retention: deletes entries created before `older_than` (any status) and tombstones
    /// deleted before `tombstones_before`, each with a ledger record so that a copy put back is
    /// never served. Returns (entries removed, tombstones removed).
    pub fn purge(
        &mut self,
        older_than: Option<i64>,
        tombstones_before: Option<i64>,
        now_ms: i64,
    ) -> Result<(u64, u64)> {
        let keys = self.verifier.keys();
        let mut tx = self.backend.begin()?;
        let mut removed = 0;
        let mut tombstones = 0;
        if let Some(t) = tombstones_before {
            tombstones = tx.purge(&keys, PurgeRule::DeletedBefore(t), now_ms)?;
        }
        if let Some(t) = older_than {
            removed = tx.purge(&keys, PurgeRule::CreatedBefore(t), now_ms)?;
        }
        tx.commit(None).map_err(|e| e.error)?;
        Ok((removed, tombstones))
    }

    /// Rows and ledger records still sealed with key `key_id`.
    pub fn rows_sealed_with(&self, key_id: &str) -> Result<u64> {
        self.backend.rows_sealed_with(key_id)
    }

    /// Re-seals up to `batch` rows, then ledger records, not sealed with the active key, in one
    /// transaction. A row or record that does not verify under its own key (or a row its records
    /// retire) is left alone and reported: re-sealing it would launder the tampering. Returns
    /// (re-sealed, ids that failed; records as `ledger:SEQ`). Resumable: run it again.
    pub fn reseal_batch(&mut self, batch: usize, skip: &[String]) -> Result<(usize, Vec<String>)> {
        let keys = self.verifier.keys();
        let (active_id, active_key) = keys.active();
        let mut tx = self.backend.begin()?;
        let rows = tx.sealed_with_other_than(active_id, batch + skip.len())?;
        let mut resealed = 0;
        let mut failed = Vec::new();
        for raw in rows {
            if resealed >= batch {
                break;
            }
            let (label, entry) = match raw {
                Ok(raw) => (raw.id.clone(), raw.verify(&keys)),
                Err(label) => (label, None),
            };
            if skip.contains(&label) {
                continue;
            }
            match entry {
                Some(entry) => {
                    tx.reseal(&seal_entry(&entry, active_id, active_key))?;
                    resealed += 1;
                }
                None => failed.push(label),
            }
        }
        if resealed < batch {
            let (n, bad) = tx.reseal_ledger(&keys, batch - resealed, skip)?;
            resealed += n;
            failed.extend(bad);
        }
        tx.commit(None).map_err(|e| e.error)?;
        Ok((resealed, failed))
    }

    /// Every entry id, whatever its status (for reconciliation with the audit log).
    pub fn all_ids(&self) -> Result<Vec<String>> {
        self.backend.all_ids()
    }

    /// Ids of rows whose status column says active (verified or not).
    pub fn active_ids(&self) -> Result<Vec<String>> {
        self.backend.active_ids()
    }

    /// Number of rows of any status (for tests and tools that report sizes).
    pub fn count_rows(&self) -> Result<u64> {
        self.backend.count_rows()
    }

    /// The full-text index's shape (before and after `maintain`).
    pub fn index_shape(&self) -> Result<IndexShape> {
        self.backend.index_shape()
    }

    /// Brings the index and the file back into shape while servers run (`memwarden maintain`).
    pub fn maintain(&mut self, step_lock: Duration) -> Result<MaintainReport> {
        self.backend.maintain(step_lock)
    }

    /// Posts again every entry the search index has drifted from (see
    /// [`super::model::IndexDrift`]): `None` where the backend keeps no such index.
    pub fn repair_index(&mut self) -> Result<Option<IndexRepair>> {
        self.backend.repair_index()
    }

    /// Sets each namespace whose kept quota usage disagrees with its rows back to what they
    /// hold, one short write transaction per namespace (`memwarden maintain`); returns what it
    /// corrected. Rows are never touched: the counts are derived from them.
    pub fn recount_usage(&mut self) -> Result<Vec<UsageDrift>> {
        let mut fixed = Vec::new();
        for drift in self.backend.usage_drift()? {
            let mut tx = self.backend.begin()?;
            // Counted again under the write lock: a write may have moved both since.
            if let Some(d) = tx.recount_usage(&drift.namespace)? {
                fixed.push(d);
            }
            tx.commit(None).map_err(|e| e.error)?;
        }
        Ok(fixed)
    }
}
