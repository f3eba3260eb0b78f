//! `memwarden sandbox-check`: apply the same sandbox as `serve`, then try what it must forbid
//! and report each attempt. Exit 0 only when every forbidden operation was denied and the data
//! dir is still usable. With `--store postgres` the sandbox leaves the database's TCP ports open,
//! as `serve`'s does, and the check also connects to the database: allowed, while another
//! loopback port stays denied. With `--tokens-file` it applies `serve-http`'s sandbox: the
//! tokens file's directory is readable (the daemon re-reads the file when it is replaced) and
//! nothing there is writable.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use super::DataDirArg;
use super::serve::StoreArgs;
use super::stores::Engine;
use crate::store::postgres::Endpoint;

/// `memwarden sandbox-check`'s arguments.
#[derive(Debug, clap::Args)]
pub struct SandboxCheckArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The store `serve` would use: PostgreSQL's TCP ports are left open, as for `serve`.
    #[command(flatten)]
    pub store: StoreArgs,
    /// serve-http's tokens file: check the sandbox serve-http applies, which leaves its
    /// directory readable.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
}

/// Where the database listens, resolved before the sandbox (resolving `localhost` reads
/// /etc/hosts, which the sandbox forbids): what the checks try to reach under it.
enum Target {
    Tcp(String, Vec<std::net::SocketAddr>),
    Unix(std::path::PathBuf),
}

/// The database's endpoints and the TCP ports the sandbox leaves open (none for SQLite).
fn database_targets(store: &StoreArgs) -> anyhow::Result<(Vec<Target>, Vec<u16>)> {
    let Engine::Postgres(settings) = Engine::of(store)? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut targets = Vec::new();
    for endpoint in settings.endpoints() {
        targets.push(match endpoint {
            Endpoint::Tcp(host, port) => {
                let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?;
                Target::Tcp(format!("{host}:{port}"), addrs.collect())
            }
            Endpoint::Unix(path) => Target::Unix(path),
        });
    }
    Ok((targets, settings.tcp_ports()))
}

/// Connects to the database's endpoint (TCP: its first address that answers).
fn reach(target: &Target) -> std::io::Result<()> {
    match target {
        Target::Tcp(_, addrs) => std::net::TcpStream::connect(&addrs[..]).map(drop),
        Target::Unix(path) => std::os::unix::net::UnixStream::connect(path).map(drop),
    }
}

/// Tries to reach the database under the sandbox, one check per endpoint, appended to
/// `checks`. It must stay reachable. A refusal by the sandbox is "denied"; any other failure
/// (the database is down, a wrong port) is reported as such, and fails the check too: serve
/// could not reach it either. Returns whether all were reached, and notes for the report.
fn database_checks(
    targets: &[Target],
    checks: &mut Vec<serde_json::Value>,
) -> (bool, Vec<&'static str>) {
    let mut all_ok = true;
    let mut notes = Vec::new();
    for target in targets {
        let (name, result) = match target {
            Target::Tcp(shown, _) => (
                format!("tcp connect to the database at {shown}"),
                reach(target),
            ),
            Target::Unix(path) => {
                notes.push(
                    "landlock does not govern connect(2) to a pathname unix socket (it scopes \
                     abstract sockets only): the database's socket is reachable under the \
                     sandbox, as is any other socket this user may open",
                );
                (
                    format!("unix socket connect to the database at {}", path.display()),
                    reach(target),
                )
            }
        };
        let denied = matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
        all_ok &= result.is_ok();
        checks.push(json!({
            "check": name,
            "expected": "allowed",
            "result": match &result {
                Ok(()) => "allowed".to_string(),
                Err(_) if denied => "denied".to_string(),
                Err(e) => format!("failed: {}", e.kind()),
            },
            "ok": result.is_ok(),
        }));
    }
    notes.dedup();
    (all_ok, notes)
}

