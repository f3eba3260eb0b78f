//! Portable export and import of sealed rows (`memwarden export` / `memwarden import`): the
//! line format, and the store's side of both. Rows leave and enter exactly as sealed — same id,
//! same fields, same key id and MAC — and every seal is checked on the way out and on the way
//! in, so a file edited in between is caught by the same check reads use. A row that fails is
//! named by id (or by its line number when even the id is unreadable), never by its content.

use serde::{Deserialize, Serialize};

use super::backend::{CommitError, CommitEvent, WriteTx};
use super::ledger::Kind;
use super::model::{Entry, Status};
use super::rows::{Checked, RawRow, SealedRow, seal_entry};
use super::{Store, seal};
use crate::audit::NewEvent;
use crate::audit::sink::Sink;
use crate::error::Result;
use crate::keys::KeySet;

/// The `format` of a portable export's header line.
pub const FORMAT: &str = "memwarden-export";
/// The format's version; a change to the header or the row fields needs a new one.
pub const VERSION: u32 = 1;

/// The first line of an export: what the file is and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this build writes; others are refused.
    pub version: u32,
    /// The engine the rows came from: `sqlite` or `postgres`.
    pub source_engine: String,
    /// Unix ms when the export started.
    pub exported_at: i64,
}

impl Header {
    /// A header for an export from `engine`, started at `now_ms`.
    pub fn new(engine: &str, now_ms: i64) -> Self {
        Self {
            format: FORMAT.into(),
            version: VERSION,
            source_engine: engine.into(),
            exported_at: now_ms,
        }
    }

    /// Whether this build reads the file the header opens.
    pub fn supported(&self) -> bool {
        self.format == FORMAT && self.version == VERSION
    }
}

/// One sealed row as a line of the file: exactly the fields the seal covers, the content hash
/// and MAC in lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The entry id.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// The content, exactly as sealed (JSON escaping keeps every code point, U+0000 included).
    pub content: String,
    /// The tags, sorted and without repeats.
    pub tags: Vec<String>,
    /// The metadata's canonical JSON text, as sealed (a string, not an object).
    pub metadata: Option<String>,
    /// `active`, `superseded`, `deleted` or `quarantined`.
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
    /// SHA-256 of the content, hex.
    pub content_sha256: String,
    /// The entry key that sealed it.
    pub key_id: String,
    /// HMAC-SHA256 seal, hex.
    pub mac: String,
}

impl Line {
    /// The line for a verified entry and its seal.
    fn of(entry: Entry, key_id: String, mac: &[u8]) -> Self {
        Self {
            content_sha256: hex::encode(entry.content_sha256),
            mac: hex::encode(mac),
            key_id,
            id: entry.id,
            namespace: entry.namespace,
            content: entry.content,
            tags: entry.tags,
            metadata: entry.metadata,
            status: entry.status.as_str().into(),
            supersedes: entry.supersedes,
            principal: entry.principal,
            session_id: entry.session_id,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }

    /// The line as a row read from a store, unverified; `None` when the hex does not decode.
    fn into_raw(self) -> Option<RawRow> {
        Some(RawRow {
            content_sha256: hex::decode(&self.content_sha256).ok()?,
            mac: hex::decode(&self.mac).ok()?,
            tags: serde_json::to_string(&self.tags).ok()?,
            id: self.id,
            namespace: self.namespace,
            content: self.content,
            metadata: self.metadata,
            status: self.status,
            supersedes: self.supersedes,
            principal: self.principal,
            session_id: self.session_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
            key_id: self.key_id,
            ledger_rank: 0,
        })
    }
}

/// A row ready to import: the entry, and the seal it is written with.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The verified (or re-sealed) entry.
    pub entry: Entry,
    /// The key that sealed it.
    pub key_id: String,
    /// The seal.
    pub mac: [u8; 32],
}

/// What an export wrote and refused.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// Rows written.
    pub exported: u64,
    /// Rows the filters passed over.
    pub skipped: u64,
    /// Ids (or labels) of rows that failed verification and were not written.
    pub refused: Vec<String>,
}

