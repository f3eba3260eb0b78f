//! The `memwarden` binary: parse arguments, log JSON to stderr, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything can create a file: nothing we or SQLite create is readable by others.
    memwarden::fsafe::restrict_umask();
    let cli = memwarden::cli::Cli::parse();
    if let Err(e) = memwarden::logging::init(cli.log_file()) {
        eprintln!("memwarden: error: cannot open the log file: {e}");
        return ExitCode::from(2);
    }
    match memwarden::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "refusing to run");
            eprintln!("memwarden: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
