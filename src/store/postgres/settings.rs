//! The database file: how memwarden reaches PostgreSQL. It holds libpq-style connection settings
//! (a `postgresql://` URL or `key=value` pairs) and, for TCP, perhaps a password, so it is read
//! like the keyring: a regular file (never through a link), not readable or writable by group or
//! others, ours or root's, small. Its text never reaches argv, the environment, a log or an
//! error message; errors name the file and the problem only.
//!
//! It also decides, once, whether connections use TLS ([`DatabaseSettings::connect`] is the
//! only place a connection is made):
//!
//! - unix socket hosts: no TLS (peer authentication, nothing crosses a network); an sslmode
//!   that asks for TLS (require, verify-ca, verify-full) is refused there;
//! - `sslmode=verify-full sslrootcert=FILE`: TLS required on every host, the server's chain
//!   checked against exactly the roots in FILE (read now, before any sandbox) and its
//!   certificate checked for the host name. `verify-ca` is treated as verify-full (the name is
//!   checked too: stricter, never weaker);
//! - `sslmode=require`: refused everywhere: it encrypts without checking the certificate, so
//!   whoever sits on the path can pose as the server;
//! - otherwise (no sslmode, disable, allow, prefer): plaintext, never opportunistic TLS, and
//!   only to loopback — a host elsewhere is refused unless the operator passed
//!   `--allow-insecure-database` ([`RemotePlaintext::Allow`]);
//! - `sslrootcert` without verify-full, `sslrootcert=system`, client certificates: refused.

use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};

use super::tls;

/// The largest database file read.
const MAX_BYTES: u64 = 64 * 1024;

/// Why a database file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file could not be read.
    #[error("database file {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        reason: String,
    },
    /// A link, a directory, a device…
    #[error("database file {path} is not a regular file (a symlink is refused)")]
    NotRegular {
        /// The file.
        path: String,
    },
    /// Group or others may read or write it.
    #[error(
        "database file {path} has mode {mode:04o}: group and others must have no access (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its mode.
        mode: u32,
    },
    /// Someone else's file.
    #[error(
        "database file {path} is owned by uid {owner}, not by this process's uid {uid} or root"
    )]
    Owner {
        /// The file.
        path: String,
        /// Its owner.
        owner: u32,
        /// Ours.
        uid: u32,
    },
    /// Not connection settings (the text is not repeated: it may hold a password).
    #[error(
        "database file {path}: not libpq connection settings (a postgresql:// URL or key=value pairs)"
    )]
    Format {
        /// The file.
        path: String,
    },
    /// TCP to another host without verified TLS.
    #[error(
        "database file {path}: host {host} is not on this machine: memwarden reaches it only over \
         TLS with certificate verification (sslmode=verify-full sslrootcert=/path/to/ca.pem), \
         or in plaintext if you pass --allow-insecure-database; use the unix socket \
         (host=/path/to/socket/dir) or a loopback address otherwise"
    )]
    RemoteWithoutTls {
        /// The file.
        path: String,
        /// The host named.
        host: String,
    },
    /// `sslmode=require`: TLS that does not check the certificate.
    #[error(
        "database file {path}: sslmode=require encrypts but does not check the server's \
         certificate, so anyone on the path can pose as the server; memwarden refuses it: use \
         sslmode=verify-full sslrootcert=/path/to/ca.pem"
    )]
    UnverifiedTls {
        /// The file.
        path: String,
    },
    /// An sslmode value libpq does not define (the value is not repeated).
    #[error(
        "database file {path}: sslmode must be one of disable, allow, prefer, require, verify-ca, \
         verify-full"
    )]
    SslMode {
        /// The file.
        path: String,
    },
    /// verify-full without a root file.
    #[error(
        "database file {path}: sslmode=verify-full needs sslrootcert=/path/to/ca.pem (the CA \
         certificates that sign the server's certificate, PEM)"
    )]
    NoRootCert {
        /// The file.
        path: String,
    },
    /// A root file without verification asked for.
    #[error(
        "database file {path}: sslrootcert is given but sslmode is not verify-full: say \
         sslmode=verify-full (memwarden does not guess whether you wanted the certificate checked)"
    )]
    RootCertWithoutVerify {
        /// The file.
        path: String,
    },
    /// The root file cannot be used.
    #[error("database file {path}: sslrootcert {rootcert}: {reason}")]
    RootCert {
        /// The database file.
        path: String,
        /// The root file it names.
        rootcert: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// TLS asked for on a unix socket.
    #[error(
        "database file {path}: a unix socket host carries no TLS: drop sslmode for \
         host=/path/to/socket/dir, or connect over TCP to use verify-full"
    )]
    TlsOverSocket {
        /// The file.
        path: String,
    },
    /// A libpq TLS key memwarden does not offer.
    #[error(
        "database file {path}: {key} is not supported (memwarden offers sslmode=verify-full with \
         sslrootcert, and no client certificates)"
    )]
    Unsupported {
        /// The file.
        path: String,
        /// The key (from a fixed list, never the file's text).
        key: &'static str,
    },
    /// No host at all.
    #[error(
        "database file {path}: names no host (give host=/path/to/socket/dir or host=127.0.0.1)"
    )]
    NoHost {
        /// The file.
        path: String,
    },
}

