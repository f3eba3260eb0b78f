//! Checkpoint notes and verifier keys as an auditor reads them from files. Invariants: nothing
//! panics; an accepted note's text is exactly the canonical body of the checkpoint parsed from
//! it (one spelling); and an edited copy of a real signed note verifies only if its signed text
//! is unchanged (a flipped byte in the text, the key name or the signature never verifies).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use memwarden::audit::checkpoint::{
    Checkpoint, Signer, VerifierKey, Verifiers, origin_of, split_note,
};

struct Template {
    note: String,
    checkpoint: Checkpoint,
    verifiers: Verifiers,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let signer = Signer::new("s1", &[9; 32]);
        let checkpoint = Checkpoint {
            origin: origin_of(&"5d".repeat(32)),
            size: 1234,
            hash: [0xab; 32],
            time: Some(1_764_000_000),
        };
        let note = signer.sign(&checkpoint);
        let verifiers =
            Verifiers::from_keys(vec![VerifierKey::parse(&signer.vkey()).expect("vkey")]);
        Template {
            note,
            checkpoint,
            verifiers,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        // Arbitrary text as a note, a body, a key file.
        let text = String::from_utf8_lossy(rest);
        let _ = split_note(&text);
        let _ = Verifiers::parse(&text);
        if let Ok(cp) = Checkpoint::parse_body(&text) {
            assert_eq!(cp.body(), text, "a body parses only in its one spelling");
        }
        if let Ok((cp, _)) = t.verifiers.open(&text) {
            assert!(
                text.starts_with(&cp.body()),
                "the signed text is the canonical body"
            );
            assert_eq!(
                cp, t.checkpoint,
                "only the template's text carries our signature"
            );
        }
        return;
    }
    // Byte edits on the real note.
    let mut bytes = t.note.clone().into_bytes();
    for op in rest.chunks_exact(3).take(16) {
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % bytes.len();
        bytes[at] ^= op[2].max(1);
    }
    let Ok(note) = String::from_utf8(bytes) else {
        return;
    };
    if let Ok((cp, by)) = t.verifiers.open(&note) {
        assert_eq!(
            cp, t.checkpoint,
            "an edited note verified with other content"
        );
        assert_eq!(by, "memwarden/audit-key/s1");
        assert!(note.starts_with(&t.checkpoint.body()));
    }
});
