//! [`Dir`]: a directory held open by fd, and every file operation relative to it. It must
//! never resolve a name through a path it has not opened itself, nor follow a link.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{FileKind, FsError, Meta, check, cstr, current_uid, fstat};

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
                Some(libc::ENOTDIR) => FsError::FileKind {
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
            .ok_or_else(|| FsError::FileKind {
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

    /// The path the directory was opened by, for messages.
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
            return Err(FsError::FileKind {
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
        if meta.kind != FileKind::File {
            return Err(FsError::FileKind {
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
