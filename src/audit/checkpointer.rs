//! When and how this process signs audit checkpoints: the cadence the policy sets, the
//! signing key, and the checkpoint event that rides in an append's transaction. It never signs
//! anything but the head read in that same transaction.

use std::time::Duration;

use rusqlite::OptionalExtension;

use super::append::NewEvent;
use super::chain::{self, Head};
use super::checkpoint::{Checkpoint, Signer};
use super::{AuditError, Kind};
use crate::keys::KeySet;

/// When the server signs a checkpoint (policy `[audit]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// At most this many events between two checkpoints.
    pub every_events: u64,
    /// At most this long between an event and the next checkpoint, while events come.
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_events: 1000,
            every: Duration::from_secs(300),
        }
    }
}

/// What signs checkpoints in this process, and when it last did.
pub(super) struct Checkpointer {
    pub(super) signer: Signer,
    pub(super) policy: CheckpointPolicy,
    /// The log's origin line (from event 1's hash), read once.
    pub(super) origin: Option<String>,
    /// The seq of the newest checkpoint event known to this process (`None`: not looked up yet;
    /// other processes append too, so it is only a lower bound).
    pub(super) last_seq: Option<i64>,
    /// When this process last signed (or opened the log).
    pub(super) last_ms: i64,
}

impl Checkpointer {
    /// Whether a checkpoint is due after the event just inserted at `seq` (inside the append's
    /// transaction, so other processes' checkpoints are seen). Cheap on the common path: an
    /// integer compare; the bounded look-up runs only when the cached count says one is due.
    pub(super) fn due(
        &mut self,
        tx: &rusqlite::Connection,
        seq: i64,
        now_ms: i64,
    ) -> Result<bool, AuditError> {
        let every = self.policy.every_events.max(1) as i64;
        if now_ms.saturating_sub(self.last_ms) >= self.policy.every.as_millis() as i64 {
            return Ok(true);
        }
        if let Some(last) = self.last_seq
            && seq - last < every
        {
            return Ok(false);
        }
        // Another process may have signed since: look at the last `every` events only (a log
        // shorter than that needs no checkpoint yet).
        let lower = self.last_seq.unwrap_or(0).max(seq - every).max(0);
        let found: Option<i64> = tx
            .prepare_cached("SELECT max(seq) FROM events WHERE seq > ?1 AND kind = 'checkpoint'")?
            .query_row([lower], |r| r.get(0))?;
        let last = found.unwrap_or(lower);
        self.last_seq = Some(last);
        Ok(seq - last >= every)
    }

    /// Signs `prev` (the head) and inserts the checkpoint event after it, in `tx`.
    pub(super) fn insert(
        &mut self,
        tx: &rusqlite::Connection,
        keys: &KeySet,
        prev: &Head,
        session_id: Option<&str>,
        principal: Option<&str>,
        now_ms: i64,
    ) -> Result<(Head, String), AuditError> {
        let origin = match &self.origin {
            Some(o) => o.clone(),
            None => {
                let first: String = tx
                    .query_row("SELECT hash FROM events WHERE seq = 1", [], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| AuditError::Corrupt("the log has no event 1".into()))?;
                let o = super::checkpoint::origin_of(&first);
                self.origin = Some(o.clone());
                o
            }
        };
        let hash: [u8; 32] = hex::decode(&prev.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                AuditError::Corrupt(format!("event {} has a malformed hash", prev.seq))
            })?;
        let cp = Checkpoint {
            origin,
            size: prev.seq as u64,
            hash,
            time: Some(now_ms.div_euclid(1000)),
        };
        let note = self.signer.sign(&cp);
        let event = NewEvent {
            session_id,
            principal,
            ..NewEvent::new(
                Kind::Checkpoint,
                serde_json::json!({"event": "checkpoint", "size": prev.seq,
                                   "key": self.signer.name(), "note": note}),
            )
        };
        let head = chain::insert(tx, keys, &event, now_ms, prev)?;
        self.last_seq = Some(head.seq);
        self.last_ms = now_ms;
        Ok((head, note))
    }
}

/// Logs a committed checkpoint to the security target (journald can forward it off the host).
pub(super) fn log_checkpoint(note: &str) {
    tracing::info!(target: "memwarden::security", event = "audit_checkpoint", note = %note,
        "signed audit checkpoint: keep it off this host to detect a rewritten history");
}
