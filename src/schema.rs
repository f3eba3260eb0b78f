//! The tool schemas in `schema/`: embedded, advertised verbatim, compiled once, enforced first.
//!
//! rmcp does not validate tool arguments, so every call's raw arguments pass through
//! [`Schemas::validate`] before serde sees them. Error messages are the validator's *masked*
//! messages: they name the path and the keyword, never the offending value.

use std::collections::HashSet;
use std::sync::Arc;

use rmcp::model::JsonObject;
use serde_json::Value;

use crate::agent_text::Describer;
use crate::catalog::ToolName;
use crate::error::Error;

/// One tool's schemas, parsed and compiled.
pub struct ToolSchema {
    pub input: Arc<JsonObject>,
    pub output: Arc<JsonObject>,
    validator: jsonschema::Validator,
    /// Every property name the input schema declares: the only object keys an error may repeat.
    properties: HashSet<String>,
}

/// Keywords whose masked message is built from the schema alone (limits, types, patterns,
/// required names). Any other keyword's message may quote the agent's keys, so it is replaced.
const MESSAGE_FROM_SCHEMA: [&str; 18] = [
    "type",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "pattern",
    "format",
    "enum",
    "const",
    "required",
    "multipleOf",
    "maxProperties",
    "minProperties",
    "uniqueItems",
];

/// Collects every key of every `properties` object in a schema.
fn property_names(schema: &Value, out: &mut HashSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            map.values().for_each(|v| property_names(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, out)),
        _ => {}
    }
}

/// A JSON pointer with every segment that is neither an array index nor a declared property
/// name replaced by its description: the agent's own keys (metadata keys, unexpected
/// properties) are never echoed, whatever their size.
fn safe_path(pointer: &str, properties: &HashSet<String>) -> String {
    if pointer.is_empty() {
        return "/".into();
    }
    let describer = Describer::process();
    pointer
        .split('/')
        .skip(1)
        .map(|segment| {
            let plain = segment.replace("~1", "/").replace("~0", "~");
            if segment.bytes().all(|b| b.is_ascii_digit()) && segment.len() <= 6
                || properties.contains(&plain)
            {
                segment.to_string()
            } else {
                describer.describe(&plain)
            }
        })
        .fold(String::new(), |mut path, segment| {
            path.push('/');
            path.push_str(&segment);
            path
        })
}

/// All tool schemas, compiled once at start.
pub struct Schemas {
    tools: Vec<ToolSchema>,
}

/// A schema in the binary that does not parse or compile: a build defect, reported at start.
#[derive(Debug, thiserror::Error)]
#[error("built-in schema for {tool} is invalid: {reason}")]
pub struct SchemaDefect {
    tool: &'static str,
    reason: String,
}

fn parse_object(tool: &'static str, text: &str) -> Result<JsonObject, SchemaDefect> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(SchemaDefect {
            tool,
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(SchemaDefect {
            tool,
            reason: e.to_string(),
        }),
    }
}

impl Schemas {
    /// Parses and compiles every embedded schema (draft 2020-12, formats checked).
    pub fn load() -> Result<Self, SchemaDefect> {
        let mut tools = Vec::with_capacity(ToolName::ALL.len());
        for name in ToolName::ALL {
            let tool = name.as_str();
            let source = name.schema_source();
            let input = parse_object(tool, source.input)?;
            let output = parse_object(tool, source.output)?;
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&Value::Object(input.clone()))
                .map_err(|e| SchemaDefect {
                    tool,
                    reason: e.to_string(),
                })?;
            let mut properties = HashSet::new();
            property_names(&Value::Object(input.clone()), &mut properties);
            tools.push(ToolSchema {
                properties,
                input: Arc::new(input),
                output: Arc::new(output),
                validator,
            });
        }
        Ok(Self { tools })
    }

    /// The schemas of one tool.
    pub fn get(&self, tool: ToolName) -> &ToolSchema {
        // `load` walks ToolName::ALL, whose positions are the tools' indexes.
        &self.tools[tool.index()]
    }

    /// Checks raw arguments against the tool's input schema; the first failure is reported with
    /// its JSON pointer and keyword.
    pub fn validate(&self, tool: ToolName, args: &Value) -> Result<(), Error> {
        let schema = self.get(tool);
        if schema.validator.is_valid(args) {
            return Ok(());
        }
        // `validate` stops at the first error, where `iter_errors` would build them all.
        let Err(err) = schema.validator.validate(args) else {
            // The two disagree: refuse rather than let unvalidated input through.
            return Err(Error::Schema {
                path: "/".into(),
                keyword: "schema".into(),
                message: "arguments do not validate".into(),
            });
        };
        let keyword = err.kind().keyword();
        let message = if MESSAGE_FROM_SCHEMA.contains(&keyword) {
            err.masked().to_string()
        } else if keyword == "additionalProperties" || keyword == "unevaluatedProperties" {
            "a property that is not allowed here".to_string()
        } else {
            format!("value does not satisfy {keyword}")
        };
        Err(Error::Schema {
            path: safe_path(&err.instance_path().to_string(), &schema.properties),
            keyword: keyword.to_string(),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedded_schemas_compile() {
        let s = Schemas::load().unwrap();
        for t in ToolName::ALL {
            assert_eq!(s.get(t).input["title"], t.as_str());
        }
    }

    #[test]
    fn errors_name_path_and_keyword_without_the_value() {
        let s = Schemas::load().unwrap();
        let secret = "s3cr3t-".repeat(3000);
        let err = s
            .validate(ToolName::Store, &json!({"content": secret}))
            .unwrap_err();
        let Error::Schema {
            path,
            keyword,
            message,
        } = err
        else {
            panic!("not a schema error")
        };
        assert_eq!(path, "/content");
        assert_eq!(keyword, "maxLength");
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn errors_never_repeat_agent_keys() {
        let s = Schemas::load().unwrap();
        let key = "k".repeat(500_000);
        let mut args = serde_json::Map::new();
        args.insert("content".into(), json!("x"));
        args.insert(key.clone(), json!(1));
        let err = s
            .validate(ToolName::Store, &Value::Object(args))
            .unwrap_err();
        let text = format!("{err:?}");
        assert!(!text.contains("kkkk"), "{}", &text[..200.min(text.len())]);
        assert!(text.len() < 400);
        // A metadata key deep in a failing value is described in the path.
        let deep = json!({"content": "x", "metadata": {"secret-key-name": {"a": {"b": {"c": {"d": {"e": 1}}}}}}});
        if let Err(Error::Schema { path, message, .. }) = s.validate(ToolName::Store, &deep) {
            assert!(!path.contains("secret-key-name"), "{path}");
            assert!(!message.contains("secret-key-name"), "{message}");
        }
    }
}
