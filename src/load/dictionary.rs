//! The data dictionary of an area's version, pure: what each published
//! column holds, from the config's descriptions (`[area.fields]`) and the
//! version's schema. Published beside the version's loads as
//! `DICTIONARY.json` and `DICTIONARY.md`, and in every Parquet file's Arrow
//! field metadata, where pyarrow, polars and DuckDB's Arrow reader find it.

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use serde::Serialize;

use super::SchemaField;
use crate::config::Area;

/// The Arrow field (and schema) metadata key holding a description.
pub const DESCRIPTION: &str = "description";
/// The dictionary's file names in a version folder.
pub const JSON: &str = "DICTIONARY.json";
pub const MARKDOWN: &str = "DICTIONARY.md";

/// What a delta's own columns hold; udstil adds them, so the config does not
/// describe them.
const DELTA_COLUMNS: [(&str, &str); 3] = [
    (
        "_op",
        "I (insert), U (update) or D (delete) of the row with this key",
    ),
    (
        "_seq",
        "DFDG's sequence number of the change: apply changes in this order",
    ),
    ("_changed_at", "When the change was made in DFDG"),
];

/// `schema` with each described column's description in its field
/// metadata (and the area's in the schema's).
pub fn describe(schema: &SchemaRef, area: &Area) -> SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let text = area.fields.get(f.name()).map(String::as_str).or_else(|| {
                DELTA_COLUMNS
                    .iter()
                    .find(|(name, _)| name == f.name())
                    .map(|(_, text)| *text)
            });
            match text {
                Some(text) => {
                    let mut metadata = f.metadata().clone();
                    metadata.insert(DESCRIPTION.to_string(), text.to_string());
                    Arc::new(f.as_ref().clone().with_metadata(metadata))
                }
                None => f.clone(),
            }
        })
        .collect();
    let mut metadata = schema.metadata().clone();
    if let Some(d) = &area.description {
        metadata.insert(DESCRIPTION.to_string(), d.clone());
    }
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// The descriptions as the Parquet file's own key-value metadata too
/// (`description` for the area, `description.<column>` per column), for
/// readers that do not decode the Arrow schema (DuckDB's
/// `parquet_kv_metadata`, polars' `read_parquet_metadata`).
pub fn key_values(schema: &Schema) -> Option<Vec<parquet::file::metadata::KeyValue>> {
    use parquet::file::metadata::KeyValue;
    let area = schema
        .metadata()
        .get(DESCRIPTION)
        .map(|d| KeyValue::new(DESCRIPTION.to_string(), d.clone()));
    let columns = schema.fields().iter().filter_map(|f| {
        f.metadata()
            .get(DESCRIPTION)
            .map(|d| KeyValue::new(format!("{DESCRIPTION}.{}", f.name()), d.clone()))
    });
    let all: Vec<KeyValue> = area.into_iter().chain(columns).collect();
    (!all.is_empty()).then_some(all)
}

/// The dictionary of one version of an area.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dictionary {
    pub area: String,
    pub version: u32,
    pub description: Option<String>,
    /// The published columns, in file order.
    pub columns: Vec<Entry>,
    /// The columns a delta load adds after them.
    pub delta_columns: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    /// `None`: the config has no description of it yet.
    pub description: Option<String>,
}

/// The dictionary of `area`'s current version, whose data columns are
/// those of `schema` (a full or a delta load's).
pub fn dictionary(area: &Area, schema: &[SchemaField]) -> Dictionary {
    Dictionary {
        area: area.id.clone(),
        version: area.version,
        description: area.description.clone(),
        columns: super::version::data_columns(schema)
            .into_iter()
            .map(|f| Entry {
                name: f.name.clone(),
                data_type: f.data_type.clone(),
                nullable: f.nullable,
                description: area.fields.get(&f.name).cloned(),
            })
            .collect(),
        delta_columns: super::schema_fields(&super::writer::delta_schema(&[]))
            .into_iter()
            .map(|f| Entry {
                description: DELTA_COLUMNS
                    .iter()
                    .find(|(name, _)| *name == f.name)
                    .map(|(_, text)| text.to_string()),
                name: f.name,
                data_type: f.data_type,
                nullable: f.nullable,
            })
            .collect(),
    }
}

/// `DICTIONARY.json`.
pub fn json(d: &Dictionary) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(d).expect("a dictionary serialises");
    out.push(b'\n');
    out
}

