//! Signed audit checkpoints (issue 17): an auditor verifies with the public key alone, and a
//! history rewritten by someone holding the audit HMAC key is caught by a checkpoint kept
//! elsewhere and by the witness, though every link and MAC passes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestDir;
use memwarden::audit::append::{RowFields, chain_hash, chain_mac};
use memwarden::keys::SecretKey;

/// An auditor's workspace: a copy of audit.db and the public key file, never the keyring.
struct Auditor {
    dir: tempfile::TempDir,
}

impl Auditor {
    fn from(data: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::copy(data.join("audit.db"), dir.path().join("audit.db")).unwrap();
        fs::copy(
            data.join("audit-signing.pub"),
            dir.path().join("audit-signing.pub"),
        )
        .unwrap();
        Self { dir }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("audit.db")
    }

    fn public_key(&self) -> PathBuf {
        self.dir.path().join("audit-signing.pub")
    }

    fn conn(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).unwrap()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, text).unwrap();
        p
    }

    /// `audit verify --db COPY --public-key PUB EXTRA…` in a read-only directory.
    fn verify(&self, extra: &[&str]) -> (bool, String) {
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        let out = Command::new(common::bin())
            .args(["audit", "verify", "--db"])
            .arg(self.db())
            .arg("--public-key")
            .arg(self.public_key())
            .args(extra)
            .output()
            .unwrap();
        fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        output(out)
    }

    fn checkpoint(&self) -> String {
        let out = Command::new(common::bin())
            .args(["audit", "checkpoint", "--db"])
            .arg(self.db())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output(out).1);
        String::from_utf8(out.stdout).unwrap()
    }
}

