//! How a verified entry is shown to the agent: its fields plus provenance it cannot forge, and
//! a reminder that the content is data, not instructions. Only verified entries are rendered.

use serde::Serialize;
use serde_json::Value;

use crate::clock::format_ms;
use crate::error::{Error, Result};
use crate::store::{Entry, Status};

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
    /// The view of a verified entry.
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

    /// The entry's id.
    pub fn id(&self) -> &str {
        self.id
    }

    /// Its size as JSON (escapes included), for response byte bounds.
    pub(crate) fn serialized_len(&self) -> Result<usize> {
        serde_json::to_vec(self)
            .map(|v| v.len())
            .map_err(|e| Error::Internal(format!("render: {e}")))
    }
}
