//! `memwarden serve-http` under the conditions an operator has to plan for: hostile web
//! requests (origins, huge bodies, slow headers, stale sessions, too many sessions), health and
//! metrics for monitoring, limits that must outlive sessions and restarts, many sessions at
//! once, and a kill -9 in the middle of concurrent writes. The real daemon, raw HTTP.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::TestDir;
use common::http::{Daemon, Http, free_port, initialize};
use serde_json::{Value, json};

/// The built-in policy with `extra` appended (a new table at the end).
fn policy_with(dir: &TestDir, extra: &str) -> Vec<String> {
    dir.policy(&format!("{}\n{extra}", memwarden::policy::DEFAULT_POLICY))
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn delete(daemon: &Daemon, token: &str, id: &str) -> u16 {
    let auth = format!("Bearer {token}");
    daemon
        .request(
            "DELETE",
            "/mcp",
            &[("Authorization", &auth), ("Mcp-Session-Id", id)],
            b"",
        )
        .status
}

#[test]
fn origins_big_bodies_slow_headers_stale_sessions_and_session_caps_are_refused() {
    let dir = TestDir::new();
    let policy = policy_with(
        &dir,
        "[http]\nallowed_origins = [\"http://localhost:3000\"]\nheader_timeout_seconds = 2\n\
         max_sessions_per_principal = 2\nauth_failures_per_minute = 5\n",
    );
    let token = dir.issue_token("local");
    let daemon = dir.serve_http(&strs(&policy));
    let auth = format!("Bearer {token}");
    let mcp_headers = |origin: &'static str| {
        vec![
            ("Authorization", auth.clone()),
            ("Content-Type", "application/json".to_string()),
            ("Accept", "application/json, text/event-stream".to_string()),
            ("Origin", origin.to_string()),
        ]
    };
    let send = |origin: &'static str, body: &[u8]| {
        let h = mcp_headers(origin);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        daemon.request("POST", "/mcp", &h, body)
    };

    // A page on another site (or a rebound DNS name) is refused, token or not.
    let evil = send("http://evil.example", initialize().to_string().as_bytes());
    assert_eq!(evil.status, 403, "{}", evil.body);
    let health = daemon.request("GET", "/healthz", &[("Origin", "http://evil.example")], b"");
    assert_eq!(health.status, 403);
    let listed = send("http://localhost:3000", initialize().to_string().as_bytes());
    assert_eq!(listed.status, 200, "{}", listed.body);
    let first = listed.header("mcp-session-id").unwrap().to_string();

    // 2 MiB: 413 before parsing, and the daemon goes on.
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"pad\":\"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let r = daemon.post(
        Some(&token),
        Some(&first),
        &serde_json::from_str(&big).unwrap(),
    );
    assert_eq!(r.status, 413, "{}", &r.body[..r.body.len().min(200)]);
    let listed = daemon.post(
        Some(&token),
        Some(&first),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    assert_eq!(listed.status, 200);

    // Headers one byte at a time: cut off at the header timeout (2 s), long before 12 s.
    let mut slow = TcpStream::connect(&daemon.addr).unwrap();
    slow.write_all(b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut cut = false;
    for _ in 0..48 {
        if slow.write_all(b"a").and_then(|()| slow.flush()).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        cut,
        "a client sending one header byte every 250 ms was not cut off"
    );

    // An unknown session, and a session after DELETE: 404, so the client initializes again.
    let unknown = daemon.post(
        Some(&token),
        Some("00000000-0000-0000-0000-000000000000"),
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    );
    assert_eq!(unknown.status, 404);
    assert!(delete(&daemon, &token, &first) < 300);
    let ended = daemon.post(
        Some(&token),
        Some(&first),
        &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
    );
    assert_eq!(ended.status, 404, "{}", ended.body);

    // Two sessions per principal: the third waits for one to end.
    let a = daemon.open_session(&token);
    let _b = daemon.open_session(&token);
    let third = daemon.post(Some(&token), None, &initialize());
    assert_eq!(third.status, 503, "{}", third.body);
    assert!(third.body.contains("RATE_LIMITED"));
    assert!(delete(&daemon, &token, &a) < 300);
    std::thread::sleep(Duration::from_millis(300));
    let again = daemon.post(Some(&token), None, &initialize());
    assert_eq!(again.status, 200, "{}", again.body);
    // A page that keeps trying fills nothing: past the failure limit (5 here) the refusals
    // are no longer recorded one by one, and the address waits out the minute.
    for _ in 0..10 {
        let again = send("http://evil.example", b"{}");
        assert_eq!(again.status, 403);
    }
    let limited = daemon.post(Some(&token), None, &initialize());
    assert_eq!(limited.status, 429, "{}", limited.body);
    daemon.stop_ok(&dir);

    let events = common::audit_events(&dir);
    let security = |name: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == "security" && e["detail"]["event"] == name)
            .count()
    };
    // Two before the flood, then three more until the limit of five: no more.
    assert_eq!(security("http_origin_refused"), 5);
    assert_eq!(security("http_auth_failures_limited"), 1);
    assert_eq!(security("http_session_cap"), 1);
    let ends: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "session_end")
        .collect();
    assert!(
        ends.iter()
            .any(|e| e["detail"]["reason"] == "client_closed")
    );
}

