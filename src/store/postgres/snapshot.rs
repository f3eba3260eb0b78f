//! Read-only transactions on the backend's connection: one snapshot for a walk over many pages
//! (verify, export, the chain check) or for the statements of one search.

use tokio_postgres::Client;

use super::fail::Failure;

/// Runs `body` in one read-only snapshot (REPEATABLE READ), so a walk over many pages sees one
/// consistent state.
pub(super) async fn in_snapshot<T>(
    client: &Client,
    body: impl AsyncFnOnce(&Client) -> Result<T, Failure>,
) -> Result<T, Failure> {
    read_only(
        client,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        body,
    )
    .await
}

/// Runs a search's statements in one read-only snapshot with sequential scans priced out
/// (`enable_seqscan = off` for this transaction alone). A search's lookup is one tsquery naming
/// a lexeme per namespace of its scope, and PostgreSQL prices each lexeme it has no statistics
/// for at up to 0.5% of the table: a scope of 66 namespaces (most of them empty) came to a
/// quarter of it, and it scanned all 23,000 rows to find 5 (`tests/postgres/narrow.rs`).
/// Through the index it reads the scope's postings alone.
pub(super) async fn in_search<T>(
    client: &Client,
    body: impl AsyncFnOnce(&Client) -> Result<T, Failure>,
) -> Result<T, Failure> {
    read_only(
        client,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL enable_seqscan = off",
        body,
    )
    .await
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
