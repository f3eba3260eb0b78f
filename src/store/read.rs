//! Search and list: the caller's scope goes into the index lookup (see [`super::scope`]), so the
//! work done, the search window and the word weights depend only on rows inside the scope.
//! Every row found is still checked against the whole filter and verified before it is served.

use std::collections::{HashMap, HashSet};

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};

use super::scope::{self, RowRange, Scope};
use super::{
    COLUMN_COUNT, COLUMNS, Checked, Filter, FtsQuery, Hit, Hits, MatchRow, Matched, Page, RawRow,
    SEARCH_WINDOW, Store, fts_error, withheld_log,
};
use crate::error::{Error, Result};

/// A list of row ids as one bound JSON parameter (`json_each`), so a statement's text does not
/// change with the list's length.
fn json_list<T: serde::Serialize>(items: &[T]) -> Result<Value> {
    serde_json::to_string(items)
        .map(Value::Text)
        .map_err(|e| Error::Internal(e.to_string()))
}

impl Store {
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

    /// Newest first, `limit` at most, continuing below `after` (an entry id) when given.
    pub fn list(&self, filter: &Filter, after: Option<&str>, limit: usize) -> Result<Page> {
        let mut page = Page::default();
        let mut range = scope::row_range(&self.conn, filter)?;
        if let Some(after) = after {
            range = range.below(self.cursor_rowid(after, &filter.scope)?);
        }
        if filter.scope.is_empty() || range.is_empty() || limit == 0 {
            return Ok(page);
        }
        // One more than asked tells whether another page exists.
        let rowids = self.listed_rowids(filter, range, limit + 1)?;

        let mut args = vec![json_list(&rowids)?];
        let mut sql = format!(
            "SELECT {COLUMNS} FROM entries \
             WHERE entries.rowid IN (SELECT value FROM json_each(?1))"
        );
        Self::push_filter(filter, &mut sql, &mut args)?;
        sql.push_str(" ORDER BY entries.rowid DESC");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
        let mut seen = 0usize;
        let mut last_id = None;
        while let Some(row) = rows.next()? {
            seen += 1;
            if seen > limit {
                page.next_after = last_id;
                break;
            }
            let (id, verified) = match RawRow::read(row) {
                Ok(raw) => (raw.id.clone(), self.verified(raw)),
                Err(label) => (label, None),
            };
            match verified {
                Some(entry) => page.entries.push(entry),
                None => {
                    withheld_log(&id);
                    page.withheld += 1;
                    page.withheld_ids.push(id.clone());
                    page.withheld_at.push(page.entries.len());
                }
            }
            last_id = Some(id);
        }
        Ok(page)
    }

