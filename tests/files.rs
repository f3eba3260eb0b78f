//! The files the server and CLI touch (issue 12, items 3, 4, 12, 14): a policy no uid but root
//! can change, no write through a planted link, no database others can read, no backup others
//! can reach. Each refusal is checked together with "nothing changed".
//!
//! Tests run as root. The service uid is played by 65534 through `setpriv`, in directories under
//! CARGO_TARGET_TMPDIR (root-owned 0755 up to `/`; under /tmp every policy is refused anyway).

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{TestDir, bin};

const NOBODY: u32 = 65534;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn owner(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().uid()
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// Bytes, mode and owner of every file and directory under `root` (links as links).
fn snapshot(root: &Path) -> Vec<(PathBuf, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let bytes = if m.file_type().is_file() {
            std::fs::read(&p).unwrap()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            Vec::new()
        };
        out.push((p, m.mode(), m.uid(), bytes));
    }
    out.sort();
    out
}

/// Runs the binary as uid/gid 65534 with no supplementary groups.
fn as_nobody<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin(),
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv")
}

fn as_root<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run memwarden")
}

/// A 0755 root-owned directory on a path that is root-owned and not group/world-writable up to
/// `/`, with a data dir owned by 65534 in it. `None` (the test is skipped, saying so) when not
/// root or when CARGO_TARGET_TMPDIR does not sit on such a path.
struct Base {
    tmp: tempfile::TempDir,
}

impl Base {
    fn new() -> Option<Self> {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(root).unwrap();
        let sound = unsafe { libc::geteuid() } == 0
            && root.ancestors().all(|a| {
                std::fs::symlink_metadata(a)
                    .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
            });
        if !sound {
            eprintln!(
                "skipped: not root, or {} is not on a root-only path",
                root.display()
            );
            return None;
        }
        let tmp = tempfile::tempdir_in(root).unwrap();
        chmod(tmp.path(), 0o755);
        Some(Self { tmp })
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `name` as a directory with this owner and mode.
    fn dir(&self, name: &str, uid: u32, m: u32) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        chown(&p, Some(uid), Some(uid)).unwrap();
        chmod(&p, m);
        p
    }

