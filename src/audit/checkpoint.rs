//! Signed checkpoints of the audit chain: C2SP tlog-checkpoint bodies in C2SP signed notes,
//! Ed25519 (signature type 0x01), and verifier keys in the C2SP vkey text form.
//!
//! A checkpoint names the log (origin), a seq (the "tree size") and the chain hash of the event
//! at that seq (the "root hash"), plus one `time <unix seconds>` extension line:
//!
//! ```text
//! memwarden/audit-log/5d1c0b6a2f6e4e0f9a8b7c6d5e4f3a2b
//! 1000
//! 3q2+7w4tJ3Vp4m6i1kq0f6r3X8qGk7s6H1c0y5b2n9E=
//! time 1767225600
//!
//! — memwarden/audit-key/s1 AbCdEf…
//! ```
//!
//! Anyone holding the public key checks a checkpoint; nobody without the private key makes one.
//! Parsing here is strict and bounded (it reads files an auditor was handed, and the fuzz target
//! `audit_verify` drives it): one spelling of every field, at most [`MAX_NOTE_BYTES`], at most
//! [`MAX_SIGNATURES`] signature lines. Nothing here touches a database.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature type byte of Ed25519 in C2SP signed notes.
const ED25519: u8 = 0x01;
/// The largest note read (ours are about 250 bytes).
pub const MAX_NOTE_BYTES: usize = 16 * 1024;
/// The most signature lines read in one note (C2SP asks verifiers to accept at least 16).
pub const MAX_SIGNATURES: usize = 32;
/// Prefix of the key names this log signs with: `memwarden/audit-key/<key id>`.
pub const KEY_NAME_PREFIX: &str = "memwarden/audit-key/";
/// Prefix of the log's origin: `memwarden/audit-log/<32 hex digits>`.
pub const ORIGIN_PREFIX: &str = "memwarden/audit-log/";
/// Signature line prefix: em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a checkpoint or a verifier key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("not a signed note: {0}")]
    Malformed(String),
    #[error("not a checkpoint: {0}")]
    Body(String),
    #[error("no signature by a known key (signed by: {0})")]
    UnknownKey(String),
    #[error("the signature by {0} does not verify: the checkpoint was altered or forged")]
    BadSignature(String),
    #[error("not a verifier key: {0}")]
    BadKey(String),
}

/// The log's origin line, derived from the hash of its first event: stable for the life of a
/// chain, different for every chain (a new data dir or an `audit reset`), and independent of
/// the host name.
pub fn origin_of(first_hash_hex: &str) -> String {
    let id: String = first_hash_hex.chars().take(32).collect();
    format!("{ORIGIN_PREFIX}{id}")
}

/// The key name of the signing key with this keyring id.
pub fn key_name(key_id: &str) -> String {
    format!("{KEY_NAME_PREFIX}{key_id}")
}

/// C2SP key ID: `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`.
pub fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log it is of (`memwarden/audit-log/<id>`, from event 1's hash).
    pub origin: String,
    /// The seq of the event it signs (the number of events up to and including it).
    pub size: u64,
    /// The chain hash of that event.
    pub hash: [u8; 32],
    /// When it was signed (unix seconds), from the `time` extension line.
    pub time: Option<i64>,
}

impl Checkpoint {
    /// The note text (tlog-checkpoint body), ending in a newline.
    pub fn body(&self) -> String {
        let mut text = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.hash)
        );
        if let Some(t) = self.time {
            text.push_str(&format!("time {t}\n"));
        }
        text
    }

    /// The chain hash as the log stores it (lowercase hex).
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }

    /// Parses a tlog-checkpoint body (the note text, with its final newline).
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let bad = |s: &str| NoteError::Body(s.to_string());
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("the text does not end in a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
            return Err(bad("line 1 (origin) is empty or holds a space or '+'"));
        }
        let size = lines.next().ok_or_else(|| bad("no line 2 (tree size)"))?;
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        let size: u64 = size
            .parse()
            .ok()
            .filter(|_| canonical && size.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("line 2 (tree size) is not a decimal without leading zeros"))?;
        let hash = lines.next().ok_or_else(|| bad("no line 3 (root hash)"))?;
        let hash: [u8; 32] = B64
            .decode(hash)
            .ok()
            .filter(|h| B64.encode(h) == hash)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("line 3 (root hash) is not the base64 of 32 bytes"))?;
        let mut time = None;
        for line in lines {
            match line.strip_prefix("time ") {
                Some(t) if time.is_none() => {
                    let canonical = t == "0" || (!t.starts_with('0') && !t.is_empty());
                    time = Some(
                        t.parse::<i64>()
                            .ok()
                            .filter(|v| {
                                canonical && *v >= 0 && t.bytes().all(|b| b.is_ascii_digit())
                            })
                            .ok_or_else(|| bad("the time line is not `time <unix seconds>`"))?,
                    );
                }
                _ => {
                    return Err(bad(
                        "an extension line other than one `time <unix seconds>`",
                    ));
                }
            }
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            hash,
            time,
        })
    }
}

