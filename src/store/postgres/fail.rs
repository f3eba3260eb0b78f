//! What a PostgreSQL failure means to a caller, and the bounded retry of the conflicts a
//! database may resolve by itself. Messages carry the SQLSTATE and a fixed description, never
//! the server's text (it can quote values: a row's content, a query word) nor the connection
//! settings (they can hold a password).

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::audit::postgres::is_disconnect;
use crate::error::Error;

/// How many times a statement or transaction that lost a serialization or deadlock conflict is
/// run in all.
pub(super) const ATTEMPTS: u32 = 5;

/// What a caller lost to a dropped connection is told to wait before trying again: about one
/// reconnection attempt of the backend's backoff.
pub const RETRY_AFTER_MS: u64 = 1000;

/// A serialization failure (40001) or a deadlock (40P01): PostgreSQL rolled the transaction
/// back so another could finish, and running it again may well succeed.
pub(super) fn is_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// A failure inside the backend: the database's own (which may be a conflict worth running
/// again), or one already in the store's terms.
#[derive(Debug)]
pub(super) enum Failure {
    /// From the server or the client library.
    Db(tokio_postgres::Error),
    /// Already a store error.
    Store(Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Store(e)
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Db(e) => db(e),
            Failure::Store(e) => e,
        }
    }
}

/// The store error for a failed call. The connection closed, the server shutting down or out
/// of resources, a lock wait past `lock_timeout`, a conflict still lost after the retries, a
/// missing grant or schema: the store is unavailable (the operator can act on the SQLSTATE
/// logged). Only what our own statements should never cause — bad data types, broken
/// constraints, syntax — is internal.
pub(super) fn db(e: tokio_postgres::Error) -> Error {
    if is_disconnect(&e) {
        tracing::warn!(target: "memwarden::store", error = %detail(&e), "lost the PostgreSQL connection");
        return Error::Disconnected {
            retry_after_ms: RETRY_AFTER_MS,
        };
    }
    let (internal, message) = classify(&e);
    if internal {
        Error::Internal(message)
    } else {
        Error::Unavailable(message)
    }
}

/// What went wrong, in words safe to log and show an operator.
pub(super) fn detail(e: &tokio_postgres::Error) -> String {
    classify(e).1
}

/// Whether `e` is internal (our bug), and its description.
fn classify(e: &tokio_postgres::Error) -> (bool, String) {
    let Some(code) = e.code() else {
        // Before the io check: a failed handshake also ends in an io::Error.
        if let Some(tls) = crate::pgconn::handshake_failure(e) {
            return (false, format!("postgresql: {tls}"));
        }
        if e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()) {
            return (
                false,
                "postgresql: the connection is closed (server restarted or network lost)".into(),
            );
        }
        // The client library's own failures (encoding a parameter, reading a column) name
        // the step, never a value.
        return (true, format!("postgresql client: {e}"));
    };
    let state = code.code();
    let internal = (state.starts_with("22") || state.starts_with("23") || state.starts_with("42"))
        && *code != SqlState::INSUFFICIENT_PRIVILEGE
        && *code != SqlState::UNDEFINED_TABLE;
    (
        internal,
        format!("postgresql: SQLSTATE {state} ({})", describe(code)),
    )
}

/// A fixed description of the SQLSTATEs an operator most likely meets.
fn describe(code: &SqlState) -> &'static str {
    match code.code() {
        "40001" | "40P01" => "conflict with another transaction, still lost after retries",
        "55P03" => "lock wait timed out: another writer holds the store",
        "42501" => "permission denied: connect as the app role that `memwarden db init` made",
        "42P01" => "a table is missing: run `memwarden db init`",
        "57P01" | "57P02" | "57P03" => "the server is shutting down or starting",
        "25P03" => "transaction idle too long",
        s if s.starts_with("08") => "connection failure",
        s if s.starts_with("53") => "the server is out of resources",
        s if s.starts_with("22") => "a value did not fit its column",
        s if s.starts_with("23") => "a constraint refused the change",
        _ => "see the server log",
    }
}

/// The pause before attempt `attempt` (from 1) of a conflicted operation: short, growing, so
/// the transaction that won has time to finish.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(5u64 << attempt.min(6))
}

/// Runs `op` until it succeeds, fails otherwise than by a conflict, or has run [`ATTEMPTS`]
/// times. `op` must be a whole transaction (or one statement outside any): a conflict aborts
/// the transaction it happens in, so only the whole can run again.
pub(super) async fn retry<T>(mut op: impl AsyncFnMut() -> Result<T, Failure>) -> Result<T, Error> {
    let mut attempt = 1;
    loop {
        match op().await {
            Err(Failure::Db(e)) if is_conflict(&e) && attempt < ATTEMPTS => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other.map_err(Error::from),
        }
    }
}

/// An append's failure as the call sees it: the database's, or the chain's.
pub(super) fn audit_error(e: crate::audit::postgres::PgAuditError) -> Error {
    match e {
        crate::audit::postgres::PgAuditError::Database(e) => db(e),
        other => Error::Audit(other.to_string()),
    }
}

/// Fails closed when a statement touched another number of rows than one.
pub(super) fn one_row(what: &str, changed: u64) -> crate::error::Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(Error::Internal(format!("{what} touched {changed} rows")))
    }
}
