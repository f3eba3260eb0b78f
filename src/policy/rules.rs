//! Content rules: patterns that reject, redact or quarantine what an agent tries to store.
//!
//! All patterns of a field are compiled into one `RegexSet`, so a clean write costs one pass
//! per field whatever the number of rules. A refusal names the rule, never the matched text.

use regex::{Regex, RegexSet};
use serde_json::Value;

mod cross;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Redact,
    Quarantine,
    Reject,
}

/// Which part of a memory a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    Content,
    Tags,
    Metadata,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Pack-qualified (`secrets.aws_key`) or custom name; named in refusals.
    pub name: String,
    /// The compiled pattern.
    pub regex: Regex,
    /// What a match does.
    pub action: RuleAction,
    /// The fields a match must lie within.
    pub fields: Vec<Field>,
}

/// The rule packs shipped in `policies/rules/`, selectable by name.
pub const PACKS: [(&str, &str); 3] = [
    ("secrets", include_str!("../../policies/rules/secrets.toml")),
    (
        "injection",
        include_str!("../../policies/rules/injection.toml"),
    ),
    ("markup", include_str!("../../policies/rules/markup.toml")),
];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    rule: Vec<RawPackRule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackRule {
    name: String,
    pattern: String,
}

/// The (name, pattern) pairs of a built-in pack, or `None` for an unknown pack.
pub fn pack(name: &str) -> Option<Result<Vec<(String, String)>, String>> {
    let (_, text) = PACKS.iter().find(|(n, _)| *n == name)?;
    Some(
        toml::from_str::<RawPack>(text)
            .map(|p| {
                p.rule
                    .into_iter()
                    .map(|r| (format!("{name}.{}", r.name), r.pattern))
                    .collect()
            })
            .map_err(|e| e.to_string()),
    )
}

/// All rules, compiled into one set that runs over the cross-field view of a write.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    set: Option<RegexSet>,
}

/// What the rules decided about one write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first reject rule that matched, or the first redact rule whose match could not be
    /// mapped back to stored text (fail closed).
    pub rejected_by: Option<String>,
    /// The quarantine rules that matched: the entry is stored for review.
    pub quarantined_by: Vec<String>,
    /// The redact rules whose matches were replaced.
    pub redacted_by: Vec<String>,
}

impl Rules {
    /// Compiles the rules' patterns into one set.
    pub fn new(rules: Vec<Rule>) -> Result<Self, regex::Error> {
        let set = if rules.is_empty() {
            None
        } else {
            Some(RegexSet::new(rules.iter().map(|r| r.regex.as_str()))?)
        };
        Ok(Self { rules, set })
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Checks a write and redacts in place.
    ///
    /// Every string of the write (content, each tag, each metadata key and string value) is
    /// normalised once (see [`normalize`](super::normalize)); the rules run over one view that
    /// joins them, so a secret split between content and metadata, or a credential named by a
    /// metadata key, is seen whole. A rule only counts where its match lies within the fields
    /// it applies to. Redaction maps each match back to the original bytes: in content and in
    /// metadata string values the span becomes `[REDACTED:<rule>]`; a matching tag is dropped;
    /// a metadata key that a match touches turns its whole entry into
    /// `"[REDACTED:<rule>]": "[REDACTED:<rule>]"`.
    pub fn apply(
        &self,
        content: &mut String,
        tags: &mut Vec<String>,
        metadata: &mut Option<serde_json::Map<String, Value>>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let Some(set) = &self.set else {
            return verdict;
        };
        let (matched, joined) = candidates(set, content, tags, metadata.as_ref());
        if matched.is_empty() {
            return verdict;
        }
        // Something matched: normalise again, keeping the maps back to the original.
        let write = cross::Write::new(content, tags, metadata.as_ref(), true);
        let mut views = vec![write.view(false, true)];
        if joined {
            views.push(write.view(true, true));
        }
        let mut edits: Vec<Edit> = Vec::new();
        for i in matched {
            let rule = &self.rules[i];
            let Some(hit) = find_hit(rule, i, &views, &mut edits) else {
                continue;
            };
            match rule.action {
                RuleAction::Reject => {
                    verdict.rejected_by = Some(rule.name.clone());
                    return verdict;
                }
                // A match made only of what the view adds (separators, a number's text) has
                // no stored bytes to redact: refuse the write rather than store it.
                RuleAction::Redact if hit == Hit::Unmapped => {
                    verdict.rejected_by = Some(rule.name.clone());
                    return verdict;
                }
                RuleAction::Redact => verdict.redacted_by.push(rule.name.clone()),
                RuleAction::Quarantine => verdict.quarantined_by.push(rule.name.clone()),
            }
        }
        if !edits.is_empty() {
            let names: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
            cross::redact(&names, edits, content, tags, metadata);
        }
        verdict
    }
}

/// One redaction: (segment, start, end, rule index).
type Edit = (u32, u32, u32, usize);

/// How a rule matched a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    /// Every match lies on stored bytes (or the rule does not redact).
    Mapped,
    /// Some match of a redact rule covers only text the view adds.
    Unmapped,
}

