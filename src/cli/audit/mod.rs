//! `memwarden audit verify|query|head|export|checkpoint|witness|public-key`: the auditor's
//! tools. They open audit.db read-only, need no memory.db, and work on a copy in a read-only
//! directory; with the public key, they need no secret at all. On PostgreSQL
//! (`--store postgres --database-file F`, the auditor role suffices) they read a private copy of
//! `audit.events` exported as an audit.db, so both engines are checked by the same reader.

//!
//! This module holds the command line and dispatches; each group of subcommands has its own
//! file. The audit log is read only through [`crate::audit::AuditReader`]: no SQLite here.

mod files;
mod query;
mod reset;
mod verify;
mod witness;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use crate::audit::query::Filter;

pub use files::PUBLIC_KEY_FILE;
pub(crate) use files::write_public_keys;

/// `memwarden audit`: one of the auditor's subcommands.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// The subcommand.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Where the audit database is.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// The data dir whose audit.db to read.
    #[command(flatten)]
    pub data_dir: super::DataDirArg,
    /// An audit.db file (for example an auditor's copy); overrides --data-dir.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// `--store postgres --database-file F`: the chain in PostgreSQL's `audit.events`.
    #[command(flatten)]
    pub store: super::serve::StoreArgs,
}

/// The audit.db a command reads, and the private copy it may be (removed when dropped).
pub(crate) struct Log {
    path: PathBuf,
    _copy: Option<super::db::ChainCopy>,
}

impl Log {
    /// The audit.db to open.
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Source {
    /// The audit.db to read. One in a data dir is held to the data dir's checks (0700 dir,
    /// 0600 files, no links); a `--db` copy handed to an auditor may have any mode, and is only
    /// opened without following links; a PostgreSQL chain is exported first, in one consistent
    /// snapshot, into a private temporary audit.db.
    fn open(&self) -> anyhow::Result<Log> {
        let plain = |path| Log { path, _copy: None };
        match (&self.db, self.store.kind) {
            (Some(_), super::serve::StoreKind::Postgres) => {
                anyhow::bail!("--db and --store postgres name two different logs: give one of them")
            }
            (Some(p), _) => Ok(plain(p.clone())),
            (None, super::serve::StoreKind::Postgres) => {
                let settings = self.store.insecure.load(&self.store.database_file()?)?;
                let copy = super::db::ChainCopy::export(&settings)?;
                Ok(Log {
                    path: copy.path().to_path_buf(),
                    _copy: Some(copy),
                })
            }
            (None, super::serve::StoreKind::Sqlite) => {
                let dir = self.data_dir.open()?;
                dir.open_dir()?;
                Ok(plain(dir.audit_db()))
            }
        }
    }

    /// Whether the log is the data dir's own audit.db (not a copy, not PostgreSQL's).
    fn is_data_dirs(&self) -> bool {
        self.db.is_none() && self.store.kind == super::serve::StoreKind::Sqlite
    }
}

/// How `audit query` prints events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// How `audit export` writes events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object a line, to stdout.
    Jsonl,
    /// A new audit.db at `--out`, which `memwarden audit verify --db` checks offline.
    Sqlite,
}

/// The auditor's subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain: linkage and hashes always, MACs with the audit key; exit 0 only if all hold.
    Verify {
        #[command(flatten)]
        source: Source,
        /// Keyring holding the audit key (default: the data dir's, when --db is not given).
        #[arg(long, value_name = "FILE")]
        keyring: Option<PathBuf>,
        /// A head recorded earlier (`memwarden audit head`): detects a cut tail or an older copy.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
        /// The audit signing public keys (the data dir's audit-signing.pub, one C2SP vkey a
        /// line): every checkpoint event's signature is checked; no keyring is needed.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        /// A signed checkpoint kept elsewhere (`memwarden audit checkpoint`): the log must match
        /// it at its seq. Repeatable; needs --public-key.
        #[arg(long, value_name = "FILE", requires = "public_key")]
        checkpoint: Vec<PathBuf>,
    },
    /// Print the latest signed checkpoint (a C2SP signed note) to keep off this host.
    Checkpoint {
        #[command(flatten)]
        source: Source,
    },
    /// Print the audit signing public keys of the data dir's keyring (C2SP vkey lines), as
    /// `init` writes them to audit-signing.pub.
    PublicKey {
        #[command(flatten)]
        data_dir: super::DataDirArg,
    },
    /// Keep a signed checkpoint in a state file, accepting a new one only if it extends the
    /// kept one: same log, no smaller seq, and (with --db) a log consistent with both. Refuses
    /// a fork or a rollback (exit 1). For a cron job or a timer on another host.
    Witness {
        /// The audit signing public keys.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Where the last accepted checkpoint is kept (created on first use).
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// A copy of (or read access to) the audit.db the checkpoints are of: the history
        /// between the kept checkpoint and the new one is checked.
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        /// The new checkpoint (a file holding the signed note).
        checkpoint: PathBuf,
    },
    /// Print the chain head as SEQ:HASH, to keep somewhere the agent cannot reach.
    Head {
        #[command(flatten)]
        source: Source,
    },
    /// Print events matching the filters.
    Query {
        #[command(flatten)]
        source: Source,
        /// RFC 3339, inclusive.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        /// ok, denied or error.
        #[arg(long)]
        outcome: Option<String>,
        /// session_start, call, session_end, security, admin or checkpoint.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u64,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Start a new chain in a data dir whose audit.db is missing, emptied, without events or
    /// damaged: the old file is kept beside it and the new chain's first event says why and
    /// how many entries memory.db holds. Refused while anything uses the data dir, and for a
    /// chain that verifies.
    Reset {
        #[command(flatten)]
        data_dir: super::DataDirArg,
        /// Required: the history before this point is no longer linked to what follows.
        #[arg(long)]
        i_understand_the_chain_restarts: bool,
    },
    /// Every event with its hashes, one JSON object a line (for a SIEM), or verbatim into a
    /// new audit.db (`--format sqlite --out FILE`) for the offline verifier.
    Export {
        #[command(flatten)]
        source: Source,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// The audit.db `--format sqlite` writes; it must not exist.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// Runs one `memwarden audit` subcommand.
pub fn run(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        AuditCommand::Verify {
            source,
            keyring,
            expect_head,
            public_key,
            checkpoint,
        } => verify::verify_cmd(
            source,
            keyring.as_ref(),
            expect_head.as_deref(),
            public_key.as_ref(),
            checkpoint,
        ),
        AuditCommand::Checkpoint { source } => query::checkpoint_cmd(source),
        AuditCommand::PublicKey { data_dir } => files::public_key_cmd(data_dir),
        AuditCommand::Witness {
            public_key,
            state,
            db,
            checkpoint,
        } => witness::witness_cmd(public_key, state, db.as_deref(), checkpoint),
        AuditCommand::Head { source } => query::head_cmd(source),
        AuditCommand::Query {
            source,
            since,
            until,
            principal,
            session,
            tool,
            outcome,
            kind,
            limit,
            format,
        } => {
            let filter = Filter {
                since: since.clone(),
                until: until.clone(),
                principal: principal.clone(),
                session: session.clone(),
                tool: tool.clone(),
                outcome: outcome.clone(),
                kind: kind.clone(),
                limit: Some(*limit),
            };
            query::query_cmd(source, &filter, *format)
        }
        AuditCommand::Reset {
            data_dir,
            i_understand_the_chain_restarts,
        } => reset::reset_cmd(data_dir, *i_understand_the_chain_restarts),
        AuditCommand::Export {
            source,
            format,
            out,
        } => query::export_cmd(source, *format, out.as_deref()),
    }
}
