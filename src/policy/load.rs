//! Reading a policy: the path checks that keep it immutable from inside, the SHA-256 pin, and
//! parsing through the schema into the compiled form. Every refusal names the file, the key
//! path and the reason.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Policy, RawPolicy};
use crate::fsafe::{FileKind, Meta};

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
#[error("policy {file}: {key}: {reason}")]
pub struct PolicyError {
    /// The policy file, or "built-in".
    pub file: String,
    /// The key path of the problem, e.g. `rules.custom[0].pattern`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(file: &str, key: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_string(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = include_str!("../../schema/policy.schema.json");
        let value: Value = serde_json::from_str(text).expect("built-in policy schema is JSON");
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&value)
            .expect("built-in policy schema compiles")
    })
}

/// `/principals/local/tools/0` → `principals.local.tools[0]`.
fn key_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

/// Parses and compiles policy text. `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let toml_value: toml::Value = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_else(|| "syntax".into());
        err(source, at, format!("not valid TOML: {}", e.message()))
    })?;
    let json = serde_json::to_value(&toml_value)
        .map_err(|e| err(source, "(top level)", format!("cannot be read: {e}")))?;
    if let Err(e) = schema().validate(&json) {
        return Err(err(
            source,
            key_path(&e.instance_path().to_string()),
            format!("{} ({})", e, e.kind().keyword()),
        ));
    }
    let raw: RawPolicy =
        serde_json::from_value(json).map_err(|e| err(source, "(structure)", e.to_string()))?;
    raw.compile(source.to_string(), sha256)
        .map_err(|(key, reason)| err(source, key, reason))
}

/// What must be true of each component on a policy's path, for the file's contents to be
/// beyond the reach of every uid but root: not a symbolic link, the kind expected, owned by root,
/// and not writable by group or others.
///
/// Root ownership, not merely "not ours": any other owner — the server's uid, or an agent's uid
/// in the hardened install — can chmod its file or directory back to writable, edit or swap the
/// policy, and restore the modes. A group or world write bit is refused even with the sticky bit
/// (/tmp): the policy has no business there. ACL grants show up here too: a POSIX ACL that lets
/// a named user or group write sets the group write bit (the ACL mask).
fn judge(meta: &Meta, want: FileKind) -> Result<(), String> {
    if meta.kind == FileKind::Symlink {
        return Err("is a symbolic link: give the policy's real path".into());
    }
    if meta.kind != want {
        return Err(match want {
            FileKind::Dir => "is not a directory".into(),
            _ => "is not a regular file".into(),
        });
    }
    if meta.uid != 0 {
        let uid = crate::fsafe::current_uid();
        let who = if meta.uid == uid {
            format!("owned by uid {uid}, this process's")
        } else {
            format!("owned by uid {}, not root", meta.uid)
        };
        return Err(format!(
            "is {who}: its owner can change its mode, then the policy"
        ));
    }
    let writable = match (meta.mode & 0o020 != 0, meta.mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        (false, true) => "others",
        (false, false) => return Ok(()),
    };
    Err(format!(
        "is writable by {writable} (mode {:04o})",
        meta.mode
    ))
}

