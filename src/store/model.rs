//! The store's data model, shared by every backend: entries and their lifecycle, what a write
//! changes, what a read asks for (filters, plain-word queries) and what it gets back (pages,
//! hits, withheld rows). No storage engine's types appear here.

use serde::Serialize;

use super::scope::Scope;

/// Lifecycle of an entry (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Served by get, search and list.
    Active,
    /// Held back by a content rule until an operator approves or rejects it.
    Quarantined,
    /// Tombstoned by delete; its content stays until purge.
    Deleted,
    /// Replaced by a newer version (readable by id, as history).
    Superseded,
}

impl Status {
    /// The status as stored and sealed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Quarantined => "quarantined",
            Self::Deleted => "deleted",
            Self::Superseded => "superseded",
        }
    }

    /// A stored status, or `None` for anything else (a row that then fails verification).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => Self::Active,
            "quarantined" => Self::Quarantined,
            "deleted" => Self::Deleted,
            "superseded" => Self::Superseded,
            _ => return None,
        })
    }
}

/// Who is writing: decided by the server, never by tool input.
#[derive(Debug, Clone, Copy)]
pub struct Author<'a> {
    /// The principal the server decided on.
    pub principal: &'a str,
    /// The session the write came from.
    pub session_id: &'a str,
}

/// A verified entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A UUIDv7: ids sort by creation time.
    pub id: String,
    /// The namespace it lives in.
    pub namespace: String,
    /// The text, as stored (after redaction).
    pub content: String,
    /// Sorted, without repeats.
    pub tags: Vec<String>,
    /// Metadata as compact JSON text.
    pub metadata: Option<String>,
    /// Where it is in its lifecycle.
    pub status: Status,
    /// The version this one replaced.
    pub supersedes: Option<String>,
    /// Who wrote it.
    pub principal: String,
    /// The session that wrote it.
    pub session_id: String,
    /// Unix ms; grows with the store's insertion order.
    pub created_at: i64,
    /// Unix ms of the last status change.
    pub updated_at: i64,
    /// SHA-256 of `content`.
    pub content_sha256: [u8; 32],
}

/// What a new entry holds; tags are normalised (sorted, de-duplicated) by the store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// The namespace, already checked writable.
    pub namespace: String,
    /// The text, after the content rules.
    pub content: String,
    /// The tags, in any order.
    pub tags: Vec<String>,
    /// Metadata as JSON text.
    pub metadata: Option<String>,
    /// Active, or quarantined when a content rule says so.
    pub status: Status,
}

/// Per-namespace quotas on every row that still holds content: active and quarantined entries,
/// and the superseded versions and tombstones kept until purge (each holds its content, so a
/// store-then-delete loop or an update loop must not grow the store past its quota).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quota {
    /// Rows per namespace.
    pub max_entries: Option<u64>,
    /// Content bytes per namespace.
    pub max_bytes: Option<u64>,
}

/// Fields an update replaces; `None` keeps the old value.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New text.
    pub content: Option<String>,
    /// New tags (an empty list clears them).
    pub tags: Option<Vec<String>>,
    /// New metadata as JSON text.
    pub metadata: Option<String>,
    /// Status of the new version (active unless a content rule quarantines it).
    pub status: Option<Status>,
}

/// Filters shared by search and list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The namespaces read.
    pub scope: Scope,
    /// Entries must carry every one of these tags.
    pub tags: Vec<String>,
    /// Inclusive lower bound on created_at (unix ms).
    pub since: Option<i64>,
    /// Exclusive upper bound on created_at (unix ms).
    pub until: Option<i64>,
}

/// A page of verified entries.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Verified entries, newest first.
    pub entries: Vec<Entry>,
    /// Rows in range that failed verification and were not returned.
    pub withheld: usize,
    /// Their ids, for the security record (never for the agent).
    pub withheld_ids: Vec<String>,
    /// For each withheld row, how many of `entries` precede it: a page cut short after entry
    /// `n` leaves the withheld rows at `n` and beyond to the next page.
    pub withheld_at: Vec<usize>,
    /// Present when more entries may follow: the id to continue below.
    pub next_after: Option<String>,
}

/// One search result.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The verified entry.
    pub entry: Entry,
    /// Matched words marked «like this», cut from the verified content.
    pub snippet: String,
    /// Whether it holds every word or some.
    pub matched: Matched,
}

/// Which words of a query a search hit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Matched {
    /// Every word.
    All,
    /// Some of the words, not all.
    Some,
}

