//! A hostile agent against the real binary: every refused call spends from the rate bucket and
//! counts toward the cooldown, agent text never reaches a log or an error whole, writes are
//! charged for the bytes they add, the read window covers every tool that takes an id,
//! backpressure bounds memory, and protocol edges get one answer and one audit event each.

mod common;

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use common::{RawSession, TestDir};
use serde_json::{Value, json};

const ALL_TOOLS: &str = r#"["memory_store", "memory_get", "memory_search", "memory_list", "memory_update", "memory_delete"]"#;

/// A policy for principal `local` with every tool on every namespace, plus `extra` sections.
fn policy(extra: &str) -> String {
    format!(
        "version = 1\n{extra}\n[principals.local]\ntools = {ALL_TOOLS}\n\
         namespaces = {{ \"*\" = \"rw\" }}\ndefault_namespace = \"default\"\n"
    )
}

fn raw(dir: &TestDir, policy_text: &str) -> RawSession {
    let args = dir.policy(policy_text);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = RawSession::spawn_with(dir, &args);
    s.handshake();
    s
}

fn events(dir: &TestDir) -> Vec<Value> {
    common::audit_events(dir)
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

fn security(events: &[Value], name: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == "security" && e["detail"]["event"] == name)
        .count()
}

/// The code of a reply: a tool result's structured code, or the JSON-RPC error's code.
fn code(reply: &Value) -> String {
    if let Some(c) = reply["result"]["structuredContent"]["code"].as_str()
        && reply["result"]["isError"] == true
    {
        return c.to_string();
    }
    if let Some(c) = reply["error"]["code"].as_i64() {
        return c.to_string();
    }
    "ok".into()
}

const TIGHT: &str = "[rates]\ncalls_per_minute = 60\nburst = 5\ncooldown_after_refusals = 5\n\
                     cooldown_seconds = 600\nend_session_after_cooldowns = 2\n";

// --- item 5: refused calls are rate limited -------------------------------------------------

#[test]
fn schema_invalid_calls_spend_the_bucket_and_reach_the_cooldown() {
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy(TIGHT));
    let mut codes = Vec::new();
    for i in 0..40u64 {
        // Schema-invalid: an unknown property and an 800 KB string.
        let reply = s.call(
            i + 1,
            "memory_store",
            json!({"content": "x", "bogus": "y".repeat(800_000)}),
        );
        codes.push(code(&reply));
    }
    // The burst buys five schema refusals; the fifth refusal in a row starts the cooldown and
    // nothing is validated any more.
    assert_eq!(&codes[..5], &["-32602"; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| c == "COOLDOWN"), "{codes:?}");
    // A valid call is refused too: the cooldown covers everything.
    let reply = s.call(99, "memory_list", json!({}));
    assert_eq!(code(&reply), "COOLDOWN");
    assert!(
        reply["result"]["structuredContent"]["retry_after_ms"]
            .as_u64()
            .unwrap()
            > 500_000
    );
    s.finish();
    let all = events(&dir);
    assert_eq!(of_kind(&all, "call").len(), 41, "one call event per call");
    assert_eq!(security(&all, "cooldown"), 1);
    assert_eq!(dir.row_count(), 0);
}

