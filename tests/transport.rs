//! The wire: over-long and malformed lines, clean endings, and what reaches stdout and stderr.

mod common;

use std::time::{Duration, Instant};

use common::{RawSession, TestDir, contains, read_all};
use serde_json::json;

#[test]
fn a_2_mib_line_is_refused_and_the_session_goes_on() {
    let dir = TestDir::new();
    let mut s = RawSession::start(&dir);
    let huge = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"memory_store","arguments":{"content":"z".repeat(2 * 1024 * 1024)}}});
    s.send(&huge.to_string());
    let refused = s.recv();
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    assert!(refused["id"].is_null());
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1048576")
    );

    let ok = s.call(8, "memory_store", json!({"content": "after the big one"}));
    assert_eq!(ok["id"], 8);
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    // Exactly at the cap (not counting the line ending) is parsed, with "\n" or "\r\n";
    // one byte more is refused.
    let at_cap = |id: u64, extra: usize| {
        let head = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"memory_list\",\"arguments\":{{}}}}}}"
        );
        let line = format!("{head}{}", " ".repeat(1024 * 1024 - head.len() + extra));
        assert_eq!(line.len(), 1024 * 1024 + extra);
        line
    };
    s.send(&at_cap(9, 0));
    assert_eq!(s.recv()["id"], 9);
    s.send_bytes(format!("{}\r\n", at_cap(10, 0)).as_bytes());
    assert_eq!(s.recv()["id"], 10);
    s.send(&at_cap(11, 1));
    let refused = s.recv();
    assert_eq!(refused["error"]["code"], -32600, "one byte over the cap");
    assert!(refused["id"].is_null());
    assert!(s.finish().success());
    assert_eq!(dir.row_count(), 1);
}

#[test]
fn malformed_lines_get_json_rpc_errors_not_silence() {
    let dir = TestDir::new();
    let mut s = RawSession::start(&dir);
    s.send("{not json");
    let e = s.recv();
    assert_eq!(e["error"]["code"], -32700);
    s.send(r#"{"jsonrpc":"2.0","id":"abc","method":42}"#);
    let e = s.recv();
    assert_eq!(e["error"]["code"], -32600);
    assert_eq!(e["id"], "abc");
    // Invalid UTF-8 in a string.
    s.send_bytes(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/list\",\"x\":\"\xff\"}\n");
    assert_eq!(s.recv()["error"]["code"], -32700);
    // A lone surrogate escape is not valid JSON text for serde either.
    s.send(r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"memory_store","arguments":{"content":"\ud800"}}}"#);
    let e = s.recv();
    assert!(e.get("error").is_some(), "{e}");
    let ok = s.call(5, "memory_list", json!({}));
    assert_eq!(ok["id"], 5);
    assert!(s.finish().success());
    assert_eq!(dir.row_count(), 0);
}

#[test]
fn requests_before_initialize_are_answered_not_dropped() {
    let dir = TestDir::new();
    let mut s = RawSession::spawn(&dir);
    let secret = "PREINIT-SECRET-CONTENT";
    s.send(&json!({"jsonrpc":"2.0","id":"early","method":"tools/call","params":{"name":"memory_store","arguments":{"content": secret}}}).to_string());
    let e = s.recv();
    assert_eq!(e["id"], "early");
    assert_eq!(e["error"]["code"], -32002);
    // The session is still there and works once initialised.
    s.handshake();
    let ok = s.call(1, "memory_store", json!({"content": "after init"}));
    assert_eq!(ok["result"]["isError"], false);
    // A last line without its newline is still served before EOF.
    s.send_bytes(json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"memory_list","arguments":{}}}).to_string().as_bytes());
    s.close_stdin();
    assert_eq!(s.recv()["id"], 2);
    assert!(s.finish().success());
    assert_eq!(dir.row_count(), 1, "the early store was not applied");
    let log = read_all(&dir.stderr_log());
    assert!(
        !contains(&log, secret.as_bytes()),
        "the early message was not logged"
    );
    let audit = dir.audit_bytes();
    assert!(!contains(&audit, secret.as_bytes()));
}

#[test]
fn stdin_eof_ends_cleanly_and_closes_the_db() {
    let dir = TestDir::new();
    let mut s = RawSession::start(&dir);
    s.call(1, "memory_store", json!({"content": "x"}));
    let status = s.finish();
    assert!(status.success());
    assert!(
        !dir.data().join("memory.db-wal").exists(),
        "WAL checkpointed and removed on close"
    );
    let log = String::from_utf8(read_all(&dir.stderr_log())).unwrap();
    assert!(log.contains("\"reason\":\"client_closed\""), "{log}");
}

#[test]
fn sigterm_ends_the_session_cleanly() {
    let dir = TestDir::new();
    let mut s = RawSession::start(&dir);
    s.call(1, "memory_store", json!({"content": "before the signal"}));
    let pid = s.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "server ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let log = String::from_utf8(read_all(&dir.stderr_log())).unwrap();
    assert!(log.contains("\"reason\":\"shutdown\""), "{log}");
    assert!(!dir.data().join("memory.db-wal").exists(), "DB closed");
    assert_eq!(dir.row_count(), 1);
}

#[tokio::test]
async fn stdout_is_protocol_only_and_logs_never_carry_content_queries_or_keys() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let content = "CONTENT-MARKER-7f3a the launch codes";
    let meta_value = "METADATA-VALUE-MARKER-91c2";
    let query = "QUERYMARKER4d1e";
    let id = client
        .call("memory_store", json!({"content": content, "metadata": {"owner": meta_value}, "tags": ["tagmarker-55"]}))
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    client
        .call("memory_search", json!({"query": query}))
        .await
        .ok();
    client
        .call(
            "memory_update",
            json!({"id": id, "content": "CONTENT-MARKER-2 updated"}),
        )
        .await
        .ok();
    // A refused call whose value must not be echoed into logs either.
    client
        .call(
            "memory_store",
            json!({"content": "x", "namespace": "BAD-NAMESPACE-MARKER"}),
        )
        .await;
    client.close().await;

    let log = read_all(&dir.stderr_log());
    assert!(!log.is_empty());
    for line in String::from_utf8_lossy(&log).lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("stderr line is not JSON: {line}"));
        assert!(parsed.get("level").is_some());
    }
    for marker in [
        "CONTENT-MARKER",
        meta_value,
        query,
        "launch codes",
        "BAD-NAMESPACE-MARKER",
    ] {
        assert!(
            !contains(&log, marker.as_bytes()),
            "{marker} leaked into the log"
        );
    }
    let ring = std::fs::read_to_string(dir.data().join("keyring.toml")).unwrap();
    for hex_key in ring
        .lines()
        .filter(|l| l.contains(" = \"") && !l.starts_with("active"))
        .map(|l| l.split('"').nth(1).unwrap())
    {
        assert!(
            !contains(&log, &hex_key.as_bytes()[..16]),
            "key bytes leaked into the log"
        );
    }
}
