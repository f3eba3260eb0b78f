//! `backup` and `restore` with `--store postgres`: the same backup format as on SQLite — a
//! memory.db and an audit.db, verified, and a manifest MAC'd with the audit key — so a backup
//! restores into either engine.
//!
//! Backup reads the database in one read-only REPEATABLE READ transaction (one consistent
//! snapshot, while servers on every host keep writing) and writes the rows, ledger, session
//! starts and chain verbatim into the two files ([`super::transfer`]); then verifies and signs
//! them exactly as an SQLite backup is. Restore checks the manifest's MAC, stages and verifies
//! the files as the SQLite restore does, and loads them into an empty database: PostgreSQL's
//! append-only audit grants mean a live chain is never replaced, so a restore goes into a new
//! database (`memwarden db init`), and its event there names the backup's head.

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;

use super::backup::{
    BackupArgs, FILES, RestoreArgs, backup_dir, read_manifest_text, remove_staged, stage, staged,
    verify_and_sign, verify_copy,
};
use super::manifest::read_manifest;
use super::review::admin_event;
use super::transfer::{Chain, Plan, Side, copy};
use crate::audit::sink::Sink;
use crate::fsafe::Dir;
use crate::keys::Keyring;
use crate::pgconn::DatabaseSettings;
use crate::store::{Store, StoreOptions};

fn postgres_side(settings: &DatabaseSettings, keyring: &Keyring) -> anyhow::Result<Side> {
    let backend = crate::store::postgres::Postgres::connect(settings, keyring.audit.clone())?;
    Ok(Side {
        engine: "postgres",
        store: Store::with_backend(Box::new(backend), keyring.entry.clone()),
        chain: Chain::Postgres(Box::new(settings.clone())),
    })
}

fn event(
    settings: &DatabaseSettings,
    keyring: &Keyring,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let log = crate::audit::pg_log::PgLog::connect(settings, keyring.audit.clone())?;
    admin_event(&mut Sink::Postgres(log), detail)
}

/// Writes a verified backup of the PostgreSQL store into `args.out`.
pub(super) fn backup(args: &BackupArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let settings = args.store.insecure.load(&args.store.database_file()?)?;
    let out = backup_dir(&args.out)?;
    let source = postgres_side(&settings, &keyring)?;
    {
        for f in FILES {
            out.create_new(f)?;
        }
        let mut target = Side {
            engine: "sqlite",
            store: Store::open(
                &out.join("memory.db"),
                keyring.entry.clone(),
                StoreOptions::default(),
            )?,
            chain: Chain::File(out.join("audit.db")),
        };
        let plan = Plan::for_target(&source, &target)?;
        copy(
            &source,
            &mut target,
            plan,
            &indicatif::ProgressBar::hidden(),
        )
        .context("copying the snapshot")?;
        // Dropped here: each file closes, its WAL folded in, before it is hashed.
    }
    let manifest = verify_and_sign(&out, &keyring)?;
    event(
        &settings,
        &keyring,
        json!({"event": "backup", "entries": manifest.entries, "audit_head": manifest.audit_head,
               "files": manifest.files, "snapshot": "repeatable read"}),
    )?;
    println!(
        "backup verified: {} entries, audit head {}",
        manifest.entries, manifest.audit_head
    );
    Ok(ExitCode::SUCCESS)
}

/// Loads a verified backup into an empty PostgreSQL database.
pub(super) fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    let settings = args.store.insecure.load(&args.store.database_file()?)?;
    let data = dir.open_dir()?;
    // Shared, like every command that writes in the data dir: a restore of its own files
    // (SQLite) cannot run meanwhile and swap the staging names under this one.
    let _lock = dir.lock_shared()?;
    let from_dir = Dir::open(&args.from)?;
    let manifest = read_manifest(&read_manifest_text(&from_dir)?, &keyring.audit)?;
    let mut target = postgres_side(&settings, &keyring)?;
    if target.tail()?.is_some() || target.store.copied()?.entries > 0 {
        bail!(
            "refusing: the database is not empty; PostgreSQL keeps audit events append-only, so \
             a restore goes into a new database: create one and run `memwarden db init` on it"
        );
    }
    // The staged copies, not the backup itself, are verified and loaded: a backup changed
    // after these reads changes nothing.
    remove_staged(&data)?;
    let loaded = stage(&from_dir, &manifest, &data).and_then(|()| {
        let (memory, audit_db) = (
            data.join(&staged("memory.db")),
            data.join(&staged("audit.db")),
        );
        let (entries, head) = verify_copy(&memory, &audit_db, &keyring)
            .map_err(|e| anyhow::anyhow!("refusing a damaged backup: {e}"))?;
        anyhow::ensure!(
            entries == manifest.entries && head == manifest.audit_head,
            "refusing: the backup holds {entries} entries and head {head}, the manifest says {} and {}",
            manifest.entries,
            manifest.audit_head
        );
        let source = Side {
            engine: "sqlite",
            store: Store::open_read_only(&memory, keyring.entry.clone())?,
            chain: Chain::File(audit_db),
        };
        let plan = Plan::for_target(&source, &target)?;
        copy(&source, &mut target, plan, &indicatif::ProgressBar::hidden())
            .context("loading the backup")?;
        Ok((entries, head))
    });
    let _ = remove_staged(&data);
    let (entries, head) = loaded?;
    event(
        &settings,
        &keyring,
        json!({"event": "restore", "entries": entries, "audit_head": head,
               "replaced_audit_head": null}),
    )?;
    println!("restored {entries} entries into PostgreSQL, audit head {head}");
    Ok(ExitCode::SUCCESS)
}
