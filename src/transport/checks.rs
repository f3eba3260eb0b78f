//! The protocol-edge checks every line passes before rmcp sees it: JSON, one object (no batch),
//! no repeated key, a method this server serves, a valid id, one `initialize` first, well-formed
//! `tools/call` params, no id already in flight. Each refusal is reported to the gate and, for a
//! request, answered here; these checks never pass on a message they could not fully read.

use rmcp::RoleServer;
use rmcp::service::RxJsonRpcMessage;
use serde_json::{Value, json};
use tokio::io::AsyncRead;

use super::{Gate, LineTransport, Refusal};

/// JSON-RPC "Parse error".
const PARSE_ERROR: i64 = -32700;
/// JSON-RPC "Invalid Request".
pub(super) const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC "Method not found".
const METHOD_NOT_FOUND: i64 = -32601;
/// JSON-RPC "Invalid params".
const INVALID_PARAMS: i64 = -32602;
/// MCP's "server not initialized".
const NOT_INITIALIZED: i64 = -32002;

/// The requests this server serves; any other method is answered here.
const REQUESTS: [&str; 4] = ["initialize", "ping", "tools/list", "tools/call"];
/// The notifications a client may send us; others are dropped here.
const NOTIFICATIONS: [&str; 4] = [
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// What the checks learned of a message that passed them.
struct Envelope {
    /// The request id, when it is a string or an integer.
    id: Option<Value>,
    /// True for a request (an `id` key, whatever its value), false for a notification.
    has_id: bool,
    /// The id an error reply goes to: `id`, or null when the id is malformed; none for a
    /// notification.
    reply_to: Option<Value>,
    method: String,
}

/// Why a message goes no further.
enum Stop {
    /// Report to the gate; a request gets an error reply.
    Refuse(Refused),
    /// Drop without a report (a notification before the handshake).
    Ignore,
}

/// A refusal decided by a check.
struct Refused {
    refusal: Refusal,
    method: Option<String>,
    reply_to: Option<Value>,
    code: i64,
    message: &'static str,
}

fn refuse(
    refusal: Refusal,
    method: Option<&str>,
    reply_to: Option<Value>,
    code: i64,
    message: &'static str,
) -> Stop {
    Stop::Refuse(Refused {
        refusal,
        method: method.map(str::to_owned),
        reply_to,
        code,
        message,
    })
}

impl<R, F> LineTransport<R, F>
where
    R: AsyncRead + Unpin + Send,
    F: Gate,
{
    /// Parses a complete line (terminator included). `None` means nothing for the service:
    /// a blank line, an ignorable notification, or a refusal already queued.
    pub(super) fn parse(&mut self, line: &[u8]) -> Option<RxJsonRpcMessage<RoleServer>> {
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
        let initialized = self.initialized;
        let checked = envelope(&value, line).and_then(|envelope| {
            check_method(&value, envelope, initialized, |id| self.waiting_for(id))
        });
        match checked {
            Ok(envelope) => self.pass(value, envelope),
            Err(Stop::Refuse(r)) => {
                let message = r.message.to_string();
                self.refuse_method(r.refusal, r.method.as_deref(), r.reply_to, r.code, message);
                None
            }
            Err(Stop::Ignore) => None,
        }
    }
}

/// The shape of the message: one object, no repeated key, a method.
fn envelope(value: &Value, line: &[u8]) -> Result<Envelope, Stop> {
    let Value::Object(object) = value else {
        let (refusal, message) = if value.is_array() {
            (Refusal::Batch, "Invalid Request: batches are not supported")
        } else {
            (Refusal::NotObject, "Invalid Request: not a JSON object")
        };
        return Err(refuse(
            refusal,
            None,
            Some(Value::Null),
            INVALID_REQUEST,
            message,
        ));
    };
    let id = object
        .get("id")
        .filter(|v| v.is_string() || v.is_i64() || v.is_u64())
        .cloned();
    let has_id = object.contains_key("id");
    let reply_to = has_id.then(|| id.clone().unwrap_or(Value::Null));
    if has_duplicate_keys(line) {
        return Err(refuse(
            Refusal::DuplicateKey,
            None,
            reply_to,
            INVALID_REQUEST,
            "Invalid Request: an object repeats a key",
        ));
    }
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        // A response (we send no requests) or a message without a method.
        let refusal = if object.contains_key("result") || object.contains_key("error") {
            Refusal::UnexpectedResponse
        } else {
            Refusal::InvalidRequest
        };
        let reply = (refusal == Refusal::InvalidRequest)
            .then_some(reply_to)
            .flatten();
        return Err(refuse(
            refusal,
            None,
            reply,
            INVALID_REQUEST,
            "Invalid Request: not a request this server understands",
        ));
    };
    Ok(Envelope {
        id,
        has_id,
        reply_to,
        method: method.to_owned(),
    })
}

