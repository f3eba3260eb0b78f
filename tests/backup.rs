//! Online backup while writers run, verified restore, and a tampered backup refused.

mod common;

use std::sync::Arc;

use common::TestDir;
use memwarden::store::testing::{Field, Tamper, Value as TamperValue};

fn run(dir: &TestDir, args: &[&str]) -> (bool, String) {
    let o = dir.cli(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_while_four_writers_run_then_restore() {
    let dir = Arc::new(TestDir::new());
    dir.init();
    let out = dir.tmp.path().join("backup");
    let out_s = out.display().to_string();
    let mut writers = Vec::new();
    for w in 0..4 {
        let dir = dir.clone();
        writers.push(tokio::spawn(async move {
            let c = dir.connect().await;
            for i in 0..150 {
                c.store(&format!("writer {w} entry {i}")).await;
            }
            c.close().await;
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (ok, text) = tokio::task::spawn_blocking({
        let dir = dir.clone();
        let out_s = out_s.clone();
        move || run(&dir, &["backup", "--out", &out_s])
    })
    .await
    .unwrap();
    for w in writers {
        w.await.unwrap();
    }
    assert!(ok, "{text}");
    assert!(text.contains("backup verified"), "{text}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let backed_up = manifest["entries"].as_u64().unwrap();
    assert!(backed_up <= 600);
    assert_eq!(dir.row_count(), 600);

    // Restore: the data goes back to the backup's state, and every check passes.
    let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
    assert!(ok, "{text}");
    assert_eq!(dir.row_count() as u64, backed_up);
    let verify = dir.cli(&["verify"]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(dir.cli(&["audit", "verify"]).status.success());
    let client = dir.connect().await;
    client.store("after restore").await;
    client.close().await;
}

#[test]
fn a_tampered_backup_is_refused_and_nothing_changes() {
    let dir = TestDir::new();
    dir.init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        c.store("precious").await;
        c.close().await;
    });
    let out = dir.tmp.path().join("b");
    let out_s = out.display().to_string();
    assert!(run(&dir, &["backup", "--out", &out_s]).0);

    // Edit a row in the backup and fix the manifest's hash and MAC (as someone holding the
    // keyring could): the seal still catches it.
    let copy = Tamper::open(&out);
    for id in copy.ids() {
        copy.set(&id, Field::Content, TamperValue::Text("forged".into()));
    }
    drop(copy);
    fix_hashes_and_mac(&dir, &out);
    let before = std::fs::read(dir.data().join("memory.db")).unwrap();
    let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
    assert!(
        !ok && text.contains("refusing a damaged backup") && text.contains("do not verify"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(dir.data().join("memory.db")).unwrap(),
        before,
        "live data untouched"
    );

    // A file that no longer matches the (genuine) manifest is refused before anything else.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("audit.db"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"junk").unwrap();
    let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
    assert!(
        !ok && text.contains("does not match the manifest"),
        "{text}"
    );
}

// ---- Issue 18 item 2: a doctored backup must not silence the audit. ----

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// A data dir with a few memories and one read, and a backup of it in `b/`.
fn seeded_with_backup() -> (TestDir, std::path::PathBuf) {
    let dir = TestDir::new();
    dir.init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        let id = c.store("precious").await;
        c.store("also precious").await;
        c.call("memory_get", serde_json::json!({ "id": id })).await;
        c.close().await;
    });
    let out = dir.tmp.path().join("b");
    let (ok, text) = run(&dir, &["backup", "--out", &out.display().to_string()]);
    assert!(ok, "{text}");
    (dir, out)
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// What an attacker without the keyring can do: recompute every SHA-256 in the manifest.
fn fix_hashes(out: &std::path::Path) {
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    for f in ["memory.db", "audit.db"] {
        m["files"][f] = serde_json::json!(sha256_file(&out.join(f)));
    }
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
}

/// What an attacker holding the keyring can do as well: re-MAC the manifest (HMAC-SHA256 under
/// the audit key over the tag and the sorted, compact JSON without `mac`, as README says).
fn fix_hashes_and_mac(dir: &TestDir, out: &std::path::Path) {
    fix_hashes(out);
    let ring: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.data().join("keyring.toml")).unwrap()).unwrap();
    let key = hex::decode(ring["audit"]["keys"]["a1"].as_str().unwrap()).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("mac");
    // Keys sorted at every level (`files` is the only nested object).
    let sorted: std::collections::BTreeMap<String, serde_json::Value> =
        m.as_object().unwrap().clone().into_iter().collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(b"memwarden/backup-manifest/v1\n");
    mac.update(serde_json::to_string(&sorted).unwrap().as_bytes());
    m["mac"] = serde_json::json!(hex::encode(mac.finalize().into_bytes()));
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
}

fn snapshot(dir: &TestDir) -> std::collections::BTreeMap<String, Vec<u8>> {
    common::data_snapshot(dir)
}

fn tamper(path: &std::path::Path, sql: &str) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(sql).unwrap();
    db.close().unwrap();
}

const SILENCE_READS: &str = "CREATE TRIGGER t BEFORE INSERT ON events WHEN NEW.kind='call' \
    AND NEW.tool IN ('memory_get','memory_search','memory_list') BEGIN SELECT RAISE(IGNORE); END;";

#[test]
fn a_backup_whose_audit_db_gained_a_trigger_is_refused_and_nothing_changes() {
    let (dir, out) = seeded_with_backup();
    tamper(&out.join("audit.db"), SILENCE_READS);
    fix_hashes(&out);
    let before = snapshot(&dir);
    let (ok, text) = run(&dir, &["restore", "--from", &out.display().to_string()]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("refusing: manifest.json has a MAC that does not verify"),
        "{text}"
    );
    assert_eq!(snapshot(&dir), before, "the data dir is untouched");
}

#[test]
fn a_re_maced_backup_with_any_stray_schema_object_is_refused_and_nothing_changes() {
    // Even an attacker who holds the keyring (and so can re-MAC the manifest) cannot slip a
    // schema object past restore: each database must hold exactly what the migrations create.
    let cases = [
        ("audit.db", SILENCE_READS, "trigger \"t\" on \"events\""),
        (
            "memory.db",
            "CREATE TRIGGER keep BEFORE UPDATE ON entries BEGIN SELECT RAISE(IGNORE); END;",
            "trigger \"keep\" on \"entries\"",
        ),
        (
            "memory.db",
            "CREATE VIEW everything AS SELECT * FROM entries;",
            "view \"everything\"",
        ),
        (
            "audit.db",
            "DROP INDEX events_ts; CREATE INDEX events_ts ON events (ts, kind);",
            "index \"events_ts\" on \"events\" (changed)",
        ),
    ];
    for (file, sql, named) in cases {
        let (dir, out) = seeded_with_backup();
        tamper(&out.join(file), sql);
        fix_hashes_and_mac(&dir, &out);
        let before = snapshot(&dir);
        let (ok, text) = run(&dir, &["restore", "--from", &out.display().to_string()]);
        assert!(!ok, "{file}: {sql}: {text}");
        assert!(
            text.contains("refusing a damaged backup")
                && text.contains(&format!("{file}: schema objects"))
                && text.contains(named),
            "{file}: {sql}: {text}"
        );
        assert_eq!(snapshot(&dir), before, "{file}: the data dir is untouched");
    }
}

#[test]
fn a_manifest_without_a_valid_mac_is_refused_naming_the_problem_not_the_values() {
    let (dir, out) = seeded_with_backup();
    let original = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&original).unwrap();
    let mac = m["mac"].as_str().unwrap().to_string();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: [(&str, Edit, &str); 4] = [
        (
            "stripped",
            Box::new(|m| {
                m.as_object_mut().unwrap().remove("mac");
            }),
            "carries no MAC",
        ),
        (
            "fewer entries claimed",
            Box::new(|m| m["entries"] = serde_json::json!(1)),
            "does not verify",
        ),
        (
            "an added member",
            Box::new(|m| m["note"] = serde_json::json!("hi")),
            "does not verify",
        ),
        (
            "another key id",
            Box::new(|m| m["mac_key"] = serde_json::json!("a9")),
            "does not hold",
        ),
    ];
    for (what, edit, says) in edits {
        let mut m = m.clone();
        edit(&mut m);
        std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
        let before = snapshot(&dir);
        let (ok, text) = run(&dir, &["restore", "--from", &out.display().to_string()]);
        assert!(!ok && text.contains(says), "{what}: {text}");
        assert!(
            !text.contains(&mac),
            "{what}: the MAC is not echoed: {text}"
        );
        assert_eq!(snapshot(&dir), before, "{what}: the data dir is untouched");
    }
    // The untouched manifest still restores.
    std::fs::write(out.join("manifest.json"), original).unwrap();
    let (ok, text) = run(&dir, &["restore", "--from", &out.display().to_string()]);
    assert!(ok, "{text}");
}

#[test]
fn restore_keeps_the_replaced_audit_db_and_records_its_head() {
    let (dir, out) = seeded_with_backup();
    // Events after the backup: the replaced chain holds more than the backup's.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        c.store("after the backup").await;
        c.close().await;
    });
    let head = String::from_utf8(dir.cli(&["audit", "head"]).stdout).unwrap();
    let head = head.trim().to_string();
    let (ok, text) = run(&dir, &["restore", "--from", &out.display().to_string()]);
    assert!(ok, "{text}");
    let kept: Vec<_> = std::fs::read_dir(dir.data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.db.replaced-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The kept file stands alone (its WAL folded in) and still verifies as the old chain.
    let out_kept = std::process::Command::new(common::bin())
        .args(["audit", "verify", "--db"])
        .arg(&kept[0])
        .args(["--expect-head", &head])
        .output()
        .unwrap();
    assert!(
        out_kept.status.success(),
        "{}",
        String::from_utf8_lossy(&out_kept.stdout)
    );
    let admin = dir.cli(&["audit", "query", "--kind", "admin", "--format", "json"]);
    let admin: Vec<serde_json::Value> = serde_json::from_slice(&admin.stdout).unwrap();
    let restore = admin
        .iter()
        .find(|e| e["detail"]["event"] == "restore")
        .expect("a restore event");
    assert_eq!(restore["detail"]["replaced_audit_head"], head.as_str());
    assert!(dir.cli(&["audit", "verify"]).status.success());
}

// ---- Issue 18 item 6: restore never runs under a live session. ----

/// Names the data dir files whose bytes differ (never dumps them); SQLite's -shm is left out.
fn changed_files(
    before: &std::collections::BTreeMap<String, Vec<u8>>,
    after: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    before
        .keys()
        .chain(after.keys())
        .filter(|k| !k.ends_with("-shm") && before.get(*k) != after.get(*k))
        .cloned()
        .collect()
}

#[test]
fn restore_refuses_while_a_session_runs_and_proceeds_after_it_ends() {
    let (dir, out) = seeded_with_backup();
    let out_s = out.display().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, id) = rt.block_on(async {
        let client = dir.connect().await;
        let id = client.store("acknowledged while restore is tried").await;
        (client, id)
    });
    let rows = dir.row_count();
    let before = snapshot(&dir);
    let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("a memwarden session or command is using")
            && text.contains("stop the service"),
        "{text}"
    );
    assert_eq!(
        changed_files(&before, &snapshot(&dir)),
        Vec::<String>::new()
    );
    assert_eq!(dir.row_count(), rows);
    // The session is unharmed: its acknowledged write is still there and it keeps working.
    rt.block_on(async {
        let got = client
            .call("memory_get", serde_json::json!({ "id": id }))
            .await
            .ok();
        assert_eq!(
            got["memory"]["content"],
            "acknowledged while restore is tried"
        );
        client.close().await;
    });

    // Once the session has gone, restore proceeds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
        if ok {
            break text;
        }
        assert!(
            text.contains("is using") && std::time::Instant::now() < deadline,
            "{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(text.contains("restored 2 entries"), "{text}");
    assert!(dir.cli(&["audit", "verify"]).status.success());
}

