//! Reading events back for auditors: filtered queries and a full export. Offline only; the
//! agent-facing server never calls this.

use rusqlite::Connection;
use rusqlite::types::Value as Sql;
use serde::Serialize;

use super::AuditError;

/// Filters of `memwarden audit query`; every one optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// Only this principal's events.
    pub principal: Option<String>,
    /// Only this session's events.
    pub session: Option<String>,
    /// Only calls of this tool.
    pub tool: Option<String>,
    /// Only this outcome (`ok`, `denied`, `error`).
    pub outcome: Option<String>,
    /// Only this kind of event.
    pub kind: Option<String>,
    /// At most this many events.
    pub limit: Option<u64>,
}

/// One event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Position in the chain.
    pub seq: i64,
    /// UTC RFC 3339 with milliseconds.
    pub ts: String,
    /// The event kind.
    pub kind: String,
    /// The session it belongs to, if any.
    pub session_id: Option<String>,
    /// Who acted, if known.
    pub principal: Option<String>,
    /// The tool called, if any.
    pub tool: Option<String>,
    /// How the call ended, for calls.
    pub outcome: Option<String>,
    /// The error code, when the call failed.
    pub code: Option<String>,
    /// The detail object (the stored text when it is not JSON).
    pub detail: serde_json::Value,
    /// The hash it links to (export only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// Its chain hash (export only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Its MAC (export only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// Events matching `filter`, in seq order. `with_hashes` adds prev_hash, hash and mac.
pub fn events(
    conn: &Connection,
    filter: &Filter,
    with_hashes: bool,
    mut each: impl FnMut(Event) -> std::io::Result<()>,
) -> Result<u64, AuditError> {
    let mut sql = String::from(
        "SELECT seq, ts, kind, session_id, principal, tool, outcome, code, detail, prev_hash, \
         hash, mac FROM events WHERE 1",
    );
    let mut args: Vec<Sql> = Vec::new();
    let mut cond = |column: &str, op: &str, value: &Option<String>| {
        if let Some(v) = value {
            args.push(Sql::Text(v.clone()));
            sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
        }
    };
    cond("ts", ">=", &normalise_time(&filter.since)?);
    cond("ts", "<", &normalise_time(&filter.until)?);
    cond("principal", "=", &filter.principal);
    cond("session_id", "=", &filter.session);
    cond("tool", "=", &filter.tool);
    cond("outcome", "=", &filter.outcome);
    cond("kind", "=", &filter.kind);
    sql.push_str(" ORDER BY seq");
    if let Some(limit) = filter.limit {
        args.push(Sql::Integer(limit.min(i64::MAX as u64) as i64));
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let detail: String = r.get(8)?;
        let event = Event {
            seq: r.get(0)?,
            ts: r.get(1)?,
            kind: r.get(2)?,
            session_id: r.get(3)?,
            principal: r.get(4)?,
            tool: r.get(5)?,
            outcome: r.get(6)?,
            code: r.get(7)?,
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            prev_hash: with_hashes.then(|| r.get(9)).transpose()?,
            hash: with_hashes.then(|| r.get(10)).transpose()?,
            mac: with_hashes.then(|| r.get(11)).transpose()?,
        };
        each(event).map_err(|e| AuditError::Open(format!("writing output: {e}")))?;
        n += 1;
    }
    Ok(n)
}

/// Stored timestamps are UTC RFC 3339 with milliseconds, so they compare as text once a
/// filter's time is written the same way.
fn normalise_time(t: &Option<String>) -> Result<Option<String>, AuditError> {
    t.as_deref()
        .map(|s| {
            crate::clock::parse_time("time", s)
                .map(crate::clock::format_ms)
                .map_err(|_| AuditError::Open(format!("{s:?} is not an RFC 3339 date-time")))
        })
        .transpose()
}
