//! Issue 18 item 2 at rest and live: a schema object the migrations did not create, in either
//! live database, stops every command that opens it; and an append that a trigger swallows
//! fails closed.

mod common;

use common::{RawSession, TestDir};
use serde_json::json;

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn tamper(path: &std::path::Path, sql: &str) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(sql).unwrap();
    db.close().unwrap();
}

fn snapshot(dir: &TestDir) -> std::collections::BTreeMap<String, Vec<u8>> {
    common::data_snapshot(dir)
}

/// Names the files whose bytes differ (never dumps them).
fn assert_unchanged(
    before: &std::collections::BTreeMap<String, Vec<u8>>,
    after: &std::collections::BTreeMap<String, Vec<u8>>,
    what: &str,
) {
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "{what}: changed {changed:?}");
}

async fn seeded() -> TestDir {
    let dir = TestDir::new();
    let c = dir.connect().await;
    let id = c.store("precious").await;
    c.call("memory_get", json!({ "id": id })).await;
    c.close().await;
    dir
}

#[tokio::test]
async fn a_stray_trigger_or_view_in_a_live_database_stops_serve_verify_health_and_audit() {
    let cases = [
        (
            "audit.db",
            "CREATE TRIGGER t BEFORE INSERT ON events WHEN NEW.kind='call' AND NEW.tool IN \
             ('memory_get','memory_search','memory_list') BEGIN SELECT RAISE(IGNORE); END;",
            "trigger \"t\" on \"events\"",
        ),
        (
            "memory.db",
            "CREATE TRIGGER t AFTER INSERT ON entries BEGIN \
             UPDATE entries SET namespace = 'elsewhere' WHERE rowid = NEW.rowid; END;",
            "trigger \"t\" on \"entries\"",
        ),
        (
            "memory.db",
            "CREATE TABLE stash (x); CREATE TRIGGER copy AFTER INSERT ON entries BEGIN \
             INSERT INTO stash VALUES (NEW.content); END;",
            "table \"stash\"",
        ),
        (
            "audit.db",
            "CREATE VIEW v AS SELECT * FROM events;",
            "view \"v\"",
        ),
    ];
    for (file, sql, named) in cases {
        let dir = seeded().await;
        tamper(&dir.data().join(file), sql);
        let before = snapshot(&dir);
        let out_dir = dir.tmp.path().join("b").display().to_string();
        let backup = ["backup", "--out", out_dir.as_str()];
        let mut cmds: Vec<&[&str]> = vec![&["serve"], &["verify"], &["review", "list"], &backup];
        if file == "audit.db" {
            // The auditor's tools read audit.db alone.
            cmds.extend([&["audit", "verify"][..], &["audit", "query"]]);
        }
        for cmd in cmds {
            let out = dir.cli(cmd);
            assert_unchanged(&before, &snapshot(&dir), &format!("{file} {cmd:?}"));
            let t = text(&out);
            assert!(!out.status.success(), "{file}: {cmd:?} accepted it: {t}");
            assert!(
                t.contains(&format!(
                    "{file}: schema objects that memwarden's migrations did not create"
                )) && t.contains(named),
                "{file}: {cmd:?}: {t}"
            );
        }
        let out = dir.cli(&["health"]);
        assert!(!out.status.success(), "{file}: health: {}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let schema = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == format!("{file} schema"))
            .unwrap_or_else(|| panic!("{report:#}"));
        assert_eq!(schema["ok"], false, "{report:#}");
        assert!(
            schema["detail"].as_str().unwrap().contains(named),
            "{report:#}"
        );
        assert_unchanged(&before, &snapshot(&dir), file);
        assert!(!dir.tmp.path().join("b").join("manifest.json").exists());
    }
}

#[test]
fn a_trigger_added_under_a_live_session_cannot_drop_an_event_silently() {
    // The open-time check cannot see a trigger created after the session opened audit.db: the
    // append reads its row back and fails closed.
    for (tool, swallowed) in [("memory_get", "read"), ("memory_store", "write")] {
        let dir = TestDir::new();
        let mut s = RawSession::start(&dir);
        let stored = s.call(1, "memory_store", json!({"content": "precious"}));
        let id = stored["result"]["structuredContent"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        tamper(
            &dir.data().join("audit.db"),
            "CREATE TRIGGER t BEFORE INSERT ON events WHEN NEW.kind='call' \
             BEGIN SELECT RAISE(IGNORE); END;",
        );
        let rows = dir.row_count();
        let args = if tool == "memory_get" {
            json!({ "id": id })
        } else {
            json!({"content": "must not be stored unaudited"})
        };
        let refused = s.call(2, tool, args);
        assert_eq!(refused["result"]["isError"], true, "{swallowed}: {refused}");
        assert_eq!(
            refused["result"]["structuredContent"]["code"], "UNAVAILABLE",
            "{swallowed}: {refused}"
        );
        assert!(
            !refused.to_string().contains("precious"),
            "{swallowed}: nothing served unaudited"
        );
        assert_eq!(dir.row_count(), rows, "{swallowed}: nothing stored");
        s.finish();
        // The trigger is named by every later open.
        let out = dir.cli(&["audit", "verify"]);
        assert!(
            !out.status.success() && text(&out).contains("trigger \"t\""),
            "{swallowed}: {}",
            text(&out)
        );
    }
}
