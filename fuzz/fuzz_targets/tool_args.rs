//! Whatever a tool's schema accepts, serde must parse into the tool's parameters: the validator
//! and the types cannot disagree (a disagreement would be an input the schema promises to take
//! and the server refuses, or worse, one it takes without having checked).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use memwarden::schema::Schemas;
use memwarden::tools::{self, ToolName};
use serde_json::Value;

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| Schemas::load().expect("embedded schemas"))
}

fn parses(tool: ToolName, v: &Value) -> bool {
    let v = v.clone();
    match tool {
        ToolName::Store => serde_json::from_value::<tools::store::Params>(v).is_ok(),
        ToolName::Get => serde_json::from_value::<tools::get::Params>(v).is_ok(),
        ToolName::Search => serde_json::from_value::<tools::search::Params>(v).is_ok(),
        ToolName::List => serde_json::from_value::<tools::list::Params>(v).is_ok(),
        ToolName::Update => serde_json::from_value::<tools::update::Params>(v).is_ok(),
        ToolName::Delete => serde_json::from_value::<tools::delete::Params>(v).is_ok(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for tool in ToolName::ALL {
        if schemas().validate(tool, &v).is_ok() {
            assert!(
                parses(tool, &v),
                "{} schema accepts what serde refuses: {v}",
                tool.as_str()
            );
        }
    }
});
