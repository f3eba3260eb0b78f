//! `memwarden serve-http` as its users meet it: real HTTP MCP clients (rmcp's Streamable HTTP
//! client, the official Python SDK's), two principals with two tokens, and every way of
//! presenting a bad credential. The real binary, a real data dir, a real policy file.

mod common;

use std::process::Command;

use common::TestDir;
use common::http::initialize;
use serde_json::{Value, json};

const SIX: &str = r#"["memory_store", "memory_get", "memory_search", "memory_list", "memory_update", "memory_delete"]"#;

/// Two principals, each with a namespace of its own.
fn two_principals(extra: &str) -> String {
    format!(
        "version = 1\n{extra}\n\
         [principals.alice]\ntools = {SIX}\nnamespaces = {{ \"a\" = \"rw\" }}\ndefault_namespace = \"a\"\n\
         [principals.bob]\ntools = {SIX}\nnamespaces = {{ \"b\" = \"rw\" }}\ndefault_namespace = \"b\"\n"
    )
}

fn security_events(dir: &TestDir, event: &str) -> Vec<Value> {
    common::audit_events(dir)
        .into_iter()
        .filter(|e| e["kind"] == "security" && e["detail"]["event"] == event)
        .collect()
}

#[tokio::test]
async fn rmcp_streamable_http_client_runs_the_six_tools() {
    let dir = TestDir::new();
    let token = dir.issue_token("local");
    let daemon = dir.serve_http_unix(&[]);
    let client = daemon.rmcp_client(&token).await;
    let mut names: Vec<String> = client
        .tools()
        .await
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, common::TOOL_NAMES);
    let id = client.store("the harbour opens at dawn").await;
    let got = client.call("memory_get", json!({"id": id})).await.ok();
    assert_eq!(got["memory"]["content"], "the harbour opens at dawn");
    assert_eq!(got["memory"]["verified"], true);
    let found = client
        .call("memory_search", json!({"query": "harbour"}))
        .await
        .ok();
    assert_eq!(found["results"][0]["memory"]["id"], id);
    let listed = client.call("memory_list", json!({})).await.ok();
    assert_eq!(
        listed["memories"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let updated = client
        .call(
            "memory_update",
            json!({"id": id, "content": "the harbour opens at six"}),
        )
        .await
        .ok();
    let new_id = updated["id"].as_str().unwrap().to_string();
    let deleted = client
        .call("memory_delete", json!({"id": new_id}))
        .await
        .ok();
    assert_eq!(deleted["status"], "deleted", "{deleted}");
    client.close().await;
    daemon.stop_ok(&dir);

    // One session, recorded as an HTTP session with the token's label; never the token.
    let events = common::audit_events(&dir);
    let start = events
        .iter()
        .find(|e| e["kind"] == "session_start")
        .expect("session_start");
    assert_eq!(
        start["detail"]["connection"]["transport"],
        "streamable_http"
    );
    assert_eq!(
        start["detail"]["connection"]["credential"]["label"],
        "local-1"
    );
    assert_eq!(start["detail"]["connection"]["credential"]["kind"], "token");
    let calls = events.iter().filter(|e| e["kind"] == "call").count();
    assert!(calls >= 5, "{calls} call events");
    assert!(events.iter().any(|e| e["kind"] == "session_end"));
    assert!(!common::contains(&dir.audit_bytes(), token.as_bytes()));
    assert!(!common::contains(
        &common::read_all(&dir.stderr_log()),
        token.as_bytes()
    ));
    let verify = dir.cli(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn two_principals_see_only_their_own_and_a_revoked_token_is_refused_at_once() {
    let dir = TestDir::new();
    let policy = dir.policy(&two_principals(""));
    let alice = dir.issue_token("alice");
    let bob = dir.issue_token("bob");
    let args: Vec<&str> = policy.iter().map(String::as_str).collect();
    let daemon = dir.serve_http(&args);

    let a = daemon.open_session(&alice);
    let stored = daemon.call(
        &alice,
        &a,
        1,
        "memory_store",
        json!({"content": "alice's lighthouse"}),
    );
    let id = stored["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(stored["result"]["structuredContent"]["namespace"], "a");

    let b = daemon.open_session(&bob);
    let got = daemon.call(&bob, &b, 1, "memory_get", json!({"id": id}));
    assert_eq!(got["result"]["isError"], true, "{got}");
    assert_eq!(
        got["result"]["structuredContent"]["code"], "NOT_FOUND",
        "{got}"
    );
    let search = daemon.call(&bob, &b, 2, "memory_search", json!({"query": "lighthouse"}));
    assert_eq!(
        search["result"]["structuredContent"]["results"],
        json!([]),
        "{search}"
    );
    let list = daemon.call(&bob, &b, 3, "memory_list", json!({}));
    assert_eq!(
        list["result"]["structuredContent"]["memories"],
        json!([]),
        "{list}"
    );
    let other = daemon.call(&bob, &b, 4, "memory_list", json!({"namespace": "a"}));
    assert_eq!(other["result"]["isError"], true, "{other}");

    // Bob's token with Alice's session id: 404, as if it did not exist; audited.
    let hijack = daemon.post(
        Some(&bob),
        Some(&a),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                "params": {"name": "memory_get", "arguments": {"id": id}}}),
    );
    assert_eq!(hijack.status, 404, "{}", hijack.body);
    assert!(!hijack.body.contains("lighthouse"));

    // Revoked: the very next request is refused, in an open session too.
    let out = dir.cli(&["token", "revoke", "alice-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = daemon.post(
        Some(&alice),
        Some(&a),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    );
    assert_eq!(after.status, 401, "{}", after.body);
    let fresh = daemon.post(Some(&alice), None, &initialize());
    assert_eq!(fresh.status, 401);
    // Bob is unaffected.
    let still = daemon.call(&bob, &b, 6, "memory_list", json!({}));
    assert_eq!(still["result"]["isError"], false, "{still}");
    daemon.stop_ok(&dir);
    assert_eq!(security_events(&dir, "http_session_mismatch").len(), 1);
    let failed = security_events(&dir, "http_auth_failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed
            .iter()
            .all(|e| e["detail"]["reason"] == "unknown_token")
    );
}

#[test]
fn bad_credentials_get_401_are_audited_and_open_nothing() {
    let dir = TestDir::new();
    let policy = dir.policy(&format!(
        "{}\n[http]\nauth_failures_per_minute = 7\n",
        memwarden::policy::DEFAULT_POLICY
    ));
    let token = dir.issue_token("local");
    let args: Vec<&str> = policy.iter().map(String::as_str).collect();
    let daemon = dir.serve_http(&args);
    let body = initialize().to_string();
    let base = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let wrong = format!("Bearer mwt_{}", "Q".repeat(43));
    // A space after the token is not part of the header (RFC 9110 §5.5 strips it before any
    // application sees it); a space that is part of it is refused: before, inside, after.
    let trailing = format!("Bearer {token} x");
    let doubled = format!("Bearer  {token}");
    let lower = format!("bearer {token}x");
    let query = format!("/mcp?access_token={token}");
    let attempts: Vec<(&str, Option<&str>, &str)> = vec![
        ("/mcp", None, "missing"),
        ("/mcp", Some(&wrong), "unknown_token"),
        ("/mcp", Some(&trailing), "malformed"),
        ("/mcp", Some(&doubled), "malformed"),
        ("/mcp", Some(&lower), "malformed"),
        (&query, None, "token_in_query"),
    ];
    for (path, auth, reason) in &attempts {
        let mut headers = base.to_vec();
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = daemon.request("POST", path, &headers, body.as_bytes());
        assert_eq!(r.status, 401, "{reason}: {} {}", r.status, r.body);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{reason}: {:?}",
            r.headers
        );
        assert!(r.header("mcp-session-id").is_none());
    }
    // The valid token still works (6 failures, limit 7).
    let ok = daemon.post(Some(&token), None, &initialize());
    assert_eq!(ok.status, 200, "{}", ok.body);
    // The seventh failure uses the minute's allowance; after it, even a valid token from this
    // address waits out the minute.
    let r = daemon.post(Some(&wrong["Bearer ".len()..]), None, &initialize());
    assert_eq!(r.status, 401);
    let limited = daemon.post(Some(&token), None, &initialize());
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.header("retry-after"), Some("60"));
    daemon.stop_ok(&dir);

    let failed = security_events(&dir, "http_auth_failed");
    let reasons: Vec<&str> = failed
        .iter()
        .map(|e| e["detail"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "missing",
            "unknown_token",
            "malformed",
            "malformed",
            "malformed",
            "token_in_query",
            "unknown_token"
        ]
    );
    assert!(failed.iter().all(|e| e["detail"]["source"] == "127.0.0.1"));
    assert_eq!(security_events(&dir, "http_auth_failures_limited").len(), 1);
    let starts = common::audit_events(&dir)
        .into_iter()
        .filter(|e| e["kind"] == "session_start")
        .count();
    assert_eq!(starts, 1, "only the valid token opened a session");
    assert!(!common::contains(&dir.audit_bytes(), token.as_bytes()));
    assert!(!common::contains(
        &common::read_all(&dir.stderr_log()),
        token.as_bytes()
    ));
}

#[test]
fn a_non_loopback_address_and_a_bad_tokens_file_are_refused_at_start() {
    let dir = TestDir::new();
    dir.issue_token("local");
    for addr in [
        "0.0.0.0:8787",
        "192.0.2.1:8787",
        "localhost:8787",
        "unix:relative.sock",
    ] {
        let out = Command::new(common::bin())
            .args(["serve-http", "--listen", addr, "--data-dir"])
            .arg(dir.data())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{addr} was accepted");
        if addr.starts_with("0.0.0.0") {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("not a loopback address") && err.contains("--tls-cert"),
                "{err}"
            );
        }
    }
    let tokens = dir.data().join("tokens.toml");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(common::bin())
        .args(["serve-http", "--listen", "127.0.0.1:1", "--data-dir"])
        .arg(dir.data())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0644") && err.contains("tokens"), "{err}");
    // `token list` shows labels and digest prefixes, never a token.
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let list = common::stdout_ok(&dir.cli(&["token", "list"]));
    assert!(list.starts_with("local-1\tmcp\tlocal\t"), "{list}");
    assert!(!list.contains("mwt_"));
}

#[test]
fn the_python_sdk_streamable_http_client_runs_the_six_tools() {
    let probe = Command::new("python3").args(["-c", "import mcp"]).output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the Python MCP SDK (pip install mcp)"
        );
        eprintln!("SKIPPED: the Python MCP SDK is not installed (pip install mcp)");
        return;
    }
    let dir = TestDir::new();
    let token = dir.issue_token("local");
    let daemon = dir.serve_http(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/http_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/mcp", daemon.addr))
        .env("MEMWARDEN_TOKEN", &token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("six tools: ok"), "{stdout}");
    daemon.stop_ok(&dir);
}
