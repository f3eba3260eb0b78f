//! Opening "the store and its audit log" for the operator's commands, on either engine: the
//! choice between the data dir's files and a PostgreSQL database is made here, once, from
//! `--store`; the commands only see a [`Store`] and a [`Sink`]. The keyring always comes from
//! the data dir (or `--keyring-file`, or systemd's credential), whichever engine holds the rows.

use crate::audit::AuditLog;
use crate::audit::pg_log::PgLog;
use crate::audit::sink::Sink;
use crate::config::DataDir;
use crate::keys::{KeySet, Keyring};
use crate::store::postgres::{DatabaseSettings, Postgres};
use crate::store::{Store, StoreOptions};

use super::serve::{StoreArgs, StoreKind};

/// Where an operator's command finds the rows and the audit events.
pub(crate) enum Engine {
    /// memory.db and audit.db in the data dir.
    Sqlite,
    /// One PostgreSQL database holding both (`memory.*` and `audit.events`).
    Postgres(Box<DatabaseSettings>),
}

impl Engine {
    /// The engine `--store` names; for PostgreSQL its settings are read now (a missing or
    /// unsafe database file stops the command before anything is opened).
    pub(crate) fn of(args: &StoreArgs) -> anyhow::Result<Self> {
        Ok(match args.kind {
            StoreKind::Sqlite => Self::Sqlite,
            StoreKind::Postgres => {
                Self::Postgres(Box::new(args.insecure.load(&args.database_file()?)?))
            }
        })
    }

    /// The audit log, MAC'd with `keys`. Opened before the store: on SQLite audit.db refuses a
    /// vanished chain before memory.db is touched.
    pub(crate) fn audit(&self, dir: &DataDir, keys: KeySet) -> anyhow::Result<Sink> {
        Ok(match self {
            Self::Sqlite => Sink::File(AuditLog::open(&dir.audit_db(), keys)?),
            Self::Postgres(settings) => Sink::Postgres(PgLog::connect(settings, keys)?),
        })
    }

    /// The store, sealing with the keyring's entry keys.
    pub(crate) fn store(&self, dir: &DataDir, keyring: &Keyring) -> anyhow::Result<Store> {
        Ok(match self {
            Self::Sqlite => Store::open(
                &dir.memory_db(),
                keyring.entry.clone(),
                StoreOptions::default(),
            )?,
            Self::Postgres(settings) => Store::with_backend(
                Box::new(Postgres::connect(settings, keyring.audit.clone())?),
                keyring.entry.clone(),
            ),
        })
    }
}
