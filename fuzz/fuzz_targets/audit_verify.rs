//! The auditor's verifier on arbitrary bytes as audit.db: it opens and reports, or refuses the
//! file — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    std::fs::write(&path, data).expect("write");
    if let Ok(conn) = memwarden::audit::open_ro(&path) {
        let _ = memwarden::audit::verify::verify(&conn, None, None);
        let _ = memwarden::audit::append::head(&conn);
    }
});
