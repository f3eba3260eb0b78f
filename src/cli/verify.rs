//! `memwarden verify`: check every row's seal, offline, and reconcile entries with the audit log.
//!
//! Reconciliation holds the audit-before-commit promise to account: every entry must have the
//! audited call that created it. An audited write whose entry is absent ("audited, not applied")
//! is what a crash between the two commits leaves; it is reported but is not a failure.

use std::collections::HashSet;
use std::process::ExitCode;

use super::DataDirArg;
use crate::store::Store;

pub fn run(args: &DataDirArg) -> anyhow::Result<ExitCode> {
    let dir = args.open()?;
    let keyring = dir.open_keyring()?;
    let store = Store::open_read_only(&dir.memory_db(), keyring.entry)?;
    let report = store.verify_all()?;
    let mut failed = false;
    if report.failed.is_empty() {
        println!("ok: {} entries verified", report.checked);
    } else {
        failed = true;
        println!(
            "FAILED: {} of {} entries do not verify:",
            report.failed.len(),
            report.checked
        );
        for id in &report.failed {
            println!("{id}");
        }
    }

    let audit = crate::audit::open_ro(&dir.audit_db())?;
    let mut stmt = audit.prepare(
        "SELECT json_extract(detail, '$.created') FROM events WHERE kind = 'call' \
         AND outcome = 'ok' AND tool IN ('memory_store', 'memory_update') \
         AND json_extract(detail, '$.created') IS NOT NULL",
    )?;
    let audited: HashSet<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    let entries: HashSet<String> = store.all_ids()?.into_iter().collect();
    let mut unaudited: Vec<&String> = entries.difference(&audited).collect();
    let mut not_applied: Vec<&String> = audited.difference(&entries).collect();
    unaudited.sort();
    not_applied.sort();
    if unaudited.is_empty() {
        println!("ok: every entry has the audited call that created it");
    } else {
        failed = true;
        println!(
            "FAILED: {} entries have no audited call that created them:",
            unaudited.len()
        );
        for id in unaudited {
            println!("{id}");
        }
    }
    // A row put back to an earlier, genuinely sealed state (an undelete, an un-supersede)
    // verifies on its own; the audit log knows better.
    let mut stmt = audit.prepare(
        "SELECT json_extract(detail, '$.ids[0]') FROM events WHERE kind = 'call' \
         AND outcome = 'ok' AND tool IN ('memory_delete', 'memory_update')",
    )?;
    let retired: HashSet<String> = stmt
        .query_map([], |r| r.get::<_, Option<String>>(0))?
        .filter_map(|r| r.transpose())
        .collect::<Result<_, _>>()?;
    let mut revived: Vec<String> = store
        .active_ids()?
        .into_iter()
        .filter(|id| retired.contains(id))
        .collect();
    revived.sort();
    if revived.is_empty() {
        println!("ok: no deleted or superseded entry is active again");
    } else {
        failed = true;
        println!(
            "FAILED: {} entries were deleted or superseded by an audited call but are active again \
             (an older sealed row was put back):",
            revived.len()
        );
        for id in revived {
            println!("{id}");
        }
    }
    if !not_applied.is_empty() {
        println!(
            "note: {} audited writes were not applied (a crash between the audit and store commits):",
            not_applied.len()
        );
        for id in not_applied {
            println!("{id}");
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
