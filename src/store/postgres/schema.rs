//! The PostgreSQL schema and its roles, created by `memwarden db init`: two schemas in one
//! database — `memory` (entries, their postings, the ledger, session starts, namespace quota
//! usage) and `audit` (events) — owned by a NOLOGIN owner role; an app role that writes entries
//! but may only `SELECT, INSERT` audit events (UPDATE, DELETE and TRUNCATE refused by its grants
//! and, for the owner too, by triggers); an auditor role that may only read `audit`. Idempotent:
//! roles and schemas are created when missing, migrations run by the version table, grants are
//! re-applied. The row formats are SQLite's (same canonical encoding, same seals), so rows move
//! between the backends unchanged; the hash chain and MACs stay the real tamper check (an owner
//! or superuser can bypass triggers, FACTS §PostgreSQL).

use tokio_postgres::Client;

/// The role that owns every object (NOLOGIN: nobody connects as it).
pub const OWNER_ROLE: &str = "memwarden_owner";
/// The role `serve` connects as.
pub const APP_ROLE: &str = "memwarden_app";
/// The role auditors connect as.
pub const AUDITOR_ROLE: &str = "memwarden_auditor";

/// Key of the advisory lock that serialises concurrent `db init` runs.
const INIT_LOCK: i64 = 0x6d77_696e_6974; // "mwinit"

/// Creates the three roles when missing (`DO` blocks: `CREATE ROLE` has no `IF NOT EXISTS`).
const ROLES: &str = r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'memwarden_owner') THEN
    CREATE ROLE memwarden_owner NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'memwarden_app') THEN
    CREATE ROLE memwarden_app LOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'memwarden_auditor') THEN
    CREATE ROLE memwarden_auditor LOGIN;
  END IF;
END $$;
"#;

/// Migration steps, in order; step `n` takes the schema from version `n` to `n + 1`. They run
/// as the owner role, so the owner owns what they create.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE memory.entries (
    pos            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    namespace      text NOT NULL,
    content        text NOT NULL,
    tags           text NOT NULL,
    metadata       text,
    status         text NOT NULL,
    supersedes     text,
    principal      text NOT NULL,
    session_id     text NOT NULL,
    created_at     bigint NOT NULL,
    updated_at     bigint NOT NULL,
    content_sha256 bytea NOT NULL,
    key_id         text NOT NULL,
    mac            bytea NOT NULL,
    words          tsvector GENERATED ALWAYS AS (to_tsvector('simple', content || ' ' || tags)) STORED
);
CREATE INDEX entries_words ON memory.entries USING gin (words) WHERE status = 'active';
CREATE INDEX entries_scope ON memory.entries (namespace, status, pos);
CREATE INDEX entries_by_status ON memory.entries (status, pos);
CREATE INDEX entries_created ON memory.entries (created_at);
CREATE INDEX entries_supersedes ON memory.entries (supersedes) WHERE supersedes IS NOT NULL;

CREATE TABLE memory.ledger (
    seq       bigint PRIMARY KEY,
    entry_id  text NOT NULL,
    kind      text NOT NULL,
    at        bigint NOT NULL,
    prev_hash bytea NOT NULL,
    hash      bytea NOT NULL,
    key_id    text NOT NULL,
    mac       bytea NOT NULL
);
CREATE INDEX ledger_by_entry ON memory.ledger (entry_id, kind);

CREATE TABLE memory.session_starts (
    principal  text NOT NULL,
    started_at bigint NOT NULL
);
CREATE INDEX session_starts_by_principal ON memory.session_starts (principal, started_at);

CREATE TABLE audit.events (
    seq        bigint PRIMARY KEY,
    ts         text NOT NULL,
    kind       text NOT NULL,
    session_id text,
    principal  text,
    tool       text,
    outcome    text,
    code       text,
    detail     text NOT NULL,
    prev_hash  text NOT NULL,
    hash       text NOT NULL,
    key_id     text NOT NULL,
    mac        text NOT NULL
);
CREATE INDEX events_ts ON audit.events (ts);
CREATE INDEX events_session ON audit.events (session_id);

-- Append-only, for the owner too: the grants stop the app role, these triggers everyone who
-- does not first disable them (which the chain and MACs then catch).
CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit events are append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON audit.events
  FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON audit.events
  FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
"#,
    SCOPED_WORDS,
    FOLDED_WORDS,
    SEARCH_LAYOUT,
    ONE_TEXT_INDEX,
    super::quota::NAMESPACE_USAGE,
    super::postings::POSTINGS,
    super::behind::POSTED,
    super::behind::PARSED_BEHIND,
];

