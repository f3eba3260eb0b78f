//! `health` and `metrics` on a PostgreSQL store: connectivity, the schema version, the app role's
//! rights on `audit.events` (a widened grant is a fault), the append-only triggers, and the
//! chain verified from a private copy, as `verify` reads it; and the figures `metrics` reports.
//! Messages carry SQLSTATEs and fixed words, never the connection settings.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use super::{Figures, Report, chain_checks};
use crate::audit::inspect::RECONNECTED;
use crate::audit::inspect::Stats;
use crate::cli::db::{ChainCopy, describe, with_client};
use crate::pgconn::DatabaseSettings;
use crate::store::postgres::schema::CURRENT_VERSION;

/// How long connecting may take when the settings do not say: a health check must answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The triggers `db init` puts on `audit.events`; nothing else may be there.
const TRIGGERS: [&str; 2] = ["events_no_truncate", "events_no_update_or_delete"];

/// What an app role must never be able to do to audit events.
const REFUSED: [&str; 3] = ["UPDATE", "DELETE", "TRUNCATE"];

/// The settings, with a connect timeout when they have none.
fn bounded(settings: &DatabaseSettings) -> DatabaseSettings {
    settings.tuned(|config| {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
    })
}

/// Adds the database's checks to `report`. When the database cannot be reached that is the one
/// finding: every other check needs it.
pub(super) fn checks(
    report: &mut Report,
    settings: &DatabaseSettings,
    keyring: Option<&crate::keys::Keyring>,
) {
    let found = with_client(&bounded(settings), async |client| {
        Ok(vec![
            ("database schema version", schema_version(client).await),
            ("audit grants", grants(client).await),
            ("audit triggers", triggers(client).await),
            ("audit chain present", chain_present(client).await),
        ])
    });
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            report.add("database connection", Err(e.to_string()));
            return;
        }
    };
    report.add("database connection", Ok(json!("ok")));
    for (name, result) in found {
        report.add(name, result);
    }
    match ChainCopy::export(settings) {
        Ok(copy) => chain_checks(report, copy.path(), keyring),
        Err(e) => report.add("audit chain", Err(format!("cannot copy the chain: {e}"))),
    }
}

/// The schema version must be the one this binary writes: older wants `db init`, newer a newer
/// binary (`serve` refuses both).
async fn schema_version(client: &Client) -> Result<Value, String> {
    let version: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM memory.schema_version",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| {
            format!(
                "cannot read the schema version: {}; run `memwarden db init`",
                describe(&e)
            )
        })?;
    match version.cmp(&CURRENT_VERSION) {
        std::cmp::Ordering::Equal => Ok(json!({"version": version})),
        std::cmp::Ordering::Less => Err(format!(
            "the schema is at version {version}, this binary needs {CURRENT_VERSION}: run \
             `memwarden db init`"
        )),
        std::cmp::Ordering::Greater => Err(format!(
            "the schema is at version {version}, newer than this binary's {CURRENT_VERSION}: \
             upgrade memwarden (serve refuses this database)"
        )),
    }
}

