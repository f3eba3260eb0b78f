//! The shipped units, run the way systemd would run them — on a machine where systemd is not
//! PID 1. For every service in deploy/ with a `SystemCallFilter=`, this builds the unit's own
//! syscall filter (its `SystemCallFilter=` lines in order, groups expanded by
//! `systemd-analyze syscall-filter`, allow-list then `~` deny-list semantics, answering
//! `SystemCallErrorNumber=`, native architecture only) as a seccomp BPF program with seccompiler,
//! and applies it, with no_new_privs, to the unit's ExecStart= commands, as a service uid, with
//! the file system read-only except the unit's writable paths (`ProtectSystem=strict`). Each
//! unit must then start and do its job: `serve --require-sandbox` a real MCP store + get, each
//! timer its backup, purge, head or metrics. A filter that forgets a syscall a command needs (the
//! landlock calls, which systemd 252 puts in no group) fails here instead of in production.
#![cfg(target_os = "linux")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

/// The uid (and gid) the units' `User=memwarden` stands for here.
const SVC: u32 = 61_873;
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const LANDLOCK: [&str; 3] = [
    "landlock_create_ruleset",
    "landlock_add_rule",
    "landlock_restrict_self",
];

fn skip() -> Option<&'static str> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Some("needs root (mount namespace, service uid)");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("needs systemd-analyze");
    }
    None
}

// ---- unit files -------------------------------------------------------------------------

/// The `[Service]` assignments of a unit file, in order.
#[derive(Clone)]
struct Unit {
    name: String,
    service: Vec<(String, String)>,
}

impl Unit {
    fn load(name: &str) -> Self {
        let text = std::fs::read_to_string(Path::new(DEPLOY).join(name)).expect("read unit");
        Self::parse(name, &text)
    }

