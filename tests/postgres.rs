//! PostgreSQL (issue 14), the part that stands: `memwarden db init` against a real throwaway
//! cluster — idempotent, and the roles' rights are what the contract says (audit events
//! append-only for the app role by grants and for the owner by triggers; the auditor reads the
//! audit schema only) — and the database file's checks.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::postgres::Cluster;

fn db_init(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(["db", "init", "--admin-database-file"])
        .arg(file)
        .output()
        .expect("run memwarden")
}

/// The SQLSTATE a statement fails with.
async fn refused(client: &tokio_postgres::Client, sql: &str) -> String {
    let err = client.batch_execute(sql).await.expect_err(sql);
    err.as_db_error()
        .expect("a server error")
        .code()
        .code()
        .to_string()
}

#[tokio::test]
async fn db_init_is_idempotent_and_audit_events_are_append_only() {
    let Some(pg) = Cluster::start() else { return };
    let admin = pg.settings_file("admin.conf", "memwarden");
    for want in ["schema version 0 -> 1", "schema version 1 -> 1"] {
        let out = db_init(&admin);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(want), "{stdout}");
    }

    let app = pg.connect("memwarden_app").await;
    app.batch_execute(
        "INSERT INTO audit.events VALUES (1, 't', 'call', NULL, NULL, NULL, 'ok', NULL, '{}', \
         '00', '11', 'a1', 'mm')",
    )
    .await
    .expect("the app role appends events");
    app.batch_execute(
        "INSERT INTO memory.entries (id, namespace, content, tags, status, principal, \
         session_id, created_at, updated_at, content_sha256, key_id, mac) VALUES \
         ('i', 'n', 'Déjà vu WORDS', '[\"t\"]', 'active', 'p', 's', 1, 1, '\\x00', 'e1', '\\x00')",
    )
    .await
    .expect("the app role writes entries");
    let words: String = app
        .query_one("SELECT words::text FROM memory.entries", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        words.contains("'déjà'") && words.contains("'words'"),
        "{words}"
    );
    for sql in [
        "UPDATE audit.events SET kind = 'x'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ] {
        assert_eq!(refused(&app, sql).await, "42501", "{sql}");
    }

    // The owner owns the table, so only the triggers stop it.
    let owner = pg.connect("memwarden").await;
    owner
        .batch_execute("SET ROLE memwarden_owner")
        .await
        .unwrap();
    for sql in [
        "UPDATE audit.events SET kind = 'x'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ] {
        assert_eq!(refused(&owner, sql).await, "P0001", "{sql}");
    }

    let auditor = pg.connect("memwarden_auditor").await;
    let n: i64 = auditor
        .query_one("SELECT count(*) FROM audit.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        refused(
            &auditor,
            "INSERT INTO audit.events SELECT * FROM audit.events"
        )
        .await,
        "42501"
    );
    assert_eq!(
        refused(&auditor, "SELECT 1 FROM memory.entries").await,
        "42501"
    );

    // A grant widened by hand is narrowed again by the next init.
    owner
        .batch_execute("RESET ROLE; GRANT UPDATE ON audit.events TO memwarden_app")
        .await
        .unwrap();
    assert!(db_init(&admin).status.success());
    assert_eq!(
        refused(&app, "UPDATE audit.events SET kind = 'x'").await,
        "42501"
    );
}

#[test]
fn the_database_file_is_checked_like_the_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.conf");
    let secret = "hunter2-not-to-be-printed";

    std::fs::write(
        &file,
        format!("host=/run/postgresql user=a password={secret}"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = db_init(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mode 0640"), "{stderr}");

    let link = dir.path().join("link.conf");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let out = db_init(&link);
    assert!(String::from_utf8_lossy(&out.stderr).contains("symlink is refused"));

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        &file,
        format!("postgresql://app:{secret}@db.example.com/memwarden"),
    )
    .unwrap();
    let out = db_init(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("db.example.com") && stderr.contains("TLS"),
        "{stderr}"
    );
    for out in [db_init(&file), db_init(&link)] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "the password leaked: {all}");
    }
}

/// One chain across many writers: 8 connections append 50 events each, every append in its own
/// transaction; the chain has no fork and no gap, and its export verifies with the offline
/// verifier and the same audit key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_make_one_chain_that_the_offline_verifier_accepts() {
    let Some(pg) = Cluster::start() else { return };
    assert!(
        db_init(&pg.settings_file("admin.conf", "memwarden"))
            .status
            .success()
    );
    let data = pg.dir.path().join("data-dir");
    let out = std::process::Command::new(common::bin())
        .args(["init", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let keys = memwarden::keys::Keyring::load(&data.join("keyring.toml"))
        .unwrap()
        .audit;
    let pg = std::sync::Arc::new(pg);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (pg, keys) = (pg.clone(), keys.clone());
        writers.push(tokio::spawn(async move {
            let mut client = pg.connect("memwarden_app").await;
            for i in 0..50 {
                let tx = client.transaction().await.unwrap();
                let event = memwarden::audit::NewEvent::new(
                    memwarden::audit::Kind::Admin,
                    serde_json::json!({"event": "test", "writer": w, "i": i}),
                );
                memwarden::audit::postgres::append(&tx, &keys, &event, memwarden::clock::now_ms())
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let auditor = pg.connect("memwarden_auditor").await;
    let head = memwarden::audit::postgres::head(&auditor).await.unwrap();
    assert_eq!(head.seq, 400);
    // The auditor exports with the CLI, as the auditor role.
    let copy = pg.dir.path().join("exported-audit.db");
    let settings = pg.settings_file("auditor.conf", "memwarden_auditor");
    let export = || {
        std::process::Command::new(common::bin())
            .args(["db", "export-audit", "--database-file"])
            .arg(&settings)
            .arg("--out")
            .arg(&copy)
            .output()
            .unwrap()
    };
    let out = export();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("head {head}")), "{stdout}");
    // Never over an existing file.
    let again = export();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let out = std::process::Command::new(common::bin())
        .args(["audit", "verify", "--db"])
        .arg(&copy)
        .arg("--keyring")
        .arg(data.join("keyring.toml"))
        .arg("--expect-head")
        .arg(head.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("400 events") && stdout.contains("MACs verified"),
        "{stdout}"
    );
}
