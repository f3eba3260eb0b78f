//! The operator's side through the real binary: keyring changes under a lock and followed by
//! running sessions, keyring errors that never print a key, principals the policy may not name,
//! `connect` against a silent server, and updates that clear tags.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDir;
use memwarden::store::testing::Field;
use serde_json::{Value, json};

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Each row's key id, oldest row first (row ids grow with creation time).
fn key_ids(dir: &TestDir) -> Vec<String> {
    let tamper = dir.tamper();
    tamper
        .ids()
        .iter()
        .map(|id| tamper.get(id, Field::KeyId).text())
        .collect()
}

fn admin_events(dir: &TestDir, event: &str) -> usize {
    let out = dir.cli(&["audit", "export"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "admin" && e["detail"]["event"] == event)
        .count()
}

// --- item 4: keyring races ----------------------------------------------------------------

#[test]
fn concurrent_rotations_never_lose_a_key() {
    let dir = TestDir::new();
    dir.init();
    const N: usize = 8;
    let children: Vec<_> = (0..N)
        .map(|_| {
            dir.command(&["keys", "rotate"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let list = dir.cli(&["keys", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout).to_string();
    // e1 plus one key per rotation, each exactly once: none lost to an interleaved save.
    assert_eq!(listed.lines().count(), N + 1, "{listed}");
    assert!(
        listed.starts_with(&format!("e{} (active)", N + 1)),
        "{listed}"
    );
    assert_eq!(admin_events(&dir, "key_rotate"), N);
    assert!(dir.cli(&["audit", "verify"]).status.success());
}

#[test]
fn a_failed_save_is_not_audited_as_a_rotation() {
    let dir = TestDir::new();
    dir.init();
    let data = dir.data();
    // The directory cannot take the new keyring (immutable even for root).
    let on = Command::new("chattr").arg("+i").arg(&data).output();
    if !on.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIPPED: chattr +i is not available here");
        return;
    }
    let keyring_before = std::fs::read(data.join("keyring.toml")).unwrap();
    let out = dir.cli(&["keys", "rotate"]);
    let _ = Command::new("chattr").arg("-i").arg(&data).output();
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(data.join("keyring.toml")).unwrap(),
        keyring_before
    );
    assert_eq!(
        admin_events(&dir, "key_rotate"),
        0,
        "nothing audited as done"
    );
}

#[tokio::test]
async fn a_running_session_follows_rotation_and_retirement() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    client.store("before any rotation").await;
    assert!(dir.cli(&["keys", "rotate"]).status.success());
    // The same session now seals with the new active key.
    client.store("after the rotation").await;
    assert_eq!(key_ids(&dir), ["e1", "e2"]);
    // Reseal and retire e1 while the session still runs; it keeps working, and never seals
    // with the retired key.
    assert!(dir.cli(&["reseal"]).status.success());
    let retire = dir.cli(&["keys", "retire", "e1"]);
    assert!(retire.status.success(), "{}", text(&retire));
    assert!(dir.cli(&["keys", "rotate"]).status.success());
    let id = client.store("after retire and a second rotation").await;
    let got = client.call("memory_get", json!({"id": id})).await.ok();
    assert_eq!(got["memory"]["verified"], true);
    client.close().await;
    assert_eq!(key_ids(&dir), ["e2", "e2", "e3"]);
    let verify = dir.cli(&["verify"]);
    assert!(verify.status.success(), "{}", text(&verify));
}

// --- item 5: a malformed keyring never prints a key -----------------------------------------

#[test]
fn keyring_errors_never_print_key_material() {
    let hex = "9f".repeat(32);
    let other = "a7".repeat(32);
    let cases = [
        // keys as a string instead of a table: serde would quote the value.
        format!(
            "[entry]\nactive = \"e1\"\nkeys = \"{hex}\"\n[audit]\nactive = \"a1\"\n[audit.keys]\na1 = \"{other}\"\n"
        ),
        // the key pasted as the active id.
        format!(
            "[entry]\nactive = \"{hex}\"\n[entry.keys]\ne1 = \"{other}\"\n[audit]\nactive = \"a1\"\n[audit.keys]\na1 = \"{other}\"\n"
        ),
        // the key pasted as a key id.
        format!(
            "[entry]\nactive = \"e1\"\n[entry.keys]\n\"{hex}\" = \"{other}\"\ne1 = \"{other}\"\n[audit]\nactive = \"a1\"\n[audit.keys]\na1 = \"{other}\"\n"
        ),
        // an audit key of the wrong type.
        format!(
            "[entry]\nactive = \"e1\"\n[entry.keys]\ne1 = \"{other}\"\n[audit]\nactive = \"a1\"\n[audit.keys]\na1 = [\"{hex}\"]\n"
        ),
    ];
    for (i, keyring) in cases.iter().enumerate() {
        let dir = TestDir::new();
        dir.init();
        std::fs::write(dir.data().join("keyring.toml"), keyring).unwrap();
        for args in [
            vec!["serve"],
            vec!["health"],
            vec!["verify"],
            vec!["keys", "list"],
        ] {
            let out = Command::new(common::bin())
                .args(&args)
                .arg("--data-dir")
                .arg(dir.data())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let all = text(&out);
            assert!(!out.status.success(), "case {i} {args:?}: {all}");
            assert!(all.contains("keyring"), "case {i} {args:?}: {all}");
            assert!(
                !all.contains(&hex[..16]),
                "case {i} {args:?} printed the key: {all}"
            );
            assert!(
                !all.contains(&other[..16]),
                "case {i} {args:?} printed a key: {all}"
            );
        }
    }
}

#[test]
fn an_oversized_keyring_is_refused_unread() {
    let dir = TestDir::new();
    dir.init();
    let path = dir.data().join("keyring.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!("# {}\n", "x".repeat(2 << 20)));
    std::fs::write(&path, text).unwrap();
    let out = dir.cli(&["keys", "list"]);
    assert!(!out.status.success());
    assert!(
        self::text(&out).contains("larger than"),
        "{}",
        self::text(&out)
    );
}

// --- item 10: small ones ---------------------------------------------------------------------

#[test]
fn a_policy_may_not_name_a_principal_like_an_unmapped_peer() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["uid-2003", "uid-0", "uid-x"] {
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            format!(
                "version = 1\n[principals.{name}]\ntools = [\"memory_get\"]\n\
                 namespaces = {{ \"*\" = \"r\" }}\ndefault_namespace = \"default\"\n"
            ),
        )
        .unwrap();
        let out = Command::new(common::bin())
            .args(["policy", "check"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("reserved"), "{name}: {}", text(&out));
    }
}

#[tokio::test]
async fn update_with_empty_tags_clears_them() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let stored = client
        .call(
            "memory_store",
            json!({"content": "tagged", "tags": ["a", "b"]}),
        )
        .await
        .ok();
    let id = stored["id"].as_str().unwrap();
    let updated = client
        .call("memory_update", json!({"id": id, "tags": []}))
        .await
        .ok();
    let got = client
        .call("memory_get", json!({"id": updated["id"]}))
        .await
        .ok();
    assert_eq!(got["memory"]["tags"], json!([]));
    assert_eq!(got["memory"]["content"], "tagged");
    // Omitting tags still keeps them.
    let kept = client
        .call(
            "memory_update",
            json!({"id": updated["id"], "content": "retagged?"}),
        )
        .await
        .ok();
    let got = client
        .call("memory_get", json!({"id": kept["id"]}))
        .await
        .ok();
    assert_eq!(got["memory"]["tags"], json!([]));
    client.close().await;
}

#[test]
fn connect_gives_up_on_a_server_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // Accepts and reads, never writes, and keeps the connection open until the test is done
    // (at most 20 s): only the answer timeout can end the client.
    let (done, test_done) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut lines = BufReader::new(stream);
        let mut line = String::new();
        let _ = lines.read_line(&mut line);
        let _ = test_done.recv_timeout(Duration::from_secs(20));
        line
    });
    let mut child = Command::new(common::bin())
        .args(["connect", "--answer-timeout", "1"])
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"ping\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(!out.status.success());
    assert!(text(&out).contains("did not answer"), "{}", text(&out));
    // Well before the server would let go: the 1 s answer timeout ended it (with room for a
    // slow start on a loaded machine).
    assert!(started.elapsed() < Duration::from_secs(15));
    let _ = done.send(());
    assert!(server.join().unwrap().contains("ping"));
}

