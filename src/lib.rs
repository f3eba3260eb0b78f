//! memwarden: a memory store for AI agents that treats the agent as untrusted.
//!
//! Agents speak MCP (JSON-RPC, one message per line) over stdio and get six tools: store, get,
//! search, list, update, delete. This page walks one tool call through the modules, in order
//! (DESIGN.md §3).
//!
//! 0. Before the first byte: [`cli::serve`] checks the data dir and keyring ([`config`],
//!    [`keys`]), loads and compiles the operator's [`policy`], opens both databases, decides the
//!    [`principal`] (the socket peer's uid, or `--principal`) and restricts itself with landlock
//!    ([`sandbox`]).
//! 1. **[`transport`]** reads one request line, refusing any line over the policy's cap
//!    *before* JSON parsing; answers what no MCP server should pass on (batches, non-objects,
//!    repeated keys, unknown methods, a second `initialize`, malformed `tools/call` params) with
//!    a JSON-RPC error, and stops reading while too many replies are unwritten (backpressure).
//!    Every message it refuses, and every `ping`, `tools/list` and notification it passes on,
//!    goes through the session's gate: audited when refused, and charged to the rate bucket.
//! 2. **rmcp** decodes the JSON-RPC message and routes `tools/call` to [`server`], whose
//!    handler runs the call on a blocking thread, one call at a time per session. The server
//!    keeps what a process shares ([`server::Shared`]: schemas, store, audit log, policy, the
//!    fail-closed latch) apart from what one session owns ([`server::Server`]).
//! 3. **[`server`]** runs the gates: rate first (the session's token bucket; every call spends
//!    before any other work, and every refusal counts toward the cooldown,
//!    [`policy::limits`]), then session (still open?), tool (known — the [`catalog`] — and
//!    granted to this principal by the policy), schema (raw arguments against the published
//!    JSON Schema, [`schema`], then serde with `deny_unknown_fields`; a failure is a JSON-RPC
//!    -32602 naming the path and keyword, never echoing the value or the agent's own keys).
//! 4. **[`tools`]** (one file per tool) apply the policy gate: namespace rights and the read
//!    window through the caller's [`store::Visibility`], size limits, and the content rules
//!    ([`policy::rules`]: reject, redact, quarantine). A read returns its result; a write
//!    returns its result and its still-open [`store::PendingWrite`].
//! 5. **[`store`]** is the one storage interface: sealing ([`store::seal`], [`canon`]), row
//!    verification ([`store::rows`]: a row that fails is never served — get → INTEGRITY, search
//!    and list report it as `withheld`), the ledger's rules, visibility, quotas and ranking
//!    ([`store::rank`]) sit above a [`store::Backend`] that moves rows in and out
//!    ([`store::sqlite`]: memory.db, SQL and FTS5, `BEGIN IMMEDIATE` transactions).
//! 6. **[`audit`]** appends one hash-chained, MAC'd event per call, allowed or refused. A write
//!    commits only together with its event ([`store::PendingWrite::commit`]: the backend puts
//!    the event first); a read's event is appended before its reply. If the append fails,
//!    nothing is done and every session ends.
//! 7. The result goes back as `structuredContent` plus the same JSON as text; refusals as
//!    `isError: true` with a stable code from [`error::ErrorCode`].
//!
//! Around the call: [`fsafe`] creates and replaces files in data and backup dirs without
//! following links, [`datalock`] keeps restores and sessions apart, [`clock`] stamps times,
//! [`sqlite_file`] and [`sqlite_schema`] are what every SQLite file of ours gets (WAL, the
//! migration runner, the stray-object check), [`session`] holds the session's identity and
//! counters, [`pgconn`] reads the PostgreSQL database file and is the one place a connection
//! to PostgreSQL is made (TLS with certificate verification, or plaintext where that is safe),
//! [`cli`] is the operator's and auditor's command line (never exposed as tools), and
//! [`logging`] writes JSON lines to stderr — stdout carries protocol only, and no log line
//! carries content, metadata values, queries or keys.
//!
//! The top-level modules form a DAG (no import cycle; `tests/layout.rs` keeps it so): leaves
//! (`catalog`, `clock`, `canon`, `error`, `fsafe`, `agent_text`, `sqlite_file`,
//! `sqlite_schema`) ← `keys`, `pgconn` ← `audit`, `store` ← `config`, `policy`, `schema` ← `tools` ←
//! `server` ← `cli`.

pub mod agent_text;
pub mod audit;
pub mod canon;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod datalock;
pub mod error;
pub mod fsafe;
pub mod http;
pub mod keys;
pub mod logging;
pub mod pgconn;
pub mod policy;
pub mod principal;
pub mod prometheus;
pub mod sandbox;
pub mod schema;
pub mod server;
pub mod session;
pub mod sqlite_file;
pub mod sqlite_schema;
pub mod store;
pub mod tools;
pub mod transport;
