//! Reads without `namespace` cover every namespace the caller may read, and nothing outside its
//! scope changes what it sees (issue 13). Also `maintain` under load, keyring reload across
//! rotate + reseal, and the upgrade of a data dir made by schema 3.

mod common;

use std::collections::BTreeSet;

use common::{Client, TestDir};
use serde_json::{Value, json};

const ALL_TOOLS: &str = r#"["memory_store", "memory_get", "memory_search", "memory_list", "memory_update", "memory_delete"]"#;

/// A policy with an `admin` that writes everywhere and an `agent` with `agent_namespaces`.
fn policy(agent_namespaces: &str, agent_default: &str) -> String {
    format!(
        "version = 1\n\
         [principals.admin]\ntools = {ALL_TOOLS}\nnamespaces = {{ \"*\" = \"rw\" }}\ndefault_namespace = \"default\"\n\
         [principals.agent]\ntools = {ALL_TOOLS}\nnamespaces = {agent_namespaces}\ndefault_namespace = \"{agent_default}\"\n"
    )
}

async fn as_principal(dir: &TestDir, policy_args: &[String], who: &str) -> Client {
    let mut args = policy_args.to_vec();
    args.extend(["--principal".into(), who.into()]);
    dir.connect_with(&args).await
}

async fn store_in(c: &Client, ns: &str, content: &str) -> String {
    let v = c
        .call("memory_store", json!({"content": content, "namespace": ns}))
        .await
        .ok();
    v["id"].as_str().unwrap().to_string()
}

