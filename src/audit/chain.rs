//! The hash chain: the canonical row, its hash linked to the event before, the MAC over it,
//! the head, and the one insert that links an event and reads it back. Nothing here decides
//! when to append or what; it must never write a row it has not linked to the head it read in
//! the same transaction.
//!
//! hash = SHA-256(version tag ‖ prev_hash ‖ canonical row); mac = HMAC-SHA256(audit key, hash).
//! The canonical row is length-prefixed (see `canon`), so no two rows hash alike.

use hmac::{Hmac, KeyInit, Mac};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::AuditError;
use super::append::NewEvent;
use crate::canon::Canon;
use crate::keys::{KeySet, SecretKey};

/// Domain-separating version tag of the chain hash.
pub const AUDIT_TAG_V1: &[u8] = b"memwarden/audit/v1";

/// The hash the first event links to.
pub const GENESIS: [u8; 32] = [0; 32];

/// The row fields that the chain hash covers, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RowFields<'a> {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// UTC RFC 3339 with milliseconds.
    pub ts: &'a str,
    /// The event kind's name ([`super::Kind::as_str`]).
    pub kind: &'a str,
    /// The session it belongs to, if any.
    pub session_id: Option<&'a str>,
    /// Who acted, if known.
    pub principal: Option<&'a str>,
    /// The tool called, if any.
    pub tool: Option<&'a str>,
    /// How the call ended ([`super::Outcome::as_str`]), for calls.
    pub outcome: Option<&'a str>,
    /// The error code, when the call failed.
    pub code: Option<&'a str>,
    /// The detail object, as stored (JSON text).
    pub detail: &'a str,
    /// The audit key the MAC is made with.
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
    /// Its seq (0 for an empty log).
    pub seq: i64,
    /// Its chain hash, lowercase hex (the genesis hash for an empty log).
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

/// An event linked to the head it follows: every column of its row, owned (for a backend to
/// insert as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedEvent {
    /// Position in the chain.
    pub seq: i64,
    /// UTC RFC 3339 with milliseconds.
    pub ts: String,
    /// The event kind's name.
    pub kind: String,
    /// The session, if any.
    pub session_id: Option<String>,
    /// Who acted, if known.
    pub principal: Option<String>,
    /// The tool, if any.
    pub tool: Option<String>,
    /// The call's outcome, for calls.
    pub outcome: Option<String>,
    /// The error code, when the call failed.
    pub code: Option<String>,
    /// The detail object as JSON text.
    pub detail: String,
    /// The hash it links to (hex).
    pub prev_hash: String,
    /// Its chain hash (hex).
    pub hash: String,
    /// The audit key of its MAC.
    pub key_id: String,
    /// Its MAC (hex).
    pub mac: String,
}

impl LinkedEvent {
    /// Reads a row selected as `seq, ts, kind, session_id, principal, tool, outcome, code,
    /// detail, prev_hash, hash, key_id, mac`.
    pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: r.get(0)?,
            ts: r.get(1)?,
            kind: r.get(2)?,
            session_id: r.get(3)?,
            principal: r.get(4)?,
            tool: r.get(5)?,
            outcome: r.get(6)?,
            code: r.get(7)?,
            detail: r.get(8)?,
            prev_hash: r.get(9)?,
            hash: r.get(10)?,
            key_id: r.get(11)?,
            mac: r.get(12)?,
        })
    }

    /// The fields the hash covers.
    pub fn fields(&self) -> RowFields<'_> {
        RowFields {
            seq: self.seq,
            ts: &self.ts,
            kind: &self.kind,
            session_id: self.session_id.as_deref(),
            principal: self.principal.as_deref(),
            tool: self.tool.as_deref(),
            outcome: self.outcome.as_deref(),
            code: self.code.as_deref(),
            detail: &self.detail,
            key_id: &self.key_id,
        }
    }

    /// The head it makes.
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// Links `event`, stamped `now_ms`, to `prev` with the active audit key: the same row on every
/// backend.
pub fn link(
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
    prev: &Head,
) -> Result<LinkedEvent, AuditError> {
    let (key_id, key) = keys.active();
    let prev_hash = hex::decode(&prev.hash)
        .map_err(|_| AuditError::Corrupt(format!("event {} has a malformed hash", prev.seq)))?;
    let mut linked = LinkedEvent {
        seq: prev.seq + 1,
        ts: crate::clock::format_ms(now_ms),
        kind: event.kind.as_str().to_string(),
        session_id: event.session_id.map(str::to_string),
        principal: event.principal.map(str::to_string),
        tool: event.tool.map(str::to_string),
        outcome: event.outcome.map(|o| o.as_str().to_string()),
        code: event.code.map(str::to_string),
        detail: event.detail.to_string(),
        prev_hash: prev.hash.clone(),
        hash: String::new(),
        key_id: key_id.to_string(),
        mac: String::new(),
    };
    let hash = chain_hash(&prev_hash, &linked.fields());
    linked.mac = hex::encode(chain_mac(key, &hash));
    linked.hash = hex::encode(hash);
    Ok(linked)
}