    fn parse(name: &str, text: &str) -> Self {
        let mut section = String::new();
        let mut service = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{name}: continuation lines are not parsed here"
            );
            if section == "[Service]" {
                let (k, v) = line.split_once('=').expect("key=value");
                service.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Self {
            name: name.to_string(),
            service,
        }
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn last(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }

    fn with(mut self, key: &str, value: &str) -> Self {
        self.service.push((key.into(), value.into()));
        self
    }

    fn without(mut self, key: &str, value: &str) -> Self {
        self.service.retain(|(k, v)| !(k == key && v == value));
        self
    }

    /// Every service unit shipped in deploy/.
    fn shipped() -> Vec<Unit> {
        let mut names: Vec<String> = std::fs::read_dir(DEPLOY)
            .expect("deploy/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".service"))
            .collect();
        names.sort();
        names.iter().map(|n| Unit::load(n)).collect()
    }
}

// ---- the syscall filter, as systemd builds it -------------------------------------------

/// The syscalls of a `@group`, nested groups expanded (systemd's own tables, through
/// `systemd-analyze syscall-filter`).
fn group(name: &str) -> BTreeSet<String> {
    static CACHE: Mutex<Option<HashMap<String, BTreeSet<String>>>> = Mutex::new(None);
    if let Some(hit) = CACHE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(name)
    {
        return hit.clone();
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", name])
        .output()
        .expect("systemd-analyze syscall-filter");
    assert!(out.status.success(), "unknown syscall group {name}");
    let mut set = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let w = line.trim();
        if w.is_empty() || w.starts_with('#') {
            continue;
        }
        if w.starts_with('@') {
            set.extend(group(w));
        } else {
            set.insert(w.to_string());
        }
    }
    CACHE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(name.to_string(), set.clone());
    set
}

fn expand(token: &str) -> BTreeSet<String> {
    // `name:errno` picks that name's errno; for allowing or denying, the name is what counts.
    let name = token.split(':').next().unwrap_or(token);
    if name.starts_with('@') {
        group(name)
    } else {
        BTreeSet::from([name.to_string()])
    }
}

/// A unit's syscall filter: an allow list (everything else refused) or a deny list.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    allow_list: bool,
    names: BTreeSet<String>,
    /// `None`: refused calls kill the process (no `SystemCallErrorNumber=`).
    errno: Option<u32>,
    /// `RestrictAddressFamilies=` (systemd enforces it in the same seccomp filter): the
    /// families `socket()` may create; `None` when unrestricted.
    families: Option<Vec<u32>>,
}

/// Folds the unit's `SystemCallFilter=` lines in order, as systemd's load-fragment.c does: the
/// first line decides the kind (allow list, with `@default` added; or `~` deny list), then a
/// line of the same kind adds names and a line of the other kind removes them; an empty
/// assignment resets.
fn filter_of(unit: &Unit) -> Option<Filter> {
    let mut state: Option<(bool, BTreeSet<String>)> = None;
    for value in unit.all("SystemCallFilter") {
        if value.is_empty() {
            state = None;
            continue;
        }
        let (invert, words) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let (allow_list, set) = state.get_or_insert_with(|| {
            if invert {
                (false, BTreeSet::new())
            } else {
                (true, group("@default"))
            }
        });
        for token in words.split_whitespace() {
            let names = expand(token);
            if invert == *allow_list {
                set.retain(|n| !names.contains(n));
            } else {
                set.extend(names);
            }
        }
    }
    let (allow_list, names) = state?;
    assert_eq!(
        unit.last("SystemCallArchitectures"),
        Some("native"),
        "{}: the filter built here checks the native architecture only",
        unit.name
    );
    let errno = unit.last("SystemCallErrorNumber").map(|e| match e {
        "EPERM" => libc::EPERM as u32,
        "EACCES" => libc::EACCES as u32,
        "ENOSYS" => libc::ENOSYS as u32,
        other => panic!(
            "{}: SystemCallErrorNumber={other} not mapped here",
            unit.name
        ),
    });
    let families = unit.last("RestrictAddressFamilies").map(|v| {
        assert!(
            allow_list,
            "{}: families only with an allow list here",
            unit.name
        );
        v.split_whitespace()
            .map(|f| match f {
                "AF_UNIX" => libc::AF_UNIX as u32,
                "AF_INET" => libc::AF_INET as u32,
                "AF_INET6" => libc::AF_INET6 as u32,
                other => panic!("{}: {other} not mapped here", unit.name),
            })
            .collect()
    });
    Some(Filter {
        allow_list,
        names,
        errno,
        families,
    })
}

fn arch() -> seccompiler::TargetArch {
    std::env::consts::ARCH
        .try_into()
        .expect("an arch seccompiler knows")
}

/// Whether seccompiler knows `name` on this architecture. systemd silently skips names its
/// groups list for other architectures (`_llseek`, `clock_gettime64`, …); so do we — a skipped
/// name is refused, so the filter here is never looser than the unit's.
fn known(name: &str) -> bool {
    let j = json!({"t": {"mismatch_action": "kill_process", "match_action": "allow", "filter": [{"syscall": name}]}});
    seccompiler::compile_from_json(j.to_string().as_bytes(), arch()).is_ok()
}

impl Filter {
    fn program(&self) -> seccompiler::BpfProgram {
        let refuse = match self.errno {
            Some(e) => json!({"errno": e}),
            None => json!("kill_process"),
        };
        let (mismatch, matched) = if self.allow_list {
            (refuse, json!("allow"))
        } else {
            (json!("allow"), refuse)
        };
        let known: Vec<&String> = self.names.iter().filter(|n| known(n)).collect();
        assert!(
            known.len() * 10 > self.names.len() * 7,
            "seccompiler resolves only {} of {} names",
            known.len(),
            self.names.len()
        );
        let rules: Vec<Value> = known
            .into_iter()
            .flat_map(|n| match (&self.families, n.as_str()) {
                // socket() only for the allowed families; anything else is refused.
                (Some(fams), "socket") => fams
                    .iter()
                    .map(|f| json!({"syscall": "socket", "args": [{"index": 0, "type": "dword", "op": "eq", "val": f}]}))
                    .collect(),
                _ => vec![json!({"syscall": n})],
            })
            .collect();
        let j = json!({"main": {"mismatch_action": mismatch, "match_action": matched, "filter": rules}});
        let mut map =
            seccompiler::compile_from_json(j.to_string().as_bytes(), arch()).expect("compile");
        map.remove("main").expect("main")
    }
}

// ---- a root for the install -------------------------------------------------------------

/// A root-owned tree laid out like the install: /etc/memwarden, /var/lib/memwarden, …
struct Root {
    tmp: tempfile::TempDir,
}

impl Root {
    fn new() -> Self {
        // Under CARGO_TARGET_TMPDIR, root-owned up to `/`: the policy checks accept it there.
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        chmod(tmp.path(), 0o755);
        let r = Self { tmp };
        for (dir, mode, owner) in [
            ("etc/memwarden", 0o755, 0),
            ("creds", 0o700, SVC),
            ("var/lib/memwarden", 0o700, SVC),
            ("var/lib/memwarden-metrics", 0o755, SVC),
            ("var/backups/memwarden", 0o700, SVC),
            ("var/log/memwarden", 0o750, SVC),
        ] {
            let p = r.path(dir);
            std::fs::create_dir_all(&p).expect("mkdir");
            let mut up = p.clone();
            while up != r.tmp.path() {
                chmod(&up, 0o755);
                up.pop();
            }
            chmod(&p, mode);
            chown(&p, owner);
        }
        let mut policy =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/strict.toml"))
                .expect("strict policy");
        // The test connects as root (the socket pair's creator).
        policy.push_str("\n[principals.ci]\nuid = 0\ntools = [\"memory_store\", \"memory_get\"]\nnamespaces = { notes = \"rw\" }\ndefault_namespace = \"notes\"\n");
        std::fs::write(r.path("etc/memwarden/policy.toml"), policy).expect("policy");
        chmod(&r.path("etc/memwarden/policy.toml"), 0o644);
        // install.sh's way: init elsewhere, keyring to /etc, databases to the state dir.
        let init = tempfile::tempdir().expect("tempdir");
        let out = Command::new(common::bin())
            .args(["init", "--data-dir"])
            .arg(init.path().join("d"))
            .output()
            .expect("init");
        assert!(out.status.success(), "{out:?}");
        for (from, to) in [
            ("keyring.toml", "etc/memwarden/keyring.toml"),
            ("keyring.toml", "creds/keyring"),
            ("memory.db", "var/lib/memwarden/memory.db"),
            ("audit.db", "var/lib/memwarden/audit.db"),
        ] {
            std::fs::copy(init.path().join("d").join(from), r.path(to)).expect("copy");
            chmod(&r.path(to), 0o600);
            if !to.starts_with("etc/") {
                chown(&r.path(to), SVC);
            }
        }
        r
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel.trim_start_matches('/'))
    }

