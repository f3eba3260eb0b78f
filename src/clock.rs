//! Time as memwarden uses it: unix milliseconds inside, RFC 3339 (UTC, milliseconds) outside.
//! A leaf: every module that stamps or prints a time takes it from here.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time into unix milliseconds.
pub fn parse_time(field: &str, text: &str) -> Result<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| Error::InvalidArgument(format!("{field}: not an RFC 3339 date-time")))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| Error::InvalidArgument(format!("{field}: out of range")))
}
