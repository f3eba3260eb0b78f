//! `memwarden db`: PostgreSQL administration. `db init` creates (idempotently) the roles, the
//! `memory` and `audit` schemas and their grants, connecting with the operator's admin settings;
//! `db export-audit` copies the audit chain into an audit.db for the offline verifier.

use std::path::PathBuf;
use std::process::ExitCode;

use super::serve::InsecureDatabaseArg;
use crate::pgconn::DatabaseSettings;
use crate::store::postgres::schema::{self, APP_ROLE, AUDITOR_ROLE, OWNER_ROLE};

/// `memwarden db`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// The command.
    #[command(subcommand)]
    pub command: DbCommand,
}

/// What `memwarden db` does.
#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the roles, schemas, tables and grants (safe to run again).
    Init {
        /// Connection settings of a role that may create roles and schemas in the database
        /// (libpq URL or key=value; mode 0600, no symlink). Never put a password on argv.
        #[arg(long, value_name = "FILE")]
        admin_database_file: PathBuf,
        #[command(flatten)]
        insecure: InsecureDatabaseArg,
    },
    /// Copy every audit event, verbatim, into a new audit.db that `memwarden audit verify --db`
    /// checks offline (connect as the auditor role).
    ExportAudit {
        /// Connection settings (as for `init`; the auditor role suffices).
        #[arg(long, value_name = "FILE")]
        database_file: PathBuf,
        /// The audit.db to write; it must not exist.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        insecure: InsecureDatabaseArg,
    },
}

/// Runs a `db` command.
pub fn run(args: &DbArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        DbCommand::Init {
            admin_database_file,
            insecure,
        } => init(&insecure.load(admin_database_file)?),
        DbCommand::ExportAudit {
            database_file,
            out,
            insecure,
        } => export_audit(&insecure.load(database_file)?, out),
    }
}

/// Connects with `settings` and runs `work` on a current-thread runtime.
pub(crate) fn with_client<T>(
    settings: &DatabaseSettings,
    work: impl AsyncFnOnce(&mut tokio_postgres::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (mut client, connection) = settings
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the database: {}", describe(&e)))?;
        let driver = tokio::spawn(connection);
        let result = work(&mut client).await;
        drop(client);
        let _ = driver.await;
        result
    })
}

/// Copies the audit chain of the database `settings` reach into a new audit.db at `out`.
pub fn export_chain(
    settings: &DatabaseSettings,
    out: &std::path::Path,
) -> anyhow::Result<crate::audit::Head> {
    with_client(settings, async |client| {
        crate::audit::postgres::export_sqlite(client, out)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
}

/// A private copy of a PostgreSQL audit chain as an audit.db, for the offline readers (`verify`'s
/// reconciliation, `audit verify|head|query|export --store postgres`): in a directory only we
/// can enter, under the temp dir, removed with what it holds when dropped.
pub(crate) struct ChainCopy {
    dir: std::path::PathBuf,
    db: std::path::PathBuf,
}

impl ChainCopy {
    /// Copies the chain of the database `settings` name.
    pub(crate) fn export(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("memwarden-chain-{}", uuid::Uuid::new_v4()));
        // Fails if anything is already there: never a directory someone else prepared.
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let copy = Self {
            db: dir.join("audit.db"),
            dir,
        };
        export_chain(settings, &copy.db)?;
        Ok(copy)
    }

    /// The copy's audit.db.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.db
    }
}

impl Drop for ChainCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn export_audit(settings: &DatabaseSettings, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let head = export_chain(settings, out)?;
    println!("exported the audit chain to {}: head {head}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn init(settings: &DatabaseSettings) -> anyhow::Result<ExitCode> {
    let report = with_client(settings, async |client| {
        schema::init(client)
            .await
            .map_err(|e| anyhow::anyhow!("db init failed: {}", describe(&e)))
    })?;
    println!(
        "database schema version {} -> {}; roles {OWNER_ROLE} (owner, no login), {APP_ROLE} \
         (serve), {AUDITOR_ROLE} (read-only audit)",
        report.from, report.to
    );
    Ok(ExitCode::SUCCESS)
}

/// The server's message (its SQLSTATE and text), or the socket's error (`Connection refused`,
/// which names no host or path), never the connection settings.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(tls) = crate::pgconn::handshake_failure(e) {
        return tls;
    }
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>())
        {
            Some(io) => format!("{e}: {io}"),
            None => e.to_string(),
        },
    }
}
