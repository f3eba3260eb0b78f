//! The landlock sandbox through the real binary.

mod common;

use std::process::Command;

use common::{RawSession, TestDir};
use serde_json::{Value, json};

/// `Some(reason)` when this kernel has no landlock, so sandbox tests can say why they skip.
fn landlock_missing(dir: &TestDir) -> Option<String> {
    let out = dir.cli(&["sandbox-check"]);
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    (report["sandbox"] == "landlock: not enforced")
        .then(|| "this kernel does not enforce landlock".to_string())
}

#[test]
fn sandbox_check_denies_everything_outside_the_data_dir() {
    let dir = TestDir::new();
    dir.init();
    if let Some(why) = landlock_missing(&dir) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let out = dir.cli(&["sandbox-check"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["sandbox"], "landlock: fully enforced");
    let checks = report["checks"].as_array().unwrap();
    for name in [
        "read /etc/passwd",
        "write outside the data dir",
        "tcp connect to a loopback listener",
        "tcp bind",
        "exec /bin/true",
    ] {
        let c = checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no check {name}"));
        assert_eq!(c["result"], "denied", "{name}: {c}");
    }
    let inside = checks
        .iter()
        .find(|c| c["check"] == "write inside the data dir")
        .unwrap();
    assert_eq!(inside["result"], "allowed");
}

#[test]
fn mcp_works_under_the_required_sandbox_and_it_is_recorded() {
    let dir = TestDir::new();
    dir.init();
    if let Some(why) = landlock_missing(&dir) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let mut s = RawSession::spawn_with(&dir, &["--require-sandbox"]);
    s.handshake();
    let stored = s.call(1, "memory_store", json!({"content": "sandboxed memory"}));
    assert_eq!(stored["result"]["isError"], false, "{stored}");
    let found = s.call(2, "memory_search", json!({"query": "sandboxed"}));
    assert_eq!(
        found["result"]["structuredContent"]["results"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let page = s.call(3, "memory_list", json!({}));
    assert_eq!(page["result"]["isError"], false);
    assert!(s.finish().success());
    let events = dir.cli(&[
        "audit",
        "query",
        "--kind",
        "session_start",
        "--format",
        "json",
    ]);
    let events: Vec<Value> = serde_json::from_slice(&events.stdout).unwrap();
    assert_eq!(events[0]["detail"]["sandbox"], "landlock: fully enforced");
    assert!(dir.cli(&["audit", "verify"]).status.success());
    assert!(dir.cli(&["verify"]).status.success());
}

#[test]
fn require_sandbox_refuses_on_a_kernel_without_landlock() {
    let dir = TestDir::new();
    dir.init();
    let out = Command::new(common::bin())
        .args(["serve", "--require-sandbox", "--data-dir"])
        .arg(dir.data())
        .env("MEMWARDEN_SIMULATE_NO_LANDLOCK", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--require-sandbox") && stderr.contains("not enforced"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    // Without the requirement it runs, and says so.
    let mut s = RawSession::spawn(&dir);
    s.handshake();
    assert!(s.finish().success());
}
