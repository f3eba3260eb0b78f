//! The PostgreSQL case of issue 14: `MEMWARDEN_BENCH_CASE=postgres cargo bench --bench e2e`.
//!
//! A throwaway cluster (Debian's binaries, unix socket, `synchronous_commit` on: the default),
//! `memwarden db init`, then in one run:
//! - the floor: one INSERT of a sealed-size row per transaction with the chained audit insert
//!   (advisory lock, tail read, linked event), what the database allows before any protocol work;
//!   once on the empty cluster, and again beside each size's timed stores ([`FLOOR_BESIDE`]
//!   rows just before them and as many just after): a floor row is round trips and backend
//!   work, not the disk (an 8 kB `fdatasync` takes 0.13 ms here, a row 1.0-1.6 ms), so it
//!   follows the machine's pace, which changes from one minute to the next (627 to 1,002 rows/s
//!   in one afternoon); each size's share of the floor is judged against the floor of its
//!   minutes;
//! - memwarden end to end over MCP (`serve --store postgres`): stores, gets and searches at
//!   growing sizes (`MEMWARDEN_BENCH_MAX`, default 10,000). With `MEMWARDEN_BENCH_BULK=1` each
//!   size past the first is reached by loading sealed rows in batches ([`bulk_fill`], the same
//!   sentences into the same namespace) up to its last 1,000 entries, which are stored over MCP
//!   and timed as before: filling a million entries through MCP takes hours. The searches then
//!   run on statistics that lag the table, as after any fast growth, and again warm: after
//!   `VACUUM ANALYZE`, with the store's relations read into `shared_buffers`, which the cluster
//!   sizes as PostgreSQL's documentation advises for a dedicated server ([`size_shared_buffers`]);
//! - aggregate stores/s with 1, 4 and 16 concurrent sessions (one server process each), on
//!   PostgreSQL and on SQLite, the peak RSS of a session, and the cores the machine kept busy
//!   meanwhile (from /proc/stat), with the share of this benchmark's own clients: what one
//!   session leaves idle bounds what more sessions can add.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::{Server, call, common, ms, peak_rss_mib, spawn, spawn_command, summary};

/// The tests' throwaway cluster, shared with the benchmark.
#[path = "../../tests/common/postgres.rs"]
#[allow(dead_code)]
mod cluster;

/// The binary the cluster helper runs (`db init`, `init`).
fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_memwarden")
}

async fn serve_pg(data: &Path, file: &Path) -> Server {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--store", "postgres", "--database-file"])
        .arg(file)
        .env("MEMWARDEN_LOG", "warn");
    spawn_command(cmd).await
}

/// Entries each size stores over MCP when the rest is loaded in bulk.
const TIMED_STORES: usize = 1_000;

/// Loads `n` sealed entries of sentences from `vocab` into `namespace`, in batches of
/// [`memwarden::store::transfer::BATCH`] rows (one INSERT each), as `memwarden migrate` writes
/// them: the rows the MCP fill would have stored, without the protocol, audit and ledger.
async fn bulk_fill(
    pg: &cluster::Ready,
    namespace: &str,
    n: usize,
    vocab: &[String],
    rng: &mut common::Rng,
) {
    use memwarden::store::rows::RawRow;
    use memwarden::store::transfer::{BATCH, Batch};
    use memwarden::store::{Entry, Status};

    let mut batches = Vec::new();
    let mut left = n;
    while left > 0 {
        let take = left.min(BATCH);
        batches.push(
            (0..take)
                .map(|_| common::sentence(rng, vocab, 60))
                .collect::<Vec<_>>(),
        );
        left -= take;
    }
    let (app, entry_keys, audit_keys) = (
        pg.app.clone(),
        pg.keyring.entry.clone(),
        pg.keyring.audit.clone(),
    );
    let namespace = namespace.to_string();
    // The library's PostgreSQL backend runs its own runtime: off this one's thread.
    tokio::task::spawn_blocking(move || {
        let settings = memwarden::store::postgres::DatabaseSettings::load(&app).unwrap();
        let backend = memwarden::store::postgres::Postgres::connect(&settings, audit_keys).unwrap();
        let mut store =
            memwarden::store::Store::with_backend(Box::new(backend), entry_keys.clone());
        let (key_id, key) = entry_keys.active();
        for contents in batches {
            let mut batch = Batch::default();
            for content in contents {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as i64;
                let entry = Entry {
                    id: uuid::Uuid::now_v7().to_string(),
                    namespace: namespace.clone(),
                    content_sha256: memwarden::store::seal::content_sha256(&content),
                    content,
                    tags: vec![],
                    metadata: None,
                    status: Status::Active,
                    supersedes: None,
                    principal: "bench".into(),
                    session_id: "bulk".into(),
                    created_at: now,
                    updated_at: now,
                };
                batch.entries.push(RawRow::sealed(entry, key_id, key));
            }
            store.copy_in(&batch).unwrap();
        }
        store.close().unwrap();
    })
    .await
    .unwrap();
}

