//! Fault campaigns: corrupted database files and a full disk. Each ends with the server either
//! refusing clearly or serving only what verifies — never a panic, never a half-written row.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::TestDir;
use memwarden::store::testing::Tamper;
use serde_json::{Value, json};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs one scripted session; returns (exit code, stdout lines, stderr).
fn session(data: &Path, calls: &[Value]) -> (Option<i32>, Vec<Value>, String) {
    let mut child = Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut script = String::new();
    script.push_str(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"faults","version":"0"}}}).to_string());
    script.push('\n');
    script.push_str("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
    for (i, c) in calls.iter().enumerate() {
        let mut c = c.clone();
        c["jsonrpc"] = json!("2.0");
        c["id"] = json!(i + 1);
        c["method"] = json!("tools/call");
        script.push_str(&c.to_string());
        script.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("stdout is not protocol ({e}): {l}"))
        })
        .collect();
    (
        out.status.code(),
        lines,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn call(tool: &str, args: Value) -> Value {
    json!({"params": {"name": tool, "arguments": args}})
}

#[tokio::test]
async fn corruption_at_500_places_never_serves_a_bad_row_or_panics() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let mut pristine: HashMap<String, String> = HashMap::new();
    for i in 0..40 {
        let content = format!(
            "memory number {i} about {}",
            ["apples", "rivers", "engines", "violins"][i % 4]
        );
        let id = client.store(&content).await;
        pristine.insert(id, content);
    }
    client.close().await;
    let files: Vec<(&str, Vec<u8>)> = ["memory.db", "audit.db"]
        .iter()
        .map(|f| (*f, std::fs::read(dir.data().join(f)).unwrap()))
        .collect();
    let ids: Vec<String> = pristine.keys().cloned().collect();
    let mut rng = Rng(0xC0FF_EE00_1234_5678);
    let (mut refused, mut served, mut withheld) = (0, 0, 0u64);
    for round in 0..500 {
        // Fresh copies, then one fault in one of them.
        for (f, bytes) in &files {
            std::fs::write(dir.data().join(f), bytes).unwrap();
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.data().join(format!("{f}{side}")));
            }
        }
        let (name, bytes) = &files[round % 2];
        let mut bytes = bytes.clone();
        if rng.below(4) == 0 {
            bytes.truncate(rng.below(bytes.len() as u64) as usize);
        } else {
            let at = rng.below(bytes.len() as u64) as usize;
            for i in 0..(1 + rng.below(8) as usize) {
                if let Some(b) = bytes.get_mut(at + i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        std::fs::write(dir.data().join(name), &bytes).unwrap();

        let id = &ids[round % ids.len()];
        let (code, lines, stderr) = session(
            &dir.data(),
            &[
                call("memory_list", json!({"limit": 50})),
                call("memory_search", json!({"query": "memory apples rivers"})),
                call("memory_get", json!({"id": id})),
            ],
        );
        assert!(
            !stderr.contains("panicked"),
            "round {round}: panic\n{stderr}"
        );
        assert!(
            matches!(code, Some(0) | Some(2)),
            "round {round}: exit {code:?}\n{stderr}"
        );
        if code == Some(2) {
            assert!(
                stderr.contains("memwarden: error:"),
                "round {round}: refusal says why\n{stderr}"
            );
            refused += 1;
            continue;
        }
        served += 1;
        // Whatever is served is exactly what was stored.
        for line in &lines {
            let sc = &line["result"]["structuredContent"];
            withheld += sc["withheld"].as_u64().unwrap_or(0);
            let memories: Vec<&Value> = sc["memories"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let hits: Vec<&Value> = sc["results"]
                .as_array()
                .map(|a| a.iter().map(|h| &h["memory"]).collect())
                .unwrap_or_default();
            let got: Vec<&Value> = sc.get("memory").into_iter().collect();
            for m in memories.into_iter().chain(hits).chain(got) {
                let id = m["id"].as_str().unwrap();
                assert_eq!(m["verified"], true);
                assert_eq!(
                    Some(m["content"].as_str().unwrap()),
                    pristine.get(id).map(String::as_str),
                    "round {round}: served a row that differs from what was stored"
                );
            }
            if let Some(code) = sc["code"].as_str() {
                assert!(
                    ["INTEGRITY", "UNAVAILABLE", "NOT_FOUND"].contains(&code),
                    "round {round}: {line}\n{stderr}"
                );
            }
        }
    }
    eprintln!(
        "corruption campaign: 500 rounds, {refused} refused to start, {served} served, {withheld} rows withheld"
    );
    assert_eq!(refused + served, 500);
}

#[test]
fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    if memwarden::fsafe::current_uid() != 0 {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    }
    let dir = TestDir::new();
    let mnt = dir.tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs"])
        .arg(&mnt)
        .status();
    if !mounted.map(|s| s.success()).unwrap_or(false) {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let data = mnt.join("data");
    let out = Command::new(common::bin())
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let (code, lines, _) = session(
        &data,
        &[call(
            "memory_store",
            json!({"content": "before the disk filled"}),
        )],
    );
    assert_eq!(code, Some(0));
    let first = lines.last().unwrap()["result"]["structuredContent"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Fill the filesystem.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);

    let big = "x".repeat(8000);
    let (code, lines, stderr) = session(
        &data,
        &[
            call("memory_store", json!({"content": big})),
            call("memory_get", json!({"id": first})),
            call("memory_list", json!({})),
        ],
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    if code == Some(0) {
        let store = &lines[1]["result"]["structuredContent"];
        assert_eq!(store["code"], "UNAVAILABLE", "{store}");
    } else {
        assert_eq!(code, Some(2), "refused to start cleanly: {stderr}");
    }
    std::fs::remove_file(&filler).unwrap();

    // Space again: writes work, nothing half-written, everything verifies.
    let (code, lines, _) = session(
        &data,
        &[
            call("memory_store", json!({"content": "after the disk freed"})),
            call("memory_get", json!({"id": first})),
        ],
    );
    assert_eq!(code, Some(0));
    assert_eq!(lines[1]["result"]["isError"], false, "{}", lines[1]);
    assert_eq!(
        lines[2]["result"]["structuredContent"]["memory"]["content"],
        "before the disk filled"
    );
    let check = |args: &[&str]| {
        Command::new(common::bin())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .status()
            .unwrap()
            .success()
    };
    assert!(check(&["verify"]));
    assert!(check(&["audit", "verify"]));
    let tamper = Tamper::open(&data);
    assert_eq!(tamper.engine_check(), "ok");
    assert_eq!(tamper.count(), 2, "the refused store left nothing behind");
}

/// SQLite under a hard heap limit: errors, not crashes, and nothing half-written.
#[test]
fn sqlite_memory_pressure_gives_errors_not_crashes() {
    let dir = TestDir::new();
    dir.init();
    let mut args = dir.policy(
        "version = 1\n[storage]\nsqlite_heap_limit_bytes = 400000\n[principals.local]\n\
         tools = [\"memory_store\", \"memory_get\", \"memory_search\", \"memory_list\", \"memory_update\", \"memory_delete\"]\n\
         namespaces = { \"*\" = \"rw\" }\ndefault_namespace = \"default\"\n",
    );
    args.insert(0, "--data-dir".into());
    args.insert(1, dir.data().display().to_string());
    args.insert(0, "serve".into());
    let mut calls = Vec::new();
    for i in 0..60 {
        calls.push(call(
            "memory_store",
            json!({"content": format!("{i} {}", "many distinct words here ".repeat(500))}),
        ));
        calls.push(call(
            "memory_search",
            json!({"query": "many distinct words"}),
        ));
    }
    let mut child = Command::new(common::bin())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut script = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"heap","version":"0"}}}).to_string() + "\n";
    for (i, c) in calls.iter().enumerate() {
        let mut c = c.clone();
        c["jsonrpc"] = json!("2.0");
        c["id"] = json!(i + 1);
        c["method"] = json!("tools/call");
        script.push_str(&c.to_string());
        script.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(script.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(out.status.code(), Some(0) | Some(2)),
        "{:?}: {stderr}",
        out.status
    );
    let mut errors = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(code) = v["result"]["structuredContent"]["code"].as_str() {
            assert_eq!(code, "UNAVAILABLE", "{v}");
            errors += 1;
        }
    }
    eprintln!(
        "heap limit: {errors} calls refused as UNAVAILABLE, exit {:?}",
        out.status.code()
    );
    // Whatever was stored is whole and verifies.
    if dir.data().join("memory.db").exists() {
        assert!(dir.cli(&["verify"]).status.success());
        assert_eq!(dir.tamper().engine_check(), "ok");
    }
}
