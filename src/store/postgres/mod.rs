//! The PostgreSQL side of the store (issue 14), for teams whose agents run on many hosts: the
//! database file that says how to reach the server ([`settings`]) and the schema and roles that
//! `memwarden db init` creates ([`schema`]). The row formats, seals and ledger rules are the ones
//! above every backend; this module holds only what is PostgreSQL's.

pub mod schema;
pub mod settings;

pub use settings::{DatabaseSettings, SettingsError};
