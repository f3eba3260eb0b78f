//! Where memwarden keeps its files, how it checks them, and the limits a call runs under.
//!
//! The data dir is the one place the server reads and writes. It must belong to the server's uid
//! and be writable by nobody else: a dir others can write lets them swap the DB or keyring.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::audit::{AuditError, AuditLog};
use crate::store::keyring::{Keyring, KeyringError, current_uid};
use crate::store::{OpenError, Store, StoreOptions};

/// Size limits a call runs under. These are DESIGN.md §5's defaults; a policy may set others
/// within the schema's hard caps.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest accepted request line, checked before JSON parsing.
    pub request_line_bytes: usize,
    /// Content, in UTF-8 bytes (the schema bounds characters).
    pub content_bytes: usize,
    /// Metadata, serialized, in bytes.
    pub metadata_bytes: usize,
    /// Soft bound on the bytes of one search or list response.
    pub response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_line_bytes: 1024 * 1024,
            content_bytes: 16 * 1024,
            metadata_bytes: 4 * 1024,
            response_bytes: 512 * 1024,
        }
    }
}

/// A data directory and the files in it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Why a data directory was refused or could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("data dir {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {path} is not a directory")]
    NotDir { path: String },
    #[error(
        "data dir {path} has mode {mode:04o}: group and others must not be able to write it (chmod 700)"
    )]
    Writable { path: String, mode: u32 },
    #[error("data dir {path} is owned by uid {owner}, not by this process's uid {uid}")]
    Owner { path: String, owner: u32, uid: u32 },
    #[error(
        "data dir {path} is not initialised (no keyring.toml); run `memwarden init --data-dir {path}`"
    )]
    NotInitialised { path: String },
    #[error("data dir {path} is already initialised")]
    AlreadyInitialised { path: String },
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn memory_db(&self) -> PathBuf {
        self.root.join("memory.db")
    }

    pub fn audit_db(&self) -> PathBuf {
        self.root.join("audit.db")
    }

    pub fn keyring(&self) -> PathBuf {
        self.root.join("keyring.toml")
    }

    fn shown(&self) -> String {
        self.root.display().to_string()
    }

    fn io(&self, source: std::io::Error) -> DataDirError {
        DataDirError::Io {
            path: self.shown(),
            source,
        }
    }

    /// True when the directory is missing or empty: `serve` initialises it then.
    pub fn needs_init(&self) -> Result<bool, DataDirError> {
        match fs::read_dir(&self.root) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Creates the directory (0700), a fresh keyring (0600) and memory.db with its schema.
    ///
    /// Everything is built in a sibling temp dir and renamed into place, so servers racing to
    /// initialise the same path end with exactly one keyring: the losers find it taken and use it.
    pub fn init(&self) -> Result<(), DataDirError> {
        if !self.needs_init()? {
            return Err(DataDirError::AlreadyInitialised { path: self.shown() });
        }
        let parent = match self.root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "memwarden".into());
        let staging = parent.join(format!(".{name}.init-{}", uuid::Uuid::new_v4().simple()));
        fs::DirBuilder::new()
            .recursive(false)
            .mode(0o700)
            .create(&staging)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&parent)?;
                    fs::DirBuilder::new().mode(0o700).create(&staging)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| self.io(e))?;
        let result = self.populate(&staging).and_then(|()| {
            match fs::rename(&staging, &self.root) {
                Ok(()) => Ok(()),
                // Someone else initialised it first (ENOTEMPTY / EEXIST): theirs stands.
                Err(_) if !self.needs_init()? => Ok(()),
                Err(e) => Err(self.io(e)),
            }
        });
        if staging.exists() {
            let _ = fs::remove_dir_all(&staging);
        }
        result
    }

    fn populate(&self, staging: &Path) -> Result<(), DataDirError> {
        let staged = DataDir::new(staging);
        let ring = Keyring::generate()?;
        ring.write_new(&staged.keyring())?;
        let db = staged.memory_db();
        let store = Store::open(&db, ring.entry.clone(), StoreOptions::default())?;
        drop(store);
        let audit = staged.audit_db();
        let log = AuditLog::open(
            &audit,
            ring.audit.clone(),
            StoreOptions::default().busy_timeout,
        )?;
        drop(log);
        for file in [db, audit] {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Refuses a directory that is not ours alone.
    pub fn check(&self) -> Result<(), DataDirError> {
        let meta = fs::metadata(&self.root).map_err(|e| self.io(e))?;
        if !meta.is_dir() {
            return Err(DataDirError::NotDir { path: self.shown() });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(DataDirError::Writable {
                path: self.shown(),
                mode,
            });
        }
        let uid = current_uid();
        if meta.uid() != uid {
            return Err(DataDirError::Owner {
                path: self.shown(),
                owner: meta.uid(),
                uid,
            });
        }
        if !self.keyring().exists() {
            return Err(DataDirError::NotInitialised { path: self.shown() });
        }
        Ok(())
    }

    /// Checks the directory and loads its keyring.
    pub fn open_keyring(&self) -> Result<Keyring, DataDirError> {
        self.check()?;
        Ok(Keyring::load(&self.keyring())?)
    }
}
