//! Tampering with memory.db behind the server's back, bad keyrings and unsafe data dirs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::TestDir;
use memwarden::store::testing::{Field, Value};
use serde_json::json;

/// Stores three entries and returns their ids.
async fn seeded(dir: &TestDir) -> Vec<String> {
    let client = dir.connect().await;
    let mut ids = Vec::new();
    for text in [
        "alpha secret plan",
        "bravo secret plan",
        "charlie secret plan",
    ] {
        ids.push(client.store(text).await);
    }
    client.close().await;
    ids
}

async fn assert_withheld(dir: &TestDir, bad: &str, good: &[&String]) {
    let client = dir.connect().await;
    assert_eq!(
        client
            .call("memory_get", json!({"id": bad}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    let listed = client.call("memory_list", json!({})).await.ok();
    assert_eq!(listed["withheld"], 1, "{listed}");
    let ids: Vec<_> = listed["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ids.iter().any(|i| i == bad), "tampered row listed");
    for g in good {
        assert!(ids.contains(g), "good row missing");
    }
    let found = client
        .call("memory_search", json!({"query": "secret plan"}))
        .await
        .ok();
    assert_eq!(found["withheld"], 1, "{found}");
    let served = found["results"].as_array().unwrap();
    assert!(!served.iter().any(|r| r["memory"]["id"] == bad), "{found}");
    client.close().await;

    // Each refusal is a security event naming the row: get, list and search.
    assert!(security_events(dir, bad) >= 3, "security events for {bad}");

    let out = dir.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(bad), "verify names the row: {stdout}");
    for g in good {
        assert!(!stdout.contains(g.as_str()));
    }
}

/// Integrity security events that name `id`.
fn security_events(dir: &TestDir, id: &str) -> i64 {
    let audit = rusqlite::Connection::open(dir.audit_db()).unwrap();
    audit
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'security' \
             AND json_extract(detail, '$.event') = 'integrity_failure' \
             AND detail LIKE '%' || ?1 || '%'",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn edited_content_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    assert!(dir.cli(&["verify"]).status.success());
    dir.tamper().set(
        &ids[0],
        Field::Content,
        Value::Text("alpha secret plan: wire the money".into()),
    );
    assert_withheld(&dir, &ids[0], &[&ids[1], &ids[2]]).await;
}

#[tokio::test]
async fn edited_content_with_matching_hash_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let forged = "bravo secret plan v2";
    let sha: Vec<u8> = sha2_digest(forged);
    let tamper = dir.tamper();
    tamper.set(&ids[1], Field::Content, Value::Text(forged.into()));
    tamper.set(&ids[1], Field::ContentSha256, Value::Blob(sha));
    drop(tamper);
    assert_withheld(&dir, &ids[1], &[&ids[0], &ids[2]]).await;
}

fn sha2_digest(s: &str) -> Vec<u8> {
    // The test links memwarden's own dependency tree; compute the hash the same way the server does.
    memwarden::store::seal::content_sha256(s).to_vec()
}

#[tokio::test]
async fn moved_namespace_is_never_served() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let id = client
        .call(
            "memory_store",
            json!({"content": "other secret plan", "namespace": "other"}),
        )
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    client.close().await;
    let ids = seeded(&dir).await;
    dir.tamper()
        .set(&id, Field::Namespace, Value::Text("default".into()));
    assert_withheld(&dir, &id, &[&ids[0], &ids[1], &ids[2]]).await;
}

#[tokio::test]
async fn resurrected_tombstone_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let client = dir.connect().await;
    client
        .call("memory_delete", json!({"id": ids[2]}))
        .await
        .ok();
    client.close().await;
    dir.tamper()
        .set(&ids[2], Field::Status, Value::Text("active".into()));
    assert_withheld(&dir, &ids[2], &[&ids[0], &ids[1]]).await;
}

#[tokio::test]
async fn flipped_mac_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let tamper = dir.tamper();
    let Value::Blob(mut mac) = tamper.get(&ids[1], Field::Mac) else {
        panic!("the seal is bytes");
    };
    mac[0] ^= 0x01;
    tamper.set(&ids[1], Field::Mac, Value::Blob(mac));
    drop(tamper);
    assert_withheld(&dir, &ids[1], &[&ids[0], &ids[2]]).await;
}

