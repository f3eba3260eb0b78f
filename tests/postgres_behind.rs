//! Postings written behind the stores (migration 8): a `serve` on PostgreSQL commits a store's
//! row and event alone, and one serving process per store posts their words from a second
//! connection. Searches find the same rows whether or not they are posted yet, the poster
//! catches up by itself, another process takes over when its process ends, and writes racing
//! it leave the postings exactly as the rows call for (`memwarden verify`).

mod common;

use std::time::{Duration, Instant};

use common::Client;
use common::postgres::Ready;
use serde_json::{Value, json};

/// One number from the database, as its superuser (the harness blocks: not on a runtime thread).
fn count(pg: &Ready, sql: &str) -> i64 {
    tokio::task::block_in_place(|| pg.query_i64(sql))
}

/// Waits until every row is posted (`memory.posted.upto` at the newest row), at most 20 s.
fn posted_up_to_the_newest(pg: &Ready) {
    let start = Instant::now();
    let behind = "SELECT (SELECT coalesce(max(pos), 0) FROM memory.entries) \
                  - (SELECT upto FROM memory.posted)";
    while count(pg, behind) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the poster never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `memwarden verify` (exit status, stdout) or `maintain` on the cluster's store.
fn cli(pg: &Ready, command: &str) -> (Option<i32>, String) {
    let out = tokio::task::block_in_place(|| pg.memwarden(command));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), said)
}

/// The ids a search for `query` returns, in order.
async fn found(c: &Client, query: &str) -> Vec<String> {
    let v = c
        .call("memory_search", json!({"query": query, "limit": 50}))
        .await
        .ok();
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| r["memory"]["id"].as_str().unwrap().to_string())
        .collect()
}

async fn store(c: &Client, content: &str, namespace: &str) -> String {
    let v: Value = c
        .call(
            "memory_store",
            json!({"content": content, "namespace": namespace}),
        )
        .await
        .ok();
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_find_the_same_rows_before_and_after_they_are_posted() {
    let Some(pg) = Ready::start() else { return };
    let c = pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await;
    let mut ids = Vec::new();
    for (content, ns) in [
        ("alpha bravo charlie", "ops"),
        ("bravo delta", "ops"),
        ("alpha echo", "ops"),
        ("alpha bravo in another namespace", "personal"),
    ] {
        ids.push(store(&c, content, ns).await);
    }
    posted_up_to_the_newest(&pg);
    assert_eq!(
        count(&pg, "SELECT count(DISTINCT pos) FROM memory.postings"),
        4,
        "the serving process posted every row"
    );
    let before = (found(&c, "alpha").await, found(&c, "bravo alpha").await);
    assert_eq!(before.0.len(), 3, "{before:?}");
    assert_eq!(before.1.len(), 4, "every word first, then some: {before:?}");
    assert_eq!(before.1[..2], [ids[3].clone(), ids[0].clone()]);

    // Nothing posted: every row is behind, and searches read them directly.
    tokio::task::block_in_place(|| {
        pg.as_owner("DELETE FROM memory.postings", &[]);
        pg.as_owner("UPDATE memory.posted SET upto = 0", &[]);
    });
    let behind = (found(&c, "alpha").await, found(&c, "bravo alpha").await);
    assert_eq!(behind, before, "the same rows, in the same order");
    let listed = c
        .call(
            "memory_search",
            json!({"query": "bravo", "namespace": "ops"}),
        )
        .await
        .ok();
    assert_eq!(
        listed["results"].as_array().unwrap().len(),
        2,
        "a narrow scope reads its own rows behind: {listed}"
    );

    // The next write prompts the poster, which posts everything behind.
    ids.push(store(&c, "foxtrot alpha", "ops").await);
    posted_up_to_the_newest(&pg);
    assert_eq!(
        count(&pg, "SELECT count(DISTINCT pos) FROM memory.postings"),
        5
    );
    let after = found(&c, "alpha").await;
    assert_eq!(after[0], ids[4]);
    assert_eq!(after[1..], before.0[..]);
    c.close().await;
    let (code, said) = cli(&pg, "verify");
    assert_eq!(code, Some(0), "{said}");
}

/// One session stores as fast as it can while another updates and deletes what it has just
/// stored, so rows change while the store's poster (one of the two serving processes) locks and
/// posts them.
/// Afterwards `verify` finds the postings exactly as the rows call for, before and after
/// `maintain` posts whatever is still behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_the_posters_leave_the_postings_exact() {
    let Some(pg) = Ready::start() else { return };
    let writer = pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await;
    let changer = pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let storing = tokio::spawn(async move {
        for i in 0..300 {
            let id = store(
                &writer,
                &format!("racing note {i} word{} shared", i % 7),
                "ops",
            )
            .await;
            tx.send((i, id)).unwrap();
        }
        writer.close().await;
    });
    let mut changed = 0;
    while let Some((i, id)) = rx.recv().await {
        let outcome = if i % 3 == 0 {
            changer.call("memory_delete", json!({"id": id})).await
        } else if i % 3 == 1 {
            changer
                .call(
                    "memory_update",
                    json!({"id": id, "content": format!("changed note {i} other{}", i % 5)}),
                )
                .await
        } else {
            continue;
        };
        outcome.ok();
        changed += 1;
    }
    storing.await.unwrap();
    assert_eq!(changed, 200);
    let searched = found(&changer, "shared").await;
    assert_eq!(
        searched.len(),
        50,
        "limit 50 of the 100 rows left as stored"
    );
    changer.close().await;

    let (code, said) = cli(&pg, "verify");
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = cli(&pg, "maintain");
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        count(
            &pg,
            "SELECT (SELECT max(pos) FROM memory.entries) - (SELECT upto FROM memory.posted)"
        ),
        0,
        "maintain posts every row behind"
    );
    let (code, said) = cli(&pg, "verify");
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM memory.entries e WHERE e.status = 'active' AND NOT EXISTS \
             (SELECT FROM memory.postings p WHERE p.pos = e.pos)"
        ),
        0
    );
}

