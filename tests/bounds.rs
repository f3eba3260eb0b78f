//! Every bound in every schema: just inside is accepted, just outside is refused with -32602
//! naming the path and keyword, and nothing changes. Plus wrong types, unknown fields, unknown
//! tools and the byte limits the schemas cannot express.

mod common;

use common::{Outcome, TestDir};
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    tool: &'static str,
    inside: Value,
    outside: Value,
    /// Expected failing path; keyword checked when not empty.
    path: &'static str,
    keyword: &'static str,
}

fn s(n: usize) -> String {
    "a".repeat(n)
}

fn tags(n: usize) -> Value {
    json!((0..n).map(|i| format!("t{i}")).collect::<Vec<_>>())
}

fn nested(depth: usize) -> Value {
    // depth 1 is {"k": 1}; each level wraps one more object.
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "k": v });
    }
    v
}

fn object_with(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), json!(i))).collect())
}

const ID: &str = "01234567-89ab-7def-8123-456789abcdef";

fn cases(existing: &str) -> Vec<Case> {
    let mut v = vec![
        // memory_store
        Case {
            name: "content min",
            tool: "memory_store",
            inside: json!({"content": "a"}),
            outside: json!({"content": ""}),
            path: "/content",
            keyword: "minLength",
        },
        Case {
            name: "content max",
            tool: "memory_store",
            inside: json!({"content": s(16384)}),
            outside: json!({"content": s(16385)}),
            path: "/content",
            keyword: "maxLength",
        },
        Case {
            name: "content required",
            tool: "memory_store",
            inside: json!({"content": "a"}),
            outside: json!({"tags": ["a"]}),
            path: "/",
            keyword: "required",
        },
        Case {
            name: "namespace max",
            tool: "memory_store",
            inside: json!({"content": "a", "namespace": s(64)}),
            outside: json!({"content": "a", "namespace": s(65)}),
            path: "/namespace",
            keyword: "",
        },
        Case {
            name: "namespace pattern",
            tool: "memory_store",
            inside: json!({"content": "a", "namespace": "a.b-c_d"}),
            outside: json!({"content": "a", "namespace": "A"}),
            path: "/namespace",
            keyword: "pattern",
        },
        Case {
            name: "namespace leading dot",
            tool: "memory_store",
            inside: json!({"content": "a", "namespace": "0x"}),
            outside: json!({"content": "a", "namespace": ".x"}),
            path: "/namespace",
            keyword: "pattern",
        },
        Case {
            name: "namespace empty",
            tool: "memory_store",
            inside: json!({"content": "a", "namespace": "a"}),
            outside: json!({"content": "a", "namespace": ""}),
            path: "/namespace",
            keyword: "",
        },
        Case {
            name: "tags max items",
            tool: "memory_store",
            inside: json!({"content": "a", "tags": tags(16)}),
            outside: json!({"content": "a", "tags": tags(17)}),
            path: "/tags",
            keyword: "maxItems",
        },
        Case {
            name: "tags unique",
            tool: "memory_store",
            inside: json!({"content": "a", "tags": ["x", "y"]}),
            outside: json!({"content": "a", "tags": ["x", "x"]}),
            path: "/tags",
            keyword: "uniqueItems",
        },
        Case {
            name: "tag max length",
            tool: "memory_store",
            inside: json!({"content": "a", "tags": [s(64)]}),
            outside: json!({"content": "a", "tags": [s(65)]}),
            path: "/tags/0",
            keyword: "",
        },
        Case {
            name: "tag pattern",
            tool: "memory_store",
            inside: json!({"content": "a", "tags": ["a:b.c-d_e"]}),
            outside: json!({"content": "a", "tags": ["a b"]}),
            path: "/tags/0",
            keyword: "pattern",
        },
        Case {
            name: "metadata depth",
            tool: "memory_store",
            inside: json!({"content": "a", "metadata": nested(4)}),
            outside: json!({"content": "a", "metadata": nested(5)}),
            path: "",
            keyword: "",
        },
        Case {
            name: "metadata properties",
            tool: "memory_store",
            inside: json!({"content": "a", "metadata": object_with(32)}),
            outside: json!({"content": "a", "metadata": object_with(33)}),
            path: "/metadata",
            keyword: "maxProperties",
        },
        Case {
            name: "metadata key length",
            tool: "memory_store",
            inside: json!({"content": "a", "metadata": {s(64): 1}}),
            outside: json!({"content": "a", "metadata": {s(65): 1}}),
            path: "/metadata",
            keyword: "",
        },
        Case {
            name: "metadata string length",
            tool: "memory_store",
            inside: json!({"content": "a", "metadata": {"k": s(1024)}}),
            outside: json!({"content": "a", "metadata": {"k": s(1025)}}),
            path: "/metadata/k",
            keyword: "",
        },
        Case {
            name: "metadata array items",
            tool: "memory_store",
            inside: json!({"content": "a", "metadata": {"k": vec![1; 32]}}),
            outside: json!({"content": "a", "metadata": {"k": vec![1; 33]}}),
            path: "/metadata/k",
            keyword: "",
        },
        Case {
            name: "metadata type",
            tool: "memory_store",
            inside: json!({"content": "a", "metadata": {}}),
            outside: json!({"content": "a", "metadata": [1]}),
            path: "/metadata",
            keyword: "type",
        },
        // memory_get / memory_delete
        Case {
            name: "get id pattern",
            tool: "memory_get",
            inside: json!({"id": ID}),
            outside: json!({"id": ID.to_uppercase()}),
            path: "/id",
            keyword: "pattern",
        },
        Case {
            name: "get id length",
            tool: "memory_get",
            inside: json!({"id": ID}),
            outside: json!({"id": format!("{ID}0")}),
            path: "/id",
            keyword: "",
        },
        Case {
            name: "get id required",
            tool: "memory_get",
            inside: json!({"id": ID}),
            outside: json!({}),
            path: "/",
            keyword: "required",
        },
        Case {
            name: "delete id pattern",
            tool: "memory_delete",
            inside: json!({"id": ID}),
            outside: json!({"id": "../../etc/passwd-0000-0000-0000-0000"}),
            path: "/id",
            keyword: "",
        },
        // memory_search
        Case {
            name: "query min",
            tool: "memory_search",
            inside: json!({"query": "a"}),
            outside: json!({"query": ""}),
            path: "/query",
            keyword: "minLength",
        },
        Case {
            name: "query max",
            tool: "memory_search",
            inside: json!({"query": s(512)}),
            outside: json!({"query": s(513)}),
            path: "/query",
            keyword: "maxLength",
        },
        Case {
            name: "search limit min",
            tool: "memory_search",
            inside: json!({"query": "a", "limit": 1}),
            outside: json!({"query": "a", "limit": 0}),
            path: "/limit",
            keyword: "minimum",
        },
        Case {
            name: "search limit max",
            tool: "memory_search",
            inside: json!({"query": "a", "limit": 50}),
            outside: json!({"query": "a", "limit": 51}),
            path: "/limit",
            keyword: "maximum",
        },
        Case {
            name: "search limit integer",
            tool: "memory_search",
            inside: json!({"query": "a", "limit": 5.0}),
            outside: json!({"query": "a", "limit": 5.5}),
            path: "/limit",
            keyword: "type",
        },
        Case {
            name: "search since format",
            tool: "memory_search",
            inside: json!({"query": "a", "since": "2026-01-01T00:00:00Z"}),
            outside: json!({"query": "a", "since": "yesterday"}),
            path: "/since",
            keyword: "format",
        },
        Case {
            name: "search until max",
            tool: "memory_search",
            inside: json!({"query": "a", "until": "2026-01-01T00:00:00.123456789+01:00"}),
            outside: json!({"query": "a", "until": format!("2026-01-01T00:00:00.{}Z", "1".repeat(60))}),
            path: "/until",
            keyword: "",
        },
        Case {
            name: "search tags",
            tool: "memory_search",
            inside: json!({"query": "a", "tags": tags(16)}),
            outside: json!({"query": "a", "tags": tags(17)}),
            path: "/tags",
            keyword: "maxItems",
        },
        Case {
            name: "search namespace",
            tool: "memory_search",
            inside: json!({"query": "a", "namespace": s(64)}),
            outside: json!({"query": "a", "namespace": s(65)}),
            path: "/namespace",
            keyword: "",
        },
        // memory_list
        Case {
            name: "list limit max",
            tool: "memory_list",
            inside: json!({"limit": 50}),
            outside: json!({"limit": 51}),
            path: "/limit",
            keyword: "maximum",
        },
        Case {
            name: "list limit min",
            tool: "memory_list",
            inside: json!({"limit": 1}),
            outside: json!({"limit": 0}),
            path: "/limit",
            keyword: "minimum",
        },
        Case {
            name: "list cursor length",
            tool: "memory_list",
            inside: json!({"cursor": "0".repeat(32)}),
            outside: json!({"cursor": "0".repeat(33)}),
            path: "/cursor",
            keyword: "",
        },
        Case {
            name: "list cursor pattern",
            tool: "memory_list",
            inside: json!({"cursor": "f".repeat(32)}),
            outside: json!({"cursor": "g".repeat(32)}),
            path: "/cursor",
            keyword: "pattern",
        },
        Case {
            name: "list until format",
            tool: "memory_list",
            inside: json!({"until": "2026-02-28T23:59:59Z"}),
            outside: json!({"until": "2026-02-30T00:00:00Z"}),
            path: "/until",
            keyword: "format",
        },
        Case {
            name: "list tags",
            tool: "memory_list",
            inside: json!({"tags": [s(64)]}),
            outside: json!({"tags": [s(65)]}),
            path: "/tags/0",
            keyword: "",
        },
        // memory_update
        Case {
            name: "update needs a change",
            tool: "memory_update",
            inside: json!({"id": existing, "tags": ["x"]}),
            outside: json!({"id": existing}),
            path: "/",
            keyword: "anyOf",
        },
        Case {
            name: "update content max",
            tool: "memory_update",
            inside: json!({"id": ID, "content": s(16384)}),
            outside: json!({"id": ID, "content": s(16385)}),
            path: "/content",
            keyword: "maxLength",
        },
        Case {
            name: "update tags max",
            tool: "memory_update",
            inside: json!({"id": ID, "tags": tags(16)}),
            outside: json!({"id": ID, "tags": tags(17)}),
            path: "/tags",
            keyword: "maxItems",
        },
        Case {
            name: "update metadata depth",
            tool: "memory_update",
            inside: json!({"id": ID, "metadata": nested(4)}),
            outside: json!({"id": ID, "metadata": nested(5)}),
            path: "",
            keyword: "",
        },
        // wrong types and unknown fields
        Case {
            name: "content type",
            tool: "memory_store",
            inside: json!({"content": "5"}),
            outside: json!({"content": 5}),
            path: "/content",
            keyword: "type",
        },
        Case {
            name: "tags type",
            tool: "memory_store",
            inside: json!({"content": "a", "tags": ["x"]}),
            outside: json!({"content": "a", "tags": "x"}),
            path: "/tags",
            keyword: "type",
        },
        Case {
            name: "limit type",
            tool: "memory_list",
            inside: json!({"limit": 5}),
            outside: json!({"limit": "5"}),
            path: "/limit",
            keyword: "type",
        },
        Case {
            name: "id type",
            tool: "memory_get",
            inside: json!({"id": ID}),
            outside: json!({"id": 7}),
            path: "/id",
            keyword: "type",
        },
        Case {
            name: "query null",
            tool: "memory_search",
            inside: json!({"query": "x"}),
            outside: json!({"query": null}),
            path: "/query",
            keyword: "type",
        },
        Case {
            name: "unknown field store",
            tool: "memory_store",
            inside: json!({"content": "a"}),
            outside: json!({"content": "a", "principal": "root"}),
            path: "/",
            keyword: "additionalProperties",
        },
        Case {
            name: "unknown field get",
            tool: "memory_get",
            inside: json!({"id": ID}),
            outside: json!({"id": ID, "namespace": "x"}),
            path: "/",
            keyword: "additionalProperties",
        },
        Case {
            name: "unknown field list",
            tool: "memory_list",
            inside: json!({}),
            outside: json!({"session": "x"}),
            path: "/",
            keyword: "additionalProperties",
        },
        Case {
            name: "unknown field delete",
            tool: "memory_delete",
            inside: json!({"id": ID}),
            outside: json!({"id": ID, "hard": true}),
            path: "/",
            keyword: "additionalProperties",
        },
    ];
    v.shrink_to_fit();
    v
}

