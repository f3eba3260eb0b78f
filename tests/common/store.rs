//! Which store the tests' servers use, picked by the harness, never by a test: SQLite (memory.db
//! and audit.db in the data dir) unless `MEMWARDEN_TEST_STORE=postgres`, which puts every
//! [`super::TestDir`]'s store in a database of its own, in one throwaway PostgreSQL cluster per
//! test process (started on first use, stopped when the process ends), initialised by the real
//! `memwarden db init`. The same test then drives the real binary on either backend.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use memwarden::store::testing::{Field, Value};

use super::postgres::Cluster;

/// The store the servers under test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// memory.db and audit.db in the data dir.
    Sqlite,
    /// A PostgreSQL database per test.
    Postgres,
}

/// The backend this test process runs on (`MEMWARDEN_TEST_STORE`: `sqlite`, the default, or
/// `postgres`).
pub fn kind() -> StoreKind {
    match std::env::var("MEMWARDEN_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => StoreKind::Sqlite,
        Ok("postgres") => StoreKind::Postgres,
        Ok(other) => panic!("MEMWARDEN_TEST_STORE={other}: expected sqlite or postgres"),
    }
}

/// Whether this process runs its tests on PostgreSQL.
pub fn on_postgres() -> bool {
    kind() == StoreKind::Postgres
}

/// Says so and returns true when the test is about SQLite's files themselves and so has no
/// PostgreSQL form (its PostgreSQL counterpart, if any, is named in `why`). Such a test returns
/// at once on PostgreSQL; `.ci/run` counts these lines.
pub fn sqlite_only(why: &str) -> bool {
    if !on_postgres() {
        return false;
    }
    eprintln!("SQLITE-ONLY: {why}");
    // libtest keeps a passing test's output to itself: `.ci/run` names a file to list them in.
    if let Some(path) = std::env::var_os("MEMWARDEN_TEST_SQLITE_ONLY_LOG") {
        use std::io::Write;
        let line = format!("{}: {why}\n", std::thread::current().name().unwrap_or("?"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        file.and_then(|mut f| f.write_all(line.as_bytes()))
            .expect("append to the SQLITE-ONLY log");
    }
    true
}

/// The process's cluster, its database counter, and the lock `db init` runs under (the roles
/// are the cluster's, shared by every database: two inits at once would race to create them).
struct Shared {
    cluster: Cluster,
    next: AtomicU32,
    init: Mutex<()>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let cluster = Cluster::start()
            .expect("MEMWARDEN_TEST_STORE=postgres needs PostgreSQL (/usr/lib/postgresql/*/bin)");
        cluster.stop_when_process_ends();
        Shared {
            cluster,
            next: AtomicU32::new(0),
            init: Mutex::new(()),
        }
    })
}

/// Runs `fut` to completion on a runtime of its own, on a thread of its own: callers may be
/// inside a test's runtime, which cannot be blocked on.
pub fn block_on<T: Send>(fut: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(fut)
        })
        .join()
        .expect("database thread")
    })
}

/// One test's database: its name and the connection files of the roles `db init` made.
pub struct Database {
    pub name: String,
    /// The app role's settings (what `serve` uses).
    pub app: PathBuf,
    /// The auditor role's settings (what the auditor's commands use).
    pub auditor: PathBuf,
}

