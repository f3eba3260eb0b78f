//! PostgreSQL's side of a whole-store copy (see [`crate::store::transfer`]): audit events,
//! rows, ledger records and session starts out of one REPEATABLE READ snapshot, page by page in
//! storage order; and in as given, a batch per transaction, each statement one `unnest` of the
//! batch's columns. Events enter under the append lock every writer takes, and only where they
//! continue the chain.

use tokio_postgres::{Client, GenericClient};

use super::fail::Failure;
use super::rows::{COLUMN_COUNT, COLUMNS, content_to_column, read_row};
use crate::audit::copy::{pg_append, pg_events_from};
use crate::error::Error;
use crate::store::transfer::{BATCH, Batch, Copied, CopySink, Resume, SessionStart};

const PAGE: i64 = BATCH as i64;

/// Streams what `from` has not copied yet; the caller holds the snapshot.
pub(super) async fn copy_out(
    client: &Client,
    from: &Resume,
    sink: &mut dyn CopySink,
) -> Result<(), Failure> {
    if let Some(mut seq) = from.events_from {
        loop {
            let events = pg_events_from(client, seq, PAGE).await?;
            let n = events.len();
            for e in events {
                seq = e.seq + 1;
                sink.event(e)?;
            }
            if (n as i64) < PAGE {
                break;
            }
        }
    }
    let mut after = match &from.after_entry {
        None => i64::MIN,
        Some(id) => client
            .query_opt("SELECT pos FROM memory.entries WHERE id = $1", &[id])
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .ok_or_else(|| crate::store::transfer::gone(id))?,
    };
    let sql =
        format!("SELECT {COLUMNS} FROM memory.entries e WHERE e.pos > $1 ORDER BY e.pos LIMIT $2");
    loop {
        let rows = client.query(&sql, &[&after, &PAGE]).await?;
        for row in &rows {
            after = row.try_get(COLUMN_COUNT - 1)?;
            sink.entry(read_row(row))?;
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    super::ledger::each_after(client, from.after_ledger, &mut |r| sink.ledger(r)).await?;
    if from.session_starts {
        let rows = client
            .query(
                "SELECT principal, started_at FROM memory.session_starts",
                &[],
            )
            .await?;
        for r in &rows {
            sink.session_start(SessionStart {
                principal: r.try_get(0)?,
                started_at: r.try_get(1)?,
            })?;
        }
    }
    Ok(())
}

/// Writes `batch` in one transaction.
pub(super) async fn copy_in(client: &mut Client, batch: &Batch) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    if !batch.events.is_empty() {
        pg_append(&tx, &batch.events).await.map_err(|e| match e {
            crate::audit::postgres::PgAuditError::Database(e) => Failure::Db(e),
            other => Failure::Store(Error::Internal(other.to_string())),
        })?;
    }
    insert_entries(&tx, batch).await?;
    let r = &batch.ledger;
    tx.execute(
        "INSERT INTO memory.ledger (seq, entry_id, kind, at, prev_hash, hash, key_id, mac) \
         SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::bytea[], \
         $6::bytea[], $7::text[], $8::bytea[])",
        &[
            &r.iter().map(|r| r.seq).collect::<Vec<_>>(),
            &r.iter().map(|r| r.entry_id.as_str()).collect::<Vec<_>>(),
            &r.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
            &r.iter().map(|r| r.at).collect::<Vec<_>>(),
            &r.iter().map(|r| r.prev_hash.as_slice()).collect::<Vec<_>>(),
            &r.iter().map(|r| r.hash.as_slice()).collect::<Vec<_>>(),
            &r.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(),
            &r.iter().map(|r| r.mac.as_slice()).collect::<Vec<_>>(),
        ],
    )
    .await?;
    let s = &batch.session_starts;
    tx.execute(
        "INSERT INTO memory.session_starts (principal, started_at) \
         SELECT * FROM unnest($1::text[], $2::int8[])",
        &[
            &s.iter().map(|s| s.principal.as_str()).collect::<Vec<_>>(),
            &s.iter().map(|s| s.started_at).collect::<Vec<_>>(),
        ],
    )
    .await?;
    // Posted as they come, as the rows before them were ([`super::behind`]).
    super::behind::catch_up(&tx).await?;
    tx.commit().await?;
    Ok(())
}

/// The batch's rows, in its order (the identity column numbers them as they come).
async fn insert_entries(tx: &impl GenericClient, batch: &Batch) -> Result<(), Failure> {
    let e = &batch.entries;
    if e.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&crate::store::rows::RawRow) -> &str| e.iter().map(f).collect::<Vec<_>>();
    let content: Vec<String> = e
        .iter()
        .map(|r| content_to_column(&r.content).into_owned())
        .collect();
    let n = tx
        .execute(
            "INSERT INTO memory.entries (id, namespace, content, tags, metadata, status, \
             supersedes, principal, session_id, created_at, updated_at, content_sha256, key_id, mac) \
             SELECT id, ns, c, t, m, st, sup, p, s, ca, ua, h, k, mac FROM unnest($1::text[], \
             $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
             $9::text[], $10::int8[], $11::int8[], $12::bytea[], $13::text[], $14::bytea[]) \
             WITH ORDINALITY AS u(id, ns, c, t, m, st, sup, p, s, ca, ua, h, k, mac, n) ORDER BY n",
            &[
                &text(|r| &r.id),
                &text(|r| &r.namespace),
                &content,
                &text(|r| &r.tags),
                &e.iter().map(|r| r.metadata.as_deref()).collect::<Vec<_>>(),
                &text(|r| &r.status),
                &e.iter().map(|r| r.supersedes.as_deref()).collect::<Vec<_>>(),
                &text(|r| &r.principal),
                &text(|r| &r.session_id),
                &e.iter().map(|r| r.created_at).collect::<Vec<_>>(),
                &e.iter().map(|r| r.updated_at).collect::<Vec<_>>(),
                &e.iter().map(|r| r.content_sha256.as_slice()).collect::<Vec<_>>(),
                &text(|r| &r.key_id),
                &e.iter().map(|r| r.mac.as_slice()).collect::<Vec<_>>(),
            ],
        )
        .await?;
    if n != e.len() as u64 {
        return Err(Error::Internal(format!("copying {} rows: {n} inserted", e.len())).into());
    }
    Ok(())
}

/// What the database holds of an earlier copy.
pub(super) async fn copied(client: &Client) -> Result<Copied, Failure> {
    let r = client
        .query_one(
            "SELECT (SELECT id FROM memory.entries ORDER BY pos DESC LIMIT 1), \
                    (SELECT count(*) FROM memory.entries), \
                    (SELECT coalesce(max(seq), 0) FROM memory.ledger)::bigint, \
                    (SELECT count(*) FROM memory.session_starts)",
            &[],
        )
        .await?;
    Ok(Copied {
        last_entry: r.try_get(0)?,
        entries: r.try_get::<_, i64>(1)?.max(0) as u64,
        ledger_seq: r.try_get(2)?,
        session_starts: r.try_get::<_, i64>(3)?.max(0) as u64,
        last_event: crate::audit::copy::pg_last(client).await?,
    })
}