#[tokio::test]
async fn every_schema_bound_just_inside_and_just_outside() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let existing = client.store("an entry to update").await;
    for case in cases(&existing) {
        // Inside: accepted, or (for ids that do not exist) not found — never refused.
        let inside = client.call(case.tool, case.inside.clone()).await;
        let accepted = match &inside {
            Outcome::Ok(_) => true,
            Outcome::ToolError(v) => v["code"] == "NOT_FOUND",
            Outcome::Protocol(_) => false,
        };
        assert!(accepted, "{}: inside value refused: {inside:?}", case.name);
        let before = dir.row_count();
        let marker = case.outside.to_string();
        let err = client
            .call(case.tool, case.outside.clone())
            .await
            .invalid_params();
        let data = err.data.clone().expect("error data");
        assert_eq!(data["code"], "INVALID_ARGUMENT", "{}", case.name);
        assert_eq!(data["tool"], case.tool, "{}", case.name);
        if let Some(prefix) = case.path.strip_suffix("/k") {
            // A metadata key is the agent's text: the path describes it, never repeats it.
            let path = data["path"].as_str().unwrap();
            assert!(
                path.starts_with(&format!("{prefix}/<1 bytes #")),
                "{}: {err:?}",
                case.name
            );
        } else if !case.path.is_empty() {
            assert_eq!(data["path"], case.path, "{}: {err:?}", case.name);
        }
        if !case.keyword.is_empty() {
            assert_eq!(data["keyword"], case.keyword, "{}: {err:?}", case.name);
        }
        assert!(
            err.message.contains(data["path"].as_str().unwrap()),
            "{}: message names the path",
            case.name
        );
        // Long offending values are never echoed back.
        if marker.len() > 200 {
            assert!(
                err.message.len() < 200,
                "{}: message echoes input: {}",
                case.name,
                err.message
            );
        }
        assert_eq!(
            dir.row_count(),
            before,
            "{}: refused call changed the store",
            case.name
        );
    }
    client.close().await;
}

