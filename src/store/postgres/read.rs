//! Search and list on `memory.entries`: the caller's scope, times and tags stand in the same
//! statement as the text match and the ordering, so the rows PostgreSQL hands over, the search
//! window and the word weights depend only on rows inside the filter. Query words reach the
//! server only as bound parameters, parsed there by the `memory.words` configuration and quoted
//! into a tsquery by our functions: whatever a word holds (`&`, `|`, `!`, `:*`, quotes, SQL) is
//! text to look for, never an operator.
//! Snippets are cut above the backend, from the verified content ([`crate::store::snippet`]).
//!
//! What a search costs depends on the scope too. Every search is looked up in `entries_scoped`,
//! whose lexemes carry their namespace ([`super::scoped`]), by its scope's namespaces, or for a
//! `"*"` scope those of every namespace the store holds ([`scoped::lookup_namespaces`]): one text index
//! (migration 5), and the postings read are the scope's alone, for words and tags alike, however
//! many matches other namespaces hold. A scope that names its namespaces reads all its matches
//! at once; a `"*"` scope, whose matches are the whole store's, reads the newest in ranges
//! ([`Ranges`]). Rows found are checked against the whole filter again ([`push_filter`]).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use super::fail::Failure;
use super::rows::{COLUMN_COUNT, COLUMNS, Sql, push_filter, read_row};
use super::scoped::{self, bind_namespaces, lookup, lookup_namespaces};
use crate::error::Error;
use crate::pgconn::sql::Sql as Run;
use crate::store::backend::Match;
use crate::store::model::{Filter, Query};
use crate::store::rank::{self, SEARCH_WINDOW};
use crate::store::rows::{Checked, RawRow};
use crate::store::scope::Scope;

/// Up to `want` active rows inside `filter`, newest first, below the entry `after`.
pub(super) async fn list(
    client: &Client,
    filter: &Filter,
    after: Option<&str>,
    want: usize,
) -> Result<Vec<Checked<RawRow>>, Failure> {
    let below = match after {
        Some(after) => cursor_pos(client, after, &filter.scope).await?,
        None => i64::MAX,
    };
    if filter.scope.is_empty() || want == 0 {
        return Ok(Vec::new());
    }
    let mut sql = Sql::default();
    let limit = sql.bind(want as i64);
    let below = sql.bind(below);
    let inner = |sql: &mut Sql, extra: &str| -> crate::error::Result<()> {
        sql.push(&format!(
            "SELECT {COLUMNS} FROM memory.entries e WHERE e.pos < {below}{extra}"
        ));
        push_filter(sql, filter, false)?;
        sql.push(&format!(" ORDER BY e.pos DESC LIMIT {limit}"));
        Ok(())
    };
    match &filter.scope {
        // Newest first per namespace, then merged: each namespace can be read from its own
        // (namespace, status, pos) index range, stopping after `want` rows, so a small
        // namespace is not listed by walking a large one's rows (the planner takes that path
        // when the namespace is a small part of the table).
        // Tags inside a narrow scope are looked up per namespace in `entries_scoped` too, so a
        // rare tag reads its own rows, not the namespace's.
        Scope::Only(namespaces) => {
            let ns = sql.bind(namespaces.clone());
            let mut extra = " AND e.namespace = s.ns".to_string();
            if filter.scope.narrow().is_some() && !filter.tags.is_empty() {
                let tagged = scoped::condition(&mut sql, "ARRAY[s.ns]", &[], true, &filter.tags)?;
                extra.push_str(&format!(" AND {tagged}"));
            }
            sql.push(&format!(
                "SELECT m.* FROM unnest({ns}::text[]) AS s(ns) CROSS JOIN LATERAL ("
            ));
            inner(&mut sql, &extra)?;
            sql.push(&format!(") m ORDER BY m.pos DESC LIMIT {limit}"));
        }
        Scope::All => inner(&mut sql, "")?,
    }
    let rows = sql.query(client).await?;
    Ok(rows.iter().map(read_row).collect())
}

