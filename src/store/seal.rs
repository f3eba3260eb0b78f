//! Canonical encoding v1 of an entry row and its HMAC-SHA256 seal (DESIGN.md §6).
//!
//! The encoding is unambiguous by construction: a version tag first, then every sealed field in a
//! fixed order, each length-prefixed (u64, big-endian), optional fields behind a presence byte,
//! integers as 8 big-endian bytes, tags sorted. The key id is inside the MAC input, so a row cannot
//! be re-labelled to another key. This module must never log or return key bytes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::canon::Canon;
use crate::keys::SecretKey;

type HmacSha256 = Hmac<Sha256>;

/// Domain-separating version tag; a change to the field list or order needs a new tag.
pub const ENTRY_TAG_V1: &[u8] = b"memwarden/entry/v1";

/// Every field of an entry row that the seal covers, borrowed from wherever it lives.
#[derive(Debug, Clone, Copy)]
pub struct SealedFields<'a> {
    pub key_id: &'a str,
    pub id: &'a str,
    pub namespace: &'a str,
    pub content: &'a str,
    /// Must already be sorted and de-duplicated; `encode` checks the order in debug builds.
    pub tags: &'a [String],
    /// The metadata exactly as stored (canonical JSON text), if any.
    pub metadata: Option<&'a str>,
    pub status: &'a str,
    pub supersedes: Option<&'a str>,
    pub principal: &'a str,
    pub session_id: &'a str,
    pub created_at: i64,
    pub updated_at: i64,
    pub content_sha256: &'a [u8],
}

/// SHA-256 of an entry's content, stored beside it.
pub fn content_sha256(content: &str) -> [u8; 32] {
    Sha256::digest(content.as_bytes()).into()
}

/// Feeds the canonical encoding into any byte sink (the MAC, or a Vec in tests).
fn encode(fields: &SealedFields<'_>, sink: &mut impl FnMut(&[u8])) {
    debug_assert!(fields.tags.windows(2).all(|w| w[0] < w[1]));
    let mut c = Canon::new(sink);
    c.bytes(ENTRY_TAG_V1)
        .str(fields.key_id)
        .str(fields.id)
        .str(fields.namespace)
        .str(fields.content)
        .int(fields.tags.len() as i64);
    for tag in fields.tags {
        c.str(tag);
    }
    c.opt(fields.metadata)
        .str(fields.status)
        .opt(fields.supersedes)
        .str(fields.principal)
        .str(fields.session_id)
        .int(fields.created_at)
        .int(fields.updated_at)
        .bytes(fields.content_sha256);
}

/// The canonical encoding as bytes (for tests and fuzzing; sealing streams it instead).
pub fn canonical_bytes(fields: &SealedFields<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(fields, &mut |b| out.extend_from_slice(b));
    out
}

fn mac_for(key: &SecretKey, fields: &SealedFields<'_>) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.bytes()).expect("HMAC accepts keys of any length");
    encode(fields, &mut |b| mac.update(b));
    mac
}

/// HMAC-SHA256 over the canonical encoding of `fields` under `key`.
pub fn seal(key: &SecretKey, fields: &SealedFields<'_>) -> [u8; 32] {
    mac_for(key, fields).finalize().into_bytes().into()
}

/// Constant-time check of `tag` against the fields, plus the stored content hash against the
/// content itself. Any mismatch, of any length, is a failure.
pub fn verify(key: &SecretKey, fields: &SealedFields<'_>, tag: &[u8]) -> bool {
    let hash_ok = content_sha256(fields.content).as_slice() == fields.content_sha256;
    let mac_ok = mac_for(key, fields).verify_slice(tag).is_ok();
    hash_ok & mac_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretKey {
        SecretKey::from_bytes(vec![byte; 32])
    }

    fn sample<'a>(tags: &'a [String], sha: &'a [u8]) -> SealedFields<'a> {
        SealedFields {
            key_id: "k1",
            id: "0190d3c4-0000-7000-8000-000000000001",
            namespace: "default",
            content: "hello",
            tags,
            metadata: Some(r#"{"a":1}"#),
            status: "active",
            supersedes: None,
            principal: "local",
            session_id: "s1",
            created_at: 1,
            updated_at: 1,
            content_sha256: sha,
        }
    }

    #[test]
    fn seal_then_verify_round_trips() {
        let tags = vec!["a".to_string(), "b".to_string()];
        let sha = content_sha256("hello");
        let f = sample(&tags, &sha);
        let tag = seal(&key(7), &f);
        assert!(verify(&key(7), &f, &tag));
    }

    #[test]
    fn any_changed_field_or_key_fails() {
        let tags = vec!["a".to_string()];
        let sha = content_sha256("hello");
        let f = sample(&tags, &sha);
        let tag = seal(&key(7), &f);
        assert!(!verify(&key(8), &f, &tag), "other key");
        let variants: Vec<SealedFields<'_>> = vec![
            SealedFields { key_id: "k2", ..f },
            SealedFields {
                namespace: "other",
                ..f
            },
            SealedFields {
                status: "deleted",
                ..f
            },
            SealedFields {
                metadata: None,
                ..f
            },
            SealedFields {
                supersedes: Some(""),
                ..f
            },
            SealedFields {
                principal: "mallory",
                ..f
            },
            SealedFields { created_at: 2, ..f },
            SealedFields { updated_at: 2, ..f },
            SealedFields { tags: &[], ..f },
        ];
        for v in &variants {
            assert!(!verify(&key(7), v, &tag), "{v:?}");
        }
        let mut flipped = tag;
        flipped[31] ^= 1;
        assert!(!verify(&key(7), &f, &flipped));
        assert!(!verify(&key(7), &f, &tag[..31]));
    }

    #[test]
    fn content_change_fails_even_with_matching_hash() {
        let tags: Vec<String> = vec![];
        let sha = content_sha256("hello");
        let f = sample(&tags, &sha);
        let tag = seal(&key(1), &f);
        let sha2 = content_sha256("hellp");
        let forged = SealedFields {
            content: "hellp",
            content_sha256: &sha2,
            ..f
        };
        assert!(!verify(&key(1), &forged, &tag));
        let stale = SealedFields {
            content: "hellp",
            ..f
        };
        assert!(!verify(&key(1), &stale, &tag));
    }

    #[test]
    fn length_prefixes_keep_field_boundaries() {
        // "ab" + "c" and "a" + "bc" must encode differently.
        let tags: Vec<String> = vec![];
        let sha = content_sha256("x");
        let a = SealedFields {
            namespace: "ab",
            content: "c",
            ..sample(&tags, &sha)
        };
        let b = SealedFields {
            namespace: "a",
            content: "bc",
            ..sample(&tags, &sha)
        };
        assert_ne!(canonical_bytes(&a), canonical_bytes(&b));
        let t1 = vec!["ab".to_string()];
        let t2 = vec!["a".to_string(), "b".to_string()];
        let c = SealedFields {
            tags: &t1,
            ..sample(&tags, &sha)
        };
        let d = SealedFields {
            tags: &t2,
            ..sample(&tags, &sha)
        };
        assert_ne!(canonical_bytes(&c), canonical_bytes(&d));
        let e = SealedFields {
            metadata: None,
            supersedes: Some("x"),
            ..sample(&tags, &sha)
        };
        let g = SealedFields {
            metadata: Some("x"),
            supersedes: None,
            ..sample(&tags, &sha)
        };
        assert_ne!(canonical_bytes(&e), canonical_bytes(&g));
    }
}
