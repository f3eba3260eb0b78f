//! The MCP server: what a process shares, what one session owns, the gates every call passes,
//! and one session's lifetime.
//!
//! A call goes: rate gate (one token, whatever the call holds) → tool gate (a tool we know,
//! granted) → schema gate (raw arguments against the published schema, then serde) → the tool →
//! a structured result, with exactly one call event in the audit log ([`call`]). Schema failures
//! are JSON-RPC -32602 errors; every other refusal is a tool result with `isError: true` and
//! `{code, message}` ([`handler`]). [`lifecycle`] runs a session and records its end.
//!
//! [`Shared`] is what every session of a process uses: schemas, the store, the audit log, the
//! policy, and the fail-closed latch (once an audit append fails, every session refuses every
//! call). A [`Server`] is one session's handle: the shared part plus the session's own identity,
//! grant, rate buckets and counters. Store and audit calls block, so calls run on blocking
//! threads, one at a time per session; on SQLite the writes of all sessions share commits
//! ([`group`]). The server takes its I/O and its shutdown token as
//! parameters, so tests can drive it over in-memory pipes and production over stdio or a socket.

mod call;
mod group;
mod handler;
mod lifecycle;
pub mod live;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::Tool;
use tokio_util::sync::CancellationToken;

use crate::agent_text::Describer;
use crate::audit::sink::Sink;
use crate::audit::{AuditError, NewEvent};
use crate::clock::now_ms;
use crate::config::Limits;
use crate::error::Error;
use crate::policy::{Grant, Policy, RateLimiter};
use crate::schema::Schemas;
use crate::session::Session;
use crate::store::{Quota, Store};
pub use handler::{Handler, SessionGate, StartFacts};
pub use lifecycle::{EndReason, finish, run, wait_end};

/// What every session of one process shares.
pub struct Shared {
    schemas: Schemas,
    /// The store (`None` once closed) and its group of staged writes ([`group`]). Lock order:
    /// store, then audit — never the other way.
    store: Mutex<group::StoreCell>,
    /// Threads waiting for the store's lock.
    queued: AtomicUsize,
    /// `None` once closed.
    audit: Mutex<Option<Sink>>,
    /// Set when an append failed: from then on every session refuses every call (fail closed).
    audit_failed: AtomicBool,
    policy: Arc<Policy>,
    /// Names agent text in the audit log and logs (keyed by the audit key).
    describer: Describer,
    /// Keyed digest of each call's arguments (keyed by the audit key).
    args_digest: Describer,
    /// This process's call counters.
    live: live::Live,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The shared state over an open store and audit log; the store gets the policy's quotas.
    pub fn new(
        schemas: Schemas,
        mut store: Store,
        audit: impl Into<Sink>,
        policy: Arc<Policy>,
    ) -> Self {
        let audit = audit.into();
        // Sessions' writes share commits (see `group`): on SQLite one of audit.db and one of
        // memory.db per group, on PostgreSQL one transaction per group.
        store.set_grouped(true);
        store.set_quota(Quota {
            max_entries: policy.limits.namespace_max_entries,
            max_bytes: policy.limits.namespace_max_bytes,
        });
        let describer = audit.describer(b"memwarden/agent-text/v1");
        let args_digest = audit.describer(b"memwarden/args/v1");
        Self {
            schemas,
            store: Mutex::new(group::StoreCell::new(store)),
            queued: AtomicUsize::new(0),
            audit: Mutex::new(Some(audit)),
            audit_failed: AtomicBool::new(false),
            policy,
            describer,
            args_digest,
            live: live::Live::default(),
        }
    }

    /// This process's call counters.
    pub fn live(&self) -> &live::Live {
        &self.live
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// Whether an append has failed in any session of this process.
    pub fn audit_failed(&self) -> bool {
        self.audit_failed.load(Ordering::SeqCst)
    }

    /// Appends one event, or trips the latch when the log cannot take it.
    fn append(&self, event: &NewEvent<'_>) -> Result<(), AuditError> {
        if self.audit_failed() {
            return Err(AuditError::Open("failed earlier in this process".into()));
        }
        let result = match self.audit().as_mut() {
            Some(log) => log.append(event, now_ms()).map(drop),
            None => Err(AuditError::Open("closed".into())),
        };
        // A database that cannot be reached right now does not break the log: this call is
        // refused (nothing is done without its event) and the next one tries again.
        if result.is_err() && !matches!(result, Err(AuditError::Unreachable(_))) {
            self.trip();
        }
        result
    }

    /// Records a security event that belongs to no session (a refused HTTP connection); the
    /// fail-closed latch applies as to any append.
    pub fn record_security(&self, detail: serde_json::Value) -> Result<(), AuditError> {
        self.append(&NewEvent::new(crate::audit::Kind::Security, detail))
    }

    /// Whether the store is open and reachable (on PostgreSQL: its connection is up, or could
    /// be brought back now) and the audit log takes events (for `/healthz`).
    pub fn ready(&self) -> bool {
        let store = self.store().as_mut().is_some_and(|s| s.reconnect().is_ok());
        store && !self.audit_failed() && self.audit().is_some()
    }

    /// Trips the fail-closed latch.
    fn trip(&self) {
        self.audit_failed.store(true, Ordering::SeqCst);
    }

    /// Closes both databases (checkpointing their WALs); later calls answer UNAVAILABLE.
    pub fn close(&self) {
        // Not `store()`: closing must not reconnect a lost database first.
        let store = self.store_as_is().take();
        if let Some(store) = store
            && let Err(e) = store.close()
        {
            tracing::warn!(error = %e, "closing memory.db failed");
        }
        if let Some(audit) = self.audit().take()
            && let Err(e) = audit.close()
        {
            tracing::warn!(error = %e, "closing audit.db failed");
        }
    }
}

/// What one session owns.
struct SessionState {
    session: Session,
    grant: Grant,
    limits: Limits,
    /// The tools this principal is granted, as listed.
    tools: Vec<Tool>,
    rate: Mutex<RateLimiter>,
    /// Cancelled to end the session from inside (audit failure, rate gate, timeouts).
    end: CancellationToken,
    /// Why the server itself ended the session, when it did.
    end_reason: Mutex<Option<EndReason>>,
    started_logged: AtomicBool,
    schema_refusals: AtomicU64,
    /// Unix ms of the last call, for the idle timeout.
    last_activity: AtomicU64,
    /// Held while a call runs: one call at a time per session, as the agent sent them.
    calls: tokio::sync::Mutex<()>,
}

/// One session's handle on the server: the process's shared state and the session's own.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
    state: Arc<SessionState>,
}