    /// An absolute path of the install, inside this root (the binary is the one under test).
    fn map(&self, word: &str) -> String {
        let root = self.tmp.path().display().to_string();
        word.replace("/usr/local/bin/memwarden", common::bin())
            .replace("/etc/memwarden", &format!("{root}/etc/memwarden"))
            .replace("/var/", &format!("{root}/var/"))
    }

    fn backups(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path("var/backups/memwarden"))
            .expect("backups")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).expect("chown");
}

// ---- running a command as the unit would ------------------------------------------------

/// systemd's command-line rules, as far as these units use them: `%%`, quotes, `$$`,
/// `${NAME}` from Environment=, and the `-@:+!` prefixes.
fn split_exec(line: &str, env: &HashMap<String, String>) -> Vec<String> {
    let line = line.trim_start_matches(['-', '@', ':', '+', '!']);
    assert!(
        !line.replace("%%", "").contains('%'),
        "specifier not handled here: {line}"
    );
    let line = line.replace("%%", "%");
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| {
            let mut out = String::new();
            let mut rest = w.as_str();
            while let Some(i) = rest.find('$') {
                out.push_str(&rest[..i]);
                rest = &rest[i..];
                if let Some(r) = rest.strip_prefix("$$") {
                    out.push('$');
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("${") {
                    let end = r.find('}').expect("closing brace");
                    out.push_str(env.get(&r[..end]).map(String::as_str).unwrap_or(""));
                    rest = &r[end + 1..];
                } else {
                    out.push('$');
                    rest = &rest[1..];
                }
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// What a command run by the unit gets: its filter, its environment, its writable paths.
struct Exec {
    program: seccompiler::BpfProgram,
    env: HashMap<String, String>,
    writable: Vec<CString>,
    root: CString,
}

impl Exec {
    fn new(unit: &Unit, root: &Root) -> Self {
        let filter = filter_of(unit).expect("a unit with SystemCallFilter=");
        assert_eq!(unit.last("User"), Some("memwarden"), "{}", unit.name);
        assert_eq!(unit.last("NoNewPrivileges"), Some("yes"), "{}", unit.name);
        assert_eq!(unit.last("ProtectSystem"), Some("strict"), "{}", unit.name);
        let mut env = HashMap::from([(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )]);
        for e in unit.all("Environment") {
            let (k, v) = e.split_once('=').expect("NAME=value");
            env.insert(k.to_string(), v.to_string());
        }
        if !unit.all("LoadCredential").is_empty() {
            env.insert(
                "CREDENTIALS_DIRECTORY".into(),
                root.path("creds").display().to_string(),
            );
        }
        // ProtectSystem=strict: only these stay writable.
        let mut writable = Vec::new();
        for d in unit.all("StateDirectory") {
            writable.push(root.path(&format!("var/lib/{d}")));
        }
        for d in unit.all("LogsDirectory") {
            writable.push(root.path(&format!("var/log/{d}")));
        }
        for v in unit.all("ReadWritePaths") {
            for p in v.split_whitespace() {
                writable.push(PathBuf::from(root.map(p.trim_start_matches(['-', '+']))));
            }
        }
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("path");
        Self {
            program: filter.program(),
            env,
            writable: writable.iter().map(|p| c(p)).collect(),
            root: c(root.tmp.path()),
        }
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().envs(&self.env);
        let program = self.program.clone();
        let writable = self.writable.clone();
        let root = self.root.clone();
        // SAFETY: the closure runs in the forked child before exec and only makes raw
        // syscalls on data prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                let null = std::ptr::null::<libc::c_char>();
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for w in &writable {
                    check(libc::mount(
                        w.as_ptr(),
                        w.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                }
                check(libc::mount(
                    root.as_ptr(),
                    root.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    null,
                    root.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(SVC, SVC, SVC))?;
                check(libc::setresuid(SVC, SVC, SVC))?;
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                seccompiler::apply_filter(&program).map_err(std::io::Error::other)
            });
        }
        cmd
    }

    fn run(&self, argv: &[String]) -> Output {
        self.command(argv)
            .stdin(Stdio::null())
            .output()
            .expect("spawn")
    }
}

/// Runs the unit's ExecStart= then ExecStartPost= lines as systemd would; stops at the first
/// failure (systemd does too). Returns every command's output.
fn run_unit(unit: &Unit, root: &Root) -> Vec<Output> {
    let exec = Exec::new(unit, root);
    let mut outs = Vec::new();
    for key in ["ExecStart", "ExecStartPost"] {
        for line in unit.all(key) {
            let argv: Vec<String> = split_exec(line, &exec.env)
                .iter()
                .map(|w| root.map(w))
                .collect();
            let out = exec.run(&argv);
            let failed = !out.status.success();
            outs.push(out);
            if failed {
                return outs;
            }
        }
    }
    outs
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn all_ok(unit: &Unit, outs: &[Output]) -> String {
    for o in outs {
        assert!(o.status.success(), "{}: {}", unit.name, text(o));
    }
    outs.iter()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect()
}

// ---- the session ------------------------------------------------------------------------

/// One session of the session unit: stdin and stdout are one end of a unix socket pair, as
/// with `StandardInput=socket`. Stores a memory and gets it back over MCP.
fn session(unit: &Unit, root: &Root) -> Result<String, String> {
    let exec = Exec::new(unit, root);
    let line = unit.last("ExecStart").expect("ExecStart");
    let argv: Vec<String> = split_exec(line, &exec.env)
        .iter()
        .map(|w| root.map(w))
        .collect();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let theirs_out: OwnedFd = theirs.try_clone().expect("dup").into();
    let child = exec
        .command(&argv)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(theirs_out))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    ours.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reader = BufReader::new(ours.try_clone().expect("dup"));
    let mut w = ours;
    let mut exchange = |msg: Value| -> Option<Value> {
        writeln!(w, "{msg}").ok()?;
        if msg.get("id").is_none() {
            return Some(Value::Null);
        }
        let mut l = String::new();
        match reader.read_line(&mut l) {
            Ok(n) if n > 0 => serde_json::from_str(&l).ok(),
            _ => None,
        }
    };
    let result = (|| {
        let init = exchange(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"units","version":"0"}}}),
        )?;
        (init["result"]["serverInfo"]["name"] == "memwarden").then_some(())?;
        exchange(json!({"jsonrpc":"2.0","method":"notifications/initialized"}))?;
        let stored = exchange(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"memory_store","arguments":{"content":"the unit's own filter lets this through"}}}),
        )?;
        let id = stored["result"]["structuredContent"]["id"]
            .as_str()?
            .to_string();
        let got = exchange(
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"memory_get","arguments":{"id":id}}}),
        )?;
        got["result"]["structuredContent"]
            .to_string()
            .contains("the unit's own filter lets this through")
            .then_some(id)
    })();
    // EOF for the server (the reader holds a dup of this socket: shut it, not just close it).
    let _ = w.shutdown(std::net::Shutdown::Both);
    drop((w, reader));
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match result {
        Some(id) if out.status.success() && stderr.contains("landlock: fully enforced") => Ok(id),
        _ => Err(format!(
            "exit code {:?}; stderr: {stderr}",
            out.status.code()
        )),
    }
}

