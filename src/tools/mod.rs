//! The six agent tools: the context a call runs in, what it records, and what it produces.
//!
//! Each tool lives in its own file with its parameter type (serde, `deny_unknown_fields`) and its
//! `apply`. By the time `apply` runs, the arguments have passed the tool's JSON Schema; the tool
//! enforces what a schema cannot (byte sizes, cursors, time order), applies the policy (content
//! rules, namespace rights through the caller's [`Visibility`]) and calls the store. A read
//! produces its result; a write produces its result and its still-open [`PendingWrite`], which
//! the server commits together with the call's audit event. Nothing here decides who the caller
//! is (that arrives in [`CallContext`]) or writes to the audit log.

pub mod delete;
pub mod get;
pub mod list;
pub mod search;
pub mod store;
pub mod update;
mod view;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use crate::catalog::ToolName;
use crate::clock::parse_time;
use crate::config::Limits;
use crate::error::{Error, Result};
use crate::policy::rules::{Rules, Verdict};
use crate::policy::{Access, Grant};
use crate::store::scope::not_writable;
use crate::store::{Author, Entry, Filter, PendingWrite, Rights, Status, Store, Visibility};
pub use view::MemoryView;

/// Everything a tool call may use, decided by the server.
pub struct CallContext<'a> {
    /// The store, for this call.
    pub store: &'a mut Store,
    /// Who is calling.
    pub author: Author<'a>,
    /// The principal's size and page limits.
    pub limits: &'a Limits,
    /// The principal's default namespace (writes without one go there).
    pub default_namespace: &'a str,
    /// Content rules applied to every write.
    pub rules: &'a Rules,
    /// What the principal may see and touch: namespace rights and the read window.
    pub view: Visibility,
    /// The call's time, unix ms.
    pub now_ms: i64,
}

/// What a tool produced.
pub enum Done<'s> {
    /// A read's result: audited, then sent.
    Read(Value),
    /// A write's result and its open transaction: committed with the call's audit event, then
    /// the result is sent. Dropping it rolls the write back.
    Write(Value, Box<PendingWrite<'s>>),
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
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl CallRecord {
    /// Records which content rules fired on a write (names only).
    fn fired(&mut self, verdict: &Verdict) {
        self.rules = verdict
            .quarantined_by
            .iter()
            .chain(&verdict.redacted_by)
            .cloned()
            .collect();
    }

    /// Records the new entry a write adds: its id, its bytes (charged to the write budget) and
    /// its stored fields (digested into the event).
    fn created(&mut self, entry: &Entry) {
        let tags: usize = entry.tags.iter().map(String::len).sum();
        self.ids.push(entry.id.clone());
        self.created = Some(entry.id.clone());
        self.written_bytes =
            (entry.content.len() + entry.metadata.as_ref().map_or(0, String::len) + tags) as u64;
        self.stored_args = Some(
            serde_json::json!({
                "namespace": entry.namespace,
                "content": entry.content,
                "tags": entry.tags,
                "metadata": entry.metadata,
                "supersedes": entry.supersedes,
            })
            .to_string(),
        );
    }
}

/// The caller's view of the store: its grant's namespace rights and its read window.
pub fn visibility(grant: &Grant, read_from: Option<i64>) -> Visibility {
    let rights = grant.namespaces.iter().map(|(ns, access)| {
        let rights = match access {
            Access::Read => Rights::Read,
            Access::ReadWrite => Rights::ReadWrite,
        };
        (ns.clone(), rights)
    });
    Visibility::new(rights, read_from)
}

/// Parses validated arguments into a tool's parameter type and runs it.
pub fn call<'c>(
    tool: ToolName,
    args: Value,
    ctx: &'c mut CallContext<'_>,
    record: &mut CallRecord,
) -> Result<Done<'c>> {
    Ok(match tool {
        ToolName::Store => store::apply(parse(args)?, ctx, record)?,
        ToolName::Get => Done::Read(get::apply(parse(args)?, ctx, record)?),
        ToolName::Search => Done::Read(search::apply(parse(args)?, ctx, record)?),
        ToolName::List => Done::Read(list::apply(parse(args)?, ctx, record)?),
        ToolName::Update => update::apply(parse(args)?, ctx, record)?,
        ToolName::Delete => delete::apply(parse(args)?, ctx, record)?,
    })
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

impl CallContext<'_> {
    /// The namespace a write goes to: the one it names, or the principal's default. Refused
    /// unless the principal may write it.
    fn write_namespace(&self, named: Option<String>) -> Result<String> {
        let namespace = named.unwrap_or_else(|| self.default_namespace.to_string());
        if self.view.can_write(&namespace) {
            Ok(namespace)
        } else {
            Err(not_writable())
        }
    }

    /// Checks the tag count and applies the content rules to a write, in place; returns the
    /// verdict and the status the write gets. The caller records the rules that fired
    /// ([`CallRecord::fired`]) once the write has passed its size checks.
    fn police(
        &self,
        content: &mut String,
        tags: &mut Vec<String>,
        metadata: &mut Option<serde_json::Map<String, Value>>,
    ) -> Result<(Verdict, Status)> {
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
        let status = if verdict.quarantined_by.is_empty() {
            Status::Active
        } else {
            Status::Quarantined
        };
        Ok((verdict, status))
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

    /// Filters shared by search and list, checked and resolved against the caller's view: a
    /// named namespace must be readable; none means every namespace the caller may read.
    fn filter(
        &self,
        namespace: Option<String>,
        tags: Vec<String>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Filter> {
        let since = since.map(|s| parse_time("since", s)).transpose()?;
        let until = until.map(|s| parse_time("until", s)).transpose()?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(Error::InvalidArgument(
                "since must be earlier than until".into(),
            ));
        }
        self.view.filter(namespace, tags, since, until)
    }
}

/// `limit` may arrive as 20 or 20.0 (both are JSON Schema integers); the schema has checked the
/// range already.
fn deserialize_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n: Option<f64> = serde::Deserialize::deserialize(d)?;
    Ok(n.map(|n| n as usize))
}
