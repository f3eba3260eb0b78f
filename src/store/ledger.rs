//! The ledger: insert-only, chained, sealed records of every change to an entry's served state
//! after it was written (approve, supersede, delete, purge, reject).
//!
//! A seal proves that we wrote a row, not that it is the row's current version: an older sealed
//! copy put back in place (an undeleted tombstone, an un-superseded version, a purged row
//! re-inserted) verifies on its own. So every such change also appends a record here, in the
//! same store transaction, and reads look an entry's records up by index and never serve a row
//! that is less retired than its records say. Existence alone withholds (fail closed): a forged
//! record can only hide a row, and `memwarden verify` reports it. Each record's hash covers the
//! one before it, so removing a record from the middle breaks a link; a removed tail is caught by
//! reconciling with the audit log (`cli::verify`). This module holds the record format, its
//! hash and MAC and the rules; each backend stores the records (`sqlite::ledger`). It must never
//! log or return key bytes.

use std::collections::HashMap;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::canon::Canon;
use crate::keys::{KeySet, SecretKey};

type HmacSha256 = Hmac<Sha256>;

/// Domain-separating tag of a record's chain hash; a change to the fields needs a new tag.
pub const HASH_TAG_V1: &[u8] = b"memwarden/ledger/v1";
/// Domain-separating tag of a record's MAC (over the key id and the chain hash).
pub const MAC_TAG_V1: &[u8] = b"memwarden/ledger-mac/v1";
/// The `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What a record says happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An operator released it from quarantine.
    Approved,
    /// An update wrote a newer version.
    Superseded,
    /// Tombstoned.
    Deleted,
    /// Removed by retention.
    Purged,
    /// A quarantined entry the operator dropped.
    Rejected,
}

impl Kind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Superseded => "superseded",
            Self::Deleted => "deleted",
            Self::Purged => "purged",
            Self::Rejected => "rejected",
        }
    }

    /// A stored kind, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "approved" => Self::Approved,
            "superseded" => Self::Superseded,
            "deleted" => Self::Deleted,
            "purged" => Self::Purged,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }

    /// How retired a record leaves its entry, on the scale of [`status_rank`]; purged and
    /// rejected entries are gone, above every status.
    pub fn rank(self) -> i64 {
        match self {
            Self::Approved => 1,
            Self::Superseded => 2,
            Self::Deleted => 3,
            Self::Purged | Self::Rejected => 4,
        }
    }
}

/// How retired a row's status is: a row is served only if this is at least the highest
/// [`Kind::rank`] of its records.
pub fn status_rank(status: &str) -> i64 {
    match status {
        "active" => 1,
        "superseded" => 2,
        "deleted" => 3,
        // Quarantined, or unknown (which fails its seal anyway).
        _ => 0,
    }
}

/// The fields a record's chain hash covers.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// The entry the record is about.
    pub entry_id: &'a str,
    /// A [`Kind`] as stored.
    pub kind: &'a str,
    /// Unix ms.
    pub at: i64,
}

fn encode(prev_hash: &[u8], f: &Fields<'_>, sink: &mut impl FnMut(&[u8])) {
    Canon::new(sink)
        .bytes(HASH_TAG_V1)
        .bytes(prev_hash)
        .int(f.seq)
        .str(f.entry_id)
        .str(f.kind)
        .int(f.at);
}

/// The canonical encoding a record's hash covers (for tests).
pub fn canonical_bytes(prev_hash: &[u8], f: &Fields<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(prev_hash, f, &mut |b| out.extend_from_slice(b));
    out
}

/// SHA-256 over the version tag, the previous record's hash and this record's fields, each
/// length-prefixed. The key id is left out, so re-sealing under a new key keeps the chain.
pub fn hash(prev_hash: &[u8], f: &Fields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    encode(prev_hash, f, &mut |b| h.update(b));
    h.finalize().into()
}

