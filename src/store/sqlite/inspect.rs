//! Read-only looks at a memory.db file for `health` and `metrics`: integrity, schema, and row
//! counts. Opens the file itself (never through a running store) and never writes.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// memory.db read-only, also where the data dir is mounted read-only (the metrics unit): with no
/// -wal file the database file alone is complete, and `immutable` needs no -shm to be created.
fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    // SQLite opens lazily: the first statement is what fails on a read-only directory.
    let plain = Connection::open_with_flags(path, flags).and_then(|c| {
        c.query_row("PRAGMA user_version", [], |_| Ok(()))
            .map(|()| c)
    });
    match plain {
        Ok(conn) => Ok(conn),
        Err(e) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            if !path.is_file() || std::fs::symlink_metadata(&wal).is_ok() {
                return Err(e);
            }
            let uri = crate::sqlite_file::ro_uri(path, "&immutable=1");
            Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)
        }
    }
}

/// `PRAGMA quick_check` on the file: `Ok("ok")`, or what SQLite found.
pub fn quick_check(path: &Path) -> Result<String, String> {
    crate::sqlite_file::quick_check(path)
}

/// Whether the file holds only what the migrations create (a stray trigger could drop or
/// rewrite every insert).
pub fn schema_check(path: &Path) -> Result<(), String> {
    crate::sqlite_file::schema_check(path, |c| {
        super::migrations::check_schema(c).map_err(|e| e.to_string())
    })
}

/// Rows by their status column, in status order.
pub fn rows_by_status(path: &Path) -> Result<Vec<(String, i64)>, String> {
    let conn = open_ro(path).map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("SELECT status, count(*) FROM entries GROUP BY 1 ORDER BY 1")
        .map_err(|e| e.to_string())?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())
}
