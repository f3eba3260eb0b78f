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
use std::time::Duration;

use tokio_postgres::config::{Host, SslMode};

mod error;
pub mod sql;
mod tls;

pub use error::SettingsError;
pub use tls::handshake_failure;

/// The largest database file read.
const MAX_BYTES: u64 = 64 * 1024;

/// A TCP connection whose peer has acknowledged nothing for this long is given up (the
/// kernel's `TCP_USER_TIMEOUT`), and an idle one is probed after [`KEEPALIVE_IDLE`], every
/// [`KEEPALIVE_INTERVAL`]. Without these a call in flight when the network path to the
/// database is cut waits as long as TCP retransmits (minutes), holding the session and perhaps
/// the store's locks; with them it fails UNAVAILABLE within seconds and the backend reconnects.
/// Unless the database file sets its own (`tcp_user_timeout`, `keepalives_*`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`TCP_USER_TIMEOUT`].
const KEEPALIVE_IDLE: Duration = Duration::from_secs(3);
/// See [`TCP_USER_TIMEOUT`].
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// The keepalive probes sent before an idle connection is dropped.
const KEEPALIVE_RETRIES: u32 = 3;

/// The same bounds for the server's side of the session (user-settable, ignored over a unix
/// socket): PostgreSQL ends the backend of a client whose network has gone, so the locks its
/// transaction held are released for the other hosts instead of waiting for
/// `idle_in_transaction_session_timeout`. Run once on every new connection that serves calls.
pub const DEAD_PEER_SESSION: &str = "SET tcp_user_timeout = 5000; \
     SET tcp_keepalives_idle = 3; SET tcp_keepalives_interval = 1; \
     SET tcp_keepalives_count = 3";

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
                if let Some(host) = elsewhere(&config) {
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
                config.ssl_mode(SslMode::Require);
                Some(tls::verifying(&rootcert, shown)?)
            }
        };
        bound_dead_peers(&mut config);
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
    /// tokio-postgres's ([`handshake_failure`] describes a TLS one in words safe for a log).
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
        let mut out: Vec<u16> = self
            .endpoints()
            .into_iter()
            .filter_map(|e| match e {
                Endpoint::Tcp(_, port) => Some(port),
                Endpoint::Unix(_) => None,
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Each host with its port (one port for every host, one per host, or libpq's default):
    /// TCP hosts as names, unix socket directories as the socket's path (`DIR/.s.PGSQL.PORT`).
    /// For `sandbox-check`, which tries to reach them under the sandbox.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = match ports {
                    [] => 5432,
                    [one] => *one,
                    many => many.get(i).copied().unwrap_or(5432),
                };
                match h {
                    Host::Tcp(name) => Endpoint::Tcp(name.clone(), port),
                    Host::Unix(dir) => Endpoint::Unix(dir.join(format!(".s.PGSQL.{port}"))),
                }
            })
            .collect()
    }

    /// Whether every host is a unix socket directory (peer authentication, no password).
    pub fn unix_socket_only(&self) -> bool {
        self.config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)))
    }
}

/// Sets the dead-peer bounds ([`TCP_USER_TIMEOUT`] and the keepalives) the settings left at
/// tokio-postgres's defaults (none, and a first probe after two hours).
fn bound_dead_peers(config: &mut tokio_postgres::Config) {
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
}

/// A host that is not this machine, by name or by the address given for it (`hostaddr` is
/// where the connection really goes, whatever the name says).
fn elsewhere(config: &tokio_postgres::Config) -> Option<String> {
    config
        .get_hosts()
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
        })
}

/// Where one of the settings' hosts listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A host name or address, and the port.
    Tcp(String, u16),
    /// A unix socket's path.
    Unix(std::path::PathBuf),
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
mod tests;