/// The HTTP daemon unit under its own filter, started the way memwarden-http.socket starts it:
/// a listening socket as fd 3 with LISTEN_FDS and LISTEN_PID (through systemd-socket-activate,
/// which forks and execs the unit's command on the first connection), a token for the `ci`
/// principal among its credentials. One HTTP session stores a memory and gets it back.
fn http_daemon(unit: &Unit, root: &Root) -> Result<(), String> {
    let tokens = root.path("creds/tokens");
    let issued = Command::new(common::bin())
        .args(["token", "issue", "ci", "--tokens-file"])
        .arg(&tokens)
        .output()
        .expect("token issue");
    assert!(issued.status.success(), "{}", text(&issued));
    let token = String::from_utf8_lossy(&issued.stdout).trim().to_string();
    chown(&tokens, SVC);
    let exec = Exec::new(unit, root);
    // What systemd does for memwarden-http.socket: it binds, the service gets the socket as
    // fd 3 with LISTEN_FDS=1 and LISTEN_PID=its own pid (set here by the shell that execs).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".into(),
        "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"".into(),
    ];
    let line = unit.last("ExecStart").expect("ExecStart");
    argv.extend(split_exec(line, &exec.env).iter().map(|w| root.map(w)));
    let mut cmd = exec.command(&argv);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    // SAFETY: dup2 is async-signal-safe; it runs in the child after fork (and after the
    // unit's own filter, which allows it), on a descriptor opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve-http");
    let http = common::http::Http { addr: addr.clone() };
    let result = std::panic::catch_unwind(|| {
        let id = http.open_session(&token);
        let stored = http.call(
            &token,
            &id,
            1,
            "memory_store",
            json!({"content": "over http, under the unit's filter"}),
        );
        let mid = stored["result"]["structuredContent"]["id"]
            .as_str()
            .expect("id")
            .to_string();
        let got = http.call(&token, &id, 2, "memory_get", json!({"id": mid}));
        got["result"]["structuredContent"]["memory"]["content"]
            == "over http, under the unit's filter"
    });
    drop(listener);
    // SAFETY: kill has no memory preconditions; the group is the one spawned above.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match result {
        Ok(true)
            if stderr.contains("landlock: fully enforced")
                && stderr.contains("\"reason\":\"shutdown\"") =>
        {
            Ok(())
        }
        other => Err(format!("session {other:?}; stderr: {stderr}")),
    }
}