#[tokio::test]
async fn hand_edited_rows_refuse_update_and_delete() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    dir.tamper()
        .set(&ids[0], Field::Tags, Value::Text("[\"admin\"]".into()));
    let client = dir.connect().await;
    assert_eq!(
        client
            .call("memory_update", json!({"id": ids[0], "content": "x"}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    assert_eq!(
        client
            .call("memory_delete", json!({"id": ids[0]}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    client.close().await;
    assert_eq!(
        dir.row_count(),
        3,
        "nothing written on a row that does not verify"
    );
    // Both refusals are security events naming the row.
    let audit = rusqlite::Connection::open(dir.audit_db()).unwrap();
    let n: i64 = audit
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'security' AND json_extract(detail, '$.event') = 'integrity_failure' AND detail LIKE '%' || ?1 || '%'",
            [&ids[0]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_column_of_the_wrong_type_is_withheld_not_an_internal_error() {
    if common::store::sqlite_only(
        "PostgreSQL's typed columns refuse a value of the wrong type: it cannot be stored",
    ) {
        return;
    }
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    // A blob where text belongs, and text where a blob belongs.
    let tamper = dir.tamper();
    tamper.set(&ids[0], Field::Content, Value::Blob(vec![0xff, 0xfe, 0x00]));
    tamper.set(
        &ids[1],
        Field::ContentSha256,
        Value::Text("not a blob".into()),
    );
    drop(tamper);
    let client = dir.connect().await;
    assert_eq!(
        client
            .call("memory_get", json!({"id": ids[0]}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    assert_eq!(
        client
            .call("memory_get", json!({"id": ids[1]}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    let listed = client.call("memory_list", json!({})).await.ok();
    assert_eq!(listed["withheld"], 2, "{listed}");
    assert_eq!(listed["memories"].as_array().unwrap().len(), 1);
    client.close().await;
    let out = dir.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&ids[0]) && stdout.contains(&ids[1]),
        "{stdout}"
    );
}

fn verify_output(dir: &TestDir) -> (Option<i32>, String) {
    let out = dir.cli(&["verify"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn an_undeleted_tombstone_put_back_sealed_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let live = dir.tamper().save(&ids[0]);
    let client = dir.connect().await;
    client
        .call("memory_delete", json!({"id": ids[0]}))
        .await
        .ok();
    client.close().await;
    assert!(dir.cli(&["verify"]).status.success());
    // The earlier sealed copy verifies on its own: only the ledger knows it was retired.
    dir.tamper().put_back(&live);
    assert_withheld(&dir, &ids[0], &[&ids[1], &ids[2]]).await;
    let (_, stdout) = verify_output(&dir);
    assert!(stdout.contains("less retired"), "{stdout}");
}

#[tokio::test]
async fn an_un_superseded_version_put_back_sealed_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let live = dir.tamper().save(&ids[1]);
    let client = dir.connect().await;
    let newer = client
        .call(
            "memory_update",
            json!({"id": ids[1], "content": "bravo revised secret plan"}),
        )
        .await
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The superseded version is still readable by id, as history.
    assert_eq!(
        client.call("memory_get", json!({"id": ids[1]})).await.ok()["memory"]["status"],
        "superseded"
    );
    client.close().await;
    assert!(dir.cli(&["verify"]).status.success());
    dir.tamper().put_back(&live);
    assert_withheld(&dir, &ids[1], &[&ids[0], &ids[2], &newer]).await;
    // Nor can it be updated again, forking the history.
    let client = dir.connect().await;
    assert_eq!(
        client
            .call("memory_update", json!({"id": ids[1], "content": "fork"}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    client.close().await;
}

#[tokio::test]
async fn a_purged_row_re_inserted_sealed_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let live = dir.tamper().save(&ids[2]);
    let client = dir.connect().await;
    client
        .call("memory_delete", json!({"id": ids[2]}))
        .await
        .ok();
    client.close().await;
    std::thread::sleep(std::time::Duration::from_millis(5));
    let policy = include_str!("../policies/default.toml").replace(
        "deleted_retention_seconds = 2592000",
        "deleted_retention_seconds = 0",
    );
    let mut purge = vec!["purge".to_string()];
    purge.extend(dir.policy(&policy));
    let purge: Vec<&str> = purge.iter().map(String::as_str).collect();
    let out = dir.cli(&purge);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 tombstones"),
        "{out:?}"
    );
    assert_eq!(dir.row_count(), 2);
    assert!(dir.cli(&["verify"]).status.success());
    dir.tamper().put_back(&live);
    assert_withheld(&dir, &ids[2], &[&ids[0], &ids[1]]).await;
}

#[tokio::test]
async fn a_deleted_row_removed_outright_fails_verify() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let client = dir.connect().await;
    client
        .call("memory_delete", json!({"id": ids[0]}))
        .await
        .ok();
    client.close().await;
    // No purge: the tombstone just vanishes, as if it had never been written.
    dir.tamper().delete(&ids[0]);
    let (code, stdout) = verify_output(&dir);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("missing without a purge or reject on record") && stdout.contains(&ids[0]),
        "{stdout}"
    );
    assert!(!stdout.contains(&ids[1]) && !stdout.contains(&ids[2]));
}

#[tokio::test]
async fn a_removed_ledger_record_fails_verify_naming_it() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let live = dir.tamper().save(&ids[0]);
    let client = dir.connect().await;
    for id in &ids[..2] {
        client.call("memory_delete", json!({"id": id})).await.ok();
    }
    client.close().await;
    assert!(dir.cli(&["verify"]).status.success());
    // Remove the first record and put the live copy back: no record left to withhold it, so
    // only verify can tell, from the chain and the audited delete.
    let tamper = dir.tamper();
    tamper.delete_ledger(Some(ids[0].as_str()));
    tamper.put_back(&live);
    drop(tamper);
    let (code, stdout) = verify_output(&dir);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("ledger records 1..1 are missing")
            && stdout.contains("ledger record 2: does not link"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: deleted by an audited call", ids[0])),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_removed_tail_record_fails_verify_once_the_session_went_on() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let live = dir.tamper().save(&ids[0]);
    let client = dir.connect().await;
    client
        .call("memory_delete", json!({"id": ids[0]}))
        .await
        .ok();
    // A later call of the same session: the delete was not the one a crash cut short.
    client.call("memory_list", json!({})).await.ok();
    client.close().await;
    // The whole tail of the chain, and the row rolled back: a chain alone cannot see this.
    let tamper = dir.tamper();
    tamper.delete_ledger(None);
    tamper.put_back(&live);
    drop(tamper);
    let (code, stdout) = verify_output(&dir);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: deleted by an audited call", ids[0])),
        "{stdout}"
    );
    assert!(!stdout.contains("note: "), "{stdout}");
}

#[tokio::test]
async fn a_forged_ledger_record_only_hides_a_row_and_fails_verify() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    dir.tamper().forge_ledger_delete(&ids[1]);
    // Existence alone withholds: fail closed.
    assert_withheld(&dir, &ids[1], &[&ids[0], &ids[2]]).await;
    let (_, stdout) = verify_output(&dir);
    assert!(stdout.contains("ledger record 1: altered"), "{stdout}");
    assert_eq!(dir.row_count(), 3, "nothing written");
}

#[test]
fn init_makes_private_files_and_verify_passes() {
    let dir = TestDir::new();
    dir.init();
    let mode = |p: &str| {
        fs::metadata(dir.data().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        fs::metadata(dir.data()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(mode("keyring.toml"), 0o600);
    assert_eq!(mode("memory.db"), 0o600);
    let again = dir.cli(&["init"]);
    assert!(!again.status.success(), "init refuses to overwrite");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialised"));
    let out = dir.cli(&["verify"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 entries verified"));
}

/// `serve` must exit non-zero with `want` on stderr and no protocol output.
fn assert_serve_refuses(dir: &TestDir, want: &str) {
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(dir.data())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(want), "stderr lacks {want:?}: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on the protocol channel");
}

#[test]
fn bad_keyrings_are_refused() {
    let dir = TestDir::new();
    dir.init();
    let ring = dir.data().join("keyring.toml");
    let original = fs::read_to_string(&ring).unwrap();

    fs::set_permissions(&ring, fs::Permissions::from_mode(0o644)).unwrap();
    assert_serve_refuses(&dir, "chmod 600");
    fs::set_permissions(&ring, fs::Permissions::from_mode(0o640)).unwrap();
    assert_serve_refuses(&dir, "group and others must have no access");
    fs::set_permissions(&ring, fs::Permissions::from_mode(0o600)).unwrap();

    // A key of 31 bytes.
    let short = original
        .lines()
        .map(|l| {
            if l.starts_with("e1 = ") {
                format!("e1 = \"{}\"", "ab".repeat(31))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&ring, short).unwrap();
    assert_serve_refuses(&dir, "is 31 bytes; at least 32 are required");

    // The active key missing.
    let missing = original.replace("active = \"e1\"", "active = \"e9\"");
    fs::write(&ring, &missing).unwrap();
    assert_serve_refuses(&dir, "active entry key \"e9\" is not in the keyring");
    let leaked = String::from_utf8_lossy(
        &std::process::Command::new(common::bin())
            .args(["serve", "--data-dir"])
            .arg(dir.data())
            .output()
            .unwrap()
            .stderr,
    )
    .to_string();
    let key_hex = original
        .lines()
        .find(|l| l.starts_with("a1 = "))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(!leaked.contains(&key_hex[..16]), "no key bytes in errors");

    fs::write(&ring, original).unwrap();
    assert!(
        dir.cli(&["verify"]).status.success(),
        "restored keyring works"
    );
}

#[test]
fn a_data_dir_others_can_write_is_refused() {
    let dir = TestDir::new();
    dir.init();
    fs::set_permissions(dir.data(), fs::Permissions::from_mode(0o770)).unwrap();
    assert_serve_refuses(&dir, "group and others must have no access");
    fs::set_permissions(dir.data(), fs::Permissions::from_mode(0o707)).unwrap();
    assert_serve_refuses(&dir, "chmod 700");
    fs::set_permissions(dir.data(), fs::Permissions::from_mode(0o700)).unwrap();
    assert!(dir.cli(&["verify"]).status.success());
}

#[test]
fn an_existing_dir_without_a_keyring_is_refused() {
    let dir = TestDir::new();
    fs::create_dir(dir.data()).unwrap();
    fs::set_permissions(dir.data(), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(dir.data().join("notes.txt"), "not ours").unwrap();
    assert_serve_refuses(&dir, "not initialised");
}

/// Quota counts are kept beside the rows by triggers, not sealed: an edit that zeroes them
/// would let an agent store past its namespace's quota. `verify` reports the namespace, and
/// `maintain` counts it again from the rows, after which the quota holds again.
#[tokio::test]
async fn an_edited_quota_count_is_reported_by_verify_and_counted_again_by_maintain() {
    let dir = TestDir::new();
    dir.init();
    let policy = dir.policy(
        "version = 1\n[limits]\nnamespace_max_entries = 3\n[principals.local]\n\
         tools = [\"memory_store\", \"memory_get\", \"memory_list\"]\n\
         namespaces = { \"*\" = \"rw\" }\ndefault_namespace = \"notes\"\n",
    );
    let store = async |content: &str| {
        let c = dir.connect_with(&policy).await;
        let outcome = c.call("memory_store", json!({"content": content})).await;
        c.close().await;
        match outcome {
            common::Outcome::Ok(_) => "ok".to_string(),
            refused => refused.tool_code(),
        }
    };
    assert_eq!(store("first").await, "ok");
    assert_eq!(store("second").await, "ok");
    let (code, stdout) = verify_output(&dir);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ok: every namespace's quota usage matches its rows"));

    // The counts say the namespace is empty: the quota of 3 would let 3 more in.
    dir.tamper().set_usage("notes", 0, 0);
    let (code, stdout) = verify_output(&dir);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("quota usage disagrees")
            && stdout
                .contains("notes: counted 0 entries, 0 bytes; its rows hold 2 entries, 11 bytes"),
        "{stdout}"
    );
    // A count for a namespace without rows is drift too.
    dir.tamper().set_usage("elsewhere", 5, 50);
    let (_, stdout) = verify_output(&dir);
    assert!(
        stdout.contains("elsewhere: counted 5 entries, 50 bytes; its rows hold 0 entries, 0 bytes"),
        "{stdout}"
    );

    let out = dir.cli(&["maintain"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("quota usage: 2 namespaces counted again from their rows"),
        "{said}"
    );
    let (code, stdout) = verify_output(&dir);
    assert_eq!(code, Some(0), "{stdout}");
    // The quota holds on the true count: one more fits, the next does not.
    assert_eq!(store("third").await, "ok");
    assert_eq!(store("fourth").await, "TOO_LARGE");
    assert_eq!(dir.row_count(), 3);
    let said = String::from_utf8_lossy(&dir.cli(&["maintain"]).stdout).into_owned();
    assert!(
        said.contains("quota usage: every namespace's counts match its rows"),
        "{said}"
    );
}
