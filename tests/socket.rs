//! Identity through a real socket: `systemd-socket-activate` runs one `memwarden serve` per
//! connection with the socket as stdin/stdout, agents reach it with `memwarden connect`, and the
//! principal is the connecting uid mapped through the policy.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, TestDir};
use rmcp::ServiceExt;
use rmcp::transport::TokioChildProcess;
use serde_json::json;

struct Activator(Child);

impl Drop for Activator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn missing_prerequisite() -> Option<&'static str> {
    if memwarden::fsafe::current_uid() != 0 {
        return Some("needs root to connect as other uids");
    }
    for tool in ["systemd-socket-activate", "setpriv"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some("systemd-socket-activate or setpriv is not installed");
        }
    }
    None
}

fn activate(dir: &TestDir, policy_args: &[String]) -> (Activator, PathBuf) {
    let socket = dir.tmp.path().join("mcp.sock");
    let child = Command::new("systemd-socket-activate")
        .args(["--inetd", "-a", "-l"])
        .arg(&socket)
        .arg(common::bin())
        .args([
            "serve",
            "--require-sandbox",
            "--principal",
            "alice",
            "--data-dir",
        ])
        .arg(dir.data())
        .args(dir.store_args())
        .args(policy_args)
        .stderr(Stdio::from(
            std::fs::File::create(dir.stderr_log()).unwrap(),
        ))
        .spawn()
        .expect("systemd-socket-activate");
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The unit's SocketMode/SocketGroup decide who may connect; here: everyone.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    (Activator(child), socket)
}

async fn connect_as(uid: u32, socket: &Path) -> Client {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args([
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
    ])
    .arg(common::bin())
    .arg("connect")
    .arg(socket);
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::null())
        .spawn()
        .expect("connect");
    Client {
        service: ().serve(transport).await.expect("initialize through the socket"),
    }
}

const POLICY: &str = r#"version = 1
[principals.alice]
uid = 1001
tools = ["memory_store", "memory_get", "memory_search", "memory_list", "memory_update", "memory_delete"]
namespaces = { alice = "rw" }
default_namespace = "alice"

[principals.bob]
uid = 1002
tools = ["memory_store", "memory_get", "memory_search", "memory_list"]
namespaces = { bob = "rw" }
default_namespace = "bob"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_principal_is_the_connecting_uid() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = TestDir::new();
    dir.init();
    // Agents must reach the socket (not the data dir, which stays 0700).
    std::fs::set_permissions(dir.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = dir.policy(POLICY);
    let (_activator, socket) = activate(&dir, &args);

    let alice = connect_as(1001, &socket).await;
    assert_eq!(alice.tools().await.len(), 6);
    let id = alice.store("alice's secret plan").await;
    alice.close().await;

    // bob: his own tools, and alice's data does not exist for him — even though the server's
    // launch command says --principal alice.
    let bob = connect_as(1002, &socket).await;
    assert_eq!(bob.tools().await.len(), 4);
    assert_eq!(
        bob.call("memory_get", json!({"id": id})).await.tool_code(),
        "NOT_FOUND"
    );
    assert_eq!(
        bob.call("memory_list", json!({"namespace": "alice"}))
            .await
            .tool_code(),
        "FORBIDDEN"
    );
    let own = bob
        .call("memory_store", json!({"content": "bob's note"}))
        .await
        .ok();
    assert_eq!(own["namespace"], "bob");
    let found = bob
        .call("memory_search", json!({"query": "plan note"}))
        .await
        .ok();
    assert!(!found.to_string().contains("alice's secret"));
    bob.close().await;

    // A uid the policy does not map gets nothing.
    let stranger = connect_as(1003, &socket).await;
    assert!(stranger.tools().await.is_empty());
    assert_eq!(
        stranger.call("memory_list", json!({})).await.tool_code(),
        "FORBIDDEN"
    );
    stranger.close().await;

    // The audit log names who connected, by principal and peer uid.
    let starts = dir.cli(&[
        "audit",
        "query",
        "--kind",
        "session_start",
        "--format",
        "json",
    ]);
    let starts: Vec<serde_json::Value> = serde_json::from_slice(&starts.stdout).unwrap();
    let who: Vec<(String, u64)> = starts
        .iter()
        .map(|e| {
            (
                e["principal"].as_str().unwrap().to_string(),
                e["detail"]["peer"]["uid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("alice".into(), 1001),
            ("bob".into(), 1002),
            ("uid-1003".into(), 1003)
        ]
    );
    assert!(
        starts
            .iter()
            .all(|e| e["detail"]["sandbox"] == "landlock: fully enforced"
                || e["detail"]["sandbox"] == "landlock: partially enforced")
    );
}

/// Node-based MCP clients (Claude Desktop, the Inspector) spawn servers over a socketpair, not
/// pipes. A peer with our own uid is the local user who wrote the launch command: its
/// `--principal` stands, and local mode keeps every tool.
#[test]
fn a_same_uid_socketpair_is_local_mode() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    let dir = TestDir::new();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs_out = theirs.try_clone().unwrap();
    let mut child = Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(dir.data())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut w = ours.try_clone().unwrap();
    let mut r = BufReader::new(ours);
    let mut line = String::new();
    for msg in [
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"node-like","version":"0"}}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    ] {
        writeln!(w, "{msg}").unwrap();
    }
    let mut tools = None;
    while tools.is_none() {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "server closed");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["id"] == 1 {
            tools = Some(v["result"]["tools"].as_array().unwrap().len());
        }
    }
    assert_eq!(tools, Some(6), "local principal with every tool");
    w.shutdown(std::net::Shutdown::Both).unwrap();
    assert!(child.wait().unwrap().success());
}
