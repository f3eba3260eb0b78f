//! `memwarden verify`: check every row's seal and the ledger's chain, offline, and reconcile
//! entries and ledger records with the audit log.
//!
//! A seal proves authorship, not freshness, so verify also holds every row to its ledger
//! records (an older sealed copy put back is reported, as reads withhold it) and every audited
//! write to its effect: an entry whose creation is audited must exist unless a purge or reject
//! record explains its absence, and an audited delete or update must have left its ledger
//! record. The one exception is what a crash between the audit and store commits leaves
//! ("audited, not applied"): the write's event is then the last its session got to through the
//! store, which is reported but is not a failure. A later event of that session that went
//! through the store (an `ok` call, or the session's end) proves the write was applied, so its
//! missing effects are tampering.

use std::collections::HashSet;
use std::process::ExitCode;

use super::DataDirArg;
use super::db::ChainCopy;
use crate::audit::inspect::AuditedWrite as Write;
use crate::store::ledger::Kind;
use crate::store::{IndexDrift, Store, UsageDrift, VerifyReport};

/// Findings of the reconciliation with the audit log.
#[derive(Default)]
struct Reconciled {
    /// Entries whose creation is audited, missing without a purge or reject record.
    missing: Vec<String>,
    /// Audited retirements without their ledger record: "id: what".
    unrecorded: Vec<String>,
    /// Audited writes a crash left unapplied (harmless).
    not_applied: Vec<String>,
}

fn reconcile(report: &VerifyReport, writes: &[Write]) -> Reconciled {
    let has = |id: &str, kind: Kind| {
        report
            .ledger
            .kinds
            .get(id)
            .is_some_and(|k| k.contains(&kind))
    };
    let present = |id: &str| report.statuses.contains_key(id);
    // Absent for a recorded reason.
    let gone = |id: &str| has(id, Kind::Purged) || has(id, Kind::Rejected);
    let mut out = Reconciled::default();
    for w in writes {
        let created = w.created.as_deref();
        let target = w.target.as_deref();
        match (w.tool.as_str(), created, target) {
            // An import's event commits with its rows, like an agent's store: an imported
            // entry missing without a purge or reject record was removed.
            ("import", Some(x), _) if !present(x) && !gone(x) => out.missing.push(x.to_string()),
            ("memory_store", Some(x), _) if !present(x) && !gone(x) => {
                if w.last {
                    out.not_applied.push(x.to_string());
                } else {
                    out.missing.push(x.to_string());
                }
            }
            ("memory_update", Some(new), Some(old)) => {
                let new_there = present(new) || gone(new);
                let recorded = has(old, Kind::Superseded);
                if !new_there && !recorded && w.last {
                    out.not_applied.push(new.to_string());
                    continue;
                }
                if !new_there {
                    out.missing.push(new.to_string());
                }
                if !recorded {
                    out.unrecorded
                        .push(format!("{old}: superseded by an audited update ({new})"));
                }
            }
            ("memory_delete", _, Some(x)) => {
                let untouched = report.statuses.get(x).is_some_and(|s| s == "active");
                if has(x, Kind::Deleted) {
                    continue;
                }
                if w.last && untouched {
                    out.not_applied.push(x.to_string());
                } else {
                    out.unrecorded
                        .push(format!("{x}: deleted by an audited call"));
                }
            }
            // The operator's event comes before the store change, so a reject that changed
            // nothing (a wrong id, a crash) leaves the entry in place: only its absence counts.
            ("review_reject", _, Some(x)) if !present(x) && !gone(x) => {
                out.unrecorded
                    .push(format!("{x}: rejected by the operator"));
            }
            _ => {}
        }
    }
    for v in [&mut out.missing, &mut out.unrecorded, &mut out.not_applied] {
        v.sort();
        v.dedup();
    }
    out
}

/// One namespace's drift, its name escaped (a tampered row may name anything).
pub(super) fn drift_line(d: &UsageDrift) -> String {
    format!(
        "{}: counted {} entries, {} bytes; its rows hold {} entries, {} bytes",
        d.namespace.escape_debug(),
        d.kept.0,
        d.kept.1,
        d.held.0,
        d.held.1
    )
}

