//! The keyring: named entry keys (one active) and the audit key, each at least 32 random bytes.
//!
//! Loading fails closed: a keyring that is not a regular file, that the group or others can read
//! or write, that has a short key, or whose active key is missing is refused with a message that
//! names the problem (never a key byte). Keys never go to argv, env, logs or the DBs.
//! This module holds the key types; [`file`] reads, checks and writes the keyring file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fsafe::FsError;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Key bytes. `Debug` never prints them.
#[derive(Clone)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// Wraps existing key bytes (benchmarks, tests; production keys come from `load`).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// 32 fresh bytes from the OS's CSPRNG.
    pub fn generate() -> Result<Self, KeyringError> {
        let mut bytes = vec![0u8; MIN_KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| KeyringError::Random(e.to_string()))?;
        Ok(Self(bytes))
    }

    /// The key bytes; never to be logged or stored.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Why a keyring was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("cannot read keyring {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path} is not a regular file (a symbolic link is never followed)")]
    NotRegular { path: String },
    #[error("keyring {path} has mode {mode:04o}: group and others must have no access (chmod 600)")]
    Permissions { path: String, mode: u32 },
    #[error("keyring {path} is owned by uid {owner}, neither this process's uid {uid} nor root")]
    Owner { path: String, owner: u32, uid: u32 },
    #[error("keyring {path}: {reason}")]
    Format { path: String, reason: String },
    #[error("keyring {path}: key {key_id:?} is {len} bytes; at least {MIN_KEY_BYTES} are required")]
    ShortKey {
        path: String,
        key_id: String,
        len: usize,
    },
    #[error("keyring {path}: the active {section} key {key_id:?} is not in the keyring")]
    MissingActive {
        path: String,
        section: &'static str,
        key_id: String,
    },
    #[error("cannot get random bytes from the OS: {0}")]
    Random(String),
    #[error("keyring: {0}")]
    Fs(#[from] FsError),
}

/// A named set of keys with one active for new seals.
#[derive(Debug, Clone)]
pub struct KeySet {
    active: String,
    keys: BTreeMap<String, SecretKey>,
}

impl KeySet {
    /// A set holding one fresh key `id`, active.
    pub fn generate(id: &str) -> Result<Self, KeyringError> {
        Ok(Self {
            active: id.to_string(),
            keys: BTreeMap::from([(id.to_string(), SecretKey::generate()?)]),
        })
    }

    /// Adds a fresh key under `<prefix><n>`, n one past the highest in the keyring, and makes it
    /// active; returns the id. An id is never reused after its key is retired: rows in an old
    /// backup name the retired key by id, and must not be checked against a different key.
    pub fn rotate(&mut self, prefix: &str) -> Result<String, KeyringError> {
        let highest = self
            .keys
            .keys()
            .filter_map(|id| id.strip_prefix(prefix)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let id = format!("{prefix}{}", highest + 1);
        self.keys.insert(id.clone(), SecretKey::generate()?);
        self.active = id.clone();
        Ok(id)
    }

    /// Removes a key that is not active. The caller checks that nothing still uses it.
    pub fn retire(&mut self, id: &str) -> Result<(), String> {
        if id == self.active {
            return Err(format!("{id} is the active key"));
        }
        self.keys
            .remove(id)
            .map(drop)
            .ok_or_else(|| format!("no key {id} in the keyring"))
    }

    /// Ids of all keys, active first.
    pub fn ids(&self) -> Vec<String> {
        let mut ids = vec![self.active.clone()];
        ids.extend(self.keys.keys().filter(|k| **k != self.active).cloned());
        ids
    }

    /// The id and key new seals use.
    pub fn active(&self) -> (&str, &SecretKey) {
        // `load` guarantees the active id is present.
        (&self.active, &self.keys[&self.active])
    }

    /// The key with this id, if the keyring still has it.
    pub fn get(&self, id: &str) -> Option<&SecretKey> {
        self.keys.get(id)
    }
}

/// The keyring's lock, released on drop.
#[derive(Debug)]
pub struct KeyringLock {
    _file: fs::File,
}

/// What identifies one version of a keyring file: a save replaces the file (new inode) and a
/// write in place changes its time or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

impl FileStamp {
    /// The stamp of the file at `path`, not following a link.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = fs::symlink_metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            len: m.len(),
        })
    }
}

/// The largest keyring file read (thousands of rotations fit).
pub(crate) const MAX_KEYRING_BYTES: u64 = 1 << 20;

/// Entry keys, audit keys and (from keyrings made since checkpoints exist) the audit signing
/// keys.
#[derive(Debug, Clone)]
pub struct Keyring {
    /// Keys that seal entries in memory.db.
    pub entry: KeySet,
    /// Keys that MAC audit events.
    pub audit: KeySet,
    /// Ed25519 seeds that sign audit checkpoints, when the keyring has them.
    pub audit_signing: Option<KeySet>,
}

/// Whether `id` may name a key: 1 to 32 ASCII letters, digits, `-` or `_`.
pub(crate) fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

mod file;
