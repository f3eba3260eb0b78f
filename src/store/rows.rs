//! Rows as a backend reads them, and the one place they become entries: every row is checked
//! here — seal, encoding, and freshness against its ledger records — before anything is served.
//! A row that fails is never returned as data: it is reported by id (or by a label when even the
//! id is unreadable) and logged as a security event, never with its content.

use super::ledger;
use super::model::{Entry, Status};
use super::seal::{self, SealedFields};
use crate::keys::{KeySet, SecretKey};

/// A row that verified, or the id (or label) of one that did not.
pub type Checked<T> = std::result::Result<T, String>;

/// A row as read, before verification.
#[derive(Debug, Clone)]
pub struct RawRow {
    /// The entry id.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// The text.
    pub content: String,
    /// The tags as a JSON array (sorted, without repeats, when the row is ours).
    pub tags: String,
    /// Metadata as JSON text.
    pub metadata: Option<String>,
    /// The status as stored.
    pub status: String,
    /// The version it replaced.
    pub supersedes: Option<String>,
    /// Its writer.
    pub principal: String,
    /// Its writer's session.
    pub session_id: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// SHA-256 of the content, as stored.
    pub content_sha256: Vec<u8>,
    /// The entry key it was sealed with.
    pub key_id: String,
    /// The seal.
    pub mac: Vec<u8>,
    /// The highest rank of the row's ledger records (0 without any).
    pub ledger_rank: i64,
}

impl RawRow {
    /// The row a store writes for `entry`, sealed now with `key` (id `key_id`): exactly what a
    /// backend reads back. For bulk loads ([`super::Store::copy_in`]) of new rows.
    ///
    /// # Panics
    /// When the tags cannot be written as JSON (strings always can).
    pub fn sealed(entry: Entry, key_id: &str, key: &SecretKey) -> Self {
        let mac = seal_entry(&entry, key_id, key).mac.to_vec();
        Self {
            tags: serde_json::to_string(&entry.tags).expect("tags are strings"),
            status: entry.status.as_str().into(),
            content_sha256: entry.content_sha256.to_vec(),
            key_id: key_id.into(),
            mac,
            ledger_rank: 0,
            id: entry.id,
            namespace: entry.namespace,
            content: entry.content,
            metadata: entry.metadata,
            supersedes: entry.supersedes,
            principal: entry.principal,
            session_id: entry.session_id,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }

    /// Whether the row is less retired than its ledger records: an older sealed copy put back.
    pub fn rolled_back(&self) -> bool {
        ledger::status_rank(&self.status) < self.ledger_rank
    }

    /// The verified entry, or `None` when its seal fails or its ledger records retire it.
    pub fn verify(self, keys: &KeySet) -> Option<Entry> {
        let rolled_back = self.rolled_back();
        let entry = self.verify_seal(keys)?;
        if rolled_back {
            tracing::warn!(target: "memwarden::security", event = "rollback", id = entry.id, "entry is less retired than its ledger records (an older sealed copy put back) and was withheld");
            return None;
        }
        Some(entry)
    }

    /// The entry if its seal holds, or `None` when anything about the row does not: unknown key,
    /// malformed tags or status, wrong hash or MAC. Says nothing about freshness.
    pub fn verify_seal(self, keys: &KeySet) -> Option<Entry> {
        let key = keys.get(&self.key_id)?;
        let tags: Vec<String> = serde_json::from_str(&self.tags).ok()?;
        let status = Status::parse(&self.status)?;
        let fields = SealedFields {
            key_id: &self.key_id,
            id: &self.id,
            namespace: &self.namespace,
            content: &self.content,
            tags: &tags,
            metadata: self.metadata.as_deref(),
            status: &self.status,
            supersedes: self.supersedes.as_deref(),
            principal: &self.principal,
            session_id: &self.session_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            content_sha256: &self.content_sha256,
        };
        if !tags.windows(2).all(|w| w[0] < w[1]) || !seal::verify(key, &fields, &self.mac) {
            return None;
        }
        Some(Entry {
            id: self.id,
            namespace: self.namespace,
            content: self.content,
            tags,
            metadata: self.metadata,
            status,
            supersedes: self.supersedes,
            principal: self.principal,
            session_id: self.session_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            content_sha256: self.content_sha256.try_into().ok()?,
        })
    }
}

/// An entry sealed for writing: the fields, the key id and the MAC.
#[derive(Debug, Clone)]
pub struct SealedRow<'a> {
    /// The entry.
    pub entry: &'a Entry,
    /// The key it is sealed with (the active one).
    pub key_id: &'a str,
    /// The MAC.
    pub mac: [u8; 32],
}

/// Seals `entry` with `key`: the seal covers every field and the key id (see [`seal`]).
pub fn seal_entry<'a>(entry: &'a Entry, key_id: &'a str, key: &SecretKey) -> SealedRow<'a> {
    let fields = SealedFields {
        key_id,
        id: &entry.id,
        namespace: &entry.namespace,
        content: &entry.content,
        tags: &entry.tags,
        metadata: entry.metadata.as_deref(),
        status: entry.status.as_str(),
        supersedes: entry.supersedes.as_deref(),
        principal: &entry.principal,
        session_id: &entry.session_id,
        created_at: entry.created_at,
        updated_at: entry.updated_at,
        content_sha256: &entry.content_sha256,
    };
    SealedRow {
        entry,
        key_id,
        mac: seal::seal(key, &fields),
    }
}

/// Logs a withheld row by id (never its content).
pub fn withheld_log(id: &str) {
    tracing::warn!(target: "memwarden::security", event = "integrity_failure", id, "entry failed verification and was withheld");
}
