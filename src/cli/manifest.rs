//! A backup's `manifest.json`: what the backup holds (file SHA-256s, entry count, audit head)
//! and its MAC under the audit key, over a canonical form of the JSON, so `restore` believes
//! nothing a manifest says until the MAC holds (the SHA-256s alone prove nothing: anyone can
//! recompute them).

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::keys::{KeySet, SecretKey};

/// What a backup holds, written last.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub version: u32,
    pub created_at: String,
    pub memwarden_version: String,
    /// File name → SHA-256 (hex).
    pub files: std::collections::BTreeMap<String, String>,
    pub entries: u64,
    pub audit_head: String,
    /// Id of the audit key the MAC is made with.
    pub mac_key: String,
}

/// Manifest format: 2 added `mac_key` and `mac`.
pub(crate) const MANIFEST_VERSION: u32 = 2;

/// Domain-separating prefix of the manifest MAC (the audit key also MACs chain hashes).
const MANIFEST_MAC_TAG: &[u8] = b"memwarden/backup-manifest/v1\n";

/// HMAC-SHA256(audit key, tag ‖ canonical manifest): the manifest as a JSON object without
/// its `mac` member, object keys sorted at every level, no whitespace. Computed over what was
/// parsed, so any member — known or not — is covered.
fn manifest_mac(key: &SecretKey, manifest: &Map<String, Value>) -> Hmac<Sha256> {
    let mut body = manifest.clone();
    body.remove("mac");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(MANIFEST_MAC_TAG);
    mac.update(canonical_json(&Value::Object(body)).as_bytes());
    mac
}

/// Compact JSON with object keys sorted, whatever map type serde_json was built with.
fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let sorted: std::collections::BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, canonical_json(v))).collect();
            let members: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::String((*k).clone())))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// Serialises a manifest with its MAC under the active audit key.
pub(crate) fn sign_manifest(manifest: &Manifest, audit: &KeySet) -> anyhow::Result<String> {
    let Value::Object(mut map) = serde_json::to_value(manifest)? else {
        anyhow::bail!("a manifest serialises to a JSON object");
    };
    let (_, key) = audit.active();
    let mac = hex::encode(manifest_mac(key, &map).finalize().into_bytes());
    map.insert("mac".into(), Value::String(mac));
    Ok(serde_json::to_string_pretty(&Value::Object(map))?)
}

/// Parses manifest.json and checks its MAC before believing a word of it. The refusals name
/// the problem, never a MAC or key value.
pub(crate) fn read_manifest(text: &str, audit: &KeySet) -> anyhow::Result<Manifest> {
    let refuse = |why: &str| anyhow::anyhow!("refusing: manifest.json {why}");
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return Err(refuse("is not a JSON object"));
    };
    let Some(Value::String(mac)) = map.remove("mac") else {
        return Err(refuse(
            "carries no MAC (made by a memwarden before manifest version 2, or stripped): \
             its SHA-256s alone prove nothing, anyone can recompute them",
        ));
    };
    let key_id = match map.get("mac_key") {
        Some(Value::String(id)) => id.clone(),
        _ => return Err(refuse("names no MAC key")),
    };
    let key = audit.get(&key_id).ok_or_else(|| {
        refuse(
            "is MAC'd with an audit key this keyring does not hold (a backup of another data dir?)",
        )
    })?;
    let mac = hex::decode(mac).map_err(|_| refuse("has a malformed MAC"))?;
    manifest_mac(key, &map).verify_slice(&mac).map_err(|_| {
        refuse(
            "has a MAC that does not verify under the audit key: the manifest was changed \
             after the backup was made, or made with another keyring",
        )
    })?;
    let manifest: Manifest = serde_json::from_value(Value::Object(map))
        .map_err(|e| anyhow::anyhow!("manifest.json: {e}"))?;
    anyhow::ensure!(
        manifest.version == MANIFEST_VERSION,
        "refusing: manifest.json has version {}, this memwarden reads {MANIFEST_VERSION}",
        manifest.version
    );
    Ok(manifest)
}
