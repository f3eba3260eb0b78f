//! One call through the gates, with exactly one call event: rate, tool, grant, schema, the
//! tool, then — for a read — the event before the result, or — for a write — the write's bytes
//! charged and its event committed together with it ([`crate::store::PendingWrite::commit`]),
//! or, on SQLite, staged with it in the open group and answered once the group commits
//! ([`super::group`]). Messages the transport refuses are audited here too.

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};

use super::{EndReason, Server};
use crate::audit::sink::Sink;
use crate::audit::{Kind, NewEvent, Outcome};
use crate::clock::now_ms;
use crate::error::{Error, ErrorCode};
use crate::policy::RateLimiter;
use crate::policy::limits::Decision;
use crate::store::{Author, PendingWrite};
use crate::tools::{self, CallContext, CallRecord, Done, ToolName};
use crate::transport::Refusal;

/// Every this many schema refusals in one session, a security event says so.
const SCHEMA_BURST: u64 = 10;

/// One call as the audit log sees it.
struct Call {
    tool: Option<ToolName>,
    /// An unknown tool's name, as the log may show it.
    unknown_tool: Option<String>,
    /// The raw arguments as JSON text, once the call is admitted.
    args_text: Option<String>,
    started: Instant,
}

/// What the content rules did to a call, as its `rule_hit` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleHit {
    /// A rule refused the write.
    Reject,
    /// Rules quarantined the write or redacted parts of it (the names say which).
    QuarantineOrRedact,
}

impl RuleHit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reject => "reject",
            Self::QuarantineOrRedact => "quarantine_or_redact",
        }
    }
}

impl Server {
    /// Acts on a rate decision that began a cooldown or ended the session: one security event,
    /// and the end of the session when it is over.
    fn rate_event(&self, decision: Decision) -> Result<(), Error> {
        match decision {
            Decision::Cooldown {
                retry_after_ms,
                started: true,
            } => self.append(NewEvent::new(
                Kind::Security,
                json!({"event": "cooldown", "ms": retry_after_ms}),
            )),
            Decision::End => {
                self.end_session(EndReason::RateLimited);
                self.append(NewEvent::new(
                    Kind::Security,
                    json!({"event": "session_ended_by_rate_gate"}),
                ))
            }
            _ => Ok(()),
        }
    }

