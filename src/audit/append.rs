//! Appending events: canonical encoding, the hash chain and its MAC.
//!
//! hash = SHA-256(version tag ‖ prev_hash ‖ canonical row); mac = HMAC-SHA256(audit key, hash).
//! The canonical row is length-prefixed (see `canon`), so no two rows hash alike. The append runs
//! in `BEGIN IMMEDIATE`: read the head, link to it, insert, commit — one writer at a time across
//! every process on the file.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::checkpoint::{Checkpoint, Signer};
use super::{AuditError, Kind, Outcome};
use crate::canon::Canon;
use crate::keys::{KeySet, SecretKey};

/// Domain-separating version tag of the chain hash.
pub const AUDIT_TAG_V1: &[u8] = b"memwarden/audit/v1";

/// The hash the first event links to.
pub const GENESIS: [u8; 32] = [0; 32];

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub kind: Kind,
    pub session_id: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub tool: Option<&'a str>,
    pub outcome: Option<Outcome>,
    pub code: Option<&'a str>,
    /// Ids, sizes, hashes, durations. Never content, metadata values, queries or keys.
    pub detail: Value,
}

impl<'a> NewEvent<'a> {
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

/// The row fields that the chain hash covers, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RowFields<'a> {
    pub seq: i64,
    pub ts: &'a str,
    pub kind: &'a str,
    pub session_id: Option<&'a str>,
    pub principal: Option<&'a str>,
    pub tool: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub code: Option<&'a str>,
    pub detail: &'a str,
    pub key_id: &'a str,
}

/// SHA-256(tag ‖ prev_hash ‖ canonical row).
pub fn chain_hash(prev_hash: &[u8], row: &RowFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    Canon::new(|b: &[u8]| h.update(b))
        .bytes(AUDIT_TAG_V1)
        .bytes(prev_hash)
        .int(row.seq)
        .str(row.ts)
        .str(row.kind)
        .opt(row.session_id)
        .opt(row.principal)
        .opt(row.tool)
        .opt(row.outcome)
        .opt(row.code)
        .str(row.detail)
        .str(row.key_id);
    h.finalize().into()
}

fn mac_of(key: &SecretKey, hash: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(hash);
    mac
}

/// HMAC-SHA256(audit key, hash).
pub fn chain_mac(key: &SecretKey, hash: &[u8]) -> [u8; 32] {
    mac_of(key, hash).finalize().into_bytes().into()
}

/// Constant-time MAC check.
pub fn verify_mac(key: &SecretKey, hash: &[u8], mac: &[u8]) -> bool {
    mac_of(key, hash).verify_slice(mac).is_ok()
}

/// The last event of the chain: what an operator keeps elsewhere to detect truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// Reads the head of the chain (seq 0 and the genesis hash for an empty log).
pub fn head(conn: &Connection) -> Result<Head, AuditError> {
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((seq, hash)) => Head { seq, hash },
        None => Head {
            seq: 0,
            hash: hex::encode(GENESIS),
        },
    })
}

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
struct Checkpointer {
    signer: Signer,
    policy: CheckpointPolicy,
    /// The log's origin line (from event 1's hash), read once.
    origin: Option<String>,
    /// The seq of the newest checkpoint event known to this process (`None`: not looked up yet;
    /// other processes append too, so it is only a lower bound).
    last_seq: Option<i64>,
    /// When this process last signed (or opened the log).
    last_ms: i64,
}