impl Store {
    /// Hands every row `keep` accepts to `write` as a [`Line`], after checking its seal and its
    /// ledger records; rows that fail are listed, never written. Streams: one row at a time.
    ///
    /// # Errors
    /// The backend cannot be read, or `write` fails (the first such error stops the export).
    pub fn export_rows(
        &self,
        keep: &dyn Fn(&RawRow) -> bool,
        write: &mut dyn FnMut(&Line) -> std::io::Result<()>,
    ) -> anyhow::Result<ExportReport> {
        let keys = self.verifier.keys();
        let mut report = ExportReport::default();
        let mut failure: Option<std::io::Error> = None;
        self.backend.each_row(&mut |raw| {
            if failure.is_some() {
                return;
            }
            let raw = match raw {
                Ok(raw) if !keep(&raw) => {
                    report.skipped += 1;
                    return;
                }
                Ok(raw) => raw,
                Err(label) => {
                    report.refused.push(label);
                    return;
                }
            };
            let (id, key_id, mac) = (raw.id.clone(), raw.key_id.clone(), raw.mac.clone());
            match raw.verify(&keys) {
                Some(entry) => match write(&Line::of(entry, key_id, &mac)) {
                    Ok(()) => report.exported += 1,
                    Err(e) => failure = Some(e),
                },
                None => {
                    super::rows::withheld_log(&id);
                    report.refused.push(id);
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(report)
    }

    /// The line's row if its seal verifies with the keyring's entry keys (an unknown or
    /// retired key id fails), else its id.
    pub fn check_line(&self, line: Line) -> Checked<Imported> {
        check(&self.verifier.keys(), line)
    }

    /// The line's fields sealed afresh with the active key (see [`ImportTx::reseal_line`]).
    pub fn reseal_line(&self, line: Line) -> Checked<Imported> {
        reseal(&self.verifier.keys(), line)
    }

    /// Opens the one write transaction an import inserts its rows in.
    ///
    /// # Errors
    /// The backend cannot start a write.
    pub fn begin_import(&mut self) -> Result<ImportTx<'_>> {
        Ok(ImportTx {
            tx: self.backend.begin()?,
            keys: self.verifier.keys(),
        })
    }
}

/// An import's write transaction: rows go in unchanged; dropping it writes nothing.
pub struct ImportTx<'s> {
    tx: Box<dyn WriteTx + 's>,
    keys: std::cell::Ref<'s, KeySet>,
}

impl std::fmt::Debug for ImportTx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportTx").finish_non_exhaustive()
    }
}

impl ImportTx<'_> {
    /// The line's row if its seal verifies (see [`Store::check_line`]).
    pub fn check_line(&self, line: Line) -> Checked<Imported> {
        check(&self.keys, line)
    }

    /// The line's fields sealed afresh with the active key (for rows the operator asked to
    /// re-seal), or its id when the fields themselves are malformed (tags out of order, an
    /// unknown status): only a well-formed row can be re-sealed.
    pub fn reseal_line(&self, line: Line) -> Checked<Imported> {
        reseal(&self.keys, line)
    }

    /// Whether a row with this id is already in the store (of any status).
    ///
    /// # Errors
    /// The backend cannot be read.
    pub fn present(&mut self, id: &str) -> Result<bool> {
        Ok(self.tx.load(id)?.is_some())
    }

    /// Inserts the row with its seal, and for a superseded or deleted row the ledger record
    /// that retires it here too: without it, the active copy of the same row (from another
    /// export, or a backup) would be served in its place.
    ///
    /// # Errors
    /// The backend refuses the row.
    pub fn insert(&mut self, row: &Imported) -> Result<()> {
        self.tx.insert(&SealedRow {
            entry: &row.entry,
            key_id: &row.key_id,
            mac: row.mac,
        })?;
        let kind = match row.entry.status {
            Status::Superseded => Kind::Superseded,
            Status::Deleted => Kind::Deleted,
            Status::Active | Status::Quarantined => return Ok(()),
        };
        self.tx
            .record(&self.keys, &row.entry.id, kind, row.entry.updated_at)
    }

    /// Commits the rows together with the import's audit event (audit.db first on SQLite, one
    /// transaction on PostgreSQL): if the event cannot be written, nothing is.
    ///
    /// # Errors
    /// [`CommitError`] says whether the event was written before the failure.
    pub fn commit(self, audit: &mut Sink, event: &NewEvent<'_>) -> Result<(), CommitError> {
        self.tx.commit(Some(CommitEvent {
            event,
            log: audit.file(),
        }))
    }
}

