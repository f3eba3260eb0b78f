//! The keyring file: read with its checks (regular file, owner, mode, size, no link), parsed
//! into key sets, and written (new files and whole-file replacements) through [`crate::fsafe`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    KeySet, Keyring, KeyringError, KeyringLock, MAX_KEYRING_BYTES, MIN_KEY_BYTES, SecretKey,
    valid_key_id,
};
use crate::fsafe::Dir;

/// The file format (TOML). Keys are hex.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyring {
    /// Optional only in an auditor's keyring, which needs the audit key alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entry: Option<RawSection>,
    audit: RawSection,
    /// Ed25519 seeds that sign audit checkpoints. Absent in keyrings made before checkpoints
    /// existed: such a data dir keeps working, writes no checkpoints, and `health` says so
    /// until `keys rotate --audit-signing` adds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit_signing: Option<RawSection>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    active: String,
    keys: BTreeMap<String, String>,
}

impl Keyring {
    /// A fresh keyring: one entry key `e1`, one audit key `a1`, one audit signing key `s1`.
    pub fn generate() -> Result<Self, KeyringError> {
        let set = KeySet::generate;
        Ok(Self {
            entry: set("e1")?,
            audit: set("a1")?,
            audit_signing: Some(set("s1")?),
        })
    }

    /// Replaces the keyring file atomically: a new 0600 file beside it (created exclusively,
    /// through a no-follow directory fd), fsynced, renamed over within that directory.
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let (dir, name) = Self::dir_of(path)?;
        let tmp = format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple());
        self.write_new_in(&dir, &tmp)?;
        dir.rename(&tmp, &name)
            .and_then(|()| dir.sync())
            .map_err(|e| {
                let _ = dir.remove(&tmp);
                KeyringError::from(e)
            })
    }

    /// Takes the keyring's lock (a `.NAME.lock` file beside it), waiting for any other
    /// holder: every read-modify-save of a keyring runs under it, so two rotations can never
    /// interleave and lose a key. Held until the returned guard drops.
    pub fn lock(path: &Path) -> Result<KeyringLock, KeyringError> {
        let (dir, name) = Self::dir_of(path)?;
        let file = dir.lock_exclusive(&format!(".{name}.lock"))?;
        Ok(KeyringLock { _file: file })
    }

    fn dir_of(path: &Path) -> Result<(Dir, String), KeyringError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| KeyringError::Format {
                path: path.display().to_string(),
                reason: "not a file name".into(),
            })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok((Dir::open(parent)?, name))
    }

    /// Writes the keyring to a new file created 0600. Refuses to overwrite an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyringError> {
        let (dir, name) = Self::dir_of(path)?;
        self.write_new_in(&dir, &name)
    }

    /// Writes the keyring to the new file `name` in `dir` (exclusive, no-follow, 0600, owned
    /// like the directory).
    pub fn write_new_in(&self, dir: &Dir, name: &str) -> Result<(), KeyringError> {
        let path = dir.join(name);
        let io = |source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        };
        let section = |set: &KeySet| RawSection {
            active: set.active.clone(),
            keys: set
                .keys
                .iter()
                .map(|(id, k)| (id.clone(), hex::encode(k.bytes())))
                .collect(),
        };
        let raw = RawKeyring {
            entry: Some(section(&self.entry)),
            audit: section(&self.audit),
            audit_signing: self.audit_signing.as_ref().map(section),
        };
        let text = toml::to_string(&raw).map_err(|e| KeyringError::Format {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut file = dir.create_new(name)?;
        file.write_all(b"# memwarden keyring: secret. Keep mode 0600; never copy into logs.\n")
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io)
    }

    /// Reads the audit keys only, for an auditor: same file checks, and the entry section may
    /// be absent (an auditor should not hold entry keys).
    pub fn load_audit(path: &Path) -> Result<KeySet, KeyringError> {
        let shown = path.display().to_string();
        let text = Self::read_checked(path)?;
        let raw = Self::parse_raw(&text, &shown)?;
        Self::section(raw.audit, "audit", &shown)
    }

    /// Reads and checks a keyring file (see the module docs for what is refused).
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let text = Self::read_checked(path)?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Opens without following a symlink and checks the opened file itself (fstat), so the
    /// file checked is the file read.
    fn read_checked(path: &Path) -> Result<String, KeyringError> {
        use crate::fsafe::PrivateFileError as E;
        let path_shown = path.display().to_string();
        // A keyring is a few hundred bytes; a huge file is not one, and is not read whole.
        crate::fsafe::read_private(path, MAX_KEYRING_BYTES).map_err(|e| match e {
            E::Io(source) => KeyringError::Io {
                path: path_shown,
                source,
            },
            E::NotRegular => KeyringError::NotRegular { path: path_shown },
            E::Permissions(mode) => KeyringError::Permissions {
                path: path_shown,
                mode,
            },
            // Ours, or root's (systemd may hand credentials over root-owned); and root, the
            // operator, may read the service user's.
            E::Owner(owner, uid) => KeyringError::Owner {
                path: path_shown,
                owner,
                uid,
            },
            E::TooLarge(max) => KeyringError::Format {
                path: path_shown,
                reason: format!("larger than {max} bytes"),
            },
        })
    }

    fn parse(text: &str, shown: &str) -> Result<Self, KeyringError> {
        let raw = Self::parse_raw(text, shown)?;
        let entry = raw.entry.ok_or_else(|| KeyringError::Format {
            path: shown.to_string(),
            reason: "missing the [entry] section".into(),
        })?;
        Ok(Self {
            entry: Self::section(entry, "entry", shown)?,
            audit: Self::section(raw.audit, "audit", shown)?,
            audit_signing: raw
                .audit_signing
                .map(|s| Self::section(s, "audit_signing", shown))
                .transpose()?,
        })
    }

    fn parse_raw(text: &str, shown: &str) -> Result<RawKeyring, KeyringError> {
        let format = |reason: String| KeyringError::Format {
            path: shown.to_string(),
            reason,
        };
        // toml's error text quotes the offending line, and serde's message quotes the offending
        // value ("invalid type: string \"<key hex>\""): either may be a key. Keep only the line
        // and what the file should look like.
        let raw: RawKeyring = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            format(format!(
                "not a valid keyring{at}: expected [entry] and [audit] sections (and optionally \
                 [audit_signing]), each with `active = \"<key id>\"` and a [*.keys] table of \
                 `<key id> = \"<hex>\"`"
            ))
        })?;
        Ok(raw)
    }

    fn section(raw: RawSection, name: &'static str, shown: &str) -> Result<KeySet, KeyringError> {
        let mut keys = BTreeMap::new();
        for (id, hex_key) in raw.keys {
            if !valid_key_id(&id) {
                // Not repeated: a key pasted where its id belongs would be printed.
                return Err(KeyringError::Format {
                    path: shown.to_string(),
                    reason: format!("{name}.keys: a key id is not 1-32 of [A-Za-z0-9_-]"),
                });
            }
            let bytes = hex::decode(hex_key.trim()).map_err(|_| KeyringError::Format {
                path: shown.to_string(),
                reason: format!("{name}.keys.{id}: not hex"),
            })?;
            if name == "audit_signing" && bytes.len() != MIN_KEY_BYTES {
                return Err(KeyringError::Format {
                    path: shown.to_string(),
                    reason: format!(
                        "{name}.keys.{id}: an Ed25519 seed is exactly {MIN_KEY_BYTES} bytes"
                    ),
                });
            }
            if bytes.len() < MIN_KEY_BYTES {
                return Err(KeyringError::ShortKey {
                    path: shown.to_string(),
                    key_id: id,
                    len: bytes.len(),
                });
            }
            keys.insert(id, SecretKey(bytes));
        }
        if !keys.contains_key(&raw.active) {
            // The id is named only when it looks like one: `active = "<hex key>"` must not
            // print the key.
            let key_id = if valid_key_id(&raw.active) {
                raw.active
            } else {
                "(not a key id)".into()
            };
            return Err(KeyringError::MissingActive {
                path: shown.to_string(),
                section: name,
                key_id,
            });
        }
        Ok(KeySet {
            active: raw.active,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_keyring_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.toml");
        let ring = Keyring::generate().unwrap();
        ring.write_new(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Keyring::load(&path).unwrap();
        assert_eq!(
            loaded.entry.active().1.bytes(),
            ring.entry.active().1.bytes()
        );
        assert_eq!(
            loaded.audit.active().1.bytes(),
            ring.audit.active().1.bytes()
        );
        assert!(ring.write_new(&path).is_err(), "never overwrites");
    }

    #[test]
    fn refuses_short_missing_and_malformed() {
        let k32 = "ab".repeat(32);
        let short = "ab".repeat(31);
        let cases = [
            (
                format!(
                    "[entry]\nactive='e1'\n[entry.keys]\ne1='{short}'\n[audit]\nactive='a1'\n[audit.keys]\na1='{k32}'\n"
                ),
                "31 bytes",
            ),
            (
                format!(
                    "[entry]\nactive='e2'\n[entry.keys]\ne1='{k32}'\n[audit]\nactive='a1'\n[audit.keys]\na1='{k32}'\n"
                ),
                "not in the keyring",
            ),
            (
                format!(
                    "[entry]\nactive='e1'\n[entry.keys]\ne1='zz{k32}'\n[audit]\nactive='a1'\n[audit.keys]\na1='{k32}'\n"
                ),
                "not hex",
            ),
            (
                format!("[entry]\nactive='e1'\n[entry.keys]\ne1='{k32}'\n"),
                "not a valid keyring",
            ),
        ];
        for (text, want) in cases {
            let err = Keyring::parse(&text, "K").unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert!(!err.contains(&k32[..16]), "no key bytes in {err}");
        }
    }
}
