//! Agent-supplied text that must be named somewhere it could be echoed: an error message, a log
//! line, an audit row. Text that matches a strict, bounded pattern (a tool name, a JSON-RPC
//! method, a known property name) may pass as it is; anything else is replaced by its length and
//! a keyed hash, so a 500 KB key never becomes a 500 KB error, and a short secret cannot be
//! recovered from a digest by trying a dictionary.

use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Hex digits of the keyed hash shown in a description (64 bits: enough to tell texts apart).
const SHOWN_HEX: usize = 16;

/// Describes agent text by length and keyed hash.
#[derive(Clone)]
pub struct Describer {
    key: [u8; 32],
}

impl std::fmt::Debug for Describer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Describer").finish_non_exhaustive()
    }
}

impl Describer {
    /// A describer keyed by HMAC(`key`, `label`): derived from a secret (the audit key), so an
    /// operator holding it can recompute a digest, and nobody else can test guesses.
    pub fn derived(key: &[u8], label: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(label);
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// A describer with a random key for this process: for agent-facing errors, where the
    /// digest only has to tell two texts apart.
    pub fn process() -> &'static Self {
        static PROCESS: OnceLock<Describer> = OnceLock::new();
        PROCESS.get_or_init(|| {
            let mut key = [0u8; 32];
            // Without randomness a fixed key still bounds the size; it only weakens the hash.
            let _ = getrandom::fill(&mut key);
            Self { key }
        })
    }

    /// HMAC-SHA256 of `bytes` under this describer's key, in hex.
    pub fn digest(&self, bytes: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// `<N bytes #HASH>`: the text's length and a short keyed hash.
    pub fn describe(&self, text: &str) -> String {
        let digest = self.digest(text.as_bytes());
        format!("<{} bytes #{}>", text.len(), &digest[..SHOWN_HEX])
    }

    /// The text itself when it is a plain name (1–64 bytes of `[A-Za-z0-9_./:-]`), else its
    /// description.
    pub fn name(&self, text: &str) -> String {
        if is_plain_name(text) {
            text.to_string()
        } else {
            self.describe(text)
        }
    }
}

impl Describer {
    /// The text itself when it is a plain label (a plain name that may also hold spaces, `@`,
    /// `+` and parentheses, as client names do), else its description.
    pub fn label(&self, text: &str) -> String {
        let plain = (1..=64).contains(&text.len())
            && !text.starts_with(' ')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_./:- @+()".contains(&b));
        if plain {
            text.to_string()
        } else {
            self.describe(text)
        }
    }
}

/// 1–64 bytes of ASCII letters, digits and `_./:-`: safe to repeat in a log or an error.
pub fn is_plain_name(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_everything_else_is_bounded() {
        let d = Describer::derived(&[7; 32], b"test");
        assert_eq!(d.name("memory_store"), "memory_store");
        assert_eq!(d.name("tools/call"), "tools/call");
        let long = "k".repeat(500_000);
        let shown = d.name(&long);
        assert!(shown.starts_with("<500000 bytes #"), "{shown}");
        assert!(shown.len() < 40);
        assert_eq!(d.label("Claude Code (beta)"), "Claude Code (beta)");
        assert!(d.label("evil\u{202e}name").starts_with('<'));
        let odd = d.name("a b\nc");
        assert!(!odd.contains('\n') && !odd.contains("a b"), "{odd}");
    }

    #[test]
    fn the_digest_is_keyed() {
        let a = Describer::derived(&[1; 32], b"x");
        let b = Describer::derived(&[2; 32], b"x");
        assert_ne!(a.digest(b"hunter2"), b.digest(b"hunter2"));
        assert_eq!(a.digest(b"hunter2"), a.digest(b"hunter2"));
        assert_ne!(
            Describer::derived(&[1; 32], b"y").digest(b"hunter2"),
            a.digest(b"hunter2"),
            "labels separate domains"
        );
    }
}
