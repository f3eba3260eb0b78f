//! `memwarden init`: create a data dir with a fresh keyring and an empty store, and write the
//! audit signing public key (audit-signing.pub) for the operator to hand to auditors.

use std::process::ExitCode;

use super::DataDirArg;

/// Creates a data dir: keyring, both databases, the checkpoint public keys.
pub fn run(args: &DataDirArg) -> anyhow::Result<ExitCode> {
    let dir = args.open()?;
    dir.init()?;
    dir.check()?;
    let keyring = dir.open_keyring()?;
    if let Some(signing) = &keyring.audit_signing {
        let vkeys: Vec<String> = crate::audit::checkpoint::signers(signing)
            .iter()
            .map(|s| s.vkey())
            .collect();
        let data = dir.open_dir()?;
        super::audit::write_public_keys(&data, &vkeys)?;
        println!(
            "audit signing public key: {} (give it to auditors: `memwarden audit verify \
             --public-key`)",
            data.join(super::audit::PUBLIC_KEY_FILE).display()
        );
    }
    println!("initialised {}", dir.root().display());
    Ok(ExitCode::SUCCESS)
}