/// An open audit.db with the audit key, ready to append.
pub struct AuditLog {
    conn: Connection,
    keys: KeySet,
    checkpoints: Option<Checkpointer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

/// Links `event` to `prev` and inserts it in `tx`, reading it back (see below).
fn insert(
    tx: &rusqlite::Transaction<'_>,
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
    prev: &Head,
) -> Result<Head, AuditError> {
    let ts = crate::clock::format_ms(now_ms);
    let detail = event.detail.to_string();
    let (key_id, key) = keys.active();
    let prev_hash = hex::decode(&prev.hash)
        .map_err(|_| AuditError::Corrupt(format!("event {} has a malformed hash", prev.seq)))?;
    let seq = prev.seq + 1;
    let row = RowFields {
        seq,
        ts: &ts,
        kind: event.kind.as_str(),
        session_id: event.session_id,
        principal: event.principal,
        tool: event.tool,
        outcome: event.outcome.map(Outcome::as_str),
        code: event.code,
        detail: &detail,
        key_id,
    };
    let hash = chain_hash(&prev_hash, &row);
    let mac = chain_mac(key, &hash);
    let hash = hex::encode(hash);
    let mac = hex::encode(mac);
    let inserted = tx.prepare_cached(
        "INSERT INTO events (seq, ts, kind, session_id, principal, tool, outcome, code, detail, \
         prev_hash, hash, key_id, mac) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        seq,
        ts,
        row.kind,
        row.session_id,
        row.principal,
        row.tool,
        row.outcome,
        row.code,
        detail,
        prev.hash,
        hash,
        key_id,
        mac,
    ])?;
    // A trigger on `events` (refused at open, but the file can change under us) could
    // drop the row (RAISE(IGNORE): 0 rows) or rewrite or delete it after the insert. Read
    // the row back inside the transaction: anything but exactly our event fails closed and
    // rolls back, so the call it records is refused rather than done unaudited.
    let stored: Option<String> = tx
        .prepare_cached(
            "SELECT hash FROM events WHERE seq = ?1 AND prev_hash = ?2 AND mac = ?3 \
             AND ts = ?4 AND kind = ?5 AND session_id IS ?6 AND principal IS ?7 \
             AND tool IS ?8 AND outcome IS ?9 AND code IS ?10 AND detail = ?11 AND key_id = ?12",
        )?
        .query_row(
            params![
                seq,
                prev.hash,
                mac,
                ts,
                row.kind,
                row.session_id,
                row.principal,
                row.tool,
                row.outcome,
                row.code,
                detail,
                key_id
            ],
            |r| r.get(0),
        )
        .optional()?;
    if inserted != 1 || stored.as_deref() != Some(hash.as_str()) {
        return Err(AuditError::Corrupt(format!(
            "appending event {seq}: {inserted} rows inserted, event {}; something in \
             audit.db (a trigger?) interferes with appends: refusing",
            if stored.is_some() {
                "read back intact"
            } else {
                "not read back as written"
            }
        )));
    }
    Ok(Head { seq, hash })
}