fn mac_for(key: &SecretKey, key_id: &str, hash: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.bytes()).expect("HMAC accepts keys of any length");
    Canon::new(|b: &[u8]| mac.update(b))
        .bytes(MAC_TAG_V1)
        .str(key_id)
        .bytes(hash);
    mac
}

/// HMAC-SHA256 under `key` over the key id and the chain hash: the key id is inside, so a
/// record cannot be re-labelled to another key.
pub fn seal(key: &SecretKey, key_id: &str, hash: &[u8]) -> [u8; 32] {
    mac_for(key, key_id, hash).finalize().into_bytes().into()
}

/// A record linked after the chain's tail and sealed with the active key: the row every
/// backend inserts.
#[derive(Debug, Clone)]
pub struct Linked<'k> {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// The tail's hash (or the genesis value for the first record).
    pub prev_hash: Vec<u8>,
    /// This record's chain hash.
    pub hash: [u8; 32],
    /// The key that seals it.
    pub key_id: &'k str,
    /// Its MAC.
    pub mac: [u8; 32],
}

/// Links a record of `kind` for `entry_id` at `at` after `tail` (the last record's seq and
/// hash, `None` for an empty chain), sealed with `keys`' active key.
pub fn link<'k>(
    keys: &'k KeySet,
    tail: Option<(i64, Vec<u8>)>,
    entry_id: &str,
    kind: Kind,
    at: i64,
) -> Linked<'k> {
    let (seq, prev_hash) = match tail {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_vec()),
    };
    let fields = Fields {
        seq,
        entry_id,
        kind: kind.as_str(),
        at,
    };
    let hash = hash(&prev_hash, &fields);
    let (key_id, key) = keys.active();
    Linked {
        seq,
        prev_hash,
        hash,
        key_id,
        mac: seal(key, key_id, &hash),
    }
}

/// What one reseal batch does with `records` (not sealed with the active key, oldest first):
/// up to `batch` of them that verify under their own key get a new MAC under the active key
/// (`(seq, mac)`; only the MAC changes, the key id is outside the chain hash); those that do not
/// verify are left alone and reported (`ledger:SEQ`); labels in `skip` are passed over.
pub fn reseal_plan(
    keys: &KeySet,
    records: impl IntoIterator<Item = Record>,
    batch: usize,
    skip: &[String],
) -> (Vec<(i64, [u8; 32])>, Vec<String>) {
    let (active_id, active) = keys.active();
    let mut resealed = Vec::new();
    let mut failed = Vec::new();
    for rec in records {
        if resealed.len() >= batch {
            break;
        }
        let label = format!("ledger:{}", rec.seq);
        if skip.contains(&label) {
            continue;
        }
        if rec.problem(keys).is_some() {
            failed.push(label);
            continue;
        }
        resealed.push((rec.seq, seal(active, active_id, &rec.hash)));
    }
    (resealed, failed)
}

pub(crate) fn mac_ok(key: &SecretKey, key_id: &str, hash: &[u8], tag: &[u8]) -> bool {
    mac_for(key, key_id, hash).verify_slice(tag).is_ok()
}

/// One record as stored, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: i64,
    pub entry_id: String,
    pub kind: String,
    pub at: i64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub key_id: String,
    pub mac: Vec<u8>,
}

impl Record {
    /// The fields its chain hash covers.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            seq: self.seq,
            entry_id: &self.entry_id,
            kind: &self.kind,
            at: self.at,
        }
    }

    /// What is wrong with the record on its own (hash, kind, key, MAC), if anything.
    pub fn problem(&self, keys: &KeySet) -> Option<String> {
        let seq = self.seq;
        if hash(&self.prev_hash, &self.fields()).as_slice() != self.hash {
            return Some(format!(
                "ledger record {seq}: altered (its hash does not match)"
            ));
        }
        if Kind::parse(&self.kind).is_none() {
            return Some(format!("ledger record {seq}: unknown kind"));
        }
        let Some(key) = keys.get(&self.key_id) else {
            return Some(format!(
                "ledger record {seq}: sealed with a key not in the keyring"
            ));
        };
        if !mac_ok(key, &self.key_id, &self.hash, &self.mac) {
            return Some(format!("ledger record {seq}: MAC does not verify"));
        }
        None
    }
}

