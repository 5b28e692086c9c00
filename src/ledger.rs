//! The delivery ledger: per supplier, authority and data area, the newest
//! load published, the newest load that supplier fetched completely (every
//! file of its manifest, each downloaded whole), the loads published since
//! that it never fetched completely, and what it needs to fetch to be
//! current. Pure: built from the published loads (the tree) and the
//! complete downloads (the audit trail); `app::ledger` gathers both.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::authority::AuthorityId;
use crate::tree::{LoadId, LoadKind};

/// One load of an authority's area as published, with its manifest's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: LoadId,
    pub kind: LoadKind,
    pub version: u32,
    pub files: Vec<String>,
}

/// What a supplier must do to be current with an authority's area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// It has fetched the newest load.
    Current,
    /// Every delta since its newest fetched load is still kept: fetch those.
    Deltas,
    /// Its newest fetched load is gone (retention) or of an older version,
    /// or it never fetched one: start again from the newest full load.
    Full,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Current => "current",
            CatchUp::Deltas => "deltas",
            CatchUp::Full => "full",
        }
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub supplier: String,
    pub authority: String,
    pub area: String,
    pub latest_published: Option<String>,
    /// The newest load the supplier fetched completely.
    pub latest_fetched: Option<String>,
    /// How far the supplier can replay: the newest load up to which it
    /// fetched a full load and every delta after it (of the area's current
    /// version).
    pub replayable_to: Option<String>,
    /// Loads still kept that the supplier's replay lacks: deltas after
    /// `replayable_to` it never fetched completely (every load, when it has
    /// no full load to start from).
    pub not_fetched: Vec<String>,
    pub catch_up: CatchUp,
    /// The loads to fetch, in order, to be current.
    pub needed: Vec<String>,
}

/// The ledger of one supplier for one authority's area. `published` is what
/// the tree keeps, in any order; `fetched` holds `(load id, file name)` of
/// the supplier's complete downloads.
///
/// A supplier that fetched loads retention has since removed is taken to
/// have replayed up to the oldest kept load: the audit trail shows it
/// fetched from before, and the removed loads' files can no longer be
/// checked.
pub fn entry(
    supplier: &str,
    authority: AuthorityId,
    area: &str,
    published: &[Published],
    fetched: &BTreeSet<(String, String)>,
) -> Entry {
    let mut loads: Vec<&Published> = published.iter().collect();
    loads.sort_by_key(|l| l.id);
    let complete = |l: &Published| {
        let id = l.id.to_string();
        !l.files.is_empty()
            && l.files
                .iter()
                .all(|f| fetched.contains(&(id.clone(), f.clone())))
    };
    let latest = loads.last().copied();
    let version = latest.map(|l| l.version);
    let current: Vec<&Published> = loads
        .iter()
        .filter(|l| Some(l.version) == version)
        .copied()
        .collect();
    let removed_fetched: Option<LoadId> = fetched
        .iter()
        .filter_map(|(id, _)| LoadId::parse(id))
        .filter(|id| loads.iter().all(|l| l.id != *id))
        .max();
    // Walk the current version: a full load fetched completely starts a
    // replay; each delta fetched completely extends it; the first one
    // missing ends it (a later full load can start it again).
    let mut alive = removed_fetched.is_some_and(|r| current.first().is_some_and(|f| r < f.id));
    let mut broken = false;
    let mut point: Option<LoadId> = None;
    for l in &current {
        let done = complete(l);
        match l.kind {
            LoadKind::Full if done => {
                (alive, broken, point) = (true, false, Some(l.id));
            }
            LoadKind::Full => {}
            LoadKind::Delta if alive && !broken && done => point = Some(l.id),
            LoadKind::Delta if alive => broken = true,
            LoadKind::Delta => {}
        }
    }
    let after_point = |l: &&&Published| point.is_none_or(|p| l.id > p);
    let not_fetched: Vec<String> = current
        .iter()
        .filter(after_point)
        .filter(|l| !complete(l) && (!alive || l.kind == LoadKind::Delta))
        .map(|l| l.id.to_string())
        .collect();
    let (catch_up, needed) = if latest.is_none() || (latest.map(|l| l.id) == point) {
        (CatchUp::Current, Vec::new())
    } else if alive {
        (CatchUp::Deltas, not_fetched.clone())
    } else {
        let full = current.iter().rev().find(|l| l.kind == LoadKind::Full);
        let needed = full
            .map(|full| {
                current
                    .iter()
                    .filter(|l| {
                        l.id == full.id
                            || (l.id > full.id && l.kind == LoadKind::Delta && !complete(l))
                    })
                    .map(|l| l.id.to_string())
                    .collect()
            })
            .unwrap_or_default();
        (CatchUp::Full, needed)
    };
    let latest_fetched = loads
        .iter()
        .rev()
        .find(|l| complete(l))
        .map(|l| l.id)
        .max(removed_fetched);
    Entry {
        supplier: supplier.to_string(),
        authority: authority.to_string(),
        area: area.to_string(),
        latest_published: latest.map(|l| l.id.to_string()),
        latest_fetched: latest_fetched.map(|id| id.to_string()),
        replayable_to: point.map(|id| id.to_string()),
        not_fetched,
        catch_up,
        needed,
    }
}

