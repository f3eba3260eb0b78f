//! `memwarden audit verify|query|head|export`: the auditor's tools. They open audit.db read-only,
//! need no memory.db, and work on a copy in a read-only directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use crate::audit::query::{self, Event, Filter};
use crate::audit::verify::{self, parse_head};
use crate::audit::{self as audit_db, append::head};
use crate::store::keyring::Keyring;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Where the audit database is.
#[derive(Debug, clap::Args)]
pub struct Source {
    #[command(flatten)]
    pub data_dir: super::DataDirArg,
    /// An audit.db file (for example an auditor's copy); overrides --data-dir.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
}

impl Source {
    /// The audit.db to read. One in a data dir is held to the data dir's checks (0700 dir,
    /// 0600 files, no links); a `--db` copy handed to an auditor may have any mode, and is only
    /// opened without following links.
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.db {
            Some(p) => Ok(p.clone()),
            None => {
                let dir = self.data_dir.open()?;
                dir.open_dir()?;
                Ok(dir.audit_db())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain: linkage and hashes always, MACs with the audit key; exit 0 only if all hold.
    Verify {
        #[command(flatten)]
        source: Source,
        /// Keyring holding the audit key (default: the data dir's, when --db is not given).
        #[arg(long, value_name = "FILE")]
        keyring: Option<PathBuf>,
        /// A head recorded earlier (`memwarden audit head`): detects a cut tail or an older copy.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
    /// Print the chain head as SEQ:HASH, to keep somewhere the agent cannot reach.
    Head {
        #[command(flatten)]
        source: Source,
    },
    /// Print events matching the filters.
    Query {
        #[command(flatten)]
        source: Source,
        /// RFC 3339, inclusive.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        /// ok, denied or error.
        #[arg(long)]
        outcome: Option<String>,
        /// session_start, call, session_end, security or admin.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Start a new chain in a data dir whose audit.db is missing, emptied, without events or
    /// damaged: the old file is kept beside it and the new chain's first event says why and
    /// how many entries memory.db holds. Refused while anything uses the data dir, and for a
    /// chain that verifies.
    Reset {
        #[command(flatten)]
        data_dir: super::DataDirArg,
        /// Required: the history before this point is no longer linked to what follows.
        #[arg(long)]
        i_understand_the_chain_restarts: bool,
    },
    /// Every event with its hashes, one JSON object a line (for a SIEM).
    Export {
        #[command(flatten)]
        source: Source,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

pub fn run(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        AuditCommand::Verify {
            source,
            keyring,
            expect_head,
        } => verify_cmd(source, keyring.as_ref(), expect_head.as_deref()),
        AuditCommand::Head { source } => {
            let conn = audit_db::open_ro(&source.path()?)?;
            println!("{}", head(&conn)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Query {
            source,
            since,
            until,
            principal,
            session,
            tool,
            outcome,
            kind,
            limit,
            format,
        } => {
            let filter = Filter {
                since: since.clone(),
                until: until.clone(),
                principal: principal.clone(),
                session: session.clone(),
                tool: tool.clone(),
                outcome: outcome.clone(),
                kind: kind.clone(),
                limit: Some(*limit),
            };
            query_cmd(source, &filter, *format)
        }
        AuditCommand::Reset {
            data_dir,
            i_understand_the_chain_restarts,
        } => reset_cmd(data_dir, *i_understand_the_chain_restarts),
        AuditCommand::Export { source, format } => {
            let ExportFormat::Jsonl = format;
            let conn = audit_db::open_ro(&source.path()?)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            query::events(&conn, &Filter::default(), true, |e| {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")
            })?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify_cmd(
    source: &Source,
    keyring: Option<&PathBuf>,
    expect_head: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let path = source.path()?;
    // In a data dir, an empty or missing chain beside a used memory.db is a failure, not an
    // empty log (an auditor's --db copy has no memory.db to judge by).
    if source.db.is_none()
        && let Some(why) = audit_db::vanished_chain(&path)?
    {
        println!("FAILED: {}", audit_db::AuditError::ChainMissing { why });
        return Ok(ExitCode::from(1));
    }
    let conn = audit_db::open_ro(&path)?;
    let keyring_path = match (keyring, &source.db) {
        (Some(k), _) => Some(k.clone()),
        (None, None) => {
            Some(source.data_dir.resolve()?.join("keyring.toml")).filter(|p| p.exists())
        }
        (None, Some(_)) => None,
    };
    let keys = keyring_path.map(|p| Keyring::load_audit(&p)).transpose()?;
    let expect = expect_head
        .map(|h| parse_head(h).ok_or_else(|| anyhow::anyhow!("--expect-head must be SEQ:HASH (64 hex digits), as printed by `memwarden audit head`")))
        .transpose()?;
    let report = verify::verify(&conn, keys.as_ref(), expect.as_ref())?;
    match report.damage {
        None => {
            println!(
                "ok: {} events, head {}; linkage and hashes verified; MACs {}{}",
                report.events,
                report.head,
                if report.macs_checked {
                    "verified"
                } else {
                    "NOT checked (no --keyring)"
                },
                if expect.is_some() {
                    "; expected head present"
                } else {
                    ""
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(damage) => {
            println!("FAILED at seq {}: {damage}", damage.seq);
            Ok(ExitCode::from(1))
        }
    }
}

/// Why the data dir's chain may be restarted, or a refusal when it is sound.
fn reset_reason(dir: &crate::config::DataDir, keyring: &Keyring) -> anyhow::Result<String> {
    if let Some(why) = audit_db::vanished_chain(&dir.audit_db())? {
        return Ok(why);
    }
    if !dir.audit_db().exists() {
        return Ok("audit.db is missing".into());
    }
    let damage = match audit_db::open_ro(&dir.audit_db()) {
        Err(e) => e.to_string(),
        Ok(conn) => match verify::verify(&conn, Some(&keyring.audit), None) {
            Err(e) => e.to_string(),
            Ok(report) => match report.damage {
                Some(d) => format!("the chain fails at seq {}: {d}", d.seq),
                None if report.events == 0 => "audit.db holds no events".into(),
                None => anyhow::bail!(
                    "refusing: audit.db holds a chain that verifies ({} events, head {}); \
                     there is nothing to reset",
                    report.events,
                    report.head
                ),
            },
        },
    };
    Ok(format!("audit.db is damaged: {damage}"))
}

/// `memwarden audit reset --i-understand-the-chain-restarts`.
fn reset_cmd(args: &super::DataDirArg, confirmed: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        confirmed,
        "audit reset starts a new audit chain: nothing before it will link to what follows. \
         Put audit.db back from a backup if you can; otherwise pass \
         --i-understand-the-chain-restarts"
    );
    let dir = args.open()?;
    let keyring = dir.open_keyring()?;
    let data = dir.open_dir()?;
    let _lock = crate::datalock::DataLock::exclusive(&data)?;
    let why = reset_reason(&dir, &keyring)?;
    let entries = count_entries(&dir.memory_db());
    let replaced = super::backup::set_aside_audit(&data)?;
    drop(data.create_new("audit.db")?);
    data.sync()?;
    let detail = serde_json::json!({
        "event": "chain_start",
        "why": format!("operator reset: {why}"),
        "memory_entries": entries,
        "replaced_audit_head": replaced.as_ref().map(super::backup::Replaced::head),
        "replaced_audit_kept_as": replaced.as_ref().map(|r| r.name.as_str()),
        "operator_uid": crate::store::keyring::current_uid(),
    });
    let event = audit_db::NewEvent {
        principal: Some("operator"),
        ..audit_db::NewEvent::new(audit_db::Kind::Admin, detail)
    };
    let (log, head) = audit_db::AuditLog::open_new_chain(
        &dir.audit_db(),
        keyring.audit,
        std::time::Duration::from_secs(10),
        &event,
    )?;
    log.close()?;
    let head = head.ok_or_else(|| anyhow::anyhow!("the new audit.db already held events"))?;
    println!(
        "new audit chain started ({why}); memory.db holds {} entries; head {head}",
        entries.map_or_else(|| "an unknown number of".into(), |n| n.to_string())
    );
    if let Some(r) = &replaced {
        println!(
            "the old audit.db (head {}) is kept as {}",
            r.head(),
            data.join(&r.name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Rows in memory.db's entries table, read-only; `None` when it cannot be read.
fn count_entries(memory_db: &std::path::Path) -> Option<i64> {
    if !memory_db.exists() {
        return Some(0);
    }
    let conn = rusqlite::Connection::open_with_flags(
        memory_db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .ok()?;
    conn.query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .ok()
}

fn query_cmd(source: &Source, filter: &Filter, format: Format) -> anyhow::Result<ExitCode> {
    let conn = audit_db::open_ro(&source.path()?)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Json => {
            let mut all = Vec::new();
            query::events(&conn, filter, false, |e| {
                all.push(e);
                Ok(())
            })?;
            serde_json::to_writer_pretty(&mut out, &all)?;
            writeln!(out)?;
        }
        Format::Csv => {
            writeln!(
                out,
                "seq,ts,kind,session_id,principal,tool,outcome,code,detail"
            )?;
            query::events(&conn, filter, false, |e| writeln!(out, "{}", csv_row(&e)))?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>6}  {:<24}  {:<13}  {:<10}  {:<14}  {:<7}  {:<16}  SESSION",
                "SEQ", "TS", "KIND", "PRINCIPAL", "TOOL", "OUTCOME", "CODE"
            )?;
            query::events(&conn, filter, false, |e| {
                writeln!(
                    out,
                    "{:>6}  {:<24}  {:<13}  {:<10}  {:<14}  {:<7}  {:<16}  {}",
                    e.seq,
                    e.ts,
                    e.kind,
                    e.principal.as_deref().unwrap_or("-"),
                    e.tool.as_deref().unwrap_or("-"),
                    e.outcome.as_deref().unwrap_or("-"),
                    e.code.as_deref().unwrap_or("-"),
                    e.session_id.as_deref().unwrap_or("-"),
                )
            })?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(e: &Event) -> String {
    let opt = |o: &Option<String>| csv_field(o.as_deref().unwrap_or(""));
    [
        e.seq.to_string(),
        csv_field(&e.ts),
        csv_field(&e.kind),
        opt(&e.session_id),
        opt(&e.principal),
        opt(&e.tool),
        opt(&e.outcome),
        opt(&e.code),
        csv_field(&e.detail.to_string()),
    ]
    .join(",")
}