/// The position a cursor continues below. The cursor's own row is used only when it lies in
/// the scope; otherwise (a foreign id, or a row purged since) the cursor's timestamp places
/// it, so what a cursor yields never depends on rows outside the scope.
async fn cursor_pos(client: &Client, after: &str, scope: &Scope) -> Result<i64, Failure> {
    let row = client
        .query_opt(
            "SELECT pos, namespace FROM memory.entries WHERE id = $1",
            &[&after],
        )
        .await?;
    if let Some(row) = row
        && let (Ok(pos), Ok(namespace)) = (row.try_get::<_, i64>(0), row.try_get::<_, String>(1))
        && scope.covers(&namespace)
    {
        return Ok(pos);
    }
    let ms = crate::store::sqlite::fts::uuid_ms(after)
        .ok_or_else(|| Error::InvalidArgument("cursor: not a cursor from memory_list".into()))?;
    let first = client
        .query_opt(
            "SELECT pos FROM memory.entries WHERE created_at >= $1 \
             ORDER BY created_at, pos LIMIT 1",
            &[&ms],
        )
        .await?;
    match first {
        Some(row) => Ok(row.try_get(0)?),
        None => Ok(i64::MAX),
    }
}

/// Up to `limit` matches inside `filter` holding every word, newest first: the newest matches
/// among the rows above a position, the range widened ([`Ranges`]) until it holds `limit` of
/// them or reaches the oldest row.
pub(super) async fn all_words(
    client: &impl Run,
    query: &Query,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<Match>, Failure> {
    if filter.scope.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let namespaces = lookup_namespaces(client, &filter.scope).await?;
    if namespaces.is_empty() {
        // No namespace of the scope holds an active row: nothing to look up.
        return Ok(Vec::new());
    }
    let mut ranges = Ranges::start(client, filter, limit).await?;
    loop {
        let mut sql = Sql::default();
        let ns = bind_namespaces(&mut sql, &namespaces);
        let all = lookup(&mut sql, &ns, filter, query.words())?;
        let above = ranges.condition(&mut sql);
        let limit_p = sql.bind(limit as i64);
        // The positions first, in a subquery the planner cannot order by an index (`OFFSET 0`
        // keeps it whole, so no newest-first walk is ever its cheaper way to the first rows);
        // then the rows, by primary key.
        sql.push(&format!(
            "SELECT {COLUMNS} FROM memory.entries e WHERE e.pos = ANY(ARRAY(\
             SELECT m.pos FROM (SELECT e.pos FROM memory.entries e WHERE {all}{above}"
        ));
        push_filter(&mut sql, filter, true)?;
        sql.push(&format!(
            " OFFSET 0) m ORDER BY m.pos DESC LIMIT {limit_p})) ORDER BY e.pos DESC"
        ));
        let found = read_matches(client, &sql).await?;
        if found.len() >= limit || !ranges.widen(found.len()) {
            return Ok(found);
        }
    }
}

/// Descending ranges of positions a `"*"` search looks in, newest first: the rows above
/// [`Ranges::condition`]'s bound, starting a little wider than what is wanted and widened until
/// the statement finds enough or the range holds every row. Each wider range is sized to hold
/// [`AIM`] times what is wanted at the density of matches the last one found (one match
/// counted where it found none; at least 2-fold, at most [`GROWTH`]-fold). A statement costs
/// what a few hundred rows cost (its plan, and the postings of its words, read again by every
/// statement): 2.5-4 ms at 1M rows, against 3-8 µs a row. Widening by at most 8-fold took two
/// words that rarely meet through four or five statements at 1M; sized by density, two.
///
/// Why: a lookup that sorts every match reads every match's row (about 1,200 rows a word at
/// 100,000 entries, 12,000 at a million, to keep 500), 4-5 µs each. Inside a range PostgreSQL
/// intersects the word's postings with the primary key's range (a `BitmapAnd`) and reads only
/// the rows in both. The range's estimate stays right on statistics that lag the table:
/// PostgreSQL checks a bound past the statistics' newest value against the primary key.
///
/// A scope that names its namespaces looks in every row at once: its postings are its own, and
/// a range's rows are everyone's, which the planner may prefer to read where it overestimates
/// a word (such a lookup must not read other namespaces' rows, issue 13). A `"*"` scope's
/// ranges hold its own rows alone.
///
/// Results are those of one statement over all rows: the last range's statement (one
/// snapshot) finds the newest matches whenever it found enough, and holds every row when it
/// did not. Rows stored meanwhile lie above every range (positions only grow).
struct Ranges {
    top: i64,
    span: i64,
    want: i64,
}

/// The first range's rows per row wanted.
const FIRST_SPAN_PER_ROW: i64 = 4;
/// The first range's least size.
const FIRST_SPAN_MIN: i64 = 2_048;
/// How many times what is wanted a wider range is sized to hold.
const AIM: i64 = 4;
/// How much wider a range may be than the last.
const GROWTH: i64 = 1_024;

impl Ranges {
    /// The first range, for `want` rows inside `filter`: from the newest position down for a
    /// `"*"` scope, else every row.
    async fn start(client: &impl Run, filter: &Filter, want: usize) -> Result<Self, Failure> {
        if !matches!(filter.scope, Scope::All) {
            return Ok(Self {
                top: 0,
                span: i64::MAX,
                want: 0,
            });
        }
        let top: i64 = client
            .query_one(
                "SELECT coalesce(max(pos), 0)::bigint FROM memory.entries",
                &[],
            )
            .await?
            .try_get(0)?;
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        Ok(Self {
            top,
            span: want.saturating_mul(FIRST_SPAN_PER_ROW).max(FIRST_SPAN_MIN),
            want,
        })
    }

    /// The position the current range lies above (0: every row).
    fn above(&self) -> i64 {
        self.top.saturating_sub(self.span).max(0)
    }

    /// The current range as a condition on `e` to append (nothing for every row).
    fn condition(&self, sql: &mut Sql) -> String {
        match self.above() {
            0 => String::new(),
            above => format!(" AND e.pos > {}", sql.bind(above)),
        }
    }

    /// Moves to a wider range after `found` rows of the `want`ed were found in this one; false
    /// when this one held every row already.
    fn widen(&mut self, found: usize) -> bool {
        if self.above() == 0 {
            return false;
        }
        let found = i64::try_from(found).unwrap_or(i64::MAX).max(1);
        let factor = (self.want.saturating_mul(AIM) / found).clamp(2, GROWTH);
        self.span = self.span.saturating_mul(factor);
        true
    }
}

/// Up to `need` matches inside `filter` holding some of the words, best first by
/// [`rank::by_word_weight`] over the newest [`SEARCH_WINDOW`] (or `need`, if more) of them;
/// rows in `skip` passed over. The window statement returns positions and which word each
/// holds ([`window`]); rows are read for the best alone.
pub(super) async fn some_words(
    client: &impl Run,
    query: &Query,
    filter: &Filter,
    need: usize,
    skip: &HashSet<i64>,
) -> Result<Vec<Match>, Failure> {
    let words = query.words();
    if filter.scope.is_empty() || need == 0 || words.len() < 2 {
        return Ok(Vec::new());
    }
    let namespaces = lookup_namespaces(client, &filter.scope).await?;
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let by_word = window(client, &namespaces, words, filter, SEARCH_WINDOW.max(need)).await?;
    let mut ranked = rank::by_word_weight(&by_word);
    ranked.retain(|pos| !skip.contains(pos));
    // Rows are read in slices of what is still needed: one removed since the window was read
    // makes room for the next best, and no row is read that is not returned.
    let mut out = Vec::new();
    let mut rest = &ranked[..];
    while out.len() < need && !rest.is_empty() {
        let (take, left) = rest.split_at((need - out.len()).min(rest.len()));
        out.extend(matches_among(client, &namespaces, words, take, filter).await?);
        rest = left;
    }
    Ok(out)
}

/// For each word, the positions of the newest `size` rows inside `filter` holding some word
/// that hold this one.
///
/// One statement of one subquery per word — the newest `size` rows inside `filter` holding
/// that word — merged here. A row among the newest `size` holding some word is among the
/// newest `size` holding each word it holds (the rows newer than it holding that word hold
/// some word too, and there are fewer than `size` of them), so the merge's newest `size`
/// positions are the window, and which words each holds is which subqueries returned it. The
/// alternative, one `||` lookup with `words @@ word` per row for which words it holds, reads
/// every matching row's `words` back, not only the window's (from TOAST, about 5 µs a row,
/// before migration 4), and gives the planner an estimate of the `||` it misjudges: near the
/// window's size it walked the table newest first instead, checking every row (45 ms at 10,000
/// rows, growing with the store). Every subquery looks in the same range of positions,
/// widened until the merge holds `size` rows ([`Ranges`]).
async fn window(
    client: &impl Run,
    namespaces: &[String],
    words: &[String],
    filter: &Filter,
    size: usize,
) -> Result<Vec<Vec<i64>>, Failure> {
    let mut ranges = Ranges::start(client, filter, size).await?;
    loop {
        let mut sql = Sql::default();
        let limit = sql.bind(size as i64);
        let above = ranges.condition(&mut sql);
        let ns = bind_namespaces(&mut sql, namespaces);
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                sql.push(" UNION ALL ");
            }
            let holds = lookup(&mut sql, &ns, filter, std::slice::from_ref(word))?;
            sql.push(&format!(
                "(SELECT {i}::int, m.pos FROM (SELECT e.pos FROM memory.entries e \
                 WHERE {holds}{above}"
            ));
            push_filter(&mut sql, filter, true)?;
            sql.push(&format!(" OFFSET 0) m ORDER BY m.pos DESC LIMIT {limit})"));
        }
        let rows = sql.query(client).await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let word: i32 = row.try_get(0)?;
            let pos: i64 = row.try_get(1)?;
            found.push((pos, word));
        }
        // Enough distinct rows above the range's bound: the window lies above it, and each
        // word's list holds its rows of the window (its newest `size` above the bound, or all
        // of them there). Fewer: the window reaches below the bound, unless nothing is there.
        let distinct: HashSet<i64> = found.iter().map(|&(pos, _)| pos).collect();
        if distinct.len() >= size || !ranges.widen(distinct.len()) {
            return Ok(newest_by_word(found, words.len(), size));
        }
    }
}

