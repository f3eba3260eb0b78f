//! `memwarden backup --out DIR` and `memwarden restore --from DIR`.
//!
//! Backup copies both databases with SQLite's online backup API while servers keep running —
//! memory.db first, then audit.db, so every entry in the copy has its audit event — then
//! verifies the copy (integrity_check, every seal, the chain) and only then writes a manifest
//! (file SHA-256s, entry count, audit head), MAC'd with the audit key. Restore checks the MAC
//! first — the SHA-256s alone prove nothing, anyone can recompute them — then verifies
//! everything again (including that each database holds only the schema objects our migrations
//! create), refuses a damaged backup, keeps the audit.db it replaces beside it, and renames the
//! files into place. It holds the data dir's lock exclusively throughout, so it refuses while
//! any session or command runs (see [`crate::datalock`]): stop the service first.
//!
//! Every file either command writes is created through [`crate::fsafe`]: exclusively, without
//! following links, 0600, and in a data dir owned like the dir — root running `restore` must
//! not write through a link the service user planted.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::sqlite_file::snapshot::{self, Snapshots};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::DataDirArg;
use super::manifest::{MANIFEST_VERSION, Manifest, read_manifest, sign_manifest};
use super::review::admin_event;
use crate::audit::{self, AuditLog};
use crate::datalock::DataLock;
use crate::fsafe::Dir;
use crate::keys::Keyring;
use crate::store::Store;

/// `memwarden backup`'s arguments.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The store: SQLite (the data dir's files) or PostgreSQL (one snapshot of the database).
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
    /// Directory to write the backup into: created 0700, or an existing empty directory of
    /// ours with mode 0700. A symbolic link is refused.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// `memwarden restore`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The store to restore into: the data dir's files, or an empty PostgreSQL database.
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
    /// A directory written by `memwarden backup`.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
}

pub(super) const FILES: [&str; 2] = ["memory.db", "audit.db"];

