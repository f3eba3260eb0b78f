//! The postings a search reads (migration 7): `memory.postings` holds one row per lexeme of
//! every active entry (`memory.scoped_words`: each lexeme carries its namespace's token,
//! migration 2, so a lexeme's postings are its postings inside one namespace), keyed by
//! `(lexeme, pos)`. A B-tree hands a lexeme's positions over in order, so the newest rows
//! holding every lexeme of a search are a merge of each lexeme's list newest first that stops
//! at the `LIMIT`th match, read from the index alone ([`newest`]).
//!
//! Why not GIN, which it replaces: GIN yields a lexeme's matches unordered, so PostgreSQL
//! intersected the lists whole and then visited every matching row to keep the newest 20. For
//! two common words at 1M entries (2,200-2,600 rows holding both) that was 7-8 ms of
//! intersection and 7-25 ms of heap, and search p95 stayed near 20 ms; merged newest first, the
//! same pairs read 300-500 postings of each list, under 0.5 ms. Space is the price: a posting
//! is a row (about 5.6 GB of table and index at 1M entries of 60 words, against 200 MB of GIN).
//!
//! The rows are kept by triggers on `memory.entries` in the writing transaction, for every
//! writer (stores, updates, deletes, purges, review, bulk loads, an owner's hand edits), for
//! the rows at or below `memory.posted.upto`; the rows above it are posted behind the writes
//! that stored them (migration 8, [`super::behind`]). An entry's postings exist exactly while
//! it is active and at or below `upto`. Query words are bound values: the server
//! parses them ([`parse`]) with the configuration the rows were parsed with, and the lexemes
//! come back to be bound again, one per join; none is ever statement text.

use std::collections::BTreeSet;

use super::behind::lexeme_array;
use super::fail::Failure;
use super::rows::Sql;
use super::scoped::json_escaped;
use crate::error::Result;
use crate::pgconn::sql::Sql as Run;
use crate::store::model::Filter;

/// Migration 7: `memory.postings`, filled from the active rows already there, its triggers, and
/// `entries_scoped` (the GIN index it replaces) dropped; `scoped` stays in the row for the
/// triggers and for checking a row found by position against a tsquery (`read.rs`).
pub(super) const POSTINGS: &str = r#"
CREATE TABLE memory.postings (
    lexeme text NOT NULL,
    pos    bigint NOT NULL,
    PRIMARY KEY (lexeme, pos)
);

INSERT INTO memory.postings (lexeme, pos)
    SELECT l, e.pos FROM memory.entries e, unnest(tsvector_to_array(e.scoped)) AS l
    WHERE e.status = 'active';

CREATE FUNCTION memory.post_entry() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') AND OLD.status = 'active' THEN
        DELETE FROM memory.postings
         WHERE lexeme = ANY(tsvector_to_array(OLD.scoped)) AND pos = OLD.pos;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'active' THEN
        INSERT INTO memory.postings (lexeme, pos)
            SELECT l, NEW.pos FROM unnest(tsvector_to_array(NEW.scoped)) AS l;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_postings_insert AFTER INSERT ON memory.entries
    FOR EACH ROW WHEN (NEW.status = 'active') EXECUTE FUNCTION memory.post_entry();
CREATE TRIGGER entries_postings_delete AFTER DELETE ON memory.entries
    FOR EACH ROW WHEN (OLD.status = 'active') EXECUTE FUNCTION memory.post_entry();
CREATE TRIGGER entries_postings_update AFTER UPDATE ON memory.entries
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
                       OR OLD.scoped IS DISTINCT FROM NEW.scoped)
    EXECUTE FUNCTION memory.post_entry();

DROP INDEX memory.entries_scoped;
"#;

/// Each query word's lexemes as the server parses them (`memory.words`, as the rows' were),
/// in word order; a word of no lexemes (punctuation alone) has none.
pub(super) async fn parse(
    client: &impl Run,
    words: &[String],
) -> std::result::Result<Vec<Vec<String>>, Failure> {
    let rows = client
        .query(
            "SELECT w.i::int, l FROM unnest($1::text[]) WITH ORDINALITY AS w(word, i), \
             unnest(tsvector_to_array(to_tsvector('memory.words', w.word))) AS l",
            &[&words],
        )
        .await?;
    let mut out = vec![Vec::new(); words.len()];
    for row in &rows {
        let i: i32 = row.try_get(0)?;
        let lexeme: String = row.try_get(1)?;
        if let Some(word) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
            word.push(lexeme);
        }
    }
    Ok(out)
}

