//! Search and list on memory.db: the caller's scope goes into the index lookup (see
//! [`super::fts`]; a narrow scope reads the namespace-qualified index, [`super::scoped`]), so the
//! work done, the search window and the word weights depend only on rows inside the scope. Every row found is still checked against the whole filter (a damaged index
//! can hide a row, never show a foreign one); the store verifies it before it is served.

use std::collections::{HashMap, HashSet};

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::fts::{self as scope, RowRange};
use super::scoped::Narrow;
use super::{COLUMN_COUNT, COLUMNS, read_row};
use crate::error::{Error, Result};
use crate::sqlite_file::storage_error as sql;
use crate::store::backend::Match;
use crate::store::model::{Filter, Query};
use crate::store::rank::{self, SEARCH_WINDOW};
use crate::store::rows::{Checked, RawRow};
use crate::store::scope::Scope;

/// The index over every namespace, with scope tokens (migration 4).
const SHARED: &str = "entries_fts";
/// The namespace-qualified index (migration 5, [`super::scoped`]).
const SCOPED: &str = "scoped_fts";

/// An error from a full-text query. The expressions are ours and always well-formed, so it is
/// the index itself (a damaged FTS5 table): the store cannot serve search, it is not a bug.
fn fts_error(e: rusqlite::Error) -> Error {
    Error::Unavailable(format!("full-text index: {e}"))
}

/// A list of row ids as one bound JSON parameter (`json_each`), so a statement's text does not
/// change with the list's length.
fn json_list<T: serde::Serialize>(items: &[T]) -> Result<Value> {
    serde_json::to_string(items)
        .map(Value::Text)
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Appends the filter's row-level conditions to `sql` and its values to `args`. The index
/// lookup already applied them; checking again on the row means a damaged index can hide
/// a row but never serve one from outside the scope. The unary `+` keeps SQLite from
/// driving the query from these columns instead of the lookup.
fn push_filter(filter: &Filter, sql: &mut String, args: &mut Vec<Value>) -> Result<()> {
    if let Scope::Only(namespaces) = &filter.scope {
        args.push(json_list(namespaces)?);
        sql.push_str(&format!(
            " AND +entries.namespace IN (SELECT value FROM json_each(?{}))",
            args.len()
        ));
    }
    sql.push_str(" AND +entries.status = 'active'");
    if let Some(since) = filter.since {
        args.push(Value::Integer(since));
        sql.push_str(&format!(" AND +entries.created_at >= ?{}", args.len()));
    }
    if let Some(until) = filter.until {
        args.push(Value::Integer(until));
        sql.push_str(&format!(" AND +entries.created_at < ?{}", args.len()));
    }
    for tag in &filter.tags {
        args.push(Value::Text(tag.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(entries.tags) WHERE json_each.value = ?{})",
            args.len()
        ));
    }
    Ok(())
}

/// Up to `want` active rows inside `filter`, newest first, continuing below the entry `after`.
pub(super) fn list(
    conn: &Connection,
    filter: &Filter,
    after: Option<&str>,
    want: usize,
) -> Result<Vec<Checked<RawRow>>> {
    let mut range = scope::row_range(conn, filter).map_err(sql)?;
    if let Some(after) = after {
        range = range.below(cursor_rowid(conn, after, &filter.scope)?);
    }
    if filter.scope.is_empty() || range.is_empty() || want == 0 {
        return Ok(Vec::new());
    }
    let rowids = listed_rowids(conn, filter, range, want)?;
    let mut args = vec![json_list(&rowids)?];
    let mut sql_text = format!(
        "SELECT {COLUMNS} FROM entries \
         WHERE entries.rowid IN (SELECT value FROM json_each(?1))"
    );
    push_filter(filter, &mut sql_text, &mut args)?;
    sql_text.push_str(" ORDER BY entries.rowid DESC");
    let mut stmt = conn.prepare_cached(&sql_text).map_err(sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |r| Ok(read_row(r)))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(sql)?;
    Ok(rows)
}

