//! Namespace quotas on SQLite: the usage migration 6's triggers keep ([`super::migrations`]),
//! held against the rows (`memwarden verify`) and counted again from them (`memwarden
//! maintain`). PostgreSQL's counterpart is `store/postgres/quota.rs`.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::model::UsageDrift;

/// Every namespace whose kept usage disagrees with its rows: counted from the rows by one scan,
/// as the triggers count them (rows of every status, content's UTF-8 bytes); a kept count for a
/// namespace without rows must be zero.
pub(super) fn drift(conn: &Connection) -> rusqlite::Result<Vec<UsageDrift>> {
    let mut stmt = conn.prepare(
        "WITH held AS (SELECT namespace, count(*) AS entries, \
                 coalesce(sum(length(CAST(content AS BLOB))), 0) AS bytes \
               FROM entries GROUP BY namespace) \
         SELECT h.namespace, coalesce(u.entries, 0), coalesce(u.bytes, 0), h.entries, h.bytes \
           FROM held h LEFT JOIN namespace_usage u ON u.namespace = h.namespace \
          WHERE coalesce(u.entries, 0) != h.entries OR coalesce(u.bytes, 0) != h.bytes \
         UNION ALL \
         SELECT u.namespace, u.entries, u.bytes, 0, 0 FROM namespace_usage u \
          WHERE (u.entries != 0 OR u.bytes != 0) \
            AND NOT EXISTS (SELECT 1 FROM entries e WHERE e.namespace = u.namespace) \
         ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(UsageDrift {
            namespace: r.get(0)?,
            kept: (r.get(1)?, r.get(2)?),
            held: (r.get(3)?, r.get(4)?),
        })
    })?;
    rows.collect()
}

/// Sets `namespace`'s kept usage to what its rows hold, inside the caller's write transaction.
pub(super) fn recount(conn: &Connection, namespace: &str) -> rusqlite::Result<Option<UsageDrift>> {
    let held: (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(CAST(content AS BLOB))), 0) FROM entries \
         WHERE namespace = ?1",
        [namespace],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let kept: (i64, i64) = conn
        .query_row(
            "SELECT entries, bytes FROM namespace_usage WHERE namespace = ?1",
            [namespace],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, 0));
    if kept == held {
        return Ok(None);
    }
    conn.execute(
        "INSERT INTO namespace_usage (namespace, entries, bytes) VALUES (?1, ?2, ?3) \
         ON CONFLICT (namespace) DO UPDATE SET entries = excluded.entries, bytes = excluded.bytes",
        params![namespace, held.0, held.1],
    )?;
    Ok(Some(UsageDrift {
        namespace: namespace.to_string(),
        kept,
        held,
    }))
}
