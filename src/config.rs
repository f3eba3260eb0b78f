//! Where memwarden keeps its files, how it checks them, and the limits a call runs under.
//!
//! The data dir is the one place the server reads and writes. It must belong to the server's uid
//! and be open to nobody else: a dir others can write lets them swap the DB or keyring, one they
//! can read lets them read every memory. Its databases must be regular files (never links), 0600.

use std::fs;
use std::path::{Path, PathBuf};

use crate::audit::{AuditError, AuditLog};
use crate::fsafe::{Dir, FileKind, FsError, current_uid};
use crate::keys::{Keyring, KeyringError};
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
    /// Tags on one memory.
    pub tags_max: usize,
    /// Characters of a search query.
    pub query_chars: usize,
    /// Largest `limit` of search and list.
    pub page_size_max: usize,
    /// Live (active or quarantined) entries per namespace, when set.
    pub namespace_max_entries: Option<u64>,
    /// Content bytes of live entries per namespace, when set.
    pub namespace_max_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_line_bytes: 1024 * 1024,
            content_bytes: 16 * 1024,
            metadata_bytes: 4 * 1024,
            response_bytes: 512 * 1024,
            tags_max: 16,
            query_chars: 512,
            page_size_max: 50,
            namespace_max_entries: None,
            namespace_max_bytes: None,
        }
    }
}

/// Prefix of a keyring being written, before it is linked into place.
const KEYRING_STAGING: &str = ".keyring.staging-";
/// The keyring's name inside a data dir.
pub const KEYRING: &str = "keyring.toml";
const MEMORY_DB: &str = "memory.db";
const AUDIT_DB: &str = "audit.db";
/// What SQLite opens in a data dir: the databases and their WAL and shared-memory files.
pub const DB_FILES: [&str; 6] = [
    "memory.db",
    "memory.db-wal",
    "memory.db-shm",
    "audit.db",
    "audit.db-wal",
    "audit.db-shm",
];

/// A data directory and the files in it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// A keyring kept outside the data dir (the hardened install's systemd credential, or
    /// `--keyring`). Then the data dir holds only the databases.
    external_keyring: Option<PathBuf>,
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
    #[error(
        "data dir {path} has mode {mode:04o}: group and others must have no access (chmod 700)"
    )]
    Permissions { path: String, mode: u32 },
    #[error("{path} has mode {mode:04o}: group and others must have no access (chmod 600)")]
    FilePermissions { path: String, mode: u32 },
    #[error("{path} is owned by uid {owner}, not by this process's uid {uid}")]
    FileOwner { path: String, owner: u32, uid: u32 },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("data dir {path} is owned by uid {owner}, not by this process's uid {uid}")]
    Owner { path: String, owner: u32, uid: u32 },
    #[error(
        "data dir {path} is not initialised (no keyring.toml); run `memwarden init --data-dir {path}`"
    )]
    NotInitialised { path: String },
    #[error("data dir {path} is already initialised")]
    AlreadyInitialised { path: String },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Lock(#[from] crate::datalock::LockError),
}

