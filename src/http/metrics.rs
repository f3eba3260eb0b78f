//! `/healthz` and `/metrics`. `/metrics` serves the durable series `memwarden metrics` prints
//! (read from the databases), then this daemon's live series: sessions open, calls by tool and
//! outcome, refusals by code, the call-latency histogram, and refused HTTP requests (failed
//! authentications by reason, origins, oversized bodies, session caps).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::json;

use super::front::{Reply, error, json_reply, reply};
use super::{Daemon, Readiness};
use crate::prometheus::{BUCKETS, family, label};

impl Daemon {
    /// `GET /healthz`: 200 when the store is open, the audit log takes events and the keyring
    /// is loaded; else 503. The body names which, nothing more.
    pub(super) async fn healthz(&self) -> Reply {
        let shared = self.shared.clone();
        let readiness = self.readiness.clone();
        let (store, audit) = tokio::task::spawn_blocking(move || {
            let audit = match &readiness {
                Readiness::AuditFile(path) => {
                    // audit.db and, in WAL mode, the -wal file the appends go to first.
                    let mut wal = path.as_os_str().to_owned();
                    wal.push("-wal");
                    let wal = std::path::PathBuf::from(wal);
                    let writable = |p: &std::path::Path| {
                        std::fs::OpenOptions::new().append(true).open(p).is_ok()
                    };
                    writable(path) && (!wal.exists() || writable(&wal))
                }
                Readiness::Database => true,
            };
            (shared.ready(), audit && !shared.audit_failed())
        })
        .await
        .unwrap_or((false, false));
        let ok = store && audit;
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_reply(
            status,
            &json!({"status": if ok { "ok" } else { "unavailable" },
                    "store": store, "audit_writable": audit, "keyring": true}),
        )
    }

    /// `GET /metrics`: the durable series and the live ones.
    pub(super) async fn metrics(self: &Arc<Self>) -> Reply {
        let daemon = self.clone();
        let text = tokio::task::spawn_blocking(move || render(&daemon))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("metrics panicked")));
        match text {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => {
                tracing::warn!(error = %e, "metrics could not be read");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "metrics cannot be read now",
                )
            }
        }
    }
}

/// The exposition text (runs on a blocking thread: the durable part reads the databases).
pub fn render(daemon: &Daemon) -> anyhow::Result<String> {
    let mut out = (daemon.durable)()?;
    let name = family(
        &mut out,
        "memwarden_http_sessions_open",
        "gauge",
        "MCP sessions open in this daemon, by principal.",
    );
    let open = daemon.sessions.by_principal();
    if open.is_empty() {
        let _ = writeln!(out, "{name} 0");
    }
    for (principal, n) in open {
        let _ = writeln!(out, "{name}{{principal=\"{}\"}} {n}", label(&principal));
    }
    call_series(&mut out, daemon);
    refusal_series(&mut out, daemon);
    let name = family(
        &mut out,
        "memwarden_http_tokens",
        "gauge",
        "Tokens issued in the tokens file.",
    );
    let _ = writeln!(out, "{name} {}", daemon.tokens.count());
    Ok(out)
}

/// Calls by tool and outcome, refused calls by code, and the latency histogram.
fn call_series(out: &mut String, daemon: &Daemon) {
    let live = daemon.shared.live().snapshot();
    let name = family(
        out,
        "memwarden_http_calls_total",
        "counter",
        "Tool calls served by this daemon since it started, by tool and outcome.",
    );
    for ((tool, outcome), n) in &live.calls {
        let _ = writeln!(out, "{name}{{tool=\"{tool}\",outcome=\"{outcome}\"}} {n}");
    }
    let name = family(
        out,
        "memwarden_http_refusals_total",
        "counter",
        "Refused tool calls since this daemon started, by error code.",
    );
    for (code, n) in &live.refusals {
        let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
    }
    let name = family(
        out,
        "memwarden_http_call_duration_seconds",
        "histogram",
        "Tool call latency inside this daemon since it started.",
    );
    let mut cumulative = 0;
    for (i, le) in BUCKETS.iter().enumerate() {
        cumulative += live.buckets[i];
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += live.buckets[BUCKETS.len()];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", live.sum_seconds);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

/// HTTP requests refused before MCP: failed authentications by reason, and the other causes.
fn refusal_series(out: &mut String, daemon: &Daemon) {
    let name = family(
        out,
        "memwarden_http_auth_failures_total",
        "counter",
        "Requests refused for their credential since this daemon started, by reason.",
    );
    let mut auth: Vec<_> = daemon
        .refused
        .auth
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .into_iter()
        .collect();
    auth.sort();
    if auth.is_empty() {
        let _ = writeln!(out, "{name}{{reason=\"unknown_token\"}} 0");
    }
    for (reason, n) in auth {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
    let name = family(
        out,
        "memwarden_http_refused_requests_total",
        "counter",
        "HTTP requests refused before MCP since this daemon started, by cause.",
    );
    let r = &daemon.refused;
    for (cause, n) in [
        ("origin", &r.origin),
        ("body_too_large", &r.too_large),
        ("session_cap", &r.session_cap),
        ("protocol", &r.protocol),
        ("auth_limited", &r.limited),
    ] {
        let _ = writeln!(
            out,
            "{name}{{cause=\"{cause}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}
