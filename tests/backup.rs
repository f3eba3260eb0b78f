//! Online backup while writers run, verified restore, and a tampered backup refused.

mod common;

use std::sync::Arc;

use common::TestDir;

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
    assert!(dir.cli(&["verify"]).status.success());
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

    // Edit a row in the backup and fix the manifest's hash: the seal still catches it.
    let db = rusqlite::Connection::open(out.join("memory.db")).unwrap();
    db.execute("UPDATE entries SET content = 'forged'", [])
        .unwrap();
    drop(db);
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sha = String::from_utf8(
        std::process::Command::new("sha256sum")
            .arg(out.join("memory.db"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    m["files"]["memory.db"] = serde_json::json!(sha.split_whitespace().next().unwrap());
    std::fs::write(out.join("manifest.json"), m.to_string()).unwrap();
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

    // A file that no longer matches the manifest is refused before anything else.
    std::fs::write(
        out.join("manifest.json"),
        text_with_bad_hash(&text_manifest(&out)),
    )
    .unwrap();
    let (ok, text) = run(&dir, &["restore", "--from", &out_s]);
    assert!(
        !ok && text.contains("does not match the manifest"),
        "{text}"
    );
}

fn text_manifest(out: &std::path::Path) -> String {
    std::fs::read_to_string(out.join("manifest.json")).unwrap()
}

fn text_with_bad_hash(manifest: &str) -> String {
    let mut m: serde_json::Value = serde_json::from_str(manifest).unwrap();
    m["files"]["audit.db"] = serde_json::json!("0".repeat(64));
    m.to_string()
}
