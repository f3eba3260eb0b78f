//! Why a database file was refused: every message names the file (and a root file) and the
//! problem, never the file's text, which may hold a password.

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