/// The private half, held by the server.
pub struct Signer {
    name: String,
    key_hash: [u8; 4],
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Checkpoint signers for every key of an `audit_signing` key set, the active one first. The
/// keyring checks that each is a 32-byte seed.
pub fn signers(keys: &crate::keys::KeySet) -> Vec<Signer> {
    keys.ids()
        .iter()
        .filter_map(|id| {
            let seed: &[u8; 32] = keys.get(id)?.bytes().try_into().ok()?;
            Some(Signer::new(id, seed))
        })
        .collect()
}

impl Signer {
    /// From the keyring's 32-byte seed for signing key `key_id`.
    pub fn new(key_id: &str, seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let name = key_name(key_id);
        let key_hash = key_hash(&name, key.verifying_key().as_bytes());
        Self {
            name,
            key_hash,
            key,
        }
    }

    /// The key name in signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key as a C2SP vkey line: `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
    pub fn vkey(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_hash),
            B64.encode(bytes)
        )
    }

    /// The signed note of `checkpoint`.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let sig = self.key.sign(body.as_bytes());
        let mut blob = self.key_hash.to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// One public key an auditor trusts.
#[derive(Debug, Clone)]
pub struct VerifierKey {
    /// The key name the signature lines carry.
    pub name: String,
    /// The C2SP key hash that picks this key for a signature line.
    pub key_hash: [u8; 4],
    key: VerifyingKey,
}

impl VerifierKey {
    /// Parses a C2SP vkey line: `<name>+<8 hex digits>+<base64(0x01 ‖ 32-byte key)>`; the key
    /// id must be the one the name and key give.
    pub fn parse(line: &str) -> Result<Self, NoteError> {
        let bad = |s: &str| NoteError::BadKey(s.to_string());
        // Names hold no '+'; base64 may: the key is everything after the second '+'.
        let mut parts = line.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<base64 key>"));
        };
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad("the name is empty or holds a space"));
        }
        let id: [u8; 4] = (id.len() == 8
            && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| hex::decode(id).ok())
        .flatten()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("the key id is not 8 lowercase hex digits"))?;
        let raw = B64.decode(key).map_err(|_| bad("the key is not base64"))?;
        let [ED25519, rest @ ..] = raw.as_slice() else {
            return Err(bad("not an Ed25519 key (type byte 0x01)"));
        };
        let public: [u8; 32] = rest
            .try_into()
            .map_err(|_| bad("an Ed25519 key is 32 bytes"))?;
        let key =
            VerifyingKey::from_bytes(&public).map_err(|_| bad("not a valid Ed25519 point"))?;
        if key_hash(name, &public) != id {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(Self {
            name: name.to_string(),
            key_hash: id,
            key,
        })
    }
}

/// The public keys an auditor trusts: one vkey a line; blank lines and `#` comments skipped.
#[derive(Debug, Clone, Default)]
pub struct Verifiers {
    keys: Vec<VerifierKey>,
}

impl Verifiers {
    /// Parses a public key file's text.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = VerifierKey::parse(line)
                .map_err(|e| NoteError::BadKey(format!("line {}: {e}", i + 1)))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(NoteError::BadKey("no key in the file".into()));
        }
        Ok(Self { keys })
    }

    /// Verifiers from keys already parsed.
    pub fn from_keys(keys: Vec<VerifierKey>) -> Self {
        Self { keys }
    }

    /// Checks a signed note and returns its checkpoint and the name of the key that signed it.
    /// As C2SP asks: signatures by unknown keys are ignored, a known key's bad signature rejects
    /// the note, and at least one known key must have signed.
    pub fn open(&self, note: &str) -> Result<(Checkpoint, String), NoteError> {
        let (text, sigs) = split_note(note)?;
        let mut signer = None;
        let mut seen = Vec::new();
        for (name, blob) in sigs {
            let Some(key) = self
                .keys
                .iter()
                .find(|k| k.name == name && k.key_hash[..] == blob[..4])
            else {
                seen.push(name.to_string());
                continue;
            };
            let sig: [u8; 64] = blob[4..]
                .try_into()
                .map_err(|_| NoteError::BadSignature(name.to_string()))?;
            key.key
                .verify_strict(text.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| NoteError::BadSignature(name.to_string()))?;
            signer.get_or_insert_with(|| name.to_string());
        }
        let Some(signer) = signer else {
            return Err(NoteError::UnknownKey(if seen.is_empty() {
                "nobody".into()
            } else {
                seen.join(", ")
            }));
        };
        Ok((Checkpoint::parse_body(text)?, signer))
    }
}