/// The method against the session: served, a valid id, the handshake first and once,
/// `tools/call` params well formed, the id not in flight.
fn check_method(
    value: &Value,
    e: Envelope,
    initialized: bool,
    in_flight: impl Fn(&Value) -> bool,
) -> Result<Envelope, Stop> {
    let method = Some(e.method.as_str());
    let reply_to = || e.reply_to.clone();
    let known = if e.has_id {
        REQUESTS.contains(&e.method.as_str())
    } else {
        NOTIFICATIONS.contains(&e.method.as_str())
    };
    if !known {
        // A notification gets no reply (JSON-RPC 2.0 §4.1), but it is still audited.
        let why = Refusal::UnknownMethod;
        return Err(refuse(
            why,
            method,
            reply_to(),
            METHOD_NOT_FOUND,
            "Method not found",
        ));
    }
    if e.has_id && e.id.is_none() {
        let message = "Invalid Request: id must be a string or an integer";
        let why = Refusal::InvalidRequest;
        return Err(refuse(
            why,
            method,
            Some(Value::Null),
            INVALID_REQUEST,
            message,
        ));
    }
    if e.method == "initialize" && initialized {
        let message = "Invalid Request: this session is already initialized";
        let why = Refusal::Reinitialize;
        return Err(refuse(why, method, reply_to(), INVALID_REQUEST, message));
    }
    if !initialized && !matches!(e.method.as_str(), "initialize" | "ping") {
        // Requests other than ping wait for the handshake; notifications before it are
        // dropped, as JSON-RPC gives them no reply.
        if !e.has_id {
            return Err(Stop::Ignore);
        }
        let message = "not initialized: send initialize first";
        let why = Refusal::NotInitialized;
        return Err(refuse(why, method, reply_to(), NOT_INITIALIZED, message));
    }
    if e.method == "tools/call" && !call_params_ok(value.get("params")) {
        let message = "Invalid params: tools/call needs a string name and an object of arguments";
        let why = Refusal::BadCallParams;
        return Err(refuse(why, method, reply_to(), INVALID_PARAMS, message));
    }
    if let Some(id) = &e.id
        && in_flight(id)
    {
        let message = "Invalid Request: a request with this id is still in flight";
        let why = Refusal::DuplicateId;
        return Err(refuse(
            why,
            method,
            Some(id.clone()),
            INVALID_REQUEST,
            message,
        ));
    }
    Ok(e)
}

