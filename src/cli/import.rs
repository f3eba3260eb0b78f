//! `memwarden import FILE`: rows from a portable export into either engine, unchanged (same
//! id, same seal). Every line's seal is checked before anything is written; a file with rows
//! that fail, or with ids the store already holds, is refused whole, naming them. Only the
//! operator's `--reseal-failed` lets failing rows in, sealed afresh with the active key — and
//! the audit event names each one.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::DataDirArg;
use super::review::{admin_event, open};
use super::serve::StoreArgs;
use crate::audit::{Kind, NewEvent};
use crate::fsafe::Dir;
use crate::store::portable::{Header, Line};

/// The longest line read (a row's content is bounded far below this by the policy).
const MAX_LINE_BYTES: u64 = 64 << 20;

/// `memwarden import`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The export to load (`memwarden export --format jsonl`)
    pub file: PathBuf,
    /// Import rows whose seal fails (edited, or sealed with a key this keyring lacks) by
    /// sealing them afresh with the active key, instead of refusing the file. Their ids go in
    /// the audit event.
    #[arg(long)]
    pub reseal_failed: bool,
}

/// The file, opened without following a link.
fn open_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(Dir::open(parent)?.open_file(name)?)
}

/// Reads the file line by line, hashing every byte: the header first, then each row's line
/// (its number from 2, and the parsed line or a parse failure).
struct Lines<R> {
    reader: BufReader<R>,
    hash: Sha256,
    number: u64,
    buf: Vec<u8>,
}

impl<R: Read> Lines<R> {
    fn new(inner: R) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 16, inner),
            hash: Sha256::new(),
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next line's bytes (without its newline), or `None` at the end.
    fn next_bytes(&mut self) -> anyhow::Result<Option<&[u8]>> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        if n as u64 > MAX_LINE_BYTES {
            bail!("line {}: longer than {MAX_LINE_BYTES} bytes", self.number);
        }
        self.hash.update(&self.buf);
        let line = self.buf.strip_suffix(b"\n").unwrap_or(&self.buf);
        Ok(Some(line))
    }

    fn header(&mut self) -> anyhow::Result<Header> {
        let bytes = self
            .next_bytes()?
            .ok_or_else(|| anyhow::anyhow!("the file is empty: no export header"))?;
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|_| anyhow::anyhow!("line 1: not a memwarden export header"))?;
        if !header.supported() {
            // The header's own text is not echoed: it is the file's, not ours.
            bail!(
                "line 1: not a format this build reads (it reads {} version {})",
                crate::store::portable::FORMAT,
                crate::store::portable::VERSION
            );
        }
        Ok(header)
    }

    /// The next row: `Err(label)` when the line is not a row (never its text).
    fn row(&mut self) -> anyhow::Result<Option<Result<Line, String>>> {
        let number = self.number + 1;
        Ok(self.next_bytes()?.map(|bytes| {
            serde_json::from_slice::<Line>(bytes).map_err(|_| format!("line {number}"))
        }))
    }
}

/// What the first pass found.
#[derive(Default)]
struct Checked {
    rows: u64,
    /// Rows whose seal fails (by id), or lines that are not rows (by number).
    failed: Vec<String>,
    /// Of `failed`, the ids `--reseal-failed` can seal afresh.
    resealable: HashSet<String>,
    sha256: String,
}

/// Pass one: every line parsed and its seal checked; nothing written.
fn check_all(
    store: &crate::store::Store,
    file: &std::fs::File,
    reseal: bool,
) -> anyhow::Result<(Header, Checked)> {
    let mut lines = Lines::new(file);
    let header = lines.header()?;
    let mut out = Checked::default();
    let mut seen = HashSet::new();
    while let Some(row) = lines.row()? {
        out.rows += 1;
        let line = match row {
            Ok(line) => line,
            Err(label) => {
                out.failed.push(label);
                continue;
            }
        };
        if !seen.insert(line.id.clone()) {
            out.failed.push(format!("{} (repeated)", line.id));
            continue;
        }
        let id = line.id.clone();
        let again = reseal.then(|| line.clone());
        if store.check_line(line).is_err() {
            if again.is_some_and(|l| store.reseal_line(l).is_ok()) {
                out.resealable.insert(id.clone());
            }
            out.failed.push(id);
        }
    }
    out.sha256 = hex::encode(lines.hash.finalize());
    Ok((header, out))
}

fn refuse(what: &str, ids: &[String]) -> ExitCode {
    eprintln!("refused: {} {what}; nothing was imported:", ids.len());
    for id in ids {
        eprintln!("{id}");
    }
    ExitCode::from(1)
}

/// Imports the file, or refuses it whole (exit 1, listing ids, nothing written).
pub fn run(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let mut file = open_file(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let (mut store, mut audit, _lock) = open(&args.data_dir, &args.store)?;
    let (header, checked) = check_all(&store, &file, args.reseal_failed)?;
    let unresealable: Vec<String> = checked
        .failed
        .iter()
        .filter(|id| !args.reseal_failed || !checked.resealable.contains(*id))
        .cloned()
        .collect();
    if !unresealable.is_empty() {
        admin_event(
            &mut audit,
            json!({"event": "import_refused", "failed": unresealable,
                   "file_sha256": checked.sha256}),
        )?;
        let what = if args.reseal_failed {
            "rows cannot be re-sealed (not a row, repeated, or malformed fields)"
        } else {
            "rows do not verify (pass --reseal-failed to seal them afresh with the active key)"
        };
        return Ok(refuse(what, &unresealable));
    }

    // Pass two, in one transaction: the same bytes again (checked by hash), rows in unchanged.
    file.rewind()?;
    let mut lines = Lines::new(&file);
    lines.header()?;
    let mut tx = store.begin_import()?;
    let (mut ids, mut resealed, mut present) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(row) = lines.row()? {
        let line = row.map_err(|label| anyhow::anyhow!("{label}: changed while importing"))?;
        if tx.present(&line.id)? {
            present.push(line.id);
            continue;
        }
        let id = line.id.clone();
        let row = match tx.check_line(line.clone()) {
            Ok(row) => row,
            Err(_) if checked.resealable.contains(&id) => {
                resealed.push(id.clone());
                tx.reseal_line(line)
                    .map_err(|id| anyhow::anyhow!("{id}: changed while importing"))?
            }
            Err(id) => bail!("{id}: changed while importing"),
        };
        tx.insert(&row)?;
        ids.push(id);
    }
    let sha256 = hex::encode(lines.hash.finalize());
    if sha256 != checked.sha256 {
        bail!("the file changed while importing; nothing was imported");
    }
    if !present.is_empty() {
        drop(tx);
        admin_event(
            &mut audit,
            json!({"event": "import_refused", "present": present, "file_sha256": sha256}),
        )?;
        return Ok(refuse("ids are already in the store", &present));
    }
    let mut detail = json!({"event": "import", "rows": ids.len(), "ids": ids,
        "resealed": resealed, "file_sha256": sha256, "source_engine": header.source_engine,
        "operator_uid": crate::fsafe::current_uid()});
    detail["format_version"] = json!(header.version);
    let event = NewEvent {
        principal: Some("operator"),
        ..NewEvent::new(Kind::Admin, detail)
    };
    tx.commit(&mut audit, &event).map_err(|e| e.error)?;
    println!(
        "imported {} rows ({} re-sealed with the active key), sha256 {sha256}",
        ids.len(),
        resealed.len()
    );
    Ok(ExitCode::SUCCESS)
}
