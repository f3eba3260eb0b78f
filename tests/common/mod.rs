//! Test helpers: a temp data dir per test, the real binary, a real MCP client over stdio, and a
//! raw line-level session for transport tests.
#![allow(dead_code)]

pub mod certs;
pub mod http;
pub mod postgres;
pub mod store;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use memwarden::store::testing::Tamper;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorData, Tool};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

/// The six tools, sorted.
pub const TOOL_NAMES: [&str; 6] = [
    "memory_delete",
    "memory_get",
    "memory_list",
    "memory_search",
    "memory_store",
    "memory_update",
];

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_memwarden")
}

/// A temp dir holding a data dir path (not created until init or serve) and, when the harness
/// runs on PostgreSQL ([`store::kind`]), a database of its own that every server and
/// subcommand started through it uses.
pub struct TestDir {
    /// Dropped before `tmp`, which holds its connection files.
    pub pg: Option<store::Database>,
    pub tmp: tempfile::TempDir,
}

/// Subcommands that open the store: on PostgreSQL they get the database file too.
const STORE_COMMANDS: &[&str] = &[
    "serve",
    "serve-http",
    "verify",
    "review",
    "purge",
    "maintain",
    "reseal",
    "keys",
    "sandbox-check",
    "export",
    "import",
];

impl TestDir {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pg = store::on_postgres().then(|| store::Database::create(tmp.path()));
        Self { pg, tmp }
    }

    /// The arguments that point a store-opening subcommand at this test's store: none on
    /// SQLite (the data dir holds it), the database file on PostgreSQL.
    pub fn store_args(&self) -> Vec<std::ffi::OsString> {
        match &self.pg {
            None => Vec::new(),
            Some(db) => vec![
                "--store".into(),
                "postgres".into(),
                "--database-file".into(),
                db.app.clone().into_os_string(),
            ],
        }
    }

    /// The arguments for `args` run as a subcommand: the store's for those that open it, the
    /// auditor role's database file for the auditor's commands on PostgreSQL.
    fn backend_args(&self, args: &[&str]) -> Vec<std::ffi::OsString> {
        let Some(db) = &self.pg else {
            return Vec::new();
        };
        match args.first().copied() {
            Some(c) if STORE_COMMANDS.contains(&c) => self.store_args(),
            Some("audit")
                if args
                    .get(1)
                    .is_some_and(|s| !matches!(*s, "public-key" | "witness"))
                    && !args.contains(&"--db") =>
            {
                vec![
                    "--store".into(),
                    "postgres".into(),
                    "--database-file".into(),
                    db.auditor.clone().into_os_string(),
                ]
            }
            _ => Vec::new(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn stderr_log(&self) -> PathBuf {
        self.tmp.path().join("stderr.log")
    }

    /// `memwarden init` on the data dir.
    pub fn init(&self) {
        let out = self.cli(&["init"]);
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a CLI subcommand with `--data-dir`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run memwarden")
    }

    /// The subcommand `args` on this test's data dir and store, to be run by the caller.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .arg("--data-dir")
            .arg(self.data())
            .args(self.backend_args(args));
        cmd
    }

    /// Writes a policy file into the temp dir and returns the `serve` arguments that use it.
    /// (Tests run as root, who can write any file: hence --allow-owned-policy.)
    pub fn policy(&self, text: &str) -> Vec<String> {
        let path = self.tmp.path().join("policy.toml");
        std::fs::write(&path, text).expect("write policy");
        vec![
            "--policy".into(),
            path.display().to_string(),
            "--allow-owned-policy".into(),
        ]
    }

    /// The test-only tamper path into this data dir's store: what an attacker with write access
    /// to the database could change, named by what it changes rather than by SQL. Every tamper
    /// test goes through it; a second backend's `TestDir` would return its own.
    pub fn tamper(&self) -> store::Tamper {
        match &self.pg {
            None => store::Tamper::Sqlite(Tamper::open(&self.data())),
            Some(db) => store::Tamper::Postgres(db.tamper()),
        }
    }

    /// An audit.db holding this test's audit events: the data dir's own on SQLite; on
    /// PostgreSQL, a fresh copy of `audit.events` made now by `memwarden db export-audit` as the
    /// auditor role (the same file the offline verifier reads).
    pub fn audit_db(&self) -> PathBuf {
        let Some(db) = &self.pg else {
            return self.data().join("audit.db");
        };
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let out = self.tmp.path().join(format!("exported-audit-{n}.db"));
        let run = Command::new(bin())
            .args(["db", "export-audit", "--database-file"])
            .arg(&db.auditor)
            .arg("--out")
            .arg(&out)
            .output()
            .expect("run memwarden db export-audit");
        assert!(
            run.status.success(),
            "export-audit: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        out
    }

    /// Every byte the audit log keeps, for leak greps: audit.db's file on SQLite, a `pg_dump`
    /// of the `audit` schema on PostgreSQL.
    pub fn audit_bytes(&self) -> Vec<u8> {
        match &self.pg {
            None => read_all(&self.data().join("audit.db")),
            Some(db) => db.dump_schema("audit"),
        }
    }

    /// The store opened through the library, as a server would (the data dir's keyring; this
    /// test's backend): for tests that seal rows the tools cannot make, such as old ones.
    pub fn library_store(&self) -> memwarden::store::Store {
        let ring = memwarden::keys::Keyring::load(&self.data().join("keyring.toml")).unwrap();
        match &self.pg {
            None => memwarden::store::Store::open(
                &self.data().join("memory.db"),
                ring.entry,
                memwarden::store::StoreOptions::default(),
            )
            .expect("open memory.db"),
            Some(db) => {
                use memwarden::store::postgres::{DatabaseSettings, Postgres};
                let settings = DatabaseSettings::load(&db.app).unwrap();
                let backend = Postgres::connect(&settings, ring.audit).expect("connect");
                memwarden::store::Store::with_backend(Box::new(backend), ring.entry)
            }
        }
    }

    /// Rows of any status.
    pub fn row_count(&self) -> i64 {
        self.tamper().count()
    }

    /// Starts `memwarden serve` with an MCP client attached; stderr goes to `stderr.log`.
    pub async fn connect(&self) -> Client {
        self.connect_with::<&str>(&[]).await
    }

    pub async fn connect_with<S: AsRef<std::ffi::OsStr>>(&self, extra: &[S]) -> Client {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.stderr_log())
            .expect("stderr log");
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data())
            .args(self.store_args())
            .args(extra);
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn memwarden serve");
        let service = ().serve(transport).await.expect("MCP initialize");
        Client { service }
    }
}

