//! The cross-field view of one write, and redaction mapped back to the stored strings.
//!
//! Every string of a write is a segment (content, each tag, each metadata key and string value),
//! normalised once. The view lays them out in regions, each for one field or (seams) for two:
//!
//! ```text
//! content | metadata values | metadata "key: value" lines | seams | tags
//! ```
//!
//! The `key: value` lines let `password` as a key name its value. A seam puts the end of the
//! content against the start of one metadata value, and the end of that value against the
//! start of the content (`SEAM` chars each), so a secret split between them reads whole. A
//! rule runs over the longest stretches of regions whose fields it applies to.
//!
//! Segments are separated by a hard break (`\n\n`). The second, "joined" view drops each single
//! line break that falls between two word chars — inside a segment, or inside a seam — so a
//! keyword broken across lines or fields reads whole; its matches only count where the plain
//! view has no match of the same rule, whose line ends are the real ones.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::Field;
use crate::policy::normalize::{Normalized, normalize, normalize_text};

/// The segment id of text the view adds (separators, `: `, a number's text).
const SYNTHETIC: u32 = u32::MAX;

/// View chars of each side of a seam: enough for any token the packs know whole, and a
/// bound on what many small metadata values cost.
const SEAM: usize = 64;

/// The normalised strings of one write.
pub(super) struct Write {
    content: Normalized,
    tags: Vec<Normalized>,
    /// Metadata keys and string values by walk order (see `walk`).
    meta: Vec<Normalized>,
    lines: Vec<Line>,
}

/// One `key: value` line of the metadata.
struct Line {
    key: usize,
    leaf: Leaf,
}

enum Leaf {
    Str(usize),
    Scalar(String),
    Nested,
}

/// A view: text to match, with (when asked for) one unit per char mapping it back.
pub(super) struct View {
    /// The text the rules run over.
    pub text: String,
    units: Vec<(u32, u32, u32, u32)>,
    /// (field, from, to) of each region, in order.
    regions: Vec<(&'static [Field], usize, usize)>,
}

impl Write {
    /// Normalises every string of a write; `mapped` keeps the maps back to the original.
    pub fn new(
        content: &str,
        tags: &[String],
        metadata: Option<&Map<String, Value>>,
        mapped: bool,
    ) -> Self {
        let norm = |s: &str| {
            if mapped {
                normalize(s)
            } else {
                Normalized {
                    text: normalize_text(s),
                    units: Vec::new(),
                }
            }
        };
        let mut strings = Vec::new();
        let mut lines = Vec::new();
        if let Some(map) = metadata {
            walk(map, &mut strings, &mut lines);
        }
        Self {
            content: norm(content),
            tags: tags.iter().map(|t| norm(t)).collect(),
            meta: strings.into_iter().map(norm).collect(),
            lines,
        }
    }

    fn tag_seg(&self, i: usize) -> u32 {
        1 + i as u32
    }

    fn meta_seg(&self, id: usize) -> u32 {
        (1 + self.tags.len() + id) as u32
    }

    /// Lays out the view. `joined` drops line breaks; `mapped` records the map back.
    pub fn view(&self, joined: bool, mapped: bool) -> View {
        let mut v = Builder {
            view: View {
                text: String::with_capacity(self.content.text.len() + 64),
                units: Vec::new(),
                regions: Vec::new(),
            },
            joined,
            mapped,
            held: None,
        };
        v.region(&[Field::Content], |v| {
            v.segment(0, &self.content, Part::All)
        });
        if !self.lines.is_empty() {
            v.region(&[Field::Metadata], |v| {
                for line in &self.lines {
                    if let Leaf::Str(id) = line.leaf {
                        v.segment(self.meta_seg(id), &self.meta[id], Part::All);
                    }
                }
            });
            v.region(&[Field::Metadata], |v| {
                for line in &self.lines {
                    v.segment(self.meta_seg(line.key), &self.meta[line.key], Part::All);
                    v.synthetic(":");
                    match &line.leaf {
                        Leaf::Str(id) => {
                            v.synthetic(" ");
                            v.append(self.meta_seg(*id), &self.meta[*id], Part::All);
                        }
                        Leaf::Scalar(s) => {
                            v.synthetic(" ");
                            v.synthetic(s);
                        }
                        Leaf::Nested => {}
                    }
                }
            });
            if !self.content.text.is_empty() {
                let c = &self.content;
                v.region(&[Field::Content, Field::Metadata], |v| {
                    for line in &self.lines {
                        let Leaf::Str(id) = line.leaf else { continue };
                        let (m, seg) = (&self.meta[id], self.meta_seg(id));
                        v.segment(0, c, Part::Tail);
                        v.synthetic("\n");
                        v.append(seg, m, Part::Head);
                        v.segment(seg, m, Part::Tail);
                        v.synthetic("\n");
                        v.append(0, c, Part::Head);
                    }
                });
            }
        }
        if !self.tags.is_empty() {
            v.region(&[Field::Tags], |v| {
                for (i, t) in self.tags.iter().enumerate() {
                    v.segment(self.tag_seg(i), t, Part::All);
                }
            });
        }
        v.finish()
    }
}

struct Builder {
    view: View,
    joined: bool,
    mapped: bool,
    /// A line break not yet written to the joined view, and whether it is hard.
    held: Option<((u32, u32, u32), bool)>,
}

impl Builder {
    fn region(&mut self, fields: &'static [Field], fill: impl FnOnce(&mut Self)) {
        let from = self.view.text.len();
        fill(self);
        self.view.regions.push((fields, from, self.view.text.len()));
    }

