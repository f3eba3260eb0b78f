//! TLS to PostgreSQL: `sslmode=verify-full sslrootcert=FILE` connects over TLS with the
//! server's chain checked against exactly those roots and its name checked; an unrelated CA
//! stops `serve` before anything is stored; a host elsewhere without verified TLS is refused
//! unless the operator passes `--allow-insecure-database`, which the audit log records. The
//! certificates are made per test with the `openssl` CLI; the password in every file
//! (`hunter2`) never reaches an error or a log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Client;
use common::postgres::Ready;
use serde_json::json;

const PASSWORD: &str = "hunter2";

/// Certificates for one test: the server's CA ("ca"), an unrelated one ("other"), and the
/// server's certificate and key.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::certs::make_ca(dir.path(), "ca");
    let other = common::certs::make_ca(dir.path(), "other");
    let (cert, key) = common::certs::make_leaf(
        dir.path(),
        "ca",
        "server",
        "serverAuth",
        "IP:127.0.0.1,DNS:localhost",
    );
    Certs {
        _dir: dir,
        ca,
        other,
        cert,
        key,
    }
}

/// Writes a 0600 database file.
fn database_file(pg: &Ready, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let file = pg.cluster.dir.path().join(name);
    std::fs::write(&file, text).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// `serve --store postgres` over MCP, stderr appended to serve.log in the cluster's dir.
async fn serve(pg: &Ready, database_file: &Path, extra: &[&str]) -> Client {
    pg.serve_from(&pg.data, database_file, extra).await
}

/// `serve` with nothing on stdin: what it says when it cannot start.
fn serve_once(pg: &Ready, database_file: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&pg.data)
        .args(["--store", "postgres", "--database-file"])
        .arg(database_file)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run memwarden serve")
}

