//! Moving a chain verbatim between engines (`memwarden migrate`, and `backup` / `restore` on
//! PostgreSQL): events leave in seq order and enter only where they continue the target's
//! chain — the next seq, linked to the tail's hash — in batches, each in one transaction. The
//! events' hashes and MACs are never recomputed: a copy verifies with the same keys exactly as
//! the original does.

use std::path::Path;

use rusqlite::Connection;
use tokio_postgres::Transaction;

use super::chain::{LinkedEvent, write_linked};
use super::postgres::PgAuditError;
use super::{AuditError, Head};

/// The columns an event is read with, in [`LinkedEvent`]'s order.
const EVENT_COLUMNS: &str = "seq, ts, kind, session_id, principal, tool, outcome, code, detail, \
                             prev_hash, hash, key_id, mac";

/// Refuses `events` unless they continue the chain whose tail is `tail`, one seq at a time.
pub fn check_continues(tail: &Head, events: &[LinkedEvent]) -> Result<Head, AuditError> {
    let mut head = tail.clone();
    for e in events {
        if e.seq != head.seq + 1 || e.prev_hash != head.hash {
            return Err(AuditError::Corrupt(format!(
                "event {} does not continue the chain at {} (its predecessor differs)",
                e.seq, head.seq
            )));
        }
        head = e.head();
    }
    Ok(head)
}

/// audit.db opened to take a copied chain: created with its schema and no event of its own
/// (no `chain_start`: the first event copied is the source's first).
pub struct FileCopy {
    conn: Connection,
}

impl std::fmt::Debug for FileCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCopy").finish_non_exhaustive()
    }
}

impl FileCopy {
    /// Opens (creating its schema if new) the audit.db at `path`.
    ///
    /// # Errors
    /// The file cannot be opened or holds a schema this binary does not write.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Ok(Self {
            conn: super::open_rw(path)?,
        })
    }

    /// The chain's tail (seq 0 and the genesis hash when it holds none).
    pub fn head(&self) -> Result<Head, AuditError> {
        super::chain::head(&self.conn)
    }

    /// The tail event itself, if any.
    pub fn last(&self) -> Result<Option<LinkedEvent>, AuditError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {EVENT_COLUMNS} FROM events ORDER BY seq DESC LIMIT 1"
        ))?;
        let mut rows = stmt.query_map([], LinkedEvent::read)?;
        Ok(rows.next().transpose()?)
    }

    /// Appends `events` in one transaction exactly as they are, continuing the chain or not
    /// (an export of a damaged chain stays damaged, for the verifier to report); returns the
    /// last one's head.
    ///
    /// # Errors
    /// The file cannot be written, or holds an event of the same seq.
    pub fn append_verbatim(&mut self, events: &[LinkedEvent]) -> Result<Head, AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for e in events {
            write_linked(&tx, e)?;
        }
        tx.commit()?;
        super::chain::head(&self.conn)
    }

    /// Appends `events` in one transaction after checking they continue the chain.
    ///
    /// # Errors
    /// They do not continue it, or the file cannot be written.
    pub fn append(&mut self, events: &[LinkedEvent]) -> Result<Head, AuditError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let head = check_continues(&super::chain::head(&tx)?, events)?;
        for e in events {
            write_linked(&tx, e)?;
        }
        tx.commit()?;
        Ok(head)
    }
}

/// Hands every event of audit.db at `path` from seq `from` on to `each`, in seq order, from one
/// read transaction; stops early when `each` returns false.
///
/// # Errors
/// The file cannot be opened or read.
pub fn each_file_event(
    path: &Path,
    from: i64,
    each: &mut dyn FnMut(LinkedEvent) -> bool,
) -> Result<(), AuditError> {
    let mut conn = super::open_ro(path)?;
    let tx = conn.transaction()?;
    let mut stmt = tx.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE seq >= ?1 ORDER BY seq"
    ))?;
    let mut rows = stmt.query([from])?;
    while let Some(row) = rows.next()? {
        if !each(LinkedEvent::read(row)?) {
            break;
        }
    }
    Ok(())
}

fn read_pg(r: &tokio_postgres::Row) -> Result<LinkedEvent, tokio_postgres::Error> {
    Ok(LinkedEvent {
        seq: r.try_get(0)?,
        ts: r.try_get(1)?,
        kind: r.try_get(2)?,
        session_id: r.try_get(3)?,
        principal: r.try_get(4)?,
        tool: r.try_get(5)?,
        outcome: r.try_get(6)?,
        code: r.try_get(7)?,
        detail: r.try_get(8)?,
        prev_hash: r.try_get(9)?,
        hash: r.try_get(10)?,
        key_id: r.try_get(11)?,
        mac: r.try_get(12)?,
    })
}

/// Up to `limit` events of `audit.events` from seq `from` on, in seq order (inside the
/// caller's snapshot).
pub async fn pg_events_from(
    client: &impl tokio_postgres::GenericClient,
    from: i64,
    limit: i64,
) -> Result<Vec<LinkedEvent>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM audit.events WHERE seq >= $1 ORDER BY seq LIMIT $2"
            ),
            &[&from, &limit],
        )
        .await?;
    rows.iter().map(read_pg).collect()
}

/// The tail event of `audit.events`, if any.
pub async fn pg_last(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Option<LinkedEvent>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!("SELECT {EVENT_COLUMNS} FROM audit.events ORDER BY seq DESC LIMIT 1"),
            &[],
        )
        .await?;
    row.as_ref().map(read_pg).transpose()
}

/// Appends `events` inside `tx` after taking the append lock every writer takes and checking
/// they continue the chain: one statement for the whole batch.
///
/// # Errors
/// They do not continue the chain, or the server refuses them.
pub async fn pg_append(tx: &Transaction<'_>, events: &[LinkedEvent]) -> Result<Head, PgAuditError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&super::postgres::APPEND_LOCK],
    )
    .await?;
    let head = check_continues(&super::postgres::head(tx).await?, events)?;
    let col = |f: fn(&LinkedEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let text = |f: fn(&LinkedEvent) -> &String| {
        events.iter().map(|e| f(e).clone()).collect::<Vec<String>>()
    };
    let n = tx
        .execute(
            &format!(
                "INSERT INTO audit.events ({EVENT_COLUMNS}) \
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                 $11::text[], $12::text[], $13::text[])"
            ),
            &[
                &seqs,
                &text(|e| &e.ts),
                &text(|e| &e.kind),
                &col(|e| e.session_id.clone()),
                &col(|e| e.principal.clone()),
                &col(|e| e.tool.clone()),
                &col(|e| e.outcome.clone()),
                &col(|e| e.code.clone()),
                &text(|e| &e.detail),
                &text(|e| &e.prev_hash),
                &text(|e| &e.hash),
                &text(|e| &e.key_id),
                &text(|e| &e.mac),
            ],
        )
        .await?;
    if n != events.len() as u64 {
        return Err(AuditError::Corrupt(format!(
            "copying {} events: {n} rows inserted",
            events.len()
        ))
        .into());
    }
    Ok(head)
}
