//! memory.db: sealed entry rows, their full-text index, and every read verified.
//!
//! The store owns SQL and sealing. Every row it hands out has passed its MAC check and is no
//! less retired than its ledger records say (`ledger`: a seal proves authorship, not freshness);
//! a row that fails either is never returned as data (get → [`Error::Integrity`], search and list
//! count it as withheld). Writes run in `BEGIN IMMEDIATE` so concurrent server processes on one file
//! serialise instead of failing half-way. Only parameterized statements touch input values.

pub mod ledger;
pub mod maintain;
pub mod migrations;
mod read;
pub mod scope;
pub mod seal;

use std::path::Path;
use std::time::Duration;

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::{self as keyring, KeySet};
pub use scope::Scope;
use seal::SealedFields;

/// Lifecycle of an entry (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Quarantined,
    Deleted,
    Superseded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Quarantined => "quarantined",
            Self::Deleted => "deleted",
            Self::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Option<Self> {
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
    pub principal: &'a str,
    pub session_id: &'a str,
}

/// A verified entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub namespace: String,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Option<String>,
    pub status: Status,
    pub supersedes: Option<String>,
    pub principal: String,
    pub session_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub content_sha256: [u8; 32],
}

/// What a new entry holds; tags are normalised (sorted, de-duplicated) by the store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub namespace: String,
    pub content: String,
    pub tags: Vec<String>,
    /// Metadata as JSON text.
    pub metadata: Option<String>,
    /// Active, or quarantined when a content rule says so.
    pub status: Status,
}

/// Decides, from a row's namespace and creation time, whether the caller may touch it: `Ok` or
/// the error to give (NOT_FOUND for a row it cannot see — another namespace, or older than its
/// read window — so ids leak nothing; FORBIDDEN for read-only).
pub type Access<'a> = &'a dyn Fn(&str, i64) -> Result<()>;

/// Per-namespace quotas on every row that still holds content: active and quarantined entries,
/// and the superseded versions and tombstones kept until purge (each holds its content, so a
/// store-then-delete loop or an update loop must not grow the store past its quota).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quota {
    pub max_entries: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// Fields an update replaces; `None` keeps the old value.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub content: Option<String>,
    pub tags: Option<Vec<String>>,
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
    pub entry: Entry,
    pub snippet: String,
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

/// An error from a full-text query. The expressions are ours and always well-formed, so it is
/// the index itself (a damaged FTS5 table): the store cannot serve search, it is not a bug.
fn fts_error(e: rusqlite::Error) -> Error {
    Error::Unavailable(format!("full-text index: {e}"))
}

/// How many of its newest matches the some-words group of a search ranks. Ranking reads which
/// words each candidate holds, so without a bound a query on a common word costs time linear in
/// the store; the bound keeps search flat from a thousand entries to millions, at the price of
/// not reaching some-words matches older than the window (entries holding every word are
/// reached at any age). The window counts matches inside the caller's scope only (namespaces,
/// tags, times), so what other namespaces hold never moves it.
pub const SEARCH_WINDOW: usize = 500;

/// A row that verified, or the id (or rowid label) of one that did not.
type Checked<T> = std::result::Result<T, String>;

/// A verified search match with its snippet.
type MatchRow = Checked<(Entry, String)>;

/// A plain-words query as safe FTS5 expressions (built by `tools::search::fts_query`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FtsQuery {
    /// Every word must occur.
    pub all: String,
    /// Any word may occur; `None` for a one-word query, where it equals `all`.
    pub any: Option<String>,
    /// Each word alone, in query order, without repeats.
    pub words: Vec<String>,
}

/// Search results.
#[derive(Debug, Clone, Default)]
pub struct Hits {
    pub hits: Vec<Hit>,
    pub withheld: usize,
    /// Their ids, for the security record (never for the agent).
    pub withheld_ids: Vec<String>,
}

/// `memwarden verify`'s findings.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
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
    pub ledger: ledger::ChainReport,
}

/// SQLite's `synchronous` setting: FULL survives power loss, NORMAL only process crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

/// How the store opens memory.db.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    /// Process-wide cap on SQLite's heap (`PRAGMA hard_heap_limit`).
    pub heap_limit: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(10),
            heap_limit: None,
        }
    }
}

