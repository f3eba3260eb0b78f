//! `memwarden backup --out DIR` and `memwarden restore --from DIR`.
//!
//! Backup copies both databases with SQLite's online backup API while servers keep running —
//! memory.db first, then audit.db, so every entry in the copy has its audit event — then
//! verifies the copy (integrity_check, every seal, the chain) and only then writes a manifest
//! (file SHA-256s, entry count, audit head). Restore verifies all of that again, refuses a
//! damaged backup, and renames the files into place. Stop the service before restoring.
//!
//! Every file either command writes is created through [`crate::fsafe`]: exclusively, without
//! following links, 0600, and in a data dir owned like the dir — root running `restore` must
//! not write through a link the service user planted.

use std::fs;
use std::io::{Read, Write};
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
use crate::fsafe::Dir;
use crate::store::Store;
use crate::store::keyring::Keyring;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// Directory to write the backup into: created 0700, or an existing empty directory of
    /// ours with mode 0700. A symbolic link is refused.
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

/// SHA-256 of what a reader yields, as hex.
fn sha256_of(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Copies a live database into `out/name` with SQLite's online backup API. The file is created
/// empty by us first (exclusive, no-follow, 0600); SQLite only opens it, without following links.
fn copy_online(from: &Path, out: &Dir, name: &str) -> anyhow::Result<()> {
    let src = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    src.busy_timeout(Duration::from_secs(10))?;
    drop(out.create_new(name)?);
    let mut dst = Connection::open_with_flags(
        out.join(name),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // Small steps let writers in between; a step that meets a write restarts cleanly.
        backup.run_to_completion(256, Duration::from_millis(1), None)?;
    }
    // A self-contained file: no WAL beside it.
    let _: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    dst.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// Everything that must hold for a pair of database copies; returns (entries, audit head).
fn verify_copy(memory: &Path, audit_db: &Path, keyring: &Keyring) -> anyhow::Result<(u64, String)> {
    for (f, path) in [("memory.db", memory), ("audit.db", audit_db)] {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )?;
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        anyhow::ensure!(check == "ok", "{f}: integrity_check says {check}");
    }
    let store = Store::open_read_only(memory, keyring.entry.clone())?;
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
    let conn = audit::open_ro(audit_db)?;
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

/// The backup directory: created 0700, or an existing one only if it is exactly what we would
/// have created — a real directory (not a link), ours, mode 0700, empty. Anything looser could
/// let another uid read the copy of every memory, or swap files between our write and our
/// verify; we refuse rather than chmod a directory the operator made.
fn backup_dir(out: &Path) -> anyhow::Result<Dir> {
    let (dir, created) = Dir::create(out)?;
    if created {
        return Ok(dir);
    }
    let meta = dir.meta();
    let uid = crate::store::keyring::current_uid();
    let shown = out.display();
    anyhow::ensure!(
        meta.uid == uid,
        "--out {shown} exists and is owned by uid {}, not this process's uid {uid}; \
         give a new path (it is created 0700)",
        meta.uid
    );
    anyhow::ensure!(
        meta.mode == 0o700,
        "--out {shown} exists with mode {:04o}; a backup holds every memory: give a new path \
         (it is created 0700) or chmod 700 it",
        meta.mode
    );
    anyhow::ensure!(
        dir.names()?.is_empty(),
        "--out {shown} exists and is not empty"
    );
    Ok(dir)
}

pub fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let out = backup_dir(&args.out)?;
    copy_online(&dir.memory_db(), &out, "memory.db")?;
    copy_online(&dir.audit_db(), &out, "audit.db")?;
    let (entries, audit_head) =
        verify_copy(&out.join("memory.db"), &out.join("audit.db"), &keyring)?;
    let mut files = std::collections::BTreeMap::new();
    for f in FILES {
        files.insert(f.to_string(), sha256_of(out.open_file(f)?)?);
    }
    let manifest = Manifest {
        version: 1,
        created_at: crate::tools::format_ms(crate::tools::now_ms()),
        memwarden_version: env!("CARGO_PKG_VERSION").into(),
        files,
        entries,
        audit_head,
    };
    let mut f = out.create_new("manifest.json")?;
    f.write_all(serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    f.sync_all()?;
    out.sync()?;
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

/// Name of a database staged for restore, beside the live one.
fn staged(f: &str) -> String {
    format!(".{f}.restore")
}

/// Removes staged copies and anything SQLite left beside them. Unlinking a link removes the
/// link, never its target.
fn remove_staged(data: &Dir) -> anyhow::Result<()> {
    for f in FILES {
        for side in ["", "-journal", "-wal", "-shm"] {
            data.remove(&format!("{}{side}", staged(f)))?;
        }
    }
    Ok(())
}

/// Copies each backup file into a new staged file in the data dir, hashing what it copies, and
/// checks the hashes against the manifest. The staged copies are what is verified and renamed
/// into place, so a backup changed after these reads changes nothing.
fn stage(from: &Path, manifest: &Manifest, data: &Dir) -> anyhow::Result<()> {
    for f in FILES {
        let want = manifest
            .files
            .get(f)
            .ok_or_else(|| anyhow::anyhow!("manifest lists no {f}"))?;
        let mut src = fs::File::open(from.join(f))?;
        let mut dst = data.create_new(&staged(f))?;
        let got = sha256_of(Tee {
            inner: &mut src,
            copy: &mut dst,
        })?;
        anyhow::ensure!(
            &got == want,
            "refusing: {f} does not match the manifest (SHA-256 {got}, manifest {want})"
        );
        dst.sync_all()?;
    }
    Ok(())
}

/// A reader that writes what it reads to `copy`.
struct Tee<'a> {
    inner: &'a mut fs::File,
    copy: &'a mut fs::File,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

pub fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let data = dir.open_dir()?;
    let from = &args.from;
    let manifest: Manifest = serde_json::from_str(&fs::read_to_string(from.join("manifest.json"))?)
        .map_err(|e| anyhow::anyhow!("manifest.json: {e}"))?;
    // Stale staged files of ours (or links planted under their names) go first.
    remove_staged(&data)?;
    let checked = stage(from, &manifest, &data).and_then(|()| {
        let (entries, head) = verify_copy(
            &data.join(&staged("memory.db")),
            &data.join(&staged("audit.db")),
            &keyring,
        )
        .map_err(|e| anyhow::anyhow!("refusing a damaged backup: {e}"))?;
        anyhow::ensure!(
            entries == manifest.entries && head == manifest.audit_head,
            "refusing: the backup holds {entries} entries and head {head}, the manifest says {} and {}",
            manifest.entries,
            manifest.audit_head
        );
        Ok((entries, head))
    });
    let (entries, head) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = remove_staged(&data);
            return Err(e);
        }
    };
    // Each file is replaced whole or not at all, by a rename within the data dir's fd.
    for f in FILES {
        // A WAL left from the old file would be replayed into the new one.
        for side in ["-wal", "-shm"] {
            data.remove(&format!("{f}{side}"))?;
        }
        data.rename(&staged(f), f)?;
    }
    data.sync()?;
    remove_staged(&data)?;
    record(
        &dir,
        &keyring,
        json!({"event": "restore", "entries": entries, "audit_head": head}),
    )?;
    println!("restored {entries} entries, audit head {head}");
    Ok(ExitCode::SUCCESS)
}
