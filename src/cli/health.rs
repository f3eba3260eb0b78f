//! `memwarden health` (JSON, non-zero exit when anything is wrong) and `memwarden metrics`
//! (Prometheus text exposition derived from the databases, for node_exporter's textfile
//! collector). Both read only, on either store: the SQLite files here, PostgreSQL's checks and
//! figures in [`postgres`].

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::{Value, json};

mod postgres;

use super::DataDirArg;
use super::serve::{PolicyArgs, StoreArgs};
use super::stores::Engine;
use crate::audit;
use crate::prometheus::{BUCKETS, family, label};
use crate::store::sqlite::inspect;

/// `memwarden health`'s arguments.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Least free space on the data dir's filesystem, in MiB.
    #[arg(long, default_value_t = 64)]
    pub min_free_mib: u64,
}

/// `memwarden metrics`'s arguments.
#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Replace FILE atomically instead of printing: a fresh temp file in FILE's directory,
    /// created exclusively without following links, then fsync and rename (mode 0644). A link
    /// planted at either name is replaced, never written through.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

/// Writes `text` to `path` as [`MetricsArgs::out`] describes.
fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        anyhow::bail!("--out {}: not a file name", path.display());
    };
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let dir = crate::fsafe::Dir::open(parent)?;
    let tmp = format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple());
    let written = dir
        .create_new(&tmp)
        .map_err(anyhow::Error::from)
        .and_then(|mut f| {
            // Readable by the collector, which runs as another user.
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            dir.rename(&tmp, name)?;
            dir.sync()?;
            Ok(())
        });
    if written.is_err() {
        let _ = dir.remove(&tmp);
    }
    written
}

fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `st` is a properly sized, writable statvfs; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Checks the data dir, the store's databases, the chain, the keyring, the disk and the kernel;
/// prints the findings as JSON and exits non-zero when any failed. On PostgreSQL the database
/// checks are [`postgres::checks`]; the keyring, disk and landlock checks stay about the data dir
/// (the keyring is there, and `serve` sandboxes itself to it whichever store it uses).
pub fn health(args: &HealthArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::of(&args.store)?;
    let mut report = Report::default();
    let dir = args.data_dir.open()?;
    // A data dir others can read, or a linked database, is refused before anything opens it.
    dir.open_dir()?;
    let keyring = dir.open_keyring().map_err(|e| e.to_string());
    report.add(
        "keyring",
        keyring.as_ref().map(|_| json!("ok")).map_err(Clone::clone),
    );
    report.add(
        "policy",
        args.policy
            .load()
            .map(|p| json!({"source": p.source, "sha256": p.sha256}))
            .map_err(|e| e.to_string()),
    );
    match &engine {
        Engine::Sqlite => {
            database_checks(&mut report, &dir);
            chain_checks(&mut report, &dir.audit_db(), keyring.as_ref().ok());
        }
        Engine::Postgres(settings) => {
            postgres::checks(&mut report, settings, keyring.as_ref().ok())
        }
    }
    let min = args.min_free_mib * 1024 * 1024;
    report.add(
        "free disk",
        match free_bytes(dir.root()) {
            Some(b) if b >= min => Ok(json!({"bytes": b})),
            Some(b) => Err(format!("{b} bytes free, below {min}")),
            None => Err("statvfs failed".into()),
        },
    );
    report.add(
        "landlock",
        crate::sandbox::kernel_abi()
            .map(|abi| json!({"abi": abi}))
            .ok_or_else(|| "this kernel does not support landlock".to_string()),
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"ok": report.ok, "checks": report.checks}))?
    );
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The checks so far, and whether all passed.
struct Report {
    checks: Vec<Value>,
    ok: bool,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            checks: Vec::new(),
            ok: true,
        }
    }
}

impl Report {
    fn add(&mut self, name: &str, result: Result<Value, String>) {
        let (pass, detail) = match result {
            Ok(v) => (true, v),
            Err(e) => (false, json!(e)),
        };
        self.ok &= pass;
        self.checks
            .push(json!({"check": name, "ok": pass, "detail": detail}));
    }
}

