//! Issue 15's numbers for moving stores: `memwarden migrate` SQLite → PostgreSQL and back, and
//! `memwarden backup --store postgres`, each timed and its peak RSS read from the kernel
//! (`wait4`'s rusage of that one process). `MEMWARDEN_BENCH_MAX` rows (default 100,000; the
//! issue asks for 1,000,000) are written into a fresh data dir through the library first, in
//! batches (sealed exactly as a store call seals them), with sentences of a 5,000-word
//! vocabulary as content.
//!
//! `cargo bench --bench migrate`

#[path = "common/mod.rs"]
mod common;

/// The tests' throwaway cluster.
#[path = "../tests/common/postgres.rs"]
#[allow(dead_code)]
mod cluster;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use memwarden::store::rows::RawRow;
use memwarden::store::transfer::Batch;
use memwarden::store::{Entry, Status, Store, StoreOptions};

/// The binary the cluster helper and the measurements run.
fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_memwarden")
}

/// Runs memwarden with `args`; returns seconds and peak RSS in MiB of that process alone.
// The child is waited for by `wait4` (for its own rusage), which std's `Child` cannot do.
#[allow(clippy::zombie_processes)]
fn measure(args: &[&str]) -> (f64, f64) {
    let started = Instant::now();
    let child = Command::new(bin())
        .args(args)
        .env("MEMWARDEN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn memwarden");
    let mut status = 0;
    // SAFETY: rusage is plain old data, zeroed is a valid value; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we just spawned; std's Child is not waited on afterwards.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "memwarden {args:?} failed"
    );
    (
        started.elapsed().as_secs_f64(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// A data dir holding `n` sealed rows.
fn fill(data: &Path, n: usize) {
    let out = Command::new(bin())
        .args(["init", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let keyring = memwarden::keys::Keyring::load(&data.join("keyring.toml")).unwrap();
    let mut store = Store::open(
        &data.join("memory.db"),
        keyring.entry.clone(),
        StoreOptions::default(),
    )
    .unwrap();
    let (key_id, key) = keyring.entry.active();
    let vocab = common::vocabulary(5000);
    let mut rng = common::Rng::new(11);
    for start in (0..n).step_by(1000) {
        let mut batch = Batch::default();
        for i in start..(start + 1000).min(n) {
            let content = common::sentence(&mut rng, &vocab, 60);
            let entry = Entry {
                id: uuid::Uuid::now_v7().to_string(),
                namespace: format!("ns{}", i % 4),
                content_sha256: memwarden::store::seal::content_sha256(&content),
                content,
                tags: vec![format!("t{}", i % 16)],
                metadata: None,
                status: Status::Active,
                supersedes: None,
                principal: "local".into(),
                session_id: "bench".into(),
                created_at: 1_764_000_000_000 + i as i64,
                updated_at: 1_764_000_000_000 + i as i64,
            };
            batch.entries.push(RawRow::sealed(entry, key_id, key));
        }
        store.copy_in(&batch).unwrap();
    }
}

fn main() {
    let n: usize = std::env::var("MEMWARDEN_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let Some(pg) = cluster::Ready::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("backup"),
    );
    let t = Instant::now();
    fill(&a, n);
    println!("filled {n} rows in {:.1} s", t.elapsed().as_secs_f64());
    let to_pg = format!("postgres:{}", pg.app.display());
    let keyring = a.join("keyring.toml");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let runs = [
        (
            "migrate sqlite -> postgres",
            vec![
                "migrate".into(),
                "--from".into(),
                s(&a),
                "--to".into(),
                to_pg.clone(),
            ],
        ),
        (
            "migrate postgres -> sqlite",
            vec![
                "migrate".into(),
                "--keyring-file".into(),
                s(&keyring),
                "--from".into(),
                to_pg.clone(),
                "--to".into(),
                s(&b),
            ],
        ),
        (
            "backup --store postgres",
            vec![
                "backup".into(),
                "--data-dir".into(),
                s(&a),
                "--store".into(),
                "postgres".into(),
                "--database-file".into(),
                s(&pg.app),
                "--out".into(),
                s(&out),
            ],
        ),
    ];
    println!("| {n} rows | seconds | rows/s | peak RSS MiB |");
    println!("|---|---:|---:|---:|");
    for (what, args) in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (secs, rss) = measure(&args);
        println!("| {what} | {secs:.1} | {:.0} | {rss:.1} |", n as f64 / secs);
    }
}