/// Prints `ok` or a FAILED heading with one line per item; returns whether it failed.
fn section(items: &[String], ok: &str, failed: &str) -> bool {
    if items.is_empty() {
        println!("ok: {ok}");
        return false;
    }
    println!("FAILED: {} {failed}:", items.len());
    for item in items {
        println!("{item}");
    }
    true
}

/// The store, read-only, and the audit.db to reconcile it with (on PostgreSQL a copy of the
/// chain, in a private directory that lives as long as the returned guard).
fn open(args: &VerifyArgs) -> anyhow::Result<(Store, std::path::PathBuf, Option<ChainCopy>)> {
    let dir = args.data_dir.open()?;
    let keyring = dir.open_keyring()?;
    Ok(match args.store.kind {
        super::serve::StoreKind::Sqlite => (
            Store::open_read_only(&dir.memory_db(), keyring.entry)?,
            dir.audit_db(),
            None,
        ),
        super::serve::StoreKind::Postgres => {
            let file = args.store.database_file()?;
            let settings = args.store.insecure.load(&file)?;
            let backend = crate::store::postgres::Postgres::connect(&settings, keyring.audit)?;
            let copy = ChainCopy::export(&settings)?;
            (
                Store::with_backend(Box::new(backend), keyring.entry),
                copy.path().to_path_buf(),
                Some(copy),
            )
        }
    })
}

/// Prints what the store's own checks found: seals, the ledger, rows against their records,
/// quota counts against their rows; returns whether any failed.
fn store_findings(report: &VerifyReport) -> bool {
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
    failed |= section(
        &report.ledger.problems,
        &format!("{} ledger records verify and chain", report.ledger.records),
        "ledger problems (a record was removed, altered or forged)",
    );
    let listed = |rows: &[(String, String)]| -> Vec<String> {
        rows.iter().map(|(id, s)| format!("{id} ({s})")).collect()
    };
    failed |= section(
        &listed(&report.rolled_back),
        "no entry is less retired than its ledger records",
        "entries are less retired than their ledger records (an older sealed copy was put back; \
         reads withhold them)",
    );
    failed |= section(
        &listed(&report.unrecorded),
        "every superseded or deleted entry has its ledger record",
        "entries are superseded or deleted without their ledger record (one was removed)",
    );
    failed |= section(
        &report.usage.iter().map(drift_line).collect::<Vec<_>>(),
        "every namespace's quota usage matches its rows",
        "namespaces' quota usage disagrees with their rows (the counts were edited, or rows \
         changed with the triggers off; quotas are checked against the counts until \
         `memwarden maintain` counts them again)",
    );
    if let Some(index) = &report.index {
        failed |= section(
            &index_lines(index),
            "the search index holds every active entry's words and nothing else",
            "search index disagreements with the rows (postings were edited, or rows changed \
             with the triggers off; searches miss or wrongly find these entries until \
             `memwarden maintain` posts them again)",
        );
    }
    failed
}

/// One line per entry missing postings and per position holding stray ones; ids escaped (a
/// tampered row may name anything), never a word.
pub(super) fn index_lines(index: &IndexDrift) -> Vec<String> {
    let missing = index.missing.iter().map(|(id, n)| {
        format!(
            "{}: {n} of its words not in the index (searches for them miss it)",
            id.escape_debug()
        )
    });
    let stray = index
        .stray
        .iter()
        .map(|(pos, n)| format!("position {pos}: {n} postings no active entry holds"));
    missing.chain(stray).collect()
}

/// `memwarden verify`'s arguments.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
}

