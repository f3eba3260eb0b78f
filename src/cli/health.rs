//! `memwarden health` (JSON, non-zero exit when anything is wrong) and `memwarden metrics`
//! (Prometheus text exposition derived from the databases, for node_exporter's textfile
//! collector). Both read only.

use std::fmt::Write as _;
use std::process::ExitCode;

use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};

use super::DataDirArg;
use super::serve::PolicyArgs;
use crate::audit;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Least free space on the data dir's filesystem, in MiB.
    #[arg(long, default_value_t = 64)]
    pub min_free_mib: u64,
}

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
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

fn quick_check(path: &std::path::Path) -> Result<String, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| e.to_string())?;
    let r: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if r == "ok" { Ok(r) } else { Err(r) }
}

fn schema_check(
    path: &std::path::Path,
    check: impl FnOnce(&Connection) -> Result<(), String>,
) -> Result<Value, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| e.to_string())?;
    check(&conn).map(|()| json!("only what the migrations create"))
}

fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `st` is a properly sized, writable statvfs; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

pub fn health(args: &HealthArgs) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let mut ok = true;
    let mut add = |name: &str, result: Result<Value, String>| {
        let (pass, detail) = match result {
            Ok(v) => (true, v),
            Err(e) => (false, json!(e)),
        };
        ok &= pass;
        checks.push(json!({"check": name, "ok": pass, "detail": detail}));
    };
    let dir = args.data_dir.open()?;
    // A data dir others can read, or a linked database, is refused before anything opens it.
    dir.open_dir()?;
    let keyring = dir.open_keyring().map_err(|e| e.to_string());
    add(
        "keyring",
        keyring.as_ref().map(|_| json!("ok")).map_err(Clone::clone),
    );
    add(
        "policy",
        args.policy
            .load()
            .map(|p| json!({"source": p.source, "sha256": p.sha256}))
            .map_err(|e| e.to_string()),
    );
    add(
        "memory.db quick_check",
        quick_check(&dir.memory_db()).map(Value::from),
    );
    add(
        "audit.db quick_check",
        quick_check(&dir.audit_db()).map(Value::from),
    );
    // Only what the migrations create: a stray trigger could drop events or rewrite rows.
    add(
        "memory.db schema",
        schema_check(&dir.memory_db(), |c| {
            crate::store::migrations::check_schema(c).map_err(|e| e.to_string())
        }),
    );
    add(
        "audit.db schema",
        schema_check(&dir.audit_db(), |c| {
            audit::check_schema(c).map_err(|e| e.to_string())
        }),
    );
    // A missing, emptied or event-less audit.db beside a used memory.db is a chain that
    // vanished, not a new one (issue 18).
    add(
        "audit chain present",
        match audit::vanished_chain(&dir.audit_db()) {
            Ok(None) => Ok(json!("ok")),
            Ok(Some(why)) => Err(audit::AuditError::ChainMissing { why }.to_string()),
            Err(e) => Err(e.to_string()),
        },
    );
    // The keyring's own signing keys check the checkpoints' signatures (an auditor uses the
    // public key file instead: `audit verify --public-key`).
    let signing = keyring.as_ref().ok().and_then(|k| k.audit_signing.as_ref());
    let verifiers = signing.map(|s| {
        audit::checkpoint::Verifiers::from_keys(
            audit::checkpoint::signers(s)
                .iter()
                .filter_map(|s| audit::checkpoint::VerifierKey::parse(&s.vkey()).ok())
                .collect(),
        )
    });
    let chain = audit::open_ro(&dir.audit_db())
        .map_err(|e| e.to_string())
        .and_then(|conn| {
            let checks = audit::verify::Checks {
                keys: keyring.as_ref().ok().map(|k| &k.audit),
                verifiers: verifiers.as_ref(),
                ..audit::verify::Checks::default()
            };
            audit::verify::verify_with(&conn, &checks).map_err(|e| e.to_string())
        })
        .and_then(|report| match report.damage {
            None => Ok(
                json!({"head": report.head.to_string(), "events": report.events,
                "macs_checked": report.macs_checked, "checkpoints": report.checkpoints,
                "last_checkpoint_seq": report.last_checkpoint.map(|(at, _)| at)}),
            ),
            Some(d) => Err(d.to_string()),
        });
    add("audit chain", chain);
    // A keyring made before checkpoints existed keeps working, unsigned: a warning, not a
    // failure.
    if keyring.is_ok() {
        let detail = match signing {
            Some(s) => json!({"active": s.active().0}),
            None => json!({"warning": "the keyring has no audit signing key: no checkpoints \
                are signed, so a history rewritten with the audit key goes unseen; run \
                `memwarden keys rotate --audit-signing`"}),
        };
        add("audit signing key", Ok(detail));
    }
    let min = args.min_free_mib * 1024 * 1024;
    add(
        "free disk",
        match free_bytes(dir.root()) {
            Some(b) if b >= min => Ok(json!({"bytes": b})),
            Some(b) => Err(format!("{b} bytes free, below {min}")),
            None => Err("statvfs failed".into()),
        },
    );
    add(
        "landlock",
        crate::sandbox::kernel_abi()
            .map(|abi| json!({"abi": abi}))
            .ok_or_else(|| "this kernel does not support landlock".to_string()),
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({"ok": ok, "checks": checks}))?
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Upper bounds of the call-latency histogram, in seconds.
const BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

