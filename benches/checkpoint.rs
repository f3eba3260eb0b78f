//! Cost of signed audit checkpoints (issue 17), in-process, printed as plain numbers:
//! - the audit append on the store path, p50/p99, without checkpoints and with them (every 1000
//!   events, the default, and every 100);
//! - one Ed25519 signature of a checkpoint;
//! - `audit verify` with the public key alone (and with the audit key) over a log of
//!   MEMWARDEN_BENCH_EVENTS events (default 100k), extrapolated to 1M.
//!
//! Run with `cargo bench --bench checkpoint`.

use std::time::{Duration, Instant};

use memwarden::audit::append::{GENESIS, RowFields, chain_hash, chain_mac};
use memwarden::audit::checkpoint::{Checkpoint, VerifierKey, Verifiers, origin_of};
use memwarden::audit::{self, AuditLog, CheckpointPolicy, Kind, NewEvent};
use memwarden::keys::Keyring;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Appends `n` call events, timing each; returns the sorted times of all appends and of those
/// that carried a checkpoint (the head moved by 2).
fn appends(n: usize, every: Option<u64>) -> (Vec<Duration>, Vec<Duration>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let ring = Keyring::generate().unwrap();
    let mut log = AuditLog::open(&path, ring.audit.clone()).unwrap();
    if let Some(every) = every {
        let signer = memwarden::audit::checkpoint::signers(&ring.audit_signing.unwrap()).remove(0);
        log = log.with_checkpoints(
            signer,
            CheckpointPolicy {
                every_events: every,
                every: Duration::from_secs(3600),
            },
        );
    }
    let mut times = Vec::with_capacity(n);
    let mut carrying = Vec::new();
    let mut last = log.head().unwrap().seq;
    for i in 0..n {
        let event = NewEvent {
            session_id: Some("65cc0a3e-bfa4-4faa-8bb3-f3d30425168d"),
            principal: Some("local"),
            tool: Some("memory_store"),
            outcome: Some(audit::Outcome::Ok),
            ..NewEvent::new(
                Kind::Call,
                json!({"created": format!("{i:036}"), "bytes": 120, "args": "ab".repeat(32)}),
            )
        };
        let t = Instant::now();
        let head = log.append(&event, 1_764_000_000_000 + i as i64).unwrap();
        let took = t.elapsed();
        times.push(took);
        if head.seq == last + 2 {
            carrying.push(took);
        }
        last = head.seq;
    }
    log.close().unwrap();
    times.sort();
    carrying.sort();
    (times, carrying)
}

/// Writes a log of `n` events straight into audit.db (one transaction, as the server's append
/// would have chained them), with a signed checkpoint event every 1000.
fn build_log(path: &std::path::Path, n: i64, ring: &Keyring) {
    let conn = audit::open_rw(path).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    let (key_id, key) = ring.audit.active();
    let signer =
        memwarden::audit::checkpoint::signers(ring.audit_signing.as_ref().unwrap()).remove(0);
    let mut prev = GENESIS;
    let mut origin = String::new();
    let mut stmt = conn
        .prepare(
            "INSERT INTO events (seq, ts, kind, session_id, principal, tool, outcome, code, \
             detail, prev_hash, hash, key_id, mac) \
             VALUES (?1, ?2, ?3, 's', 'local', ?4, ?5, NULL, ?6, ?7, ?8, ?9, ?10)",
        )
        .unwrap();
    for seq in 1..=n {
        let ts = "2026-11-30T00:00:00.000Z";
        let (kind, tool, outcome, detail) = if seq > 1 && seq % 1000 == 0 {
            let cp = Checkpoint {
                origin: origin.clone(),
                size: (seq - 1) as u64,
                hash: prev,
                time: Some(1_764_000_000),
            };
            let note = signer.sign(&cp);
            (
                "checkpoint",
                None,
                None,
                json!({"event": "checkpoint", "size": seq - 1, "key": signer.name(), "note": note})
                    .to_string(),
            )
        } else {
            (
                "call",
                Some("memory_store"),
                Some("ok"),
                json!({"created": format!("{seq:036}"), "bytes": 120, "args": "ab".repeat(32)})
                    .to_string(),
            )
        };
        let row = RowFields {
            seq,
            ts,
            kind,
            session_id: Some("s"),
            principal: Some("local"),
            tool,
            outcome,
            code: None,
            detail: &detail,
            key_id,
        };
        let hash = chain_hash(&prev, &row);
        let mac = chain_mac(key, &hash);
        stmt.execute(rusqlite::params![
            seq,
            ts,
            kind,
            tool,
            outcome,
            detail,
            hex::encode(prev),
            hex::encode(hash),
            key_id,
            hex::encode(mac)
        ])
        .unwrap();
        if seq == 1 {
            origin = origin_of(&hex::encode(hash));
        }
        prev = hash;
    }
    drop(stmt);
    conn.execute_batch("COMMIT").unwrap();
}

