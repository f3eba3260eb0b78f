//! Safe files in directories another uid may share: every file the CLI creates or replaces in a
//! data dir or a backup dir goes through [`Dir`].
//!
//! The threat: the service uid owns the data dir, so it can plant a symlink there
//! (`.memory.db.restore -> /etc/shadow`) and wait for root to run `restore` or `keys rotate`.
//! Here every name is resolved relative to a directory fd opened without following links, every
//! new file is created `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted link or file makes the create fail,
//! never redirects it), renames stay within that fd, and new files get the directory's owner
//! and mode 0600. This module must never open a path component it has not opened itself.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

mod dir;
mod lock;
mod private;

pub use dir::Dir;
pub use lock::{LockFile, LockMode, Wait};
pub use private::{PrivateFileError, read_private};

/// Why a file or directory was refused or could not be handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    #[error(
        "{path} is a symbolic link: refusing to follow it (a link here can turn a write into an \
         overwrite of any file); give the real path"
    )]
    Symlink { path: String },
    #[error("{path} is not a {want}")]
    FileKind { path: String, want: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The underlying I/O error kind, if this is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Sets the process umask to 077, so nothing any library creates (SQLite's -wal and -shm
/// included) is ever readable by group or others, whatever the caller's umask was.
pub fn restrict_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

fn cstr(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: `st` is a writable, properly sized stat buffer; fstat only writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// What `lstat` says about one path entry (links are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Permission bits (07777).
    pub mode: u32,
    /// File, directory, link or other.
    pub kind: FileKind,
}

/// The kind of a path entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Meta {
    /// `fstat` of an open file or directory.
    pub fn of_fd(fd: &impl AsRawFd) -> io::Result<Self> {
        Ok(Self::from_stat(&fstat(fd.as_raw_fd())?))
    }

    fn from_stat(st: &libc::stat) -> Self {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        };
        Self {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind,
        }
    }
}

/// The first component of `path` (made absolute against the working directory) that is a
/// symbolic link, if any. SQLite, opened with `SQLITE_OPEN_NOFOLLOW`, refuses a database path
/// with a link anywhere in it; this finds which one, for a clear message.
pub fn first_symlink(path: &Path) -> io::Result<Option<PathBuf>> {
    let abs = std::path::absolute(path)?;
    let mut at = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::RootDir => at.push("/"),
            Component::ParentDir => {
                at.pop();
            }
            Component::CurDir => {}
            other => {
                at.push(other);
                match std::fs::symlink_metadata(&at) {
                    Ok(m) if m.file_type().is_symlink() => return Ok(Some(at)),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(None)
}

/// The effective uid of this process.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests;