/// How far the postings go (`memory.posted.upto`, [`super::behind`]), for a search to bind
/// into its lookups ([`newest`]); read in the search's snapshot, with [`parse`] (one round trip).
pub(super) async fn posted(client: &impl Run) -> std::result::Result<i64, Failure> {
    let row = client
        .query_one("SELECT upto FROM memory.posted", &[])
        .await?;
    Ok(row.try_get(0)?)
}

/// What a row must hold to be found: every lexeme (words' lexemes, unprefixed) and every tag of
/// the filter, inside its times.
pub(super) struct Wanted<'a> {
    /// The lexemes, each once.
    pub lexemes: BTreeSet<&'a str>,
    /// The filter whose tags and times the rows must have too.
    pub filter: &'a Filter,
}

impl<'a> Wanted<'a> {
    /// Every lexeme of `words` (each word's, as [`parse`] gave them) inside `filter`.
    pub(super) fn every(words: &'a [Vec<String>], filter: &'a Filter) -> Self {
        Self {
            lexemes: words.iter().flatten().map(String::as_str).collect(),
            filter,
        }
    }
}

/// A statement's text giving the positions of the newest `limit` (a placeholder) active rows
/// of the namespaces `namespaces` holding everything `wanted` names, newest first, below the
/// position `below` (a placeholder) if given, with the postings going up to `upto` (a
/// placeholder for what [`posted`] read in the same snapshot). There must be a lexeme or a tag.
///
/// One namespace is bound as a value, so each lexeme is a constant the plan is made for;
/// several are read one after another (a `LATERAL` join over them) and merged.
pub(super) fn newest(
    sql: &mut Sql,
    namespaces: &[String],
    wanted: &Wanted<'_>,
    limit: &str,
    upto: &str,
    below: Option<&str>,
) -> Result<String> {
    match namespaces {
        [one] => {
            let ns = format!("{}::text", sql.bind(one.clone()));
            newest_in(sql, &ns, wanted, limit, upto, below)
        }
        many => {
            let many = sql.bind(many.to_vec());
            let each = newest_in(sql, "s.ns", wanted, limit, upto, below)?;
            Ok(format!(
                "SELECT m.pos FROM unnest({many}::text[]) AS s(ns) CROSS JOIN LATERAL ({each}) m \
                 ORDER BY m.pos DESC LIMIT {limit}"
            ))
        }
    }
}

/// As [`newest`], in the one namespace `ns` (an SQL text expression of ours).
///
/// The first lexeme's postings, newest first, joined on position to each other's: PostgreSQL
/// merges the lists, each read backwards from `postings_pkey`, and stops at the `limit`th
/// match. The times, when the filter has them, are checked on the rows the merge yields.
/// Rows above `upto` have no postings yet ([`super::behind`]): they are read first, in the
/// namespace alone, and checked against every term; read in the snapshot `upto` was read in,
/// the two are exactly the rows holding every term. `upto` is a bound value, not a subquery, so
/// the planner sees how few rows lie above it and how many postings below: with a subquery it
/// assumed a third of each, and at 1M entries chose plans that made searches 3-4x slower.
pub(super) fn newest_in(
    sql: &mut Sql,
    ns: &str,
    wanted: &Wanted<'_>,
    limit: &str,
    upto: &str,
    below: Option<&str>,
) -> Result<String> {
    let token = format!("memory.scope_token({ns})");
    let mut terms: Vec<String> = wanted
        .lexemes
        .iter()
        .map(|l| {
            let l = sql.bind(l.to_string());
            format!("memory.scoped_lexeme({token}, {l}::text)")
        })
        .collect();
    for tag in json_escaped(&wanted.filter.tags)? {
        let t = sql.bind(tag);
        terms.push(format!("({token} || 'zt' || {t}::text)"));
    }
    let first = terms
        .first()
        .ok_or_else(|| crate::error::Error::Internal("a lookup of nothing".into()))?;
    let times = times(sql, wanted.filter);
    let below = below.map_or(String::new(), |b| format!(" AND {{}}.pos < {b}"));
    // The rows not yet posted (`super::behind`), checked against the lexemes one by one: the
    // scope's own, read backwards from `entries_scope`.
    let mut text = format!(
        "SELECT b.pos FROM ((SELECT t.pos FROM memory.entries t WHERE t.namespace = {ns} \
         AND t.status = 'active' AND t.pos > {upto} \
         AND {} @> ARRAY[{}]::text[]{times}{} \
         ORDER BY t.pos DESC LIMIT {limit}) UNION ALL (SELECT p0.pos FROM memory.postings p0",
        lexeme_array("t"),
        terms.join(", "),
        below.replace("{}", "t"),
    );
    for (i, term) in terms.iter().enumerate().skip(1) {
        text.push_str(&format!(
            " JOIN memory.postings p{i} ON p{i}.pos = p0.pos AND p{i}.lexeme = {term}"
        ));
    }
    if !times.is_empty() {
        text.push_str(&format!(" JOIN memory.entries t ON t.pos = p0.pos{times}"));
    }
    text.push_str(&format!(
        " WHERE p0.lexeme = {first} AND p0.pos <= {upto}{} \
         ORDER BY p0.pos DESC LIMIT {limit})) b ORDER BY b.pos DESC LIMIT {limit}",
        below.replace("{}", "p0"),
    ));
    Ok(text)
}