#[test]
fn ungranted_unknown_tools_and_unknown_methods_count_toward_the_cooldown() {
    let dir = TestDir::new();
    let text = "version = 1\n[rates]\ncalls_per_minute = 6000\nburst = 1000\ncooldown_after_refusals = 10\n\
         cooldown_seconds = 600\nend_session_after_cooldowns = 5\n\
         [principals.local]\ntools = [\"memory_get\", \"memory_list\"]\n\
         namespaces = { \"*\" = \"rw\" }\ndefault_namespace = \"default\"\n";
    let mut s = raw(&dir, text);
    for i in 0..3u64 {
        assert_eq!(
            code(&s.call(i + 1, "memory_store", json!({"content": "x"}))),
            "FORBIDDEN"
        );
    }
    for i in 0..3u64 {
        assert_eq!(code(&s.call(i + 10, "memory_nope", json!({}))), "-32602");
    }
    for i in 0..3u64 {
        s.send(&json!({"jsonrpc": "2.0", "id": i + 20, "method": "resources/nope"}).to_string());
        assert_eq!(code(&s.recv()), "-32601");
    }
    // The tenth refusal in a row starts the cooldown, whatever kind it was.
    assert_eq!(
        code(&s.call(30, "memory_store", json!({"content": "x"}))),
        "FORBIDDEN"
    );
    assert_eq!(code(&s.call(31, "memory_list", json!({}))), "COOLDOWN");
    // Pings spend from the bucket as well, and are refused in a cooldown.
    s.send(r#"{"jsonrpc":"2.0","id":32,"method":"ping"}"#);
    let ping = s.recv();
    assert_eq!(ping["error"]["code"], -32000, "{ping}");
    assert_eq!(ping["error"]["data"]["code"], "COOLDOWN");
    s.finish();
    let all = events(&dir);
    assert_eq!(security(&all, "cooldown"), 1);
    assert_eq!(of_kind(&all, "call").len(), 12);
}

#[test]
fn a_session_ended_by_the_rate_gate_ends_once() {
    let dir = TestDir::new();
    let text = policy(
        "[rates]\ncalls_per_minute = 60\nburst = 2\ncooldown_after_refusals = 2\n\
         cooldown_seconds = 1\nend_session_after_cooldowns = 2\n",
    );
    let mut s = raw(&dir, &text);
    // Keep refusing until the server hangs up; it must not write an end event per call.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0;
    while Instant::now() < deadline {
        id += 1;
        let line = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
                          "params":{"name":"memory_nope","arguments":{}}})
        .to_string();
        if !s.try_send(&line) {
            break;
        }
        let mut reply = String::new();
        if s.stdout.read_line(&mut reply).unwrap_or(0) == 0 {
            break;
        }
        if id % 50 == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let _ = s.finish();
    let all = events(&dir);
    assert_eq!(
        security(&all, "session_ended_by_rate_gate"),
        1,
        "ended once"
    );
    assert_eq!(of_kind(&all, "session_end").len(), 1);
    let end = of_kind(&all, "session_end")[0];
    assert_eq!(end["detail"]["reason"], "rate_limited", "{end}");
}

// --- item 6: agent text never reaches a log or an error whole --------------------------------

#[test]
fn huge_method_names_and_keys_are_never_echoed() {
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy(""));
    for i in 0..20u64 {
        let method = format!("x{}", "m".repeat(900_000));
        s.send(&json!({"jsonrpc": "2.0", "id": i + 1, "method": method}).to_string());
        let reply = s.recv();
        assert_eq!(reply["error"]["code"], -32601);
        assert!(
            reply.to_string().len() < 300,
            "{}",
            &reply.to_string()[..300]
        );
    }
    // An unexpected 500 KB property name and a metadata key deep in a failing value.
    let key = "K".repeat(500_000);
    let mut args = serde_json::Map::new();
    args.insert("content".into(), json!("x"));
    args.insert(key, json!(1));
    let reply = s.call(100, "memory_store", Value::Object(args));
    assert_eq!(reply["error"]["code"], -32602);
    let text = reply.to_string();
    assert!(
        text.len() < 600 && !text.contains("KKKK"),
        "{}",
        &text[..600.min(text.len())]
    );
    let deep = json!({"content": "x", "metadata": {"hidden-key-name": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}});
    let reply = s.call(101, "memory_store", deep);
    assert!(!reply.to_string().contains("hidden-key-name"), "{reply}");
    // FORBIDDEN does not repeat the namespace it refuses.
    s.finish();
    let log = common::read_all(&dir.stderr_log());
    assert!(log.len() < 64 * 1024, "stderr grew to {} bytes", log.len());
    assert!(!common::contains(&log, b"mmmmmmmm"));
    assert!(!common::contains(&log, b"KKKKKKKK"));
    assert!(!common::contains(&log, b"hidden-key-name"));
    let audit = dir.audit_bytes();
    assert!(!common::contains(&audit, b"mmmmmmmm"));
    assert!(!common::contains(&audit, b"KKKKKKKK"));
    let all = events(&dir);
    let refused: Vec<_> = of_kind(&all, "call")
        .into_iter()
        .filter(|e| e["detail"]["refused"] == "unknown_method")
        .collect();
    assert_eq!(refused.len(), 20);
    assert!(
        refused[0]["detail"]["method"]
            .as_str()
            .unwrap()
            .starts_with("<900001 bytes #")
    );
}