/// The row id a cursor continues below. The cursor's own row is used only when it lies in
/// the scope; otherwise (a foreign id, or a row purged since) the cursor's timestamp places
/// it, so what a cursor yields never depends on rows outside the scope.
fn cursor_rowid(conn: &Connection, after: &str, scope: &Scope) -> Result<i64> {
    let row: Option<(i64, String)> = conn
        .prepare_cached("SELECT rowid, namespace FROM entries WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([after], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(sql)?;
    if let Some((rowid, namespace)) = row
        && scope.covers(&namespace)
    {
        return Ok(rowid);
    }
    let ms = scope::uuid_ms(after)
        .ok_or_else(|| Error::InvalidArgument("cursor: not a cursor from memory_list".into()))?;
    Ok(scope::first_rowid_at(conn, ms)
        .map_err(sql)?
        .unwrap_or(i64::MAX))
}

/// Up to `want` row ids of active rows in the filter, newest first, read from an index that
/// holds the scope: FTS5's tag terms when tags filter (a rare tag reads only its rows;
/// per namespace in a narrow scope), else `(namespace, status, rowid)` per namespace merged newest first, or `(status,
/// rowid)` for a `"*"` scope.
fn listed_rowids(
    conn: &Connection,
    filter: &Filter,
    range: RowRange,
    want: usize,
) -> Result<Vec<i64>> {
    // A tag filter reads FTS5: its failures are the index's (see `fts_error`).
    let fail = if filter.tags.is_empty() {
        sql
    } else {
        fts_error
    };
    listed_rowids_sql(conn, filter, range, want).map_err(fail)
}

/// [`listed_rowids`] in SQLite's own errors (an FTS5 failure is already mapped as such).
fn listed_rowids_sql(
    conn: &Connection,
    filter: &Filter,
    range: RowRange,
    want: usize,
) -> rusqlite::Result<Vec<i64>> {
    let want_i = want as i64;
    let tagged = match Narrow::of(filter) {
        Some(narrow) => narrow.tagged().map(|e| (SCOPED, e)),
        None => scope::scope_expr(filter)
            .filter(|_| !filter.tags.is_empty())
            .map(|e| (SHARED, e)),
    };
    if let Some((table, expr)) = tagged {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT rowid FROM {table} WHERE {table} MATCH ?1 \
             AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT ?4"
        ))?;
        let ids = stmt
            .query_map(params![expr, range.lo, range.hi, want_i], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        return Ok(ids);
    }
    let namespaces = match &filter.scope {
        Scope::All => {
            let mut stmt = conn.prepare_cached(
                "SELECT rowid FROM entries WHERE status = 'active' \
                 AND rowid >= ?1 AND rowid < ?2 ORDER BY rowid DESC LIMIT ?3",
            )?;
            let ids = stmt
                .query_map(params![range.lo, range.hi, want_i], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<i64>>>()?;
            return Ok(ids);
        }
        Scope::Only(namespaces) => namespaces,
    };
    // A merge of per-namespace scans: once `want` row ids are in hand, later namespaces are
    // scanned only above the oldest of them, so the whole costs about `want` index entries
    // per namespace at most.
    let mut stmt = conn.prepare_cached(
        "SELECT rowid FROM entries WHERE namespace = ?1 AND status = 'active' \
         AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT ?4",
    )?;
    let mut best: Vec<i64> = Vec::with_capacity(want * 2);
    let mut lo = range.lo;
    for ns in namespaces {
        let ids = stmt
            .query_map(params![ns, lo, range.hi, want_i], |r| r.get::<_, i64>(0))?
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        best.extend(ids);
        best.sort_unstable_by(|a, b| b.cmp(a));
        best.truncate(want);
        if best.len() == want
            && let Some(&oldest) = best.last()
        {
            lo = lo.max(oldest.saturating_add(1));
        }
    }
    Ok(best)
}

/// Up to `limit` matches inside `filter` holding every word, newest first. FTS5 hands matches
/// over newest first, so SQLite stops after `limit` rows.
pub(super) fn all_words(
    conn: &Connection,
    query: &Query,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<Match>> {
    let range = scope::row_range(conn, filter).map_err(sql)?;
    if range.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let fts = scope::expressions(query);
    if let Some(narrow) = Narrow::of(filter) {
        let expr = narrow.all(query.words()).map_err(fts_error)?;
        let rowids = newest_rowids(conn, &expr, range, limit)?;
        return rows_among(conn, &rowids, filter);
    }
    let expr = scope::scoped(&fts.all, filter);
    newest_matches(conn, &expr, range, filter, limit)
}

/// Up to `limit` row ids of `scoped_fts` matches of `expr` in `range`, newest first.
fn newest_rowids(conn: &Connection, expr: &str, range: RowRange, limit: usize) -> Result<Vec<i64>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT rowid FROM scoped_fts WHERE scoped_fts MATCH ?1 AND rowid >= ?2 \
             AND rowid < ?3 ORDER BY rowid DESC LIMIT ?4",
        )
        .map_err(fts_error)?;
    stmt.query_map(params![expr, range.lo, range.hi, limit as i64], |r| {
        r.get(0)
    })
    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
    .map_err(fts_error)
}

