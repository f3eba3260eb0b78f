//! Criterion micro-benchmarks of the store: seal, verify, and store (with and without namespace
//! quotas), get and search at 10k and 100k entries, in-process (no MCP). Run with
//! `cargo bench --bench store`.

mod common;

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use memwarden::keys::{KeySet, Keyring, SecretKey};
use memwarden::store::seal::{self, SealedFields};
use memwarden::store::{Author, Filter, NewEntry, Status, Store, StoreOptions, Synchronous};

fn fields<'a>(content: &'a str, tags: &'a [String], sha: &'a [u8]) -> SealedFields<'a> {
    SealedFields {
        key_id: "e1",
        id: "01a20d1b-a1e9-701b-8364-26b3d89b12c2",
        namespace: "default",
        content,
        tags,
        metadata: Some(r#"{"source":"bench"}"#),
        status: "active",
        supersedes: None,
        principal: "local",
        session_id: "65cc0a3e-bfa4-4faa-8bb3-f3d30425168d",
        created_at: 1_764_000_000_000,
        updated_at: 1_764_000_000_000,
        content_sha256: sha,
    }
}

fn bench_seal(c: &mut Criterion) {
    let key = SecretKey::from_bytes(vec![42; 32]);
    let content = "x".repeat(500);
    let tags = vec!["a".to_string(), "b".to_string()];
    let sha = seal::content_sha256(&content);
    let f = fields(&content, &tags, &sha);
    let mac = seal::seal(&key, &f);
    c.bench_function("seal 500B", |b| b.iter(|| seal::seal(&key, black_box(&f))));
    c.bench_function("verify 500B", |b| {
        b.iter(|| seal::verify(&key, black_box(&f), &mac))
    });
}

fn populated(n: usize) -> (tempfile::TempDir, Store, KeySet, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::generate().unwrap().entry;
    let path = dir.path().join("memory.db");
    let vocab = common::vocabulary(5000);
    let mut rng = common::Rng::new(n as u64);
    let mut ids = Vec::with_capacity(n);
    {
        // Populate without fsync per row; the measured store below uses the default (FULL).
        let mut store = Store::open(
            &path,
            keys.clone(),
            StoreOptions {
                synchronous: Synchronous::Normal,
                ..Default::default()
            },
        )
        .unwrap();
        let author = Author {
            principal: "local",
            session_id: "bench",
        };
        for i in 0..n {
            let e = store
                .insert(
                    author,
                    NewEntry {
                        namespace: "default".into(),
                        content: common::sentence(&mut rng, &vocab, 60),
                        tags: vec![format!("t{}", i % 16)],
                        metadata: None,
                        status: Status::Active,
                    },
                    1_764_000_000_000 + i as i64,
                )
                .and_then(|w| w.commit_unaudited())
                .unwrap();
            ids.push(e.id);
        }
    }
    let store = Store::open(&path, keys.clone(), StoreOptions::default()).unwrap();
    (dir, store, keys, ids, vocab)
}

/// Inserts of new 60-word entries into `default`, each committed on its own.
fn bench_insert(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    store: &mut Store,
    rng: &mut common::Rng,
    vocab: &[String],
) {
    let author = Author {
        principal: "local",
        session_id: "bench",
    };
    group.bench_function(name, |b| {
        b.iter_batched(
            || NewEntry {
                namespace: "default".into(),
                content: common::sentence(rng, vocab, 60),
                tags: vec![],
                metadata: None,
                status: Status::Active,
            },
            |e| {
                store
                    .insert(author, e, 1_800_000_000_000)
                    .and_then(|w| w.commit_unaudited())
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
}

fn bench_store_ops(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("MEMWARDEN_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    for n in sizes {
        let (_dir, mut store, _keys, ids, vocab) = populated(n);
        let mut group = c.benchmark_group(format!("store@{n}"));
        group.sample_size(50);
        let mut rng = common::Rng::new(99);
        bench_insert(&mut group, "insert (FULL)", &mut store, &mut rng, &vocab);
        // The same with namespace quotas set (far above the store's size): the check must cost
        // one lookup, not a count of the namespace's `n` rows (it did before schema version 6).
        store.set_quota(memwarden::store::Quota {
            max_entries: Some(u64::MAX / 2),
            max_bytes: Some(u64::MAX / 2),
        });
        bench_insert(
            &mut group,
            "insert with quotas (FULL)",
            &mut store,
            &mut rng,
            &vocab,
        );
        store.set_quota(memwarden::store::Quota::default());
        let mut i = 0usize;
        let everything = memwarden::store::Visibility::everything();
        group.bench_function("get", |b| {
            b.iter(|| {
                i = (i + 7919) % ids.len();
                black_box(store.get(&ids[i], &everything).unwrap())
            })
        });
        let filter = Filter {
            scope: memwarden::store::Scope::only(["default".to_string()]),
            ..Default::default()
        };
        let mut rng = common::Rng::new(5);
        group.bench_function("search 2 words, limit 20", |b| {
            b.iter(|| {
                let q = format!(
                    "{} {}",
                    vocab[rng.below(vocab.len())],
                    vocab[rng.below(vocab.len())]
                );
                let q = memwarden::store::Query::parse(&q).unwrap();
                black_box(store.search(&q, &filter, 20).unwrap())
            })
        });
        group.bench_function("list page 20", |b| {
            b.iter(|| black_box(store.list(&filter, None, 20).unwrap()))
        });
        group.finish();
    }
}

/// The policy gate's content rules: every shipped pack over a 16 KiB memory.
fn bench_rules(c: &mut Criterion) {
    let policy = memwarden::policy::parse(
        r#"version = 1
[[rules.packs]]
pack = "secrets"
action = "redact"
applies_to = ["content", "tags", "metadata"]
[[rules.packs]]
pack = "injection"
action = "quarantine"
[[rules.packs]]
pack = "markup"
action = "redact"
[principals.local]
tools = ["memory_store"]
namespaces = { default = "rw" }
default_namespace = "default"
"#,
        "bench",
    )
    .unwrap();
    let vocab = common::vocabulary(5000);
    let mut rng = common::Rng::new(3);
    let mut clean = String::new();
    while clean.len() < 16 * 1024 - 16 {
        clean.push_str(&vocab[rng.below(vocab.len())]);
        clean.push(' ');
    }
    clean.truncate(16 * 1024 - 16);
    let mut dirty = clean.clone();
    dirty.replace_range(
        ..60,
        "password=hunter2hunter2 <script>x</script> AKIAIOSFODNN7EXAMPLE ",
    );
    c.bench_function("policy rules, normalised view of 16 KiB", |b| {
        b.iter(|| black_box(memwarden::policy::normalize::normalize(&clean)))
    });
    for (name, text) in [("clean", clean), ("with 3 hits", dirty)] {
        c.bench_function(&format!("policy rules, all packs, 16 KiB {name}"), |b| {
            b.iter_batched(
                || (text.clone(), vec!["tag".to_string()], None),
                |(mut content, mut tags, mut meta)| {
                    black_box(policy.rules.apply(&mut content, &mut tags, &mut meta))
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, bench_seal, bench_rules, bench_store_ops);
criterion_main!(benches);
