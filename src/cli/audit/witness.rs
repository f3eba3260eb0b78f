//! `memwarden audit witness`: keeping the last accepted signed checkpoint in a state file and
//! accepting a new one only if it extends it (see [`crate::audit::witness`]). The state file is
//! never trusted as read: it is opened with the public keys like a new checkpoint.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use super::files::{MAX_INPUT_BYTES, read_checkpoint, read_verifiers, replace_file};
use crate::audit::AuditReader;
use crate::audit::checkpoint::{Checkpoint, Verifiers};
use crate::audit::verify::{Checks, Damage};
use crate::audit::witness::{Acceptance, decide};
use crate::fsafe::Dir;

/// `memwarden audit witness`: see [`crate::audit::witness`]. The state file is read and
/// replaced under a lock beside it (two runs never interleave), without following links, and
/// atomically (a temp file, fsynced, renamed over it).
pub(super) fn witness_cmd(
    public_key: &Path,
    state: &Path,
    db: Option<&Path>,
    new_file: &Path,
) -> anyhow::Result<ExitCode> {
    let verifiers = read_verifiers(public_key)?;
    let (new, new_note) = read_checkpoint(new_file, &verifiers)?;
    let (dir, name) = state_dir(state)?;
    let _lock = dir.lock_exclusive(&format!(".{name}.lock"))?;
    let kept = read_kept(&dir, &name, state, &verifiers)?;
    let decision = match decide(kept.as_ref(), &new) {
        Ok(d) => d,
        Err(refusal) => {
            println!("REFUSED: {refusal}");
            return Ok(ExitCode::from(1));
        }
    };
    let checked = match db {
        Some(db) => {
            if let Some(damage) = check_history(db, &verifiers, kept.as_ref(), &new)? {
                println!(
                    "REFUSED: the log is not consistent with the checkpoints: at seq {}: {damage}",
                    damage.seq
                );
                return Ok(ExitCode::from(1));
            }
            "; the log between them verifies"
        }
        None => "; history NOT checked (no --db)",
    };
    match decision {
        Acceptance::Same => {
            println!("unchanged: {} at seq {}", new.origin, new.size);
            return Ok(ExitCode::SUCCESS);
        }
        Acceptance::First => println!(
            "accepted the first checkpoint of {} at seq {}{checked}",
            new.origin, new.size
        ),
        Acceptance::Extends { from } => println!(
            "accepted: {} from seq {from} to seq {}{checked}",
            new.origin, new.size
        ),
    }
    replace_file(&dir, &name, new_note.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The state file's directory, opened without following a link, and its name in it.
fn state_dir(state: &Path) -> anyhow::Result<(Dir, String)> {
    let name = state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow::anyhow!("--state {}: not a file name", state.display()))?;
    let parent = match state.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((Dir::open(parent)?, name))
}

/// The kept checkpoint, if the state file exists. It is checked like a new one: an edited
/// state file is refused, never trusted.
fn read_kept(
    dir: &Dir,
    name: &str,
    state: &Path,
    verifiers: &Verifiers,
) -> anyhow::Result<Option<Checkpoint>> {
    if dir.entry(name)?.is_none() {
        return Ok(None);
    }
    let mut text = String::new();
    dir.open_file(name)?
        .take(MAX_INPUT_BYTES + 1)
        .read_to_string(&mut text)?;
    let (cp, _) = verifiers.open(&text).map_err(|e| {
        anyhow::anyhow!("state file {}: {e}; refusing to continue", state.display())
    })?;
    Ok(Some(cp))
}

/// Links and hashes of the whole log at `db`, then both checkpoints against it: the kept
/// one's hash must be the chain hash at its seq in the history that leads to the new.
fn check_history(
    db: &Path,
    verifiers: &Verifiers,
    kept: Option<&Checkpoint>,
    new: &Checkpoint,
) -> anyhow::Result<Option<Damage>> {
    let log = AuditReader::open(db)?;
    let external: Vec<Checkpoint> = kept.into_iter().cloned().chain([new.clone()]).collect();
    let report = log.verify(&Checks {
        verifiers: Some(verifiers),
        external: &external,
        ..Checks::default()
    })?;
    Ok(report.damage)
}