/// SHA-256 of what a reader yields, as hex.
pub(super) fn sha256_of(mut r: impl Read) -> std::io::Result<String> {
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

/// Everything that must hold for a pair of database copies; returns (entries, audit head).
pub(super) fn verify_copy(
    memory: &Path,
    audit_db: &Path,
    keyring: &Keyring,
) -> anyhow::Result<(u64, String)> {
    for (f, path) in [("memory.db", memory), ("audit.db", audit_db)] {
        snapshot::integrity_check(path).map_err(|e| anyhow::anyhow!("{f}: {e}"))?;
    }
    // Streams (memory does not grow with the store: a backup job runs under MemoryMax).
    let store = Store::open_read_only(memory, keyring.entry.clone())?;
    let report = store.digest()?;
    anyhow::ensure!(
        report.failed.is_empty(),
        "memory.db: {} entries do not verify (first: {})",
        report.failed_count,
        report.failed[0]
    );
    anyhow::ensure!(
        report.ledger_problems.is_empty(),
        "memory.db: {}",
        report.ledger_problems.join("; ")
    );
    let chain = audit::AuditReader::open(audit_db)?.verify(&audit::verify::Checks {
        keys: Some(&keyring.audit),
        ..audit::verify::Checks::default()
    })?;
    if let Some(damage) = chain.damage {
        anyhow::bail!("audit.db: {damage}");
    }
    Ok((report.entries, chain.head.to_string()))
}

/// Appends an admin event to the data dir's (live) audit log.
fn record(
    dir: &crate::config::DataDir,
    keyring: &Keyring,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let log = AuditLog::open(&dir.audit_db(), keyring.audit.clone())?;
    admin_event(&mut log.into(), detail)
}

/// The backup directory: created 0700, or an existing one only if it is exactly what we would
/// have created — a real directory (not a link), ours, mode 0700, empty. Anything looser could
/// let another uid read the copy of every memory, or swap files between our write and our
/// verify; we refuse rather than chmod a directory the operator made.
pub(super) fn backup_dir(out: &Path) -> anyhow::Result<Dir> {
    let (dir, created) = Dir::create(out)?;
    if created {
        return Ok(dir);
    }
    let meta = dir.meta();
    let uid = crate::fsafe::current_uid();
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

/// Writes a verified, consistent backup of both databases.
pub fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    if args.store.kind == super::serve::StoreKind::Postgres {
        return super::backup_pg::backup(args);
    }
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let out = backup_dir(&args.out)?;
    // Shared: sessions keep running; a restore cannot swap files under the copy.
    let _lock = dir.lock_shared()?;
    if let Some(why) = audit::vanished_chain(&dir.audit_db())? {
        return Err(audit::AuditError::ChainMissing { why }.into());
    }
    let snapshots =
        Snapshots::pin(&dir.memory_db(), &dir.audit_db()).map_err(anyhow::Error::from_boxed)?;
    snapshots.copy_to(&out).map_err(anyhow::Error::from_boxed)?;
    drop(snapshots);
    let manifest = verify_and_sign(&out, &keyring)?;
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

/// Verifies the two files a backup wrote into `out`, then writes their manifest (SHA-256s, the
/// entry count and audit head the check found), MAC'd with the active audit key, and syncs.
pub(super) fn verify_and_sign(out: &Dir, keyring: &Keyring) -> anyhow::Result<Manifest> {
    let (entries, audit_head) =
        verify_copy(&out.join("memory.db"), &out.join("audit.db"), keyring)?;
    let mut files = std::collections::BTreeMap::new();
    for f in FILES {
        files.insert(f.to_string(), sha256_of(out.open_file(f)?)?);
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        created_at: crate::clock::format_ms(crate::clock::now_ms()),
        memwarden_version: env!("CARGO_PKG_VERSION").into(),
        files,
        entries,
        audit_head,
        mac_key: keyring.audit.active().0.to_string(),
    };
    let mut f = out.create_new("manifest.json")?;
    f.write_all(sign_manifest(&manifest, &keyring.audit)?.as_bytes())?;
    f.sync_all()?;
    out.sync()?;
    Ok(manifest)
}

/// The backup's manifest, read without following a link, at most 1 MiB.
pub(super) fn read_manifest_text(from: &Dir) -> anyhow::Result<String> {
    let mut text = String::new();
    from.open_file("manifest.json")?
        .take(1 << 20)
        .read_to_string(&mut text)?;
    Ok(text)
}

pub(super) fn staged(f: &str) -> String {
    format!(".{f}.restore")
}

/// Removes staged copies and anything SQLite left beside them. Unlinking a link removes the
/// link, never its target.
pub(super) fn remove_staged(data: &Dir) -> anyhow::Result<()> {
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
pub(super) fn stage(from: &Dir, manifest: &Manifest, data: &Dir) -> anyhow::Result<()> {
    for f in FILES {
        let want = manifest
            .files
            .get(f)
            .ok_or_else(|| anyhow::anyhow!("manifest lists no {f}"))?;
        // Never through a link planted in the backup: restore runs as root, and a link to a
        // root-only file would be read (and its digest compared) otherwise.
        let mut src = from.open_file(f)?;
        let mut dst = data.create_new(&staged(f))?;
        let got = sha256_of(Tee {
            inner: &mut src,
            copy: &mut dst,
        })?;
        anyhow::ensure!(
            &got == want,
            "refusing: {f} does not match the manifest's SHA-256"
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

/// Verifies a backup and puts it in place, keeping the replaced audit log.
pub fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.store.kind == super::serve::StoreKind::Postgres {
        return super::backup_pg::restore(args);
    }
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let data = dir.open_dir()?;
    // Exclusive, before anything is read or staged, until the restore event is written: no
    // session or command runs meanwhile, and none starts (a session started by socket
    // activation waits for the lock, then opens the restored files).
    let _lock = DataLock::exclusive(&data)?;
    let from = &args.from;
    let from_dir = Dir::open(from)?;
    let manifest = read_manifest(&read_manifest_text(&from_dir)?, &keyring.audit)?;
    // Stale staged files of ours (or links planted under their names) go first.
    remove_staged(&data)?;
    let checked = stage(&from_dir, &manifest, &data).and_then(|()| {
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
    // The audit.db being replaced is evidence (it may hold events the backup does not): keep
    // it beside the new one, and name its head in the restore event, which links the two.
    let replaced = set_aside_audit(&data)?;
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
        json!({
            "event": "restore",
            "entries": entries,
            "audit_head": head,
            "replaced_audit_head": replaced.as_ref().map(Replaced::head),
            "replaced_audit_kept_as": replaced.as_ref().map(|r| r.name.as_str()),
        }),
    )?;
    println!("restored {entries} entries, audit head {head}");
    if let Some(r) = &replaced {
        println!(
            "the replaced audit.db (head {}) is kept as {}",
            r.head(),
            data.join(&r.name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An audit.db moved aside by `restore` or `audit reset`.
#[derive(Debug)]
pub(crate) struct Replaced {
    /// Its new name in the data dir.
    pub name: String,
    /// Its head as SEQ:HASH, or why it could not be read.
    pub head: Result<String, String>,
}

impl Replaced {
    /// The kept audit log's chain head, or why it could not be read.
    pub fn head(&self) -> String {
        match &self.head {
            Ok(h) => h.clone(),
            Err(e) => format!("unreadable: {e}"),
        }
    }
}

/// Moves the data dir's audit.db (and its WAL) aside as `audit.db.replaced-<time>`, never
/// deleting it, and folds the WAL in so the kept file stands alone. `None` when there is no
/// audit.db. Renames stay within the data dir's fd; the file keeps its owner and 0600 mode
/// (checked by `open_dir`).
pub(crate) fn set_aside_audit(data: &Dir) -> anyhow::Result<Option<Replaced>> {
    if data.entry("audit.db")?.is_none() {
        return Ok(None);
    }
    let stamp = crate::clock::format_ms(crate::clock::now_ms()).replace(':', "");
    let name = format!("audit.db.replaced-{stamp}");
    for side in ["", "-wal", "-shm", "-journal"] {
        anyhow::ensure!(
            data.entry(&format!("{name}{side}"))?.is_none(),
            "{name}{side} already exists in the data dir; try again in a moment"
        );
    }
    // The WAL first: renamed with its database, SQLite replays it into the kept file.
    if data.entry("audit.db-wal")?.is_some() {
        data.rename("audit.db-wal", &format!("{name}-wal"))?;
    }
    data.rename("audit.db", &name)?;
    data.remove("audit.db-shm")?;
    data.sync()?;
    let head = fold_wal_and_read_head(&data.join(&name));
    Ok(Some(Replaced { name, head }))
}

/// Checkpoints a kept audit.db into a single file and reads its head.
fn fold_wal_and_read_head(path: &Path) -> Result<String, String> {
    crate::sqlite_file::snapshot::fold_wal(path)?;
    audit::inspect::head(path)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}
