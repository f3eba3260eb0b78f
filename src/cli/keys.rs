//! `memwarden keys list|rotate|retire` and `memwarden reseal`: key rotation. Rotation adds a new
//! active entry key (old rows keep verifying under theirs); reseal moves rows to the active key
//! in batches, resumably; a key still in use cannot be retired. Every change is audited.
//!
//! Each command holds the keyring's lock from reading the keyring to saving it, so two
//! commands can never interleave and lose a key; the audit event follows the save, so a save
//! that failed is never recorded as done.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::DataDirArg;
use super::review::admin_event;
use super::serve::StoreArgs;
use super::stores::Engine;
use crate::audit::sink::Sink;
use crate::keys::{KeySet, Keyring, KeyringLock};
use crate::store::Store;

/// `memwarden keys`'s arguments.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The store whose rows `list` counts and `retire` checks (the keyring is the data dir's
    /// on either engine).
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// What `memwarden keys` does.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List entry key ids (active first) and how many rows each seals.
    List,
    /// Add a new entry key and make it active. Running local-mode sessions pick it up at their
    /// next call; hardened-mode sessions read their credential at start.
    Rotate {
        /// Rotate (or, in a keyring made before checkpoints existed, create) the audit signing
        /// key instead, and add its public key to audit-signing.pub. Sessions sign with it from
        /// their next start; the old public key keeps verifying old checkpoints.
        #[arg(long)]
        audit_signing: bool,
    },
    /// Remove an entry key that no row uses any more.
    Retire { key_id: String },
}

/// `memwarden reseal`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ResealArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Rows per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// What a keys command works on: opened with the data dir's lock held shared (see
/// [`crate::datalock`]) and under the keyring's lock.
struct Opened {
    path: std::path::PathBuf,
    keyring: Keyring,
    store: Store,
    audit: Sink,
    _keyring_lock: KeyringLock,
    _data_lock: crate::datalock::DataLock,
}

fn open(args: &DataDirArg, store: &StoreArgs) -> anyhow::Result<Opened> {
    let engine = Engine::of(store)?;
    let dir = args.open()?;
    let data_lock = dir.lock_shared()?;
    // Every check runs first, so nothing is created in a dir that is refused: the data dir and
    // keyring, then the audit log (audit.db refuses a vanished chain before memory.db is
    // touched). Then the keyring's lock and the read under it: the keyring read is the one the
    // save replaces.
    let checked = dir.open_keyring()?;
    let audit = engine.audit(&dir, checked.audit)?;
    let keyring_lock = Keyring::lock(&dir.keyring())?;
    let keyring = dir.open_keyring()?;
    let store = engine.store(&dir, &keyring)?;
    Ok(Opened {
        path: dir.keyring(),
        keyring,
        store,
        audit,
        _keyring_lock: keyring_lock,
        _data_lock: data_lock,
    })
}

/// Lists, rotates or retires keys; every change is an admin event.
pub fn run(args: &KeysArgs) -> anyhow::Result<ExitCode> {
    // The locks are bound, not `..`-ed: unbound fields of a temporary drop at once.
    let Opened {
        path,
        mut keyring,
        store,
        mut audit,
        _keyring_lock,
        _data_lock,
    } = open(&args.data_dir, &args.store)?;
    match &args.command {
        KeysCommand::List => {
            for (i, id) in keyring.entry.ids().iter().enumerate() {
                let rows = store.rows_sealed_with(id)?;
                let active = if i == 0 { " (active)" } else { "" };
                println!("{id}{active}: {rows} rows");
            }
        }
        KeysCommand::Rotate {
            audit_signing: true,
        } => rotate_signing(args, &path, &mut keyring, &mut audit)?,
        KeysCommand::Rotate {
            audit_signing: false,
        } => {
            let old = keyring.entry.active().0.to_string();
            let new = keyring.entry.rotate("e")?;
            keyring.save(&path)?;
            admin_event(
                &mut audit,
                json!({"event": "key_rotate", "from": old, "to": new}),
            )?;
            println!(
                "entry key {new} is active; rows sealed with {old} still verify. Run `memwarden reseal` to move them."
            );
        }
        KeysCommand::Retire { key_id } => {
            if key_id == keyring.entry.active().0 {
                eprintln!("refusing: {key_id} is the active key; rotate first");
                return Ok(ExitCode::from(1));
            }
            let rows = store.rows_sealed_with(key_id)?;
            if rows > 0 {
                eprintln!(
                    "refusing: {rows} rows are still sealed with {key_id}; run `memwarden reseal` first"
                );
                return Ok(ExitCode::from(1));
            }
            if let Err(why) = keyring.entry.retire(key_id) {
                eprintln!("refusing: {why}");
                return Ok(ExitCode::from(1));
            }
            keyring.save(&path)?;
            admin_event(&mut audit, json!({"event": "key_retire", "key_id": key_id}))?;
            println!("retired {key_id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Rotates (or first creates) the audit signing key and writes the public keys beside the
/// databases.
fn rotate_signing(
    args: &KeysArgs,
    path: &std::path::Path,
    keyring: &mut crate::keys::Keyring,
    audit: &mut Sink,
) -> anyhow::Result<()> {
    let old = keyring
        .audit_signing
        .as_ref()
        .map(|s| s.active().0.to_string());
    let new = match keyring.audit_signing.as_mut() {
        Some(set) => set.rotate("s")?,
        None => {
            keyring.audit_signing = Some(KeySet::generate("s1")?);
            "s1".to_string()
        }
    };
    keyring.save(path)?;
    let vkeys: Vec<String> = keyring
        .audit_signing
        .iter()
        .flat_map(crate::audit::checkpoint::signers)
        .map(|s| s.vkey())
        .collect();
    let written = args
        .data_dir
        .open()
        .and_then(|d| Ok(d.open_dir()?))
        .and_then(|data| super::audit::write_public_keys(&data, &vkeys));
    admin_event(
        audit,
        json!({"event": "key_rotate", "set": "audit_signing", "from": old, "to": new}),
    )?;
    written?;
    println!(
        "audit signing key {new} is active from each session's next start; its public key \
         is in audit-signing.pub (`memwarden audit public-key` prints them all)"
    );
    Ok(())
}

/// Moves every row and ledger record to the active key, in batches.
pub fn reseal(args: &ResealArgs) -> anyhow::Result<ExitCode> {
    // Under the lock: no key can be retired while rows move to the active one.
    let Opened {
        keyring,
        mut store,
        mut audit,
        _keyring_lock,
        _data_lock,
        ..
    } = open(&args.data_dir, &args.store)?;
    let active = keyring.entry.active().0.to_string();
    admin_event(
        &mut audit,
        json!({"event": "reseal_start", "key_id": active}),
    )?;
    let mut total = 0;
    let mut failed: Vec<String> = Vec::new();
    loop {
        let (n, bad) = store.reseal_batch(args.batch.max(1), &failed)?;
        total += n;
        failed.extend(bad);
        if n == 0 {
            break;
        }
    }
    admin_event(
        &mut audit,
        json!({"event": "reseal_done", "key_id": active, "resealed": total, "failed": failed}),
    )?;
    println!("resealed {total} rows with {active}");
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{} rows do not verify and were left as they are:",
            failed.len()
        );
        for id in &failed {
            println!("{id}");
        }
        Ok(ExitCode::from(1))
    }
}
