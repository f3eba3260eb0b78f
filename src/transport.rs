//! Newline-delimited JSON-RPC over any byte stream, with a hard cap on the request line.
//!
//! rmcp's own stdio transport silently drops an over-long line and ignores unparsable input, so
//! the client never hears why its request vanished. This transport refuses an over-long line
//! *before* any JSON parsing (it never buffers more than the cap), answers it with a JSON-RPC
//! error, and keeps serving the next line. Before `initialize`, any other request is answered
//! with an error instead of being handed to rmcp (which would end the session and log the whole
//! message). It never logs line contents.
//!
//! One writer task owns the output stream and takes whole lines from a bounded channel, so
//! responses and error replies never interleave mid-line, and a client that stops reading makes
//! this side stop reading too, instead of queueing replies without bound.

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// JSON-RPC "Parse error".
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request".
const INVALID_REQUEST: i64 = -32600;
/// MCP's "server not initialized".
const NOT_INITIALIZED: i64 = -32002;
/// Lines waiting for the writer; a full queue stops reading.
const QUEUE: usize = 64;

/// What the transport refused, for the server's audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A line over the cap, refused unread.
    OversizeLine,
    /// Not JSON.
    ParseError,
    /// JSON, but not a JSON-RPC message we understand.
    InvalidRequest,
    /// A request before `initialize`.
    NotInitialized,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OversizeLine => "oversize_line",
            Self::ParseError => "parse_error",
            Self::InvalidRequest => "invalid_request",
            Self::NotInitialized => "not_initialized",
        }
    }
}

/// A server transport over a reader and a writer.
pub struct LineTransport<R, F> {
    read: BufReader<R>,
    line: Vec<u8>,
    max_line: usize,
    /// Set while skipping the rest of a refused line. Kept on the struct because `receive` runs
    /// inside a `select!` and may be dropped between reads.
    discarding: bool,
    /// Set once EOF was seen (a last line without a newline is still served).
    eof: bool,
    initialized: bool,
    /// An error reply not yet queued; kept here so a cancelled `receive` does not lose it.
    pending: Option<Vec<u8>>,
    out: mpsc::Sender<Vec<u8>>,
    /// Told about every refusal (the server audits it).
    on_refusal: F,
}

enum Read {
    Line,
    Oversized,
    Eof,
    Io(std::io::Error),
}

fn line_of(message: &impl serde::Serialize) -> std::io::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

