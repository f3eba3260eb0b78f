//! Throwaway certificates made with the openssl CLI: a CA, and leaf certificates it signs for a
//! server (serverAuth) or a client (clientAuth), with the subject alternative names given.

use std::path::{Path, PathBuf};
use std::process::Command;

fn openssl(args: &[String]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Whether the openssl CLI is here.
pub fn available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A CA: `NAME.pem` and `NAME.key` in `dir`; returns the certificate's path.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let ca = dir.join(format!("{name}.pem"));
    let args: Vec<String> = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
    ]
    .into_iter()
    .map(String::from)
    .chain([
        format!("/CN=memwarden test {name}"),
        "-keyout".into(),
        path(&dir.join(format!("{name}.key"))),
        "-out".into(),
        path(&ca),
    ])
    .collect();
    openssl(&args);
    ca
}

/// A leaf `NAME.pem` + `NAME.key` (mode 0600) signed by the CA `ca` in `dir`, for `usage`
/// (`serverAuth` or `clientAuth`) with subjectAltName `san` (e.g. `IP:127.0.0.1,DNS:localhost`).
pub fn make_leaf(dir: &Path, ca: &str, name: &str, usage: &str, san: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    let s = String::from;
    openssl(&[
        s("req"),
        s("-newkey"),
        s("ec"),
        s("-pkeyopt"),
        s("ec_paramgen_curve:prime256v1"),
        s("-nodes"),
        s("-subj"),
        format!("/CN={name}"),
        s("-keyout"),
        path(&key),
        s("-out"),
        path(&csr),
    ]);
    openssl(&[
        s("x509"),
        s("-req"),
        s("-in"),
        path(&csr),
        s("-CA"),
        path(&dir.join(format!("{ca}.pem"))),
        s("-CAkey"),
        path(&dir.join(format!("{ca}.key"))),
        s("-CAcreateserial"),
        s("-days"),
        s("2"),
        s("-extfile"),
        path(&ext),
        s("-out"),
        path(&cert),
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key)
}
