//! Entry rows as `memory.entries` holds them, and statements built from our own text with every
//! value bound: the column list a row is read with, the reading (a row that cannot be read is a
//! label, never a failed page), and the filter's conditions.

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::{Error, Result};
use crate::pgconn::sql::Sql as Run;
use crate::store::model::Filter;
use crate::store::rows::{Checked, RawRow};
use crate::store::scope::Scope;

/// The columns a row is read with, in [`read_row`]'s order, from `memory.entries AS e`. The
/// ledger rank is the highest rank among the row's ledger records (NULL without any), one
/// lookup in `ledger_by_entry`; an unknown kind (a hand-made record) ranks highest, so it hides
/// the row rather than being ignored — the same rule as SQLite's.
pub(super) const COLUMNS: &str = "e.id, e.namespace, e.content, e.tags, e.metadata, e.status, \
     e.supersedes, e.principal, e.session_id, e.created_at, e.updated_at, e.content_sha256, \
     e.key_id, e.mac, \
     (SELECT max(CASE l.kind WHEN 'approved' THEN 1 WHEN 'superseded' THEN 2 \
      WHEN 'deleted' THEN 3 ELSE 4 END) FROM memory.ledger l WHERE l.entry_id = e.id)::bigint \
      AS ledger_rank, \
     e.pos AS pos";

/// How many columns [`COLUMNS`] reads; `pos` is the last.
pub(super) const COLUMN_COUNT: usize = 16;

/// Reads a row. A column that cannot be read makes the whole row fail verification, named by
/// its id or, if even that is unreadable, its position — it must never abort a whole page.
pub(super) fn read_row(row: &Row) -> Checked<RawRow> {
    read_typed(row).map_err(|_| {
        row.try_get::<_, String>(0).unwrap_or_else(|_| {
            format!(
                "pos:{}",
                row.try_get::<_, i64>(COLUMN_COUNT - 1).unwrap_or(-1)
            )
        })
    })
}

fn read_typed(row: &Row) -> Result<RawRow, tokio_postgres::Error> {
    Ok(RawRow {
        id: row.try_get(0)?,
        namespace: row.try_get(1)?,
        content: content_from_column(row.try_get(2)?),
        tags: row.try_get(3)?,
        metadata: row.try_get(4)?,
        status: row.try_get(5)?,
        supersedes: row.try_get(6)?,
        principal: row.try_get(7)?,
        session_id: row.try_get(8)?,
        created_at: row.try_get(9)?,
        updated_at: row.try_get(10)?,
        content_sha256: row.try_get(11)?,
        key_id: row.try_get(12)?,
        mac: row.try_get(13)?,
        ledger_rank: row.try_get::<_, Option<i64>>(14)?.unwrap_or(0),
    })
}

/// Content as `memory.entries.content` keeps it. PostgreSQL's text cannot hold U+0000, which
/// content may (JSON allows it, and SQLite keeps it): the column holds `\` for `\` and `\0`
/// for U+0000, everything else as it is (migration 3 wrote existing rows so). Text search sees
/// the same words, as `\` separates words for both engines' parsers.
pub(super) fn content_to_column(content: &str) -> std::borrow::Cow<'_, str> {
    if !content.contains(['\\', '\0']) {
        return content.into();
    }
    content.replace('\\', "\\\\").replace('\0', "\\0").into()
}

/// Content read back from the column: [`content_to_column`] undone. A sequence it never writes
/// (a row edited by hand) is kept as it is, so the row's seal, not this, rejects it.
pub(super) fn content_from_column(column: String) -> String {
    if !column.contains('\\') {
        return column;
    }
    let mut out = String::with_capacity(column.len());
    let mut chars = column.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some('\\')) => {
                chars.next();
                out.push('\\');
            }
            ('\\', Some('0')) => {
                chars.next();
                out.push('\0');
            }
            _ => out.push(c),
        }
    }
    out
}

/// A value to bind.
type Arg = Box<dyn ToSql + Sync + Send>;

/// A statement being built: our own text with `$n` placeholders, and the values bound to them.
/// Nothing from a caller ever becomes statement text.
#[derive(Default)]
pub(super) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// Binds `value`; returns its placeholder.
    pub(super) fn bind(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.args.push(Box::new(value));
        format!("${}", self.args.len())
    }

    /// Appends our own text.
    pub(super) fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The statement's text and how many values are bound (for tests).
    #[cfg(test)]
    pub(super) fn parts(&self) -> (&str, usize) {
        (&self.text, self.args.len())
    }

    /// Runs the statement on `client` (prepared once on a [`crate::pgconn::sql::Cached`]
    /// connection), returning its rows.
    pub(super) async fn query(&self, client: &impl Run) -> Result<Vec<Row>, tokio_postgres::Error> {
        let params: Vec<&(dyn ToSql + Sync)> = self
            .args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        client.query(&self.text, &params).await
    }
}

/// Appends the filter's conditions on `e`: active rows, since, until, tags, and (when
/// `with_scope`) the scope's namespaces. They stand beside the text match and the ordering in
/// one statement, so PostgreSQL never hands over, counts or ranks a row outside them.
///
/// The namespaces (only searches pass `with_scope`) are a check on rows the text lookup found,
/// written so no index can serve it (`… IS TRUE`; the column is NOT NULL, so it is the same
/// condition): on statistics that lag the table, PostgreSQL took a namespace for a few rows and
/// scanned `entries_scope` for it, checking every row of the namespace for the words (58 ms at
/// 10,000 rows against 4 ms through the text index; `read.rs`).
pub(super) fn push_filter(sql: &mut Sql, filter: &Filter, with_scope: bool) -> Result<()> {
    if with_scope && let Scope::Only(namespaces) = &filter.scope {
        let p = sql.bind(namespaces.clone());
        sql.push(&format!(" AND (e.namespace = ANY({p})) IS TRUE"));
    }
    sql.push(" AND e.status = 'active'");
    if let Some(since) = filter.since {
        let p = sql.bind(since);
        sql.push(&format!(" AND e.created_at >= {p}"));
    }
    if let Some(until) = filter.until {
        let p = sql.bind(until);
        sql.push(&format!(" AND e.created_at < {p}"));
    }
    for tag in &filter.tags {
        // `tags` is the JSON array the seal covers, written by serde_json; the same encoder
        // quotes the tag, and a quoted element can only match itself (a tag holds no quote).
        // Text search, not a jsonb cast: a hand-edited, malformed array must fail that row's
        // seal, not the whole statement.
        let quoted = serde_json::to_string(tag).map_err(|e| Error::Internal(e.to_string()))?;
        let p = sql.bind(quoted);
        sql.push(&format!(" AND strpos(e.tags, {p}) > 0"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{content_from_column, content_to_column};

    #[test]
    fn content_with_nul_and_backslashes_survives_the_column() {
        for s in ["plain", "a\\b", "nul \0 here", "\\0", "\\\0\\", "", "\0\0"] {
            let column = content_to_column(s);
            assert!(!column.contains('\0'), "{s:?}");
            assert_eq!(content_from_column(column.into_owned()), s);
        }
        // Sequences it never writes (a row edited by hand) stay, for the seal to judge.
        assert_eq!(content_from_column("a\\x\\".into()), "a\\x\\");
    }
}