/// Both files' integrity and schema, and whether the chain beside a used store is there.
fn database_checks(report: &mut Report, dir: &crate::config::DataDir) {
    report.add(
        "memory.db quick_check",
        inspect::quick_check(&dir.memory_db()).map(Value::from),
    );
    report.add(
        "audit.db quick_check",
        audit::inspect::quick_check(&dir.audit_db()).map(Value::from),
    );
    // Only what the migrations create: a stray trigger could drop events or rewrite rows.
    let only_migrations = |()| json!("only what the migrations create");
    report.add(
        "memory.db schema",
        inspect::schema_check(&dir.memory_db()).map(only_migrations),
    );
    report.add(
        "audit.db schema",
        audit::inspect::schema_check(&dir.audit_db()).map(only_migrations),
    );
    // A missing, emptied or event-less audit.db beside a used memory.db is a chain that
    // vanished, not a new one (issue 18).
    report.add(
        "audit chain present",
        match audit::vanished_chain(&dir.audit_db()) {
            Ok(None) => Ok(json!("ok")),
            Ok(Some(why)) => Err(audit::AuditError::ChainMissing { why }.to_string()),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// The chain in `audit_db` verified with the keyring's keys, and the signing key's presence.
fn chain_checks(
    report: &mut Report,
    audit_db: &std::path::Path,
    keyring: Option<&crate::keys::Keyring>,
) {
    // The keyring's own signing keys check the checkpoints' signatures (an auditor uses the
    // public key file instead: `audit verify --public-key`).
    let signing = keyring.and_then(|k| k.audit_signing.as_ref());
    let verifiers = signing.map(|s| {
        audit::checkpoint::Verifiers::from_keys(
            audit::checkpoint::signers(s)
                .iter()
                .filter_map(|s| audit::checkpoint::VerifierKey::parse(&s.vkey()).ok())
                .collect(),
        )
    });
    let chain = audit::AuditReader::open(audit_db)
        .map_err(|e| e.to_string())
        .and_then(|reader| {
            let checks = audit::verify::Checks {
                keys: keyring.map(|k| &k.audit),
                verifiers: verifiers.as_ref(),
                ..audit::verify::Checks::default()
            };
            reader.verify(&checks).map_err(|e| e.to_string())
        })
        .and_then(|report| match report.damage {
            None => Ok(
                json!({"head": report.head.to_string(), "events": report.events,
                "macs_checked": report.macs_checked, "checkpoints": report.checkpoints,
                "last_checkpoint_seq": report.last_checkpoint.map(|(at, _)| at)}),
            ),
            Some(d) => Err(d.to_string()),
        });
    report.add("audit chain", chain);
    // A keyring made before checkpoints existed keeps working, unsigned: a warning, not a
    // failure.
    if keyring.is_some() {
        let detail = match signing {
            Some(s) => json!({"active": s.active().0}),
            None => json!({"warning": "the keyring has no audit signing key: no checkpoints \
                are signed, so a history rewritten with the audit key goes unseen; run \
                `memwarden keys rotate --audit-signing`"}),
        };
        report.add("audit signing key", Ok(detail));
    }
}

/// What the metrics are computed from, on either store.
struct Figures {
    /// The audit chain's counts.
    stats: audit::inspect::Stats,
    /// Entries by status.
    statuses: Vec<(String, i64)>,
    /// Bytes held, by database (`memory`, `audit`).
    sizes: Vec<(&'static str, u64)>,
}

/// The figures of memory.db and audit.db in the data dir.
fn sqlite_figures(dir: &crate::config::DataDir) -> anyhow::Result<Figures> {
    dir.open_dir()?;
    let stats = audit::inspect::stats(&dir.audit_db())?;
    let statuses = inspect::rows_by_status(&dir.memory_db()).map_err(anyhow::Error::msg)?;
    let sizes = [("memory", dir.memory_db()), ("audit", dir.audit_db())]
        .into_iter()
        .map(|(db, path)| {
            let mut bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            bytes += std::fs::metadata(std::path::PathBuf::from(wal))
                .map(|m| m.len())
                .unwrap_or(0);
            (db, bytes)
        })
        .collect();
    Ok(Figures {
        stats,
        statuses,
        sizes,
    })
}

/// Prometheus text for the series the databases hold; the same series on both stores.
pub fn metrics(args: &MetricsArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::of(&args.store)?;
    let out = match &engine {
        Engine::Sqlite => exposition(&engine, Some(&args.data_dir.open()?))?,
        Engine::Postgres(_) => exposition(&engine, None)?,
    };
    match &args.out {
        Some(path) => write_atomically(path, &out)?,
        None => print!("{out}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The series `memwarden metrics` prints, from the databases of `engine` (on SQLite, those in
/// `dir`); `serve-http`'s `/metrics` serves them too, beside its live series.
pub(crate) fn exposition(
    engine: &Engine,
    dir: Option<&crate::config::DataDir>,
) -> anyhow::Result<String> {
    let Figures {
        stats,
        statuses,
        sizes,
    } = match (engine, dir) {
        (Engine::Sqlite, Some(dir)) => sqlite_figures(dir)?,
        (Engine::Sqlite, None) => anyhow::bail!("no data dir"),
        (Engine::Postgres(settings), _) => postgres::figures(settings)?,
    };
    let mut out = String::new();
    call_series(&mut out, &stats);
    connection_series(&mut out, &stats);
    let name = family(
        &mut out,
        "memwarden_sessions_total",
        "counter",
        "Sessions started.",
    );
    let _ = writeln!(out, "{name} {}", stats.sessions);
    let name = family(
        &mut out,
        "memwarden_security_events_total",
        "counter",
        "Security events by kind.",
    );
    for (event, n) in &stats.security {
        let _ = writeln!(out, "{name}{{event=\"{}\"}} {n}", label(event));
    }
    let name = family(
        &mut out,
        "memwarden_entries",
        "gauge",
        "Stored entries by status.",
    );
    for (status, n) in &statuses {
        let _ = writeln!(out, "{name}{{status=\"{}\"}} {n}", label(status));
    }
    let name = family(
        &mut out,
        "memwarden_db_bytes",
        "gauge",
        "Database sizes: on SQLite the files, WAL included; on PostgreSQL the schema's tables \
         with their indexes and TOAST.",
    );
    for (db, bytes) in &sizes {
        let _ = writeln!(out, "{name}{{db=\"{db}\"}} {bytes}");
    }
    Ok(out)
}

/// Reconnections to PostgreSQL and the failed attempts before them, as serving processes
/// recorded them in the audit chain (the only durable place a one-shot `metrics` can read them
/// from; PostgreSQL's own statistics are not per application).
fn connection_series(out: &mut String, stats: &audit::inspect::Stats) {
    let name = family(
        out,
        "memwarden_store_reconnects_total",
        "counter",
        "Reconnections to PostgreSQL after a lost connection, recorded in the audit log by the \
         serving process once the connection was back (an outage still going on, or whose \
         process ended first, is not counted). Always 0 on SQLite.",
    );
    let _ = writeln!(out, "{name} {}", stats.reconnects);
    let name = family(
        out,
        "memwarden_store_connection_errors_total",
        "counter",
        "Connection attempts to PostgreSQL that failed before those reconnections, recorded \
         with them. Always 0 on SQLite.",
    );
    let _ = writeln!(out, "{name} {}", stats.connection_errors);
}

/// Calls by tool and outcome, and the call-latency histogram.
fn call_series(out: &mut String, stats: &audit::inspect::Stats) {
    let name = family(
        out,
        "memwarden_calls_total",
        "counter",
        "Tool calls by tool and outcome.",
    );
    for (tool, outcome, n) in &stats.calls {
        let _ = writeln!(
            out,
            "{name}{{tool=\"{}\",outcome=\"{}\"}} {n}",
            label(tool),
            label(outcome)
        );
    }
    let name = family(
        out,
        "memwarden_call_duration_seconds",
        "histogram",
        "Tool call latency inside the server.",
    );
    let mut durations: Vec<f64> = stats
        .durations_us
        .iter()
        .map(|&us| us as f64 / 1e6)
        .collect();
    durations.sort_by(f64::total_cmp);
    for le in BUCKETS {
        let n = durations.partition_point(|d| *d <= le);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", durations.len());
    let _ = writeln!(out, "{name}_sum {}", durations.iter().sum::<f64>());
    let _ = writeln!(out, "{name}_count {}", durations.len());
}
