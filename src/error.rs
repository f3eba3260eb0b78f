//! The one error type every tool call ends in, with the stable codes agents see.
//!
//! It separates what the agent did wrong (invalid, too large, not found: explained to the agent)
//! from what went wrong inside (storage, integrity, internal: logged in detail on stderr, shown to
//! the agent only as a code and a fixed sentence). Nothing here may put a path, SQL text, a key,
//! memory content or another principal's data into an agent-facing message.

use std::fmt;

/// The stable, documented codes of DESIGN.md §9. Their spelling is a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    InvalidArgument,
    TooLarge,
    Forbidden,
    NotFound,
    RateLimited,
    Cooldown,
    ContentRejected,
    Integrity,
    SessionExpired,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::TooLarge => "TOO_LARGE",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::RateLimited => "RATE_LIMITED",
            Self::Cooldown => "COOLDOWN",
            Self::ContentRejected => "CONTENT_REJECTED",
            Self::Integrity => "INTEGRITY",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tool call failed.
///
/// `Schema` becomes a JSON-RPC -32602 error; every other variant becomes a tool result with
/// `isError: true` and a structured `{code, message}` body (DESIGN.md §9).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The arguments do not match the tool's published schema. `path` is a JSON pointer into the
    /// arguments, `keyword` the schema keyword that failed; `message` never echoes the value.
    #[error("{path}: {message}")]
    Schema {
        path: String,
        keyword: String,
        message: String,
    },
    /// The arguments pass the schema but ask for something that cannot be done as asked.
    #[error("{0}")]
    InvalidArgument(String),
    /// A size limit above the schema's character bounds (bytes, serialized size).
    #[error("{what} is {actual} bytes; the limit is {limit} bytes")]
    TooLarge {
        what: &'static str,
        actual: usize,
        limit: usize,
    },
    /// The policy does not allow this (a tool not granted, a namespace not writable).
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit; retry after the given time.
    #[error("rate limit reached; retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// The session is cooling down after repeated refusals; every call is refused until then.
    #[error("too many refused calls: cooling down for {retry_after_ms} ms")]
    Cooldown { retry_after_ms: u64 },
    /// A content rule refused the write. Names the rule, never the matched text.
    #[error("content rejected by rule {rule}")]
    ContentRejected { rule: String },
    /// The session is over (idle, too old, or ended by the rate gate).
    #[error("the session has ended")]
    SessionExpired,
    /// No such entry, or not one this caller may see. Deliberately says nothing more.
    #[error("no such memory")]
    NotFound,
    /// The row exists but its seal does not verify: it is never served.
    #[error("the stored entry failed its integrity check and is withheld")]
    Integrity,
    /// The store cannot be used right now (busy past the timeout, disk full, read-only, I/O).
    /// The source is logged, never shown.
    #[error("the store is unavailable; try again later")]
    Unavailable(String),
    /// The connection to the database was lost; the server reconnects (with backoff) and a
    /// later call may succeed. Nothing of this call was applied.
    #[error("the database connection was lost; retry after {retry_after_ms} ms")]
    Disconnected { retry_after_ms: u64 },
    /// audit.db cannot be written, so nothing may be done (fail closed). Ends the session.
    #[error("the audit log cannot be written; nothing was done")]
    Audit(String),
    /// A bug or an unexpected state. The detail is logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl Error {
    /// The stable code agents and the audit log see.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Schema { .. } | Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::NotFound => ErrorCode::NotFound,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Cooldown { .. } => ErrorCode::Cooldown,
            Self::ContentRejected { .. } => ErrorCode::ContentRejected,
            Self::SessionExpired => ErrorCode::SessionExpired,
            Self::Integrity => ErrorCode::Integrity,
            Self::Unavailable(_) | Self::Disconnected { .. } | Self::Audit(_) => {
                ErrorCode::Unavailable
            }
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// When the caller may try again, in milliseconds.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_ms }
            | Self::Cooldown { retry_after_ms }
            | Self::Disconnected { retry_after_ms } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// True for failures inside the server, as opposed to the caller's mistakes.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Integrity
                | Self::Unavailable(_)
                | Self::Disconnected { .. }
                | Self::Audit(_)
                | Self::Internal(_)
        )
    }
}

/// Result alias for tool-call paths.
pub type Result<T, E = Error> = std::result::Result<T, E>;
