//! Search on PostgreSQL when the planner's statistics lag the table (issue 14): a table filled
//! fast and never analyzed, as after a bulk load or any quick growth before autovacuum catches
//! up. The lookups must still go through the text indexes, never walk the table or a namespace
//! newest first checking every row (that read every row of the namespace: 58 ms at 10,000
//! rows), and a wide search reads its newest matches in descending ranges of positions
//! (`read.rs`), widened as far as needed; the results are SQLite's, row for row, before and
//! after `ANALYZE`, narrow and wide.

mod common;

use common::postgres::Ready;
use memwarden::keys::KeySet;
use memwarden::store::rows::RawRow;
use memwarden::store::transfer::Batch;
use memwarden::store::{Entry, Filter, Matched, Query, Scope, Status, Store, StoreOptions};

/// Rows in the fixture.
const ROWS: usize = 24_000;

/// The words of row `i`: `common` in every second row, `medium` in every 40th, `rare` in every
/// 997th, `ancient` in the 50 oldest only, and a word of its own.
fn content(i: usize) -> String {
    let mut words = vec![format!("w{i}")];
    if i.is_multiple_of(2) {
        words.push("common".into());
    }
    if i.is_multiple_of(40) {
        words.push("medium".into());
    }
    if i.is_multiple_of(997) {
        words.push("rare".into());
    }
    if i < 50 {
        words.push("ancient".into());
    }
    words.join(" ")
}

/// Nine rows in ten in namespace `a`, the rest in `b`; oldest first.
fn batches(keys: &KeySet) -> Vec<Batch> {
    let (key_id, key) = keys.active();
    let mut out = Vec::new();
    for start in (0..ROWS).step_by(1_000) {
        let mut batch = Batch::default();
        for i in start..(start + 1_000).min(ROWS) {
            let content = content(i);
            let at = 1_764_000_000_000 + i as i64;
            let entry = Entry {
                id: format!("00000000-0000-7000-8000-{i:012}"),
                namespace: if i % 10 == 3 { "b" } else { "a" }.into(),
                content_sha256: memwarden::store::seal::content_sha256(&content),
                content,
                tags: vec![],
                metadata: None,
                status: Status::Active,
                supersedes: None,
                principal: "alice".into(),
                session_id: "s1".into(),
                created_at: at,
                updated_at: at,
            };
            batch.entries.push(RawRow::sealed(entry, key_id, key));
        }
        out.push(batch);
    }
    out
}

/// Id, group and snippet of each hit, in order.
fn hits(store: &Store, text: &str, scope: &Scope, limit: usize) -> Vec<(String, Matched, String)> {
    let filter = Filter {
        scope: scope.clone(),
        ..Default::default()
    };
    let hits = store
        .search(&Query::parse(text).unwrap(), &filter, limit)
        .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
    assert_eq!(hits.withheld, 0);
    hits.hits
        .into_iter()
        .map(|h| (h.entry.id, h.matched, h.snippet))
        .collect()
}

const QUERIES: &[&str] = &[
    "common medium",
    "rare ancient",
    "medium ancient",
    "common rare",
    "ancient",
    "common",
    "medium rare ancient",
    "rare nothere",
];

/// Every query at every limit, in every namespace, in `a` (narrow) and in `a` among more
/// namespaces than a narrow scope takes (wide): PostgreSQL's hits are SQLite's.
fn compare(lite: &Store, postgres: &Store, when: &str) -> usize {
    let narrow = Scope::only(["a".to_string()]);
    let wide = Scope::only(
        std::iter::once("a".to_string())
            .chain((0..=memwarden::store::scope::MAX_NARROW_NAMESPACES).map(|i| format!("p{i}"))),
    );
    assert!(narrow.narrow().is_some() && wide.narrow().is_none());
    let mut compared = 0;
    for query in QUERIES {
        for limit in [1, 20, 200] {
            let every = hits(lite, query, &Scope::All, limit);
            assert_eq!(
                hits(postgres, query, &Scope::All, limit),
                every,
                "{when}: {query:?}, {limit} hits, every namespace"
            );
            let inside = hits(lite, query, &narrow, limit);
            assert_eq!(
                hits(postgres, query, &narrow, limit),
                inside,
                "{when}: {query:?}, {limit} hits, narrow"
            );
            assert_eq!(
                hits(postgres, query, &wide, limit),
                inside,
                "{when}: {query:?}, {limit} hits, wide"
            );
            compared += every.len() + 2 * inside.len();
        }
    }
    compared
}

