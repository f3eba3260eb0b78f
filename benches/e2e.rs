//! End-to-end benchmark: the real binary, driven over stdio by rmcp's MCP client, against the
//! floor (raw rusqlite insert + HMAC per row, same pragmas, one transaction per row) measured in
//! the same run, at 1k, 10k, 100k and 1M stored entries, every entry stored through MCP.
//!
//! When `npm` is on PATH, the reference MCP memory server (`@modelcontextprotocol/server-memory`,
//! a pinned version installed under `target/`) runs through the same client at 1k and 10k.
//!
//! Run with `cargo bench --bench e2e` (about 20 minutes on 2 cores). `MEMWARDEN_BENCH_MAX=100000`
//! caps the sizes; `MEMWARDEN_BENCH_REFERENCE=0` skips the reference server;
//! `MEMWARDEN_BENCH_CASE=postgres` runs the PostgreSQL case instead (see `postgres/`). Prints tables and a
//! verdict per target, and writes `target/bench-e2e.json`.

mod common;
mod multitenant;
mod postgres;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use rmcp::ServiceExt;
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

/// A server under test over stdio, with its process id for reading its peak RSS.
struct Server {
    client: Client,
    pid: u32,
}

async fn spawn_command(cmd: tokio::process::Command) -> Server {
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = transport.id().expect("pid");
    let client = ().serve(transport).await.expect("initialize");
    Server { client, pid }
}

async fn spawn(data: &Path) -> Server {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_memwarden"));
    cmd.arg("serve").arg("--data-dir").arg(data);
    cmd.env("MEMWARDEN_LOG", "warn");
    spawn_command(cmd).await
}

/// Peak resident set of a live process, in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Bytes of a SQLite database with its WAL.
fn db_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path.as_os_str(), wal.as_os_str()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

async fn call(client: &Client, tool: &str, args: Value) -> Value {
    common::call_tool(client, tool, args)
        .await
        .structured_content
        .expect("structured")
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
        let keys = memwarden::keys::Keyring::generate().unwrap().entry;
        memwarden::store::Store::open(&path, keys, Default::default()).unwrap();
    }
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    if same_schema {
        // The namespace-qualified index's triggers call it (migration 5).
        memwarden::store::sqlite::scoped::register(&conn).unwrap();
    }
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

/// Who answers: memwarden's tools, or the reference server's knowledge-graph tools (one entity
/// per memory, its content the one observation).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Memwarden,
    Reference,
}

impl Kind {
    /// Stores `content`, returning what `get` takes.
    async fn store(self, client: &Client, n: usize, content: String) -> String {
        match self {
            Kind::Memwarden => {
                let out = call(
                    client,
                    "memory_store",
                    json!({"content": content, "tags": [format!("t{}", n % 16)]}),
                )
                .await;
                out["id"].as_str().unwrap().to_string()
            }
            Kind::Reference => {
                let name = format!("memory-{n}");
                common::call_tool(
                    client,
                    "create_entities",
                    json!({"entities": [{"name": name, "entityType": "memory", "observations": [content]}]}),
                )
                .await;
                name
            }
        }
    }

    async fn get(self, client: &Client, id: &str) {
        match self {
            Kind::Memwarden => call(client, "memory_get", json!({"id": id})).await,
            Kind::Reference => {
                common::call_tool(client, "open_nodes", json!({"names": [id]})).await;
                Value::Null
            }
        };
    }

    async fn search(self, client: &Client, query: &str) {
        match self {
            Kind::Memwarden => call(client, "memory_search", json!({"query": query})).await,
            Kind::Reference => {
                common::call_tool(client, "search_nodes", json!({"query": query})).await;
                Value::Null
            }
        };
    }
}

/// Get and search latencies in one page-cache state.
#[derive(Clone, Copy)]
struct Reads {
    get_p50: f64,
    search_p50: f64,
    search_p95: f64,
}

impl Reads {
    const UNMEASURED: Self = Self {
        get_p50: f64::NAN,
        search_p50: f64::NAN,
        search_p95: f64::NAN,
    };

    fn json(&self) -> Value {
        json!({"get_p50_ms": self.get_p50, "search_p50_ms": self.search_p50,
               "search_p95_ms": self.search_p95})
    }
}

/// One row of the results: the server at `entries` stored entries.
struct Row {
    entries: usize,
    stores_per_s: f64,
    store_p50: f64,
    store_p99: f64,
    /// With the data files in the page cache.
    warm: Reads,
    /// Right after the page cache was dropped: every page not in the server's own SQLite cache
    /// comes from disk.
    cold: Reads,
    cold_p50: f64,
    peak_rss_mib: f64,
    bytes_per_entry: f64,
}