#[test]
fn forbidden_does_not_repeat_the_namespace() {
    let dir = TestDir::new();
    let text = format!(
        "version = 1\n[principals.local]\ntools = {ALL_TOOLS}\n\
         namespaces = {{ notes = \"rw\", shared = \"r\" }}\ndefault_namespace = \"notes\"\n"
    );
    let mut s = raw(&dir, &text);
    for (i, ns) in ["shared", "elsewhere-private-ns"].iter().enumerate() {
        let reply = s.call(
            i as u64 + 1,
            "memory_store",
            json!({"content": "x", "namespace": ns}),
        );
        assert_eq!(code(&reply), "FORBIDDEN");
        assert!(!reply.to_string().contains(ns), "{reply}");
    }
    let reply = s.call(
        9,
        "memory_list",
        json!({"namespace": "elsewhere-private-ns"}),
    );
    assert_eq!(code(&reply), "FORBIDDEN");
    assert!(
        !reply.to_string().contains("elsewhere-private-ns"),
        "{reply}"
    );
    s.finish();
}

// --- item 7: write volume through update and delete -------------------------------------------

#[test]
fn updates_are_charged_for_the_content_they_copy() {
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy("[rates]\nwrite_bytes_per_minute = 8192\n"));
    let stored = s.call(1, "memory_store", json!({"content": "a".repeat(4000)}));
    let id = stored["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A tag-only update writes a new version holding a copy of the 4,000 bytes: the second one
    // no longer fits in the minute's 8 KiB (the bucket refills 136 bytes a second, so it stays
    // refused for about 28 s, however slowly the calls below run).
    let first = s.call(2, "memory_update", json!({"id": id, "tags": ["t1"]}));
    assert_eq!(code(&first), "ok", "{first}");
    let id2 = first["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rows = dir.row_count();
    for i in 0..20u64 {
        let reply = s.call(10 + i, "memory_update", json!({"id": id2, "tags": ["t2"]}));
        assert_eq!(code(&reply), "RATE_LIMITED", "{reply}");
    }
    // A metadata-only update is charged too; reads are not.
    let reply = s.call(
        40,
        "memory_update",
        json!({"id": id2, "metadata": {"k": "v"}}),
    );
    assert_eq!(code(&reply), "RATE_LIMITED");
    assert_eq!(code(&s.call(41, "memory_get", json!({"id": id2}))), "ok");
    s.finish();
    assert_eq!(dir.row_count(), rows, "refused updates wrote nothing");
    let all = events(&dir);
    let ok_update = of_kind(&all, "call")
        .into_iter()
        .find(|e| e["tool"] == "memory_update" && e["outcome"] == "ok")
        .unwrap();
    assert!(ok_update["detail"]["written_bytes"].as_u64().unwrap() >= 3000);
}

#[test]
fn deleted_and_superseded_rows_count_against_the_quota_until_purge() {
    let dir = TestDir::new();
    let mut s = raw(
        &dir,
        &policy("[limits]\nnamespace_max_entries = 4\nnamespace_max_bytes = 100000\n"),
    );
    let mut codes = Vec::new();
    for i in 0..4u64 {
        let r = s.call(
            i * 2 + 1,
            "memory_store",
            json!({"content": format!("cycle {i}")}),
        );
        codes.push(code(&r));
        if let Some(id) = r["result"]["structuredContent"]["id"].as_str() {
            codes.push(code(&s.call(i * 2 + 2, "memory_delete", json!({"id": id}))));
        }
    }
    assert_eq!(codes.iter().filter(|c| *c == "ok").count(), 8, "{codes:?}");
    // Four tombstones still hold their content: the namespace is full.
    assert_eq!(
        code(&s.call(50, "memory_store", json!({"content": "one more"}))),
        "TOO_LARGE"
    );
    // Another namespace is not affected.
    assert_eq!(
        code(&s.call(
            51,
            "memory_store",
            json!({"content": "x", "namespace": "other"})
        )),
        "ok"
    );
    s.finish();

    // Updates: each version is a row, and copies count against the byte quota.
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy("[limits]\nnamespace_max_bytes = 10000\n"));
    let r = s.call(1, "memory_store", json!({"content": "b".repeat(4000)}));
    let mut id = r["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s.call(2, "memory_update", json!({"id": id, "tags": ["v2"]}));
    assert_eq!(code(&r), "ok");
    id = r["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rows = dir.row_count();
    let r = s.call(3, "memory_update", json!({"id": id, "tags": ["v3"]}));
    assert_eq!(code(&r), "TOO_LARGE", "{r}");
    s.finish();
    assert_eq!(dir.row_count(), rows);
}

// --- item 9: the read window covers update and delete ----------------------------------------

#[test]
fn the_read_window_hides_old_entries_from_update_and_delete() {
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy("[access]\nread_window_seconds = 1\n"));
    let old: Vec<String> = (0..3u64)
        .map(|i| {
            let r = s.call(
                i + 1,
                "memory_store",
                json!({"content": format!("old secret {i}")}),
            );
            r["result"]["structuredContent"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1300));
    let missing = "01900000-0000-7000-8000-000000000000";
    let rows = dir.row_count();
    let not_found = s.call(10, "memory_get", json!({"id": missing}));
    for (i, id) in old.iter().enumerate() {
        let i = i as u64;
        let get = s.call(20 + i, "memory_get", json!({"id": id}));
        let update = s.call(
            30 + i,
            "memory_update",
            json!({"id": id, "tags": ["revived"]}),
        );
        let delete = s.call(40 + i, "memory_delete", json!({"id": id}));
        for reply in [&get, &update, &delete] {
            assert_eq!(code(reply), "NOT_FOUND", "{reply}");
            // Exactly what a missing id gets: no existence oracle.
            assert_eq!(
                reply["result"]["structuredContent"],
                not_found["result"]["structuredContent"]
            );
        }
    }
    assert_eq!(dir.row_count(), rows, "nothing written for hidden entries");
    // Inside the window everything still works (stored just now: on a loaded machine the
    // calls above can take longer than the 1 s window).
    let fresh = s.call(49, "memory_store", json!({"content": "fresh"}));
    let fresh = fresh["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        code(&s.call(50, "memory_update", json!({"id": fresh, "tags": ["ok"]}))),
        "ok"
    );
    s.finish();
}

// --- item 8: backpressure bounds memory ------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends `count` copies of a request (by `line(id)`) without reading, then reads every reply;
/// returns the server's peak RSS while the client was not reading, and at the end (KiB).
fn flood_without_reading(line: fn(u64) -> String, count: u64) -> (u64, u64) {
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy(""));
    // Twenty 4 KB memories: each list reply is about 180 KB (the text block repeats the JSON).
    for i in 0..20 {
        let stored = s.call(i + 1, "memory_store", json!({"content": "x".repeat(4000)}));
        assert_eq!(code(&stored), "ok");
    }
    let pid = s.child.id();
    let mut stdin = s.stdin.take().unwrap();
    // Write without reading, from another thread: once the server stops reading, the writes
    // block, which is the point.
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        for i in 0..count {
            if stdin.write_all(line(i + 10).as_bytes()).is_err() {
                break;
            }
            sent += 1;
        }
        drop(stdin);
        sent
    });
    // Let the server take what it will, then measure its peak.
    std::thread::sleep(Duration::from_secs(3));
    let peak_while_blocked = rss_kib(pid);
    assert!(
        !writer.is_finished(),
        "the server kept reading although nobody read its replies"
    );
    // Now read everything: every request is answered, and the writer finishes.
    let mut answered = 0;
    let mut reply = String::new();
    while answered < count {
        reply.clear();
        if s.stdout.read_line(&mut reply).unwrap() == 0 {
            break;
        }
        answered += 1;
    }
    assert_eq!(writer.join().unwrap(), count);
    assert_eq!(answered, count);
    let peak = rss_kib(pid);
    s.finish();
    (peak_while_blocked, peak)
}

