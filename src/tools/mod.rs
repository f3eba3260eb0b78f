//! The six agent tools: their names, the context a call runs in, and how results are rendered.
//!
//! Each tool lives in its own file with its parameter type (serde, `deny_unknown_fields`) and its
//! `apply`. By the time `apply` runs, the arguments have passed the tool's JSON Schema; the tool
//! enforces what a schema cannot (byte sizes, cursors, time order) and calls the store. Nothing
//! here decides who the caller is: that arrives in [`CallContext`].

pub mod delete;
pub mod get;
pub mod list;
pub mod search;
pub mod store;
pub mod update;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::catalog::ToolName;
pub use crate::clock::{format_ms, now_ms, parse_time};
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::policy::Grant;
use crate::policy::rules::{Rules, Verdict};
use crate::store::{Author, Entry, Scope, Status, Store};

/// Everything a tool call may use, decided by the server.
pub struct CallContext<'a> {
    pub store: &'a mut Store,
    pub author: Author<'a>,
    pub limits: &'a Limits,
    /// What this principal may do.
    pub grant: &'a Grant,
    /// Content rules applied to every write.
    pub rules: &'a Rules,
    /// Entries created before this (unix ms) are invisible: the policy's read window.
    pub window_start: Option<i64>,
    pub now_ms: i64,
    /// What the call touched, for its audit event.
    pub record: &'a mut CallRecord,
    /// Appends this call's "ok" audit event. Write tools call it inside their store transaction,
    /// before commit (DESIGN.md §3); the server calls it for reads.
    pub audit: &'a dyn Fn(&CallRecord) -> Result<()>,
}

/// What a call touched: ids and sizes, never content, metadata values or queries.
#[derive(Debug, Default, Serialize)]
pub struct CallRecord {
    /// Ids read, written or returned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// The id a store or update created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Bytes of content written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_bytes: Option<usize>,
    /// Bytes of metadata written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_bytes: Option<usize>,
    /// Content rules that fired (quarantine, redact): names only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Results returned by search or list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<usize>,
    /// Bytes the write adds to the store (a new version counts its copied content too):
    /// charged to the session's write budget before the commit.
    #[serde(skip_serializing_if = "is_zero")]
    pub written_bytes: u64,
    /// What a write stored, after the content rules, as JSON text: the call's argument digest
    /// is taken over this, so a redacted secret is not even digested.
    #[serde(skip)]
    pub stored_args: Option<String>,
    /// Rows withheld because they failed verification (a security event records them).
    #[serde(skip)]
    pub withheld: Vec<String>,
    /// Set once the call's event is in the log, so it is never recorded twice.
    #[serde(skip)]
    pub audited: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The bytes an entry holds: content, metadata and tags.
pub(crate) fn entry_bytes(entry: &Entry) -> u64 {
    let tags: usize = entry.tags.iter().map(String::len).sum();
    (entry.content.len() + entry.metadata.as_ref().map_or(0, String::len) + tags) as u64
}

/// An entry's fields as stored, as JSON text, for the argument digest.
pub(crate) fn stored_args(entry: &Entry) -> String {
    serde_json::json!({
        "namespace": entry.namespace,
        "content": entry.content,
        "tags": entry.tags,
        "metadata": entry.metadata,
        "supersedes": entry.supersedes,
    })
    .to_string()
}

impl CallRecord {
    /// Runs the audit hook from inside a write transaction.
    /// `written` is the entry the write adds, if it adds one: its bytes are charged and its
    /// stored fields digested.
    pub(crate) fn audit_write(
        &mut self,
        audit: &dyn Fn(&CallRecord) -> Result<()>,
        touched: &[&str],
        written: Option<&Entry>,
    ) -> Result<()> {
        self.ids.extend(touched.iter().map(|s| s.to_string()));
        if let Some(entry) = written {
            self.written_bytes = entry_bytes(entry);
            self.stored_args = Some(stored_args(entry));
        }
        audit(self)?;
        self.audited = true;
        Ok(())
    }
}

/// Parses validated arguments into a tool's parameter type and runs it.
///
/// A call that met a row sealed with a key id the session does not hold (a `keys rotate` +
/// `reseal` while it was open) rereads the keyring once and, if that brought a new key, runs
/// again: the row is fine and must not be answered with INTEGRITY. A write that succeeded has
/// committed and is never run twice.
pub fn call(tool: ToolName, args: Value, ctx: &mut CallContext<'_>) -> Result<Value> {
    ctx.store.take_unknown_key();
    let first = call_once(tool, args.clone(), ctx);
    let worth_retry = match &first {
        Err(Error::Integrity) => true,
        Ok(_) => !tool.writes() && !ctx.record.withheld.is_empty(),
        Err(_) => false,
    };
    if worth_retry && ctx.store.take_unknown_key() && ctx.store.reload_keys()? {
        *ctx.record = CallRecord::default();
        return call_once(tool, args, ctx);
    }
    first
}

fn call_once(tool: ToolName, args: Value, ctx: &mut CallContext<'_>) -> Result<Value> {
    match tool {
        ToolName::Store => store::apply(parse(args)?, ctx),
        ToolName::Get => get::apply(parse(args)?, ctx),
        ToolName::Search => search::apply(parse(args)?, ctx),
        ToolName::List => list::apply(parse(args)?, ctx),
        ToolName::Update => update::apply(parse(args)?, ctx),
        ToolName::Delete => delete::apply(parse(args)?, ctx),
    }
}

/// serde after the schema: a mismatch here means schema and type disagree. Reported as an
/// invalid argument without serde's text, which can quote the value.
fn parse<T: DeserializeOwned>(args: Value) -> Result<T> {
    serde_json::from_value(args).map_err(|_| Error::Schema {
        path: "/".into(),
        keyword: "type".into(),
        message: "arguments do not match the tool's parameter types".into(),
    })
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Internal(format!("render: {e}")))
}

