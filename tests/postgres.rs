//! PostgreSQL (issue 14) against a real throwaway cluster: `memwarden db init` — idempotent, and
//! the roles' rights are what the contract says (audit events append-only for the app role by
//! grants and for the owner by triggers; the auditor reads the audit schema only) — the database
//! file's checks, and the store on PostgreSQL driven as a library user would
//! (`Store::with_backend(Postgres::connect(…))`): every read verified, scope inside the lookup,
//! tampering caught, reseal, sessions per hour across connections, and writes that commit with
//! exactly one chained audit event.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::postgres::Cluster;

fn db_init(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(["db", "init", "--admin-database-file"])
        .arg(file)
        .output()
        .expect("run memwarden")
}

/// The SQLSTATE a statement fails with.
async fn refused(client: &tokio_postgres::Client, sql: &str) -> String {
    let err = client.batch_execute(sql).await.expect_err(sql);
    err.as_db_error()
        .expect("a server error")
        .code()
        .code()
        .to_string()
}

#[tokio::test]
async fn db_init_is_idempotent_and_audit_events_are_append_only() {
    let Some(pg) = Cluster::start() else { return };
    let admin = pg.settings_file("admin.conf", "memwarden");
    for want in ["schema version 0 -> 9", "schema version 9 -> 9"] {
        let out = db_init(&admin);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(want), "{stdout}");
    }

    let app = pg.connect("memwarden_app").await;
    app.batch_execute(
        "INSERT INTO audit.events VALUES (1, 't', 'call', NULL, NULL, NULL, 'ok', NULL, '{}', \
         '00', '11', 'a1', 'mm')",
    )
    .await
    .expect("the app role appends events");
    app.batch_execute(
        "INSERT INTO memory.entries (id, namespace, content, tags, status, principal, \
         session_id, created_at, updated_at, content_sha256, key_id, mac) VALUES \
         ('i', 'n', 'Déjà vu WORDS', '[\"t\"]', 'active', 'p', 's', 1, 1, '\\x00', 'e1', '\\x00')",
    )
    .await
    .expect("the app role writes entries");
    let words: String = app
        .query_one(
            "SELECT memory.scoped_words(namespace, content, tags)::text FROM memory.entries",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        // Lowercased (a UTF-8 ctype) and diacritics folded (migration 3), as SQLite's index;
        // each word and the tag behind its namespace's token (migration 2).
        words.contains("'nnzwdeja'") && words.contains("'nnzwwords'") && words.contains("'nnztt'"),
        "{words}"
    );
    // Migration 6's trigger counts what the app role writes and deletes: rows and content's own
    // bytes (the column doubles a backslash; a quota counts it once).
    app.batch_execute(
        "INSERT INTO memory.entries (id, namespace, content, tags, status, principal, \
         session_id, created_at, updated_at, content_sha256, key_id, mac) VALUES \
         ('j', 'n', 'a\\\\b', '[]', 'active', 'p', 's', 2, 2, '\\x00', 'e1', '\\x00')",
    )
    .await
    .unwrap();
    let usage = async || -> (i64, i64) {
        let r = app
            .query_one(
                "SELECT entries, bytes FROM memory.namespace_usage WHERE namespace = 'n'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    let both = ("Déjà vu WORDS".len() + r"a\b".len()) as i64;
    assert_eq!(usage().await, (2, both));
    app.batch_execute("DELETE FROM memory.entries WHERE id = 'i'")
        .await
        .unwrap();
    assert_eq!(usage().await, (1, r"a\b".len() as i64));
    for sql in [
        "UPDATE audit.events SET kind = 'x'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ] {
        assert_eq!(refused(&app, sql).await, "42501", "{sql}");
    }

    // The owner owns the table, so only the triggers stop it.
    let owner = pg.connect("memwarden").await;
    owner
        .batch_execute("SET ROLE memwarden_owner")
        .await
        .unwrap();
    for sql in [
        "UPDATE audit.events SET kind = 'x'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ] {
        assert_eq!(refused(&owner, sql).await, "P0001", "{sql}");
    }

    let auditor = pg.connect("memwarden_auditor").await;
    let n: i64 = auditor
        .query_one("SELECT count(*) FROM audit.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        refused(
            &auditor,
            "INSERT INTO audit.events SELECT * FROM audit.events"
        )
        .await,
        "42501"
    );
    assert_eq!(
        refused(&auditor, "SELECT 1 FROM memory.entries").await,
        "42501"
    );

    // A grant widened by hand is narrowed again by the next init.
    owner
        .batch_execute("RESET ROLE; GRANT UPDATE ON audit.events TO memwarden_app")
        .await
        .unwrap();
    assert!(db_init(&admin).status.success());
    assert_eq!(
        refused(&app, "UPDATE audit.events SET kind = 'x'").await,
        "42501"
    );
}