fn check(keys: &KeySet, line: Line) -> Checked<Imported> {
    let id = line.id.clone();
    let raw = line.into_raw().ok_or_else(|| id.clone())?;
    let (key_id, mac) = (raw.key_id.clone(), raw.mac.clone());
    let entry = raw.verify_seal(keys).ok_or_else(|| id.clone())?;
    let mac = mac.try_into().map_err(|_| id)?;
    Ok(Imported { entry, key_id, mac })
}

fn reseal(keys: &KeySet, line: Line) -> Checked<Imported> {
    let status = Status::parse(&line.status).ok_or_else(|| line.id.clone())?;
    let metadata_ok = line
        .metadata
        .as_deref()
        .is_none_or(|m| serde_json::from_str::<serde_json::Value>(m).is_ok_and(|v| v.is_object()));
    if !line.tags.windows(2).all(|w| w[0] < w[1]) || !metadata_ok {
        return Err(line.id);
    }
    let entry = Entry {
        content_sha256: seal::content_sha256(&line.content),
        id: line.id,
        namespace: line.namespace,
        content: line.content,
        tags: line.tags,
        metadata: line.metadata,
        status,
        supersedes: line.supersedes,
        principal: line.principal,
        session_id: line.session_id,
        created_at: line.created_at,
        updated_at: line.updated_at,
    };
    let (key_id, key) = keys.active();
    let mac = seal_entry(&entry, key_id, key).mac;
    Ok(Imported {
        key_id: key_id.to_string(),
        entry,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Edit = Box<dyn Fn(&mut Line)>;

    fn sealed(keys: &KeySet) -> Line {
        let entry = Entry {
            id: "0190d3c4-0000-7000-8000-000000000001".into(),
            namespace: "ops".into(),
            content: "nul \u{0} and caf\u{e9}".into(),
            tags: vec!["a".into(), "b".into()],
            metadata: Some(r#"{"n":3}"#.into()),
            status: Status::Superseded,
            supersedes: None,
            principal: "local".into(),
            session_id: "s1".into(),
            created_at: 1,
            updated_at: 2,
            content_sha256: seal::content_sha256("nul \u{0} and caf\u{e9}"),
        };
        let (key_id, key) = keys.active();
        let mac = seal_entry(&entry, key_id, key).mac;
        Line::of(entry, key_id.to_string(), &mac)
    }

    #[test]
    fn a_line_round_trips_through_json_and_its_seal() {
        let keys = KeySet::generate("e").unwrap();
        let line = sealed(&keys);
        let text = serde_json::to_string(&line).unwrap();
        let back: Line = serde_json::from_str(&text).unwrap();
        assert_eq!(back, line);
        let row = check(&keys, back).unwrap();
        assert_eq!(row.entry.content, "nul \u{0} and caf\u{e9}");
        assert_eq!(hex::encode(row.mac), line.mac);
    }

    #[test]
    fn any_edit_or_another_keyring_fails_and_reseal_makes_it_verify() {
        let keys = KeySet::generate("e").unwrap();
        let line = sealed(&keys);
        let edits: [Edit; 8] = [
            Box::new(|l| l.content.push('!')),
            Box::new(|l| l.namespace = "other".into()),
            Box::new(|l| l.status = "active".into()),
            Box::new(|l| l.tags = vec!["a".into()]),
            Box::new(|l| l.updated_at += 1),
            Box::new(|l| l.key_id = "e9".into()),
            Box::new(|l| l.mac = "zz".into()),
            Box::new(|l| l.content_sha256 = hex::encode([0u8; 32])),
        ];
        for edit in &edits {
            let mut bad = line.clone();
            edit(&mut bad);
            assert_eq!(check(&keys, bad).unwrap_err(), line.id);
        }
        let other = KeySet::generate("e").unwrap();
        assert!(check(&other, line.clone()).is_err());
        let mut edited = line.clone();
        edited.content = "changed".into();
        let resealed = reseal(&keys, edited).unwrap();
        let again = Line::of(resealed.entry, resealed.key_id, &resealed.mac);
        assert!(check(&keys, again).is_ok());
        let mut unsorted = line;
        unsorted.tags = vec!["b".into(), "a".into()];
        assert!(reseal(&keys, unsorted).is_err());
    }

    #[test]
    fn unknown_fields_and_other_versions_are_refused() {
        let keys = KeySet::generate("e").unwrap();
        let mut v = serde_json::to_value(sealed(&keys)).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Line>(v).is_err());
        let mut h = Header::new("sqlite", 0);
        assert!(h.supported());
        h.version = 2;
        assert!(!h.supported());
    }
}
