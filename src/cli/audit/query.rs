//! `memwarden audit query|export|head|checkpoint`: reading the log back, as it is stored.

use std::io::Write;
use std::process::ExitCode;

use super::{ExportFormat, Format, Source};
use crate::audit::AuditReader;
use crate::audit::query::{Event, Filter};

/// `memwarden audit checkpoint`: the newest signed checkpoint's note; exit 1 when there is none.
pub(super) fn checkpoint_cmd(source: &Source) -> anyhow::Result<ExitCode> {
    // Bound: a PostgreSQL chain's private copy lives as long as the reader.
    let copy = source.open()?;
    let log = AuditReader::open(copy.path())?;
    match log.latest_checkpoint()? {
        Some(note) => {
            print!("{note}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "the log holds no signed checkpoint (is there an [audit_signing] key in \
                 the keyring? `memwarden health` says)"
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `memwarden audit head`: the chain head as SEQ:HASH.
pub(super) fn head_cmd(source: &Source) -> anyhow::Result<ExitCode> {
    // Bound: a PostgreSQL chain's private copy lives as long as the reader.
    let copy = source.open()?;
    let log = AuditReader::open(copy.path())?;
    println!("{}", log.head()?);
    Ok(ExitCode::SUCCESS)
}

/// `memwarden audit export`: every event with its hashes, one JSON object a line, or a new
/// audit.db at `out`.
pub(super) fn export_cmd(
    source: &Source,
    format: ExportFormat,
    out: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let log = source.open()?;
    match (format, out) {
        (ExportFormat::Sqlite, Some(out)) => {
            let head = AuditReader::open(log.path())?.export_sqlite(out)?;
            println!("exported the audit chain to {}: head {head}", out.display());
        }
        (ExportFormat::Sqlite, None) => {
            anyhow::bail!("--format sqlite needs --out FILE (a new audit.db)")
        }
        (ExportFormat::Jsonl, Some(_)) => {
            anyhow::bail!("--out is for --format sqlite; jsonl goes to stdout")
        }
        (ExportFormat::Jsonl, None) => {
            let reader = AuditReader::open(log.path())?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            reader.events(&Filter::default(), true, |e| {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")
            })?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `memwarden audit query`: events matching the filters, as a table, JSON or CSV.
pub(super) fn query_cmd(
    source: &Source,
    filter: &Filter,
    format: Format,
) -> anyhow::Result<ExitCode> {
    // Bound: a PostgreSQL chain's private copy lives as long as the reader.
    let copy = source.open()?;
    let log = AuditReader::open(copy.path())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Json => {
            let mut all = Vec::new();
            log.events(filter, false, |e| {
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
            log.events(filter, false, |e| writeln!(out, "{}", csv_row(&e)))?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>6}  {:<24}  {:<13}  {:<10}  {:<14}  {:<7}  {:<16}  SESSION",
                "SEQ", "TS", "KIND", "PRINCIPAL", "TOOL", "OUTCOME", "CODE"
            )?;
            log.events(filter, false, |e| {
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

/// One CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One event as a CSV row (hashes left out).
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
