//! `serve --log-file` appends only to a regular file this uid owns, reached without following a
//! link: a planted link, another user's file, a FIFO or a directory is refused with exit 2 and
//! left exactly as it was.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};

use common::TestDir;

fn serve_with_log(dir: &TestDir, log: &std::path::Path) -> Output {
    Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(dir.data())
        .arg("--log-file")
        .arg(log)
        .stdin(Stdio::null())
        .output()
        .expect("run serve")
}

fn refused(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(what), "wanted {what:?}: {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_link_at_the_log_path_is_never_followed() {
    let dir = TestDir::new();
    let victim = dir.tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let log = dir.tmp.path().join("memwarden.log");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    refused(&serve_with_log(&dir, &log), "symbolic link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    // A dangling link: its target is not created either.
    let absent = dir.tmp.path().join("absent");
    let log2 = dir.tmp.path().join("dangling.log");
    std::os::unix::fs::symlink(&absent, &log2).unwrap();
    refused(&serve_with_log(&dir, &log2), "symbolic link");
    assert!(!absent.exists());
}

#[test]
fn another_users_file_a_fifo_or_a_directory_is_refused() {
    if memwarden::fsafe::current_uid() != 0 {
        eprintln!("skipped: needs root to make a file another uid owns");
        return;
    }
    let dir = TestDir::new();
    let foreign = dir.tmp.path().join("foreign.log");
    std::fs::write(&foreign, "theirs\n").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    refused(&serve_with_log(&dir, &foreign), "owned by uid 65534");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "theirs\n");

    let fifo = dir.tmp.path().join("fifo.log");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    refused(&serve_with_log(&dir, &fifo), "not a regular file");

    let sub = dir.tmp.path().join("dir.log");
    std::fs::create_dir(&sub).unwrap();
    refused(&serve_with_log(&dir, &sub), "not a regular file");
}

#[test]
fn a_new_log_is_private_and_an_own_log_is_appended_to() {
    let dir = TestDir::new();
    let log = dir.tmp.path().join("memwarden.log");
    let out = serve_with_log(&dir, &log);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "0640 narrowed by umask 077"
    );
    assert_eq!(meta.uid(), memwarden::fsafe::current_uid());
    let first = std::fs::read_to_string(&log).unwrap();
    assert!(
        first.lines().count() > 0 && first.lines().all(|l| l.starts_with('{')),
        "{first}"
    );
    assert!(serve_with_log(&dir, &log).status.success());
    let second = std::fs::read_to_string(&log).unwrap();
    assert!(second.starts_with(&first) && second.len() > first.len());
}
