//! `memwarden health` finds each injected fault; `memwarden metrics` parses as Prometheus text.

mod common;

use common::TestDir;
use serde_json::Value;

fn health(dir: &TestDir) -> (bool, Value) {
    let out = dir.cli(&["health"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn failing(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

async fn seeded() -> TestDir {
    let dir = TestDir::new();
    let c = dir.connect().await;
    for i in 0..20 {
        c.store(&format!("entry {i} {}", "padding ".repeat(200)))
            .await;
    }
    c.close().await;
    dir
}

#[tokio::test]
async fn health_reports_each_injected_fault() {
    let dir = seeded().await;
    let (ok, report) = health(&dir);
    assert!(ok, "{report:#}");
    assert_eq!(report["ok"], true);

    // A broken chain.
    let audit = rusqlite::Connection::open(dir.data().join("audit.db")).unwrap();
    audit
        .execute("UPDATE events SET code = 'X' WHERE seq = 2", [])
        .unwrap();
    drop(audit);
    let (ok, report) = health(&dir);
    assert!(!ok);
    assert_eq!(failing(&report), ["audit chain"]);

    // A missing active key.
    let dir = seeded().await;
    let ring = dir.data().join("keyring.toml");
    let text = std::fs::read_to_string(&ring)
        .unwrap()
        .replace("active = \"e1\"", "active = \"e7\"");
    std::fs::write(&ring, text).unwrap();
    let (ok, report) = health(&dir);
    assert!(!ok);
    assert!(
        failing(&report).contains(&"keyring".to_string()),
        "{report:#}"
    );

    // A corrupted database page.
    let dir = seeded().await;
    let db = dir.data().join("memory.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 5 * 4096);
    // Scribble over the b-tree page headers of every page after the schema page.
    for page in 1..bytes.len() / 4096 {
        for b in &mut bytes[page * 4096..page * 4096 + 12] {
            *b = 0xA5;
        }
    }
    std::fs::write(&db, bytes).unwrap();
    let (ok, report) = health(&dir);
    assert!(!ok);
    assert!(
        failing(&report).contains(&"memory.db quick_check".to_string()),
        "{report:#}"
    );
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let dir = seeded().await;
    let c = dir.connect().await;
    c.call(
        "memory_get",
        serde_json::json!({"id": "01234567-89ab-7def-8123-456789abcdef"}),
    )
    .await;
    c.close().await;
    let out = dir.cli(&["metrics"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("memwarden_calls_total{tool=\"memory_store\",outcome=\"ok\"} 20"),
        "{text}"
    );
    assert!(text.contains("memwarden_calls_total{tool=\"memory_get\",outcome=\"denied\"} 1"));
    assert!(text.contains("memwarden_entries{status=\"active\"} 20"));
    assert!(text.contains("memwarden_sessions_total 2"));
    // A real parser: prometheus_client's (installed by .ci/run).
    let Some(fams) = common::parse_prometheus(&text) else {
        return;
    };
    assert_eq!(fams["memwarden_call_duration_seconds"]["type"], "histogram");
    assert_eq!(fams["memwarden_calls"]["type"], "counter");
    // The PostgreSQL connection series are there on SQLite too, at zero.
    for name in [
        "memwarden_store_reconnects",
        "memwarden_store_connection_errors",
    ] {
        let values: Vec<f64> = fams[name]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[2].as_f64().unwrap())
            .collect();
        assert_eq!(values, [0.0], "{name}");
    }
    assert_eq!(fams.as_object().unwrap().len(), 8, "{fams}");
}