#[test]
fn the_database_file_is_checked_like_the_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.conf");
    let secret = "hunter2-not-to-be-printed";

    std::fs::write(
        &file,
        format!("host=/run/postgresql user=a password={secret}"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = db_init(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mode 0640"), "{stderr}");

    let link = dir.path().join("link.conf");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let out = db_init(&link);
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink is refused"));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        &file,
        format!("postgresql://app:{secret}@db.example.com/memwarden"),
    )
    .unwrap();
    let out = db_init(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("db.example.com") && stderr.contains("TLS"),
        "{stderr}"
    );
    for out in [db_init(&file), db_init(&link)] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "the password leaked: {all}");
    }
}

/// One chain across many writers: 8 connections append 50 events each, every append in its own
/// transaction; the chain has no fork and no gap, and its export verifies with the offline
/// verifier and the same audit key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_make_one_chain_that_the_offline_verifier_accepts() {
    let Some(pg) = Cluster::start() else { return };
    assert!(
        db_init(&pg.settings_file("admin.conf", "memwarden"))
            .status
            .success()
    );
    let data = pg.dir.path().join("data-dir");
    let out = std::process::Command::new(common::bin())
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let keys = memwarden::keys::Keyring::load(&data.join("keyring.toml"))
        .unwrap()
        .audit;
    let pg = std::sync::Arc::new(pg);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (pg, keys) = (pg.clone(), keys.clone());
        writers.push(tokio::spawn(async move {
            let mut client = pg.connect("memwarden_app").await;
            for i in 0..50 {
                let tx = client.transaction().await.unwrap();
                let event = memwarden::audit::NewEvent::new(
                    memwarden::audit::Kind::Admin,
                    serde_json::json!({"event": "test", "writer": w, "i": i}),
                );
                memwarden::audit::postgres::append(&tx, &keys, &event, memwarden::clock::now_ms())
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let auditor = pg.connect("memwarden_auditor").await;
    let head = memwarden::audit::postgres::head(&auditor).await.unwrap();
    assert_eq!(head.seq, 400);
    // The auditor exports with the CLI, as the auditor role.
    let copy = pg.dir.path().join("exported-audit.db");
    let settings = pg.settings_file("auditor.conf", "memwarden_auditor");
    let export = || {
        std::process::Command::new(common::bin())
            .args(["db", "export-audit", "--database-file"])
            .arg(&settings)
            .arg("--out")
            .arg(&copy)
            .output()
            .unwrap()
    };
    let out = export();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("head {head}")), "{stdout}");
    // Never over an existing file.
    let again = export();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let out = std::process::Command::new(common::bin())
        .args(["audit", "verify", "--db"])
        .arg(&copy)
        .arg("--keyring")
        .arg(data.join("keyring.toml"))
        .arg("--expect-head")
        .arg(head.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("400 events") && stdout.contains("MACs verified"),
        "{stdout}"
    );
}

// ---- The store on PostgreSQL, driven as a library user would (issue 14). ----

use common::postgres::Ready;
use memwarden::error::{Error, ErrorCode};
use memwarden::store::{
    Author, Changes, Filter, Matched, NewEntry, Query, Quota, Scope, Status, Store, Visibility,
};

const AUTHOR: Author<'static> = Author {
    principal: "alice",
    session_id: "s1",
};

