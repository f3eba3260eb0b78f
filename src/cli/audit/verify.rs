//! `memwarden audit verify`: the whole chain checked offline — links and hashes always, MACs
//! with the audit key, checkpoint signatures with the public key alone, heads and checkpoints
//! kept elsewhere. It reports; it never repairs.

use std::path::PathBuf;
use std::process::ExitCode;

use super::Source;
use super::files::{read_checkpoint, read_verifiers};
use crate::audit::verify::{Checks, Report, parse_head};
use crate::audit::{self, AuditReader};
use crate::keys::{KeySet, Keyring};

/// `memwarden audit verify`: exit 0 only if every check asked for holds.
pub(super) fn verify_cmd(
    source: &Source,
    keyring: Option<&PathBuf>,
    expect_head: Option<&str>,
    public_key: Option<&PathBuf>,
    checkpoint_files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let log = source.open()?;
    let path = log.path();
    // In a data dir, an empty or missing chain beside a used memory.db is a failure, not an
    // empty log (an auditor's --db copy, or PostgreSQL's, has no memory.db to judge by).
    if source.is_data_dirs()
        && let Some(why) = audit::vanished_chain(path)?
    {
        println!("FAILED: {}", audit::AuditError::ChainMissing { why });
        return Ok(ExitCode::from(1));
    }
    let log = AuditReader::open(path)?;
    let keys = audit_keys(source, keyring, public_key.is_some())?;
    let expect = expect_head
        .map(|h| parse_head(h).ok_or_else(|| anyhow::anyhow!("--expect-head must be SEQ:HASH (64 hex digits), as printed by `memwarden audit head`")))
        .transpose()?;
    let verifiers = public_key.map(|p| read_verifiers(p)).transpose()?;
    let mut external = Vec::new();
    if let Some(v) = &verifiers {
        for file in checkpoint_files {
            external.push(read_checkpoint(file, v)?.0);
        }
    }
    let checks = Checks {
        keys: keys.as_ref(),
        expect: expect.as_ref(),
        verifiers: verifiers.as_ref(),
        external: &external,
    };
    let report = log.verify(&checks)?;
    match &report.damage {
        None => {
            print_verified(&report, &checks);
            Ok(ExitCode::SUCCESS)
        }
        Some(damage) => {
            println!("FAILED at seq {}: {damage}", damage.seq);
            Ok(ExitCode::from(1))
        }
    }
}

/// The audit keys to check MACs with: `--keyring`, else the data dir's keyring when there is
/// one and neither `--db` nor `--public-key` was given (an auditor needs no secret).
fn audit_keys(
    source: &Source,
    keyring: Option<&PathBuf>,
    public_key: bool,
) -> anyhow::Result<Option<KeySet>> {
    let keyring_path = match (keyring, &source.db) {
        (Some(k), _) => Some(k.clone()),
        (None, None) if !public_key => {
            Some(source.data_dir.resolve()?.join("keyring.toml")).filter(|p| p.exists())
        }
        (None, _) => None,
    };
    Ok(keyring_path.map(|p| Keyring::load_audit(&p)).transpose()?)
}

/// What a clean verification checked, and what it could not.
fn print_verified(report: &Report, checks: &Checks<'_>) {
    println!(
        "ok: {} events, head {}; linkage and hashes verified; MACs {}{}",
        report.events,
        report.head,
        if report.macs_checked {
            "verified"
        } else {
            "NOT checked (no --keyring)"
        },
        if checks.expect.is_some() {
            "; expected head present"
        } else {
            ""
        },
    );
    if checks.verifiers.is_none() {
        return;
    }
    match report.last_checkpoint {
        Some((at, covers)) => println!(
            "checkpoints: {} signatures verified; the last (event {at}) signs seq \
             {covers}; {} events after it are not yet signed",
            report.checkpoints,
            report.head.seq - at
        ),
        None => println!(
            "checkpoints: NONE in this log: nothing in it is signed (a keyring \
             without an audit signing key, or a log rewritten without them)"
        ),
    }
    if !checks.external.is_empty() {
        println!(
            "{} checkpoint(s) kept elsewhere match the log",
            checks.external.len()
        );
    }
}
