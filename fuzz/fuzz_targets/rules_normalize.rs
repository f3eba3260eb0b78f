//! The normalised view maps back: every char of the view stands for a non-empty, in-order range
//! of original bytes on char boundaries, and any view range maps to original bytes that exist.
//! And the secrets pack, redacting over content and metadata (key and value), never panics, and
//! changes nothing when nothing matched.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use memwarden::policy::normalize::normalize;

static POLICY: LazyLock<memwarden::policy::Policy> = LazyLock::new(|| {
    memwarden::policy::parse(
        "version = 1\n[[rules.packs]]\npack = \"secrets\"\naction = \"redact\"\n\
         applies_to = [\"content\", \"tags\", \"metadata\"]\n[principals.local]\n\
         tools = [\"memory_store\"]\nnamespaces = { default = \"rw\" }\ndefault_namespace = \"default\"\n",
        "fuzz",
    )
    .expect("the secrets pack compiles")
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let n = normalize(&text);
    assert_eq!(n.units.len(), n.text.chars().count());
    let mut last_start = 0;
    for (u, (at, _)) in n.units.iter().zip(n.text.char_indices()) {
        let (start, end) = (u.start as usize, u.end as usize);
        assert_eq!(u.at as usize, at);
        assert!(start < end && end <= text.len(), "{start}..{end}");
        assert!(text.is_char_boundary(start) && text.is_char_boundary(end));
        assert!(start >= last_start, "ranges go forward");
        last_start = start;
    }
    // Any view range between char boundaries maps to a valid original span.
    let bounds: Vec<usize> = n.text.char_indices().map(|(i, _)| i).collect();
    if let (Some(&a), Some(&b)) = (bounds.first(), bounds.last()) {
        let (from, to) = (bounds[bounds.len() / 3].max(a), b);
        if from < to {
            let (s, e) = n.original_span(from, to).expect("a non-empty range maps");
            assert!(s < e && text.is_char_boundary(s) && text.is_char_boundary(e));
        }
    }

    // Redaction with the secrets pack, split at a byte the input picks, over content and
    // metadata: never panics, and what it leaves is valid UTF-8 by construction (String).
    let split = data.first().map_or(0, |&b| b as usize) % (text.len() + 1);
    let split = (0..=split)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let mut content = text[..split].to_string();
    let mut meta = serde_json::json!({ &text[split..]: &text[split..] })
        .as_object()
        .cloned();
    let mut tags = vec!["t".to_string()];
    let verdict = POLICY.rules.apply(&mut content, &mut tags, &mut meta);
    if verdict.rejected_by.is_none() && verdict.redacted_by.is_empty() {
        assert_eq!(content, &text[..split], "nothing matched, nothing changed");
    }
});
