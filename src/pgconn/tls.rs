//! TLS for the database connection: the libpq keys memwarden reads itself (`sslmode`,
//! `sslrootcert`: tokio-postgres knows no verify-* mode and no root file), taken out of the
//! database file's text before tokio-postgres parses the rest; the roots read from sslrootcert
//! (before the sandbox: nothing is read at connect time); and why a handshake failed, in words
//! safe for a log. Nothing here ever returns or prints the file's text.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::SettingsError;

/// The largest root certificate file read.
const MAX_ROOTS_BYTES: u64 = 1024 * 1024;

/// libpq keys about TLS that memwarden does not offer: named in the refusal (a fixed list, so
/// the name printed never comes from the file).
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "requiressl",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

/// The database file's text split in two: memwarden's TLS keys, and the rest for
/// tokio-postgres.
#[derive(Debug, Default)]
pub(super) struct Split {
    /// `sslmode`, as written (the last one wins, as in libpq).
    pub mode: Option<String>,
    /// `sslrootcert`, decoded.
    pub rootcert: Option<String>,
    /// A libpq TLS key memwarden does not offer (from [`UNSUPPORTED`]).
    pub unsupported: Option<&'static str>,
    /// Everything else, in a form `tokio_postgres::Config::from_str` reads as it would have
    /// read the original.
    pub rest: String,
}

impl Split {
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.rootcert = Some(value),
            _ => {
                if let Some(k) = UNSUPPORTED.iter().find(|k| **k == key) {
                    self.unsupported.get_or_insert(k);
                }
                return false;
            }
        }
        true
    }
}

/// Splits a libpq URL or key=value text (`None`: malformed). The grammar is tokio-postgres's
/// own, so a key it would see is a key seen here; where the two could still differ the result
/// fails closed (tokio-postgres refuses `sslrootcert` and the verify-* modes).
pub(super) fn split(text: &str) -> Option<Split> {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return split_url(prefix, rest);
        }
    }
    split_pairs(text)
}

