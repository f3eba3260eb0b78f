//! `memwarden connect SOCKET`: bridges an MCP client's stdio to the hardened service's unix
//! socket, so the client's config runs `memwarden connect /run/memwarden/mcp.sock`. It moves
//! bytes and nothing else; the server on the other end decides who the caller is from the
//! socket's peer credentials.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The service's socket, e.g. /run/memwarden/mcp.sock.
    #[arg(value_name = "SOCKET")]
    pub socket: PathBuf,
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

pub fn run(args: &ConnectArgs) -> anyhow::Result<ExitCode> {
    let stream = UnixStream::connect(&args.socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.socket.display()))?;
    let upstream = stream.try_clone()?;
    // stdin → socket; on EOF, half-close so the server sees the client leave.
    std::thread::spawn(move || {
        let _ = pump(std::io::stdin().lock(), &upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    // socket → stdout until the server closes.
    let result = pump(&stream, std::io::stdout().lock());
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => return Err(e.into()),
    })
}
