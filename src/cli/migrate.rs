//! `memwarden migrate --from SRC --to DST`: a whole store moved between an SQLite data dir and
//! a PostgreSQL database (either way, or between two of a kind), unchanged: rows with their
//! seals, the ledger, session starts, and the audit chain verbatim, so the target verifies with
//! the same keyring and continues the same chain. Each side then gets an admin event naming the
//! other's head (`migrate_in` on the target, `migrate_out` on the source), so an auditor can
//! join the two chains. It ends by verifying both sides and comparing them.
//!
//! The target must be empty — or hold an interrupted copy of this source, which it resumes.
//! An SQLite side is held exclusively (stop its servers first); a PostgreSQL source is read from
//! one snapshot, and its chain's head is checked again at the end: a source written meanwhile
//! fails the migration rather than leave a copy that misses writes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;

use super::DataDirArg;
use super::review::admin_event;
use super::serve::InsecureDatabaseArg;
use super::transfer::{Chain, Moved, Plan, Side, copy, progress};
use crate::audit::Head;
use crate::audit::sink::Sink;
use crate::config::DataDir;
use crate::datalock::DataLock;
use crate::fsafe::Dir;
use crate::keys::Keyring;
use crate::store::{Store, StoreOptions};

/// `memwarden migrate`'s arguments.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Keyring (--keyring-file; default: the SQLite side's keyring.toml).
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The store to move: an SQLite data dir (`sqlite:DIR`, or any directory) or a PostgreSQL
    /// database file (`postgres:FILE`, or any file).
    #[arg(long, value_name = "SIDE")]
    pub from: String,
    /// Where to: an empty (or new) SQLite data dir, or an empty PostgreSQL database after
    /// `memwarden db init`; or the target of an interrupted migrate, which resumes.
    #[arg(long, value_name = "SIDE")]
    pub to: String,
    /// Continue into a target that holds an interrupted migrate of this same source (its
    /// chain a prefix of the source's), or check a finished one again. Without it, a target
    /// that is not empty is refused.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub insecure: InsecureDatabaseArg,
}

/// A side as the operator named it.
#[derive(Debug, Clone)]
enum Spec {
    Sqlite(PathBuf),
    Postgres(PathBuf),
}

impl Spec {
    /// `sqlite:DIR`, `postgres:FILE`, or a path: a directory (or nothing yet) is a data dir, a
    /// file is a database file.
    fn parse(text: &str) -> Self {
        if let Some(p) = text.strip_prefix("sqlite:") {
            return Self::Sqlite(p.into());
        }
        if let Some(p) = text.strip_prefix("postgres:") {
            return Self::Postgres(p.into());
        }
        match std::fs::metadata(text) {
            Ok(m) if m.is_file() => Self::Postgres(text.into()),
            _ => Self::Sqlite(text.into()),
        }
    }

