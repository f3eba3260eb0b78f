//! One session's life: serving it until the client closes, a signal, a timeout or the audit
//! log ends it; then recording why it ended and signing a checkpoint over its last event.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::Server;
use super::handler::{Handler, SessionGate, StartFacts};
use crate::audit::{Kind, NewEvent};
use crate::clock::now_ms;
use crate::transport::LineTransport;
use rmcp::ServiceExt;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed its side (stdin EOF).
    Closed,
    /// The shutdown token fired (SIGTERM / SIGINT).
    Shutdown,
    /// The client went away before finishing `initialize`.
    NoHandshake,
    /// audit.db could not be written: the session was ended (fail closed).
    AuditFailed,
    /// The rate gate ended it (too many cooldowns, or too many new sessions).
    RateLimited,
    /// No call for the policy's idle timeout.
    IdleTimeout,
    /// Older than the policy's maximum session age.
    MaxAge,
    /// A call failed in a way that leaves the session's state in doubt (it panicked).
    Internal,
}

impl EndReason {
    /// The reason as the session_end event records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "client_closed",
            Self::Shutdown => "shutdown",
            Self::NoHandshake => "no_handshake",
            Self::AuditFailed => "audit_failed",
            Self::RateLimited => "rate_limited",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxAge => "max_age",
            Self::Internal => "internal_error",
        }
    }
}

/// Ends the session when it has been idle, or alive, for longer than the policy allows
/// (`idle_cap`, when given, shortens the idle timeout: an HTTP client can vanish without a
/// word, while a stdio session ends with its pipe).
async fn session_clock(server: Server, idle_cap: Option<Duration>) {
    let mut limits = server.shared.policy.sessions;
    limits.idle_timeout = match (limits.idle_timeout, idle_cap) {
        (Some(policy), Some(cap)) => Some(policy.min(cap)),
        (policy, cap) => policy.or(cap),
    };
    if limits.idle_timeout.is_none() && limits.max_age.is_none() {
        return;
    }
    let tick = [limits.idle_timeout, limits.max_age]
        .into_iter()
        .flatten()
        .min()
        .map_or(Duration::from_secs(1), |d| d / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let idle_ms =
            (now_ms() as u64).saturating_sub(server.state.last_activity.load(Ordering::Relaxed));
        if let Some(idle) = limits.idle_timeout
            && idle_ms >= idle.as_millis() as u64
        {
            tracing::info!(session = %server.session().id, "idle timeout: ending the session");
            server.end_session(EndReason::IdleTimeout);
            return;
        }
        if let Some(max) = limits.max_age
            && server.session().started.elapsed() >= max
        {
            tracing::info!(session = %server.session().id, "maximum session age: ending the session");
            server.end_session(EndReason::MaxAge);
            return;
        }
    }
}

/// Serves one MCP session over `read`/`write` until the client closes, `shutdown` fires or the
/// audit log fails. Records the session's end and logs the chain head before returning.
pub async fn run<R, W>(
    server: Server,
    facts: StartFacts,
    read: R,
    write: W,
    shutdown: CancellationToken,
) -> EndReason
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let max_line = server.state.limits.request_line_bytes;
    let gate = SessionGate(server.clone());
    let (transport, writer) = LineTransport::new(read, write, max_line, gate);
    let handler = Handler {
        server: server.clone(),
        facts: Arc::new(facts),
    };
    // rmcp cancels the token it is given when the transport closes; hand it a child so that
    // `shutdown` itself only ever reports our own signal.
    let service_token = shutdown.child_token();
    let session_end = server.state.end.clone();
    let watcher_token = service_token.clone();
    let watcher = tokio::spawn(async move {
        session_end.cancelled().await;
        watcher_token.cancel();
    });
    let clock = tokio::spawn(session_clock(server.clone(), None));
    let handshake = match handler.serve_with_ct(transport, service_token).await {
        Ok(running) => {
            let _ = running.waiting().await;
            true
        }
        // The error's text can quote the whole first message (content included): log none of it.
        Err(_) => {
            tracing::info!("session ended before initialize completed");
            false
        }
    };
    watcher.abort();
    clock.abort();
    // A call still running (its thread cannot be stopped) finishes first, so its event and
    // commit come before the session's end and its signed checkpoint. A write waits for the
    // store's lock for the busy timeout at most (10 s).
    let _turn = tokio::time::timeout(Duration::from_secs(15), server.state.calls.lock()).await;
    // Every reply queued so far reaches the client before the session is recorded as over.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    let reason = end_reason(&server, &shutdown, handshake);
    record_end(&server, reason);
    reason
}

