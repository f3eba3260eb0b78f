//! `memwarden review list|show|approve|reject`: the operator releases or drops what a
//! quarantine rule held back. Every decision is audited.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::DataDirArg;
use super::serve::StoreArgs;
use super::stores::Engine;
use crate::audit::sink::Sink;
use crate::audit::{Kind, NewEvent};
use crate::datalock::DataLock;
use crate::store::Store;

/// `memwarden review`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: ReviewCommand,
}

/// What `memwarden review` does.
#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List quarantined memories.
    List,
    /// Print one quarantined memory, content included.
    Show { id: String },
    /// Release it: it becomes active and visible to agents.
    Approve { id: String },
    /// Drop it for good.
    Reject { id: String },
}

/// The operator's handles on a store of either engine: the store, its audit log, and the data
/// dir's lock held shared while they are used (see [`crate::datalock`]; on PostgreSQL the data
/// dir holds the keyring, and `serve` holds the same lock).
pub(crate) fn open(
    args: &DataDirArg,
    store: &StoreArgs,
) -> anyhow::Result<(Store, Sink, DataLock)> {
    let engine = Engine::of(store)?;
    let dir = args.open()?;
    let lock = dir.lock_shared()?;
    let keyring = dir.open_keyring()?;
    let audit = engine.audit(&dir, keyring.audit.clone())?;
    let store = engine.store(&dir, &keyring)?;
    Ok((store, audit, lock))
}

/// Appends an operator's admin event.
pub(crate) fn admin_event(audit: &mut Sink, detail: serde_json::Value) -> anyhow::Result<()> {
    let mut detail = detail;
    detail["operator_uid"] = json!(crate::fsafe::current_uid());
    let event = NewEvent {
        principal: Some("operator"),
        ..NewEvent::new(Kind::Admin, detail)
    };
    audit.append(&event, crate::clock::now_ms())?;
    Ok(())
}

/// Lists, shows, approves or rejects quarantined entries.
pub fn run(args: &ReviewArgs) -> anyhow::Result<ExitCode> {
    let (mut store, mut audit, _lock) = open(&args.data_dir, &args.store)?;
    let now = crate::clock::now_ms();
    match &args.command {
        ReviewCommand::List => {
            let held = store.quarantined()?;
            println!("{} quarantined", held.len());
            for e in held {
                println!(
                    "{}  {}  ns={}  by={}  {} bytes",
                    e.id,
                    crate::clock::format_ms(e.created_at),
                    e.namespace,
                    e.principal,
                    e.content.len()
                );
            }
        }
        ReviewCommand::Show { id } => {
            let e = store.get_any(id)?;
            let view = crate::tools::MemoryView::new(&e)?;
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        ReviewCommand::Approve { id } => {
            // Audit first: if the log cannot be written, nothing changes.
            admin_event(&mut audit, json!({"event": "review_approve", "id": id}))?;
            store.approve(id, now)?;
            println!("approved {id}");
        }
        ReviewCommand::Reject { id } => {
            admin_event(&mut audit, json!({"event": "review_reject", "id": id}))?;
            store.reject_quarantined(id, now)?;
            println!("rejected and removed {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