/// `(position, word)` pairs cut to the newest `size` positions, then grouped by word.
fn newest_by_word(mut found: Vec<(i64, i32)>, words: usize, size: usize) -> Vec<Vec<i64>> {
    found.sort_unstable_by(|a, b| b.cmp(a));
    let mut by_word = vec![Vec::new(); words];
    let mut distinct = 0;
    let mut last = None;
    for (pos, word) in found {
        if last != Some(pos) {
            if distinct == size {
                break;
            }
            distinct += 1;
            last = Some(pos);
        }
        if let Some(list) = usize::try_from(word).ok().and_then(|w| by_word.get_mut(w)) {
            list.push(pos);
        }
    }
    by_word
}

/// The matches among `positions` that are inside the filter, in the order of `positions`.
async fn matches_among(
    client: &impl Run,
    namespaces: &[String],
    words: &[String],
    positions: &[i64],
    filter: &Filter,
) -> Result<Vec<Match>, Failure> {
    let mut sql = Sql::default();
    let ns = bind_namespaces(&mut sql, namespaces);
    let any = scoped::condition(&mut sql, &ns, words, false, &[])?;
    let wanted = sql.bind(positions.to_vec());
    sql.push(&format!(
        "SELECT {COLUMNS} FROM memory.entries e WHERE e.pos = ANY({wanted}) AND {any}"
    ));
    push_filter(&mut sql, filter, true)?;
    let mut rows = read_matches(client, &sql).await?;
    let order: HashMap<i64, usize> = positions.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    rows.sort_by_key(|m| order.get(&m.key).copied());
    Ok(rows)
}

