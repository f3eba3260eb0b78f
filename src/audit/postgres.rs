//! The audit chain in PostgreSQL's `audit.events` (issue 14): the same rows, hashes and MACs as
//! audit.db, appended inside the caller's transaction so a write and its event commit together.
//! One chain across every process on every host: appends serialise on a transaction-scoped
//! advisory lock under READ COMMITTED and read the tail after taking it (REPEATABLE READ would
//! read a tail older than the lock and fork the chain, FACTS §PostgreSQL); seq comes from the
//! tail, never from a sequence, and the primary key on seq refuses a fork outright. An export
//! writes the rows verbatim into an audit.db the offline verifier reads.

use std::path::Path;

use tokio_postgres::types::ToSql;

use crate::pgconn::sql::{Cached, Sql};

use super::chain::{GENESIS, LinkedEvent, link};
use super::{AuditError, Head, NewEvent};
use crate::keys::KeySet;

/// Key of the advisory lock every append takes.
pub const APPEND_LOCK: i64 = 0x6d77_6175_6474; // "mwaudt"

/// True when `e` means the connection is gone (closed, reset, the server shutting it down or
/// not yet accepting): the same statement on a new connection may well succeed.
pub fn is_disconnect(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || matches!(e.code(), Some(c) if *c == SqlState::ADMIN_SHUTDOWN
            || *c == SqlState::CRASH_SHUTDOWN
            || *c == SqlState::CANNOT_CONNECT_NOW)
}

/// True when the server refused `e` for now, the connection intact: out of disk, memory or
/// connections (class 53), a lock wait or statement past its timeout, a conflict lost. The
/// log is not broken — the call is refused, nothing is done without its event — and the next
/// append may well succeed, so the server must not fail closed for good on it.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(e.code(), Some(c) if c.code().starts_with("53")
        || *c == SqlState::LOCK_NOT_AVAILABLE
        || *c == SqlState::QUERY_CANCELED
        || *c == SqlState::T_R_SERIALIZATION_FAILURE
        || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// Why an append or export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgAuditError {
    /// The server refused or the connection failed.
    #[error("audit events in PostgreSQL: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The chain or the export file.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// Takes the chain's lock ([`APPEND_LOCK`]), until the transaction ends.
pub const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// A statement, sent alone or last in a batch outside any transaction, so that it is a
/// transaction of its own, whose commit returns once everything committed before it is on disk
/// (with the session's `synchronous_commit`, on by default). It needs a transaction id and a
/// WAL record of its own, or PostgreSQL commits it without flushing: a transactional
/// logical-decoding message (prefix `memwarden.flush`, empty) gives both and touches no table.
/// On a standby, which replays only what its primary flushed, it does nothing.
pub const FLUSH: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
     ELSE pg_logical_emit_message(true, 'memwarden.flush', '') END";

/// Reads the chain's tail.
pub const HEAD: &str = "SELECT seq, hash FROM audit.events ORDER BY seq DESC LIMIT 1";

/// Appends one event.
pub const INSERT: &str = "INSERT INTO audit.events (seq, ts, kind, session_id, principal, tool, \
     outcome, code, detail, prev_hash, hash, key_id, mac) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// The head of the chain in `audit.events`.
pub async fn head(client: &impl Sql) -> Result<Head, PgAuditError> {
    Ok(head_of(client.query_opt(HEAD, &[]).await?))
}

/// The head [`HEAD`] read: its row, or the genesis of an empty chain.
pub fn head_of(row: Option<tokio_postgres::Row>) -> Head {
    match row {
        Some(r) => Head {
            seq: r.get(0),
            hash: r.get(1),
        },
        None => Head {
            seq: 0,
            hash: hex::encode(GENESIS),
        },
    }
}

/// Appends `event` inside `tx` (which must be READ COMMITTED, PostgreSQL's default): it becomes
/// durable exactly when `tx` commits, with whatever else `tx` wrote.
pub async fn append(
    tx: &impl Sql,
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
) -> Result<Head, PgAuditError> {
    tx.execute(LOCK, &[&APPEND_LOCK]).await?;
    let prev = head(tx).await?;
    append_after(tx, keys, event, now_ms, &prev).await
}

/// Appends `event` after `prev`, the head `tx` read (or wrote) while holding the chain's lock
/// — which it still holds, so the head has not moved: a group of writes appends its events one
/// after another without reading the tail again. Returns the new head.
pub async fn append_after(
    tx: &impl Sql,
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
    prev: &Head,
) -> Result<Head, PgAuditError> {
    let linked = link(keys, event, now_ms, prev)?;
    insert(tx, &linked).await?;
    Ok(Head {
        seq: linked.seq,
        hash: linked.hash,
    })
}

