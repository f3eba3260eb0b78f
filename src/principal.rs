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