/// The filter's since and until as conditions on `t`, bound.
fn times(sql: &mut Sql, filter: &Filter) -> String {
    let mut out = String::new();
    if let Some(since) = filter.since {
        out.push_str(&format!(" AND t.created_at >= {}", sql.bind(since)));
    }
    if let Some(until) = filter.until {
        out.push_str(&format!(" AND t.created_at < {}", sql.bind(until)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::scope::Scope;

    fn text(namespaces: &[&str], lexemes: &[&str], tags: &[&str], times: bool) -> (String, usize) {
        let filter = Filter {
            scope: Scope::All,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            since: times.then_some(1),
            until: times.then_some(2),
        };
        let wanted = Wanted {
            lexemes: lexemes.iter().copied().collect(),
            filter: &filter,
        };
        let namespaces: Vec<String> = namespaces.iter().map(|n| n.to_string()).collect();
        let mut sql = Sql::default();
        let limit = sql.bind(20_i64);
        let upto = sql.bind(7_i64);
        let found = newest(&mut sql, &namespaces, &wanted, &limit, &upto, None).unwrap();
        sql.push(&found);
        let (text, args) = sql.parts();
        (text.to_string(), args)
    }

    #[test]
    fn every_value_is_bound_and_each_lexeme_and_tag_is_one_join() {
        let hostile = text(&["a'); --"], &["x' or true", "a & !b:*"], &["t\"'"], true);
        let plain = text(&["a"], &["one", "two"], &["t"], true);
        assert_eq!(hostile, plain);
        let (text_one, args) = plain;
        // limit, upto, namespace, two lexemes, a tag, since, until.
        assert_eq!(args, 8);
        assert_eq!(text_one.matches("JOIN memory.postings").count(), 2);
        assert!(text_one.contains("JOIN memory.entries t"), "{text_one}");
        assert!(!text_one.contains("LATERAL"), "{text_one}");

        // Several namespaces: one array, the same joins inside a LATERAL join; no times, no
        // row join (the rows not yet posted are read from the namespace's own rows).
        let hostile = text(&["a", "b'--"], &["x"], &[], false);
        let plain = text(&["a", "b"], &["x"], &[], false);
        assert_eq!(hostile, plain);
        assert_eq!(plain.1, 4);
        assert!(plain.0.contains("LATERAL"), "{}", plain.0);
        assert!(!plain.0.contains("JOIN memory.entries"), "{}", plain.0);
        assert!(plain.0.contains("t.namespace = s.ns"), "{}", plain.0);
    }

    #[test]
    fn a_lookup_of_nothing_is_refused() {
        let filter = Filter::default();
        let wanted = Wanted::every(&[], &filter);
        let mut sql = Sql::default();
        assert!(newest(&mut sql, &["a".into()], &wanted, "$1", "$2", None).is_err());
    }
}