/// The indices of the rules whose patterns match somewhere, and whether a joined view was
/// needed. A clean write costs one normalisation of each string, without maps, and one or
/// two passes of the set.
fn candidates(
    set: &RegexSet,
    content: &str,
    tags: &[String],
    metadata: Option<&serde_json::Map<String, Value>>,
) -> (Vec<usize>, bool) {
    let write = cross::Write::new(content, tags, metadata, false);
    let plain = write.view(false, false);
    let mut matched: Vec<usize> = set.matches(&plain.text).into_iter().collect();
    let joined = plain.text.contains('\n').then(|| write.view(true, false));
    if let Some(j) = &joined {
        matched.extend(set.matches(&j.text).iter());
        matched.sort_unstable();
        matched.dedup();
    }
    (matched, joined.is_some())
}

/// Runs rule `i` over the mapped views, within the fields it applies to. `None` when it does
/// not match there; a redact rule adds its spans to `edits`.
fn find_hit(rule: &Rule, i: usize, views: &[cross::View], edits: &mut Vec<Edit>) -> Option<Hit> {
    let mut hit = None;
    let mut plain: Vec<(u32, u32, u32)> = Vec::new();
    for (v, view) in views.iter().enumerate() {
        for (from, to) in view.runs(&rule.fields) {
            for m in rule.regex.find_iter(&view.text[from..to]) {
                if rule.action != RuleAction::Redact {
                    hit = Some(Hit::Mapped);
                    continue;
                }
                if m.start() == m.end() {
                    continue;
                }
                let spans = view.spans(from + m.start(), from + m.end());
                if v > 0
                    && spans
                        .iter()
                        .any(|s| plain.iter().any(|p| p.0 == s.0 && p.1 < s.2 && s.1 < p.2))
                {
                    // The joined view ran this match past a real line end.
                    continue;
                }
                if spans.is_empty() {
                    hit = Some(Hit::Unmapped);
                } else if hit.is_none() {
                    hit = Some(Hit::Mapped);
                }
                if v == 0 {
                    plain.extend(&spans);
                }
                edits.extend(spans.into_iter().map(|(seg, a, b)| (seg, a, b, i)));
            }
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pack_parses_and_compiles() {
        for (name, _) in PACKS {
            let rules = pack(name).unwrap().unwrap();
            assert!(rules.len() >= 5, "{name}");
            for (rule, pattern) in rules {
                Regex::new(&pattern).unwrap_or_else(|e| panic!("{rule}: {e}"));
            }
        }
        assert!(pack("nope").is_none());
    }

    fn rule(name: &str, pattern: &str, action: RuleAction, fields: &[Field]) -> Rule {
        Rule {
            name: name.into(),
            regex: Regex::new(pattern).unwrap(),
            action,
            fields: fields.to_vec(),
        }
    }

    #[test]
    fn reject_beats_quarantine_beats_redact() {
        let rules = Rules::new(vec![
            rule("r", "bad", RuleAction::Reject, &[Field::Content]),
            rule("q", "odd", RuleAction::Quarantine, &[Field::Content]),
            rule(
                "x",
                "[0-9]{4}",
                RuleAction::Redact,
                &[Field::Content, Field::Tags, Field::Metadata],
            ),
        ])
        .unwrap();
        let (mut c, mut t, mut m) = (
            "pin 1234 odd".to_string(),
            vec!["a".into(), "y1999".into()],
            Some(
                serde_json::json!({"k": ["x 4321"]})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        );
        let v = rules.apply(&mut c, &mut t, &mut m);
        assert_eq!(v.rejected_by, None);
        assert_eq!(v.quarantined_by, vec!["q"]);
        assert_eq!(v.redacted_by, vec!["x"]);
        assert_eq!(c, "pin [REDACTED:x] odd");
        assert_eq!(t, vec!["a".to_string()]);
        assert_eq!(m.unwrap()["k"][0], "x [REDACTED:x]");
        let mut c = "bad odd 1234".to_string();
        let v = rules.apply(&mut c, &mut vec![], &mut None);
        assert_eq!(v.rejected_by.as_deref(), Some("r"));
        assert_eq!(c, "bad odd 1234", "nothing changed on reject");
    }

    /// The secrets pack as a policy would compile it.
    fn secrets(action: RuleAction) -> Rules {
        Rules::new(
            pack("secrets")
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|(n, p)| {
                    rule(
                        &n,
                        &p,
                        action,
                        &[Field::Content, Field::Tags, Field::Metadata],
                    )
                })
                .collect(),
        )
        .unwrap()
    }

    fn meta(v: Value) -> Option<serde_json::Map<String, Value>> {
        v.as_object().cloned()
    }

    #[test]
    fn redaction_takes_the_whole_secret() {
        let rules = secrets(RuleAction::Redact);
        let body = "MIIEowIBAAKCAQEAx\nq7Y+zz/Abc==";
        for kind in ["RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", "", "PGP "] {
            let block = if kind == "PGP " { " BLOCK" } else { "" };
            for nl in ["\n", "\r\n", "\r"] {
                let pem = format!(
                    "-----BEGIN {kind}PRIVATE KEY{block}-----{nl}{}{nl}-----END {kind}PRIVATE KEY{block}-----",
                    body.replace('\n', nl)
                );
                let mut c = format!("key:{nl}{pem}{nl}done");
                let v = rules.apply(&mut c, &mut vec![], &mut None);
                assert_eq!(v.redacted_by, vec!["secrets.private_key_block"], "{c}");
                assert_eq!(
                    c,
                    format!("key:{nl}[REDACTED:secrets.private_key_block]{nl}done")
                );
            }
        }
        let mut c = "x\n-----BEGIN PRIVATE KEY-----\nMIIE\nabc".to_string();
        rules.apply(&mut c, &mut vec![], &mut None);
        assert_eq!(
            c, "x\n[REDACTED:secrets.private_key_block]",
            "no footer: to the end"
        );

        for (text, left) in [
            ("password: correct horse battery staple\nnext", "\nnext"),
            (
                "{\"password\": \"a b c\", \"user\": \"bob\"}",
                ", \"user\": \"bob\"}",
            ),
            ("DB_PASSWORD=s3cr3t value", ""),
            ("db:\n  pass word: 'two words'  # c\n", "\n"),
            ("url postgres://app:p@ss/w0rd@db:5432/x", "db:5432/x"),
        ] {
            let mut c = text.to_string();
            let v = rules.apply(&mut c, &mut vec![], &mut None);
            assert!(!v.redacted_by.is_empty(), "{text}");
            assert!(c.ends_with(left), "{text:?} -> {c:?}");
            for secret in ["correct", "staple", "a b c", "s3cr3t", "two words", "p@ss"] {
                assert!(!c.contains(secret), "{text:?} -> {c:?}");
            }
        }
    }

    #[test]
    fn metadata_keys_are_scanned_and_redact_their_entry() {
        let rules = secrets(RuleAction::Redact);
        let mut m = meta(serde_json::json!({
            "password": "hunter2 hunter2",
            "db": {"api_key": 12345678},
            "AKIAIOSFODNN7EXAMPLE": "note",
            "fine": "ok",
        }));
        let v = rules.apply(&mut String::new(), &mut vec![], &mut m);
        let m = Value::Object(m.unwrap());
        let text = m.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("12345678"),
            "{text}"
        );
        assert!(!text.contains("AKIA"), "{text}");
        assert_eq!(m["fine"], "ok");
        assert_eq!(
            m["[REDACTED:secrets.password_assignment]"],
            "[REDACTED:secrets.password_assignment]"
        );
        assert_eq!(
            m["db"]["[REDACTED:secrets.password_assignment]"],
            "[REDACTED:secrets.password_assignment]"
        );
        assert_eq!(
            v.redacted_by,
            vec!["secrets.aws_access_key_id", "secrets.password_assignment"]
        );
    }

    #[test]
    fn a_secret_split_across_fields_is_seen_whole() {
        let rules = secrets(RuleAction::Reject);
        for (content, value) in [
            ("AKIAIOSFOD", "NN7EXAMPLE"),
            ("NN7EXAMPLE", "AKIAIOSFOD"),
            ("password:", "hunter2hunter2"),
        ] {
            let v = rules.apply(
                &mut content.to_string(),
                &mut vec![],
                &mut meta(serde_json::json!({"note": value})),
            );
            assert!(v.rejected_by.is_some(), "{content} + {value}");
        }
        // A rule for content only does not reach into metadata.
        let only = Rules::new(vec![rule(
            "k",
            "AKIA[A-Z0-9]{16}",
            RuleAction::Reject,
            &[Field::Content],
        )])
        .unwrap();
        let v = only.apply(
            &mut "AKIAIOSFOD".to_string(),
            &mut vec![],
            &mut meta(serde_json::json!({"note": "NN7EXAMPLE"})),
        );
        assert_eq!(v.rejected_by, None);
    }

    #[test]
    fn a_match_with_no_stored_bytes_fails_closed() {
        // `: 1234` is all view text: the separator and a number's rendering.
        let rules = Rules::new(vec![rule(
            "n",
            ": 1234",
            RuleAction::Redact,
            &[Field::Metadata],
        )])
        .unwrap();
        let mut m = meta(serde_json::json!({"a": 1234}));
        let v = rules.apply(&mut String::new(), &mut vec![], &mut m);
        assert_eq!(v.rejected_by.as_deref(), Some("n"));
    }

    #[test]
    fn evasions_are_matched_and_redacted_in_the_original() {
        let rules = secrets(RuleAction::Redact);
        for evasive in [
            "AKIA\u{200B}IOSFODNN7EXAMPLE",
            "AKI\u{410}IOSFODNN7EXAMPLE",
            "ＡＫＩＡIOSFODNN7EXAMPLE",
            "AKIAIOSF\nODNN7EXAMPLE",
            "A\u{301}KIAIOSFODNN7EXAMPLE\u{301}",
        ] {
            let mut c = format!("k {evasive} k");
            let v = rules.apply(&mut c, &mut vec![], &mut None);
            assert_eq!(
                v.redacted_by,
                vec!["secrets.aws_access_key_id"],
                "{evasive:?}"
            );
            assert_eq!(c, "k [REDACTED:secrets.aws_access_key_id] k", "{evasive:?}");
        }
    }
}
