//! Tampering with memory.db behind the server's back, bad keyrings and unsafe data dirs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::TestDir;
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
    assert!(!found.to_string().contains(bad));
    client.close().await;

    let out = dir.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(bad), "verify names the row: {stdout}");
    for g in good {
        assert!(!stdout.contains(g.as_str()));
    }
}

#[tokio::test]
async fn edited_content_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    assert!(dir.cli(&["verify"]).status.success());
    dir.db()
        .execute(
            "UPDATE entries SET content = 'alpha secret plan: wire the money' WHERE id = ?1",
            [&ids[0]],
        )
        .unwrap();
    assert_withheld(&dir, &ids[0], &[&ids[1], &ids[2]]).await;
}

#[tokio::test]
async fn edited_content_with_matching_hash_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let forged = "bravo secret plan v2";
    let sha: Vec<u8> = sha2_digest(forged);
    dir.db()
        .execute(
            "UPDATE entries SET content = ?2, content_sha256 = ?3 WHERE id = ?1",
            rusqlite::params![&ids[1], forged, sha],
        )
        .unwrap();
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
    dir.db()
        .execute(
            "UPDATE entries SET namespace = 'default' WHERE id = ?1",
            [&id],
        )
        .unwrap();
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
    dir.db()
        .execute(
            "UPDATE entries SET status = 'active' WHERE id = ?1",
            [&ids[2]],
        )
        .unwrap();
    assert_withheld(&dir, &ids[2], &[&ids[0], &ids[1]]).await;
}

#[tokio::test]
async fn flipped_mac_is_never_served() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    let mut mac: Vec<u8> = dir
        .db()
        .query_row("SELECT mac FROM entries WHERE id = ?1", [&ids[1]], |r| {
            r.get(0)
        })
        .unwrap();
    mac[0] ^= 0x01;
    dir.db()
        .execute(
            "UPDATE entries SET mac = ?2 WHERE id = ?1",
            rusqlite::params![&ids[1], mac],
        )
        .unwrap();
    assert_withheld(&dir, &ids[1], &[&ids[0], &ids[2]]).await;
}

#[tokio::test]
async fn hand_edited_rows_refuse_update_and_delete() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    dir.db()
        .execute(
            "UPDATE entries SET tags = '[\"admin\"]' WHERE id = ?1",
            [&ids[0]],
        )
        .unwrap();
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
    let audit = rusqlite::Connection::open(dir.data().join("audit.db")).unwrap();
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
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    // A blob where text belongs, and text where a blob belongs.
    dir.db()
        .execute(
            "UPDATE entries SET content = X'FFFE00' WHERE id = ?1",
            [&ids[0]],
        )
        .unwrap();
    dir.db()
        .execute(
            "UPDATE entries SET content_sha256 = 'not a blob' WHERE id = ?1",
            [&ids[1]],
        )
        .unwrap();
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

#[tokio::test]
async fn an_old_sealed_row_put_back_is_caught_by_reconciliation() {
    let dir = TestDir::new();
    let ids = seeded(&dir).await;
    // Keep the row as it was, sealed and genuine, then delete it through the server.
    let saved: (String, i64, String, Vec<u8>) = dir
        .db()
        .query_row(
            "SELECT status, updated_at, key_id, mac FROM entries WHERE id = ?1",
            [&ids[0]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let client = dir.connect().await;
    client
        .call("memory_delete", json!({"id": ids[0]}))
        .await
        .ok();
    client.close().await;
    assert!(dir.cli(&["verify"]).status.success());
    // Put the old sealed state back: it verifies on its own.
    dir.db()
        .execute(
            "UPDATE entries SET status = ?2, updated_at = ?3, key_id = ?4, mac = ?5 WHERE id = ?1",
            rusqlite::params![&ids[0], saved.0, saved.1, saved.2, saved.3],
        )
        .unwrap();
    let out = dir.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("active again") && stdout.contains(&ids[0]),
        "{stdout}"
    );
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
