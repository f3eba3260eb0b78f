//! `memwarden verify`: check every row's seal, offline, and name the rows that fail.

use std::process::ExitCode;

use super::DataDirArg;
use crate::config::DataDir;
use crate::store::Store;

pub fn run(args: &DataDirArg) -> anyhow::Result<ExitCode> {
    let dir = DataDir::new(args.resolve()?);
    let keyring = dir.open_keyring()?;
    let store = Store::open_read_only(&dir.memory_db(), keyring.entry)?;
    let report = store.verify_all()?;
    if report.failed.is_empty() {
        println!("ok: {} entries verified", report.checked);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "FAILED: {} of {} entries do not verify:",
        report.failed.len(),
        report.checked
    );
    for id in &report.failed {
        println!("{id}");
    }
    Ok(ExitCode::from(1))
}
