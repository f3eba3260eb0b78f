//! `serve-http` over TLS: a non-loopback address is served only with TLS, and with a client CA
//! a client certificate stands for the principal the policy maps its name to (mutual TLS),
//! driven by the official MCP Python SDK over HTTPS. Certificates from another CA fail the
//! handshake; an unmapped one opens nothing.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestDir;
use common::certs::{available, make_ca, make_leaf};
use common::http::free_port;

const SIX: &str = r#"["memory_store", "memory_get", "memory_search", "memory_list", "memory_update", "memory_delete"]"#;

/// Whether the openssl CLI and the Python SDK are here; in CI (`CI` set) their absence is a
/// failure, not a skip.
fn tools_here() -> bool {
    let sdk = Command::new("python3")
        .args(["-c", "import mcp, httpx2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if available() && sdk {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have the openssl CLI and the Python MCP SDK (pip install mcp)"
    );
    eprintln!("SKIPPED: needs the openssl CLI and the Python MCP SDK (pip install mcp)");
    false
}

/// The Python client in `mode` against `url` with `args`: its stdout.
fn client(mode: &str, url: &str, ca: &Path, args: &[&str]) -> String {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/http_tls_client.py"
    );
    let out = Command::new("python3")
        .args([script, mode, url, "--ca"])
        .arg(ca)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{mode}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mutual_tls_maps_a_client_certificate_to_its_principal() {
    if !tools_here() {
        return;
    }
    let dir = TestDir::new();
    let certs = dir.tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = make_ca(&certs, "ca");
    let rogue_ca = make_ca(&certs, "rogue");
    let (server, server_key) = make_leaf(
        &certs,
        "ca",
        "server",
        "serverAuth",
        "IP:127.0.0.1,DNS:localhost",
    );
    let (alice, alice_key) =
        make_leaf(&certs, "ca", "alice", "clientAuth", "DNS:alice.agents.test");
    let (stranger, stranger_key) = make_leaf(
        &certs,
        "ca",
        "stranger",
        "clientAuth",
        "DNS:stranger.agents.test",
    );
    let (forged, forged_key) = make_leaf(
        &certs,
        "rogue",
        "forged",
        "clientAuth",
        "DNS:alice.agents.test",
    );
    let _ = rogue_ca;
    let policy = dir.policy(&format!(
        "version = 1\n[http]\nclient_certificates = {{ \"alice.agents.test\" = \"alice\" }}\n\
         [principals.alice]\ntools = {SIX}\nnamespaces = {{ \"a\" = \"rw\" }}\ndefault_namespace = \"a\"\n\
         [principals.bob]\ntools = {SIX}\nnamespaces = {{ \"b\" = \"rw\" }}\ndefault_namespace = \"b\"\n"
    ));
    let bob = dir.issue_token("bob");
    let port = free_port();
    let s = |p: &Path| p.display().to_string();
    let (server, server_key, ca_s) = (s(&server), s(&server_key), s(&ca));
    let mut args: Vec<&str> = policy.iter().map(String::as_str).collect();
    args.extend([
        "--tls-cert",
        &server,
        "--tls-key",
        &server_key,
        "--tls-client-ca",
        &ca_s,
    ]);
    // Any address with TLS: here all of them; the clients come over loopback.
    let daemon = dir.serve_http_on(&format!("0.0.0.0:{port}"), &args);
    let url = format!("https://127.0.0.1:{port}/mcp");

    // Alice's certificate is Alice: a whole MCP session, in her namespace.
    let (a, ak) = (s(&alice), s(&alice_key));
    let out = client("mcp", &url, &ca, &["--cert", &a, "--key", &ak]);
    assert_eq!(out, "mcp: ok a");
    // A certificate from the same CA that the policy does not map opens nothing.
    let (st, stk) = (s(&stranger), s(&stranger_key));
    assert_eq!(
        client("probe", &url, &ca, &["--cert", &st, "--key", &stk]),
        "status 401"
    );
    // Alice's name, signed by another CA: the handshake fails.
    let (f, fk) = (s(&forged), s(&forged_key));
    assert!(client("probe", &url, &ca, &["--cert", &f, "--key", &fk]).starts_with("tls error"));
    // No certificate: a token still works over TLS.
    assert_eq!(client("probe", &url, &ca, &["--token", &bob]), "status 200");
    assert_eq!(client("probe", &url, &ca, &[]), "status 401");
    // Plain HTTP to the TLS port is not served.
    let plain = common::http::Http {
        addr: format!("127.0.0.1:{port}"),
    };
    let r = plain.post(Some(&bob), None, &common::http::initialize());
    assert_ne!(r.status, 200);
    daemon.stop_ok(&dir);

    let events = common::audit_events(&dir);
    let start = events
        .iter()
        .find(|e| e["kind"] == "session_start" && e["principal"] == "alice")
        .expect("alice's session");
    let credential = &start["detail"]["connection"]["credential"];
    assert_eq!(credential["kind"], "certificate");
    assert_eq!(credential["label"], "alice.agents.test");
    let unmapped = events
        .iter()
        .filter(|e| {
            e["detail"]["event"] == "http_auth_failed"
                && e["detail"]["reason"] == "unmapped_certificate"
        })
        .count();
    assert_eq!(unmapped, 1);
}

#[test]
fn tls_files_are_checked_and_a_mapping_to_an_unknown_principal_is_refused() {
    if !available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the openssl CLI"
        );
        eprintln!("SKIPPED: needs the openssl CLI");
        return;
    }
    let dir = TestDir::new();
    dir.issue_token("local");
    let certs = dir.tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_ca(&certs, "ca");
    let (server, key) = make_leaf(&certs, "ca", "server", "serverAuth", "IP:127.0.0.1");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |extra: &[&str]| {
        Command::new(common::bin())
            .args(["serve-http", "--data-dir"])
            .arg(dir.data())
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[
        "--tls-cert",
        server.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key") && err.contains("0644"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    let policy = dir.policy(&format!(
        "{}\n[http]\nclient_certificates = {{ \"x.test\" = \"nobody\" }}\n",
        memwarden::policy::DEFAULT_POLICY
    ));
    let args: Vec<&str> = policy.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.client_certificates") && err.contains("nobody"),
        "{err}"
    );
}
