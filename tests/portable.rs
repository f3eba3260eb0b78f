//! `memwarden export` / `memwarden import` through the real binary: round trips SQLite →
//! jsonl → SQLite and → PostgreSQL with content byte-identical over MCP and `verify` passing
//! on both sides; a tampered line refused by id with nothing written, and imported re-sealed
//! only when the operator asks; the namespace and time filters; an id already present.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::TestDir;
use common::postgres::Ready;
use serde_json::{Value, json};

/// Content no lossy path keeps: NUL, a backslash, quotes, non-ASCII, a newline.
const AWKWARD: &str = "nul \u{0} here, back\\slash, \"quoted\", caf\u{e9} \u{1F600}\nsecond line";

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A data dir holding entries of every kind: awkward content with tags and metadata in `ops`,
/// a superseded version and its successor, a tombstone, and a plain note in `default`.
/// Returns (awkward id, plain id, superseded id, successor id, deleted id).
async fn populated(dir: &TestDir) -> [String; 5] {
    dir.init();
    let client = dir.connect().await;
    let id_of = |v: Value| v["id"].as_str().unwrap().to_string();
    let awkward = id_of(
        client
            .call(
                "memory_store",
                json!({"content": AWKWARD, "namespace": "ops", "tags": ["b", "a"],
                       "metadata": {"source": "runbook", "n": 3}}),
            )
            .await
            .ok(),
    );
    let plain = client.store("a plain note in the default namespace").await;
    let old = client.store("the first version of a note").await;
    let new = id_of(
        client
            .call(
                "memory_update",
                json!({"id": old, "content": "the second version"}),
            )
            .await
            .ok(),
    );
    let gone = client.store("a note that gets deleted").await;
    client.call("memory_delete", json!({"id": gone})).await.ok();
    client.close().await;
    [awkward, plain, old, new, gone]
}

/// A fresh data dir that shares `from`'s keyring (the keyring is what makes seals portable).
fn sharing_keyring(from: &TestDir) -> TestDir {
    let to = TestDir::new();
    let shared = to.tmp.path().join("shared-keyring.toml");
    copy_keyring(from, &shared);
    let out = to.cli(&["init", "--keyring-file", shared.to_str().unwrap()]);
    ok(&out, "init with the shared keyring");
    // Kept in the data dir too, so every later command finds it there by default.
    copy_keyring(from, &to.data().join("keyring.toml"));
    to
}

