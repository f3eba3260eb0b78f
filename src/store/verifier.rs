//! The entry keys as a running store holds them — followed as the keyring rotates — and the one
//! check every row read passes before it becomes an [`Entry`]: visibility first, then the seal
//! and the ledger (see [`RawRow::verify`]).

use std::cell::{Cell, Ref, RefCell};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Visibility;
use super::model::Entry;
use super::rows::{Checked, RawRow, withheld_log};
use crate::error::{Error, Result};
use crate::keys::{self, KeySet};

/// The entry keys and the keyring file they follow.
#[derive(Debug)]
pub struct Verifier {
    keys: RefCell<KeySet>,
    /// The keyring file the keys came from, and the version read, when the store follows
    /// rotations while it runs (see [`Verifier::refresh_keys`]).
    source: RefCell<Option<(PathBuf, keys::FileStamp)>>,
    /// When a row's unknown key id last made us reread an unchanged keyring.
    forced_at: Cell<Option<Instant>>,
    /// Set when a reread the verification needed failed (see [`Verifier::take_failure`]).
    failed: Cell<bool>,
}

/// How often an unchanged keyring is reread for rows naming a key id it does not hold: a row
/// with a forged key id must not make every read reread the file.
const FORCED_REREAD_EVERY: Duration = Duration::from_secs(1);

impl Verifier {
    /// Verifies with `keys`, not following any keyring file.
    pub fn new(keys: KeySet) -> Self {
        Self {
            keys: RefCell::new(keys),
            source: RefCell::new(None),
            forced_at: Cell::new(None),
            failed: Cell::new(false),
        }
    }

    /// The keys rows are sealed and verified with.
    pub fn keys(&self) -> Ref<'_, KeySet> {
        self.keys.borrow()
    }

    /// A read row, verified. A row sealed with a key id the keys do not hold is checked again
    /// after a keyring reread, when the followed keyring changed: a session open across `keys
    /// rotate` + `reseal` meets rows sealed with a newer key, and they are fine.
    pub fn verified(&self, raw: Checked<RawRow>) -> Checked<Entry> {
        let raw = raw?;
        let id = raw.id.clone();
        if self.keys.borrow().get(&raw.key_id).is_none() && self.reread_for_unknown_key().is_err() {
            // The call cannot verify what it read: it fails (UNAVAILABLE), see take_failure.
            self.failed.set(true);
        }
        raw.verify(&self.keys.borrow()).ok_or(id)
    }

    /// Whether a reread the verification needed failed since the last call (and forgets it):
    /// the read is then UNAVAILABLE, not an integrity finding.
    pub fn take_failure(&self) -> Result<()> {
        if self.failed.replace(false) {
            return Err(keyring_unavailable("unreadable"));
        }
        Ok(())
    }

    /// A row named a key id the keys do not hold: reread the followed keyring if it changed,
    /// else (at most once a second) anyway — a rotation can rewrite the file within one tick
    /// of a coarse clock, keeping its inode and length.
    fn reread_for_unknown_key(&self) -> Result<()> {
        self.refresh_keys()?;
        let due = self
            .forced_at
            .get()
            .is_none_or(|at| at.elapsed() >= FORCED_REREAD_EVERY);
        if !due {
            return Ok(());
        }
        self.forced_at.set(Some(Instant::now()));
        let mut source = self.source.borrow_mut();
        let Some((path, stamp)) = source.as_mut() else {
            return Ok(());
        };
        let now = keys::FileStamp::of(path).map_err(|_| keyring_unavailable("vanished"))?;
        let fresh = keys::Keyring::load(path).map_err(|_| keyring_unavailable("unreadable"))?;
        let mut keys = self.keys.borrow_mut();
        let known = keys.ids();
        let new = fresh.entry.ids().iter().any(|id| !known.contains(id));
        tracing::info!(target: "memwarden::security", event = "keyring_reloaded", new_keys = new,
            "a row named a key id this session did not hold: keyring reread");
        *keys = fresh.entry;
        *stamp = now;
        Ok(())
    }

    /// One row by id, checked against `view` (for a write when `write`) and verified. A row
    /// outside the view is [`Error::NotFound`] (or FORBIDDEN for a read-only one on a write) —
    /// checked before the seal, so a foreign or out-of-window row, tampered or not, is just
    /// "not found"; a row that fails verification is [`Error::Integrity`].
    pub fn checked_row(
        &self,
        raw: Option<Checked<RawRow>>,
        id: &str,
        view: &Visibility,
        write: bool,
    ) -> Result<Entry> {
        let raw = raw.ok_or(Error::NotFound)?;
        if let Ok(row) = &raw {
            if write {
                view.check_write(&row.namespace, row.created_at)?;
            } else {
                view.check_read(&row.namespace, row.created_at)?;
            }
        }
        self.verified(raw).map_err(|_| {
            withheld_log(id);
            Error::Integrity
        })
    }

    /// Follows the keyring at `path` (the one the keys were read from): each
    /// [`Verifier::refresh_keys`] rereads it when it has changed.
    pub fn watch_keyring(&self, path: &Path) -> std::io::Result<()> {
        *self.source.borrow_mut() = Some((path.to_path_buf(), keys::FileStamp::of(path)?));
        Ok(())
    }

    /// Rereads a followed keyring that changed since it was read, so a long session never
    /// seals with a key the keyring no longer has as active, and can verify rows sealed with a
    /// newer key. A keyring that changed and cannot be read refuses the call (fail closed).
    pub fn refresh_keys(&self) -> Result<()> {
        let mut source = self.source.borrow_mut();
        let Some((path, stamp)) = source.as_mut() else {
            return Ok(());
        };
        let now = keys::FileStamp::of(path).map_err(|_| keyring_unavailable("vanished"))?;
        if now == *stamp {
            return Ok(());
        }
        let fresh = keys::Keyring::load(path).map_err(|_| keyring_unavailable("unreadable"))?;
        let mut keys = self.keys.borrow_mut();
        if fresh.entry.active().0 != keys.active().0 {
            tracing::info!(target: "memwarden::security", event = "keyring_reloaded",
                from = keys.active().0, to = fresh.entry.active().0,
                "the keyring changed: sealing with its active key");
        }
        *keys = fresh.entry;
        *stamp = now;
        Ok(())
    }
}

fn keyring_unavailable(what: &str) -> Error {
    Error::Unavailable(format!("keyring {what}"))
}
