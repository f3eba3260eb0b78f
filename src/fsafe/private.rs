//! Reading a private file (the keyring, the database file): opened without following a link
//! and checked on the opened file itself (fstat), so the file checked is the file read. Refused:
//! anything but a regular file, any access for group or others, an owner other than us or root
//! (root, the operator, may read a service user's file), and more than `max` bytes. The errors
//! name the problem, never the contents.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::current_uid;

/// Why a private file was refused.
#[derive(Debug)]
pub enum PrivateFileError {
    /// The OS refused to open or read it.
    Io(std::io::Error),
    /// A link, a directory, a device…
    NotRegular,
    /// Group or others have some access: its mode.
    Permissions(u32),
    /// Owned by someone else: (owner, our uid).
    Owner(u32, u32),
    /// Larger than the limit.
    TooLarge(u64),
}

/// The text of the private file at `path`, at most `max` bytes, after the checks above.
pub fn read_private(path: &Path, max: u64) -> Result<String, PrivateFileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                PrivateFileError::NotRegular
            } else {
                PrivateFileError::Io(e)
            }
        })?;
    let meta = file.metadata().map_err(PrivateFileError::Io)?;
    if !meta.file_type().is_file() {
        return Err(PrivateFileError::NotRegular);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PrivateFileError::Permissions(mode));
    }
    let uid = current_uid();
    if meta.uid() != uid && meta.uid() != 0 && uid != 0 {
        return Err(PrivateFileError::Owner(meta.uid(), uid));
    }
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(PrivateFileError::Io)?;
    if text.len() as u64 > max {
        return Err(PrivateFileError::TooLarge(max));
    }
    Ok(text)
}
