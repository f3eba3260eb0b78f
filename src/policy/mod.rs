//! The policy: who may call which tools on which namespaces, with what limits, rules and rates.
//!
//! Raw, then compiled: the file is parsed into raw serde types (unknown keys are errors),
//! checked against `schema/policy.schema.json`, then compiled once — regexes into sets, tool
//! names into a set, times into durations. Everything after start-up uses the compiled
//! [`Policy`]; nothing an agent sends can change it.

pub mod http;
pub mod limits;
pub mod load;
pub mod normalize;
pub mod rules;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::ToolName;
use crate::config::Limits;
use crate::store::Synchronous;
pub use limits::{RateLimiter, Rates};
pub use load::{PolicyError, load_file, parse};
use rules::{Field, Rule, RuleAction, Rules};

/// The policy compiled into the binary, used when `serve` gets no `--policy`.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.toml");

/// How a principal may use a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Access {
    /// `"r"`: read only.
    #[serde(rename = "r")]
    Read,
    /// `"rw"`: read and write.
    #[serde(rename = "rw")]
    ReadWrite,
}

/// What one principal is granted.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// The socket peer uid mapped to this principal, if any.
    pub uid: Option<u32>,
    /// The tools it may call.
    pub tools: HashSet<ToolName>,
    /// Its namespaces (`"*"` for any other) and the access to each.
    pub namespaces: BTreeMap<String, Access>,
    /// Empty for the no-access grant of an unknown principal.
    pub default_namespace: String,
}

impl Grant {
    /// True when the grant lists `tool`.
    pub fn can_call(&self, tool: ToolName) -> bool {
        self.tools.contains(&tool)
    }

    /// The access to `namespace`: its own entry, else the `"*"` wildcard's.
    fn access(&self, namespace: &str) -> Option<Access> {
        self.namespaces
            .get(namespace)
            .or_else(|| self.namespaces.get("*"))
            .copied()
    }

    /// True when `namespace` may be read (r or rw).
    pub fn can_read(&self, namespace: &str) -> bool {
        self.access(namespace).is_some()
    }

    /// True when `namespace` may be written (rw).
    pub fn can_write(&self, namespace: &str) -> bool {
        self.access(namespace) == Some(Access::ReadWrite)
    }
}

/// Idle timeout and maximum age of a session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionLimits {
    /// A session idle this long ends.
    pub idle_timeout: Option<Duration>,
    /// A session this old ends.
    pub max_age: Option<Duration>,
}

/// What `memwarden purge` removes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Entries older than this are purged.
    pub max_age: Option<Duration>,
    /// Deleted entries are kept this long before they are purged.
    pub deleted_retention: Option<Duration>,
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from: a path, or "built-in".
    pub source: String,
    /// SHA-256 of the exact bytes read.
    pub sha256: String,
    /// Size limits (`[limits]`), defaults filled in.
    pub limits: Limits,
    /// SQLite `PRAGMA synchronous` (`[storage]`).
    pub synchronous: Synchronous,
    /// `PRAGMA hard_heap_limit`, when set.
    pub sqlite_heap_limit: Option<u64>,
    /// Per-session rates (`[rates]`).
    pub rates: Rates,
    /// Session timeouts (`[sessions]`).
    pub sessions: SessionLimits,
    /// How far back reads reach (`[access]`), when set.
    pub read_window: Option<Duration>,
    /// What `purge` removes (`[retention]`).
    pub retention: Retention,
    /// Content rules (`[rules]`), compiled into one set.
    pub rules: Rules,
    /// Each principal's grant by name.
    pub principals: BTreeMap<String, Grant>,
    /// When the server signs audit checkpoints (`[audit]`).
    pub checkpoints: crate::audit::CheckpointPolicy,
    /// What `serve-http` allows (`[http]`).
    pub http: http::HttpPolicy,
}

impl Policy {
    /// The principal's grant; an unknown principal gets nothing (no tools, no namespaces).
    pub fn grant(&self, principal: &str) -> Grant {
        self.principals.get(principal).cloned().unwrap_or_default()
    }

    /// The principal mapped to a peer uid, if any.
    pub fn principal_for_uid(&self, uid: u32) -> Option<&str> {
        self.principals
            .iter()
            .find(|(_, g)| g.uid == Some(uid))
            .map(|(name, _)| name.as_str())
    }
}

// ---- raw form ----------------------------------------------------------------------------------

