//! Key rotation through the real binary: rotate, keep verifying, reseal, retire.

mod common;

use common::TestDir;
use memwarden::store::testing::{Field, Value};
use serde_json::json;

fn out(o: std::process::Output) -> (bool, String) {
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn key_ids(dir: &TestDir) -> Vec<String> {
    dir.tamper().entry_key_ids()
}

#[tokio::test]
async fn rotate_reseal_retire() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let old_id = client.store("sealed under the first key").await;
    client.close().await;
    assert_eq!(key_ids(&dir), ["e1"]);

    let (ok, text) = out(dir.cli(&["keys", "rotate"]));
    assert!(ok, "{text}");
    assert!(text.contains("entry key e2 is active"));
    // Old rows still verify; new rows use the new key.
    let client = dir.connect().await;
    let got = client.call("memory_get", json!({"id": old_id})).await.ok();
    assert_eq!(got["memory"]["verified"], true);
    client.store("sealed under the second key").await;
    client.close().await;
    assert_eq!(key_ids(&dir), ["e1", "e2"]);
    assert!(dir.cli(&["verify"]).status.success());

    // e1 still seals a row: retiring it is refused; so is retiring the active key.
    let (ok, text) = out(dir.cli(&["keys", "retire", "e1"]));
    assert!(!ok && text.contains("still sealed with e1"), "{text}");
    let (ok, text) = out(dir.cli(&["keys", "retire", "e2"]));
    assert!(!ok && text.contains("active"), "{text}");

    let (ok, text) = out(dir.cli(&["reseal", "--batch", "1"]));
    assert!(ok, "{text}");
    assert!(text.contains("resealed 1 rows with e2"), "{text}");
    assert_eq!(key_ids(&dir), ["e2"]);
    let (ok, text) = out(dir.cli(&["reseal"]));
    assert!(
        ok && text.contains("resealed 0 rows"),
        "resumable and idempotent: {text}"
    );

    let (ok, text) = out(dir.cli(&["keys", "retire", "e1"]));
    assert!(ok, "{text}");
    let (_, list) = out(dir.cli(&["keys", "list"]));
    assert!(
        list.contains("e2 (active): 2 rows") && !list.contains("e1"),
        "{list}"
    );
    assert!(dir.cli(&["verify"]).status.success());
    let client = dir.connect().await;
    assert_eq!(
        client.call("memory_get", json!({"id": old_id})).await.ok()["memory"]["verified"],
        true
    );
    client.close().await;

    // Every key change is in the audit log, and the chain holds.
    let admin = dir.cli(&["audit", "query", "--kind", "admin", "--format", "json"]);
    let admin: Vec<serde_json::Value> = serde_json::from_slice(&admin.stdout).unwrap();
    let events: Vec<&str> = admin
        .iter()
        .map(|e| e["detail"]["event"].as_str().unwrap())
        .collect();
    // audit.db opens its chain with chain_start; PostgreSQL's chain starts at `db init`.
    let first = usize::from(common::store::on_postgres());
    assert_eq!(
        events,
        [
            "chain_start",
            "key_rotate",
            "reseal_start",
            "reseal_done",
            "reseal_start",
            "reseal_done",
            "key_retire"
        ][first..]
    );
    assert!(dir.cli(&["audit", "verify"]).status.success());
}

#[tokio::test]
async fn reseal_never_launders_a_tampered_row() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let good = client.store("good").await;
    let bad = client.store("bad").await;
    client.close().await;
    dir.tamper()
        .set(&bad, Field::Content, Value::Text("forged".into()));
    assert!(dir.cli(&["keys", "rotate"]).status.success());
    let (ok, text) = out(dir.cli(&["reseal"]));
    assert!(!ok && text.contains(&bad), "{text}");
    let key = dir.tamper().get(&bad, Field::KeyId).text();
    assert_eq!(key, "e1", "the tampered row keeps its old (failing) seal");
    let key = dir.tamper().get(&good, Field::KeyId).text();
    assert_eq!(key, "e2");
    let (ok, text) = out(dir.cli(&["verify"]));
    assert!(!ok && text.contains(&bad));
}

#[tokio::test]
async fn ledger_records_move_keys_with_reseal_which_never_launders_a_rollback() {
    let dir = TestDir::new();
    let client = dir.connect().await;
    let kept = client.store("kept").await;
    let gone = client.store("gone").await;
    client.close().await;
    // The live copy's status and seal (the rest of the row a delete leaves as it was).
    const SEALED: [Field; 4] = [Field::Status, Field::UpdatedAt, Field::KeyId, Field::Mac];
    let tamper = dir.tamper();
    let live: Vec<Value> = SEALED.iter().map(|&f| tamper.get(&gone, f)).collect();
    drop(tamper);
    let client = dir.connect().await;
    client.call("memory_delete", json!({"id": gone})).await.ok();
    client.close().await;
    // The delete's record, sealed with e1, keeps verifying after rotation and holds e1.
    assert!(dir.cli(&["keys", "rotate"]).status.success());
    assert!(out(dir.cli(&["verify"])).0);
    let (ok, text) = out(dir.cli(&["keys", "retire", "e1"]));
    assert!(
        !ok && text.contains("3 rows"),
        "two rows and one record: {text}"
    );
    // The live copy, sealed with e1, put back: reseal moves the record but not the rollback.
    let tamper = dir.tamper();
    for (&field, value) in SEALED.iter().zip(live) {
        tamper.set(&gone, field, value);
    }
    drop(tamper);
    let (ok, text) = out(dir.cli(&["reseal"]));
    assert!(
        !ok && text.contains(&gone) && text.contains("resealed 2 rows"),
        "{text}"
    );
    assert_eq!(dir.tamper().ledger_key_ids(), ["e2"]);
    assert_eq!(
        key_ids(&dir),
        vec!["e1", "e2"],
        "the rollback keeps its old seal"
    );
    let client = dir.connect().await;
    assert_eq!(
        client
            .call("memory_get", json!({"id": gone}))
            .await
            .tool_code(),
        "INTEGRITY"
    );
    client.call("memory_get", json!({"id": kept})).await.ok();
    client.close().await;
    let (ok, text) = out(dir.cli(&["verify"]));
    assert!(
        !ok && text.contains(&gone) && text.contains("1 ledger records verify"),
        "{text}"
    );
}