/// Links `event` to `prev` and inserts it in `tx`, reading it back (see below).
pub(super) fn insert(
    tx: &rusqlite::Connection,
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
    prev: &Head,
) -> Result<Head, AuditError> {
    let linked = link(keys, event, now_ms, prev)?;
    let seq = linked.seq;
    let inserted = write_row(tx, &linked)?;
    // A trigger on `events` (refused at open, but the file can change under us) could
    // drop the row (RAISE(IGNORE): 0 rows) or rewrite or delete it after the insert. Read
    // the row back inside the transaction: anything but exactly our event fails closed and
    // rolls back, so the call it records is refused rather than done unaudited.
    let stored = read_back(tx, &linked)?;
    if inserted != 1 || stored.as_deref() != Some(linked.hash.as_str()) {
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
    Ok(Head {
        seq,
        hash: linked.hash,
    })
}

/// Inserts an already linked event verbatim (an export from another backend).
pub(super) fn write_linked(tx: &rusqlite::Connection, e: &LinkedEvent) -> Result<(), AuditError> {
    let n = write_row(tx, e)?;
    if n != 1 {
        return Err(AuditError::Corrupt(format!(
            "copying event {}: {n} rows",
            e.seq
        )));
    }
    Ok(())
}

/// Writes `events`, verbatim and in the order given, into a new audit.db at `out` (which must
/// not exist), in one transaction: a copy the offline verifier reads. Every export (from
/// PostgreSQL, from another audit.db) writes through here. Returns the copy's head.
pub(super) fn write_copy(
    out: &std::path::Path,
    events: impl IntoIterator<Item = LinkedEvent>,
) -> Result<Head, AuditError> {
    if std::fs::symlink_metadata(out).is_ok() {
        return Err(AuditError::Open(format!(
            "{}: already exists",
            out.display()
        )));
    }
    let mut conn = super::open_rw(out)?;
    let tx = conn.transaction()?;
    let mut head = Head {
        seq: 0,
        hash: hex::encode(GENESIS),
    };
    for e in events {
        write_linked(&tx, &e)?;
        head = e.head();
    }
    tx.commit()?;
    conn.close().map_err(|(_, e)| AuditError::from(e))?;
    Ok(head)
}

/// Inserts the linked row; returns the number of rows inserted (1 unless something interferes).
fn write_row(tx: &rusqlite::Connection, l: &LinkedEvent) -> Result<usize, AuditError> {
    let row = l.fields();
    Ok(tx
        .prepare_cached(
            "INSERT INTO events (seq, ts, kind, session_id, principal, tool, outcome, code, \
             detail, prev_hash, hash, key_id, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            row.seq,
            row.ts,
            row.kind,
            row.session_id,
            row.principal,
            row.tool,
            row.outcome,
            row.code,
            row.detail,
            l.prev_hash,
            l.hash,
            row.key_id,
            l.mac,
        ])?)
}

/// The hash of the row at the linked row's seq whose every field is as written, if any.
fn read_back(tx: &rusqlite::Connection, l: &LinkedEvent) -> Result<Option<String>, AuditError> {
    let row = l.fields();
    Ok(tx
        .prepare_cached(
            "SELECT hash FROM events WHERE seq = ?1 AND prev_hash = ?2 AND mac = ?3 \
             AND ts = ?4 AND kind = ?5 AND session_id IS ?6 AND principal IS ?7 \
             AND tool IS ?8 AND outcome IS ?9 AND code IS ?10 AND detail = ?11 AND key_id = ?12",
        )?
        .query_row(
            params![
                row.seq,
                l.prev_hash,
                l.mac,
                row.ts,
                row.kind,
                row.session_id,
                row.principal,
                row.tool,
                row.outcome,
                row.code,
                row.detail,
                row.key_id
            ],
            |r| r.get(0),
        )
        .optional()?)
}
