//! TLS for `serve-http` (rustls, ring): the server's certificate chain and key, and, with a
//! client CA, mutual TLS — a client certificate signed by the operator's CA stands for the
//! principal the policy maps one of its names to (`[http] client_certificates`), instead of a
//! token. A client without a certificate may still present a token; a certificate from any
//! other CA fails the handshake. Without TLS, `serve-http` listens on loopback only.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};

/// PEM files are small; this bounds what is read.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The operator's TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM; checked like the keyring: mode 0600, no link).
    pub key: PathBuf,
    /// CA certificates that sign client certificates (PEM), for mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Who a client certificate says it is: its DNS and URI subject alternative names (the CA
/// signed them), and its SHA-256 (hex) for the audit log.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// DNS and URI names.
    pub names: Vec<String>,
    /// SHA-256 of the certificate (DER), hex.
    pub sha256: String,
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes)?;
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_PEM_BYTES,
        "{what} {}: larger than {MAX_PEM_BYTES} bytes",
        path.display()
    );
    Ok(bytes)
}

fn certificates(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("{what} {}: not PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} {}: no certificate in it",
        path.display()
    );
    Ok(certs)
}

/// The acceptor for `files`: TLS 1.2 and 1.3, HTTP/1.1.
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert, "--tls-cert")?;
    let key_text = crate::fsafe::read_private(&files.key, MAX_PEM_BYTES).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key {}: {} (a private key must be a regular file, mode 0600, ours or root's)",
            files.key.display(),
            match e {
                crate::fsafe::PrivateFileError::Io(e) => e.to_string(),
                crate::fsafe::PrivateFileError::NotRegular => "not a regular file".into(),
                crate::fsafe::PrivateFileError::Permissions(m) => format!("mode {m:04o}"),
                crate::fsafe::PrivateFileError::Owner(o, _) => format!("owned by uid {o}"),
                crate::fsafe::PrivateFileError::TooLarge(_) => "too large".into(),
            }
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|_| {
        anyhow::anyhow!(
            "--tls-key {}: no PEM private key in it",
            files.key.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("--tls-client-ca {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The identity of a verified client certificate chain (its leaf), if one was presented.
pub fn identity(chain: Option<&[CertificateDer<'_>]>) -> Option<ClientIdentity> {
    let leaf = chain?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let mut names: Vec<String> = cert.valid_dns_names().map(str::to_owned).collect();
    names.extend(cert.valid_uri_names().map(str::to_owned));
    Some(ClientIdentity {
        names,
        sha256: hex::encode(Sha256::digest(leaf.as_ref())),
    })
}
