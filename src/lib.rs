//! memwarden: a memory store for AI agents that treats the agent as untrusted.
//!
//! Agents speak MCP (JSON-RPC, one message per line) over stdio and get six tools: store, get,
//! search, list, update, delete. This page walks one tool call through the modules, in order.
//!
//! 1. **[`transport`]** reads one request line, refusing any line over the cap *before* JSON
//!    parsing, and answers malformed JSON with a JSON-RPC error instead of silence.
//! 2. **rmcp** decodes the JSON-RPC message and routes `tools/call` to [`server::Server`].
//! 3. **[`server`]** is the gate sequence: the tool must be one we know ([`tools::ToolName`]);
//!    its raw arguments must pass the published JSON Schema ([`schema`], compiled once from
//!    `schema/tools/*.json`), then serde with `deny_unknown_fields`. A schema failure is a
//!    JSON-RPC -32602 naming the path and keyword, never echoing the value.
//! 4. The principal and session come from the launch, not the call ([`principal`],
//!    [`session`]).
//! 5. **[`tools`]** (one file per tool) enforce what schemas cannot express: byte sizes,
//!    cursors, time ranges.
//! 6. **[`store`]** writes rows sealed with HMAC-SHA256 over a canonical encoding
//!    ([`store::seal`], keys from [`store::keyring`]) in `BEGIN IMMEDIATE` transactions, and
//!    verifies the seal of every row it reads: a row that fails is never served
//!    (get → INTEGRITY, search and list report it as `withheld`).
//! 7. The result goes back as `structuredContent` plus the same JSON as text; refusals as
//!    `isError: true` with a stable code from [`error::ErrorCode`].
//!
//! Around the call: [`config`] checks the data dir and holds the limits, [`cli`] is the
//! operator's command line (never exposed as tools), and [`logging`] writes JSON lines to
//! stderr — stdout carries protocol only, and no log line carries content, metadata values,
//! queries or keys.

pub mod audit;
pub mod canon;
pub mod cli;
pub mod config;
pub mod error;
pub mod logging;
pub mod policy;
pub mod principal;
pub mod sandbox;
pub mod schema;
pub mod server;
pub mod session;
pub mod store;
pub mod tools;
pub mod transport;
