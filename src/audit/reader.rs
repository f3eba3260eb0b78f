//! The auditor's read API: one audit.db opened read-only and what the offline tools ask of it
//! (the head, verification, events, the latest signed checkpoint). It never writes, never opens
//! memory.db, and hands out no SQLite type: the CLI reads the log only through [`AuditReader`].

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::query::{Event, Filter};
use super::verify::{Checks, Report};
use super::{AuditError, Head};

/// An audit.db opened read-only (see [`super::open_ro`]).
pub struct AuditReader {
    conn: Connection,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader").finish_non_exhaustive()
    }
}

impl AuditReader {
    /// Opens `path` for reading only, as an auditor would: a copy, possibly in a read-only
    /// directory, without memory.db.
    ///
    /// # Errors
    /// A link in the path, no file or an empty one, a pending WAL in a read-only directory, a
    /// schema this binary does not know or one holding stray objects.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Ok(Self {
            conn: super::open_ro(path)?,
        })
    }

    /// The head of the chain (seq 0 and the genesis hash for an empty log).
    pub fn head(&self) -> Result<Head, AuditError> {
        super::append::head(&self.conn)
    }

    /// Walks the whole chain and makes every check `checks` asks for.
    pub fn verify(&self, checks: &Checks<'_>) -> Result<Report, AuditError> {
        super::verify::verify_with(&self.conn, checks)
    }

    /// Hands each event matching `filter` to `each`, in seq order; `with_hashes` adds
    /// prev_hash, hash and mac. Returns how many there were.
    pub fn events(
        &self,
        filter: &Filter,
        with_hashes: bool,
        each: impl FnMut(Event) -> std::io::Result<()>,
    ) -> Result<u64, AuditError> {
        super::query::events(&self.conn, filter, with_hashes, each)
    }

    /// Copies every event, verbatim and in seq order, into a new audit.db at `out` (which must
    /// not exist), as an export from PostgreSQL does; the copy is one consistent prefix of the
    /// chain (one read statement). Returns the copy's head.
    ///
    /// # Errors
    /// `out` exists, or either file cannot be read or written.
    pub fn export_sqlite(&self, out: &Path) -> Result<Head, AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, ts, kind, session_id, principal, tool, outcome, code, detail, \
             prev_hash, hash, key_id, mac FROM events ORDER BY seq",
        )?;
        let events = stmt
            .query_map([], super::chain::LinkedEvent::read)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        super::chain::write_copy(out, events)
    }

    /// The signed note of the newest checkpoint event, if the log holds one.
    pub fn latest_checkpoint(&self) -> Result<Option<String>, AuditError> {
        let detail: Option<String> = self
            .conn
            .query_row(
                "SELECT detail FROM events WHERE kind = 'checkpoint' ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let Some(detail) = detail else {
            return Ok(None);
        };
        let detail: serde_json::Value =
            serde_json::from_str(&detail).map_err(|e| AuditError::Open(e.to_string()))?;
        let note = detail.get("note").and_then(|n| n.as_str()).ok_or_else(|| {
            AuditError::Open("the latest checkpoint event holds no note".to_string())
        })?;
        Ok(Some(note.to_string()))
    }
}
