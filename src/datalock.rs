//! The data dir's lock: `memwarden.lock`, an advisory `flock`. Every process that opens the
//! databases to write (a session, review, purge, keys, backup) holds it shared for its whole
//! life; `restore` and `audit reset`, which replace a database file, hold it exclusively.
//!
//! Why not SQLite's own locks: in WAL mode an idle connection holds no lock that a writer's
//! `BEGIN EXCLUSIVE` would meet, and restore replaces the files by rename, so a lock on the old
//! inode says nothing about the new one. A separate file that restore never replaces, locked by
//! every server for as long as it runs, is what "no server holds this data dir" means. The lock
//! is released by the kernel when the process ends, however it ends. This module never blocks
//! without a deadline.

use std::fs::File;
use std::time::Duration;

use crate::fsafe::{Dir, FsError, LockFile, LockMode, Wait};

/// Name of the lock file in the data dir.
pub const LOCK_FILE: &str = "memwarden.lock";

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    #[error(
        "refusing: a memwarden session or command is using {path} (it holds {LOCK_FILE}); \
         stop the service first (systemctl stop memwarden.socket and any memwarden@ sessions) \
         and retry: replacing the databases under a running server would lose its writes"
    )]
    InUse { path: String },
    #[error(
        "{path} is held by `memwarden restore` or `memwarden audit reset` ({LOCK_FILE}); \
         waited {waited:?}: try again when it is done"
    )]
    Replacing { path: String, waited: Duration },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: flock: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DataLock {
    /// Shares the lock with other sessions and commands, waiting up to `wait` for a restore
    /// or reset in progress to finish.
    pub fn shared(dir: &Dir, wait: Duration) -> Result<Self, LockError> {
        let lock = dir.lock_file(LOCK_FILE)?;
        if !lock
            .acquire(LockMode::Shared, Wait::Upto(wait))
            .map_err(|e| io(&lock, e))?
        {
            return Err(LockError::Replacing {
                path: dir.path().display().to_string(),
                waited: wait,
            });
        }
        Ok(Self {
            _file: lock.into_file(),
        })
    }

    /// Takes the lock alone, or refuses at once: something is using the data dir.
    pub fn exclusive(dir: &Dir) -> Result<Self, LockError> {
        let lock = dir.lock_file(LOCK_FILE)?;
        if !lock
            .acquire(LockMode::Exclusive, Wait::Never)
            .map_err(|e| io(&lock, e))?
        {
            return Err(LockError::InUse {
                path: dir.path().display().to_string(),
            });
        }
        Ok(Self {
            _file: lock.into_file(),
        })
    }
}

fn io(lock: &LockFile, source: std::io::Error) -> LockError {
    LockError::Io {
        path: lock.path().display().to_string(),
        source,
    }
}
