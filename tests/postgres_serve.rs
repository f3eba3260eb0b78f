//! `memwarden serve --store postgres --database-file FILE` (issue 14): an agent over MCP on a
//! PostgreSQL store, its calls audited in `audit.events` — every write in its own transaction,
//! the rest on the audit connection — in one chain the offline verifier accepts after export.

mod common;

use std::process::Stdio;

use common::Client;
use common::postgres::Ready;
use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

async fn serve(pg: &Ready, database_file: &std::path::Path) -> Client {
    serve_from(pg, &pg.data, database_file, &[]).await
}

/// `serve --store postgres` with the data dir (the keyring) and database file of one host.
async fn serve_from(
    pg: &Ready,
    data: &std::path::Path,
    database_file: &std::path::Path,
    extra: &[String],
) -> Client {
    pg.serve_from(data, database_file, extra).await
}

fn run(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(common::bin())
        .args(args)
        .output()
        .expect("run memwarden")
}

/// One number from the database, as its superuser (the harness blocks: not on a runtime thread).
fn count(pg: &Ready, sql: &str) -> i64 {
    tokio::task::block_in_place(|| pg.query_i64(sql))
}

/// The call events naming `id` (an entry's id appears in its write's event detail).
fn call_events(pg: &Ready, id: &str) -> i64 {
    count(
        pg,
        &format!("SELECT count(*) FROM audit.events WHERE kind = 'call' AND detail LIKE '%{id}%'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_postgresql_stores_finds_and_every_call_is_in_one_verified_chain() {
    let Some(pg) = Ready::start() else { return };
    let c = serve(&pg, &pg.app).await;
    let stored = c
        .call(
            "memory_store",
            json!({"content": "The deploy key lives in the vault", "namespace": "ops", "tags": ["infra"]}),
        )
        .await
        .ok();
    let id = stored["id"].as_str().unwrap().to_string();
    c.call(
        "memory_store",
        json!({"content": "lunch on friday", "namespace": "personal"}),
    )
    .await
    .ok();
    let got = c.call("memory_get", json!({"id": id})).await.ok();
    assert_eq!(
        got["memory"]["content"],
        "The deploy key lives in the vault"
    );
    let found = c
        .call("memory_search", json!({"query": "vault deploy"}))
        .await
        .ok();
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{found}");
    assert_eq!(results[0]["memory"]["id"], id.as_str());
    assert!(
        results[0]["snippet"].as_str().unwrap().contains("«vault»"),
        "{found}"
    );
    let listed = c
        .call("memory_list", json!({"namespace": "ops"}))
        .await
        .ok();
    assert_eq!(listed["memories"].as_array().unwrap().len(), 1);
    let updated = c
        .call(
            "memory_update",
            json!({"id": id, "content": "The deploy key moved to the HSM"}),
        )
        .await
        .ok();
    let new_id = updated["id"].as_str().unwrap().to_string();
    c.call("memory_delete", json!({"id": new_id})).await.ok();
    assert_eq!(
        c.call("memory_get", json!({"id": new_id}))
            .await
            .tool_code(),
        "NOT_FOUND"
    );
    // Refused input is audited too, and changes nothing.
    let refused = c.call("memory_store", json!({"content": ""})).await;
    assert!(
        matches!(refused, common::Outcome::Protocol(_)),
        "{refused:?}"
    );
    c.close().await;

    // Every call and the session's start and end are events of one chain in PostgreSQL.
    let kinds = count(
        &pg,
        "SELECT count(*) FROM audit.events WHERE kind = 'session_start'",
    );
    assert_eq!(kinds, 1);
    let ends = count(
        &pg,
        "SELECT count(*) FROM audit.events WHERE kind = 'session_end'",
    );
    assert_eq!(ends, 1);
    let calls = count(&pg, "SELECT count(*) FROM audit.events WHERE kind = 'call'");
    assert_eq!(calls, 9, "every call, allowed or refused");
    let leaked = count(
        &pg,
        "SELECT count(*) FROM audit.events WHERE detail LIKE '%vault%' OR detail LIKE '%lunch%'",
    );
    assert_eq!(leaked, 0, "no memory content in the audit events");

    let copy = pg.cluster.dir.path().join("exported.db");
    let auditor = pg
        .cluster
        .settings_file("auditor.conf", "memwarden_auditor");
    let out = run(&[
        "db".as_ref(),
        "export-audit".as_ref(),
        "--database-file".as_ref(),
        auditor.as_os_str(),
        "--out".as_ref(),
        copy.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keyring = pg.data.join("keyring.toml");
    let out = run(&[
        "audit".as_ref(),
        "verify".as_ref(),
        "--db".as_ref(),
        copy.as_os_str(),
        "--keyring".as_ref(),
        keyring.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("11 events") && stdout.contains("MACs verified"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn serve_refuses_a_database_it_cannot_reach_and_never_prints_the_settings() {
    let Some(pg) = Ready::start() else { return };
    let file = pg.cluster.dir.path().join("wrong.conf");
    let socket = pg.cluster.socket_dir();
    std::fs::write(
        &file,
        format!("host={socket} port=1 dbname=memwarden user=memwarden_app password=s3cr3t-pw"),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&file, perms).unwrap();
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&pg.data)
        .args(["--store", "postgres", "--database-file"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing on the protocol channel");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(
        !stderr.contains("s3cr3t-pw") && !stderr.contains(&socket),
        "{stderr}"
    );
    // Without a file or a systemd credential, it says what it needs.
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&pg.data)
        .args(["--store", "postgres"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_session_fails_calls_unavailable_then_the_session_goes_on() {
    let Some(pg) = Ready::start() else { return };
    let c = serve(&pg, &pg.app).await;
    let before = c
        .call(
            "memory_store",
            json!({"content": "written before the restart"}),
        )
        .await
        .ok();
    tokio::task::block_in_place(|| pg.cluster.restart());
    // Calls while the connection is being re-made fail UNAVAILABLE with a retry hint, never
    // INTERNAL, and end nothing; within a few seconds one goes through on the same session.
    let mut refused = 0;
    let mut stored = None;
    for i in 0..40 {
        match c
            .call(
                "memory_store",
                json!({"content": format!("after the restart {i}")}),
            )
            .await
        {
            common::Outcome::Ok(v) => {
                stored = Some(v);
                break;
            }
            common::Outcome::ToolError(v) => {
                assert_eq!(v["code"], "UNAVAILABLE", "{v}");
                assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
                refused += 1;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let stored = stored.expect("a store succeeds after the restart");
    let got = c.call("memory_get", json!({"id": before["id"]})).await.ok();
    assert_eq!(got["memory"]["content"], "written before the restart");
    let found = c
        .call("memory_search", json!({"query": "restart"}))
        .await
        .ok();
    assert_eq!(found["results"].as_array().unwrap().len(), 2, "{found}");
    c.close().await;
    // Every acknowledged write is there once, with one event each, in one chain.
    assert_eq!(count(&pg, "SELECT count(*) FROM memory.entries"), 2);
    let ids = [
        before["id"].as_str().unwrap(),
        stored["id"].as_str().unwrap(),
    ];
    for id in ids {
        assert!(call_events(&pg, id) >= 1, "the write of {id} has its event");
    }
    let gaps = count(
        &pg,
        "SELECT count(*) FROM audit.events e WHERE seq > 1 AND NOT EXISTS \
         (SELECT 1 FROM audit.events p WHERE p.seq = e.seq - 1 AND p.hash = e.prev_hash)",
    );
    assert_eq!(gaps, 0, "one unbroken chain");
    eprintln!("refused while reconnecting: {refused}");
}

/// A group commits without waiting for its flush, so its locks go before it (`store/postgres/
/// group.rs`, `COMMIT_THEN_FLUSH`), and waits for the flush after: a write is acknowledged only
/// once it is on disk. The database crashes right after each acknowledgement (`pg_ctl stop -m
/// immediate`: what is still in its WAL buffers is lost) and every acknowledged write is
/// there after recovery, with its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_right_after_an_acknowledgement_loses_no_acknowledged_write() {
    let Some(pg) = Ready::start() else { return };
    let mut acknowledged = Vec::new();
    for round in 0..8 {
        let c = serve(&pg, &pg.app).await;
        let stored = c
            .call(
                "memory_store",
                json!({"content": format!("acknowledged before crash {round}")}),
            )
            .await
            .ok();
        tokio::task::block_in_place(|| pg.cluster.crash());
        acknowledged.push(stored["id"].as_str().unwrap().to_string());
        c.close().await;
        tokio::task::block_in_place(|| pg.cluster.start_again());
    }
    for id in &acknowledged {
        let rows = count(
            &pg,
            &format!("SELECT count(*) FROM memory.entries WHERE id = '{id}'"),
        );
        assert_eq!(rows, 1, "the acknowledged write {id} survived the crash");
        assert_eq!(call_events(&pg, id), 1, "the write of {id} has its event");
    }
}

/// The flush a group's commit ends with runs when the connection is made: where it cannot run,
/// `serve` refuses to start, rather than commit a write and then fail to say so.
#[test]
fn serve_refuses_a_database_where_a_commit_could_not_be_flushed() {
    let Some(pg) = Ready::start() else { return };
    pg.batch_as_superuser(
        "REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC",
    );
    let out = std::process::Command::new(common::bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&pg.data)
        .args(["--store", "postgres", "--database-file"])
        .arg(&pg.app)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on the protocol channel");
    assert!(stderr.contains("pg_logical_emit_message"), "{stderr}");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM memory.entries"),
        0,
        "nothing written"
    );
}

/// A "host": its own data dir holding a copy of the keyring, and its own copy of the database
/// file, as an operator would lay them out on another machine.
fn host(pg: &Ready, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let root = pg.cluster.dir.path().join(format!("host{n}"));
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for (from, to) in [
        (pg.data.join("keyring.toml"), data.join("keyring.toml")),
        (pg.app.clone(), root.join("database")),
    ] {
        std::fs::copy(&from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (data, root.join("database"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_hosts_store_4000_entries_in_one_verified_store_and_one_chain() {
    let Some(pg) = Ready::start() else { return };
    const HOSTS: usize = 8;
    const EACH: usize = 500;
    let pg = std::sync::Arc::new(pg);
    let mut tasks = Vec::new();
    for n in 0..HOSTS {
        let pg = pg.clone();
        tasks.push(tokio::spawn(async move {
            let (data, file) = host(&pg, n);
            let c = serve_from(&pg, &data, &file, &[]).await;
            let mut ids = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let v = c
                    .call(
                        "memory_store",
                        json!({"content": format!("host {n} entry {i}"), "namespace": format!("h{n}")}),
                    )
                    .await
                    .ok();
                ids.push(v["id"].as_str().unwrap().to_string());
            }
            c.close().await;
            ids
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), HOSTS * EACH);
    let report = tokio::task::block_in_place(|| pg.store().verify_all().unwrap());
    assert_eq!(report.checked, (HOSTS * EACH) as u64);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    for id in &acked {
        assert_eq!(
            report.statuses.get(id).map(String::as_str),
            Some("active"),
            "{id}"
        );
    }
    // One chain: 8 sessions' starts, ends and calls, no gap and no fork.
    let events = count(&pg, "SELECT count(*) FROM audit.events");
    assert_eq!(events, (HOSTS * (EACH + 2)) as i64);
    assert_eq!(count(&pg, "SELECT max(seq) FROM audit.events"), events);
    let unlinked = count(
        &pg,
        "SELECT count(*) FROM audit.events e WHERE seq > 1 AND NOT EXISTS \
         (SELECT 1 FROM audit.events p WHERE p.seq = e.seq - 1 AND p.hash = e.prev_hash)",
    );
    assert_eq!(unlinked, 0);
    let stored = count(
        &pg,
        "SELECT count(*) FROM audit.events WHERE kind = 'call' AND tool = 'memory_store' \
         AND outcome = 'ok'",
    );
    assert_eq!(stored, (HOSTS * EACH) as i64, "every write has its event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_hour_hold_across_hosts() {
    let Some(pg) = Ready::start() else { return };
    let policy = pg.cluster.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[principals.local]\ntools = [\"memory_list\"]\n\
         namespaces = { default = \"r\" }\ndefault_namespace = \"default\"\n\
         [rates]\nsessions_per_hour = 3\n",
    )
    .unwrap();
    let args = vec![
        "--policy".to_string(),
        policy.display().to_string(),
        "--allow-owned-policy".to_string(),
    ];
    let mut served = 0;
    let mut limited = 0;
    for n in 0..6 {
        let (data, file) = host(&pg, n);
        let mut cmd = tokio::process::Command::new(common::bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--store", "postgres", "--database-file"])
            .arg(&file)
            .args(&args);
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match ().serve(transport).await {
            Ok(service) => {
                served += 1;
                let _ = service.cancel().await;
            }
            Err(e) => {
                assert!(format!("{e:?}").contains("RATE_LIMITED"), "{e:?}");
                limited += 1;
            }
        }
    }
    assert_eq!((served, limited), (3, 3), "the limit holds across hosts");
}

/// Stores in a loop on a raw session until the server dies; the ids it acknowledged.
/// Stores one at a time until the server dies; tells `first_ack` when the first store is
/// acknowledged. Returns the acknowledged ids.
fn store_until_killed(
    s: &mut common::RawSession,
    round: u64,
    first_ack: std::sync::mpsc::Sender<()>,
) -> Vec<String> {
    use std::io::BufRead;
    let mut acked = Vec::new();
    for i in 0.. {
        let call = json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": {
            "name": "memory_store",
            "arguments": {"content": format!("round {round} write {i}")}}});
        if !s.try_send(&call.to_string()) {
            break;
        }
        let mut line = String::new();
        match s.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        let result = &reply["result"];
        if result["isError"] == false {
            acked.push(
                result["structuredContent"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            let _ = first_ack.send(());
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_kill_9s_during_writes_lose_no_acknowledged_write_or_its_event() {
    let Some(pg) = Ready::start() else { return };
    let mut acked: Vec<String> = Vec::new();
    tokio::task::block_in_place(|| {
        for round in 0..100u64 {
            let mut child = std::process::Command::new(common::bin())
                .arg("serve")
                .arg("--data-dir")
                .arg(&pg.data)
                .args(["--store", "postgres", "--database-file"])
                .arg(&pg.app)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take();
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut s = common::RawSession {
                child,
                stdin,
                stdout,
            };
            s.handshake();
            let pid = s.child.id().to_string();
            // A different moment in the write loop each round, counted from its first
            // acknowledged write (how long a write takes varies with the build and the load),
            // so every round kills a server that is writing.
            let delay = std::time::Duration::from_millis(round * 37 % 60);
            let (first_ack, acked_once) = std::sync::mpsc::channel();
            let killer = std::thread::spawn(move || {
                let _ = acked_once.recv_timeout(std::time::Duration::from_secs(60));
                std::thread::sleep(delay);
                std::process::Command::new("kill")
                    .args(["-9", &pid])
                    .status()
                    .unwrap();
            });
            acked.extend(store_until_killed(&mut s, round, first_ack));
            killer.join().unwrap();
            let _ = s.child.wait();
        }
    });
    assert!(
        acked.len() >= 100,
        "every round acknowledged a write before its kill: {}",
        acked.len()
    );
    eprintln!("{} writes acknowledged across 100 kills", acked.len());
    let report = tokio::task::block_in_place(|| pg.store().verify_all().unwrap());
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    for id in &acked {
        assert_eq!(
            report.statuses.get(id).map(String::as_str),
            Some("active"),
            "{id}"
        );
    }
    // Every acknowledged write's event, in one unbroken chain.
    let client = pg.cluster.connect("memwarden").await;
    let details: Vec<String> = client
        .query(
            "SELECT detail FROM audit.events WHERE tool = 'memory_store' AND outcome = 'ok'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &acked {
        assert!(
            details.iter().any(|d| d.contains(id.as_str())),
            "no event for acknowledged write {id}"
        );
    }
    let unlinked = count(
        &pg,
        "SELECT count(*) FROM audit.events e WHERE seq > 1 AND NOT EXISTS \
         (SELECT 1 FROM audit.events p WHERE p.seq = e.seq - 1 AND p.hash = e.prev_hash)",
    );
    assert_eq!(unlinked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_on_postgresql_reconciles_rows_with_the_chain_and_catches_an_owner_edit() {
    let Some(pg) = Ready::start() else { return };
    let c = serve(&pg, &pg.app).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = c
            .call(
                "memory_store",
                json!({"content": format!("verified note {i}")}),
            )
            .await
            .ok();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    c.call("memory_delete", json!({"id": ids[0]})).await.ok();
    c.close().await;
    let verify = || pg.memwarden("verify");
    let out = tokio::task::block_in_place(verify);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: 5 entries verified"), "{stdout}");
    assert!(
        stdout.contains("ok: every entry has the audited call that created it"),
        "{stdout}"
    );
    // The owner rewrites a row's content and removes another, bypassing memwarden.
    tokio::task::block_in_place(|| {
        pg.as_owner(
            "UPDATE memory.entries SET content = 'forged' WHERE id = $1",
            &[&ids[1]],
        );
        pg.as_owner("DELETE FROM memory.entries WHERE id = $1", &[&ids[2]]);
    });
    let out = tokio::task::block_in_place(verify);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("do not verify") && stdout.contains(&ids[1]),
        "{stdout}"
    );
    assert!(
        stdout.contains("are missing without a purge or reject") && stdout.contains(&ids[2]),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_loopback_tcp_the_sandbox_leaves_the_database_port_open_for_reconnecting() {
    let Some(pg) = Ready::start_tcp() else { return };
    let file = pg.cluster.tcp_settings_file("tcp.conf", "memwarden_app");
    let c = serve(&pg, &file).await;
    c.call("memory_store", json!({"content": "over tcp"}))
        .await
        .ok();
    // The reconnect after the restart happens under the sandbox: only the database's port may
    // be connected to, and it must be.
    tokio::task::block_in_place(|| pg.cluster.restart());
    let stored = c.store_once_back().await;
    assert!(stored, "serve reconnected over TCP from inside its sandbox");
    c.close().await;
    let log = std::fs::read_to_string(pg.cluster.dir.path().join("serve.log")).unwrap();
    assert!(log.contains("sandbox applied"), "{log}");
    assert!(
        !log.contains("memwarden_app"),
        "the settings never reach the log"
    );
}
