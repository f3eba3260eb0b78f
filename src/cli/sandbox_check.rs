//! `memwarden sandbox-check`: apply the same sandbox as `serve`, then try what it must forbid
//! and report each attempt. Exit 0 only when every forbidden operation was denied and the data
//! dir is still usable.

use std::io::Write;
use std::process::ExitCode;

use serde_json::json;

use super::DataDirArg;

/// Applies the sandbox and reports what it blocks.
pub fn run(args: &DataDirArg) -> anyhow::Result<ExitCode> {
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
    let status = crate::sandbox::restrict(&root, &[], false)?;

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
    drop(listener);
    let report = json!({
        "sandbox": status.as_str(),
        "landlock": probe.to_string(),
        "checks": checks,
        "ok": all_ok,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
