//! Bearer tokens for `serve-http`: the tokens file, and the daemon's live view of it.
//!
//! A token is `mwt_` followed by 43 base64url characters: 256 random bits. The file keeps only
//! each token's SHA-256, with the principal it stands for (or the metrics scope), a label and
//! a creation time, so a copy of the file opens nothing. It is checked like the keyring (a
//! regular file, no link, no access for group or others, ours or root's) and rewritten
//! atomically by `token issue` and `token revoke`.
//!
//! The daemon re-reads the file when its identity or timestamps change (checked on every
//! request, one `stat`), so a revoked token is refused from the next request on. A tokens file
//! that goes bad while the daemon runs refuses every token (fail closed) until it is fixed.
//! Digests are compared in constant time, over every entry, whatever matches.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::fsafe::{Dir, PrivateFileError};
use crate::principal::Principal;

/// A tokens file is a few hundred bytes a token; this bounds what is read.
const MAX_TOKENS_BYTES: u64 = 4 * 1024 * 1024;
/// What every token starts with (secret scanners key on it).
pub const TOKEN_PREFIX: &str = "mwt_";
/// Hex digits of a token's digest shown in listings, logs and the audit log.
const SHOWN_HEX: usize = 12;

/// What a token opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// MCP sessions as the entry's principal.
    Mcp,
    /// `GET /metrics` only.
    Metrics,
}

/// One issued token, as the file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// What it opens.
    pub scope: Scope,
    /// The principal, for an MCP token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The operator's name for it (unique in the file).
    pub label: String,
    /// SHA-256 of the token (hex).
    pub sha256: String,
    /// When it was issued (RFC 3339, UTC).
    pub created: String,
}

impl Entry {
    /// The digest prefix that names this token in logs and the audit log.
    pub fn shown(&self) -> &str {
        &self.sha256[..SHOWN_HEX.min(self.sha256.len())]
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    token: Vec<Entry>,
}

/// Why the tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// Reading or writing it failed.
    #[error("tokens file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// It fails a check or does not parse.
    #[error("tokens file {path}: {reason}")]
    Refused {
        /// The file.
        path: String,
        /// What is wrong (never a token or digest).
        reason: String,
    },
}

/// The tokens file's entries, in file order.
#[derive(Debug, Default)]
pub struct TokenFile {
    /// The issued tokens.
    pub entries: Vec<Entry>,
}

