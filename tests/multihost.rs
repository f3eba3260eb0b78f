//! The multi-host fault campaign (issue 15, item 6): PostgreSQL in one network namespace and
//! three memwarden "hosts" in three others, joined by veth pairs (no route to any real
//! network), every connection TLS with the server's certificate checked against a throwaway CA
//! (`sslmode=verify-full`). While agents on all three hosts store and search through the real
//! binary, the test cuts a host's link, restarts PostgreSQL, kills a server with SIGKILL and
//! fills the disk under memory's table. After each fault: every acknowledged write is there
//! with its audit event, the chain is one and verifies, `verify` passes, every refusal was
//! UNAVAILABLE (never INTERNAL, a protocol error or a hang), and the sessions carry on by
//! themselves. Each fault's recovery time — from its end to the first successful call — is
//! printed (the benchmark numbers), never asserted. A server certificate the host does
//! not trust, or one for another name, stops `serve` before anything is stored.
//!
//! Needs root, iproute2, openssl and PostgreSQL: elsewhere it says SKIPPED (in CI it fails).
//! Everything it makes — namespaces, the tmpfs, the server — is undone on drop, also when a
//! test panics.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

/// The app role's password: in every host's database file, never in an error or a log.
const PASSWORD: &str = "hunter2-campaign";
/// The name the hosts ask for and the server's certificate carries.
const SERVER_NAME: &str = "db.memwarden.test";
const HOSTS: usize = 3;
/// The policy sets no deadline per call; the longest a call waits inside memwarden is a
/// connection attempt's or a lock wait's 10 s. A call not answered within this is a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the service may take to come back by itself after a fault.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long a host's link stays cut: a few seconds, which TCP rides out by itself...
const SHORT_CUT: Duration = Duration::from_secs(3);
/// ... and long enough that a call in flight would outlast [`CALL_TIMEOUT`] waiting for TCP's
/// next retransmission (at 12.6 s, then 25.4 s): the client must give the connection up.
const LONG_CUT: Duration = Duration::from_secs(14);
/// The tmpfs under memory's table.
const SPACE_BYTES: &str = "16m";

type Session = RunningService<RoleClient, ()>;

/// PostgreSQL's programs, or `None` after saying SKIPPED where this cannot run (not root, no
/// `ip`, `openssl` or PostgreSQL); in CI (`CI` set) that is a failure.
fn prerequisites() -> Option<PathBuf> {
    let works = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let bin = common::postgres::server_bin_dir();
    let missing = if memwarden::fsafe::current_uid() != 0 {
        Some("not root: making network namespaces needs root")
    } else if !works("ip", "-V") {
        Some("`ip` (iproute2) is missing")
    } else if !works("openssl", "version") {
        Some("openssl is missing")
    } else if bin.is_none() {
        Some("PostgreSQL is not installed (/usr/lib/postgresql/*/bin)")
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: CI runs the campaign as root with iproute2, openssl and PostgreSQL"
        );
        eprintln!("SKIPPED: {why}");
        return None;
    }
    bin
}

/// Runs `cmd`, which must succeed.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn chown_nobody(path: &Path) {
    run(Command::new("chown").arg("nobody").arg(path));
}

/// Writes a 0600 file.
fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The server's certificate, signed by the CA "ca", for [`SERVER_NAME`] and each host's
/// address of the server.
fn make_server_cert(dir: &Path) {
    let ips: Vec<String> = (1..=HOSTS).map(|n| format!("IP:10.213.{n}.1")).collect();
    let san = format!("DNS:{SERVER_NAME},{}", ips.join(","));
    common::certs::make_leaf(dir, "ca", "server", "serverAuth", &san);
}

/// One test's network: a namespace for PostgreSQL and one per host, a veth pair from the
/// server's to each host's (10.213.N.1 on the server's side, 10.213.N.2 on host N's), the
/// server running in its namespace, and a tmpfs tablespace. Dropping it stops the server,
/// unmounts the tmpfs and deletes the namespaces (their links go with them).
struct Net {
    /// `mw-<pid>-<k>`: unique per test process and fixture.
    tag: String,
    namespaces: Vec<String>,
    pg_bin: PathBuf,
    pg_running: bool,
    space_mounted: bool,
    /// Last: removed once everything living in it has stopped.
    dir: tempfile::TempDir,
}