/// Enforces a byte limit that the schema's character limit cannot express.
fn check_bytes(what: &'static str, actual: usize, limit: usize) -> Result<()> {
    if actual > limit {
        return Err(Error::TooLarge {
            what,
            actual,
            limit,
        });
    }
    Ok(())
}

/// Metadata as stored: compact JSON text, bounded in bytes.
fn metadata_text(
    metadata: Option<serde_json::Map<String, Value>>,
    limits: &Limits,
) -> Result<Option<String>> {
    let Some(map) = metadata else {
        return Ok(None);
    };
    let text = serde_json::to_string(&map).map_err(|e| Error::Internal(e.to_string()))?;
    check_bytes("metadata", text.len(), limits.metadata_bytes)?;
    Ok(Some(text))
}

/// A memory as agents see it: the verified fields plus provenance they cannot forge.
#[derive(Serialize)]
pub struct MemoryView<'a> {
    id: &'a str,
    namespace: &'a str,
    content: &'a str,
    tags: &'a [String],
    metadata: Option<Value>,
    status: Status,
    supersedes: Option<&'a str>,
    author: AuthorView<'a>,
    created_at: String,
    updated_at: String,
    content_sha256: String,
    /// Always true: unverified rows are never rendered.
    verified: bool,
    /// Tells the reading model that `content` is data, not instructions.
    content_trust: &'static str,
}

#[derive(Serialize)]
struct AuthorView<'a> {
    principal: &'a str,
    session_id: &'a str,
}

impl<'a> MemoryView<'a> {
    pub fn new(entry: &'a Entry) -> Result<Self> {
        let metadata = match &entry.metadata {
            None => None,
            Some(text) => Some(
                serde_json::from_str(text)
                    .map_err(|e| Error::Internal(format!("stored metadata: {e}")))?,
            ),
        };
        Ok(Self {
            id: &entry.id,
            namespace: &entry.namespace,
            content: &entry.content,
            tags: &entry.tags,
            metadata,
            status: entry.status,
            supersedes: entry.supersedes.as_deref(),
            author: AuthorView {
                principal: &entry.principal,
                session_id: &entry.session_id,
            },
            created_at: format_ms(entry.created_at),
            updated_at: format_ms(entry.updated_at),
            content_sha256: hex::encode(entry.content_sha256),
            verified: true,
            content_trust: "untrusted",
        })
    }

    pub fn id(&self) -> &str {
        self.id
    }

    /// Its size as JSON (escapes included), for response byte bounds.
    fn serialized_len(&self) -> Result<usize> {
        serde_json::to_vec(self)
            .map(|v| v.len())
            .map_err(|e| Error::Internal(format!("render: {e}")))
    }
}

impl<'a> CallContext<'a> {
    /// The namespace a call works in: the one it names, or the principal's default.
    fn namespace(&self, named: Option<String>) -> String {
        named.unwrap_or_else(|| self.grant.default_namespace.clone())
    }

