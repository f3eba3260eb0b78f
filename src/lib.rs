//! memwarden: a memory store for AI agents that treats the agent as untrusted.
//!
//! Agents speak MCP (JSON-RPC, one message per line) over stdio and get six tools: store, get,
//! search, list, update, delete. This page walks one tool call through the modules, in order
//! (DESIGN.md §3).
//!
//! 0. Before the first byte: [`cli::serve`] checks the data dir and keyring ([`config`],
//!    [`keys`]), loads and compiles the operator's [`policy`], opens both databases,
//!    decides the [`principal`] (the socket peer's uid, or `--principal`) and restricts itself
//!    with landlock ([`sandbox`]).
//! 1. **[`transport`]** reads one request line, refusing any line over the policy's cap
//!    *before* JSON parsing; answers what no MCP server should pass on (batches, non-objects,
//!    repeated keys, unknown methods, a second `initialize`, malformed `tools/call` params) with
//!    a JSON-RPC error, and stops reading while too many replies are unwritten (backpressure).
//!    Every message it refuses, and every `ping`, `tools/list` and notification it passes on,
//!    goes through the session's gate: audited when refused, and charged to the rate bucket.
//! 2. **rmcp** decodes the JSON-RPC message and routes `tools/call` to [`server`].
//! 3. **[`server`]** runs the gates: rate first (the session's token bucket; every call spends
//!    before any other work, and every refusal counts toward the cooldown,
//!    [`policy::limits`]), then session (still open?), tool (known, and granted to this
//!    principal by the policy), schema (raw arguments against the published JSON Schema,
//!    [`schema`], then serde with `deny_unknown_fields`; a failure is a JSON-RPC -32602 naming
//!    the path and keyword, never echoing the value or the agent's own keys).
//! 4. **[`tools`]** (one file per tool) apply the policy gate: namespace access, size limits,
//!    the read window, and the content rules ([`policy::rules`]: reject, redact, quarantine).
//! 5. **[`store`]** writes rows sealed with HMAC-SHA256 over a canonical encoding
//!    ([`store::seal`], [`canon`]) in `BEGIN IMMEDIATE` transactions, and verifies the seal of
//!    every row it reads: a row that fails is never served (get → INTEGRITY, search and list
//!    report it as `withheld`).
//! 6. **[`audit`]** appends one hash-chained, MAC'd event per call, allowed or refused — for a
//!    write inside its store transaction, before the commit; for a read, before the reply. If
//!    the append fails, nothing is done and the session ends.
//! 7. The result goes back as `structuredContent` plus the same JSON as text; refusals as
//!    `isError: true` with a stable code from [`error::ErrorCode`].
//!
//! Around the call: [`fsafe`] creates and replaces files in data and backup dirs without
//! following links, [`session`] holds the session's identity and counters, [`cli`] is the
//! operator's and auditor's command line (never exposed as tools), and [`logging`] writes JSON
//! lines to stderr — stdout carries protocol only, and no log line carries content, metadata
//! values, queries or keys.

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
pub mod keys;
pub mod logging;
pub mod policy;
pub mod principal;
pub mod sandbox;
pub mod schema;
pub mod server;
pub mod session;
pub mod sqlite_file;
pub mod sqlite_schema;
pub mod store;
pub mod tools;
pub mod transport;