impl TokenFile {
    /// Reads and checks the file; a missing file is an empty one when `missing_ok`.
    pub fn load(path: &Path, missing_ok: bool) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let refused = |reason: String| TokensError::Refused {
            path: shown.clone(),
            reason,
        };
        let text = match crate::fsafe::read_private(path, MAX_TOKENS_BYTES) {
            Ok(text) => text,
            Err(PrivateFileError::Io(e))
                if missing_ok && e.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Self::default());
            }
            Err(PrivateFileError::Io(source)) => {
                return Err(TokensError::Io {
                    path: shown,
                    source,
                });
            }
            Err(PrivateFileError::NotRegular) => {
                return Err(refused("not a regular file (a link, a directory…)".into()));
            }
            Err(PrivateFileError::Permissions(mode)) => {
                return Err(refused(format!(
                    "mode {mode:04o} gives group or others access; chmod 600 it"
                )));
            }
            Err(PrivateFileError::Owner(owner, uid)) => {
                return Err(refused(format!("owned by uid {owner}, not {uid} or root")));
            }
            Err(PrivateFileError::TooLarge(max)) => {
                return Err(refused(format!("larger than {max} bytes")));
            }
        };
        let raw: RawFile = toml::from_str(&text)
            .map_err(|e| refused(format!("not a tokens file: {}", e.message())))?;
        let file = Self { entries: raw.token };
        file.check().map_err(refused)?;
        Ok(file)
    }

    /// Every entry well formed, every label unique.
    fn check(&self) -> Result<(), String> {
        let mut labels = std::collections::BTreeSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            let at = format!("token #{}", i + 1);
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{at}: sha256 must be 64 hex digits"));
            }
            match (&e.scope, &e.principal) {
                (Scope::Mcp, Some(p)) => {
                    Principal::from_flag(p).map_err(|err| format!("{at}: {err}"))?;
                }
                (Scope::Mcp, None) => return Err(format!("{at}: an mcp token needs a principal")),
                (Scope::Metrics, Some(_)) => {
                    return Err(format!("{at}: a metrics token has no principal"));
                }
                (Scope::Metrics, None) => {}
            }
            check_label(&e.label).map_err(|err| format!("{at}: {err}"))?;
            if !labels.insert(e.label.as_str()) {
                return Err(format!("{at}: label {:?} is used twice", e.label));
            }
        }
        Ok(())
    }

    /// Writes the file atomically: a new 0600 file beside it, fsynced, renamed over.
    pub fn save(&self, path: &Path) -> Result<(), TokensError> {
        let shown = path.display().to_string();
        let io = |source| TokensError::Io {
            path: shown.clone(),
            source,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| TokensError::Refused {
                path: shown.clone(),
                reason: "not a file name".into(),
            })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fs = |e: crate::fsafe::FsError| TokensError::Refused {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let dir = Dir::open(parent).map_err(fs)?;
        let text = toml::to_string(&RawFile {
            token: self.entries.clone(),
        })
        .map_err(|e| TokensError::Refused {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let tmp = format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple());
        let mut file = dir.create_new(&tmp).map_err(fs)?;
        use std::io::Write as _;
        let written = file
            .write_all(b"# memwarden HTTP tokens: SHA-256 digests only. Keep mode 0600.\n")
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = dir.remove(&tmp);
            return Err(io(e));
        }
        dir.rename(&tmp, &name)
            .and_then(|()| dir.sync())
            .map_err(|e| {
                let _ = dir.remove(&tmp);
                fs(e)
            })
    }

    /// Adds a new token for `scope` (and `principal`); returns the token, shown once.
    pub fn issue(
        &mut self,
        scope: Scope,
        principal: Option<&Principal>,
        label: &str,
        now: &str,
    ) -> Result<String, String> {
        check_label(label)?;
        if self.entries.iter().any(|e| e.label == label) {
            return Err(format!(
                "label {label:?} is already used; revoke it first or pick another"
            ));
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        self.entries.push(Entry {
            scope,
            principal: principal.map(|p| p.name().to_string()),
            label: label.to_string(),
            sha256: hex::encode(Sha256::digest(token.as_bytes())),
            created: now.to_string(),
        });
        Ok(token)
    }

    /// Removes the token named by its label or a digest prefix (at least 8 hex digits, matching
    /// exactly one entry); returns it.
    pub fn revoke(&mut self, which: &str) -> Result<Entry, String> {
        let by_label = self.entries.iter().position(|e| e.label == which);
        let index = match by_label {
            Some(i) => i,
            None => {
                let prefix = which.to_ascii_lowercase();
                if prefix.len() < 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("no token has that label".into());
                }
                let hits: Vec<usize> = (0..self.entries.len())
                    .filter(|&i| self.entries[i].sha256.starts_with(&prefix))
                    .collect();
                match hits.as_slice() {
                    [i] => *i,
                    [] => return Err("no token has that label or digest prefix".into()),
                    _ => return Err("that digest prefix matches more than one token".into()),
                }
            }
        };
        Ok(self.entries.remove(index))
    }
}

fn check_label(label: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err("a label is 1–64 of [A-Za-z0-9_.@-]".into())
    }
}

/// Who a presented token stands for.
#[derive(Debug, Clone)]
pub struct Holder {
    /// What it opens.
    pub scope: Scope,
    /// The principal, for an MCP token.
    pub principal: Option<Principal>,
    /// `token` or `certificate`.
    pub kind: &'static str,
    /// The token's label (a certificate's name).
    pub label: String,
    /// Its digest prefix.
    pub shown: String,
}

/// Why a presented credential was refused (the audit log's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer` and one well-formed token.
    Malformed,
    /// A well-formed token that is not (or no longer) issued.
    Unknown,
    /// A token in the URL's query string (refused whatever it is: URLs end up in logs).
    InQuery,
    /// The tokens file cannot be read right now: every token is refused.
    FileUnreadable,
    /// A valid token whose scope does not open this endpoint.
    WrongScope,
    /// A verified client certificate none of whose names the policy maps to a principal.
    UnmappedCertificate,
}

