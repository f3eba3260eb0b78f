//! `memwarden serve-http`: many MCP sessions over Streamable HTTP in one process (see
//! [`crate::http`]).
//!
//! As `serve`, everything that can fail is checked before the first connection: data dir,
//! keyring, policy, tokens file, listen addresses, store. Listeners are bound, then the sandbox
//! applied (no further bind, the data dir and the tokens file's directory only), then a
//! runtime of two workers, started under the sandbox, serves until SIGTERM/SIGINT: each
//! session's end is recorded and the store closed before exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::serve::{
    PolicyArgs, SANDBOX_APPLIED, StoreArgs, StoreKind, THREAD_BEFORE_SANDBOX, open_postgres,
    open_shared, watch_signals,
};
use super::stores::Engine;
use super::token::TokensFileArg;
use crate::http::front::Role;
use crate::http::listen::{Address, Bound};
use crate::http::tokens::Tokens;
use crate::http::{Daemon, Parts, Readiness};
use crate::server::StartFacts;

/// `memwarden serve-http`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ServeHttpArgs {
    #[command(flatten)]
    pub data_dir: super::DataDirArg,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Where to listen: a loopback IP:PORT or unix:PATH [default: the socket systemd passes,
    /// else 127.0.0.1:8787]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<Address>,
    /// Also serve /healthz and /metrics, without a token, on this address (loopback or unix:);
    /// /metrics on the main address always needs a metrics token.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<Address>,
    #[command(flatten)]
    pub tokens: TokensFileArg,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needed for any address that
    /// is not loopback.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; mode 0600, no link).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: accept client certificates signed by these CAs (PEM); `[http]
    /// client_certificates` maps their names to principals.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse to run unless the landlock filesystem sandbox is enforced.
    #[arg(long)]
    pub require_sandbox: bool,
    /// Append JSON logs to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The address `serve-http` listens on when neither `--listen` nor systemd names one.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// Everything opened and checked before the runtime starts.
struct Prepared {
    data_root: PathBuf,
    tokens_dir: PathBuf,
    policy_sha256: String,
    relaxing_flags: Vec<String>,
    shared: Arc<crate::server::Shared>,
    connect_ports: Vec<u16>,
    tokens: Tokens,
    main: Bound,
    tls: Option<tokio_rustls::TlsAcceptor>,
    monitoring: Option<Bound>,
    readiness: Readiness,
    durable: Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>,
    /// Held until the daemon ends: `restore` refuses while any server runs.
    _lock: crate::datalock::DataLock,
}

/// Serves until a signal.
pub fn run(args: &ServeHttpArgs) -> anyhow::Result<ExitCode> {
    let prepared = prepare(args)?;
    let shared = prepared.shared.clone();
    let owned_paths: Vec<PathBuf> = [Some(&prepared.main), prepared.monitoring.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|b| b.owned_path().map(PathBuf::from))
        .collect();
    // Everything is open and bound: give up the rest of the filesystem, bind, connect (but
    // the database's ports), signals and abstract sockets, before any other thread exists.
    // The runtime's workers and blocking threads, all started later, inherit the restriction.
    let status = crate::sandbox::restrict_with(
        &prepared.data_root,
        &[prepared.tokens_dir.as_path()],
        &prepared.connect_ports,
        args.require_sandbox,
    )?;
    SANDBOX_APPLIED.store(true, Ordering::SeqCst);
    tracing::info!(target: "memwarden::security", event = "sandbox", status = status.as_str(), "sandbox applied");
    // Two workers: HTTP and JSON work for some sessions while others' calls hold the store.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| {
            if !SANDBOX_APPLIED.load(Ordering::SeqCst) {
                THREAD_BEFORE_SANDBOX.store(true, Ordering::SeqCst);
            }
        })
        .build()?;
    let served = runtime.block_on(serve(prepared, status));
    shared.close();
    for path in owned_paths {
        // Under the sandbox this works only for a socket in the data dir; a stale socket
        // elsewhere is replaced at the next start.
        let _ = std::fs::remove_file(path);
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Opens and checks everything: data dir, keyring, policy, tokens, listeners, store.
fn prepare(args: &ServeHttpArgs) -> anyhow::Result<Prepared> {
    let dir = args.data_dir.open()?;
    if dir.init_if_needed()? {
        tracing::info!("initialised a new data dir");
    }
    let keyring = dir.open_keyring()?;
    let policy = Arc::new(args.policy.load()?);
    let tokens_path = args.tokens.path(&args.data_dir)?;
    let tokens = Tokens::open(&tokens_path)
        .map_err(|e| anyhow::anyhow!("{e} (issue one with `memwarden token issue PRINCIPAL`)"))?;
    if tokens.count() == 0 {
        tracing::warn!("the tokens file has no token: every request will be refused");
    }
    let main = match (&args.listen, Bound::from_systemd()?) {
        (Some(address), _) => Bound::bind(address)?,
        (None, Some(bound)) => bound,
        (None, None) => Bound::bind(&DEFAULT_LISTEN.parse().map_err(anyhow::Error::msg)?)?,
    };
    let tls = tls_for(args, &main)?;
    let monitoring = args.metrics_listen.as_ref().map(Bound::bind).transpose()?;
    if let Some(m) = &monitoring {
        anyhow::ensure!(
            m.is_local(),
            "--metrics-listen {} is not loopback or a unix socket: /metrics there needs no token",
            m.describe()
        );
    }
    let mut relaxing_flags = args.policy.relaxing_flags();
    relaxing_flags.extend(args.store.insecure.relaxing_flags());
    tracing::info!(target: "memwarden::security", event = "policy", source = %policy.source,
        sha256 = %policy.sha256, relaxing_flags = ?relaxing_flags, "policy loaded");
    let lock = dir.lock_shared()?;
    let engine = Engine::of(&args.store)?;
    let (shared, connect_ports, readiness) = match args.store.kind {
        StoreKind::Sqlite => (
            open_shared(&dir, keyring, &policy)?,
            Vec::new(),
            Readiness::AuditFile(dir.audit_db()),
        ),
        StoreKind::Postgres => {
            let settings = args.store.insecure.load(&args.store.database_file()?)?;
            let (shared, ports) = open_postgres(&dir, &settings, &keyring, &policy)?;
            (shared, ports, Readiness::Database)
        }
    };
    let durable_dir = dir.clone();
    let tokens_dir = tokens_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    tracing::info!(listen = %main.describe(),
        metrics_listen = monitoring.as_ref().map(Bound::describe).as_deref().unwrap_or("-"),
        tokens = tokens.count(), version = env!("CARGO_PKG_VERSION"), "serving MCP over HTTP");
    Ok(Prepared {
        data_root: dir.root().to_path_buf(),
        tokens_dir,
        policy_sha256: policy.sha256.clone(),
        relaxing_flags,
        shared: Arc::new(shared),
        connect_ports,
        tokens,
        main,
        tls,
        monitoring,
        readiness,
        durable: Box::new(move || super::health::exposition(&engine, Some(&durable_dir))),
        _lock: lock,
    })
}

/// The TLS acceptor the flags ask for; without one, only a local listener is allowed.
fn tls_for(
    args: &ServeHttpArgs,
    main: &Bound,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::acceptor(&crate::http::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        })?),
        _ => None,
    };
    anyhow::ensure!(
        tls.is_some() || main.is_local(),
        "{} is not a loopback address: without TLS memwarden serves HTTP on loopback or a unix \
         socket only (tokens and memories would cross the network in clear); give --tls-cert \
         and --tls-key, or put a TLS-terminating proxy in front",
        main.describe()
    );
    Ok(tls)
}