/// The complete downloads of the audit trail, `(supplier, authority, area,
/// load id, file name)`, grouped per supplier, authority and area.
pub type Fetched = BTreeMap<(String, String, String), BTreeSet<(String, String)>>;

/// Groups complete downloads as [`Fetched`]; `file` is the virtual path
/// the audit trail records, of which the last part is the file name.
pub fn group(
    downloads: impl IntoIterator<Item = (String, String, String, String, String)>,
) -> Fetched {
    let mut out = Fetched::new();
    for (supplier, authority, area, load_id, file) in downloads {
        let name = file.rsplit('/').next().unwrap_or_default().to_string();
        out.entry((supplier, authority, area))
            .or_default()
            .insert((load_id, name));
    }
    out
}

/// Renders entries as text for second-line support.
pub fn text(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:<12} {:<13} {:<30} {:<24} {:<24} {:<24} {:<8} {}\n",
        "supplier",
        "authority",
        "area",
        "latest published",
        "latest fetched",
        "replayable to",
        "catch up",
        "not fetched"
    );
    for e in entries {
        out.push_str(&format!(
            "{:<12} {:<13} {:<30} {:<24} {:<24} {:<24} {:<8} {}\n",
            e.supplier,
            e.authority,
            e.area,
            e.latest_published.as_deref().unwrap_or("-"),
            e.latest_fetched.as_deref().unwrap_or("-"),
            e.replayable_to.as_deref().unwrap_or("-"),
            e.catch_up.as_str(),
            if e.not_fetched.is_empty() {
                "-".to_string()
            } else {
                e.not_fetched.join(" ")
            }
        ));
    }
    out
}

