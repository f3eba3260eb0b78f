//! Postings written behind the stores (migration 8). A 60-word store spent most of its time in
//! the database posting its words: at 100k entries the row itself took 0.07 ms of the backend,
//! its 60 postings 0.26 ms more, all of it inside the write's transaction and before its
//! acknowledgement. Now a store commits its row and event alone, and the rows are posted in
//! short transactions of their own by one serving process's second connection ([`Behind`])
//! while the writers go on: one poster per store, whichever process holds its lock. Since
//! migration 9 ([`PARSED_BEHIND`]) the poster parses the rows' words too.
//!
//! `memory.posted.upto` says how far the postings go, and every committed state keeps one
//! invariant: an active row at or below `upto` has exactly its postings, and no row above it has
//! any. So a search reads `upto`, the postings at or below it, and the rows above it (the tail,
//! in its namespaces only, checked against its lexemes directly), all in one snapshot
//! ([`super::postings::newest_in`]): what it finds does not depend on how far posting has got.
//!
//! How the invariant holds without a lock that stores would wait on:
//! - [`POST_BEHIND`] moves `upto` over the oldest rows above it, after locking them `FOR SHARE
//!   NOWAIT` (whatever their status), and posts the active ones in the same transaction. A row
//!   being changed cannot be locked, so the step fails and is tried again later; a row it has
//!   locked cannot be changed until it commits.
//! - The triggers of a row's insert, update and delete keep its postings only when its position
//!   is at or below `upto` as they read it. A writer changing a row above `upto` holds its lock,
//!   so `upto` cannot pass the row before the writer commits; a writer blocked by the step's
//!   lock reads `upto` after the step has committed.
//! - Every writer of memwarden's numbers rows and commits them under the store's write lock, so
//!   rows commit in the order of their positions: no row below a committed row is still in
//!   flight when a step reads which rows to post.
//!
//! A step commits with `synchronous_commit` off: its postings are derived from rows already
//! durable, and a crash that loses it loses `upto`'s move with it (WAL is replayed in order), so
//! the rows are simply posted again. A lagging indexer costs searches time, never results.

use std::time::Duration;

use tokio_postgres::GenericClient;

mod poster;

pub(super) use poster::Behind;

/// Rows posted per step: a step holds their row locks (an update of one of them waits for it),
/// and at 100k entries posts about four rows a millisecond.
pub(super) const STEP: i32 = 64;

/// A write of its own (not grouped: the CLI's) ends with one step before its COMMIT (guarded
/// as [`super::group::COMMIT`] is), so what it writes is posted with it.
pub(super) const STEP_THEN_COMMIT: &str = "SELECT memory.post_behind(64); SELECT 1; COMMIT";

/// Migration 8: `memory.posted`, the triggers that keep postings only at or below it, and the
/// step that moves it (`memory.post_behind`). Every row there is now was posted by migration 7's
/// triggers, so `upto` starts at the newest.
pub(super) const POSTED: &str = r#"
CREATE TABLE memory.posted (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    upto bigint NOT NULL
);
INSERT INTO memory.posted (upto) SELECT coalesce(max(pos), 0) FROM memory.entries;

CREATE OR REPLACE FUNCTION memory.post_entry() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    upto bigint := (SELECT p.upto FROM memory.posted p);
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.status = 'active' AND OLD.pos <= upto THEN
        DELETE FROM memory.postings
         WHERE lexeme = ANY(tsvector_to_array(OLD.scoped)) AND pos = OLD.pos;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'active' AND NEW.pos <= upto THEN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, NEW.pos FROM unnest(tsvector_to_array(NEW.scoped)) AS l;
    END IF;
    RETURN NULL;
END $$;

-- One step: posts the oldest `step` rows above `upto` and moves it over them. Returns how many
-- rows it passed (fewer than `step`: none are left), or -1 when another process is posting or
-- one of the rows is being changed. It never waits for a lock.
CREATE OR REPLACE FUNCTION memory.post_behind(step int) RETURNS int
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    done bigint;
    last bigint;
    n int;
BEGIN
    SELECT p.upto INTO done FROM memory.posted p FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    BEGIN
        SELECT count(*), max(s.pos) INTO n, last FROM (
            SELECT e.pos FROM memory.entries e WHERE e.pos > done ORDER BY e.pos LIMIT step
            FOR SHARE NOWAIT) AS s;
    EXCEPTION WHEN lock_not_available THEN
        RETURN -1;
    END;
    IF n = 0 THEN
        RETURN 0;
    END IF;
    BEGIN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(e.scoped)) AS l
             WHERE e.pos > done AND e.pos <= last AND e.status = 'active';
    EXCEPTION WHEN unique_violation THEN
        -- Postings above `upto` that an owner wrote by hand: keep what is right, and let
        -- `verify` report the rest.
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(e.scoped)) AS l
             WHERE e.pos > done AND e.pos <= last AND e.status = 'active'
            ON CONFLICT DO NOTHING;
    END;
    UPDATE memory.posted SET upto = last;
    RETURN n;
