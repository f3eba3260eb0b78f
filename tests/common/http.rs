//! `memwarden serve-http` for tests: the real daemon on a loopback port and a unix socket, a
//! raw HTTP/1.1 client (so tests can send exactly the bytes an attacker would), and rmcp's
//! Streamable HTTP client over the unix socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};

use super::{Client, TestDir, bin};

/// A running daemon; its TCP address's client through `Deref`.
pub struct Daemon {
    pub child: Child,
    pub http: Http,
    /// Its unix socket, when started with one.
    pub socket: Option<PathBuf>,
}

impl std::ops::Deref for Daemon {
    type Target = Http;

    fn deref(&self) -> &Http {
        &self.http
    }
}

/// A raw HTTP/1.1 client of one address.
#[derive(Debug, Clone)]
pub struct Http {
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

/// A free loopback port (bound and released: another process could take it first, which
/// the daemon's start would report).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestDir {
    /// `memwarden token issue PRINCIPAL` on this data dir's tokens file: the token.
    pub fn issue_token(&self, principal: &str) -> String {
        let out = self.cli(&["token", "issue", principal]);
        super::stdout_ok(&out).trim().to_string()
    }

    /// Starts `serve-http` on a free loopback port with `extra` flags; waits for /healthz.
    pub fn serve_http(&self, extra: &[&str]) -> Daemon {
        let addr = format!("127.0.0.1:{}", free_port());
        self.serve_http_on(&addr, extra)
    }

    /// Starts `serve-http` on a unix socket in the temp dir (for rmcp's client).
    pub fn serve_http_unix(&self, extra: &[&str]) -> Daemon {
        let path = self.tmp.path().join("http.sock");
        self.serve_http_on(&format!("unix:{}", path.display()), extra)
    }

    /// Starts `serve-http --listen ADDR` (loopback `IP:PORT` or `unix:PATH`).
    pub fn serve_http_on(&self, addr: &str, extra: &[&str]) -> Daemon {
        let mut args: Vec<std::ffi::OsString> = self.store_args();
        args.extend(extra.iter().map(std::ffi::OsString::from));
        spawn(&self.data(), addr, &args, &self.stderr_log())
    }
}

/// Starts `serve-http --data-dir DATA --listen ADDR ARGS…`, its log appended to `log`; waits
/// until it listens.
pub fn spawn(
    data: &std::path::Path,
    addr: &str,
    args: &[std::ffi::OsString],
    log: &std::path::Path,
) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(bin())
        .arg("serve-http")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", addr])
        .args(args)
        .env("MEMWARDEN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn serve-http");
    let daemon = Daemon {
        child,
        http: Http {
            addr: addr.to_string(),
        },
        socket: addr.strip_prefix("unix:").map(PathBuf::from),
    };
    daemon.wait_ready();
    daemon
}

impl Daemon {
    /// Waits until `/healthz` answers (any status), 20 s at most.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let up = match &self.socket {
                Some(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
                None => TcpStream::connect(&self.addr).is_ok(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("serve-http did not start listening on {}", self.addr);
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }

    /// SIGTERM; asserts a clean exit, showing the daemon's log when it was not.
    pub fn stop_ok(self, dir: &TestDir) {
        let status = self.stop();
        assert!(
            status.success(),
            "serve-http exited {status}: {}",
            String::from_utf8_lossy(&super::read_all(&dir.stderr_log()))
        );
    }

    /// SIGKILL.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// rmcp's Streamable HTTP client over the daemon's unix socket, with `token`.
    pub async fn rmcp_client(&self, token: &str) -> Client {
        let socket = self.socket.as_ref().expect("started with a unix socket");
        let config = StreamableHttpClientTransportConfig::with_uri("http://localhost/mcp")
            .auth_header(token.to_string());
        let transport = StreamableHttpClientTransport::from_unix_socket_with_config(
            socket.to_str().unwrap(),
            config,
        );
        Client {
            service: ().serve(transport).await.expect("MCP initialize over HTTP"),
        }
    }
}

impl Http {
    /// One request, `Connection: close`; the whole response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut raw =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    /// Sends `bytes` as they are; reads the response to the end.
    pub fn raw(&self, bytes: &[u8]) -> Response {
        let mut s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // The daemon may answer (413) before taking the whole body: a failed write is fine.
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Response::parse(&out)
    }

    /// A JSON-RPC POST to /mcp with `token` and, when given, the session id.
    pub fn post(&self, token: Option<&str>, session: Option<&str>, body: &Value) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        if let Some(s) = session {
            headers.push(("Mcp-Session-Id", s));
            headers.push(("MCP-Protocol-Version", "2025-06-18"));
        }
        self.request("POST", "/mcp", &headers, body.to_string().as_bytes())
    }

    /// `initialize` + `notifications/initialized` with `token`: the session id.
    pub fn open_session(&self, token: &str) -> String {
        let r = self.post(Some(token), None, &initialize());
        assert_eq!(r.status, 200, "initialize: {}", r.body);
        let id = r
            .header("mcp-session-id")
            .expect("Mcp-Session-Id")
            .to_string();
        let n = self.post(
            Some(token),
            Some(&id),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        );
        assert_eq!(n.status, 202, "{}", n.body);
        id
    }

    /// A tool call in session `id`: the JSON-RPC response message.
    pub fn call(&self, token: &str, id: &str, n: u64, tool: &str, args: Value) -> Value {
        let r = self.post(
            Some(token),
            Some(id),
            &json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                    "params": {"name": tool, "arguments": args}}),
        );
        assert_eq!(r.status, 200, "{tool}: {} {}", r.status, r.body);
        r.message()
            .unwrap_or_else(|| panic!("no JSON-RPC message in {}", r.body))
    }
}

/// An `initialize` request.
pub fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                      "clientInfo": {"name": "raw-test", "version": "1"}}})
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw).into_owned();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            return Self {
                status: 0,
                headers: Vec::new(),
                body: text,
            };
        };
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        Self {
            status,
            headers,
            body,
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The JSON-RPC message in the body: the body itself, or the SSE event carrying one.
    pub fn message(&self) -> Option<Value> {
        if let Ok(v) = serde_json::from_str::<Value>(&self.body) {
            return Some(v);
        }
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("jsonrpc").is_some())
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            out.push_str(&after[..n.min(after.len())]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}