fn new_entry(namespace: &str, content: &str, tags: &[&str]) -> NewEntry {
    NewEntry {
        namespace: namespace.to_string(),
        content: content.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        metadata: Some(r#"{"k":"v"}"#.to_string()),
        status: Status::Active,
    }
}

fn put(store: &mut Store, namespace: &str, content: &str, tags: &[&str], at: i64) -> String {
    let pending = store
        .insert(AUTHOR, new_entry(namespace, content, tags), at)
        .unwrap();
    pending.commit_unaudited().unwrap().id
}

fn everything() -> Filter {
    Filter {
        scope: Scope::All,
        ..Default::default()
    }
}

fn ids(page: &memwarden::store::Page) -> Vec<String> {
    page.entries.iter().map(|e| e.id.clone()).collect()
}

#[test]
fn store_get_update_delete_list_filters_quota_and_purge() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let view = Visibility::everything();
    let e1 = put(&mut store, "a", "first memory", &["blue"], 1_000_000);
    let e2 = put(&mut store, "a", "second memory", &[], 2_000_000);
    let e3 = put(&mut store, "a", "third memory", &["red", "blue"], 3_000_000);

    let got = store.get(&e1, &view).unwrap();
    assert_eq!(
        (got.content.as_str(), got.tags.as_slice()),
        ("first memory", &["blue".to_string()][..])
    );
    assert_eq!(got.metadata.as_deref(), Some(r#"{"k":"v"}"#));

    let changes = Changes {
        content: Some("first memory, revised".into()),
        ..Default::default()
    };
    let e1b = store
        .update(AUTHOR, &e1, changes, 4_000_000, &view)
        .unwrap()
        .commit_unaudited()
        .unwrap()
        .id;
    assert_eq!(store.get(&e1, &view).unwrap().status, Status::Superseded);
    let new = store.get(&e1b, &view).unwrap();
    assert_eq!(new.supersedes.as_deref(), Some(e1.as_str()));
    assert_eq!(new.tags, ["blue"]);
    store
        .delete(&e2, 4_500_000, &view)
        .unwrap()
        .commit_unaudited()
        .unwrap();
    assert!(matches!(store.get(&e2, &view), Err(Error::NotFound)));

    // Newest first, one a page, the cursor continuing below.
    let p1 = store.list(&everything(), None, 1).unwrap();
    assert_eq!(ids(&p1), std::slice::from_ref(&e1b));
    let p2 = store
        .list(&everything(), p1.next_after.as_deref(), 1)
        .unwrap();
    assert_eq!(ids(&p2), std::slice::from_ref(&e3));
    assert_eq!(p2.next_after, None);

    let tagged = |tags: &[&str]| Filter {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..everything()
    };
    assert_eq!(
        ids(&store.list(&tagged(&["red"]), None, 10).unwrap()),
        std::slice::from_ref(&e3)
    );
    assert_eq!(
        ids(&store.list(&tagged(&["blue"]), None, 10).unwrap()),
        [e1b.clone(), e3.clone()]
    );
    assert!(
        store
            .list(&tagged(&["blu"]), None, 10)
            .unwrap()
            .entries
            .is_empty()
    );
    let window = Filter {
        since: Some(2_500_000),
        until: Some(3_500_000),
        ..everything()
    };
    assert_eq!(
        ids(&store.list(&window, None, 10).unwrap()),
        std::slice::from_ref(&e3)
    );

    let report = store.verify_all().unwrap();
    assert_eq!(report.checked, 4);
    assert!(report.failed.is_empty() && report.rolled_back.is_empty());
    assert!(report.unrecorded.is_empty(), "{:?}", report.unrecorded);
    assert_eq!(report.ledger.records, 2);
    assert!(
        report.ledger.problems.is_empty(),
        "{:?}",
        report.ledger.problems
    );

    // Quotas count every row of the namespace, inside the write transaction.
    store.set_quota(Quota {
        max_entries: Some(2),
        max_bytes: None,
    });
    put(&mut store, "q", "one", &[], 5_000_000);
    put(&mut store, "q", "two", &[], 5_000_001);
    let over = store
        .insert(AUTHOR, new_entry("q", "three", &[]), 5_000_002)
        .map(|p| p.entry().id.clone());
    assert!(matches!(over, Err(Error::TooLarge { .. })), "{over:?}");
    store.set_quota(Quota::default());

    // Retention: everything created before 3.5e6 goes, each with its ledger record.
    let (removed, tombstones) = store.purge(Some(3_500_000), None, 6_000_000).unwrap();
    assert_eq!((removed, tombstones), (3, 0));
    assert_eq!(store.count_rows().unwrap(), 3);
    assert!(matches!(store.get(&e3, &view), Err(Error::NotFound)));
    let report = store.verify_all().unwrap();
    assert_eq!(report.ledger.records, 5);
    assert!(report.ledger.problems.is_empty() && report.failed.is_empty());

    // Quarantine: held back until approved, then served (and recorded in the ledger).
    let held = NewEntry {
        status: Status::Quarantined,
        ..new_entry("a", "held for review", &[])
    };
    let held = store
        .insert(AUTHOR, held, 7_000_000)
        .unwrap()
        .commit_unaudited()
        .unwrap()
        .id;
    assert!(matches!(store.get(&held, &view), Err(Error::NotFound)));
    let queue: Vec<String> = store
        .quarantined()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(queue, std::slice::from_ref(&held));
    store.approve(&held, 7_500_000).unwrap();
    assert_eq!(store.get(&held, &view).unwrap().status, Status::Active);
    assert!(store.quarantined().unwrap().is_empty());
    assert_eq!(store.verify_all().unwrap().ledger.records, 6);
    // Postings follow purges, quarantine and approval: exactly the active rows' lexemes.
    assert_eq!(pg.query_i64(common::postgres::POSTINGS_DRIFT), 0);

    // Upkeep is autovacuum's: maintain measures and changes nothing.
    let shape = store.index_shape().unwrap();
    assert_eq!(shape.levels, 0);
    let report = store
        .maintain(std::time::Duration::from_millis(50))
        .unwrap();
    assert_eq!(report.steps, 0);
    assert_eq!(store.count_rows().unwrap(), 4);

    // Bytes are content's own, whatever the column writes for backslashes and U+0000: 8 + 1
    // bytes fit a 9-byte quota exactly.
    store.set_quota(Quota {
        max_entries: None,
        max_bytes: Some(9),
    });
    put(&mut store, "b", "a\\b\\\0\\0\0", &[], 8_000_000);
    put(&mut store, "b", "x", &[], 8_000_001);
    let over = store
        .insert(AUTHOR, new_entry("b", "y", &[]), 8_000_002)
        .map(|p| p.entry().id.clone());
    assert!(matches!(over, Err(Error::TooLarge { .. })), "{over:?}");
    store.close().unwrap();
}

/// Ids and groups of a search, in order.
fn search(store: &Store, text: &str, scope: &Scope) -> Vec<(String, Matched, String)> {
    let filter = Filter {
        scope: scope.clone(),
        ..Default::default()
    };
    let hits = store
        .search(&Query::parse(text).unwrap(), &filter, 10)
        .unwrap();
    assert_eq!(hits.withheld, 0);
    hits.hits
        .into_iter()
        .map(|h| (h.entry.namespace, h.matched, h.snippet))
        .collect()
}

#[test]
fn search_stays_inside_the_scope_and_foreign_rows_never_move_it() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let scope = Scope::only(["n1".to_string(), "n3".to_string()]);
    let mut at = 1_000_000;
    let mut mine = Vec::new();
    for (ns, text) in [
        ("n1", "apple banana split"),
        ("n3", "apple pie"),
        ("n1", "banana bread"),
        ("n3", "cherry apple banana"),
        ("n1", "cherry tart"),
        ("n3", "banana"),
    ] {
        at += 1000;
        mine.push(put(&mut store, ns, text, &[], at));
    }
    let before = search(&store, "apple banana", &scope);
    let order: Vec<&str> = before.iter().map(|h| h.0.as_str()).collect();
    assert_eq!(before.len(), 5, "{before:?}");
    assert!(order.iter().all(|ns| *ns == "n1" || *ns == "n3"));
    assert_eq!(
        before.iter().map(|h| h.1).collect::<Vec<_>>(),
        [
            Matched::All,
            Matched::All,
            Matched::Some,
            Matched::Some,
            Matched::Some
        ]
    );
    assert!(
        before[0].2.contains("«apple»") && before[0].2.contains("«banana»"),
        "{before:?}"
    );

    // The other three namespaces fill up with rows that would shift the word weights, the
    // window and the newest-first order if they were counted.
    for i in 0..60 {
        at += 1000;
        let ns = ["n0", "n2", "n4"][i % 3];
        let text = if i % 4 == 0 { "apple banana" } else { "apple" };
        put(&mut store, ns, text, &[], at);
    }
    let after = search(&store, "apple banana", &scope);
    assert_eq!(after, before);
    let all = search(&store, "apple banana", &Scope::All);
    assert!(all.iter().any(|h| h.0 == "n0"), "the foreign rows do match");

    // List: the scope's rows only, and a foreign cursor is placed by its time alone.
    let filter = Filter {
        scope: scope.clone(),
        ..Default::default()
    };
    let page = store.list(&filter, None, 50).unwrap();
    let mut newest_first = mine.clone();
    newest_first.reverse();
    assert_eq!(ids(&page), newest_first);
    let foreign = store.list(&everything(), None, 1).unwrap().entries[0]
        .id
        .clone();
    assert_eq!(
        ids(&store.list(&filter, Some(&foreign), 50).unwrap()),
        newest_first
    );

    // Operators and quotes in a query are words to look for, never syntax.
    for text in [
        "apple & !banana",
        "a:* | b",
        "'x' <-> y",
        "); DROP TABLE x; --",
    ] {
        let filter = everything();
        store
            .search(&Query::parse(text).unwrap(), &filter, 5)
            .unwrap_or_else(|e| panic!("{text}: {e:?}"));
    }
    assert_eq!(store.count_rows().unwrap(), 66);
}

#[test]
fn a_row_edited_by_the_owner_is_withheld_and_an_old_copy_put_back_is_caught() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let view = Visibility::everything();
    let kept = put(&mut store, "a", "an honest memory", &[], 1_000_000);
    let forged = put(&mut store, "a", "an honest note", &[], 2_000_000);
    let gone = put(&mut store, "a", "a deleted note", &[], 3_000_000);
    let changed = pg.as_owner(
        "UPDATE memory.entries SET content = 'a forged note' WHERE id = $1",
        &[&forged],
    );
    assert_eq!(changed, 1);
    assert!(matches!(store.get(&forged, &view), Err(Error::Integrity)));
    let page = store.list(&everything(), None, 10).unwrap();
    assert_eq!((page.entries.len(), page.withheld), (2, 1));
    assert_eq!(page.withheld_ids, std::slice::from_ref(&forged));
    let hits = store
        .search(&Query::parse("forged note").unwrap(), &everything(), 10)
        .unwrap();
    assert_eq!(hits.withheld, 1);
    assert!(hits.hits.iter().all(|h| h.entry.id != forged));
    // The edit's trigger parsed the row's new words (migration 9: none are stored), so the
    // postings hold the forged row under them and under nothing else.
    assert_eq!(pg.query_i64(common::postgres::POSTINGS_DRIFT), 0);
    let honest = store
        .search(&Query::parse("honest").unwrap(), &everything(), 10)
        .unwrap();
    let found: Vec<&str> = honest.hits.iter().map(|h| h.entry.id.as_str()).collect();
    assert_eq!((found, honest.withheld), (vec![kept.as_str()], 0));

    // Delete, then put the active sealed copy back: the ledger record withholds it.
    let old = pg.query_i64(&format!(
        "SELECT updated_at FROM memory.entries WHERE id = '{gone}'"
    ));
    let old_mac: Vec<u8> = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = pg.cluster.connect("memwarden").await;
            c.query_one("SELECT mac FROM memory.entries WHERE id = $1", &[&gone])
                .await
                .unwrap()
                .get(0)
        })
    };
    store
        .delete(&gone, 4_000_000, &view)
        .unwrap()
        .commit_unaudited()
        .unwrap();
    pg.as_owner(
        "UPDATE memory.entries SET status = 'active', updated_at = $2, mac = $3 WHERE id = $1",
        &[&gone, &old, &old_mac],
    );
    assert!(matches!(store.get(&gone, &view), Err(Error::Integrity)));
    let report = store.verify_all().unwrap();
    assert_eq!(report.failed, std::slice::from_ref(&forged));
    assert_eq!(report.rolled_back, [(gone.clone(), "active".to_string())]);
    assert_eq!(store.get(&kept, &view).unwrap().content, "an honest memory");
    // The owner's edits were posted as any write is (the seals, not the postings, catch them).
    assert_eq!(pg.query_i64(common::postgres::POSTINGS_DRIFT), 0);
}