// ---- the tests --------------------------------------------------------------------------

#[test]
fn every_unit_starts_and_works_under_its_own_syscall_filter() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = Root::new();
    let units = Unit::shipped();
    // The session first: it leaves a memory for the jobs to count, back up and check.
    let serve = units
        .iter()
        .find(|u| u.name == "memwarden@.service")
        .expect("session unit");
    let id = session(serve, &root).unwrap_or_else(|e| panic!("memwarden@.service: {e}"));
    let mut seen = vec![serve.name.clone()];
    // Then the HTTP daemon, which leaves a second one.
    let http = units
        .iter()
        .find(|u| u.name == "memwarden-http.service")
        .expect("HTTP unit");
    http_daemon(http, &root).unwrap_or_else(|e| panic!("{}: {e}", http.name));
    seen.push(http.name.clone());
    for unit in &units {
        if filter_of(unit).is_none() {
            panic!("{}: every service needs a SystemCallFilter=", unit.name);
        }
        if unit.name == serve.name {
            continue;
        }
        if unit.name == "memwarden-http.service" {
            continue;
        }
        let outs = run_unit(unit, &root);
        let stdout = all_ok(unit, &outs);
        match unit.name.as_str() {
            "memwarden-audit-head.service" => {
                let (seq, hash) = stdout.trim().split_once(':').expect("SEQ:HASH");
                assert!(
                    seq.parse::<u64>().unwrap() > 0 && hash.len() == 64,
                    "{stdout}"
                );
            }
            "memwarden-metrics.service" => {
                let prom =
                    std::fs::read_to_string(root.path("var/lib/memwarden-metrics/memwarden.prom"))
                        .expect("metrics file");
                assert!(
                    prom.contains("memwarden_entries{status=\"active\"} 2"),
                    "{prom}"
                );
            }
            "memwarden-backup.service" => {
                let b = root.backups();
                assert_eq!(b.len(), 1, "{b:?}");
                let manifest = std::fs::read_to_string(
                    root.path(&format!("var/backups/memwarden/{}/manifest.json", b[0])),
                )
                .expect("manifest");
                assert!(manifest.contains("\"entries\""), "{manifest}");
            }
            "memwarden-purge.service" | "memwarden-maintain.service" => {}
            other => panic!("{other}: a new unit needs its check here"),
        }
        seen.push(unit.name.clone());
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    // What the session stored survived every job, and the data dir still verifies.
    let out = Command::new(common::bin())
        .args(["verify", "--data-dir"])
        .arg(root.path("var/lib/memwarden"))
        .args(["--keyring-file"])
        .arg(root.path("etc/memwarden/keyring.toml"))
        .output()
        .expect("verify");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!id.is_empty());
}

