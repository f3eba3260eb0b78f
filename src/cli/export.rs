//! `memwarden export`: sealed rows out as portable JSON lines (README, "Portable export
//! format"), from either engine. Each row's seal and ledger records are checked as it streams
//! out; a row that fails is refused by id, never written. Audited before and after.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::json;
use sha2::{Digest, Sha256};

use super::DataDirArg;
use super::review::{admin_event, open};
use super::serve::{StoreArgs, StoreKind};
use crate::fsafe::Dir;
use crate::store::portable::{Header, Line};
use crate::store::rows::RawRow;

/// The export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object a line: a header, then one sealed row per line.
    Jsonl,
}

/// `memwarden export`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only rows in this namespace (repeat for several) [default: every namespace]
    #[arg(long, value_name = "NS")]
    pub namespace: Vec<String>,
    /// Only rows written or changed at or after this time: RFC 3339, or unix milliseconds
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// The file format
    #[arg(long, value_enum, default_value = "jsonl")]
    pub format: ExportFormat,
    /// Write to this new file (created 0600, never over an existing file or through a link)
    /// [default: stdout]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `--since`: RFC 3339 (as `audit query --since` takes it), or unix milliseconds.
fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    Ok(crate::clock::parse_time("--since", text)?)
}

/// A new file at `path`, created exclusively, mode 0600, its last component never a link.
pub(crate) fn create_out(path: &Path) -> anyhow::Result<std::fs::File> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("--out {}: not a file name", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(Dir::open(parent)?.create_new(name)?)
}

/// Counts and hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_line(out: &mut impl Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Exports the rows the filters select; exit 1 (after writing the rest) when any row failed
/// verification, listing their ids on stderr.
pub fn run(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let (store, mut audit, _lock) = open(&args.data_dir, &args.store)?;
    let engine = match args.store.kind {
        StoreKind::Sqlite => "sqlite",
        StoreKind::Postgres => "postgres",
    };
    // Audit first: an export the log cannot record does not happen.
    admin_event(
        &mut audit,
        json!({"event": "export_start", "namespaces": args.namespace, "since": since,
               "to": if args.out.is_some() { "file" } else { "stdout" }}),
    )?;
    let file = args.out.as_deref().map(create_out).transpose()?;
    let sink: Box<dyn Write + '_> = match &file {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = Hashing {
        inner: BufWriter::with_capacity(1 << 16, sink),
        hash: Sha256::new(),
    };
    write_line(&mut out, &Header::new(engine, crate::clock::now_ms()))?;
    let keep = |raw: &RawRow| {
        (args.namespace.is_empty() || args.namespace.contains(&raw.namespace))
            && since.is_none_or(|t| raw.updated_at >= t)
    };
    let report = store.export_rows(&keep, &mut |line: &Line| write_line(&mut out, line))?;
    out.flush()?;
    let sha256 = hex::encode(out.hash.finalize());
    if let Some(f) = &file {
        // Durable before the event that names its hash.
        f.sync_all()?;
    }
    admin_event(
        &mut audit,
        json!({"event": "export", "rows": report.exported, "refused": report.refused,
               "file_sha256": sha256}),
    )?;
    eprintln!(
        "exported {} rows ({} outside the filters), sha256 {sha256}",
        report.exported, report.skipped
    );
    if report.refused.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "refused: {} rows do not verify and were not exported:",
        report.refused.len()
    );
    for id in &report.refused {
        eprintln!("{id}");
    }
    Ok(ExitCode::from(1))
}