/// What walking the chain found.
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    /// Records read.
    pub records: u64,
    /// Broken links, gaps, altered or unverifiable records (each names its seq).
    pub problems: Vec<String>,
    /// The kinds of the records that verified, by entry id.
    pub kinds: HashMap<String, Vec<Kind>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(seq: i64, entry_id: &'static str, kind: &'static str, at: i64) -> Fields<'static> {
        Fields {
            seq,
            entry_id,
            kind,
            at,
        }
    }

    #[test]
    fn encoding_is_tagged_and_length_prefixed() {
        let bytes = canonical_bytes(&GENESIS, &f(1, "ab", "deleted", 5));
        let mut want = Vec::new();
        for part in [
            HASH_TAG_V1,
            &GENESIS[..],
            &1i64.to_be_bytes()[..],
            b"ab",
            b"deleted",
            &5i64.to_be_bytes()[..],
        ] {
            want.extend_from_slice(&(part.len() as u64).to_be_bytes());
            want.extend_from_slice(part);
        }
        assert_eq!(bytes, want);
        assert_eq!(
            hash(&GENESIS, &f(1, "ab", "deleted", 5)).as_slice(),
            Sha256::digest(&want).as_slice()
        );
    }

    #[test]
    fn every_field_and_the_link_change_the_hash() {
        let base = hash(&GENESIS, &f(1, "id", "deleted", 5));
        let other_prev = [1u8; 32];
        for changed in [
            hash(&other_prev, &f(1, "id", "deleted", 5)),
            hash(&GENESIS, &f(2, "id", "deleted", 5)),
            hash(&GENESIS, &f(1, "id2", "deleted", 5)),
            hash(&GENESIS, &f(1, "id", "purged", 5)),
            hash(&GENESIS, &f(1, "id", "deleted", 6)),
        ] {
            assert_ne!(base, changed);
        }
        // Field boundaries: "ab"+"c" vs "a"+"bc".
        assert_ne!(
            canonical_bytes(&GENESIS, &f(1, "ab", "c", 0)),
            canonical_bytes(&GENESIS, &f(1, "a", "bc", 0))
        );
    }

    #[test]
    fn mac_binds_key_and_key_id() {
        let h = hash(&GENESIS, &f(1, "id", "deleted", 5));
        let k = SecretKey::from_bytes(vec![7; 32]);
        let tag = seal(&k, "e1", &h);
        assert!(mac_ok(&k, "e1", &h, &tag));
        assert!(!mac_ok(&k, "e2", &h, &tag), "relabelled key id");
        assert!(!mac_ok(&SecretKey::from_bytes(vec![8; 32]), "e1", &h, &tag));
        let mut other = h;
        other[0] ^= 1;
        assert!(!mac_ok(&k, "e1", &other, &tag));
        assert!(!mac_ok(&k, "e1", &h, &tag[..31]));
    }

    #[test]
    fn ranks_order_statuses_and_kinds() {
        assert!(status_rank("quarantined") < Kind::Approved.rank());
        assert_eq!(status_rank("active"), Kind::Approved.rank());
        assert_eq!(status_rank("superseded"), Kind::Superseded.rank());
        assert_eq!(status_rank("deleted"), Kind::Deleted.rank());
        assert!(status_rank("deleted") < Kind::Purged.rank());
        assert!(status_rank("deleted") < Kind::Rejected.rank());
        for kind in [
            Kind::Approved,
            Kind::Superseded,
            Kind::Deleted,
            Kind::Purged,
            Kind::Rejected,
        ] {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
    }
}
