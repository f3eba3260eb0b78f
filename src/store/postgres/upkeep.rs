//! The postings against the rows (`memwarden verify`, `memwarden maintain`).
//!
//! `memory.postings` (migration 7, [`super::postings`]) is what every search reads, kept by
//! triggers and the poster from each active row's lexemes, which PostgreSQL parses from the
//! sealed namespace, content and tags (`memory.scoped_words`, migration 9). The rows' seals do
//! not cover it: an owner who deletes a row's postings hides the row from searches for those
//! words, and one who adds postings makes a row come up for words it does not hold; so does
//! any edit of rows with the triggers off.
//! [`drift`] compares the two in one statement; [`repost`] puts them back in short write
//! transactions that check the rows again under the write lock, so a write between the
//! comparison and the repair is never undone.
//!
//! Only rows at or below `memory.posted.upto` are due their postings ([`super::behind`]); a
//! posting above it is stray. `maintain` first posts every row behind.
//!
//! What is reported is counts, entry ids and positions: never a lexeme, which is a word of a
//! memory.

use tokio::runtime::Runtime;

use super::behind::{lexeme_array, lexemes_of};
use super::fail::Failure;
use super::write::PgTx;
use crate::error::Result;
use crate::keys::KeySet;
use crate::pgconn::sql::{Cached, Sql};
use crate::store::backend::WriteTx;
use crate::store::model::{IndexDrift, IndexRepair};

/// Postings put back or removed per write transaction: each holds the write lock about as
/// long as a store does.
const BATCH: usize = 500;

/// What [`drift`] found, with what [`repost`] needs to put it back.
#[derive(Debug, Default)]
pub(super) struct Drifted {
    /// Active entries missing postings: (entry id, position, how many).
    missing: Vec<(String, i64, i64)>,
    /// Postings no active row holds: (position, their lexemes).
    stray: Vec<(i64, Vec<String>)>,
}

impl Drifted {
    /// The findings, without the lexemes.
    pub(super) fn report(&self) -> IndexDrift {
        IndexDrift {
            missing: self
                .missing
                .iter()
                .map(|(id, _, n)| (id.clone(), (*n).max(0) as u64))
                .collect(),
            stray: self
                .stray
                .iter()
                .map(|(pos, lexemes)| (*pos, lexemes.len() as u64))
                .collect(),
        }
    }
}

/// Every (lexeme, position) the active rows call for and `memory.postings` lacks, and every one
/// it holds that no active row calls for: one full join of the two, grouped by position (and
/// entry, for what is missing), in position order.
pub(super) async fn drift(client: &impl Sql) -> Result<Drifted, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "WITH held AS ( \
                   SELECT e.id, e.pos, l FROM memory.entries e, {} \
                    WHERE e.status = 'active' AND e.pos <= (SELECT upto FROM memory.posted)), \
                 drift AS ( \
                   SELECT h.id, coalesce(h.pos, p.pos) AS pos, p.lexeme \
                     FROM held h FULL JOIN memory.postings p ON p.lexeme = h.l AND p.pos = h.pos \
                    WHERE h.pos IS NULL OR p.pos IS NULL) \
                 SELECT pos, id, count(*), \
                        CASE WHEN id IS NULL THEN array_agg(lexeme) END \
                   FROM drift GROUP BY pos, id ORDER BY pos, id",
                lexemes_of("e")
            ),
            &[],
        )
        .await?;
    let mut found = Drifted::default();
    for row in &rows {
        let pos: i64 = row.try_get(0)?;
        match row.try_get::<_, Option<String>>(1)? {
            Some(id) => found.missing.push((id, pos, row.try_get(2)?)),
            None => found.stray.push((pos, row.try_get(3)?)),
        }
    }
    Ok(found)
}

/// Dead row versions in `memory.entries` awaiting vacuum, from the statistics views.
pub(super) async fn dead_rows(client: &impl Sql) -> Result<u64, Failure> {
    let row = client
        .query_opt(
            "SELECT n_dead_tup FROM pg_stat_user_tables \
             WHERE schemaname = 'memory' AND relname = 'entries'",
            &[],
        )
        .await?;
    let n: Option<i64> = row.map(|r| r.try_get(0)).transpose()?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Puts back what `found` says, [`BATCH`] postings per write transaction, each taking the
/// write lock and checking the rows again: a missing posting is inserted only while its row is
/// still active and holds the lexeme, a stray one deleted only while no active row holds it.
/// Returns what it found and the postings it inserted and deleted.
pub(super) fn repost(
    rt: &Runtime,
    sql: Cached<'_>,
    audit_keys: &KeySet,
    found: &Drifted,
) -> Result<IndexRepair> {
    let (mut inserted, mut deleted) = (0, 0);
    let mut positions = found
        .missing
        .iter()
        .map(|(_, pos, n)| (*pos, *n))
        .peekable();
    while positions.peek().is_some() {
        let mut batch = Vec::new();
        let mut size = 0;
        while size < BATCH as i64
            && let Some((pos, n)) = positions.next()
        {
            batch.push(pos);
            size += n.max(1);
        }
        inserted += in_write(rt, sql, audit_keys, async |c| {
            c.execute(
                &format!(
                    "INSERT INTO memory.postings (lexeme, pos) \
                     SELECT l, e.pos FROM memory.entries e, {} \
                      WHERE e.pos = ANY($1) AND e.status = 'active' \
                        AND e.pos <= (SELECT upto FROM memory.posted) ON CONFLICT DO NOTHING",
                    lexemes_of("e")
                ),
                &[&batch],
            )
            .await
        })?;
    }
    let pairs: Vec<(i64, &String)> = found
        .stray
        .iter()
        .flat_map(|(pos, lexemes)| lexemes.iter().map(move |l| (*pos, l)))
        .collect();
    for batch in pairs.chunks(BATCH) {
        let (pos, lexemes): (Vec<i64>, Vec<&String>) = batch.iter().copied().unzip();
        deleted += in_write(rt, sql, audit_keys, async |c| {
            c.execute(
                &format!(
                    "DELETE FROM memory.postings p \
                     USING unnest($1::bigint[], $2::text[]) AS s(pos, l) \
                      WHERE p.pos = s.pos AND p.lexeme = s.l AND NOT EXISTS ( \
                        SELECT FROM memory.entries e WHERE e.pos = s.pos AND e.status = 'active' \
                           AND e.pos <= (SELECT upto FROM memory.posted) AND s.l = ANY({}))",
                    lexeme_array("e")
                ),
                &[&pos, &lexemes],
            )
            .await
        })?;
    }
    Ok(IndexRepair {
        found: found.report(),
        inserted,
        deleted,
    })
}

/// Runs `work` in a write transaction of its own, holding the write lock, and commits it
/// without an audit event (the command's own events record the run).
fn in_write<'c>(
    rt: &'c Runtime,
    sql: Cached<'c>,
    audit_keys: &'c KeySet,
    work: impl AsyncFnOnce(&Cached<'c>) -> Result<u64, tokio_postgres::Error>,
) -> Result<u64> {
    let mut tx = PgTx::begin(rt, sql, audit_keys)?;
    let n = tx.run_upkeep(work)?;
    Box::new(tx).commit(None).map_err(|e| e.error)?;
    Ok(n)
}