/// What serve-http's sandbox must allow and forbid around its tokens file: (check, whether it
/// must be denied, the attempt).
fn tokens_attempts(
    file: &std::path::Path,
    dir: &std::path::Path,
) -> Vec<(&'static str, bool, std::io::Result<()>)> {
    let beside = dir.join(format!(".sandbox-check-{}", uuid::Uuid::new_v4().simple()));
    vec![
        ("read the tokens file", false, std::fs::read(file).map(drop)),
        (
            "write beside the tokens file",
            true,
            std::fs::File::create(beside).map(drop),
        ),
    ]
}

/// The directory `path` is in (`.` for a bare name).
fn parent_dir(path: &std::path::Path) -> std::path::PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Prints the report as JSON on stdout.
fn print_report(
    sandbox: &str,
    landlock: &str,
    checks: Vec<serde_json::Value>,
    all_ok: bool,
    notes: &[&str],
) -> anyhow::Result<()> {
    let mut report = json!({
        "sandbox": sandbox,
        "landlock": landlock,
        "checks": checks,
        "ok": all_ok,
    });
    if !notes.is_empty() {
        report["notes"] = json!(notes);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Applies the sandbox and reports what it blocks.
pub fn run(args: &SandboxCheckArgs) -> anyhow::Result<ExitCode> {
    let (targets, ports) = database_targets(&args.store)?;
    let tokens = args.tokens_file.clone();
    let tokens_dir = tokens.as_deref().map(parent_dir);
    let args = &args.data_dir;
    let root = args.resolve()?;
    let (dir, _) = crate::fsafe::Dir::create(&root)?;
    // Opened before the sandbox, as a peer the sandboxed process must not reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let outside = std::env::temp_dir().join(format!(
        "memwarden-sandbox-check-{}",
        uuid::Uuid::new_v4().simple()
    ));
    // Asked before the sandbox: a seccomp filter answering EPERM is named as such, not taken
    // for an old kernel.
    let probe = crate::sandbox::probe();
    let read_dirs: Vec<&std::path::Path> = tokens_dir.iter().map(|p| p.as_path()).collect();
    let status = crate::sandbox::restrict_with(&root, &read_dirs, &ports, false)?;

    let mut checks = Vec::new();
    let mut all_ok = status.filesystem_enforced();
    let mut check = |name: &str, expect_denied: bool, result: std::io::Result<()>| {
        let denied = result.is_err();
        let ok = denied == expect_denied;
        all_ok &= ok;
        checks.push(json!({
            "check": name,
            "expected": if expect_denied { "denied" } else { "allowed" },
            "result": if denied { "denied" } else { "allowed" },
            "ok": ok,
        }));
    };
    check(
        "read /etc/passwd",
        true,
        std::fs::read("/etc/passwd").map(drop),
    );
    check(
        "write outside the data dir",
        true,
        std::fs::File::create(&outside).map(drop),
    );
    check(
        "tcp connect to a loopback listener",
        true,
        std::net::TcpStream::connect(("127.0.0.1", port)).map(drop),
    );
    check(
        "tcp bind",
        true,
        std::net::TcpListener::bind("127.0.0.1:0").map(drop),
    );
    check(
        "exec /bin/true",
        true,
        std::process::Command::new("/bin/true").status().map(drop),
    );
    let inside = format!(".sandbox-check-{}", uuid::Uuid::new_v4().simple());
    check(
        "write inside the data dir",
        false,
        dir.create_new(&inside)
            .map_err(std::io::Error::other)
            .and_then(|mut f| f.write_all(b"ok"))
            .and_then(|()| dir.remove(&inside).map_err(std::io::Error::other)),
    );
    if let (Some(file), Some(dir)) = (&tokens, &tokens_dir) {
        for (name, expect_denied, result) in tokens_attempts(file, dir) {
            check(name, expect_denied, result);
        }
    }
    let (database_ok, notes) = database_checks(&targets, &mut checks);
    all_ok &= database_ok;
    drop(listener);
    print_report(status.as_str(), &probe.to_string(), checks, all_ok, &notes)?;
    Ok(ExitCode::from(u8::from(!all_ok)))
}
