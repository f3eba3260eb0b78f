//! The database file's checks: what is refused (and that no refusal carries the password),
//! what passes, and the ports the sandbox opens.

use super::*;

#[test]
fn the_sandbox_opens_exactly_the_tcp_ports_of_the_settings() {
    let ports = |text: &str| DatabaseSettings::parse(text, "f").unwrap().tcp_ports();
    assert!(ports("host=/run/postgresql port=6000 user=a").is_empty());
    assert_eq!(ports("host=127.0.0.1 port=6543 user=a"), [6543]);
    assert_eq!(ports("host=localhost user=a"), [5432]);
    assert_eq!(
        ports("host=/run/postgresql,127.0.0.1,::1 port=1,2,3 user=a"),
        [2, 3]
    );
}

#[test]
fn unix_sockets_and_loopback_pass_remote_tcp_is_refused() {
    let s = DatabaseSettings::parse("host=/run/postgresql dbname=memwarden user=app", "F").unwrap();
    assert!(s.unix_socket_only());
    let s = DatabaseSettings::parse("postgresql://app@127.0.0.1:5432/memwarden", "F").unwrap();
    assert!(!s.unix_socket_only());
    for remote in [
        "host=db.example.com dbname=m user=a password=hunter2",
        "postgresql://a:hunter2@10.0.0.5/m",
    ] {
        let err = DatabaseSettings::parse(remote, "F")
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS"), "{err}");
        assert!(!err.contains("hunter2"), "no password in {err}");
    }
    let err = DatabaseSettings::parse("password=hunter2 nonsense", "F")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(is_loopback("localhost") && is_loopback("::1") && is_loopback("[::1]"));
    assert!(!is_loopback("127.0.0.1.example.com"));
}

fn refused(text: &str, remote: RemotePlaintext) -> String {
    let err = DatabaseSettings::parse_with(text, "F", remote)
        .unwrap_err()
        .to_string();
    assert!(!err.contains("hunter2"), "no password in {err}");
    assert!(err.starts_with("database file F"), "{err}");
    err
}

#[test]
fn remote_hosts_need_verify_full_unless_plaintext_is_allowed_and_require_never_passes() {
    use RemotePlaintext::{Allow, Refuse};
    for text in [
        "host=db.example.com password=hunter2",
        "host=db.example.com password=hunter2 sslmode=prefer",
        "postgresql://a:hunter2@10.0.0.5/m?sslmode=disable",
        // hostaddr is where the connection goes, whatever the name says.
        "host=localhost hostaddr=10.0.0.5 password=hunter2",
    ] {
        let err = refused(text, Refuse);
        assert!(
            err.contains("verify-full") && err.contains("--allow-insecure-database"),
            "{err}"
        );
        let s = DatabaseSettings::parse_with(text, "F", Allow).unwrap();
        assert!(s.remote_plaintext() && !s.uses_tls());
        assert_eq!(s.config().get_ssl_mode(), SslMode::Disable, "never prefer");
    }
    for remote in [Refuse, Allow] {
        for text in [
            "host=db.example.com password=hunter2 sslmode=require",
            "host=127.0.0.1 password=hunter2 sslmode=require",
        ] {
            assert!(refused(text, remote).contains("does not check"));
        }
    }
    // Loopback and sockets stay plaintext, never opportunistic TLS, with or without the flag.
    for text in [
        "host=127.0.0.1 user=a",
        "host=/run/postgresql sslmode=prefer",
    ] {
        let s = DatabaseSettings::parse(text, "F").unwrap();
        assert!(!s.remote_plaintext() && !s.uses_tls());
        assert_eq!(s.config().get_ssl_mode(), SslMode::Disable);
    }
}

#[test]
fn tls_settings_that_cannot_be_honoured_are_refused_by_name() {
    let r = RemotePlaintext::Refuse;
    let cases = [
        (
            "host=h password=hunter2 sslmode=verify-full",
            "needs sslrootcert",
        ),
        (
            "host=h password=hunter2 sslmode=hunter2",
            "sslmode must be one of",
        ),
        (
            "host=h password=hunter2 sslrootcert=/ca.pem",
            "sslmode is not verify-full",
        ),
        (
            "host=/run/postgresql password=hunter2 sslmode=verify-full sslrootcert=/ca.pem",
            "unix socket",
        ),
        (
            "host=h password=hunter2 sslmode=verify-full sslrootcert=system",
            "system",
        ),
        (
            "host=h password=hunter2 sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
            "/nonexistent/ca.pem: entity not found",
        ),
        (
            "host=h password=hunter2 sslcert=/c.pem sslkey=/k.pem",
            "sslcert is not supported",
        ),
        ("host=h password='hunter2", "not libpq connection settings"),
    ];
    for (text, expected) in cases {
        let err = refused(text, r);
        assert!(err.contains(expected), "{text}: {err}");
    }
    let dir = std::env::temp_dir().join(format!("memwarden-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("ca.pem");
    std::fs::write(&not_pem, "hunter2 is not a certificate").unwrap();
    let err = refused(
        &format!(
            "host=h password=hunter2 sslmode=verify-ca sslrootcert={}",
            not_pem.display()
        ),
        r,
    );
    assert!(err.contains("no PEM certificate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_dead_network_path_is_given_up_in_seconds_unless_the_file_says_otherwise() {
    let s = DatabaseSettings::parse("host=127.0.0.1 user=a", "F").unwrap();
    let c = s.config();
    assert_eq!(c.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
    assert!(c.get_keepalives());
    assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
    assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
    assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
    let s = DatabaseSettings::parse(
        "host=127.0.0.1 user=a tcp_user_timeout=30 keepalives_idle=60 \
         keepalives_interval=10 keepalives_retries=9",
        "F",
    )
    .unwrap();
    let c = s.config();
    assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
    assert_eq!(c.get_keepalives_idle(), Duration::from_secs(60));
    assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(10)));
    assert_eq!(c.get_keepalives_retries(), Some(9));
}
