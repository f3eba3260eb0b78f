//! `memwarden serve`: one MCP session over stdin/stdout.
//!
//! Everything that can fail is checked before the first byte of protocol: data dir, keyring,
//! schemas, store. Then a single-threaded runtime serves the session until stdin closes or a
//! SIGTERM/SIGINT arrives; the call in flight finishes and the store is closed before exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::DataDir;
use crate::keys::Keyring;
use crate::policy::Policy;
use crate::principal::Principal;
use crate::schema::Schemas;
use crate::server::{self, Server, Shared, StartFacts};
use crate::session::Session;
use crate::store::StoreOptions;

/// `memwarden serve`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data_dir: super::DataDirArg,
    /// Who the agent on the other end is (used when stdin is not a unix socket).
    #[arg(long, value_name = "NAME", default_value = Principal::DEFAULT)]
    pub principal: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Refuse to run unless the landlock filesystem sandbox is enforced.
    #[arg(long)]
    pub require_sandbox: bool,
    /// Append JSON logs to FILE instead of stderr (see deploy/memwarden.logrotate).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Which store serves: memory.db in the data dir, or a PostgreSQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// memory.db and audit.db in the data dir.
    Sqlite,
    /// The database the database file names (created by `memwarden db init`).
    Postgres,
}

/// How the operator names the store.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// The store's engine (the hardened units' PostgreSQL drop-in sets it through the
    /// environment, for every command they run).
    #[arg(
        id = "store",
        long = "store",
        value_enum,
        default_value = "sqlite",
        env = "MEMWARDEN_STORE",
        global = true
    )]
    pub kind: StoreKind,
    /// PostgreSQL connection settings (libpq URL or key=value; mode 0600, no link)
    /// [default: $CREDENTIALS_DIRECTORY/database when systemd passes one]
    #[arg(long, value_name = "FILE", global = true)]
    pub database_file: Option<PathBuf>,
    #[command(flatten)]
    pub insecure: InsecureDatabaseArg,
}

/// The operator's explicit consent to plaintext with a database on another host.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct InsecureDatabaseArg {
    /// Insecure: allow a database file to name a host that is not this machine without
    /// sslmode=verify-full, so passwords and memories cross the network in plaintext (logged as
    /// a security warning; `serve` also records the flag in the audit log's session_start).
    #[arg(long)]
    pub allow_insecure_database: bool,
}

impl InsecureDatabaseArg {
    /// What loading the database file is told.
    pub fn remote_plaintext(self) -> crate::pgconn::RemotePlaintext {
        if self.allow_insecure_database {
            crate::pgconn::RemotePlaintext::Allow
        } else {
            crate::pgconn::RemotePlaintext::Refuse
        }
    }

    /// Reads and checks the database file at `path` under this flag.
    pub fn load(
        self,
        path: &std::path::Path,
    ) -> Result<crate::pgconn::DatabaseSettings, crate::pgconn::SettingsError> {
        crate::pgconn::DatabaseSettings::load_with(path, self.remote_plaintext())
    }

    /// The flag when given, for the audit log's relaxing flags.
    pub fn relaxing_flags(self) -> Vec<String> {
        if self.allow_insecure_database {
            vec!["--allow-insecure-database".to_string()]
        } else {
            Vec::new()
        }
    }
}

impl StoreArgs {
    /// The database file for `--store postgres`: the flag, else systemd's credential.
    pub fn database_file(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.database_file {
            return Ok(path.clone());
        }
        match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Ok(PathBuf::from(dir).join("database")),
            None => anyhow::bail!(
                "--store postgres needs --database-file FILE (or a `database` credential from systemd)"
            ),
        }
    }
}

/// How the operator names the policy.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Policy file [default: the built-in policy].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Development only: accept a policy that a uid other than root could change (a file or
    /// directory on its path owned by another uid, writable by group or others, or a link).
    #[arg(long)]
    pub allow_owned_policy: bool,
    /// Refuse any policy file whose SHA-256 is not this (hex).
    #[arg(long, value_name = "HEX")]
    pub policy_sha256: Option<String>,
}