#[test]
fn reseal_after_a_key_rotation_moves_every_row_and_record_to_the_new_key() {
    let Some(pg) = Ready::start() else { return };
    let view = Visibility::everything();
    let mut store = pg.store();
    let old_id = pg.keyring.entry.active().0.to_string();
    let a = put(&mut store, "a", "one", &[], 1_000_000);
    let b = put(&mut store, "a", "two", &[], 2_000_000);
    store
        .delete(&b, 3_000_000, &view)
        .unwrap()
        .commit_unaudited()
        .unwrap();
    assert_eq!(store.rows_sealed_with(&old_id).unwrap(), 3);
    store.close().unwrap();

    let mut keys = pg.keyring.entry.clone();
    let new_id = keys.rotate("e").unwrap();
    let mut store = pg.store_with(keys);
    let (resealed, failed) = store.reseal_batch(100, &[]).unwrap();
    assert_eq!((resealed, failed.len()), (3, 0));
    assert_eq!(store.rows_sealed_with(&old_id).unwrap(), 0);
    assert_eq!(store.rows_sealed_with(&new_id).unwrap(), 3);
    assert_eq!(store.get(&a, &view).unwrap().content, "one");
    let report = store.verify_all().unwrap();
    assert!(report.failed.is_empty() && report.ledger.problems.is_empty());
}