/// Whether a database file may send its traffic unencrypted to a host that is not this
/// machine: the operator's `--allow-insecure-database`, passed in explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemotePlaintext {
    /// Refused (the default).
    #[default]
    Refuse,
    /// Allowed, with a warning in the security log.
    Allow,
}

/// A connection's driver, whichever transport it runs over: poll it (spawn it) for the client
/// to make progress.
pub type Connection =
    Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static>>;

/// Connection settings read from a checked database file.
#[derive(Clone)]
pub struct DatabaseSettings {
    config: tokio_postgres::Config,
    /// The verifying connector (verify-full), or none: plaintext.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    remote_plaintext: bool,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the settings themselves: they may hold a password.
        f.debug_struct("DatabaseSettings")
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// How the file asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No sslmode, disable, allow, prefer.
    Plain,
    /// require.
    Unverified,
    /// verify-ca, verify-full.
    Verify,
}

impl DatabaseSettings {
    /// Reads and checks the file at `path`; plaintext to another host is refused.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        Self::load_with(path, RemotePlaintext::Refuse)
    }

    /// Reads and checks the file at `path`; `remote` says whether plaintext to another host is
    /// allowed (the operator's `--allow-insecure-database`).
    ///
    /// # Errors
    /// A [`SettingsError`] naming the file (and the root file) and the problem, never the text.
    pub fn load_with(path: &Path, remote: RemotePlaintext) -> Result<Self, SettingsError> {
        let shown = path.display().to_string();
        let text = read_private(path, &shown)?;
        Self::parse_with(&text, &shown, remote)
    }

    /// Parses settings text; `shown` names the file in errors. Plaintext to another host is
    /// refused.
    pub fn parse(text: &str, shown: &str) -> Result<Self, SettingsError> {
        Self::parse_with(text, shown, RemotePlaintext::Refuse)
    }

    /// Parses settings text (reading the root file it names); `shown` names the file in errors.
    pub fn parse_with(
        text: &str,
        shown: &str,
        remote: RemotePlaintext,
    ) -> Result<Self, SettingsError> {
        let path = || shown.to_string();
        let split =
            tls::split(text.trim()).ok_or_else(|| SettingsError::Format { path: path() })?;
        if let Some(key) = split.unsupported {
            return Err(SettingsError::Unsupported { path: path(), key });
        }
        let mode = match split.mode.as_deref() {
            None | Some("disable" | "allow" | "prefer") => Mode::Plain,
            Some("require") => Mode::Unverified,
            Some("verify-ca" | "verify-full") => Mode::Verify,
            Some(_) => return Err(SettingsError::SslMode { path: path() }),
        };
        let mut config = tokio_postgres::Config::from_str(split.rest.trim())
            .map_err(|_| SettingsError::Format { path: path() })?;
        let hosts = config.get_hosts();
        if hosts.is_empty() {
            return Err(SettingsError::NoHost { path: path() });
        }
        let socket = hosts.iter().any(|h| matches!(h, Host::Unix(_)));
        // A host elsewhere, by name or by the address given for it (hostaddr is where the
        // connection really goes).
        let elsewhere = hosts
            .iter()
            .find_map(|h| match h {
                Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
                _ => None,
            })
            .or_else(|| {
                config
                    .get_hostaddrs()
                    .iter()
                    .find(|a| !a.is_loopback())
                    .map(|a| a.to_string())
            });
        if mode != Mode::Plain && socket {
            return Err(SettingsError::TlsOverSocket { path: path() });
        }
        let mut remote_plaintext = false;
        let tls = match mode {
            Mode::Unverified => return Err(SettingsError::UnverifiedTls { path: path() }),
            Mode::Plain => {
                if split.rootcert.is_some() {
                    return Err(SettingsError::RootCertWithoutVerify { path: path() });
                }
                if let Some(host) = elsewhere {
                    if remote == RemotePlaintext::Refuse {
                        return Err(SettingsError::RemoteWithoutTls { path: path(), host });
                    }
                    tracing::warn!(target: "memwarden::security", event = "insecure_database",
                        host = %host, "--allow-insecure-database: connecting to a database on \
                        another host in plaintext; passwords and memories cross the network \
                        unencrypted and unauthenticated");
                    remote_plaintext = true;
                }
                config.ssl_mode(SslMode::Disable);
                None
            }
            Mode::Verify => {
                let rootcert = split
                    .rootcert
                    .ok_or_else(|| SettingsError::NoRootCert { path: path() })?;
                let root_error = |reason: String| SettingsError::RootCert {
                    path: path(),
                    rootcert: rootcert.clone(),
                    reason,
                };
                if rootcert == "system" {
                    return Err(root_error(
                        "the system's roots are not used: name a PEM file of the CA that signs \
                         the server's certificate"
                            .into(),
                    ));
                }
                let roots = tls::read_roots(Path::new(&rootcert)).map_err(|e| {
                    root_error(match e {
                        tls::RootsError::Io(reason) => reason,
                        tls::RootsError::TooLarge => "larger than 1 MiB".into(),
                        tls::RootsError::NotPem => {
                            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()
                        }
                        tls::RootsError::NotAnchor => {
                            "holds a certificate that cannot be used as a root".into()
                        }
                    })
                })?;
                let connector = tls::connector(roots)
                    .map_err(|e| root_error(format!("cannot set up TLS: {e}")))?;
                config.ssl_mode(SslMode::Require);
                Some(connector)
            }
        };
        Ok(Self {
            config,
            tls,
            remote_plaintext,
        })
    }

    /// The settings, for reading (connect with [`DatabaseSettings::connect`]).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// These settings with `tune` applied to the connection parameters (a timeout, an
    /// application name). Whether TLS is used is not a parameter: [`DatabaseSettings::connect`]
    /// sets it again, whatever `tune` did.
    pub(crate) fn tuned(&self, tune: impl FnOnce(&mut tokio_postgres::Config)) -> Self {
        let mut out = self.clone();
        tune(&mut out.config);
        out
    }

    /// Whether connections use TLS (verify-full).
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether connections go in plaintext to another host (allowed by the operator).
    pub fn remote_plaintext(&self) -> bool {
        self.remote_plaintext
    }

    /// Connects: the one place a connection to PostgreSQL is made. With verify-full, TLS is
    /// required (never tokio-postgres's default, `prefer`, which falls back to plaintext) and
    /// the server's certificate verified; otherwise plaintext, as checked at load.
    ///
    /// # Errors
    /// tokio-postgres's (`handshake_failure` in this module's parent describes a TLS one in
    /// words safe for a log).
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        let mut config = self.config.clone();
        match &self.tls {
            Some(tls) => {
                config.ssl_mode(SslMode::Require);
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, Box::pin(connection)))
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                Ok((client, Box::pin(connection)))
            }
        }
    }

    /// The TCP ports the settings connect to (none when every host is a unix socket): what the
    /// sandbox lets `serve` connect to, so it can reconnect after a restart.
    pub fn tcp_ports(&self) -> Vec<u16> {
        let hosts = self.config.get_hosts();
        let ports = self.config.get_ports();
        let mut out: Vec<u16> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| matches!(h, Host::Tcp(_)))
            // One port for every host, one per host, or libpq's default.
            .map(|(i, _)| match ports {
                [] => 5432,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(5432),
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether every host is a unix socket directory (peer authentication, no password).
    pub fn unix_socket_only(&self) -> bool {
        self.config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
    }
}

/// `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The file's text, after the checks the module doc names ([`crate::fsafe::read_private`]).
fn read_private(path: &Path, shown: &str) -> Result<String, SettingsError> {
    use crate::fsafe::PrivateFileError as E;
    let path = path.to_path_buf();
    crate::fsafe::read_private(&path, MAX_BYTES).map_err(|e| match e {
        E::Io(e) => SettingsError::Io {
            path: shown.to_string(),
            reason: e.kind().to_string(),
        },
        E::NotRegular => SettingsError::NotRegular {
            path: shown.to_string(),
        },
        E::Permissions(mode) => SettingsError::Permissions {
            path: shown.to_string(),
            mode,
        },
        E::Owner(owner, uid) => SettingsError::Owner {
            path: shown.to_string(),
            owner,
            uid,
        },
        E::TooLarge(_) => SettingsError::Format {
            path: shown.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
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
        let s =
            DatabaseSettings::parse("host=/run/postgresql dbname=memwarden user=app", "F").unwrap();
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
}
