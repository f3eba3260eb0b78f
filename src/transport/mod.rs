//! Newline-delimited JSON-RPC over any byte stream, with a hard cap on the request line.
//!
//! rmcp's own stdio transport silently drops an over-long line and ignores unparsable input, so
//! the client never hears why its request vanished. This transport refuses an over-long line
//! *before* any JSON parsing (it never buffers more than the cap), answers it with a JSON-RPC
//! error, and keeps serving the next line. Before `initialize`, any other request is answered
//! with an error instead of being handed to rmcp (which would end the session and log the whole
//! message). It never logs line contents.
//!
//! Every message passes a [`Gate`] before rmcp sees it: JSON-RPC batches, non-objects, duplicate
//! keys, unknown methods, a second `initialize` and malformed `tools/call` params are answered
//! here and reported to the gate (which audits and rate-limits them); `ping`, `tools/list` and
//! notifications spend from the session's rate bucket through the gate too. rmcp only ever sees
//! the methods this server serves, so none of its log lines can quote an agent's method name.
//!
//! One writer task owns the output stream and takes whole lines from a bounded channel, so
//! responses and error replies never interleave mid-line. Backpressure runs end to end: a
//! request holds one of [`MAX_IN_FLIGHT`] permits from the moment it is read until its reply has
//! been written, and no line is read without a permit. A client that stops reading stops this
//! side reading too, so a session's memory is bounded whatever the client does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::RoleServer;
use rmcp::model::JsonRpcMessage;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

mod checks;

use checks::INVALID_REQUEST;
pub use checks::{BodyRefusal, Checked, check_body, has_duplicate_keys};

/// Lines waiting for the writer; a full queue stops reading.
const QUEUE: usize = 64;
/// Requests read whose reply has not been written yet; at this many, reading stops.
pub const MAX_IN_FLIGHT: usize = 8;

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
    /// A JSON array: a batch (MCP has none since 2025-06-18) or `[]`.
    Batch,
    /// JSON that is not an object.
    NotObject,
    /// An object with a key given twice, at any depth.
    DuplicateKey,
    /// A method this server does not serve.
    UnknownMethod,
    /// `initialize` on a session that already has one.
    Reinitialize,
    /// `tools/call` whose `name` is not a string or whose `arguments` is not an object.
    BadCallParams,
    /// A request whose id is already in flight.
    DuplicateId,
    /// A response from the client: this server sends no requests.
    UnexpectedResponse,
    /// A request or notification the gate refused (rate, cooldown, session over).
    Gated,
}

impl Refusal {
    /// The refusal's name in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OversizeLine => "oversize_line",
            Self::ParseError => "parse_error",
            Self::InvalidRequest => "invalid_request",
            Self::NotInitialized => "not_initialized",
            Self::Batch => "batch",
            Self::NotObject => "not_object",
            Self::DuplicateKey => "duplicate_key",
            Self::UnknownMethod => "unknown_method",
            Self::Reinitialize => "reinitialize",
            Self::BadCallParams => "bad_call_params",
            Self::DuplicateId => "duplicate_id",
            Self::UnexpectedResponse => "unexpected_response",
            Self::Gated => "gated",
        }
    }
}

/// What the transport asks of the session before a message goes any further.
pub trait Gate: Send {
    /// A message refused by the transport itself: audit it as one call and count it toward the
    /// cooldown. `method` is the agent's text, unchecked (the gate decides what to keep of it).
    fn refused(&self, refusal: Refusal, method: Option<&str>);
    /// A request or notification about to go to rmcp (not `initialize` or `tools/call`, which
    /// the server gates itself): spend from the rate bucket. `Err` carries the JSON-RPC error
    /// object to answer with; the gate has audited the refusal.
    fn admit(&self, method: &str) -> Result<(), Value>;
}

/// Permits of requests whose replies are not written yet, by request id.
type Waiting = Arc<Mutex<HashMap<String, OwnedSemaphorePermit>>>;