pub fn metrics(args: &MetricsArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    dir.open_dir()?;
    let audit = audit::open_ro(&dir.audit_db())?;
    let memory = open_memory_ro(&dir.memory_db())?;
    let mut out = String::new();
    fn family(out: &mut String, name: &str, kind: &str, help: &str) -> String {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        name.to_string()
    }
    let label = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };

    let name = family(
        &mut out,
        "memwarden_calls_total",
        "counter",
        "Tool calls by tool and outcome.",
    );
    let mut lines = String::new();
    let mut stmt = audit.prepare(
        "SELECT coalesce(tool, 'unknown'), outcome, count(*) FROM events WHERE kind = 'call' GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (tool, outcome, n) = row?;
        let _ = writeln!(
            lines,
            "{name}{{tool=\"{}\",outcome=\"{}\"}} {n}",
            label(&tool),
            label(&outcome)
        );
    }
    out.push_str(&lines);

    let name = family(
        &mut out,
        "memwarden_call_duration_seconds",
        "histogram",
        "Tool call latency inside the server.",
    );
    let mut durations: Vec<f64> = audit
        .prepare("SELECT json_extract(detail, '$.duration_us') FROM events WHERE kind = 'call' AND json_extract(detail, '$.duration_us') IS NOT NULL")?
        .query_map([], |r| r.get::<_, i64>(0))?
        .filter_map(Result::ok)
        .map(|us| us as f64 / 1e6)
        .collect();
    durations.sort_by(f64::total_cmp);
    for le in BUCKETS {
        let n = durations.partition_point(|d| *d <= le);
        out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {n}\n"));
    }
    out.push_str(&format!(
        "{name}_bucket{{le=\"+Inf\"}} {}\n",
        durations.len()
    ));
    out.push_str(&format!("{name}_sum {}\n", durations.iter().sum::<f64>()));
    out.push_str(&format!("{name}_count {}\n", durations.len()));

    let name = family(
        &mut out,
        "memwarden_sessions_total",
        "counter",
        "Sessions started.",
    );
    let n: i64 = audit.query_row(
        "SELECT count(*) FROM events WHERE kind = 'session_start'",
        [],
        |r| r.get(0),
    )?;
    out.push_str(&format!("{name} {n}\n"));

    let name = family(
        &mut out,
        "memwarden_security_events_total",
        "counter",
        "Security events by kind.",
    );
    let mut stmt = audit.prepare(
        "SELECT coalesce(json_extract(detail, '$.event'), 'unknown'), count(*) FROM events WHERE kind = 'security' GROUP BY 1 ORDER BY 1",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (event, n) = row?;
        out.push_str(&format!("{name}{{event=\"{}\"}} {n}\n", label(&event)));
    }

    let name = family(
        &mut out,
        "memwarden_entries",
        "gauge",
        "Stored entries by status.",
    );
    let mut stmt = memory.prepare("SELECT status, count(*) FROM entries GROUP BY 1 ORDER BY 1")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (status, n) = row?;
        out.push_str(&format!("{name}{{status=\"{}\"}} {n}\n", label(&status)));
    }

    let name = family(
        &mut out,
        "memwarden_db_bytes",
        "gauge",
        "Database file sizes, WAL included.",
    );
    for (db, path) in [("memory", dir.memory_db()), ("audit", dir.audit_db())] {
        let mut bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        bytes += std::fs::metadata(std::path::PathBuf::from(wal))
            .map(|m| m.len())
            .unwrap_or(0);
        out.push_str(&format!("{name}{{db=\"{db}\"}} {bytes}\n"));
    }
    match &args.out {
        Some(path) => write_atomically(path, &out)?,
        None => print!("{out}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// memory.db read-only, also where the data dir is mounted read-only (the metrics unit): with no
/// -wal file the database file alone is complete, and `immutable` needs no -shm to be created.
fn open_memory_ro(path: &std::path::Path) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    // SQLite opens lazily: the first statement is what fails on a read-only directory.
    let plain = Connection::open_with_flags(path, flags).and_then(|c| {
        c.query_row("PRAGMA user_version", [], |_| Ok(()))
            .map(|()| c)
    });
    match plain {
        Ok(conn) => Ok(conn),
        Err(e) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            if !path.is_file() || std::fs::symlink_metadata(&wal).is_ok() {
                return Err(e.into());
            }
            let mut uri = String::from("file:");
            for b in path.to_string_lossy().bytes() {
                match b {
                    b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
                    _ => uri.push(b as char),
                }
            }
            uri.push_str("?mode=ro&immutable=1");
            Ok(Connection::open_with_flags(
                uri,
                flags | OpenFlags::SQLITE_OPEN_URI,
            )?)
        }
    }
}
