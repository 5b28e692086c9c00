//! `udstil config reference`: every setting with its type, default and
//! description, generated from the doc comments of the raw config structs
//! (`raw.rs`, compiled in as text) and the defaults declared there, so both
//! are written once. Pure.

use super::raw::defaults;

/// The raw structs as written, read for their doc comments.
const RAW: &str = include_str!("raw.rs");

/// Where each raw struct appears in a config file: its heading and the key
/// prefix of its defaults (`sftp.login_grace_seconds`).
const SECTIONS: &[(&str, &str, &str)] = &[
    ("RawSftp", "[sftp]", "sftp"),
    ("RawStorage", "[storage]", "storage"),
    ("RawSource", "[source]", "source"),
    ("RawState", "[state]", "state"),
    ("RawAudit", "[audit]", "audit"),
    ("RawHttp", "[http]", "http"),
    ("RawSupplier", "[[supplier]]", "supplier"),
    ("RawKey", "[[supplier.key]]", "supplier.key"),
    (
        "RawConnection",
        "[[agreements.connection]]",
        "agreements.connection",
    ),
    (
        "RawDataProcessing",
        "[[agreements.data_processing]]",
        "agreements.data_processing",
    ),
    (
        "RawCooperation",
        "[[agreements.cooperation]]",
        "agreements.cooperation",
    ),
    ("RawArea", "[[area]]", "area"),
    ("RawNotify", "[[notify]]", "notify"),
    ("RawSmtp", "[smtp]", "smtp"),
    ("RawAnnouncements", "[announcements]", "announcements"),
    (
        "RawAnnouncement",
        "[[announcement]] (in the announcements file)",
        "announcement",
    ),
    ("RawRoute", "[[area]] route = { ... }", "area.route"),
    ("RawLifecycle", "[area.lifecycle]", "area.lifecycle"),
    (
        "RawSchedule",
        "[[area]] schedule = { ... }",
        "area.schedule",
    ),
    (
        "RawRetention",
        "[[area]] retention = { ... }",
        "area.retention",
    ),
    ("RawLegacy", "[[area]] legacy = { ... }", "area.legacy"),
];

/// One setting of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The heading it is written under, e.g. `[sftp]`.
    pub section: &'static str,
    /// `section.field`, the key of its default.
    pub key: String,
    pub name: String,
    /// In words: text, whole number, list of text, ...
    pub kind: String,
    pub required: bool,
    pub default: Option<String>,
    pub doc: String,
}

/// Every setting, in the order of `raw.rs`.
pub fn settings() -> Vec<Setting> {
    let defaults = defaults::documented();
    let mut out = Vec::new();
    let mut section = None;
    let (mut doc, mut attrs) = (Vec::<&str>::new(), Vec::<&str>::new());
    for line in RAW.lines() {
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.trim_end_matches(" {");
            section = SECTIONS.iter().find(|(s, _, _)| *s == name);
            doc.clear();
            attrs.clear();
            continue;
        }
        if line == "}" {
            section = None;
            continue;
        }
        let Some((_, heading, prefix)) = section else {
            continue;
        };
        let line = line.trim();
        if let Some(d) = line.strip_prefix("///") {
            doc.push(d.trim());
        } else if line.starts_with("#[serde(") {
            attrs.push(line);
        } else if let Some(field) = line.strip_prefix("pub ") {
            let Some((name, ty)) = field.trim_end_matches(',').split_once(": ") else {
                continue;
            };
            let renamed = attrs.iter().find_map(|a| {
                let start = a.find("rename = \"")? + "rename = \"".len();
                a[start..].split('"').next()
            });
            let name = renamed.unwrap_or(name).to_string();
            let key = format!("{prefix}.{name}");
            let defaulted = attrs.iter().any(|a| a.contains("default"));
            let optional = ty.starts_with("Option<");
            out.push(Setting {
                section: heading,
                default: defaults
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone()),
                key,
                name,
                kind: kind_of(ty),
                required: !optional && !defaulted,
                doc: doc.join(" "),
            });
            doc.clear();
            attrs.clear();
        }
    }
    out
}

/// A Rust field type in a config writer's words.
fn kind_of(ty: &str) -> String {
    let inner = |t: &str, outer: &str| {
        t.strip_prefix(outer)
            .and_then(|t| t.strip_suffix('>'))
            .map(str::to_string)
    };
    if let Some(t) = inner(ty, "Option<") {
        return kind_of(&t);
    }
    if let Some(t) = inner(ty, "Spanned<") {
        return kind_of(&t);
    }
    if let Some(t) = inner(ty, "Vec<") {
        return format!("list of {}", kind_of(&t));
    }
    if let Some(t) = ty
        .strip_prefix("std::collections::")
        .unwrap_or(ty)
        .strip_prefix("BTreeMap<String, ")
        .and_then(|t| t.strip_suffix('>'))
    {
        return format!("table of {}", kind_of(t));
    }
    match ty {
        "String" => "text".into(),
        "i64" => "whole number".into(),
        "bool" => "true or false".into(),
        "toml::Value" => "date or RFC 3339 time".into(),
        other if other.starts_with("Raw") => "table".into(),
        other => other.into(),
    }
}

/// The reference as Markdown (`docs/config.md` holds its output).
pub fn reference() -> String {
    let mut out = String::from(
        "# Config reference\n\n\
         Every setting of udstil's config file, printed by `udstil config reference`\n\
         from the config structs' own documentation, so it cannot fall behind them.\n\
         Relative paths resolve against the config file's folder. A complete,\n\
         commented example is `config/demo.toml`.\n",
    );
    let mut heading = "";
    for s in settings() {
        if s.section != heading {
            heading = s.section;
            out.push_str(&format!("\n## `{heading}`\n\n"));
        }
        let status = match (&s.default, s.required) {
            (Some(d), _) => format!("default {}", d.trim_matches('"')),
            (None, true) => "required".to_string(),
            (None, false) => "optional".to_string(),
        };
        out.push_str(&format!("- `{}` ({}, {status})", s.name, s.kind));
        if !s.doc.is_empty() {
            out.push_str(&format!(": {}", s.doc));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_belongs_to_an_optional_setting() {
        let settings = settings();
        for (key, _) in defaults::documented() {
            let s = settings
                .iter()
                .find(|s| s.key == key)
                .unwrap_or_else(|| panic!("default {key} names no setting"));
            assert!(!s.required, "{key} has a default but is required");
        }
    }

    #[test]
    fn optional_numbers_and_switches_have_a_default() {
        for s in settings() {
            let scalar = s.kind == "whole number" || s.kind == "true or false";
            if scalar && !s.required {
                assert!(s.default.is_some(), "{} has no default", s.key);
            }
        }
    }

    #[test]
    fn the_reference_names_every_section_and_setting() {
        let text = reference();
        for (_, heading, _) in SECTIONS {
            assert!(text.contains(&format!("## `{heading}`")), "{heading}");
        }
        assert!(text.contains("- `listen` (text, required): Address and port"));
        assert!(text.contains("- `login_grace_seconds` (whole number, default 30): Seconds"));
        assert!(text.contains("- `key_file` (text, default audit.key)"));
        assert!(text.contains("- `key` (list of table, optional)"));
        assert!(text.contains("- `full_loads` (whole number, default 3)"));
        assert!(
            text.contains("- `fields` (table of text, optional)"),
            "{text}"
        );
        assert!(!text.contains("Spanned"), "{text}");
    }
}