#[test]
fn a_write_commits_with_exactly_one_chained_event_or_not_at_all() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let event = memwarden::audit::NewEvent::new(
        memwarden::audit::Kind::Admin,
        serde_json::json!({"event": "test-store"}),
    );
    let entry = store
        .insert(AUTHOR, new_entry("a", "audited", &[]), 1_000_000)
        .unwrap()
        .commit_in_store(&event)
        .unwrap();
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit.events"), 1);
    assert_eq!(pg.query_i64("SELECT max(seq) FROM audit.events"), 1);
    // A write dropped before its commit leaves neither row nor event, and frees the lock.
    drop(
        store
            .insert(AUTHOR, new_entry("a", "abandoned", &[]), 2_000_000)
            .unwrap(),
    );
    assert_eq!(store.count_rows().unwrap(), 1);
    let mut other = pg.store();
    put(&mut other, "a", "after the abandoned one", &[], 3_000_000);
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit.events"), 1);
    assert_eq!(
        store
            .get(&entry.id, &Visibility::everything())
            .unwrap()
            .content,
        "audited"
    );
}

#[test]
fn commit_in_store_on_sqlite_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = memwarden::keys::KeySet::generate("e1").unwrap();
    let mut store = Store::open(
        &dir.path().join("memory.db"),
        keys,
        memwarden::store::StoreOptions::default(),
    )
    .unwrap();
    let event =
        memwarden::audit::NewEvent::new(memwarden::audit::Kind::Admin, serde_json::json!({}));
    let failed = store
        .insert(AUTHOR, new_entry("a", "x", &[]), 1)
        .unwrap()
        .commit_in_store(&event)
        .unwrap_err();
    assert!(matches!(failed.error, Error::Audit(_)) && !failed.audited);
    assert_eq!(store.count_rows().unwrap(), 0);
}

#[test]
fn sessions_per_hour_hold_across_connections() {
    let Some(pg) = Ready::start() else { return };
    let pg = std::sync::Arc::new(pg);
    let now = memwarden::clock::now_ms();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let pg = pg.clone();
            std::thread::spawn(move || {
                let mut store = pg.store();
                (0..5)
                    .filter(|_| store.admit_session("bob", now, 4).unwrap())
                    .count()
            })
        })
        .collect();
    let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(admitted, 4);
    let mut store = pg.store();
    assert!(
        store.admit_session("carol", now, 4).unwrap(),
        "others are not held back"
    );
    assert!(
        store.admit_session("bob", now + 3_600_001, 4).unwrap(),
        "an hour later"
    );
}

#[test]
fn a_lost_connection_fails_the_call_as_unavailable() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let id = put(&mut store, "a", "x", &[], 1);
    let killed = pg.query_i64(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'memwarden'",
    );
    assert_eq!(killed, 1);
    let err = store.get(&id, &Visibility::everything()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err:?}");
    assert!(!format!("{err:?}").contains("host="), "{err:?}");
}

