//! Search on PostgreSQL past the search window: the some-words group ranks the newest
//! `SEARCH_WINDOW` rows holding some word inside the scope, looked up one word at a time and
//! merged (`read.rs`), and must rank exactly what SQLite's FTS5 lookup ranks — same rows, same
//! order, same groups — narrow and wide; and `db init` from schema version 3 leaves no text
//! index (migration 7 reads postings, every row's lexemes posted), its tsvector in the row
//! (migrations 4 and 5), rows written before it still found.

mod common;

use common::postgres::Ready;
use memwarden::keys::KeySet;
use memwarden::store::{
    Author, Filter, Matched, NewEntry, Query, Scope, Status, Store, StoreOptions,
};

const AUTHOR: Author<'static> = Author {
    principal: "alice",
    session_id: "s1",
};

const VOCABULARY: [&str; 10] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
];

fn put(store: &mut Store, namespace: &str, content: &str, at: i64) {
    let entry = NewEntry {
        namespace: namespace.to_string(),
        content: content.to_string(),
        tags: vec![],
        metadata: None,
        status: Status::Active,
    };
    store
        .insert(AUTHOR, entry, at)
        .unwrap()
        .commit_unaudited()
        .unwrap();
}

/// Content, group and snippet of each hit, in order (ids differ between the two stores).
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
        .map(|h| (h.entry.content, h.matched, h.snippet))
        .collect()
}

/// A small deterministic generator (xorshift), so both stores get the same rows.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn some_words_past_the_window_rank_as_sqlite_ranks_them_narrow_and_wide() {
    let Some(pg) = Ready::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = KeySet::generate("e1").unwrap();
    let mut lite = Store::open(
        &dir.path().join("memory.db"),
        keys.clone(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut postgres = pg.store_with(keys);
    // 1,400 rows of three words from ten: each word in about a quarter of them, two words'
    // rows past the 500-row window, rows holding both words a few, so the some-words group
    // fills most of each page. Namespace `c` holds a third of them.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..1_400 {
        let words: Vec<&str> = (0..3).map(|_| VOCABULARY[rng.below(10)]).collect();
        let content = format!("row{i} {}", words.join(" "));
        let namespace = ["a", "b", "c"][i % 3];
        let at = 1_000_000 + i as i64 * 1_000;
        put(&mut lite, namespace, &content, at);
        put(&mut postgres, namespace, &content, at);
    }
    let narrow = Scope::only(["a".to_string(), "b".to_string()]);
    let wide = Scope::only(
        ["a", "b"]
            .into_iter()
            .map(str::to_string)
            .chain((0..=memwarden::store::scope::MAX_NARROW_NAMESPACES).map(|i| format!("p{i}"))),
    );
    assert!(narrow.narrow().is_some() && wide.narrow().is_none());
    let mut some = 0;
    for query in [
        "alpha bravo",
        "charlie delta echo",
        "juliet alpha",
        "golf golf hotel",
        "india nothere",
        "foxtrot echo delta charlie bravo",
    ] {
        for limit in [1, 20, 200] {
            let want = hits(&lite, query, &Scope::All, limit);
            assert_eq!(
                hits(&postgres, query, &Scope::All, limit),
                want,
                "{query:?}, {limit} hits, every namespace"
            );
            let want = hits(&lite, query, &narrow, limit);
            assert_eq!(
                hits(&postgres, query, &narrow, limit),
                want,
                "{query:?}, {limit} hits, narrow"
            );
            assert_eq!(
                hits(&postgres, query, &wide, limit),
                want,
                "{query:?}, {limit} hits, wide"
            );
            assert!(want.iter().all(|h| !h.0.is_empty()));
            some += want.iter().filter(|h| h.1 == Matched::Some).count();
        }
    }
    // The comparison reached deep into the some-words group, not only the all-words one.
    assert!(some > 1_000, "{some} some-words hits compared");
    postgres.close().unwrap();
}

/// Runs `sql` as the cluster's superuser.
fn superuser(pg: &Ready, sql: &str) -> Vec<tokio_postgres::Row> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = pg.cluster.connect("memwarden").await;
        client.query(sql, &[]).await.unwrap()
    })
}

/// Entries waiting in the pending list of the GIN index `index`.
fn pending(pg: &Ready, index: &str) -> i64 {
    superuser(
        pg,
        &format!("SELECT pending_tuples::bigint FROM pgstatginindex('memory.{index}')"),
    )[0]
    .get(0)
}

