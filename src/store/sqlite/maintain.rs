//! Index upkeep while servers run: FTS5 segment merges in small write transactions, `PRAGMA
//! optimize`, a WAL checkpoint. Never holds the write lock long: agents' writes interleave.

use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use super::Sqlite;
use crate::store::backend::{IndexShape, MaintainReport};

/// The FTS5 structure record's row id in an index's `_data` table.
const STRUCTURE_ROWID: i64 = 10;

/// The full-text indexes of memory.db: the shared one and the namespace-qualified one.
const INDEXES: [&str; 2] = ["entries_fts", "scoped_fts"];

/// SQLite's varint (as FTS5 writes it): big-endian 7-bit groups, the 9th byte whole.
fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *data.get(*at)?;
        *at += 1;
        if i == 8 {
            return Some((v << 8) | u64::from(b));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Levels and segments from FTS5's structure record: a 4-byte cookie, an optional 4-byte
/// version-2 marker, then varints nLevel and nSegment.
fn decode_shape(data: &[u8]) -> Option<IndexShape> {
    let mut at = 4;
    if data.get(4..8) == Some(&[0xff, 0x00, 0x00, 0x01]) {
        at = 8;
    }
    let levels = varint(data, &mut at)?;
    let segments = varint(data, &mut at)?;
    Some(IndexShape { levels, segments })
}

impl Sqlite {
    /// The full-text indexes' current shape: their segments added up, the deeper one's levels.
    pub fn fts_shape(&self) -> IndexShape {
        let mut shape = IndexShape::default();
        for index in INDEXES {
            let data: Vec<u8> = self
                .conn
                .query_row(
                    &format!("SELECT block FROM {index}_data WHERE id = ?1"),
                    [STRUCTURE_ROWID],
                    |r| r.get(0),
                )
                .unwrap_or_default();
            let one = decode_shape(&data).unwrap_or_default();
            shape.segments += one.segments;
            shape.levels = shape.levels.max(one.levels);
        }
        shape
    }

    /// Merges each full-text index's segments towards one (see [`merge`]), then `PRAGMA
    /// optimize` and a passive WAL checkpoint.
    pub(super) fn merge_and_checkpoint(
        &mut self,
        lock_target: Duration,
    ) -> rusqlite::Result<MaintainReport> {
        let started = Instant::now();
        let before = self.fts_shape();
        let mut report = MaintainReport {
            segments_before: before.segments,
            levels_before: before.levels,
            ..Default::default()
        };
        for index in INDEXES {
            merge(&self.conn, index, lock_target, &mut report)?;
        }
        let after = self.fts_shape();
        report.segments_after = after.segments;
        report.levels_after = after.levels;
        report.total_ms = started.elapsed().as_secs_f64() * 1000.0;
        (report.log_frames, report.log_copied) =
            crate::sqlite_file::optimize_and_checkpoint(&self.conn)?;
        Ok(report)
    }
}

/// Merges `index`'s segments in steps, sizing each write transaction so it holds the write lock
/// about `lock_target`, resting as long between steps; stops when a step does no work.
fn merge(
    conn: &Connection,
    index: &str,
    lock_target: Duration,
    report: &mut MaintainReport,
) -> rusqlite::Result<()> {
    let mut pages: i64 = 16;
    loop {
        let t = Instant::now();
        let did_work = merge_step(conn, index, pages)?;
        let took = t.elapsed();
        report.steps += 1;
        report.longest_step_ms = report.longest_step_ms.max(took.as_secs_f64() * 1000.0);
        if !did_work {
            return Ok(());
        }
        // Aim at half the target, so one slow commit stays under it.
        if took < lock_target / 4 && pages < 4096 {
            pages *= 2;
        } else if took > lock_target / 2 && pages > 1 {
            pages /= 2;
        }
        std::thread::sleep(took.max(Duration::from_millis(5)));
    }
}

/// One `merge` step in its own write transaction. A negative page count lets FTS5 merge
/// segments of any levels (an incremental 'optimize'); a change count below 2 means the step
/// found nothing to merge (FTS5's documented test).
fn merge_step(conn: &Connection, index: &str, pages: i64) -> rusqlite::Result<bool> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let before = tx.total_changes();
    tx.execute(
        &format!("INSERT INTO {index} ({index}, rank) VALUES ('merge', ?1)"),
        [-pages],
    )?;
    let changed = tx.total_changes() - before;
    tx.commit()?;
    Ok(changed >= 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_record_shape() {
        // cookie, v2 marker, nLevel 2, nSegment 300 (varint 0x82 0x2c).
        let rec = [0, 0, 0, 7, 0xff, 0, 0, 1, 2, 0x82, 0x2c, 9];
        assert_eq!(
            decode_shape(&rec),
            Some(IndexShape {
                levels: 2,
                segments: 300
            })
        );
        assert_eq!(
            decode_shape(&[0, 0, 0, 1, 3, 5]),
            Some(IndexShape {
                levels: 3,
                segments: 5
            })
        );
        assert_eq!(decode_shape(&[0, 0]), None);
    }
}