impl Net {
    /// The namespaces and links for `hosts` hosts, the CA and the server's certificate.
    fn new(pg_bin: PathBuf, hosts: usize) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL runs as nobody, who must reach its files below.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut net = Self {
            tag: format!(
                "mw-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ),
            namespaces: Vec::new(),
            pg_bin,
            pg_running: false,
            space_mounted: false,
            dir,
        };
        let pg = net.ns("pg");
        net.add_namespace(&pg);
        for n in 1..=hosts {
            let host = net.ns(&format!("h{n}"));
            net.add_namespace(&host);
            let (dev, addr) = (format!("h{n}"), format!("10.213.{n}.1/24"));
            ip(&["-n", &pg, "link", "add", &dev, "type", "veth"]
                .into_iter()
                .chain(["peer", "name", "pg", "netns", &host])
                .collect::<Vec<_>>());
            ip(&["-n", &pg, "addr", "add", &addr, "dev", &dev]);
            ip(&["-n", &pg, "link", "set", &dev, "up"]);
            let addr = format!("10.213.{n}.2/24");
            ip(&["-n", &host, "addr", "add", &addr, "dev", "pg"]);
            ip(&["-n", &host, "link", "set", "pg", "up"]);
        }
        common::certs::make_ca(net.dir.path(), "ca");
        common::certs::make_ca(net.dir.path(), "other");
        make_server_cert(net.dir.path());
        net
    }

    fn ns(&self, who: &str) -> String {
        format!("{}-{who}", self.tag)
    }