/// A line for the writer, with the permit its write releases.
type OutLine = (Vec<u8>, Option<OwnedSemaphorePermit>);

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
    /// Set once the handshake's `notifications/initialized` has been passed on (for free: it
    /// is part of the handshake; any later one spends from the bucket).
    handshake_done: bool,
    /// An error reply not yet queued; kept here so a cancelled `receive` does not lose it.
    pending: Option<Vec<u8>>,
    out: mpsc::Sender<OutLine>,
    /// Asked about every message; told about every refusal.
    gate: F,
    in_flight: Arc<Semaphore>,
    /// The permit for the next line, once acquired (kept here: `receive` can be cancelled).
    permit: Option<OwnedSemaphorePermit>,
    waiting: Waiting,
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

/// The key a request id is tracked under.
fn id_key(id: &Value) -> String {
    id.to_string()
}

impl<R, F> LineTransport<R, F>
where
    R: AsyncRead + Unpin + Send,
    F: Gate,
{
    /// `max_line` bounds a line's content, not counting its `\n` or `\r\n`.
    ///
    /// Returns the writer task too: it ends once the transport and every in-flight send are
    /// gone and it has written all they queued, so awaiting it flushes the last reply (rmcp
    /// drops the transport without closing it when `initialize` fails).
    pub fn new<W>(read: R, write: W, max_line: usize, gate: F) -> (Self, JoinHandle<()>)
    where
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out, mut lines) = mpsc::channel::<OutLine>(QUEUE);
        let writer = tokio::spawn(async move {
            let mut write = write;
            while let Some((line, permit)) = lines.recv().await {
                let written = async {
                    write.write_all(&line).await?;
                    write.flush().await
                }
                .await;
                // The reply is out: its request no longer counts as in flight.
                drop(permit);
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
            handshake_done: false,
            pending: None,
            out,
            gate,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            permit: None,
            waiting: Arc::default(),
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
        self.refuse_method(refusal, None, Some(id), code, message);
    }

    /// Reports a refusal to the gate and, for a request (`id` given), queues its error reply.
    fn refuse_method(
        &mut self,
        refusal: Refusal,
        method: Option<&str>,
        id: Option<Value>,
        code: i64,
        message: String,
    ) {
        self.gate.refused(refusal, method);
        if let Some(id) = id {
            let error = json!({"code": code, "message": message});
            self.reply_error(id, error);
        }
    }

    fn reply_error(&mut self, id: Value, error: Value) {
        let reply = json!({"jsonrpc": "2.0", "id": id, "error": error});
        self.pending = line_of(&reply).ok();
    }

    fn waiting_for(&self, id: &Value) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id_key(id))
    }

    /// Moves this line's permit to the request, until its reply is written.
    fn hold(&mut self, id: &Value) {
        if let Some(permit) = self.permit.take() {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id_key(id), permit);
        }
    }

    fn release(&mut self, id: &Value) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id_key(id));
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
    F: Gate,
{
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let out = self.out.clone();
        let id = match &item {
            JsonRpcMessage::Response(r) => serde_json::to_value(&r.id).ok(),
            JsonRpcMessage::Error(e) => e.id.as_ref().and_then(|id| serde_json::to_value(id).ok()),
            _ => None,
        };
        let permit = id.and_then(|id| {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id_key(&id))
        });
        async move {
            let line = line_of(&item)?;
            out.send((line, permit))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "writer closed"))
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            if let Some(reply) = self.pending.take() {
                // `reserve` is cancellation-safe; the reply goes back to `pending` meanwhile.
                self.pending = Some(reply);
                let slot = self.out.reserve().await.ok()?;
                if let Some(reply) = self.pending.take() {
                    slot.send((reply, None));
                }
            }
            if self.permit.is_none() {
                // No line is read until a request could be taken on: a client that does not
                // read its replies stops being read (backpressure, not buffering).
                let permit = self.in_flight.clone().acquire_owned().await.ok()?;
                self.permit = Some(permit);
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
