//! `memwarden health` and `memwarden metrics` on a PostgreSQL store, through the real binary
//! against a real cluster: a healthy store passes every check; a widened grant on audit.events,
//! a disabled append-only trigger, or a database that cannot be reached fails with exit 1 and
//! the check named; metrics parse as Prometheus text, count the store's rows and calls, and
//! count a reconnection after `pg_ctl restart` mid-session.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::Client;
use common::postgres::Ready;
use serde_json::{Value, json};

/// Runs `memwarden CMD --data-dir … --store postgres --database-file FILE`.
fn run(pg: &Ready, cmd: &str, file: &Path) -> Output {
    Command::new(common::bin())
        .arg(cmd)
        .arg("--data-dir")
        .arg(&pg.data)
        .args(["--store", "postgres", "--database-file"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run memwarden")
}

/// `health`'s exit code and JSON report.
fn health(pg: &Ready, file: &Path) -> (Option<i32>, Value) {
    let out = run(pg, "health", file);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "health printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// The check named `name` in `report`.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"))
}

/// The names of the checks that failed.
fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect()
}

/// `serve --store postgres` as the app role.
async fn serve(pg: &Ready) -> Client {
    pg.serve_from::<&str>(&pg.data, &pg.app, &[]).await
}

/// Runs `sql` as the owner role (off the async worker: the helper starts a runtime of its own).
fn owner(pg: &Ready, sql: &str) {
    tokio::task::block_in_place(|| pg.as_owner(sql, &[]));
}

/// One value read as the superuser.
fn count(pg: &Ready, sql: &str) -> i64 {
    tokio::task::block_in_place(|| pg.query_i64(sql))
}