impl AuthFailure {
    /// The reason as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown_token",
            Self::InQuery => "token_in_query",
            Self::FileUnreadable => "tokens_file_unreadable",
            Self::WrongScope => "wrong_scope",
            Self::UnmappedCertificate => "unmapped_certificate",
        }
    }
}

/// The file's identity and timestamps: any change means re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// The file as last read: its stamp, and its entries or why it could not be used.
type Loaded = (Option<Stamp>, Result<Vec<Entry>, String>);

/// The daemon's view of the tokens file, re-read when it changes.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    state: Mutex<Loaded>,
}

impl Tokens {
    /// Loads the file now; a file that fails its checks stops the daemon here.
    pub fn open(path: &Path) -> Result<Self, TokensError> {
        let before = stamp(path);
        let file = TokenFile::load(path, false)?;
        Ok(Self {
            path: path.to_path_buf(),
            state: Mutex::new((before, Ok(file.entries))),
        })
    }

    /// How many tokens are issued (as of the last read).
    pub fn count(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1.as_ref().map_or(0, Vec::len)
    }

    /// Who the `Authorization` header's token stands for.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Holder, AuthFailure> {
        let header = authorization.ok_or(AuthFailure::Missing)?;
        let token = bearer_token(header).ok_or(AuthFailure::Malformed)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let entries = self.current()?;
        let mut found: Option<&Entry> = None;
        for entry in &entries {
            let mut want = [0u8; 32];
            let decoded = hex::decode_to_slice(&entry.sha256, &mut want).is_ok();
            if bool::from(want.ct_eq(&digest)) && decoded {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthFailure::Unknown)?;
        Ok(Holder {
            scope: entry.scope.clone(),
            principal: entry
                .principal
                .as_deref()
                .and_then(|p| Principal::from_flag(p).ok()),
            kind: "token",
            label: entry.label.clone(),
            shown: entry.shown().to_string(),
        })
    }

    /// The entries, re-read first when the file changed.
    fn current(&self) -> Result<Vec<Entry>, AuthFailure> {
        let now = stamp(&self.path);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now != state.0 || now.is_none() {
            let loaded = TokenFile::load(&self.path, false)
                .map(|f| f.entries)
                .map_err(|e| e.to_string());
            if let Err(why) = &loaded {
                tracing::error!(target: "memwarden::security", event = "tokens_file", error = %why,
                    "the tokens file cannot be used: refusing every token until it is fixed");
            } else {
                tracing::info!(target: "memwarden::security", event = "tokens_file",
                    "the tokens file changed: re-read");
            }
            *state = (now, loaded);
        }
        state.1.clone().map_err(|_| AuthFailure::FileUnreadable)
    }
}

/// The token in `Bearer TOKEN`: the scheme in any case, one space, and a token of our shape
/// exactly (nothing before or after it).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let body = token.strip_prefix(TOKEN_PREFIX.as_bytes())?;
    let shaped = body.len() == 43
        && body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    shaped.then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_of_our_shape_is_read() {
        let t = format!("{TOKEN_PREFIX}{}", "A".repeat(43));
        assert!(bearer_token(format!("Bearer {t}").as_bytes()).is_some());
        assert!(bearer_token(format!("bearer {t}").as_bytes()).is_some());
        assert!(bearer_token(format!("Bearer {t} ").as_bytes()).is_none());
        assert!(bearer_token(format!("Bearer  {t}").as_bytes()).is_none());
        assert!(bearer_token(format!("Basic {t}").as_bytes()).is_none());
        assert!(bearer_token(format!("Bearer {t}A").as_bytes()).is_none());
        assert!(bearer_token(b"Bearer").is_none());
    }

    #[test]
    fn revoking_by_a_short_or_ambiguous_prefix_is_refused() {
        let mut f = TokenFile::default();
        let p = Principal::from_flag("alice").unwrap();
        f.issue(Scope::Mcp, Some(&p), "one", "t").unwrap();
        f.issue(Scope::Mcp, Some(&p), "two", "t").unwrap();
        assert!(f.issue(Scope::Mcp, Some(&p), "one", "t").is_err());
        assert!(f.revoke("abc").is_err());
        let prefix = f.entries[1].sha256[..10].to_string();
        assert_eq!(f.revoke(&prefix).unwrap().label, "two");
        assert_eq!(f.revoke("one").unwrap().label, "one");
        assert!(f.entries.is_empty());
    }
}