/// Schema version 3's text columns and indexes in place of the current ones: the shared
/// `words` under `entries_words` with PostgreSQL's default pending list, both tsvectors kept
/// where PostgreSQL puts them (TOAST for the large), and none of migration 5's functions.
const VERSION_3_LAYOUT: &str = r#"
SET ROLE memwarden_owner;
DROP FUNCTION memory.scoped_lexeme, memory.quoted;
ALTER TABLE memory.entries
    ADD COLUMN words tsvector
        GENERATED ALWAYS AS (to_tsvector('memory.words', content || ' ' || tags)) STORED;
ALTER TABLE memory.entries ALTER COLUMN scoped SET STORAGE EXTENDED;
CREATE INDEX entries_words ON memory.entries USING gin (words) WHERE status = 'active';
"#;

/// `memory.namespace_usage`: (namespace, entries, bytes), by namespace.
fn namespace_usage(pg: &Ready) -> Vec<(String, i64, i64)> {
    superuser(
        pg,
        "SELECT namespace, entries, bytes FROM memory.namespace_usage ORDER BY namespace",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

#[test]
fn db_init_from_version_3_posts_every_row_and_stores_no_lexemes() {
    let Some(pg) = Ready::start() else { return };
    superuser(&pg, "CREATE EXTENSION IF NOT EXISTS pgstattuple");
    // Back to version 3's layout, rows written into it (the store refuses a schema older than
    // its own, so they are written first, and the version is set back after).
    pg.batch_as_superuser(common::postgres::BACK_TO_VERSION_5);
    pg.batch_as_superuser(VERSION_3_LAYOUT);
    let mut store = pg.store();
    // Each namespace's rows and content bytes, as migration 6 must count them.
    let mut usage = [(0_i64, 0_i64); 2];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..20 {
        // Eighty random words: rows past the TOAST threshold, which do not compress below it.
        let long: Vec<String> = (0..80)
            .map(|_| {
                (0..8)
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect()
            })
            .collect();
        let content = format!("before the upgrade {i} {}", long.join(" "));
        put(&mut store, ["a", "b"][i as usize % 2], &content, 1_000 + i);
        usage[i as usize % 2].0 += 1;
        usage[i as usize % 2].1 += content.len() as i64;
    }
    store.close().unwrap();
    assert_eq!(
        pending(&pg, "entries_words"),
        20,
        "version 3 queues new rows' words"
    );
    superuser(&pg, "DELETE FROM memory.schema_version WHERE version >= 4");

    let admin = pg.cluster.settings_file("admin.conf", "memwarden");
    let out = std::process::Command::new(common::bin())
        .args(["db", "init", "--admin-database-file"])
        .arg(&admin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("schema version 3 -> 9"), "{stdout}");
    let text: Vec<String> = superuser(
        &pg,
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'memory.entries'::regclass \
         AND atttypid = 'tsvector'::regtype AND NOT attisdropped \
         UNION ALL SELECT indexrelid::regclass::text FROM pg_index \
         JOIN pg_class c ON c.oid = indexrelid JOIN pg_am a ON a.oid = c.relam \
         WHERE indrelid = 'memory.entries'::regclass AND amname = 'gin'",
    )
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(
        text.is_empty(),
        "no text column and no text index: migration 7 reads postings, and migration 9 \
         parses a row's words where they are needed: {text:?}"
    );
    assert_eq!(
        pg.query_i64(common::postgres::POSTINGS_DRIFT),
        0,
        "every row's lexemes posted"
    );

    assert_eq!(
        namespace_usage(&pg),
        [
            ("a".to_string(), usage[0].0, usage[0].1),
            ("b".to_string(), usage[1].0, usage[1].1)
        ],
        "migration 6 counts the rows already there"
    );

    let mut store = pg.store();
    for i in 0..5 {
        let content = format!("after the upgrade {i}");
        put(&mut store, "a", &content, 2_000 + i);
        usage[0].0 += 1;
        usage[0].1 += content.len() as i64;
    }
    assert_eq!(
        namespace_usage(&pg)[0],
        ("a".to_string(), usage[0].0, usage[0].1),
        "and its trigger every row written since"
    );
    assert_eq!(
        pg.query_i64(common::postgres::POSTINGS_DRIFT),
        0,
        "new rows are posted as they are written"
    );
    // Rows written before the upgrade are found by their words in the new lexemes, in every
    // namespace and in one.
    let found = hits(&store, "upgrade", &Scope::All, 50);
    assert_eq!(found.len(), 25);
    assert_eq!(found[0].0, "after the upgrade 4");
    assert!(found[24].0.starts_with("before the upgrade 0 "));
    let found = hits(
        &store,
        "before upgrade",
        &Scope::only(["b".to_string()]),
        50,
    );
    assert_eq!(found.len(), 10);
    assert!(found.iter().all(|h| h.1 == Matched::All));
    store.close().unwrap();
}