END $$;
"#;

/// Migration 9: a row's lexemes are parsed behind the store too. They were a stored generated
/// column (`scoped`, migration 3), parsed inside every INSERT: 0.13 ms of a 60-word row's
/// 0.29 ms in the store's backend, while the writers wait on its lock; and read back only by the
/// poster, the triggers, `verify` and a search's unposted rows. Now each of those parses the
/// sealed namespace, content and tags with the same function (`memory.scoped_words`), so what
/// a row is posted under is what it holds, however it was written. The column goes (dropping a
/// column rewrites nothing). `memory.content_bytes` is no longer STRICT, so the usage trigger
/// inlines it instead of planning a function call on every insert (20 µs).
pub(super) const PARSED_BEHIND: &str = r#"
CREATE OR REPLACE FUNCTION memory.post_entry() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    upto bigint := (SELECT p.upto FROM memory.posted p);
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.status = 'active' AND OLD.pos <= upto THEN
        DELETE FROM memory.postings
         WHERE lexeme = ANY(tsvector_to_array(
                   memory.scoped_words(OLD.namespace, OLD.content, OLD.tags)))
           AND pos = OLD.pos;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'active' AND NEW.pos <= upto THEN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, NEW.pos FROM unnest(tsvector_to_array(
                memory.scoped_words(NEW.namespace, NEW.content, NEW.tags))) AS l;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION memory.post_behind(step int) RETURNS int
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
    done bigint;
    last bigint;
    n int;
BEGIN
    SELECT p.upto INTO done FROM memory.posted p FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    BEGIN
        SELECT count(*), max(s.pos) INTO n, last FROM (
            SELECT e.pos FROM memory.entries e WHERE e.pos > done ORDER BY e.pos LIMIT step
            FOR SHARE NOWAIT) AS s;
    EXCEPTION WHEN lock_not_available THEN
        RETURN -1;
    END;
    IF n = 0 THEN
        RETURN 0;
    END IF;
    BEGIN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, e.pos FROM memory.entries e,
                   unnest(tsvector_to_array(memory.scoped_words(e.namespace, e.content, e.tags))) AS l
             WHERE e.pos > done AND e.pos <= last AND e.status = 'active';
    EXCEPTION WHEN unique_violation THEN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, e.pos FROM memory.entries e,
                   unnest(tsvector_to_array(memory.scoped_words(e.namespace, e.content, e.tags))) AS l
             WHERE e.pos > done AND e.pos <= last AND e.status = 'active'
            ON CONFLICT DO NOTHING;
    END;
    UPDATE memory.posted SET upto = last;
    RETURN n;
END $$;

DROP TRIGGER entries_postings_update ON memory.entries;
CREATE TRIGGER entries_postings_update AFTER UPDATE ON memory.entries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.namespace IS DISTINCT FROM NEW.namespace
                       OR OLD.content IS DISTINCT FROM NEW.content
                       OR OLD.tags IS DISTINCT FROM NEW.tags)
    EXECUTE FUNCTION memory.post_entry();
ALTER TABLE memory.entries DROP COLUMN scoped;

CREATE OR REPLACE FUNCTION memory.content_bytes(content text) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN strpos(content, '\') > 0
                THEN octet_length(regexp_replace(content, '\\(.)', '\1', 'g'))
                ELSE octet_length(content) END;
"#;

/// The lexemes of the row `alias` of `memory.entries` as a `text[]`, as migration 9's poster
/// and triggers post them.
pub(super) fn lexeme_array(alias: &str) -> String {
    format!(
        "tsvector_to_array(memory.scoped_words({alias}.namespace, {alias}.content, {alias}.tags))"
    )
}

/// [`lexeme_array`] as a set of `l` (a `FROM` item).
pub(super) fn lexemes_of(alias: &str) -> String {
    format!("unnest({}) AS l", lexeme_array(alias))
}

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Posted this many rows; fewer than [`STEP`] means none are left.
    Posted(i32),
    /// Another process is posting, or a row of the step is being changed: try again later.
    Busy,
}

/// Runs one step on `client`, in its own transaction.
pub(super) async fn step(client: &impl GenericClient) -> Result<Step, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT memory.post_behind($1)", &[&STEP])
        .await?;
    Ok(match row.try_get::<_, i32>(0)? {
        n if n < 0 => Step::Busy,
        n => Step::Posted(n),
    })
}

/// Posts every row behind, waiting out other processes' steps: `maintain`, and a bulk copy.
/// Returns the rows this call posted.
pub(super) async fn catch_up(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let mut posted = 0u64;
    loop {
        match step(client).await? {
            Step::Posted(n) => {
                posted += n as u64;
                if n < STEP {
                    return Ok(posted);
                }
            }
            Step::Busy => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_of_its_own_posts_one_step() {
        assert!(STEP_THEN_COMMIT.starts_with(&format!("SELECT memory.post_behind({STEP}); ")));
        assert!(STEP_THEN_COMMIT.ends_with(super::super::group::COMMIT));
    }
}
