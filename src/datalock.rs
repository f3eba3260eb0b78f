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
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::fsafe::{Dir, FsError};

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

/// Opens the lock file without following links, creating it (0600, owned like the dir) if
/// missing.
fn open(dir: &Dir) -> Result<File, FsError> {
    match dir.open_file(LOCK_FILE) {
        Ok(f) => Ok(f),
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
            match dir.create_new(LOCK_FILE) {
                Ok(f) => Ok(f),
                // Another process created it in between.
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::AlreadyExists) => {
                    dir.open_file(LOCK_FILE)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// One non-blocking attempt; `Ok(false)` when another process holds a conflicting lock.
fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: a valid fd owned by `file`.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

impl DataLock {
    /// Shares the lock with other sessions and commands, waiting up to `wait` for a restore
    /// or reset in progress to finish.
    pub fn shared(dir: &Dir, wait: Duration) -> Result<Self, LockError> {
        let file = open(dir)?;
        let io = |source| LockError::Io {
            path: dir.join(LOCK_FILE).display().to_string(),
            source,
        };
        let started = Instant::now();
        loop {
            if try_flock(&file, libc::LOCK_SH).map_err(io)? {
                return Ok(Self { _file: file });
            }
            if started.elapsed() >= wait {
                return Err(LockError::Replacing {
                    path: dir.path().display().to_string(),
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Takes the lock alone, or refuses at once: something is using the data dir.
    pub fn exclusive(dir: &Dir) -> Result<Self, LockError> {
        let file = open(dir)?;
        let held = try_flock(&file, libc::LOCK_EX).map_err(|source| LockError::Io {
            path: dir.join(LOCK_FILE).display().to_string(),
            source,
        })?;
        if !held {
            return Err(LockError::InUse {
                path: dir.path().display().to_string(),
            });
        }
        Ok(Self { _file: file })
    }
}
