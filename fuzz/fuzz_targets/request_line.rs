//! A raw request line through the server's whole call pipeline in-process: JSON-RPC framing,
//! tool gate, schema, rate and policy gates, store and audit. Whatever is refused changes
//! nothing in the store; whatever is accepted passed its schema; nothing panics.
#![no_main]

use std::sync::Arc;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use memwarden::audit::AuditLog;
use memwarden::config::DataDir;
use memwarden::principal::Principal;
use memwarden::schema::Schemas;
use memwarden::server::Server;
use memwarden::session::Session;
use memwarden::store::{Store, StoreOptions, Synchronous};
use memwarden::tools::ToolName;
use serde_json::Value;

struct Harness {
    server: Server,
    schemas: Schemas,
    db: rusqlite::Connection,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Mutex<Harness> {
    static H: OnceLock<Mutex<Harness>> = OnceLock::new();
    H.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(dir.path().join("data"));
        data.init().expect("init");
        let ring = data.open_keyring().expect("keyring");
        // No rate limits: the fuzzer's call volume is not what is under test here.
        let policy = memwarden::policy::parse(
            "version = 1\n[storage]\nsynchronous = \"normal\"\n[[rules.packs]]\npack = \"secrets\"\naction = \"redact\"\n\
             [[rules.packs]]\npack = \"injection\"\naction = \"quarantine\"\n[[rules.packs]]\npack = \"markup\"\naction = \"reject\"\n\
             [principals.local]\ntools = [\"memory_store\", \"memory_get\", \"memory_search\", \"memory_list\", \"memory_update\", \"memory_delete\"]\n\
             namespaces = { default = \"rw\", shared = \"r\" }\ndefault_namespace = \"default\"\n",
            "fuzz",
        )
        .expect("policy");
        let options = StoreOptions { synchronous: Synchronous::Normal, ..StoreOptions::default() };
        let store = Store::open(&data.memory_db(), ring.entry.clone(), options).expect("store");
        let audit = AuditLog::open(&data.audit_db(), ring.audit.clone()).expect("audit");
        let session = Session::new(Principal::from_flag("local").expect("principal"));
        let server = Server::new(Schemas::load().expect("schemas"), store, audit, session, Arc::new(policy));
        let db = rusqlite::Connection::open(data.memory_db()).expect("observer");
        Mutex::new(Harness { server, schemas: Schemas::load().expect("schemas"), db, _dir: dir })
    })
}

fn rows(db: &rusqlite::Connection) -> i64 {
    db.query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .expect("count")
}

fuzz_target!(|data: &[u8]| {
    // Framing: one JSON-RPC message per line, as the transport hands it over.
    let Ok(msg) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if msg.get("method").and_then(Value::as_str) != Some("tools/call") {
        return;
    }
    let params = &msg["params"];
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return;
    };
    let args = match params.get("arguments") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return, // rmcp refuses non-object arguments before any gate
    };
    let h = harness().lock().expect("lock");
    let before = rows(&h.db);
    match h.server.call_in_process(name, args.clone()) {
        Err(_) => assert_eq!(
            rows(&h.db),
            before,
            "a refused call changed the store: {msg}"
        ),
        Ok(_) => {
            let tool = ToolName::from_name(name).expect("accepted calls name a tool");
            assert!(
                h.schemas.validate(tool, &args).is_ok(),
                "accepted without passing its schema: {msg}"
            );
        }
    }
});
