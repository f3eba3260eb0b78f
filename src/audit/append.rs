//! Appending events: [`AuditLog`] opens a data dir's audit.db (refusing to restart a vanished
//! chain) and appends. Each append runs in `BEGIN IMMEDIATE`: read the head, link to it
//! (`chain`), insert, sign a checkpoint when one is due (`checkpointer`),
//! commit — one writer at a time across every process on the file. Nothing here reads events
//! back for anyone but the chain itself.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::chain::insert;
use super::checkpoint::Signer;
use super::checkpointer::{Checkpointer, log_checkpoint};
use super::{AuditError, Kind, Outcome};
use crate::keys::KeySet;

pub use super::chain::{
    AUDIT_TAG_V1, GENESIS, Head, RowFields, chain_hash, chain_mac, head, verify_mac,
};
pub use super::checkpointer::CheckpointPolicy;

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// What the event records.
    pub kind: Kind,
    /// The session it belongs to, if any.
    pub session_id: Option<&'a str>,
    /// Who acted, if known.
    pub principal: Option<&'a str>,
    /// The tool called, if any.
    pub tool: Option<&'a str>,
    /// How the call ended, for calls.
    pub outcome: Option<Outcome>,
    /// The error code, when the call failed.
    pub code: Option<&'a str>,
    /// Ids, sizes, hashes, durations. Never content, metadata values, queries or keys.
    pub detail: Value,
}

impl<'a> NewEvent<'a> {
    /// An event of `kind` with `detail` and no session, principal, tool or outcome.
    pub fn new(kind: Kind, detail: Value) -> Self {
        Self {
            kind,
            session_id: None,
            principal: None,
            tool: None,
            outcome: None,
            code: None,
            detail,
        }
    }
}

/// An open audit.db with the audit key, ready to append.
pub struct AuditLog {
    conn: Connection,
    keys: KeySet,
    checkpoints: Option<Checkpointer>,
    /// A group's transaction is open ([`AuditLog::stage`]): events in it are not durable yet.
    in_group: bool,
    /// Checkpoints signed inside the open group, logged once it commits.
    group_notes: Vec<String>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the audit.db of a data dir. Refuses to start a new chain
    /// beside a memory.db that has been used (see [`super::vanished_chain`]): a deleted or
    /// truncated audit.db must never be silently re-created from genesis. A new data dir's
    /// chain starts with a `chain_start` event, before memory.db is first written.
    pub fn open(path: &Path, keys: KeySet) -> Result<Self, AuditError> {
        if let Some(why) = super::vanished_chain(path)? {
            return Err(AuditError::ChainMissing { why });
        }
        let mut log = Self {
            conn: super::open_rw(path)?,
            keys,
            checkpoints: None,
            in_group: false,
            group_notes: Vec::new(),
        };
        if log.head()?.seq == 0 {
            // Checked again now that the file is open: it may have changed since.
            if super::memory_used(path) {
                return Err(AuditError::ChainMissing {
                    why: "audit.db holds no events (a chain restarted from genesis)".into(),
                });
            }
            let event = NewEvent::new(
                Kind::Admin,
                serde_json::json!({"event": "chain_start", "why": "new data dir"}),
            );
            log.append_first(&event, crate::clock::now_ms())?;
        }
        Ok(log)
    }

    /// Opens audit.db to start a chain on the operator's explicit word (`audit reset`): no
    /// check of memory.db; `first` becomes event 1 unless the file already holds events.
    pub fn open_new_chain(
        path: &Path,
        keys: KeySet,
        first: &NewEvent<'_>,
    ) -> Result<(Self, Option<Head>), AuditError> {
        let mut log = Self {
            conn: super::open_rw(path)?,
            keys,
            checkpoints: None,
            in_group: false,
            group_notes: Vec::new(),
        };
        let head = log.append_first(first, crate::clock::now_ms())?;
        Ok((log, head))
    }

    /// Appends `event` only if the log holds no event yet (atomically: several processes may
    /// start a new data dir at once). Returns the head when it appended.
    pub fn append_first(
        &mut self,
        event: &NewEvent<'_>,
        now_ms: i64,
    ) -> Result<Option<Head>, AuditError> {
        self.append_inner(event, now_ms, true)
    }

    /// Signs checkpoints from now on with `signer` (the keyring's active `audit_signing` key),
    /// as `policy` says: see [`AuditLog::append`] and [`AuditLog::checkpoint`].
    pub fn with_checkpoints(mut self, signer: Signer, policy: CheckpointPolicy) -> Self {
        self.checkpoints = Some(Checkpointer {
            signer,
            policy,
            origin: None,
            last_seq: None,
            last_ms: crate::clock::now_ms(),
        });
        self
    }

    /// Whether this log signs checkpoints.
    pub fn signs_checkpoints(&self) -> bool {
        self.checkpoints.is_some()
    }

    /// Appends one event and returns the new head. Fails, changing nothing, when audit.db
    /// cannot be written. With checkpoints on, a checkpoint that is due (every N events, or T
    /// after the last one) rides in the same transaction, right after the event: it signs the
    /// head *before* the checkpoint event itself (the event just appended).
    pub fn append(&mut self, event: &NewEvent<'_>, now_ms: i64) -> Result<Head, AuditError> {
        self.append_inner(event, now_ms, false)?
            .ok_or_else(|| AuditError::Corrupt("append did not append".into()))
    }

