//! Logs: JSON lines on stderr, never stdout (stdout is the protocol channel).
//!
//! memwarden's own events log at info; dependencies only at warn, because their debug output can
//! include whole protocol messages, and with them memory content. Security events use the target
//! `memwarden::security`.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Installs the stderr JSON logger. `MEMWARDEN_LOG=debug` raises memwarden's own level (never the
/// dependencies').
pub fn init() {
    let level = match std::env::var("MEMWARDEN_LOG").as_deref() {
        Ok("debug") => LevelFilter::DEBUG,
        Ok("warn") => LevelFilter::WARN,
        Ok("error") => LevelFilter::ERROR,
        Ok("off") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    };
    let filter = Targets::new()
        .with_target("memwarden", level)
        .with_default(LevelFilter::WARN.min(level));
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_current_span(false)
        .with_span_list(false);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}