fn namespaces_of(items: &[Value], key: Option<&str>) -> BTreeSet<String> {
    items
        .iter()
        .map(|v| {
            key.map_or(v, |k| &v[k])["namespace"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Every page of a list, following the cursor; returns the memories in order.
async fn list_all(c: &Client, mut args: Value) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let page = c.call("memory_list", args.clone()).await.ok();
        let items = page["memories"].as_array().unwrap().clone();
        assert!(items.len() <= args["limit"].as_u64().unwrap_or(20) as usize);
        out.extend(items);
        match page["next_cursor"].as_str() {
            Some(cursor) => args["cursor"] = json!(cursor),
            None => return out,
        }
    }
}

#[tokio::test]
async fn one_search_and_one_list_without_namespace_find_three_namespaces() {
    let dir = TestDir::new();
    let c = dir.connect().await;
    for ns in ["work", "personal", "research"] {
        store_in(&c, ns, &format!("alpha note filed under {ns}")).await;
    }
    let found = c
        .call("memory_search", json!({"query": "alpha"}))
        .await
        .ok();
    let results = found["results"].as_array().unwrap();
    assert_eq!(
        namespaces_of(results, Some("memory")),
        BTreeSet::from(["personal".into(), "research".into(), "work".into()])
    );
    let listed = c.call("memory_list", json!({})).await.ok();
    assert_eq!(
        namespaces_of(listed["memories"].as_array().unwrap(), None).len(),
        3
    );
    // Naming one keeps to it; writes without one still go to the default namespace.
    let one = c
        .call(
            "memory_search",
            json!({"query": "alpha", "namespace": "work"}),
        )
        .await
        .ok();
    assert_eq!(one["results"].as_array().unwrap().len(), 1);
    let stored = c
        .call(
            "memory_store",
            json!({"content": "alpha without a namespace"}),
        )
        .await
        .ok();
    assert_eq!(stored["namespace"], "default");
    c.close().await;
}

#[tokio::test]
async fn two_namespaces_out_of_five_never_show_the_other_three() {
    let dir = TestDir::new();
    dir.init();
    let args = dir.policy(&policy(r#"{ n1 = "rw", n2 = "r" }"#, "n1"));
    let admin = as_principal(&dir, &args, "admin").await;
    let mut foreign = Vec::new();
    let mut own = BTreeSet::new();
    for round in 0..3 {
        for ns in ["n1", "n2", "n3", "n4", "n5"] {
            let id = store_in(&admin, ns, &format!("secret plan {round} in {ns}")).await;
            if ns == "n1" || ns == "n2" {
                own.insert(id);
            } else {
                foreign.push(id);
            }
        }
    }
    admin.close().await;

    let agent = as_principal(&dir, &args, "agent").await;
    let readable = BTreeSet::from(["n1".to_string(), "n2".to_string()]);
    let found = agent
        .call(
            "memory_search",
            json!({"query": "secret plan", "limit": 50}),
        )
        .await
        .ok();
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    assert_eq!(namespaces_of(results, Some("memory")), readable);
    // Page by page through the cursor, two at a time.
    let listed = list_all(&agent, json!({"limit": 2})).await;
    let ids: BTreeSet<String> = listed
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, own, "every readable entry once, nothing else");
    assert_eq!(listed.len(), 6);
    // Named namespaces: readable ones work, the others are refused.
    for ns in ["n1", "n2"] {
        let one = agent
            .call("memory_search", json!({"query": "secret", "namespace": ns}))
            .await
            .ok();
        assert_eq!(
            namespaces_of(one["results"].as_array().unwrap(), Some("memory")).len(),
            1
        );
        let page = agent
            .call("memory_list", json!({"namespace": ns}))
            .await
            .ok();
        assert_eq!(page["memories"].as_array().unwrap().len(), 3);
    }
    for ns in ["n3", "n4", "n5"] {
        for (tool, a) in [
            ("memory_search", json!({"query": "secret", "namespace": ns})),
            ("memory_list", json!({"namespace": ns})),
        ] {
            assert_eq!(agent.call(tool, a).await.tool_code(), "FORBIDDEN");
        }
    }
    // By id, or by a foreign id used as a cursor: nothing of theirs.
    for id in &foreign {
        let got = agent.call("memory_get", json!({"id": id})).await;
        assert_eq!(got.tool_code(), "NOT_FOUND");
        let cursor = uuid::Uuid::parse_str(id).unwrap().simple().to_string();
        let page = agent
            .call("memory_list", json!({"cursor": cursor, "limit": 50}))
            .await
            .ok();
        assert_eq!(
            namespaces_of(page["memories"].as_array().unwrap(), None)
                .difference(&readable)
                .count(),
            0
        );
    }
    agent.close().await;
}

#[tokio::test]
async fn star_read_over_many_namespaces_gets_bounded_pages_and_a_working_cursor() {
    let dir = TestDir::new();
    dir.init();
    let args = dir.policy(&policy(r#"{ "*" = "r" }"#, "default"));
    let admin = as_principal(&dir, &args, "admin").await;
    let mut stored = BTreeSet::new();
    for i in 0..60 {
        stored.insert(
            store_in(
                &admin,
                &format!("team-{}", i % 30),
                &format!("common entry {i}"),
            )
            .await,
        );
    }
    admin.close().await;
    let agent = as_principal(&dir, &args, "agent").await;
    let listed = list_all(&agent, json!({"limit": 7})).await;
    assert_eq!(listed.len(), 60);
    let ids: BTreeSet<String> = listed
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, stored);
    // RFC 3339 leaves out a zero fraction: compare as milliseconds.
    let ms = |t: &str| {
        let t = t.trim_end_matches('Z');
        let (secs, frac) = t.split_once('.').unwrap_or((t, "0"));
        (secs.to_string(), format!("{frac:0<3}"))
    };
    let times: Vec<_> = listed
        .iter()
        .map(|m| ms(m["created_at"].as_str().unwrap()))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let found = agent
        .call("memory_search", json!({"query": "common", "limit": 5}))
        .await
        .ok();
    assert_eq!(found["results"].as_array().unwrap().len(), 5);
    agent.close().await;
}

#[tokio::test]
async fn what_other_namespaces_hold_never_changes_a_callers_results_or_their_order() {
    let dir = TestDir::new();
    dir.init();
    let args = dir.policy(&policy(r#"{ mine = "rw" }"#, "mine"));
    let agent = as_principal(&dir, &args, "agent").await;
    // Rows holding some of the words, in different mixes, so word weights decide the order.
    for text in [
        "alpha beta",
        "alpha gamma",
        "beta gamma",
        "beta only",
        "gamma only",
        "alpha only",
        "alpha beta gamma delta",
        "delta beta",
        "gamma delta",
    ] {
        store_in(&agent, "mine", text).await;
    }
    let queries = ["alpha beta gamma", "beta delta", "gamma alpha delta"];
    let mut before = Vec::new();
    for q in queries {
        let v = agent
            .call("memory_search", json!({"query": q, "limit": 50}))
            .await
            .ok();
        before.push(v["results"].clone());
    }
    // Someone else fills another namespace with many matches of the same words, more than the
    // search window, skewed towards one word.
    let admin = as_principal(&dir, &args, "admin").await;
    for i in 0..520 {
        let text = if i % 5 == 0 {
            format!("beta gamma {i}")
        } else {
            format!("beta {i}")
        };
        store_in(&admin, "theirs", &text).await;
    }
    admin.close().await;
    for (q, was) in queries.iter().zip(&before) {
        let v = agent
            .call("memory_search", json!({"query": q, "limit": 50}))
            .await
            .ok();
        assert_eq!(&v["results"], was, "results of {q:?} changed");
    }
    agent.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintain_while_four_writers_store_loses_and_refuses_nothing() {
    const WRITERS: usize = 4;
    const EACH: usize = 150;
    let dir = std::sync::Arc::new(TestDir::new());
    dir.init();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            let c = dir.connect().await;
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                // `.ok()` panics on any refusal or error.
                let v = c
                    .call("memory_store", json!({"content": format!("writer {w} stores entry {i} about maintenance")}))
                    .await
                    .ok();
                ids.push(v["id"].as_str().unwrap().to_string());
            }
            c.close().await;
            ids
        }));
    }
    let maint = {
        let dir = dir.clone();
        let running = running.clone();
        tokio::task::spawn_blocking(move || {
            let mut runs = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                let out = dir.cli(&["maintain"]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // PostgreSQL leaves upkeep to autovacuum, and says so.
                let said = if common::store::on_postgres() {
                    "autovacuum"
                } else {
                    "full-text index"
                };
                assert!(String::from_utf8_lossy(&out.stdout).contains(said));
                runs += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            runs
        })
    };
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let runs = maint.await.unwrap();
    assert!(runs >= 1);
    let out = dir.cli(&["maintain"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        common::store::on_postgres() || text.contains("segments -> 2 ("),
        "one segment per index (shared and namespace-qualified) after a quiet run: {text}"
    );

    assert_eq!(acked.len(), WRITERS * EACH);
    assert_eq!(dir.row_count(), (WRITERS * EACH) as i64);
    for cmd in [&["verify"][..], &["audit", "verify"][..]] {
        let out = dir.cli(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let c = dir.connect().await;
    for id in acked.iter().step_by(37) {
        let got = c.call("memory_get", json!({"id": id})).await.ok();
        assert_eq!(got["memory"]["verified"], true);
    }
    let found = c
        .call(
            "memory_search",
            json!({"query": "maintenance", "limit": 50}),
        )
        .await
        .ok();
    assert_eq!(found["results"].as_array().unwrap().len(), 50);
    c.close().await;
    let audit = rusqlite::Connection::open(dir.audit_db()).unwrap();
    let maintained: i64 = audit
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'admin' AND json_extract(detail, '$.event') = 'maintain'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(maintained, runs as i64 + 1, "every run audited");
}

#[tokio::test]
async fn a_session_open_across_rotate_and_reseal_serves_every_row() {
    let dir = TestDir::new();
    let c = dir.connect().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(c.store(&format!("kept across rotation {i}")).await);
    }
    for cmd in [
        &["keys", "rotate"][..],
        &["reseal"][..],
        &["keys", "retire", "e1"][..],
    ] {
        let out = dir.cli(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for id in &ids {
        let got = c.call("memory_get", json!({"id": id})).await.ok();
        assert_eq!(got["memory"]["verified"], true);
    }
    let page = c.call("memory_list", json!({})).await.ok();
    assert_eq!(page["memories"].as_array().unwrap().len(), 5);
    assert_eq!(page["withheld"], 0);
    let found = c
        .call("memory_search", json!({"query": "rotation"}))
        .await
        .ok();
    assert_eq!(found["results"].as_array().unwrap().len(), 5);
    assert_eq!(found["withheld"], 0);
    c.close().await;
}

/// memory.db opened as the SQLite file it is: the schema-3 upgrade test rewrites and inspects
/// the SQLite backend's own schema, which is no tampering and has no other backend's form.
fn sqlite_file(dir: &TestDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.data().join("memory.db")).expect("open memory.db")
}

/// Schema 3's full-text index, as migration 1 made it (verbatim), to rebuild an old data dir.
const SCHEMA_3_FTS: &str = r#"
CREATE VIRTUAL TABLE entries_fts USING fts5 (
    content, tags,
    content = 'entries', content_rowid = 'rowid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries WHEN new.status = 'active' BEGIN
    INSERT INTO entries_fts (rowid, content, tags) VALUES (new.rowid, new.content, new.tags);
END;
CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries WHEN old.status = 'active' BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, content, tags)
        VALUES ('delete', old.rowid, old.content, old.tags);
END;
CREATE TRIGGER entries_fts_update AFTER UPDATE ON entries BEGIN
    INSERT INTO entries_fts (entries_fts, rowid, content, tags)
        SELECT 'delete', old.rowid, old.content, old.tags WHERE old.status = 'active';
    INSERT INTO entries_fts (rowid, content, tags)
        SELECT new.rowid, new.content, new.tags WHERE new.status = 'active';
END;
INSERT INTO entries_fts (rowid, content, tags)
    SELECT rowid, content, tags FROM entries WHERE status = 'active';
PRAGMA user_version = 3;
"#;

#[tokio::test]
async fn a_data_dir_of_schema_3_upgrades_in_place() {
    if common::store::sqlite_only(
        "memory.db's schema upgrade; PostgreSQL's is tests/postgres/narrow.rs's",
    ) {
        return;
    }
    let dir = TestDir::new();
    let c = dir.connect().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            store_in(
                &c,
                if i % 2 == 0 { "a" } else { "b" },
                &format!("upgrade note {i}"),
            )
            .await,
        );
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let deleted = ids.pop().unwrap();
    c.call("memory_delete", json!({"id": deleted})).await.ok();
    c.close().await;
    // Back to schema 3: its index, no scope column, no scoped index; two rows committed out of creation
    // order, as concurrent servers could leave them.
    let db = sqlite_file(&dir);
    db.execute_batch(
        "DROP TRIGGER namespace_usage_insert; DROP TRIGGER namespace_usage_delete; \
         DROP TRIGGER namespace_usage_update; DROP TABLE namespace_usage; \
         DROP TRIGGER scoped_fts_insert; DROP TRIGGER scoped_fts_delete; \
         DROP TRIGGER scoped_fts_update; DROP TABLE scoped_fts; \
         DROP TRIGGER entries_fts_insert; DROP TRIGGER entries_fts_delete; \
         DROP TRIGGER entries_fts_update; DROP TABLE entries_fts; DROP INDEX entries_scope; \
         DROP INDEX entries_by_status; DROP INDEX entries_created; \
         ALTER TABLE entries DROP COLUMN scope; \
         UPDATE entries SET rowid = -1 WHERE rowid = 2; UPDATE entries SET rowid = 2 WHERE rowid = 4; \
         UPDATE entries SET rowid = 4 WHERE rowid = -1;",
    )
    .unwrap();
    db.execute_batch(SCHEMA_3_FTS).unwrap();
    drop(db);

    let c = dir.connect().await;
    let found = c
        .call("memory_search", json!({"query": "upgrade", "limit": 50}))
        .await
        .ok();
    assert_eq!(found["results"].as_array().unwrap().len(), 5);
    let only_a = c
        .call(
            "memory_search",
            json!({"query": "upgrade note", "namespace": "a"}),
        )
        .await
        .ok();
    assert_eq!(only_a["results"].as_array().unwrap().len(), 3);
    let listed = list_all(&c, json!({"limit": 2})).await;
    let listed: Vec<&str> = listed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    c.close().await;

    let db = sqlite_file(&dir);
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        version,
        memwarden::store::sqlite::migrations::CURRENT_VERSION
    );
    // Migration 6 counted the rows already there, and its triggers the ones stored since: every
    // row of a namespace, whatever its status, and its content's bytes.
    let usage = |sql: &str| -> Vec<(String, i64, i64)> {
        let mut s = db.prepare(sql).unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let kept = usage("SELECT namespace, entries, bytes FROM namespace_usage ORDER BY namespace");
    assert_eq!(
        kept,
        usage(
            "SELECT namespace, count(*), sum(length(CAST(content AS BLOB))) FROM entries \
             GROUP BY namespace ORDER BY namespace"
        )
    );
    assert_eq!(kept.len(), 2, "{kept:?}");
    let out_of_order: i64 = db
        .query_row(
            "SELECT count(*) FROM entries a JOIN entries b ON b.rowid > a.rowid WHERE b.created_at < a.created_at",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(out_of_order, 0, "row ids follow creation order");
    db.execute_batch(
        "INSERT INTO entries_fts (entries_fts) VALUES ('integrity-check'); \
         INSERT INTO scoped_fts (scoped_fts) VALUES ('integrity-check');",
    )
    .unwrap();
    assert!(dir.cli(&["verify"]).status.success());
}
