//! kill -9 at random moments during a stream of stores: every acknowledged store survives with
//! its audit event, both databases stay intact, and both verifiers pass.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestDir;
use serde_json::{Value, json};

/// 50 by default; `.ci/run` sets MEMWARDEN_KILLS=200 for the full campaign.
fn kills() -> usize {
    std::env::var("MEMWARDEN_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

/// Independent campaigns, each on its own data dir, run side by side: a round mostly waits (for
/// the server to start, for the random moment), so four at once take a quarter of the time.
const CAMPAIGNS: usize = 4;

#[test]
fn kill_9_during_stores_loses_nothing_acknowledged() {
    let kills = kills();
    let rounds = kills.div_ceil(CAMPAIGNS);
    let campaigns: Vec<_> = (0..CAMPAIGNS as u64)
        .map(|c| std::thread::spawn(move || campaign(rounds, 0x9e37_79b9_7f4a_7c15u64 ^ (c << 32))))
        .collect();
    let mut total = 0;
    for c in campaigns {
        let (dir, acknowledged) = c.join().unwrap();
        assert!(
            acknowledged.len() > rounds,
            "the stream made progress ({} acks in {rounds} rounds)",
            acknowledged.len()
        );
        check_survivors(&dir, &acknowledged);
        total += acknowledged.len();
    }
    println!(
        "{} kills, {total} acknowledged stores all present and audited",
        rounds * CAMPAIGNS
    );
}

/// `rounds` servers on one fresh data dir, each killed at a random moment of its stream of
/// stores; returns the dir and every store a server acknowledged before it died.
fn campaign(rounds: usize, mut seed: u64) -> (TestDir, Vec<String>) {
    let dir = TestDir::new();
    dir.init();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..rounds {
        let mut child = dir
            .command(&["serve"])
            .env("MEMWARDEN_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let reader = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // The first line answers initialize: the stores start now.
                    let _ = ready_tx.send(());
                    let v: Value = serde_json::from_str(&line).unwrap();
                    if let Some(id) = v["result"]["structuredContent"]["id"].as_str()
                        && v["result"]["isError"] == false
                    {
                        acks.lock().unwrap().push(id.to_string());
                    }
                }
            })
        };
        // Handshake, then a stream of stores written without waiting for replies.
        let mut lines = String::new();
        lines.push_str(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"crash","version":"0"}}}).to_string());
        lines.push('\n');
        lines.push_str("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n");
        for i in 0..120 {
            lines.push_str(&json!({"jsonrpc":"2.0","id":i + 1,"method":"tools/call","params":{"name":"memory_store","arguments":{"content": format!("round {round} store {i}")}}}).to_string());
            lines.push('\n');
        }
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(lines.as_bytes());
            let _ = stdin.flush();
            stdin
        });
        // A random moment: from before the first store to well into the stream, counted from
        // the handshake's answer (start-up time varies with the build and the machine's load).
        let _ = ready.recv_timeout(Duration::from_secs(10));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 200_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let _ = writer.join();
        reader.join().unwrap();
        acknowledged.extend(acks.lock().unwrap().drain(..));
    }
    (dir, acknowledged)
}

/// Every acknowledged store is present once, with its audit event; both databases pass their
/// engine's integrity check and both verifiers pass.
fn check_survivors(dir: &TestDir, acknowledged: &[String]) {
    let tamper = dir.tamper();
    let stored = tamper.ids();
    for id in acknowledged {
        let n = stored.iter().filter(|s| *s == id).count();
        assert_eq!(n, 1, "acknowledged store {id} lost");
    }
    let audit = rusqlite::Connection::open(dir.audit_db()).unwrap();
    for id in acknowledged {
        let n: i64 = audit
            .query_row("SELECT count(*) FROM events WHERE kind = 'call' AND json_extract(detail, '$.created') = ?1", [id], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "acknowledged store {id} has no audit event");
    }
    assert_eq!(tamper.engine_check(), "ok");
    let check: String = audit
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(tamper);
    drop(audit);
    let out = dir.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = dir.cli(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
