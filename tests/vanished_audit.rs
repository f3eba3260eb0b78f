//! Issue 18 item 3: a missing, emptied or event-less audit.db beside a used memory.db is a
//! vanished chain, never a new one: every command that would open it refuses, `health` and
//! `audit verify` fail, and only `audit reset --i-understand-the-chain-restarts` starts a new
//! chain, on the record.

mod common;

use common::TestDir;
use serde_json::{Value, json};

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn snapshot(dir: &TestDir) -> std::collections::BTreeMap<String, Vec<u8>> {
    common::data_snapshot(dir)
}

fn changed(
    before: &std::collections::BTreeMap<String, Vec<u8>>,
    after: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

/// A data dir used by sessions, the service stopped.
fn used(entries: usize) -> TestDir {
    let dir = TestDir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        for i in 0..entries {
            c.store(&format!("entry {i}")).await;
        }
        // A read: a data dir used only for reads has a history too.
        c.call("memory_list", json!({})).await;
        c.close().await;
    });
    // Wait for the session to release the data dir.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(dir.data())
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with("-wal"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    dir
}

fn checks(dir: &TestDir) -> (bool, Value) {
    let out = dir.cli(&["health"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn check_ok(report: &Value, name: &str) -> bool {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))["ok"]
        == true
}

/// The three ways a chain vanishes while the service is stopped.
fn vanish(dir: &TestDir, how: &str) {
    let audit = dir.data().join("audit.db");
    match how {
        "deleted" => std::fs::remove_file(&audit).unwrap(),
        "truncated" => {
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&audit)
                .unwrap();
        }
        "emptied of events" => {
            let db = rusqlite::Connection::open(&audit).unwrap();
            db.execute("DELETE FROM events", []).unwrap();
            db.close().unwrap();
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_vanished_chain_is_refused_by_every_opener_and_reported_by_health_and_audit_verify() {
    for (how, entries) in [("deleted", 2), ("truncated", 2), ("emptied of events", 0)] {
        let dir = used(entries);
        vanish(&dir, how);
        let before = snapshot(&dir);
        let backup = dir.tmp.path().join("b").display().to_string();
        for cmd in [
            &["serve"][..],
            &["review", "list"],
            &["keys", "list"],
            &["backup", "--out", &backup],
        ] {
            let out = dir.cli(cmd);
            assert!(
                !out.status.success(),
                "{how}: {cmd:?} accepted it: {}",
                text(&out)
            );
            assert!(
                text(&out).contains("memory.db beside it has been used")
                    && text(&out).contains("audit reset --i-understand-the-chain-restarts"),
                "{how}: {cmd:?}: {}",
                text(&out)
            );
            assert_eq!(
                changed(&before, &snapshot(&dir)),
                Vec::<String>::new(),
                "{how}: {cmd:?}"
            );
        }
        let out = dir.cli(&["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "{how}: {}", text(&out));
        assert!(
            text(&out).starts_with("FAILED: audit.db"),
            "{how}: {}",
            text(&out)
        );
        let (ok, report) = checks(&dir);
        assert!(!ok, "{how}: {report:#}");
        assert!(
            !check_ok(&report, "audit chain present"),
            "{how}: {report:#}"
        );
        assert_eq!(
            changed(&before, &snapshot(&dir)),
            Vec::<String>::new(),
            "{how}"
        );
    }
}

#[test]
fn a_new_data_dir_is_not_a_vanished_chain() {
    // `serve` on a data dir that does not exist yet (the README's quick start).
    let dir = TestDir::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        c.store("first").await;
        c.close().await;
    });
    let first = dir.cli(&["audit", "query", "--format", "json", "--limit", "1"]);
    let first: Vec<Value> = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(first[0]["kind"], "admin");
    assert_eq!(first[0]["detail"]["event"], "chain_start");
    assert_eq!(first[0]["detail"]["why"], "new data dir");
    assert!(dir.cli(&["audit", "verify"]).status.success());
    // `init`, then `health` before any session.
    let dir = TestDir::new();
    dir.init();
    let (ok, report) = checks(&dir);
    assert!(ok, "{report:#}");
    assert!(dir.cli(&["audit", "verify"]).status.success());
}

#[test]
fn audit_reset_starts_a_new_chain_on_the_record_and_only_when_asked() {
    let dir = used(3);
    // A sound chain is not reset.
    let before = snapshot(&dir);
    let out = dir.cli(&["audit", "reset", "--i-understand-the-chain-restarts"]);
    assert!(
        !out.status.success() && text(&out).contains("holds a chain that verifies"),
        "{}",
        text(&out)
    );
    assert_eq!(changed(&before, &snapshot(&dir)), Vec::<String>::new());

    vanish(&dir, "truncated");
    let before = snapshot(&dir);
    let out = dir.cli(&["audit", "reset"]);
    assert!(
        !out.status.success() && text(&out).contains("--i-understand-the-chain-restarts"),
        "{}",
        text(&out)
    );
    assert_eq!(changed(&before, &snapshot(&dir)), Vec::<String>::new());

    let out = dir.cli(&["audit", "reset", "--i-understand-the-chain-restarts"]);
    assert!(out.status.success(), "{}", text(&out));
    let events = dir.cli(&["audit", "query", "--format", "json"]);
    let events: Vec<Value> = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(events.len(), 1);
    let d = &events[0]["detail"];
    assert_eq!(d["event"], "chain_start");
    assert_eq!(d["why"], "operator reset: audit.db is empty (0 bytes)");
    assert_eq!(d["memory_entries"], 3);
    assert!(
        d["replaced_audit_kept_as"]
            .as_str()
            .unwrap()
            .starts_with("audit.db.replaced-")
    );
    assert!(
        dir.data()
            .join(d["replaced_audit_kept_as"].as_str().unwrap())
            .exists()
    );
    // From here on everything works and checks out.
    let (ok, report) = checks(&dir);
    assert!(ok, "{report:#}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        c.store("after the reset").await;
        c.close().await;
    });
    assert!(dir.cli(&["audit", "verify"]).status.success());
}
