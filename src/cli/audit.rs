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