impl Server {
    /// A process serving one session (the stdio and socket-activated case).
    pub fn new(
        schemas: Schemas,
        store: Store,
        audit: impl Into<Sink>,
        session: Session,
        policy: Arc<Policy>,
    ) -> Self {
        Self::for_session(
            Arc::new(Shared::new(schemas, store, audit, policy)),
            session,
        )
    }

    /// A new session on shared state.
    pub fn for_session(shared: Arc<Shared>, session: Session) -> Self {
        let grant = shared.policy.grant(session.principal.name());
        let tools = handler::tool_list(&shared.schemas, &grant);
        let limits = shared.policy.limits.clone();
        let now = now_ms() as u64;
        let rate = RateLimiter::new(&shared.policy.rates, now);
        Self {
            state: Arc::new(SessionState {
                session,
                grant,
                limits,
                tools,
                rate: Mutex::new(rate),
                end: CancellationToken::new(),
                end_reason: Mutex::new(None),
                started_logged: AtomicBool::new(false),
                schema_refusals: AtomicU64::new(0),
                last_activity: AtomicU64::new(now),
                calls: tokio::sync::Mutex::new(()),
            }),
            shared,
        }
    }

    /// The session this handle serves.
    pub fn session(&self) -> &Session {
        &self.state.session
    }

    /// Closes both databases (see [`Shared::close`]).
    pub fn close(&self) {
        self.shared.close();
    }

    /// Appends one event of this session. On failure the session is lost: every later call is
    /// refused and the session ends shortly (after the current reply is written).
    fn append<'a>(&'a self, mut event: NewEvent<'a>) -> Result<(), Error> {
        if self.shared.audit_failed() {
            // Logged once, where it failed; this session ends too.
            self.end_soon();
            return Err(Error::Audit("failed earlier".into()));
        }
        event.session_id = Some(&self.state.session.id);
        event.principal = Some(self.state.session.principal.name());
        self.shared.append(&event).map_err(|e| match e {
            AuditError::Unreachable(why) => {
                tracing::warn!(target: "memwarden::security", event = "audit_unreachable", error = %why,
                    "the audit log's database cannot be reached or cannot take events right now: refusing this call");
                Error::Disconnected {
                    retry_after_ms: crate::store::postgres::RETRY_AFTER_MS,
                }
            }
            e => self.audit_lost(Error::Audit(e.to_string())),
        })
    }

    /// The audit log could not be written: log it, end the session, pass the error on.
    fn audit_lost(&self, err: Error) -> Error {
        self.shared.trip();
        tracing::error!(target: "memwarden::security", event = "audit_unwritable", error = %err,
            "audit.db cannot be written: refusing every call and ending the session");
        self.end_soon();
        err
    }

    /// Ends the session from inside, shortly (so the current reply is written first).
    fn end_session(&self, reason: EndReason) {
        self.state
            .end_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.end_soon();
    }

    fn end_soon(&self) {
        if self.state.end.is_cancelled() {
            return;
        }
        let end = self.state.end.clone();
        tokio::spawn(async move {
            // Let the refusal reach the client first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            end.cancel();
        });
    }

    /// The session's gate, for a transport that checks messages itself (Streamable HTTP).
    pub fn gate(&self) -> SessionGate {
        SessionGate(self.clone())
    }

    /// Whether the session start was recorded (its `initialize` succeeded).
    pub fn started(&self) -> bool {
        self.state.started_logged.load(Ordering::SeqCst)
    }

    /// The process's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Marks the session active now (for the idle timeout).
    pub(crate) fn touch(&self) {
        self.state
            .last_activity
            .store(now_ms() as u64, Ordering::Relaxed);
    }
}
