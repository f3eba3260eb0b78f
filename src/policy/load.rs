//! Reading a policy: the file checks that keep it immutable from inside, the SHA-256 pin, and
//! parsing through the schema into the compiled form. Every refusal names the file, the key
//! path and the reason.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Policy, RawPolicy};

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
#[error("policy {file}: {key}: {reason}")]
pub struct PolicyError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

fn err(file: &str, key: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        file: file.to_string(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn schema() -> &'static jsonschema::Validator {
    static SCHEMA: OnceLock<jsonschema::Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let text = include_str!("../../schema/policy.schema.json");
        let value: Value = serde_json::from_str(text).expect("built-in policy schema is JSON");
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&value)
            .expect("built-in policy schema compiles")
    })
}

/// `/principals/local/tools/0` → `principals.local.tools[0]`.
fn key_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

/// Parses and compiles policy text. `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let toml_value: toml::Value = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!("line {line}")
            })
            .unwrap_or_else(|| "syntax".into());
        err(source, at, format!("not valid TOML: {}", e.message()))
    })?;
    let json = serde_json::to_value(&toml_value)
        .map_err(|e| err(source, "(top level)", format!("cannot be read: {e}")))?;
    if let Err(e) = schema().validate(&json) {
        return Err(err(
            source,
            key_path(&e.instance_path().to_string()),
            format!("{} ({})", e, e.kind().keyword()),
        ));
    }
    let raw: RawPolicy =
        serde_json::from_value(json).map_err(|e| err(source, "(structure)", e.to_string()))?;
    raw.compile(source.to_string(), sha256)
        .map_err(|(key, reason)| err(source, key, reason))
}

/// True when this process's effective uid could write `path` (or replace what is in it).
fn writable_by_us(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: `c` is a valid NUL-terminated path; faccessat only reads it.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// Reads, checks and compiles a policy file.
///
/// Refuses a file or directory this process could write (an agent sharing our uid could then
/// raise its own limits) unless `allow_owned`, and any content whose SHA-256 is not `pin`.
pub fn load_file(path: &Path, allow_owned: bool, pin: Option<&str>) -> Result<Policy, PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(&file, "(file)", format!("cannot read: {e}")))?;
    if !allow_owned {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for (what, p) in [("the file", path), ("its directory", dir)] {
            if writable_by_us(p) {
                return Err(err(
                    &file,
                    "(file)",
                    format!(
                        "{what} is writable by this process (uid {}): an agent running as this uid could \
                         change its own limits. Make the policy root-owned, mode 0644, in a root-owned \
                         directory, or pass --allow-owned-policy for development",
                        crate::store::keyring::current_uid()
                    ),
                ));
            }
        }
    }
    let policy = parse(&text, &file)?;
    if let Some(pin) = pin
        && !policy.sha256.eq_ignore_ascii_case(pin.trim())
    {
        return Err(err(
            &file,
            "(file)",
            format!(
                "SHA-256 is {}, but --policy-sha256 pins {}",
                policy.sha256,
                pin.trim()
            ),
        ));
    }
    Ok(policy)
}

/// The built-in default policy.
pub fn builtin() -> Result<Policy, PolicyError> {
    parse(super::DEFAULT_POLICY, "built-in")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_read_like_toml() {
        assert_eq!(
            key_path("/principals/local/tools/0"),
            "principals.local.tools[0]"
        );
        assert_eq!(key_path(""), "(top level)");
    }

    #[test]
    fn the_builtin_policy_compiles() {
        let p = builtin().unwrap();
        assert!(p.principals.contains_key("local"));
        assert!(!p.rules.is_empty());
    }
}
