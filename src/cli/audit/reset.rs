//! `memwarden audit reset`: starting a new chain, on the operator's explicit word, in a data
//! dir whose chain is gone or damaged. It never resets a chain that verifies, and never runs
//! while anything else uses the data dir.

use std::process::ExitCode;

use crate::audit::verify::Checks;
use crate::audit::{self, AuditReader};
use crate::keys::Keyring;

/// Why the data dir's chain may be restarted, or a refusal when it is sound.
fn reset_reason(dir: &crate::config::DataDir, keyring: &Keyring) -> anyhow::Result<String> {
    if let Some(why) = audit::vanished_chain(&dir.audit_db())? {
        return Ok(why);
    }
    if !dir.audit_db().exists() {
        return Ok("audit.db is missing".into());
    }
    let checks = Checks {
        keys: Some(&keyring.audit),
        ..Checks::default()
    };
    let damage = match AuditReader::open(&dir.audit_db()) {
        Err(e) => e.to_string(),
        Ok(log) => match log.verify(&checks) {
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
pub(super) fn reset_cmd(
    args: &crate::cli::DataDirArg,
    confirmed: bool,
) -> anyhow::Result<ExitCode> {
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
    let replaced = crate::cli::backup::set_aside_audit(&data)?;
    drop(data.create_new("audit.db")?);
    data.sync()?;
    let detail = serde_json::json!({
        "event": "chain_start",
        "why": format!("operator reset: {why}"),
        "memory_entries": entries,
        "replaced_audit_head": replaced.as_ref().map(crate::cli::backup::Replaced::head),
        "replaced_audit_kept_as": replaced.as_ref().map(|r| r.name.as_str()),
        "operator_uid": crate::fsafe::current_uid(),
    });
    let event = audit::NewEvent {
        principal: Some("operator"),
        ..audit::NewEvent::new(audit::Kind::Admin, detail)
    };
    let (log, head) = audit::AuditLog::open_new_chain(&dir.audit_db(), keyring.audit, &event)?;
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
    crate::sqlite_file::count_rows(memory_db, "entries")
}