    /// A part of a segment, after a hard break.
    fn segment(&mut self, seg: u32, n: &Normalized, part: Part) {
        if !self.view.text.is_empty() {
            self.synthetic("\n\n");
        }
        self.append(seg, n, part);
    }

    fn append(&mut self, seg: u32, n: &Normalized, part: Part) {
        // Char (= unit) index and byte offset where the part starts and ends.
        let (first, from, to) = match part {
            Part::All => (0, 0, n.text.len()),
            Part::Head => {
                let to = n
                    .text
                    .char_indices()
                    .nth(SEAM)
                    .map_or(n.text.len(), |(i, _)| i);
                (0, 0, to)
            }
            Part::Tail => {
                let from = n
                    .text
                    .char_indices()
                    .nth_back(SEAM - 1)
                    .map_or(0, |(i, _)| i);
                let first = n.units.partition_point(|u| (u.at as usize) < from);
                (first, from, n.text.len())
            }
        };
        let text = &n.text[from..to];
        if !self.joined && !self.mapped {
            self.view.text.push_str(text);
            return;
        }
        let mut units = n.units.get(first..).unwrap_or_default().iter();
        for c in text.chars() {
            let unit = match units.next() {
                Some(u) if self.mapped => (seg, u.start, u.end),
                _ => (SYNTHETIC, 0, 0),
            };
            self.push(c, unit);
        }
    }

    fn synthetic(&mut self, s: &str) {
        for c in s.chars() {
            self.push(c, (SYNTHETIC, 0, 0));
        }
    }

    /// Writes one char. The joined view holds a line break back until the next char: one
    /// between two word chars (`pass⏎word`, a key split across fields) is dropped.
    fn push(&mut self, c: char, unit: (u32, u32, u32)) {
        if self.joined {
            if c == '\n' {
                // A second break in a row makes the held one hard.
                self.held = Some(self.held.map_or((unit, false), |(u, _)| (u, true)));
                return;
            }
            if let Some((held, hard)) = self.held.take() {
                let inside_word = !hard
                    && c.is_alphanumeric()
                    && self
                        .view
                        .text
                        .chars()
                        .next_back()
                        .is_some_and(char::is_alphanumeric);
                if !inside_word {
                    self.write('\n', held);
                    if hard {
                        self.write('\n', held);
                    }
                }
            }
        }
        self.write(c, unit);
    }

    fn write(&mut self, c: char, (seg, start, end): (u32, u32, u32)) {
        if self.mapped {
            let at = self.view.text.len() as u32;
            self.view.units.push((at, seg, start, end));
        }
        self.view.text.push(c);
    }

    fn finish(mut self) -> View {
        if let Some((held, hard)) = self.held.take() {
            self.write('\n', held);
            if hard {
                self.write('\n', held);
            }
        }
        self.view
    }
}

impl View {
    /// The stretches of the view a rule for `fields` runs over: maximal runs of regions of
    /// those fields, not interrupted by a non-empty region of another field.
    pub fn runs(&self, fields: &[Field]) -> Vec<(usize, usize)> {
        let mut runs = Vec::new();
        let mut cur: Option<(usize, usize)> = None;
        for &(region, from, to) in &self.regions {
            if region.iter().all(|f| fields.contains(f)) {
                cur = Some(cur.map_or((from, to), |(a, _)| (a, to)));
            } else if to > from
                && let Some(run) = cur.take()
            {
                runs.push(run);
            }
        }
        runs.extend(cur);
        runs
    }

    /// The original (segment, start, end) byte ranges a view range came from; text the view
    /// added maps to nothing.
    pub fn spans(&self, from: usize, to: usize) -> Vec<(u32, u32, u32)> {
        let lo = self.units.partition_point(|u| (u.0 as usize) < from);
        let hi = self.units.partition_point(|u| (u.0 as usize) < to);
        let mut out: Vec<(u32, u32, u32)> = Vec::new();
        for &(_, seg, a, b) in &self.units[lo..hi] {
            if seg == SYNTHETIC {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.0 == seg => {
                    last.1 = last.1.min(a);
                    last.2 = last.2.max(b);
                }
                _ => out.push((seg, a, b)),
            }
        }
        out
    }
}

/// Walks metadata in a fixed order (each key, then its value; array items in order), giving
/// every key and string value an id; `walk_mut` must visit in the same order.
fn walk<'m>(map: &'m Map<String, Value>, strings: &mut Vec<&'m str>, lines: &mut Vec<Line>) {
    for (k, v) in map {
        let key = strings.len();
        strings.push(k);
        walk_value(key, v, strings, lines);
    }
}

