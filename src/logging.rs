//! Logs: JSON lines on stderr, never stdout (stdout is the protocol channel).
//!
//! memwarden's own events log at info; dependencies only at warn, because their debug output can
//! include whole protocol messages, and with them memory content. Security events use the target
//! `memwarden::security`.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

/// Installs the JSON logger: on stderr, or appended to `file` (created 0640) when given.
/// `MEMWARDEN_LOG=debug` raises memwarden's own level (never the dependencies').
///
/// # Errors
/// When the log file cannot be opened.
pub fn init(file: Option<&std::path::Path>) -> std::io::Result<()> {
    let level = match std::env::var("MEMWARDEN_LOG").as_deref() {
        Ok("debug") => LevelFilter::DEBUG,
        Ok("warn") => LevelFilter::WARN,
        Ok("error") => LevelFilter::ERROR,
        Ok("off") => LevelFilter::OFF,
        _ => LevelFilter::INFO,
    };
    // rmcp's own lines quote protocol messages (a refused method's name, an error's text), which
    // are agent text: it never logs. Everything it would report, memwarden logs itself.
    let filter = Targets::new()
        .with_target("memwarden", level)
        .with_target("rmcp", LevelFilter::OFF)
        .with_default(LevelFilter::WARN.min(level));
    let writer = match file {
        None => BoxMakeWriter::new(std::io::stderr),
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(path)?;
            BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(writer)
        .with_ansi(false)
        .with_current_span(false)
        .with_span_list(false);
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    Ok(())
}
