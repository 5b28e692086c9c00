//! The published tree: where a load lives, and the virtual view a
//! supplier's SFTP session sees. [`resolve`] is the only place a client path
//! becomes a location. This module is pure; [`store`] is its file-system
//! half, and the only place a location becomes a real path.
//!
//! Layout: `<root>/<kommune|akasse>/<code>/<area>/v<version>/<full|delta>/<load-id>/`
//! holding the data files, `MANIFEST.json` and `SHA256SUMS`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::authority::{AuthorityId, AuthorityKind};

pub mod store;
pub use store::Store;

/// The file in each supplier's root holding its delivery ledger.
pub const LEDGER: &str = "LEDGER.json";

/// Longest client path accepted (OpenSSH's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Deepest client path accepted; the tree itself is 7 levels deep.
pub const MAX_COMPONENTS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadKind {
    Full,
    Delta,
}

impl LoadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadKind::Full => "full",
            LoadKind::Delta => "delta",
        }
    }
}

/// `<sequence>_<UTC time>`, e.g. `000042_20261122T020000Z`; sorts in load order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LoadId {
    pub seq: u64,
    pub at: DateTime<Utc>,
}

impl LoadId {
    pub fn parse(s: &str) -> Option<LoadId> {
        let (seq, at) = s.split_once('_')?;
        if seq.len() < 6 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let at = NaiveDateTime::parse_from_str(at, "%Y%m%dT%H%M%SZ")
            .ok()?
            .and_utc();
        Some(LoadId {
            seq: seq.parse().ok()?,
            at,
        })
    }
}

impl fmt::Display for LoadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}_{}", self.seq, self.at.format("%Y%m%dT%H%M%SZ"))
    }
}

/// `<root>/<kind>/<code>/<area>`
fn area_dir(root: &Path, authority: AuthorityId, area: &str) -> PathBuf {
    authority_dir(root, authority).join(area)
}

/// `<root>/<kind>/<code>`
fn authority_dir(root: &Path, authority: AuthorityId) -> PathBuf {
    root.join(authority.kind.as_str())
        .join(authority.code_str())
}

/// `<root>/<kind>/<code>/<area>/v<version>/<full|delta>`
fn kind_dir(
    root: &Path,
    authority: AuthorityId,
    area: &str,
    version: u32,
    kind: LoadKind,
) -> PathBuf {
    area_dir(root, authority, area)
        .join(format!("v{version}"))
        .join(kind.as_str())
}

/// Where a published load lives.
fn load_dir(
    root: &Path,
    authority: AuthorityId,
    area: &str,
    version: u32,
    kind: LoadKind,
    id: LoadId,
) -> PathBuf {
    kind_dir(root, authority, area, version, kind).join(id.to_string())
}

/// A place in a supplier's view of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `/`: lists `kommune` and `akasse` (and `LEDGER.json`).
    Root,
    /// `/LEDGER.json`: the supplier's own delivery ledger, made when read.
    Ledger,
    /// `/ANNOUNCEMENTS`: the announcements that concern the supplier.
    Announcements,
    /// `/ANNOUNCEMENTS/<file>`: one of them, or its `index.json`.
    Announcement(String),
    /// `/kommune`: lists the visible municipalities.
    Kind(AuthorityKind),
    /// `/kommune/101`: lists the visible data areas.
    Authority(AuthorityId),
    /// `/kommune/101/joblog/...`: the real tree below the area folder.
    Area {
        authority: AuthorityId,
        area: String,
        rest: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("path has more than {MAX_COMPONENTS} components")]
    TooDeep,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("no such file or folder")]
    NotFound,
}

/// Turns a client path into a location. Relative paths start at `/` (every
/// session's home); `.` and empty components are dropped, `..` climbs but
/// never above `/`, and names starting with `.` (staging, temporary files)
/// do not exist as far as a client can tell.
pub fn resolve(path: &str) -> Result<Location, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => {
                if parts.len() >= MAX_COMPONENTS {
                    return Err(PathError::TooDeep);
                }
                parts.push(c);
            }
        }
    }
    match parts.as_slice() {
        [LEDGER] => return Ok(Location::Ledger),
        [crate::announce::FOLDER] => return Ok(Location::Announcements),
        [crate::announce::FOLDER, name] if !name.starts_with('.') => {
            return Ok(Location::Announcement(name.to_string()));
        }
        [crate::announce::FOLDER, ..] => return Err(PathError::NotFound),
        _ => {}
    }
    let mut it = parts.into_iter();
    let Some(kind) = it.next() else {
        return Ok(Location::Root);
    };
    let kind = AuthorityKind::parse(kind).ok_or(PathError::NotFound)?;
    let Some(code) = it.next() else {
        return Ok(Location::Kind(kind));
    };
    let authority = AuthorityId::known(kind, code).ok_or(PathError::NotFound)?;
    let Some(area) = it.next() else {
        return Ok(Location::Authority(authority));
    };
    let rest: Vec<String> = it.map(str::to_string).collect();
    if area.starts_with('.') || rest.iter().any(|c| c.starts_with('.')) {
        return Err(PathError::NotFound);
    }
    Ok(Location::Area {
        authority,
        area: area.to_string(),
        rest,
    })
}

