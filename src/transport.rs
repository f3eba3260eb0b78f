//! Newline-delimited JSON-RPC over any byte stream, with a hard cap on the request line.
//!
//! rmcp's own stdio transport silently drops an over-long line and ignores unparsable input, so
//! the client never hears why its request vanished. This transport refuses an over-long line
//! *before* any JSON parsing (it never buffers more than the cap), answers it with a JSON-RPC
//! error, and keeps serving the next line. It owns both halves of the stream, so protocol
//! output and these error replies never interleave mid-line. It never logs line contents.

use std::sync::Arc;

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

/// JSON-RPC "Parse error".
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request".
const INVALID_REQUEST: i64 = -32600;

/// A server transport over a reader and a writer.
pub struct LineTransport<R, W, F> {
    read: BufReader<R>,
    line: Vec<u8>,
    max_line: usize,
    /// Set while skipping the rest of a refused line. Kept on the struct because `receive` runs
    /// inside a `select!` and may be dropped between reads.
    discarding: bool,
    write: Arc<Mutex<W>>,
    /// Told about every refused over-long line (the server audits it).
    on_oversize: F,
}

enum Read {
    Line,
    Oversized,
    Eof,
    Io(std::io::Error),
}

impl<R, W, F> LineTransport<R, W, F>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
    F: Fn() + Send,
{
    pub fn new(read: R, write: W, max_line: usize, on_oversize: F) -> Self {
        Self {
            read: BufReader::with_capacity(64 * 1024, read),
            line: Vec::new(),
            max_line,
            discarding: false,
            write: Arc::new(Mutex::new(write)),
            on_oversize,
        }
    }

    /// Reads one line into `self.line` without ever holding more than `max_line` bytes of it.
    /// Cancellation-safe: bytes are consumed only together with their copy into `self.line`.
    async fn read_line(&mut self) -> Read {
        loop {
            let available = match self.read.fill_buf().await {
                Ok([]) => return Read::Eof,
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
            } else if self.line.len() + take > self.max_line + 1 {
                // +1: the newline itself does not count against the cap.
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

    /// Sends an error reply from a task of its own, so a cancelled `receive` cannot leave half a
    /// line on the wire.
    fn reply_error(&self, id: Value, code: i64, message: String) {
        let write = self.write.clone();
        let reply =
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
        tokio::spawn(async move {
            let mut bytes = reply.to_string().into_bytes();
            bytes.push(b'\n');
            let mut w = write.lock().await;
            if let Err(e) = async {
                w.write_all(&bytes).await?;
                w.flush().await
            }
            .await
            {
                tracing::warn!(error = %e, "could not write an error reply");
            }
        });
    }

    /// Parses a complete line. `None` means: nothing to hand to the service (blank line, an
    /// ignorable notification, or an error already answered).
    fn parse(&self, line: &[u8]) -> Option<RxJsonRpcMessage<RoleServer>> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let value: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(column = e.column(), "unparsable request line");
                self.reply_error(
                    Value::Null,
                    PARSE_ERROR,
                    "Parse error: not valid JSON".into(),
                );
                return None;
            }
        };
        let id = value.get("id").cloned();
        match serde_json::from_value(value) {
            Ok(msg) => Some(msg),
            // A notification gets no reply, even a bad one (JSON-RPC 2.0 §4.1).
            Err(_) if id.is_none() => None,
            Err(_) => {
                let id = id
                    .filter(|v| v.is_string() || v.is_i64() || v.is_u64())
                    .unwrap_or(Value::Null);
                self.reply_error(
                    id,
                    INVALID_REQUEST,
                    "Invalid Request: not a JSON-RPC 2.0 message this server understands".into(),
                );
                None
            }
        }
    }
}

impl<R, W, F> Transport<RoleServer> for LineTransport<R, W, F>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
    F: Fn() + Send,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let write = self.write.clone();
        async move {
            let mut bytes = serde_json::to_vec(&item).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            let mut w = write.lock().await;
            w.write_all(&bytes).await?;
            w.flush().await
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
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
                Read::Oversized => {
                    tracing::warn!(
                        target: "memwarden::security",
                        event = "oversize_line",
                        limit = self.max_line,
                        "request line over the limit refused before parsing"
                    );
                    (self.on_oversize)();
                    self.reply_error(
                        Value::Null,
                        INVALID_REQUEST,
                        format!("request line exceeds {} bytes; refused", self.max_line),
                    );
                }
                Read::Eof => return None,
                Read::Io(e) => {
                    tracing::warn!(error = %e, "reading the request stream failed");
                    return None;
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.write.lock().await.flush().await
    }
}
