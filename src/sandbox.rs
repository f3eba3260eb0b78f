//! The landlock self-sandbox: after its files are open, `serve` gives up every filesystem right
//! except beneath the data dir, all TCP bind and every TCP connect but to the store's database
//! port (PostgreSQL over TCP, so it can reconnect), and signals and abstract unix sockets
//! outside itself (DESIGN.md §11).
//!
//! Landlock restricts the calling thread and the threads it creates afterwards, so the caller
//! must apply it on the thread that will run everything (the current-thread runtime's), before
//! any other thread is spawned. It is best effort up to the kernel's ABI; `--require-sandbox`
//! turns "the filesystem part is not enforced" into a refusal to run.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, path_beneath_rules,
};

/// Set by tests to simulate a kernel without landlock. Debug builds only: in a release build an
/// environment variable must never be able to switch the sandbox off.
pub const SIMULATE_UNSUPPORTED_ENV: &str = "MEMWARDEN_SIMULATE_NO_LANDLOCK";

/// True when a debug build is told to simulate a kernel without landlock.
fn simulated() -> bool {
    cfg!(debug_assertions) && std::env::var_os(SIMULATE_UNSUPPORTED_ENV).is_some()
}

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
    /// The status as logs and the audit log show it.
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
    #[error("landlock: {source}{hint}")]
    Landlock {
        source: landlock::RulesetError,
        /// Why, when the kernel said EPERM: usually a seccomp filter refusing one landlock call.
        hint: &'static str,
    },
    #[error(
        "--require-sandbox: the landlock filesystem sandbox is not enforced ({0}); refusing to run"
    )]
    Required(Probe),
}

/// What the kernel answers to a landlock ABI query, made before and independently of the
/// ruleset: the landlock crate folds every failure into "not enforced", but an `EPERM` from a
/// seccomp filter (a unit's `SystemCallFilter=` that forgot the landlock calls) is an operator's
/// configuration to fix, not an old kernel to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Landlock answers with this ABI version.
    Abi(i64),
    /// `ENOSYS`: the kernel was built without landlock (or predates 5.13).
    Missing,
    /// `EOPNOTSUPP`: compiled in but not enabled at boot (`lsm=` lacks landlock).
    Disabled,
    /// `EPERM`/`EACCES`: something between us and the kernel refuses the call — a seccomp filter
    /// (systemd's `SystemCallFilter=`) or another security policy.
    Blocked(i32),
    /// Any other errno.
    Other(i32),
    /// A test simulated a kernel without landlock.
    Simulated,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Abi(v) => write!(f, "the kernel offers landlock ABI {v}"),
            Self::Missing => f.write_str(
                "this kernel has no landlock (landlock_create_ruleset: ENOSYS); it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK",
            ),
            Self::Disabled => f.write_str(
                "landlock is built into this kernel but not enabled (landlock_create_ruleset: EOPNOTSUPP); add landlock to the lsm= boot parameter",
            ),
            Self::Blocked(errno) => write!(
                f,
                "the landlock system calls are blocked by a seccomp filter or security policy, not missing from the kernel (landlock_create_ruleset: {}); under systemd, allow them in the unit: SystemCallFilter=landlock_create_ruleset landlock_add_rule landlock_restrict_self",
                errno_name(*errno)
            ),
            Self::Other(errno) => write!(f, "landlock_create_ruleset failed: {}", errno_name(*errno)),
            Self::Simulated => write!(f, "simulated by {SIMULATE_UNSUPPORTED_ENV}"),
        }
    }
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EINVAL => "EINVAL",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

impl From<landlock::RulesetError> for SandboxError {
    fn from(source: landlock::RulesetError) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&source);
        let mut eperm = false;
        while let Some(e) = cause {
            eperm |= e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EPERM);
            cause = e.source();
        }
        let hint = if eperm {
            "; EPERM from a landlock call the kernel offers means a seccomp filter or security \
             policy refuses it: under systemd, allow it in the unit: \
             SystemCallFilter=landlock_create_ruleset landlock_add_rule landlock_restrict_self"
        } else {
            ""
        };
        Self::Landlock { source, hint }
    }
}

/// Restricts this thread (and threads it creates later) to `data_dir` and, for TCP, to
/// connecting to `connect_ports` (the database's; none for SQLite).
pub fn restrict(
    data_dir: &Path,
    connect_ports: &[u16],
    require: bool,
) -> Result<Status, SandboxError> {
    restrict_with(data_dir, &[], connect_ports, require)
}

/// [`restrict`], also leaving `read_dirs` readable (nothing else: no write, no exec) — for
/// `serve-http`, the directory of its tokens file, which it re-reads when it is replaced.
pub fn restrict_with(
    data_dir: &Path,
    read_dirs: &[&Path],
    connect_ports: &[u16],
    require: bool,
) -> Result<Status, SandboxError> {
    let status = if simulated() {
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
            .add_rules(path_beneath_rules(
                read_dirs,
                AccessFs::ReadFile | AccessFs::ReadDir,
            ))?
            .add_rules(connect_ports.iter().map(|&port| {
                Ok::<_, landlock::RulesetError>(NetPort::new(port, AccessNet::ConnectTcp))
            }))?
            .restrict_self()?;
        match restricted.ruleset {
            RulesetStatus::FullyEnforced => Status::FullyEnforced,
            RulesetStatus::PartiallyEnforced => Status::PartiallyEnforced,
            RulesetStatus::NotEnforced => Status::NotEnforced,
        }
    };
    if require && !status.filesystem_enforced() {
        return Err(SandboxError::Required(probe()));
    }
    Ok(status)
}

/// The kernel's landlock ABI version, or `None` when it has no landlock, when something blocks
/// the call, or when a test simulates that ([`probe`] says which).
pub fn kernel_abi() -> Option<i64> {
    match probe() {
        Probe::Abi(v) => Some(v),
        _ => None,
    }
}

/// Asks the kernel for its landlock ABI and classifies the answer (see [`Probe`]).
pub fn probe() -> Probe {
    if simulated() {
        return Probe::Simulated;
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
    if v > 0 {
        return Probe::Abi(v);
    }
    match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
        libc::ENOSYS => Probe::Missing,
        libc::EOPNOTSUPP => Probe::Disabled,
        e @ (libc::EPERM | libc::EACCES) => Probe::Blocked(e),
        e => Probe::Other(e),
    }
}
