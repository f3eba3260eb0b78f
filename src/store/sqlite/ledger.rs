//! The ledger's table in memory.db: append inside a write transaction, walk the chain, re-seal,
//! and the one-time backfill. The record format and its checks are [`crate::store::ledger`].

use rusqlite::{Connection, OptionalExtension, params};

use crate::keys::KeySet;
use crate::store::ledger::{ChainReport, GENESIS, Kind, Record, link, reseal_plan};

/// The highest rank among the records of the row in `entries` being read, NULL when it has
/// none: one lookup in the (entry_id, kind) index per row. An unknown kind (a hand-made record)
/// ranks highest, so it hides the row rather than being ignored. A macro, so the store's column
/// list can `concat!` it.
macro_rules! rank_sql {
    () => {
        "(SELECT max(CASE ledger.kind WHEN 'approved' THEN 1 WHEN 'superseded' THEN 2 \
         WHEN 'deleted' THEN 3 ELSE 4 END) FROM ledger WHERE ledger.entry_id = entries.id)"
    };
}
pub(crate) use rank_sql;

/// Reads a record; a column of the wrong type is an error.
pub(super) fn read_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: r.get(0)?,
        entry_id: r.get(1)?,
        kind: r.get(2)?,
        at: r.get(3)?,
        prev_hash: r.get(4)?,
        hash: r.get(5)?,
        key_id: r.get(6)?,
        mac: r.get(7)?,
    })
}

/// Appends a record inside the caller's write transaction (which holds the write lock, so the
/// chain cannot fork) and returns its seq.
pub(crate) fn append(
    tx: &Connection,
    keys: &KeySet,
    entry_id: &str,
    kind: Kind,
    at: i64,
) -> rusqlite::Result<i64> {
    let tail: Option<(i64, Vec<u8>)> = tx
        .prepare_cached("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let r = link(keys, tail, entry_id, kind, at);
    tx.prepare_cached(
        "INSERT INTO ledger (seq, entry_id, kind, at, prev_hash, hash, key_id, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        r.seq,
        entry_id,
        kind.as_str(),
        at,
        r.prev_hash,
        &r.hash[..],
        r.key_id,
        &r.mac[..]
    ])?;
    Ok(r.seq)
}

pub(super) const RECORD_COLUMNS: &str = "seq, entry_id, kind, at, prev_hash, hash, key_id, mac";

/// Walks the whole chain in seq order: every record's hash and MAC, and every link.
pub(crate) fn check_chain(conn: &Connection, keys: &KeySet) -> rusqlite::Result<ChainReport> {
    let mut stmt = conn.prepare(&format!("SELECT {RECORD_COLUMNS} FROM ledger ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut report = ChainReport::default();
    let mut expected_seq = 1;
    let mut prev = GENESIS.to_vec();
    while let Some(row) = rows.next()? {
        report.records += 1;
        let rec = match read_record(row) {
            Ok(rec) => rec,
            Err(_) => {
                let seq: i64 = row.get(0).unwrap_or(-1);
                report
                    .problems
                    .push(format!("ledger record {seq}: a column has the wrong type"));
                expected_seq = seq + 1;
                prev = Vec::new();
                continue;
            }
        };
        if rec.seq != expected_seq {
            report.problems.push(format!(
                "ledger records {expected_seq}..{} are missing",
                rec.seq - 1
            ));
        }
        if rec.prev_hash != prev {
            report.problems.push(format!(
                "ledger record {}: does not link to the record before it (one was removed or altered)",
                rec.seq
            ));
        }
        match rec.problem(keys) {
            Some(p) => report.problems.push(p),
            None => {
                if let Some(kind) = Kind::parse(&rec.kind) {
                    report
                        .kinds
                        .entry(rec.entry_id.clone())
                        .or_default()
                        .push(kind);
                }
            }
        }
        expected_seq = rec.seq + 1;
        // Link to what is stored, so one altered record is reported once, not for every
        // record after it.
        prev = rec.hash;
    }
    Ok(report)
}

/// Re-seals up to `batch` records not sealed with the active key. A record that does not verify
/// under its own key is left alone and reported (`ledger:SEQ`), as `Store::reseal_batch` does
/// for rows. Only the MAC changes: the key id is outside the chain hash.
pub(crate) fn reseal_batch(
    tx: &Connection,
    keys: &KeySet,
    batch: usize,
    skip: &[String],
) -> rusqlite::Result<(usize, Vec<String>)> {
    let active_id = keys.active().0;
    let records: Vec<rusqlite::Result<Record>> = {
        let mut stmt = tx.prepare(&format!(
            "SELECT {RECORD_COLUMNS} FROM ledger WHERE key_id != ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let mapped = stmt.query_map(params![active_id, (batch + skip.len()) as i64], |r| {
            Ok(read_record(r))
        })?;
        mapped.collect::<rusqlite::Result<_>>()?
    };
    let (resealed, failed) = reseal_plan(keys, records.into_iter().flatten(), batch, skip);
    for (seq, mac) in &resealed {
        tx.prepare_cached("UPDATE ledger SET key_id = ?2, mac = ?3 WHERE seq = ?1")?
            .execute(params![seq, active_id, &mac[..]])?;
    }
    Ok((resealed.len(), failed))
}

/// Records for the rows that a store from before the ledger already holds superseded or
/// deleted, so they are protected from the upgrade on. Runs once, inside the migration that
/// creates the table.
pub(crate) fn backfill(tx: &Connection, keys: &KeySet) -> rusqlite::Result<()> {
    let rows: Vec<(String, String, i64)> = {
        let mut stmt = tx.prepare(
            "SELECT id, status, updated_at FROM entries \
             WHERE status IN ('superseded', 'deleted') ORDER BY rowid",
        )?;
        let mapped = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        mapped.collect::<rusqlite::Result<_>>()?
    };
    for (id, status, at) in rows {
        let kind = if status == "deleted" {
            Kind::Deleted
        } else {
            Kind::Superseded
        };
        append(tx, keys, &id, kind, at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::ledger::Kind;

    #[test]
    fn rank_sql_names_every_kind_below_the_top() {
        for kind in [Kind::Approved, Kind::Superseded, Kind::Deleted] {
            assert!(rank_sql!().contains(kind.as_str()));
        }
    }
}