impl AuditLog {
    /// Opens (creating if needed) the audit.db of a data dir. Refuses to start a new chain
    /// beside a memory.db that has been used (see [`super::vanished_chain`]): a deleted or
    /// truncated audit.db must never be silently re-created from genesis. A new data dir's
    /// chain starts with a `chain_start` event, before memory.db is first written.
    pub fn open(path: &Path, keys: KeySet, busy_timeout: Duration) -> Result<Self, AuditError> {
        if let Some(why) = super::vanished_chain(path)? {
            return Err(AuditError::ChainMissing { why });
        }
        let mut log = Self {
            conn: super::open_rw(path, busy_timeout)?,
            keys,
            checkpoints: None,
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
        busy_timeout: Duration,
        first: &NewEvent<'_>,
    ) -> Result<(Self, Option<Head>), AuditError> {
        let mut log = Self {
            conn: super::open_rw(path, busy_timeout)?,
            keys,
            checkpoints: None,
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
        let (_, note) =
            Self::insert_checkpoint(&tx, &self.keys, ck, &prev, session_id, principal, now_ms)?;
        tx.commit()?;
        log_checkpoint(&note);
        Ok(Some(note))
    }

    /// Whether a checkpoint is due after the event just inserted at `seq` (inside the append's
    /// transaction, so other processes' checkpoints are seen). Cheap on the common path: an
    /// integer compare; the bounded look-up runs only when the cached count says one is due.
    fn checkpoint_due(
        tx: &rusqlite::Transaction<'_>,
        ck: &mut Checkpointer,
        seq: i64,
        now_ms: i64,
    ) -> Result<bool, AuditError> {
        let every = ck.policy.every_events.max(1) as i64;
        if now_ms.saturating_sub(ck.last_ms) >= ck.policy.every.as_millis() as i64 {
            return Ok(true);
        }
        if let Some(last) = ck.last_seq
            && seq - last < every
        {
            return Ok(false);
        }
        // Another process may have signed since: look at the last `every` events only (a log
        // shorter than that needs no checkpoint yet).
        let lower = ck.last_seq.unwrap_or(0).max(seq - every).max(0);
        let found: Option<i64> = tx
            .prepare_cached("SELECT max(seq) FROM events WHERE seq > ?1 AND kind = 'checkpoint'")?
            .query_row([lower], |r| r.get(0))?;
        let last = found.unwrap_or(lower);
        ck.last_seq = Some(last);
        Ok(seq - last >= every)
    }

    /// Signs `prev` (the head) and inserts the checkpoint event after it, in `tx`.
    fn insert_checkpoint(
        tx: &rusqlite::Transaction<'_>,
        keys: &KeySet,
        ck: &mut Checkpointer,
        prev: &Head,
        session_id: Option<&str>,
        principal: Option<&str>,
        now_ms: i64,
    ) -> Result<(Head, String), AuditError> {
        let origin = match &ck.origin {
            Some(o) => o.clone(),
            None => {
                let first: String = tx
                    .query_row("SELECT hash FROM events WHERE seq = 1", [], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| AuditError::Corrupt("the log has no event 1".into()))?;
                let o = super::checkpoint::origin_of(&first);
                ck.origin = Some(o.clone());
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
        let note = ck.signer.sign(&cp);
        let event = NewEvent {
            session_id,
            principal,
            ..NewEvent::new(
                Kind::Checkpoint,
                serde_json::json!({"event": "checkpoint", "size": prev.seq,
                                   "key": ck.signer.name(), "note": note}),
            )
        };
        let head = insert(tx, keys, &event, now_ms, prev)?;
        ck.last_seq = Some(head.seq);
        ck.last_ms = now_ms;
        Ok((head, note))
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

/// Logs a committed checkpoint to the security target (journald can forward it off the host).
fn log_checkpoint(note: &str) {
    tracing::info!(target: "memwarden::security", event = "audit_checkpoint", note = %note,
        "signed audit checkpoint: keep it off this host to detect a rewritten history");
}

impl AuditLog {
    fn append_inner(
        &mut self,
        event: &NewEvent<'_>,
        now_ms: i64,
        first_only: bool,
    ) -> Result<Option<Head>, AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let prev = head(&tx)?;
        if first_only && prev.seq != 0 {
            return Ok(None);
        }
        let mut new = insert(&tx, &self.keys, event, now_ms, &prev)?;
        let mut note = None;
        if let Some(ck) = self.checkpoints.as_mut()
            && Self::checkpoint_due(&tx, ck, new.seq, now_ms)?
        {
            let (head, signed) = Self::insert_checkpoint(
                &tx,
                &self.keys,
                ck,
                &new,
                event.session_id,
                event.principal,
                now_ms,
            )?;
            new = head;
            note = Some(signed);
        }
        tx.commit()?;
        if let Some(note) = note {
            log_checkpoint(&note);
        }
        Ok(Some(new))
    }

    /// The current head.
    /// A describer keyed by the active audit key under `label` (see [`crate::agent_text`]).
    pub fn describer(&self, label: &[u8]) -> crate::agent_text::Describer {
        let (_, key) = self.keys.active();
        crate::agent_text::Describer::derived(key.bytes(), label)
    }

    pub fn head(&self) -> Result<Head, AuditError> {
        head(&self.conn)
    }

    /// Closes the connection (checkpointing the WAL when this is the last one).
    pub fn close(self) -> Result<(), AuditError> {
        self.conn.close().map_err(|(_, e)| AuditError::Sqlite(e))
    }
}
