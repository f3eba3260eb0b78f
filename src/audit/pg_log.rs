//! The server's audit log on PostgreSQL: events that are not part of a write (session start
//! and end, reads, refusals) appended to `audit.events` each in its own transaction, on a
//! connection of their own. A write's event is appended by the store, inside the write's
//! transaction ([`super::postgres::append`] there too), so both kinds land in one chain.
//!
//! The log owns a current-thread runtime and drives its client with `block_on` — on a thread
//! of its own for every call ([`PgLog::run`]): the server appends from async code too (a
//! session's end), where a runtime cannot be blocked on, and a scoped thread started after the
//! sandbox is as restricted as its parent and gone when the call returns.

use std::time::Duration;

use tokio_postgres::Client;

use super::postgres::{PgAuditError, append_alone, head, is_disconnect, is_transient};
use super::{AuditError, Head, NewEvent};
use crate::keys::KeySet;
use crate::pgconn::DatabaseSettings;
use crate::pgconn::sql::{Cached, Statements};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The session: an append waits for the chain's lock as long as a write waits for the store's
/// (a writer whose host has gone may hold it until the server drops that writer), then the
/// call fails UNAVAILABLE instead of hanging.
const SESSION: &str = "SET lock_timeout = '10s'";

/// An open connection for appending audit events to PostgreSQL.
pub struct PgLog {
    rt: tokio::runtime::Runtime,
    client: Client,
    keys: KeySet,
    /// What it connects with, again after a lost connection.
    settings: DatabaseSettings,
    /// The connection's prepared statements.
    statements: Statements,
    /// A group of writes is open on the store's connection ([`PgLog::set_store_group`]): it
    /// holds the chain's lock, so an append here would wait on it.
    store_group: bool,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLog").finish_non_exhaustive()
    }
}

/// A failure in words safe for a log: the SQLSTATE or the connection's state, never the
/// settings or the server's text.
fn safe(e: &tokio_postgres::Error) -> String {
    if let Some(tls) = crate::pgconn::handshake_failure(e) {
        return tls;
    }
    match e.code() {
        Some(code) => format!("SQLSTATE {}", code.code()),
        None if e.is_closed() => "the connection is closed".into(),
        None => "the connection failed".into(),
    }
}

/// Runs `work` on a scoped thread of its own (see the module docs) and maps its failure to
/// words safe for a log.
fn on_own_thread<T: Send>(
    work: impl FnOnce() -> Result<T, PgAuditError> + Send,
) -> Result<T, AuditError> {
    raw_on_own_thread(work).map_err(for_caller)
}

/// Like [`on_own_thread`], the failure as it came.
fn raw_on_own_thread<T: Send>(
    work: impl FnOnce() -> Result<T, PgAuditError> + Send,
) -> Result<T, PgAuditError> {
    std::thread::scope(|s| {
        s.spawn(work)
            .join()
            .unwrap_or_else(|_| Err(AuditError::Corrupt("an audit append panicked".into()).into()))
    })
}

/// A failure in the server's terms, in words safe for a log: a lost connection or a refusal
/// for now ([`is_transient`]) leaves the log usable (`Unreachable`); anything else breaks it.
fn for_caller(e: PgAuditError) -> AuditError {
    match e {
        PgAuditError::Database(e) if is_disconnect(&e) || is_transient(&e) => {
            AuditError::Unreachable(format!("audit events in PostgreSQL: {}", safe(&e)))
        }
        PgAuditError::Database(e) => {
            AuditError::Open(format!("audit events in PostgreSQL: {}", safe(&e)))
        }
        PgAuditError::Audit(e) => e,
    }
}

/// Connects with `settings` on `rt` (TLS or not as they say), the connection driven by a task
/// on it.
fn open(
    rt: &tokio::runtime::Runtime,
    settings: &DatabaseSettings,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = rt.block_on(settings.connect())?;
    rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(target: "memwarden::audit", error = %safe(&e), "the audit connection to PostgreSQL ended");
        }
    });
    rt.block_on(async {
        client.batch_execute(SESSION).await?;
        client.batch_execute(crate::pgconn::DEAD_PEER_SESSION).await
    })?;
    Ok(client)
}

