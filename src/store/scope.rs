//! What a caller may see and touch: the namespaces of a read ([`Scope`]) and the whole of a
//! principal's view ([`Visibility`]: its namespace rights and its read window). Every id-taking
//! store call checks a row against a `Visibility` before looking at its seal, and every search
//! and list runs inside a `Scope` derived from one, so the two can never disagree.

use std::collections::BTreeMap;

use super::model::Filter;
use crate::error::{Error, Result};

/// The most namespaces a scope may hold and still be looked up per namespace in a backend's
/// namespace-qualified index (SQLite's `scoped_fts`, PostgreSQL's `entries.scoped`); wider
/// scopes use the shared index with the scope applied inside it. An expression per namespace
/// stops paying for itself well before this.
pub const MAX_NARROW_NAMESPACES: usize = 64;

/// Which namespaces a read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a `"*"` read grant).
    All,
    /// These namespaces (sorted, without repeats); empty covers nothing.
    Only(Vec<String>),
}

impl Default for Scope {
    fn default() -> Self {
        Self::Only(Vec::new())
    }
}

impl Scope {
    /// A scope of the given namespaces.
    pub fn only(namespaces: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = namespaces.into_iter().collect();
        v.sort();
        v.dedup();
        Self::Only(v)
    }

    /// Whether a row of `namespace` is inside.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(v) => v.binary_search_by(|n| n.as_str().cmp(namespace)).is_ok(),
        }
    }

    /// True when it covers nothing.
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Only(v) if v.is_empty())
    }

    /// The namespaces of a narrow scope (one to [`MAX_NARROW_NAMESPACES`]), or `None` for a
    /// `"*"` scope, an empty one or a wider one.
    pub fn narrow(&self) -> Option<&[String]> {
        match self {
            Self::Only(v) if !v.is_empty() && v.len() <= MAX_NARROW_NAMESPACES => Some(v),
            _ => None,
        }
    }
}

/// What a principal may do in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// The namespace `"*"` in a set of rights: every namespace not named on its own.
pub const ANY_NAMESPACE: &str = "*";

/// The refusal of a write to a namespace the caller may only read. It does not repeat the
/// namespace: the agent knows what it sent, and nothing it sent is echoed.
pub fn not_writable() -> Error {
    Error::Forbidden("the namespace is not writable by this principal".into())
}

/// The refusal of a read of a namespace the caller may not read.
pub fn not_readable() -> Error {
    Error::Forbidden("the namespace is not readable by this principal".into())
}

/// A caller's view of the store: its rights per namespace (`"*"` for the rest) and its read
/// window. A row outside it is "not found", whatever the row holds.
#[derive(Debug, Clone, Default)]
pub struct Visibility {
    rights: BTreeMap<String, Rights>,
    /// Rows created before this (unix ms) are invisible: the policy's read window.
    read_from: Option<i64>,
}

impl Visibility {
    /// A view with these rights (`"*"` covering every namespace not named) and read window.
    pub fn new(rights: impl IntoIterator<Item = (String, Rights)>, read_from: Option<i64>) -> Self {
        Self {
            rights: rights.into_iter().collect(),
            read_from,
        }
    }

    /// Everything, read and write (the operator's view).
    pub fn everything() -> Self {
        Self::new([(ANY_NAMESPACE.to_string(), Rights::ReadWrite)], None)
    }

    /// The rights in `namespace`: its own, else the `"*"` ones.
    pub fn rights(&self, namespace: &str) -> Option<Rights> {
        self.rights
            .get(namespace)
            .or_else(|| self.rights.get(ANY_NAMESPACE))
            .copied()
    }

    /// Whether the caller may read `namespace`.
    pub fn can_read(&self, namespace: &str) -> bool {
        self.rights(namespace).is_some()
    }

    /// Whether the caller may write `namespace`.
    pub fn can_write(&self, namespace: &str) -> bool {
        self.rights(namespace) == Some(Rights::ReadWrite)
    }

    /// Whether a row of `namespace` created at `created_at` is visible at all.
    pub fn sees(&self, namespace: &str, created_at: i64) -> bool {
        self.can_read(namespace) && self.read_from.is_none_or(|from| created_at >= from)
    }

    /// A row the caller cannot see is "not found" (ids leak nothing).
    pub fn check_read(&self, namespace: &str, created_at: i64) -> Result<()> {
        if self.sees(namespace, created_at) {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Invisible → not found; visible but read-only → forbidden.
    pub fn check_write(&self, namespace: &str, created_at: i64) -> Result<()> {
        self.check_read(namespace, created_at)?;
        if self.can_write(namespace) {
            Ok(())
        } else {
            Err(not_writable())
        }
    }

    /// The namespaces a read covers: `named` (forbidden unless readable), or every namespace
    /// the caller may read.
    pub fn scope(&self, named: Option<String>) -> Result<Scope> {
        match named {
            Some(ns) if self.can_read(&ns) => Ok(Scope::only([ns])),
            Some(_) => Err(not_readable()),
            None if self.rights.contains_key(ANY_NAMESPACE) => Ok(Scope::All),
            None => Ok(Scope::only(self.rights.keys().cloned())),
        }
    }

    /// A search or list filter inside this view: the scope of `named`, the read window
    /// narrowing `since` (never widening it).
    pub fn filter(
        &self,
        named: Option<String>,
        tags: Vec<String>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Filter> {
        let since = match (since, self.read_from) {
            (Some(s), Some(w)) => Some(s.max(w)),
            (s, w) => s.or(w),
        };
        Ok(Filter {
            scope: self.scope(named)?,
            tags,
            since,
            until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Visibility {
        Visibility::new(
            [
                ("*".to_string(), Rights::Read),
                ("mine".to_string(), Rights::ReadWrite),
            ],
            Some(100),
        )
    }

    #[test]
    fn rights_fall_back_to_the_wildcard() {
        let v = view();
        assert!(v.can_write("mine") && !v.can_write("other") && v.can_read("other"));
        assert!(matches!(
            v.check_write("other", 200),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(v.check_read("mine", 99), Err(Error::NotFound)));
        assert!(v.check_write("mine", 100).is_ok());
        assert_eq!(v.scope(None).unwrap(), Scope::All);
    }

    #[test]
    fn scopes_and_windows() {
        let v = Visibility::new([("a".to_string(), Rights::Read)], Some(50));
        assert_eq!(v.scope(None).unwrap(), Scope::only(["a".to_string()]));
        assert!(matches!(
            v.scope(Some("b".into())),
            Err(Error::Forbidden(_))
        ));
        let f = v.filter(None, vec![], Some(10), None).unwrap();
        assert_eq!(f.since, Some(50));
        let f = v.filter(None, vec![], Some(70), None).unwrap();
        assert_eq!(f.since, Some(70));
        assert!(Scope::only(["b".to_string(), "a".to_string()]).covers("a"));
        assert!(!Scope::only(["b".to_string()]).covers("a"));
        assert!(Scope::default().is_empty());
        assert!(Scope::default().narrow().is_none() && Scope::All.narrow().is_none());
        assert_eq!(
            Scope::only(["a".to_string()]).narrow(),
            Some(&["a".to_string()][..])
        );
        let wide = Scope::only((0..=MAX_NARROW_NAMESPACES).map(|i| format!("n{i}")));
        assert!(wide.narrow().is_none());
        assert!(!Visibility::default().can_read("a"));
    }
}