/// The URL form: parameters are the query after the first `?` following the credentials
/// (which end at the first `@`), as tokio-postgres reads them.
fn split_url(prefix: &str, s: &str) -> Option<Split> {
    let after_creds = s.find('@').map_or(0, |i| i + 1);
    let Some(q) = s[after_creds..].find('?').map(|i| after_creds + i) else {
        return Some(Split {
            rest: format!("{prefix}{s}"),
            ..Split::default()
        });
    };
    let mut out = Split::default();
    let mut kept = Vec::new();
    let mut params = &s[q + 1..];
    while !params.is_empty() {
        let (param, tail) = match params.find('&') {
            Some(i) => (&params[..i], &params[i + 1..]),
            None => (params, ""),
        };
        params = tail;
        let taken = match param.split_once('=') {
            Some((k, v)) => {
                let key = decode(k)?;
                let value = decode(v)?;
                out.take(&key, value)
            }
            // tokio-postgres refuses it: keep it so that it does.
            None => false,
        };
        if !taken {
            kept.push(param);
        }
    }
    out.rest = if kept.is_empty() {
        format!("{prefix}{}", &s[..q])
    } else {
        format!("{prefix}{}?{}", &s[..q], kept.join("&"))
    };
    Some(out)
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The key=value form: `key = value` or `key = 'quoted value'`, backslash escapes in both.
/// The pairs kept are written back quoted.
fn split_pairs(text: &str) -> Option<Split> {
    let mut out = Split::default();
    let mut chars = text.chars().peekable();
    let mut rest = String::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            // Anything left is a stray `=`: malformed.
            if chars.peek().is_some() {
                return None;
            }
            out.rest = rest;
            return Some(out);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\'' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(c2) = chars.next() {
                        value.push(c2);
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        if !out.take(&key, value.clone()) {
            rest.push_str(&key);
            rest.push_str("='");
            for c in value.chars() {
                if c == '\'' || c == '\\' {
                    rest.push('\\');
                }
                rest.push(c);
            }
            rest.push_str("' ");
        }
    }
}

/// Why the root certificates at `path` cannot be used.
#[derive(Debug)]
enum RootsError {
    /// Reading failed (what the OS said).
    Io(String),
    /// Larger than [`MAX_ROOTS_BYTES`].
    TooLarge,
    /// No PEM certificate in it, or a malformed one.
    NotPem,
    /// A certificate rustls cannot use as a trust anchor.
    NotAnchor,
}

/// The roots in the PEM file at `path`: at least one certificate, every one of them a usable
/// trust anchor.
fn read_roots(path: &Path) -> Result<rustls::RootCertStore, RootsError> {
    let file = std::fs::File::open(path).map_err(|e| RootsError::Io(e.kind().to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_ROOTS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RootsError::Io(e.kind().to_string()))?;
    if bytes.len() as u64 > MAX_ROOTS_BYTES {
        return Err(RootsError::TooLarge);
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|_| RootsError::NotPem)?;
        roots.add(cert).map_err(|_| RootsError::NotAnchor)?;
    }
    if roots.is_empty() {
        return Err(RootsError::NotPem);
    }
    Ok(roots)
}

/// The verifying connector for the roots in `rootcert` (named by the database file `shown`).
pub(super) fn verifying(
    rootcert: &str,
    shown: &str,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, SettingsError> {
    let root_error = |reason: String| SettingsError::RootCert {
        path: shown.to_string(),
        rootcert: rootcert.to_string(),
        reason,
    };
    if rootcert == "system" {
        return Err(root_error(
            "the system's roots are not used: name a PEM file of the CA that signs the server's \
             certificate"
                .into(),
        ));
    }
    let roots = read_roots(Path::new(rootcert)).map_err(|e| {
        root_error(match e {
            RootsError::Io(reason) => reason,
            RootsError::TooLarge => "larger than 1 MiB".into(),
            RootsError::NotPem => "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            RootsError::NotAnchor => "holds a certificate that cannot be used as a root".into(),
        })
    })?;
    connector(roots).map_err(|e| root_error(format!("cannot set up TLS: {e}")))
}

/// A connector that requires the server's chain to lead to `roots` and its certificate to
/// name the host connected to (libpq's verify-full), with ring's algorithms.
fn connector(
    roots: rustls::RootCertStore,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, rustls::Error> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// rustls's reason, with a hint for the commonest one.
fn explain(e: &rustls::Error) -> String {
    let hint = match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            " (the server's certificate does not lead to a root in sslrootcert)"
        }
        _ => "",
    };
    format!("TLS handshake failed: {e}{hint}")
}

/// Why a connection failed in its TLS handshake, when it did: rustls's reason (an unknown
/// issuer, a name mismatch, an expired certificate…) or tokio-postgres's (the server does not
/// offer TLS). Neither carries the settings.
pub fn handshake_failure(e: &tokio_postgres::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // tokio-postgres-rustls reports rustls's error inside an io::Error, whose own
        // `source` skips it: look inside.
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(explain(tls));
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        source = s.source();
    }
    // tokio-postgres's own TLS failures ("server does not support TLS") are fixed words in
    // the error's source.
    e.to_string()
        .starts_with("error performing TLS handshake")
        .then(|| {
            let why = std::error::Error::source(e).map_or_else(String::new, |s| format!(": {s}"));
            format!("TLS handshake failed{why}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest_parses_like(text: &str, expected: &str) {
        let s = split(text).unwrap();
        let got: tokio_postgres::Config = s.rest.parse().unwrap();
        let want: tokio_postgres::Config = expected.parse().unwrap();
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{text}");
        assert_eq!(got.get_password(), want.get_password(), "{text}");
    }

    #[test]
    fn ssl_keys_come_out_of_both_forms_and_the_rest_reads_the_same() {
        let s = split(
            "host=db.example.com  sslmode = verify-full sslrootcert='/etc/my ca.pem' password='a b\\'c'",
        )
        .unwrap();
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.rootcert.as_deref(), Some("/etc/my ca.pem"));
        rest_parses_like(
            "host=db.example.com  sslmode = verify-full sslrootcert='/etc/my ca.pem' password='a b\\'c'",
            "host=db.example.com password='a b\\'c'",
        );
        let u = "postgresql://app:p%3Fw@db.example.com:6432/mem?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x";
        let s = split(u).unwrap();
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.rootcert.as_deref(), Some("/etc/ca.pem"));
        rest_parses_like(
            u,
            "postgresql://app:p%3Fw@db.example.com:6432/mem?application_name=x",
        );
        let u = "postgresql://app@h/mem?sslmode=disable";
        assert_eq!(split(u).unwrap().rest, "postgresql://app@h/mem");
        // A '?' in the credentials is not the query.
        let s = split("postgresql://a:x?sslmode=y@h/m").unwrap();
        assert!(s.mode.is_none());
        assert!(split("postgresql://h/m").unwrap().mode.is_none());
    }

    #[test]
    fn malformed_text_and_unsupported_keys_are_noticed() {
        assert!(split("host='unterminated").is_none());
        assert!(split("host=").is_none());
        assert!(split("host h").is_none());
        assert_eq!(
            split("host=h sslcert=/c.pem").unwrap().unsupported,
            Some("sslcert")
        );
        assert_eq!(
            split("postgresql://h/?sslkey=k").unwrap().unsupported,
            Some("sslkey")
        );
    }
}