/// Why memory.db could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot open memory.db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Migration(#[from] migrations::MigrationError),
}

const COLUMNS: &str = concat!(
    "entries.id, entries.namespace, entries.content, entries.tags, entries.metadata, \
     entries.status, entries.supersedes, entries.principal, entries.session_id, \
     entries.created_at, entries.updated_at, entries.content_sha256, entries.key_id, \
     entries.mac, ",
    ledger::rank_sql!(),
    ", entries.rowid"
);
const COLUMN_COUNT: usize = 16;

/// A row as read, before verification.
struct RawRow {
    id: String,
    namespace: String,
    content: String,
    tags: String,
    metadata: Option<String>,
    status: String,
    supersedes: Option<String>,
    principal: String,
    session_id: String,
    created_at: i64,
    updated_at: i64,
    content_sha256: Vec<u8>,
    key_id: String,
    mac: Vec<u8>,
    /// The highest rank of the row's ledger records (0 without any).
    ledger_rank: i64,
}

impl RawRow {
    /// Reads a row. A column without its expected type or encoding (a hand edit can store a
    /// blob where text belongs) makes the whole row fail verification, named by its id or, if
    /// even that is unreadable, its rowid — it must never abort a whole page.
    fn read(row: &Row<'_>) -> Result<Self, String> {
        Self::read_typed(row).map_err(|_| {
            row.get::<_, String>(0).unwrap_or_else(|_| {
                format!(
                    "rowid:{}",
                    row.get::<_, i64>(COLUMN_COUNT - 1).unwrap_or(-1)
                )
            })
        })
    }

