//! The transport's repeated-key check, against serde_json's own parse: it never panics on any
//! bytes; a message serde_json writes (whose objects cannot repeat a key) is never flagged; and
//! the same message with one member of an object written twice always is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memwarden::transport::has_duplicate_keys;
use serde_json::Value;

/// Writes `v` as JSON, repeating the first member of the first non-empty object met.
fn write_with_repeat(v: &Value, out: &mut String, done: &mut bool) {
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut first = true;
            for (k, val) in map {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                write_with_repeat(val, out, done);
            }
            if !*done && let Some((k, val)) = map.iter().next() {
                *done = true;
                out.push(',');
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                out.push_str(&serde_json::to_string(val).unwrap());
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_with_repeat(item, out, done);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

fuzz_target!(|data: &[u8]| {
    let flagged = has_duplicate_keys(data);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let written = serde_json::to_vec(&value).unwrap();
    assert!(
        !has_duplicate_keys(&written),
        "a serde_json message was flagged"
    );
    // Whatever serde_json made of the input, a repeated member is caught.
    let mut repeated = String::new();
    let mut done = false;
    write_with_repeat(&value, &mut repeated, &mut done);
    if done {
        assert!(
            has_duplicate_keys(repeated.as_bytes()),
            "a repeated key went unseen"
        );
    }
    let _ = flagged;
});
