//! `memwarden health` finds each injected fault; `memwarden metrics` parses as Prometheus text.

mod common;

use std::process::{Command, Stdio};

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
    let parse = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
assert fams["memwarden_call_duration_seconds"].type == "histogram", fams.keys()
assert fams["memwarden_calls"].type == "counter"
# The PostgreSQL connection series are there on SQLite too, at zero.
for name in ("memwarden_store_reconnects", "memwarden_store_connection_errors"):
    assert [s.value for s in fams[name].samples] == [0], fams[name]
print(len(fams))
"#;
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIPPED: python3 prometheus_client is not installed");
        return;
    }
    let mut child = Command::new("python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser refused: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "8");
}