impl Row {
    fn print_header() {
        println!(
            "| entries | stores/s | store p50 ms | store p99 ms | get p50 ms | search p50 ms | search p95 ms | cold cache: get p50 ms | search p50 ms | search p95 ms | cold start ms | peak RSS MiB | bytes/entry |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }

    fn print(&self) {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} | {:.0} |",
            self.entries,
            self.stores_per_s,
            self.store_p50,
            self.store_p99,
            self.warm.get_p50,
            self.warm.search_p50,
            self.warm.search_p95,
            self.cold.get_p50,
            self.cold.search_p50,
            self.cold.search_p95,
            self.cold_p50,
            self.peak_rss_mib,
            self.bytes_per_entry
        );
    }

    fn json(&self) -> Value {
        json!({"entries": self.entries, "stores_per_s": self.stores_per_s,
               "store_p50_ms": self.store_p50, "store_p99_ms": self.store_p99,
               "warm_cache": self.warm.json(), "cold_cache": self.cold.json(),
               "cold_start_p50_ms": self.cold_p50,
               "peak_rss_mib": self.peak_rss_mib, "bytes_per_entry": self.bytes_per_entry})
    }
}

/// Reads every file through the page cache, so the next calls find it there: what a server whose
/// RAM holds its data sees. Without this the state of the cache would depend on the machine
/// (this VM, for one, pages out file data idle for a minute).
fn warm_page_cache(files: &[PathBuf]) {
    for f in files {
        if let Ok(mut file) = std::fs::File::open(f) {
            std::io::copy(&mut file, &mut std::io::sink()).ok();
        }
    }
}