/// What to send, how to write request `i`, how many.
type Flood = (&'static str, fn(u64) -> String, u64);

#[test]
fn a_client_that_does_not_read_cannot_grow_the_server() {
    // The review's case (100,000 pings: 470 MB), and lists and tools/list whose replies are
    // large (unbounded, these would queue about 100 MB and 200 MB of replies).
    let floods: [Flood; 3] = [
        (
            "ping",
            |i| format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"ping\"}}\n"),
            100_000,
        ),
        (
            "list",
            |i| {
                // Padded with JSON whitespace, so the requests outgrow the pipe's buffer.
                format!(
                    "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/call\",\"params\":{{\"name\":\"memory_list\",\"arguments\":{{}}}}{:2000}}}\n",
                    ""
                )
            },
            600,
        ),
        (
            "tools/list",
            |i| format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"tools/list\"}}\n"),
            20_000,
        ),
    ];
    for (what, line, count) in floods {
        let started = std::time::Instant::now();
        let (blocked, peak) = flood_without_reading(line, count);
        eprintln!(
            "{what}: {count} requests, peak RSS {blocked} KiB blocked, {peak} KiB at the end, {:?}",
            started.elapsed()
        );
        assert!(
            blocked < 80 * 1024,
            "{what}: peak RSS {blocked} KiB while blocked"
        );
        assert!(peak < 80 * 1024, "{what}: peak RSS {peak} KiB");
    }
}

