//! `memwarden connect SOCKET`: bridges an MCP client's stdio to the hardened service's unix
//! socket, so the client's config runs `memwarden connect /run/memwarden/mcp.sock`. It moves
//! bytes and nothing else; the server on the other end decides who the caller is from the
//! socket's peer credentials.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `memwarden connect`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The service's socket, e.g. /run/memwarden/mcp.sock.
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
    /// Give up when the server has not answered this many seconds after the client's first
    /// message (a hung or overloaded service), instead of waiting forever.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub answer_timeout: u64,
}

fn pump(mut from: impl Read, mut to: impl Write) -> std::io::Result<()> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// Waits for the server's first bytes, which must come within `timeout` of the client's first
/// message (not of the connection: a client may stay quiet as long as it likes). Returns them.
fn first_answer(
    stream: &UnixStream,
    first_sent: &Mutex<Option<Instant>>,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_millis(250)))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match (&*stream).read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                stream.set_read_timeout(None)?;
                return Ok(buf);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let sent = *first_sent.lock().unwrap_or_else(|p| p.into_inner());
                if sent.is_some_and(|t| t.elapsed() >= timeout) {
                    anyhow::bail!(
                        "the server did not answer within {} s of the first request",
                        timeout.as_secs()
                    );
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bridges stdio to a server socket.
pub fn run(args: &ConnectArgs) -> anyhow::Result<ExitCode> {
    let stream = UnixStream::connect(&args.socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.socket.display()))?;
    let upstream = stream.try_clone()?;
    let first_sent = Arc::new(Mutex::new(None::<Instant>));
    // stdin → socket; on EOF, half-close so the server sees the client leave.
    {
        let first_sent = first_sent.clone();
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64 * 1024];
            let result = stdin.read(&mut buf).and_then(|n| {
                first_sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Instant::now);
                (&upstream).write_all(&buf[..n])?;
                if n == 0 {
                    Ok(())
                } else {
                    pump(stdin, &upstream)
                }
            });
            let _ = result;
            let _ = upstream.shutdown(Shutdown::Write);
        });
    }
    let timeout = Duration::from_secs(args.answer_timeout.max(1));
    let first = first_answer(&stream, &first_sent, timeout)?;
    let mut stdout = std::io::stdout().lock();
    if first.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    stdout.write_all(&first)?;
    stdout.flush()?;
    // socket → stdout until the server closes.
    let result = pump(&stream, stdout);
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => return Err(e.into()),
    })
}
