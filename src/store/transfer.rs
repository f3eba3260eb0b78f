//! Moving a whole store between backends unchanged (`memwarden migrate`, and `backup` /
//! `restore` on PostgreSQL): what a backend hands out and takes in. Rows, ledger records and
//! audit events travel verbatim — the same seals, MACs and chain hashes — so the target
//! verifies them with the same keyring, and an auditor sees one chain continue.
//!
//! A source streams in storage order from one consistent snapshot ([`Backend::copy_out`]); a
//! target takes batches, each in one transaction ([`Backend::copy_in`]), and says how far an
//! earlier, interrupted copy got ([`Backend::copied`]), which is where the next one resumes.
//!
//! [`Backend::copy_out`]: super::Backend::copy_out
//! [`Backend::copy_in`]: super::Backend::copy_in
//! [`Backend::copied`]: super::Backend::copied

use super::ledger::Record;
use super::rows::RawRow;
use crate::audit::LinkedEvent;
use crate::error::{Error, Result};

/// Rows (of each kind) per batch: one target transaction each, and a bound on what a copy
/// holds in memory.
pub const BATCH: usize = 1000;

/// What a target holds of an earlier copy, and so where the source resumes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    /// The newest entry, in storage order.
    pub last_entry: Option<String>,
    /// Entries of any status.
    pub entries: u64,
    /// The ledger's last seq (0 for none).
    pub ledger_seq: i64,
    /// Session starts recorded.
    pub session_starts: u64,
    /// The chain's tail event, where this database holds the events (PostgreSQL); `None`
    /// otherwise or when there is none.
    pub last_event: Option<LinkedEvent>,
}

/// A recorded session start (for the sessions-per-hour limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStart {
    /// Whose.
    pub principal: String,
    /// Unix ms.
    pub started_at: i64,
}

/// Where a source resumes: what the target already holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Entries after this one (storage order); all when `None`.
    pub after_entry: Option<String>,
    /// Ledger records after this seq.
    pub after_ledger: i64,
    /// Whether the session starts are still to copy.
    pub session_starts: bool,
    /// Audit events from this seq on (inclusive: the first one handed over must be the
    /// target's own tail, which proves the target's chain is a prefix of the source's), for a
    /// backend whose database holds the events; `None` to leave them out.
    pub events_from: Option<i64>,
}

/// What receives a store's contents, in this order: events (where the backend holds them),
/// entries, ledger records, session starts. An error stops the stream and is returned by
/// [`Backend::copy_out`](super::Backend::copy_out).
pub trait CopySink {
    /// The next audit event in seq order.
    fn event(&mut self, event: LinkedEvent) -> Result<()>;
    /// The next entry, unverified, in storage order (or the label of one that cannot be read).
    fn entry(&mut self, row: super::rows::Checked<RawRow>) -> Result<()>;
    /// The next ledger record in seq order.
    fn ledger(&mut self, record: Record) -> Result<()>;
    /// A session start.
    fn session_start(&mut self, start: SessionStart) -> Result<()>;
}

/// One target transaction's worth, written exactly as given.
#[derive(Debug, Default)]
pub struct Batch {
    /// Audit events, in seq order, continuing the target's chain (only for a backend whose
    /// database holds them).
    pub events: Vec<LinkedEvent>,
    /// Entries in storage order.
    pub entries: Vec<RawRow>,
    /// Ledger records in seq order.
    pub ledger: Vec<Record>,
    /// Session starts.
    pub session_starts: Vec<SessionStart>,
}

impl Batch {
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.entries.is_empty()
            && self.ledger.is_empty()
            && self.session_starts.is_empty()
    }

    /// Whether any part has reached [`BATCH`].
    pub fn is_full(&self) -> bool {
        [
            self.events.len(),
            self.entries.len(),
            self.ledger.len(),
            self.session_starts.len(),
        ]
        .iter()
        .any(|n| *n >= BATCH)
    }
}

/// The refusal when an entry an earlier run copied is no longer in the source.
pub fn gone(id: &str) -> Error {
    Error::Unavailable(format!(
        "entry {id}, which an earlier run copied, is no longer in the source: the source changed \
         since; start again into an empty target"
    ))
}

/// A whole store checked and summed up, to tell whether two stores hold the same rows: every
/// row's seal checked (and its status held to its ledger records), the ledger's chain walked,
/// and a SHA-256 over each row's id, status, key id and MAC in storage order. Streams: memory
/// does not grow with the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digest {
    /// Rows read.
    pub entries: u64,
    /// Ledger records.
    pub ledger_records: u64,
    /// The rows' SHA-256, hex.
    pub sha256: String,
    /// Rows whose seal fails (or that cannot be read), by id: at most [`Digest::SHOWN`].
    pub failed: Vec<String>,
    /// How many rows fail their seal in all.
    pub failed_count: u64,
    /// Rows less retired than their ledger records (an older sealed copy put back).
    pub rolled_back: u64,
    /// Ledger problems.
    pub ledger_problems: Vec<String>,
}

impl Digest {
    /// How many failing ids a digest keeps.
    pub const SHOWN: usize = 20;

    /// Whether every row and record verified.
    pub fn clean(&self) -> bool {
        self.failed_count == 0 && self.rolled_back == 0 && self.ledger_problems.is_empty()
    }
}

impl super::Store {
    /// Checks and sums up the whole store (see [`Digest`]).
    ///
    /// # Errors
    /// The backend cannot be read.
    pub fn digest(&self) -> Result<Digest> {
        use sha2::Digest as _;
        let keys = self.verifier.keys();
        let mut out = Digest::default();
        let mut hash = sha2::Sha256::new();
        self.backend.each_row(&mut |raw| {
            out.entries += 1;
            let failed = match raw {
                Ok(raw) => {
                    for part in [
                        raw.id.as_bytes(),
                        raw.status.as_bytes(),
                        raw.key_id.as_bytes(),
                    ] {
                        hash.update((part.len() as u64).to_be_bytes());
                        hash.update(part);
                    }
                    hash.update(&raw.mac);
                    let id = raw.id.clone();
                    out.rolled_back += u64::from(raw.rolled_back());
                    raw.verify_seal(&keys).is_none().then_some(id)
                }
                Err(label) => Some(label),
            };
            if let Some(id) = failed {
                out.failed_count += 1;
                if out.failed.len() < Digest::SHOWN {
                    out.failed.push(id);
                }
            }
        })?;
        let ledger = self.backend.ledger_chain(&keys)?;
        out.ledger_records = ledger.records;
        out.ledger_problems = ledger.problems;
        out.sha256 = hex::encode(hash.finalize());
        Ok(out)
    }

    /// Streams the store's contents to `sink` (see [`super::Backend::copy_out`]).
    ///
    /// # Errors
    /// As `copy_out`.
    pub fn copy_out(&self, from: &Resume, sink: &mut dyn CopySink) -> Result<()> {
        self.backend.copy_out(from, sink)
    }

    /// Writes one batch (see [`super::Backend::copy_in`]).
    ///
    /// # Errors
    /// As `copy_in`.
    pub fn copy_in(&mut self, batch: &Batch) -> Result<()> {
        self.backend.copy_in(batch)
    }

    /// What the store holds as a copy's target (see [`super::Backend::copied`]).
    ///
    /// # Errors
    /// As `copied`.
    pub fn copied(&self) -> Result<Copied> {
        self.backend.copied()
    }

    /// Whether `row`'s seal verifies with the store's entry keys.
    pub fn seal_holds(&self, row: &RawRow) -> bool {
        row.clone().verify_seal(&self.verifier.keys()).is_some()
    }
}
