//! Checking the chain offline: linkage and hashes without any key, MACs with the audit key,
//! checkpoint signatures with the public key alone, and heads or signed checkpoints kept
//! elsewhere (the only way to see a cut tail, an old copy, or a history rewritten by someone
//! who holds the audit key). It only reads: what it finds is reported, never repaired.

use rusqlite::{Connection, OptionalExtension};

use super::append::{GENESIS, chain_hash, head, verify_mac};
use super::chain::LinkedEvent;
use super::checkpoint::{Checkpoint, Verifiers, origin_of};
use super::{AuditError, Head, Kind};
use crate::keys::KeySet;

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first seq at which the chain does not hold.
    pub seq: i64,
    /// What is wrong there.
    pub kind: DamageKind,
}

/// The ways a chain can fail to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageKind {
    /// A seq is missing: events were deleted (or the log does not start at 1).
    Gap { expected: i64 },
    /// prev_hash does not match the previous event's hash: events removed, reordered or inserted.
    BrokenLink,
    /// The stored hash does not match the row: a field was edited.
    Altered,
    /// The MAC does not match: forged (written without the audit key).
    BadMac,
    /// The MAC names a key the keyring does not have.
    UnknownKey(String),
    /// The chain ends before the expected head: the tail was cut or an older copy restored.
    Truncated { head: i64 },
    /// The event at the expected head's seq has another hash: the chain was rewritten.
    HeadMismatch,
    /// A checkpoint event that does not verify or does not sign the event before it.
    BadCheckpoint(String),
    /// A checkpoint kept elsewhere names another log (origin).
    OtherLog { theirs: String, ours: String },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seq = self.seq;
        match &self.kind {
            DamageKind::Gap { expected } => write!(
                f,
                "seq {expected} is missing (next present is {seq}): events were deleted"
            ),
            DamageKind::BrokenLink => write!(
                f,
                "seq {seq}: prev_hash does not match the hash of the event before it: events were removed, reordered or inserted"
            ),
            DamageKind::Altered => write!(
                f,
                "seq {seq}: the event does not match its hash: a field was edited"
            ),
            DamageKind::BadMac => write!(
                f,
                "seq {seq}: the MAC does not verify, or is not spelled as the log writes it: the event was not written with the audit key (forged, re-hashed or edited)"
            ),
            DamageKind::UnknownKey(k) => write!(
                f,
                "seq {seq}: signed with key {k:?}, which the keyring does not have"
            ),
            DamageKind::Truncated { head } => write!(
                f,
                "seq {seq} was expected but the chain ends at {head}: the tail was cut or an older copy restored"
            ),
            DamageKind::HeadMismatch => write!(
                f,
                "seq {seq} does not have the expected hash: the chain was rewritten"
            ),
            DamageKind::BadCheckpoint(why) => write!(f, "seq {seq}: checkpoint event: {why}"),
            DamageKind::OtherLog { theirs, ours } => write!(
                f,
                "the checkpoint for seq {seq} is of log {theirs}, this log is {ours}: another \
                 log's checkpoint, or this log was rewritten from its first event"
            ),
        }
    }
}

/// What verification found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Events read (up to the first damage).
    pub events: u64,
    /// The log's last event.
    pub head: Head,
    /// Whether MACs were checked (a key was given).
    pub macs_checked: bool,
    /// The first thing found wrong; `None` when every check held.
    pub damage: Option<Damage>,
    /// Checkpoint events whose signatures were checked (with public keys given).
    pub checkpoints: u64,
    /// The newest checkpoint event checked: its seq and the seq it signs.
    pub last_checkpoint: Option<(i64, i64)>,
    /// The log's origin (from event 1), as its checkpoints name it.
    pub origin: Option<String>,
}

/// What to check besides links and hashes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checks<'a> {
    /// The audit keys: MACs are checked.
    pub keys: Option<&'a KeySet>,
    /// A head kept elsewhere.
    pub expect: Option<&'a Head>,
    /// Trusted public keys: every checkpoint event's signature is checked.
    pub verifiers: Option<&'a Verifiers>,
    /// Signed checkpoints kept elsewhere (already opened with `verifiers`): each must match
    /// the log at its seq.
    pub external: &'a [Checkpoint],
}