/// `event` linked after `prev` (the head the caller read or wrote while holding the chain's
/// lock, which it still holds), for a caller that sends the insert later, with other
/// statements: the new head, and [`INSERT`]'s values.
///
/// # Errors
/// The event cannot be linked (its detail cannot be encoded, or no audit key).
pub fn link_for_insert(
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
    prev: &Head,
) -> Result<(Head, Vec<Box<dyn ToSql + Sync + Send>>), PgAuditError> {
    let e = link(keys, event, now_ms, prev)?;
    let head = Head {
        seq: e.seq,
        hash: e.hash.clone(),
    };
    let params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(e.seq),
        Box::new(e.ts),
        Box::new(e.kind),
        Box::new(e.session_id),
        Box::new(e.principal),
        Box::new(e.tool),
        Box::new(e.outcome),
        Box::new(e.code),
        Box::new(e.detail),
        Box::new(e.prev_hash),
        Box::new(e.hash),
        Box::new(e.key_id),
        Box::new(e.mac),
    ];
    Ok((head, params))
}

async fn insert(client: &impl Sql, e: &LinkedEvent) -> Result<(), PgAuditError> {
    let n = client.execute(INSERT, &insert_params(e)).await?;
    inserted_one(e, n)
}

/// [`INSERT`]'s values for `e`.
fn insert_params(e: &LinkedEvent) -> [&(dyn ToSql + Sync); 13] {
    [
        &e.seq,
        &e.ts,
        &e.kind,
        &e.session_id,
        &e.principal,
        &e.tool,
        &e.outcome,
        &e.code,
        &e.detail,
        &e.prev_hash,
        &e.hash,
        &e.key_id,
        &e.mac,
    ]
}

fn inserted_one(e: &LinkedEvent, n: u64) -> Result<(), PgAuditError> {
    if n != 1 {
        return Err(
            AuditError::Corrupt(format!("appending event {}: {n} rows inserted", e.seq)).into(),
        );
    }
    Ok(())
}

/// Appends `event` in a transaction of its own on `sql`'s connection (which must have none
/// open), in two round trips: the transaction's start, the chain's lock and the tail go out
/// together, then the linked event with the COMMIT. Requests on one connection are answered in
/// the order they were sent (`biased` polling sends them in that order), so the tail is read
/// after the lock is held, and a failed insert leaves the transaction aborted, which its COMMIT
/// then rolls back: the event is either committed or gone, and the lock is released either way.
///
/// # Errors
/// The server refused or the connection failed; then nothing was appended, or (a COMMIT whose
/// answer was lost) the event may have landed.
pub async fn append_alone(
    sql: Cached<'_>,
    keys: &KeySet,
    event: &NewEvent<'_>,
    now_ms: i64,
) -> Result<Head, PgAuditError> {
    // Prepared before anything is sent, so that each statement goes out in one piece.
    let (lock, tail, insert) = (
        sql.prepare(LOCK).await?,
        sql.prepare(HEAD).await?,
        sql.prepare(INSERT).await?,
    );
    let client = sql.client;
    let (begun, locked, prev) = tokio::join!(
        biased;
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        client.execute(&lock, &[&APPEND_LOCK]),
        client.query_opt(&tail, &[]),
    );
    let linked = match (begun, locked, prev) {
        (Ok(()), Ok(_), Ok(prev)) => link(keys, event, now_ms, &head_of(prev)).map_err(Into::into),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => Err(PgAuditError::from(e)),
    };
    let linked = match linked {
        Ok(linked) => linked,
        Err(e) => {
            // Its own failure, if any, says less than the first one.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    let params = insert_params(&linked);
    let (inserted, committed) = tokio::join!(
        biased;
        client.execute(&insert, &params),
        client.batch_execute("COMMIT"),
    );
    inserted_one(&linked, inserted?)?;
    committed?;
    Ok(Head {
        seq: linked.seq,
        hash: linked.hash,
    })
}

/// Writes every event, verbatim and in seq order, into a new audit.db at `out` (which must not
/// exist), for `memwarden audit verify --db`. Reads in one REPEATABLE READ snapshot, so the
/// copy is one consistent prefix of the chain. Returns the copy's head.
pub async fn export_sqlite(
    client: &mut tokio_postgres::Client,
    out: &Path,
) -> Result<Head, PgAuditError> {
    if out.exists() {
        return Err(AuditError::Open(format!("{}: already exists", out.display())).into());
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    // A page at a time, so memory stays flat however long the chain; verbatim, so a damaged
    // chain is copied as it is and the verifier reports it.
    let mut copy = super::copy::FileCopy::open(out)?;
    let mut head = Head {
        seq: 0,
        hash: hex::encode(GENESIS),
    };
    let mut from = i64::MIN;
    loop {
        let events = super::copy::pg_events_from(&tx, from, EXPORT_PAGE).await?;
        let Some(last) = events.last() else { break };
        from = last.seq + 1;
        head = copy.append_verbatim(&events)?;
        if (events.len() as i64) < EXPORT_PAGE {
            break;
        }
    }
    tx.commit().await?;
    // A writer's events are visible from its COMMIT, a flush before they are durable
    // (`store/postgres/group.rs`): the copy is reported only once all it holds is on disk.
    client.batch_execute(FLUSH).await?;
    Ok(head)
}

/// Events per page of an export.
const EXPORT_PAGE: i64 = 1000;