    fn rate(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.state.rate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rate gate, first for every request: spends one call token, whatever follows.
    pub(super) fn admit(&self) -> Result<(), Error> {
        if self.state.end.is_cancelled() {
            return Err(Error::SessionExpired);
        }
        let decision = self.rate().admit(now_ms() as u64);
        self.rate_event(decision)?;
        match decision {
            Decision::Allow => Ok(()),
            Decision::Limited { retry_after_ms } => Err(Error::RateLimited { retry_after_ms }),
            Decision::Cooldown { retry_after_ms, .. } => Err(Error::Cooldown { retry_after_ms }),
            Decision::End | Decision::Ended => Err(Error::SessionExpired),
        }
    }

    /// Counts a call's outcome toward the cooldown: any refusal of the agent's making counts
    /// (rate, schema, grant, policy); failures of our own (storage, integrity) do not.
    fn settle_rate(&self, result: &Result<Value, Error>) -> Result<(), Error> {
        match result {
            Ok(_) => {
                self.rate().succeeded();
                Ok(())
            }
            Err(err) if err.is_internal() || matches!(err, Error::Integrity) => Ok(()),
            Err(_) => {
                let decision = self.rate().refused(now_ms() as u64);
                decision.map_or(Ok(()), |d| self.rate_event(d))
            }
        }
    }

    /// Charges the bytes a write adds to the session's write budget, inside its transaction.
    fn charge(&self, bytes: u64) -> Result<(), Error> {
        self.rate()
            .spend_write_bytes(now_ms() as u64, bytes)
            .map_err(|retry_after_ms| Error::RateLimited { retry_after_ms })
    }

    /// The call event for `tool`.
    fn call_event<'a>(
        &self,
        call: &Call,
        outcome: Outcome,
        code: Option<&'a str>,
        record: &CallRecord,
    ) -> NewEvent<'a> {
        let mut detail = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
        if let Value::Object(map) = &mut detail {
            // Keyed, and over the arguments as stored (after redaction) when the call wrote:
            // nobody without the audit key can test guesses against it.
            let digested = record.stored_args.as_deref().or(call.args_text.as_deref());
            if let Some(text) = digested {
                map.insert(
                    "args_hmac".into(),
                    json!(self.shared.args_digest.digest(text.as_bytes())),
                );
            }
            if let Some(name) = &call.unknown_tool {
                map.insert("unknown_tool".into(), json!(name));
            }
            map.insert(
                "duration_us".into(),
                json!(call.started.elapsed().as_micros() as u64),
            );
        }
        NewEvent {
            tool: call.tool.map(ToolName::as_str),
            outcome: Some(outcome),
            code,
            ..NewEvent::new(Kind::Call, detail)
        }
    }

    /// Records ids that failed verification during this call.
    fn record_integrity(&self, tool: Option<ToolName>, ids: &[String]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        self.append(NewEvent {
            tool: tool.map(ToolName::as_str),
            ..NewEvent::new(
                Kind::Security,
                json!({"event": "integrity_failure", "ids": ids}),
            )
        })
    }

    /// One tool call through the same gates as `tools/call` (rate, tool, grant, schema, policy,
    /// store, audit), synchronously and without the protocol around it: for in-process
    /// harnesses such as the fuzz targets. Not part of the agent-facing surface.
    #[doc(hidden)]
    pub fn call_in_process(&self, name: &str, args: Value) -> Result<Value, Error> {
        self.call(name, args)
    }

    /// One `tools/call`, whatever it holds: every gate in order, and exactly one call event.
    ///
    /// The rate gate comes first, so a refused call costs the agent a token like any other;
    /// every refusal then counts toward the cooldown.
    pub(super) fn call(&self, name: &str, args: Value) -> Result<Value, Error> {
        self.touch();
        let tool = ToolName::from_name(name);
        let mut call = Call {
            tool,
            unknown_tool: tool.is_none().then(|| self.shared.describer.name(name)),
            args_text: None,
            started: Instant::now(),
        };
        let mut record = CallRecord::default();
        let admitted = self.admit();
        let was_admitted = admitted.is_ok();
        let mut event_written = false;
        let result = admitted.and_then(|()| {
            call.args_text = Some(args.to_string());
            self.gated(&call, args, &mut record, &mut event_written)
        });
        if let Err(Error::Integrity) = &result {
            record.withheld.extend(record.ids.iter().cloned());
        }
        self.record_integrity(tool, &record.withheld)?;
        self.record_rule_hits(tool, &result, &mut record)?;
        // Reads are audited before their result is sent: no event, no result.
        if !event_written {
            self.append_call_event(&call, &result, &record)?;
        }
        if was_admitted {
            self.settle_rate(&result)?;
        }
        if matches!(result, Err(Error::Schema { .. })) {
            self.note_schema_refusal()?;
        }
        result
    }

    /// A call that panicked: audited as an internal error (its state is in doubt, so the
    /// session ends). The event says only which tool it was.
    pub(super) fn call_panicked(&self, name: &str) -> Error {
        let tool = ToolName::from_name(name);
        let call = Call {
            tool,
            unknown_tool: tool.is_none().then(|| self.shared.describer.name(name)),
            args_text: None,
            started: Instant::now(),
        };
        let err = Error::Internal("a tool call panicked".into());
        tracing::error!(target: "memwarden::security", event = "call_panicked",
            tool = tool.map_or("unknown", ToolName::as_str), "a tool call panicked: ending the session");
        let event = self.call_event(
            &call,
            Outcome::Error,
            Some(err.code().as_str()),
            &CallRecord::default(),
        );
        let _ = self.append(event);
        self.end_session(EndReason::Internal);
        err
    }

    /// The call's one event, for every call but a write whose event went in with its commit.
    fn append_call_event(
        &self,
        call: &Call,
        result: &Result<Value, Error>,
        record: &CallRecord,
    ) -> Result<(), Error> {
        match result {
            Ok(_) => self.append(self.call_event(call, Outcome::Ok, None, record)),
            // The log is what failed: nothing more can be recorded.
            Err(Error::Audit(_)) => Ok(()),
            Err(err) => {
                let outcome = if err.is_internal() {
                    Outcome::Error
                } else {
                    Outcome::Denied
                };
                self.append(self.call_event(call, outcome, Some(err.code().as_str()), record))
            }
        }
    }

    /// The gates after the rate gate: a known tool, granted, schema-valid; then the tool, and
    /// for a write its commit. `event_written` is set once the call's event is in the log.
    fn gated(
        &self,
        call: &Call,
        args: Value,
        record: &mut CallRecord,
        event_written: &mut bool,
    ) -> Result<Value, Error> {
        let Some(tool) = call.tool else {
            return Err(Error::Schema {
                path: "/name".into(),
                keyword: "enum".into(),
                message: "unknown tool".into(),
            });
        };
        if !self.state.grant.can_call(tool) {
            return Err(Error::Forbidden(format!(
                "{} is not granted to this principal",
                tool.as_str()
            )));
        }
        self.shared.schemas.validate(tool, &args)?;
        let read_from = self
            .shared
            .policy
            .read_window
            .map(|w| now_ms() - w.as_millis() as i64);
        let mut guard = if tool.writes() {
            self.shared.store_for_write()
        } else {
            self.shared.store()
        };
        let store = guard
            .as_mut()
            .ok_or_else(|| Error::Unavailable("store closed".into()))?;
        store.refresh_keys()?;
        let session = &self.state.session;
        let mut ctx = CallContext {
            store,
            author: Author {
                principal: session.principal.name(),
                session_id: &session.id,
            },
            limits: &self.state.limits,
            default_namespace: &self.state.grant.default_namespace,
            rules: &self.shared.policy.rules,
            view: tools::visibility(&self.state.grant, read_from),
            now_ms: now_ms(),
        };
        let (value, pending) = match tools::call(tool, args, &mut ctx, record)? {
            Done::Read(value) => return Ok(value),
            Done::Write(value, pending) => (value, *pending),
        };
        if !self.commit(call, pending, record, event_written)? {
            return Ok(value);
        }
        // Staged in the open group: answer only once the group is committed.
        let slot = guard.staged();
        drop(guard);
        self.shared.settle(&slot).map_err(|failed| {
            // A lost group on PostgreSQL took its events along: this call's is written anew.
            *event_written = failed.audited;
            match failed.error {
                err @ Error::Audit(_) => self.audit_lost(err),
                err => err,
            }
        })?;
        Ok(value)
    }

    /// Ends a write with its call event: its bytes (copied content included) are charged
    /// first, and a refused charge rolls the write back. Then, with grouped writes (SQLite), the
    /// event and the write join the open groups and `Ok(true)` says the caller must wait for
    /// the group ([`super::group`]); otherwise the event and the write commit together now (the
    /// store puts the event first). A write whose event is in the log but whose commit failed
    /// stands as "audited, not applied", which `memwarden verify` reports.
    fn commit(
        &self,
        call: &Call,
        pending: PendingWrite<'_>,
        record: &CallRecord,
        event_written: &mut bool,
    ) -> Result<bool, Error> {
        self.charge(record.written_bytes)?;
        let mut event = self.call_event(call, Outcome::Ok, None, record);
        event.session_id = Some(&self.state.session.id);
        event.principal = Some(self.state.session.principal.name());
        if self.shared.audit_failed() {
            self.end_soon();
            return Err(Error::Audit("failed earlier".into()));
        }
        // The store is held: an open group must stay open for this write to join it.
        let mut audit = self.shared.audit_raw();
        let sink = audit
            .as_mut()
            .ok_or_else(|| self.audit_lost(Error::Audit("closed".into())))?;
        // audit.db's writer for a SQLite store; PostgreSQL appends in the write's own transaction.
        let grouped = pending.grouped();
        let committed = match (sink.file(), grouped) {
            (log, true) => pending.stage(log, &event),
            (Some(log), false) => pending.commit(log, &event),
            (None, false) => pending.commit_in_store(&event),
        };
        if grouped && committed.is_ok() {
            // PostgreSQL: the group holds the chain's lock and now a staged event; appends ask
            // for its commit first (set before the write began, `StoreGuard::expect_group`).
            if let Sink::Postgres(log) = sink {
                log.set_store_group(true);
            }
        }
        match committed {
            Ok(_) => {
                *event_written = true;
                Ok(grouped)
            }
            Err(failed) => {
                *event_written = failed.audited;
                drop(audit);
                Err(match failed.error {
                    err @ Error::Audit(_) => self.audit_lost(err),
                    err => err,
                })
            }
        }
    }

    /// Content rules that fired are security events too (names only, never the text).
    fn record_rule_hits(
        &self,
        tool: Option<ToolName>,
        result: &Result<Value, Error>,
        record: &mut CallRecord,
    ) -> Result<(), Error> {
        let (hit, rules) = match result {
            Err(Error::ContentRejected { rule }) => {
                // A rejected write's call event names the rule too.
                record.rules = vec![rule.clone()];
                (RuleHit::Reject, record.rules.clone())
            }
            _ => (RuleHit::QuarantineOrRedact, record.rules.clone()),
        };
        if rules.is_empty() {
            return Ok(());
        }
        self.append(NewEvent {
            tool: tool.map(ToolName::as_str),
            ..NewEvent::new(
                Kind::Security,
                json!({"event": "rule_hit", "action": hit.as_str(), "rules": rules}),
            )
        })
    }

    fn note_schema_refusal(&self) -> Result<(), Error> {
        let n = self.state.schema_refusals.fetch_add(1, Ordering::SeqCst) + 1;
        if n.is_multiple_of(SCHEMA_BURST) {
            self.append(NewEvent::new(
                Kind::Security,
                json!({"event": "schema_violation_burst", "refusals": n}),
            ))?;
        }
        Ok(())
    }

    /// Audits a message the transport refused (or the gate refused) as one call, and counts it
    /// toward the cooldown. A refused message spends from the bucket like any other.
    pub(super) fn refused_message(
        &self,
        refusal: Refusal,
        method: Option<&str>,
        gated: Option<&Error>,
    ) {
        self.state.session.record(false);
        let mut detail = json!({"refused": refusal.as_str()});
        if let Some(method) = method {
            detail["method"] = json!(self.shared.describer.name(method));
        }
        if refusal == Refusal::OversizeLine {
            detail["limit"] = json!(self.state.limits.request_line_bytes);
        }
        let (code, admitted) = match gated {
            Some(err) => (err.code(), false),
            None => {
                let admitted = self.admit();
                let code = admitted
                    .as_ref()
                    .err()
                    .map_or(ErrorCode::InvalidArgument, Error::code);
                (code, admitted.is_ok())
            }
        };
        let _ = self.append(NewEvent {
            outcome: Some(Outcome::Denied),
            code: Some(code.as_str()),
            ..NewEvent::new(Kind::Call, detail)
        });
        if admitted {
            let _ = self.settle_rate(&Err(Error::InvalidArgument(String::new())));
        }
    }
}