// --- item 11: keyed argument digests ---------------------------------------------------------

#[test]
fn argument_digests_are_keyed_and_taken_after_redaction() {
    use sha2::{Digest, Sha256};
    let digests = |query: &str| -> (String, String) {
        let dir = TestDir::new();
        // The built-in policy redacts the password before it is stored.
        let mut s = RawSession::start(&dir);
        let stored = s.call(
            1,
            "memory_store",
            json!({"content": "password: hunter2-horse"}),
        );
        assert_eq!(code(&stored), "ok");
        s.call(2, "memory_search", json!({"query": query}));
        s.finish();
        let all = events(&dir);
        let calls = of_kind(&all, "call");
        (
            calls[0]["detail"]["args_hmac"]
                .as_str()
                .unwrap()
                .to_string(),
            calls[1]["detail"]["args_hmac"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let (store_a, search_a) = digests("kitten");
    let (store_b, search_b) = digests("kitten");
    // A dictionary of plain hashes finds nothing.
    for guess in [
        json!({"query": "kitten"}).to_string(),
        r#"{"query":"kitten"}"#.to_string(),
        json!({"content": "password: hunter2-horse"}).to_string(),
    ] {
        let plain = hex::encode(Sha256::digest(guess.as_bytes()));
        assert_ne!(plain, search_a);
        assert_ne!(plain, store_a);
    }
    // Each data dir has its own audit key: the same call digests differently.
    assert_ne!(search_a, search_b);
    assert_ne!(store_a, store_b);
}

// --- item 13: protocol edges -----------------------------------------------------------------

#[test]
fn batches_non_objects_and_duplicate_keys_are_refused_with_one_event_each() {
    let dir = TestDir::new();
    let mut s = raw(&dir, &policy(""));
    let lines = [
        "[]",
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        "5",
        r#""tools/call""#,
        "null",
        // The last `content` would win in serde_json: the message is refused whole.
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"memory_store","arguments":{"content":"a","content":"b"}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"id":4,"method":"ping"}"#,
        // Non-object arguments, non-string name.
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"memory_store","arguments":5}}"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":5,"arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":"memory_list"}"#,
    ];
    let expected = [
        -32600, -32600, -32600, -32600, -32600, -32600, -32600, -32602, -32602, -32602,
    ];
    for (line, want) in lines.iter().zip(expected) {
        s.send(line);
        let reply = s.recv();
        assert_eq!(reply["error"]["code"], want, "{line} -> {reply}");
    }
    // A second initialize is refused and spends no sessions-per-hour slot.
    s.send(&json!({"jsonrpc":"2.0","id":8,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"again","version":"0"}}}).to_string());
    assert_eq!(s.recv()["error"]["code"], -32600);
    // The session still serves.
    assert_eq!(code(&s.call(9, "memory_list", json!({}))), "ok");
    s.finish();
    assert_eq!(dir.row_count(), 0);
    let all = events(&dir);
    assert_eq!(of_kind(&all, "session_start").len(), 1);
    assert_eq!(of_kind(&all, "session_end").len(), 1);
    let calls = of_kind(&all, "call");
    assert_eq!(calls.len(), lines.len() + 2, "one call event per message");
    let refused: Vec<&str> = calls
        .iter()
        .filter_map(|e| e["detail"]["refused"].as_str())
        .collect();
    assert_eq!(
        refused,
        [
            "batch",
            "batch",
            "not_object",
            "not_object",
            "not_object",
            "duplicate_key",
            "duplicate_key",
            "bad_call_params",
            "bad_call_params",
            "bad_call_params",
            "reinitialize"
        ]
    );
    assert!(dir.cli(&["audit", "verify"]).status.success());
}

#[test]
fn a_second_initialize_does_not_spend_a_session_slot() {
    let dir = TestDir::new();
    let text = policy("[rates]\nsessions_per_hour = 2\n");
    let init = |name: &str| {
        json!({"jsonrpc":"2.0","id":100,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":name,"version":"0"}}}).to_string()
    };
    let mut s = raw(&dir, &text);
    for _ in 0..5 {
        s.send(&init("again"));
        assert_eq!(s.recv()["error"]["code"], -32600);
    }
    s.finish();
    // The second session of the hour is still admitted.
    let mut s = raw(&dir, &text);
    assert_eq!(code(&s.call(1, "memory_list", json!({}))), "ok");
    s.finish();
}
