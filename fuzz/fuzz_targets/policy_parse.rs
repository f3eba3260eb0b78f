//! Any text given as a policy either compiles within the hard caps or is refused with a key
//! path and a reason — never a panic, never a limit above a cap.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match memwarden::policy::parse(&text, "fuzz") {
        Ok(p) => {
            let l = &p.limits;
            assert!(l.request_line_bytes <= 1 << 20);
            assert!(l.content_bytes <= 16 * 1024);
            assert!(l.metadata_bytes <= 4 * 1024);
            assert!(l.tags_max <= 16 && l.query_chars <= 512 && l.page_size_max <= 50);
            for grant in p.principals.values() {
                assert!(grant.can_read(&grant.default_namespace));
            }
        }
        Err(e) => {
            assert!(!e.key.is_empty() && !e.reason.is_empty(), "{e}");
        }
    }
});