/// Holds the data dir's lock as restore does, from this test process.
fn hold_exclusive(dir: &TestDir) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir.data().join("memwarden.lock")).unwrap();
    // SAFETY: a valid fd.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

#[test]
fn a_command_or_a_backup_running_also_stops_restore_and_a_session_waits_for_a_restore() {
    let (dir, out) = seeded_with_backup();
    let out_s = out.display().to_string();
    // Any holder of the shared lock (here a stand-in for `review`, `purge`, `keys`, `backup`).
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(dir.data().join("memwarden.lock")).unwrap();
        // SAFETY: a valid fd.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
        let before = snapshot(&dir);
        let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
        assert!(!ok && text.contains("is using"), "{text}");
        assert_eq!(
            changed_files(&before, &snapshot(&dir)),
            Vec::<String>::new()
        );
    }
    // While a restore holds the lock, a new command waits for it rather than opening files
    // that are being replaced; released within its wait, it proceeds.
    let held = hold_exclusive(&dir);
    let started = std::time::Instant::now();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        drop(held);
    });
    let (ok, text) = run(&dir, &["review", "list"]);
    release.join().unwrap();
    assert!(ok, "{text}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    // And a restore with nothing running goes through.
    let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
    assert!(ok, "{text}");
}

/// Issue 18 item 10: restore, run as root, never reads through a link planted in the backup
/// directory, and never prints a digest of what it read.
#[test]
fn restore_never_follows_links_inside_the_backup() {
    use sha2::{Digest, Sha256};
    for name in ["memory.db", "audit.db", "manifest.json"] {
        let dir = TestDir::new();
        dir.init();
        let out = dir.tmp.path().join("bk");
        let made = dir.cli(&["backup", "--out", out.to_str().unwrap()]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let secret = dir.tmp.path().join("root-only");
        std::fs::write(&secret, b"root secret bytes").unwrap();
        let digest = hex::encode(Sha256::digest(b"root secret bytes"));
        std::fs::remove_file(out.join(name)).unwrap();
        std::os::unix::fs::symlink(&secret, out.join(name)).unwrap();
        let before = std::fs::read(dir.data().join("memory.db")).unwrap();
        let r = dir.cli(&["restore", "--from", out.to_str().unwrap()]);
        let said =
            String::from_utf8_lossy(&r.stdout).to_string() + &String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name}: {said}");
        assert!(said.contains("link"), "{name}: {said}");
        assert!(
            !said.contains(&digest),
            "{name}: a digest of the target was printed"
        );
        assert_eq!(std::fs::read(dir.data().join("memory.db")).unwrap(), before);
    }
}
