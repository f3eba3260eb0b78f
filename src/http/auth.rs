//! Who is calling: the bearer token (never a token in the URL), and the limit on failed
//! authentications per source address. Every refusal is counted and audited with its reason
//! and source, never with the credential.

use std::sync::atomic::Ordering;

use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use super::Daemon;
use super::front::{Reply, Source, error};
use super::tls::ClientIdentity;
use super::tokens::{AuthFailure, Holder, Scope};

/// Failed authentications of one source address in the minute since its first one (a window
/// per source, so a burst cannot straddle a clock minute and count twice).
#[derive(Debug, Clone, Copy)]
pub struct Failures {
    /// Unix ms of the window's first failure.
    since_ms: u64,
    count: u32,
    /// Whether the limit's own security event was recorded in this window.
    logged: bool,
}

/// How long a source's window of failures lasts.
const WINDOW_MS: u64 = 60_000;

impl Failures {
    fn fresh(now_ms: u64) -> Self {
        Self {
            since_ms: now_ms,
            count: 0,
            logged: false,
        }
    }

    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.since_ms) >= WINDOW_MS
    }
}

fn unauthorized(failure: AuthFailure) -> Reply {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "a valid bearer token is required (Authorization: Bearer TOKEN)",
    );
    let challenge = match failure {
        AuthFailure::Missing => "Bearer realm=\"memwarden\"",
        _ => "Bearer realm=\"memwarden\", error=\"invalid_token\"",
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

fn now_ms() -> u64 {
    crate::clock::now_ms().max(0) as u64
}

impl Daemon {
    /// The token's holder, when it opens `scope`; else the refusal to send.
    pub(super) async fn authenticate(
        &self,
        req: &Request<Incoming>,
        source: &Source,
        client: Option<&ClientIdentity>,
        scope: Scope,
    ) -> Result<Holder, Reply> {
        if self.over_failure_limit(source).await {
            self.refused.limited.fetch_add(1, Ordering::Relaxed);
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many failed authentications from this address; retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            return Err(r);
        }
        let query = req.uri().query().unwrap_or("");
        let checked = if query.contains(super::tokens::TOKEN_PREFIX)
            || query.to_ascii_lowercase().contains("token=")
        {
            Err(AuthFailure::InQuery)
        } else {
            let header = req
                .headers()
                .get(header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match (header, client) {
                // A verified client certificate and no token: the policy maps its name.
                (None, Some(client)) => self.by_certificate(client),
                _ => self.tokens.check(header),
            }
        };
        let failure = match checked {
            Ok(holder) if holder.scope == scope => return Ok(holder),
            Ok(_) => AuthFailure::WrongScope,
            Err(f) => f,
        };
        self.auth_failed(source, failure).await;
        Err(match failure {
            AuthFailure::WrongScope => error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "this token does not open this endpoint",
            ),
            f => unauthorized(f),
        })
    }

    /// Counts one refused request of `source` toward its window's limit.
    pub(super) fn count_failure(&self, source: &Source) {
        let mut table = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        let f = table
            .entry(source.0.clone())
            .or_insert_with(|| Failures::fresh(now));
        if f.expired(now) {
            *f = Failures::fresh(now);
        }
        f.count += 1;
    }

    /// Whether `source` has used up its failed authentications for its current window.
    pub(super) async fn over_failure_limit(&self, source: &Source) -> bool {
        let limit = self.policy.auth_failures_per_minute;
        let first_over = {
            let mut table = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let now = now_ms();
            table.retain(|_, f| !f.expired(now));
            match table.get_mut(&source.0) {
                Some(f) if f.count >= limit => {
                    let first = !f.logged;
                    f.logged = true;
                    Some(first)
                }
                _ => None,
            }
        };
        if first_over == Some(true) {
            self.security(
                json!({"event": "http_auth_failures_limited", "source": source.0,
                                 "limit_per_minute": limit}),
            )
            .await;
        }
        first_over.is_some()
    }

    /// Counts and audits one failed authentication (its reason and source, never the token).
    async fn auth_failed(&self, source: &Source, failure: AuthFailure) {
        self.count_failure(source);
        *self
            .refused
            .auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(failure.as_str())
            .or_default() += 1;
        tracing::warn!(target: "memwarden::security", event = "http_auth_failed",
            reason = failure.as_str(), source = %source.0, "refused an HTTP request without a valid token");
        self.security(
            json!({"event": "http_auth_failed", "reason": failure.as_str(),
                             "source": source.0}),
        )
        .await;
    }

    /// The principal `[http] client_certificates` maps one of the certificate's names to.
    fn by_certificate(&self, client: &ClientIdentity) -> Result<Holder, AuthFailure> {
        let map = &self.policy.client_certificates;
        let (name, principal) = client
            .names
            .iter()
            .find_map(|n| map.get(n).map(|p| (n, p)))
            .ok_or(AuthFailure::UnmappedCertificate)?;
        Ok(Holder {
            scope: Scope::Mcp,
            principal: Some(
                crate::principal::Principal::from_flag(principal)
                    .map_err(|_| AuthFailure::UnmappedCertificate)?,
            ),
            kind: "certificate",
            label: name.clone(),
            shown: client.sha256[..12].to_string(),
        })
    }
}