#[tokio::test]
async fn unknown_tool_and_missing_arguments_are_invalid_params() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let err = client
        .call("memory_drop_all", json!({}))
        .await
        .invalid_params();
    assert_eq!(err.data.unwrap()["code"], "INVALID_ARGUMENT");
    let err = client
        .call("memory_store", Value::Null)
        .await
        .invalid_params();
    assert_eq!(err.data.unwrap()["keyword"], "required");
    assert_eq!(dir.row_count(), 0);
    client.close().await;
}

#[tokio::test]
async fn byte_limits_beyond_the_schema_are_too_large() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    // 5461 three-byte characters = 16383 bytes: inside; 5462 = 16386 bytes: outside, although
    // far below the schema's 16384 characters.
    client.store(&"€".repeat(5461)).await;
    let before = dir.row_count();
    let out = client
        .call("memory_store", json!({"content": "€".repeat(5462)}))
        .await;
    assert_eq!(out.tool_code(), "TOO_LARGE");
    assert_eq!(dir.row_count(), before);

    // Metadata serialized to exactly 4096 bytes is accepted; 4097 is not.
    let meta = |total: usize| {
        let mut map = serde_json::Map::new();
        for i in 0..4 {
            map.insert(format!("k{i}"), json!("x".repeat(1000)));
        }
        let base = serde_json::to_string(&map).unwrap().len() + ",\"k4\":\"\"".len();
        map.insert("k4".into(), json!("x".repeat(total - base)));
        assert_eq!(serde_json::to_string(&map).unwrap().len(), total);
        Value::Object(map)
    };
    client
        .call(
            "memory_store",
            json!({"content": "m", "metadata": meta(4096)}),
        )
        .await
        .ok();
    let before = dir.row_count();
    let out = client
        .call(
            "memory_store",
            json!({"content": "m", "metadata": meta(4097)}),
        )
        .await;
    assert_eq!(out.tool_code(), "TOO_LARGE");
    let id = client.store("to update").await;
    let before_update = dir.row_count();
    assert_eq!(before_update, before + 1);
    let out = client
        .call("memory_update", json!({"id": id, "metadata": meta(4097)}))
        .await;
    assert_eq!(out.tool_code(), "TOO_LARGE");
    let out = client
        .call(
            "memory_update",
            json!({"id": id, "content": "€".repeat(5462)}),
        )
        .await;
    assert_eq!(out.tool_code(), "TOO_LARGE");
    assert_eq!(dir.row_count(), before_update);
    client.close().await;
}