/// The rows `rowids` that are in the filter (checked on the row, as every lookup's), in that
/// order.
fn rows_among(conn: &Connection, rowids: &[i64], filter: &Filter) -> Result<Vec<Match>> {
    if rowids.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec![json_list(rowids)?];
    let mut sql_text = format!(
        "SELECT {COLUMNS} FROM entries WHERE entries.rowid IN (SELECT value FROM json_each(?1))"
    );
    push_filter(filter, &mut sql_text, &mut args)?;
    let mut stmt = conn.prepare_cached(&sql_text).map_err(sql)?;
    let mut found: HashMap<i64, Checked<RawRow>> = HashMap::with_capacity(rowids.len());
    let mut rows = stmt.query(rusqlite::params_from_iter(args)).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        found.insert(row.get(COLUMN_COUNT - 1).map_err(sql)?, read_row(row));
    }
    Ok(rowids
        .iter()
        .filter_map(|&key| found.remove(&key).map(|row| Match { key, row }))
        .collect())
}

/// Up to `need` matches inside `filter` holding some of the words, best first by
/// [`rank::by_word_weight`] over the newest [`SEARCH_WINDOW`] (or `need`, if more) of them;
/// rows in `skip` passed over. Only when the row check drops some of the best (a damaged
/// index) are the rest read.
pub(super) fn some_words(
    conn: &Connection,
    query: &Query,
    filter: &Filter,
    need: usize,
    skip: &HashSet<i64>,
) -> Result<Vec<Match>> {
    let range = scope::row_range(conn, filter).map_err(sql)?;
    let fts = scope::expressions(query);
    let Some(any) = fts.any.as_deref() else {
        return Ok(Vec::new());
    };
    if range.is_empty() || need == 0 {
        return Ok(Vec::new());
    }
    let narrow = Narrow::of(filter);
    let (table, any_expr) = match &narrow {
        Some(n) => (SCOPED, n.any(query.words()).map_err(fts_error)?),
        None => (SHARED, scope::scoped(any, filter)),
    };
    let window = SEARCH_WINDOW.max(need);
    let oldest = window_start(conn, table, &any_expr, range, window)?.unwrap_or(range.lo);
    let narrowed = RowRange {
        lo: range.lo.max(oldest),
        ..range
    };
    let mut by_word = Vec::with_capacity(fts.words.len());
    for (word, literal) in query.words().iter().zip(&fts.words) {
        let expr = match &narrow {
            Some(n) => n.word(word).map_err(fts_error)?,
            None => scope::scoped(literal, filter),
        };
        by_word.push(matching_rowids(conn, table, &expr, narrowed)?);
    }
    let mut ranked = rank::by_word_weight(&by_word);
    ranked.retain(|rowid| !skip.contains(rowid));
    let (best, rest) = ranked.split_at(need.min(ranked.len()));
    let read = |rowids: &[i64]| match narrow {
        Some(_) => rows_among(conn, rowids, filter),
        None => matches_among(conn, &any_expr, narrowed, rowids, filter),
    };
    let mut rows = read(best)?;
    if rows.len() < need && !rest.is_empty() {
        rows.extend(read(rest)?);
    }
    Ok(rows)
}