impl<R, F> LineTransport<R, F>
where
    R: AsyncRead + Unpin + Send,
    F: Fn(Refusal) + Send,
{
    /// `max_line` bounds a line's content, not counting its `\n` or `\r\n`.
    ///
    /// Returns the writer task too: it ends once the transport and every in-flight send are
    /// gone and it has written all they queued, so awaiting it flushes the last reply (rmcp
    /// drops the transport without closing it when `initialize` fails).
    pub fn new<W>(read: R, write: W, max_line: usize, on_refusal: F) -> (Self, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, mut lines) = mpsc::channel::<Vec<u8>>(QUEUE);
        let writer = tokio::spawn(async move {
            let mut write = write;
            while let Some(line) = lines.recv().await {
                let written = async {
                    write.write_all(&line).await?;
                    write.flush().await
                }
                .await;
                if let Err(e) = written {
                    tracing::info!(error = %e, "the client stopped reading");
                    break;
                }
            }
        });
        let transport = Self {
            read: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            max_line,
            discarding: false,
            eof: false,
            initialized: false,
            pending: None,
            out,
            on_refusal,
        };
        (transport, writer)
    }

    /// Reads one line into `self.line` without ever holding more than the cap of it.
    /// Cancellation-safe: bytes are consumed only together with their copy into `self.line`.
    async fn read_line(&mut self) -> Read {
        // Room for the content plus "\r\n"; the exact check happens once the line is whole.
        let room = self.max_line + 2;
        loop {
            if self.eof {
                return Read::Eof;
            }
            let available = match self.read.fill_buf().await {
                Ok([]) => {
                    self.eof = true;
                    // A last line without its newline is still a line.
                    let partial = !self.line.is_empty() && !self.discarding;
                    return if partial { Read::Line } else { Read::Eof };
                }
                Ok(bytes) => bytes,
                Err(e) => return Read::Io(e),
            };
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.map_or(available.len(), |i| i + 1);
            let mut outcome = None;
            if self.discarding {
                if newline.is_some() {
                    self.discarding = false;
                }
            } else if self.line.len() + take > room {
                self.line.clear();
                self.discarding = newline.is_none();
                outcome = Some(Read::Oversized);
            } else {
                self.line.extend_from_slice(&available[..take]);
                if newline.is_some() {
                    outcome = Some(Read::Line);
                }
            }
            self.read.consume(take);
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }

    fn refuse(&mut self, refusal: Refusal, id: Value, code: i64, message: String) {
        (self.on_refusal)(refusal);
        let reply =
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
        self.pending = line_of(&reply).ok();
    }

    /// Parses a complete line (terminator included). `None` means nothing for the service:
    /// a blank line, an ignorable notification, or a refusal already queued.
    fn parse(&mut self, line: &[u8]) -> Option<RxJsonRpcMessage<RoleServer>> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line {
            self.refuse_oversize();
            return None;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(column = e.column(), "unparsable request line");
                self.refuse(
                    Refusal::ParseError,
                    Value::Null,
                    PARSE_ERROR,
                    "Parse error: not valid JSON".into(),
                );
                return None;
            }
        };
        let id = value
            .get("id")
            .filter(|v| v.is_string() || v.is_i64() || v.is_u64())
            .cloned();
        let has_id = value.get("id").is_some();
        let method = value
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) {
            Ok(msg) => {
                if !self.initialized {
                    match method.as_deref() {
                        Some("initialize") => self.initialized = true,
                        // Requests other than ping wait for the handshake; notifications and
                        // responses before it are dropped, as JSON-RPC gives them no reply.
                        Some("ping") => {}
                        Some(_) if has_id => {
                            self.refuse(
                                Refusal::NotInitialized,
                                id.unwrap_or(Value::Null),
                                NOT_INITIALIZED,
                                "not initialized: send initialize first".into(),
                            );
                            return None;
                        }
                        _ => return None,
                    }
                }
                Some(msg)
            }
            // A notification gets no reply, even a bad one (JSON-RPC 2.0 §4.1).
            Err(_) if !has_id => None,
            Err(_) => {
                self.refuse(
                    Refusal::InvalidRequest,
                    id.unwrap_or(Value::Null),
                    INVALID_REQUEST,
                    "Invalid Request: not a JSON-RPC 2.0 message this server understands".into(),
                );
                None
            }
        }
    }

    fn refuse_oversize(&mut self) {
        tracing::warn!(
            target: "memwarden::security",
            event = "oversize_line",
            limit = self.max_line,
            "request line over the limit refused before parsing"
        );
        let message = format!("request line exceeds {} bytes; refused", self.max_line);
        self.refuse(Refusal::OversizeLine, Value::Null, INVALID_REQUEST, message);
    }
}

impl<R, F> Transport<RoleServer> for LineTransport<R, F>
where
    R: AsyncRead + Unpin + Send,
    F: Fn(Refusal) + Send,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.out.clone();
        async move {
            let line = line_of(&item)?;
            out.send(line)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "writer closed"))
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            if let Some(reply) = self.pending.take() {
                // `reserve` is cancellation-safe; the reply goes back to `pending` meanwhile.
                self.pending = Some(reply);
                let permit = self.out.reserve().await.ok()?;
                if let Some(reply) = self.pending.take() {
                    permit.send(reply);
                }
            }
            match self.read_line().await {
                Read::Line => {
                    let line = std::mem::take(&mut self.line);
                    let parsed = self.parse(&line);
                    self.line = line;
                    self.line.clear();
                    if let Some(msg) = parsed {
                        return Some(msg);
                    }
                }
                Read::Oversized => self.refuse_oversize(),
                Read::Eof => return None,
                Read::Io(e) => {
                    tracing::warn!(error = %e, "reading the request stream failed");
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        // Swap our sender for a closed one: once in-flight sends finish, the writer drains the
        // queue and ends (the server awaits it).
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.out, closed));
        Ok(())
    }
}