/// Opens a policy file by walking its path from `/`, one component at a time, each opened
/// relative to the last without following links and judged by fstat of what was opened — so
/// the components checked are the ones the file is read through, and no rename between check
/// and read can slip another file in. Returns the open file, or (component, reason).
fn open_checked(path: &Path) -> Result<File, (String, String)> {
    let io = |at: &Path, e: std::io::Error| (at.display().to_string(), format!("cannot open: {e}"));
    let abs = std::path::absolute(path).map_err(|e| io(path, e))?;
    let mut at = PathBuf::from("/");
    // SAFETY: a NUL-terminated literal; the fd is owned right away.
    let rc = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if rc < 0 {
        return Err(io(&at, std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let mut dir = unsafe { OwnedFd::from_raw_fd(rc) };
    let judged = |at: &Path, fd: &OwnedFd, want| {
        let meta = Meta::of_fd(fd).map_err(|e| io(at, e))?;
        judge(&meta, want).map_err(|why| (at.display().to_string(), why))
    };
    judged(&at, &dir, FileKind::Dir)?;
    let names: Vec<_> = abs
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    for (i, name) in names.iter().enumerate() {
        at.push(name);
        let last = i + 1 == names.len();
        let c = CString::new(name.as_os_str().as_bytes())
            .map_err(|_| io(&at, std::io::ErrorKind::InvalidInput.into()))?;
        // O_PATH|O_NOFOLLOW opens a link itself (fstat then says so); the file is opened for
        // reading, where O_NOFOLLOW makes a link fail with ELOOP.
        let flags = if last {
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC
        } else {
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC
        };
        // SAFETY: valid dir fd, NUL-terminated name; the fd is owned right away.
        let rc = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Err((
                    at.display().to_string(),
                    "is a symbolic link: give the policy's real path".into(),
                ));
            }
            return Err(io(&at, e));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(rc) };
        judged(&at, &fd, if last { FileKind::File } else { FileKind::Dir })?;
        if last {
            return Ok(File::from(fd));
        }
        dir = fd;
    }
    Err((
        at.display().to_string(),
        "is a directory, not a policy file".into(),
    ))
}

/// Reads, checks and compiles a policy file.
///
/// Unless `allow_owned`, refuses a file that any uid but root could change: the file or any
/// directory on its path up to `/` that is a symbolic link, not owned by root, or writable by
/// group or others (an agent whose uid could write it would raise its own limits). Refuses any
/// content whose SHA-256 is not `pin`.
pub fn load_file(path: &Path, allow_owned: bool, pin: Option<&str>) -> Result<Policy, PolicyError> {
    let file = path.display().to_string();
    let read = |e: std::io::Error| err(&file, "(file)", format!("cannot read: {e}"));
    let text = if allow_owned {
        std::fs::read_to_string(path).map_err(read)?
    } else {
        let mut f = open_checked(path).map_err(|(at, why)| {
            err(
                &file,
                at,
                format!(
                    "{why}; make the policy root-owned, mode 0644, in root-owned 0755 directories \
                     (none writable by group or others), or pass --allow-owned-policy for development"
                ),
            )
        })?;
        let mut text = String::new();
        f.read_to_string(&mut text).map_err(read)?;
        text
    };
    let policy = parse(&text, &file)?;
    if let Some(pin) = pin
        && !policy.sha256.eq_ignore_ascii_case(pin.trim())
    {
        return Err(err(
            &file,
            "(file)",
            format!(
                "SHA-256 is {}, but --policy-sha256 pins {}",
                policy.sha256,
                pin.trim()
            ),
        ));
    }
    Ok(policy)
}

/// The built-in default policy.
pub fn builtin() -> Result<Policy, PolicyError> {
    parse(super::DEFAULT_POLICY, "built-in")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_read_like_toml() {
        assert_eq!(
            key_path("/principals/local/tools/0"),
            "principals.local.tools[0]"
        );
        assert_eq!(key_path(""), "(top level)");
    }

    fn meta(uid: u32, mode: u32, kind: FileKind) -> Meta {
        Meta {
            uid,
            gid: 0,
            mode,
            kind,
        }
    }

    #[test]
    fn only_root_owned_components_no_one_else_can_write_pass() {
        assert!(judge(&meta(0, 0o755, FileKind::Dir), FileKind::Dir).is_ok());
        assert!(judge(&meta(0, 0o644, FileKind::File), FileKind::File).is_ok());
        assert!(judge(&meta(0, 0o440, FileKind::File), FileKind::File).is_ok());
        let refused = |m: Meta, want: FileKind, says: &str| {
            let why = judge(&m, want).unwrap_err();
            assert!(why.contains(says), "{why}");
        };
        refused(
            meta(0, 0o775, FileKind::Dir),
            FileKind::Dir,
            "writable by group (mode 0775)",
        );
        refused(
            meta(0, 0o1777, FileKind::Dir),
            FileKind::Dir,
            "group and others (mode 1777)",
        );
        refused(
            meta(0, 0o646, FileKind::File),
            FileKind::File,
            "writable by others",
        );
        // Read-only modes do not help: the owner can chmod them back.
        refused(
            meta(65534, 0o444, FileKind::File),
            FileKind::File,
            "owned by uid 65534",
        );
        refused(
            meta(65534, 0o555, FileKind::Dir),
            FileKind::Dir,
            "owned by uid 65534",
        );
        refused(
            meta(0, 0o777, FileKind::Symlink),
            FileKind::Dir,
            "symbolic link",
        );
        refused(
            meta(0, 0o644, FileKind::Dir),
            FileKind::File,
            "not a regular file",
        );
        refused(
            meta(0, 0o644, FileKind::File),
            FileKind::Dir,
            "not a directory",
        );
    }

    #[test]
    fn the_walk_checks_every_directory_up_to_the_root() {
        // Under the temp dir (/tmp: world-writable, sticky or not) every policy is refused, at
        // a directory above the file, named in the refusal.
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("policy.toml");
        std::fs::write(&p, super::super::DEFAULT_POLICY).unwrap();
        let (at, why) = open_checked(&p).unwrap_err();
        assert!(p.starts_with(&at) && at != p.display().to_string(), "{at}");
        assert!(
            why.contains("writable by") || why.contains("owned by"),
            "{why}"
        );
        let link = tmp.path().join("link.toml");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(open_checked(&link).is_err());
        // A root-owned 0644 file in root-owned 0755 directories, as install.sh makes them.
        if crate::fsafe::current_uid() == 0
            && std::fs::symlink_metadata("/etc/passwd").is_ok_and(|m| m.file_type().is_file())
        {
            assert!(open_checked(Path::new("/etc/passwd")).is_ok());
            let (at, why) = open_checked(Path::new("/etc")).unwrap_err();
            assert_eq!(at, "/etc", "{why}");
        }
    }

    #[test]
    fn the_builtin_policy_compiles() {
        let p = builtin().unwrap();
        assert!(p.principals.contains_key("local"));
        assert!(!p.rules.is_empty());
    }
}
