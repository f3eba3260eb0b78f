//! `memwarden serve-http`: MCP over Streamable HTTP, closed by default.
//!
//! One process serves many sessions on one store. Every request passes, in order:
//! the `Origin` check (403; DNS-rebinding protection), a token in the URL (401, whatever it
//! is), the failed-authentication limit of its source address (429), the bearer token (401;
//! the principal comes from the token, never from the request), the body cap (413) and read
//! timeout (408), and the same protocol checks as a stdio line ([`crate::transport::check_body`]).
//! Then rmcp's Streamable HTTP service ([`rmcp::transport::streamable_http_server`]) runs the
//! MCP session, with the same [`crate::server`] gates as stdio: grants, schemas, rate buckets,
//! cooldown, idle timeout and maximum age, sessions per hour. A session belongs to the
//! principal that opened it: another principal's token with its `Mcp-Session-Id` gets 404,
//! as an unknown or ended session does.
//!
//! [`front`] answers requests, [`sessions`] keeps the session table and its caps, [`listen`]
//! accepts connections (a loopback TCP address, a unix socket, or systemd's socket) with header
//! timeouts and a connection cap, [`tokens`] checks bearer tokens and [`metrics`] renders
//! `/metrics`.

mod auth;
pub mod front;
pub mod listen;
pub mod metrics;
pub mod sessions;
pub mod tls;
pub mod tokens;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::policy::http::HttpPolicy;
use crate::server::{Handler, Shared, StartFacts};

tokio::task_local! {
    /// The handler of the session an `initialize` request is opening: rmcp asks its factory
    /// for a service with no word about the request, so the front sets this around the call.
    static OPENING: Handler;
}

/// rmcp's Streamable HTTP service, serving our handler.
type Mcp = StreamableHttpService<Handler, LocalSessionManager>;

/// How the store's readiness is checked for `/healthz`.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// SQLite: audit.db at this path must open for writing (an immutable or read-only file
    /// fails here before any call does).
    AuditFile(PathBuf),
    /// PostgreSQL: the store and the audit log's latch.
    Database,
}

/// Counts of refused HTTP requests (the live `/metrics` series).
#[derive(Debug, Default)]
pub struct Refused {
    /// Failed authentications by reason.
    pub auth: Mutex<HashMap<&'static str, u64>>,
    /// Requests refused for their `Origin`.
    pub origin: AtomicU64,
    /// Bodies over the cap.
    pub too_large: AtomicU64,
    /// Sessions refused by a cap.
    pub session_cap: AtomicU64,
    /// Requests refused by the protocol checks.
    pub protocol: AtomicU64,
    /// Requests refused by the failed-authentication limit.
    pub limited: AtomicU64,
}

/// Everything one daemon shares between its connections.
pub struct Daemon {
    shared: Arc<Shared>,
    tokens: tokens::Tokens,
    policy: HttpPolicy,
    body_cap: usize,
    sessions: Arc<sessions::Sessions>,
    manager: Arc<LocalSessionManager>,
    mcp: Mcp,
    facts: StartFacts,
    readiness: Readiness,
    failures: Mutex<HashMap<String, auth::Failures>>,
    refused: Refused,
    shutdown: CancellationToken,
    /// Session watchers still recording an end: the daemon waits for them before closing.
    watchers: tokio_util::task::TaskTracker,
    /// The durable series for `/metrics` (the same as `memwarden metrics`).
    durable: Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>,
}

/// What a daemon is made of.
pub struct Parts {
    /// The store, the audit log and the policy.
    pub shared: Arc<Shared>,
    /// The tokens file.
    pub tokens: tokens::Tokens,
    /// The session-start facts every session records (policy, sandbox, relaxing flags).
    pub facts: StartFacts,
    /// How `/healthz` checks the audit log.
    pub readiness: Readiness,
    /// The durable `/metrics` series.
    pub durable: Box<dyn Fn() -> anyhow::Result<String> + Send + Sync>,
}

impl Daemon {
    /// A daemon over `parts`; `shutdown` ends it.
    pub fn new(parts: Parts, shutdown: CancellationToken) -> Arc<Self> {
        let policy = parts.shared.policy().http.clone();
        let body_cap = parts.shared.policy().limits.request_line_bytes;
        let mut manager = LocalSessionManager::default();
        // Sessions end by the policy's clocks (see `server::watch`), not rmcp's.
        manager.session_config.keep_alive = None;
        let manager = Arc::new(manager);
        let config = StreamableHttpServerConfig::default()
            .with_cancellation_token(shutdown.child_token())
            .with_max_request_body_bytes(body_cap)
            .with_sse_keep_alive(Some(std::time::Duration::from_secs(15)));
        let mcp = StreamableHttpService::new(
            || {
                OPENING
                    .try_with(Handler::clone)
                    .map_err(|_| std::io::Error::other("no session is being opened"))
            },
            manager.clone(),
            config,
        );
        Arc::new(Self {
            sessions: sessions::Sessions::new(
                policy.max_sessions,
                policy.max_sessions_per_principal,
            ),
            shared: parts.shared,
            tokens: parts.tokens,
            body_cap,
            policy,
            manager,
            mcp,
            facts: parts.facts,
            readiness: parts.readiness,
            failures: Mutex::default(),
            refused: Refused::default(),
            shutdown,
            watchers: tokio_util::task::TaskTracker::new(),
            durable: parts.durable,
        })
    }

    /// The `[http]` policy in force.
    pub fn policy(&self) -> &HttpPolicy {
        &self.policy
    }

    /// Ends every session (recording each end) and waits for their records, at most `wait`.
    pub async fn close_sessions(&self, wait: std::time::Duration) {
        self.shutdown.cancel();
        self.watchers.close();
        if tokio::time::timeout(wait, self.watchers.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions' ends were not recorded before the deadline");
        }
    }
}