#[test]
fn a_unit_without_the_landlock_syscalls_is_refused_and_the_refusal_names_seccomp() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = Root::new();
    let shipped = Unit::load("memwarden@.service");
    let line = LANDLOCK.join(" ");
    assert!(
        shipped.all("SystemCallFilter").contains(&line.as_str()),
        "the session unit allows the landlock syscalls by name"
    );
    // The unit as it shipped before (systemd 252 groups have no landlock call); and variants:
    // one landlock call missing, or the calls removed again by a later `~` line.
    let variants = [
        shipped.clone().without("SystemCallFilter", &line),
        shipped.clone().without("SystemCallFilter", &line).with(
            "SystemCallFilter",
            "landlock_create_ruleset landlock_add_rule",
        ),
        shipped
            .clone()
            .with("SystemCallFilter", "~landlock_create_ruleset"),
    ];
    for (i, unit) in variants.iter().enumerate() {
        let err = session(unit, &root).expect_err("refused");
        assert!(err.contains("exit code Some(2)"), "variant {i}: {err}");
        assert!(err.contains("seccomp filter"), "variant {i}: {err}");
        if i != 1 {
            assert!(err.contains("--require-sandbox"), "variant {i}: {err}");
            // The version probe itself is refused: named as a filter, not as an old kernel.
            assert!(
                err.contains("blocked by a seccomp filter") && err.contains("EPERM"),
                "variant {i}: {err}"
            );
        }
    }
    // Nothing was served: the store holds nothing.
    let out = Command::new(common::bin())
        .args(["metrics", "--data-dir"])
        .arg(root.path("var/lib/memwarden"))
        .output()
        .expect("metrics");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("memwarden_entries{status=\"active\"}"));
}

#[test]
fn sandbox_check_names_the_filter_that_blocks_landlock() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = Root::new();
    let unit = Unit::load("memwarden@.service");
    // sandbox-check opens a loopback TCP listener as the peer it must not reach: no unit runs
    // it, so the address-family restriction is left out here.
    let unit = unit.without("RestrictAddressFamilies", "AF_UNIX");
    let blocked = unit
        .clone()
        .without("SystemCallFilter", &LANDLOCK.join(" "));
    let argv = |_: &Unit| {
        vec![
            common::bin().to_string(),
            "sandbox-check".into(),
            "--data-dir".into(),
            root.path("var/lib/memwarden").display().to_string(),
        ]
    };
    let out = Exec::new(&unit, &root).run(&argv(&unit));
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["sandbox"], "landlock: fully enforced");
    let out = Exec::new(&blocked, &root).run(&argv(&blocked));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["sandbox"], "landlock: not enforced");
    assert!(
        report["landlock"]
            .as_str()
            .unwrap()
            .contains("blocked by a seccomp filter"),
        "{report}"
    );
}

