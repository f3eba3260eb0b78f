//! `[http]`: what `serve-http` allows on top of the rest of the policy — the browser origins
//! it accepts, its session and connection caps, the failed-authentication limit per source
//! address, and its read timeouts. Absent keys take the defaults below.

use std::time::Duration;

use serde::Deserialize;

/// `[http]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Origins (`scheme://host[:port]`, or `null`) whose requests are served; any other
    /// `Origin` header is refused with 403. Requests without one (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    /// MCP sessions open at once, all principals together.
    pub max_sessions: usize,
    /// MCP sessions open at once per principal.
    pub max_sessions_per_principal: usize,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Failed authentications per source address per minute before that address is refused
    /// without a check until the minute is over.
    pub auth_failures_per_minute: u32,
    /// Time allowed for a request's headers.
    pub header_timeout: Duration,
    /// Time allowed for a request's body.
    pub body_timeout: Duration,
    /// An HTTP session with no request for this long ends (or after `[sessions]`'s idle
    /// timeout, when that is shorter): an HTTP client can vanish without a word, while a stdio
    /// session ends with its pipe.
    pub idle_timeout: Duration,
    /// Mutual TLS: a client certificate name (a DNS or URI subject alternative name, signed
    /// by the operator's client CA) and the principal it stands for.
    pub client_certificates: std::collections::BTreeMap<String, String>,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_sessions: 256,
            max_sessions_per_principal: 32,
            max_connections: 1024,
            auth_failures_per_minute: 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(1800),
            client_certificates: std::collections::BTreeMap::new(),
        }
    }
}

/// `[http]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    allowed_origins: Option<Vec<String>>,
    max_sessions: Option<usize>,
    max_sessions_per_principal: Option<usize>,
    max_connections: Option<usize>,
    auth_failures_per_minute: Option<u32>,
    header_timeout_seconds: Option<u64>,
    body_timeout_seconds: Option<u64>,
    idle_timeout_seconds: Option<u64>,
    client_certificates: Option<std::collections::BTreeMap<String, String>>,
}

impl RawHttp {
    /// The compiled section (the schema has bounded every number already). Every principal a
    /// client certificate maps to must be in `principals`.
    pub(crate) fn compile(
        &self,
        principals: &std::collections::BTreeMap<String, super::Grant>,
    ) -> Result<HttpPolicy, super::Problem> {
        let client_certificates = self.client_certificates.clone().unwrap_or_default();
        for (name, principal) in &client_certificates {
            if !principals.contains_key(principal) {
                return Err((
                    format!("http.client_certificates.{name}"),
                    format!("maps to {principal:?}, which is not a principal of this policy"),
                ));
            }
        }
        Ok(self.compile_with(client_certificates))
    }

    fn compile_with(
        &self,
        client_certificates: std::collections::BTreeMap<String, String>,
    ) -> HttpPolicy {
        let d = HttpPolicy::default();
        let secs = |s: Option<u64>, default| s.map_or(default, Duration::from_secs);
        HttpPolicy {
            allowed_origins: self
                .allowed_origins
                .iter()
                .flatten()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            max_sessions: self.max_sessions.unwrap_or(d.max_sessions),
            max_sessions_per_principal: self
                .max_sessions_per_principal
                .unwrap_or(d.max_sessions_per_principal),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            auth_failures_per_minute: self
                .auth_failures_per_minute
                .unwrap_or(d.auth_failures_per_minute),
            header_timeout: secs(self.header_timeout_seconds, d.header_timeout),
            body_timeout: secs(self.body_timeout_seconds, d.body_timeout),
            idle_timeout: secs(self.idle_timeout_seconds, d.idle_timeout),
            client_certificates,
        }
    }
}
