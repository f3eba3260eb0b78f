//! Each tool's normal path through the real binary and a real MCP client.

mod common;

use common::{Outcome, TestDir};
use memwarden::store::testing::Field;
use serde_json::{Value, json};

#[tokio::test]
async fn server_info_and_tool_list_match_schema_files() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let info = client.service.peer_info().expect("server info");
    let server = info.server_info.clone().expect("serverInfo");
    assert_eq!(server.name, "memwarden");
    assert_eq!(server.version, env!("CARGO_PKG_VERSION"));

    let tools = client.tools().await;
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, common::TOOL_NAMES);
    // Golden check: what tools/list advertises is exactly schema/, so they cannot drift.
    for tool in &tools {
        let root = env!("CARGO_MANIFEST_DIR");
        let input: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{root}/schema/tools/{}.json", tool.name)).unwrap(),
        )
        .unwrap();
        let output: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{root}/schema/output/{}.json", tool.name)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            Value::Object((*tool.input_schema).clone()),
            input,
            "{}",
            tool.name
        );
        let advertised = tool.output_schema.as_ref().expect("outputSchema");
        assert_eq!(
            Value::Object((**advertised).clone()),
            output,
            "{}",
            tool.name
        );
    }
    client.close().await;
}

#[tokio::test]
async fn store_get_list_search_update_delete() {
    let dir = TestDir::new();
    let client = dir.connect().await;

    let stored = client
        .call(
            "memory_store",
            json!({"content": "The deploy key lives in vault path ops/deploy", "namespace": "ops",
                   "tags": ["infra", "deploy"], "metadata": {"source": "runbook", "n": 3}}),
        )
        .await
        .ok();
    let id = stored["id"].as_str().unwrap().to_string();
    assert_eq!(stored["status"], "active");
    assert_eq!(stored["namespace"], "ops");

    let got = client.call("memory_get", json!({"id": id})).await.ok();
    let m = &got["memory"];
    assert_eq!(
        m["content"],
        "The deploy key lives in vault path ops/deploy"
    );
    assert_eq!(
        m["tags"],
        json!(["deploy", "infra"]),
        "tags come back sorted"
    );
    assert_eq!(m["metadata"], json!({"source": "runbook", "n": 3}));
    assert_eq!(m["verified"], true);
    assert_eq!(m["content_trust"], "untrusted");
    assert_eq!(m["author"]["principal"], "local");
    assert_eq!(m["supersedes"], Value::Null);

    // Search: with a snippet, saying it holds every word, scoped to the namespace.
    client
        .call(
            "memory_store",
            json!({"content": "unrelated note about lunch", "namespace": "ops"}),
        )
        .await
        .ok();
    let found = client
        .call(
            "memory_search",
            json!({"query": "vault deploy", "namespace": "ops"}),
        )
        .await
        .ok();
    assert_eq!(found["results"][0]["memory"]["id"], id.as_str());
    assert_eq!(found["results"][0]["matched"], "all");
    assert!(
        found["results"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("«vault»")
    );
    assert_eq!(found["withheld"], 0);
    // Without a namespace, search covers every namespace the principal may read.
    let everywhere = client
        .call("memory_search", json!({"query": "vault"}))
        .await
        .ok();
    assert_eq!(everywhere["results"][0]["memory"]["id"], id.as_str());
    assert_eq!(everywhere["results"][0]["memory"]["namespace"], "ops");
    let elsewhere = client
        .call(
            "memory_search",
            json!({"query": "vault", "namespace": "default"}),
        )
        .await
        .ok();
    assert_eq!(
        elsewhere["results"],
        json!([]),
        "the default namespace holds nothing"
    );

    // Tag filter on search and list.
    let tagged = client
        .call(
            "memory_list",
            json!({"namespace": "ops", "tags": ["infra"]}),
        )
        .await
        .ok();
    assert_eq!(tagged["memories"].as_array().unwrap().len(), 1);

    // Update: a new version supersedes the old, which stays readable as history.
    let updated = client
        .call(
            "memory_update",
            json!({"id": id, "content": "The deploy key moved to ops/deploy-v2"}),
        )
        .await
        .ok();
    let new_id = updated["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    assert_eq!(updated["supersedes"], id.as_str());
    let new = client.call("memory_get", json!({"id": new_id})).await.ok();
    assert_eq!(new["memory"]["supersedes"], id.as_str());
    assert_eq!(
        new["memory"]["tags"],
        json!(["deploy", "infra"]),
        "unchanged fields carry over"
    );
    assert_eq!(
        new["memory"]["metadata"],
        json!({"source": "runbook", "n": 3})
    );
    let old = client.call("memory_get", json!({"id": id})).await.ok();
    assert_eq!(old["memory"]["status"], "superseded");
    assert_eq!(
        old["memory"]["content"],
        "The deploy key lives in vault path ops/deploy"
    );
    // Only the latest version is listed and searchable; the old one cannot be updated again.
    let listed = client
        .call("memory_list", json!({"namespace": "ops"}))
        .await
        .ok();
    let ids: Vec<_> = listed["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&new_id) && !ids.contains(&id));
    let hits = client
        .call(
            "memory_search",
            json!({"query": "vault", "namespace": "ops"}),
        )
        .await
        .ok();
    assert_eq!(
        hits["results"],
        json!([]),
        "the superseded text is no longer searchable"
    );
    let again = client
        .call("memory_update", json!({"id": id, "tags": ["x"]}))
        .await;
    assert_eq!(again.tool_code(), "INVALID_ARGUMENT");

    // Delete: a tombstone that hides the entry everywhere.
    let deleted = client
        .call("memory_delete", json!({"id": new_id}))
        .await
        .ok();
    assert_eq!(deleted["status"], "deleted");
    assert_eq!(
        client
            .call("memory_get", json!({"id": new_id}))
            .await
            .tool_code(),
        "NOT_FOUND"
    );
    let listed = client
        .call("memory_list", json!({"namespace": "ops"}))
        .await
        .ok();
    assert!(!listed.to_string().contains(&new_id));
    let hits = client
        .call(
            "memory_search",
            json!({"query": "deploy", "namespace": "ops"}),
        )
        .await
        .ok();
    assert_eq!(hits["results"], json!([]));
    assert_eq!(
        client
            .call("memory_delete", json!({"id": new_id}))
            .await
            .tool_code(),
        "NOT_FOUND"
    );
    assert_eq!(
        client
            .call("memory_update", json!({"id": new_id, "content": "x"}))
            .await
            .tool_code(),
        "NOT_FOUND"
    );
    // The row is kept as a tombstone for the operator.
    let status = dir.tamper().get(&new_id, Field::Status).text();
    assert_eq!(status, "deleted");
    client.close().await;
}

#[tokio::test]
async fn list_pages_with_an_opaque_cursor_and_time_filters() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(client.store(&format!("note number {i}")).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"limit": 3});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let page = client.call("memory_list", args).await.ok();
        let memories = page["memories"].as_array().unwrap();
        assert!(memories.len() <= 3);
        seen.extend(
            memories
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert!(!ids.contains(&c.to_string()), "cursor is not a raw id");
                cursor = Some(c.to_string());
            }
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");

    let all = client
        .call("memory_list", json!({"since": "2000-01-01T00:00:00Z"}))
        .await
        .ok();
    assert_eq!(all["memories"].as_array().unwrap().len(), 7);
    let none = client
        .call("memory_list", json!({"until": "2000-01-01T00:00:00Z"}))
        .await
        .ok();
    assert_eq!(none["memories"], json!([]));
    let future = client
        .call(
            "memory_search",
            json!({"query": "note", "since": "2999-01-01T00:00:00+02:00"}),
        )
        .await
        .ok();
    assert_eq!(future["results"], json!([]));
    let bad = client
        .call(
            "memory_list",
            json!({"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(bad.tool_code(), "INVALID_ARGUMENT");
    client.close().await;
}

#[tokio::test]
async fn search_syntax_is_plain_text_and_content_round_trips() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let tricky = [
        "'; DROP TABLE entries; --",
        "SELECT * FROM entries WHERE 1=1 OR \"x\" = 'y'",
        "Grüße, 東京, emoji 🦀🔐 and a zero-width\u{200b}joiner",
        "tabs\tand\nnewlines\r\nand \\backslashes\\ and \"quotes\"",
        "NEAR(a b) col:value -x a* ^start",
        "a NUL \u{0} inside and \u{1b}[31m an escape",
    ];
    let mut ids = Vec::new();
    for text in tricky {
        ids.push(client.store(text).await);
    }
    for (id, text) in ids.iter().zip(tricky) {
        let got = client.call("memory_get", json!({"id": id})).await.ok();
        assert_eq!(got["memory"]["content"], text, "byte-identical round trip");
    }
    let queries = [
        "\"",
        "\"\"",
        "*",
        "a*",
        "NEAR(",
        "NEAR(a b",
        "OR",
        "AND",
        "NOT",
        "a OR b",
        "-x",
        "col:",
        "content:DROP",
        "'; DROP TABLE entries; --",
        "(((",
        ")",
        "^",
        "{a b}",
        "\\",
        "🦀",
        "東京",
        "x\u{0}y",
        "'",
        "+",
        ":",
        "a AND",
        "NEAR",
        "\"unbalanced",
    ];
    for q in queries {
        match client.call("memory_search", json!({"query": q})).await {
            Outcome::Ok(v) => assert!(v["results"].is_array(), "{q}"),
            other => panic!("query {q:?} failed: {other:?}"),
        }
    }
    // The words are found as words.
    let hits = client
        .call("memory_search", json!({"query": "DROP"}))
        .await
        .ok();
    assert_eq!(hits["results"][0]["memory"]["content"], tricky[0]);
    let hits = client
        .call("memory_search", json!({"query": "🦀🔐"}))
        .await
        .ok();
    assert!(hits["results"].is_array());
    let hits = client
        .call("memory_search", json!({"query": "gruße"}))
        .await
        .ok();
    assert_eq!(
        hits["results"][0]["memory"]["content"], tricky[2],
        "diacritics folded"
    );
    // The table is still there and intact.
    assert_eq!(dir.row_count(), tricky.len() as i64);
    client.close().await;
}

#[tokio::test]
async fn search_puts_all_words_first_then_more_and_rarer_words_within_a_window() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let contents = |v: &serde_json::Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["memory"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    // Oldest first: an entry with both words, one that repeats a word, one in another
    // namespace, then more one-word entries than the window holds.
    let both = client.store("orchid basalt ledger").await;
    client.store("quartz quartz quartz quartz").await;
    client
        .call(
            "memory_store",
            json!({"content": "quartz in a quiet corner", "namespace": "corner"}),
        )
        .await
        .ok();
    let window = memwarden::store::SEARCH_WINDOW;
    for i in 0..window + 50 {
        client.store(&format!("orchid quartz filler {i}")).await;
    }
    client.store("basalt note").await;
    client.store("orchid quartz filler last").await;

    // Both words: the entry holding both comes first although hundreds of newer entries hold
    // one of them; then entries holding either, the rarer word's other entry before the newer
    // fillers, which come newest first.
    let hits = client
        .call(
            "memory_search",
            json!({"query": "basalt orchid", "limit": 5}),
        )
        .await
        .ok();
    let found = contents(&hits);
    assert_eq!(found.len(), 5);
    assert_eq!(found[0], "orchid basalt ledger", "{found:?}");
    assert_eq!(hits["results"][0]["memory"]["id"], both.as_str());
    assert_eq!(found[1], "basalt note", "{found:?}");
    assert_eq!(found[2], "orchid quartz filler last", "{found:?}");
    let matched: Vec<&str> = hits["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["matched"].as_str().unwrap())
        .collect();
    assert_eq!(matched, ["all", "some", "some", "some", "some"]);
    assert!(
        found[2..]
            .iter()
            .all(|c| c.starts_with("orchid quartz filler")),
        "no repeats: {found:?}"
    );

    // One word: every match holds every word, so they come newest first, reaching the oldest
    // match when nothing newer fills the page.
    let hits = client
        .call("memory_search", json!({"query": "quartz", "limit": 3}))
        .await
        .ok();
    let newest = [
        "orchid quartz filler last".to_string(),
        format!("orchid quartz filler {}", window + 49),
        format!("orchid quartz filler {}", window + 48),
    ];
    assert_eq!(contents(&hits), newest);
    let hits = client
        .call("memory_search", json!({"query": "ledger"}))
        .await
        .ok();
    assert_eq!(contents(&hits), ["orchid basalt ledger"]);
    // A namespace whose only match is older than hundreds of others still gets it.
    let hits = client
        .call(
            "memory_search",
            json!({"query": "quartz", "namespace": "corner"}),
        )
        .await
        .ok();
    assert_eq!(contents(&hits), ["quartz in a quiet corner"]);

    // Some words: only the newest `window` matches are ranked. The old entry holding the rare
    // "ledger" would rank first, but it is older than the window, which keeps the cost bounded;
    // how often a word repeats does not count, so equal entries come newest first.
    client.store("quartz quartz quartz vein").await;
    client.store("one quartz among several other words").await;
    let hits = client
        .call(
            "memory_search",
            json!({"query": "quartz ledger", "limit": 50}),
        )
        .await
        .ok();
    let found = contents(&hits);
    assert_eq!(found.len(), 50);
    assert_eq!(
        found[..2],
        [
            "one quartz among several other words",
            "quartz quartz quartz vein"
        ],
        "{found:?}"
    );
    assert!(
        !found.contains(&"orchid basalt ledger".to_string()),
        "older than the window"
    );
    // The window counts matches store-wide, so it widens for a scope it leaves empty.
    let hits = client
        .call(
            "memory_search",
            json!({"query": "quartz ledger", "namespace": "corner"}),
        )
        .await
        .ok();
    assert_eq!(contents(&hits), ["quartz in a quiet corner"]);
    // Within the window the rarer word weighs more.
    let hits = client
        .call(
            "memory_search",
            json!({"query": "quartz basalt", "limit": 3}),
        )
        .await
        .ok();
    assert_eq!(contents(&hits)[0], "basalt note");
    // The same word alone: newest first, so the newer one-quartz entry leads.
    let hits = client
        .call("memory_search", json!({"query": "quartz", "limit": 2}))
        .await
        .ok();
    assert_eq!(
        contents(&hits),
        [
            "one quartz among several other words",
            "quartz quartz quartz vein"
        ]
    );
    client.close().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let id = client.store("remember me across restarts").await;
    client.close().await;

    let client = dir.connect().await;
    let got = client.call("memory_get", json!({"id": id})).await.ok();
    assert_eq!(got["memory"]["content"], "remember me across restarts");
    let hits = client
        .call("memory_search", json!({"query": "restarts"}))
        .await
        .ok();
    assert_eq!(hits["results"].as_array().unwrap().len(), 1);
    client.close().await;
}

#[tokio::test]
async fn get_of_unknown_id_is_not_found() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let out = client
        .call(
            "memory_get",
            json!({"id": "01234567-89ab-7def-8123-456789abcdef"}),
        )
        .await;
    assert_eq!(out.tool_code(), "NOT_FOUND");
    client.close().await;
}