/// The policy file as parsed, before any check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[allow(dead_code)]
    version: u32,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    rates: Rates,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    rules: RawRules,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    http: http::RawHttp,
    principals: BTreeMap<String, RawPrincipal>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint_every_events: Option<u64>,
    checkpoint_every_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    request_line_bytes: Option<usize>,
    content_bytes: Option<usize>,
    metadata_bytes: Option<usize>,
    tags_max: Option<usize>,
    query_chars: Option<usize>,
    page_size_max: Option<usize>,
    response_bytes: Option<usize>,
    namespace_max_entries: Option<u64>,
    namespace_max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    synchronous: Option<String>,
    sqlite_heap_limit_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    idle_timeout_seconds: Option<u64>,
    max_age_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    read_window_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    max_age_seconds: Option<u64>,
    deleted_retention_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    packs: Vec<RawPackChoice>,
    #[serde(default)]
    custom: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackChoice {
    pack: String,
    action: RuleAction,
    applies_to: Option<Vec<Field>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    pattern: String,
    action: RuleAction,
    applies_to: Option<Vec<Field>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    uid: Option<u32>,
    tools: Vec<String>,
    namespaces: BTreeMap<String, Access>,
    default_namespace: String,
}

fn secs(s: Option<u64>) -> Option<Duration> {
    s.map(Duration::from_secs)
}

/// A compile-time problem: the key path and the reason.
pub(crate) type Problem = (String, String);

impl RawPolicy {
    /// Validates and compiles the raw policy, section by section; the first problem wins.
    pub(crate) fn compile(self, source: String, sha256: String) -> Result<Policy, Problem> {
        check_rates(&self.rates)?;
        let rules = compile_rules(&self.rules)?;
        let principals = compile_principals(self.principals)?;
        let http = self.http.compile(&principals)?;
        Ok(Policy {
            source,
            sha256,
            limits: compile_limits(&self.limits),
            synchronous: match self.storage.synchronous.as_deref() {
                Some("normal") => Synchronous::Normal,
                _ => Synchronous::Full,
            },
            sqlite_heap_limit: self.storage.sqlite_heap_limit_bytes,
            rates: self.rates,
            sessions: SessionLimits {
                idle_timeout: secs(self.sessions.idle_timeout_seconds),
                max_age: secs(self.sessions.max_age_seconds),
            },
            read_window: secs(self.access.read_window_seconds),
            retention: Retention {
                max_age: secs(self.retention.max_age_seconds),
                deleted_retention: secs(self.retention.deleted_retention_seconds),
            },
            rules,
            principals,
            checkpoints: compile_checkpoints(&self.audit),
            http,
        })
    }
}

/// `[limits]`: each absent knob takes the built-in default.
fn compile_limits(l: &RawLimits) -> Limits {
    let d = Limits::default();
    Limits {
        request_line_bytes: l.request_line_bytes.unwrap_or(d.request_line_bytes),
        content_bytes: l.content_bytes.unwrap_or(d.content_bytes),
        metadata_bytes: l.metadata_bytes.unwrap_or(d.metadata_bytes),
        tags_max: l.tags_max.unwrap_or(d.tags_max),
        query_chars: l.query_chars.unwrap_or(d.query_chars),
        page_size_max: l.page_size_max.unwrap_or(d.page_size_max),
        response_bytes: l.response_bytes.unwrap_or(d.response_bytes),
        namespace_max_entries: l.namespace_max_entries,
        namespace_max_bytes: l.namespace_max_bytes,
    }
}

/// `[rates]`: a burst larger than an hour of calls would make the per-minute rate meaningless.
fn check_rates(r: &Rates) -> Result<(), Problem> {
    if let (Some(b), Some(c)) = (r.burst, r.calls_per_minute)
        && b > c.max(1) * 60
    {
        return Err((
            "rates.burst".into(),
            "must not exceed an hour's worth of calls_per_minute".into(),
        ));
    }
    Ok(())
}

/// `[rules]`: the selected packs, then the custom rules, compiled into one set.
fn compile_rules(raw: &RawRules) -> Result<Rules, Problem> {
    let mut rules = Vec::new();
    for (i, choice) in raw.packs.iter().enumerate() {
        add_pack(&mut rules, i, choice)?;
    }
    for (i, custom) in raw.custom.iter().enumerate() {
        add_custom(&mut rules, i, custom)?;
    }
    Rules::new(rules).map_err(|e| {
        (
            "rules".to_string(),
            format!("rules do not compile together: {e}"),
        )
    })
}

