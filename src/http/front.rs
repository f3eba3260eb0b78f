//! Answering one HTTP request: the checks in front of rmcp (see the module above), `/healthz`,
//! `/metrics`, and the session table kept in step with rmcp's sessions.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::sessions::{Cap, Open};
use super::tls::ClientIdentity;
use super::tokens::{Holder, Scope};
use super::{Daemon, OPENING};
use crate::server::{Handler, Server};
use crate::session::Session;
use crate::transport::{Gate, check_body};

/// A response as the daemon sends it.
pub type Reply = Response<BoxBody<Bytes, Infallible>>;

const SESSION_HEADER: &str = "mcp-session-id";

/// Where a request came from: an IP address, or the peer uid on a unix socket.
#[derive(Debug, Clone)]
pub struct Source(pub String);

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `/mcp`, `/healthz`, and `/metrics` with a metrics token.
    Main,
    /// `/healthz` and `/metrics` without a token: a separate address the operator keeps for
    /// monitoring.
    Monitoring,
}

pub(super) fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

pub(super) fn json_reply(status: StatusCode, body: &Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    json_reply(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

impl Daemon {
    /// Answers one request from `source` on a listener of `role`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        source: Source,
        client: Option<Arc<ClientIdentity>>,
        role: Role,
    ) -> Result<Reply, Infallible> {
        if let Some(refusal) = self.origin_refused(&req, &source).await {
            return Ok(refusal);
        }
        let path = req.uri().path().to_string();
        Ok(match (role, req.method().clone(), path.as_str()) {
            (_, Method::GET, "/healthz") => self.healthz().await,
            (Role::Monitoring, Method::GET, "/metrics") => self.metrics().await,
            (Role::Main, Method::GET, "/metrics") => {
                match self.authenticate(&req, &source, None, Scope::Metrics).await {
                    Ok(_) => self.metrics().await,
                    Err(r) => r,
                }
            }
            (Role::Main, _, "/mcp") => match self
                .authenticate(&req, &source, client.as_deref(), Scope::Mcp)
                .await
            {
                Ok(holder) => self.mcp(req, &source, holder).await,
                Err(r) => r,
            },
            _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
        })
    }

    /// 403 for an `Origin` the policy does not list (a browser page on another site, or a
    /// DNS-rebinding attack); requests without one pass.
    async fn origin_refused(&self, req: &Request<Incoming>, source: &Source) -> Option<Reply> {
        let origin = req.headers().get(header::ORIGIN)?;
        let allowed = origin.to_str().is_ok_and(|o| {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            self.policy.allowed_origins.contains(&o)
        });
        if allowed {
            return None;
        }
        self.refused.origin.fetch_add(1, Ordering::Relaxed);
        // A page can send these in a loop: they count toward the source's failure limit, and
        // past it only the limit's own event is recorded. The origin is the requester's text:
        // never recorded.
        let limited = self.over_failure_limit(source).await;
        self.count_failure(source);
        if !limited {
            self.security(json!({"event": "http_origin_refused", "source": source.0}))
                .await;
        }
        Some(error(
            StatusCode::FORBIDDEN,
            "ORIGIN_REFUSED",
            "this Origin is not allowed by the server's policy",
        ))
    }

    /// Records a security event that belongs to no session, on a blocking thread.
    pub(super) async fn security(&self, detail: Value) {
        let shared = self.shared.clone();
        let recorded = tokio::task::spawn_blocking(move || shared.record_security(detail)).await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!(target: "memwarden::security", event = "audit_unwritable",
                "a refused HTTP request could not be audited");
        }
    }

    /// `/mcp` for an authenticated principal.
    async fn mcp(&self, req: Request<Incoming>, source: &Source, holder: Holder) -> Reply {
        let Some(principal) = holder.principal.clone() else {
            return error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", "no principal");
        };
        let session_id = req
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let open = match &session_id {
            Some(id) => match self.sessions.get(id) {
                Some(open) if open.principal == principal => Some(open),
                Some(_) => {
                    self.security(json!({"event": "http_session_mismatch",
                        "principal": principal.name(), "source": source.0}))
                        .await;
                    return session_not_found();
                }
                None => return session_not_found(),
            },
            None => None,
        };
        let (parts, body) = req.into_parts();
        let bytes = if parts.method == Method::POST {
            match self.read_body(body).await {
                Ok(bytes) => bytes,
                Err(r) => return r,
            }
        } else {
            Bytes::new()
        };
        if let Some(open) = &open {
            open.server.touch();
        }
        if parts.method == Method::DELETE {
            let answer = self
                .forward(Request::from_parts(parts, Full::new(bytes)))
                .await;
            if let Some(open) = open
                && answer.status().is_success()
            {
                open.closed.cancel();
            }
            return answer;
        }
        if parts.method != Method::POST {
            return self
                .forward(Request::from_parts(parts, Full::new(bytes)))
                .await;
        }
        match open {
            Some(open) => self.in_session(parts, bytes, &open).await,
            None => self.opening(parts, bytes, source, holder).await,
        }
    }

    /// The body, at most the policy's request size, within the body timeout.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Reply> {
        let read = tokio::time::timeout(
            self.policy.body_timeout,
            Limited::new(body, self.body_cap).collect(),
        )
        .await;
        match read {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                self.refused.too_large.fetch_add(1, Ordering::Relaxed);
                Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    &format!("request bodies are limited to {} bytes", self.body_cap),
                ))
            }
            Ok(Err(_)) => Err(error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the request body could not be read",
            )),
            Err(_) => Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "the request body took too long",
            )),
        }
    }

    /// Hands a checked request to rmcp.
    async fn forward(&self, req: Request<Full<Bytes>>) -> Reply {
        self.mcp.handle(req).await
    }

    /// A POST in an open session: the protocol checks and the session's gate, then rmcp.
    async fn in_session(&self, parts: http::request::Parts, bytes: Bytes, open: &Open) -> Reply {
        let gate = open.server.gate();
        let checked = match check_body(&bytes, true) {
            Ok(checked) => checked,
            Err(refusal) => {
                self.refused.protocol.fetch_add(1, Ordering::Relaxed);
                let server = open.server.clone();
                let method = refusal.method.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    server.gate().refused(refusal.refusal, method.as_deref());
                })
                .await;
                return rpc_refusal(refusal.reply);
            }
        };
        let free = checked.method == "notifications/initialized" && open.first_initialized();
        if !free && !matches!(checked.method.as_str(), "initialize" | "tools/call") {
            let method = checked.method.clone();
            let admitted = tokio::task::spawn_blocking(move || gate.admit(&method))
                .await
                .unwrap_or_else(|_| Err(json!({"code": -32603, "message": "internal error"})));
            if let Err(error) = admitted {
                let id = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("id").cloned());
                return match (checked.is_request, id) {
                    (true, Some(id)) => json_reply(
                        StatusCode::OK,
                        &json!({"jsonrpc": "2.0", "id": id, "error": error}),
                    ),
                    _ => reply(StatusCode::ACCEPTED, "text/plain", ""),
                };
            }
        }
        self.forward(Request::from_parts(parts, Full::new(bytes)))
            .await
    }

    /// A POST without a session: only `initialize` opens one, within the caps.
    async fn opening(
        &self,
        parts: http::request::Parts,
        bytes: Bytes,
        source: &Source,
        holder: Holder,
    ) -> Reply {
        let Some(principal) = holder.principal.clone() else {
            return error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", "no principal");
        };
        match check_body(&bytes, false) {
            Ok(c) if c.method == "initialize" => {}
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "SESSION_REQUIRED",
                    "send initialize first, then the Mcp-Session-Id it returns",
                );
            }
            Err(refusal) => {
                self.refused.protocol.fetch_add(1, Ordering::Relaxed);
                self.security(
                    json!({"event": "http_refused", "refusal": refusal.refusal.as_str(),
                                     "principal": principal.name(), "source": source.0}),
                )
                .await;
                return rpc_refusal(refusal.reply);
            }
        }
        let reservation = match self.sessions.reserve(&principal) {
            Ok(r) => r,
            Err(cap) => return self.capped(cap, &principal, source).await,
        };
        let server = Server::for_session(self.shared.clone(), Session::new(principal.clone()));
        let mut facts = self.facts.clone();
        facts.connection = Some(json!({"transport": "streamable_http", "source": source.0,
            "credential": {"kind": holder.kind, "label": holder.label, "sha256_prefix": holder.shown}}));
        let handler = Handler::new(server.clone(), facts);
        let req = Request::from_parts(parts, Full::new(bytes));
        let answer = OPENING.scope(handler, self.mcp.handle(req)).await;
        let id = answer
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match id {
            Some(id) if server.started() => {
                let open = Open {
                    principal,
                    server: server.clone(),
                    closed: tokio_util::sync::CancellationToken::new(),
                    handshake_done: Arc::default(),
                };
                reservation.open(id.clone(), open.clone());
                self.watch(id, open);
            }
            Some(id) => {
                // The handshake was refused (sessions per hour, audit log): no session.
                let _ = self.manager_close(&id).await;
            }
            None => {}
        }
        answer
    }

    async fn capped(
        &self,
        cap: Cap,
        principal: &crate::principal::Principal,
        source: &Source,
    ) -> Reply {
        self.refused.session_cap.fetch_add(1, Ordering::Relaxed);
        let which = match cap {
            Cap::Total => "total",
            Cap::Principal => "principal",
        };
        self.security(json!({"event": "http_session_cap", "cap": which,
                             "principal": principal.name(), "source": source.0}))
            .await;
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "RATE_LIMITED",
            "too many open sessions; end one (DELETE) or retry later",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    async fn manager_close(&self, id: &str) -> Result<(), ()> {
        use rmcp::transport::streamable_http_server::session::SessionManager as _;
        self.manager
            .close_session(&Arc::<str>::from(id))
            .await
            .map_err(drop)
    }

    /// Runs session `id` to its end: its clocks, the server's own end, the client's DELETE or
    /// shutdown; then closes it in rmcp and records the end.
    fn watch(&self, id: String, open: Open) {
        let daemon_sessions = self.sessions.clone();
        let manager = self.manager.clone();
        let shutdown = self.shutdown.clone();
        let idle = self.policy.idle_timeout;
        self.watchers.spawn(async move {
            crate::server::wait_end(&open.server, idle, &open.closed, &shutdown).await;
            // New requests get 404 from here on.
            daemon_sessions.remove(&id);
            {
                use rmcp::transport::streamable_http_server::session::SessionManager as _;
                let _ = manager.close_session(&Arc::<str>::from(id.as_str())).await;
            }
            crate::server::finish(open.server, &shutdown).await;
        });
    }
}

fn session_not_found() -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "SESSION_NOT_FOUND",
        "no such session (ended, expired or never opened): initialize again",
    )
}

fn rpc_refusal(reply: Option<Value>) -> Reply {
    match reply {
        Some(body) => json_reply(StatusCode::BAD_REQUEST, &body),
        None => reply_empty(StatusCode::BAD_REQUEST),
    }
}

fn reply_empty(status: StatusCode) -> Reply {
    reply(status, "text/plain", "")
}