    /// `name` as a policy file (the built-in local grants) with this owner and mode.
    fn policy(&self, name: &str, uid: u32, m: u32) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, POLICY).unwrap();
        chown(&p, Some(uid), Some(uid)).unwrap();
        chmod(&p, m);
        p
    }

    /// An initialised data dir owned by 65534, 0700, as the hardened install has it.
    fn service_data(&self) -> PathBuf {
        let data = self.dir("data", NOBODY, 0o700);
        let out = as_nobody(&[
            OsStr::new("init"),
            OsStr::new("--data-dir"),
            data.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        data
    }
}

const POLICY: &str = include_str!("../policies/default.toml");

/// `serve` as the service uid with this policy; stdin is empty, so a started server stops at
/// once. Returns (policy loaded?, output).
fn serve_nobody(data: &Path, policy: &Path, extra: &[&str]) -> (bool, Output) {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("serve"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--policy"),
        policy.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = as_nobody(&args);
    (text(&out).contains("policy loaded"), out)
}

/// The refusal an operator sees: exit 2, nothing on stdout, the component and the reason named.
fn assert_policy_refused(out: &Output, component: &Path, reason: &str) {
    let t = text(out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(out.stdout.is_empty(), "{t}");
    assert!(
        t.contains(&format!("{}: {reason}", component.display())),
        "want `{}: {reason}` in {t}",
        component.display()
    );
    assert!(
        t.contains("root-owned") && t.contains("--allow-owned-policy"),
        "{t}"
    );
    assert!(!t.contains("policy loaded"), "{t}");
}

// ---- item 3: a policy no uid but root can change ----

#[test]
fn the_installed_layout_is_accepted_by_the_service_uid_and_by_root() {
    let Some(base) = Base::new() else { return };
    let data = base.service_data();
    base.dir("etc", 0, 0o755);
    let policy = base.policy("etc/policy.toml", 0, 0o644);
    let (loaded, out) = serve_nobody(&data, &policy, &[]);
    assert!(loaded, "{}", text(&out));
    let out = as_root(&[
        OsStr::new("policy"),
        OsStr::new("check"),
        policy.as_os_str(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_policy_the_service_uid_owns_is_refused_even_read_only() {
    let Some(base) = Base::new() else { return };
    let data = base.service_data();
    // The review's example: 0444 in a 0555 directory, both the service uid's. It could chmod
    // them, edit its grants and put the modes back.
    let dir = base.dir("etc", NOBODY, 0o755);
    let policy = base.policy("etc/policy.toml", NOBODY, 0o444);
    chmod(&dir, 0o555);
    let before = snapshot(base.path());
    let (loaded, out) = serve_nobody(&data, &policy, &[]);
    assert!(!loaded);
    assert_policy_refused(&out, &dir, "is owned by uid 65534, this process's");
    assert_eq!(snapshot(base.path()), before, "nothing changed");

    // Only the directory: the file is root's, but the directory's owner can swap it.
    chown(&policy, Some(0), Some(0)).unwrap();
    let (_, out) = serve_nobody(&data, &policy, &[]);
    assert_policy_refused(&out, &dir, "is owned by uid 65534");

    // Only the file, in a root directory: its owner can chmod it and write.
    chown(&dir, Some(0), Some(0)).unwrap();
    chown(&policy, Some(NOBODY), Some(NOBODY)).unwrap();
    let (_, out) = serve_nobody(&data, &policy, &[]);
    assert_policy_refused(&out, &policy, "is owned by uid 65534, this process's");

    // The development flag relaxes it (and is audited, see tests/policy.rs).
    let (loaded, out) = serve_nobody(&data, &policy, &["--allow-owned-policy"]);
    assert!(loaded, "{}", text(&out));
}

#[test]
fn a_root_owned_policy_dir_in_a_parent_the_service_uid_can_write_is_refused() {
    let Some(base) = Base::new() else { return };
    let data = base.service_data();
    // srv/ is the service uid's; srv/etc and the policy are root's, 0755 and 0644. The uid can
    // rename srv/etc away and put its own in place.
    let parent = base.dir("srv", NOBODY, 0o755);
    base.dir("srv/etc", 0, 0o755);
    let policy = base.policy("srv/etc/policy.toml", 0, 0o644);
    let before = snapshot(base.path());
    let (loaded, out) = serve_nobody(&data, &policy, &[]);
    assert!(!loaded);
    assert_policy_refused(&out, &parent, "is owned by uid 65534, this process's");
    assert_eq!(snapshot(base.path()), before);

    // Owned by some other uid (an agent's, in the hardened install) is no better.
    chown(&parent, Some(4242), Some(4242)).unwrap();
    let (_, out) = serve_nobody(&data, &policy, &[]);
    assert_policy_refused(&out, &parent, "is owned by uid 4242, not root");
}

#[test]
fn a_group_or_world_writable_directory_or_file_on_the_path_is_refused() {
    let Some(base) = Base::new() else { return };
    let data = base.service_data();
    // Root-owned, group-writable by the service uid's group (even run with no groups at all).
    let dir = base.dir("etc", 0, 0o775);
    chown(&dir, Some(0), Some(NOBODY)).unwrap();
    let policy = base.policy("etc/policy.toml", 0, 0o644);
    let before = snapshot(base.path());
    let (_, out) = serve_nobody(&data, &policy, &[]);
    assert_policy_refused(&out, &dir, "is writable by group (mode 0775)");
    assert_eq!(snapshot(base.path()), before);

    chmod(&dir, 0o755);
    chmod(&policy, 0o666);
    let (_, out) = serve_nobody(&data, &policy, &[]);
    assert_policy_refused(&out, &policy, "is writable by group and others (mode 0666)");

    // A sticky world-writable directory (like /tmp) may not hold the policy either.
    chmod(&policy, 0o644);
    chmod(&dir, 0o1777);
    let (_, out) = serve_nobody(&data, &policy, &[]);
    assert_policy_refused(&out, &dir, "is writable by group and others (mode 1777)");
}

#[test]
fn a_symlink_anywhere_on_the_policy_path_is_refused() {
    let Some(base) = Base::new() else { return };
    let data = base.service_data();
    base.dir("etc", 0, 0o755);
    let policy = base.policy("etc/policy.toml", 0, 0o644);
    // The file itself a link (root's, to a root file): which file is read can change under us.
    let link = base.path().join("etc/link.toml");
    symlink(&policy, &link).unwrap();
    let before = snapshot(base.path());
    let (_, out) = serve_nobody(&data, &policy.with_file_name("link.toml"), &[]);
    assert_policy_refused(&out, &link, "is a symbolic link");
    // A directory on the path a link.
    let dirlink = base.path().join("etc-link");
    symlink(base.path().join("etc"), &dirlink).unwrap();
    let (_, out) = serve_nobody(&data, &dirlink.join("policy.toml"), &[]);
    assert_policy_refused(&out, &dirlink, "is a symbolic link");
    std::fs::remove_file(&dirlink).unwrap();
    assert_eq!(snapshot(base.path()), before);
}

#[test]
fn root_is_refused_a_policy_below_a_world_writable_directory() {
    let Some(base) = Base::new() else { return };
    // Root can still be fooled: anyone can rename ww/etc away and plant their own.
    let ww = base.dir("ww", 0, 0o777);
    base.dir("ww/etc", 0, 0o755);
    let policy = base.policy("ww/etc/policy.toml", 0, 0o644);
    let dir = TestDir::new();
    dir.init();
    let before = snapshot(base.path());
    let out = Command::new(bin())
        .args(["serve", "--data-dir"])
        .arg(dir.data())
        .arg("--policy")
        .arg(&policy)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_policy_refused(&out, &ww, "is writable by group and others (mode 0777)");
    assert_eq!(snapshot(base.path()), before);
    // Writable by others only; and through purge, which reads the same policy.
    chmod(&ww, 0o757);
    let before = snapshot(base.path());
    let out = Command::new(bin())
        .args(["purge", "--data-dir"])
        .arg(dir.data())
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_policy_refused(&out, &ww, "is writable by others (mode 0757)");
    assert_eq!(snapshot(base.path()), before);
}

// ---- item 4: no write through a planted link ----

/// A service-owned data dir with one entry, and a backup of it made by root.
fn service_data_with_backup(base: &Base) -> (PathBuf, PathBuf) {
    let data = base.service_data();
    let out = base.path().join("backup");
    let o = as_root(&[
        OsStr::new("backup"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    (data, out)
}

/// A root-only file the service uid would like root to overwrite.
fn root_secret(base: &Base) -> PathBuf {
    let p = base.path().join("root-secret");
    std::fs::write(&p, b"root:secret\n").unwrap();
    chmod(&p, 0o600);
    p
}

fn restore_as_root(data: &Path, from: &Path) -> Output {
    as_root(&[
        OsStr::new("restore"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--from"),
        from.as_os_str(),
    ])
}

#[test]
fn restore_as_root_never_writes_through_a_planted_staging_link() {
    let Some(base) = Base::new() else { return };
    let (data, backup) = service_data_with_backup(&base);
    let secret = root_secret(&base);
    // The review's example: the service uid plants the staging names.
    for f in [".memory.db.restore", ".audit.db.restore"] {
        symlink(&secret, data.join(f)).unwrap();
        std::os::unix::fs::lchown(data.join(f), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let o = restore_as_root(&data, &backup);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&secret).unwrap(), b"root:secret\n");
    assert_eq!((mode(&secret), owner(&secret)), (0o600, 0));
    for f in ["memory.db", "audit.db"] {
        let p = data.join(f);
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_file(), "{f} is a regular file");
        // The service can open what root restored.
        assert_eq!((mode(&p), owner(&p)), (0o600, NOBODY), "{f}");
    }
    assert!(!data.join(".memory.db.restore").exists());
    let o = as_nobody(&[
        OsStr::new("verify"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn root_refuses_a_data_dir_whose_databases_are_links() {
    let Some(base) = Base::new() else { return };
    let (data, backup) = service_data_with_backup(&base);
    let secret = root_secret(&base);
    // The live database, or SQLite's WAL beside it, swapped for a link by the service uid.
    for (name, cmds) in [
        (
            "memory.db",
            vec!["restore", "keys", "reseal", "verify", "backup"],
        ),
        ("audit.db-wal", vec!["restore", "keys", "review", "backup"]),
        ("keyring.toml", vec!["restore", "keys", "verify"]),
    ] {
        let real = data.join(format!("{name}.real"));
        if std::fs::rename(data.join(name), &real).is_err() {
            std::fs::write(&real, b"").unwrap();
            chmod(&real, 0o600);
        }
        symlink(&secret, data.join(name)).unwrap();
        let before = snapshot(base.path());
        for cmd in cmds {
            let mut args: Vec<&OsStr> = vec![OsStr::new(cmd)];
            match cmd {
                "restore" => args.extend([OsStr::new("--from"), backup.as_os_str()]),
                "keys" => args.push(OsStr::new("rotate")),
                "review" => args.push(OsStr::new("list")),
                "backup" => args.extend([OsStr::new("--out"), OsStr::new("/nonexistent/x")]),
                _ => {}
            }
            args.extend([OsStr::new("--data-dir"), data.as_os_str()]);
            let o = as_root(&args);
            let t = text(&o);
            assert!(!o.status.success(), "{cmd} with {name} a link: {t}");
            assert!(
                t.contains(&format!("{}", data.join(name).display()))
                    && t.contains("symbolic link"),
                "{cmd}: {t}"
            );
            assert_eq!(
                snapshot(base.path()),
                before,
                "{cmd} with {name} a link changed files"
            );
        }
        std::fs::remove_file(data.join(name)).unwrap();
        std::fs::rename(&real, data.join(name)).unwrap();
    }
    assert_eq!(std::fs::read(&secret).unwrap(), b"root:secret\n");
}

#[test]
fn keys_rotate_as_root_leaves_a_keyring_the_service_can_read() {
    let Some(base) = Base::new() else { return };
    let data = base.service_data();
    let o = as_root(&[
        OsStr::new("keys"),
        OsStr::new("rotate"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let ring = data.join("keyring.toml");
    assert_eq!((mode(&ring), owner(&ring)), (0o600, NOBODY));
    let o = as_nobody(&[
        OsStr::new("keys"),
        OsStr::new("list"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(
        o.status.success() && text(&o).contains("e2 (active)"),
        "{}",
        text(&o)
    );
    // No temp file left behind; the keyring's lock file stays, and the service can take it.
    let lock = data.join(".keyring.toml.lock");
    assert_eq!((mode(&lock), owner(&lock)), (0o600, NOBODY));
    let names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".keyring.toml.lock")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_symlinked_data_dir_is_refused_by_init_serve_and_verify() {
    let dir = TestDir::new();
    let real = dir.tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    chmod(&real, 0o700);
    symlink(&real, dir.data()).unwrap();
    let before = snapshot(dir.tmp.path());
    for args in [vec!["init"], vec!["serve"], vec!["verify"]] {
        let o = dir.cli(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(t.contains("symbolic link"), "{args:?}: {t}");
    }
    assert_eq!(
        snapshot(dir.tmp.path()),
        before,
        "nothing created through the link"
    );
}

// ---- item 12: no database others can read ----

#[test]
fn a_group_or_world_readable_data_dir_is_refused_and_nothing_is_recreated() {
    let dir = TestDir::new();
    dir.init();
    // The review's example: memory.db gone, dir 0755. It used to come back 0644.
    std::fs::remove_file(dir.data().join("memory.db")).unwrap();
    chmod(&dir.data(), 0o755);
    let before = snapshot(dir.tmp.path());
    for args in [
        vec!["serve"],
        vec!["verify"],
        vec!["health"],
        vec!["metrics"],
        vec!["audit", "verify"],
        vec!["keys", "list"],
        vec!["purge"],
    ] {
        let o = dir.cli(&args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(
            t.contains("mode 0755") && t.contains("chmod 700"),
            "{args:?}: {t}"
        );
    }
    assert_eq!(snapshot(dir.tmp.path()), before);
    // Group-readable only is refused too.
    chmod(&dir.data(), 0o740);
    assert!(!dir.cli(&["serve"]).status.success());
    // Put right, a missing memory.db comes back 0600 whatever umask we were started with.
    chmod(&dir.data(), 0o700);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = dir.connect().await;
        c.store("x").await;
        c.close().await;
    });
    for f in ["memory.db", "memory.db-wal", "memory.db-shm"] {
        let p = dir.data().join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
}

#[test]
fn a_database_file_others_can_read_is_refused() {
    let dir = TestDir::new();
    dir.init();
    for (f, m) in [
        ("memory.db", 0o644),
        ("audit.db", 0o640),
        ("keyring.toml", 0o604),
    ] {
        let p = dir.data().join(f);
        chmod(&p, m);
        let before = snapshot(dir.tmp.path());
        for args in [vec!["serve"], vec!["verify"], vec!["audit", "head"]] {
            let o = dir.cli(&args);
            let t = text(&o);
            assert!(!o.status.success(), "{args:?} {f}: {t}");
            assert!(t.contains(&format!("mode {m:04o}")), "{args:?} {f}: {t}");
        }
        assert_eq!(snapshot(dir.tmp.path()), before);
        chmod(&p, 0o600);
    }
}

#[test]
fn an_auditor_reads_a_0644_copy_but_never_through_a_link() {
    let dir = TestDir::new();
    dir.init();
    let copy_dir = dir.tmp.path().join("handed");
    std::fs::create_dir(&copy_dir).unwrap();
    chmod(&copy_dir, 0o755);
    let copy = copy_dir.join("audit.db");
    std::fs::copy(dir.data().join("audit.db"), &copy).unwrap();
    chmod(&copy, 0o644);
    let run = |p: &Path| {
        Command::new(bin())
            .args(["audit", "verify", "--db"])
            .arg(p)
            .output()
            .unwrap()
    };
    let o = run(&copy);
    assert!(o.status.success(), "{}", text(&o));
    // A link to the live log (or anything else) is refused, and neither file changes.
    let link = copy_dir.join("link.db");
    symlink(dir.data().join("audit.db"), &link).unwrap();
    let before = snapshot(dir.tmp.path());
    let o = run(&link);
    assert!(
        !o.status.success() && text(&o).contains("symbolic link"),
        "{}",
        text(&o)
    );
    let dirlink = dir.tmp.path().join("handed-link");
    symlink(&copy_dir, &dirlink).unwrap();
    let o = run(&dirlink.join("audit.db"));
    assert!(
        !o.status.success() && text(&o).contains("symbolic link"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&dirlink).unwrap();
    assert_eq!(snapshot(dir.tmp.path()), before);
}

// ---- item 14: no backup others can reach ----

fn backup(dir: &TestDir, out: &Path) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(["backup", "--data-dir"])
        .arg(dir.data())
        .arg("--out")
        .arg(out);
    cmd.output().unwrap()
}

#[test]
fn a_new_backup_dir_is_0700_with_0600_files_whatever_the_umask() {
    let dir = TestDir::new();
    dir.init();
    let out = dir.tmp.path().join("b");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} backup --data-dir {} --out {}",
            bin(),
            dir.data().display(),
            out.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(&out), 0o700);
    for f in ["manifest.json", "memory.db", "audit.db"] {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        3,
        "no journal left"
    );
}

#[test]
fn an_existing_out_dir_others_can_reach_is_refused_untouched() {
    let dir = TestDir::new();
    dir.init();
    // The review's example: an empty 0777 directory. Then 0755, and another uid's 0700.
    for (m, uid, says) in [
        (0o777, 0, "mode 0777"),
        (0o755, 0, "mode 0755"),
        (0o700, NOBODY, "owned by uid 65534"),
    ] {
        let out = dir.tmp.path().join(format!("out-{m:o}-{uid}"));
        std::fs::create_dir(&out).unwrap();
        chmod(&out, m);
        chown(&out, Some(uid), Some(uid)).unwrap();
        let before = snapshot(dir.tmp.path());
        let o = backup(&dir, &out);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(says), "{t}");
        assert_eq!(snapshot(dir.tmp.path()), before, "{says}: nothing written");
    }
    // An empty 0700 directory of ours is what we would have made: accepted.
    let out = dir.tmp.path().join("ours");
    std::fs::create_dir(&out).unwrap();
    chmod(&out, 0o700);
    let o = backup(&dir, &out);
    assert!(o.status.success(), "{}", text(&o));
    let o = backup(&dir, &out);
    assert!(
        !o.status.success() && text(&o).contains("not empty"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_symlinked_out_is_refused_and_its_target_untouched() {
    let dir = TestDir::new();
    dir.init();
    for target_mode in [0o700, 0o777] {
        let target = dir.tmp.path().join(format!("elsewhere-{target_mode:o}"));
        std::fs::create_dir(&target).unwrap();
        chmod(&target, target_mode);
        let link = dir.tmp.path().join(format!("out-link-{target_mode:o}"));
        symlink(&target, &link).unwrap();
        let before = snapshot(dir.tmp.path());
        let o = backup(&dir, &link);
        let t = text(&o);
        assert!(!o.status.success() && t.contains("symbolic link"), "{t}");
        assert_eq!(snapshot(dir.tmp.path()), before);
    }
    // A dangling link is not created through either.
    let link = dir.tmp.path().join("dangling");
    symlink(dir.tmp.path().join("nowhere"), &link).unwrap();
    let o = backup(&dir, &link);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(!dir.tmp.path().join("nowhere").exists());
}

/// Issue 18 item 10: root, the operator, owning the policy is the intended setup, so the
/// root-run commands that read it (`health`, `purge`) accept a root-owned 0644 policy in
/// root-owned 0755 directories.
#[test]
fn root_run_health_and_purge_accept_the_root_owned_policy() {
    let Some(base) = Base::new() else { return };
    let etc = base.dir("etc", 0, 0o755);
    let policy = base.policy("etc/policy.toml", 0, 0o644);
    assert!(etc.join("policy.toml").exists());
    let data = base.dir("rootdata", 0, 0o700);
    let init = Command::new(bin())
        .arg("init")
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    for cmd in ["health", "purge"] {
        let out = Command::new(bin())
            .arg(cmd)
            .arg("--data-dir")
            .arg(&data)
            .arg("--policy")
            .arg(&policy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", text(&out));
        assert!(!text(&out).contains("writable"), "{cmd}: {}", text(&out));
    }
}