/// What a tool call came back as.
#[derive(Debug)]
pub enum Outcome {
    /// A successful result's structuredContent.
    Ok(Value),
    /// A tool result with isError: true; its structuredContent.
    ToolError(Value),
    /// A JSON-RPC error.
    Protocol(ErrorData),
}

impl Outcome {
    pub fn ok(self) -> Value {
        match self {
            Outcome::Ok(v) => v,
            other => panic!("expected success, got {other:?}"),
        }
    }

    /// The `code` of a tool error.
    pub fn tool_code(&self) -> String {
        match self {
            Outcome::ToolError(v) => v["code"].as_str().unwrap_or_default().to_string(),
            other => panic!("expected a tool error, got {other:?}"),
        }
    }

    /// The JSON-RPC error, which must be -32602.
    pub fn invalid_params(self) -> ErrorData {
        match self {
            Outcome::Protocol(e) if e.code.0 == -32602 => e,
            other => panic!("expected -32602, got {other:?}"),
        }
    }
}

pub struct Client {
    pub service: RunningService<RoleClient, ()>,
}

impl Client {
    pub async fn tools(&self) -> Vec<Tool> {
        self.service.list_all_tools().await.expect("tools/list")
    }

    pub async fn call(&self, tool: &str, args: Value) -> Outcome {
        let mut params = CallToolRequestParams::new(tool.to_string());
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        match self.service.call_tool(params).await {
            Ok(result) => {
                let outcome = classify(result);
                if let Outcome::Ok(v) = &outcome {
                    check_output(tool, v);
                }
                outcome
            }
            Err(ServiceError::McpError(e)) => Outcome::Protocol(e),
            Err(e) => panic!("transport failure calling {tool}: {e}"),
        }
    }

    pub async fn store(&self, content: &str) -> String {
        let v = self
            .call("memory_store", json!({"content": content}))
            .await
            .ok();
        v["id"].as_str().expect("id").to_string()
    }