/// 8 threads, each with its own backend, store 50 entries each with their audit events: all
/// 400 rows present and verified, and one unforked chain of 400 events that the offline
/// verifier accepts after `db export-audit`.
#[test]
fn eight_writers_make_400_verified_rows_and_one_audit_chain() {
    let Some(pg) = Ready::start() else { return };
    let pg = std::sync::Arc::new(pg);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let pg = pg.clone();
            std::thread::spawn(move || {
                let mut store = pg.store();
                let session = format!("s{w}");
                for i in 0..50 {
                    let author = Author {
                        principal: "alice",
                        session_id: &session,
                    };
                    let event = memwarden::audit::NewEvent::new(
                        memwarden::audit::Kind::Admin,
                        serde_json::json!({"writer": w, "i": i}),
                    );
                    store
                        .insert(
                            author,
                            new_entry("shared", &format!("w{w} i{i}"), &[]),
                            memwarden::clock::now_ms(),
                        )
                        .unwrap()
                        .commit_in_store(&event)
                        .unwrap();
                }
                store.close().unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let store = pg.store();
    let report = store.verify_all().unwrap();
    assert_eq!(report.checked, 400);
    assert!(report.failed.is_empty());
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(&everything(), after.as_deref(), 50).unwrap();
        assert_eq!(page.withheld, 0);
        all.extend(page.entries.into_iter().map(|e| e.created_at));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(all.len(), 400);
    assert!(all.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit.events"), 400);
    assert_eq!(pg.query_i64("SELECT max(seq) FROM audit.events"), 400);

    assert_chain_verifies_offline(&pg, 400);
}

#[test]
fn connecting_before_db_init_says_what_to_do_and_never_the_settings() {
    let Some(pg) = Cluster::start() else { return };
    let file = pg.settings_file("app.conf", "memwarden");
    let settings = memwarden::store::postgres::DatabaseSettings::load(&file).unwrap();
    let keys = memwarden::keys::KeySet::generate("a1").unwrap();
    let err = memwarden::store::postgres::Postgres::connect(&settings, keys)
        .unwrap_err()
        .to_string();
    assert!(err.contains("memwarden db init"), "{err}");
    assert!(!err.contains(&pg.socket_dir()), "{err}");
}

/// A writer stuck holding the store's write lock (here: another session holding the same
/// advisory lock) makes a write fail UNAVAILABLE after `lock_timeout`, not hang; once the lock
/// is free, writes go through again.
#[test]
fn a_write_lock_held_elsewhere_times_out_as_unavailable() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let holder = rt.block_on(pg.cluster.connect("memwarden"));
    rt.block_on(holder.batch_execute("SELECT pg_advisory_lock(x'6d7773746f72'::bigint)"))
        .unwrap();
    let started = std::time::Instant::now();
    let err = store
        .insert(AUTHOR, new_entry("a", "blocked", &[]), 1)
        .map(|p| p.entry().id.clone())
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err:?}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(9));
    rt.block_on(holder.batch_execute("SELECT pg_advisory_unlock_all()"))
        .unwrap();
    put(&mut store, "a", "through", &[], 2);
    assert_eq!(store.count_rows().unwrap(), 1);
}

/// `verify`'s walks read the table and the ledger a page at a time in one snapshot: more rows
/// and records than a page, each seen once.
#[test]
fn verify_walks_every_row_and_record_across_pages() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    for i in 0..2100 {
        put(&mut store, "a", &format!("entry {i}"), &[], 1_000 + i);
    }
    let report = store.verify_all().unwrap();
    assert_eq!(report.checked, 2100);
    assert_eq!(report.statuses.len(), 2100);
    assert!(report.failed.is_empty());
    assert_eq!(
        store.purge(Some(i64::MAX), None, 10_000).unwrap(),
        (2100, 0)
    );
    let report = store.verify_all().unwrap();
    assert_eq!((report.checked, report.ledger.records), (0, 2100));
    assert!(
        report.ledger.problems.is_empty(),
        "{:?}",
        report.ledger.problems
    );
    assert_eq!(report.ledger.kinds.len(), 2100);
}

// ---- Narrow scopes: the namespace-qualified index (issue 13 on PostgreSQL). ----

#[path = "postgres/narrow.rs"]
mod narrow;

