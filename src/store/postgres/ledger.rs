//! The ledger's table in PostgreSQL (`memory.ledger`): append inside a write transaction (which
//! holds the store's write lock, so the chain cannot fork; the primary key on seq would refuse a
//! fork anyway), walk the chain, re-seal. The record format and its checks are
//! [`crate::store::ledger`], the same as SQLite's.

use tokio_postgres::{Client, Row};

use crate::keys::KeySet;
use crate::pgconn::sql::Sql;
use crate::store::backend::PurgeRule;
use crate::store::ledger::{ChainReport, GENESIS, Kind, Record, link, reseal_plan};

const RECORD_COLUMNS: &str = "seq, entry_id, kind, at, prev_hash, hash, key_id, mac";

/// Records read per statement while walking the chain.
const PAGE: i64 = 1000;

fn read_record(r: &Row) -> Result<Record, tokio_postgres::Error> {
    Ok(Record {
        seq: r.try_get(0)?,
        entry_id: r.try_get(1)?,
        kind: r.try_get(2)?,
        at: r.try_get(3)?,
        prev_hash: r.try_get(4)?,
        hash: r.try_get(5)?,
        key_id: r.try_get(6)?,
        mac: r.try_get(7)?,
    })
}

/// Appends a record inside the caller's write transaction and returns its seq.
pub(super) async fn append(
    tx: &impl Sql,
    keys: &KeySet,
    entry_id: &str,
    kind: Kind,
    at: i64,
) -> Result<i64, tokio_postgres::Error> {
    let tail = tx
        .query_opt(
            "SELECT seq, hash FROM memory.ledger ORDER BY seq DESC LIMIT 1",
            &[],
        )
        .await?;
    let tail = match tail {
        Some(r) => Some((r.try_get::<_, i64>(0)?, r.try_get::<_, Vec<u8>>(1)?)),
        None => None,
    };
    let r = link(keys, tail, entry_id, kind, at);
    tx.execute(
        "INSERT INTO memory.ledger (seq, entry_id, kind, at, prev_hash, hash, key_id, mac) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &r.seq,
            &entry_id,
            &kind.as_str(),
            &at,
            &r.prev_hash,
            &&r.hash[..],
            &r.key_id,
            &&r.mac[..],
        ],
    )
    .await?;
    Ok(r.seq)
}

/// Where a walk of the chain stands.
struct Walk {
    report: ChainReport,
    expected_seq: i64,
    prev: Vec<u8>,
}

impl Walk {
    /// Checks the next record (or the seq of one that could not be read): its place, its link
    /// and its own hash and MAC.
    fn step(&mut self, keys: &KeySet, rec: Result<Record, i64>) {
        self.report.records += 1;
        let rec = match rec {
            Ok(rec) => rec,
            Err(seq) => {
                self.report
                    .problems
                    .push(format!("ledger record {seq}: a column has the wrong type"));
                self.expected_seq = seq + 1;
                self.prev = Vec::new();
                return;
            }
        };
        if rec.seq != self.expected_seq {
            self.report.problems.push(format!(
                "ledger records {}..{} are missing",
                self.expected_seq,
                rec.seq - 1
            ));
        }
        if rec.prev_hash != self.prev {
            self.report.problems.push(format!(
                "ledger record {}: does not link to the record before it (one was removed or altered)",
                rec.seq
            ));
        }
        match rec.problem(keys) {
            Some(p) => self.report.problems.push(p),
            None => {
                if let Some(kind) = Kind::parse(&rec.kind) {
                    self.report
                        .kinds
                        .entry(rec.entry_id.clone())
                        .or_default()
                        .push(kind);
                }
            }
        }
        self.expected_seq = rec.seq + 1;
        // Link to what is stored, so one altered record is reported once.
        self.prev = rec.hash;
    }
}

/// Walks the whole chain in seq order, a page at a time (the caller holds one snapshot).
pub(super) async fn check_chain(
    client: &Client,
    keys: &KeySet,
) -> Result<ChainReport, tokio_postgres::Error> {
    let mut walk = Walk {
        report: ChainReport::default(),
        expected_seq: 1,
        prev: GENESIS.to_vec(),
    };
    let mut after = i64::MIN;
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM memory.ledger WHERE seq > $1 \
                     ORDER BY seq LIMIT $2"
                ),
                &[&after, &PAGE],
            )
            .await?;
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            walk.step(keys, read_record(row).map_err(|_| seq));
            after = seq;
        }
        if (rows.len() as i64) < PAGE {
            return Ok(walk.report);
        }
    }
}

/// Re-seals up to `batch` records not sealed with the active key. A record that does not
/// verify under its own key is left alone and reported (`ledger:SEQ`). Only the MAC changes:
/// the key id is outside the chain hash.
pub(super) async fn reseal_batch(
    tx: &impl Sql,
    keys: &KeySet,
    batch: usize,
    skip: &[String],
) -> Result<(usize, Vec<String>), tokio_postgres::Error> {
    let active_id = keys.active().0;
    let rows = tx
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM memory.ledger WHERE key_id <> $1 \
                 ORDER BY seq LIMIT $2"
            ),
            &[&active_id, &((batch + skip.len()) as i64)],
        )
        .await?;
    let records = rows.iter().filter_map(|r| read_record(r).ok());
    let (resealed, failed) = reseal_plan(keys, records, batch, skip);
    for (seq, mac) in &resealed {
        tx.execute(
            "UPDATE memory.ledger SET key_id = $2, mac = $3 WHERE seq = $1",
            &[seq, &active_id, &&mac[..]],
        )
        .await?;
    }
    Ok((resealed.len(), failed))
}

/// Hands each record after seq `after` to `each`, in seq order, a page at a time (the caller
/// holds one snapshot).
pub(super) async fn each_after(
    client: &Client,
    mut after: i64,
    each: &mut dyn FnMut(Record) -> crate::error::Result<()>,
) -> Result<(), super::fail::Failure> {
    loop {
        let rows = client
            .query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM memory.ledger WHERE seq > $1 \
                     ORDER BY seq LIMIT $2"
                ),
                &[&after, &PAGE],
            )
            .await?;
        for row in &rows {
            let rec = read_record(row)?;
            after = rec.seq;
            each(rec)?;
        }
        if (rows.len() as i64) < PAGE {
            return Ok(());
        }
    }
}

/// Deletes the rows `rule` names, each recorded as purged first, inside the caller's write
/// transaction: how many were recorded, and how many deleted (the same, or the caller fails).
pub(super) async fn purge(
    tx: &impl Sql,
    keys: &KeySet,
    rule: PurgeRule,
    now_ms: i64,
) -> Result<(u64, u64), tokio_postgres::Error> {
    let (condition, bound) = match rule {
        PurgeRule::DeletedBefore(t) => ("status = 'deleted' AND updated_at < $1", t),
        PurgeRule::CreatedBefore(t) => ("created_at < $1", t),
    };
    let select = format!("SELECT id FROM memory.entries WHERE {condition} ORDER BY pos");
    let rows = tx.query(&select, &[&bound]).await?;
    for row in &rows {
        let id: String = row.try_get(0)?;
        append(tx, keys, &id, Kind::Purged, now_ms).await?;
    }
    let delete = format!("DELETE FROM memory.entries WHERE {condition}");
    let deleted = tx.execute(&delete, &[&bound]).await?;
    Ok((rows.len() as u64, deleted))
}