/// Writes dirty pages back and drops the page cache (root only): the worst case, as for a
/// service whose data is far larger than its memory limit. `false` when not permitted.
fn drop_page_cache() -> bool {
    std::process::Command::new("sync").status().ok();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// One get per query, of ids spread over everything stored, then one two-word search per query.
async fn measure_reads(
    kind: Kind,
    client: &Client,
    ids: &[String],
    queries: &[String],
    before_each: &dyn Fn(),
) -> Reads {
    before_each();
    let mut gets = Vec::new();
    for i in 0..queries.len() {
        let id = &ids[(i * 7919) % ids.len()];
        let t = Instant::now();
        kind.get(client, id).await;
        gets.push(ms(t.elapsed()));
    }
    before_each();
    let mut searches = Vec::new();
    for q in queries {
        let t = Instant::now();
        kind.search(client, q).await;
        searches.push(ms(t.elapsed()));
    }
    let (search_p50, search_p95, _, _) = summary(searches);
    Reads {
        get_p50: summary(gets).0,
        search_p50,
        search_p95,
    }
}

/// Grows one server session to each size in turn, every entry stored through MCP, and measures
/// at each size. `start` spawns a server on the same data; `files` lists its data files.
async fn grow<F, Fut>(
    kind: Kind,
    sizes: &[usize],
    vocab: &[String],
    start: F,
    files: &dyn Fn() -> Vec<PathBuf>,
) -> (Vec<Row>, Vec<f64>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Server>,
{
    let server = start().await;
    let mut rng = common::Rng::new(2);
    let mut all_lat = Vec::new();
    let mut ids = Vec::new();
    let mut stored = 0usize;
    let mut rows = Vec::new();
    Row::print_header();
    for &n in sizes {
        let seg_start = Instant::now();
        let mut seg = Vec::new();
        while stored < n {
            let content = common::sentence(&mut rng, vocab, 60);
            let t = Instant::now();
            let id = kind.store(&server.client, stored, content).await;
            let l = ms(t.elapsed());
            seg.push(l);
            all_lat.push(l);
            if stored.is_multiple_of(97) {
                ids.push(id);
            }
            stored += 1;
        }
        let stores_per_s = seg.len() as f64 / seg_start.elapsed().as_secs_f64();
        let (store_p50, _, store_p99, _) = summary(seg);
        let mut queries = |count: usize| -> Vec<String> {
            (0..count)
                .map(|_| {
                    let a = &vocab[rng.below(vocab.len())];
                    format!("{a} {}", vocab[rng.below(vocab.len())])
                })
                .collect()
        };
        // A p95 over 1000 calls, warm; the cold pass is shorter, since the cache it starts
        // without fills as it goes.
        let (warm_queries, cold_queries) = (queries(1000), queries(200));
        let warm = measure_reads(kind, &server.client, &ids, &warm_queries, &|| {
            warm_page_cache(&files())
        })
        .await;
        // Other ids than the warm pass, so the server's own cache does not answer them.
        let cold_ids: Vec<String> = ids.iter().rev().cloned().collect();
        let cold = if drop_page_cache() {
            let drop = || {
                drop_page_cache();
            };
            measure_reads(kind, &server.client, &cold_ids, &cold_queries, &drop).await
        } else {
            Reads::UNMEASURED
        };
        // Cold start at this size: a second server on the same data, spawn → initialized.
        let mut cold_start = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let s = start().await;
            cold_start.push(ms(t.elapsed()));
            s.client.cancel().await.ok();
        }
        let row = Row {
            entries: n,
            stores_per_s,
            store_p50,
            store_p99,
            warm,
            cold,
            cold_p50: summary(cold_start).0,
            peak_rss_mib: peak_rss_mib(server.pid),
            bytes_per_entry: files()
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum::<u64>() as f64
                / stored as f64,
        };
        row.print();
        rows.push(row);
    }
    server.client.cancel().await.ok();
    (rows, all_lat)
}

/// Installs the pinned reference server under `target/` with npm; `None` when npm is missing or
/// the registry is out of reach.
fn reference_server() -> Option<std::path::PathBuf> {
    const PACKAGE: &str = "@modelcontextprotocol/server-memory@2026.8.31";
    if std::env::var("MEMWARDEN_BENCH_REFERENCE").as_deref() == Ok("0") {
        return None;
    }
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/reference");
    let entry = prefix.join("node_modules/@modelcontextprotocol/server-memory/dist/index.js");
    if !entry.exists() {
        let ok = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(PACKAGE)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!(
                "\nreference server: npm install of {PACKAGE} failed or npm is missing; skipped"
            );
            return None;
        }
    }
    println!("\nreference server: {PACKAGE} (node), same client, same workload");
    Some(entry)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test discovery: nothing to list.
    }
    if std::env::var("MEMWARDEN_BENCH_CASE").as_deref() == Ok("multitenant") {
        let total = std::env::var("MEMWARDEN_BENCH_MT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let rows = multitenant::run(total).await;
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-multitenant.json");
        std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).ok();
        return;
    }
    if std::env::var("MEMWARDEN_BENCH_CASE").as_deref() == Ok("postgres") {
        let report = postgres::run().await;
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-postgres.json");
        std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).ok();
        return;
    }
    let max: usize = std::env::var("MEMWARDEN_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let sizes: Vec<usize> = [1_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n <= max)
        .collect();
    let vocab = common::vocabulary(5000);
    let mut report = serde_json::Map::new();

    // The floors, first, in the same run.
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
        let keys = memwarden::keys::Keyring::generate().unwrap().audit;
        let mut log = memwarden::audit::AuditLog::open(&dir.path().join("audit.db"), keys).unwrap();
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
    report.insert("audit_append_p50_ms".into(), json!(append_p50));

    // memwarden end to end: an initialised data dir, then one session growing it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    spawn(&data).await.client.cancel().await.ok();
    println!("\nmemwarden end to end (stdio, rmcp client, built-in policy, audit on)\n");
    let (rows, all_lat) = grow(Kind::Memwarden, &sizes, &vocab, || spawn(&data), &|| {
        ["memory.db", "memory.db-wal", "audit.db", "audit.db-wal"]
            .iter()
            .map(|f| data.join(f))
            .collect()
    })
    .await;
    let memory_db = db_bytes(&data.join("memory.db")) as f64;
    let audit_db = db_bytes(&data.join("audit.db")) as f64;
    let stored = *sizes.last().unwrap() as f64;
    println!(
        "bytes/entry above: memory.db + audit.db; memory.db alone {:.0}, audit.db alone {:.0}",
        memory_db / stored,
        audit_db / stored
    );
    let tenth = all_lat.len() / 10;
    let (_, _, _, first) = summary(all_lat[..tenth].to_vec());
    let (_, _, _, last) = summary(all_lat[all_lat.len() - tenth..].to_vec());
    println!(
        "store latency, mean of the last 10% of stores vs the first 10%: {last:.3} / {first:.3} ms = {:.2}x",
        last / first
    );
    report.insert(
        "e2e".into(),
        Value::Array(rows.iter().map(Row::json).collect()),
    );
    report.insert("flatness_last_over_first".into(), json!(last / first));
    report.insert(
        "memory_db_bytes_per_entry".into(),
        json!(memory_db / stored),
    );
    report.insert("audit_db_bytes_per_entry".into(), json!(audit_db / stored));

    // The reference server through the same client, at 1k and 10k.
    let ref_sizes: Vec<usize> = sizes.iter().copied().filter(|&n| n <= 10_000).collect();
    if let Some(entry) = reference_server() {
        let rdir = tempfile::tempdir().unwrap();
        let file = rdir.path().join("memory.jsonl");
        println!();
        let (ref_rows, _) = grow(
            Kind::Reference,
            &ref_sizes,
            &vocab,
            || {
                let mut cmd = tokio::process::Command::new("node");
                cmd.arg(&entry).env("MEMORY_FILE_PATH", &file);
                spawn_command(cmd)
            },
            &|| vec![file.clone()],
        )
        .await;
        println!(
            "(the reference server keeps one JSONL file, rewritten on every write without fsync, no audit log; its search is a substring scan)"
        );
        report.insert(
            "reference".into(),
            Value::Array(ref_rows.iter().map(Row::json).collect()),
        );
    }

    // The targets, judged on this run.
    let best = rows.iter().map(|r| r.stores_per_s).fold(0.0, f64::max);
    let worst = rows
        .iter()
        .map(|r| r.stores_per_s)
        .fold(f64::INFINITY, f64::min);
    let (small, large) = (&rows[0], rows.last().unwrap());
    println!("\ntargets ({} → {} entries):", small.entries, large.entries);
    let share = 100.0 * worst / audit_floor_rate;
    println!(
        "  store throughput ≥ 50% of the floor (insert + HMAC + audit insert): slowest size {share:.0}%, best {:.0}% — {}",
        100.0 * best / audit_floor_rate,
        verdict(share >= 50.0)
    );
    println!(
        "    (against the bare floor without the audit insert: {:.0}%; against the floor in memwarden's schema: {:.0}%)",
        100.0 * best / floor_rate,
        100.0 * best / schema_rate
    );
    // Flat means every size against the smallest, not only the largest: the worst one counts.
    let worst = |f: &dyn Fn(&Row) -> f64| -> (f64, usize) {
        rows.iter()
            .map(|r| (f(r) / f(small), r.entries))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
    };
    let flat = |what: &str, (ratio, at): (f64, usize)| {
        println!(
            "  {what} flat within 1.5x: worst {ratio:.2}x (at {at}) — {}",
            verdict(ratio <= 1.5)
        );
    };
    flat("store p50", worst(&|r| r.store_p50));
    // Reads are judged with the data in the page cache, where a server in use keeps its hot
    // pages. With the cache dropped every size pays disk reads in proportion to its B-tree
    // depth and FTS5 segments, which no on-disk index keeps flat from a store that fits in a
    // few reads to 1.7 GB: reported, not judged.
    let warm_worst = |f: &dyn Fn(&Reads) -> f64| worst(&|r| f(&r.warm));
    flat("get p50", warm_worst(&|r| r.get_p50));
    flat("search p95", warm_worst(&|r| r.search_p95));
    println!(
        "  search p95 < 10 ms at {}: {:.2} ms — {}",
        large.entries,
        large.warm.search_p95,
        verdict(large.warm.search_p95 < 10.0)
    );
    if large.cold.get_p50.is_nan() {
        println!("  (page cache dropped: not measured; dropping the page cache needs root)");
    } else {
        let cold_worst = |f: &dyn Fn(&Reads) -> f64| worst(&|r| f(&r.cold));
        let ((get, get_at), (search, search_at)) =
            (cold_worst(&|r| r.get_p50), cold_worst(&|r| r.search_p95));
        println!(
            "  page cache dropped (reads wait for the disk; reported, not judged): get p50 worst {get:.2}x (at {get_at}), search p95 worst {search:.2}x (at {search_at}); search p95 at {}: {:.2} ms — {}",
            large.entries,
            large.cold.search_p95,
            if large.cold.search_p95 < 10.0 {
                "under 10 ms"
            } else {
                "over 10 ms"
            }
        );
    }
    let at_million = large.entries >= 1_000_000;
    println!(
        "  peak RSS < 64 MiB at {}: {:.1} MiB — {}",
        large.entries,
        large.peak_rss_mib,
        verdict(large.peak_rss_mib < 64.0)
    );
    println!(
        "  cold start < 50 ms at {}: {:.1} ms — {}",
        large.entries,
        large.cold_p50,
        verdict(large.cold_p50 < 50.0)
    );
    if !at_million {
        println!("  (sizes capped by MEMWARDEN_BENCH_MAX; the targets are set at 1M entries)");
    }
    report.insert(
        "audit_append_share".into(),
        json!({"of_store_p50": append_p50 / small.store_p50, "of_get_p50": append_p50 / small.warm.get_p50}),
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-e2e.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(report)).unwrap(),
    )
    .ok();
}
