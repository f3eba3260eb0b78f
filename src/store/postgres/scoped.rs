//! What a search knows of `entries.scoped` (migration 2, [`super::schema`]): every row's lexemes
//! prefixed by its namespace's token, so a word's postings there are its postings inside one
//! namespace (issue 13). Lookups read them from `memory.postings` ([`super::postings`]); a row
//! found by position is checked against a tsquery of its scope's lexemes, made by
//! `memory.scoped_query` on the server from bound values only (the namespaces, the query words,
//! the tags): each word is parsed by the `memory.words` configuration (migration 3), as
//! `plainto_tsquery('memory.words', word)` would parse it, and its lexemes, prefixed, are
//! quoted into the tsquery by that function, so no value becomes statement text or tsquery
//! syntax. A word's lexemes are ANDed, as `plainto_tsquery` ANDs them.

use super::fail::Failure;
use super::rows::Sql;
use crate::error::{Error, Result};
use crate::pgconn::sql::Sql as Run;
use crate::store::scope::Scope;

/// The namespaces a search looks its words up in: those of the scope holding active rows, or
/// for `"*"` every namespace the store holds, read from `entries_scope` one namespace at a time
/// (an index probe each, the rows inside never read). A namespace without rows is left out, so
/// a lookup's cost follows the namespaces that hold something.
pub(super) async fn lookup_namespaces(
    client: &impl Run,
    scope: &Scope,
) -> std::result::Result<Vec<String>, Failure> {
    let rows = match scope {
        // One namespace is looked up as it is: were it empty, its lexemes have no postings,
        // and the statement this saves is a round trip on every search of one namespace.
        Scope::Only(namespaces) if namespaces.len() == 1 => return Ok(namespaces.clone()),
        Scope::Only(namespaces) => {
            client
                .query(
                    "SELECT n FROM unnest($1::text[]) AS n WHERE EXISTS ( \
                       SELECT FROM memory.entries e WHERE e.namespace = n AND e.status = 'active')",
                    &[namespaces],
                )
                .await?
        }
        Scope::All => {
            client
                .query(
                    "WITH RECURSIVE ns(name) AS ( \
                       (SELECT namespace FROM memory.entries ORDER BY namespace LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT e.namespace FROM memory.entries e \
                               WHERE e.namespace > ns.name ORDER BY e.namespace LIMIT 1) \
                       FROM ns WHERE ns.name IS NOT NULL) \
                     SELECT name FROM ns WHERE name IS NOT NULL",
                    &[],
                )
                .await?
        }
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(row.try_get(0)?);
    }
    Ok(out)
}

/// `namespaces` bound as a `text[]` expression.
pub(super) fn bind_namespaces(sql: &mut Sql, namespaces: &[String]) -> String {
    format!("{}::text[]", sql.bind(namespaces.to_vec()))
}

/// The condition on `e` that a lookup adds: rows of `namespaces` (an SQL `text[]` expression
/// of ours, e.g. a bound array or `ARRAY[s.ns]`) holding every word of `words` (`every`) or
/// some, carrying every tag of `tags`. No words: the tags alone (there must be some).
pub(super) fn condition(
    sql: &mut Sql,
    namespaces: &str,
    words: &[String],
    every: bool,
    tags: &[String],
) -> Result<String> {
    let words = sql.bind(words.to_vec());
    let tags = sql.bind(json_escaped(tags)?);
    Ok(format!(
        "e.scoped @@ memory.scoped_query({namespaces}, {words}::text[], {every}, {tags}::text[])"
    ))
}

/// Each tag as the sealed JSON array spells it (serde_json wrote the column), quotes dropped:
/// what `memory.scoped_words` reads from the column, so a tag's lexeme is
/// `<token>zt<escaped tag>`.
pub(super) fn json_escaped(tags: &[String]) -> Result<Vec<String>> {
    tags.iter()
        .map(|t| {
            let quoted = serde_json::to_string(t).map_err(|e| Error::Internal(e.to_string()))?;
            quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .map(str::to_string)
                .ok_or_else(|| Error::Internal("a tag did not encode as a JSON string".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_bound() {
        let mut sql = Sql::default();
        let ns = sql.bind(vec!["a'); --".to_string()]);
        let words = ["x' OR true".to_string(), "a & !b:*".to_string()];
        let cond = condition(&mut sql, &ns, &words, true, &["t\"q".into()]).unwrap();
        assert_eq!(
            cond,
            "e.scoped @@ memory.scoped_query($1, $2::text[], true, $3::text[])"
        );
        assert_eq!(sql.parts().1, 3);
        assert_eq!(
            json_escaped(&["a:b".into(), "t\"q".into()]).unwrap(),
            ["a:b", "t\\\"q"]
        );
    }
}
