//! Narrow scopes on PostgreSQL (issue 13 carried to issue 14): a search or tag list inside a few
//! namespaces is looked up in `memory.postings` by its lexemes in those namespaces, newest
//! first; a wider scope the same way, with the namespaces checked again beside it. The two must
//! find the same rows in the same order with the same snippets for every kind of query text,
//! through stores, updates and deletes (which the postings follow); and
//! both must read only the scope's postings, however many matches other namespaces hold
//! (measured with `auto_explain` on the statements the store itself runs).

use super::*;

/// `namespaces` padded with empty namespaces past the narrow bound: the same rows, looked up as a
/// wide scope.
fn wide(namespaces: &[&str]) -> Scope {
    let pad = (0..=memwarden::store::scope::MAX_NARROW_NAMESPACES).map(|i| format!("pad{i}"));
    let scope = Scope::only(namespaces.iter().map(|n| n.to_string()).chain(pad));
    assert!(scope.narrow().is_none());
    scope
}

fn narrow(namespaces: &[&str]) -> Scope {
    let scope = Scope::only(namespaces.iter().map(|n| n.to_string()));
    assert!(scope.narrow().is_some());
    scope
}

fn filter(scope: &Scope, tags: &[&str]) -> Filter {
    Filter {
        scope: scope.clone(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

/// Every hit of a search: id, namespace, group and snippet, in order.
fn hits(store: &Store, text: &str, filter: &Filter) -> Vec<(String, String, Matched, String)> {
    let hits = store
        .search(&Query::parse(text).unwrap(), filter, 50)
        .unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
    assert_eq!(hits.withheld, 0);
    hits.hits
        .into_iter()
        .map(|h| (h.entry.id, h.entry.namespace, h.matched, h.snippet))
        .collect()
}

const QUERIES: &[&str] = &[
    "deploy",
    "Deploy SERVER",
    "café",
    "CAFE bar",
    "cafe\u{301}",
    "re\u{301}sume\u{301}",
    "über-fast",
    "naïve İSTANBUL",
    "straße",
    "foo-bar",
    "café-bar",
    "x:1",
    "3.14",
    "v2.0-rc1",
    "2026-11-30",
    "a&b",
    "a | b",
    "!important",
    "col:*",
    "a<->b",
    "<2>",
    "\"quoted\"",
    "'single'",
    "it's",
    "ops@example.com",
    "http://ex.com/a'b\\c",
    "日本語のテスト",
    "नमस्ते",
    "!!!",
    "server !!!",
    "server absent-word",
    "gateway tonight",
    "a0 b.x-y0 c_z0",
    "z",
    "zz",
    "a",
    "az",
    "azw",
    "zw",
    "n",
    "na",
    "zon",
    "quiz z",
];

/// Compares every query (alone and with tags) and every tag list in `namespaces` narrow and
/// wide; returns how many hits were compared.
fn compare(store: &Store, namespaces: &[&str], long_word: &str) -> usize {
    let (narrow, wide) = (narrow(namespaces), wide(namespaces));
    let mut compared = 0;
    for tags in [&[][..], &["ops"], &["x:1", "ops"], &["t-2"]] {
        let queries = QUERIES.iter().copied().chain([long_word]);
        for q in queries {
            let got = hits(store, q, &filter(&narrow, tags));
            let want = hits(store, q, &filter(&wide, tags));
            assert_eq!(got, want, "query {q:?} tags {tags:?} in {namespaces:?}");
            compared += got.len();
        }
        if !tags.is_empty() {
            let got = ids(&store.list(&filter(&narrow, tags), None, 50).unwrap());
            let want = ids(&store.list(&filter(&wide, tags), None, 50).unwrap());
            assert_eq!(got, want, "list tags {tags:?} in {namespaces:?}");
            compared += got.len();
        }
    }
    compared
}

#[test]
fn narrow_and_wide_lookups_find_the_same_rows_through_writes() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let view = Visibility::everything();
    // A word too long for a prefixed lexeme (it is indexed by its hash in `entries_scoped`).
    let long_word = "q".repeat(2040);
    let long_text = format!("{long_word} tail");
    let texts: [(&str, &[&str]); 12] = [
        (
            "Deploy the API server tonight; v2.0-rc1 at 3.14 GHz",
            &["ops", "x:1"],
        ),
        ("deploy notes: the café-bar rollout (it's done!)", &["ops"]),
        ("Über-fast deploy of a&b | !important col:* a<->b <2>", &[]),
        (
            "rollback plan for the server, mail ops@example.com",
            &["x:1"],
        ),
        ("一緒に deploy 日本語のテスト on 2026-11-30", &[]),
        ("nothing relevant \"quoted\" and 'single' text", &["ops"]),
        ("CAFE menu and server list, naïve İstanbul straße", &[]),
        ("foo-bar baz http://ex.com/a'b\\c path", &["t-2"]),
        ("the server deploy checklist", &["ops", "t-2"]),
        ("cafe\u{301} re\u{301}sume\u{301} नमस्ते", &[]),
        (&long_text, &[]),
        // Words made of the token's own escapes.
        ("z zz azw azwzw zwa nzt zone quiz", &["zw"]),
    ];
    let mut at = 1_000_000;
    let mut rows = Vec::new();
    for (i, (text, tags)) in texts.iter().enumerate() {
        // Namespaces whose names need the token's escapes; each row its own marker word.
        for ns in ["a", "b.x-y", "c_z"] {
            at += 1000;
            rows.push(put(&mut store, ns, &format!("{text} {ns}{i}"), tags, at));
        }
    }
    let before = compare(&store, &["a"], &long_word) + compare(&store, &["a", "b.x-y"], &long_word);
    assert!(before > 100, "the queries find rows ({before} hits)");

    // Updates and deletes move rows in and out of both indexes.
    let changes = Changes {
        content: Some("Deploy the API gateway instead".into()),
        tags: Some(vec!["t-2".into()]),
        ..Default::default()
    };
    store
        .update(AUTHOR, &rows[0], changes, at + 1000, &view)
        .unwrap()
        .commit_unaudited()
        .unwrap();
    for gone in [&rows[4], &rows[9]] {
        store
            .delete(gone, at + 2000, &view)
            .unwrap()
            .commit_unaudited()
            .unwrap();
    }
    // The postings follow every write: one per lexeme of each active row, none of a row
    // replaced or deleted.
    assert_eq!(pg.query_i64(crate::common::postgres::POSTINGS_DRIFT), 0);
    let after = compare(&store, &["a"], &long_word) + compare(&store, &["a", "b.x-y"], &long_word);
    assert!(after > 100 && after != before, "{before} -> {after} hits");
    let scope = narrow(&["a", "b.x-y"]);
    let tonight = hits(&store, "tonight", &filter(&scope, &[]));
    assert_eq!(tonight.len(), 1, "only b's copy of the replaced text");
    assert!(hits(&store, "gateway", &filter(&scope, &["t-2"])).len() == 1);
    assert!(
        hits(&store, "a3", &filter(&scope, &[])).is_empty(),
        "the deleted row"
    );
    assert_eq!(hits(&store, &long_word, &filter(&scope, &[])).len(), 2);
    // The narrow lookup never reaches past its scope.
    let c = hits(&store, "deploy", &filter(&narrow(&["c_z"]), &[]));
    assert!(!c.is_empty() && c.iter().all(|h| h.1 == "c_z"));
}

#[test]
fn a_narrow_search_reads_only_the_scopes_postings() {
    let Some(pg) = Ready::start() else { return };
    pg.batch_as_superuser(crate::common::postgres::EXPLAIN_EVERY_STATEMENT);
    // Another tenant holds 20,000 matches of the words and the tag; the small namespace 3,000
    // rows without them (loaded in bulk, unsealed: no search here may ever return them).
    let bulk = |ns: &str, n: i64, content: &str, tags: &str| {
        format!(
            "INSERT INTO memory.entries (id, namespace, content, tags, status, principal, \
             session_id, created_at, updated_at, content_sha256, key_id, mac) \
             SELECT '{ns}-' || i, '{ns}', {content}, '{tags}', 'active', 'p', 's', i, i, \
             '\\x00', 'e1', '\\x00' FROM generate_series(1, {n}) AS i"
        )
    };
    pg.as_owner(
        &bulk("big", 20_000, "'deploy the server ' || i", r#"["ops"]"#),
        &[],
    );
    pg.as_owner(&bulk("small", 3_000, "'filler text ' || i", "[]"), &[]);
    // Posted, as a serving process or `maintain` posts rows written behind its back.
    pg.as_owner("SELECT memory.post_behind(100000)", &[]);
    let mut store = pg.store();
    let mut mine = Vec::new();
    for i in 0..5 {
        let at = 10_000_000 + i * 1000;
        mine.push(put(
            &mut store,
            "small",
            &format!("deploy the server {i}"),
            &["ops"],
            at,
        ));
    }
    pg.as_owner("ANALYZE memory.entries", &[]);

    let log = std::fs::read(pg.cluster.dir.path().join("pg.log"))
        .unwrap()
        .len();
    let start = log;
    let small = narrow(&["small"]);
    for (text, tags) in [
        ("deploy", &[][..]),
        ("deploy server", &[]),
        ("deploy", &["ops"]),
    ] {
        let found = hits(&store, text, &filter(&small, tags));
        assert_eq!(found.len(), 5, "{text} {tags:?}");
    }
    let some = hits(&store, "deploy nowhere", &filter(&small, &[]));
    assert_eq!(some.len(), 5);
    assert!(some.iter().all(|h| h.2 == Matched::Some));
    let listed = ids(&store.list(&filter(&small, &["ops"]), None, 50).unwrap());
    assert_eq!(listed.len(), 5);
    let plans = crate::common::postgres::rows_touched(&pg.log_since(log));
    assert!(plans.len() >= 6, "{plans:#?}");
    for (rows, text) in &plans {
        // 5 matches, each counted by the index and by the heap scan, and nothing else.
        assert!(*rows <= 50, "{rows} rows for a narrow lookup: {text}");
    }

    // A wide scope naming the same namespace (and empty ones) is looked up by its lexemes too:
    // the rows it reads from the table are the scope's. (Its newest-first ranges of positions
    // also count index entries of every namespace, which are not rows read.)
    let log = std::fs::read(pg.cluster.dir.path().join("pg.log"))
        .unwrap()
        .len();
    assert_eq!(
        hits(&store, "deploy", &filter(&wide(&["small"]), &[])).len(),
        5
    );
    let plans = crate::common::postgres::table_rows_touched(&pg.log_since(log));
    assert!(!plans.is_empty());
    for (rows, text) in &plans {
        assert!(*rows <= 50, "{rows} rows for a wide lookup: {text}");
    }

    // A "*" scope holds the other tenant: its rows are found, and the measure sees them read;
    // but only the newest 50 of its 20,000 matches, as postings are read newest first.
    let log = std::fs::read(pg.cluster.dir.path().join("pg.log"))
        .unwrap()
        .len();
    let all = Filter {
        scope: Scope::All,
        ..Default::default()
    };
    let found = store
        .search(&Query::parse("deploy").unwrap(), &all, 50)
        .unwrap();
    // The other tenant's rows were loaded unsealed: every one returned is withheld.
    assert!(found.withheld > 0);
    let plans = crate::common::postgres::table_rows_touched(&pg.log_since(log));
    let most = plans.iter().map(|p| p.0).max().unwrap_or(0);
    assert!((50..=100).contains(&most), "{plans:#?}");
    // No lookup's plan was compiled: with sequential scans priced out, a plan holding one that
    // no index can replace costs more than `jit_above_cost`, and compiling it took 200 ms of a
    // 1 ms search.
    let logged = pg.log_since(start);
    assert!(logged.contains("memory.postings"), "the plans were logged");
    assert!(!logged.contains("\"JIT\""), "a compiled plan: {logged}");
    // Nor run by parallel workers: a plan priced high gets a Gather, and starting its workers
    // took 10 ms of a 2 ms search at 1M entries.
    assert!(!logged.contains("Workers"), "a parallel plan: {logged}");
}

#[test]
fn db_init_from_version_1_posts_the_rows_already_there() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let content = "written before the upgrade, a \\ backslash and a résumé";
    let id = put(&mut store, "a", content, &["ops"], 1_000_000);
    store.close().unwrap();
    // Back to version 1: what migrations 2 and 3 added, gone, and the content as version 1
    // kept it (backslashes single).
    pg.batch_as_superuser(crate::common::postgres::BACK_TO_VERSION_5);
    pg.batch_as_superuser(
        r"SET ROLE memwarden_owner;
         ALTER TABLE memory.entries DROP COLUMN scoped;
         DROP FUNCTION memory.scoped_query, memory.every_lexeme, memory.scoped_words,
             memory.scoped_lexemes, memory.scope_token, memory.scoped_lexeme, memory.quoted;
         DROP TEXT SEARCH CONFIGURATION memory.words;
         UPDATE memory.entries SET content = replace(content, '\\', '\');
         ALTER TABLE memory.entries ADD COLUMN words tsvector
             GENERATED ALWAYS AS (to_tsvector('simple', content || ' ' || tags)) STORED;
         CREATE INDEX entries_words ON memory.entries USING gin (words) WHERE status = 'active';
         DELETE FROM memory.schema_version WHERE version >= 2;",
    );
    let admin = pg.cluster.settings_file("admin.conf", "memwarden");
    let out = super::db_init(&admin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("schema version 1 -> 9"), "{stdout}");
    let store = pg.store();
    let scope = narrow(&["a"]);
    let found = hits(&store, "upgrade", &filter(&scope, &["ops"]));
    assert_eq!(found.iter().map(|h| &h.0).collect::<Vec<_>>(), [&id]);
    let listed = ids(&store.list(&filter(&scope, &["ops"]), None, 10).unwrap());
    assert_eq!(listed, std::slice::from_ref(&id));
    // Migration 3: the content reads back whole (its seal holds) and diacritics fold, narrow
    // and wide.
    let all = wide(&["a"]);
    for (scope, tags) in [(&scope, &["ops"][..]), (&all, &[][..])] {
        let found = hits(&store, "resume", &filter(scope, tags));
        assert_eq!(found.iter().map(|h| &h.0).collect::<Vec<_>>(), [&id]);
    }
    assert_eq!(store.get_any(&id).unwrap().content, content);
}