/// One number from the database, as its superuser (the harness blocks: not on a runtime thread).
fn count(pg: &Ready, sql: &str) -> i64 {
    tokio::task::block_in_place(|| pg.query_i64(sql))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_stores_and_reads_back_over_tls_that_the_server_saw() {
    let certs = certs();
    let Some(pg) = Ready::start_tls(&certs.cert, &certs.key) else {
        return;
    };
    let port = pg.cluster.port;
    let file = database_file(
        &pg,
        "tls.conf",
        &format!(
            "host=127.0.0.1 port={port} user=memwarden_app dbname=postgres password={PASSWORD} \
             sslmode=verify-full sslrootcert='{}'\n",
            certs.ca.display()
        ),
    );
    let c = serve(&pg, &file, &[]).await;
    let stored = c
        .call("memory_store", json!({"content": "sent over verified TLS"}))
        .await
        .ok();
    let id = stored["id"].as_str().unwrap().to_string();
    let got = c.call("memory_get", json!({"id": id})).await.ok();
    assert_eq!(got["memory"]["content"], "sent over verified TLS");
    // Serve's three connections (store, audit, and the one that posts stores' words, opened
    // after the first store) are TLS, and none is plaintext.
    let by_tls = |ssl: bool| {
        count(
            &pg,
            &format!(
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE application_name LIKE 'memwarden%' AND ssl = {ssl}"
            ),
        )
    };
    let start = std::time::Instant::now();
    while by_tls(true) < 3 && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        by_tls(true),
        3,
        "store, audit and posting connections over TLS"
    );
    assert_eq!(by_tls(false), 0, "no plaintext connection");
    // After a restart the store reconnects from inside the sandbox, over TLS again (the roots
    // were read at start: nothing is read now).
    tokio::task::block_in_place(|| pg.cluster.restart());
    let stored = c.store_once_back().await;
    assert!(stored, "serve reconnected over TLS from inside its sandbox");
    assert!(by_tls(true) >= 1 && by_tls(false) == 0);
    c.close().await;

    // The URL form, by name (the certificate names localhost too).
    let url = database_file(
        &pg,
        "tls-url.conf",
        &format!(
            "postgresql://memwarden_app:{PASSWORD}@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}\n",
            certs.ca.display()
        ),
    );
    let c = serve(&pg, &url, &[]).await;
    let found = c
        .call("memory_search", json!({"query": "verified tls"}))
        .await
        .ok();
    assert_eq!(
        found["results"].as_array().map(Vec::len),
        Some(1),
        "{found}"
    );
    c.close().await;

    // verify (store + the audit chain exported through the same settings) over TLS too.
    let out = Command::new(common::bin())
        .args(["verify", "--data-dir"])
        .arg(&pg.data)
        .args(["--store", "postgres", "--database-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = std::fs::read_to_string(pg.cluster.dir.path().join("serve.log")).unwrap();
    assert!(log.contains("landlock: fully enforced"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // The server's own log: connections authorised over TLS.
    let pg_log = std::fs::read_to_string(pg.cluster.dir.path().join("pg.log")).unwrap();
    assert!(
        pg_log.contains("SSL enabled"),
        "log_connections shows TLS: {pg_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_stops_serve_before_anything_is_stored() {
    let certs = certs();
    let Some(pg) = Ready::start_tls(&certs.cert, &certs.key) else {
        return;
    };
    let file = database_file(
        &pg,
        "other.conf",
        &format!(
            "host=127.0.0.1 port={} user=memwarden_app dbname=postgres password={PASSWORD} \
             sslmode=verify-full sslrootcert={}\n",
            pg.cluster.port,
            certs.other.display()
        ),
    );
    let out = serve_once(&pg, &file, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on the protocol channel");
    assert!(
        stderr.contains("TLS handshake failed")
            && stderr.contains("UnknownIssuer")
            && stderr.contains("does not lead to a root in sslrootcert"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    // The right CA, but the certificate does not name the host asked for (the connection
    // still goes to 127.0.0.1, by hostaddr): refused too.
    let misnamed = database_file(
        &pg,
        "misnamed.conf",
        &format!(
            "host=db.example.com hostaddr=127.0.0.1 port={} user=memwarden_app dbname=postgres \
             password={PASSWORD} sslmode=verify-full sslrootcert={}\n",
            pg.cluster.port,
            certs.ca.display()
        ),
    );
    let out = serve_once(&pg, &misnamed, &[]);
    let misnamed_err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        misnamed_err.contains("TLS handshake failed") && misnamed_err.contains("not valid for"),
        "{misnamed_err}"
    );
    assert!(!misnamed_err.contains(PASSWORD), "{misnamed_err}");
    // db init and export-audit refuse it the same way.
    let out = Command::new(common::bin())
        .args(["db", "export-audit", "--database-file"])
        .arg(&file)
        .arg("--out")
        .arg(pg.cluster.dir.path().join("never.db"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!pg.cluster.dir.path().join("never.db").exists());
    // Nothing reached the database: no entry, no session.
    assert_eq!(count(&pg, "SELECT count(*) FROM memory.entries"), 0);
    assert_eq!(count(&pg, "SELECT count(*) FROM audit.events"), 0);
    // The server saw TLS asked for, and no session authorised.
    let plaintext = database_file(
        &pg,
        "plain.conf",
        &format!(
            "host=127.0.0.1 port={} user=memwarden_app dbname=postgres sslmode=disable\n",
            pg.cluster.port
        ),
    );
    // (Loopback plaintext stays allowed, as before.)
    let c = serve(&pg, &plaintext, &[]).await;
    c.call("memory_store", json!({"content": "plain loopback"}))
        .await
        .ok();
    c.close().await;
    assert_eq!(count(&pg, "SELECT count(*) FROM memory.entries"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_elsewhere_without_tls_is_refused_unless_allowed_and_the_flag_is_audited() {
    let Some(pg) = Ready::start_tcp() else { return };
    let port = pg.cluster.port;
    // A host named as elsewhere whose address (hostaddr) is this machine's loopback: the
    // settings see a remote host, the packets stay here.
    let remote = database_file(
        &pg,
        "remote.conf",
        &format!(
            "host=db.example.com hostaddr=127.0.0.1 port={port} user=memwarden_app \
             dbname=postgres password={PASSWORD}\n"
        ),
    );
    let out = serve_once(&pg, &remote, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("db.example.com")
            && stderr.contains("verify-full")
            && stderr.contains("--allow-insecure-database"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    // sslmode=require is no way round it: it does not check the certificate.
    let require = database_file(
        &pg,
        "require.conf",
        &format!(
            "postgresql://memwarden_app:{PASSWORD}@db.example.com:{port}/postgres?sslmode=require"
        ),
    );
    for args in [&[][..], &["--allow-insecure-database"][..]] {
        let out = serve_once(&pg, &require, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("does not check"), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    // db init says the same.
    let out = Command::new(common::bin())
        .args(["db", "init", "--admin-database-file"])
        .arg(&remote)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--allow-insecure-database"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert_eq!(count(&pg, "SELECT count(*) FROM audit.events"), 0);

    // verify-full against a server without TLS: refused, never a fallback to plaintext.
    let certs = certs();
    let no_tls = database_file(
        &pg,
        "no-tls.conf",
        &format!(
            "host=127.0.0.1 port={port} user=memwarden_app dbname=postgres password={PASSWORD} \
             sslmode=verify-full sslrootcert={}\n",
            certs.ca.display()
        ),
    );
    let out = serve_once(&pg, &no_tls, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("server does not support TLS"), "{stderr}");
    assert_eq!(count(&pg, "SELECT count(*) FROM audit.events"), 0);

    // With the flag: it serves, warns, and the session_start event records the flag.
    let c = serve(&pg, &remote, &["--allow-insecure-database"]).await;
    c.call(
        "memory_store",
        json!({"content": "in plaintext, knowingly"}),
    )
    .await
    .ok();
    c.close().await;
    assert_eq!(count(&pg, "SELECT count(*) FROM memory.entries"), 1);
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM audit.events WHERE kind = 'session_start' \
             AND detail::jsonb -> 'relaxing_flags' ? '--allow-insecure-database'"
        ),
        1
    );
    let log = std::fs::read_to_string(pg.cluster.dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains("insecure_database") && log.contains("memwarden::security"),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "{log}");
    // Without the flag on loopback, no relaxing flag is recorded.
    let c = serve(&pg, &pg.app, &[]).await;
    c.call("memory_store", json!({"content": "over the socket"}))
        .await
        .ok();
    c.close().await;
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM audit.events WHERE kind = 'session_start' \
             AND detail::jsonb -> 'relaxing_flags' = '[]'::jsonb"
        ),
        1
    );
}

#[test]
fn a_root_file_that_is_missing_empty_or_not_pem_is_named_never_the_settings() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (root, reason) in [
        (dir.path().join("missing.pem"), "not found"),
        (empty, "no PEM certificate"),
        (junk, "no PEM certificate"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join("db.conf");
        std::fs::write(
            &file,
            format!(
                "host=127.0.0.1 user=a password={PASSWORD} sslmode=verify-full sslrootcert={}",
                root.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = Command::new(common::bin())
            .args(["db", "init", "--admin-database-file"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&root.display().to_string()) && stderr.contains(reason),
            "{stderr}"
        );
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
}