/// One `[[rules.packs]]` choice: every rule of a known built-in pack, selected once.
fn add_pack(rules: &mut Vec<Rule>, i: usize, choice: &RawPackChoice) -> Result<(), Problem> {
    let key = format!("rules.packs[{i}].pack");
    let Some(pack) = rules::pack(&choice.pack) else {
        let known: Vec<&str> = rules::PACKS.iter().map(|(n, _)| *n).collect();
        return Err((
            key,
            format!(
                "unknown rule pack {:?} (known: {})",
                choice.pack,
                known.join(", ")
            ),
        ));
    };
    let pack = pack.map_err(|e| (key.clone(), format!("built-in pack is malformed: {e}")))?;
    if rules
        .iter()
        .any(|r: &Rule| r.name.starts_with(&format!("{}.", choice.pack)))
    {
        return Err((
            key,
            format!("rule pack {:?} is selected twice", choice.pack),
        ));
    }
    for (name, pattern) in pack {
        let regex = regex::Regex::new(&pattern).map_err(|e| (key.clone(), e.to_string()))?;
        rules.push(Rule {
            name,
            regex,
            action: choice.action,
            fields: choice
                .applies_to
                .clone()
                .unwrap_or_else(|| vec![Field::Content, Field::Metadata]),
        });
    }
    Ok(())
}

/// One `[[rules.custom]]` rule: a unique name and a regex of bounded compiled size.
fn add_custom(rules: &mut Vec<Rule>, i: usize, custom: &RawRule) -> Result<(), Problem> {
    if rules.iter().any(|r| r.name == custom.name) {
        return Err((
            format!("rules.custom[{i}].name"),
            format!("rule name {:?} is used twice", custom.name),
        ));
    }
    let regex = regex::RegexBuilder::new(&custom.pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            (
                format!("rules.custom[{i}].pattern"),
                format!("not a valid regex: {e}"),
            )
        })?;
    rules.push(Rule {
        name: custom.name.clone(),
        regex,
        action: custom.action,
        fields: custom
            .applies_to
            .clone()
            .unwrap_or_else(|| vec![Field::Content]),
    });
    Ok(())
}

/// `[principals]`: each grant compiled; no uid may map to two principals.
fn compile_principals(
    raw: BTreeMap<String, RawPrincipal>,
) -> Result<BTreeMap<String, Grant>, Problem> {
    let mut principals = BTreeMap::new();
    let mut uids = HashSet::new();
    for (name, p) in raw {
        let grant = compile_principal(&name, p)?;
        if let Some(uid) = grant.uid
            && !uids.insert(uid)
        {
            return Err((
                format!("principals.{name}.uid"),
                format!("uid {uid} is mapped to two principals"),
            ));
        }
        principals.insert(name, grant);
    }
    Ok(principals)
}

/// One principal: a name not reserved, known tools, a default namespace it can read.
fn compile_principal(name: &str, p: RawPrincipal) -> Result<Grant, Problem> {
    let key = format!("principals.{name}");
    // `uid-N` is the name an unmapped socket peer gets: a principal by that name would
    // hand its grants to whoever connects with that uid, whatever its `uid` key says.
    if name.starts_with(crate::principal::UNMAPPED_PREFIX) {
        return Err((
            key,
            format!(
                "principal names beginning with {:?} are reserved for socket peers the \
                 policy does not map; name it otherwise and set `uid`",
                crate::principal::UNMAPPED_PREFIX
            ),
        ));
    }
    let mut tools = HashSet::new();
    for (i, t) in p.tools.iter().enumerate() {
        let tool = ToolName::from_name(t)
            .ok_or_else(|| (format!("{key}.tools[{i}]"), format!("unknown tool {t:?}")))?;
        tools.insert(tool);
    }
    let grant = Grant {
        uid: p.uid,
        tools,
        namespaces: p.namespaces,
        default_namespace: p.default_namespace,
    };
    if !grant.can_read(&grant.default_namespace) {
        return Err((
            format!("{key}.default_namespace"),
            format!(
                "{:?} is not one of this principal's namespaces",
                grant.default_namespace
            ),
        ));
    }
    Ok(grant)
}

/// `[audit]`: when the server signs checkpoints; each absent knob takes the default.
fn compile_checkpoints(raw: &RawAudit) -> crate::audit::CheckpointPolicy {
    let default = crate::audit::CheckpointPolicy::default();
    crate::audit::CheckpointPolicy {
        every_events: raw.checkpoint_every_events.unwrap_or(default.every_events),
        every: secs(raw.checkpoint_every_seconds).unwrap_or(default.every),
    }
}