impl DataDir {
    /// The data dir at `root`, its keyring inside it.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            external_keyring: None,
        }
    }

    /// Uses a keyring kept outside the data dir.
    pub fn with_keyring(mut self, keyring: Option<PathBuf>) -> Self {
        self.external_keyring = keyring;
        self
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its memory.db.
    pub fn memory_db(&self) -> PathBuf {
        self.root.join(MEMORY_DB)
    }

    /// Its audit.db.
    pub fn audit_db(&self) -> PathBuf {
        self.root.join(AUDIT_DB)
    }

    /// Its keyring: the external one when given, else `keyring.toml` inside.
    pub fn keyring(&self) -> PathBuf {
        self.external_keyring
            .clone()
            .unwrap_or_else(|| self.root.join(KEYRING))
    }

    /// The file whose presence marks an initialised directory.
    fn marker(&self) -> PathBuf {
        if self.external_keyring.is_some() {
            self.memory_db()
        } else {
            self.keyring()
        }
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

    /// True when the directory is missing or empty (ignoring another process's keyring still
    /// being written): `serve` initialises it then.
    pub fn needs_init(&self) -> Result<bool, DataDirError> {
        if self.marker().exists() {
            return Ok(false);
        }
        match fs::read_dir(&self.root) {
            Ok(entries) => Ok(entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name().to_string_lossy().starts_with(KEYRING_STAGING))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(self.io(e)),
        }
    }

    /// `memwarden init`: creates the directory (0700), a fresh keyring (0600) and both
    /// databases. Refuses a directory that already has a keyring.
    pub fn init(&self) -> Result<(), DataDirError> {
        if self.marker().exists() {
            return Err(DataDirError::AlreadyInitialised { path: self.shown() });
        }
        self.create()
    }

    /// What `serve` does first: initialise a missing or empty directory, leave an initialised one
    /// alone. Returns whether it initialised. Refuses a non-empty directory without a keyring
    /// rather than move into someone else's files.
    pub fn init_if_needed(&self) -> Result<bool, DataDirError> {
        if self.marker().exists() {
            return Ok(false);
        }
        if !self.needs_init()? {
            // Another process may have finished initialising in between.
            if self.marker().exists() {
                return Ok(false);
            }
            return Err(DataDirError::NotInitialised { path: self.shown() });
        }
        self.create()?;
        Ok(true)
    }

    /// Creates what is missing, in place (so it works in a directory systemd made, whose parent
    /// we cannot write). Safe from several processes at once: the keyring is written to a
    /// private temp name and hard-linked into place, which fails if one is already there, so
    /// every process ends with the one keyring that won; migrations serialise on the DB locks.
    /// Every file is created through a no-follow directory fd (see [`crate::fsafe`]).
    fn create(&self) -> Result<(), DataDirError> {
        let (dir, _) = Dir::create(&self.root)?;
        self.check_dir(&dir)?;
        if self.external_keyring.is_none() && dir.entry(KEYRING)?.is_none() {
            let staging = format!("{KEYRING_STAGING}{}", uuid::Uuid::new_v4().simple());
            Keyring::generate()?.write_new_in(&dir, &staging)?;
            let linked = dir.hard_link(&staging, KEYRING);
            let _ = dir.remove(&staging);
            match linked {
                // Make the new name durable before anything is sealed with its keys.
                Ok(()) => dir.sync()?,
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Created empty, exclusively and 0600 here, so SQLite never creates them itself; the
        // lock file too (see crate::datalock), so later commands find it in place.
        for name in [MEMORY_DB, AUDIT_DB, crate::datalock::LOCK_FILE] {
            match dir.create_new(name) {
                Ok(_) => {}
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.check_entries(&dir)?;
        let ring = Keyring::load(&self.keyring())?;
        drop(self.open_databases(&ring, StoreOptions::default())?);
        Ok(())
    }

    /// Opens both databases with `keyring`'s keys: audit.db first, so its chain_start event is
    /// in before a new memory.db's first byte (which is how a later open tells a new data dir
    /// from a vanished chain, `audit::memory_used`), and a vanished chain is refused before
    /// memory.db is touched.
    pub fn open_databases(
        &self,
        keyring: &Keyring,
        options: StoreOptions,
    ) -> Result<(Store, AuditLog), DataDirError> {
        let audit = AuditLog::open(&self.audit_db(), keyring.audit.clone())?;
        let store = Store::open(&self.memory_db(), keyring.entry.clone(), options)?;
        Ok((store, audit))
    }

    /// The directory itself: a real directory (not a link), ours (or we are root), and no
    /// access at all for group and others — they could read every memory with `strings`.
    fn check_dir(&self, dir: &Dir) -> Result<(), DataDirError> {
        let meta = dir.meta();
        if meta.mode & 0o077 != 0 {
            return Err(DataDirError::Permissions {
                path: self.shown(),
                mode: meta.mode,
            });
        }
        // Root (the operator's CLI) may work on the service user's directory.
        let uid = current_uid();
        if meta.uid != uid && uid != 0 {
            return Err(DataDirError::Owner {
                path: self.shown(),
                owner: meta.uid,
                uid,
            });
        }
        // SQLite (opened with SQLITE_OPEN_NOFOLLOW) refuses a link anywhere in a database
        // path; say which component before it fails with "unable to open".
        if let Some(link) = crate::fsafe::first_symlink(&self.root).map_err(|e| self.io(e))? {
            return Err(FsError::Symlink {
                path: link.display().to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// The files SQLite and the keyring loader will open: each, when present, a regular file
    /// (never a link: root running the CLI would write through it), ours, mode 0600 or less.
    fn check_entries(&self, dir: &Dir) -> Result<(), DataDirError> {
        let keyring = self.external_keyring.is_none().then_some(KEYRING);
        let uid = current_uid();
        let lock = std::iter::once(crate::datalock::LOCK_FILE);
        for name in DB_FILES.iter().copied().chain(keyring).chain(lock) {
            let Some(meta) = dir.entry(name)? else {
                continue;
            };
            let path = dir.join(name).display().to_string();
            match meta.kind {
                FileKind::File => {}
                FileKind::Symlink => return Err(FsError::Symlink { path }.into()),
                _ => return Err(DataDirError::NotRegular { path }),
            }
            if meta.mode & 0o077 != 0 {
                return Err(DataDirError::FilePermissions {
                    path,
                    mode: meta.mode,
                });
            }
            if meta.uid != uid && uid != 0 {
                return Err(DataDirError::FileOwner {
                    path,
                    owner: meta.uid,
                    uid,
                });
            }
        }
        Ok(())
    }

    /// Checks the directory and the database files in it (not whether it is initialised) and
    /// returns it open. Every subcommand that opens a database in a data dir calls this first.
    pub fn open_dir(&self) -> Result<Dir, DataDirError> {
        let dir = Dir::open(&self.root)?;
        self.check_dir(&dir)?;
        self.check_entries(&dir)?;
        Ok(dir)
    }

    /// Refuses a directory that is not ours alone, or that is not initialised.
    pub fn check(&self) -> Result<(), DataDirError> {
        self.open_dir()?;
        if !self.marker().exists() {
            return Err(DataDirError::NotInitialised { path: self.shown() });
        }
        Ok(())
    }

    /// Holds the data dir's lock shared for as long as the guard lives: what every process that
    /// writes the databases does, so `restore` can tell that none runs. Waits up to 10 s for a
    /// restore in progress.
    pub fn lock_shared(&self) -> Result<crate::datalock::DataLock, DataDirError> {
        let dir = self.open_dir()?;
        Ok(crate::datalock::DataLock::shared(
            &dir,
            std::time::Duration::from_secs(10),
        )?)
    }

    /// Checks the directory and loads its keyring.
    pub fn open_keyring(&self) -> Result<Keyring, DataDirError> {
        self.check()?;
        Ok(Keyring::load(&self.keyring())?)
    }
}