    fn engine(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// An open side and what it holds open.
struct Opened {
    side: Side,
    _lock: Option<DataLock>,
}

/// The keyring both sides share: `--keyring-file` (or systemd's credential), else the SQLite
/// source's, else an SQLite target's.
fn keyring(args: &MigrateArgs, from: &Spec, to: &Spec) -> anyhow::Result<Keyring> {
    let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|d| PathBuf::from(d).join(super::CREDENTIAL_NAME))
        .filter(|p| p.exists());
    if let Some(file) = args.data_dir.keyring_file.clone().or(credential) {
        return Ok(Keyring::load(&file)?);
    }
    if let Spec::Sqlite(dir) = from {
        return Ok(DataDir::new(dir).open_keyring()?);
    }
    if let Spec::Sqlite(dir) = to
        && dir.join(crate::config::KEYRING).exists()
    {
        return Ok(Keyring::load(&dir.join(crate::config::KEYRING))?);
    }
    bail!(
        "no keyring: give --keyring-file, the keyring every host of the PostgreSQL store uses \
         (the same keys verify the rows on both sides)"
    )
}

/// Whether two keyrings hold the same entry and audit keys.
fn same_keys(a: &Keyring, b: &Keyring) -> bool {
    let same = |x: &crate::keys::KeySet, y: &crate::keys::KeySet| {
        x.ids() == y.ids()
            && x.ids()
                .iter()
                .all(|id| x.get(id).map(|k| k.bytes()) == y.get(id).map(|k| k.bytes()))
    };
    same(&a.entry, &b.entry) && same(&a.audit, &b.audit)
}

fn open_postgres(args: &MigrateArgs, file: &Path, keyring: &Keyring) -> anyhow::Result<Opened> {
    let settings = args.insecure.load(file)?;
    let backend = crate::store::postgres::Postgres::connect(&settings, keyring.audit.clone())?;
    Ok(Opened {
        side: Side {
            engine: "postgres",
            store: Store::with_backend(Box::new(backend), keyring.entry.clone()),
            chain: Chain::Postgres(Box::new(settings)),
        },
        _lock: None,
    })
}

/// The SQLite source: an initialised data dir, held exclusively.
fn open_sqlite_source(
    dir: &Path,
    external: Option<PathBuf>,
    keyring: &Keyring,
) -> anyhow::Result<Opened> {
    let data = DataDir::new(dir).with_keyring(external);
    data.check()?;
    let lock = DataLock::exclusive(&data.open_dir()?)
        .context("the source data dir is in use: stop its servers (and the socket) first")?;
    if let Some(why) = crate::audit::vanished_chain(&data.audit_db())? {
        return Err(crate::audit::AuditError::ChainMissing { why }.into());
    }
    sqlite_side(&data, keyring, lock)
}

/// A data dir's store and chain, with the lock that holds it.
fn sqlite_side(data: &DataDir, keyring: &Keyring, lock: DataLock) -> anyhow::Result<Opened> {
    let store = Store::open(
        &data.memory_db(),
        keyring.entry.clone(),
        StoreOptions::default(),
    )?;
    Ok(Opened {
        side: Side {
            engine: "sqlite",
            store,
            chain: Chain::File(data.audit_db()),
        },
        _lock: Some(lock),
    })
}

/// The SQLite target: a new or empty directory made into a data dir holding the keyring in
/// use (or one already holding that same keyring), held exclusively.
fn open_sqlite_target(dir: &Path, keyring: &Keyring) -> anyhow::Result<Opened> {
    let (fs_dir, _) = Dir::create(dir)?;
    let name = crate::config::KEYRING;
    if fs_dir.entry(name)?.is_none() {
        keyring.write_new_in(&fs_dir, name)?;
        fs_dir.sync()?;
    } else if !same_keys(&Keyring::load(&dir.join(name))?, keyring) {
        bail!(
            "refusing: {} holds another keyring; the target must verify the source's seals: \
             give a new or empty directory",
            dir.display()
        );
    }
    for file in ["memory.db", "audit.db", crate::datalock::LOCK_FILE] {
        if fs_dir.entry(file)?.is_none() {
            fs_dir.create_new(file)?;
        }
    }
    let data = DataDir::new(dir);
    let lock = DataLock::exclusive(&data.open_dir()?).context("the target data dir is in use")?;
    sqlite_side(&data, keyring, lock)
}

/// The side's audit log, to append the operator's event.
fn sink(side: &Side, keyring: &Keyring) -> anyhow::Result<Sink> {
    Ok(match &side.chain {
        Chain::File(path) => Sink::File(crate::audit::AuditLog::open(path, keyring.audit.clone())?),
        Chain::Postgres(settings) => Sink::Postgres(crate::audit::pg_log::PgLog::connect(
            settings,
            keyring.audit.clone(),
        )?),
    })
}

/// The migrate_in event a finished copy ends with, and the source head it names.
fn finished_from(target: &Side) -> anyhow::Result<Option<Head>> {
    let Some(tail) = target.tail()? else {
        return Ok(None);
    };
    let detail: serde_json::Value = serde_json::from_str(&tail.detail).unwrap_or_default();
    if tail.kind != "admin" || detail["event"] != "migrate_in" {
        return Ok(None);
    }
    // The event the migrate_in links to is the source's head the copy ended at.
    Ok(Some(Head {
        seq: tail.seq - 1,
        hash: tail.prev_hash,
    }))
}

/// Moves a store, or resumes or re-checks an earlier run; prints what it did.
pub fn run(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let (from, to) = (Spec::parse(&args.from), Spec::parse(&args.to));
    let keyring = keyring(args, &from, &to)?;
    let source = match &from {
        Spec::Sqlite(dir) => open_sqlite_source(dir, args.data_dir.keyring_file.clone(), &keyring)?,
        Spec::Postgres(file) => open_postgres(args, file, &keyring)?,
    };
    let mut target = match &to {
        Spec::Sqlite(dir) => open_sqlite_target(dir, &keyring)?,
        Spec::Postgres(file) => open_postgres(args, file, &keyring)?,
    };
    let (source, target) = (&source.side, &mut target.side);
    if !args.resume && (target.tail()?.is_some() || target.store.copied()?.entries > 0) {
        bail!(
            "refusing: the target is not empty (if it holds an interrupted or finished migrate \
             of this source, run again with --resume: it continues or checks it, and refuses \
             anything else)"
        );
    }
    // A target whose tail is a migrate_in may hold this run's finished copy, or a partial copy
    // that ends with a migrate_in from the source's own history: the source tells them apart.
    let (finished, moved) = match finished_from(target)? {
        Some(head) => match recheck(source, target, &head)? {
            Some(moved) => (Some(head), moved),
            None => (None, copy_rest(source, target, &from, &to)?),
        },
        None => (None, copy_rest(source, target, &from, &to)?),
    };
    let source_head = finished.clone().unwrap_or(source.head()?);
    // On PostgreSQL the source is not locked: a head that moved means writes the copy missed.
    let copied_head = match &finished {
        Some(_) => source_head.clone(),
        None => target.head()?,
    };
    if finished.is_none() && copied_head != source_head {
        bail!(
            "the source was written while copying (its chain is at {source_head}, the copy at \
             {copied_head}): stop every server on it and run migrate again, which resumes"
        );
    }
    finish(
        source,
        target,
        &keyring,
        &source_head,
        &moved,
        finished.is_some(),
    )
}

/// Copies what the target lacks, with a progress bar.
fn copy_rest(source: &Side, target: &mut Side, from: &Spec, to: &Spec) -> anyhow::Result<Moved> {
    let plan = Plan::for_target(source, target)?;
    let total = source.store.copied()?.entries + source.head()?.seq.max(0) as u64;
    let bar = progress(total, &format!("{} -> {}", from.engine(), to.engine()));
    let moved = copy(source, target, plan, &bar)?;
    bar.finish_and_clear();
    Ok(moved)
}

/// A finished copy seen again: nothing may have changed on the source since, except its own
/// migrate_out event. `None` when the target's migrate_in is the source's own (a partial copy
/// that happens to end there).
fn recheck(source: &Side, target: &mut Side, head: &Head) -> anyhow::Result<Option<Moved>> {
    let tail = target.head()?;
    let mut plan = Plan::for_target(source, target)?;
    plan.expect = Some(head.clone());
    plan.from.events_from = plan.from.events_from.map(|_| head.seq);
    plan.from.session_starts = false;
    plan.check_only = true;
    plan.stop_at = Some(tail);
    let moved = copy(source, target, plan, &indicatif::ProgressBar::hidden())?;
    if moved.stopped {
        return Ok(None);
    }
    if moved.later_events.len() > 1
        || moved
            .later_events
            .first()
            .is_some_and(|e| !e.detail.contains("\"migrate_out\""))
    {
        bail!(
            "the source was written after the migration finished: stop every server on it and \
             migrate again into an empty target"
        );
    }
    Ok(Some(moved))
}

/// The two admin events (each side naming the other's head, once), then both sides verified
/// and compared.
fn finish(
    source: &Side,
    target: &mut Side,
    keyring: &Keyring,
    source_head: &Head,
    moved: &Moved,
    was_finished: bool,
) -> anyhow::Result<ExitCode> {
    if !was_finished {
        admin_event(
            &mut sink(target, keyring)?,
            json!({"event": "migrate_in", "from_engine": source.engine,
                   "source_head": source_head.to_string(), "entries": moved.entries,
                   "ledger_records": moved.ledger, "events": moved.events}),
        )?;
    }
    let target_head = target.head()?;
    if moved.later_events.is_empty() {
        admin_event(
            &mut sink(source, keyring)?,
            json!({"event": "migrate_out", "to_engine": target.engine,
                   "target_head": target_head.to_string()}),
        )?;
    }
    let (from, from_head) = source.verify(keyring).context("verifying the source")?;
    let (to, to_head) = target.verify(keyring).context("verifying the target")?;
    for (side, d) in [("source", &from), ("target", &to)] {
        if !d.clean() {
            bail!(
                "the {side} does not verify: {} entries fail their seal (first: {}), {} are \
                 less retired than their ledger records; ledger: {}",
                d.failed_count,
                d.failed.join(", "),
                d.rolled_back,
                d.ledger_problems.join("; ")
            );
        }
    }
    if from.sha256 != to.sha256 || from.ledger_records != to.ledger_records {
        bail!(
            "the two sides differ ({} and {} entries, {} and {} ledger records): the source \
             changed during the migration; migrate again into an empty target",
            from.entries,
            to.entries,
            from.ledger_records,
            to.ledger_records
        );
    }
    if was_finished {
        println!("the migration had finished; checked again");
    }
    println!(
        "migrated {} entries, {} ledger records and {} audit events ({} -> {}); both sides \
         verify and hold the same {} entries",
        moved.entries, moved.ledger, moved.events, source.engine, target.engine, to.entries
    );
    println!("source chain head {from_head} (migrate_out names the target's)");
    println!("target chain head {to_head} (migrate_in names the source's {source_head})");
    Ok(ExitCode::SUCCESS)
}
