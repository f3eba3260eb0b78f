//! The landlock self-sandbox: after its files are open, `serve` gives up every filesystem right
//! except beneath the data dir, all TCP bind/connect, and signals and abstract unix sockets
//! outside itself (DESIGN.md §11).
//!
//! Landlock restricts the calling thread and the threads it creates afterwards, so the caller
//! must apply it on the thread that will run everything (the current-thread runtime's), before
//! any other thread is spawned. It is best effort up to the kernel's ABI; `--require-sandbox`
//! turns "the filesystem part is not enforced" into a refusal to run.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

/// Set by tests to simulate a kernel without landlock.
pub const SIMULATE_UNSUPPORTED_ENV: &str = "MEMWARDEN_SIMULATE_NO_LANDLOCK";

/// The ABI whose rights we ask for (best effort below it).
const TARGET_ABI: ABI = ABI::V7;

/// What the sandbox achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every requested restriction holds.
    FullyEnforced,
    /// The filesystem part holds; some newer restriction is missing on this kernel.
    PartiallyEnforced,
    /// Nothing holds: the kernel lacks landlock (or it was simulated away).
    NotEnforced,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullyEnforced => "landlock: fully enforced",
            Self::PartiallyEnforced => "landlock: partially enforced",
            Self::NotEnforced => "landlock: not enforced",
        }
    }

    /// True when file access outside the data dir is denied.
    pub fn filesystem_enforced(self) -> bool {
        !matches!(self, Self::NotEnforced)
    }
}

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error(
        "--require-sandbox: the landlock filesystem sandbox is not enforced on this kernel ({0}); refusing to run"
    )]
    Required(&'static str),
}

/// Restricts this thread (and threads it creates later) to `data_dir`.
pub fn restrict(data_dir: &Path, require: bool) -> Result<Status, SandboxError> {
    let status = if std::env::var_os(SIMULATE_UNSUPPORTED_ENV).is_some() {
        Status::NotEnforced
    } else {
        let fs = AccessFs::from_all(TARGET_ABI);
        let restricted = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(fs)?
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
            .scope(Scope::AbstractUnixSocket | Scope::Signal)?
            .create()?
            .add_rules(path_beneath_rules([data_dir], fs))?
            .restrict_self()?;
        match restricted.ruleset {
            RulesetStatus::FullyEnforced => Status::FullyEnforced,
            RulesetStatus::PartiallyEnforced => Status::PartiallyEnforced,
            RulesetStatus::NotEnforced => Status::NotEnforced,
        }
    };
    if require && !status.filesystem_enforced() {
        return Err(SandboxError::Required(status.as_str()));
    }
    Ok(status)
}

/// The kernel's landlock ABI version, or `None` when it has no landlock (or a test simulates
/// that).
pub fn kernel_abi() -> Option<i64> {
    if std::env::var_os(SIMULATE_UNSUPPORTED_ENV).is_some() {
        return None;
    }
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag, the syscall only
    // returns the ABI number (or an error); it touches no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}
