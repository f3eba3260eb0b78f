//! End-to-end benchmark: the real binary, driven over stdio by rmcp's MCP client, against the
//! floor (raw rusqlite insert + HMAC per row, same pragmas, one transaction per row) measured in
//! the same run. Run with `cargo bench --bench e2e`; `MEMWARDEN_BENCH_MAX=10000` caps the sizes.
//! Prints a table and writes `target/bench-e2e.json`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};
use sha2::Sha256;

type Client = RunningService<RoleClient, ()>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (
        common::percentile(&v, 0.5),
        common::percentile(&v, 0.95),
        common::percentile(&v, 0.99),
        mean,
    )
}

async fn spawn(data: &std::path::Path) -> Client {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_memwarden"));
    cmd.arg("serve").arg("--data-dir").arg(data);
    cmd.env("MEMWARDEN_LOG", "warn");
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    ().serve(transport).await.expect("initialize")
}

async fn call(client: &Client, tool: &str, args: Value) -> Value {
    let Value::Object(map) = args else {
        unreachable!()
    };
    let r = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(map))
        .await
        .expect("call");
    assert_ne!(
        r.is_error,
        Some(true),
        "{tool} failed: {:?}",
        r.structured_content
    );
    r.structured_content.expect("structured")
}

/// Raw rusqlite insert + HMAC-SHA256 per row, WAL + synchronous=FULL, one BEGIN IMMEDIATE
/// transaction per row: what the disk and the crypto allow before any protocol work.
///
/// With `same_schema`, the rows go into memwarden's own schema (indexes and FTS5 triggers
/// included), which separates storage cost from protocol cost.
fn floor(rows: usize, vocab: &[String], same_schema: bool, with_audit: bool) -> (f64, Vec<f64>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("floor.db");
    if same_schema {
        let keys = memwarden::store::keyring::Keyring::generate()
            .unwrap()
            .entry;
        memwarden::store::Store::open(&path, keys, Default::default()).unwrap();
    }
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    conn.execute_batch("PRAGMA synchronous=FULL;").unwrap();
    if !same_schema {
        conn.execute_batch(
            "CREATE TABLE entries (id TEXT PRIMARY KEY, namespace TEXT, content TEXT NOT NULL,
             tags TEXT, metadata TEXT, status TEXT, supersedes TEXT, principal TEXT,
             session_id TEXT, created_at INTEGER NOT NULL, updated_at INTEGER,
             content_sha256 BLOB, key_id TEXT, mac BLOB NOT NULL);",
        )
        .unwrap();
    }
    let mut audit = with_audit.then(|| {
        let a = rusqlite::Connection::open(dir.path().join("floor-audit.db")).unwrap();
        let _: String = a
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        a.execute_batch(
            "PRAGMA synchronous=FULL;
             CREATE TABLE events (seq INTEGER PRIMARY KEY, ts TEXT, kind TEXT, detail TEXT,
             prev_hash TEXT, hash TEXT, mac TEXT);",
        )
        .unwrap();
        a
    });
    let mut rng = common::Rng::new(1);
    let key = [7u8; 32];
    let mut lat = Vec::with_capacity(rows);
    let start = Instant::now();
    for i in 0..rows {
        let t = Instant::now();
        let content = common::sentence(&mut rng, vocab, 60);
        let id = format!("{i:036}");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(id.as_bytes());
        mac.update(content.as_bytes());
        let mac = mac.finalize().into_bytes();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.prepare_cached(
            "INSERT INTO entries (id, namespace, content, tags, metadata, status, supersedes, principal,
             session_id, created_at, updated_at, content_sha256, key_id, mac)
             VALUES (?1, 'default', ?2, '[]', NULL, 'active', NULL, 'local', 's', ?3, ?3, ?4, 'e1', ?5)",
        )
        .unwrap()
        .execute(rusqlite::params![id, content, i as i64, &mac[..], &mac[..]])
        .unwrap();
        if let Some(a) = audit.as_mut() {
            // One audit-style append: its own transaction, chained hash, MAC.
            let atx = a
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            let prev: String = atx
                .query_row("SELECT coalesce(max(hash), '') FROM events", [], |r| {
                    r.get(0)
                })
                .unwrap();
            let hash = <Sha256 as sha2::Digest>::digest(format!("{prev}{id}"));
            let mut amac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            amac.update(&hash);
            atx.prepare_cached(
                "INSERT INTO events (ts, kind, detail, prev_hash, hash, mac) VALUES ('t', 'call', ?1, ?2, ?3, ?4)",
            )
            .unwrap()
            .execute(rusqlite::params![
                format!("{{\"created\":\"{id}\"}}"),
                prev,
                hex::encode(hash),
                hex::encode(amac.finalize().into_bytes())
            ])
            .unwrap();
            atx.commit().unwrap();
        }
        tx.commit().unwrap();
        lat.push(ms(t.elapsed()));
    }
    (rows as f64 / start.elapsed().as_secs_f64(), lat)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test discovery: nothing to list.
    }
    let max: usize = std::env::var("MEMWARDEN_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let sizes: Vec<usize> = [1_000, 10_000, 100_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect();
    let vocab = common::vocabulary(5000);
    let mut report = serde_json::Map::new();

    // The floor, first, in the same run.
    let (floor_rate, floor_lat) = floor(5_000, &vocab, false, false);
    let (fp50, _, fp99, _) = summary(floor_lat);
    println!(
        "floor (rusqlite insert + HMAC, WAL, FULL, 1 tx/row): {floor_rate:.0} rows/s, p50 {fp50:.3} ms, p99 {fp99:.3} ms"
    );
    report.insert(
        "floor".into(),
        json!({"rows_per_s": floor_rate, "p50_ms": fp50, "p99_ms": fp99}),
    );
    let (schema_rate, schema_lat) = floor(5_000, &vocab, true, false);
    let (xp50, _, xp99, _) = summary(schema_lat);
    println!(
        "floor, memwarden's schema (indexes + FTS5): {schema_rate:.0} rows/s, p50 {xp50:.3} ms, p99 {xp99:.3} ms"
    );
    report.insert(
        "floor_same_schema".into(),
        json!({"rows_per_s": schema_rate, "p50_ms": xp50, "p99_ms": xp99}),
    );

    let (audit_floor_rate, audit_floor_lat) = floor(5_000, &vocab, false, true);
    let (ap50, _, ap99, _) = summary(audit_floor_lat);
    println!(
        "floor + one audit-style insert (2 DBs, FULL): {audit_floor_rate:.0} rows/s, p50 {ap50:.3} ms, p99 {ap99:.3} ms"
    );
    report.insert(
        "floor_with_audit".into(),
        json!({"rows_per_s": audit_floor_rate, "p50_ms": ap50, "p99_ms": ap99}),
    );
    // The audit append alone, as the server does it (same code, same pragmas).
    let append_p50 = {
        let dir = tempfile::tempdir().unwrap();
        let keys = memwarden::store::keyring::Keyring::generate()
            .unwrap()
            .audit;
        let mut log = memwarden::audit::AuditLog::open(
            &dir.path().join("audit.db"),
            keys,
            Duration::from_secs(10),
        )
        .unwrap();
        let mut lat = Vec::new();
        for i in 0..3000 {
            let event = memwarden::audit::NewEvent::new(
                memwarden::audit::Kind::Call,
                json!({"created": format!("{i:036}"), "args_sha256": "0".repeat(64), "duration_us": 100}),
            );
            let t = Instant::now();
            log.append(&event, 1_764_000_000_000 + i).unwrap();
            lat.push(ms(t.elapsed()));
        }
        summary(lat).0
    };
    println!("audit append alone (FULL): p50 {append_p50:.3} ms");

    // Cold start: spawn to initialize answered, on an initialised data dir.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    spawn(&data).await.cancel().await.ok();
    let mut cold = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let c = spawn(&data).await;
        cold.push(ms(t.elapsed()));
        c.cancel().await.ok();
    }
    let (cp50, cp95, _, _) = summary(cold);
    println!("cold start (spawn → initialized): p50 {cp50:.1} ms, p95 {cp95:.1} ms");
    report.insert("cold_start".into(), json!({"p50_ms": cp50, "p95_ms": cp95}));

    // One session storing up to each size, measuring every call.
    let client = spawn(&data).await;
    let mut rng = common::Rng::new(2);
    let mut all_lat = Vec::new();
    let mut ids = Vec::new();
    let mut stored = 0usize;
    let mut rows = Vec::new();
    println!(
        "\n| entries | stores/s | store p50 ms | store p99 ms | get p50 ms | search p50 ms | search p95 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let seg_start = Instant::now();
        let mut seg = Vec::new();
        while stored < n {
            let content = common::sentence(&mut rng, &vocab, 60);
            let t = Instant::now();
            let out = call(
                &client,
                "memory_store",
                json!({"content": content, "tags": [format!("t{}", stored % 16)]}),
            )
            .await;
            let l = ms(t.elapsed());
            seg.push(l);
            all_lat.push(l);
            if stored.is_multiple_of(97) {
                ids.push(out["id"].as_str().unwrap().to_string());
            }
            stored += 1;
        }
        let rate = seg.len() as f64 / seg_start.elapsed().as_secs_f64();
        let (sp50, _, sp99, _) = summary(seg);
        let mut gets = Vec::new();
        for i in 0..200 {
            let id = &ids[(i * 7919) % ids.len()];
            let t = Instant::now();
            call(&client, "memory_get", json!({"id": id})).await;
            gets.push(ms(t.elapsed()));
        }
        let mut searches = Vec::new();
        for _ in 0..200 {
            let q = format!(
                "{} {}",
                vocab[rng.below(vocab.len())],
                vocab[rng.below(vocab.len())]
            );
            let t = Instant::now();
            call(&client, "memory_search", json!({"query": q})).await;
            searches.push(ms(t.elapsed()));
        }
        let (gp50, _, _, _) = summary(gets);
        let (qp50, qp95, _, _) = summary(searches);
        println!("| {n} | {rate:.0} | {sp50:.3} | {sp99:.3} | {gp50:.3} | {qp50:.3} | {qp95:.3} |");
        rows.push(
            json!({"entries": n, "stores_per_s": rate, "store_p50_ms": sp50, "store_p99_ms": sp99,
                         "get_p50_ms": gp50, "search_p50_ms": qp50, "search_p95_ms": qp95}),
        );
    }
    client.cancel().await.ok();
    let tenth = all_lat.len() / 10;
    let (_, _, _, first) = summary(all_lat[..tenth].to_vec());
    let (_, _, _, last) = summary(all_lat[all_lat.len() - tenth..].to_vec());
    let db_bytes = std::fs::metadata(data.join("memory.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "\nstore latency, mean of last 10% vs first 10%: {last:.3} / {first:.3} ms = {:.2}x",
        last / first
    );
    println!(
        "memory.db: {:.1} MiB, {:.0} bytes/entry",
        db_bytes as f64 / 1048576.0,
        db_bytes as f64 / stored as f64
    );
    let best = rows
        .iter()
        .map(|r| r["stores_per_s"].as_f64().unwrap())
        .fold(0.0, f64::max);
    println!(
        "end-to-end stores/s vs floor: {:.0}%; vs floor with memwarden's schema: {:.0}%; vs floor + audit insert: {:.0}%",
        100.0 * best / floor_rate,
        100.0 * best / schema_rate,
        100.0 * best / audit_floor_rate
    );
    let (store_p50, get_p50) = (
        rows[0]["store_p50_ms"].as_f64().unwrap(),
        rows[0]["get_p50_ms"].as_f64().unwrap(),
    );
    println!(
        "audit append share at {} entries: {:.0}% of a store call, {:.0}% of a get call",
        sizes[0],
        100.0 * append_p50 / store_p50,
        100.0 * append_p50 / get_p50
    );
    report.insert("audit_append_p50_ms".into(), json!(append_p50));
    report.insert("e2e".into(), Value::Array(rows));
    report.insert("flatness_last_over_first".into(), json!(last / first));
    report.insert(
        "db_bytes_per_entry".into(),
        json!(db_bytes as f64 / stored as f64),
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-e2e.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .ok();
}
