//! A group of writes on the store's connection: one transaction that holds several sessions'
//! writes and their audit events, committed at once (see `server::group`). It holds the store's
//! write lock from its first write, and the audit chain's from its first event, until it ends.

use std::cell::{Cell, RefCell};

use tokio::runtime::Runtime;
use tokio_postgres::Client;

use super::fail::db;
use crate::audit::Head;
use crate::error::{Error, Result};

/// Commits only a transaction in good standing: in an aborted one, PostgreSQL would answer a
/// bare COMMIT by rolling back *without an error*. Here `SELECT 1` fails first and the COMMIT
/// in the same message is never run.
pub(super) const COMMIT: &str = "SELECT 1; COMMIT";

/// The state of the store connection's group: its transaction is open (holding the write lock
/// and, after its first write, the audit chain's), and whether it must be rolled back whole (a
/// write in it could not be undone alone, or the connection was lost).
///
/// Each write in the group runs in a savepoint of its own, sent in the same round trip as its
/// first statement and never released: savepoints nest, `ROLLBACK TO` undoes only the newest,
/// and the group's COMMIT ends them all.
#[derive(Debug, Default)]
pub(super) struct Group {
    pub(super) open: Cell<bool>,
    pub(super) broken: Cell<bool>,
    /// The chain's head once the group holds the chain's lock: the next event links to it
    /// without reading the tail again (nobody else can append while the lock is held).
    pub(super) head: RefCell<Option<Head>>,
    /// The newest row's `created_at` once known in the group (it holds the write lock, so only
    /// its own writes move it): `Some(None)` for an empty table.
    pub(super) newest: Cell<Option<Option<i64>>>,
}

impl Group {
    /// Commits the open group: every write staged in it, with their events, in one transaction.
    pub(super) fn commit(&self, rt: &Runtime, client: &Client) -> Result<()> {
        if !self.open.get() {
            return Ok(());
        }
        if self.broken.get() {
            self.roll_back(rt, client);
            return Err(Error::Unavailable(
                "a group of writes was lost and rolled back".into(),
            ));
        }
        self.end();
        rt.block_on(client.batch_execute(COMMIT)).map_err(|e| {
            // Not committed: end the transaction so the locks go now.
            let _ = rt.block_on(client.batch_execute("ROLLBACK"));
            db(e)
        })
    }

    /// Rolls the open group back: none of its writes, nor their events, is applied.
    pub(super) fn roll_back(&self, rt: &Runtime, client: &Client) {
        let was_open = self.open.get();
        self.end();
        if was_open && let Err(e) = rt.block_on(client.batch_execute("ROLLBACK")) {
            tracing::warn!(target: "memwarden::store", error = %super::fail::detail(&e),
                "rolling back a group of writes failed");
        }
    }

    pub(super) fn end(&self) {
        self.open.set(false);
        self.broken.set(false);
        self.head.replace(None);
        self.newest.set(None);
    }
}