#[test]
fn the_filter_built_here_follows_systemd_semantics_and_bites() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let u = |lines: &str| {
        Unit::parse(
            "t.service",
            &format!("[Service]\nSystemCallArchitectures=native\n{lines}"),
        )
    };
    // Allow list: @default comes with it; a later `~` removes; a later plain line adds back.
    let f = filter_of(&u("SystemCallFilter=@system-service\nSystemCallFilter=~@resources\nSystemCallFilter=setrlimit")).unwrap();
    assert!(f.allow_list && f.errno.is_none());
    assert!(f.names.contains("brk") && f.names.contains("setrlimit"));
    assert!(!f.names.contains("setpriority") && !f.names.contains("landlock_create_ruleset"));
    // Deny list: the first line is `~`; a later plain line takes a name back out of it.
    let f = filter_of(&u("SystemCallFilter=~@mount\nSystemCallFilter=mount")).unwrap();
    assert!(!f.allow_list && f.names.contains("umount2") && !f.names.contains("mount"));
    // An empty assignment resets.
    assert!(filter_of(&u("SystemCallFilter=@basic-io\nSystemCallFilter=")).is_none());

    // The session unit's `~@resources` really refuses, with EPERM: setpriority, in a shell.
    let root = Root::new();
    let unit = Unit::load("memwarden@.service");
    let sh = |cmd: &str| vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()];
    let out = Exec::new(&unit, &root).run(&sh("nice -n 5 true; echo ran"));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("lowered"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted"),
        "{}",
        text(&out)
    );
    // …and the data dir is read-only for a job with no StateDirectory=, writable for purge.
    let head = Unit::load("memwarden-audit-head.service");
    let touch = sh(&format!(
        "touch {}/x",
        root.path("var/lib/memwarden").display()
    ));
    let out = Exec::new(&head, &root).run(&touch);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only"),
        "{}",
        text(&out)
    );
    let out = Exec::new(&Unit::load("memwarden-purge.service"), &root).run(&touch);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn backups_are_pruned_to_the_retention_setting() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = Root::new();
    let dir = root.path("var/backups/memwarden");
    let olds = [
        "20200101T000000Z",
        "20200102T000000Z",
        "20200103T000000Z",
        "20200104T000000Z",
    ];
    for o in olds {
        std::fs::create_dir(dir.join(o)).unwrap();
        std::fs::write(dir.join(o).join("manifest.json"), "{}").unwrap();
    }
    // Not a backup's name: never touched. A link named like a backup: removed at most, its
    // target never.
    std::fs::create_dir(dir.join("operator-copy")).unwrap();
    let victim = root.path("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("20190101T000000Z")).unwrap();
    for p in [dir.join("operator-copy"), dir.clone()] {
        chown(&p, SVC);
    }
    for o in olds {
        chown(&dir.join(o), SVC);
    }

    // The shipped default keeps 14: nothing of these goes.
    let unit = Unit::load("memwarden-backup.service");
    assert_eq!(unit.last("Environment"), Some("MEMWARDEN_BACKUP_KEEP=14"));
    all_ok(&unit, &run_unit(&unit, &root));
    assert_eq!(root.backups().len(), 7, "{:?}", root.backups());

    // An operator's drop-in keeps 3: the newest three backups stay, exactly.
    let three = unit.clone().with("Environment", "MEMWARDEN_BACKUP_KEEP=3");
    std::thread::sleep(Duration::from_millis(1100)); // a new second, a new backup name
    all_ok(&three, &run_unit(&three, &root));
    let left = root.backups();
    let dated: Vec<&String> = left
        .iter()
        .filter(|n| n.ends_with('Z') && !dir.join(n).is_symlink())
        .collect();
    let newest: Vec<&String> = dated.iter().rev().take(3).copied().collect();
    assert_eq!(dated.len(), 3, "{left:?}");
    assert_eq!(newest[2], "20200104T000000Z", "{left:?}");
    assert!(left.contains(&"operator-copy".to_string()), "{left:?}");
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "precious"
    );
    assert_eq!(
        left.len(),
        5,
        "3 backups, the link, operator-copy: {left:?}"
    );

    // A setting that is not a whole number >= 1 prunes nothing and fails the unit.
    for bad in ["0", "abc", "-1"] {
        let before = root.backups();
        let u = unit
            .clone()
            .with("Environment", &format!("MEMWARDEN_BACKUP_KEEP={bad}"));
        std::thread::sleep(Duration::from_millis(1100));
        let outs = run_unit(&u, &root);
        let last = outs.last().unwrap();
        assert!(!last.status.success(), "KEEP={bad}: {}", text(last));
        let after = root.backups();
        assert!(
            before.iter().all(|b| after.contains(b)),
            "KEEP={bad}: {before:?} -> {after:?}"
        );
    }
}

