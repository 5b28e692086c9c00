//! Reads the config document section by section, so that one broken section
//! (a wrong type, a missing field) does not hide the problems of the others,
//! and every unknown field is reported with its line instead of the first.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::raw::*;

/// One problem found while reading; `span` is `None` when it has no place.
#[derive(Debug)]
pub struct Problem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

/// What could be read of a document.
#[derive(Debug, Default)]
pub struct Document {
    pub raw: RawConfig,
    /// Ids of suppliers and areas whose section could not be read: their
    /// problem is already reported, so references to them are not errors too.
    pub unreadable_suppliers: BTreeSet<String>,
    pub unreadable_areas: BTreeSet<String>,
}

/// Reads `text`; `Err` only when it is not TOML (every syntax error found).
pub fn read(text: &str) -> Result<(Document, Vec<Problem>), Vec<Problem>> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| Problem {
                span: e.span(),
                message: e.message().trim().to_string(),
            })
            .collect());
    }
    let mut r = Reader::default();
    let mut present = BTreeSet::new();
    for (key, value) in root.get_ref().iter() {
        present.insert(key.get_ref().to_string());
        match key.get_ref().as_ref() {
            "sftp" => r.doc.raw.sftp = r.item(value, "[sftp]"),
            "storage" => r.doc.raw.storage = r.item(value, "[storage]"),
            "source" => r.doc.raw.source = r.item(value, "[source]"),
            "state" => r.doc.raw.state = r.item(value, "[state]"),
            "audit" => r.doc.raw.audit = r.item(value, "[audit]"),
            "http" => r.doc.raw.http = r.item(value, "[http]"),
            "smtp" => r.doc.raw.smtp = r.item(value, "[smtp]"),
            "announcements" => r.doc.raw.announcements = r.item(value, "[announcements]"),
            "supplier" => {
                let (read, unreadable) = r.elements(value, "supplier", "supplier");
                r.doc.raw.suppliers = read;
                r.doc.unreadable_suppliers.extend(unreadable);
            }
            "area" => {
                let (read, unreadable) = r.elements(value, "area", "area");
                r.doc.raw.areas = read;
                r.doc.unreadable_areas.extend(unreadable);
            }
            "notify" => {
                let (read, _) = r.elements(value, "notify", "notify");
                r.doc.raw.notify = read;
            }
            "agreements" => r.agreements(value),
            other => r.problem(
                key.span(),
                format!(
                    "unknown section or field `{other}` (known: sftp, storage, source, state, audit, http, supplier, agreements, area, notify, smtp, announcements)"
                ),
            ),
        }
    }
    // A section that is there but unreadable has its problem reported already.
    for name in ["sftp", "storage", "source"] {
        if !present.contains(name) {
            r.problems.push(Problem {
                span: None,
                message: format!("missing section [{name}]"),
            });
        }
    }
    Ok((r.doc, r.problems))
}