    /// Appends a checkpoint of the current head now (at session end), unless the head already
    /// is a checkpoint. Returns the signed note when it appended one; `None` without a signing
    /// key or when nothing happened since the last checkpoint.
    pub fn checkpoint(
        &mut self,
        session_id: Option<&str>,
        principal: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<String>, AuditError> {
        let Some(ck) = self.checkpoints.as_mut() else {
            return Ok(None);
        };
        if self.in_group {
            return Err(AuditError::Corrupt(
                "a checkpoint while a group is open (commit the group first)".into(),
            ));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let kind: Option<String> = tx
            .query_row(
                "SELECT kind FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if kind.is_none() || kind.as_deref() == Some(Kind::Checkpoint.as_str()) {
            return Ok(None);
        }
        let prev = head(&tx)?;
        let (_, note) = ck.insert(&tx, &self.keys, &prev, session_id, principal, now_ms)?;
        tx.commit()?;
        log_checkpoint(&note);
        Ok(Some(note))
    }
}

/// Turns checkpoints on with the active key of the keyring's `audit_signing` set; without one
/// (a keyring made before checkpoints existed) the log signs nothing and says so once.
pub fn with_signing_key(
    log: AuditLog,
    signing: Option<&KeySet>,
    policy: CheckpointPolicy,
) -> AuditLog {
    match signing.and_then(|s| super::checkpoint::signers(s).into_iter().next()) {
        Some(signer) => log.with_checkpoints(signer, policy),
        None => {
            tracing::warn!(target: "memwarden::security", event = "audit_unsigned",
                "the keyring has no audit signing key: no audit checkpoints are signed; run \
                 `memwarden keys rotate --audit-signing` to add one");
            log
        }
    }
}

impl AuditLog {
    fn append_inner(
        &mut self,
        event: &NewEvent<'_>,
        now_ms: i64,
        first_only: bool,
    ) -> Result<Option<Head>, AuditError> {
        if self.in_group {
            return Err(AuditError::Corrupt(
                "an append while a group is open (commit the group first)".into(),
            ));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let prev = head(&tx)?;
        if first_only && prev.seq != 0 {
            return Ok(None);
        }
        let (new, note) = link(
            &tx,
            &self.keys,
            self.checkpoints.as_mut(),
            event,
            now_ms,
            &prev,
        )?;
        tx.commit()?;
        if let Some(note) = note {
            log_checkpoint(&note);
        }
        Ok(Some(new))
    }

    /// Appends `event` inside the open group, opening it (`BEGIN IMMEDIATE`) when none is:
    /// the event is linked and checked like any append, and a checkpoint that is due rides
    /// along, but nothing is durable until [`AuditLog::commit_group`]. A failed stage leaves
    /// the group as it was (its own savepoint rolls back).
    ///
    /// A group lets one commit (one fsync) carry the events of several sessions' writes; the
    /// server answers none of them before it commits (see `server::group`).
    pub fn stage(&mut self, event: &NewEvent<'_>, now_ms: i64) -> Result<Head, AuditError> {
        if !self.in_group {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_group = true;
        }
        let sp = self.conn.savepoint()?;
        let prev = head(&sp)?;
        let (new, note) = link(
            &sp,
            &self.keys,
            self.checkpoints.as_mut(),
            event,
            now_ms,
            &prev,
        )?;
        sp.commit()?;
        self.group_notes.extend(note);
        Ok(new)
    }

    /// Whether a group is open (events staged, not yet durable).
    pub fn group_open(&self) -> bool {
        self.in_group
    }

    /// Commits the open group: every staged event becomes durable at once. Nothing to do when
    /// no group is open. On failure the group is rolled back: none of its events is written.
    pub fn commit_group(&mut self) -> Result<(), AuditError> {
        if !self.in_group {
            return Ok(());
        }
        self.in_group = false;
        let notes = std::mem::take(&mut self.group_notes);
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(e.into());
        }
        notes.iter().for_each(|note| log_checkpoint(note));
        Ok(())
    }

    /// Rolls the open group back: none of its events is written.
    pub fn rollback_group(&mut self) {
        if std::mem::take(&mut self.in_group) {
            self.group_notes.clear();
            if !self.conn.is_autocommit()
                && let Err(e) = self.conn.execute_batch("ROLLBACK")
            {
                tracing::warn!(error = %e, "rolling back audit.db's group failed");
            }
        }
    }

    /// A describer keyed by the active audit key under `label` (see [`crate::agent_text`]).
    pub fn describer(&self, label: &[u8]) -> crate::agent_text::Describer {
        let (_, key) = self.keys.active();
        crate::agent_text::Describer::derived(key.bytes(), label)
    }

    /// The current head.
    pub fn head(&self) -> Result<Head, AuditError> {
        head(&self.conn)
    }

    /// Closes the connection (checkpointing the WAL when this is the last one).
    pub fn close(self) -> Result<(), AuditError> {
        self.conn.close().map_err(|(_, e)| AuditError::Sqlite(e))
    }
}

/// Links `event` to `prev` and inserts it in `tx`, then the checkpoint that is due after it,
/// if any: the new head, and the signed note to log once `tx` commits.
fn link(
    tx: &Connection,
    keys: &KeySet,
    checkpoints: Option<&mut Checkpointer>,
    event: &NewEvent<'_>,
    now_ms: i64,
    prev: &Head,
) -> Result<(Head, Option<String>), AuditError> {
    let new = insert(tx, keys, event, now_ms, prev)?;
    let Some(ck) = checkpoints else {
        return Ok((new, None));
    };
    if !ck.due(tx, new.seq, now_ms)? {
        return Ok((new, None));
    }
    let (head, signed) = ck.insert(tx, keys, &new, event.session_id, event.principal, now_ms)?;
    Ok((head, Some(signed)))
}