    fn host_ns(&self, n: usize) -> String {
        self.ns(&format!("h{n}"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn add_namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// One of PostgreSQL's programs, run as nobody inside the server's namespace.
    fn as_server(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.ns("pg"),
            "runuser",
            "-u",
            "nobody",
            "--",
        ])
        .arg(self.pg_bin.join(program))
        .current_dir("/");
        c
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.path("pg/data");
        let log = self.path("pg/pg.log");
        run(self
            .as_server("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(args));
    }

    /// initdb, TLS with the test CA's certificate on each host's address, password
    /// authentication over TLS only from the hosts' subnets, the unix socket (trust) for the
    /// administrator and the auditor on this machine; started, with a tmpfs tablespace.
    fn start_server(&mut self, hosts: usize) {
        let pg = self.path("pg");
        std::fs::create_dir_all(pg.join("sock")).unwrap();
        chown_nobody(&pg);
        chown_nobody(&pg.join("sock"));
        let data = pg.join("data");
        run(self
            .as_server("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "memwarden", "--auth=trust", "-E", "UTF8"])
            .arg("--locale=C.UTF-8"));
        for (from, name) in [("server.pem", "server.crt"), ("server.key", "server.key")] {
            let to = pg.join(name);
            std::fs::copy(self.path(from), &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown_nobody(&to);
        }
        let listen: Vec<String> = (1..=hosts).map(|n| format!("10.213.{n}.1")).collect();
        append(
            &data.join("postgresql.conf"),
            &format!(
                "listen_addresses = '{}'\nport = 5432\nunix_socket_directories = '{}'\n\
                 ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                listen.join(","),
                pg.join("sock").display(),
                pg.join("server.crt").display(),
                pg.join("server.key").display()
            ),
        );
        append(
            &data.join("pg_hba.conf"),
            "hostssl all memwarden_app 10.213.0.0/16 scram-sha-256\n",
        );
        // The tablespace the disk fault fills: a tmpfs of its own, mounted before the server
        // starts (`ip netns exec` gives it a mount namespace of its own, which later mounts
        // need not reach).
        let space = self.path("space");
        std::fs::create_dir(&space).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={SPACE_BYTES},mode=0700"))
            .arg(format!("{}-space", self.tag))
            .arg(&space));
        self.space_mounted = true;
        chown_nobody(&space);
        self.pg_ctl(&["-w", "start"]);
        self.pg_running = true;
    }

    /// `pg_ctl restart -m fast` in the server's namespace: every connection is cut.
    fn restart_server(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "restart"]);
    }

    /// A connection file for `user` over the unix socket (trust: this machine only).
    fn socket_file(&self, name: &str, user: &str) -> PathBuf {
        let path = self.path(name);
        private_file(
            &path,
            &format!(
                "host={} port=5432 user={user} dbname=postgres\n",
                self.path("pg/sock").display()
            ),
        );
        path
    }

    /// Runs `sql` as the superuser over the unix socket.
    async fn sql(&self, sql: &str) {
        self.superuser().await.batch_execute(sql).await.unwrap();
    }

    async fn superuser(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.path("pg/sock"))
            .port(5432)
            .user("memwarden")
            .dbname("postgres");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.pg_running {
            let _ = self
                .as_server("pg_ctl")
                .arg("-D")
                .arg(self.path("pg/data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
        if self.space_mounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.path("space"))
                .output();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A memwarden "host": its data dir (a copy of the one keyring) and its database file, which
/// reaches the server by name over TLS at its own link's address.
struct Host {
    n: usize,
    ns: String,
    data: PathBuf,
    database: PathBuf,
    log: PathBuf,
}

impl Host {
    fn new(net: &Net, n: usize, keyring: &Path) -> Self {
        let root = net.path(&format!("h{n}"));
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        for d in [&root, &data] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::copy(keyring, data.join("keyring.toml")).unwrap();
        std::fs::set_permissions(
            data.join("keyring.toml"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let host = Self {
            n,
            ns: net.host_ns(n),
            data,
            database: root.join("database"),
            log: root.join("serve.log"),
        };
        host.database_file(&host.database, SERVER_NAME, &net.path("ca.pem"));
        host
    }

    /// Writes a database file for this host asking for `name` with the roots in `ca`.
    fn database_file(&self, path: &Path, name: &str, ca: &Path) {
        private_file(
            path,
            &format!(
                "host={name} hostaddr=10.213.{n}.1 port=5432 user=memwarden_app \
                 password={PASSWORD} dbname=postgres sslmode=verify-full sslrootcert={}\n",
                ca.display(),
                n = self.n
            ),
        );
    }

    /// `memwarden ARGS` inside this host's namespace, with its data dir.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(common::bin())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data);
        c
    }

    /// `serve --store postgres` inside the namespace with a real MCP client over stdio; stderr
    /// appended to the host's serve.log. The session, and the server's pid (`ip netns exec`
    /// execs it: the child is the server).
    async fn serve(&self) -> (Arc<Session>, u32) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(common::bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--store", "postgres", "--database-file"])
            .arg(&self.database);
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn memwarden serve in the host's namespace");
        let pid = transport.id().expect("the server's pid");
        let session = ().serve(transport).await.expect("MCP initialize");
        (Arc::new(session), pid)
    }
}

/// How a call came back.
enum Reply {
    /// A result: its structuredContent.
    Ok(Value),
    /// A tool error UNAVAILABLE: its retry hint.
    Unavailable(u64),
    /// The server went away (the transport closed).
    Gone,
}

/// One tool call, bounded by [`CALL_TIMEOUT`]. A refusal other than UNAVAILABLE, a protocol
/// error or a hang fails the test here.
async fn call(session: &Session, tool: &str, args: Value) -> Reply {
    let mut params = CallToolRequestParams::new(tool.to_string());
    if let Value::Object(map) = args {
        params = params.with_arguments(map);
    }
    let result = match tokio::time::timeout(CALL_TIMEOUT, session.call_tool(params)).await {
        Err(_) => panic!("{tool} was not answered within {CALL_TIMEOUT:?}: a hang"),
        Ok(Err(ServiceError::McpError(e))) => {
            panic!("{tool} failed with a protocol error, not a tool error: {e:?}")
        }
        Ok(Err(
            ServiceError::TransportClosed
            | ServiceError::TransportSend(_)
            | ServiceError::Cancelled { .. },
        )) => return Reply::Gone,
        Ok(Err(e)) => panic!("{tool}: {e}"),
        Ok(Ok(result)) => result,
    };
    let value = result.structured_content.unwrap_or(Value::Null);
    if result.is_error == Some(true) {
        assert_eq!(
            value["code"], "UNAVAILABLE",
            "{tool} was refused otherwise than UNAVAILABLE: {value}"
        );
        assert!(
            !value.to_string().contains(PASSWORD),
            "a refusal names the password"
        );
        return Reply::Unavailable(value["retry_after_ms"].as_u64().unwrap_or(250));
    }
    Reply::Ok(value)
}

/// What one host's agent saw.
#[derive(Default)]
struct Tally {
    /// Acknowledged stores: id and content.
    acked: Vec<(String, String)>,
    /// When each successful call came back.
    successes: Vec<Instant>,
    /// Calls refused UNAVAILABLE.
    refused: u32,
    /// Calls made.
    calls: u32,
    /// The server went away under it.
    gone: bool,
}

/// An agent on host `n`: stores, and every fourth round searches, until `stop`; a refusal
/// waits its retry hint (at most 250 ms). Ends early when its server goes away.
async fn agent(
    n: usize,
    label: &'static str,
    session: Arc<Session>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        let content = format!("host {n} {label} note {round}: the campaign keeps writing");
        let mut calls = vec![("memory_store", json!({"content": content}))];
        if round.is_multiple_of(4) {
            calls.push((
                "memory_search",
                json!({"query": "campaign writing", "limit": 5}),
            ));
        }
        for (tool, args) in calls {
            let reply = call(&session, tool, args).await;
            let wait = {
                let mut t = tally.lock().unwrap();
                t.calls += 1;
                match reply {
                    Reply::Ok(v) => {
                        t.successes.push(Instant::now());
                        if tool == "memory_store" {
                            let id = v["id"].as_str().expect("a stored id").to_string();
                            t.acked.push((id, content.clone()));
                        }
                        None
                    }
                    Reply::Unavailable(retry) => {
                        t.refused += 1;
                        Some(Duration::from_millis(retry.min(250)))
                    }
                    Reply::Gone => {
                        t.gone = true;
                        return;
                    }
                }
            };
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The faults, one after another.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Host 2's link down for this long, then up.
    CutLink(Duration),
    /// `pg_ctl restart -m fast`.
    RestartDatabase,
    /// `kill -9` host 3's server, then a new one there.
    KillServer,
    /// The tablespace holding memory's table filled until writes fail, then freed.
    FillDisk,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::CutLink(d) if d <= SHORT_CUT => "short-link-cut",
            Fault::CutLink(_) => "long-link-cut",
            Fault::RestartDatabase => "db-restart",
            Fault::KillServer => "kill-9",
            Fault::FillDisk => "disk-full",
        }
    }
}

/// Everything the campaign runs on.
struct Campaign {
    hosts: Vec<Host>,
    sessions: Vec<Arc<Session>>,
    pids: Vec<u32>,
    /// The auditor role's connection file (unix socket).
    auditor: PathBuf,
    keyring: PathBuf,
    /// Every acknowledged store so far: id → content.
    acked: BTreeMap<String, String>,
    /// Last: its drop stops the server and removes the namespaces.
    net: Net,
}

impl Campaign {
    /// Runs the agents on every host through `fault`; returns once the service has resumed
    /// everywhere and the agents have stopped, with the writes acknowledged meanwhile.
    async fn through(&mut self, fault: Fault) -> Vec<(String, String)> {
        let label = fault.label();
        let stop = Arc::new(AtomicBool::new(false));
        let tallies: Vec<Arc<Mutex<Tally>>> = (0..HOSTS).map(|_| Arc::default()).collect();
        let mut agents: Vec<tokio::task::JoinHandle<()>> = (0..HOSTS)
            .map(|i| {
                tokio::spawn(agent(
                    i + 1,
                    label,
                    self.sessions[i].clone(),
                    stop.clone(),
                    tallies[i].clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fault_end = match fault {
            Fault::CutLink(length) => {
                let ns = &self.hosts[1].ns;
                let refused_before = tallies[1].lock().unwrap().refused;
                ip(&["-n", ns, "link", "set", "pg", "down"]);
                let cut = Instant::now();
                tokio::time::sleep(length).await;
                ip(&["-n", ns, "link", "set", "pg", "up"]);
                let end = Instant::now();
                let succeeded = |i: usize, from: Duration| {
                    tallies[i]
                        .lock()
                        .unwrap()
                        .successes
                        .iter()
                        .filter(|t| **t > cut + from && **t < end)
                        .count()
                };
                // The cut took: nothing went through host 2's link meanwhile (a call in
                // flight as it went down may still have come back in its first moments).
                assert_eq!(
                    succeeded(1, Duration::from_millis(500)),
                    0,
                    "calls went through a cut link"
                );
                if length > SHORT_CUT {
                    // Host 2's calls failed UNAVAILABLE in bounded time, none hung (`call`
                    // checks); the other hosts went on while it was away, even if it held the
                    // store's lock when its link went (the server drops a silent client).
                    assert!(
                        tallies[1].lock().unwrap().refused > refused_before,
                        "host 2 was refused nothing in {length:?} without a network"
                    );
                    for i in [0, 2] {
                        assert!(
                            succeeded(i, length - Duration::from_secs(4)) > 0,
                            "host {} stalled while host 2 was cut off",
                            i + 1
                        );
                    }
                }
                end
            }
            Fault::RestartDatabase => {
                tokio::task::block_in_place(|| self.net.restart_server());
                Instant::now()
            }
            Fault::KillServer => {
                let i = 2;
                run(Command::new("kill").args(["-9", &self.pids[i].to_string()]));
                let old = std::mem::replace(&mut agents[i], tokio::spawn(async {}));
                tokio::time::timeout(CALL_TIMEOUT, old)
                    .await
                    .expect("the killed server's agent stops")
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                // The agent saw its server go; the next one starts afresh.
                assert!(
                    std::mem::take(&mut tallies[i].lock().unwrap().gone),
                    "the agent saw its server go"
                );
                let end = Instant::now();
                let (session, pid) = self.hosts[i].serve().await;
                self.sessions[i] = session;
                self.pids[i] = pid;
                agents[i] = tokio::spawn(agent(
                    i + 1,
                    label,
                    self.sessions[i].clone(),
                    stop.clone(),
                    tallies[i].clone(),
                ));
                end
            }
            Fault::FillDisk => {
                let refused =
                    || -> Vec<u32> { tallies.iter().map(|t| t.lock().unwrap().refused).collect() };
                let before = refused();
                let fill = self.net.path("space/fill");
                tokio::task::block_in_place(|| fill_up(&fill));
                let full = Instant::now();
                // Full until every host has been refused a few times (reads too: their audit
                // events need the disk), for a couple of seconds at least.
                let deadline = full + RECOVERY;
                while full.elapsed() < Duration::from_secs(2)
                    || refused()
                        .iter()
                        .zip(&before)
                        .any(|(now, then)| now - then < 5)
                {
                    assert!(
                        Instant::now() < deadline,
                        "calls went on with the tablespace full: refused {:?} -> {:?}",
                        before,
                        refused()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                std::fs::remove_file(&fill).unwrap();
                Instant::now()
            }
        };
        let mut recovered = Vec::new();
        for (i, tally) in tallies.iter().enumerate() {
            let deadline = fault_end + RECOVERY;
            loop {
                let first = tally
                    .lock()
                    .unwrap()
                    .successes
                    .iter()
                    .find(|t| **t > fault_end)
                    .copied();
                assert!(
                    !tally.lock().unwrap().gone,
                    "host {}'s server ended the session during {label}",
                    i + 1
                );
                if let Some(t) = first {
                    recovered.push(format!("host {} {} ms", i + 1, (t - fault_end).as_millis()));
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "host {} did not resume by itself within {RECOVERY:?} after {label}",
                    i + 1
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        for a in agents {
            a.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        let mut calls = 0;
        let mut refused = 0;
        let mut acked = Vec::new();
        for (i, tally) in tallies.iter().enumerate() {
            let t = tally.lock().unwrap();
            assert!(!t.gone, "host {}'s server went away during {label}", i + 1);
            calls += t.calls;
            refused += t.refused;
            acked.extend(t.acked.iter().cloned());
        }
        self.acked.extend(acked.iter().cloned());
        eprintln!(
            "RECOVERY {label}: fault end -> first successful call: {} ({calls} calls, \
             {refused} refused UNAVAILABLE, {} writes acknowledged so far)",
            recovered.join(", "),
            self.acked.len()
        );
        acked
    }

    /// After a fault: every write acknowledged during it is served (get by id, on a host
    /// other than the one that wrote it when it can), and every one so far is in the table and
    /// has its audit event; the chain is one and verifies; `verify` passes.
    async fn check(&self, label: &str, acked: &[(String, String)]) {
        let mut readers = Vec::new();
        for (i, session) in self.sessions.iter().enumerate() {
            let session = session.clone();
            let mine: Vec<(String, String)> =
                acked.iter().skip(i).step_by(HOSTS).cloned().collect();
            let label = label.to_string();
            readers.push(tokio::spawn(async move {
                for (id, content) in mine {
                    match call(&session, "memory_get", json!({"id": id})).await {
                        Reply::Ok(v) => {
                            assert_eq!(v["memory"]["content"], content.as_str(), "{id}")
                        }
                        _ => panic!("after {label}: acknowledged write {id} not served"),
                    }
                }
            }));
        }
        for r in readers {
            r.await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        let client = self.net.superuser().await;
        let stored: HashSet<String> = client
            .query("SELECT id FROM memory.entries WHERE status = 'active'", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for id in self.acked.keys() {
            assert!(
                stored.contains(id),
                "after {label}: {id} is not in the table"
            );
        }
        let unlinked: i64 = client
            .query_one(
                "SELECT count(*) FROM audit.events e WHERE seq > 1 AND NOT EXISTS \
                 (SELECT 1 FROM audit.events p WHERE p.seq = e.seq - 1 AND p.hash = e.prev_hash)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(unlinked, 0, "after {label}: one unforked chain");

        let auditor = self.auditor.display().to_string();
        let events = tokio::task::block_in_place(|| {
            run(Command::new(common::bin()).args([
                "audit",
                "query",
                "--store",
                "postgres",
                "--database-file",
                &auditor,
                "--tool",
                "memory_store",
                "--outcome",
                "ok",
                "--limit",
                "1000000",
                "--format",
                "json",
            ]))
        });
        let events: Vec<Value> = serde_json::from_slice(&events.stdout).unwrap();
        let audited: HashSet<String> = events
            .iter()
            .filter_map(|e| {
                let detail = match &e["detail"] {
                    Value::String(s) => serde_json::from_str(s).ok()?,
                    other => other.clone(),
                };
                detail["created"].as_str().map(str::to_string)
            })
            .collect();
        for id in self.acked.keys() {
            assert!(
                audited.contains(id),
                "after {label}: acknowledged write {id} has no audit event"
            );
        }
        let keyring = self.keyring.display().to_string();
        let verified = tokio::task::block_in_place(|| {
            run(Command::new(common::bin()).args([
                "audit",
                "verify",
                "--store",
                "postgres",
                "--database-file",
                &auditor,
                "--keyring",
                &keyring,
            ]))
        });
        let said = String::from_utf8_lossy(&verified.stdout);
        assert!(said.contains("MACs verified"), "after {label}: {said}");
        let host = &self.hosts[0];
        let database = host.database.display().to_string();
        tokio::task::block_in_place(|| {
            run(host.command(&["verify"]).args([
                "--store",
                "postgres",
                "--database-file",
                &database,
            ]))
        });
    }
}

impl Drop for Campaign {
    fn drop(&mut self) {
        // What the servers said, for a failure in CI.
        if std::thread::panicking() {
            for host in &self.hosts {
                eprintln!("--- host {}'s serve.log (last lines):", host.n);
                eprintln!("{}", tail(&host.log, 12));
            }
            eprintln!("--- PostgreSQL's log (last lines):");
            eprintln!("{}", tail(&self.net.path("pg/pg.log"), 20));
        }
    }
}

/// The last `n` lines of a file (empty when it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `path` until its file system is full (ENOSPC), to the last page.
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create_new(path).unwrap();
    for size in [1 << 20, 4096] {
        let chunk = vec![0u8; size];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
    let _ = f.sync_all();
}

/// The network, the server, `db init`, the app role's password and the tablespace, the data
/// dir with the one keyring.
async fn set_up(pg_bin: PathBuf, hosts: usize) -> (Net, PathBuf, PathBuf) {
    let mut net = Net::new(pg_bin, hosts);
    tokio::task::block_in_place(|| net.start_server(hosts));
    let admin = net.socket_file("admin.conf", "memwarden");
    tokio::task::block_in_place(|| common::postgres::db_init(&admin));
    // One statement at a time: CREATE TABLESPACE cannot run in a transaction block.
    for sql in [
        format!("ALTER ROLE memwarden_app PASSWORD '{PASSWORD}'"),
        format!(
            "CREATE TABLESPACE mw_space LOCATION '{}'",
            net.path("space").display()
        ),
        // Every table and index of memwarden's (the owner role's): the memories and the audit
        // events alike live on the disk that fills.
        "ALTER TABLE ALL IN TABLESPACE pg_default OWNED BY memwarden_owner \
         SET TABLESPACE mw_space"
            .to_string(),
        "ALTER INDEX ALL IN TABLESPACE pg_default OWNED BY memwarden_owner \
         SET TABLESPACE mw_space"
            .to_string(),
    ] {
        net.sql(&sql).await;
    }
    let base = net.path("base");
    run(Command::new(common::bin())
        .args(["init", "--data-dir"])
        .arg(&base));
    let auditor = net.socket_file("auditor.conf", "memwarden_auditor");
    (net, base.join("keyring.toml"), auditor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_over_tls_ride_out_a_cut_link_a_restart_a_kill_9_and_a_full_disk() {
    let Some(pg_bin) = prerequisites() else {
        return;
    };
    let (net, keyring, auditor) = set_up(pg_bin, HOSTS).await;
    let hosts: Vec<Host> = (1..=HOSTS).map(|n| Host::new(&net, n, &keyring)).collect();
    let mut sessions = Vec::new();
    let mut pids = Vec::new();
    for host in &hosts {
        let (session, pid) = host.serve().await;
        sessions.push(session);
        pids.push(pid);
    }
    let mut campaign = Campaign {
        hosts,
        sessions,
        pids,
        auditor,
        keyring,
        acked: BTreeMap::new(),
        net,
    };
    for fault in [
        Fault::CutLink(SHORT_CUT),
        Fault::CutLink(LONG_CUT),
        Fault::RestartDatabase,
        Fault::KillServer,
        Fault::FillDisk,
    ] {
        let acked = campaign.through(fault).await;
        campaign.check(fault.label(), &acked).await;
    }
    // Every connection the hosts made was TLS, and none plaintext.
    let client = campaign.net.superuser().await;
    let plain: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE usename = 'memwarden_app' AND NOT ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "no plaintext connection from a host");
    for session in std::mem::take(&mut campaign.sessions) {
        if let Ok(session) = Arc::try_unwrap(session) {
            let _ = session.cancel().await;
        }
    }
    for host in &campaign.hosts {
        let log = std::fs::read_to_string(&host.log).unwrap_or_default();
        assert!(!log.contains(PASSWORD), "host {}'s log: {log}", host.n);
        assert!(!log.contains("INTERNAL"), "host {}'s log: {log}", host.n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_the_host_does_not_trust_or_for_another_name_stops_serve() {
    let Some(pg_bin) = prerequisites() else {
        return;
    };
    let (net, keyring, _auditor) = set_up(pg_bin, 1).await;
    let host = Host::new(&net, 1, &keyring);
    // The right database file works: the refusals below are the certificate's doing.
    let (session, _) = host.serve().await;
    assert!(matches!(
        call(
            &session,
            "memory_store",
            json!({"content": "over verified TLS"})
        )
        .await,
        Reply::Ok(_)
    ));
    if let Ok(session) = Arc::try_unwrap(session) {
        let _ = session.cancel().await;
    }
    let client = net.superuser().await;
    let counts = async || -> (i64, i64) {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM memory.entries), \
                 (SELECT count(*) FROM audit.events)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let before = counts().await;
    let other_ca = net.path("h1/other-ca.conf");
    host.database_file(&other_ca, SERVER_NAME, &net.path("other.pem"));
    let misnamed = net.path("h1/misnamed.conf");
    host.database_file(&misnamed, "wrong.memwarden.test", &net.path("ca.pem"));
    for (file, says) in [(&other_ca, "UnknownIssuer"), (&misnamed, "not valid for")] {
        let out = tokio::task::block_in_place(|| {
            host.command(&["serve"])
                .args(["--store", "postgres", "--database-file"])
                .arg(file)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(out.stdout.is_empty(), "nothing on the protocol channel");
        assert!(
            stderr.contains("TLS handshake failed") && stderr.contains(says),
            "{stderr}"
        );
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    assert_eq!(counts().await, before, "nothing was stored or audited");
}
