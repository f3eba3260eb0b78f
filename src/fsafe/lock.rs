//! The one advisory-lock helper: a lock file in a [`Dir`], opened without following a link,
//! and `flock` on it, shared or exclusive, with an explicit wait. The data dir's lock
//! ([`crate::datalock`]) and the keyring's lock both take theirs here. A lock lasts as long as
//! its file is open and is released by the kernel however the process ends; this module never
//! waits on a lock unless the caller asked it to.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Dir, FsError};

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// With other shared holders; excludes an exclusive one.
    Shared,
    /// Alone.
    Exclusive,
}

/// How long to wait for a conflicting holder to let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// One attempt.
    Never,
    /// Retry until this much time has passed.
    Upto(Duration),
    /// Block until the lock is free.
    Forever,
}

/// An open lock file, not yet (or no longer) locked by this handle.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

/// How often a bounded wait retries.
const POLL: Duration = Duration::from_millis(20);

impl Dir {
    /// Opens the lock file `name` without following a link, creating it (0600, owned like the
    /// dir) if missing. A lock file is never written: a planted link or non-file is refused.
    pub fn lock_file(&self, name: &str) -> Result<LockFile, FsError> {
        let file = match self.open_file(name) {
            Ok(f) => f,
            Err(e) if e.io_kind() == Some(io::ErrorKind::NotFound) => {
                match self.create_new(name) {
                    Ok(f) => f,
                    // Another process created it in between.
                    Err(e) if e.io_kind() == Some(io::ErrorKind::AlreadyExists) => {
                        self.open_file(name)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        Ok(LockFile {
            file,
            path: self.join(name),
        })
    }

    /// Takes an exclusive lock on the lock file `name`, waiting for any holder. The lock
    /// lasts as long as the returned file is open.
    pub fn lock_exclusive(&self, name: &str) -> Result<File, FsError> {
        let lock = self.lock_file(name)?;
        match lock.acquire(LockMode::Exclusive, Wait::Forever) {
            Ok(_) => Ok(lock.into_file()),
            Err(e) => Err(FsError::io(&lock.path, e)),
        }
    }
}

impl LockFile {
    /// Takes the lock in `mode`, waiting as `wait` says. `Ok(false)` when another process
    /// still holds a conflicting lock when the wait is over.
    ///
    /// # Errors
    /// The `flock` error, other than "would block".
    pub fn acquire(&self, mode: LockMode, wait: Wait) -> io::Result<bool> {
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        };
        let deadline = match wait {
            Wait::Forever => return self.flock(op).map(|_| true),
            Wait::Never => Duration::ZERO,
            Wait::Upto(d) => d,
        };
        let started = Instant::now();
        loop {
            if self.flock(op | libc::LOCK_NB)? {
                return Ok(true);
            }
            if started.elapsed() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }

    /// One `flock` call; `Ok(false)` when a non-blocking attempt meets a conflicting lock.
    fn flock(&self, op: libc::c_int) -> io::Result<bool> {
        // SAFETY: a valid fd owned by `self.file`; flock has no memory preconditions.
        if unsafe { libc::flock(self.file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) if op & libc::LOCK_NB != 0 => Ok(false),
            _ => Err(e),
        }
    }

    /// The lock file's path, for messages.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The open file: the lock, if taken, lasts as long as it stays open.
    pub fn into_file(self) -> File {
        self.file
    }
}