/// Waits for the end of a session whose messages arrive elsewhere (Streamable HTTP), running
/// its clock (idle for at most `idle_fallback`, or the policy's shorter one): the server ends it, the
/// client ends it (`client_closed`) or `shutdown` fires. Then stop routing requests to it and
/// call [`finish`].
pub async fn wait_end(
    server: &Server,
    idle_fallback: Duration,
    client_closed: &CancellationToken,
    shutdown: &CancellationToken,
) {
    let clock = tokio::spawn(session_clock(server.clone(), Some(idle_fallback)));
    tokio::select! {
        _ = server.state.end.cancelled() => {}
        _ = client_closed.cancelled() => {}
        _ = shutdown.cancelled() => {}
    }
    clock.abort();
}

/// Records the end of a session [`wait_end`] saw end, once a call still running has finished
/// (as [`run`] does for a stdio session).
pub async fn finish(server: Server, shutdown: &CancellationToken) -> EndReason {
    let _turn = tokio::time::timeout(Duration::from_secs(15), server.state.calls.lock()).await;
    let reason = end_reason(&server, shutdown, true);
    let ending = server.clone();
    let _ = tokio::task::spawn_blocking(move || record_end(&ending, reason)).await;
    reason
}

/// Why the session ended: the audit log's failure above all, then the server's own reason
/// (rate gate, timeouts), then what the transport saw.
fn end_reason(server: &Server, shutdown: &CancellationToken, handshake: bool) -> EndReason {
    let seen = if server.shared.audit_failed() {
        EndReason::AuditFailed
    } else if shutdown.is_cancelled() {
        EndReason::Shutdown
    } else if handshake {
        EndReason::Closed
    } else {
        EndReason::NoHandshake
    };
    let own = *server
        .state
        .end_reason
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match (seen, own) {
        (EndReason::AuditFailed, _) => EndReason::AuditFailed,
        (_, Some(own)) => own,
        (seen, None) => seen,
    }
}

/// Records the session's end: its event, a signed checkpoint over it, and the chain head in the
/// log.
fn record_end(server: &Server, reason: EndReason) {
    let session = server.session();
    let (calls, refused) = session.counts();
    if server.state.started_logged.load(Ordering::SeqCst) {
        let _ = server.append(NewEvent::new(
            Kind::SessionEnd,
            json!({"reason": reason.as_str(), "calls": calls, "refused": refused,
                   "seconds": session.started.elapsed().as_secs_f64()}),
        ));
    }
    // The session's last signed checkpoint covers its session_end event (see audit::checkpoint).
    let head = {
        let mut audit = server.shared.audit();
        if let Some(log) = audit.as_mut()
            && !server.shared.audit_failed()
            && let Err(e) =
                log.checkpoint(Some(&session.id), Some(session.principal.name()), now_ms())
        {
            tracing::warn!(target: "memwarden::security", event = "audit_checkpoint", error = %e,
                "signing the session-end audit checkpoint failed");
        }
        audit.as_ref().map(|log| log.head())
    };
    match head {
        Some(Ok(head)) => tracing::info!(target: "memwarden::security", event = "audit_head",
            session = %session.id, seq = head.seq, hash = %head.hash,
            "audit chain head at session end: keep it to detect truncation"),
        _ => {
            tracing::warn!(target: "memwarden::security", event = "audit_head", "audit chain head unavailable")
        }
    }
    tracing::info!(
        session = %session.id,
        principal = %session.principal,
        reason = reason.as_str(),
        calls,
        refused,
        seconds = session.started.elapsed().as_secs_f64(),
        "session ended"
    );
}
