//! The database file: how memwarden reaches PostgreSQL. It holds libpq-style connection settings
//! (a `postgresql://` URL or `key=value` pairs) and, for TCP, perhaps a password, so it is read
//! like the keyring: a regular file (never through a link), not readable or writable by group or
//! others, ours or root's, small. Its text never reaches argv, the environment, a log or an
//! error message; errors name the file and the problem only.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use tokio_postgres::config::Host;

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
        "database file {path}: host {host} is not on this machine, and this build connects to remote \
         databases only over TLS with certificate verification, which it does not offer yet; \
         use the unix socket (host=/path/to/socket/dir) or a loopback address"
    )]
    RemoteWithoutTls {
        /// The file.
        path: String,
        /// The host named.
        host: String,
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

/// Connection settings read from a checked database file.
pub struct DatabaseSettings {
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the settings themselves: they may hold a password.
        f.debug_struct("DatabaseSettings").finish_non_exhaustive()
    }
}

impl DatabaseSettings {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let shown = path.display().to_string();
        let text = read_private(path, &shown)?;
        Self::parse(&text, &shown)
    }

    /// Parses settings text; `shown` names the file in errors.
    pub fn parse(text: &str, shown: &str) -> Result<Self, SettingsError> {
        let config =
            tokio_postgres::Config::from_str(text.trim()).map_err(|_| SettingsError::Format {
                path: shown.to_string(),
            })?;
        let hosts = config.get_hosts();
        if hosts.is_empty() {
            return Err(SettingsError::NoHost {
                path: shown.to_string(),
            });
        }
        for host in hosts {
            if let Host::Tcp(name) = host
                && !is_loopback(name)
            {
                return Err(SettingsError::RemoteWithoutTls {
                    path: shown.to_string(),
                    host: name.clone(),
                });
            }
        }
        Ok(Self { config })
    }

    /// The settings, for connecting.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
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

    /// Each host with its port (one port for every host, one per host, or libpq's default): TCP hosts as names,
    /// unix socket directories as the socket's path (`DIR/.s.PGSQL.PORT`). For
    /// `sandbox-check`, which tries to reach them under the sandbox.
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
}
