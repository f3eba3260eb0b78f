//! `memwarden audit verify|query|head|export|checkpoint|witness|public-key`: the auditor's
//! tools. They open audit.db read-only, need no memory.db, and work on a copy in a read-only
//! directory; with the public key, they need no secret at all.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use crate::audit::checkpoint::{Checkpoint, Verifiers};
use crate::audit::query::{self, Event, Filter};
use crate::audit::verify::{self, parse_head};
use crate::audit::{self as audit_db, append::head};
use crate::keys::Keyring;

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
        /// The audit signing public keys (the data dir's audit-signing.pub, one C2SP vkey a
        /// line): every checkpoint event's signature is checked; no keyring is needed.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// A signed checkpoint kept elsewhere (`memwarden audit checkpoint`): the log must match
        /// it at its seq. Repeatable; needs --public-key.
        #[arg(long, value_name = "FILE", requires = "public_key")]
        checkpoint: Vec<PathBuf>,
    },
    /// Print the latest signed checkpoint (a C2SP signed note) to keep off this host.
    Checkpoint {
        #[command(flatten)]
        source: Source,
    },
    /// Print the audit signing public keys of the data dir's keyring (C2SP vkey lines), as
    /// `init` writes them to audit-signing.pub.
    PublicKey {
        #[command(flatten)]
        data_dir: super::DataDirArg,
    },
    /// Keep a signed checkpoint in a state file, accepting a new one only if it extends the
    /// kept one: same log, no smaller seq, and (with --db) a log consistent with both. Refuses
    /// a fork or a rollback (exit 1). For a cron job or a timer on another host.
    Witness {
        /// The audit signing public keys.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Where the last accepted checkpoint is kept (created on first use).
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// A copy of (or read access to) the audit.db the checkpoints are of: the history
        /// between the kept checkpoint and the new one is checked.
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// The new checkpoint (a file holding the signed note).
        checkpoint: PathBuf,
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
        /// session_start, call, session_end, security, admin or checkpoint.
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
            public_key,
            checkpoint,
        } => verify_cmd(
            source,
            keyring.as_ref(),
            expect_head.as_deref(),
            public_key.as_ref(),
            checkpoint,
        ),
        AuditCommand::Checkpoint { source } => {
            let conn = audit_db::open_ro(&source.path()?)?;
            match latest_checkpoint(&conn)? {
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
        AuditCommand::PublicKey { data_dir } => {
            let keyring = data_dir.open()?.open_keyring()?;
            let Some(signing) = keyring.audit_signing else {
                anyhow::bail!(
                    "the keyring has no audit signing key; add one with `memwarden keys rotate \
                     --audit-signing`"
                );
            };
            for signer in crate::audit::checkpoint::signers(&signing) {
                println!("{}", signer.vkey());
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Witness {
            public_key,
            state,
            db,
            checkpoint,
        } => witness_cmd(public_key, state, db.as_deref(), checkpoint),
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

/// The largest public key or checkpoint file read.
const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// Reads a small text file an auditor was handed (a public key file, a checkpoint), bounded.
pub(crate) fn read_small(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_INPUT_BYTES,
        "{what} {}: larger than {MAX_INPUT_BYTES} bytes",
        path.display()
    );
    Ok(text)
}

/// Reads a public key file (C2SP vkey lines).
pub(crate) fn read_verifiers(path: &std::path::Path) -> anyhow::Result<Verifiers> {
    Verifiers::parse(&read_small(path, "public key file")?)
        .map_err(|e| anyhow::anyhow!("public key file {}: {e}", path.display()))
}

/// Reads and opens a signed checkpoint file with `verifiers`.
pub(crate) fn read_checkpoint(
    path: &std::path::Path,
    verifiers: &Verifiers,
) -> anyhow::Result<(Checkpoint, String)> {
    let note = read_small(path, "checkpoint")?;
    let (cp, _) = verifiers
        .open(&note)
        .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
    Ok((cp, note))
}

/// The note of the newest checkpoint event, if any.
fn latest_checkpoint(conn: &rusqlite::Connection) -> anyhow::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    let detail: Option<String> = conn
        .query_row(
            "SELECT detail FROM events WHERE kind = 'checkpoint' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(detail) = detail else {
        return Ok(None);
    };
    let detail: serde_json::Value = serde_json::from_str(&detail)?;
    let note = detail
        .get("note")
        .and_then(|n| n.as_str())
        .ok_or_else(|| anyhow::anyhow!("the latest checkpoint event holds no note"))?;
    Ok(Some(note.to_string()))
}

fn verify_cmd(
    source: &Source,
    keyring: Option<&PathBuf>,
    expect_head: Option<&str>,
    public_key: Option<&PathBuf>,
    checkpoint_files: &[PathBuf],
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
    // With --public-key the audit key is optional: an auditor needs no secret.
    let keyring_path = match (keyring, &source.db) {
        (Some(k), _) => Some(k.clone()),
        (None, None) if public_key.is_none() => {
            Some(source.data_dir.resolve()?.join("keyring.toml")).filter(|p| p.exists())
        }
        (None, _) => None,
    };
    let keys = keyring_path.map(|p| Keyring::load_audit(&p)).transpose()?;
    let expect = expect_head
        .map(|h| parse_head(h).ok_or_else(|| anyhow::anyhow!("--expect-head must be SEQ:HASH (64 hex digits), as printed by `memwarden audit head`")))
        .transpose()?;
    let verifiers = public_key.map(|p| read_verifiers(p)).transpose()?;
    let mut external = Vec::new();
    if let Some(v) = &verifiers {
        for file in checkpoint_files {
            external.push(read_checkpoint(file, v)?.0);
        }
    }
    let checks = verify::Checks {
        keys: keys.as_ref(),
        expect: expect.as_ref(),
        verifiers: verifiers.as_ref(),
        external: &external,
    };
    let report = verify::verify_with(&conn, &checks)?;
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
            if verifiers.is_some() {
                match report.last_checkpoint {
                    Some((at, covers)) => println!(
                        "checkpoints: {} signatures verified; the last (event {at}) signs seq \
                         {covers}; {} events after it are not yet signed",
                        report.checkpoints,
                        report.head.seq - at
                    ),
                    None => println!(
                        "checkpoints: NONE in this log: nothing in it is signed (a keyring \
                         without an audit signing key, or a log rewritten without them)"
                    ),
                }
                if !external.is_empty() {
                    println!(
                        "{} checkpoint(s) kept elsewhere match the log",
                        external.len()
                    );
                }
            }
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
        "operator_uid": crate::fsafe::current_uid(),
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

/// `memwarden audit witness`: see [`crate::audit::witness`]. The state file is read and
/// replaced under a lock beside it (two runs never interleave), without following links, and
/// atomically (a temp file, fsynced, renamed over it).
fn witness_cmd(
    public_key: &std::path::Path,
    state: &std::path::Path,
    db: Option<&std::path::Path>,
    new_file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use crate::audit::witness::{Decision, decide};
    use crate::fsafe::Dir;
    use std::io::Read;

    let verifiers = read_verifiers(public_key)?;
    let (new, new_note) = read_checkpoint(new_file, &verifiers)?;
    let name = state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow::anyhow!("--state {}: not a file name", state.display()))?;
    let parent = match state.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let dir = Dir::open(parent)?;
    let _lock = dir.lock_exclusive(&format!(".{name}.lock"))?;
    let kept = match dir.entry(&name)? {
        None => None,
        Some(_) => {
            let mut text = String::new();
            dir.open_file(&name)?
                .take(MAX_INPUT_BYTES + 1)
                .read_to_string(&mut text)?;
            // The kept checkpoint is checked like a new one: an edited state file is refused,
            // never trusted.
            let (cp, _) = verifiers.open(&text).map_err(|e| {
                anyhow::anyhow!("state file {}: {e}; refusing to continue", state.display())
            })?;
            Some(cp)
        }
    };
    let decision = match decide(kept.as_ref(), &new) {
        Ok(d) => d,
        Err(refusal) => {
            println!("REFUSED: {refusal}");
            return Ok(ExitCode::from(1));
        }
    };
    let checked = match db {
        Some(db) => {
            // Links and hashes of the whole log, then both checkpoints against it: the kept
            // one's hash must be the chain hash at its seq in the history that leads to the new.
            let conn = audit_db::open_ro(db)?;
            let external: Vec<Checkpoint> = kept.iter().cloned().chain([new.clone()]).collect();
            let report = verify::verify_with(
                &conn,
                &verify::Checks {
                    verifiers: Some(&verifiers),
                    external: &external,
                    ..verify::Checks::default()
                },
            )?;
            if let Some(damage) = report.damage {
                println!(
                    "REFUSED: the log is not consistent with the checkpoints: at seq {}: {damage}",
                    damage.seq
                );
                return Ok(ExitCode::from(1));
            }
            "; the log between them verifies"
        }
        None => "; history NOT checked (no --db)",
    };
    match decision {
        Decision::Same => {
            println!("unchanged: {} at seq {}", new.origin, new.size);
            return Ok(ExitCode::SUCCESS);
        }
        Decision::First => println!(
            "accepted the first checkpoint of {} at seq {}{checked}",
            new.origin, new.size
        ),
        Decision::Extends { from } => println!(
            "accepted: {} from seq {from} to seq {}{checked}",
            new.origin, new.size
        ),
    }
    replace_file(&dir, &name, new_note.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Replaces `name` in `dir` atomically: a new 0600 temp file (exclusive, no-follow), fsynced,
/// renamed over `name`, the directory fsynced.
fn replace_file(dir: &crate::fsafe::Dir, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple());
    let mut f = dir.create_new(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    let renamed = match written {
        Ok(()) => dir.rename(&tmp, name).map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = renamed {
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    dir.sync()?;
    Ok(())
}

/// The public key file handed to auditors, in the data dir.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";

/// Writes `vkeys` into the data dir's audit-signing.pub, keeping every line already there (old
/// public keys keep verifying old checkpoints): atomically, without following links.
pub(crate) fn write_public_keys(dir: &crate::fsafe::Dir, vkeys: &[String]) -> anyhow::Result<()> {
    use std::io::Read;
    let mut lines: Vec<String> = Vec::new();
    if dir.entry(PUBLIC_KEY_FILE)?.is_some() {
        let mut text = String::new();
        dir.open_file(PUBLIC_KEY_FILE)?
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)?;
        lines.extend(text.lines().map(str::to_string));
    }
    if lines.is_empty() {
        lines.push(
            "# memwarden audit signing public keys (C2SP vkey): give this file to auditors".into(),
        );
    }
    for vkey in vkeys {
        if !lines.iter().any(|l| l.trim() == vkey) {
            lines.push(vkey.clone());
        }
    }
    replace_file(dir, PUBLIC_KEY_FILE, (lines.join("\n") + "\n").as_bytes())
}
