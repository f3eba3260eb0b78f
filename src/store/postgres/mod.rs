//! The PostgreSQL side of the store (issue 14), for teams whose agents run on many hosts: the
//! database file that says how to reach the server ([`crate::pgconn`]), the schema and roles that
//! `memwarden db init` creates ([`schema`]), and the backend that stores and finds rows there
//! ([`backend`]: SQL, text search, the ledger's table, write transactions that commit with
//! their audit event). The row formats, seals and ledger rules are the ones above every backend;
//! this module holds only what is PostgreSQL's. Only parameterised statements touch values.

pub mod backend;
mod behind;
mod connect;
mod fail;
mod group;
mod ledger;
mod postings;
mod quota;
mod read;
mod rows;
pub mod schema;
mod scoped;
mod sessions;
mod snapshot;
mod transfer;
mod upkeep;
mod write;

/// The database file and connecting live in [`crate::pgconn`] (the audit log connects too).
pub use crate::pgconn::{Connection, DatabaseSettings, Endpoint, RemotePlaintext, SettingsError};
pub use backend::Postgres;
pub use fail::RETRY_AFTER_MS;