/// Search results.
#[derive(Debug, Clone, Default)]
pub struct Hits {
    /// Verified hits, best first.
    pub hits: Vec<Hit>,
    /// Matches that failed verification and were not returned.
    pub withheld: usize,
    /// Their ids, for the security record (never for the agent).
    pub withheld_ids: Vec<String>,
}

/// A query of plain words: every whitespace-separated word is text to look for, never syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    words: Vec<String>,
}

impl Query {
    /// The words of `text`, in order, a word repeated in another case kept once (the index
    /// folds case, and counting it twice would weigh it twice). Control characters separate
    /// words like whitespace does (a NUL could end an engine's expression mid-word). `None`
    /// when there is no word.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words: Vec<String> = Vec::new();
        let mut folded: Vec<String> = Vec::new();
        for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
            let key = word.to_lowercase();
            if !word.is_empty() && !folded.contains(&key) {
                words.push(word.to_string());
                folded.push(key);
            }
        }
        (!words.is_empty()).then_some(Self { words })
    }

    /// The words, in query order, without repeats.
    pub fn words(&self) -> &[String] {
        &self.words
    }
}

/// `memwarden verify`'s findings.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Rows read.
    pub checked: u64,
    /// Rows whose seal fails.
    pub failed: Vec<String>,
    /// Rows less retired than their ledger records: (id, status), an older sealed copy put back.
    pub rolled_back: Vec<(String, String)>,
    /// Superseded or deleted rows without the record of that change: (id, status).
    pub unrecorded: Vec<(String, String)>,
    /// Every row's id and status column (for reconciliation with the audit log).
    pub statuses: std::collections::HashMap<String, String>,
    /// The ledger's chain.
    pub ledger: super::ledger::ChainReport,
    /// Namespaces whose kept quota usage disagrees with their rows.
    pub usage: Vec<UsageDrift>,
    /// The search index against the rows; `None` where the backend keeps no index that can be
    /// checked apart from them.
    pub index: Option<IndexDrift>,
}

/// Where a search index kept beside the rows (PostgreSQL's postings, migration 7) disagrees
/// with the active rows' words: entries were hidden from searches for some of their words, or
/// entries were posted under words they do not hold, by an edit of the index or of rows with
/// its triggers off. Rows stay sealed and verified either way; what a search finds is what
/// changes, until `memwarden maintain` posts the rows again. Counts and ids only: never a word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexDrift {
    /// Active entries missing postings: (entry id, how many of its words).
    pub missing: Vec<(String, u64)>,
    /// Postings no active row holds, by the position they name: (position, how many).
    pub stray: Vec<(i64, u64)>,
}

/// What `memwarden maintain` found of an [`IndexDrift`] and put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexRepair {
    /// What disagreed when it looked.
    pub found: IndexDrift,
    /// Postings inserted for active rows.
    pub inserted: u64,
    /// Stray postings deleted.
    pub deleted: u64,
}

impl IndexDrift {
    /// Nothing disagrees.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.stray.is_empty()
    }
}

/// A namespace whose kept quota usage (the counts migration 6's triggers keep, which every
/// store's quota check reads) disagrees with the rows it holds: the counts were edited, or rows
/// were changed with the triggers off. Quotas are then checked against the wrong numbers, until
/// `memwarden maintain` counts them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDrift {
    /// The namespace.
    pub namespace: String,
    /// Entries and content bytes the kept counts say.
    pub kept: (i64, i64),
    /// Entries and content bytes its rows hold (every status).
    pub held: (i64, i64),
}

/// How durable a commit is: FULL survives power loss, NORMAL only process crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// Every commit reaches the disk before it returns.
    Full,
    /// Commits reach the disk at checkpoints.
    Normal,
}

/// How the store opens.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Commit durability.
    pub synchronous: Synchronous,
    /// Process-wide cap on the engine's heap.
    pub heap_limit: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            heap_limit: None,
        }
    }
}

/// Sorted, de-duplicated tags: the one order the seal and the index see.
pub fn normalize_tags(mut tags: Vec<String>) -> Vec<String> {
    tags.sort();
    tags.dedup();
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_words_fold_repeats_and_split_on_controls() {
        let q = Query::parse("Deploy deploy\u{0}key  DEPLOY").unwrap();
        assert_eq!(q.words(), ["Deploy", "key"]);
        assert_eq!(Query::parse(" \t\u{1}"), None);
    }
}