/// A server prepares its write statements once per connection, and PostgreSQL plans each at
/// its first run: on a new database, against an empty table. The table then grows (here by a
/// bulk load, never analyzed) and the same server's stores, updates and deletes must still read
/// a few rows of it each: the newest row's time, the row by id, never a scan of every row (a
/// store's cost would grow with the table), nor of the namespace's rows for its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_writes_read_a_few_rows_however_the_table_grew_after_its_first() {
    let Some(pg) = Ready::start() else { return };
    tokio::task::block_in_place(|| {
        pg.as_owner(
            "ALTER TABLE memory.entries SET (autovacuum_enabled = off)",
            &[],
        );
        pg.batch_as_superuser(common::postgres::EXPLAIN_EVERY_STATEMENT);
    });
    // Quotas on: each store checks its namespace's usage, which must not mean reading the
    // namespace's rows (it did, before migration 6: 5,400 rows a store here).
    let policy = pg.cluster.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\n[limits]\nnamespace_max_entries = 1000000\n\
             namespace_max_bytes = 1000000000\n[principals.local]\ntools = {}\n\
             namespaces = {{ \"*\" = \"rw\" }}\ndefault_namespace = \"a\"\n",
            r#"["memory_store", "memory_update", "memory_delete"]"#
        ),
    )
    .unwrap();
    let policy = ["--policy", policy.to_str().unwrap(), "--allow-owned-policy"];
    let c = pg.serve_from(&pg.data, &pg.app, &policy).await;
    let store = async |content: &str| {
        let v = c
            .call(
                "memory_store",
                serde_json::json!({"content": content, "namespace": "a"}),
            )
            .await
            .ok();
        v["id"].as_str().unwrap().to_string()
    };
    // The server's first write plans its statements on the empty table.
    store("the first entry").await;
    let loaded = tokio::task::block_in_place(|| {
        let mut bulk = pg.store();
        let mut loaded = 0;
        for batch in batches(&pg.keyring.entry).into_iter().take(6) {
            loaded += batch.entries.len();
            bulk.copy_in(&batch).unwrap();
        }
        bulk.close().unwrap();
        loaded
    });
    assert_eq!(loaded, 6_000);
    let from = std::fs::read(pg.cluster.dir.path().join("pg.log"))
        .unwrap()
        .len();
    let id = store("stored into a grown table").await;
    c.call(
        "memory_update",
        serde_json::json!({"id": id, "content": "updated in a grown table"}),
    )
    .await
    .ok();
    let second = store("stored again").await;
    c.call("memory_delete", serde_json::json!({"id": second}))
        .await
        .ok();
    let plans = common::postgres::rows_touched_by(&pg.log_since(from), |text| {
        text.contains("memory.entries") && !text.contains("@@")
    });
    // Three stores' newest rows and inserts, an update's and a delete's reads and writes.
    assert!(plans.len() >= 6, "{plans:#?}");
    for (rows, text) in &plans {
        assert!(
            *rows <= 10,
            "{rows} rows of memory.entries for one write statement: {text}"
        );
    }
    c.close().await;
}

#[test]
fn searches_on_a_table_never_analyzed_read_the_indexes_and_rank_as_sqlite() {
    let Some(pg) = Ready::start() else { return };
    // Never analyzed: autovacuum off for the table, and nothing else runs ANALYZE.
    pg.as_owner(
        "ALTER TABLE memory.entries SET (autovacuum_enabled = off)",
        &[],
    );
    pg.batch_as_superuser(common::postgres::EXPLAIN_EVERY_STATEMENT);
    let keys = pg.keyring.entry.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut lite = Store::open(
        &dir.path().join("memory.db"),
        keys.clone(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut postgres = pg.store();
    for batch in batches(&keys) {
        lite.copy_in(&batch).unwrap();
        postgres.copy_in(&batch).unwrap();
    }
    assert_eq!(
        pg.query_i64("SELECT count(*) FROM memory.entries"),
        ROWS as i64
    );
    assert_eq!(
        pg.query_i64(
            "SELECT count(*) FROM pg_stats WHERE schemaname = 'memory' AND tablename = 'entries'"
        ),
        0,
        "the table must not have been analyzed"
    );

    // Rare words, narrow and wide: each statement reads about its matches (each counted by the
    // index and by the heap, a wide one's again per range), never the namespace's 21,600 rows.
    let from = std::fs::read(pg.cluster.dir.path().join("pg.log"))
        .unwrap()
        .len();
    let narrow = Scope::only(["a".to_string()]);
    let wide = Scope::only(
        std::iter::once("a".to_string())
            .chain((0..=memwarden::store::scope::MAX_NARROW_NAMESPACES).map(|i| format!("p{i}"))),
    );
    for scope in [&narrow, &wide, &Scope::All] {
        for query in ["medium rare", "rare ancient", "medium"] {
            assert!(!hits(&postgres, query, scope, 20).is_empty(), "{query}");
        }
    }
    let plans = common::postgres::rows_touched(&pg.log_since(from));
    assert!(plans.len() >= 15, "{plans:#?}");
    for (rows, text) in &plans {
        // `medium` is in 600 rows: 1,200 counted once, a few times over for the ranges.
        assert!(*rows <= 6_000, "{rows} rows for one lookup: {text}");
    }

    let before = compare(&lite, &postgres, "never analyzed");
    pg.as_owner("ANALYZE memory.entries", &[]);
    let after = compare(&lite, &postgres, "analyzed");
    assert_eq!(before, after);
    // Deep enough to have crossed ranges: hundreds of rows of every query compared.
    assert!(before > 3_000, "{before} hits compared");
    postgres.close().unwrap();
}