impl Database {
    /// Creates a database and initialises it with `memwarden db init`; its connection files go
    /// in `dir`.
    pub fn create(dir: &Path) -> Self {
        let shared = shared();
        let name = format!("t{}", shared.next.fetch_add(1, Ordering::SeqCst));
        sql("postgres", &format!("CREATE DATABASE {name}"));
        let file = |file: &str, user: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(file);
            let c = &shared.cluster;
            let text = format!(
                "host={} port={} user={user} dbname={name}\n",
                c.socket_dir(),
                c.port
            );
            std::fs::write(&path, text).expect("write settings");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        };
        let admin = file("admin.conf", "memwarden");
        {
            let _one_at_a_time = shared.init.lock().unwrap_or_else(|p| p.into_inner());
            super::postgres::db_init(&admin);
        }
        Self {
            app: file("app.conf", "memwarden_app"),
            auditor: file("auditor.conf", "memwarden_auditor"),
            name,
        }
    }

    /// A client connected to this database as the cluster's superuser.
    async fn superuser(&self) -> tokio_postgres::Client {
        connect(&self.name).await
    }

    /// Runs `statements` as the owner role (what an attacker with the owner's rights could do).
    pub fn as_owner(&self, statements: &str) {
        block_on(async {
            let c = self.superuser().await;
            c.batch_execute(&format!("SET ROLE memwarden_owner; {statements}"))
                .await
                .expect("owner statements");
        })
    }

    /// One integer the superuser reads.
    pub fn query_i64(&self, query: &str) -> i64 {
        block_on(async {
            let c = self.superuser().await;
            c.query_one(query, &[]).await.expect("query").get(0)
        })
    }

    /// `pg_dump` of one schema of this database, data included: what a leak grep reads.
    pub fn dump_schema(&self, schema: &str) -> Vec<u8> {
        let c = &shared().cluster;
        let out = Command::new(c.program("pg_dump"))
            .args(["-h", &c.socket_dir(), "-p", &c.port.to_string()])
            .args(["-U", "memwarden", "--schema", schema, &self.name])
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The tamper path into this database's store (see [`PgTamper`]).
    pub fn tamper(&self) -> PgTamper {
        PgTamper {
            db: self.name.clone(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // A server still connected is cut off: the test is over.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if std::panic::catch_unwind(|| sql("postgres", &drop)).is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A superuser client of database `db` in the process's cluster.
async fn connect(db: &str) -> tokio_postgres::Client {
    let c = &shared().cluster;
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(Path::new(&c.socket_dir()))
        .port(c.port)
        .user("memwarden")
        .dbname(db);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(connection);
    client
}

/// Runs `statements` in database `db` as the superuser.
fn sql(db: &str, statements: &str) {
    block_on(async {
        connect(db)
            .await
            .batch_execute(statements)
            .await
            .expect("statements")
    })
}

/// A saved row of `memory.entries`, every column but the generated ones.
pub struct PgSavedRow {
    values: Vec<Option<String>>,
}

/// The columns a saved row carries, as text (PostgreSQL casts them back on insert).
const ROW_COLUMNS: &[&str] = &[
    "pos",
    "id",
    "namespace",
    "content",
    "tags",
    "metadata",
    "status",
    "supersedes",
    "principal",
    "session_id",
    "created_at",
    "updated_at",
    "content_sha256",
    "key_id",
    "mac",
];

/// The PostgreSQL side of the tests' tamper path: the same edits as
/// [`memwarden::store::testing::Tamper`] makes to memory.db, made as the owner role to
/// `memory.entries` and `memory.ledger`.
pub struct PgTamper {
    db: String,
}

fn column(field: Field) -> &'static str {
    match field {
        Field::Content => "content",
        Field::ContentSha256 => "content_sha256",
        Field::Namespace => "namespace",
        Field::Tags => "tags",
        Field::Status => "status",
        Field::Mac => "mac",
        Field::KeyId => "key_id",
        Field::UpdatedAt => "updated_at",
    }
}

impl PgTamper {
    /// Overwrites one field of entry `id`. PostgreSQL's columns are typed: a value of the
    /// wrong type for its column is refused by the database itself, so it cannot be stored.
    pub fn set(&self, id: &str, field: Field, value: Value) {
        let col = column(field);
        let n = block_on(async {
            let c = &owner(&self.db).await;
            match value {
                Value::Text(s) => {
                    let q = format!("UPDATE memory.entries SET {col} = $2 WHERE id = $1");
                    c.execute(&q, &[&id, &s]).await
                }
                Value::Blob(b) => {
                    let q = format!("UPDATE memory.entries SET {col} = $2 WHERE id = $1");
                    c.execute(&q, &[&id, &b]).await
                }
                Value::Int(n) => {
                    let q = format!("UPDATE memory.entries SET {col} = $2 WHERE id = $1");
                    c.execute(&q, &[&id, &n]).await
                }
            }
        });
        assert_eq!(n.expect("update"), 1, "no row {id}");
    }

    /// One field of entry `id`.
    pub fn get(&self, id: &str, field: Field) -> Value {
        let col = column(field);
        block_on(async {
            let c = &owner(&self.db).await;
            let q = format!("SELECT {col} FROM memory.entries WHERE id = $1");
            let row = c.query_one(&q, &[&id]).await.expect("select");
            match field {
                Field::ContentSha256 | Field::Mac => Value::Blob(row.get(0)),
                Field::UpdatedAt => Value::Int(row.get(0)),
                _ => Value::Text(row.get(0)),
            }
        })
    }

    /// The whole row of entry `id`, to put back later.
    pub fn save(&self, id: &str) -> PgSavedRow {
        let cols: Vec<String> = ROW_COLUMNS.iter().map(|c| format!("{c}::text")).collect();
        let values = block_on(async {
            let c = &owner(&self.db).await;
            let q = format!(
                "SELECT {} FROM memory.entries WHERE id = $1",
                cols.join(", ")
            );
            let row = c.query_one(&q, &[&id]).await.expect("select row");
            (0..ROW_COLUMNS.len()).map(|i| row.get(i)).collect()
        });
        PgSavedRow { values }
    }

    /// Puts a saved row back in place of whatever the row is now: an older sealed copy.
    pub fn put_back(&self, row: &PgSavedRow) {
        let marks: Vec<String> = (1..=ROW_COLUMNS.len()).map(|i| format!("${i}")).collect();
        block_on(async {
            let c = &owner(&self.db).await;
            let pos: i64 = row.values[0].as_deref().unwrap().parse().unwrap();
            c.execute("DELETE FROM memory.entries WHERE pos = $1", &[&pos])
                .await
                .expect("delete");
            // The text forms cast back by the columns' own input functions.
            let insert = format!(
                "INSERT INTO memory.entries ({}) OVERRIDING SYSTEM VALUE \
                 SELECT {} FROM (SELECT {}) AS v({})",
                ROW_COLUMNS.join(", "),
                ROW_COLUMNS
                    .iter()
                    .map(|c| format!("{c}::{}", pg_type(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                marks
                    .iter()
                    .map(|m| format!("{m}::text"))
                    .collect::<Vec<_>>()
                    .join(", "),
                ROW_COLUMNS.join(", "),
            );
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                .values
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            c.execute(&insert, &params).await.expect("insert");
        })
    }

    /// Sets `namespace`'s kept quota usage (migration 6's counts), as the owner could.
    pub fn set_usage(&self, namespace: &str, entries: i64, bytes: i64) {
        block_on(async {
            let c = &owner(&self.db).await;
            c.execute(
                "INSERT INTO memory.namespace_usage (namespace, entries, bytes) VALUES ($1, $2, $3) \
                 ON CONFLICT (namespace) DO UPDATE SET entries = $2, bytes = $3",
                &[&namespace, &entries, &bytes],
            )
            .await
            .expect("set usage")
        });
    }

    /// Removes entry `id`'s row.
    pub fn delete(&self, id: &str) {
        block_on(async {
            let c = &owner(&self.db).await;
            c.execute("DELETE FROM memory.entries WHERE id = $1", &[&id])
                .await
                .expect("delete")
        });
    }

    /// Removes the ledger records of entry `id`, or every record.
    pub fn delete_ledger(&self, entry_id: Option<&str>) {
        block_on(async {
            let c = &owner(&self.db).await;
            match entry_id {
                Some(id) => c
                    .execute("DELETE FROM memory.ledger WHERE entry_id = $1", &[&id])
                    .await
                    .expect("delete ledger"),
                None => c
                    .execute("DELETE FROM memory.ledger", &[])
                    .await
                    .expect("delete ledger"),
            }
        });
    }

    /// Adds a forged, unsealed "deleted" record for entry `id` at the head of an empty ledger.
    pub fn forge_ledger_delete(&self, entry_id: &str) {
        block_on(async {
            let c = &owner(&self.db).await;
            c.execute(
                "INSERT INTO memory.ledger (seq, entry_id, kind, at, prev_hash, hash, key_id, mac) \
                 VALUES (1, $1, 'deleted', 0, '\\x00'::bytea, '\\x00'::bytea, 'e1', '\\x00'::bytea)",
                &[&entry_id],
            )
            .await
            .expect("insert ledger")
        });
    }

    fn strings(&self, query: &str) -> Vec<String> {
        block_on(async {
            let c = &owner(&self.db).await;
            c.query(query, &[])
                .await
                .expect("query")
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }

    /// The distinct key ids rows are sealed with, sorted.
    pub fn entry_key_ids(&self) -> Vec<String> {
        self.strings("SELECT DISTINCT key_id FROM memory.entries ORDER BY key_id")
    }

    /// The key ids of the ledger records, in chain order.
    pub fn ledger_key_ids(&self) -> Vec<String> {
        self.strings("SELECT key_id FROM memory.ledger ORDER BY seq")
    }

    /// Every entry id.
    pub fn ids(&self) -> Vec<String> {
        self.strings("SELECT id FROM memory.entries ORDER BY pos")
    }

    /// Rows of any status.
    pub fn count(&self) -> i64 {
        block_on(async {
            let c = &owner(&self.db).await;
            c.query_one("SELECT count(*) FROM memory.entries", &[])
                .await
                .expect("count")
                .get(0)
        })
    }

    /// Rows the full-text indexes cover (they index active rows only).
    pub fn index_count(&self) -> i64 {
        block_on(async {
            let c = &owner(&self.db).await;
            c.query_one(
                "SELECT count(*) FROM memory.entries WHERE status = 'active'",
                &[],
            )
            .await
            .expect("count")
            .get(0)
        })
    }

    /// The engine's own check: every B-tree index of the store checked against its table by
    /// `amcheck` (heap included), "ok" or the first complaint.
    pub fn engine_check(&self) -> String {
        block_on(async {
            let c = connect(&self.db).await;
            c.batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
                .await
                .expect("amcheck (postgresql-contrib)");
            let checked = c
                .query(
                    "SELECT bt_index_check(c.oid::regclass, true) FROM pg_index i \
                     JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE a.amname = 'btree' AND n.nspname IN ('memory', 'audit')",
                    &[],
                )
                .await;
            match checked {
                Ok(rows) if !rows.is_empty() => "ok".to_string(),
                Ok(_) => "no index was checked".to_string(),
                Err(e) => e.to_string(),
            }
        })
    }
}

/// A client of database `db` acting as the owner role.
async fn owner(db: &str) -> tokio_postgres::Client {
    let c = connect(db).await;
    c.batch_execute("SET ROLE memwarden_owner")
        .await
        .expect("set role");
    c
}

/// The type of a saved column, for casting its text back.
fn pg_type(column: &str) -> &'static str {
    match column {
        "pos" | "created_at" | "updated_at" => "bigint",
        "content_sha256" | "mac" => "bytea",
        _ => "text",
    }
}

/// Either backend's tamper path, so a tamper test reads the same on both.
pub enum Tamper {
    Sqlite(memwarden::store::testing::Tamper),
    Postgres(PgTamper),
}

/// A saved row of either backend.
pub enum SavedRow {
    Sqlite(memwarden::store::testing::SavedRow),
    Postgres(PgSavedRow),
}

macro_rules! both {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            Tamper::Sqlite($t) => $e,
            Tamper::Postgres($t) => $e,
        }
    };
}

impl Tamper {
    pub fn set(&self, id: &str, field: Field, value: Value) {
        both!(self, t => t.set(id, field, value))
    }
    pub fn get(&self, id: &str, field: Field) -> Value {
        both!(self, t => t.get(id, field))
    }
    pub fn save(&self, id: &str) -> SavedRow {
        match self {
            Self::Sqlite(t) => SavedRow::Sqlite(t.save(id)),
            Self::Postgres(t) => SavedRow::Postgres(t.save(id)),
        }
    }
    pub fn put_back(&self, row: &SavedRow) {
        match (self, row) {
            (Self::Sqlite(t), SavedRow::Sqlite(r)) => t.put_back(r),
            (Self::Postgres(t), SavedRow::Postgres(r)) => t.put_back(r),
            _ => panic!("a row saved from the other backend"),
        }
    }
    pub fn delete(&self, id: &str) {
        both!(self, t => t.delete(id))
    }
    pub fn set_usage(&self, namespace: &str, entries: i64, bytes: i64) {
        both!(self, t => t.set_usage(namespace, entries, bytes))
    }
    pub fn delete_ledger(&self, entry_id: Option<&str>) {
        both!(self, t => t.delete_ledger(entry_id))
    }
    pub fn forge_ledger_delete(&self, entry_id: &str) {
        both!(self, t => t.forge_ledger_delete(entry_id))
    }
    pub fn entry_key_ids(&self) -> Vec<String> {
        both!(self, t => t.entry_key_ids())
    }
    pub fn ledger_key_ids(&self) -> Vec<String> {
        both!(self, t => t.ledger_key_ids())
    }
    pub fn ids(&self) -> Vec<String> {
        both!(self, t => t.ids())
    }
    pub fn count(&self) -> i64 {
        both!(self, t => t.count())
    }
    pub fn index_count(&self) -> i64 {
        both!(self, t => t.index_count())
    }
    pub fn engine_check(&self) -> String {
        both!(self, t => t.engine_check())
    }
}
