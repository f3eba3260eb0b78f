//! Where `serve-http` listens and how it takes connections: a loopback TCP address, a unix
//! socket path, or the socket systemd passes (`ListenStream=`, `Accept=no`). Every listener is
//! bound before the sandbox (which then forbids binding anything); each connection is served
//! by hyper's HTTP/1.1 with a header timeout, under a cap on connections open at once.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::front::{Role, Source};

/// A listen address as the operator writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `127.0.0.1:8787`, `[::1]:8787`; any other address only with TLS (plain HTTP never
    /// leaves the machine).
    Tcp(SocketAddr),
    /// `unix:/run/memwarden/http.sock`.
    Unix(PathBuf),
}

impl std::str::FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err("a unix socket path must be absolute (unix:/path/to/socket)".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| format!("{s:?} is neither HOST:PORT with an IP address nor unix:PATH"))?;
        Ok(Self::Tcp(addr))
    }
}

/// A bound listener, before the runtime takes it.
#[derive(Debug)]
pub enum Bound {
    /// A TCP listener.
    Tcp(std::net::TcpListener),
    /// A unix socket listener, and the path to remove at exit when we created it.
    Unix(std::os::unix::net::UnixListener, Option<PathBuf>),
}

impl Bound {
    /// Binds `address`. A unix socket path must not exist (a stale socket is replaced; any
    /// other file is refused); the socket is made 0600 by the process umask.
    pub fn bind(address: &Address) -> anyhow::Result<Self> {
        match address {
            Address::Tcp(addr) => Ok(Self::Tcp(
                std::net::TcpListener::bind(addr)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            )),
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
                    anyhow::anyhow!("cannot listen on unix:{}: {e}", path.display())
                })?;
                Ok(Self::Unix(l, Some(path.clone())))
            }
        }
    }

    /// The socket systemd passed (`LISTEN_FDS`/`LISTEN_PID`), if any: fd 3. A TCP socket must
    /// be on a loopback address, as for `--listen`.
    pub fn from_systemd() -> anyhow::Result<Option<Self>> {
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        let fds = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<i32>().ok());
        if !ours || fds.unwrap_or(0) < 1 {
            return Ok(None);
        }
        anyhow::ensure!(
            fds == Some(1),
            "systemd passed {} sockets; memwarden-http.socket has exactly one",
            fds.unwrap_or(0)
        );
        const FD: RawFd = 3;
        // SAFETY: systemd hands fd 3 to this process as a listening socket; nothing else in
        // this process has taken it, and it is owned from here on.
        let bound = match socket_family(FD)? {
            libc::AF_UNIX => Self::Unix(
                unsafe { std::os::unix::net::UnixListener::from_raw_fd(FD) },
                None,
            ),
            libc::AF_INET | libc::AF_INET6 => {
                Self::Tcp(unsafe { std::net::TcpListener::from_raw_fd(FD) })
            }
            other => anyhow::bail!("the socket systemd passed has address family {other}"),
        };
        Ok(Some(bound))
    }

    /// What the listener is bound to, for the log.
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map_or("tcp".into(), |a| a.to_string()),
            Self::Unix(l, _) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix".into()),
        }
    }

    /// Whether only this machine can connect: a loopback address or a unix socket. Anything
    /// else needs TLS.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(l) => l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
            Self::Unix(..) => true,
        }
    }

    /// The unix socket path to remove at exit, if we created one.
    pub fn owned_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(_, path) => path.as_deref(),
            Self::Tcp(_) => None,
        }
    }
}

fn socket_family(fd: RawFd) -> anyhow::Result<i32> {
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a zeroed sockaddr_storage and `len` its size, as getsockname requires.
    let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
    anyhow::ensure!(
        rc == 0,
        "fd 3 from systemd is not a socket: {}",
        std::io::Error::last_os_error()
    );
    Ok(i32::from(addr.ss_family))
}

fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)?;
            Ok(())
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Serves connections on `bound` until `shutdown`, each answered by `daemon` as `role`.
pub async fn serve(
    daemon: Arc<Daemon>,
    bound: Bound,
    role: Role,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limit = Arc::new(Semaphore::new(daemon.policy().max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    match bound {
        Bound::Tcp(l) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            accept_loop(
                &limit,
                &shutdown,
                || l.accept(),
                |(stream, peer), permit| {
                    let source = Source(peer.ip().to_string());
                    let _ = stream.set_nodelay(true);
                    let (daemon, shutdown) = (daemon.clone(), shutdown.clone());
                    match &tls {
                        Some(tls) => {
                            let tls = tls.clone();
                            connections.spawn(handshake(
                                daemon, tls, stream, source, role, shutdown, permit,
                            ))
                        }
                        None => connections.spawn(connection(
                            daemon, stream, source, None, role, shutdown, permit,
                        )),
                    };
                },
            )
            .await;
        }
        Bound::Unix(l, _) => {
            l.set_nonblocking(true)?;
            let l = tokio::net::UnixListener::from_std(l)?;
            accept_loop(
                &limit,
                &shutdown,
                || l.accept(),
                |(stream, _), permit| {
                    use std::os::fd::AsRawFd;
                    let uid = crate::principal::peer_of(stream.as_raw_fd()).map(|p| p.uid);
                    let source = Source(uid.map_or("unix".into(), |u| format!("unix:uid={u}")));
                    let (daemon, shutdown) = (daemon.clone(), shutdown.clone());
                    connections.spawn(connection(
                        daemon, stream, source, None, role, shutdown, permit,
                    ));
                },
            )
            .await;
        }
    }
    connections.close();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), connections.wait()).await;
    Ok(())
}

/// Takes connections until `shutdown`, each under a permit of `limit` (none free: the next
/// connection waits in the kernel's backlog), handing each to `serve_one`.
async fn accept_loop<T, F>(
    limit: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    mut accept: impl FnMut() -> F,
    mut serve_one: impl FnMut(T, tokio::sync::OwnedSemaphorePermit),
) where
    F: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        let Some(permit) = permit(limit, shutdown).await else {
            break;
        };
        let accepted = tokio::select! {
            a = accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok(accepted) => serve_one(accepted, permit),
            Err(e) => accept_failed(&e).await,
        }
    }
}

async fn permit(
    limit: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        p = limit.clone().acquire_owned() => p.ok(),
        _ = shutdown.cancelled() => None,
    }
}

async fn accept_failed(e: &std::io::Error) {
    // Out of descriptors, or a connection reset before it was taken: wait a moment, go on.
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// The TLS handshake (within the header timeout), then the connection with the client
/// certificate's identity, if one was presented (and verified against the client CA).
async fn handshake(
    daemon: Arc<Daemon>,
    tls: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    source: Source,
    role: Role,
    shutdown: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let timeout = daemon.policy().header_timeout;
    let stream = match tokio::time::timeout(timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            // A certificate from another CA, a client that does not speak TLS…
            tracing::info!(target: "memwarden::security", event = "tls_handshake_failed",
                source = %source.0, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => return,
    };
    let client = super::tls::identity(stream.get_ref().1.peer_certificates()).map(Arc::new);
    connection(daemon, stream, source, client, role, shutdown, permit).await;
}

/// One connection: HTTP/1.1 with the policy's header timeout; on shutdown, the request in
/// progress finishes and the connection closes.
async fn connection<S>(
    daemon: Arc<Daemon>,
    stream: S,
    source: Source,
    client: Option<Arc<super::tls::ClientIdentity>>,
    role: Role,
    shutdown: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = daemon.policy().header_timeout;
    let service = service_fn(move |req| {
        daemon
            .clone()
            .handle(req, source.clone(), client.clone(), role)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
        }
    }
}