impl Location {
    /// The canonical absolute path of this location in the view.
    pub fn virtual_path(&self) -> String {
        match self {
            Location::Root => "/".into(),
            Location::Ledger => format!("/{LEDGER}"),
            Location::Announcements => format!("/{}", crate::announce::FOLDER),
            Location::Announcement(name) => format!("/{}/{name}", crate::announce::FOLDER),
            Location::Kind(k) => format!("/{k}"),
            Location::Authority(a) => format!("/{a}"),
            Location::Area {
                authority,
                area,
                rest,
            } => {
                let mut p = format!("/{authority}/{area}");
                for c in rest {
                    p.push('/');
                    p.push_str(c);
                }
                p
            }
        }
    }

    /// Whether a supplier whose visible set is `visible` may see this location.
    pub fn is_visible(&self, visible: &BTreeMap<AuthorityId, BTreeSet<String>>) -> bool {
        match self {
            // Made per supplier: what is not its own is not there at all.
            Location::Root
            | Location::Ledger
            | Location::Announcements
            | Location::Announcement(_) => true,
            Location::Kind(k) => visible.keys().any(|a| a.kind == *k),
            Location::Authority(a) => visible.contains_key(a),
            Location::Area {
                authority, area, ..
            } => visible
                .get(authority)
                .is_some_and(|areas| areas.contains(area)),
        }
    }

