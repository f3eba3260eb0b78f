//! `memwarden backup --store postgres` and `restore` (issue 15): a backup of a PostgreSQL store
//! taken while four agents write, in the same verified, MAC'd format as on SQLite, restored into
//! an SQLite data dir and into a new PostgreSQL database; a database that is not empty refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::postgres::Ready;
use common::{memwarden as run, stdout_ok as ok};
use serde_json::json;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A settings file for database `db` as `user`, over the cluster's unix socket.
fn settings(pg: &Ready, name: &str, user: &str, db: &str) -> PathBuf {
    let path = pg.cluster.dir.path().join(name);
    let text = format!(
        "host={} port={} user={user} dbname={db}\n",
        pg.cluster.socket_dir(),
        pg.cluster.port
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Rows in the database (the harness blocks: not on a runtime thread).
fn count(pg: &Ready) -> i64 {
    tokio::task::block_in_place(|| pg.query_i64("SELECT count(*) FROM memory.entries"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_under_four_writers_restores_into_sqlite_and_into_a_new_database() {
    let Some(pg) = Ready::start() else { return };
    let pg = Arc::new(pg);
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (pg, stop) = (pg.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let client = pg.serve_from(&pg.data, &pg.app, &[] as &[&str]).await;
            let mut ids = Vec::new();
            while !stop.load(Ordering::Relaxed) && ids.len() < 400 {
                ids.push(
                    client
                        .store(&format!("writer {w} note {}", ids.len()))
                        .await,
                );
            }
            client.close().await;
            ids
        }));
    }
    // Some rows in before the snapshot; the writers keep going through it.
    while count(&pg) < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let store = ["--store", "postgres", "--database-file", s(&pg.app)];
    let mut args: Vec<String> = ["backup", "--data-dir", s(&pg.data), "--out", s(&backup)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(store.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || run(&args))
        .await
        .unwrap();
    let out = ok(&out);
    assert!(out.contains("backup verified"), "{out}");
    stop.store(true, Ordering::Relaxed);
    let mut ids = Vec::new();
    for w in writers {
        ids.extend(w.await.unwrap());
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    let in_backup = manifest["entries"].as_u64().unwrap();
    assert!(
        in_backup >= 40 && (in_backup as usize) <= ids.len(),
        "{manifest}"
    );

    // Into SQLite: a data dir holding the same keyring.
    let r = tmp.path().join("restored");
    ok(&run(&["init", "--data-dir", s(&r)]));
    std::fs::copy(pg.data.join("keyring.toml"), r.join("keyring.toml")).unwrap();
    ok(&run(&[
        "restore",
        "--data-dir",
        s(&r),
        "--from",
        s(&backup),
    ]));
    // Every entry has its audited call: the snapshot held rows and events together.
    ok(&run(&["verify", "--data-dir", s(&r)]));
    ok(&run(&["audit", "verify", "--data-dir", s(&r)]));

    // Into a new PostgreSQL database.
    tokio::task::block_in_place(|| pg.as_superuser("CREATE DATABASE restored"));
    common::postgres::db_init(&settings(&pg, "admin-r.conf", "memwarden", "restored"));
    let app = settings(&pg, "app-r.conf", "memwarden_app", "restored");
    let into = [
        "restore",
        "--data-dir",
        s(&pg.data),
        "--from",
        s(&backup),
        "--store",
        "postgres",
        "--database-file",
        s(&app),
    ];
    let out = ok(&run(&into));
    assert!(
        out.contains(&format!("restored {in_backup} entries")),
        "{out}"
    );
    ok(&run(&[
        "verify",
        "--data-dir",
        s(&pg.data),
        "--store",
        "postgres",
        "--database-file",
        s(&app),
    ]));
    let client = pg.serve_from(&pg.data, &app, &[] as &[&str]).await;
    let listed = client.call("memory_list", json!({"limit": 5})).await.ok();
    assert_eq!(listed["memories"].as_array().unwrap().len(), 5, "{listed}");
    client.close().await;
    // A database that is not empty is refused.
    let out = run(&into);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
}