/// The server's own events (reads, refusals, session ends) are appended in two pipelined round
/// trips each (`append_alone`): from four connections at once they make one chain that
/// verifies offline; while another session holds the chain's lock, an append fails at the
/// connection's `lock_timeout` having written nothing, and leaves its connection out of any
/// transaction, so the next append, once the lock is free, links on.
#[test]
fn appends_alone_make_one_chain_and_a_held_chain_lock_fails_one_cleanly() {
    use memwarden::pgconn::sql::{Cached, Statements};
    let Some(pg) = Ready::start() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = pg.keyring.audit.clone();
    let event = |w: usize, i: usize| {
        memwarden::audit::NewEvent::new(
            memwarden::audit::Kind::Admin,
            serde_json::json!({"event": "test", "writer": w, "i": i}),
        )
    };
    rt.block_on(async {
        let mut writers = Vec::new();
        for w in 0..4 {
            let (client, keys) = (pg.cluster.connect("memwarden_app").await, keys.clone());
            writers.push(tokio::spawn(async move {
                let statements = Statements::default();
                let sql = Cached {
                    client: &client,
                    statements: &statements,
                };
                for i in 0..50 {
                    let now = memwarden::clock::now_ms();
                    memwarden::audit::postgres::append_alone(sql, &keys, &event(w, i), now)
                        .await
                        .unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
    });
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit.events"), 200);

    let holder = rt.block_on(pg.cluster.connect("memwarden"));
    rt.block_on(holder.batch_execute("SELECT pg_advisory_lock(x'6d7761756474'::bigint)"))
        .unwrap();
    let client = rt.block_on(pg.cluster.connect("memwarden_app"));
    rt.block_on(client.batch_execute("SET lock_timeout = '1s'"))
        .unwrap();
    let statements = Statements::default();
    let sql = Cached {
        client: &client,
        statements: &statements,
    };
    let append = |i| {
        rt.block_on(memwarden::audit::postgres::append_alone(
            sql,
            &keys,
            &event(9, i),
            memwarden::clock::now_ms(),
        ))
    };
    let err = append(0).unwrap_err();
    assert!(
        matches!(&err, memwarden::audit::postgres::PgAuditError::Database(e)
            if memwarden::audit::postgres::is_transient(e)),
        "{err:?}"
    );
    // The lock's failure aborted the transaction: were it still open, this would be refused.
    rt.block_on(client.batch_execute("SELECT 1"))
        .expect("the failed append left its aborted transaction open");
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit.events"), 200);
    rt.block_on(holder.batch_execute("SELECT pg_advisory_unlock_all()"))
        .unwrap();
    append(1).unwrap();
    assert_chain_verifies_offline(&pg, 201);
}

/// `db export-audit` as the auditor, then the offline verifier on the copy: `events` events,
/// one chain, every MAC verified.
fn assert_chain_verifies_offline(pg: &Ready, events: usize) {
    let copy = pg.cluster.dir.path().join("exported.db");
    let auditor = pg
        .cluster
        .settings_file("auditor.conf", "memwarden_auditor");
    let out = std::process::Command::new(common::bin())
        .args(["db", "export-audit", "--database-file"])
        .arg(&auditor)
        .arg("--out")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(common::bin())
        .args(["audit", "verify", "--db"])
        .arg(&copy)
        .arg("--keyring")
        .arg(pg.data.join("keyring.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{events} events")) && stdout.contains("MACs verified"),
        "{stdout}"
    );
}

/// Grouped writes on PostgreSQL (what the daemon does with many sessions): the writes and
/// their events commit in one transaction, invisible to other connections until then; a write
/// dropped inside the group is undone alone, its event never written; updates and deletes
/// join too; a clock behind the group's newest row still stamps in position order; a group
/// rolled back leaves neither rows nor events; a write of its own is refused while a group is
/// open. The chain verifies offline afterwards.
/// Rows and audit events in the store's database.
fn counts(pg: &Ready) -> (i64, i64) {
    (
        pg.query_i64("SELECT count(*) FROM memory.entries"),
        pg.query_i64("SELECT count(*) FROM audit.events"),
    )
}

/// Stages a grouped insert of `content` into namespace "a" at `at`.
fn stage_insert(store: &mut Store, content: &str, at: i64) -> memwarden::store::Entry {
    stage(
        store
            .insert(AUTHOR, new_entry("a", content, &[]), at)
            .unwrap(),
    )
}

/// Stages a grouped write with a call event naming its entry.
fn stage(pending: memwarden::store::PendingWrite<'_>) -> memwarden::store::Entry {
    let id = pending.entry().id.clone();
    let event = memwarden::audit::NewEvent {
        tool: Some("memory_store"),
        outcome: Some(memwarden::audit::Outcome::Ok),
        ..memwarden::audit::NewEvent::new(
            memwarden::audit::Kind::Call,
            serde_json::json!({"created": id}),
        )
    };
    pending.stage(None, &event).unwrap()
}

#[test]
fn a_group_commits_writes_with_their_events_at_once_and_undoes_a_failed_write_alone() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    assert!(store.set_grouped(true), "PostgreSQL groups writes");

    let a = stage_insert(&mut store, "first", 5_000_000);
    drop(
        store
            .insert(AUTHOR, new_entry("a", "dropped", &[]), 5_000_001)
            .unwrap(),
    );
    // The clock went back: the row is stamped with the group's newest time, not before it.
    let c = stage_insert(&mut store, "third", 4_000_000);
    assert_eq!(c.created_at, a.created_at);
    assert!(store.group_open());
    assert_eq!(
        counts(&pg),
        (0, 0),
        "nothing is visible before the group commits"
    );
    store.commit_group().unwrap();
    assert!(!store.group_open());
    assert_eq!(counts(&pg), (2, 2), "two rows, one event each");

    let view = Visibility::everything();
    let changes = Changes {
        content: Some("first, edited".into()),
        ..Changes::default()
    };
    stage(
        store
            .update(AUTHOR, &a.id, changes, 6_000_000, &view)
            .unwrap(),
    );
    stage(store.delete(&c.id, 6_000_001, &view).unwrap());
    stage_insert(&mut store, "fourth", 6_000_002);
    store.commit_group().unwrap();
    assert!(matches!(store.get(&c.id, &view), Err(Error::NotFound)));
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit.events"), 5);
    assert_eq!(
        pg.query_i64(
            "SELECT count(*) FROM (SELECT created_at < lag(created_at) OVER (ORDER BY pos) AS back \
             FROM memory.entries) t WHERE back"
        ),
        0,
        "creation order is storage order"
    );

    let before = counts(&pg);
    let d = stage_insert(&mut store, "rolled back", 7_000_000);
    store.rollback_group();
    assert!(matches!(store.get(&d.id, &view), Err(Error::NotFound)));
    assert_eq!(
        counts(&pg),
        before,
        "a rolled-back group leaves no row and no event"
    );

    // A write of its own while a group is open is refused: its commit would carry the group's.
    stage_insert(&mut store, "grouped", 8_000_000);
    store.set_grouped(false);
    assert!(matches!(
        store.insert(AUTHOR, new_entry("a", "alone", &[]), 8_000_001),
        Err(Error::Internal(_))
    ));
    store.set_grouped(true);
    store.commit_group().unwrap();

    let report = store.verify_all().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_chain_verifies_offline(&pg, 6);
}

/// A staged write's row and event inserts are sent at once and answered with whatever its
/// group waits for next; one the database refuses fails the whole group (each write in it was
/// staged, so none can be undone alone): nothing of the group lands, the connection stays
/// usable, the chain has no gap.
#[test]
fn a_held_insert_refused_later_fails_its_whole_group_and_nothing_of_it_lands() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    let view = Visibility::everything();
    let kept = put(&mut store, "a", "kept before", &[], 1_000_000);
    assert!(store.set_grouped(true));
    // The owner makes one content fail on insert: a staged write's inserts are answered with
    // whatever the group waits for next, so the refusal is heard then.
    pg.batch_as_superuser(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.content = 'refused' THEN RAISE EXCEPTION 'refused'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON memory.entries \
         FOR EACH ROW EXECUTE FUNCTION public.refuse();",
    );
    let before = counts(&pg);

    // Heard with the COMMIT: the group does not commit, neither write lands.
    let fine = stage_insert(&mut store, "fine", 2_000_000);
    stage_insert(&mut store, "refused", 2_000_001);
    assert!(store.commit_group().is_err());
    assert!(!store.group_open());
    assert_eq!(counts(&pg), before, "no row and no event of the group");
    assert!(matches!(store.get(&fine.id, &view), Err(Error::NotFound)));

    // Heard with the next write's first statement (an update reads its row first): that
    // write fails, and the group with it.
    stage_insert(&mut store, "refused", 3_000_000);
    let changes = Changes {
        content: Some("kept, edited".into()),
        ..Changes::default()
    };
    assert!(
        store
            .update(AUTHOR, &kept, changes, 3_000_001, &view)
            .is_err()
    );
    assert!(!store.group_sound());
    assert!(store.commit_group().is_err());
    assert_eq!(counts(&pg), before);
    assert_eq!(store.get(&kept, &view).unwrap().content, "kept before");

    // The connection is fine: the next group commits, and the chain has no gap.
    stage_insert(&mut store, "after", 4_000_000);
    store.commit_group().unwrap();
    assert_eq!(counts(&pg), (before.0 + 1, before.1 + 1));
    let report = store.verify_all().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_chain_verifies_offline(&pg, before.1 as usize + 1);
}

/// A staged write's statements run in the database as it is staged, not when its group next
/// waits for something: the server prepares the group's next write meanwhile. A sequence shows
/// it, since a transaction moves one for everyone to see before it commits; the rows
/// themselves stay unseen until the group commits.
#[test]
fn a_staged_writes_inserts_run_before_its_group_commits() {
    let Some(pg) = Ready::start() else { return };
    let mut store = pg.store();
    assert!(store.set_grouped(true));
    pg.batch_as_superuser(
        "CREATE SEQUENCE public.seen; \
         CREATE FUNCTION public.see() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
         SET search_path = pg_catalog AS $$ BEGIN PERFORM nextval('public.seen'); \
         RETURN NULL; END $$; \
         CREATE TRIGGER see AFTER INSERT ON memory.entries \
         FOR EACH ROW EXECUTE FUNCTION public.see();",
    );
    let seen =
        || pg.query_i64("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.seen");
    let inserted_by = |rows: i64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen() < rows && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        seen()
    };

    // The group's first write, then one joining it: each one's inserts run as it is staged.
    stage_insert(&mut store, "first", 1_000_000);
    assert_eq!(inserted_by(1), 1, "the first write's row was inserted");
    stage_insert(&mut store, "second", 1_000_001);
    assert_eq!(inserted_by(2), 2, "the joining write's row was inserted");
    assert_eq!(counts(&pg), (0, 0), "nothing is visible before the commit");
    store.commit_group().unwrap();
    assert_eq!(counts(&pg), (2, 2));
    let report = store.verify_all().unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_chain_verifies_offline(&pg, 2);
}