/// Walks the whole chain in seq order. `keys` enables MAC checks; `expect` checks the head.
pub fn verify(
    conn: &Connection,
    keys: Option<&KeySet>,
    expect: Option<&Head>,
) -> Result<Report, AuditError> {
    verify_with(
        conn,
        &Checks {
            keys,
            expect,
            ..Checks::default()
        },
    )
}

/// Checks one checkpoint event at `seq`: a note signed by a trusted key, naming this log,
/// seq - 1 and the hash of the event before it (`prev_hash`, already checked as a link).
fn check_checkpoint_event(
    detail: &str,
    seq: i64,
    prev_hash: &str,
    origin: &str,
    verifiers: &Verifiers,
) -> Result<(), String> {
    let detail: serde_json::Value =
        serde_json::from_str(detail).map_err(|_| "its detail is not JSON".to_string())?;
    let note = detail
        .get("note")
        .and_then(|n| n.as_str())
        .ok_or_else(|| "it holds no note".to_string())?;
    let (cp, _) = verifiers.open(note).map_err(|e| e.to_string())?;
    if cp.origin != origin {
        return Err(format!("it names log {}, this log is {origin}", cp.origin));
    }
    if cp.size != (seq - 1) as u64 || cp.hash_hex() != prev_hash {
        return Err(format!(
            "it signs seq {} with another hash than the event before it (seq {})",
            cp.size,
            seq - 1
        ));
    }
    Ok(())
}

/// Walks the whole chain in seq order and makes every check `checks` asks for.
pub fn verify_with(conn: &Connection, checks: &Checks<'_>) -> Result<Report, AuditError> {
    let mut walk = Walk::new(*checks);
    let mut damage = None;
    let mut stmt = conn.prepare(
        "SELECT seq, ts, kind, session_id, principal, tool, outcome, code, detail, prev_hash, \
         hash, key_id, mac FROM events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let row = LinkedEvent::read(r)?;
        let seq = row.seq;
        if let Some(kind) = walk.step(row) {
            damage = Some(Damage { seq, kind });
            break;
        }
    }
    drop(rows);
    let head = head(conn)?;
    if damage.is_none()
        && let Some(expect) = checks.expect
    {
        damage = check_expected_head(conn, &head, expect);
    }
    if damage.is_none() {
        damage = check_external(conn, checks.external, &head, walk.origin.as_deref())?;
    }
    Ok(Report {
        events: walk.events,
        head,
        macs_checked: checks.keys.is_some(),
        damage,
        checkpoints: walk.checkpoints,
        last_checkpoint: walk.last_checkpoint,
        origin: walk.origin,
    })
}

/// What the walk has seen so far, in seq order.
struct Walk<'a> {
    checks: Checks<'a>,
    expected_seq: i64,
    /// The hash of the event before the next one (genesis first).
    prev_hash: String,
    events: u64,
    origin: Option<String>,
    checkpoints: u64,
    last_checkpoint: Option<(i64, i64)>,
}

impl<'a> Walk<'a> {
    fn new(checks: Checks<'a>) -> Self {
        Self {
            checks,
            expected_seq: 1,
            prev_hash: hex::encode(GENESIS),
            events: 0,
            origin: None,
            checkpoints: 0,
            last_checkpoint: None,
        }
    }

