//! Content rules: patterns that reject, redact or quarantine what an agent tries to store.
//!
//! All patterns of a field are compiled into one `RegexSet`, so a clean write costs one pass
//! per field whatever the number of rules. A refusal names the rule, never the matched text.

use regex::{Regex, RegexSet};
use serde_json::Value;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
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
    pub name: String,
    pub regex: Regex,
    pub action: Action,
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

/// All rules, with one set per field.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Per field: the set over the rules that look at it, and their indexes into `rules`.
    sets: Vec<(Field, RegexSet, Vec<usize>)>,
}

/// What the rules decided about one write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first reject rule that matched.
    pub rejected_by: Option<String>,
    pub quarantined_by: Vec<String>,
    pub redacted_by: Vec<String>,
}

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Result<Self, regex::Error> {
        let mut sets = Vec::new();
        for field in [Field::Content, Field::Tags, Field::Metadata] {
            let idx: Vec<usize> = (0..rules.len())
                .filter(|&i| rules[i].fields.contains(&field))
                .collect();
            if idx.is_empty() {
                continue;
            }
            let set = RegexSet::new(idx.iter().map(|&i| rules[i].regex.as_str()))?;
            sets.push((field, set, idx));
        }
        Ok(Self { rules, sets })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    fn matching(&self, field: Field, text: &str, out: &mut Vec<usize>) {
        for (f, set, idx) in &self.sets {
            if *f == field {
                out.extend(set.matches(text).iter().map(|i| idx[i]));
            }
        }
    }

    /// Checks a write and redacts in place. Redaction replaces each match in content and in
    /// metadata string values with `[REDACTED:<rule>]`, and drops a matching tag.
    pub fn apply(
        &self,
        content: &mut String,
        tags: &mut Vec<String>,
        metadata: &mut Option<serde_json::Map<String, Value>>,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        if self.rules.is_empty() {
            return verdict;
        }
        let mut hits: Vec<(Field, usize)> = Vec::new();
        let mut found = Vec::new();
        self.matching(Field::Content, content, &mut found);
        hits.extend(found.drain(..).map(|i| (Field::Content, i)));
        for tag in tags.iter() {
            self.matching(Field::Tags, tag, &mut found);
        }
        hits.extend(found.drain(..).map(|i| (Field::Tags, i)));
        if let Some(map) = metadata {
            for_each_string(map, &mut |s| self.matching(Field::Metadata, s, &mut found));
        }
        hits.extend(found.drain(..).map(|i| (Field::Metadata, i)));
        hits.sort_by_key(|&(_, i)| i);
        hits.dedup();

        let names = |action: Action| -> Vec<String> {
            let mut v: Vec<String> = hits
                .iter()
                .filter(|(_, i)| self.rules[*i].action == action)
                .map(|(_, i)| self.rules[*i].name.clone())
                .collect();
            v.dedup();
            v
        };
        verdict.rejected_by = names(Action::Reject).into_iter().next();
        if verdict.rejected_by.is_some() {
            return verdict;
        }
        verdict.quarantined_by = names(Action::Quarantine);
        verdict.redacted_by = names(Action::Redact);
        for (field, i) in hits
            .iter()
            .filter(|(_, i)| self.rules[*i].action == Action::Redact)
        {
            let rule = &self.rules[*i];
            let marker = format!("[REDACTED:{}]", rule.name);
            match field {
                Field::Content => {
                    *content = rule
                        .regex
                        .replace_all(content, marker.as_str())
                        .into_owned();
                }
                Field::Tags => tags.retain(|t| !rule.regex.is_match(t)),
                Field::Metadata => {
                    if let Some(map) = metadata {
                        map_strings(map, &mut |s| {
                            if rule.regex.is_match(s) {
                                *s = rule.regex.replace_all(s, marker.as_str()).into_owned();
                            }
                        });
                    }
                }
            }
        }
        verdict
    }
}

fn for_each_string(map: &serde_json::Map<String, Value>, f: &mut impl FnMut(&str)) {
    fn walk(v: &Value, f: &mut impl FnMut(&str)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(a) => a.iter().for_each(|v| walk(v, f)),
            Value::Object(o) => o.values().for_each(|v| walk(v, f)),
            _ => {}
        }
    }
    map.values().for_each(|v| walk(v, f));
}

fn map_strings(map: &mut serde_json::Map<String, Value>, f: &mut impl FnMut(&mut String)) {
    fn walk(v: &mut Value, f: &mut impl FnMut(&mut String)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, f)),
            Value::Object(o) => o.values_mut().for_each(|v| walk(v, f)),
            _ => {}
        }
    }
    map.values_mut().for_each(|v| walk(v, f));
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

    fn rule(name: &str, pattern: &str, action: Action, fields: &[Field]) -> Rule {
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
            rule("r", "bad", Action::Reject, &[Field::Content]),
            rule("q", "odd", Action::Quarantine, &[Field::Content]),
            rule(
                "x",
                "[0-9]{4}",
                Action::Redact,
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
}