impl<R, F> LineTransport<R, F>
where
    R: AsyncRead + Unpin + Send,
    F: Gate,
{
    /// A message that passed the checks: through the gate (the handshake's own
    /// `notifications/initialized` passes free), then to rmcp, holding its permit.
    fn pass(&mut self, value: Value, e: Envelope) -> Option<RxJsonRpcMessage<RoleServer>> {
        let method = e.method.as_str();
        let handshake = method == "notifications/initialized" && !self.handshake_done;
        if handshake {
            self.handshake_done = true;
        } else if !matches!(method, "initialize" | "tools/call")
            && let Err(error) = self.gate.admit(method)
        {
            if let Some(id) = e.reply_to {
                self.reply_error(id, error);
            }
            return None;
        }
        let cancels = (method == "notifications/cancelled")
            .then(|| {
                value
                    .get("params")
                    .and_then(|p| p.get("requestId"))
                    .cloned()
            })
            .flatten();
        let Ok(msg) = serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) else {
            self.refuse_method(
                Refusal::InvalidRequest,
                Some(method),
                e.reply_to,
                INVALID_REQUEST,
                "Invalid Request: not a JSON-RPC 2.0 message this server understands".into(),
            );
            return None;
        };
        if method == "initialize" {
            self.initialized = true;
        }
        if let Some(request) = cancels {
            // rmcp drops the reply of a cancelled request: free its permit now.
            self.release(&request);
        }
        if let Some(id) = e.id {
            self.hold(&id);
        }
        Some(msg)
    }
}

/// A request body that passed the checks (one JSON-RPC message over HTTP).
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its method.
    pub method: String,
    /// True for a request, false for a notification.
    pub is_request: bool,
}

/// A request body the checks refused: what to audit and the JSON-RPC error to answer with
/// (none for a notification).
#[derive(Debug, Clone)]
pub struct BodyRefusal {
    /// Which check.
    pub refusal: Refusal,
    /// The method as sent (agent text: the gate decides what to keep of it).
    pub method: Option<String>,
    /// The whole JSON-RPC error message, for a request.
    pub reply: Option<Value>,
}

/// The same checks as a stdio line, for one HTTP request body: JSON, one object, no repeated
/// key, a method this server serves, a valid id, `initialize` only first (`initialized` says
/// whether the session has had it), well-formed `tools/call` params. rmcp tracks ids in flight
/// per HTTP stream itself.
pub fn check_body(body: &[u8], initialized: bool) -> Result<Checked, BodyRefusal> {
    let refused = |r: Refused| {
        BodyRefusal {
        refusal: r.refusal,
        method: r.method,
        reply: r.reply_to.map(|id| {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": r.code, "message": r.message}})
        }),
    }
    };
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        refused(Refused {
            refusal: Refusal::ParseError,
            method: None,
            reply_to: Some(Value::Null),
            code: PARSE_ERROR,
            message: "Parse error: not valid JSON",
        })
    })?;
    let checked =
        envelope(&value, body).and_then(|e| check_method(&value, e, initialized, |_| false));
    match checked {
        Ok(e) => Ok(Checked {
            method: e.method,
            is_request: e.has_id,
        }),
        Err(Stop::Refuse(r)) => Err(refused(r)),
        // A notification before the handshake: refused like the request would be, unanswered.
        Err(Stop::Ignore) => Err(BodyRefusal {
            refusal: Refusal::NotInitialized,
            method: None,
            reply: None,
        }),
    }
}

/// `tools/call` params as MCP defines them: an object whose `name` is a string and whose
/// `arguments`, when present, is an object.
fn call_params_ok(params: Option<&Value>) -> bool {
    let Some(Value::Object(params)) = params else {
        return false;
    };
    params.get("name").is_some_and(Value::is_string)
        && params
            .get("arguments")
            .is_none_or(|a| a.is_object() || a.is_null())
}

/// Checks that no object in a JSON text repeats a key, at any depth. serde_json keeps the last
/// of two equal keys; a validator and a consumer that disagree on which one counts is how
/// smuggling starts, so such a message is refused whole.
pub fn has_duplicate_keys(bytes: &[u8]) -> bool {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::collections::HashSet;

    struct Check;
    impl<'de> DeserializeSeed<'de> for Check {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Check {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Check)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut keys = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key) {
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                map.next_value_seed(Check)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Check.deserialize(&mut de).is_err()
}
