//! Small files an auditor is handed or keeps: public key files, signed checkpoints, the
//! data dir's audit-signing.pub. Each is read bounded and written atomically without following
//! links; nothing here reads the audit log.

use std::io::Read;
use std::process::ExitCode;

use crate::audit::checkpoint::{Checkpoint, Verifiers};
use crate::fsafe::Dir;

/// The largest public key or checkpoint file read.
pub(super) const MAX_INPUT_BYTES: u64 = 64 * 1024;

/// Reads a small text file an auditor was handed (a public key file, a checkpoint), bounded.
pub(super) fn read_small(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= MAX_INPUT_BYTES,
        "{what} {}: larger than {MAX_INPUT_BYTES} bytes",
        path.display()
    );
    Ok(text)
}

/// Reads a public key file (C2SP vkey lines).
pub(super) fn read_verifiers(path: &std::path::Path) -> anyhow::Result<Verifiers> {
    Verifiers::parse(&read_small(path, "public key file")?)
        .map_err(|e| anyhow::anyhow!("public key file {}: {e}", path.display()))
}

/// Reads and opens a signed checkpoint file with `verifiers`.
pub(super) fn read_checkpoint(
    path: &std::path::Path,
    verifiers: &Verifiers,
) -> anyhow::Result<(Checkpoint, String)> {
    let note = read_small(path, "checkpoint")?;
    let (cp, _) = verifiers
        .open(&note)
        .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
    Ok((cp, note))
}

/// Replaces `name` in `dir` atomically: a new 0600 temp file (exclusive, no-follow), fsynced,
/// renamed over `name`, the directory fsynced.
pub(super) fn replace_file(dir: &Dir, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple());
    let mut f = dir.create_new(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    let renamed = match written {
        Ok(()) => dir.rename(&tmp, name).map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = renamed {
        let _ = dir.remove(&tmp);
        return Err(e);
    }
    dir.sync()?;
    Ok(())
}

/// The public key file handed to auditors, in the data dir.
pub const PUBLIC_KEY_FILE: &str = "audit-signing.pub";

/// Writes `vkeys` into the data dir's audit-signing.pub, keeping every line already there (old
/// public keys keep verifying old checkpoints): atomically, without following links.
pub(crate) fn write_public_keys(dir: &Dir, vkeys: &[String]) -> anyhow::Result<()> {
    let mut lines: Vec<String> = Vec::new();
    if dir.entry(PUBLIC_KEY_FILE)?.is_some() {
        let mut text = String::new();
        dir.open_file(PUBLIC_KEY_FILE)?
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)?;
        lines.extend(text.lines().map(str::to_string));
    }
    if lines.is_empty() {
        lines.push(
            "# memwarden audit signing public keys (C2SP vkey): give this file to auditors".into(),
        );
    }
    for vkey in vkeys {
        if !lines.iter().any(|l| l.trim() == vkey) {
            lines.push(vkey.clone());
        }
    }
    replace_file(dir, PUBLIC_KEY_FILE, (lines.join("\n") + "\n").as_bytes())
}

/// `memwarden audit public-key`: the signing public keys of the data dir's keyring.
pub(super) fn public_key_cmd(data_dir: &crate::cli::DataDirArg) -> anyhow::Result<ExitCode> {
    let keyring = data_dir.open()?.open_keyring()?;
    let Some(signing) = keyring.audit_signing else {
        anyhow::bail!(
            "the keyring has no audit signing key; add one with `memwarden keys rotate \
             --audit-signing`"
        );
    };
    for signer in crate::audit::checkpoint::signers(&signing) {
        println!("{}", signer.vkey());
    }
    Ok(ExitCode::SUCCESS)
}