#[derive(Default)]
struct Reader {
    doc: Document,
    problems: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, span: Range<usize>, message: String) {
        self.problems.push(Problem {
            span: Some(span),
            message,
        });
    }

    /// Deserializes one section or array element on its own. Its unknown
    /// fields are reported with their lines; a value of the wrong type is
    /// reported, taken out and the reading tried again, so that every such
    /// value of the section is named in one run. `None` when any was found.
    fn item<T: DeserializeOwned>(&mut self, value: &Spanned<DeValue<'_>>, what: &str) -> Option<T> {
        let mut unknown = BTreeSet::new();
        let mut removed = BTreeSet::new();
        let mut left = value.clone();
        let mut read = None;
        let mut failed = false;
        for _ in 0..MAX_PASSES {
            let result =
                serde_ignored::deserialize(ValueDeserializer::from(left.clone()), |path| {
                    unknown.insert(path.to_string());
                });
            match result {
                Ok(t) => {
                    read = Some(t);
                    break;
                }
                Err(e) => {
                    failed = true;
                    let message = e.message().trim();
                    // A required field taken out for its type is not missing too.
                    let echo = removed
                        .iter()
                        .any(|k| message == format!("missing field `{k}`"));
                    if !echo {
                        self.problem(
                            e.span().unwrap_or_else(|| value.span()),
                            format!("{what}: {message}"),
                        );
                    }
                    match e.span().and_then(|s| remove_at(&mut left, s.start)) {
                        Some(key) => removed.insert(key),
                        None => break,
                    };
                }
            }
        }
        for path in unknown {
            let segments: Vec<&str> = path
                .split('.')
                .filter(|s| !s.starts_with("$__serde_spanned_private"))
                .collect();
            let span = locate(value, &segments);
            self.problem(
                span,
                format!("{what}: unknown field `{}`", segments.join(".")),
            );
        }
        read.filter(|_| !failed)
    }

    /// Reads each element of `[[name]]` on its own: those that could be read,
    /// and the ids of those that could not.
    fn elements<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        name: &str,
        kind: &str,
    ) -> (Vec<Spanned<T>>, Vec<String>) {
        let (mut read, mut unreadable) = (Vec::new(), Vec::new());
        for (i, e) in self.array(value, name).into_iter().enumerate() {
            let what = match id_of(e) {
                Some(id) => format!("{kind} {id}"),
                None => format!("{kind} #{}", i + 1),
            };
            match self.item::<T>(e, &what) {
                Some(t) => read.push(Spanned::new(e.span(), t)),
                None => unreadable.extend(id_of(e)),
            }
        }
        (read, unreadable)
    }

    /// The elements of an array of tables (`[[name]]`).
    fn array<'v, 'i>(
        &mut self,
        value: &'v Spanned<DeValue<'i>>,
        name: &str,
    ) -> Vec<&'v Spanned<DeValue<'i>>> {
        match value.get_ref() {
            DeValue::Array(items) => items.iter().collect(),
            _ => {
                self.problem(
                    value.span(),
                    format!("`{name}` must be written as [[{name}]] sections"),
                );
                Vec::new()
            }
        }
    }

    fn agreements(&mut self, value: &Spanned<DeValue<'_>>) {
        let DeValue::Table(table) = value.get_ref() else {
            self.problem(
                value.span(),
                "`agreements` must be a section ([[agreements.connection]] and so on)".into(),
            );
            return;
        };
        for (key, v) in table.iter() {
            match key.get_ref().as_ref() {
                "connection" => {
                    let kind = "connection agreement";
                    let name = "agreements.connection";
                    self.doc.raw.agreements.connection = self.elements(v, name, kind).0;
                }
                "data_processing" => {
                    let kind = "data-processing agreement";
                    let name = "agreements.data_processing";
                    self.doc.raw.agreements.data_processing = self.elements(v, name, kind).0;
                }
                "cooperation" => {
                    let kind = "cooperation agreement";
                    let name = "agreements.cooperation";
                    self.doc.raw.agreements.cooperation = self.elements(v, name, kind).0;
                }
                other => self.problem(
                    key.span(),
                    format!(
                        "[agreements]: unknown kind `{other}` (known: connection, data_processing, cooperation)"
                    ),
                ),
            }
        }
    }
}

/// How often one section is read again after taking out a wrong value.
const MAX_PASSES: usize = 64;

/// Takes out the innermost table entry whose value holds the offset `pos`;
/// returns its key, or `None` when no entry holds it.
fn remove_at(value: &mut Spanned<DeValue<'_>>, pos: usize) -> Option<String> {
    let holds = |v: &Spanned<DeValue<'_>>| {
        v.span().start <= pos && pos < v.span().end.max(v.span().start + 1)
    };
    match value.get_mut() {
        DeValue::Table(t) => {
            let key = t.iter().find(|(_, v)| holds(v)).map(|(k, _)| k.clone())?;
            let inner = t.get_mut(&key)?;
            if let Some(k) = remove_at(inner, pos) {
                return Some(k);
            }
            t.remove(&key);
            Some(key.get_ref().to_string())
        }
        DeValue::Array(items) => items
            .iter_mut()
            .find(|v| holds(v))
            .and_then(|v| remove_at(v, pos)),
        _ => None,
    }
}

/// The `id` of a table, when it is a string.
fn id_of(value: &Spanned<DeValue<'_>>) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(t) => t
            .iter()
            .find(|(k, _)| k.get_ref() == "id")
            .and_then(|(_, v)| v.get_ref().as_str().map(str::to_string)),
        _ => None,
    }
}

/// The span of the key (or array element) a field path leads to, as far
/// as the path can be followed.
fn locate(value: &Spanned<DeValue<'_>>, path: &[&str]) -> Range<usize> {
    let mut span = value.span();
    let mut value = value;
    for segment in path {
        let next = match value.get_ref() {
            DeValue::Table(t) => t
                .iter()
                .find(|(k, _)| k.get_ref() == segment)
                .map(|(k, v)| (k.span(), v)),
            DeValue::Array(a) => segment
                .parse::<usize>()
                .ok()
                .and_then(|i| a.get(i))
                .map(|v| (v.span(), v)),
            _ => None,
        };
        let Some((s, v)) = next else { break };
        span = s;
        value = v;
    }
    span
}