impl PgLog {
    /// Connects with `settings` and reads the chain's head (which checks that `db init` made
    /// `audit.events` and that this role may read it). `keys` MAC the events.
    ///
    /// # Errors
    /// [`AuditError::Open`] naming the step and a SQLSTATE, never the settings.
    pub fn connect(settings: &DatabaseSettings, keys: KeySet) -> Result<Self, AuditError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| AuditError::Open(format!("audit events in PostgreSQL: {e}")))?;
        let settings = settings.tuned(|config| {
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(CONNECT_TIMEOUT);
            }
            config.application_name("memwarden-audit");
        });
        let client = open(&rt, &settings).map_err(|e| {
            AuditError::Open(format!(
                "audit events in PostgreSQL: cannot connect ({})",
                safe(&e)
            ))
        })?;
        let log = Self {
            rt,
            client,
            keys,
            settings,
            statements: Statements::default(),
            store_group: false,
        };
        log.head().map_err(|e| {
            AuditError::Open(format!(
                "{e}; run `memwarden db init` and grant this role memwarden_app"
            ))
        })?;
        Ok(log)
    }

    /// Notes that a group of writes, with their events, is open (or no longer) on the store's
    /// connection: until it commits, [`PgLog::append`] is refused (the group holds the chain's
    /// lock) and [`super::sink::Sink::group_open`] says so, so the server commits the group
    /// before appending.
    pub fn set_store_group(&mut self, open: bool) {
        self.store_group = open;
    }

    /// Whether a group of writes is open on the store's connection.
    pub fn store_group(&self) -> bool {
        self.store_group
    }

    /// Appends `event` in a transaction of its own.
    ///
    /// # Errors
    /// The server refused, the connection is gone, or the chain does not link.
    pub fn append(&mut self, event: &NewEvent<'_>, now_ms: i64) -> Result<Head, AuditError> {
        if self.store_group {
            // It would wait for a lock its own server holds: refuse rather than hang.
            return Err(AuditError::Corrupt(
                "an append while a group of writes is open (commit the group first)".into(),
            ));
        }
        // Only a lost connection is made again: a server that refused for now (a full disk,
        // a lock wait) is still connected.
        match self.append_once(event, now_ms) {
            Err(PgAuditError::Database(e)) if is_disconnect(&e) => {}
            first => return first.map_err(for_caller),
        }
        // The connection was lost (a restart): connect again, once, and append again. A
        // commit whose answer was lost may have landed: then the event is in the chain
        // twice, never missing.
        let Self { rt, settings, .. } = self;
        let client = on_own_thread(|| open(rt, settings).map_err(PgAuditError::Database))?;
        self.client = client;
        self.statements.clear();
        tracing::info!(target: "memwarden::audit", "reconnected to PostgreSQL for audit events");
        self.append_once(event, now_ms).map_err(for_caller)
    }

    fn append_once(&mut self, event: &NewEvent<'_>, now_ms: i64) -> Result<Head, PgAuditError> {
        let Self {
            rt,
            client,
            keys,
            statements,
            ..
        } = self;
        let sql = Cached { client, statements };
        raw_on_own_thread(|| rt.block_on(append_alone(sql, keys, event, now_ms)))
    }

    /// The chain's head.
    ///
    /// # Errors
    /// The server refused or the connection is gone.
    pub fn head(&self) -> Result<Head, AuditError> {
        on_own_thread(|| self.rt.block_on(head(&self.client)))
    }

    /// A describer keyed by the audit key (as [`super::AuditLog::describer`]).
    pub fn describer(&self, label: &[u8]) -> crate::agent_text::Describer {
        let (_, key) = self.keys.active();
        crate::agent_text::Describer::derived(key.bytes(), label)
    }
}