/// The connected role, and every role it may act as (its memberships, inherited or reachable by
/// `SET ROLE`; a superuser is a member of every role), must lack UPDATE, DELETE and TRUNCATE on
/// `audit.events`: the grants are the first wall that keeps a compromised server from rewriting
/// history (the triggers the second, the chain and MACs the last).
async fn grants(client: &Client) -> Result<Value, String> {
    let rows = client
        .query(
            "SELECT r.rolname::text, p.privilege \
             FROM pg_roles r CROSS JOIN unnest($1::text[]) AS p(privilege) \
             WHERE pg_has_role(current_user, r.oid, 'MEMBER') \
               AND has_table_privilege(r.oid, 'audit.events', p.privilege) \
             ORDER BY 1, 2",
            &[&REFUSED.as_slice()],
        )
        .await
        .map_err(|e| format!("cannot read the grants on audit.events: {}", describe(&e)))?;
    let (user, superuser): (String, bool) = client
        .query_one(
            "SELECT current_user::text, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .map_err(|e| format!("cannot read the connected role: {}", describe(&e)))?;
    if superuser {
        return Err(format!(
            "{user} is a superuser and may change audit events: connect as the app role `db \
             init` made"
        ));
    }
    if rows.is_empty() {
        return Ok(json!({"role": user, "refused": REFUSED}));
    }
    let widened: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Err(format!(
        "{user} may change audit events: {} on audit.events; run `memwarden db init` to narrow \
         the grants again, and revoke any membership that grants these",
        widened.join(", ")
    ))
}

/// Both append-only triggers exist and fire (`tgenabled` O or A: R fires only on a replica, D
/// never), and nothing else is attached to `audit.events`: another trigger or a rule could drop
/// or rewrite events as they are inserted.
async fn triggers(client: &Client) -> Result<Value, String> {
    let rows = client
        .query(
            "SELECT t.tgname::text, t.tgenabled::text, \
                    t.tgfoid = 'audit.refuse_change()'::regprocedure \
             FROM pg_trigger t WHERE t.tgrelid = 'audit.events'::regclass AND NOT t.tgisinternal \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| format!("cannot read the triggers on audit.events: {}", describe(&e)))?;
    let rules: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_rewrite WHERE ev_class = 'audit.events'::regclass",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| format!("cannot read the rules on audit.events: {}", describe(&e)))?;
    let mut problems = Vec::new();
    for want in TRIGGERS {
        match rows.iter().find(|r| r.get::<_, String>(0) == want) {
            None => problems.push(format!("{want} is missing")),
            Some(r) if !matches!(r.get::<_, String>(1).as_str(), "O" | "A") => {
                problems.push(format!("{want} is disabled"));
            }
            Some(r) if !r.get::<_, bool>(2) => {
                problems.push(format!("{want} runs another function"));
            }
            Some(_) => {}
        }
    }
    for r in &rows {
        let name: String = r.get(0);
        if !TRIGGERS.contains(&name.as_str()) {
            problems.push(format!("unexpected trigger {name}"));
        }
    }
    if rules > 0 {
        problems.push(format!("{rules} unexpected rules"));
    }
    if problems.is_empty() {
        Ok(json!({"enabled": TRIGGERS}))
    } else {
        Err(format!(
            "audit.events is not append-only as `db init` made it: {}",
            problems.join(", ")
        ))
    }
}

/// Entries without a single audit event mean the chain was removed, not that it is new.
async fn chain_present(client: &Client) -> Result<Value, String> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM memory.entries), \
                    (SELECT count(*) FROM audit.events)",
            &[],
        )
        .await
        .map_err(|e| format!("cannot count entries and events: {}", describe(&e)))?;
    let (entries, events): (i64, i64) = (row.get(0), row.get(1));
    if entries > 0 && events == 0 {
        Err(format!(
            "{entries} entries but no audit events: the chain was removed"
        ))
    } else {
        Ok(json!({"entries": entries, "events": events}))
    }
}

/// The chain's counts, as [`crate::audit::inspect::stats`] reads them from an audit.db, read
/// from `audit.events` in place (no copy of the whole chain on every scrape). One REPEATABLE
/// READ snapshot, so the series agree with each other.
async fn chain_stats(client: &mut Client) -> Result<Stats, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let calls = tx
        .query(
            "SELECT coalesce(tool, 'unknown'), coalesce(outcome, 'unknown'), count(*) \
             FROM audit.events WHERE kind = 'call' GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let durations_us = tx
        .query(
            "SELECT (detail::jsonb ->> 'duration_us')::numeric::bigint FROM audit.events \
             WHERE kind = 'call' AND jsonb_typeof(detail::jsonb -> 'duration_us') = 'number'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sessions: i64 = tx
        .query_one(
            "SELECT count(*) FROM audit.events WHERE kind = 'session_start'",
            &[],
        )
        .await?
        .get(0);
    let security = tx
        .query(
            "SELECT coalesce(detail::jsonb ->> 'event', 'unknown'), count(*) FROM audit.events \
             WHERE kind = 'security' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let row = tx
        .query_one(
            "SELECT count(*), coalesce(sum((detail::jsonb ->> 'failed_attempts')::numeric), 0)::bigint \
             FROM audit.events WHERE kind = 'security' AND detail::jsonb ->> 'event' = $1",
            &[&RECONNECTED],
        )
        .await?;
    tx.commit().await?;
    Ok(Stats {
        calls,
        durations_us,
        sessions,
        security,
        reconnects: row.get(0),
        connection_errors: row.get(1),
    })
}

/// The figures `metrics` reports: the chain's counts, entries by status, and the bytes each
/// schema's tables hold.
pub(super) fn figures(settings: &DatabaseSettings) -> anyhow::Result<Figures> {
    with_client(&bounded(settings), async |client| {
        let stats = chain_stats(client)
            .await
            .map_err(|e| anyhow::anyhow!("cannot count audit events: {}", describe(&e)))?;
        let statuses = client
            .query(
                "SELECT status, count(*) FROM memory.entries GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot count entries: {}", describe(&e)))?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>();
        let mut sizes = Vec::new();
        for schema in ["memory", "audit"] {
            let bytes: i64 = client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 'p')",
                    &[&schema],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(|e| anyhow::anyhow!("cannot measure {schema}: {}", describe(&e)))?;
            sizes.push((schema, bytes.max(0) as u64));
        }
        Ok(Figures {
            stats,
            statuses,
            sizes,
        })
    })
}
