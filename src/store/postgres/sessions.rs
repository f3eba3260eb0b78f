//! Session starts per principal per hour in `memory.session_starts`, shared by every host: the
//! count and the insert run under a transaction-scoped advisory lock per principal, so two
//! servers admitting the same principal at once cannot both take the last place; other
//! principals do not wait.

use tokio_postgres::Client;

/// First key of the per-principal advisory locks ("mwss"); the second is the principal's hash.
const SESSIONS_LOCK: i32 = 0x6d77_7373;

/// Admits a session start of `principal` if fewer than `per_hour` started in the hour before
/// `now_ms`, and records it. One transaction; an error rolls it back.
pub(super) async fn admit(
    client: &Client,
    principal: &str,
    now_ms: i64,
    per_hour: u32,
) -> Result<bool, tokio_postgres::Error> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    match locked(client, principal, now_ms, per_hour).await {
        Ok(admitted) => {
            client.batch_execute("COMMIT").await?;
            Ok(admitted)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn locked(
    client: &Client,
    principal: &str,
    now_ms: i64,
    per_hour: u32,
) -> Result<bool, tokio_postgres::Error> {
    // Under READ COMMITTED each statement after the lock sees every start committed before it.
    // (A hash collision only makes two principals take turns.)
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&SESSIONS_LOCK, &principal],
        )
        .await?;
    let hour_ago = now_ms - 3_600_000;
    // Only this principal's old starts: what this lock covers (deleting other principals'
    // rows too could deadlock two admissions).
    client
        .execute(
            "DELETE FROM memory.session_starts WHERE principal = $1 AND started_at < $2",
            &[&principal, &hour_ago],
        )
        .await?;
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM memory.session_starts WHERE principal = $1 AND started_at >= $2",
            &[&principal, &hour_ago],
        )
        .await?
        .try_get(0)?;
    if n >= i64::from(per_hour) {
        return Ok(false);
    }
    client
        .execute(
            "INSERT INTO memory.session_starts (principal, started_at) VALUES ($1, $2)",
            &[&principal, &now_ms],
        )
        .await?;
    Ok(true)
}
