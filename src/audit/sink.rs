//! Where a server's audit events go: audit.db beside a SQLite store, or `audit.events` beside a
//! PostgreSQL store. The server holds one [`Sink`]; a write commits with its event through the
//! store either way (audit.db first for SQLite, one transaction for PostgreSQL).

use super::pg_log::PgLog;
use super::{AuditError, AuditLog, Head, NewEvent};

/// The server's audit log.
#[derive(Debug)]
pub enum Sink {
    /// audit.db, a SQLite file in the data dir.
    File(AuditLog),
    /// PostgreSQL's `audit.events`, in the store's database.
    Postgres(PgLog),
}

impl From<AuditLog> for Sink {
    fn from(log: AuditLog) -> Self {
        Self::File(log)
    }
}

impl Sink {
    /// Appends one event.
    ///
    /// # Errors
    /// The log cannot take it: the server fails closed.
    pub fn append(&mut self, event: &NewEvent<'_>, now_ms: i64) -> Result<Head, AuditError> {
        match self {
            Self::File(log) => log.append(event, now_ms),
            Self::Postgres(log) => log.append(event, now_ms),
        }
    }

    /// A describer keyed by the audit key.
    pub fn describer(&self, label: &[u8]) -> crate::agent_text::Describer {
        match self {
            Self::File(log) => log.describer(label),
            Self::Postgres(log) => log.describer(label),
        }
    }

    /// A signed checkpoint of the head (at a session's end), when the log signs them. Signed
    /// checkpoints are audit.db's so far: PostgreSQL's chain is verified from its export.
    ///
    /// # Errors
    /// The log cannot take it.
    pub fn checkpoint(
        &mut self,
        session_id: Option<&str>,
        principal: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<String>, AuditError> {
        match self {
            Self::File(log) => log.checkpoint(session_id, principal, now_ms),
            Self::Postgres(_) => Ok(None),
        }
    }

    /// The chain's head.
    ///
    /// # Errors
    /// The log cannot be read.
    pub fn head(&self) -> Result<Head, AuditError> {
        match self {
            Self::File(log) => log.head(),
            Self::Postgres(log) => log.head(),
        }
    }

    /// audit.db's writer, which a SQLite store's commit appends through; `None` on PostgreSQL,
    /// where the store appends inside its own transaction.
    pub fn file(&mut self) -> Option<&mut AuditLog> {
        match self {
            Self::File(log) => Some(log),
            Self::Postgres(_) => None,
        }
    }

    /// Whether a group of staged events is open: audit.db's ([`AuditLog::stage`]), or a group
    /// of writes with their events on PostgreSQL's store connection ([`PgLog::set_store_group`]).
    /// Either way no other event may be appended until the group commits.
    pub fn group_open(&self) -> bool {
        match self {
            Self::File(log) => log.group_open(),
            Self::Postgres(log) => log.store_group(),
        }
    }

    /// Closes the log.
    ///
    /// # Errors
    /// Closing audit.db failed (PostgreSQL's connection just ends).
    pub fn close(self) -> Result<(), AuditError> {
        match self {
            Self::File(log) => log.close(),
            Self::Postgres(_) => Ok(()),
        }
    }
}