/// A serving process that ends posts what it stored before it goes, so searches after it do
/// not read those rows from the table. The owner holds `memory.posted` while the session
/// stores, so no step can run until the session is about to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_posts_what_it_stored_first() {
    let Some(pg) = Ready::start() else { return };
    let owner = pg.cluster.connect("memwarden").await;
    owner
        .batch_execute("BEGIN; SELECT upto FROM memory.posted FOR UPDATE")
        .await
        .unwrap();
    let c = pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await;
    for i in 0..2000 {
        store(&c, &format!("ending note {i}"), "ops").await;
    }
    let behind = "SELECT count(*) FROM memory.entries \
                  WHERE pos > (SELECT upto FROM memory.posted)";
    assert_eq!(count(&pg, behind), 2000, "nothing posted while it is held");
    owner.batch_execute("COMMIT").await.unwrap();
    c.close().await;
    posted_up_to_the_newest(&pg);
    assert_eq!(
        count(&pg, "SELECT count(DISTINCT pos) FROM memory.postings"),
        2000
    );
}

/// Serving processes holding the poster's session-level advisory lock ("mwpost": a bigint key
/// shows in `pg_locks` as its high and low 32 bits).
const POSTERS: &str = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                       AND classid = 28023 AND objid = 1886352244 AND objsubid = 1";

/// Of several serving processes one posts, and when its process ends another takes over and
/// posts what the others store: without it, their rows would stay behind until `maintain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_posts_for_the_store_and_another_takes_over_when_it_ends() {
    let Some(pg) = Ready::start() else { return };
    let first = pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await;
    store(&first, "first poster note", "ops").await;
    let others = [
        pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await,
        pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await,
    ];
    for c in &others {
        store(c, "standing by note", "ops").await;
    }
    posted_up_to_the_newest(&pg);
    // Each of the others has asked for the lock as its first write committed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(&pg, POSTERS), 1, "one poster for three processes");
    // What an operator sizes `max_connections` by (README, "Many hosts"): three a process,
    // its writes', its audit events' and its poster's (held, or waiting for the lock).
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'memwarden_app'"
        ),
        9,
        "three connections for each of three processes"
    );

    first.close().await;
    for c in &others {
        for i in 0..5 {
            store(c, &format!("after the poster went {i}"), "ops").await;
        }
    }
    posted_up_to_the_newest(&pg);
    assert_eq!(count(&pg, POSTERS), 1, "one of the others took over");
    assert_eq!(
        count(&pg, "SELECT count(DISTINCT pos) FROM memory.postings"),
        13
    );
    for c in others {
        c.close().await;
    }
    // The lock goes with its process (its backend notices the closed connection).
    let start = Instant::now();
    while count(&pg, POSTERS) > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a poster outlived its process"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