#[test]
fn metrics_out_never_writes_through_a_planted_link() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = Root::new();
    let dir = root.path("var/lib/memwarden-metrics");
    let victim = root.path("var/lib/memwarden/audit.db");
    let before = std::fs::read(&victim).unwrap();
    // Links at the final name, at the old shell's temp name and at likely temp names: the unit
    // (as its service uid, under its filter) replaces the final one and touches no target.
    for name in [
        "memwarden.prom",
        "memwarden.prom.tmp",
        ".memwarden.prom.tmp",
    ] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        std::os::unix::fs::lchown(dir.join(name), Some(SVC), Some(SVC)).unwrap();
    }
    let unit = Unit::load("memwarden-metrics.service");
    all_ok(&unit, &run_unit(&unit, &root));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "audit.db unchanged"
    );
    let meta = std::fs::symlink_metadata(dir.join("memwarden.prom")).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by a file"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let prom = std::fs::read_to_string(dir.join("memwarden.prom")).unwrap();
    assert!(prom.contains("# TYPE memwarden_entries gauge"), "{prom}");
    // A hard link to the victim at the final name: renamed over, the victim keeps its bytes.
    std::fs::remove_file(dir.join("memwarden.prom")).unwrap();
    let other = root.path("var/lib/memwarden-metrics/hard-victim");
    std::fs::write(&other, "kept").unwrap();
    std::fs::hard_link(&other, dir.join("memwarden.prom")).unwrap();
    all_ok(&unit, &run_unit(&unit, &root));
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "kept");
    // The directory itself a link: refused, nothing written.
    let out = Command::new(common::bin())
        .args(["metrics", "--data-dir"])
        .arg(root.path("var/lib/memwarden"))
        .arg("--out")
        .arg(root.path("linked/memwarden.prom"))
        .output()
        .unwrap();
    std::os::unix::fs::symlink(root.path("etc/memwarden"), root.path("linked")).unwrap();
    let out2 = Command::new(common::bin())
        .args(["metrics", "--data-dir"])
        .arg(root.path("var/lib/memwarden"))
        .arg("--out")
        .arg(root.path("linked/memwarden.prom"))
        .output()
        .unwrap();
    assert!(!out.status.success() && !out2.status.success());
    assert!(
        String::from_utf8_lossy(&out2.stderr).contains("symbolic link"),
        "{}",
        text(&out2)
    );
    assert!(!root.path("etc/memwarden/memwarden.prom").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") && n.len() > ".memwarden.prom.tmp".len())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The PostgreSQL variant (install.sh --store postgres): the session unit and the jobs that
/// open the store, each with deploy/postgres/50-postgres.conf read after it as systemd reads a
/// drop-in, run under their own filter as the service uid, with the `database` credential
/// naming a real cluster's socket. The memory lands in PostgreSQL, not in the state dir, and
/// every job does its work there.
#[test]
fn the_postgresql_drop_in_serves_and_runs_the_jobs_from_the_database() {
    if let Some(why) = skip() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(pg) = common::postgres::Ready::start() else {
        return;
    };
    let root = Root::new();
    let creds = root.path("creds/database");
    std::fs::copy(&pg.app, &creds).expect("database credential");
    chmod(&creds, 0o600);
    chown(&creds, SVC);
    let drop_in = std::fs::read_to_string(Path::new(DEPLOY).join("postgres/50-postgres.conf"))
        .expect("drop-in");
    let with_drop_in = |name: &str| {
        let unit = std::fs::read_to_string(Path::new(DEPLOY).join(name)).expect("unit");
        Unit::parse(name, &format!("{unit}\n{drop_in}"))
    };
    let unit = with_drop_in("memwarden@.service");
    assert_eq!(unit.last("Environment"), Some("MEMWARDEN_STORE=postgres"));
    let id = session(&unit, &root).expect("a session from the PostgreSQL unit");
    let rows = pg.query_i64(&format!(
        "SELECT count(*) FROM memory.entries WHERE id = '{id}'"
    ));
    assert_eq!(rows, 1, "the memory is in PostgreSQL");
    let local = Command::new(common::bin())
        .args(["verify", "--data-dir"])
        .arg(root.path("var/lib/memwarden"))
        .output()
        .expect("verify");
    assert!(
        !String::from_utf8_lossy(&local.stdout).contains(&id),
        "nothing in the state dir's memory.db"
    );
    for job in [
        "memwarden-purge.service",
        "memwarden-maintain.service",
        "memwarden-audit-head.service",
        "memwarden-metrics.service",
        "memwarden-backup.service",
    ] {
        let unit = with_drop_in(job);
        let said = all_ok(&unit, &run_unit(&unit, &root));
        if job == "memwarden-audit-head.service" {
            let seq = pg.query_i64("SELECT max(seq) FROM audit.events");
            assert!(said.starts_with(&format!("{seq}:")), "{said}");
        }
    }
    let maintained = pg.query_i64(
        "SELECT count(*) FROM audit.events WHERE kind = 'admin' \
         AND detail::jsonb ->> 'event' = 'maintain'",
    );
    assert_eq!(maintained, 1, "maintain ran on PostgreSQL");
    let backups = root.backups();
    assert_eq!(backups.len(), 1, "one backup of the database: {backups:?}");
    let manifest = root.path(&format!(
        "var/backups/memwarden/{}/manifest.json",
        backups[0]
    ));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifest).expect("manifest")).unwrap();
    assert_eq!(
        manifest["entries"], 1,
        "the backup holds the database's row: {manifest}"
    );
    let prom = std::fs::read_to_string(root.path("var/lib/memwarden-metrics/memwarden.prom"))
        .expect("metrics written");
    assert!(
        prom.contains("memwarden_store_reconnects_total 0")
            && prom.contains("memwarden_entries{status=\"active\"} 1"),
        "metrics of the PostgreSQL store: {prom}"
    );
}