/// `db init` again, as the admin.
fn db_init(pg: &Ready) {
    let admin = pg.cluster.settings_file("admin.conf", "memwarden");
    let out = Command::new(common::bin())
        .args(["db", "init", "--admin-database-file"])
        .arg(&admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const DATABASE_CHECKS: [&str; 6] = [
    "database connection",
    "database schema version",
    "audit grants",
    "audit triggers",
    "audit chain present",
    "audit chain",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_store_passes_every_check() {
    let Some(pg) = Ready::start() else { return };
    let c = serve(&pg).await;
    c.store("a healthy memory").await;
    c.close().await;
    let events = count(&pg, "SELECT count(*) FROM audit.events");
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    // Read only: looking appends nothing.
    assert_eq!(count(&pg, "SELECT count(*) FROM audit.events"), events);
    assert!(failed(&report).is_empty(), "{report:#}");
    for name in DATABASE_CHECKS {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    // The data dir's checks stay: the keyring is there.
    for name in ["keyring", "policy", "free disk", "audit signing key"] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    // No SQLite file checks on a PostgreSQL store.
    assert!(!report.to_string().contains("memory.db"), "{report:#}");
    let schema = memwarden::store::postgres::schema::CURRENT_VERSION;
    assert_eq!(
        check(&report, "database schema version")["detail"]["version"],
        schema
    );
    assert_eq!(
        check(&report, "audit grants")["detail"]["role"],
        "memwarden_app"
    );
    let chain = &check(&report, "audit chain")["detail"];
    assert!(chain["events"].as_i64().is_some_and(|n| n >= 3), "{chain}");
    assert_eq!(chain["macs_checked"], true, "{chain}");
    assert_eq!(
        check(&report, "audit chain present")["detail"]["entries"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_grant_on_audit_events_fails_health_until_db_init_narrows_it() {
    let Some(pg) = Ready::start() else { return };
    let c = serve(&pg).await;
    c.store("before the grant").await;
    c.close().await;
    assert_eq!(health(&pg, &pg.app).0, Some(0));
    for privilege in ["UPDATE", "DELETE", "TRUNCATE"] {
        owner(
            &pg,
            &format!("GRANT {privilege} ON audit.events TO memwarden_app"),
        );
        let (code, report) = health(&pg, &pg.app);
        assert_eq!(code, Some(1), "{privilege}: {report:#}");
        assert_eq!(report["ok"], false);
        assert_eq!(failed(&report), ["audit grants"], "{report:#}");
        let detail = check(&report, "audit grants")["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("memwarden_app {privilege}")) && detail.contains("db init"),
            "{detail}"
        );
        db_init(&pg);
        let (code, report) = health(&pg, &pg.app);
        assert_eq!(code, Some(0), "db init narrowed it again: {report:#}");
    }
    // Through a role the app role is a member of: as bad as a direct grant.
    tokio::task::block_in_place(|| {
        pg.as_superuser("CREATE ROLE audit_fixers NOLOGIN");
        pg.as_superuser("GRANT DELETE ON audit.events TO audit_fixers");
        pg.as_superuser("GRANT audit_fixers TO memwarden_app");
    });
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(1), "{report:#}");
    let detail = check(&report, "audit grants")["detail"].as_str().unwrap();
    assert!(detail.contains("audit_fixers DELETE"), "{detail}");
    // Nothing was changed by looking: the chain is whole.
    assert_eq!(check(&report, "audit chain")["ok"], true, "{report:#}");
    // Serving as a superuser is the widest grant of all.
    let superuser = pg.cluster.settings_file("super.conf", "memwarden");
    let (code, report) = health(&pg, &superuser);
    assert_eq!(code, Some(1), "{report:#}");
    let detail = check(&report, "audit grants")["detail"].as_str().unwrap();
    assert!(detail.contains("memwarden is a superuser"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_or_extra_triggers_on_audit_events_fail_health() {
    let Some(pg) = Ready::start() else { return };
    assert_eq!(health(&pg, &pg.app).0, Some(0));
    owner(
        &pg,
        "ALTER TABLE audit.events DISABLE TRIGGER events_no_update_or_delete",
    );
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(failed(&report), ["audit triggers"], "{report:#}");
    let detail = check(&report, "audit triggers")["detail"].as_str().unwrap();
    assert!(
        detail.contains("events_no_update_or_delete is disabled"),
        "{detail}"
    );
    // Firing only on a replica is not firing.
    owner(
        &pg,
        "ALTER TABLE audit.events ENABLE REPLICA TRIGGER events_no_update_or_delete",
    );
    assert_eq!(health(&pg, &pg.app).0, Some(1));
    owner(
        &pg,
        "ALTER TABLE audit.events ENABLE TRIGGER events_no_update_or_delete",
    );
    assert_eq!(health(&pg, &pg.app).0, Some(0));
    // A trigger that silently drops events as they are inserted.
    owner(
        &pg,
        "CREATE FUNCTION audit.drop_event() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RETURN NULL; END $$",
    );
    owner(
        &pg,
        "CREATE TRIGGER events_swallow BEFORE INSERT ON audit.events \
         FOR EACH ROW EXECUTE FUNCTION audit.drop_event()",
    );
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(1), "{report:#}");
    let detail = check(&report, "audit triggers")["detail"].as_str().unwrap();
    assert!(
        detail.contains("unexpected trigger events_swallow"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_or_another_schema_version_fails_health_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let Some(pg) = Ready::start() else { return };
    let socket = pg.cluster.socket_dir();
    let file = pg.cluster.dir.path().join("wrong-port.conf");
    std::fs::write(
        &file,
        format!("host={socket} port=1 user=memwarden_app dbname=postgres password=s3cr3t-pw\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&pg, "health", &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(failed(&report), ["database connection"], "{report:#}");
    let detail = check(&report, "database connection")["detail"]
        .as_str()
        .unwrap();
    assert!(
        detail.contains("cannot connect to the database"),
        "{detail}"
    );
    eprintln!("unreachable: {detail}");
    for secret in ["s3cr3t-pw", socket.as_str()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    // The schema too old for this binary: `db init` is the fix.
    owner(
        &pg,
        &format!(
            "DELETE FROM memory.schema_version WHERE version = {}",
            memwarden::store::postgres::schema::CURRENT_VERSION
        ),
    );
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(failed(&report), ["database schema version"], "{report:#}");
    let detail = check(&report, "database schema version")["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains("run `memwarden db init`"), "{detail}");
    // Put back (as the migration's own row), then newer than this binary.
    owner(
        &pg,
        &format!(
            "INSERT INTO memory.schema_version (version) VALUES ({})",
            memwarden::store::postgres::schema::CURRENT_VERSION
        ),
    );
    assert_eq!(health(&pg, &pg.app).0, Some(0));
    owner(
        &pg,
        &format!(
            "INSERT INTO memory.schema_version (version) VALUES ({})",
            memwarden::store::postgres::schema::CURRENT_VERSION + 1
        ),
    );
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(1), "{report:#}");
    let detail = check(&report, "database schema version")["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains("newer than this binary"), "{detail}");
}

/// The value of the one sample of `family` whose labels include `labels`.
fn sample(parsed: &Value, family: &str, labels: Value) -> f64 {
    let samples = parsed[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}: {parsed}"));
    let want = labels.as_object().unwrap();
    samples
        .iter()
        .find(|s| want.iter().all(|(k, v)| &s[1][k] == v))
        .unwrap_or_else(|| panic!("no {family} sample with {labels}: {samples:?}"))[2]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_store_and_a_reconnection_after_a_restart() {
    let Some(pg) = Ready::start() else { return };
    let c = serve(&pg).await;
    for i in 0..3 {
        c.store(&format!("before the restart {i}")).await;
    }
    let missing = c
        .call(
            "memory_get",
            json!({"id": "01234567-89ab-7def-8123-456789abcdef"}),
        )
        .await;
    assert!(
        matches!(missing, common::Outcome::ToolError(_)),
        "{missing:?}"
    );
    // Before any restart: the series are there, at zero.
    let out = run(&pg, "metrics", &pg.app);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("memwarden_store_reconnects_total 0"),
        "{text}"
    );
    tokio::task::block_in_place(|| pg.cluster.restart());
    let stored = c.store_once_back().await;
    assert!(stored, "a store succeeds after the restart");
    // Down for a while: the attempts made meanwhile fail, and are counted once it is back.
    tokio::task::block_in_place(|| pg.cluster.stop());
    for _ in 0..8 {
        let refused = c.call("memory_list", json!({})).await;
        assert_eq!(refused.tool_code(), "UNAVAILABLE");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    tokio::task::block_in_place(|| pg.cluster.start_again());
    let mut back = false;
    for _ in 0..40 {
        if let common::Outcome::Ok(_) = c.call("memory_list", json!({})).await {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(back, "the session goes on once the database is back");
    c.close().await;
    let out = run(&pg, "metrics", &pg.app);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("memwarden_entries{status=\"active\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("memwarden_calls_total{tool=\"memory_store\",outcome=\"ok\"} 4"),
        "{text}"
    );
    assert!(text.contains("memwarden_sessions_total 1"), "{text}");
    // The reconnection was recorded in the chain, which the chain check still accepts.
    let recorded = count(
        &pg,
        "SELECT count(*) FROM audit.events WHERE kind = 'security' \
         AND detail::jsonb ->> 'event' = 'store_reconnected'",
    );
    assert_eq!(recorded, 2);
    assert!(
        text.contains("memwarden_store_reconnects_total 2"),
        "{text}"
    );
    let (code, report) = health(&pg, &pg.app);
    assert_eq!(code, Some(0), "{report:#}");
    let Some(parsed) = common::parse_prometheus(&text) else {
        return;
    };
    assert_eq!(parsed["memwarden_store_reconnects"]["type"], "counter");
    assert_eq!(
        sample(&parsed, "memwarden_store_reconnects", json!({})),
        2.0
    );
    // At least one attempt failed while it was down (fewer than the calls: backoff).
    let errors = sample(&parsed, "memwarden_store_connection_errors", json!({}));
    assert!((1.0..8.0).contains(&errors), "{errors}");
    let failed = count(
        &pg,
        "SELECT sum((detail::jsonb ->> 'failed_attempts')::bigint)::bigint FROM audit.events \
         WHERE detail::jsonb ->> 'event' = 'store_reconnected'",
    );
    assert_eq!(errors, failed as f64);
    assert_eq!(
        sample(&parsed, "memwarden_entries", json!({"status": "active"})),
        4.0
    );
    assert_eq!(
        sample(
            &parsed,
            "memwarden_calls",
            json!({"tool": "memory_get", "outcome": "denied"})
        ),
        1.0
    );
    assert_eq!(
        sample(
            &parsed,
            "memwarden_security_events",
            json!({"event": "store_reconnected"})
        ),
        2.0
    );
    assert_eq!(
        parsed["memwarden_call_duration_seconds"]["type"],
        "histogram"
    );
    // Every audited call has its duration in the histogram.
    let calls: f64 = parsed["memwarden_calls"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[2].as_f64().unwrap())
        .sum();
    let histogram = parsed["memwarden_call_duration_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == "memwarden_call_duration_seconds_count")
        .unwrap()[2]
        .as_f64()
        .unwrap();
    assert_eq!(histogram, calls);
    assert!(sample(&parsed, "memwarden_db_bytes", json!({"db": "memory"})) > 0.0);
    assert!(sample(&parsed, "memwarden_db_bytes", json!({"db": "audit"})) > 0.0);
    eprintln!("connection errors before the reconnection: {errors}");
}