/// The listeners until a signal (or a listener fails); then every session's
/// end is recorded.
async fn serve(p: Prepared, status: crate::sandbox::Status) -> anyhow::Result<()> {
    anyhow::ensure!(
        !THREAD_BEFORE_SANDBOX.load(Ordering::SeqCst),
        "a runtime thread started before the sandbox was applied: refusing to serve"
    );
    let facts = StartFacts {
        policy_sha256: Some(p.policy_sha256),
        sandbox: status.as_str().to_string(),
        relaxing_flags: p.relaxing_flags,
        peer: None,
        connection: None,
    };
    let shutdown = CancellationToken::new();
    let _signals = watch_signals(shutdown.clone())?;
    let parts = Parts {
        shared: p.shared,
        tokens: p.tokens,
        facts,
        readiness: p.readiness,
        durable: p.durable,
    };
    let daemon = Daemon::new(parts, shutdown.clone());
    let listen = |bound, role, tls| {
        tokio::spawn(crate::http::listen::serve(
            daemon.clone(),
            bound,
            role,
            tls,
            shutdown.clone(),
        ))
    };
    let mut main_task = listen(p.main, Role::Main, p.tls);
    let monitoring_task = p
        .monitoring
        .map(|bound| listen(bound, Role::Monitoring, None));
    let ended = tokio::select! {
        _ = shutdown.cancelled() => None,
        ended = &mut main_task => Some(ended),
    };
    shutdown.cancel();
    daemon.close_sessions(Duration::from_secs(20)).await;
    let ended = match ended {
        Some(ended) => ended,
        None => main_task.await,
    };
    let failed = ended.map_err(anyhow::Error::from).and_then(|r| r).err();
    if let Some(task) = monitoring_task {
        let _ = task.await;
    }
    match failed {
        Some(e) => Err(e.context("the listener failed")),
        None => Ok(()),
    }
}