    fn read_typed(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            namespace: row.get(1)?,
            content: row.get(2)?,
            tags: row.get(3)?,
            metadata: row.get(4)?,
            status: row.get(5)?,
            supersedes: row.get(6)?,
            principal: row.get(7)?,
            session_id: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
            content_sha256: row.get(11)?,
            key_id: row.get(12)?,
            mac: row.get(13)?,
            ledger_rank: row.get::<_, Option<i64>>(14)?.unwrap_or(0),
        })
    }

    /// Whether the row is less retired than its ledger records: an older sealed copy put back.
    fn rolled_back(&self) -> bool {
        ledger::status_rank(&self.status) < self.ledger_rank
    }

    /// The verified entry, or `None` when its seal fails or its ledger records retire it.
    fn verify(self, keys: &KeySet) -> Option<Entry> {
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
    fn verify_seal(self, keys: &KeySet) -> Option<Entry> {
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

fn withheld_log(id: &str) {
    tracing::warn!(target: "memwarden::security", event = "integrity_failure", id, "entry failed verification and was withheld");
}

/// Sorted, de-duplicated tags: the one order the seal and the index see.
pub fn normalize_tags(mut tags: Vec<String>) -> Vec<String> {
    tags.sort();
    tags.dedup();
    tags
}

/// An open memory.db with the entry keys.
pub struct Store {
    conn: Connection,
    keys: KeySet,
    quota: Quota,
    /// The keyring file the keys came from, and the version read, when the store should follow
    /// rotations while it runs (see [`Store::refresh_keys`]).
    key_source: Option<(std::path::PathBuf, keyring::FileStamp)>,
    /// Set when a read met a row sealed with a key id this store does not hold (see
    /// [`Store::take_unknown_key`]).
    unknown_key: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) memory.db, applies the pragmas and migrations.
    pub fn open(path: &Path, keys: KeySet, options: StoreOptions) -> Result<Self, OpenError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let mut conn = Connection::open_with_flags(path, flags)?;
        Self::configure(&conn, options)?;
        migrations::migrate(&mut conn, &|tx, version| {
            if version == migrations::LEDGER_VERSION {
                ledger::backfill(tx, &keys)?;
            }
            Ok(())
        })?;
        migrations::check_schema(&conn)?;
        Ok(Self {
            conn,
            keys,
            quota: Quota::default(),
            key_source: None,
            unknown_key: Default::default(),
        })
    }

    /// Follows the keyring at `path` (the one the keys were read from): each
    /// [`Store::refresh_keys`] rereads it when it has changed.
    pub fn watch_keyring(&mut self, path: &Path) -> std::io::Result<()> {
        self.key_source = Some((path.to_path_buf(), keyring::FileStamp::of(path)?));
        Ok(())
    }

    /// Rereads a followed keyring that changed since it was read, so a long session never
    /// seals with a key the keyring no longer has as active, and can verify rows sealed with a
    /// newer key. A keyring that changed and cannot be read refuses the call (fail closed).
    pub fn refresh_keys(&mut self) -> Result<()> {
        let Some((path, stamp)) = &self.key_source else {
            return Ok(());
        };
        let unavailable = |what: &str| Error::Unavailable(format!("keyring {what}"));
        let now = keyring::FileStamp::of(path).map_err(|_| unavailable("vanished"))?;
        if now == *stamp {
            return Ok(());
        }
        let fresh = keyring::Keyring::load(path).map_err(|_| unavailable("unreadable"))?;
        if fresh.entry.active().0 != self.keys.active().0 {
            tracing::info!(target: "memwarden::security", event = "keyring_reloaded",
                from = self.keys.active().0, to = fresh.entry.active().0,
                "the keyring changed: sealing with its active key");
        }
        self.keys = fresh.entry;
        self.key_source = Some((path.clone(), now));
        Ok(())
    }

    /// A read row, verified; notes a key id this store does not hold.
    fn verified(&self, raw: RawRow) -> Option<Entry> {
        if self.keys.get(&raw.key_id).is_none() {
            self.unknown_key.set(true);
        }
        raw.verify(&self.keys)
    }

    /// Whether a read since the last call met a row sealed with a key id this store does not
    /// hold (and forgets it). A session open across `keys rotate` + `reseal` can meet rows
    /// sealed with a key newer than its keyring before the file's change is seen.
    pub fn take_unknown_key(&self) -> bool {
        self.unknown_key.replace(false)
    }

    /// Rereads a followed keyring whatever its stamp says. True when it now holds a key id the
    /// store did not have, so a read that met an unknown key id is worth running again.
    pub fn reload_keys(&mut self) -> Result<bool> {
        let Some((path, _)) = &self.key_source else {
            return Ok(false);
        };
        let path = path.clone();
        let stamp = keyring::FileStamp::of(&path)
            .map_err(|_| Error::Unavailable("keyring vanished".into()))?;
        let fresh = keyring::Keyring::load(&path)
            .map_err(|_| Error::Unavailable("keyring unreadable".into()))?;
        let known = self.keys.ids();
        let new = fresh.entry.ids().iter().any(|id| !known.contains(id));
        tracing::info!(target: "memwarden::security", event = "keyring_reloaded", new_keys = new,
            "a row named a key id this session did not hold: keyring reread");
        self.keys = fresh.entry;
        self.key_source = Some((path, stamp));
        Ok(new)
    }

    /// Sets the per-namespace quotas checked on every insert.
    pub fn set_quota(&mut self, quota: Quota) {
        self.quota = quota;
    }

    /// Opens an existing memory.db read-only (for `verify`); no migrations run.
    pub fn open_read_only(path: &Path, keys: KeySet) -> Result<Self, OpenError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(StoreOptions::default().busy_timeout)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != migrations::CURRENT_VERSION {
            return Err(migrations::MigrationError::TooNew { found: version }.into());
        }
        migrations::check_schema(&conn)?;
        Ok(Self {
            conn,
            keys,
            quota: Quota::default(),
            key_source: None,
            unknown_key: Default::default(),
        })
    }

    fn configure(conn: &Connection, options: StoreOptions) -> rusqlite::Result<()> {
        conn.busy_timeout(options.busy_timeout)?;
        if let Some(limit) = options.heap_limit {
            // Our own integer, never input; the pragma takes no parameters.
            let _: i64 = conn.query_row(&format!("PRAGMA hard_heap_limit = {limit}"), [], |r| {
                r.get(0)
            })?;
        }
        crate::sqlite_file::set_wal(conn, options.busy_timeout)?;
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; PRAGMA trusted_schema = OFF; \
             PRAGMA temp_store = MEMORY;"
        ))
    }

    fn seal_row(&self, entry: &Entry) -> (String, [u8; 32]) {
        let (key_id, key) = self.keys.active();
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
        (key_id.to_string(), seal::seal(key, &fields))
    }

    fn insert_row(&self, tx: &Connection, entry: &Entry) -> Result<()> {
        let (key_id, mac) = self.seal_row(entry);
        let tags =
            serde_json::to_string(&entry.tags).map_err(|e| Error::Internal(e.to_string()))?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO entries (id, namespace, content, tags, metadata, status, supersedes, \
             principal, session_id, created_at, updated_at, content_sha256, key_id, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                entry.id,
                entry.namespace,
                entry.content,
                tags,
                entry.metadata,
                entry.status.as_str(),
                entry.supersedes,
                entry.principal,
                entry.session_id,
                entry.created_at,
                entry.updated_at,
                &entry.content_sha256[..],
                key_id,
                &mac[..],
            ])?;
        // A trigger answering RAISE(IGNORE) would make this a silent no-op: fail closed.
        if inserted != 1 {
            return Err(Error::Internal(format!("insert touched {inserted} rows")));
        }
        Ok(())
    }

    /// Re-seals an existing row after a status change.
    fn reseal_status(&self, tx: &Connection, entry: &Entry) -> Result<()> {
        let (key_id, mac) = self.seal_row(entry);
        let changed = tx
            .prepare_cached(
                "UPDATE entries SET status = ?2, updated_at = ?3, key_id = ?4, mac = ?5 WHERE id = ?1",
            )?
            .execute(params![
                entry.id,
                entry.status.as_str(),
                entry.updated_at,
                key_id,
                &mac[..]
            ])?;
        if changed != 1 {
            return Err(Error::Internal(format!("reseal touched {changed} rows")));
        }
        Ok(())
    }

    /// Stores a new active entry and returns it as sealed.
    ///
    /// `before_commit` runs inside the write transaction, after the row is in place and before
    /// it commits: the audit append goes there (DESIGN.md §3, audit before commit). If it fails,
    /// the transaction rolls back and nothing is stored.
    pub fn insert(
        &mut self,
        author: Author<'_>,
        new: NewEntry,
        now_ms: i64,
        before_commit: impl FnOnce(&Entry) -> Result<()>,
    ) -> Result<Entry> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let (created_at, id) = Self::stamp(&tx, now_ms)?;
        let entry = Entry {
            id,
            content_sha256: seal::content_sha256(&new.content),
            namespace: new.namespace,
            content: new.content,
            tags: normalize_tags(new.tags),
            metadata: new.metadata,
            status: new.status,
            supersedes: None,
            principal: author.principal.to_string(),
            session_id: author.session_id.to_string(),
            created_at,
            updated_at: created_at,
        };
        self.check_quota(&tx, &entry.namespace, entry.content.len())?;
        self.insert_row(&tx, &entry)?;
        before_commit(&entry)?;
        tx.commit()?;
        Ok(entry)
    }

    /// The creation time and id of a row about to be inserted in `tx` (which holds the write
    /// lock): now, or the newest row's time when the clock is behind it (another server's write
    /// committed first, or the clock stepped back). So row ids grow with `created_at` and
    /// since/until are row-id ranges (see [`scope`]). The id is a UUIDv7 of that same
    /// millisecond, so ids sort the same way.
    fn stamp(tx: &Connection, now_ms: i64) -> Result<(i64, String)> {
        let newest: Option<i64> = tx
            .prepare_cached("SELECT created_at FROM entries ORDER BY rowid DESC LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let at = newest.map_or(now_ms, |n| n.max(now_ms)).max(0);
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            (at / 1000) as u64,
            ((at % 1000) * 1_000_000) as u32,
        );
        Ok((at, uuid::Uuid::new_v7(ts).to_string()))
    }

    /// Refuses an insert that would take the namespace over its quota. Counted inside the
    /// write transaction, so concurrent writers cannot both squeeze past the limit.
    fn check_quota(&self, tx: &Connection, namespace: &str, bytes: usize) -> Result<()> {
        let Quota {
            max_entries,
            max_bytes,
        } = self.quota;
        if max_entries.is_none() && max_bytes.is_none() {
            return Ok(());
        }
        let (count, used): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(length(CAST(content AS BLOB))), 0) FROM entries \
             WHERE namespace = ?1",
            [namespace],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let Some(max) = max_entries
            && count as u64 >= max
        {
            return Err(Error::TooLarge {
                what: "the namespace's entry quota",
                actual: count as usize + 1,
                limit: max as usize,
            });
        }
        if let Some(max) = max_bytes
            && used as u64 + bytes as u64 > max
        {
            return Err(Error::TooLarge {
                what: "the namespace's content quota",
                actual: used as usize + bytes,
                limit: max as usize,
            });
        }
        Ok(())
    }

    fn load_raw(conn: &Connection, id: &str) -> Result<Option<Result<RawRow, String>>> {
        let sql = format!("SELECT {COLUMNS} FROM entries WHERE id = ?1");
        Ok(conn
            .prepare_cached(&sql)?
            .query_row([id], |r| Ok(RawRow::read(r)))
            .optional()?)
    }

    /// Loads and verifies one row, whatever its status. A row that fails verification is
    /// [`Error::Integrity`]; a missing one [`Error::NotFound`].
    fn load_verified(&self, conn: &Connection, id: &str, access: Access<'_>) -> Result<Entry> {
        let raw = Self::load_raw(conn, id)?.ok_or(Error::NotFound)?;
        // Visibility is checked before the seal, so a foreign or out-of-window row — tampered
        // or not — is just "not found".
        if let Ok(raw) = &raw {
            access(&raw.namespace, raw.created_at)?;
        }
        raw.ok().and_then(|raw| self.verified(raw)).ok_or_else(|| {
            withheld_log(id);
            Error::Integrity
        })
    }

    /// One entry by id. Active and superseded versions are readable (history); deleted and
    /// quarantined ones are not found.
    pub fn get(&self, id: &str, access: Access<'_>) -> Result<Entry> {
        let entry = self.load_verified(&self.conn, id, access)?;
        match entry.status {
            Status::Active | Status::Superseded => Ok(entry),
            Status::Deleted | Status::Quarantined => Err(Error::NotFound),
        }
    }

    /// Writes a new version of an active entry; the old one becomes superseded. Returns the new
    /// version. `before_commit` as for [`Store::insert`].
    pub fn update(
        &mut self,
        author: Author<'_>,
        id: &str,
        changes: Changes,
        now_ms: i64,
        access: Access<'_>,
        before_commit: impl FnOnce(&Entry) -> Result<()>,
    ) -> Result<Entry> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut old = self.load_verified(&tx, id, access)?;
        match old.status {
            Status::Active => {}
            Status::Superseded => {
                return Err(Error::InvalidArgument(
                    "this version has been superseded; update the latest version".into(),
                ));
            }
            Status::Deleted | Status::Quarantined => return Err(Error::NotFound),
        }
        let content = changes.content.unwrap_or_else(|| old.content.clone());
        let (created_at, new_id) = Self::stamp(&tx, now_ms)?;
        let new = Entry {
            id: new_id,
            namespace: old.namespace.clone(),
            content_sha256: seal::content_sha256(&content),
            content,
            tags: changes
                .tags
                .map(normalize_tags)
                .unwrap_or_else(|| old.tags.clone()),
            metadata: changes.metadata.or_else(|| old.metadata.clone()),
            status: changes.status.unwrap_or(Status::Active),
            supersedes: Some(old.id.clone()),
            principal: author.principal.to_string(),
            session_id: author.session_id.to_string(),
            created_at,
            updated_at: created_at,
        };
        // The old version stays until purge: the new one adds a row and all of its content.
        self.check_quota(&tx, &new.namespace, new.content.len())?;
        old.status = Status::Superseded;
        old.updated_at = now_ms;
        self.reseal_status(&tx, &old)?;
        ledger::append(&tx, &self.keys, &old.id, ledger::Kind::Superseded, now_ms)?;
        self.insert_row(&tx, &new)?;
        before_commit(&new)?;
        tx.commit()?;
        Ok(new)
    }

    /// Tombstones an active entry: it disappears from get, search and list, but its content stays
    /// until purge so an operator can restore it.
    /// `before_commit` as for [`Store::insert`].
    pub fn delete(
        &mut self,
        id: &str,
        now_ms: i64,
        access: Access<'_>,
        before_commit: impl FnOnce(&Entry) -> Result<()>,
    ) -> Result<Entry> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut entry = self.load_verified(&tx, id, access)?;
        if entry.status != Status::Active {
            return Err(Error::NotFound);
        }
        entry.status = Status::Deleted;
        entry.updated_at = now_ms;
        self.reseal_status(&tx, &entry)?;
        ledger::append(&tx, &self.keys, &entry.id, ledger::Kind::Deleted, now_ms)?;
        before_commit(&entry)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Checks every row's seal and its status against its ledger records, and walks the
    /// ledger's chain.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let sql = format!("SELECT {COLUMNS} FROM entries ORDER BY rowid");
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut report = VerifyReport::default();
        while let Some(row) = rows.next()? {
            report.checked += 1;
            match RawRow::read(row) {
                Ok(raw) => {
                    let (id, status) = (raw.id.clone(), raw.status.clone());
                    let own = ledger::status_rank(&status);
                    if raw.rolled_back() {
                        report.rolled_back.push((id.clone(), status.clone()));
                    } else if own > raw.ledger_rank && own >= ledger::Kind::Superseded.rank() {
                        report.unrecorded.push((id.clone(), status.clone()));
                    }
                    if raw.verify_seal(&self.keys).is_none() {
                        report.failed.push(id.clone());
                    }
                    report.statuses.insert(id, status);
                }
                Err(label) => {
                    // Present, if unreadable: not to be taken for a missing entry.
                    report.statuses.insert(label.clone(), "unreadable".into());
                    report.failed.push(label);
                }
            }
        }
        report.ledger = ledger::check_chain(&self.conn, &self.keys)?;
        Ok(report)
    }

    /// Admits a new session of `principal` if fewer than `per_hour` started in the last hour.
    /// Kept in memory.db, so restarting the server or reconnecting resets nothing.
    pub fn admit_session(&mut self, principal: &str, now_ms: i64, per_hour: u32) -> Result<bool> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let hour_ago = now_ms - 3_600_000;
        tx.execute(
            "DELETE FROM session_starts WHERE started_at < ?1",
            [hour_ago],
        )?;
        let n: i64 = tx.query_row(
            "SELECT count(*) FROM session_starts WHERE principal = ?1 AND started_at >= ?2",
            params![principal, hour_ago],
            |r| r.get(0),
        )?;
        if n >= i64::from(per_hour) {
            return Ok(false);
        }
        let inserted = tx.execute(
            "INSERT INTO session_starts (principal, started_at) VALUES (?1, ?2)",
            params![principal, now_ms],
        )?;
        if inserted != 1 {
            return Err(Error::Internal(format!("insert touched {inserted} rows")));
        }
        tx.commit()?;
        Ok(true)
    }

    /// Quarantined entries, verified (rows that fail are left out and logged).
    pub fn quarantined(&self) -> Result<Vec<Entry>> {
        let sql = format!("SELECT {COLUMNS} FROM entries WHERE status = 'quarantined' ORDER BY id");
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            match RawRow::read(row)
                .ok()
                .and_then(|raw| raw.verify(&self.keys))
            {
                Some(e) => out.push(e),
                None => withheld_log("quarantined row"),
            }
        }
        Ok(out)
    }

    /// One entry of any status, verified (operator use: review).
    pub fn get_any(&self, id: &str) -> Result<Entry> {
        self.load_verified(&self.conn, id, &|_, _| Ok(()))
    }

    /// Releases a quarantined entry: it becomes active (re-sealed) and visible to agents.
    pub fn approve(&mut self, id: &str, now_ms: i64) -> Result<Entry> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut entry = self.load_verified(&tx, id, &|_, _| Ok(()))?;
        if entry.status != Status::Quarantined {
            return Err(Error::InvalidArgument(format!("{id} is not quarantined")));
        }
        entry.status = Status::Active;
        entry.updated_at = now_ms;
        self.reseal_status(&tx, &entry)?;
        // Recorded, so the quarantined copy put back is not taken for an entry still in review.
        ledger::append(&tx, &self.keys, &entry.id, ledger::Kind::Approved, now_ms)?;
        tx.commit()?;
        Ok(entry)
    }

    /// Drops a quarantined entry for good.
    pub fn reject_quarantined(&mut self, id: &str, now_ms: i64) -> Result<Entry> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let entry = self.load_verified(&tx, id, &|_, _| Ok(()))?;
        if entry.status != Status::Quarantined {
            return Err(Error::InvalidArgument(format!("{id} is not quarantined")));
        }
        ledger::append(&tx, &self.keys, id, ledger::Kind::Rejected, now_ms)?;
        tx.execute("DELETE FROM entries WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(entry)
    }

    /// Retention: deletes entries created before `older_than` (any status) and tombstones
    /// deleted before `tombstones_before`, each with a ledger record so that a copy put back is
    /// never served. Returns (entries removed, tombstones removed).
    pub fn purge(
        &mut self,
        older_than: Option<i64>,
        tombstones_before: Option<i64>,
        now_ms: i64,
    ) -> Result<(u64, u64)> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut removed = 0;
        let mut tombstones = 0;
        if let Some(t) = tombstones_before {
            tombstones =
                self.purge_where(&tx, "status = 'deleted' AND updated_at < ?1", t, now_ms)?;
        }
        if let Some(t) = older_than {
            removed = self.purge_where(&tx, "created_at < ?1", t, now_ms)?;
        }
        tx.commit()?;
        Ok((removed, tombstones))
    }

    /// Records and deletes the rows matching `condition` (our own SQL; `?1` is `bound`).
    fn purge_where(
        &self,
        tx: &Connection,
        condition: &str,
        bound: i64,
        now_ms: i64,
    ) -> Result<u64> {
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT id FROM entries WHERE {condition} ORDER BY rowid"
            ))?;
            let mapped = stmt.query_map([bound], |r| r.get(0))?;
            mapped.collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            ledger::append(tx, &self.keys, id, ledger::Kind::Purged, now_ms)?;
        }
        let n = tx.execute(&format!("DELETE FROM entries WHERE {condition}"), [bound])?;
        if n != ids.len() {
            return Err(Error::Internal(format!(
                "purge recorded {} rows and deleted {n}",
                ids.len()
            )));
        }
        Ok(n as u64)
    }

    /// Rows and ledger records still sealed with key `key_id`.
    pub fn rows_sealed_with(&self, key_id: &str) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT (SELECT count(*) FROM entries WHERE key_id = ?1) \
             + (SELECT count(*) FROM ledger WHERE key_id = ?1)",
            [key_id],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Re-seals up to `batch` rows, then ledger records, not sealed with the active key, in one
    /// transaction. A row or record that does not verify under its own key (or a row its records
    /// retire) is left alone and reported: re-sealing it would launder the tampering. Returns
    /// (re-sealed, ids that failed; records as `ledger:SEQ`). Resumable: run it again.
    pub fn reseal_batch(&mut self, batch: usize, skip: &[String]) -> Result<(usize, Vec<String>)> {
        let active = self.keys.active().0.to_string();
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let sql =
            format!("SELECT {COLUMNS} FROM entries WHERE key_id != ?1 ORDER BY rowid LIMIT ?2");
        let rows: Vec<Result<RawRow, String>> = {
            let mut stmt = tx.prepare(&sql)?;
            let mapped = stmt.query_map(params![active, (batch + skip.len()) as i64], |r| {
                Ok(RawRow::read(r))
            })?;
            mapped.collect::<rusqlite::Result<_>>()?
        };
        let mut resealed = 0;
        let mut failed = Vec::new();
        for raw in rows {
            if resealed >= batch {
                break;
            }
            let (label, entry) = match raw {
                Ok(raw) => (raw.id.clone(), raw.verify(&self.keys)),
                Err(label) => (label, None),
            };
            if skip.contains(&label) {
                continue;
            }
            match entry {
                Some(entry) => {
                    self.reseal_status(&tx, &entry)?;
                    resealed += 1;
                }
                None => failed.push(label),
            }
        }
        if resealed < batch {
            let (n, bad) = ledger::reseal_batch(&tx, &self.keys, batch - resealed, skip)?;
            resealed += n;
            failed.extend(bad);
        }
        tx.commit()?;
        Ok((resealed, failed))
    }

    /// Every entry id, whatever its status (for reconciliation with the audit log).
    pub fn all_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT id FROM entries")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// Ids of rows whose status column says active (verified or not).
    pub fn active_ids(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM entries WHERE status = 'active'")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// Closes the connection, reporting what SQLite says about it.
    pub fn close(self) -> rusqlite::Result<()> {
        self.conn.close().map_err(|(_, e)| e)
    }

    /// Number of rows of any status (for tests and tools that report sizes).
    pub fn count_rows(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}
