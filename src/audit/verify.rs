//! Checking the chain offline: linkage and hashes without any key, MACs with the audit key,
//! and the head against one kept elsewhere (the only way to see a cut tail or an old copy).

use rusqlite::Connection;

use super::append::{GENESIS, RowFields, chain_hash, head, verify_mac};
use super::{AuditError, Head};
use crate::store::keyring::KeySet;

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first seq at which the chain does not hold.
    pub seq: i64,
    pub kind: DamageKind,
}

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
        }
    }
}

/// What verification found.
#[derive(Debug, Clone)]
pub struct Report {
    pub events: u64,
    pub head: Head,
    /// Whether MACs were checked (a key was given).
    pub macs_checked: bool,
    pub damage: Option<Damage>,
}

/// Walks the whole chain in seq order. `keys` enables MAC checks; `expect` checks the head.
pub fn verify(
    conn: &Connection,
    keys: Option<&KeySet>,
    expect: Option<&Head>,
) -> Result<Report, AuditError> {
    let mut stmt = conn.prepare(
        "SELECT seq, ts, kind, session_id, principal, tool, outcome, code, detail, prev_hash, \
         hash, key_id, mac FROM events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = 1i64;
    let mut prev_hash = hex::encode(GENESIS);
    let mut events = 0u64;
    let mut damage = None;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let ts: String = r.get(1)?;
        let kind: String = r.get(2)?;
        let session_id: Option<String> = r.get(3)?;
        let principal: Option<String> = r.get(4)?;
        let tool: Option<String> = r.get(5)?;
        let outcome: Option<String> = r.get(6)?;
        let code: Option<String> = r.get(7)?;
        let detail: String = r.get(8)?;
        let stored_prev: String = r.get(9)?;
        let stored_hash: String = r.get(10)?;
        let key_id: String = r.get(11)?;
        let mac: String = r.get(12)?;
        events += 1;
        let found = |kind| Some(Damage { seq, kind });
        if seq != expected_seq {
            damage = found(DamageKind::Gap {
                expected: expected_seq,
            });
            break;
        }
        if stored_prev != prev_hash {
            damage = found(DamageKind::BrokenLink);
            break;
        }
        let row = RowFields {
            seq,
            ts: &ts,
            kind: &kind,
            session_id: session_id.as_deref(),
            principal: principal.as_deref(),
            tool: tool.as_deref(),
            outcome: outcome.as_deref(),
            code: code.as_deref(),
            detail: &detail,
            key_id: &key_id,
        };
        let Ok(prev_bytes) = hex::decode(&stored_prev) else {
            damage = found(DamageKind::BrokenLink);
            break;
        };
        let hash = chain_hash(&prev_bytes, &row);
        if hex::encode(hash) != stored_hash {
            damage = found(DamageKind::Altered);
            break;
        }
        // The MAC is written as 64 lowercase hex digits; any other spelling of the same bytes
        // (upper case) is an edit that decoding alone would let through.
        if !is_lower_hex(&mac, 64) {
            damage = found(DamageKind::BadMac);
            break;
        }
        if let Some(keys) = keys {
            let Some(key) = keys.get(&key_id) else {
                damage = found(DamageKind::UnknownKey(key_id));
                break;
            };
            let mac_ok = hex::decode(&mac)
                .map(|m| verify_mac(key, &hash, &m))
                .unwrap_or(false);
            if !mac_ok {
                damage = found(DamageKind::BadMac);
                break;
            }
        }
        prev_hash = stored_hash;
        expected_seq += 1;
    }
    drop(rows);
    let head = head(conn)?;
    if damage.is_none()
        && let Some(expect) = expect
    {
        if head.seq < expect.seq {
            damage = Some(Damage {
                seq: expect.seq,
                kind: DamageKind::Truncated { head: head.seq },
            });
        } else {
            let hash: Option<String> = conn
                .query_row(
                    "SELECT hash FROM events WHERE seq = ?1",
                    [expect.seq],
                    |r| r.get(0),
                )
                .ok();
            if hash.as_deref() != Some(expect.hash.as_str()) {
                damage = Some(Damage {
                    seq: expect.seq,
                    kind: DamageKind::HeadMismatch,
                });
            }
        }
    }
    Ok(Report {
        events,
        head,
        macs_checked: keys.is_some(),
        damage,
    })
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