impl PolicyArgs {
    /// Loads the policy named, or the built-in one.
    pub fn load(&self) -> anyhow::Result<Policy> {
        match &self.policy {
            Some(path) => Ok(crate::policy::load_file(
                path,
                self.allow_owned_policy,
                self.policy_sha256.as_deref(),
            )?),
            None => {
                if self.policy_sha256.is_some() {
                    anyhow::bail!("--policy-sha256 needs --policy FILE");
                }
                Ok(crate::policy::load::builtin()?)
            }
        }
    }

    /// Flags that relax a safety check, for the audit log.
    pub fn relaxing_flags(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.allow_owned_policy {
            v.push("--allow-owned-policy".to_string());
        }
        v
    }
}

/// Serves one session over stdin/stdout (or the socket systemd passed as both).
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.open()?;
    if dir.init_if_needed()? {
        tracing::info!("initialised a new data dir");
    }
    let keyring = dir.open_keyring()?;
    let policy = Arc::new(args.policy.load()?);
    let peer = crate::principal::peer_of(0);
    let principal = principal_of(args, &policy, peer)?;
    let mut relaxing_flags = args.policy.relaxing_flags();
    relaxing_flags.extend(args.store.insecure.relaxing_flags());
    tracing::info!(target: "memwarden::security", event = "policy", source = %policy.source,
        sha256 = %policy.sha256, relaxing_flags = ?relaxing_flags, "policy loaded");
    if !policy.principals.contains_key(principal.name()) {
        tracing::warn!(principal = %principal, "the principal is not in the policy: it gets no tools");
    }
    // Held until this session ends: `restore` refuses while any session runs.
    let _lock = dir.lock_shared()?;
    let (shared, connect_ports) = match args.store.kind {
        StoreKind::Sqlite => (open_shared(&dir, keyring, &policy)?, Vec::new()),
        StoreKind::Postgres => {
            let settings = args.store.insecure.load(&args.store.database_file()?)?;
            open_postgres(&dir, &settings, &keyring, &policy)?
        }
    };
    let shared = Arc::new(shared);
    let session = Session::new(principal);
    tracing::info!(session = %session.id, principal = %session.principal, version = env!("CARGO_PKG_VERSION"), "session starting");
    let server = Server::for_session(shared.clone(), session);
    let mut facts = StartFacts {
        policy_sha256: Some(policy.sha256.clone()),
        sandbox: String::new(),
        relaxing_flags,
        peer,
        connection: None,
    };
    let data_root = dir.root().to_path_buf();
    let require_sandbox = args.require_sandbox;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(|| {
            if !SANDBOX_APPLIED.load(Ordering::SeqCst) {
                THREAD_BEFORE_SANDBOX.store(true, Ordering::SeqCst);
            }
        })
        .build()?;
    runtime.block_on(async move {
        // Pipes (how MCP clients launch us) go through the non-blocking pipe driver, on their
        // own open file descriptions; anything else falls back to tokio's blocking stdio.
        // This reopens them through /proc, so it comes before the sandbox.
        let (read, write) = rmcp::transport::io::stdio_pipes();
        // Everything is open: give up the rest of the filesystem, TCP, signals and abstract
        // sockets. No thread has been started yet: the blocking threads that run tool calls
        // (and tokio's blocking stdio) are all started later, from this thread, and inherit the
        // restriction.
        let status = crate::sandbox::restrict(&data_root, &connect_ports, require_sandbox)?;
        SANDBOX_APPLIED.store(true, Ordering::SeqCst);
        // Landlock binds the thread that asks and the threads it starts later: a runtime thread
        // started before this point would run tool calls unrestricted. Refuse rather than serve.
        anyhow::ensure!(
            !THREAD_BEFORE_SANDBOX.load(Ordering::SeqCst),
            "a runtime thread started before the sandbox was applied: refusing to serve"
        );
        tracing::info!(target: "memwarden::security", event = "sandbox", status = status.as_str(), "sandbox applied");
        facts.sandbox = status.as_str().to_string();
        let shutdown = CancellationToken::new();
        let _signals = watch_signals(shutdown.clone())?;
        server::run(server, facts, read, write, shutdown).await;
        anyhow::Ok(())
    })?;
    shared.close();
    // With the blocking fallback, stdin is read on a thread that may sit in read(2) forever after
    // a SIGTERM: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(ExitCode::SUCCESS)
}

