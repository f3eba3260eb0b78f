//! `memwarden init`: create a data dir with a fresh keyring and an empty store.

use std::process::ExitCode;

use super::DataDirArg;

pub fn run(args: &DataDirArg) -> anyhow::Result<ExitCode> {
    let dir = args.open()?;
    dir.init()?;
    dir.check()?;
    println!("initialised {}", dir.root().display());
    Ok(ExitCode::SUCCESS)
}
