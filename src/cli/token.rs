//! `memwarden token issue|list|revoke`: the bearer tokens of `serve-http`. `issue` prints the
//! new token once, on stdout, and keeps only its SHA-256; `list` shows labels, principals,
//! creation times and digest prefixes; `revoke` removes one (a running daemon refuses it from
//! its next request on). Every change is an atomic rewrite of the file, under its lock.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::http::tokens::{Scope, TokenFile};
use crate::principal::Principal;

/// Where systemd's LoadCredential= puts the tokens file, relative to $CREDENTIALS_DIRECTORY.
pub const CREDENTIAL_NAME: &str = "tokens";

/// Which tokens file.
#[derive(Debug, clap::Args)]
pub struct TokensFileArg {
    /// Tokens file (mode 0600, no link) [default: $CREDENTIALS_DIRECTORY/tokens when systemd
    /// passes one, else DATA_DIR/tokens.toml]
    #[arg(long, value_name = "FILE", global = true)]
    pub tokens_file: Option<PathBuf>,
}

impl TokensFileArg {
    /// The file the flag, systemd or the data dir names.
    pub fn path(&self, data_dir: &super::DataDirArg) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.tokens_file {
            return Ok(path.clone());
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = PathBuf::from(dir).join(CREDENTIAL_NAME);
            if path.exists() {
                return Ok(path);
            }
        }
        Ok(data_dir.resolve()?.join("tokens.toml"))
    }
}

/// `memwarden token`'s arguments.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
    #[command(flatten)]
    pub file: TokensFileArg,
    #[command(flatten)]
    pub data_dir: super::DataDirArg,
}

/// `memwarden token`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue a token for PRINCIPAL (or, with --metrics, for GET /metrics); printed once.
    Issue {
        /// The principal the token's sessions run as (a principal of the policy).
        #[arg(required_unless_present = "metrics", conflicts_with = "metrics")]
        principal: Option<String>,
        /// A token for GET /metrics only, with no principal.
        #[arg(long)]
        metrics: bool,
        /// A name for it, unique in the file [default: PRINCIPAL-N or metrics-N].
        #[arg(long)]
        label: Option<String>,
    },
    /// List issued tokens: label, scope, principal, created, digest prefix (never a token).
    List,
    /// Revoke a token by its label or a digest prefix of at least 8 hex digits.
    Revoke {
        /// Label or digest prefix.
        which: String,
    },
}

/// Runs `token …`.
pub fn run(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let path = args.file.path(&args.data_dir)?;
    if path.starts_with(args.data_dir.resolve()?) {
        // The default place, DATA_DIR/tokens.toml: a new machine's first `token issue`
        // creates the data dir as `serve` would, so `serve-http` finds it initialised.
        let dir = args.data_dir.open()?;
        if dir.init_if_needed()? {
            eprintln!("initialised a new data dir at {}", dir.root().display());
        }
    }
    let _lock = lock(&path)?;
    match &args.command {
        TokenCommand::List => {
            let file = TokenFile::load(&path, true)?;
            for e in &file.entries {
                let scope = match e.scope {
                    Scope::Mcp => "mcp",
                    Scope::Metrics => "metrics",
                };
                println!(
                    "{}\t{scope}\t{}\t{}\t{}",
                    e.label,
                    e.principal.as_deref().unwrap_or("-"),
                    e.created,
                    e.shown()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Issue {
            principal,
            metrics,
            label,
        } => {
            let mut file = TokenFile::load(&path, true)?;
            let principal = principal.as_deref().map(Principal::from_flag).transpose()?;
            let scope = if *metrics { Scope::Metrics } else { Scope::Mcp };
            let base = principal.as_ref().map_or("metrics", Principal::name);
            let label = match label {
                Some(l) => l.clone(),
                None => (1..)
                    .map(|n| format!("{base}-{n}"))
                    .find(|l| !file.entries.iter().any(|e| e.label == *l))
                    .unwrap_or_default(),
            };
            let now = crate::clock::format_ms(crate::clock::now_ms());
            let token = file
                .issue(scope, principal.as_ref(), &label, &now)
                .map_err(anyhow::Error::msg)?;
            file.save(&path)?;
            eprintln!(
                "issued token {label:?} ({}); it is shown once, below — keep it secret",
                file.entries.last().map_or("", |e| e.shown())
            );
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { which } => {
            let mut file = TokenFile::load(&path, false)?;
            let gone = file.revoke(which).map_err(anyhow::Error::msg)?;
            file.save(&path)?;
            eprintln!("revoked token {:?} ({})", gone.label, gone.shown());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The tokens file's lock (a `.NAME.lock` beside it), so two changes never interleave.
fn lock(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let dir = crate::fsafe::Dir::open(parent)?;
    Ok(dir.lock_exclusive(&format!(".{name}.lock"))?)
}
