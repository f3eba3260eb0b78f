//! The schema objects a database may hold: exactly what its migrations create, nothing else.
//!
//! The threat: a trigger, view or index added to a database file (by whoever can write it, or
//! through a doctored backup) runs inside every write we make. `BEFORE INSERT ON events … SELECT
//! RAISE(IGNORE)` silently drops audit events while the chain still verifies. So every open
//! compares `sqlite_schema` (type, name, table, SQL text) with the set the same migrations leave
//! in a fresh in-memory database — derived, never listed by hand, so a new migration's tables
//! (FTS5 shadow tables included) pass without anyone updating a list. This module never writes.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rusqlite::Connection;

/// One row of `sqlite_schema`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Object {
    pub kind: String,
    pub name: String,
    pub table: String,
    pub sql: Option<String>,
}

/// Every object in the main schema of `conn`.
pub fn objects(conn: &Connection) -> rusqlite::Result<BTreeSet<Object>> {
    let mut stmt = conn.prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_schema")?;
    let rows = stmt.query_map([], |r| {
        Ok(Object {
            kind: r.get(0)?,
            name: r.get(1)?,
            table: r.get(2)?,
            sql: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// The statistics tables ANALYZE creates (`sqlite_stat1`, and `sqlite_stat4` where compiled
/// in), exactly as this SQLite writes them: learnt from an in-memory database, never listed by
/// hand, so a look-alike with other columns is still refused.
fn statistics_tables() -> rusqlite::Result<BTreeSet<Object>> {
    let conn = Connection::open_in_memory()?;
    conn.execute_batch(
        "CREATE TABLE t(a); CREATE INDEX t_a ON t(a); INSERT INTO t VALUES (1), (2); ANALYZE;",
    )?;
    let mut all = objects(&conn)?;
    all.retain(|o| o.kind == "table" && o.name.starts_with("sqlite_stat"));
    Ok(all)
}

/// What `migrate` leaves in a fresh in-memory database.
pub fn expected<E>(
    migrate: impl FnOnce(&mut Connection) -> Result<(), E>,
) -> Result<BTreeSet<Object>, E>
where
    E: From<rusqlite::Error>,
{
    let mut conn = Connection::open_in_memory()?;
    migrate(&mut conn)?;
    Ok(objects(&conn)?)
}

/// `None` when `actual` is exactly `expected`; otherwise what differs, by type and name (names
/// are quoted and escaped: they come from the file, not from us).
pub fn differences(actual: &BTreeSet<Object>, expected: &BTreeSet<Object>) -> Option<String> {
    let mut out = String::new();
    for o in actual.difference(expected) {
        let changed = expected
            .iter()
            .any(|e| e.kind == o.kind && e.name == o.name);
        let what = if changed {
            "changed"
        } else {
            "not created by memwarden"
        };
        let _ = write!(
            out,
            "{}{} {:?} on {:?} ({what})",
            if out.is_empty() { "" } else { "; " },
            o.kind,
            o.name,
            o.table
        );
    }
    for o in expected.difference(actual) {
        if actual.iter().any(|a| a.kind == o.kind && a.name == o.name) {
            continue; // already reported as changed
        }
        let _ = write!(
            out,
            "{}{} {:?} is missing",
            if out.is_empty() { "" } else { "; " },
            o.kind,
            o.name
        );
    }
    (!out.is_empty()).then_some(out)
}

/// Checks `conn` against what `migrate` creates; `Err` names each stray, changed or missing
/// object.
pub fn check<E>(
    conn: &Connection,
    migrate: impl FnOnce(&mut Connection) -> Result<(), E>,
) -> Result<Result<(), String>, E>
where
    E: From<rusqlite::Error>,
{
    let want = expected(migrate)?;
    let mut got = objects(conn)?;
    // `PRAGMA optimize` (run by `memwarden maintain`) may create SQLite's own statistics tables;
    // they are allowed exactly as SQLite itself creates them.
    let stats = statistics_tables()?;
    got.retain(|o| !stats.contains(o));
    Ok(match differences(&got, &want) {
        None => Ok(()),
        Some(d) => Err(format!(
            "schema objects that memwarden's migrations did not create: {d}; refusing to use it \
             (a trigger or view here could drop or alter writes; restore a verified backup)"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrate(conn: &mut Connection) -> Result<(), rusqlite::Error> {
        conn.execute_batch(
            "CREATE TABLE t (a TEXT); CREATE INDEX t_a ON t (a);
             CREATE VIRTUAL TABLE f USING fts5 (a, content = 't');",
        )
    }

    #[test]
    fn a_migrated_database_passes_and_any_addition_or_change_is_named() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(check(&conn, migrate).unwrap(), Ok(()));

        conn.execute_batch(
            "CREATE TRIGGER evil BEFORE INSERT ON t BEGIN SELECT RAISE(IGNORE); END;",
        )
        .unwrap();
        let err = check(&conn, migrate).unwrap().unwrap_err();
        assert!(err.contains("trigger \"evil\" on \"t\""), "{err}");
        conn.execute_batch("DROP TRIGGER evil; DROP INDEX t_a; CREATE INDEX t_a ON t (a DESC);")
            .unwrap();
        let err = check(&conn, migrate).unwrap().unwrap_err();
        assert!(err.contains("index \"t_a\" on \"t\" (changed)"), "{err}");
        conn.execute_batch("DROP INDEX t_a; CREATE VIEW v AS SELECT 1;")
            .unwrap();
        let err = check(&conn, migrate).unwrap().unwrap_err();
        assert!(
            err.contains("view \"v\"") && err.contains("\"t_a\" is missing"),
            "{err}"
        );
    }
}