/// Sizes the cluster's `shared_buffers` as PostgreSQL's documentation advises for a dedicated
/// server, a quarter of the machine's memory (`MEMWARDEN_BENCH_PG_SHARED_BUFFERS`, e.g. `128MB`
/// for initdb's default, overrides it), restarts the cluster, and returns the setting. With
/// the default 128 MB, a million entries (about 2 GB) never fit: each row a search reads comes
/// from the kernel's page cache, a system call per 8 kB page.
async fn size_shared_buffers(pg: &cluster::Ready) -> String {
    let setting = std::env::var("MEMWARDEN_BENCH_PG_SHARED_BUFFERS").unwrap_or_else(|_| {
        let kib: u64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(512 * 1024);
        format!("{}MB", kib / 4 / 1024)
    });
    let client = pg.cluster.connect("memwarden").await;
    // ALTER SYSTEM cannot run in a transaction block: one statement at a time.
    for sql in [
        format!("ALTER SYSTEM SET shared_buffers = '{setting}'"),
        "CREATE EXTENSION IF NOT EXISTS pg_prewarm".to_string(),
    ] {
        client.batch_execute(&sql).await.unwrap();
    }
    drop(client);
    pg.cluster.restart();
    setting
}

/// Waits until every row is posted (`memory.posted.upto` at the newest row), at most a minute.
async fn posted(pg: &cluster::Ready) {
    let client = pg.cluster.connect("memwarden").await;
    let started = Instant::now();
    while started.elapsed().as_secs() < 60 {
        let caught_up: bool = client
            .query_one(
                "SELECT (SELECT upto FROM memory.posted) >= \
                 (SELECT coalesce(max(pos), 0) FROM memory.entries)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if caught_up {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the rows were not posted within a minute");
}

/// Bytes of WAL the cluster has written so far, and the checkpoints it has made.
async fn wal(pg: &cluster::Ready) -> (i64, i64) {
    let client = pg.cluster.connect("memwarden").await;
    let row = client
        .query_one(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, \
             checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// What a store looks like once it has been running a while: `VACUUM ANALYZE` of every table of
/// the `memory` schema (what autovacuum does after fast growth, here without waiting for it; the
/// postings too, whose index-only scans read the heap for every posting until a vacuum marks its
/// pages all-visible) and every relation of the schema, with its TOAST, read into
/// shared_buffers (`pg_prewarm`). Returns their size in MiB.
async fn settle(pg: &cluster::Ready) -> f64 {
    let client = pg.cluster.connect("memwarden").await;
    let tables: String = client
        .query_one(
            "SELECT string_agg(format('%I.%I', schemaname, tablename), ', ' ORDER BY tablename) \
             FROM pg_tables WHERE schemaname = 'memory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("VACUUM ANALYZE {tables}"))
        .await
        .unwrap();
    let row = client
        .query_one(
            "WITH rels AS ( \
               SELECT c.oid FROM pg_class c \
               WHERE c.relnamespace = 'memory'::regnamespace AND c.relkind IN ('r', 'i') \
               UNION ALL \
               SELECT t.oid FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid \
               WHERE c.relnamespace = 'memory'::regnamespace \
               UNION ALL \
               SELECT i.indexrelid FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid \
               WHERE c.relnamespace = 'memory'::regnamespace) \
             SELECT sum(pg_prewarm(oid))::bigint, sum(pg_relation_size(oid))::bigint FROM rels",
            &[],
        )
        .await
        .unwrap();
    let bytes: i64 = row.get(1);
    bytes as f64 / (1024.0 * 1024.0)
}

/// 500 two-word searches over every namespace (a `"*"` scope, in ranges of positions), then 500
/// inside the one namespace by name (every match at once): p50 and p95 of each, in ms.
async fn searches(
    server: &Server,
    rng: &mut common::Rng,
    vocab: &[String],
    namespace: &str,
) -> [(f64, f64); 2] {
    let mut out = [(0.0, 0.0); 2];
    for (narrow, slot) in out.iter_mut().enumerate() {
        let mut lat = Vec::with_capacity(500);
        for _ in 0..500 {
            let q = format!(
                "{} {}",
                vocab[rng.below(vocab.len())],
                vocab[rng.below(vocab.len())]
            );
            let args = if narrow == 1 {
                json!({"query": q, "namespace": namespace})
            } else {
                json!({"query": q})
            };
            let t = Instant::now();
            call(&server.client, "memory_search", args).await;
            lat.push(ms(t.elapsed()));
        }
        let (p50, p95, ..) = summary(lat);
        *slot = (p50, p95);
    }
    out
}

/// Rows of the floor measured just before and as many just after each size's timed stores.
const FLOOR_BESIDE: usize = 500;

/// Rows per second and per-row latencies of the floor's rows `first..first + rows` (each
/// measurement its own range: the floor's ids are unique).
async fn floor(
    pg: &cluster::Ready,
    first: usize,
    rows: usize,
    vocab: &[String],
) -> (f64, Vec<f64>) {
    let mut client = pg.cluster.connect("memwarden").await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS public.floor (pos bigint GENERATED ALWAYS AS IDENTITY \
             PRIMARY KEY, id text NOT NULL UNIQUE, content text NOT NULL, mac bytea NOT NULL)",
        )
        .await
        .unwrap();
    let keys = pg.keyring.audit.clone();
    let mut rng = common::Rng::new(7 + first as u64);
    let mut lat = Vec::with_capacity(rows);
    let started = Instant::now();
    for i in first..first + rows {
        let content = common::sentence(&mut rng, vocab, 60);
        let t = Instant::now();
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO public.floor (id, content, mac) VALUES ($1, $2, $3)",
            &[&format!("floor-{i}"), &content, &vec![0u8; 32]],
        )
        .await
        .unwrap();
        let event =
            memwarden::audit::NewEvent::new(memwarden::audit::Kind::Admin, json!({"floor": i}));
        memwarden::audit::postgres::append(&tx, &keys, &event, 1)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        lat.push(ms(t.elapsed()));
    }
    (rows as f64 / started.elapsed().as_secs_f64(), lat)
}

/// Seconds of CPU this process has used so far (user + system, every thread), from /proc.
fn own_cpu_seconds() -> f64 {
    // After the command name: utime is field 14, stime 15 (proc(5)).
    let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: u64 = me
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// What a run of concurrent sessions did: stores/s, the largest server's peak RSS in MiB, and
/// the cores kept busy: in all, and by this benchmark's own clients.
struct Concurrent {
    rate: f64,
    rss: f64,
    cores: f64,
    client_cores: f64,
}

/// Aggregate stores/s of `sessions` servers storing `each` entries at once.
async fn concurrent_stores(
    sessions: usize,
    each: usize,
    connect: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Server>>>,
) -> Concurrent {
    let mut servers = Vec::new();
    for _ in 0..sessions {
        servers.push(connect().await);
    }
    let started = Instant::now();
    let (busy_before, own_before) = (common::machine_busy_seconds(), own_cpu_seconds());
    let mut tasks = tokio::task::JoinSet::new();
    for (s, server) in servers.into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..each {
                call(
                    &server.client,
                    "memory_store",
                    json!({"content": format!("session {s} note {i} about the deploy")}),
                )
                .await;
            }
            let rss = peak_rss_mib(server.pid);
            let _ = server.client.cancel().await;
            rss
        });
    }
    let mut rss: f64 = 0.0;
    while let Some(r) = tasks.join_next().await {
        rss = rss.max(r.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (busy_after, own_after) = (common::machine_busy_seconds(), own_cpu_seconds());
    let cores = |seconds: f64| seconds.max(0.0) / elapsed;
    Concurrent {
        rate: (sessions * each) as f64 / elapsed,
        rss,
        cores: cores(busy_after - busy_before),
        client_cores: cores(own_after - own_before),
    }
}

/// Runs the case; returns the report.
pub async fn run() -> serde_json::Value {
    let Some(pg) = cluster::Ready::start() else {
        println!("PostgreSQL is not installed: nothing to measure");
        return json!(null);
    };
    let max: usize = std::env::var("MEMWARDEN_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let vocab = common::vocabulary(5000);
    let mut report = serde_json::Map::new();
    let shared_buffers = size_shared_buffers(&pg).await;

    let (wal_before, _) = wal(&pg).await;
    let (floor_rate, floor_lat) = floor(&pg, 0, 2_000, &vocab).await;
    let floor_wal = (wal(&pg).await.0 - wal_before) as f64 / 1024.0 / floor_lat.len() as f64;
    let (fp50, _, fp99, _) = summary(floor_lat);
    println!(
        "PostgreSQL floor (INSERT + chained audit insert, 1 tx/row, synchronous_commit on): {floor_rate:.0} rows/s, p50 {fp50:.3} ms, p99 {fp99:.3} ms, {floor_wal:.1} KiB of WAL a row"
    );
    report.insert(
        "floor".into(),
        json!({"rows_per_s": floor_rate, "p50_ms": fp50, "p99_ms": fp99, "wal_kib_per_row": floor_wal}),
    );

    println!(
        "shared_buffers {shared_buffers}; \"warm\": after VACUUM ANALYZE, the store's relations read in by pg_prewarm"
    );
    println!(
        "| entries | stores/s | floor beside, rows/s: before, after | share of the floor beside, of the first | WAL KiB a store, checkpoints | store p50 / p99 ms | get p50 ms | search p50 / p95 ms | narrow search p50 / p95 ms | warm search p50 / p95 ms | warm narrow p50 / p95 ms | store MiB | peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let server = serve_pg(&pg.data, &pg.app).await;
    let mut rng = common::Rng::new(11);
    let mut ids: Vec<String> = Vec::new();
    // The namespace every entry lands in (the principal's default), searched as a narrow scope.
    let mut namespace = String::new();
    let mut rows = Vec::new();
    let mut shares = Vec::new();
    let bulk = std::env::var("MEMWARDEN_BENCH_BULK").is_ok_and(|v| v == "1");
    let mut loaded = 0;
    for size in [1_000, 10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|&n| n <= max)
    {
        if bulk && !namespace.is_empty() {
            let n = size.saturating_sub(TIMED_STORES + ids.len() + loaded);
            let started = Instant::now();
            bulk_fill(&pg, &namespace, n, &vocab, &mut rng).await;
            loaded += n;
            println!(
                "(loaded {n} entries in bulk in {:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
        let (before, _) = floor(&pg, 2 * size, FLOOR_BESIDE, &vocab).await;
        let mut lat = Vec::new();
        let (wal_before, checkpoints_before) = wal(&pg).await;
        let started = Instant::now();
        while ids.len() + loaded < size {
            let content = common::sentence(&mut rng, &vocab, 60);
            let t = Instant::now();
            let v = call(&server.client, "memory_store", json!({"content": content})).await;
            lat.push(ms(t.elapsed()));
            ids.push(v["id"].as_str().unwrap().to_string());
            if namespace.is_empty() {
                namespace = v["namespace"].as_str().unwrap().to_string();
            }
        }
        let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
        let (wal_after, checkpoints_after) = wal(&pg).await;
        let wal_kib = (wal_after - wal_before) as f64 / 1024.0 / lat.len() as f64;
        let checkpoints = checkpoints_after - checkpoints_before;
        // The floor after them runs alone, not beside the poster's catching up.
        posted(&pg).await;
        let (after, _) = floor(&pg, 2 * size + FLOOR_BESIDE, FLOOR_BESIDE, &vocab).await;
        let share = 100.0 * rate / ((before + after) / 2.0);
        let share_first = 100.0 * rate / floor_rate;
        shares.push((size, share, share_first));
        let (sp50, _, sp99, _) = summary(lat);
        let mut gets = Vec::new();
        for i in 0..500 {
            let id = &ids[(i * 7919) % ids.len()];
            let t = Instant::now();
            call(&server.client, "memory_get", json!({"id": id})).await;
            gets.push(ms(t.elapsed()));
        }
        // Right after growing: statistics lag the table, its newest pages are cold.
        let [(qp50, qp95), (np50, np95)] = searches(&server, &mut rng, &vocab, &namespace).await;
        // Warm: once autovacuum has caught up, with the store's relations in shared_buffers.
        let cached = settle(&pg).await;
        let [(wp50, wp95), (wn50, wn95)] = searches(&server, &mut rng, &vocab, &namespace).await;
        let (gp50, ..) = summary(gets);
        let rss = peak_rss_mib(server.pid);
        println!(
            "| {size} | {rate:.0} | {before:.0}, {after:.0} | {share:.0}%, {share_first:.0}% | {wal_kib:.1}, {checkpoints} | {sp50:.3} / {sp99:.3} | {gp50:.3} | {qp50:.2} / {qp95:.2} | {np50:.2} / {np95:.2} | {wp50:.2} / {wp95:.2} | {wn50:.2} / {wn95:.2} | {cached:.0} | {rss:.1} |"
        );
        rows.push(
            json!({"entries": size, "stores_per_s": rate, "floor_before_rows_per_s": before,
            "floor_after_rows_per_s": after, "share_of_floor_beside": share,
            "share_of_first_floor": share_first, "wal_kib_per_store": wal_kib,
            "checkpoints": checkpoints, "store_p50_ms": sp50,
            "store_p99_ms": sp99, "get_p50_ms": gp50, "search_p50_ms": qp50,
            "search_p95_ms": qp95, "narrow_search_p50_ms": np50, "narrow_search_p95_ms": np95,
            "warm_search_p50_ms": wp50, "warm_search_p95_ms": wp95,
            "warm_narrow_search_p50_ms": wn50, "warm_narrow_search_p95_ms": wn95,
            "store_mib": cached, "peak_rss_mib": rss}),
        );
    }
    let _ = server.client.cancel().await;
    report.insert("postgres".into(), json!(rows));
    if let Some(&(at, worst, _)) = shares.iter().min_by(|a, b| a.1.total_cmp(&b.1)) {
        let first = shares.iter().map(|s| s.2).fold(f64::INFINITY, f64::min);
        println!(
            "  one session ≥ 70% of the floor: slowest size {worst:.0}% of the floor beside it (at {at}) — {}; against the first floor, slowest {first:.0}%",
            if worst >= 70.0 { "met" } else { "MISSED" }
        );
    }

    println!(
        "| sessions | PostgreSQL stores/s | SQLite stores/s | peak RSS per session MiB (pg / sqlite) | cores busy, of them the bench's clients (pg / sqlite) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let sqlite_dir = tempfile::tempdir().unwrap();
    let sqlite_data: PathBuf = sqlite_dir.path().join("data");
    let mut conc = Vec::new();
    for sessions in [1, 4, 16] {
        let each = 3_200 / sessions;
        let (data, file) = (pg.data.clone(), pg.app.clone());
        let pg_run = concurrent_stores(sessions, each, || {
            let (data, file) = (data.clone(), file.clone());
            Box::pin(async move { serve_pg(&data, &file).await })
        })
        .await;
        let d = sqlite_data.clone();
        let lite = concurrent_stores(sessions, each, || {
            let d = d.clone();
            Box::pin(async move { spawn(&d).await })
        })
        .await;
        println!(
            "| {sessions} | {:.0} | {:.0} | {:.1} / {:.1} | {:.2}, {:.2} / {:.2}, {:.2} |",
            pg_run.rate,
            lite.rate,
            pg_run.rss,
            lite.rss,
            pg_run.cores,
            pg_run.client_cores,
            lite.cores,
            lite.client_cores
        );
        conc.push(
            json!({"sessions": sessions, "postgres_stores_per_s": pg_run.rate,
            "sqlite_stores_per_s": lite.rate, "postgres_rss_mib": pg_run.rss,
            "sqlite_rss_mib": lite.rss, "postgres_cores_busy": pg_run.cores,
            "postgres_client_cores": pg_run.client_cores, "sqlite_cores_busy": lite.cores,
            "sqlite_client_cores": lite.client_cores}),
        );
    }
    report.insert("concurrent".into(), json!(conc));
    serde_json::Value::Object(report)
}
