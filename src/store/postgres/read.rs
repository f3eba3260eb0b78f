//! Search and list on `memory.entries`: the caller's scope, times and tags stand in the same
//! statement as the text match and the ordering, so the rows PostgreSQL hands over, the search
//! window and the word weights depend only on rows inside the filter. Query words reach the
//! server only as bound parameters, parsed there by the `memory.words` configuration
//! ([`postings::parse`]); their lexemes are bound again, so whatever a word holds (`&`, `|`,
//! `!`, `:*`, quotes, SQL) is text to look for, never an operator or statement text.
//! Snippets are cut above the backend, from the verified content ([`crate::store::snippet`]).
//!
//! What a search costs depends on the scope too. Every search is looked up in
//! `memory.postings`, whose lexemes carry their namespace ([`super::postings`]), by its scope's
//! namespaces, or for a `"*"` scope those of every namespace the store holds
//! ([`scoped::lookup_namespaces`]): the postings read are the scope's alone, for words and tags
//! alike, however many matches other namespaces hold, and they are read newest first, so a
//! lookup stops at the matches it wants. Rows found are read by primary key and checked against
//! the whole filter again ([`push_filter`]).

use std::collections::{HashMap, HashSet};

use tokio_postgres::Client;

use super::fail::Failure;
use super::postings::{self, Wanted};
use super::rows::{COLUMN_COUNT, COLUMNS, Sql, push_filter, read_row};
use super::scoped::lookup_namespaces;
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
        // Tags inside a narrow scope are looked up per namespace in `memory.postings` too, so
        // a rare tag reads its own rows, not the namespace's.
        Scope::Only(namespaces) => {
            let ns = sql.bind(namespaces.clone());
            let mut extra = " AND e.namespace = s.ns".to_string();
            if filter.scope.narrow().is_some() && !filter.tags.is_empty() {
                let tags = Wanted::every(&[], filter);
                // `upto` read by the statement itself: one snapshot, no round trip more.
                let upto = "(SELECT upto FROM memory.posted)";
                let tagged =
                    postings::newest_in(&mut sql, "s.ns", &tags, &limit, upto, Some(&below))?;
                extra.push_str(&format!(" AND e.pos = ANY(ARRAY({tagged}))"));
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

/// Up to `limit` matches inside `filter` holding every word, newest first: their positions
/// from `memory.postings` ([`postings::newest`]), then their rows by primary key.
pub(super) async fn all_words(
    client: &impl Run,
    query: &Query,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<Match>, Failure> {
    if filter.scope.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let (words, upto) = tokio::try_join!(
        postings::parse(client, query.words()),
        postings::posted(client)
    )?;
    // A word without lexemes drops out; when no word has any, nothing matches.
    if words.iter().all(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let namespaces = lookup_namespaces(client, &filter.scope).await?;
    if namespaces.is_empty() {
        // No namespace of the scope holds an active row: nothing to look up.
        return Ok(Vec::new());
    }
    let mut sql = Sql::default();
    let limit = sql.bind(limit as i64);
    let upto = sql.bind(upto);
    let wanted = Wanted::every(&words, filter);
    let positions = postings::newest(&mut sql, &namespaces, &wanted, &limit, &upto, None)?;
    sql.push(&format!(
        "SELECT {COLUMNS} FROM memory.entries e WHERE e.pos = ANY(ARRAY({positions}))"
    ));
    push_filter(&mut sql, filter, true)?;
    sql.push(" ORDER BY e.pos DESC");
    read_matches(client, &sql).await
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
    let (lexemes, upto) =
        tokio::try_join!(postings::parse(client, words), postings::posted(client))?;
    if lexemes.iter().all(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let namespaces = lookup_namespaces(client, &filter.scope).await?;
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let size = SEARCH_WINDOW.max(need);
    let by_word = window(client, &namespaces, &lexemes, filter, (size, upto)).await?;
    let mut ranked = rank::by_word_weight(&by_word);
    ranked.retain(|pos| !skip.contains(pos));
    // Rows are read in slices of what is still needed: one removed since the window was read
    // makes room for the next best, and no row is read that is not returned.
    let mut out = Vec::new();
    let mut rest = &ranked[..];
    while out.len() < need && !rest.is_empty() {
        let (take, left) = rest.split_at((need - out.len()).min(rest.len()));
        out.extend(rows_at(client, take, filter).await?);
        rest = left;
    }
    Ok(out)
}

/// For each word (its lexemes, as [`postings::parse`] gave them), the positions of the newest
/// `size` rows inside `filter` holding some word that hold this one, with the postings going up
/// to `upto` ([`postings::posted`]).
///
/// One statement of one lookup per word — the newest `size` rows inside `filter` holding that
/// word ([`postings::newest`]) — merged here. A row among the newest `size` holding some word
/// is among the newest `size` holding each word it holds (the rows newer than it holding that
/// word hold some word too, and there are fewer than `size` of them), so the merge's newest
/// `size` positions are the window, and which words each holds is which lookups returned it.
/// A word of no lexemes holds nothing.
async fn window(
    client: &impl Run,
    namespaces: &[String],
    words: &[Vec<String>],
    filter: &Filter,
    (size, upto): (usize, i64),
) -> Result<Vec<Vec<i64>>, Failure> {
    let mut sql = Sql::default();
    let limit = sql.bind(size as i64);
    let upto = sql.bind(upto);
    let mut first = true;
    for (i, word) in words.iter().enumerate() {
        if word.is_empty() {
            continue;
        }
        if !std::mem::take(&mut first) {
            sql.push(" UNION ALL ");
        }
        let wanted = Wanted::every(std::slice::from_ref(word), filter);
        let positions = postings::newest(&mut sql, namespaces, &wanted, &limit, &upto, None)?;
        sql.push(&format!("SELECT {i}::int, w.pos FROM ({positions}) w"));
    }
    let rows = sql.query(client).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let word: i32 = row.try_get(0)?;
        let pos: i64 = row.try_get(1)?;
        found.push((pos, word));
    }
    Ok(newest_by_word(found, words.len(), size))
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

/// The rows at `positions` still inside the filter, in the order of `positions`. Which words
/// each holds is known from the postings the window read in the same snapshot; the rows are
/// read by primary key and the whole filter is checked on them again ([`push_filter`]), so a
/// row outside the scope is never returned whatever the postings say.
async fn rows_at(
    client: &impl Run,
    positions: &[i64],
    filter: &Filter,
) -> Result<Vec<Match>, Failure> {
    let mut sql = Sql::default();
    let wanted = sql.bind(positions.to_vec());
    sql.push(&format!(
        "SELECT {COLUMNS} FROM memory.entries e WHERE e.pos = ANY({wanted})"
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
}
