//! The bad-input campaign: 10,000+ invalid tool calls of many kinds, generated deterministically,
//! through the real server in one session. None is accepted, none crashes the server, each gets
//! a structured error, and the store is unchanged.

mod common;

use common::{RawSession, TestDir};
use serde_json::{Value, json};

const CALLS: usize = 10_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const TOOLS: [&str; 6] = [
    "memory_store",
    "memory_get",
    "memory_search",
    "memory_list",
    "memory_update",
    "memory_delete",
];
const ID: &str = "01234567-89ab-7def-8123-456789abcdef";

fn deep(depth: usize) -> Value {
    let mut v = json!("x");
    for _ in 0..depth {
        v = json!({ "k": v });
    }
    v
}

/// One invalid request line: the tool's arguments are wrong in one of many ways, or the JSON
/// itself is.
fn bad_line(rng: &mut Rng, id: usize) -> String {
    let tool = *rng.pick(&TOOLS);
    let wrong_values = [
        json!(5),
        json!(-1),
        json!(1.5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!("x"),
        json!(1e308),
        json!(u64::MAX),
    ];
    let long = |n: usize| "a".repeat(n);
    let args: Value = match rng.below(16) {
        // Oversize strings.
        0 => json!({"content": long(16385 + rng.below(4000))}),
        1 => json!({"content": "x", "namespace": long(65 + rng.below(100))}),
        2 => json!({"query": long(513 + rng.below(500))}),
        3 => json!({"content": "x", "tags": [long(65)]}),
        // Deep nesting and wide objects.
        4 => json!({"content": "x", "metadata": {"k": deep(4 + rng.below(60))}}),
        5 => {
            json!({"content": "x", "metadata": Value::Object((0..33 + rng.below(50)).map(|i| (format!("k{i}"), json!(i))).collect())})
        }
        // Control characters and look-alikes where patterns apply.
        6 => {
            json!({"content": "x", "namespace": format!("ns{}", char::from_u32(rng.below(32) as u32).unwrap())})
        }
        7 => json!({"content": "x", "tags": [format!("t\u{202e}{}", rng.below(9))]}),
        // Huge and non-integer numbers.
        8 => {
            json!({"query": "x", "limit": *rng.pick(&[json!(1e308), json!(0), json!(51), json!(-5), json!(2.5), json!(u64::MAX)])})
        }
        // Wrong types for every field.
        9 => {
            let field = *rng.pick(&[
                "content",
                "namespace",
                "tags",
                "metadata",
                "query",
                "id",
                "cursor",
                "since",
                "limit",
            ]);
            let mut m = serde_json::Map::new();
            m.insert(field.to_string(), rng.pick(&wrong_values).clone());
            Value::Object(m)
        }
        // Extra fields, including ones that try to pick an identity.
        10 => {
            json!({"content": "x", *rng.pick(&["principal", "session_id", "status", "verified", "key_id", "__proto__"]): "root"})
        }
        // Bad ids and cursors.
        11 => {
            json!({"id": *rng.pick(&["", "../../etc/passwd", "01234567-89AB-7DEF-8123-456789ABCDEF", "' OR 1=1 --", "0123456789ab7def8123456789abcdef0", "01234567-89ab-7def-8123-456789abcdeg"])})
        }
        12 => {
            json!({"cursor": *rng.pick(&["", "zz", "0".repeat(31).as_str(), "0".repeat(33).as_str(), "' OR 1=1"])})
        }
        // Bad times.
        13 => {
            json!({"query": "x", "since": *rng.pick(&["yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "1e9", ""])})
        }
        // Missing required fields.
        14 => json!({}),
        // Too many tags, duplicates.
        _ => {
            json!({"content": "x", "tags": *rng.pick(&[json!((0..17).map(|i| format!("t{i}")).collect::<Vec<_>>()), json!(["a", "a"])])})
        }
    };
    let mut args = args;
    // Make every call invalid for its tool: a field that tool does not take, or a required
    // one missing.
    if let Value::Object(m) = &mut args {
        let valid_keys: &[&str] = match tool {
            "memory_store" => &["content", "namespace", "tags", "metadata"],
            "memory_get" | "memory_delete" => &["id"],
            "memory_search" => &["query", "namespace", "tags", "since", "until", "limit"],
            "memory_list" => &["namespace", "tags", "since", "until", "limit", "cursor"],
            _ => &["id", "content", "tags", "metadata"],
        };
        if m.keys().all(|k| valid_keys.contains(&k.as_str())) {
            m.insert("unexpected".into(), json!(1));
        }
    }
    let line = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}).to_string();
    match rng.below(20) {
        // Broken JSON text: lone surrogates, duplicate keys, truncation, raw control bytes.
        0 => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"memory_store","arguments":{{"content":"\ud800 lone"}}}}}}"#
        ),
        1 => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"memory_store","arguments":{{"content":"a","content":5}}}}}}"#
        ),
        2 => line[..line.len() / 2].to_string(),
        3 => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"memory_get","arguments":[1,2]}}}}"#
        ),
        4 => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"memory_get","arguments":{{"id":"{ID}","id":7}}}}}}"#
        ),
        _ => line,
    }
}

#[test]
fn ten_thousand_invalid_calls_are_all_refused_and_change_nothing() {
    let dir = TestDir::new();
    // Every refusal counts toward the cooldown (tests/hostile_agent.rs); this test is about how
    // each bad line is answered, so its policy has no cooldown.
    let policy = dir.policy(
        "version = 1\n[principals.local]\ntools = [\"memory_store\", \"memory_get\", \
         \"memory_search\", \"memory_list\", \"memory_update\", \"memory_delete\"]\n\
         namespaces = { \"*\" = \"rw\" }\ndefault_namespace = \"default\"\n",
    );
    let args: Vec<&str> = policy.iter().map(String::as_str).collect();
    let mut s = RawSession::spawn_with(&dir, &args);
    s.handshake();
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let (mut refused, mut accepted) = (0, 0);
    for i in 0..CALLS {
        let line = bad_line(&mut rng, i + 1);
        s.send(&line);
        let reply = s.recv();
        let structured = reply
            .get("error")
            .map(|e| e["code"].is_i64() && e["message"].is_string())
            .unwrap_or(false)
            || (reply["result"]["isError"] == true
                && reply["result"]["structuredContent"]["code"].is_string());
        if structured {
            refused += 1;
        } else {
            accepted += 1;
            eprintln!("accepted: {line}\n-> {reply}");
        }
        // Never an internal error: every refusal is the caller's.
        let code = reply["result"]["structuredContent"]["code"]
            .as_str()
            .unwrap_or("");
        assert_ne!(code, "INTERNAL", "{line} -> {reply}");
    }
    assert_eq!(accepted, 0, "every invalid call is refused");
    assert_eq!(refused, CALLS);
    // The server is alive and well after all of it.
    let ok = s.call(999_999, "memory_list", json!({}));
    assert_eq!(ok["result"]["isError"], false);
    assert!(s.finish().success(), "clean exit, no panic");
    assert_eq!(dir.row_count(), 0, "nothing stored");
    assert_eq!(dir.tamper().index_count(), 0);
    assert!(dir.cli(&["audit", "verify"]).status.success());
    let log = String::from_utf8(common::read_all(&dir.stderr_log())).unwrap();
    assert!(!log.contains("panicked"));
}