/// Copies `from`'s keyring to `dst` (replacing any file there), 0600.
fn copy_keyring(from: &TestDir, dst: &Path) {
    let _ = std::fs::remove_file(dst);
    std::fs::copy(from.data().join("keyring.toml"), dst).unwrap();
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn export(dir: &TestDir, extra: &[&str]) -> (PathBuf, Output) {
    let file = dir.tmp.path().join(format!(
        "export-{}.jsonl",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut args = vec!["export", "--out", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = dir.cli(&args);
    (file, out)
}

/// The rows' lines of an export (after its header), parsed.
fn rows(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["format"], "memwarden-export");
    assert_eq!(header["version"], 1);
    lines.map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(rows: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn verify_ok(dir: &TestDir) {
    ok(&dir.cli(&["verify"]), "verify");
}

/// The last admin event's detail with this `event`, from the data dir's audit.db.
fn admin_events(dir: &TestDir, event: &str) -> Vec<Value> {
    common::audit_events(dir)
        .into_iter()
        .filter(|e| e["kind"] == "admin" && e["detail"]["event"] == event)
        .map(|e| e["detail"].clone())
        .collect()
}

#[tokio::test]
async fn sqlite_round_trip_keeps_every_byte_and_verifies() {
    let src = TestDir::new();
    let [awkward, plain, old, new, gone] = populated(&src).await;
    verify_ok(&src);
    let (file, out) = export(&src, &[]);
    ok(&out, "export");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the export holds memories: private");
    let exported = rows(&file);
    let mut want = vec![
        awkward.clone(),
        plain.clone(),
        old.clone(),
        new,
        gone.clone(),
    ];
    want.sort();
    assert_eq!(ids(&exported), want);
    let line = exported
        .iter()
        .find(|r| r["id"] == awkward.as_str())
        .unwrap();
    assert_eq!(line["content"], AWKWARD);
    assert_eq!(line["tags"], json!(["a", "b"]));
    assert_eq!(line["mac"].as_str().unwrap().len(), 64);
    let sha = hex_sha256(&std::fs::read(&file).unwrap());
    let done = admin_events(&src, "export");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["rows"], 5);
    assert_eq!(done[0]["file_sha256"], sha.as_str());
    assert_eq!(admin_events(&src, "export_start").len(), 1);

    let dst = sharing_keyring(&src);
    let out = dst.cli(&["import", file.to_str().unwrap()]);
    ok(&out, "import");
    assert_eq!(dst.row_count(), 5);
    verify_ok(&dst);
    let event = admin_events(&dst, "import");
    assert_eq!(event.len(), 1);
    assert_eq!(event[0]["rows"], 5);
    assert_eq!(event[0]["file_sha256"], sha.as_str());
    assert!(
        !String::from_utf8_lossy(&common::read_all(&dst.data().join("audit.db")))
            .contains("second line")
    );

    let client = dst.connect().await;
    let got = client.call("memory_get", json!({"id": awkward})).await.ok();
    assert_eq!(got["memory"]["content"], AWKWARD);
    assert_eq!(
        got["memory"]["metadata"],
        json!({"source": "runbook", "n": 3})
    );
    let got = client.call("memory_get", json!({"id": plain})).await.ok();
    assert_eq!(got["memory"]["status"], "active");
    let got = client.call("memory_get", json!({"id": old})).await.ok();
    assert_eq!(got["memory"]["status"], "superseded");
    let gone_now = client.call("memory_get", json!({"id": gone})).await;
    assert_eq!(gone_now.tool_code(), "NOT_FOUND");
    client.close().await;
    verify_ok(&dst);

    // The same rows exported again from the copy are the same lines.
    let (again, out) = export(&dst, &[]);
    ok(&out, "export of the copy");
    let mut a = rows(&file);
    let mut b = rows(&again);
    a.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    b.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    assert_eq!(a, b);
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Rewrites the line of entry `id` with `edit`.
fn tamper_line(file: &Path, id: &str, edit: impl Fn(&mut Value)) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        if v["id"] == id {
            edit(&mut v);
        }
        out.push_str(&serde_json::to_string(&v).unwrap());
        out.push('\n');
    }
    std::fs::write(file, out).unwrap();
}

#[tokio::test]
async fn a_tampered_line_is_refused_by_id_unless_resealed() {
    let src = TestDir::new();
    let [awkward, plain, ..] = populated(&src).await;
    let (file, out) = export(&src, &[]);
    ok(&out, "export");
    tamper_line(&file, &plain, |v| {
        v["content"] = json!("a planted instruction");
    });

    let dst = sharing_keyring(&src);
    let out = dst.cli(&["import", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a tampered line refuses the file"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&plain), "{stderr}");
    assert!(
        !stderr.contains(&awkward),
        "only the failing id is named: {stderr}"
    );
    assert!(!stderr.contains("planted"), "never the content: {stderr}");
    assert_eq!(dst.row_count(), 0, "nothing was written");
    let refused = admin_events(&dst, "import_refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["failed"], json!([plain]));
    verify_ok(&dst);

    let out = dst.cli(&["import", "--reseal-failed", file.to_str().unwrap()]);
    ok(&out, "import --reseal-failed");
    assert_eq!(dst.row_count(), 5);
    let event = admin_events(&dst, "import");
    assert_eq!(event[0]["resealed"], json!([plain]));
    verify_ok(&dst);
    let client = dst.connect().await;
    let got = client.call("memory_get", json!({"id": plain})).await.ok();
    assert_eq!(got["memory"]["content"], "a planted instruction");
    client.close().await;
}

#[tokio::test]
async fn a_line_sealed_with_a_key_this_keyring_lacks_is_refused() {
    let src = TestDir::new();
    let [_, plain, ..] = populated(&src).await;
    let (file, out) = export(&src, &[]);
    ok(&out, "export");
    tamper_line(&file, &plain, |v| v["key_id"] = json!("k-unknown"));
    let dst = sharing_keyring(&src);
    let out = dst.cli(&["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&plain));
    assert_eq!(dst.row_count(), 0);
    // Another data dir's keyring verifies none of them.
    let stranger = TestDir::new();
    stranger.init();
    let out = stranger.cli(&["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stranger.row_count(), 0);
}

#[tokio::test]
async fn an_id_already_present_refuses_the_import() {
    let src = TestDir::new();
    let [awkward, ..] = populated(&src).await;
    let (file, out) = export(&src, &[]);
    ok(&out, "export");
    let (ops, out) = export(&src, &["--namespace", "ops"]);
    ok(&out, "export --namespace ops");
    let dst = sharing_keyring(&src);
    ok(&dst.cli(&["import", ops.to_str().unwrap()]), "import ops");
    assert_eq!(dst.row_count(), 1);
    let out = dst.cli(&["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already in the store") && stderr.contains(&awkward),
        "{stderr}"
    );
    assert_eq!(dst.row_count(), 1, "nothing more was written");
    verify_ok(&dst);
}

#[tokio::test]
async fn namespace_and_since_filters_select_rows() {
    let src = TestDir::new();
    let [awkward, ..] = populated(&src).await;
    let (ops, out) = export(&src, &["--namespace", "ops"]);
    ok(&out, "export --namespace ops");
    assert_eq!(ids(&rows(&ops)), vec![awkward.clone()]);
    let (both, out) = export(&src, &["--namespace", "ops", "--namespace", "default"]);
    ok(&out, "two namespaces");
    assert_eq!(rows(&both).len(), 5);

    std::thread::sleep(std::time::Duration::from_millis(20));
    let cut = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::thread::sleep(std::time::Duration::from_millis(20));
    let client = src.connect().await;
    let late = client.store("a note written after the cut").await;
    client.close().await;
    let (recent, out) = export(&src, &["--since", &cut.to_string()]);
    ok(&out, "export --since ms");
    assert_eq!(ids(&rows(&recent)), vec![late.clone()]);
    let rfc = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(cut) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (recent, out) = export(&src, &["--since", &rfc]);
    ok(&out, "export --since rfc3339");
    assert_eq!(ids(&rows(&recent)), vec![late]);
    let out = src.cli(&["export", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
}

#[tokio::test]
async fn export_refuses_a_tampered_row_and_an_existing_out_file() {
    let src = TestDir::new();
    let [_, plain, ..] = populated(&src).await;
    src.tamper().set(
        &plain,
        memwarden::store::testing::Field::Content,
        memwarden::store::testing::Value::Text("edited in the database".into()),
    );
    let (file, out) = export(&src, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&plain));
    let exported = rows(&file);
    assert_eq!(exported.len(), 4, "the others are exported");
    assert!(!ids(&exported).contains(&plain));
    let out = src.cli(&["export", "--out", file.to_str().unwrap()]);
    assert!(!out.status.success(), "never over an existing file");
}

/// Runs `memwarden ARGS` on the PostgreSQL store of `pg`.
fn on_pg(pg: &Ready, args: &[&str]) -> Output {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--data-dir"), pg.data.as_os_str()]);
    all.extend([OsStr::new("--store"), OsStr::new("postgres")]);
    all.extend([OsStr::new("--database-file"), pg.app.as_os_str()]);
    std::process::Command::new(common::bin())
        .args(all)
        .output()
        .expect("run memwarden")
}

/// Not a tokio test: the cluster's helpers block on their own runtime.
#[test]
fn round_trip_into_postgres_and_back() {
    let Some(pg) = Ready::start() else {
        eprintln!("SKIPPED: PostgreSQL is not installed");
        return;
    };
    let src = TestDir::new();
    let [awkward, _, old, _, gone] = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(populated(&src));
    let (file, out) = export(&src, &[]);
    ok(&out, "export");
    copy_keyring(&src, &pg.data.join("keyring.toml"));

    let mut tampered = file.clone();
    tampered.set_extension("tampered");
    std::fs::copy(&file, &tampered).unwrap();
    tamper_line(&tampered, &awkward, |v| v["content"] = json!("edited"));
    let out = on_pg(&pg, &["import", tampered.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&awkward));
    assert_eq!(pg.query_i64("SELECT count(*) FROM memory.entries"), 0);

    ok(
        &on_pg(&pg, &["import", file.to_str().unwrap()]),
        "import into postgres",
    );
    assert_eq!(pg.query_i64("SELECT count(*) FROM memory.entries"), 5);
    ok(&on_pg(&pg, &["verify"]), "verify on postgres");
    let out = on_pg(&pg, &["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "the ids are there now");
    assert_eq!(pg.query_i64("SELECT count(*) FROM memory.entries"), 5);

    // Back out of PostgreSQL: the same lines, byte for byte in content.
    let back = pg.cluster.dir.path().join("back.jsonl");
    ok(
        &on_pg(&pg, &["export", "--out", back.to_str().unwrap()]),
        "export from postgres",
    );
    let text = std::fs::read_to_string(&back).unwrap();
    let header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(header["source_engine"], "postgres");
    let mut a = rows(&file);
    let mut b = rows(&back);
    a.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    b.sort_by(|x, y| x["id"].as_str().cmp(&y["id"].as_str()));
    assert_eq!(a, b);
    let line = b.iter().find(|r| r["id"] == awkward.as_str()).unwrap();
    assert_eq!(line["content"], AWKWARD);
    assert!(
        b.iter()
            .any(|r| r["id"] == old.as_str() && r["status"] == "superseded")
    );
    assert!(
        b.iter()
            .any(|r| r["id"] == gone.as_str() && r["status"] == "deleted")
    );
}

#[test]
fn a_file_of_another_format_or_version_is_refused() {
    let dir = TestDir::new();
    dir.init();
    let file = dir.tmp.path().join("future.jsonl");
    for header in [
        r#"{"format":"memwarden-export","version":2,"source_engine":"sqlite","exported_at":0}"#,
        r#"{"format":"other","version":1,"source_engine":"sqlite","exported_at":0}"#,
        "not json",
    ] {
        std::fs::write(&file, format!("{header}\n")).unwrap();
        let out = dir.cli(&["import", file.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("line 1"), "{stderr}");
    }
    assert_eq!(dir.row_count(), 0);
}
