//! A throwaway PostgreSQL cluster for one test: `initdb` and `pg_ctl` from Debian's packages,
//! run as an unprivileged user (initdb refuses root; as root, `nobody`), listening on a unix
//! socket in a temp dir only, trust authentication on that socket. Stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port: the unix socket's name, and the TCP port when it listens on loopback.
    pub port: u16,
    tcp: bool,
}

/// The directory of Debian's PostgreSQL binaries, newest version first.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

impl Cluster {
    /// Starts a cluster, or `None` (after saying SKIPPED) where PostgreSQL is not installed. In
    /// CI (`CI` set) a missing PostgreSQL is a failure: `.ci/run` installs it.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// Like [`Cluster::start`], also listening on 127.0.0.1 at a free port.
    pub fn start_tcp() -> Option<Self> {
        Self::start_with(true)
    }

    fn start_with(tcp: bool) -> Option<Self> {
        let Some(bin) = pg_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed (/usr/lib/postgresql/*/bin): .ci/run installs it"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        let port = if tcp {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        } else {
            5432
        };
        let cluster = Self {
            dir,
            bin,
            port,
            tcp,
        };
        cluster.chown_for_server();
        let data = cluster.path("data");
        let out = cluster
            .as_server("initdb")
            .args(["-D", &data, "-U", "memwarden", "--auth=trust", "-E", "UTF8"])
            .arg("--locale=C.UTF-8")
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = cluster.server_options();
        let out = cluster
            .as_server("pg_ctl")
            .args([
                "-D",
                &data,
                "-l",
                &cluster.path("pg.log"),
                "-w",
                "-o",
                &opts,
                "start",
            ])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(cluster)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The server's options: its socket directory, its port, and loopback TCP or none.
    fn server_options(&self) -> String {
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        format!(
            "-k {} -p {} -c listen_addresses={listen}",
            self.path("sock"),
            self.port
        )
    }

    /// `pg_ctl restart` (fast: every connection is cut), waiting until it accepts again.
    pub fn restart(&self) {
        let opts = self.server_options();
        let out = self
            .as_server("pg_ctl")
            .args(["-D", &self.path("data"), "-l", &self.path("pg.log")])
            .args(["-m", "fast", "-w", "-o", &opts, "restart"])
            .output()
            .expect("pg_ctl restart");
        assert!(
            out.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// For a cluster that lives as long as the test process (a `static`, never dropped): a
    /// watchdog process stops it and removes its directory once this process has gone.
    #[expect(
        clippy::zombie_processes,
        reason = "the watchdog outlives this process by design; init reaps it"
    )]
    pub fn stop_when_process_ends(&self) {
        let stop = format!(
            "{} -D {} -m immediate -w stop",
            self.bin.join("pg_ctl").display(),
            self.path("data")
        );
        let stop = if memwarden::fsafe::current_uid() == 0 {
            format!("runuser -u nobody -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; cd /; {stop}; rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.path().display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog");
    }

    /// The path of one of PostgreSQL's programs (`pg_dump`, `psql`…).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The socket directory.
    pub fn socket_dir(&self) -> String {
        self.path("sock")
    }

    /// As root the server runs as `nobody`, who must own its directories.
    fn chown_for_server(&self) {
        if memwarden::fsafe::current_uid() != 0 {
            return;
        }
        for p in [self.dir.path().to_path_buf(), self.dir.path().join("sock")] {
            let st = Command::new("chown")
                .arg("nobody")
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let st = Command::new("chmod")
            .arg("755")
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn as_server(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if memwarden::fsafe::current_uid() == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(exe);
            c.current_dir("/");
            c
        } else {
            Command::new(exe)
        }
    }

    /// Writes connection settings for `user` to a 0600 file and returns its path.
    pub fn settings_file(&self, name: &str, user: &str) -> PathBuf {
        self.write_settings(name, &self.socket_dir(), user)
    }

    /// Like [`Cluster::settings_file`], over loopback TCP (a cluster from `start_tcp`).
    pub fn tcp_settings_file(&self, name: &str, user: &str) -> PathBuf {
        self.write_settings(name, "127.0.0.1", user)
    }

    fn write_settings(&self, name: &str, host: &str, user: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        let text = format!(
            "host={host} port={} user={user} dbname=postgres\n",
            self.port
        );
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A client connected as `user`.
    pub async fn connect(&self, user: &str) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(Path::new(&self.socket_dir()))
            .port(self.port)
            .user(user)
            .dbname("postgres");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .as_server("pg_ctl")
            .args(["-D", &self.path("data"), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// `memwarden db init` (the real binary) with the admin settings in `admin`; asserts success.
pub fn db_init(admin: &Path) {
    let out = Command::new(super::bin())
        .args(["db", "init", "--admin-database-file"])
        .arg(admin)
        .output()
        .expect("run memwarden db init");
    assert!(
        out.status.success(),
        "db init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster after `memwarden db init` (the real binary), a data dir with a keyring from
/// `memwarden init`, and the app role's database file: what a library user of the PostgreSQL
/// store starts from.
pub struct Ready {
    pub cluster: Cluster,
    pub data: PathBuf,
    pub keyring: memwarden::keys::Keyring,
    pub app: PathBuf,
}

impl Ready {
    /// Starts and initialises a cluster, or `None` where PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        Self::on(Cluster::start()?)
    }

    /// Like [`Ready::start`] on a cluster that also listens on loopback TCP.
    pub fn start_tcp() -> Option<Self> {
        Self::on(Cluster::start_tcp()?)
    }

    /// `memwarden COMMAND` (the real binary) on this store: its data dir and the app role's
    /// database file. Returns how it exited and what it said.
    pub fn memwarden(&self, command: &str) -> std::process::Output {
        Command::new(super::bin())
            .arg(command)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--store", "postgres", "--database-file"])
            .arg(&self.app)
            .output()
            .expect("run memwarden")
    }

    fn on(cluster: Cluster) -> Option<Self> {
        db_init(&cluster.settings_file("admin.conf", "memwarden"));
        let data = cluster.dir.path().join("data-dir");
        let out = Command::new(super::bin())
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .expect("run memwarden init");
        assert!(out.status.success());
        let keyring = memwarden::keys::Keyring::load(&data.join("keyring.toml")).unwrap();
        let app = cluster.settings_file("app.conf", "memwarden_app");
        Some(Self {
            cluster,
            data,
            keyring,
            app,
        })
    }

    /// A backend connected as the app role.
    pub fn backend(&self) -> memwarden::store::postgres::Postgres {
        let settings = memwarden::store::postgres::DatabaseSettings::load(&self.app).unwrap();
        memwarden::store::postgres::Postgres::connect(&settings, self.keyring.audit.clone())
            .expect("connect as the app role")
    }

    /// A store over a new backend, sealing with `entry_keys`.
    pub fn store_with(&self, entry_keys: memwarden::keys::KeySet) -> memwarden::store::Store {
        memwarden::store::Store::with_backend(Box::new(self.backend()), entry_keys)
    }

    /// A store over a new backend, sealing with the keyring's entry keys.
    pub fn store(&self) -> memwarden::store::Store {
        self.store_with(self.keyring.entry.clone())
    }

    /// Runs `sql` as the cluster's superuser acting as the owner role (what an attacker with the
    /// owner's rights could do); returns the rows changed.
    pub fn as_owner(&self, sql: &str, args: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> u64 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.cluster.connect("memwarden").await;
            client
                .batch_execute("SET ROLE memwarden_owner")
                .await
                .unwrap();
            client.execute(sql, args).await.unwrap()
        })
    }

    /// One value read as the superuser.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.cluster.connect("memwarden").await;
            client.query_one(sql, &[]).await.unwrap().get(0)
        })
    }
}

impl Cluster {
    /// Like [`Cluster::start_tcp`], with TLS on: `ssl=on` with this certificate (chain) and key,
    /// copied into the cluster's dir (the key 0600 and the server's, as PostgreSQL demands), and
    /// `log_connections` on. Restarted so that a bad certificate or key fails here, loudly.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let cluster = Self::start_tcp()?;
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = cluster.dir.path().join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            if memwarden::fsafe::current_uid() == 0 {
                let st = Command::new("chown")
                    .arg("nobody")
                    .arg(&to)
                    .status()
                    .unwrap();
                assert!(st.success());
            }
        }
        // On a thread of its own: callers may be inside a runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async {
                    let client = cluster.connect("memwarden").await;
                    // ALTER SYSTEM cannot run in a transaction block: one statement at a time.
                    for sql in [
                        format!(
                            "ALTER SYSTEM SET ssl_cert_file = '{}'",
                            cluster.path("server.crt")
                        ),
                        format!(
                            "ALTER SYSTEM SET ssl_key_file = '{}'",
                            cluster.path("server.key")
                        ),
                        "ALTER SYSTEM SET ssl = on".to_string(),
                        "ALTER SYSTEM SET log_connections = on".to_string(),
                    ] {
                        client.batch_execute(&sql).await.unwrap();
                    }
                });
            })
            .join()
            .unwrap();
        });
        cluster.restart();
        Some(cluster)
    }
}

impl Ready {
    /// Like [`Ready::start`] on a cluster that also listens on loopback TCP with TLS
    /// ([`Cluster::start_tls`]); `db init` and the app's database file use the unix socket.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Self> {
        Self::on(Cluster::start_tls(cert, key)?)
    }
}

impl Ready {
    /// Runs `sql` as the cluster's superuser (what only an administrator may do: create a role,
    /// grant membership); returns the rows changed.
    pub fn as_superuser(&self, sql: &str) -> u64 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.cluster.connect("memwarden").await;
            client.execute(sql, &[]).await.unwrap()
        })
    }
}

impl Cluster {
    /// `pg_ctl stop` (fast: every connection is cut); [`Cluster::start_again`] brings it back.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "stop"]);
    }

    /// `pg_ctl stop -m immediate`: the server quits without writing anything more, as in a crash
    /// (what is only in its WAL buffers is lost; recovery replays what reached the WAL files).
    /// [`Cluster::start_again`] brings it back.
    pub fn crash(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// `pg_ctl start` after [`Cluster::stop`], waiting until it accepts connections.
    pub fn start_again(&self) {
        let opts = self.server_options();
        self.pg_ctl(&["-l", &self.path("pg.log"), "-w", "-o", &opts, "start"]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = self
            .as_server("pg_ctl")
            .args(["-D", &self.path("data")])
            .args(args)
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The directory of PostgreSQL's programs (`initdb`, `pg_ctl`…), newest version first, or
/// `None` where PostgreSQL is not installed: for a test that runs its own server (in a network
/// namespace, say) rather than a [`Cluster`].
pub fn server_bin_dir() -> Option<PathBuf> {
    pg_bin()
}

impl Ready {
    /// Runs `sql` (any number of statements) as the cluster's superuser.
    pub fn batch_as_superuser(&self, sql: &str) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = self.cluster.connect("memwarden").await;
            client.batch_execute(sql).await.unwrap();
        });
    }

    /// The server log, from byte `from` on.
    pub fn log_since(&self, from: usize) -> String {
        let log = std::fs::read(self.cluster.dir.path().join("pg.log")).unwrap();
        String::from_utf8_lossy(&log[from.min(log.len())..]).into_owned()
    }
}

/// SQL for [`Ready::batch_as_superuser`], as the owner: what migrations 6 (namespace quota
/// usage), 7 (postings), 8 (posting behind) and 9 (words parsed behind) change undone, and
/// version 5's stored lexemes and text index back, for tests that rebuild an older version's
/// layout and upgrade it (the version table is theirs to set back). A write's step of posting,
/// which the store still runs, does nothing there.
pub const BACK_TO_VERSION_5: &str = "SET ROLE memwarden_owner;
    DROP TABLE memory.posted;
    CREATE OR REPLACE FUNCTION memory.post_behind(step int) RETURNS int LANGUAGE sql RETURN 0;
    DROP TRIGGER entries_postings_insert ON memory.entries;
    DROP TRIGGER entries_postings_delete ON memory.entries;
    DROP TRIGGER entries_postings_update ON memory.entries;
    DROP FUNCTION memory.post_entry;
    DROP TABLE memory.postings;
    ALTER TABLE memory.entries ADD COLUMN scoped tsvector
        GENERATED ALWAYS AS (memory.scoped_words(namespace, content, tags)) STORED;
    ALTER TABLE memory.entries ALTER COLUMN scoped SET STORAGE MAIN;
    CREATE INDEX entries_scoped ON memory.entries USING gin (scoped) WITH (fastupdate = off)
        WHERE status = 'active';
    DROP TRIGGER entries_usage ON memory.entries;
    DROP FUNCTION memory.count_usage, memory.content_bytes;
    DROP TABLE memory.namespace_usage;
    RESET ROLE;";

/// SQL counting the postings that differ from the active rows' lexemes, either way: 0 when
/// `memory.postings` holds exactly one row per lexeme of every active entry.
pub const POSTINGS_DRIFT: &str = "SELECT count(*) FROM (
      (SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(
         memory.scoped_words(e.namespace, e.content, e.tags))) AS l
        WHERE e.status = 'active'
       EXCEPT ALL SELECT lexeme, pos FROM memory.postings)
      UNION ALL
      (SELECT lexeme, pos FROM memory.postings
       EXCEPT ALL SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(
         memory.scoped_words(e.namespace, e.content, e.tags))) AS l
        WHERE e.status = 'active')) AS drift";

/// SQL for [`Ready::batch_as_superuser`]: every statement the app role runs from its next
/// connection on gets its plan logged as JSON, with the rows each node handled (read with
/// [`rows_touched`]).
pub const EXPLAIN_EVERY_STATEMENT: &str =
    "ALTER ROLE memwarden_app SET session_preload_libraries = 'auto_explain';
     ALTER ROLE memwarden_app SET auto_explain.log_min_duration = 0;
     ALTER ROLE memwarden_app SET auto_explain.log_analyze = on;
     ALTER ROLE memwarden_app SET auto_explain.log_timing = off;
     ALTER ROLE memwarden_app SET auto_explain.log_format = 'json';";

/// The rows each plan `auto_explain` logged for a search's lookup (a statement reading
/// `memory.postings`, or rows checked against a tsquery) handled in `memory.entries`,
/// `memory.postings` and their indexes: every row a scan returned or removed (by filter or
/// recheck), over all its loops; with the statement's text.
pub fn rows_touched(log: &str) -> Vec<(usize, String)> {
    rows_touched_by(log, is_lookup)
}

/// Whether a statement's text is a search's lookup: one reading `memory.postings`, or rows
/// checked against a tsquery.
fn is_lookup(text: &str) -> bool {
    text.contains("memory.postings")
        || (text.contains("FROM memory.entries e") && text.contains("@@"))
}

/// As [`rows_touched`], the rows read from the table alone (not its indexes' entries).
pub fn table_rows_touched(log: &str) -> Vec<(usize, String)> {
    rows_in(log, is_lookup, |node| node["Relation Name"] == "entries")
}

/// The rows each plan `auto_explain` logged for a statement whose text `wanted` takes handled
/// in `memory.entries`, `memory.postings` and their indexes, as [`rows_touched`] counts them;
/// with its text.
pub fn rows_touched_by(log: &str, wanted: impl Fn(&str) -> bool) -> Vec<(usize, String)> {
    rows_in(log, wanted, |node| {
        node["Relation Name"] == "entries"
            || node["Relation Name"] == "postings"
            || node["Index Name"]
                .as_str()
                .is_some_and(|i| i.starts_with("entries") || i.starts_with("postings"))
    })
}

/// The rows the plan nodes that `counted` takes handled, per logged plan of a statement whose
/// text `wanted` takes; with its text.
fn rows_in(
    log: &str,
    wanted: impl Fn(&str) -> bool,
    counted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<(usize, String)> {
    fn walk(node: &serde_json::Value, counted: &dyn Fn(&serde_json::Value) -> bool, sum: &mut f64) {
        if counted(node) {
            let n = |k: &str| node[k].as_f64().unwrap_or(0.0);
            let rows = n("Actual Rows") + n("Rows Removed by Filter");
            *sum += (rows + n("Rows Removed by Index Recheck")) * n("Actual Loops");
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, counted, sum);
        }
    }
    let mut out = Vec::new();
    for part in log.split("plan:").skip(1) {
        let mut plans = serde_json::Deserializer::from_str(part).into_iter::<serde_json::Value>();
        let Some(Ok(plan)) = plans.next() else {
            continue;
        };
        let text = plan["Query Text"].as_str().unwrap_or_default().to_string();
        if wanted(&text) {
            let mut sum = 0.0;
            walk(&plan["Plan"], &counted, &mut sum);
            out.push((sum as usize, text));
        }
    }
    out
}