/// Row ids of the matches of `expr` in `range` of `table` ([`SHARED`] or [`SCOPED`]), newest
/// first. Reads FTS5 alone, and only the scope's postings.
fn matching_rowids(
    conn: &Connection,
    table: &str,
    expr: &str,
    range: RowRange,
) -> Result<Vec<i64>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT rowid FROM {table} WHERE {table} MATCH ?1 AND rowid >= ?2 \
             AND rowid < ?3 ORDER BY rowid DESC"
        ))
        .map_err(fts_error)?;
    stmt.query_map(params![expr, range.lo, range.hi], |r| r.get(0))
        .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
        .map_err(fts_error)
}

/// The row id of the scope's `window`-th newest match, or `None` when there are fewer.
/// FTS5 walks its doclists newest first and stops there, touching neither `entries` nor
/// the ranking.
fn window_start(
    conn: &Connection,
    table: &str,
    match_expr: &str,
    range: RowRange,
    window: usize,
) -> Result<Option<i64>> {
    conn.prepare_cached(&format!(
        "SELECT rowid FROM {table} WHERE {table} MATCH ?1 \
             AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT 1 OFFSET ?4"
    ))
    .and_then(|mut stmt| {
        stmt.query_row(
            params![match_expr, range.lo, range.hi, window as i64 - 1],
            |r| r.get(0),
        )
        .optional()
    })
    .map_err(fts_error)
}

/// Up to `fetch` matches in scope, newest first (`Err(id)` for a row that cannot be read). FTS5
/// hands matches over newest first, so SQLite stops after `fetch` rows.
fn newest_matches(
    conn: &Connection,
    match_expr: &str,
    range: RowRange,
    filter: &Filter,
    fetch: usize,
) -> Result<Vec<Match>> {
    let mut args = Vec::new();
    let mut sql = match_sql(match_expr, range, filter, &mut args)?;
    args.push(Value::Integer(fetch as i64));
    sql.push_str(&format!(
        " ORDER BY entries_fts.rowid DESC LIMIT ?{}",
        args.len()
    ));
    read_matches(conn, &sql, args)
}

/// The matches among `rowids` (all inside `range`) that are in scope, in the order
/// of `rowids`. One query: FTS5 walks the matches from `oldest` on and only those listed
/// are joined to their row. (Asking for one row id at a time costs more:
/// FTS5 then evaluates the whole expression for each.)
fn matches_among(
    conn: &Connection,
    match_expr: &str,
    range: RowRange,
    rowids: &[i64],
    filter: &Filter,
) -> Result<Vec<Match>> {
    let mut args = Vec::new();
    let mut sql = match_sql(match_expr, range, filter, &mut args)?;
    args.push(json_list(rowids)?);
    // The unary + keeps SQLite from handing the list to FTS5 as one lookup per row id.
    sql.push_str(&format!(
        " AND +entries_fts.rowid IN (SELECT value FROM json_each(?{}))",
        args.len()
    ));
    let mut rows = read_matches(conn, &sql, args)?;
    let position: HashMap<i64, usize> = rowids.iter().enumerate().map(|(i, &r)| (r, i)).collect();
    rows.sort_by_key(|m| position.get(&m.key).copied());
    Ok(rows)
}

/// The SELECT of a scoped match's row in a row-id range.
fn match_sql(
    match_expr: &str,
    range: RowRange,
    filter: &Filter,
    args: &mut Vec<Value>,
) -> Result<String> {
    args.extend([
        Value::Text(match_expr.to_string()),
        Value::Integer(range.lo),
        Value::Integer(range.hi),
    ]);
    let mut sql = format!(
        "SELECT {COLUMNS} FROM entries_fts JOIN entries ON entries.rowid = entries_fts.rowid \
         WHERE entries_fts MATCH ?1 AND entries_fts.rowid >= ?2 AND entries_fts.rowid < ?3"
    );
    push_filter(filter, &mut sql, args)?;
    Ok(sql)
}

fn read_matches(conn: &Connection, sql_text: &str, args: Vec<Value>) -> Result<Vec<Match>> {
    let mut stmt = conn.prepare_cached(sql_text).map_err(fts_error)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args))
        .map_err(fts_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(fts_error)? {
        out.push(Match {
            key: row.get(COLUMN_COUNT - 1).map_err(fts_error)?,
            row: read_row(row),
        });
    }
    Ok(out)
}
