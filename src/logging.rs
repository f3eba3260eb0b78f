//! Logs: JSON lines on stderr, never stdout (stdout is the protocol channel).
//!
//! memwarden's own events log at info; dependencies only at warn, because their debug output can
//! include whole protocol messages, and with them memory content. Security events use the target
//! `memwarden::security`.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::prelude::*;

/// Opens `path` for appending logs without ever writing through someone else's file: the last
/// component is opened `O_NOFOLLOW` (a planted link fails, never redirects), and what opened
/// must be a regular file owned by this uid — not another user's file, a FIFO or a device.
/// A missing file is created 0640 (narrowed by the umask).
///
/// # Errors
/// A link, a foreign or non-regular file, or any open error, with the path and a hint.
pub fn open_log_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let refuse = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}", path.display()),
        )
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        // NONBLOCK: a FIFO with no reader fails (ENXIO) instead of hanging; refused below anyway.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse(
                "is a symbolic link: refusing to follow it (give the real path of a log file \
                 this user owns)"
                    .into(),
            ),
            Some(libc::ENXIO | libc::EISDIR) => refuse("is not a regular file".into()),
            _ => refuse(e.to_string()),
        })?;
    let meta = file.metadata().map_err(|e| refuse(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let uid = crate::fsafe::current_uid();
    if meta.uid() != uid {
        return Err(refuse(format!(
            "is owned by uid {}, not by this process (uid {uid}): refusing to append to another \
             user's file (create it as this user, or let the unit's LogsDirectory= do it)",
            meta.uid()
        )));
    }
    // SAFETY: valid fd; clears O_NONBLOCK, which only mattered for the open.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// Installs the JSON logger: on stderr, or appended to `file` ([`open_log_file`]) when given.
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
        Some(path) => BoxMakeWriter::new(std::sync::Mutex::new(open_log_file(path)?)),
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
