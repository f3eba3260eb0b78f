//! A write's audit event: appended inside its own transaction, or, for a grouped write, sent
//! with what of the write is still to be sent, without waiting for the answers
//! ([`Group::send`](super::super::group::Group::send)).

use super::super::fail::{audit_error, db};
use super::super::group::{Held, locked_head};
use super::{INSERT, PgTx, SAVEPOINT};
use crate::audit::NewEvent;
use crate::audit::postgres::{PgAuditError, append_after, link_for_insert};
use crate::error::{Error, Result};

impl PgTx<'_> {
    /// Sends a grouped write's statements still to be sent (its savepoint, its row's insert)
    /// and its event, linked after the group's head, without waiting for their answers
    /// ([`Group::send`]).
    pub(super) fn send_staged(&mut self, event: &NewEvent<'_>) -> Result<()> {
        let Some((group, client)) = self.group.zip(self.shared) else {
            return Err(Error::Internal("this write is not grouped".into()));
        };
        let known = group.head.borrow().clone();
        let prev = match known {
            Some(prev) => prev,
            // Not read when the group opened (it always is): the chain's lock and head now.
            None => self.run(async |sql| locked_head(sql).await)?,
        };
        let (head, params) = link_for_insert(self.audit_keys, event, crate::clock::now_ms(), &prev)
            .map_err(audit_error)?;
        let sql = self.sql;
        let (savepoint, row, audit) = self
            .rt
            .block_on(async {
                Ok::<_, tokio_postgres::Error>((
                    sql.prepare(&format!("SAVEPOINT {SAVEPOINT}")).await?,
                    sql.prepare(INSERT).await?,
                    sql.prepare(crate::audit::postgres::INSERT).await?,
                ))
            })
            .map_err(db)?;
        let mut held = Vec::with_capacity(3);
        if std::mem::take(&mut self.savepoint_pending) {
            held.push(Held {
                statement: savepoint,
                params: Vec::new(),
                what: "savepoint",
                rows: 0,
            });
        }
        if let Some(deferred) = self.deferred.take() {
            held.push(Held {
                statement: row,
                params: deferred.params,
                what: "insert",
                rows: 1,
            });
        }
        held.push(Held {
            statement: audit,
            params,
            what: "audit event insert",
            rows: 1,
        });
        group.send(self.rt, client, held);
        group.head.replace(Some(head));
        Ok(())
    }

    /// Appends the call's event inside the open transaction: taking the chain's lock and
    /// reading its head, unless the group already holds both.
    pub(super) fn append(&mut self, event: &NewEvent<'_>) -> Result<()> {
        let (keys, now) = (self.audit_keys, crate::clock::now_ms());
        let held = self.group.and_then(|g| g.head.borrow().clone());
        let appended = self.run(async |sql| {
            Ok(match &held {
                Some(prev) => append_after(sql, keys, event, now, prev).await,
                None => match locked_head(sql).await {
                    Ok(prev) => append_after(sql, keys, event, now, &prev).await,
                    Err(e) => Err(PgAuditError::Database(e)),
                },
            })
        })?;
        let head = appended.map_err(audit_error)?;
        if let Some(group) = self.group {
            group.head.replace(Some(head));
        }
        Ok(())
    }
}
