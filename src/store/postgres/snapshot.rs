//! Read-only transactions on the backend's connection: one snapshot for a walk over many pages
//! (verify, export, the chain check) or for the statements of one search.

use tokio_postgres::Client;

use super::fail::Failure;
use crate::pgconn::sql::Cached;

/// Runs `body` in one read-only snapshot (REPEATABLE READ), so a walk over many pages sees one
/// consistent state; then waits until all it saw is on disk ([`crate::audit::postgres::FLUSH`]):
/// a group's writes are visible a flush before they are durable (`group.rs`), and what a walk
/// reports (a verification, a copy, a backup) must not hold a row a crash could take back.
pub(super) async fn in_snapshot<T>(
    client: &Client,
    body: impl AsyncFnOnce(&Client) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let value = read_only(
        client,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        body,
    )
    .await?;
    client.batch_execute(crate::audit::postgres::FLUSH).await?;
    Ok(value)
}

/// How a search's transaction starts: one read-only snapshot with sequential scans priced out
/// (`enable_seqscan = off` for this transaction alone) and every plan made for its values
/// (`plan_cache_mode`). A search reads a few lexemes' postings, newest first, and the rows they
/// lead to by primary key; on statistics that lag the table (a table never analyzed, or grown
/// since) PostgreSQL may take it for a few pages and scan all of it instead, and with scans
/// priced out it never does. Its statements are prepared once per connection; a generic plan,
/// which PostgreSQL may settle on after five runs of one, cannot see the lexemes or namespaces
/// and so not their postings, so each run is planned for its own values, as an unprepared
/// statement is. Without JIT compilation (`jit = off`): a plan holding a scan priced out costs
/// more than `jit_above_cost`, and compiling it took 190 to 260 ms of a search that ran in
/// half a millisecond. Without parallel workers (`max_parallel_workers_per_gather = 0`): a
/// plan priced high gets a Gather, and starting its two workers took 10 ms of a search at 1M
/// entries that ran in 2 ms without them.
const SEARCH_BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
     SET LOCAL enable_seqscan = off; SET LOCAL jit = off; \
     SET LOCAL max_parallel_workers_per_gather = 0; \
     SET LOCAL plan_cache_mode = force_custom_plan";

/// Runs a search's statements in one read-only snapshot ([`SEARCH_BEGIN`]), each prepared
/// once on the connection. The transaction's start goes out with the body's first statement
/// and its end after the last: what a search costs here is mostly round trips, and these save
/// one (requests on one connection are sent in the order they are first polled, `biased`, and
/// answered in that order).
pub(super) async fn in_search<T>(
    sql: Cached<'_>,
    body: impl AsyncFnOnce(&Cached<'_>) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let (begun, result) = tokio::join!(biased; sql.client.batch_execute(SEARCH_BEGIN), body(&sql));
    // Read-only: ending it either way loses nothing.
    let end = sql.client.batch_execute("ROLLBACK").await;
    begun?;
    let value = result?;
    end?;
    Ok(value)
}

/// Runs `body` in the read-only transaction `begin` starts, then ends it.
async fn read_only<T>(
    client: &Client,
    begin: &str,
    body: impl AsyncFnOnce(&Client) -> Result<T, Failure>,
) -> Result<T, Failure> {
    client.batch_execute(begin).await?;
    let result = body(client).await;
    // Read-only: ending it either way loses nothing.
    let end = client.batch_execute("ROLLBACK").await;
    let value = result?;
    end?;
    Ok(value)
}