fn output(out: std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `audit witness` with this public key and state file.
fn witness(
    public_key: &Path,
    state: &Path,
    db: Option<&Path>,
    checkpoint: &Path,
) -> (bool, String) {
    let mut cmd = Command::new(common::bin());
    cmd.args(["audit", "witness", "--public-key"])
        .arg(public_key)
        .arg("--state")
        .arg(state);
    if let Some(db) = db {
        cmd.arg("--db").arg(db);
    }
    output(cmd.arg(checkpoint).output().unwrap())
}

async fn session_with_calls(dir: &TestDir, n: usize, extra: &[String]) {
    let client = dir.connect_with(extra).await;
    for i in 0..n {
        client.store(&format!("entry {i}")).await;
    }
    client.close().await;
}

/// One event row, every column.
#[derive(Debug, Clone)]
struct Row {
    seq: i64,
    ts: String,
    kind: String,
    session_id: Option<String>,
    principal: Option<String>,
    tool: Option<String>,
    outcome: Option<String>,
    code: Option<String>,
    detail: String,
    key_id: String,
}

/// What an attacker holding the audit HMAC key (any root on the host) can do: read every
/// event, `edit` the list (drop, change), renumber, and recompute every hash and MAC with the
/// real key read from keyring.toml. Links and MACs pass afterwards.
fn rewrite_with_audit_key(db: &Path, keyring: &Path, edit: impl FnOnce(&mut Vec<Row>)) {
    let ring: toml::Value = toml::from_str(&fs::read_to_string(keyring).unwrap()).unwrap();
    let key_of = |id: &str| {
        let hex_key = ring["audit"]["keys"][id].as_str().unwrap();
        SecretKey::from_bytes(hex::decode(hex_key).unwrap())
    };
    let c = rusqlite::Connection::open(db).unwrap();
    let mut rows: Vec<Row> = c
        .prepare(
            "SELECT seq, ts, kind, session_id, principal, tool, outcome, code, detail, key_id \
             FROM events ORDER BY seq",
        )
        .unwrap()
        .query_map([], |r| {
            Ok(Row {
                seq: r.get(0)?,
                ts: r.get(1)?,
                kind: r.get(2)?,
                session_id: r.get(3)?,
                principal: r.get(4)?,
                tool: r.get(5)?,
                outcome: r.get(6)?,
                code: r.get(7)?,
                detail: r.get(8)?,
                key_id: r.get(9)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    edit(&mut rows);
    c.execute("DELETE FROM events", []).unwrap();
    let mut prev = [0u8; 32];
    for (i, row) in rows.iter_mut().enumerate() {
        row.seq = i as i64 + 1;
        let fields = RowFields {
            seq: row.seq,
            ts: &row.ts,
            kind: &row.kind,
            session_id: row.session_id.as_deref(),
            principal: row.principal.as_deref(),
            tool: row.tool.as_deref(),
            outcome: row.outcome.as_deref(),
            code: row.code.as_deref(),
            detail: &row.detail,
            key_id: &row.key_id,
        };
        let hash = chain_hash(&prev, &fields);
        let mac = chain_mac(&key_of(&row.key_id), &hash);
        c.execute(
            "INSERT INTO events (seq, ts, kind, session_id, principal, tool, outcome, code, \
             detail, prev_hash, hash, key_id, mac) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            rusqlite::params![
                row.seq,
                row.ts,
                row.kind,
                row.session_id,
                row.principal,
                row.tool,
                row.outcome,
                row.code,
                row.detail,
                hex::encode(prev),
                hex::encode(hash),
                row.key_id,
                hex::encode(mac)
            ],
        )
        .unwrap();
        prev = hash;
    }
}

/// `audit verify` with the keyring only (links and MACs), on a data dir's audit.db.
fn verify_with_keyring(data: &Path) -> (bool, String) {
    output(
        Command::new(common::bin())
            .args(["audit", "verify", "--db"])
            .arg(data.join("audit.db"))
            .arg("--keyring")
            .arg(data.join("keyring.toml"))
            .output()
            .unwrap(),
    )
}

#[tokio::test]
async fn the_public_key_alone_verifies_and_every_tamper_is_still_caught() {
    let dir = TestDir::new();
    dir.init();
    let pubkey = fs::read_to_string(dir.data().join("audit-signing.pub")).unwrap();
    assert!(
        pubkey
            .lines()
            .any(|l| l.starts_with("memwarden/audit-key/s1+")),
        "{pubkey}"
    );
    session_with_calls(&dir, 4, &[]).await;
    let older = Auditor::from(&dir.data());
    session_with_calls(&dir, 4, &[]).await;
    // chain_start, then per session: start, 4 calls, end, checkpoint (signing the end).
    let clean = Auditor::from(&dir.data());
    let (ok, out) = clean.verify(&[]);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 15 events"), "{out}");
    assert!(out.contains("MACs NOT checked"), "{out}");
    assert!(
        out.contains("2 signatures verified; the last (event 15) signs seq 14; 0 events after"),
        "{out}"
    );
    let latest = clean.checkpoint();
    assert!(latest.contains("\n14\n"), "{latest}");
    let latest_file = clean.file("latest.ckpt", &latest);
    let (ok, out) = clean.verify(&["--checkpoint", latest_file.to_str().unwrap()]);
    assert!(
        ok && out.contains("1 checkpoint(s) kept elsewhere match"),
        "{out}"
    );

    // Each case on a fresh copy, with the public key alone.
    let case = |sql: &str, want: &[&str], extra: &[&str]| {
        let a = Auditor::from(&dir.data());
        a.conn().execute_batch(sql).unwrap();
        let ckpt = a.file("kept.ckpt", &latest);
        let ckpt = ckpt.to_str().unwrap().to_string();
        let mut args: Vec<&str> = extra.to_vec();
        if extra.contains(&"--checkpoint") {
            args.push(&ckpt);
        }
        let (ok, out) = a.verify(&args);
        assert!(!ok, "{sql}: {out}");
        for w in want {
            assert!(out.contains(w), "{sql}: want {w:?} in {out}");
        }
    };
    case(
        "UPDATE events SET outcome = 'denied' WHERE seq = 5",
        &["FAILED at seq 5", "edited"],
        &[],
    );
    case(
        "DELETE FROM events WHERE seq = 6",
        &["seq 6 is missing"],
        &[],
    );
    case(
        "UPDATE events SET seq = -3 WHERE seq = 3; UPDATE events SET seq = 3 WHERE seq = 4; \
         UPDATE events SET seq = 4 WHERE seq = -3;",
        &["FAILED at seq 3"],
        &[],
    );
    case(
        "UPDATE events SET mac = upper(mac) WHERE seq = 7",
        &["FAILED at seq 7", "MAC"],
        &[],
    );
    // A checkpoint event edited in place no longer matches its own hash.
    case(
        "UPDATE events SET detail = replace(detail, '\\n14\\n', '\\n13\\n') WHERE seq = 15",
        &["FAILED at seq 15", "edited"],
        &[],
    );
    // Cut below the last checkpoint: the chain alone links, the kept checkpoint catches it.
    case(
        "DELETE FROM events WHERE seq > 9",
        &["FAILED at seq 14", "ends at 9"],
        &["--checkpoint"],
    );
    // An older copy, verified against the newer checkpoint.
    let ckpt = older.file("kept.ckpt", &latest);
    let (ok, out) = older.verify(&["--checkpoint", ckpt.to_str().unwrap()]);
    assert!(!ok && out.contains("FAILED at seq 14"), "{out}");

    // A forged event appended with a correct link but no key passes linkage; the report says
    // it lies after the last signed checkpoint, so nothing vouches for it.
    let a = Auditor::from(&dir.data());
    {
        let c = a.conn();
        let (prev, ts): (String, String) = c
            .query_row("SELECT hash, ts FROM events WHERE seq = 15", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let detail = r#"{"event":"nothing to see"}"#;
        let row = RowFields {
            seq: 16,
            ts: &ts,
            kind: "admin",
            session_id: None,
            principal: Some("root"),
            tool: None,
            outcome: None,
            code: None,
            detail,
            key_id: "a1",
        };
        let hash = chain_hash(&hex::decode(&prev).unwrap(), &row);
        c.execute(
            "INSERT INTO events (seq, ts, kind, principal, detail, prev_hash, hash, key_id, mac) \
             VALUES (16, ?1, 'admin', 'root', ?2, ?3, ?4, 'a1', ?5)",
            rusqlite::params![ts, detail, prev, hex::encode(hash), "00".repeat(32)],
        )
        .unwrap();
    }
    let (ok, out) = a.verify(&[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("1 events after it are not yet signed"),
        "{out}"
    );
}

#[tokio::test]
async fn a_history_rewritten_with_the_audit_key_is_caught_by_an_old_checkpoint_and_the_witness() {
    let dir = TestDir::new();
    dir.init();
    let data = dir.data();
    session_with_calls(&dir, 4, &[]).await;
    // The auditor keeps this checkpoint off the host; the witness keeps it too.
    let first = Auditor::from(&data);
    let kept_note = first.checkpoint();
    assert!(kept_note.contains("\n7\n"), "{kept_note}");
    let kept = first.file("kept.ckpt", &kept_note);
    let state = first.dir.path().join("witness.state");
    let (ok, out) = witness(
        &first.public_key(),
        &state,
        Some(&data.join("audit.db")),
        &kept,
    );
    assert!(ok && out.contains("accepted the first checkpoint"), "{out}");
    assert!(out.contains("the log between them verifies"), "{out}");
    session_with_calls(&dir, 4, &[]).await;

    // Root rewrites the whole history with the audit key: one call event (seq 4) vanishes and
    // the checkpoints it cannot re-sign are dropped; every hash and MAC is recomputed.
    rewrite_with_audit_key(&data.join("audit.db"), &data.join("keyring.toml"), |rows| {
        rows.retain(|r| r.seq != 4 && r.kind != "checkpoint");
    });
    let (ok, out) = verify_with_keyring(&data);
    assert!(
        ok && out.contains("MACs verified"),
        "links and MACs pass: {out}"
    );
    let a = Auditor::from(&data);
    let (ok, out) = a.verify(&[]);
    assert!(ok && out.contains("checkpoints: NONE"), "{out}");
    // The kept checkpoint does not match the log at its seq.
    let kept_copy = a.file("kept.ckpt", &kept_note);
    let (ok, out) = a.verify(&["--checkpoint", kept_copy.to_str().unwrap()]);
    assert!(
        !ok && out.contains("FAILED at seq 7") && out.contains("rewritten"),
        "{out}"
    );

    // The server goes on signing the rewritten log; the witness refuses the new checkpoint.
    session_with_calls(&dir, 1, &[]).await;
    let after = Auditor::from(&data);
    let new = after.file("new.ckpt", &after.checkpoint());
    let before = fs::read(&state).unwrap();
    let (ok, out) = witness(
        &first.public_key(),
        &state,
        Some(&data.join("audit.db")),
        &new,
    );
    assert!(
        !ok && out.contains("REFUSED") && out.contains("seq 7"),
        "{out}"
    );
    assert_eq!(
        fs::read(&state).unwrap(),
        before,
        "the state file is unchanged"
    );
}

#[tokio::test]
async fn truncation_below_the_last_checkpoint_is_caught_and_the_witness_refuses_a_rollback() {
    let dir = TestDir::new();
    dir.init();
    let data = dir.data();
    session_with_calls(&dir, 4, &[]).await;
    session_with_calls(&dir, 4, &[]).await;
    let a = Auditor::from(&data);
    let kept = a.file("kept.ckpt", &a.checkpoint());
    let state = a.dir.path().join("witness.state");
    let (ok, out) = witness(&a.public_key(), &state, None, &kept);
    assert!(ok && out.contains("history NOT checked"), "{out}");
    // Same checkpoint again: unchanged.
    let (ok, out) = witness(&a.public_key(), &state, None, &kept);
    assert!(ok && out.contains("unchanged"), "{out}");

    rusqlite::Connection::open(data.join("audit.db"))
        .unwrap()
        .execute("DELETE FROM events WHERE seq > 9", [])
        .unwrap();
    let b = Auditor::from(&data);
    let (ok, out) = b.verify(&["--checkpoint", kept.to_str().unwrap()]);
    assert!(
        !ok && out.contains("FAILED at seq 14") && out.contains("ends at 9"),
        "{out}"
    );
    // A new session on the cut log signs seq 11: older than the kept 14.
    session_with_calls(&dir, 0, &[]).await;
    let c = Auditor::from(&data);
    let new = c.file("new.ckpt", &c.checkpoint());
    let before = fs::read(&state).unwrap();
    let (ok, out) = witness(&a.public_key(), &state, Some(&data.join("audit.db")), &new);
    assert!(!ok && out.contains("REFUSED: rollback"), "{out}");
    assert_eq!(fs::read(&state).unwrap(), before);
}

#[tokio::test]
async fn bad_signatures_and_another_logs_checkpoints_are_refused() {
    let one = TestDir::new();
    one.init();
    session_with_calls(&one, 2, &[]).await;
    let two = TestDir::new();
    two.init();
    session_with_calls(&two, 2, &[]).await;
    let a = Auditor::from(&one.data());
    let b = Auditor::from(&two.data());
    let note_a = a.checkpoint();
    let note_b = b.checkpoint();

    // A kept checkpoint whose signature was altered: refused, never trusted.
    let sig_at = note_a.rfind(' ').unwrap() + 30;
    let mut forged = note_a.clone().into_bytes();
    forged[sig_at] = if forged[sig_at] == b'A' { b'B' } else { b'A' };
    let forged = a.file("forged.ckpt", &String::from_utf8(forged).unwrap());
    let (ok, out) = a.verify(&["--checkpoint", forged.to_str().unwrap()]);
    assert!(!ok && out.contains("does not verify"), "{out}");
    let state = a.dir.path().join("witness.state");
    let (ok, out) = witness(&a.public_key(), &state, None, &forged);
    assert!(!ok && out.contains("does not verify"), "{out}");
    assert!(!state.exists(), "nothing kept");

    // A checkpoint event whose signature was altered by someone with the audit key (links and
    // MACs recomputed): the public key catches it.
    rewrite_with_audit_key(
        &one.data().join("audit.db"),
        &one.data().join("keyring.toml"),
        |rows| {
            let ck = rows.iter_mut().rfind(|r| r.kind == "checkpoint").unwrap();
            let mut d: serde_json::Value = serde_json::from_str(&ck.detail).unwrap();
            let note = d["note"].as_str().unwrap().to_string();
            let at = note.rfind(' ').unwrap() + 30;
            let mut bytes = note.into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            d["note"] = String::from_utf8(bytes).unwrap().into();
            ck.detail = d.to_string();
        },
    );
    assert!(verify_with_keyring(&one.data()).0, "links and MACs pass");
    let tampered = Auditor::from(&one.data());
    let (ok, out) = tampered.verify(&[]);
    assert!(
        !ok && out.contains("FAILED at seq 6") && out.contains("does not verify"),
        "{out}"
    );

    // Another log's checkpoint, even signed by a key the auditor trusts, is named as such.
    let both = format!(
        "{}{}",
        fs::read_to_string(a.public_key()).unwrap(),
        fs::read_to_string(b.public_key()).unwrap()
    );
    let both = a.file("both.pub", &both);
    let other = a.file("other.ckpt", &note_b);
    let (ok, out) = output(
        Command::new(common::bin())
            .args(["audit", "verify", "--db"])
            .arg(a.db())
            .arg("--public-key")
            .arg(&both)
            .arg("--checkpoint")
            .arg(&other)
            .output()
            .unwrap(),
    );
    assert!(
        !ok && out.contains("is of log memwarden/audit-log/"),
        "{out}"
    );
    // Signed only by a key the auditor does not trust: refused outright.
    let (ok, out) = a.verify(&["--checkpoint", other.to_str().unwrap()]);
    assert!(!ok && out.contains("no signature by a known key"), "{out}");
    // The witness keeps log one and refuses log two.
    let mine = a.file("mine.ckpt", &note_a);
    assert!(witness(&both, &state, None, &mine).0);
    let (ok, out) = witness(&both, &state, None, &other);
    assert!(
        !ok && out.contains("REFUSED") && out.contains("log"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&state).unwrap(), note_a);
}

#[tokio::test]
async fn signing_key_rotation_across_a_long_log_and_keyrings_made_before_checkpoints() {
    let dir = TestDir::new();
    dir.init();
    let data = dir.data();
    // A keyring from before checkpoints: no [audit_signing], no public key file.
    let ring_path = data.join("keyring.toml");
    let ring = fs::read_to_string(&ring_path).unwrap();
    let cut = ring
        .find("[audit_signing")
        .expect("a new keyring has the section");
    fs::write(&ring_path, &ring[..cut]).unwrap();
    fs::remove_file(data.join("audit-signing.pub")).unwrap();
    session_with_calls(&dir, 2, &[]).await;
    let events = common::audit_events(&dir);
    assert!(events.iter().all(|e| e["kind"] != "checkpoint"), "unsigned");
    let out = dir.cli(&["health"]);
    let health = String::from_utf8_lossy(&out.stdout);
    assert!(health.contains("no audit signing key"), "{health}");
    assert!(!dir.cli(&["audit", "checkpoint"]).status.success());
    assert!(
        fs::read_to_string(dir.stderr_log())
            .unwrap()
            .contains("no audit checkpoints are signed")
    );

    // The first signing key, then a long log signed every 25 events.
    let out = dir.cli(&["keys", "rotate", "--audit-signing"]);
    assert!(out.status.success(), "{}", output(out).1);
    let policy = format!(
        "{}\n[audit]\ncheckpoint_every_events = 25\n",
        include_str!("../policies/default.toml")
    );
    let args = dir.policy(&policy);
    session_with_calls(&dir, 60, &args).await;
    let out = dir.cli(&["keys", "rotate", "--audit-signing"]);
    assert!(out.status.success(), "{}", output(out).1);
    session_with_calls(&dir, 60, &args).await;

    let pubs = fs::read_to_string(data.join("audit-signing.pub")).unwrap();
    let s1 = pubs.lines().find(|l| l.contains("audit-key/s1+")).unwrap();
    let s2 = pubs.lines().find(|l| l.contains("audit-key/s2+")).unwrap();
    let printed = String::from_utf8(dir.cli(&["audit", "public-key"]).stdout).unwrap();
    assert!(printed.contains(s1) && printed.contains(s2), "{printed}");
    let events = common::audit_events(&dir);
    let signed_by = |k: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == "checkpoint" && e["detail"]["key"] == k)
            .count()
    };
    assert!(
        signed_by("memwarden/audit-key/s1") >= 3,
        "{}",
        signed_by("memwarden/audit-key/s1")
    );
    assert!(signed_by("memwarden/audit-key/s2") >= 3);
    // No stretch of 25 events without a checkpoint once signing began.
    let seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "checkpoint")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] - w[0] <= 26), "{seqs:?}");

    let a = Auditor::from(&data);
    let (ok, out) = a.verify(&[]);
    assert!(ok, "both keys verify their checkpoints: {out}");
    // The old key alone stops at the first checkpoint the new key signed.
    let only_s1 = a.file("s1.pub", s1);
    let (ok, out) = output(
        Command::new(common::bin())
            .args(["audit", "verify", "--db"])
            .arg(a.db())
            .arg("--public-key")
            .arg(&only_s1)
            .output()
            .unwrap(),
    );
    assert!(!ok && out.contains("no signature by a known key"), "{out}");
}
