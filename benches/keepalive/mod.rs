//! Two minimal MCP clients that do the same, small amount of work per call, for comparing the
//! transports themselves: JSON-RPC lines on a `serve` process's stdin and stdout, and
//! Streamable HTTP on one kept-alive HTTP/1.1 connection to `serve-http` (as MCP clients that
//! speak HTTP keep their connections: the Python SDK's httpx, Claude Code). rmcp's unix-socket
//! client opens a new connection for every request ("one connection per request — the sidecar
//! proxy handles connection pooling"), so a call measured through it also pays a connect, an
//! accept, a new connection task in the daemon and a teardown.
//!
//! Both write one request, read until the response with its id, and check it is not an error;
//! neither validates more than that (the tests do).

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const PROTOCOL: &str = "2025-06-18";

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "memwarden-bench", "version": "0"}}})
}

fn initialized() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
}

fn tool_call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": args}})
}

/// Panics unless `response` answers `id` with a result that is not a tool error.
fn check(response: &Value, id: u64) {
    assert_eq!(response["id"], json!(id), "{response}");
    let result = &response["result"];
    assert!(
        result.is_object() && result["isError"] != json!(true),
        "call {id} failed: {response}"
    );
}

/// `serve` driven by JSON-RPC lines.
pub struct StdioLines {
    /// Killed when dropped (its stdin closing ends it anyway).
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next: u64,
}

impl StdioLines {
    /// Starts `cmd` (a `serve` command) and initializes a session.
    pub async fn start(mut cmd: tokio::process::Command) -> Self {
        let mut child = cmd
            .kill_on_drop(true)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut this = Self {
            _child: child,
            stdin,
            lines,
            next: 1,
        };
        this.send(&initialize(0)).await;
        let reply = this.read(0).await;
        assert!(reply["result"]["protocolVersion"].is_string(), "{reply}");
        this.send(&initialized()).await;
        this
    }

    async fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).unwrap();
        line.push(b'\n');
        self.stdin.write_all(&line).await.expect("write to serve");
    }

    /// Lines up to the response to `id` (notifications before it are passed over).
    async fn read(&mut self, id: u64) -> Value {
        loop {
            let line = self.lines.next_line().await.unwrap().expect("serve ended");
            let message: Value = serde_json::from_str(&line).expect("a JSON-RPC line");
            if message["id"] == json!(id) {
                return message;
            }
        }
    }

    /// Calls `tool`; panics unless it succeeds.
    pub async fn call(&mut self, tool: &str, args: Value) {
        let id = self.next;
        self.next += 1;
        self.send(&tool_call(id, tool, args)).await;
        let reply = self.read(id).await;
        check(&reply, id);
    }
}

/// `serve-http` on one kept-alive connection over its unix socket.
pub struct HttpKeptAlive {
    sender: SendRequest<Full<Bytes>>,
    token: String,
    session: String,
    next: u64,
}

impl HttpKeptAlive {
    /// Connects to `socket` and initializes a session with `token`.
    pub async fn start(socket: &Path, token: &str) -> Self {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect to serve-http");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        let mut this = Self {
            sender,
            token: token.to_string(),
            session: String::new(),
            next: 1,
        };
        let (session, reply) = this.post(&initialize(0), Some(0)).await;
        assert!(reply["result"]["protocolVersion"].is_string(), "{reply}");
        this.session = session.expect("a session id");
        this.post(&initialized(), None).await;
        this
    }

    /// POSTs `message`; returns the session id the daemon sent and, when `id` is given, the
    /// response to it (the body, JSON or server-sent events, read to its end: the connection
    /// then carries the next request).
    async fn post(&mut self, message: &Value, id: Option<u64>) -> (Option<String>, Value) {
        let mut request = hyper::Request::post("/mcp")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {}", self.token));
        if !self.session.is_empty() {
            request = request
                .header("mcp-session-id", &self.session)
                .header("mcp-protocol-version", PROTOCOL);
        }
        let body = Full::new(Bytes::from(serde_json::to_vec(message).unwrap()));
        self.sender.ready().await.expect("connection ready");
        let response = self
            .sender
            .send_request(request.body(body).unwrap())
            .await
            .expect("HTTP request");
        let status = response.status();
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(status.is_success(), "HTTP {status}");
        let Some(id) = id else {
            return (session, Value::Null);
        };
        let text = std::str::from_utf8(&body).expect("UTF-8 body");
        let reply = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).expect("a JSON body")
        } else {
            // Server-sent events: the `data:` line of the event that answers `id`.
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|m| m["id"] == json!(id))
                .expect("the response among the events")
        };
        (session, reply)
    }

    /// Calls `tool`; panics unless it succeeds.
    pub async fn call(&mut self, tool: &str, args: Value) {
        let id = self.next;
        self.next += 1;
        let (_, reply) = self.post(&tool_call(id, tool, args), Some(id)).await;
        check(&reply, id);
    }
}