/// One signature line: the key name and the decoded key id ‖ signature.
pub type NoteSignature<'a> = (&'a str, Vec<u8>);

/// Splits a signed note into its text (with the final newline) and its signatures (key name,
/// decoded key id ‖ signature), checking the C2SP syntax.
pub fn split_note(note: &str) -> Result<(&str, Vec<NoteSignature<'_>>), NoteError> {
    let bad = |s: &str| NoteError::Malformed(s.to_string());
    if note.len() > MAX_NOTE_BYTES {
        return Err(bad("larger than 16 KiB"));
    }
    if note.bytes().any(|b| b < 0x20 && b != b'\n') {
        return Err(bad("holds a control character"));
    }
    if !note.ends_with('\n') {
        return Err(bad("does not end in a newline"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| bad("no blank line before the signatures"))?;
    let text = &note[..=split];
    let mut sigs = Vec::new();
    for line in note[split + 2..]
        .strip_suffix('\n')
        .unwrap_or("")
        .split('\n')
    {
        if sigs.len() == MAX_SIGNATURES {
            return Err(bad("too many signature lines"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| bad("a signature line does not start with an em dash and a space"))?;
        let (name, sig) = rest
            .split_once(' ')
            .ok_or_else(|| bad("a signature line is not `— <name> <signature>`"))?;
        if name.is_empty() || name.contains(char::is_whitespace) || name.contains('+') {
            return Err(bad("a key name is empty or holds a space or '+'"));
        }
        let blob = B64
            .decode(sig)
            .ok()
            .filter(|b| b.len() >= 5)
            .ok_or_else(|| bad("a signature is not base64 of a key id and a signature"))?;
        sigs.push((name, blob));
    }
    Ok((text, sigs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(id: &str, byte: u8) -> Signer {
        Signer::new(id, &[byte; 32])
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: origin_of(&"ab".repeat(32)),
            size: 42,
            hash: [7; 32],
            time: Some(1_767_225_600),
        }
    }

    #[test]
    fn sign_open_round_trip_and_layout() {
        let s = signer("s1", 1);
        let note = s.sign(&checkpoint());
        let lines: Vec<&str> = note.lines().collect();
        assert_eq!(lines[0], format!("memwarden/audit-log/{}", "ab".repeat(16)));
        assert_eq!(lines[1], "42");
        assert_eq!(lines[2], B64.encode([7u8; 32]));
        assert_eq!(lines[3], "time 1767225600");
        assert_eq!(lines[4], "");
        assert!(lines[5].starts_with("\u{2014} memwarden/audit-key/s1 "));
        let v = Verifiers::parse(&format!("# keys\n{}\n", s.vkey())).unwrap();
        let (cp, by) = v.open(&note).unwrap();
        assert_eq!(cp, checkpoint());
        assert_eq!(by, "memwarden/audit-key/s1");
    }

    #[test]
    fn key_hash_matches_c2sp_formula() {
        let s = signer("s1", 3);
        let vkey = s.vkey();
        let (name, rest) = vkey.split_once('+').unwrap();
        let (id, key) = rest.split_once('+').unwrap();
        let key = B64.decode(key).unwrap();
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update([0x0a]);
        h.update(&key);
        assert_eq!(id, hex::encode(&h.finalize()[..4]));
        assert_eq!(key[0], 0x01);
    }

    #[test]
    fn refuses_flips_unknown_keys_and_bad_bodies() {
        let s = signer("s1", 1);
        let other = signer("s1", 2);
        let note = s.sign(&checkpoint());
        let v = Verifiers::parse(&s.vkey()).unwrap();
        // Any changed byte of the text fails.
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(v.open(&forged), Err(NoteError::BadSignature(_))));
        // A same-named key that is not ours is ignored, so nobody known signed.
        let by_other = other.sign(&checkpoint());
        assert!(matches!(v.open(&by_other), Err(NoteError::UnknownKey(_))));
        // Signed by both: ours decides.
        let both = format!("{}{}", note, by_other.lines().last().unwrap());
        assert!(v.open(&format!("{both}\n")).is_ok());
        for body in ["o\n042\nAA==\n", "o\n1\nAAAA\n", "o\n1\n", "o p\n1\nAA==\n"] {
            assert!(Checkpoint::parse_body(body).is_err(), "{body:?}");
        }
        let mut cp = checkpoint();
        cp.time = None;
        assert!(Checkpoint::parse_body(&format!("{}x y\n", cp.body())).is_err());
        assert!(VerifierKey::parse(&s.vkey().replacen("+", "+0", 1)).is_err());
        // Keys whose base64 holds '+' parse (the key is all after the second '+').
        for b in 0..=255u8 {
            let k = signer("s9", b);
            assert!(VerifierKey::parse(&k.vkey()).is_ok(), "{}", k.vkey());
        }
    }
}