/// Verifies the store and reconciles it with the audit log; exit 1 on any finding. On
/// PostgreSQL the chain is first copied, as `db export-audit` does, into a private temporary
/// audit.db, and reconciled from there.
pub fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let (store, audit_db, _copy) = open(args)?;
    let report = store.verify_all()?;
    let mut failed = store_findings(&report);

    let writes = crate::audit::inspect::audited_writes(&audit_db)?;
    let created: HashSet<&str> = writes.iter().filter_map(|w| w.created.as_deref()).collect();
    let mut unaudited: Vec<&String> = report
        .statuses
        .keys()
        .filter(|id| !created.contains(id.as_str()))
        .collect();
    unaudited.sort();
    failed |= section(
        &unaudited.into_iter().cloned().collect::<Vec<_>>(),
        "every entry has the audited call that created it",
        "entries have no audited call that created them",
    );
    let found = reconcile(&report, &writes);
    failed |= section(
        &found.missing,
        "every entry whose creation is audited is present, or purged or rejected on record",
        "entries whose creation is audited are missing without a purge or reject on record",
    );
    failed |= section(
        &found.unrecorded,
        "every audited delete, update and reject has its ledger record",
        "audited retirements have no ledger record (it was removed, and the row maybe put back)",
    );
    if !found.not_applied.is_empty() {
        println!(
            "note: {} audited writes were not applied (a crash between the audit and store commits):",
            found.not_applied.len()
        );
        for id in &found.not_applied {
            println!("{id}");
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tool: &str, created: Option<&str>, target: Option<&str>, last: bool) -> Write {
        Write {
            tool: tool.into(),
            created: created.map(Into::into),
            target: target.map(Into::into),
            last,
        }
    }

    fn report(rows: &[(&str, &str)], records: &[(&str, Kind)]) -> VerifyReport {
        let mut r = VerifyReport::default();
        for (id, status) in rows {
            r.statuses.insert(id.to_string(), status.to_string());
        }
        for (id, kind) in records {
            r.ledger
                .kinds
                .entry(id.to_string())
                .or_default()
                .push(*kind);
        }
        r
    }

    #[test]
    fn a_drifted_namespace_is_named_escaped_with_both_counts() {
        let d = UsageDrift {
            namespace: "notes\u{1b}[2J\n".into(),
            kept: (0, 0),
            held: (2, 11),
        };
        assert_eq!(
            drift_line(&d),
            "notes\\u{1b}[2J\\n: counted 0 entries, 0 bytes; its rows hold 2 entries, 11 bytes"
        );
    }

    #[test]
    fn only_a_sessions_last_write_may_be_audited_and_not_applied() {
        // A crash after the audit commit: the store and the delete never reached the store.
        let crashed = [
            write("memory_store", Some("a"), Some("a"), true),
            write("memory_delete", None, Some("b"), true),
            write("memory_update", Some("d"), Some("c"), true),
        ];
        let r = report(&[("b", "active"), ("c", "active")], &[]);
        let found = reconcile(&r, &crashed);
        assert_eq!(found.not_applied, vec!["a", "b", "d"]);
        assert!(found.missing.is_empty() && found.unrecorded.is_empty());
        // The same state, but each session went on through the store: tampering.
        let went_on: Vec<Write> = crashed
            .iter()
            .map(|w| write(&w.tool, w.created.as_deref(), w.target.as_deref(), false))
            .collect();
        let found = reconcile(&r, &went_on);
        assert!(found.not_applied.is_empty());
        assert_eq!(found.missing, vec!["a", "d"]);
        assert_eq!(found.unrecorded.len(), 2, "{:?}", found.unrecorded);
    }

    #[test]
    fn an_applied_update_needs_its_record_and_a_purge_explains_absence() {
        // The new version exists, so the update committed: the old one's record must too.
        let r = report(&[("old", "active"), ("new", "active")], &[]);
        let found = reconcile(
            &r,
            &[write("memory_update", Some("new"), Some("old"), true)],
        );
        assert_eq!(found.unrecorded.len(), 1);
        assert!(found.not_applied.is_empty());
        let r = report(&[], &[("x", Kind::Deleted), ("x", Kind::Purged)]);
        let found = reconcile(
            &r,
            &[
                write("memory_store", Some("x"), Some("x"), false),
                write("memory_delete", None, Some("x"), false),
            ],
        );
        assert!(found.missing.is_empty() && found.unrecorded.is_empty());
    }
}
