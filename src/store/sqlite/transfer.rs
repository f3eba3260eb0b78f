//! memory.db's side of a whole-store copy (see [`crate::store::transfer`]): rows, ledger
//! records and session starts out in storage order from one read transaction, and in exactly
//! as given, a batch per transaction. The FTS triggers index what comes in, as for any insert.
//! Audit events live in audit.db, not here ([`crate::audit::copy`] moves them).

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{COLUMNS, read_row};
use crate::error::{Error, Result};
use crate::sqlite_file::storage_error as sql;
use crate::store::transfer::{Batch, Copied, CopySink, Resume, SessionStart};

/// Streams what `from` has not copied yet (see [`crate::store::Backend::copy_out`]).
pub(super) fn copy_out(conn: &Connection, from: &Resume, sink: &mut dyn CopySink) -> Result<()> {
    // One read transaction: one snapshot of the file for the whole walk.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Deferred).map_err(sql)?;
    let after = match &from.after_entry {
        None => 0,
        Some(id) => tx
            .query_row("SELECT rowid FROM entries WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?
            .ok_or_else(|| crate::store::transfer::gone(id))?,
    };
    let query = format!("SELECT {COLUMNS} FROM entries WHERE entries.rowid > ?1 ORDER BY rowid");
    let mut stmt = tx.prepare(&query).map_err(sql)?;
    let mut rows = stmt.query([after]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        sink.entry(read_row(row))?;
    }
    drop(rows);
    let mut stmt = tx
        .prepare(&format!(
            "SELECT {} FROM ledger WHERE seq > ?1 ORDER BY seq",
            super::ledger::RECORD_COLUMNS
        ))
        .map_err(sql)?;
    let mut rows = stmt.query([from.after_ledger]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        sink.ledger(super::ledger::read_record(row).map_err(sql)?)?;
    }
    drop(rows);
    if from.session_starts {
        let mut stmt = tx
            .prepare("SELECT principal, started_at FROM session_starts ORDER BY rowid")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            sink.session_start(SessionStart {
                principal: row.get(0).map_err(sql)?,
                started_at: row.get(1).map_err(sql)?,
            })?;
        }
    }
    Ok(())
}

/// Writes `batch` in one transaction (see [`crate::store::Backend::copy_in`]).
pub(super) fn copy_in(conn: &Connection, batch: &Batch) -> Result<()> {
    if !batch.events.is_empty() {
        return Err(Error::Internal(
            "audit events go to audit.db, not memory.db".into(),
        ));
    }
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(sql)?;
    insert_all(&tx, batch).map_err(sql)?;
    tx.commit().map_err(sql)
}

fn insert_all(tx: &Transaction<'_>, batch: &Batch) -> rusqlite::Result<()> {
    let mut entries = tx.prepare_cached(
        "INSERT INTO entries (id, namespace, content, tags, metadata, status, supersedes, \
         principal, session_id, created_at, updated_at, content_sha256, key_id, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for r in &batch.entries {
        entries.execute(params![
            r.id,
            r.namespace,
            r.content,
            r.tags,
            r.metadata,
            r.status,
            r.supersedes,
            r.principal,
            r.session_id,
            r.created_at,
            r.updated_at,
            r.content_sha256,
            r.key_id,
            r.mac,
        ])?;
    }
    let mut ledger = tx.prepare_cached(
        "INSERT INTO ledger (seq, entry_id, kind, at, prev_hash, hash, key_id, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in &batch.ledger {
        ledger.execute(params![
            r.seq,
            r.entry_id,
            r.kind,
            r.at,
            r.prev_hash,
            r.hash,
            r.key_id,
            r.mac
        ])?;
    }
    let mut starts =
        tx.prepare_cached("INSERT INTO session_starts (principal, started_at) VALUES (?1, ?2)")?;
    for s in &batch.session_starts {
        starts.execute(params![s.principal, s.started_at])?;
    }
    Ok(())
}

/// What memory.db holds of an earlier copy.
pub(super) fn copied(conn: &Connection) -> Result<Copied> {
    conn.query_row(
        "SELECT (SELECT id FROM entries ORDER BY rowid DESC LIMIT 1), \
                (SELECT count(*) FROM entries), \
                (SELECT coalesce(max(seq), 0) FROM ledger), \
                (SELECT count(*) FROM session_starts)",
        [],
        |r| {
            Ok(Copied {
                last_entry: r.get(0)?,
                entries: r.get::<_, i64>(1)?.max(0) as u64,
                ledger_seq: r.get(2)?,
                session_starts: r.get::<_, i64>(3)?.max(0) as u64,
                last_event: None,
            })
        },
    )
    .map_err(sql)
}
