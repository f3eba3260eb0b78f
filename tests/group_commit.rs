//! Group commit: the writes of many sessions share commits, and each is still judged, audited
//! and answered on its own. The real daemon over raw HTTP with a real policy file (on SQLite,
//! or PostgreSQL with `MEMWARDEN_TEST_STORE=postgres`); and SQLite's groups themselves through
//! the library, on real files.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::TestDir;
use common::http::Http;
use memwarden::audit::{AuditLog, Kind, NewEvent, Outcome};
use memwarden::error::Error;
use memwarden::keys::Keyring;
use memwarden::store::testing::Tamper;
use memwarden::store::{
    Author, Entry, NewEntry, PendingWrite, Rights, Status, Store, StoreOptions, Visibility,
};
use serde_json::{Value, json};

const SESSIONS: usize = 16;
const EACH: usize = 6;
const QUOTA: usize = 40;

/// `memwarden verify` and `memwarden audit verify` pass on the data dir.
fn verify_both(dir: &TestDir) {
    for check in [&["verify"][..], &["audit", "verify"][..]] {
        let out = dir.cli(check);
        assert!(
            out.status.success(),
            "{check:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// What a call answered: "ok" or the refusal's code.
fn code(reply: &Value) -> String {
    match reply["result"]["structuredContent"]["code"].as_str() {
        Some(c) if reply["result"]["isError"] == true => c.to_string(),
        _ if reply.get("error").is_some() => format!("rpc {}", reply["error"]),
        _ => "ok".into(),
    }
}

/// 16 sessions race to store 96 entries into one namespace whose quota is 40. The quota is
/// counted inside the open group, so exactly 40 go in whatever groups form; each refused write
/// is undone alone (the others in its group still commit); every acknowledged write reads
/// back at once and is in the store with exactly one `ok` event; the chain and the store
/// verify.
#[test]
fn concurrent_writes_in_shared_commits_are_each_judged_alone() {
    let dir = TestDir::new();
    let tools = serde_json::to_string(&common::TOOL_NAMES).unwrap();
    let policy = dir.policy(&format!(
        "version = 1\n[limits]\nnamespace_max_entries = {QUOTA}\nnamespace_max_bytes = 1000000\n\
         [principals.local]\ntools = {tools}\nnamespaces = {{ \"*\" = \"rw\" }}\n\
         default_namespace = \"default\"\n"
    ));
    let token = dir.issue_token("local");
    let args: Vec<&str> = policy.iter().map(String::as_str).collect();
    let daemon = dir.serve_http(&args);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|t| {
            let d = Http {
                addr: daemon.addr.clone(),
            };
            let (token, acked, refused) = (token.clone(), acked.clone(), refused.clone());
            std::thread::spawn(move || {
                let session = d.open_session(&token);
                for i in 0..EACH {
                    let content = format!("session {t} entry {i}");
                    let n = (i * 2 + 1) as u64;
                    let stored = d.call(
                        &token,
                        &session,
                        n,
                        "memory_store",
                        json!({"content": content, "namespace": "shared"}),
                    );
                    match code(&stored).as_str() {
                        "ok" => {
                            let id = stored["result"]["structuredContent"]["id"]
                                .as_str()
                                .unwrap()
                                .to_string();
                            // Acknowledged means committed: it reads back at once.
                            let got =
                                d.call(&token, &session, n + 1, "memory_get", json!({"id": id}));
                            assert_eq!(code(&got), "ok", "{got}");
                            assert_eq!(
                                got["result"]["structuredContent"]["memory"]["content"],
                                content
                            );
                            acked.lock().unwrap().push(id);
                        }
                        other => refused.lock().unwrap().push(other.to_string()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a session's thread failed");
    }
    daemon.stop_ok(&dir);

    let acked = acked.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    assert_eq!(acked.len(), QUOTA, "refusals: {refused:?}");
    assert_eq!(refused.len(), SESSIONS * EACH - QUOTA);
    assert!(refused.iter().all(|c| c == "TOO_LARGE"), "{refused:?}");

    let exported = common::stdout_ok(&dir.cli(&["export"]));
    let present: HashSet<String> = exported
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["namespace"] == "shared")
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(present, acked.iter().cloned().collect::<HashSet<_>>());

    let events = common::audit_events(&dir);
    let stores = |outcome: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["kind"] == "call" && e["tool"] == "memory_store")
            .filter(|e| e["outcome"] == outcome)
            .collect()
    };
    let created: Vec<String> = stores("ok")
        .iter()
        .filter_map(|e| e["detail"]["created"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(created.len(), QUOTA, "one ok event per acknowledged write");
    assert_eq!(
        created.into_iter().collect::<HashSet<_>>(),
        present,
        "the ok events name exactly the stored rows"
    );
    let denied = stores("denied");
    assert_eq!(denied.len(), SESSIONS * EACH - QUOTA);
    assert!(denied.iter().all(|e| e["code"] == "TOO_LARGE"));

    verify_both(&dir);
}

/// 16 sessions store, update and delete in one namespace whose content quota holds exactly 40
/// entries of 50 bytes, so the quota is counted inside groups that mix stores (which the group
/// counts itself, without asking the database again) with updates and deletes (after which it
/// asks again). Exactly 40 row-creating writes (stores and updates: a superseded or deleted row
/// still counts) are acknowledged whatever groups form, every other one is refused
/// TOO_LARGE, the kept usage matches the rows (`verify`), and the chain verifies.
#[test]
fn a_content_quota_holds_exactly_in_groups_that_mix_stores_updates_and_deletes() {
    const BYTES: usize = 50;
    const FITS: usize = 40;
    let dir = TestDir::new();
    let tools = serde_json::to_string(&common::TOOL_NAMES).unwrap();
    let policy = dir.policy(&format!(
        "version = 1\n[limits]\nnamespace_max_entries = 1000\nnamespace_max_bytes = {}\n\
         [principals.local]\ntools = {tools}\nnamespaces = {{ \"*\" = \"rw\" }}\n\
         default_namespace = \"default\"\n",
        FITS * BYTES
    ));
    let token = dir.issue_token("local");
    let args: Vec<&str> = policy.iter().map(String::as_str).collect();
    let daemon = dir.serve_http(&args);
    let created = Arc::new(Mutex::new(0usize));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let barrier = Arc::new(std::sync::Barrier::new(SESSIONS));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|t| {
            let d = Http {
                addr: daemon.addr.clone(),
            };
            let (token, created, refused) = (token.clone(), created.clone(), refused.clone());
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let session = d.open_session(&token);
                let content =
                    |kind: &str, i: usize| format!("{kind} {t:02} {i:02} {:-<1$}", "", BYTES - 9);
                let mut n = 0;
                let mut call = |tool: &str, args: Value| {
                    n += 1;
                    let reply = d.call(&token, &session, n, tool, args);
                    match code(&reply).as_str() {
                        "ok" => Some(reply["result"]["structuredContent"].clone()),
                        other => {
                            refused.lock().unwrap().push(format!("{tool}: {other}"));
                            None
                        }
                    }
                };
                let store = |call: &mut dyn FnMut(&str, Value) -> Option<Value>, i: usize| {
                    let text = content("st", i);
                    assert_eq!(text.len(), BYTES);
                    let stored = call(
                        "memory_store",
                        json!({"content": text, "namespace": "tight"}),
                    );
                    stored.map(|s| s["id"].as_str().unwrap().to_string())
                };
                // Two stores each (32 of the 40 that fit), then all at once updates and stores,
                // again and again: the quota runs out in groups that mix them (and deletes,
                // which free nothing).
                let mut ids: Vec<String> = (0..2).filter_map(|i| store(&mut call, i)).collect();
                *created.lock().unwrap() += ids.len();
                barrier.wait();
                for i in 2..2 + EACH {
                    // Odd sessions store first, even ones update first: both orders meet
                    // in the groups where the quota runs out.
                    if t % 2 == 1
                        && let Some(id) = store(&mut call, i)
                    {
                        *created.lock().unwrap() += 1;
                        ids.push(id);
                    }
                    let last = ids.pop().unwrap();
                    let update = json!({"id": last, "content": content("up", i)});
                    match call("memory_update", update) {
                        Some(updated) => {
                            *created.lock().unwrap() += 1;
                            ids.push(updated["id"].as_str().unwrap().to_string());
                        }
                        None => ids.push(last),
                    }
                    if t % 2 == 0
                        && let Some(id) = store(&mut call, i)
                    {
                        *created.lock().unwrap() += 1;
                        ids.push(id);
                    }
                    if (t + i) % 4 == 0 && ids.len() > 1 {
                        let gone = ids.remove(0);
                        assert!(call("memory_delete", json!({"id": gone})).is_some());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a session's thread failed");
    }
    daemon.stop_ok(&dir);
    let refused = refused.lock().unwrap().clone();
    assert_eq!(*created.lock().unwrap(), FITS, "refusals: {refused:?}");
    assert!(
        refused.iter().all(|r| r.ends_with(": TOO_LARGE")),
        "{refused:?}"
    );
    verify_both(&dir);
}

fn entry(content: &str) -> NewEntry {
    NewEntry {
        namespace: "default".into(),
        content: content.into(),
        tags: Vec::new(),
        metadata: None,
        status: Status::Active,
    }
}

/// Stages a write with the call event `verify` reconciles it against.
fn stage(pending: PendingWrite<'_>, log: &mut AuditLog) -> Entry {
    let id = pending.entry().id.clone();
    let event = NewEvent {
        tool: Some("memory_store"),
        outcome: Some(Outcome::Ok),
        ..NewEvent::new(Kind::Call, json!({"created": id}))
    };
    pending.stage(Some(log), &event).unwrap()
}

/// The groups through the library: writes staged in a group are durable only once it commits
/// (another connection sees none of them before); a write dropped inside a group is undone
/// alone; a group rolled back leaves neither its rows nor its events. `verify` and `audit
/// verify` pass afterwards.
#[test]
fn a_group_commits_whole_undoes_a_failed_write_alone_and_rolls_back_whole() {
    if common::store::sqlite_only(
        "audit.db's and memory.db's groups; PostgreSQL's one-transaction group is \
         tests/postgres.rs a_group_commits_writes_with_their_events_at_once_…",
    ) {
        return;
    }
    let dir = TestDir::new();
    dir.init();
    let data = dir.data();
    let keyring = Keyring::load(&data.join("keyring.toml")).unwrap();
    let mut store = Store::open(
        &data.join("memory.db"),
        keyring.entry.clone(),
        StoreOptions::default(),
    )
    .unwrap();
    assert!(store.set_grouped(true), "SQLite groups writes");
    let mut log = AuditLog::open(&data.join("audit.db"), keyring.audit.clone()).unwrap();
    let start = log.head().unwrap().seq;
    let author = Author {
        principal: "local",
        session_id: "group-test",
    };
    let now = memwarden::clock::now_ms();
    let outside = Tamper::open(&data);

    let a = stage(store.insert(author, entry("a"), now).unwrap(), &mut log);
    // Dropped before it is staged: undone alone, its event never written.
    drop(store.insert(author, entry("b"), now).unwrap());
    let c = stage(store.insert(author, entry("c"), now).unwrap(), &mut log);
    assert!(store.group_open() && log.group_open());
    assert_eq!(
        outside.count(),
        0,
        "nothing is visible before the group commits"
    );
    log.commit_group().unwrap();
    store.commit_group().unwrap();
    assert!(!store.group_open() && !log.group_open());
    assert_eq!(outside.count(), 2);
    assert_eq!(
        log.head().unwrap().seq,
        start + 2,
        "one event per staged write"
    );
    let view = Visibility::new([("*".to_string(), Rights::ReadWrite)], None);
    for (id, content) in [(&a.id, "a"), (&c.id, "c")] {
        assert_eq!(store.get(id, &view).unwrap().content, content);
    }

    let d = stage(store.insert(author, entry("d"), now).unwrap(), &mut log);
    log.rollback_group();
    store.rollback_group();
    assert!(matches!(store.get(&d.id, &view), Err(Error::NotFound)));
    assert_eq!(outside.count(), 2);
    assert_eq!(
        log.head().unwrap().seq,
        start + 2,
        "a rolled-back group leaves no event"
    );

    // A write of its own is refused while a group is open (its commit would carry the
    // group's writes without their events).
    drop(store.insert(author, entry("f"), now).unwrap());
    assert!(store.group_open());
    store.set_grouped(false);
    let refused = match store.insert(author, entry("g"), now) {
        Err(Error::Internal(_)) => true,
        other => panic!("{other:?}"),
    };
    assert!(refused);
    store.set_grouped(true);
    store.commit_group().unwrap();
    assert_eq!(outside.count(), 2);

    drop((store, log));
    verify_both(&dir);
}