async fn read_matches(client: &impl Run, sql: &Sql) -> Result<Vec<Match>, Failure> {
    let rows = sql.query(client).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(Match {
            key: row.try_get(COLUMN_COUNT - 1)?,
            row: read_row(row),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statement text of a search over `words` in `scope` with a tag, and its bound value
    /// count.
    fn statement(words: &[&str], scope: Scope, tag: &str) -> (String, usize) {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let filter = Filter {
            scope,
            tags: vec![tag.to_string()],
            since: Some(1),
            until: Some(2),
        };
        let mut sql = Sql::default();
        let namespaces = match &filter.scope {
            Scope::Only(n) => n.clone(),
            Scope::All => vec!["a".to_string(), "b".to_string()],
        };
        let ns = bind_namespaces(&mut sql, &namespaces);
        let q = lookup(&mut sql, &ns, &filter, &words).unwrap();
        sql.push(&format!("SELECT 1 FROM memory.entries e WHERE {q}"));
        push_filter(&mut sql, &filter, true).unwrap();
        let (text, args) = sql.parts();
        (text.to_string(), args)
    }

    #[test]
    fn the_window_is_the_newest_positions_holding_some_word() {
        // Word 0 in 9, 7, 5, 3; word 1 in 9, 8, 2: a window of four is 9, 8, 7, 5.
        let found = vec![(3, 0), (9, 1), (7, 0), (2, 1), (9, 0), (5, 0), (8, 1)];
        assert_eq!(
            newest_by_word(found.clone(), 2, 4),
            vec![vec![9, 7, 5], vec![9, 8]]
        );
        assert_eq!(newest_by_word(found.clone(), 2, 1), vec![vec![9], vec![9]]);
        assert_eq!(
            newest_by_word(found, 2, 100),
            vec![vec![9, 7, 5, 3], vec![9, 8, 2]]
        );
        assert_eq!(newest_by_word(vec![], 2, 4), vec![Vec::<i64>::new(); 2]);
    }

    #[test]
    fn ranges_widen_by_the_density_found_until_they_hold_every_row() {
        let ranges = |want| Ranges {
            top: 1_000_000,
            span: 2_048,
            want,
        };
        let mut r = ranges(20);
        assert_eq!(r.above(), 1_000_000 - 2_048);
        // Nothing found counts as one: sized for 80 at that density, 80-fold.
        assert!(r.widen(0));
        assert_eq!(r.span, 2_048 * 80);
        // 10 of 20 found: 8-fold; 50: 2-fold, the least.
        let mut r = ranges(20);
        assert!(r.widen(10));
        assert_eq!(r.span, 2_048 * 8);
        assert!(r.widen(50));
        assert_eq!(r.span, 2_048 * 16);
        // 500 wanted and none found: the most growth, past the oldest row: every row, no
        // condition, and no wider range.
        let mut r = ranges(500);
        assert!(r.widen(0));
        assert_eq!(r.span, 2_048 * GROWTH);
        assert_eq!(r.above(), 0);
        let mut sql = Sql::default();
        assert_eq!(r.condition(&mut sql), "");
        assert!(!r.widen(0));
        let mut r = ranges(500);
        assert!(r.widen(1_500));
        assert_eq!(r.span, 4_096);
        assert_eq!(r.condition(&mut sql), " AND e.pos > $1");
        assert_eq!(sql.parts().1, 1);
    }

    #[test]
    fn query_words_and_filter_values_are_bound_never_written_into_the_statement() {
        let hostile_words = ["x') OR true --", "a & !b", "c:*", "'", "$1"];
        let plain_words = ["one", "two", "three", "four", "five"];
        let only = |ns: &str| Scope::only([ns.to_string()]);
        let hostile = statement(&hostile_words, only("ns'); DROP TABLE x; --"), "t'--");
        let plain = statement(&plain_words, only("ns"), "t");
        // The text is ours alone: the same whatever the values.
        assert_eq!(hostile, plain);
        // One lookup in `entries_scoped` (namespaces, words, tags), then the filter again
        // (scope, since, until, one tag).
        let lookup = "e.scoped @@ memory.scoped_query($1::text[], $2::text[], true, $3::text[])";
        assert_eq!(hostile.0.matches(lookup).count(), 1, "{}", hostile.0);
        assert_eq!(hostile.1, 7);

        let many = |extra: &str| {
            let names = 0..=crate::store::scope::MAX_NARROW_NAMESPACES;
            Scope::only(names.map(|i| format!("n{i}{extra}")))
        };
        let hostile = statement(&hostile_words, many("'--"), "t'--");
        let plain = statement(&plain_words, many(""), "t");
        assert_eq!(hostile, plain);
        // A wide scope the same way; "*" without the scope's own check.
        assert_eq!(hostile.0.matches(lookup).count(), 1, "{}", hostile.0);
        assert_eq!(hostile.1, 7);
        assert_eq!(statement(&plain_words, Scope::All, "t").1, 6);
    }
}
