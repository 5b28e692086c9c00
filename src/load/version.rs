//! Schema changes between loads, pure. A change in DFDG's format must start a
//! new version of the area (the operator bumps `version`); within a version
//! every load has the same columns, and `CHANGES.json` tells clients what
//! changed from one version to the next.

use serde::{Deserialize, Serialize};

use super::SchemaField;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaChange {
    pub from_version: u32,
    pub to_version: u32,
    /// The first load of the new version.
    pub load_id: String,
    pub added: Vec<Column>,
    pub removed: Vec<Column>,
    pub retyped: Vec<Retyped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retyped {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// The data columns of a manifest schema (a delta's `_op`, `_seq`, `_changed_at` left out).
pub fn data_columns(schema: &[SchemaField]) -> Vec<&SchemaField> {
    schema.iter().filter(|f| !f.name.starts_with('_')).collect()
}

/// What differs between two schemas; all three lists empty when they agree.
pub fn diff(old: &[SchemaField], new: &[SchemaField]) -> (Vec<Column>, Vec<Column>, Vec<Retyped>) {
    let (old, new) = (data_columns(old), data_columns(new));
    let col = |f: &SchemaField| Column {
        name: f.name.clone(),
        data_type: f.data_type.clone(),
    };
    let added = new
        .iter()
        .filter(|n| !old.iter().any(|o| o.name == n.name))
        .map(|f| col(f))
        .collect();
    let removed = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.name == o.name))
        .map(|f| col(f))
        .collect();
    let retyped = new
        .iter()
        .filter_map(|n| {
            old.iter()
                .find(|o| o.name == n.name && o.data_type != n.data_type)
                .map(|o| Retyped {
                    name: n.name.clone(),
                    from: o.data_type.clone(),
                    to: n.data_type.clone(),
                })
        })
        .collect();
    (added, removed, retyped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, ty: &str) -> SchemaField {
        SchemaField {
            name: name.into(),
            data_type: ty.into(),
            nullable: true,
        }
    }

    #[test]
    fn finds_added_removed_and_retyped_columns_ignoring_delta_columns() {
        let old = [
            f("id", "Int64"),
            f("postnr", "Utf8"),
            f("timer", "Int32"),
            f("_op", "Utf8"),
        ];
        let new = [f("id", "Int64"), f("timer", "Float64"), f("kanal", "Utf8")];
        let (added, removed, retyped) = diff(&old, &new);
        assert_eq!(
            added,
            [Column {
                name: "kanal".into(),
                data_type: "Utf8".into()
            }]
        );
        assert_eq!(
            removed,
            [Column {
                name: "postnr".into(),
                data_type: "Utf8".into()
            }]
        );
        assert_eq!(
            retyped,
            [Retyped {
                name: "timer".into(),
                from: "Int32".into(),
                to: "Float64".into()
            }]
        );
        let (a, r, t) = diff(&old[..3], &old);
        assert!(a.is_empty() && r.is_empty() && t.is_empty());
    }
}
