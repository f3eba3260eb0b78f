//! A seal always verifies its own fields; any flipped bit of the tag, any changed field, or
//! another key never does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwarden::keys::SecretKey;
use memwarden::store::seal::{self, SealedFields};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    // Carve fields out of the input.
    let cut = |i: usize| (data[i] as usize) % data.len();
    let (a, b) = (cut(0).min(cut(1)), cut(0).max(cut(1)));
    let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    let namespace = text(&data[..a]);
    let content = text(&data[a..b]);
    let mut tags: Vec<String> = data[b..].split(|&c| c == b',').map(text).collect();
    tags.sort();
    tags.dedup();
    let sha = seal::content_sha256(&content);
    let fields = SealedFields {
        key_id: "e1",
        id: "01234567-89ab-7def-8123-456789abcdef",
        namespace: &namespace,
        content: &content,
        tags: &tags,
        metadata: (data[2] & 1 == 1).then_some("{\"k\":1}"),
        status: "active",
        supersedes: None,
        principal: "local",
        session_id: "s",
        created_at: i64::from(data[3]),
        updated_at: i64::from(data[3]),
        content_sha256: &sha,
    };
    let key = SecretKey::from_bytes(vec![7; 32]);
    let tag = seal::seal(&key, &fields);
    assert!(seal::verify(&key, &fields, &tag));
    let mut flipped = tag;
    flipped[data[0] as usize % 32] ^= 1 << (data[1] % 8);
    assert!(!seal::verify(&key, &fields, &flipped));
    assert!(!seal::verify(
        &SecretKey::from_bytes(vec![8; 32]),
        &fields,
        &tag
    ));
    let other = format!("{content}x");
    let other_sha = seal::content_sha256(&other);
    let changed = SealedFields {
        content: &other,
        content_sha256: &other_sha,
        ..fields
    };
    assert!(!seal::verify(&key, &changed, &tag));
    let moved = SealedFields {
        namespace: "elsewhere-x",
        ..fields
    };
    assert!(namespace == "elsewhere-x" || !seal::verify(&key, &moved, &tag));
});