    /// The row id a cursor continues below. The cursor's own row is used only when it lies in
    /// the scope; otherwise (a foreign id, or a row purged since) the cursor's timestamp places
    /// it, so what a cursor yields never depends on rows outside the scope.
    fn cursor_rowid(&self, after: &str, scope: &Scope) -> Result<i64> {
        let row: Option<(i64, String)> = self
            .conn
            .prepare_cached("SELECT rowid, namespace FROM entries WHERE id = ?1")?
            .query_row([after], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((rowid, namespace)) = row
            && scope.covers(&namespace)
        {
            return Ok(rowid);
        }
        let ms = scope::uuid_ms(after).ok_or_else(|| {
            Error::InvalidArgument("cursor: not a cursor from memory_list".into())
        })?;
        Ok(scope::first_rowid_at(&self.conn, ms)?.unwrap_or(i64::MAX))
    }

    /// Up to `want` row ids of active rows in the filter, newest first, read from an index that
    /// holds the scope: FTS5's scope tokens when tags filter (a rare tag reads only its rows),
    /// else `(namespace, status, rowid)` per namespace merged newest first, or `(status,
    /// rowid)` for a `"*"` scope.
    fn listed_rowids(&self, filter: &Filter, range: RowRange, want: usize) -> Result<Vec<i64>> {
        let want_i = want as i64;
        if let Some(expr) = scope::scope_expr(filter).filter(|_| !filter.tags.is_empty()) {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?1 \
                     AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT ?4",
                )
                .map_err(fts_error)?;
            let ids = stmt
                .query_map(params![expr, range.lo, range.hi, want_i], |r| r.get(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<i64>>>())
                .map_err(fts_error)?;
            return Ok(ids);
        }
        let namespaces = match &filter.scope {
            Scope::All => {
                let mut stmt = self.conn.prepare_cached(
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
        let mut stmt = self.conn.prepare_cached(
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

    /// Full-text search. Entries holding every word come first, newest first; then, while there
    /// is room, entries holding some of the words, the best scored by `word_scores` first (newest
    /// first among equals), drawn from the newest [`SEARCH_WINDOW`] of them in the scope.
    /// Neither group's cost grows with the store or with other namespaces: the first reads only
    /// the rows it returns, the second a bounded window of the scope's matches. The expressions
    /// must already be safe FTS5 (see `tools::search::fts_query`).
    pub fn search(&self, query: &FtsQuery, filter: &Filter, limit: usize) -> Result<Hits> {
        let mut hits = Hits::default();
        let range = scope::row_range(&self.conn, filter)?;
        if filter.scope.is_empty() || range.is_empty() || limit == 0 {
            return Ok(hits);
        }
        // Row ids already answered (served or withheld), so the second group skips them.
        let mut seen = HashSet::new();
        // Every match holds every word, so recency orders them. (bm25 would need each word's
        // document count, which FTS5 finds by reading the word's whole doclist on every query.)
        let all = scope::scoped(&query.all, filter);
        let rows = self.newest_matches(&all, range, filter, limit)?;
        Self::collect(Self::tag(rows, Matched::All), limit, &mut seen, &mut hits);
        if let Some(any) = &query.any
            && hits.hits.len() < limit
        {
            let need = limit - hits.hits.len();
            let any = scope::scoped(any, filter);
            let window = SEARCH_WINDOW.max(need);
            let oldest = self.window_start(&any, range, window)?.unwrap_or(range.lo);
            let mut ranked = self.word_scores(&query.words, filter, range, oldest)?;
            ranked.retain(|rowid| !seen.contains(rowid));
            // The best `need` first; only when the row check drops some of them (a damaged
            // index), the rest.
            let (best, rest) = ranked.split_at(need.min(ranked.len()));
            let mut rows = self.matches_among(&any, oldest, range, best, filter)?;
            if rows.len() < need && !rest.is_empty() {
                rows.extend(self.matches_among(&any, oldest, range, rest, filter)?);
            }
            Self::collect(Self::tag(rows, Matched::Some), limit, &mut seen, &mut hits);
        }
        Ok(hits)
    }

    /// Row ids of the scope's matches from `oldest` on, best first: each scores the sum of the
    /// weights of the words it holds, a word weighing more the fewer of these matches hold it
    /// (bm25's inverse document frequency, counted in the window rather than the whole store);
    /// newest first among equal scores. Reads FTS5 alone, and only the scope's postings.
    fn word_scores(
        &self,
        words: &[String],
        filter: &Filter,
        range: RowRange,
        oldest: i64,
    ) -> Result<Vec<i64>> {
        let mut held: HashMap<i64, Vec<usize>> = HashMap::new();
        let mut counts = vec![0usize; words.len()];
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?1 AND rowid >= ?2 \
                 AND rowid < ?3 ORDER BY rowid DESC",
            )
            .map_err(fts_error)?;
        for (i, word) in words.iter().enumerate() {
            let expr = scope::scoped(word, filter);
            let mut rows = stmt
                .query(params![expr, oldest.max(range.lo), range.hi])
                .map_err(fts_error)?;
            while let Some(row) = rows.next().map_err(fts_error)? {
                held.entry(row.get(0).map_err(fts_error)?)
                    .or_default()
                    .push(i);
                counts[i] += 1;
            }
        }
        let n = held.len() as f64;
        let weight: Vec<f64> = counts
            .iter()
            .map(|&c| ((n - c as f64 + 0.5) / (c as f64 + 0.5) + 1.0).ln())
            .collect();
        let mut scored: Vec<(f64, i64)> = held
            .into_iter()
            .map(|(rowid, words)| (words.iter().map(|&i| weight[i]).sum(), rowid))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        Ok(scored.into_iter().map(|(_, rowid)| rowid).collect())
    }

    /// Rows of one group, each verified hit marked with the words it holds.
    fn tag(rows: Vec<(i64, MatchRow)>, matched: Matched) -> Vec<(i64, Checked<Hit>)> {
        rows.into_iter()
            .map(|(rowid, row)| {
                let hit = row.map(|(entry, snippet)| Hit {
                    entry,
                    snippet,
                    matched,
                });
                (rowid, hit)
            })
            .collect()
    }

    /// Appends `rows` not seen before to `hits`, up to `limit` served.
    fn collect(
        rows: Vec<(i64, Checked<Hit>)>,
        limit: usize,
        seen: &mut HashSet<i64>,
        hits: &mut Hits,
    ) {
        for (rowid, row) in rows {
            if hits.hits.len() >= limit {
                break;
            }
            if !seen.insert(rowid) {
                continue;
            }
            match row {
                Ok(hit) => hits.hits.push(hit),
                Err(id) => {
                    withheld_log(&id);
                    hits.withheld += 1;
                    hits.withheld_ids.push(id);
                }
            }
        }
    }

    /// The row id of the scope's `window`-th newest match, or `None` when there are fewer.
    /// FTS5 walks its doclists newest first and stops there, touching neither `entries` nor
    /// the ranking.
    fn window_start(
        &self,
        match_expr: &str,
        range: RowRange,
        window: usize,
    ) -> Result<Option<i64>> {
        self.conn
            .prepare_cached(
                "SELECT rowid FROM entries_fts WHERE entries_fts MATCH ?1 \
                 AND rowid >= ?2 AND rowid < ?3 ORDER BY rowid DESC LIMIT 1 OFFSET ?4",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![match_expr, range.lo, range.hi, window as i64 - 1],
                    |r| r.get(0),
                )
                .optional()
            })
            .map_err(fts_error)
    }

    /// Up to `fetch` matches in scope, newest first, each with its snippet and verified
    /// (`Err(id)` when the row fails its check). FTS5 hands matches over newest first, so SQLite
    /// stops after `fetch` rows and computes snippet() for those alone.
    fn newest_matches(
        &self,
        match_expr: &str,
        range: RowRange,
        filter: &Filter,
        fetch: usize,
    ) -> Result<Vec<(i64, MatchRow)>> {
        let mut args = Vec::new();
        let mut sql = Self::match_sql(match_expr, range, filter, &mut args)?;
        args.push(Value::Integer(fetch as i64));
        sql.push_str(&format!(
            " ORDER BY entries_fts.rowid DESC LIMIT ?{}",
            args.len()
        ));
        self.read_matches(&sql, args)
    }

    /// The matches among `rowids` (all from row id `oldest` on) that are in scope, in the order
    /// of `rowids`. One query: FTS5 walks the matches from `oldest` on and only those listed
    /// are joined to their row and get a snippet. (Asking for one row id at a time costs more:
    /// FTS5 then evaluates the whole expression for each.)
    fn matches_among(
        &self,
        match_expr: &str,
        oldest: i64,
        range: RowRange,
        rowids: &[i64],
        filter: &Filter,
    ) -> Result<Vec<(i64, MatchRow)>> {
        let mut args = Vec::new();
        let range = RowRange {
            lo: range.lo.max(oldest),
            ..range
        };
        let mut sql = Self::match_sql(match_expr, range, filter, &mut args)?;
        args.push(json_list(rowids)?);
        // The unary + keeps SQLite from handing the list to FTS5 as one lookup per row id.
        sql.push_str(&format!(
            " AND +entries_fts.rowid IN (SELECT value FROM json_each(?{}))",
            args.len()
        ));
        let mut rows = self.read_matches(&sql, args)?;
        let position: HashMap<i64, usize> =
            rowids.iter().enumerate().map(|(i, &r)| (r, i)).collect();
        rows.sort_by_key(|(rowid, _)| position.get(rowid).copied());
        Ok(rows)
    }

    /// The SELECT of a scoped match in a row-id range, with its snippet and row id.
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
            "SELECT {COLUMNS}, snippet(entries_fts, 0, '«', '»', '…', 16), \
             entries.rowid FROM entries_fts JOIN entries ON entries.rowid = entries_fts.rowid \
             WHERE entries_fts MATCH ?1 AND entries_fts.rowid >= ?2 AND entries_fts.rowid < ?3"
        );
        Self::push_filter(filter, &mut sql, args)?;
        Ok(sql)
    }

    fn read_matches(&self, sql: &str, args: Vec<Value>) -> Result<Vec<(i64, MatchRow)>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(fts_error)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(fts_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(fts_error)? {
            let rowid: i64 = row.get(COLUMN_COUNT + 1).map_err(fts_error)?;
            let snippet: String = row.get(COLUMN_COUNT).unwrap_or_default();
            let (id, verified) = match RawRow::read(row) {
                Ok(raw) => (raw.id.clone(), self.verified(raw)),
                Err(label) => (label, None),
            };
            // With an external-content index, snippet() reads the text from this very row of
            // `entries`, so it is cut from the content that just verified.
            out.push((rowid, verified.map(|entry| (entry, snippet)).ok_or(id)));
        }
        Ok(out)
    }
}