fn walk_value<'m>(key: usize, v: &'m Value, strings: &mut Vec<&'m str>, lines: &mut Vec<Line>) {
    match v {
        Value::String(s) => {
            lines.push(Line {
                key,
                leaf: Leaf::Str(strings.len()),
            });
            strings.push(s);
        }
        Value::Array(a) => {
            if a.is_empty() {
                lines.push(Line {
                    key,
                    leaf: Leaf::Nested,
                });
            }
            for item in a {
                walk_value(key, item, strings, lines);
            }
        }
        Value::Object(o) => {
            lines.push(Line {
                key,
                leaf: Leaf::Nested,
            });
            walk(o, strings, lines);
        }
        other => lines.push(Line {
            key,
            leaf: Leaf::Scalar(other.to_string()),
        }),
    }
}

/// Which chars of a segment a view takes.
#[derive(Clone, Copy)]
enum Part {
    All,
    /// The first `SEAM` chars.
    Head,
    /// The last `SEAM` chars.
    Tail,
}

type Edits = HashMap<u32, Vec<(u32, u32, usize)>>;

/// Applies (segment, start, end, rule) redactions to the write.
pub(super) fn redact(
    names: &[&str],
    edits: Vec<(u32, u32, u32, usize)>,
    content: &mut String,
    tags: &mut Vec<String>,
    metadata: &mut Option<Map<String, Value>>,
) {
    let mut by_seg: Edits = HashMap::new();
    for (seg, a, b, rule) in edits {
        by_seg.entry(seg).or_default().push((a, b, rule));
    }
    if let Some(spans) = by_seg.get_mut(&0) {
        redact_spans(names, content, spans);
    }
    let tag_count = tags.len() as u32;
    let mut i = 0u32;
    tags.retain(|_| {
        i += 1;
        !by_seg.contains_key(&i)
    });
    if let Some(map) = metadata {
        let mut id = 0;
        walk_mut(names, map, &mut id, 1 + tag_count, &mut by_seg);
    }
}

fn marker(names: &[&str], rule: usize) -> String {
    format!("[REDACTED:{}]", names[rule])
}

/// Replaces each span (merged where they overlap) with its rule's marker.
fn redact_spans(names: &[&str], s: &mut String, spans: &mut [(u32, u32, usize)]) {
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize, usize)> = Vec::new();
    for &(a, b, rule) in spans.iter() {
        let (a, b) = (a as usize, b as usize);
        match merged.last_mut() {
            Some(last) if a < last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b, rule)),
        }
    }
    for &(a, b, rule) in merged.iter().rev() {
        if a <= b && b <= s.len() && s.is_char_boundary(a) && s.is_char_boundary(b) {
            s.replace_range(a..b, &marker(names, rule));
        } else {
            // Cannot happen (spans come from char positions of this very string); if it
            // did, nothing of the string may survive.
            *s = marker(names, rule);
            return;
        }
    }
}

fn walk_mut(
    names: &[&str],
    map: &mut Map<String, Value>,
    id: &mut usize,
    base: u32,
    e: &mut Edits,
) {
    let mut touched = Vec::new();
    for (k, v) in map.iter_mut() {
        let key = *id;
        *id += 1;
        walk_value_mut(names, v, id, base, e);
        if let Some(spans) = e.get(&(base + key as u32)) {
            let rule = spans.iter().map(|s| s.2).min().unwrap_or_default();
            touched.push((k.clone(), rule));
        }
    }
    // A credential's name names its value: the whole entry goes, key and value alike. The
    // entry stays as a marker (not removed) so the agent and the operator see that something
    // was there and which rule took it; a marker already present gets a `#n` suffix.
    for (k, rule) in touched {
        map.remove(&k);
        let m = marker(names, rule);
        let mut key = m.clone();
        let mut n = 2;
        while map.contains_key(&key) {
            key = format!("{m}#{n}");
            n += 1;
        }
        map.insert(key, Value::String(m));
    }
}

fn walk_value_mut(names: &[&str], v: &mut Value, id: &mut usize, base: u32, e: &mut Edits) {
    match v {
        Value::String(s) => {
            if let Some(spans) = e.get_mut(&(base + *id as u32)) {
                redact_spans(names, s, spans);
            }
            *id += 1;
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|item| walk_value_mut(names, item, id, base, e)),
        Value::Object(o) => walk_mut(names, o, id, base, e),
        _ => {}
    }
}