fn main() {
    let n: usize = std::env::var("MEMWARDEN_BENCH_APPENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    println!("audit append on the store path ({n} appends per round, synchronous = FULL):");
    let configs = [
        ("no checkpoints", None),
        ("checkpoint every 1000", Some(1000)),
        ("checkpoint every 100", Some(100)),
    ];
    // Rounds in rotating order, so disk noise from other processes spreads over all three.
    let mut all: Vec<(Vec<Duration>, Vec<Duration>)> = vec![Default::default(); 3];
    for round in 0..3 {
        for k in 0..3 {
            let i = (round + k) % 3;
            let (t, c) = appends(n, configs[i].1);
            all[i].0.extend(t);
            all[i].1.extend(c);
        }
    }
    for (i, (label, _)) in configs.iter().enumerate() {
        let (t, c) = &mut all[i];
        t.sort();
        c.sort();
        print!(
            "  {label:<22} p50 {:>9.1?}  p99 {:>9.1?}",
            percentile(t, 0.5),
            percentile(t, 0.99)
        );
        if !c.is_empty() {
            print!(
                "   appends carrying a checkpoint ({}): p50 {:>9.1?}",
                c.len(),
                percentile(c, 0.5)
            );
        }
        println!();
    }

    let ring = Keyring::generate().unwrap();
    let signer =
        memwarden::audit::checkpoint::signers(ring.audit_signing.as_ref().unwrap()).remove(0);
    let cp = Checkpoint {
        origin: origin_of(&"ab".repeat(32)),
        size: 123_456,
        hash: [7; 32],
        time: Some(1_764_000_000),
    };
    let t = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(signer.sign(std::hint::black_box(&cp)));
    }
    println!("sign one checkpoint: {:.1?}", t.elapsed() / 1000);

    let events: i64 = std::env::var("MEMWARDEN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    build_log(&path, events, &ring);
    let verifiers = Verifiers::from_keys(vec![VerifierKey::parse(&signer.vkey()).unwrap()]);
    let conn = audit::open_ro(&path).unwrap();
    let per_m = |d: Duration| d.as_secs_f64() * 1_000_000.0 / events as f64;
    for (label, keys, verifiers) in [
        ("links only", None, None),
        ("public key", None, Some(&verifiers)),
        (
            "public key + audit key",
            Some(&ring.audit),
            Some(&verifiers),
        ),
    ] {
        let t = Instant::now();
        let report = audit::verify::verify_with(
            &conn,
            &audit::verify::Checks {
                keys,
                verifiers,
                ..Default::default()
            },
        )
        .unwrap();
        let took = t.elapsed();
        assert!(report.damage.is_none(), "{:?}", report.damage);
        println!(
            "verify {events} events ({} checkpoints), {label:<22}: {took:.2?} (~{:.1} s per 1M)",
            report.checkpoints,
            per_m(took)
        );
    }
}