#[test]
fn connect_waits_as_long_as_the_client_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("echo.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (&stream).write_all(line.as_bytes()).unwrap();
    });
    let mut child = Command::new(common::bin())
        .args(["connect", "--answer-timeout", "1"])
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Quiet for longer than the timeout: that is the client's business, not a hung server.
    std::thread::sleep(Duration::from_millis(1500));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut echoed = String::new();
    stdout.read_line(&mut echoed).unwrap();
    assert_eq!(echoed, "hello\n");
    drop(stdin);
    server.join().unwrap();
    assert!(child.wait().unwrap().success());
}

/// Purged entries are reconciled as purged (each purge leaves a sealed ledger record), never
/// as "audited, not applied".
#[tokio::test]
async fn verify_reconciles_purged_entries_as_purged() {
    let dir = TestDir::new();
    let args = dir.policy(
        "version = 1\n[retention]\nmax_age_seconds = 1\ndeleted_retention_seconds = 1\n\
         [principals.local]\ntools = [\"memory_store\", \"memory_delete\", \"memory_list\"]\n\
         namespaces = { \"*\" = \"rw\" }\ndefault_namespace = \"default\"\n",
    );
    let c = dir.connect_with(&args).await;
    let a = c.store("to expire").await;
    let b = c.store("to delete").await;
    c.call("memory_delete", json!({"id": b})).await.ok();
    c.close().await;
    std::thread::sleep(Duration::from_millis(1300));
    let mut purge = vec!["purge"];
    purge.extend(args.iter().map(String::as_str));
    let out = dir.command(&purge).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(dir.row_count(), 0);
    let verify = dir.cli(&["verify"]);
    let said = text(&verify);
    assert!(verify.status.success(), "{said}");
    assert!(!said.contains("not applied"), "{said}");
    assert!(!said.contains(&a) && !said.contains(&b), "{said}");
}

/// The audit-head and metrics units read the state dir read-only while sessions run: the
/// audit log is read through the live -wal and -shm, not refused.
#[test]
fn audit_head_reads_a_live_wal_in_a_read_only_data_dir() {
    if common::store::sqlite_only("audit.db's WAL and a read-only data dir") {
        return;
    }
    let dir = TestDir::new();
    let mut s = common::RawSession::start(&dir);
    // A reader holding a snapshot keeps the WAL from being checkpointed away.
    let reader = rusqlite::Connection::open(dir.audit_db()).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM events;")
        .unwrap();
    s.call(1, "memory_store", json!({"content": "x"}));
    let data = dir.data().display().to_string();
    let script = format!(
        "mount --bind -o ro {data} {data} && {} audit head --data-dir {data}",
        common::bin()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output();
    let Some(out) = out
        .ok()
        .filter(|o| !String::from_utf8_lossy(&o.stderr).contains("mount:"))
    else {
        eprintln!("SKIPPED: no mount namespace here");
        return;
    };
    drop(reader);
    s.finish();
    assert!(out.status.success(), "{}", text(&out));
    let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let seq: u64 = head.split(':').next().unwrap().parse().unwrap();
    assert!(seq >= 3, "{head}: the events in the WAL were read");
}