/// `DICTIONARY.md`: a heading, the description and a table per column set.
pub fn markdown(d: &Dictionary) -> String {
    let mut out = format!("# {}, version {}\n\n", d.area, d.version);
    if let Some(text) = &d.description {
        out.push_str(&format!("{}\n\n", one_line(text)));
    }
    let table = |out: &mut String, entries: &[Entry]| {
        out.push_str("| column | type | nullable | description |\n|---|---|---|---|\n");
        for e in entries {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                e.name,
                e.data_type,
                if e.nullable { "yes" } else { "no" },
                e.description
                    .as_deref()
                    .map_or_else(|| "(no description yet)".to_string(), one_line)
            ));
        }
    };
    table(&mut out, &d.columns);
    out.push_str("\nDelta loads add, after these:\n\n");
    table(&mut out, &d.delta_columns);
    out
}

/// A description as one table cell: line breaks as spaces, `|` escaped.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> Area {
        let text = r#"[sftp]
listen = "127.0.0.1:2222"
host_key = "host_key"
[storage]
root = "tree"
[source]
url = "sqlite://dfdg.sqlite"
[[area]]
id = "joblog"
version = 2
table = "joblog"
journal = "joblog_journal"
key = ["joblog_id"]
sequence_column = "seq"
operation_column = "op"
changed_at_column = "changed_at"
route = { kommune = "kommune_kode" }
description = "Job search | joblog"
[area.fields]
joblog_id = "The entry's id"
kommune_kode = """The citizen's
responsible municipality"""
"#;
        crate::config::parse(std::path::Path::new("/u.toml"), text)
            .unwrap()
            .areas
            .remove(0)
    }

    fn field(name: &str, ty: &str, nullable: bool) -> SchemaField {
        SchemaField {
            name: name.into(),
            data_type: ty.into(),
            nullable,
        }
    }

    #[test]
    fn the_dictionary_follows_the_schema_and_marks_what_is_undescribed() {
        let schema = [
            field("joblog_id", "int64", false),
            field("kommune_kode", "utf8", true),
            field("postnr", "utf8", true),
            field("_op", "utf8", false),
        ];
        let d = dictionary(&area(), &schema);
        assert_eq!(d.version, 2);
        let names: Vec<&str> = d.columns.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["joblog_id", "kommune_kode", "postnr"]);
        assert_eq!(d.columns[2].description, None);
        let md = markdown(&d);
        assert!(
            md.starts_with("# joblog, version 2\n\nJob search \\| joblog\n\n"),
            "{md}"
        );
        assert!(
            md.contains("| `joblog_id` | int64 | no | The entry's id |\n"),
            "{md}"
        );
        assert!(
            md.contains(
                "| `kommune_kode` | utf8 | yes | The citizen's responsible municipality |\n"
            ),
            "{md}"
        );
        assert!(
            md.contains("| `postnr` | utf8 | yes | (no description yet) |\n"),
            "{md}"
        );
        assert!(md.contains("| `_op` | Utf8 | no | I (insert)"), "{md}");
        assert!(d.delta_columns.iter().all(|e| e.description.is_some()));
        assert_eq!(d.delta_columns.len(), 3);
        let json: serde_json::Value = serde_json::from_slice(&super::json(&d)).unwrap();
        assert_eq!(json["columns"][0]["description"], "The entry's id");
        assert_eq!(json["columns"][2]["description"], serde_json::Value::Null);
    }

    #[test]
    fn descriptions_go_into_the_arrow_field_metadata() {
        use arrow_schema::{DataType, Field};
        let schema = Arc::new(Schema::new(vec![
            Field::new("joblog_id", DataType::Int64, false),
            Field::new("postnr", DataType::Utf8, true),
            Field::new("_seq", DataType::Int64, false),
        ]));
        let described = describe(&schema, &area());
        let of = |name: &str| {
            described
                .field_with_name(name)
                .unwrap()
                .metadata()
                .get(DESCRIPTION)
                .cloned()
        };
        assert_eq!(of("joblog_id").as_deref(), Some("The entry's id"));
        assert_eq!(of("postnr"), None);
        assert!(of("_seq").unwrap().starts_with("DFDG's sequence number"));
        assert_eq!(
            described.metadata().get(DESCRIPTION).map(String::as_str),
            Some("Job search | joblog")
        );
        let kv = key_values(&described).unwrap();
        let pairs: Vec<(&str, &str)> = kv
            .iter()
            .map(|k| (k.key.as_str(), k.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(pairs[0], ("description", "Job search | joblog"));
        assert!(pairs.contains(&("description.joblog_id", "The entry's id")));
        assert!(!pairs.iter().any(|(k, _)| *k == "description.postnr"));
        assert_eq!(key_values(&schema), None);
        // Names and types are untouched: batches of the plain schema still fit.
        assert!(
            described
                .fields()
                .iter()
                .zip(schema.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type())
        );
    }
}
