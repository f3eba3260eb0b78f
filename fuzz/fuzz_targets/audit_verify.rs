//! The auditor's verifier on mutated audit databases. A real audit.db (a short chain written by
//! the server's own append code) is the template; the input is a list of byte edits and cuts
//! applied to it. Invariants: nothing panics, and whenever the full check (MACs with the key,
//! and the head kept elsewhere) passes, the events read back are exactly the template's: no
//! edit, cut, reorder or lost row of the chain goes unreported. The template holds signed
//! checkpoint events (every 3 events), checked with the public key alone as an auditor would:
//! the same invariant holds for that check, and a cut below a checkpoint kept elsewhere fails.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use memwarden::audit::checkpoint::{Checkpoint, VerifierKey, Verifiers};
use memwarden::audit::{self, AuditLog, CheckpointPolicy, Head, Kind, NewEvent};
use memwarden::keys::{KeySet, Keyring};
use rusqlite::Connection;
use serde_json::json;

struct Template {
    bytes: Vec<u8>,
    keys: KeySet,
    head: Head,
    rows: Vec<String>,
    verifiers: Verifiers,
    /// The template's last checkpoint, as an auditor keeps it.
    kept: Checkpoint,
}

/// Every column of every event, in seq order, as text.
fn rows(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT seq, ts, kind, session_id, principal, tool, outcome, code, detail, prev_hash, \
         hash, mac FROM events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let cols: Vec<String> = (0..12)
            .map(|i| row.get_ref(i).map(|v| format!("{v:?}")))
            .collect::<rusqlite::Result<_>>()?;
        out.push(cols.join("|"));
    }
    Ok(out)
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        let ring = Keyring::generate().expect("keys");
        let keys = ring.audit;
        let signer = memwarden::audit::checkpoint::signers(&ring.audit_signing.expect("signing key")).remove(0);
        let verifiers =
            Verifiers::from_keys(vec![VerifierKey::parse(&signer.vkey()).expect("vkey")]);
        let policy = CheckpointPolicy {
            every_events: 3,
            every: Duration::from_secs(3600),
        };
        let mut log = AuditLog::open(&path, keys.clone())
            .expect("open")
            .with_checkpoints(signer, policy);
        for (i, kind) in [Kind::SessionStart, Kind::Call, Kind::Call, Kind::Security]
            .into_iter()
            .chain([Kind::Call, Kind::Admin, Kind::SessionEnd])
            .enumerate()
        {
            let event = NewEvent {
                session_id: Some("65cc0a3e-bfa4-4faa-8bb3-f3d30425168d"),
                principal: Some("local"),
                ..NewEvent::new(kind, json!({"n": i, "ids": [format!("{i:036}")]}))
            };
            log.append(&event, 1_764_000_000_000 + i as i64)
                .expect("append");
        }
        let note = log
            .checkpoint(None, None, 1_764_000_100_000)
            .expect("checkpoint")
            .expect("a checkpoint at the end");
        let kept = verifiers.open(&note).expect("own checkpoint verifies").0;
        log.close().expect("close");
        let bytes = std::fs::read(&path).expect("read");
        let conn = audit::open_ro(&path).expect("open_ro");
        let head = audit::append::head(&conn).expect("head");
        let rows = rows(&conn).expect("rows");
        Template {
            bytes,
            keys,
            head,
            rows,
            verifiers,
            kept,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let mut bytes = t.bytes.clone();
    // Each 4-byte op: offset (u16, modulo the length), value, and what to do with them.
    for op in data.chunks_exact(4).take(64) {
        if bytes.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % bytes.len();
        match op[3] % 8 {
            0..=5 => bytes[at] ^= op[2].max(1),
            6 => bytes[at] = op[2],
            _ => bytes.truncate(at),
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    std::fs::write(&path, &bytes).expect("write");
    let Ok(conn) = audit::open_ro(&path) else {
        return;
    };
    let _ = audit::verify::verify(&conn, None, None);
    let _ = audit::append::head(&conn);
    let full = audit::verify::verify(&conn, Some(&t.keys), Some(&t.head));
    // What an auditor without any secret checks: links, checkpoint signatures, and the
    // checkpoint kept elsewhere.
    let public = audit::verify::verify_with(
        &conn,
        &audit::verify::Checks {
            verifiers: Some(&t.verifiers),
            external: std::slice::from_ref(&t.kept),
            ..Default::default()
        },
    );
    if bytes == t.bytes {
        assert!(
            matches!(&full, Ok(r) if r.damage.is_none()),
            "the untouched template must verify: {full:?}"
        );
        assert!(
            matches!(&public, Ok(r) if r.damage.is_none() && r.checkpoints >= 3),
            "the untouched template must verify with the public key: {public:?}"
        );
    }
    // Passing with the public key means every event up to the kept checkpoint is as written
    // (what follows it is signed by nobody yet).
    if let Ok(report) = public
        && report.damage.is_none()
    {
        // The chain hash covers every column but the MAC, which only the audit key can check:
        // compare without it.
        let unmac = |r: &String| {
            r.rsplit_once('|')
                .map_or(String::new(), |(head, _)| head.to_string())
        };
        let read: Vec<String> = rows(&conn)
            .expect("verify read these rows, so can we")
            .iter()
            .map(unmac)
            .collect();
        let written: Vec<String> = t.rows.iter().map(unmac).collect();
        let covered = t.kept.size as usize;
        assert!(
            read.len() >= covered && read[..covered] == written[..covered],
            "the public-key check passed on a chain whose signed part differs"
        );
    }
    if let Ok(report) = full
        && report.damage.is_none()
    {
        let read = rows(&conn).expect("verify read these rows, so can we");
        let differ = read.iter().zip(&t.rows).find(|(a, b)| a != b);
        assert!(
            read.len() == t.rows.len() && differ.is_none(),
            "verify passed on a chain that differs from what was written: {} rows vs {}, first difference {differ:?}",
            read.len(),
            t.rows.len()
        );
    }
});
