//! Statements on a connection, prepared once. tokio-postgres prepares a statement given as text
//! on every call (a Parse round trip before the Bind/Execute one), so a write of five
//! statements pays ten round trips. A [`Cached`] connection keeps each text's prepared
//! [`Statement`] in its [`Statements`] and pays one.
//!
//! The texts are memwarden's own (agent input is always a bound parameter), so the cache holds
//! a bounded set of shapes; it is emptied when full all the same, and must be emptied when its
//! connection is replaced ([`Statements::clear`]): a statement lives on the connection that
//! prepared it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, GenericClient, Row, Statement, Transaction};

/// Statements kept at most; past this the cache starts afresh.
const MAX_STATEMENTS: usize = 256;

/// The prepared statements of one connection, by text.
#[derive(Debug, Default)]
pub struct Statements(Mutex<HashMap<String, Statement>>);

impl Statements {
    /// Forgets every statement (its connection was replaced).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    async fn get(&self, client: &Client, sql: &str) -> Result<Statement, Error> {
        if let Some(s) = self.0.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return Ok(s.clone());
        }
        let statement = client.prepare(sql).await?;
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_STATEMENTS {
            map.clear();
        }
        map.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A connection whose statements are prepared once, in `statements`.
#[derive(Debug, Clone, Copy)]
pub struct Cached<'a> {
    /// The connection.
    pub client: &'a Client,
    /// Its prepared statements.
    pub statements: &'a Statements,
}

impl Cached<'_> {
    /// `sql`'s statement, prepared on first use.
    ///
    /// # Errors
    /// The server refused to prepare it, or the connection is gone.
    pub async fn prepare(&self, sql: &str) -> Result<Statement, Error> {
        self.statements.get(self.client, sql).await
    }
}

/// The statements memwarden runs, on a plain connection, a transaction or a [`Cached`] one.
#[allow(async_fn_in_trait)]
pub trait Sql {
    /// Runs `sql`, returning the number of rows changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error>;
    /// Runs `sql`, returning every row.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error>;
    /// Runs `sql`, returning its one row, if any (more is an error).
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error>;
    /// Runs `sql`, returning its one row (none or more is an error).
    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error>;
}

impl Sql for Cached<'_> {
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let s = self.statements.get(self.client, sql).await?;
        self.client.execute(&s, params).await
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let s = self.statements.get(self.client, sql).await?;
        self.client.query(&s, params).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let s = self.statements.get(self.client, sql).await?;
        self.client.query_opt(&s, params).await
    }

    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let s = self.statements.get(self.client, sql).await?;
        self.client.query_one(&s, params).await
    }
}

/// Plain connections and transactions prepare on every call.
macro_rules! uncached {
    ($($t:ty),*) => {$(
        impl Sql for $t {
            async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
                GenericClient::execute(self, sql, params).await
            }

            async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
                GenericClient::query(self, sql, params).await
            }

            async fn query_opt(
                &self,
                sql: &str,
                params: &[&(dyn ToSql + Sync)],
            ) -> Result<Option<Row>, Error> {
                GenericClient::query_opt(self, sql, params).await
            }

            async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
                GenericClient::query_one(self, sql, params).await
            }
        }
    )*};
}

uncached!(Client, Transaction<'_>);