    /// After the database went away: stores until a call succeeds, every refusal meanwhile
    /// `UNAVAILABLE` (never another code), 40 tries 250 ms apart. Whether one succeeded.
    pub async fn store_once_back(&self) -> bool {
        for i in 0..40 {
            match self
                .call("memory_store", json!({"content": format!("after {i}")}))
                .await
            {
                Outcome::Ok(_) => return true,
                Outcome::ToolError(v) => {
                    assert_eq!(v["code"], "UNAVAILABLE", "{v}");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                other => panic!("{other:?}"),
            }
        }
        false
    }

    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}

/// A successful result must match the tool's published outputSchema, as strict clients check.
fn check_output(tool: &str, value: &Value) {
    let path = format!("{}/schema/output/{tool}.json", env!("CARGO_MANIFEST_DIR"));
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("output schema")).unwrap();
    let validator = jsonschema::draft202012::new(&schema).expect("output schema compiles");
    if let Err(e) = validator.validate(value) {
        panic!(
            "{tool} result does not match its outputSchema at {}: {e}",
            e.instance_path()
        );
    }
}

fn classify(result: CallToolResult) -> Outcome {
    let structured = result
        .structured_content
        .clone()
        .expect("structuredContent");
    // The text block must carry the same JSON.
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .expect("text content");
    let parsed: Value = serde_json::from_str(&text).expect("text is JSON");
    assert_eq!(parsed, structured, "text and structuredContent differ");
    if result.is_error == Some(true) {
        Outcome::ToolError(structured)
    } else {
        Outcome::Ok(structured)
    }
}

/// A session spoken line by line, for what an SDK client will not send.
pub struct RawSession {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl RawSession {
    /// Spawns the server and completes the MCP handshake.
    pub fn start(dir: &TestDir) -> Self {
        let mut s = Self::spawn(dir);
        s.handshake();
        s
    }

    pub fn handshake(&mut self) {
        self.send(&json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}).to_string());
        let init = self.recv();
        assert_eq!(init["result"]["serverInfo"]["name"], "memwarden");
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    }

    /// Spawns the server without any handshake.
    pub fn spawn(dir: &TestDir) -> Self {
        Self::spawn_with(dir, &[])
    }

    /// Spawns the server with extra `serve` arguments, without any handshake.
    pub fn spawn_with(dir: &TestDir, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.stderr_log())
            .expect("stderr log");
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.data())
            .args(dir.store_args())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    }

    /// Sends a line if the server still reads; false once it has gone.
    pub fn try_send(&mut self, line: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        stdin.write_all(format!("{line}\n").as_bytes()).is_ok() && stdin.flush().is_ok()
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write");
        stdin.flush().expect("flush");
    }

    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read");
        assert!(n > 0, "server closed stdout");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"))
    }

    pub fn call(&mut self, id: u64, tool: &str, args: Value) -> Value {
        self.send(&json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}).to_string());
        self.recv()
    }

    /// Closes stdin without waiting.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Closes stdin and waits for the process; returns its exit status.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("wait")
    }
}

/// Reads a whole file as bytes (for leak greps).
pub fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs the binary with `args` (no data dir implied), waiting for it.
pub fn memwarden<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run memwarden")
}

/// Its stdout, after asserting it succeeded (both streams shown when it did not).
pub fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every audit event of a data dir, through `memwarden audit export`.
pub fn audit_events(dir: &TestDir) -> Vec<Value> {
    let db = dir.audit_db();
    let out = dir.cli(&["audit", "export", "--db", db.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file in the data dir with its bytes, but for SQLite's shared-memory index and empty
/// WAL files (a read-only open of a WAL database creates them): what "nothing changed" compares.
pub fn data_snapshot(dir: &TestDir) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir.data())
        .expect("data dir")
        .map(|e| e.expect("entry"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .filter(|(name, bytes)| {
            let scratch = name.ends_with("-shm") || (name.ends_with("-wal") && bytes.is_empty());
            !scratch
        })
        .collect()
}

/// Parses `text` with python3's prometheus_client; returns {family: {sample line: value}}, or
/// `None` (SKIPPED) where it is not installed.
pub fn parse_prometheus(text: &str) -> Option<Value> {
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIPPED: python3 prometheus_client is not installed");
        return None;
    }
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "parser refused: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

impl postgres::Ready {
    /// `serve --store postgres` over MCP, with the data dir `data` (its keyring), the database
    /// file `database_file` and `extra` flags; stderr appended to serve.log in the cluster's dir.
    pub async fn serve_from<S: AsRef<std::ffi::OsStr>>(
        &self,
        data: &Path,
        database_file: &Path,
        extra: &[S],
    ) -> Client {
        use rmcp::ServiceExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.cluster.dir.path().join("serve.log"))
            .unwrap();
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--store", "postgres", "--database-file"])
            .arg(database_file)
            .args(extra);
        let (transport, _) = rmcp::transport::TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("spawn memwarden serve");
        Client {
            service: ().serve(transport).await.expect("MCP initialize"),
        }
    }
}
