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
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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
    Kind { path: String, want: &'static str },
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
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub mode: u32,
    pub kind: Kind,
}

/// The kind of a path entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Meta {
    fn from_stat(st: &libc::stat) -> Self {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        };
        Self {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind,
        }
    }
}

/// A directory opened without following a link at its last component; names below it are
/// resolved relative to the open directory, so swapping the path afterwards changes nothing.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    meta: Meta,
}

impl Dir {
    /// Opens `path`, refusing it if it is a symbolic link or not a directory.
    pub fn open(path: &Path) -> Result<Self, FsError> {
        let c = cstr(path.as_os_str()).map_err(|e| FsError::io(path, e))?;
        // SAFETY: `c` is NUL-terminated; the returned fd is owned below.
        let rc = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        Self::adopt(rc, path.to_path_buf(), || {
            std::fs::symlink_metadata(path).map(|m| m.file_type().is_symlink())
        })
    }

    fn adopt(
        rc: libc::c_int,
        path: PathBuf,
        is_link: impl FnOnce() -> io::Result<bool>,
    ) -> Result<Self, FsError> {
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => FsError::Symlink {
                    path: path.display().to_string(),
                },
                Some(libc::ENOTDIR) if matches!(is_link(), Ok(true)) => FsError::Symlink {
                    path: path.display().to_string(),
                },
                Some(libc::ENOTDIR) => FsError::Kind {
                    path: path.display().to_string(),
                    want: "directory",
                },
                _ => FsError::io(&path, e),
            });
        }
        // SAFETY: `rc` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(rc) };
        let meta = Meta::from_stat(&fstat(fd.as_raw_fd()).map_err(|e| FsError::io(&path, e))?);
        Ok(Self { fd, path, meta })
    }

    /// Creates the directory `path` (mode 0700) if missing — its parent is created as needed —
    /// then opens it as [`Dir::open`] does. Returns whether this call created it.
    pub fn create(path: &Path) -> Result<(Self, bool), FsError> {
        let name = path
            .file_name()
            .filter(|_| !path.ends_with(".."))
            .ok_or_else(|| FsError::Kind {
                path: path.display().to_string(),
                want: "directory name (it ends in `..` or `/`)",
            })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| FsError::io(parent, e))?;
        }
        let c_parent = cstr(parent.as_os_str()).map_err(|e| FsError::io(parent, e))?;
        // SAFETY: NUL-terminated path; the fd is owned right away.
        let pfd = check(unsafe {
            libc::open(
                c_parent.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| FsError::io(parent, e))?;
        // SAFETY: `pfd` is a fresh fd that nothing else owns.
        let pfd = unsafe { OwnedFd::from_raw_fd(pfd) };
        let c_name = cstr(name).map_err(|e| FsError::io(path, e))?;
        // SAFETY: valid dir fd and NUL-terminated name. mkdirat never follows a link at `name`.
        let created = match check(unsafe { libc::mkdirat(pfd.as_raw_fd(), c_name.as_ptr(), 0o700) })
        {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(FsError::io(path, e)),
        };
        // SAFETY: as above; the fd is owned by `adopt`.
        let rc = unsafe {
            libc::openat(
                pfd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let dir = Self::adopt(rc, path.to_path_buf(), || {
            std::fs::symlink_metadata(path).map(|m| m.file_type().is_symlink())
        })?;
        if created {
            // Exactly 0700, whatever the umask.
            // SAFETY: valid fd.
            check(unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) })
                .map_err(|e| FsError::io(path, e))?;
        }
        Ok((dir, created))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Owner, mode and kind of the directory itself (fstat of the open fd).
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// `path/name`, for messages and for APIs (SQLite) that take a path.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn name(&self, name: &str) -> Result<CString, FsError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(FsError::Kind {
                path: self.join(name).display().to_string(),
                want: "plain file name",
            });
        }
        cstr(OsStr::new(name)).map_err(|e| FsError::io(&self.join(name), e))
    }

    /// lstat of `name` in this directory; `None` when it does not exist.
    pub fn entry(&self, name: &str) -> Result<Option<Meta>, FsError> {
        let c = self.name(name)?;
        // SAFETY: valid dir fd, NUL-terminated name, writable stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(rc) {
            Ok(_) => Ok(Some(Meta::from_stat(&st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FsError::io(&self.join(name), e)),
        }
    }

    /// Creates `name` as a new regular file, mode 0600, owned like this directory. Fails if
    /// anything — a file, a dangling link — already has the name.
    pub fn create_new(&self, name: &str) -> Result<File, FsError> {
        let c = self.name(name)?;
        let path = self.join(name);
        // SAFETY: valid dir fd and NUL-terminated name; the fd is owned right away.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })
        .map_err(|e| FsError::io(&path, e))?;
        // SAFETY: a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        // Root working on the service user's directory must leave files the service can open.
        if current_uid() == 0 && self.meta.uid != 0 {
            // SAFETY: valid fd.
            check(unsafe { libc::fchown(file.as_raw_fd(), self.meta.uid, self.meta.gid) })
                .map_err(|e| FsError::io(&path, e))?;
        }
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(file.as_raw_fd(), 0o600) })
            .map_err(|e| FsError::io(&path, e))?;
        Ok(file)
    }

    /// Opens `name` with `flags` (plus no-follow and close-on-exec; mode 0600 if it creates),
    /// refusing a symbolic link or anything but a regular file.
    fn open_regular(&self, name: &str, flags: libc::c_int) -> Result<File, FsError> {
        let c = self.name(name)?;
        let path = self.join(name);
        // SAFETY: valid dir fd and NUL-terminated name; the fd is owned right away.
        let rc = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        let fd = check(rc).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => FsError::Symlink {
                path: path.display().to_string(),
            },
            _ => FsError::io(&path, e),
        })?;
        // SAFETY: a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let meta = Meta::from_stat(&fstat(file.as_raw_fd()).map_err(|e| FsError::io(&path, e))?);
        if meta.kind != Kind::File {
            return Err(FsError::Kind {
                path: path.display().to_string(),
                want: "regular file",
            });
        }
        Ok(file)
    }

    /// Opens `name` for reading, refusing a symbolic link or anything but a regular file.
    pub fn open_file(&self, name: &str) -> Result<File, FsError> {
        self.open_regular(name, libc::O_RDONLY | libc::O_NONBLOCK)
    }

    /// Opens (creating, 0600, if missing) the lock file `name` without following a link, and
    /// takes an exclusive `flock` on it, waiting for any holder. The lock lasts as long as the
    /// returned file is open.
    pub fn lock_exclusive(&self, name: &str) -> Result<File, FsError> {
        let file = self.open_regular(name, libc::O_RDWR | libc::O_CREAT)?;
        let path = self.join(name);
        // Root locking the service user's directory leaves a lock file the service can open.
        if current_uid() == 0 && self.meta.uid != 0 {
            // SAFETY: valid fd.
            check(unsafe { libc::fchown(file.as_raw_fd(), self.meta.uid, self.meta.gid) })
                .map_err(|e| FsError::io(&path, e))?;
        }
        // SAFETY: valid fd; flock has no memory preconditions.
        check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) })
            .map_err(|e| FsError::io(&path, e))?;
        Ok(file)
    }

    /// Removes `name` (a file or a link — never what a link points at); missing is fine.
    pub fn remove(&self, name: &str) -> Result<(), FsError> {
        let c = self.name(name)?;
        // SAFETY: valid dir fd and NUL-terminated name.
        match check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io(&self.join(name), e)),
        }
    }

    /// Renames `from` over `to`, both in this directory (a link at `to` is replaced, not
    /// followed).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (a, b) = (self.name(from)?, self.name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid dir fd and NUL-terminated names.
        check(unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) })
            .map(drop)
            .map_err(|e| FsError::io(&self.join(to), e))
    }

    /// Links `from` as `to` in this directory; fails if `to` exists.
    pub fn hard_link(&self, from: &str, to: &str) -> Result<(), FsError> {
        let (a, b) = (self.name(from)?, self.name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid dir fd and NUL-terminated names; flags 0: a link at `from` is not
        // followed.
        check(unsafe { libc::linkat(fd, a.as_ptr(), fd, b.as_ptr(), 0) })
            .map(drop)
            .map_err(|e| FsError::io(&self.join(to), e))
    }

    /// Makes renames and creations in this directory durable.
    pub fn sync(&self) -> Result<(), FsError> {
        // SAFETY: valid fd.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
            .map(drop)
            .map_err(|e| FsError::io(&self.path, e))
    }

    /// Names in this directory (without `.` and `..`), read through the open fd.
    pub fn names(&self) -> Result<Vec<String>, FsError> {
        let io = |e| FsError::io(&self.path, e);
        let dot = c".";
        // SAFETY: valid dir fd; "." is NUL-terminated. The new fd is handed to fdopendir,
        // which owns it until closedir.
        let fd = check(unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                dot.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
        .map_err(io)?;
        // SAFETY: `fd` is a fresh directory fd.
        let dirp = unsafe { libc::fdopendir(fd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(io(e));
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: `dirp` is a valid DIR*; the entry is read before the next readdir.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let name = String::from_utf8_lossy(name.to_bytes()).into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        // SAFETY: `dirp` is valid and closed once.
        unsafe { libc::closedir(dirp) };
        Ok(names)
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
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_new_never_follows_or_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&target, data.join("planted")).unwrap();
        let dir = Dir::open(&data).unwrap();
        assert!(dir.create_new("planted").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        dir.remove("planted").unwrap();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"precious",
            "link removed, not target"
        );
        let mut f = dir.create_new("planted").unwrap();
        f.write_all(b"new").unwrap();
        let mode = std::fs::metadata(data.join("planted"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.create_new("planted").is_err(), "exclusive");
        assert!(dir.create_new("../escape").is_err());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(Dir::open(&link), Err(FsError::Symlink { .. })));
        assert!(matches!(Dir::create(&link), Err(FsError::Symlink { .. })));
        assert_eq!(first_symlink(&link.join("x")).unwrap(), Some(link.clone()));
        assert_eq!(first_symlink(&real.join("x")).unwrap(), None);
        let (d, created) = Dir::create(&tmp.path().join("new/sub")).unwrap();
        assert!(created && d.names().unwrap().is_empty());
        assert_eq!(d.meta().mode, 0o700);
    }
}
