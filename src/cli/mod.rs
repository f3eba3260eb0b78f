//! The operator's command line: parsing, and one module per subcommand group. Never reachable
//! from an agent; only the operator (or an MCP client's launch command) picks these flags.

pub mod audit;
pub mod backup;
mod backup_pg;
pub mod connect;
pub mod db;
pub mod export;
pub mod health;
pub mod import;
pub mod init;
pub mod keys;
pub mod maintain;
mod manifest;
pub mod migrate;
pub mod policy;
pub mod purge;
pub mod review;
pub mod sandbox_check;
pub mod serve;
pub mod serve_http;
mod stores;
pub mod token;
mod transfer;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "memwarden",
    version,
    about = "A secure, sandboxed memory store for AI agents, over MCP (stdio or Streamable HTTP)."
)]
/// The command line.
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data dir: 0700 dir, 0600 keyring, memory.db.
    Init(DataDirArg),
    /// Serve one MCP session over stdin/stdout (initialises a missing data dir first).
    Serve(serve::ServeArgs),
    /// Serve MCP over Streamable HTTP (loopback or a unix socket), bearer tokens required.
    ServeHttp(serve_http::ServeHttpArgs),
    /// Bearer tokens for serve-http: issue, list, revoke.
    Token(token::TokenArgs),
    /// Check every stored row's seal and reconcile entries with the audit log; exits 1 listing
    /// what fails.
    Verify(verify::VerifyArgs),
    /// The auditor's tools: verify, head, query, export (read-only, offline).
    Audit(audit::AuditArgs),
    /// Policy files: `policy check FILE`.
    Policy(policy::PolicyCmd),
    /// Quarantined memories: list, show, approve, reject.
    Review(review::ReviewArgs),
    /// Apply the policy's retention: delete old entries and old tombstones.
    Purge(purge::PurgeArgs),
    /// Merge the full-text indexes, optimize and checkpoint both databases, while servers run.
    Maintain(maintain::MaintainArgs),
    /// Apply serve's sandbox, try what it forbids, and report each attempt.
    SandboxCheck(sandbox_check::SandboxCheckArgs),
    /// Bridge stdin/stdout to the hardened service's unix socket.
    Connect(connect::ConnectArgs),
    /// Entry keys: list, rotate, retire.
    Keys(keys::KeysArgs),
    /// Re-seal rows still sealed with an older key (in batches; resumable).
    Reseal(keys::ResealArgs),
    /// Copy both databases while servers run, then verify the copy and write a manifest.
    Backup(backup::BackupArgs),
    /// Verify a backup and swap it in (stop the service first).
    Restore(backup::RestoreArgs),
    /// Write sealed rows, seals included, as portable JSON lines (to stdout or --out).
    Export(export::ExportArgs),
    /// Load a portable export into this store: every seal checked first, rows kept unchanged.
    Import(import::ImportArgs),
    /// Move a whole store between SQLite and PostgreSQL (seals and audit chain unchanged;
    /// resumable; both sides verified at the end).
    Migrate(migrate::MigrateArgs),
    /// Check databases, keyring, policy, audit chain, disk and landlock; JSON, exit 1 if unwell.
    Health(health::HealthArgs),
    /// Prometheus text exposition derived from the databases.
    Metrics(health::MetricsArgs),
    /// PostgreSQL administration: `db init` creates the roles, schemas and grants.
    Db(db::DbArgs),
}

/// Where systemd's LoadCredential= puts the keyring, relative to $CREDENTIALS_DIRECTORY.
const CREDENTIAL_NAME: &str = "keyring";

/// Where the data dir is (and, optionally, a keyring kept outside it).
#[derive(Debug, clap::Args)]
pub struct DataDirArg {
    /// Keyring kept outside the data dir [default: $CREDENTIALS_DIRECTORY/keyring when
    /// systemd passes one, else DIR/keyring.toml]
    #[arg(long, value_name = "FILE", global = true)]
    pub keyring_file: Option<PathBuf>,
    /// Data directory [default: $XDG_DATA_HOME/memwarden or ~/.local/share/memwarden]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    /// The data dir, with the keyring the operator or systemd points at, if any.
    pub fn open(&self) -> anyhow::Result<crate::config::DataDir> {
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join(CREDENTIAL_NAME))
            .filter(|p| p.exists());
        Ok(crate::config::DataDir::new(self.resolve()?)
            .with_keyring(self.keyring_file.clone().or(credential)))
    }

    /// The data dir's path: the flag, else the default under the user's data home.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .ok_or_else(|| {
                anyhow::anyhow!("no --data-dir given and neither XDG_DATA_HOME nor HOME is set")
            })?;
        Ok(base.join("memwarden"))
    }
}

impl Cli {
    /// The log file `serve --log-file` names, if any.
    pub fn log_file(&self) -> Option<&std::path::Path> {
        match &self.command {
            Command::Serve(args) => args.log_file.as_deref(),
            Command::ServeHttp(args) => args.log_file.as_deref(),
            _ => None,
        }
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init(args) => init::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::ServeHttp(args) => serve_http::run(&args),
        Command::Token(args) => token::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Audit(args) => audit::run(&args),
        Command::Policy(args) => policy::run(&args),
        Command::Review(args) => review::run(&args),
        Command::Purge(args) => purge::run(&args),
        Command::Maintain(args) => maintain::run(&args),
        Command::SandboxCheck(args) => sandbox_check::run(&args),
        Command::Connect(args) => connect::run(&args),
        Command::Keys(args) => keys::run(&args),
        Command::Reseal(args) => keys::reseal(&args),
        Command::Backup(args) => backup::backup(&args),
        Command::Restore(args) => backup::restore(&args),
        Command::Export(args) => export::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Health(args) => health::health(&args),
        Command::Metrics(args) => health::metrics(&args),
        Command::Db(args) => db::run(&args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