/// Migration 5: one text index. A store put each row's words into two GIN indexes, the shared
/// `entries_words` (wide and `"*"` scopes) and `entries_scoped` (narrow ones), and indexing them
/// was most of a store's cost: a 60-word entry's INSERT took 1.1 ms, and one session stored at
/// 45-52% of the PostgreSQL floor; without `entries_words`, at 74-80%. So `words` and its index
/// go (dropping a column rewrites nothing), and every search looks up `entries_scoped`: a wide
/// scope by its namespaces' lexemes as a narrow one, a `"*"` scope by those of every namespace
/// the store holds (`read.rs`). A search's cost then depends on its scope alone, namespaces
/// included, never on what lies outside it.
///
/// `memory.scoped_query` is made linear in the namespaces, as a wide scope may name many: each
/// word is parsed and escaped once, not once per namespace, each namespace's part is joined by
/// string functions (no statement per namespace), and the tsquery is read once from the whole
/// text, not grown by `||` (which copies the whole tsquery at every namespace). Three words over
/// 64 namespaces: 0.7 ms (10.8 ms before); over 1,000: 7 ms. Its result is the same: per
/// namespace, its words (all of them or any) ANDed with its tag lexemes, ORed over the
/// namespaces; NULL when nothing can match.
///
/// (A prefix match of word-first lexemes, one lookup for every namespace, was tried: GIN's cost
/// estimate for a prefix assumes it matches 100 entries, so on statistics that lag the table
/// PostgreSQL walked the primary key's range checking every row instead, 30-180 ms at 100k.)
const ONE_TEXT_INDEX: &str = r#"
ALTER TABLE memory.entries DROP COLUMN words;

