//! Any query an agent sends becomes FTS5 expressions (all words, any word) that SQLite accepts: FTS syntax and SQL
//! in a query are only ever words.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use rusqlite::Connection;

fn db() -> &'static Mutex<Connection> {
    static DB: OnceLock<Mutex<Connection>> = OnceLock::new();
    DB.get_or_init(|| {
        let c = Connection::open_in_memory().expect("sqlite");
        c.execute_batch(
            "CREATE VIRTUAL TABLE t USING fts5(content, tags, tokenize = 'unicode61 remove_diacritics 2');
             INSERT INTO t VALUES ('the deploy key lives in vault', '[\"ops\"]');
             INSERT INTO t VALUES ('NEAR(a b) col:x -y \"quoted\" 東京 🦀', '[]');",
        )
        .expect("schema");
        Mutex::new(c)
    })
}

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if query.chars().count() > 512 {
        return;
    }
    if let Some(q) = memwarden::store::Query::parse(&query) {
        let q = memwarden::store::sqlite::fts::expressions(&q);
        let c = db().lock().expect("lock");
        for expr in std::iter::once(&q.all)
            .chain(q.any.as_ref())
            .chain(&q.words)
        {
            let r: rusqlite::Result<i64> =
                c.query_row("SELECT count(*) FROM t WHERE t MATCH ?1", [expr], |r| {
                    r.get(0)
                });
            assert!(r.is_ok(), "query {query:?} -> {expr:?} -> {r:?}");
        }
    } else {
        assert!(
            query.chars().all(|c| c.is_whitespace() || c.is_control()),
            "words dropped from {query:?}"
        );
    }
});
