//! Throughput of `memwarden export` and `memwarden import` (issue 15, item 2), through the real
//! binary on SQLite, printed as plain numbers: MEMWARDEN_BENCH_ROWS rows (default 100k, about
//! 400 bytes of content each) are sealed into a data dir in-process, exported to a file, and
//! imported into a fresh data dir sharing the keyring; each side reports rows/s, the whole
//! command timed (start-up, seal checks, the file's SHA-256, the audit event, the commit).
//!
//! Run with `cargo bench --bench portable`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use memwarden::keys::Keyring;
use memwarden::store::{Author, NewEntry, Status, Store, StoreOptions, Synchronous};

fn memwarden(args: &[&str], data: &Path) -> f64 {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_memwarden"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run memwarden");
    let took = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    let n: usize = std::env::var("MEMWARDEN_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    memwarden(&["init"], &src);
    let ring = Keyring::load(&src.join("keyring.toml")).unwrap();
    let vocab = common::vocabulary(5000);
    let mut rng = common::Rng::new(7);
    let populate = Instant::now();
    {
        let mut store = Store::open(
            &src.join("memory.db"),
            ring.entry.clone(),
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
            store
                .insert(
                    author,
                    NewEntry {
                        namespace: format!("ns{}", i % 4),
                        content: common::sentence(&mut rng, &vocab, 60),
                        tags: vec![format!("t{}", i % 16)],
                        metadata: None,
                        status: Status::Active,
                    },
                    1_764_000_000_000 + i as i64,
                )
                .and_then(|w| w.commit_unaudited())
                .unwrap();
        }
    }
    let populate = populate.elapsed().as_secs_f64();
    let file = tmp.path().join("export.jsonl");
    let export = memwarden(&["export", "--out", file.to_str().unwrap()], &src);
    let bytes = std::fs::metadata(&file).unwrap().len();

    // A fresh data dir sharing the source's keyring (init with it, then keep it in the dir).
    let dst = tmp.path().join("dst");
    let shared = tmp.path().join("shared-keyring.toml");
    let private = || std::fs::Permissions::from_mode(0o600);
    std::fs::copy(src.join("keyring.toml"), &shared).unwrap();
    std::fs::set_permissions(&shared, private()).unwrap();
    memwarden(&["init", "--keyring-file", shared.to_str().unwrap()], &dst);
    std::fs::copy(&shared, dst.join("keyring.toml")).unwrap();
    std::fs::set_permissions(dst.join("keyring.toml"), private()).unwrap();
    let import = memwarden(&["import", file.to_str().unwrap()], &dst);

    println!(
        "reference: the same rows sealed and inserted in-process, one commit each \
         (synchronous=NORMAL): {populate:.2} s = {:.0} rows/s",
        n as f64 / populate
    );
    println!(
        "portable@{n} rows, {:.1} MB file: export {:.2} s = {:.0} rows/s; import {:.2} s = {:.0} rows/s",
        bytes as f64 / 1e6,
        export,
        n as f64 / export,
        import,
        n as f64 / import
    );
}
