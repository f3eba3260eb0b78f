//! Prometheus text exposition, as `memwarden metrics` and `serve-http`'s `/metrics` write it:
//! metric families, label escaping, and the call-latency buckets both use. A leaf.

use std::fmt::Write as _;

/// Upper bounds (seconds) of the latency histogram's buckets, as `memwarden metrics` uses.
pub const BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Starts a metric family: its HELP and TYPE lines; returns its name.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) -> String {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    name.to_string()
}

/// A label value, escaped as the exposition format requires.
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
