//! The multi-tenant case of issue 13: a store where half the entries sit in small namespaces of
//! 1,000 entries and half in 4 big ones, rows of all of them interleaved in time. Loaded by the
//! library (`Store::insert`, one transaction per row, real seals with the data dir's keyring,
//! synchronous NORMAL while loading), then read through the real binary over MCP.
//!
//! `MEMWARDEN_BENCH_CASE=multitenant cargo bench --bench e2e` runs only this case;
//! `MEMWARDEN_BENCH_MT=100000` sets the size (default 1M).

use std::path::{Path, PathBuf};
use std::time::Instant;

use memwarden::keys::Keyring;
use memwarden::store::{Author, NewEntry, Status, Store, StoreOptions, Synchronous};
use serde_json::{Value, json};

use super::{Client, call, common, drop_page_cache, ms, spawn, summary, warm_page_cache};

/// The word every big namespace is full of (a third of their rows) and small ones hold rarely.
const COMMON: &str = "deploy";
const SMALL: usize = 1_000;

fn init(dir: &Path) {
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_memwarden"))
        .args(["init", "--data-dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("init");
    assert!(st.success());
}

/// Loads `total` entries: `small_ns` namespaces of 1,000 (`s0`, `s1`, …) and the rest over
/// `big0..big3`, in an interleaved order, one minute of created_at apart per 1,000 rows.
fn load(dir: &Path, total: usize, small_ns: usize, vocab: &[String]) {
    init(dir);
    let keys = Keyring::load(&dir.join("keyring.toml")).unwrap().entry;
    let mut store = Store::open(
        &dir.join("memory.db"),
        keys,
        StoreOptions {
            synchronous: Synchronous::Normal,
            ..Default::default()
        },
    )
    .unwrap();
    let author = Author {
        principal: "local",
        session_id: "bench-load",
    };
    let mut rng = common::Rng::new(total as u64 + 11);
    let small_total = small_ns * SMALL;
    let mut small_left = vec![SMALL; small_ns];
    let t = Instant::now();
    for i in 0..total {
        // Small-namespace rows spread evenly over the whole load.
        let in_small =
            small_total > 0 && (i * small_total / total) != ((i + 1) * small_total / total);
        let (ns, common_word) = if in_small {
            let mut k = rng.below(small_ns);
            while small_left[k] == 0 {
                k = (k + 1) % small_ns;
            }
            small_left[k] -= 1;
            (format!("s{k}"), rng.below(200) == 0)
        } else {
            (format!("big{}", rng.below(4)), rng.below(3) == 0)
        };
        let mut content = common::sentence(&mut rng, vocab, 40);
        if common_word {
            content.push(' ');
            content.push_str(COMMON);
        }
        let mut tags = vec![format!("t{}", i % 16)];
        if i % 1000 == 7 {
            tags.push("rare".into());
        }
        store
            .insert(
                author,
                NewEntry {
                    namespace: ns,
                    content,
                    tags,
                    metadata: None,
                    status: Status::Active,
                },
                1_764_000_000_000 + (i as i64) * 60,
            )
            .and_then(|w| w.commit_unaudited())
            .unwrap();
    }
    println!(
        "  loaded {total} entries ({small_ns} namespaces of {SMALL} + 4 big) in {:.0} s",
        t.elapsed().as_secs_f64()
    );
}

struct Case {
    name: String,
    p50: f64,
    p95: f64,
}

async fn time_calls(client: &Client, name: &str, calls: &[(String, Value)]) -> Case {
    // One untimed pass warms the statement cache.
    for (tool, args) in calls.iter().take(5) {
        call(client, tool, args.clone()).await;
    }
    let mut lat = Vec::with_capacity(calls.len());
    for (tool, args) in calls {
        let t = Instant::now();
        call(client, tool, args.clone()).await;
        lat.push(ms(t.elapsed()));
    }
    let (p50, p95, _, _) = summary(lat);
    Case {
        name: name.to_string(),
        p50,
        p95,
    }
}

fn small_searches(small_ns: usize, vocab: &[String], n: usize) -> Vec<(String, Value)> {
    let mut rng = common::Rng::new(5);
    (0..n)
        .map(|_| {
            let q = format!("{COMMON} {}", vocab[rng.below(vocab.len())]);
            let ns = format!("s{}", rng.below(small_ns.max(1)));
            (
                "memory_search".to_string(),
                json!({"query": q, "namespace": ns}),
            )
        })
        .collect()
}

fn all_searches(vocab: &[String], n: usize) -> Vec<(String, Value)> {
    let mut rng = common::Rng::new(6);
    (0..n)
        .map(|_| {
            let q = format!(
                "{} {}",
                vocab[rng.below(vocab.len())],
                vocab[rng.below(vocab.len())]
            );
            ("memory_search".to_string(), json!({"query": q}))
        })
        .collect()
}

/// The read cases against one data dir, warm, then with the page cache dropped before each.
async fn read_cases(
    data: &Path,
    small_ns: usize,
    total: usize,
    vocab: &[String],
    label: &str,
) -> Vec<Case> {
    let files: Vec<PathBuf> = ["memory.db", "memory.db-wal"]
        .iter()
        .map(|f| data.join(f))
        .collect();
    warm_page_cache(&files);
    let server = spawn(data).await;
    let c = &server.client;
    let n = 200;
    let mut out = Vec::new();
    out.push(
        time_calls(
            c,
            &format!("{label}: search in one small namespace (\"{COMMON} w\")"),
            &small_searches(small_ns, vocab, n),
        )
        .await,
    );
    out.push(
        time_calls(
            c,
            &format!("{label}: search across all namespaces (2 words)"),
            &all_searches(vocab, n),
        )
        .await,
    );
    out.push(
        time_calls(
            c,
            &format!("{label}: list, all namespaces, first page"),
            &vec![("memory_list".to_string(), json!({"limit": 20})); n],
        )
        .await,
    );
    // Deep pages: follow the cursor.
    let mut lat = Vec::new();
    let mut args = json!({"namespace": "s0", "limit": 20});
    for _ in 0..40 {
        let t = Instant::now();
        let page = call(c, "memory_list", args.clone()).await;
        lat.push(ms(t.elapsed()));
        match page["next_cursor"].as_str() {
            Some(cur) => args["cursor"] = json!(cur),
            None => args = json!({"namespace": "s0", "limit": 20}),
        }
    }
    let (p50, p95, _, _) = summary(lat);
    out.push(Case {
        name: format!("{label}: list pages in one small namespace (cursor)"),
        p50,
        p95,
    });
    out.push(
        time_calls(
            c,
            &format!("{label}: list by a rare tag (all namespaces)"),
            &vec![
                (
                    "memory_list".to_string(),
                    json!({"tags": ["rare"], "limit": 20})
                );
                n
            ],
        )
        .await,
    );
    out.push(
        time_calls(
            c,
            &format!("{label}: search by a rare tag (all namespaces)"),
            &vec![
                (
                    "memory_search".to_string(),
                    json!({"query": COMMON, "tags": ["rare"]})
                );
                n
            ],
        )
        .await,
    );
    // A one-hour window in the middle of the load (rows are 60 ms apart).
    let mid = 1_764_000_000_000i64 + (total as i64 / 2) * 60;
    let fmt = |ms: i64| memwarden::clock::format_ms(ms);
    let window = json!({"since": fmt(mid), "until": fmt(mid + 600_000)});
    let mut a = window.clone();
    a["query"] = json!(COMMON);
    out.push(
        time_calls(
            c,
            &format!("{label}: search \"{COMMON}\", 10-minute since/until"),
            &vec![("memory_search".to_string(), a); n],
        )
        .await,
    );
    let mut l = window;
    l["limit"] = json!(20);
    out.push(
        time_calls(
            c,
            &format!("{label}: list, 10-minute since/until"),
            &vec![("memory_list".to_string(), l); n],
        )
        .await,
    );
    server.client.cancel().await.ok();
    if drop_page_cache() {
        let server = spawn(data).await;
        let mut lat = Vec::new();
        for (tool, args) in small_searches(small_ns, vocab, 40) {
            drop_page_cache();
            let t = Instant::now();
            call(&server.client, &tool, args).await;
            lat.push(ms(t.elapsed()));
        }
        let (p50, p95, _, _) = summary(lat);
        out.push(Case {
            name: format!("{label}: cache dropped: search in one small namespace"),
            p50,
            p95,
        });
        let mut lat = Vec::new();
        for (tool, args) in all_searches(vocab, 40) {
            drop_page_cache();
            let t = Instant::now();
            call(&server.client, &tool, args).await;
            lat.push(ms(t.elapsed()));
        }
        let (p50, p95, _, _) = summary(lat);
        out.push(Case {
            name: format!("{label}: cache dropped: search across all namespaces"),
            p50,
            p95,
        });
        server.client.cancel().await.ok();
    }
    out
}

fn print(cases: &[Case]) {
    for c in cases {
        println!(
            "  {:<78} p50 {:>7.2} ms  p95 {:>7.2} ms",
            c.name, c.p50, c.p95
        );
    }
}

/// Runs the case; returns its rows for the JSON report.
pub async fn run(total: usize) -> Value {
    let vocab = common::vocabulary(5000);
    let small_ns = (total / 2 / SMALL).max(1);
    println!("multi-tenant store: {total} entries");
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    load(&big, total, small_ns, &vocab);
    let alone = tmp.path().join("alone");
    // The same small namespaces' rows alone: one small namespace's worth, in its own store.
    load(&alone, SMALL, 1, &vocab);

    let mut all = Vec::new();
    let before = read_cases(&big, small_ns, total, &vocab, "before maintain").await;
    print(&before);
    all.extend(before);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memwarden"))
        .args(["maintain", "--data-dir"])
        .arg(&big)
        .output()
        .unwrap();
    println!(
        "  maintain: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    let after = read_cases(&big, small_ns, total, &vocab, "after maintain").await;
    print(&after);
    all.extend(after);
    let alone_cases = read_cases(&alone, 1, SMALL, &vocab, "small store alone").await;
    print(&alone_cases[..1]);
    all.extend(alone_cases.into_iter().take(1));
    json!(
        all.iter()
            .map(|c| json!({"case": c.name, "p50_ms": c.p50, "p95_ms": c.p95}))
            .collect::<Vec<_>>()
    )
}
