//! Who is calling. Decided by the server from how it was launched, never from tool input or
//! clientInfo (DESIGN.md §2).

use std::fmt;

/// The principal of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(String);

/// A principal name that is not acceptable.
#[derive(Debug, thiserror::Error)]
#[error("principal name {0:?} must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$")]
pub struct BadPrincipal(String);

impl Principal {
    /// The principal when the launch command does not name one.
    pub const DEFAULT: &'static str = "local";

    /// The `--principal NAME` the operator wrote into the launch command.
    pub fn from_flag(name: &str) -> Result<Self, BadPrincipal> {
        let ok = (1..=64).contains(&name.len())
            && name.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || (i > 0 && matches!(b, b'_' | b'.' | b'-'))
            });
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(BadPrincipal(name.chars().take(80).collect()))
        }
    }

    /// The principal's name, as the policy knows it.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Where this principal's calls go when they name no namespace.
    pub fn default_namespace(&self) -> &str {
        "default"
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The process on the other end of a unix socket, as the kernel reports it (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The peer of `fd` when it is a connected unix socket (socket activation gives us one as
/// stdin); `None` for a pipe, a terminal, a file.
pub fn peer_of(fd: std::os::fd::RawFd) -> Option<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; getsockopt fails
    // (ENOTSOCK) on anything that is not a socket and then writes nothing we read.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// The prefix of the name an unmapped socket peer gets (`uid-1003`); the policy may not use it.
pub const UNMAPPED_PREFIX: &str = "uid-";

impl Principal {
    /// The principal for a socket peer: the policy's principal with that uid, or an unmapped
    /// `uid-N` that the policy grants nothing.
    pub fn for_peer(peer: Peer, mapped: Option<&str>) -> Self {
        match mapped {
            Some(name) => Self(name.to_string()),
            None => Self(format!("{UNMAPPED_PREFIX}{}", peer.uid)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Principal;

    #[test]
    fn names() {
        assert!(Principal::from_flag("local").is_ok());
        assert!(Principal::from_flag("agent-1.x_y").is_ok());
        for bad in ["", "Local", "-x", "a b", "ä", &"a".repeat(65)] {
            assert!(Principal::from_flag(bad).is_err(), "{bad}");
        }
    }
}