/// Renders entries as CSV (one row per entry; lists joined by spaces).
pub fn csv(entries: &[Entry]) -> String {
    let mut out = String::from(
        "supplier,authority,area,latest_published,latest_fetched,replayable_to,catch_up,not_fetched,needed\n",
    );
    for e in entries {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            e.supplier,
            e.authority,
            e.area,
            e.latest_published.as_deref().unwrap_or(""),
            e.latest_fetched.as_deref().unwrap_or(""),
            e.replayable_to.as_deref().unwrap_or(""),
            e.catch_up.as_str(),
            e.not_fetched.join(" "),
            e.needed.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn load(seq: u64, kind: LoadKind, version: u32) -> Published {
        Published {
            id: LoadId {
                seq,
                at: chrono::Utc
                    .with_ymd_and_hms(2026, 12, seq as u32, 2, 0, 0)
                    .unwrap(),
            },
            kind,
            version,
            files: vec!["part-00000.parquet".into(), "part-00001.parquet".into()],
        }
    }

    fn got(loads: &[&Published]) -> BTreeSet<(String, String)> {
        loads
            .iter()
            .flat_map(|l| l.files.iter().map(|f| (l.id.to_string(), f.clone())))
            .collect()
    }

    fn ids(loads: &[&Published]) -> Vec<String> {
        loads.iter().map(|l| l.id.to_string()).collect()
    }

    #[test]
    fn the_ledger_follows_what_was_fetched() {
        use LoadKind::{Delta, Full};
        let (f1, d2, d3, d4) = (
            load(1, Full, 1),
            load(2, Delta, 1),
            load(3, Delta, 1),
            load(4, Delta, 1),
        );
        let all = vec![f1.clone(), d2.clone(), d3.clone(), d4.clone()];
        let a: AuthorityId = "kommune/101".parse().unwrap();
        let e = |fetched| entry("bi-alpha", a, "joblog", &all, &fetched);

        // Never fetched: everything is missing; start from the full load.
        let never = e(BTreeSet::new());
        assert_eq!((never.latest_fetched, never.replayable_to), (None, None));
        assert_eq!(never.not_fetched, ids(&[&f1, &d2, &d3, &d4]));
        assert_eq!(never.catch_up, CatchUp::Full);
        assert_eq!(never.needed, ids(&[&f1, &d2, &d3, &d4]));

        // The full load and delta 3, and one file of delta 2 only: delta 2
        // is a gap in the replay even though a newer delta was fetched.
        let mut partial = got(&[&f1, &d3]);
        partial.insert((d2.id.to_string(), "part-00000.parquet".into()));
        let gap = e(partial);
        assert_eq!(gap.latest_fetched, Some(d3.id.to_string()));
        assert_eq!(gap.replayable_to, Some(f1.id.to_string()));
        assert_eq!(gap.not_fetched, ids(&[&d2, &d4]));
        assert_eq!(gap.catch_up, CatchUp::Deltas);
        assert_eq!(gap.needed, ids(&[&d2, &d4]));

        // In order up to delta 3.
        let behind = e(got(&[&f1, &d2, &d3]));
        assert_eq!(behind.replayable_to, Some(d3.id.to_string()));
        assert_eq!(behind.not_fetched, ids(&[&d4]));

        // Everything: current.
        let current = e(got(&[&f1, &d2, &d3, &d4]));
        assert_eq!(current.catch_up, CatchUp::Current);
        assert!(current.not_fetched.is_empty() && current.needed.is_empty());
        assert_eq!(current.latest_published, Some(d4.id.to_string()));
    }

    #[test]
    fn loads_retention_removed_and_new_versions() {
        use LoadKind::{Delta, Full};
        let a: AuthorityId = "kommune/101".parse().unwrap();
        // Fetched up to a delta retention has removed: the kept deltas
        // continue its replay; the newer full load is not needed.
        let (gone, f5, d6) = (load(2, Delta, 1), load(5, Full, 1), load(6, Delta, 1));
        let e = entry(
            "bi-alpha",
            a,
            "joblog",
            &[f5.clone(), d6.clone()],
            &got(&[&gone]),
        );
        assert_eq!(e.latest_fetched, Some(gone.id.to_string()));
        assert_eq!(e.catch_up, CatchUp::Deltas);
        assert_eq!(e.needed, ids(&[&d6]));

        // A new version starts again from its full load.
        let (old, v2) = (load(7, Full, 1), load(8, Full, 2));
        let e = entry(
            "bi-alpha",
            a,
            "joblog",
            &[old.clone(), v2.clone()],
            &got(&[&old]),
        );
        assert_eq!(e.catch_up, CatchUp::Full);
        assert_eq!(e.needed, ids(&[&v2]));
        assert_eq!(e.latest_fetched, Some(old.id.to_string()));

        // Nothing published: nothing to fetch.
        let e = entry("bi-alpha", a, "joblog", &[], &BTreeSet::new());
        assert_eq!((e.catch_up, e.latest_published), (CatchUp::Current, None));
    }

    #[test]
    fn downloads_group_by_supplier_authority_and_area() {
        let g = group([(
            "bi-alpha".into(),
            "kommune/101".into(),
            "joblog".into(),
            "000001_20261201T020000Z".into(),
            "/kommune/101/joblog/v1/full/000001_20261201T020000Z/part-00000.parquet".into(),
        )]);
        let key = (
            "bi-alpha".to_string(),
            "kommune/101".to_string(),
            "joblog".to_string(),
        );
        assert!(g[&key].contains(&(
            "000001_20261201T020000Z".to_string(),
            "part-00000.parquet".to_string()
        )));
    }
}
