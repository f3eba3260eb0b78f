//! Namespace quotas on PostgreSQL: migration 6 and the lookup a write checks them by.
//!
//! A quota counts a namespace's rows, whatever their status, and their content's bytes. Counted
//! at every store, that read every row of the namespace (its content too), so a store into a
//! namespace near a quota of 100,000 entries read 100,000 rows, and a principal with a large
//! quota made the store lock, which every writer on every host takes, wait on its own
//! namespace's size. Migration 6 keeps each namespace's usage in `memory.namespace_usage`,
//! maintained by a trigger on `memory.entries` in the transaction that changes the row, so a
//! check is one primary-key lookup and no path that changes rows (a write, purge, retention, a
//! copy in, a hand edit) can leave the count behind. SQLite's migration 6 does the same.

use crate::pgconn::sql::Sql;
use crate::store::model::UsageDrift;

/// Migration 6: `memory.namespace_usage`, filled from the rows already there, and its trigger.
pub(super) const NAMESPACE_USAGE: &str = r#"
CREATE TABLE memory.namespace_usage (
    namespace text PRIMARY KEY,
    entries   bigint NOT NULL,
    bytes     bigint NOT NULL
);

-- Content's own bytes: the column keeps a backslash as `\\` and U+0000 as `\0`, two bytes each
-- (rows.rs), which a quota counts as one.
CREATE FUNCTION memory.content_bytes(content text) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN strpos(content, '\') > 0
                THEN octet_length(regexp_replace(content, '\\(.)', '\1', 'g'))
                ELSE octet_length(content) END;

INSERT INTO memory.namespace_usage (namespace, entries, bytes)
    SELECT namespace, count(*), coalesce(sum(memory.content_bytes(content)), 0)
    FROM memory.entries GROUP BY namespace;

CREATE FUNCTION memory.count_usage() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE memory.namespace_usage
           SET entries = entries - 1, bytes = bytes - memory.content_bytes(OLD.content)
         WHERE namespace = OLD.namespace;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO memory.namespace_usage AS u (namespace, entries, bytes)
             VALUES (NEW.namespace, 1, memory.content_bytes(NEW.content))
        ON CONFLICT (namespace) DO UPDATE
               SET entries = u.entries + 1, bytes = u.bytes + EXCLUDED.bytes;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_usage AFTER INSERT OR DELETE OR UPDATE OF namespace, content
    ON memory.entries FOR EACH ROW EXECUTE FUNCTION memory.count_usage();
"#;

/// The rows `namespace` holds and their content's bytes, as migration 6's trigger counts them.
pub(super) async fn usage(
    client: &impl Sql,
    namespace: &str,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT entries, bytes FROM memory.namespace_usage WHERE namespace = $1",
            &[&namespace],
        )
        .await?;
    match row {
        Some(row) => Ok((row.try_get(0)?, row.try_get(1)?)),
        None => Ok((0, 0)),
    }
}

/// Every namespace whose kept usage disagrees with its rows, counted from them by one scan as
/// the trigger counts them; a kept count for a namespace without rows must be zero.
pub(super) async fn drift(client: &impl Sql) -> Result<Vec<UsageDrift>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH held AS (SELECT namespace, count(*) AS entries, \
                     coalesce(sum(memory.content_bytes(content)), 0)::bigint AS bytes \
                   FROM memory.entries GROUP BY namespace) \
             SELECT coalesce(h.namespace, u.namespace), coalesce(u.entries, 0), \
                    coalesce(u.bytes, 0), coalesce(h.entries, 0), coalesce(h.bytes, 0) \
               FROM held h FULL JOIN memory.namespace_usage u ON u.namespace = h.namespace \
              WHERE coalesce(u.entries, 0) <> coalesce(h.entries, 0) \
                 OR coalesce(u.bytes, 0) <> coalesce(h.bytes, 0) \
              ORDER BY 1",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UsageDrift {
                namespace: r.try_get(0)?,
                kept: (r.try_get(1)?, r.try_get(2)?),
                held: (r.try_get(3)?, r.try_get(4)?),
            })
        })
        .collect()
}

/// Sets `namespace`'s kept usage to what its rows hold, inside the caller's write transaction
/// (which holds the write lock, so no store moves either number meanwhile).
pub(super) async fn recount(
    client: &impl Sql,
    namespace: &str,
) -> Result<Option<UsageDrift>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(memory.content_bytes(content)), 0)::bigint \
             FROM memory.entries WHERE namespace = $1",
            &[&namespace],
        )
        .await?;
    let held: (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    let kept = usage(client, namespace).await?;
    if kept == held {
        return Ok(None);
    }
    client
        .execute(
            "INSERT INTO memory.namespace_usage AS u (namespace, entries, bytes) \
             VALUES ($1, $2, $3) \
             ON CONFLICT (namespace) DO UPDATE SET entries = EXCLUDED.entries, bytes = EXCLUDED.bytes",
            &[&namespace, &held.0, &held.1],
        )
        .await?;
    Ok(Some(UsageDrift {
        namespace: namespace.to_string(),
        kept,
        held,
    }))
}
