//! What a search knows of a row's lexemes (`memory.scoped_words`, migration 2,
//! [`super::schema`]): its words' lexemes prefixed by its namespace's token, so a word's
//! postings there are its postings inside one namespace (issue 13). Lookups read them from
//! `memory.postings` ([`super::postings`]), posted behind the stores ([`super::behind`]); this
//! module finds the namespaces a lookup reads and spells tags as the lexemes spell them.

use super::fail::Failure;
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
    fn tags_are_spelled_as_the_sealed_array_spells_them() {
        assert_eq!(
            json_escaped(&["a:b".into(), "t\"q".into()]).unwrap(),
            ["a:b", "t\\\"q"]
        );
    }
}