-- `lexeme` in the namespace whose token is `token`, as `memory.scoped_lexemes` writes it.
CREATE FUNCTION memory.scoped_lexeme(token text, lexeme text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN octet_length(token) + 2 + octet_length(lexeme) <= 2046
                THEN token || 'zw' || lexeme ELSE token || 'zl' || md5(lexeme) END;

-- `lexeme` as tsquery input reads it: quoted, quotes and backslashes doubled.
CREATE FUNCTION memory.quoted(lexeme text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN '''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''';

CREATE OR REPLACE FUNCTION memory.scoped_query(namespaces text[], words text[], every boolean,
                                               tags text[])
    RETURNS tsquery LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog AS $$
DECLARE
    -- Word i's lexemes are lexemes[starts[i] : starts[i + 1] - 1], escaped as tsquery input
    -- quotes them in escaped[], the longest longest[i] bytes.
    lexemes text[] := '{}';
    escaped text[] := '{}';
    starts int[] := '{}';
    longest int[] := '{}';
    tag_text text[] := ARRAY(SELECT replace(replace(t, '\', '\\'), '''', '''''')
                             FROM unnest(tags) AS t);
    parts text[] := '{}';
    terms text[];
    found text[];
    token text;
    plain boolean;
    i int;
BEGIN
    FOR i IN 1 .. cardinality(words) LOOP
        starts := array_append(starts, cardinality(lexemes) + 1);
        found := tsvector_to_array(to_tsvector('memory.words', words[i]));
        lexemes := lexemes || found;
        escaped := escaped || ARRAY(SELECT replace(replace(l, '\', '\\'), '''', '''''')
                                    FROM unnest(found) AS l);
        longest := array_append(longest,
                                coalesce((SELECT max(octet_length(l)) FROM unnest(found) AS l), 0));
    END LOOP;
    starts := array_append(starts, cardinality(lexemes) + 1);
    FOREACH token IN ARRAY ARRAY(SELECT memory.scope_token(n) FROM unnest(namespaces) AS n) LOOP
        terms := '{}';
        -- A token is letters, digits and `z` escapes; checked all the same, as it is quoted
        -- by string functions alone when it holds no quote or backslash.
        plain := strpos(token, '''') = 0 AND strpos(token, '\') = 0;
        FOR i IN 1 .. cardinality(words) LOOP
            CONTINUE WHEN starts[i] = starts[i + 1];
            IF plain AND longest[i] + 2 + octet_length(token) <= 2046 THEN
                -- Every lexeme fits beside the token: joined by string functions alone.
                terms := array_append(terms, '(''' || token || 'zw' || array_to_string(
                    escaped[starts[i] : starts[i + 1] - 1], ''' & ''' || token || 'zw') || ''')');
            ELSE
                terms := array_append(terms, '(' || array_to_string(ARRAY(
                    SELECT memory.quoted(memory.scoped_lexeme(token, l))
                    FROM unnest(lexemes[starts[i] : starts[i + 1] - 1]) AS l), ' & ') || ')');
            END IF;
        END LOOP;
        CONTINUE WHEN cardinality(words) > 0 AND cardinality(terms) = 0;
        IF cardinality(terms) > 0 THEN
            terms := ARRAY['(' || array_to_string(terms, CASE WHEN every THEN ' & ' ELSE ' | ' END)
                           || ')'];
        END IF;
        IF cardinality(tags) > 0 AND plain THEN
            terms := array_append(terms, '(''' || token || 'zt'
                || array_to_string(tag_text, ''' & ''' || token || 'zt') || ''')');
        ELSIF cardinality(tags) > 0 THEN
            terms := array_append(terms, '(' || array_to_string(ARRAY(
                SELECT memory.quoted(token || 'zt' || t) FROM unnest(tags) AS t), ' & ') || ')');
        END IF;
        CONTINUE WHEN cardinality(terms) = 0;
        parts := array_append(parts, '(' || array_to_string(terms, ' & ') || ')');
    END LOOP;
    IF cardinality(parts) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN array_to_string(parts, ' | ')::tsquery;
END $$;
"#;

/// Migration 4: what a search's lookups read, laid out so they read little.
///
/// `entries_words` loses its GIN pending list, as `entries_scoped` already has. With one
/// (PostgreSQL's default, `fastupdate` on) every new row's words wait in an unsorted list of up
/// to `gin_pending_list_limit` (4 MB) until autovacuum or a full list moves them into the
/// index, and every wide lookup of every word reads the whole list: 155 pages at 10,000 rows in
/// the benchmark, up to 512; and the store call that fills the list pays for moving it all.
/// Off, each insert puts its words in place (a store costs a little more, always the same).
///
/// `words` and `scoped` are kept in the row (storage MAIN) rather than in TOAST: a row's content
/// and two tsvectors pass the 2 kB TOAST threshold, and PostgreSQL moved `words`, the largest,
/// out, so every row a lookup checks without the index (the planner walks `entries_pkey` newest
/// first where a word is common, and stops after the window) read three TOAST pages for it:
/// 4.2 µs a row against 1.1 µs in the row. Content, read only for the rows returned, goes out
/// instead. Existing rows are rewritten into the new layout by `CLUSTER` (newest-first walks
/// then also read the heap in order), which also rebuilds the indexes, leaving no pending list;
/// it holds the table for its duration (about 1 s per 10,000 rows here).
///
/// An empty table is not clustered. `CLUSTER` records what it found, and for an empty table
/// that is "known empty" (no pages, no rows) instead of "never counted". The planner then
/// sizes the table by its pages alone, one row when it has none; a store's statements are
/// prepared once per connection and planned at their first run, so a server's first write
/// into a new database planned "the newest row" as a scan of the whole table and kept that
/// plan until autovacuum next analyzed it: a store's cost grew with the table (2.3 ms a store
/// at 7,000 rows, about a minute after `db init`). Never counted, the planner assumes ten
/// pages and reads such lookups through their indexes (`tests/postgres_stale_stats.rs`).
const SEARCH_LAYOUT: &str = r#"
ALTER INDEX memory.entries_words SET (fastupdate = off);
ALTER TABLE memory.entries ALTER COLUMN words SET STORAGE MAIN,
                           ALTER COLUMN scoped SET STORAGE MAIN;
DO $$ BEGIN
    IF EXISTS (SELECT FROM memory.entries) THEN
        CLUSTER memory.entries USING entries_pkey;
        ALTER TABLE memory.entries SET WITHOUT CLUSTER;
    END IF;
END $$;
"#;

/// Migration 3: words are matched with their diacritics folded, as SQLite's `unicode61
/// remove_diacritics 2` matches them (`résumé` finds `resume` and the reverse): the text search
/// configuration `memory.words` is `simple` with `unaccent` before it for every kind of word.
/// Both indexed columns are made again with it (a stored generated column is computed once, so
/// changing the function under it would leave old rows parsed the old way), and
/// `scoped_lexemes` parses with it; queries name it too (`read.rs`, `scoped.rs`). The
/// `unaccent` extension is installed into `memory` by `db init`'s admin before the migrations
/// run (it is a trusted extension: the database's CREATE privilege suffices).
const FOLDED_WORDS: &str = r#"
CREATE TEXT SEARCH CONFIGURATION memory.words (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION memory.words
    ALTER MAPPING FOR word, hword, hword_part, numword, numhword, hword_numpart,
                      asciiword, asciihword, hword_asciipart
    WITH memory.unaccent, pg_catalog.simple;

CREATE OR REPLACE FUNCTION memory.scoped_lexemes(token text, source text) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
BEGIN
    RETURN ARRAY(
        SELECT CASE WHEN octet_length(token) + 2 + octet_length(l) <= 2046
                    THEN token || 'zw' || l ELSE token || 'zl' || md5(l) END
        FROM unnest(tsvector_to_array(to_tsvector('memory.words', source))) AS l);
END $$;

ALTER TABLE memory.entries DROP COLUMN words, DROP COLUMN scoped;
-- Content is kept with `\` doubled and U+0000 as `\0` from now on (rows.rs).
UPDATE memory.entries SET content = replace(content, '\', '\\') WHERE strpos(content, '\') > 0;
ALTER TABLE memory.entries
    ADD COLUMN words tsvector
        GENERATED ALWAYS AS (to_tsvector('memory.words', content || ' ' || tags)) STORED,
    ADD COLUMN scoped tsvector
        GENERATED ALWAYS AS (memory.scoped_words(namespace, content, tags)) STORED;
CREATE INDEX entries_words ON memory.entries USING gin (words) WHERE status = 'active';
CREATE INDEX entries_scoped ON memory.entries USING gin (scoped) WITH (fastupdate = off)
    WHERE status = 'active';
"#;

/// Migration 2: `entries.scoped`, every row's words again with each lexeme prefixed by its
/// namespace's token, plus one lexeme per tag, under a GIN index of its own (`entries_scoped`,
/// active rows), so a search or tag filter inside a few namespaces reads only their postings
/// (`read.rs`, issue 13). Lexemes come from the same `to_tsvector('simple', …)` parse as
/// `words` and as `plainto_tsquery('simple', …)` gives them (the same parser and dictionary);
/// `memory.scoped_lexemes` then prefixes each one as a string, so no prefixed text is ever parsed
/// again and a narrow lookup finds exactly what the shared one finds in that namespace. The
/// token escapes a namespace as SQLite's does (`z` → `zz`, `_ . : -` → `zu zd zc zh`), so
/// `<token>zw` ends where the namespace does; a prefixed lexeme too long for a tsvector (2046
/// bytes) becomes `<token>zl<md5>`, on both sides alike. Lexemes carry no positions:
/// `plainto_tsquery` joins lexemes with `&` only, never a phrase operator.
///
/// The row side is PL/pgSQL (its plans are cached per session: an SQL-function body is planned
/// again for every INSERT), with search_path pinned. `fastupdate` is off: a GIN pending list
/// holds every namespace's recent rows and every lookup would read all of it. Adding the
/// stored column rewrites `memory.entries`, which fills it for existing rows.
const SCOPED_WORDS: &str = r#"
CREATE FUNCTION memory.scope_token(namespace text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN 'n' || replace(replace(replace(replace(replace(
        namespace, 'z', 'zz'), '_', 'zu'), '.', 'zd'), ':', 'zc'), '-', 'zh');

-- The lexemes of `source`, each prefixed with `token`.
CREATE FUNCTION memory.scoped_lexemes(token text, source text) RETURNS text[]
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
BEGIN
    RETURN ARRAY(
        SELECT CASE WHEN octet_length(token) + 2 + octet_length(l) <= 2046
                    THEN token || 'zw' || l ELSE token || 'zl' || md5(l) END
        FROM unnest(tsvector_to_array(to_tsvector('simple', source))) AS l);
END $$;

-- `tags` is the sealed JSON array; its strings are read by pattern, not cast, so a hand-edited
-- array fails that row's seal on read instead of failing the write here.
CREATE FUNCTION memory.scoped_words(namespace text, content text, tags text) RETURNS tsvector
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog AS $$
DECLARE
    token text := memory.scope_token(namespace);
BEGIN
    RETURN array_to_tsvector(memory.scoped_lexemes(token, content || ' ' || tags)
        || ARRAY(SELECT token || 'zt' || t[1]
                 FROM regexp_matches(tags, '"((?:[^"\\]|\\.)*)"', 'g') AS t));
END $$;

-- Every lexeme of `lexemes` (at least one), as tsquery input reads it: quoted, quotes and
-- backslashes doubled, joined by `&`.
CREATE FUNCTION memory.every_lexeme(lexemes text[]) RETURNS tsquery
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN array_to_string(ARRAY(
        SELECT '''' || replace(replace(l, '\', '\\'), '''', '''''') || ''''
        FROM unnest(lexemes) AS l), ' & ')::tsquery;

-- A narrow lookup: per namespace, its words (all of them or any) ANDed with its tag lexemes,
-- then ORed over the namespaces; NULL matches nothing. Tags come JSON-escaped, as the column
-- holds them. A word without lexemes drops out, as `&&` and `||` drop its empty
-- `plainto_tsquery` in the shared lookup; when no word has any, nothing matches, as there.
-- No words: the tags alone.
CREATE FUNCTION memory.scoped_query(namespaces text[], words text[], every boolean, tags text[])
    RETURNS tsquery LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    SET search_path = pg_catalog AS $$
DECLARE
    result tsquery;
    token text;
    word text;
    lexemes text[];
    q tsquery;
    wq tsquery;
BEGIN
    FOREACH token IN ARRAY ARRAY(SELECT memory.scope_token(n) FROM unnest(namespaces) AS n) LOOP
        wq := NULL;
        FOREACH word IN ARRAY words LOOP
            lexemes := memory.scoped_lexemes(token, word);
            CONTINUE WHEN cardinality(lexemes) = 0;
            q := memory.every_lexeme(lexemes);
            wq := CASE WHEN wq IS NULL THEN q WHEN every THEN wq && q ELSE wq || q END;
        END LOOP;
        CONTINUE WHEN cardinality(words) > 0 AND wq IS NULL;
        IF cardinality(tags) > 0 THEN
            q := memory.every_lexeme(ARRAY(SELECT token || 'zt' || t FROM unnest(tags) AS t));
            wq := CASE WHEN wq IS NULL THEN q ELSE wq && q END;
        END IF;
        CONTINUE WHEN wq IS NULL;
        result := CASE WHEN result IS NULL THEN wq ELSE result || wq END;
    END LOOP;
    RETURN result;
END $$;

ALTER TABLE memory.entries ADD COLUMN scoped tsvector
    GENERATED ALWAYS AS (memory.scoped_words(namespace, content, tags)) STORED;
CREATE INDEX entries_scoped ON memory.entries USING gin (scoped) WITH (fastupdate = off)
    WHERE status = 'active';
"#;

/// The schema version this binary writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Who may do what; re-applied on every init, so a grant widened by hand is narrowed again.
const GRANTS: &str = r#"
REVOKE ALL ON SCHEMA memory, audit FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA memory, audit FROM PUBLIC;
GRANT USAGE ON SCHEMA memory, audit TO memwarden_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON memory.entries, memory.session_starts TO memwarden_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA memory TO memwarden_app;
GRANT SELECT, INSERT, UPDATE ON memory.ledger, memory.namespace_usage TO memwarden_app;
GRANT SELECT, INSERT, DELETE ON memory.postings TO memwarden_app;
GRANT SELECT, UPDATE ON memory.posted TO memwarden_app;
GRANT SELECT ON memory.schema_version TO memwarden_app, memwarden_auditor;
REVOKE ALL ON audit.events FROM memwarden_app;
GRANT SELECT, INSERT ON audit.events TO memwarden_app;
GRANT USAGE ON SCHEMA audit TO memwarden_auditor;
GRANT SELECT ON ALL TABLES IN SCHEMA audit TO memwarden_auditor;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA memory FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA memory TO memwarden_app;
"#;

/// What `db init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The schema version before.
    pub from: i64,
    /// The schema version after.
    pub to: i64,
}

/// Creates or brings up to date the roles, schemas, tables and grants, in one transaction
/// (PostgreSQL's DDL is transactional: a failed init leaves nothing half-made), serialised
/// against concurrent inits.
pub async fn init(client: &mut Client) -> Result<InitReport, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INIT_LOCK])
        .await?;
    tx.batch_execute(ROLES).await?;
    // Membership lets this session act as the owner (a superuser may anyway).
    tx.batch_execute(&format!("GRANT {OWNER_ROLE} TO CURRENT_USER"))
        .await?;
    // The schemas are made by the admin (who may create in the database) for the owner, and
    // everything inside them by the owner.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS memory AUTHORIZATION {OWNER_ROLE};
         CREATE SCHEMA IF NOT EXISTS audit AUTHORIZATION {OWNER_ROLE};
         CREATE EXTENSION IF NOT EXISTS unaccent SCHEMA memory;
         SET LOCAL ROLE {OWNER_ROLE};
         CREATE TABLE IF NOT EXISTS memory.schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let from: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM memory.schema_version",
            &[],
        )
        .await?
        .get(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(from.max(0) as usize) {
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO memory.schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.batch_execute(GRANTS).await?;
    tx.commit().await?;
    Ok(InitReport {
        from,
        to: CURRENT_VERSION.max(from),
    })
}