    /// The real path for an area location; `None` for the synthetic levels
    /// above. Only [`store`] calls it.
    fn real_path(&self, root: &Path) -> Option<PathBuf> {
        match self {
            Location::Area {
                authority,
                area,
                rest,
            } => {
                let mut p = area_dir(root, *authority, area);
                for c in rest {
                    p.push(c);
                }
                Some(p)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn area(a: &str, area: &str, rest: &[&str]) -> Location {
        Location::Area {
            authority: a.parse().unwrap(),
            area: area.into(),
            rest: rest.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn resolves_the_view_levels() {
        let cases: &[(&str, Result<Location, PathError>)] = &[
            ("/", Ok(Location::Root)),
            ("", Ok(Location::Root)),
            (".", Ok(Location::Root)),
            ("kommune", Ok(Location::Kind(AuthorityKind::Kommune))),
            ("/akasse/", Ok(Location::Kind(AuthorityKind::Akasse))),
            (
                "/kommune/101",
                Ok(Location::Authority("kommune/101".parse().unwrap())),
            ),
            (
                "/kommune/101/joblog",
                Ok(area("kommune/101", "joblog", &[])),
            ),
            (
                "//kommune//101///joblog/v1",
                Ok(area("kommune/101", "joblog", &["v1"])),
            ),
            (
                "/kommune/101/joblog/v1/../v2/./full",
                Ok(area("kommune/101", "joblog", &["v2", "full"])),
            ),
            ("/../../..", Ok(Location::Root)),
            ("/../../etc/passwd", Err(PathError::NotFound)),
            (
                "/kommune/101/../../akasse/901",
                Ok(Location::Authority("akasse/901".parse().unwrap())),
            ),
            ("/kommune/999", Err(PathError::NotFound)),
            ("/kommune/0101", Err(PathError::NotFound)),
            ("/region", Err(PathError::NotFound)),
            ("/LEDGER.json", Ok(Location::Ledger)),
            ("LEDGER.json", Ok(Location::Ledger)),
            ("/kommune/../LEDGER.json", Ok(Location::Ledger)),
            ("/LEDGER.json/x", Err(PathError::NotFound)),
            ("/ledger.json", Err(PathError::NotFound)),
            ("/kommune/101/.staging", Err(PathError::NotFound)),
            (
                "/kommune/101/joblog/v1/full/.tmp-1/x",
                Err(PathError::NotFound),
            ),
            ("/kommune/101/joblog\0/x", Err(PathError::Nul)),
            ("/ANNOUNCEMENTS", Ok(Location::Announcements)),
            ("ANNOUNCEMENTS/", Ok(Location::Announcements)),
            (
                "/ANNOUNCEMENTS/2027-03-01-release.md",
                Ok(Location::Announcement("2027-03-01-release.md".into())),
            ),
            (
                "/kommune/../ANNOUNCEMENTS/index.json",
                Ok(Location::Announcement("index.json".into())),
            ),
            ("/ANNOUNCEMENTS/.x", Err(PathError::NotFound)),
            ("/ANNOUNCEMENTS/a/b", Err(PathError::NotFound)),
        ];
        for (input, want) in cases {
            assert_eq!(&resolve(input), want, "{input:?}");
        }
        assert_eq!(resolve(&"a/".repeat(3000)), Err(PathError::TooLong));
        assert_eq!(
            resolve(&format!("/kommune/101/joblog/{}", "x/".repeat(40))),
            Err(PathError::TooDeep)
        );
    }

    #[test]
    fn real_paths_stay_under_the_root() {
        let root = Path::new("/srv/tree");
        for p in [
            "/kommune/101/joblog/../../../../..",
            "/kommune/101/joblog/v1/../../../x",
            "../kommune/101/joblog/a/../../b",
        ] {
            if let Ok(loc) = resolve(p)
                && let Some(real) = loc.real_path(root)
            {
                assert!(real.starts_with(root), "{p} -> {}", real.display());
                assert!(!real.components().any(|c| c.as_os_str() == ".."), "{p}");
            }
        }
        assert_eq!(
            area("kommune/101", "joblog", &["v1"])
                .real_path(root)
                .unwrap(),
            Path::new("/srv/tree/kommune/101/joblog/v1")
        );
        assert_eq!(Location::Root.real_path(root), None);
    }

    #[test]
    fn visibility_follows_the_visible_set() {
        let mut visible = BTreeMap::new();
        visible.insert(
            "kommune/101".parse().unwrap(),
            BTreeSet::from(["joblog".to_string()]),
        );
        assert!(Location::Root.is_visible(&visible));
        assert!(Location::Kind(AuthorityKind::Kommune).is_visible(&visible));
        assert!(!Location::Kind(AuthorityKind::Akasse).is_visible(&visible));
        assert!(area("kommune/101", "joblog", &["v1"]).is_visible(&visible));
        assert!(!area("kommune/101", "plans", &[]).is_visible(&visible));
        assert!(!Location::Authority("kommune/147".parse().unwrap()).is_visible(&visible));
    }

    #[test]
    fn load_ids_sort_and_round_trip() {
        let id = LoadId {
            seq: 42,
            at: Utc.with_ymd_and_hms(2026, 11, 22, 2, 0, 0).unwrap(),
        };
        assert_eq!(id.to_string(), "000042_20261122T020000Z");
        assert_eq!(LoadId::parse("000042_20261122T020000Z"), Some(id));
        assert_eq!(LoadId::parse("42_20261122T020000Z"), None);
        assert_eq!(LoadId::parse(".tmp-000042_20261122T020000Z"), None);
        assert!(
            LoadId::parse("000009_20300101T000000Z") < LoadId::parse("000010_20200101T000000Z")
        );
    }
}

/// Properties of the one path resolver over arbitrary client input: nothing
/// resolves outside the view, into a hidden name, or to a hidden authority.
#[cfg(test)]
mod resolve_props {
    use super::*;
    use proptest::prelude::*;

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("kommune".to_string()),
            Just("akasse".to_string()),
            Just("101".to_string()),
            Just("147".to_string()),
            Just("901".to_string()),
            Just("joblog".to_string()),
            Just(".staging".to_string()),
            Just("...".to_string()),
            Just("\\..".to_string()),
            any::<String>(),
        ]
    }

    fn client_path() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(component(), 0..12).prop_map(|c| c.join("/")),
            proptest::collection::vec(component(), 0..12).prop_map(|c| format!("/{}", c.join("/"))),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn no_path_leaves_the_view(path in client_path()) {
            let root = Path::new("/srv/tree");
            let mut visible = BTreeMap::new();
            visible.insert("kommune/101".parse::<AuthorityId>().unwrap(), BTreeSet::from(["joblog".to_string()]));
            if let Ok(loc) = resolve(&path) {
                // The canonical path resolves to the same place.
                prop_assert_eq!(resolve(&loc.virtual_path()), Ok(loc.clone()));
                if let Some(real) = loc.real_path(root) {
                    prop_assert!(real.starts_with(root));
                    for c in real.strip_prefix(root).unwrap().components() {
                        let std::path::Component::Normal(name) = c else {
                            return Err(TestCaseError::fail(format!("{path:?} -> {}", real.display())));
                        };
                        prop_assert!(!name.to_string_lossy().starts_with('.'));
                    }
                }
                if loc.is_visible(&visible) {
                    match &loc {
                        Location::Root | Location::Ledger | Location::Announcements | Location::Announcement(_) => {}
                        Location::Kind(k) => prop_assert_eq!(*k, AuthorityKind::Kommune),
                        Location::Authority(a) => prop_assert_eq!(a.to_string(), "kommune/101"),
                        Location::Area { authority, area, .. } => {
                            prop_assert_eq!(authority.to_string(), "kommune/101");
                            prop_assert_eq!(area.as_str(), "joblog");
                        }
                    }
                }
            }
        }
    }
}