#[test]
fn healthz_and_metrics_serve_monitoring_and_an_unwritable_audit_log_fails_closed() {
    let dir = TestDir::new();
    let token = dir.issue_token("local");
    let metrics_token = common::stdout_ok(&dir.cli(&["token", "issue", "--metrics"]))
        .trim()
        .to_string();
    let monitor = format!("127.0.0.1:{}", free_port());
    let daemon = dir.serve_http(&["--metrics-listen", &monitor]);

    let health = daemon.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    let body: Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(body["status"], "ok");

    let id = daemon.open_session(&token);
    let stored = daemon.call(
        &token,
        &id,
        1,
        "memory_store",
        json!({"content": "metered"}),
    );
    assert_eq!(stored["result"]["isError"], false);

    let no_token = daemon.request("GET", "/metrics", &[], b"");
    assert_eq!(no_token.status, 401);
    let mcp_auth = format!("Bearer {token}");
    let wrong_scope = daemon.request("GET", "/metrics", &[("Authorization", &mcp_auth)], b"");
    assert_eq!(wrong_scope.status, 403);
    let metrics_auth = format!("Bearer {metrics_token}");
    let metrics = daemon.request("GET", "/metrics", &[("Authorization", &metrics_auth)], b"");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    // Metrics tokens open no MCP session.
    let as_agent = daemon.post(Some(&metrics_token), None, &initialize());
    assert_eq!(as_agent.status, 403);
    if let Some(parsed) = common::parse_prometheus(&metrics.body) {
        let samples = |family: &str| {
            parsed[family]["samples"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let store_ok = samples("memwarden_http_calls")
            .into_iter()
            .find(|s| s[1]["tool"] == "memory_store" && s[1]["outcome"] == "ok");
        assert_eq!(store_ok.and_then(|s| s[2].as_f64()), Some(1.0), "{parsed}");
        let open = samples("memwarden_http_sessions_open");
        assert!(
            open.iter()
                .any(|s| s[1]["principal"] == "local" && s[2].as_f64() == Some(1.0)),
            "{open:?}"
        );
        let auth = samples("memwarden_http_auth_failures");
        assert!(
            auth.iter()
                .any(|s| s[1]["reason"] == "missing" && s[2].as_f64() == Some(1.0)),
            "{auth:?}"
        );
        assert!(
            parsed.get("memwarden_entries").is_some(),
            "the durable series are there too"
        );
        assert!(parsed.get("memwarden_http_call_duration_seconds").is_some());
    }

    // The monitoring address: /healthz and /metrics without a token, and nothing else.
    let mon = Http {
        addr: monitor.clone(),
    };
    assert_eq!(mon.request("GET", "/metrics", &[], b"").status, 200);
    assert_eq!(mon.post(Some(&token), None, &initialize()).status, 404);

    if !common::store::on_postgres() {
        // audit.db goes read-only under the daemon: /healthz says so at once, and the next
        // call is refused rather than served unaudited.
        // Not the -shm file: SQLite maps it (see tests/audit.rs).
        let files: Vec<std::path::PathBuf> = ["audit.db", "audit.db-wal"]
            .iter()
            .map(|f| dir.data().join(f))
            .filter(|p| p.exists())
            .collect();
        let _guard = Immutable(files.clone());
        let chattr = |flag: &str| {
            files.iter().all(|p| {
                std::process::Command::new("chattr")
                    .arg(flag)
                    .arg(p)
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
        };
        if chattr("+i") {
            let health = daemon.request("GET", "/healthz", &[], b"");
            assert_eq!(health.status, 503, "{}", health.body);
            let refused = daemon.call(&token, &id, 2, "memory_store", json!({"content": "lost?"}));
            assert_eq!(refused["result"]["isError"], true, "{refused}");
            assert_eq!(
                refused["result"]["structuredContent"]["code"],
                "UNAVAILABLE"
            );
            // Fail closed: the latch holds even once the file is writable again.
            assert!(chattr("-i"));
            let health = daemon.request("GET", "/healthz", &[], b"");
            assert_eq!(health.status, 503, "{}", health.body);
        } else {
            eprintln!(
                "SKIPPED: chattr +i is not available here (needs root on ext4-like filesystems)"
            );
        }
    }
    daemon.kill9();
}

/// A policy with a small rate bucket (a call back every 10 s, so a loaded machine's slow calls
/// do not refill it) and three sessions an hour.
const LIMITED: &str = r#"version = 1
[rates]
calls_per_minute = 6
burst = 3
cooldown_after_refusals = 100
sessions_per_hour = 3
[principals.local]
tools = ["memory_store", "memory_get", "memory_search", "memory_list", "memory_update", "memory_delete"]
namespaces = { "*" = "rw" }
default_namespace = "default"
"#;

#[test]
fn rate_limits_and_sessions_per_hour_hold_across_http_sessions_and_restarts() {
    let dir = TestDir::new();
    let policy = dir.policy(LIMITED);
    let token = dir.issue_token("local");
    let daemon = dir.serve_http(&strs(&policy));
    let s1 = daemon.open_session(&token);
    for n in 1..=3 {
        let r = daemon.call(&token, &s1, n, "memory_list", json!({}));
        assert_eq!(r["result"]["isError"], false, "{r}");
    }
    let over = daemon.call(&token, &s1, 4, "memory_list", json!({}));
    assert_eq!(
        over["result"]["structuredContent"]["code"], "RATE_LIMITED",
        "{over}"
    );
    let _s2 = daemon.open_session(&token);
    let _s3 = daemon.open_session(&token);
    let fourth = daemon.post(Some(&token), None, &initialize());
    let message = fourth.message().unwrap_or_default();
    assert!(
        message["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("RATE_LIMITED"),
        "{} {}",
        fourth.status,
        fourth.body
    );
    assert!(
        fourth.header("mcp-session-id").is_none()
            || daemon_refuses_session(&daemon, &token, &fourth)
    );
    daemon.stop_ok(&dir);

    // A restart forgets nothing: the hour still holds three sessions.
    let daemon = dir.serve_http(&strs(&policy));
    let fifth = daemon.post(Some(&token), None, &initialize());
    let message = fifth.message().unwrap_or_default();
    assert!(
        message["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("RATE_LIMITED"),
        "{}",
        fifth.body
    );
    daemon.stop_ok(&dir);
    let exceeded = common::audit_events(&dir)
        .into_iter()
        .filter(|e| e["detail"]["event"] == "sessions_per_hour_exceeded")
        .count();
    assert_eq!(exceeded, 2);
}

/// A refused handshake's session id (if rmcp sent one) opens nothing.
fn daemon_refuses_session(daemon: &Daemon, token: &str, refused: &common::http::Response) -> bool {
    let id = refused.header("mcp-session-id").unwrap();
    let r = daemon.post(
        Some(token),
        Some(id),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    );
    r.status == 404
}

#[test]
fn two_hundred_concurrent_sessions_are_all_answered_in_bounded_memory() {
    let dir = TestDir::new();
    let policy = policy_with(
        &dir,
        "[http]\nmax_sessions = 250\nmax_sessions_per_principal = 250\n",
    );
    let token = dir.issue_token("local");
    let daemon = std::sync::Arc::new(dir.serve_http(&strs(&policy)));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|t| {
            let (daemon, token, barrier) = (daemon.clone(), token.clone(), barrier.clone());
            std::thread::spawn(move || {
                let id = daemon.open_session(&token);
                barrier.wait();
                let stored = daemon.call(
                    &token,
                    &id,
                    1,
                    "memory_store",
                    json!({"content": format!("session {t}")}),
                );
                let mid = stored["result"]["structuredContent"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let got = daemon.call(&token, &id, 2, "memory_get", json!({"id": mid}));
                assert_eq!(
                    got["result"]["structuredContent"]["memory"]["content"],
                    format!("session {t}")
                );
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a session was not answered");
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    eprintln!(
        "serve-http RSS with 200 sessions open: {} MiB",
        rss_kib / 1024
    );
    assert!(rss_kib < 256 * 1024, "{rss_kib} KiB");
    let daemon = std::sync::Arc::try_unwrap(daemon).ok().unwrap();
    daemon.stop_ok(&dir);
    assert_eq!(dir.row_count(), 200);
}

#[test]
fn kill_9_during_16_concurrent_writers_loses_nothing_acknowledged() {
    let dir = TestDir::new();
    let token = dir.issue_token("local");
    let daemon = dir.serve_http(&[]);
    let addr = daemon.addr.clone();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (token, acked, addr) = (token.clone(), acked.clone(), addr.clone());
            std::thread::spawn(move || {
                let d = Http { addr };
                let id = d.open_session(&token);
                for i in 0.. {
                    let r = d.post(
                        Some(&token),
                        Some(&id),
                        &json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                "params": {"name": "memory_store",
                                           "arguments": {"content": format!("writer {t} item {i}")}}}),
                    );
                    let Some(m) = r.message() else { break };
                    match m["result"]["structuredContent"]["id"].as_str() {
                        Some(mid) if m["result"]["isError"] == false => {
                            acked.lock().unwrap().push(mid.to_string())
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    // The kill lands while all 16 write: once as many writes are acknowledged (a deadline,
    // not a fixed sleep, since a loaded machine opens the sessions slowly), a little later.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 16 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    daemon.kill9();
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 16,
        "only {} writes were acknowledged before the kill",
        acked.len()
    );
    let out = common::stdout_ok(&dir.cli(&["export"]));
    let present: std::collections::HashSet<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {missing:?}",
        missing.len()
    );
    let verify = dir.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let audited: std::collections::HashSet<String> = common::audit_events(&dir)
        .into_iter()
        .filter(|e| e["kind"] == "call" && e["tool"] == "memory_store" && e["outcome"] == "ok")
        .filter_map(|e| e["detail"]["created"].as_str().map(str::to_owned))
        .collect();
    let unaudited: Vec<&String> = acked.iter().filter(|id| !audited.contains(*id)).collect();
    assert!(
        unaudited.is_empty(),
        "acknowledged writes without their event: {unaudited:?}"
    );
    let chain = dir.cli(&["audit", "verify"]);
    assert!(
        chain.status.success(),
        "{}",
        String::from_utf8_lossy(&chain.stdout)
    );
}

/// Clears the immutable flag however the test ends, so the temp dir can be removed.
struct Immutable(Vec<std::path::PathBuf>);

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .output();
        }
    }
}

#[test]
fn sandbox_check_shows_serve_http_reads_its_tokens_and_binds_nothing() {
    let dir = TestDir::new();
    dir.issue_token("local");
    let elsewhere = tempfile::tempdir().unwrap();
    let tokens = elsewhere.path().join("tokens");
    let out = common::memwarden(&[
        "token",
        "issue",
        "local",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    common::stdout_ok(&out);
    let out = dir.cli(&["sandbox-check", "--tokens-file", tokens.to_str().unwrap()]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    if report["sandbox"] != "landlock: fully enforced" {
        eprintln!(
            "SKIPPED: landlock is not enforced here: {}",
            report["landlock"]
        );
        return;
    }
    assert!(out.status.success(), "{report:#}");
    let result = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| c["result"].as_str().unwrap().to_string())
    };
    assert_eq!(result("read the tokens file").as_deref(), Some("allowed"));
    assert_eq!(
        result("write beside the tokens file").as_deref(),
        Some("denied")
    );
    assert_eq!(result("tcp bind").as_deref(), Some("denied"));
    assert_eq!(result("read /etc/passwd").as_deref(), Some("denied"));
}

#[test]
fn an_http_session_left_idle_ends_and_its_id_gets_404() {
    let dir = TestDir::new();
    // The built-in policy's [sessions] idle timeout is a day; [http]'s shorter one wins.
    let policy = policy_with(&dir, "[http]\nidle_timeout_seconds = 1\n");
    let token = dir.issue_token("local");
    let daemon = dir.serve_http(&strs(&policy));
    let id = daemon.open_session(&token);
    // No request for four times the idle timeout (any request would be activity).
    std::thread::sleep(Duration::from_secs(4));
    let status = daemon
        .post(
            Some(&token),
            Some(&id),
            &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        )
        .status;
    assert_eq!(status, 404);
    daemon.stop_ok(&dir);
    let ends: Vec<Value> = common::audit_events(&dir)
        .into_iter()
        .filter(|e| e["kind"] == "session_end")
        .collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["detail"]["reason"], "idle_timeout");
}

#[test]
fn a_database_outage_turns_healthz_503_and_calls_unavailable_until_it_is_back() {
    let Some(pg) = common::postgres::Ready::start() else {
        return;
    };
    let out = common::memwarden(&[
        "token",
        "issue",
        "local",
        "--data-dir",
        pg.data.to_str().unwrap(),
    ]);
    let token = common::stdout_ok(&out).trim().to_string();
    let args: Vec<std::ffi::OsString> = vec![
        "--store".into(),
        "postgres".into(),
        "--database-file".into(),
        pg.app.clone().into_os_string(),
    ];
    let log = pg.cluster.dir.path().join("serve-http.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let daemon = common::http::spawn(&pg.data, &addr, &args, &log);
    assert_eq!(daemon.request("GET", "/healthz", &[], b"").status, 200);
    let id = daemon.open_session(&token);
    let ok = daemon.call(
        &token,
        &id,
        1,
        "memory_store",
        json!({"content": "before the outage"}),
    );
    assert_eq!(ok["result"]["isError"], false, "{ok}");

    pg.cluster.stop();
    let health = daemon.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 503, "{}", health.body);
    let body: Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(body["store"], false);
    let refused = daemon.call(&token, &id, 2, "memory_store", json!({"content": "during"}));
    assert_eq!(
        refused["result"]["structuredContent"]["code"], "UNAVAILABLE",
        "{refused}"
    );

    pg.cluster.start_again();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.request("GET", "/healthz", &[], b"").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz never came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = daemon.call(&token, &id, 3, "memory_store", json!({"content": "after"}));
    assert_eq!(
        after["result"]["isError"], false,
        "the same session goes on: {after}"
    );
    assert!(
        daemon.stop().success(),
        "{}",
        String::from_utf8_lossy(&common::read_all(&log))
    );
}