    /// Checks the next event: its seq, its link, its hash, its MAC, and (with verifiers) a
    /// checkpoint's signature. The first thing wrong, if any; the walk stops there.
    fn step(&mut self, row: LinkedEvent) -> Option<DamageKind> {
        self.events += 1;
        let seq = row.seq;
        if seq != self.expected_seq {
            return Some(DamageKind::Gap {
                expected: self.expected_seq,
            });
        }
        if row.prev_hash != self.prev_hash {
            return Some(DamageKind::BrokenLink);
        }
        let Ok(prev_bytes) = hex::decode(&row.prev_hash) else {
            return Some(DamageKind::BrokenLink);
        };
        let hash = chain_hash(&prev_bytes, &row.fields());
        if hex::encode(hash) != row.hash {
            return Some(DamageKind::Altered);
        }
        // The MAC is written as 64 lowercase hex digits; any other spelling of the same bytes
        // (upper case) is an edit that decoding alone would let through.
        if !is_lower_hex(&row.mac, 64) {
            return Some(DamageKind::BadMac);
        }
        if let Some(keys) = self.checks.keys {
            let Some(key) = keys.get(&row.key_id) else {
                return Some(DamageKind::UnknownKey(row.key_id));
            };
            let mac_ok = hex::decode(&row.mac)
                .map(|m| verify_mac(key, &hash, &m))
                .unwrap_or(false);
            if !mac_ok {
                return Some(DamageKind::BadMac);
            }
        }
        if seq == 1 {
            self.origin = Some(origin_of(&row.hash));
        }
        if let Some(verifiers) = self.checks.verifiers
            && row.kind == Kind::Checkpoint.as_str()
        {
            let ours = self.origin.as_deref().unwrap_or_default();
            if let Err(why) =
                check_checkpoint_event(&row.detail, seq, &row.prev_hash, ours, verifiers)
            {
                return Some(DamageKind::BadCheckpoint(why));
            }
            self.checkpoints += 1;
            self.last_checkpoint = Some((seq, seq - 1));
        }
        self.prev_hash = row.hash;
        self.expected_seq += 1;
        None
    }
}

/// A head kept elsewhere must be in the log, with the same hash: a shorter log was cut (or is
/// an older copy), another hash means a rewritten history.
fn check_expected_head(conn: &Connection, head: &Head, expect: &Head) -> Option<Damage> {
    if head.seq < expect.seq {
        return Some(Damage {
            seq: expect.seq,
            kind: DamageKind::Truncated { head: head.seq },
        });
    }
    let hash: Option<String> = conn
        .query_row(
            "SELECT hash FROM events WHERE seq = ?1",
            [expect.seq],
            |r| r.get(0),
        )
        .ok();
    (hash.as_deref() != Some(expect.hash.as_str())).then_some(Damage {
        seq: expect.seq,
        kind: DamageKind::HeadMismatch,
    })
}

/// Each checkpoint kept elsewhere must name this log and match it at its seq: a log rewritten
/// (even with every hash and MAC recomputed) or cut below that seq fails here, named by seq.
fn check_external(
    conn: &Connection,
    external: &[Checkpoint],
    head: &Head,
    origin: Option<&str>,
) -> Result<Option<Damage>, AuditError> {
    for cp in external {
        let seq = i64::try_from(cp.size).unwrap_or(i64::MAX);
        let ours = origin.unwrap_or("(an empty log)");
        if cp.origin != ours {
            return Ok(Some(Damage {
                seq,
                kind: DamageKind::OtherLog {
                    theirs: cp.origin.clone(),
                    ours: ours.to_string(),
                },
            }));
        }
        if seq > head.seq {
            return Ok(Some(Damage {
                seq,
                kind: DamageKind::Truncated { head: head.seq },
            }));
        }
        let hash: Option<String> = conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()?;
        if hash.as_deref() != Some(cp.hash_hex().as_str()) {
            return Ok(Some(Damage {
                seq,
                kind: DamageKind::HeadMismatch,
            }));
        }
    }
    Ok(None)
}

/// Whether `text` is exactly `len` lowercase hex digits, the only spelling the log writes.
fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses `SEQ:HASH` as printed by `memwarden audit head` (either case).
pub fn parse_head(text: &str) -> Option<Head> {
    let (seq, hash) = text.trim().split_once(':')?;
    let seq: i64 = seq.parse().ok()?;
    let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
    (seq >= 0 && ok).then(|| Head {
        seq,
        hash: hash.to_ascii_lowercase(),
    })
}
