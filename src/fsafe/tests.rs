//! Unit tests of the safe-file layer: planted links, exclusive creation, modes.

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