    /// Refuses a write to a namespace this principal may not write. The message does not repeat
    /// the namespace: the agent knows what it sent, and nothing it sent is echoed.
    fn check_write(&self, namespace: &str) -> Result<()> {
        if self.grant.can_write(namespace) {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "the namespace is not writable by this principal".into(),
            ))
        }
    }

    /// Whether a row is visible at all: in a namespace the principal may read, and inside its
    /// read window. Every tool that takes an id applies this (DESIGN.md §5).
    fn visible(grant: &Grant, window_start: Option<i64>, ns: &str, created_at: i64) -> bool {
        grant.can_read(ns) && window_start.is_none_or(|start| created_at >= start)
    }

    /// Row-level access for reads: a row the principal cannot see is "not found".
    fn read_access(&self) -> impl Fn(&str, i64) -> Result<()> + use<'a> {
        let (grant, window_start) = (self.grant, self.window_start);
        move |ns: &str, created_at: i64| {
            if Self::visible(grant, window_start, ns, created_at) {
                Ok(())
            } else {
                Err(Error::NotFound)
            }
        }
    }

    /// Row-level access for writes: invisible → not found; read-only → forbidden.
    fn write_access(&self) -> impl Fn(&str, i64) -> Result<()> + use<'a> {
        let (grant, window_start) = (self.grant, self.window_start);
        move |ns: &str, created_at: i64| {
            if !Self::visible(grant, window_start, ns, created_at) {
                Err(Error::NotFound)
            } else if !grant.can_write(ns) {
                Err(Error::Forbidden(
                    "the namespace is not writable by this principal".into(),
                ))
            } else {
                Ok(())
            }
        }
    }

    /// Records which rules fired (names only) and returns the status the write gets.
    fn settle(&mut self, verdict: &Verdict) -> crate::store::Status {
        self.record.rules = verdict
            .quarantined_by
            .iter()
            .chain(&verdict.redacted_by)
            .cloned()
            .collect();
        if verdict.quarantined_by.is_empty() {
            crate::store::Status::Active
        } else {
            crate::store::Status::Quarantined
        }
    }

    /// Checks tag count and applies the content rules to a write, in place.
    fn police(
        &self,
        content: &mut String,
        tags: &mut Vec<String>,
        metadata: &mut Option<serde_json::Map<String, Value>>,
    ) -> Result<Verdict> {
        if tags.len() > self.limits.tags_max {
            return Err(Error::InvalidArgument(format!(
                "at most {} tags are allowed",
                self.limits.tags_max
            )));
        }
        let verdict = self.rules.apply(content, tags, metadata);
        if let Some(rule) = verdict.rejected_by {
            return Err(Error::ContentRejected { rule });
        }
        Ok(verdict)
    }

    /// The page size asked for, within the policy's maximum.
    fn page_size(&self, asked: Option<usize>, default: usize) -> Result<usize> {
        let n = asked.unwrap_or(default.min(self.limits.page_size_max));
        if n > self.limits.page_size_max {
            return Err(Error::InvalidArgument(format!(
                "limit: at most {} for this principal",
                self.limits.page_size_max
            )));
        }
        Ok(n)
    }
}

/// Filters shared by search and list, checked and resolved against the context.
fn filter(
    ctx: &CallContext<'_>,
    namespace: Option<String>,
    tags: Vec<String>,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<crate::store::Filter> {
    let since = since.map(|s| parse_time("since", s)).transpose()?;
    let until = until.map(|s| parse_time("until", s)).transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(Error::InvalidArgument(
            "since must be earlier than until".into(),
        ));
    }
    // A named namespace must be readable; none means every namespace the principal may read
    // (writes without one still go to the default namespace).
    let scope = match namespace {
        Some(namespace) if ctx.grant.can_read(&namespace) => Scope::only([namespace]),
        Some(_) => {
            return Err(Error::Forbidden(
                "the namespace is not readable by this principal".into(),
            ));
        }
        None if ctx.grant.namespaces.contains_key("*") => Scope::All,
        None => Scope::only(ctx.grant.namespaces.keys().cloned()),
    };
    // The read window narrows `since`; it never widens it.
    let since = match (since, ctx.window_start) {
        (Some(s), Some(w)) => Some(s.max(w)),
        (s, w) => s.or(w),
    };
    Ok(crate::store::Filter {
        scope,
        tags,
        since,
        until,
    })
}

/// `limit` may arrive as 20 or 20.0 (both are JSON Schema integers); the schema has checked the
/// range already.
fn deserialize_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n: Option<f64> = serde::Deserialize::deserialize(d)?;
    Ok(n.map(|n| n as usize))
}
