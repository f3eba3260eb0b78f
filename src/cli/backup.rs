//! `memwarden backup --out DIR` and `memwarden restore --from DIR`.
//!
//! Backup copies both databases with SQLite's online backup API while servers keep running —
//! memory.db first, then audit.db, so every entry in the copy has its audit event — then
//! verifies the copy (integrity_check, every seal, the chain) and only then writes a manifest
//! (file SHA-256s, entry count, audit head). Restore verifies all of that again, refuses a
//! damaged backup, and renames the files into place. Stop the service before restoring.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::DataDirArg;
use super::review::admin_event;
use crate::audit::{self, AuditLog};
use crate::store::Store;
use crate::store::keyring::Keyring;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Directory to write the backup into (created; must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// A directory written by `memwarden backup`.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
}

/// What a backup holds, written last.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    version: u32,
    created_at: String,
    memwarden_version: String,
    /// File name → SHA-256 (hex).
    files: std::collections::BTreeMap<String, String>,
    entries: u64,
    audit_head: String,
}

const FILES: [&str; 2] = ["memory.db", "audit.db"];

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn copy_online(from: &Path, to: &Path) -> anyhow::Result<()> {
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(Duration::from_secs(10))?;
    let mut dst = Connection::open(to)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // Small steps let writers in between; a step that meets a write restarts cleanly.
        backup.run_to_completion(256, Duration::from_millis(1), None)?;
    }
    // A self-contained file: no WAL beside it.
    let _: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    dst.close().map_err(|(_, e)| e)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Everything that must hold for a backup directory; returns (entries, audit head).
fn verify_copy(dir: &Path, keyring: &Keyring) -> anyhow::Result<(u64, String)> {
    for f in FILES {
        let conn = Connection::open_with_flags(dir.join(f), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "{f}: integrity_check says {check}");
    }
    let store = Store::open_read_only(&dir.join("memory.db"), keyring.entry.clone())?;
    let report = store.verify_all()?;
    anyhow::ensure!(
        report.failed.is_empty(),
        "memory.db: {} entries do not verify (first: {})",
        report.failed.len(),
        report.failed[0]
    );
    anyhow::ensure!(
        report.ledger.problems.is_empty(),
        "memory.db: {}",
        report.ledger.problems.join("; ")
    );
    let conn = audit::open_ro(&dir.join("audit.db"))?;
    let chain = audit::verify::verify(&conn, Some(&keyring.audit), None)?;
    if let Some(damage) = chain.damage {
        anyhow::bail!("audit.db: {damage}");
    }
    Ok((report.checked, chain.head.to_string()))
}

/// Appends an admin event to the data dir's (live) audit log.
fn record(
    dir: &crate::config::DataDir,
    keyring: &Keyring,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let mut log = AuditLog::open(
        &dir.audit_db(),
        keyring.audit.clone(),
        Duration::from_secs(10),
    )?;
    admin_event(&mut log, detail)
}

pub fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let out = &args.out;
    if out.exists() && fs::read_dir(out)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", out.display());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out)?;
    copy_online(&dir.memory_db(), &out.join("memory.db"))?;
    copy_online(&dir.audit_db(), &out.join("audit.db"))?;
    let (entries, audit_head) = verify_copy(out, &keyring)?;
    let mut files = std::collections::BTreeMap::new();
    for f in FILES {
        files.insert(f.to_string(), sha256_file(&out.join(f))?);
    }
    let manifest = Manifest {
        version: 1,
        created_at: crate::tools::format_ms(crate::tools::now_ms()),
        memwarden_version: env!("CARGO_PKG_VERSION").into(),
        files,
        entries,
        audit_head,
    };
    let mut f = fs::File::create(out.join("manifest.json"))?;
    f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    f.sync_all()?;
    record(
        &dir,
        &keyring,
        json!({"event": "backup", "entries": manifest.entries, "audit_head": manifest.audit_head, "files": manifest.files}),
    )?;
    println!(
        "backup verified: {} entries, audit head {}",
        manifest.entries, manifest.audit_head
    );
    Ok(ExitCode::SUCCESS)
}

pub fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let from = &args.from;
    let manifest: Manifest = serde_json::from_str(&fs::read_to_string(from.join("manifest.json"))?)
        .map_err(|e| anyhow::anyhow!("manifest.json: {e}"))?;
    for f in FILES {
        let want = manifest
            .files
            .get(f)
            .ok_or_else(|| anyhow::anyhow!("manifest lists no {f}"))?;
        let got = sha256_file(&from.join(f))?;
        anyhow::ensure!(
            &got == want,
            "refusing: {f} does not match the manifest (SHA-256 {got}, manifest {want})"
        );
    }
    let (entries, head) = verify_copy(from, &keyring)
        .map_err(|e| anyhow::anyhow!("refusing a damaged backup: {e}"))?;
    anyhow::ensure!(
        entries == manifest.entries && head == manifest.audit_head,
        "refusing: the backup holds {entries} entries and head {head}, the manifest says {} and {}",
        manifest.entries,
        manifest.audit_head
    );
    // Stage beside the live files, then rename: each file is replaced whole or not at all.
    for f in FILES {
        let staged = dir.root().join(format!(".{f}.restore"));
        fs::copy(from.join(f), &staged)?;
        fs::File::open(&staged)?.sync_all()?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
    }
    for f in FILES {
        let live = dir.root().join(f);
        // A WAL left from the old file would be replayed into the new one.
        for side in ["-wal", "-shm"] {
            let mut p = live.as_os_str().to_owned();
            p.push(side);
            let _ = fs::remove_file(PathBuf::from(p));
        }
        fs::rename(dir.root().join(format!(".{f}.restore")), &live)?;
    }
    fs::File::open(dir.root())?.sync_all()?;
    record(
        &dir,
        &keyring,
        json!({"event": "restore", "entries": entries, "audit_head": head}),
    )?;
    println!("restored {entries} entries, audit head {head}");
    Ok(ExitCode::SUCCESS)
}