/// Set once the sandbox is applied to the runtime's thread.
pub(super) static SANDBOX_APPLIED: AtomicBool = AtomicBool::new(false);
/// Set when a runtime thread (a blocking-pool thread, which runs tool calls) started before it.
pub(super) static THREAD_BEFORE_SANDBOX: AtomicBool = AtomicBool::new(false);

/// Who is calling: over a unix socket from another uid (the hardened install), the kernel says
/// — the peer's uid through the policy. A peer with our own uid (an MCP client that spawned us
/// over a socketpair, as Node-based clients do) could have written our launch command anyway,
/// so its --principal stands.
fn principal_of(
    args: &ServeArgs,
    policy: &Policy,
    peer: Option<crate::principal::Peer>,
) -> anyhow::Result<Principal> {
    let own_uid = crate::fsafe::current_uid();
    Ok(match peer.filter(|p| p.uid != own_uid) {
        Some(peer) => {
            let p = Principal::for_peer(peer, policy.principal_for_uid(peer.uid));
            if p.name() != args.principal {
                tracing::info!(peer_uid = peer.uid, principal = %p, flag = %args.principal,
                    "stdin is a unix socket: the principal comes from the peer uid, not --principal");
            }
            p
        }
        None => Principal::from_flag(&args.principal)?,
    })
}

/// What the process shares between sessions: the schemas, both databases (audit.db first: it
/// refuses a vanished chain before memory.db is touched) and the policy.
pub(super) fn open_shared(
    dir: &DataDir,
    keyring: Keyring,
    policy: &Arc<Policy>,
) -> anyhow::Result<Shared> {
    let schemas = Schemas::load()?;
    let options = StoreOptions {
        synchronous: policy.synchronous,
        heap_limit: policy.sqlite_heap_limit,
    };
    let (store, audit) = dir.open_databases(&keyring, options)?;
    let audit = crate::audit::append::with_signing_key(
        audit,
        keyring.audit_signing.as_ref(),
        policy.checkpoints,
    );
    if dir.keyring().starts_with(dir.root()) {
        // A keyring in the data dir can be rotated while this session runs (`keys rotate`,
        // `keys retire`): follow it. A credential handed over by systemd is a copy made for this
        // session and cannot change under it.
        store.watch_keyring(&dir.keyring())?;
    }
    Ok(Shared::new(schemas, store, audit, policy.clone()))
}

/// The process's shared state over PostgreSQL: the store and the audit log are two connections
/// to the database the file names (both made now, before the sandbox; a database that cannot
/// be reached stops `serve` here). The data dir holds the keyring alone. Also returns the TCP
/// ports the sandbox must leave open for reconnecting.
pub(super) fn open_postgres(
    dir: &DataDir,
    settings: &crate::pgconn::DatabaseSettings,
    keyring: &Keyring,
    policy: &Arc<Policy>,
) -> anyhow::Result<(Shared, Vec<u16>)> {
    use crate::store::postgres::Postgres;
    let schemas = Schemas::load()?;
    let backend = Postgres::connect(settings, keyring.audit.clone())?;
    let store = crate::store::Store::with_backend(Box::new(backend), keyring.entry.clone());
    if dir.keyring().starts_with(dir.root()) {
        // As on SQLite: follow a keyring rotated in the data dir while this session runs.
        store.watch_keyring(&dir.keyring())?;
    }
    let audit = crate::audit::pg_log::PgLog::connect(settings, keyring.audit.clone())?;
    tracing::info!(target: "memwarden::security", event = "store", engine = "postgres",
        tls = settings.uses_tls(), "store and audit events in PostgreSQL");
    let shared = Shared::new(
        schemas,
        store,
        crate::audit::sink::Sink::Postgres(audit),
        policy.clone(),
    );
    Ok((shared, settings.tcp_ports()))
}

/// Cancels `shutdown` on SIGTERM or SIGINT. Dropping the guard stops watching.
pub(super) fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<SignalGuard> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let task = tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down: finishing the call in flight");
        shutdown.cancel();
    });
    Ok(SignalGuard(task))
}

pub(super) struct SignalGuard(tokio::task::JoinHandle<()>);

impl Drop for SignalGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
