//! Announcements to suppliers, pure: what the operator wrote in the
//! announcements file (`[announcements] file`), who it concerns, and how it
//! reads as a Markdown file and a JSON index in a supplier's
//! `/ANNOUNCEMENTS` folder. The status page, its feed and the notifications
//! show the same announcements.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::Agreements;

/// The folder in a supplier's root holding the announcements that concern it.
pub const FOLDER: &str = "ANNOUNCEMENTS";
/// The JSON index in that folder.
pub const INDEX: &str = "index.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Release,
    DataConversion,
    NewArea,
    Retirement,
    Maintenance,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Release,
        Kind::DataConversion,
        Kind::NewArea,
        Kind::Retirement,
        Kind::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Release => "release",
            Kind::DataConversion => "data_conversion",
            Kind::NewArea => "new_area",
            Kind::Retirement => "retirement",
            Kind::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind as a supplier reads it, Danish or English.
    pub fn label(self, danish: bool) -> &'static str {
        match (self, danish) {
            (Kind::Release, true) => "Release",
            (Kind::Release, false) => "Release",
            (Kind::DataConversion, true) => "Datakonvertering",
            (Kind::DataConversion, false) => "Data conversion",
            (Kind::NewArea, true) => "Nyt dataområde",
            (Kind::NewArea, false) => "New data area",
            (Kind::Retirement, true) => "Udfasning",
            (Kind::Retirement, false) => "Retirement",
            (Kind::Maintenance, true) => "Vedligeholdelse",
            (Kind::Maintenance, false) => "Maintenance",
        }
    }
}

/// One announcement, as validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announcement {
    /// Lower-case letters, digits and `-`; unique in the file.
    pub id: String,
    pub title: String,
    pub kind: Kind,
    /// The data areas it concerns; empty: every area (the whole platform).
    pub areas: BTreeSet<String>,
    /// When what it announces takes effect.
    #[serde(serialize_with = "rfc3339")]
    pub effective: DateTime<Utc>,
    /// Markdown.
    pub body: String,
}

fn rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl Announcement {
    /// `<effective date, Danish time>-<id>.md`: sorts by date in a listing.
    pub fn file_name(&self) -> String {
        format!(
            "{}-{}.md",
            self.effective
                .with_timezone(&chrono_tz::Europe::Copenhagen)
                .format("%Y-%m-%d"),
            self.id
        )
    }

    /// Whether it concerns `area` (one it lists, or every area).
    pub fn covers(&self, area: &str) -> bool {
        self.areas.is_empty() || self.areas.contains(area)
    }

    /// The file a supplier reads: a heading, what and when, then the body.
    pub fn markdown(&self) -> String {
        let areas = if self.areas.is_empty() {
            "all".to_string()
        } else {
            self.areas.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        format!(
            "# {}\n\n- Kind: {}\n- Data areas: {areas}\n- Effective: {}\n\n{}\n",
            self.title,
            self.kind.label(false),
            self.effective
                .with_timezone(&chrono_tz::Europe::Copenhagen)
                .format("%Y-%m-%d %H:%M (Danish time)"),
            self.body.trim_end()
        )
    }
}

/// A body as HTML for the status page. Raw HTML in it is shown as text,
/// not passed through: the page shows what the operator wrote, nothing more.
pub fn html(markdown: &str) -> String {
    use pulldown_cmark::{Event, Parser};
    let events = Parser::new(markdown).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// The suppliers an announcement concerns: those with a cooperation
/// agreement in force at `now`, or starting later, that lists one of its
/// areas (every supplier with one, for an announcement of every area).
pub fn suppliers_concerned(
    a: &Announcement,
    agreements: &Agreements,
    now: DateTime<Utc>,
) -> BTreeSet<String> {
    agreements
        .cooperation
        .iter()
        .filter(|c| c.validity.to.is_none_or(|to| to > now))
        .filter(|c| a.areas.is_empty() || c.areas.iter().any(|area| a.covers(area)))
        .map(|c| c.supplier.clone())
        .collect()
}

/// The announcements that concern `supplier`, newest effective date first.
pub fn for_supplier<'a>(
    all: &'a [Announcement],
    agreements: &Agreements,
    supplier: &str,
    now: DateTime<Utc>,
) -> Vec<&'a Announcement> {
    let mut out: Vec<&Announcement> = all
        .iter()
        .filter(|a| suppliers_concerned(a, agreements, now).contains(supplier))
        .collect();
    out.sort_by(|a, b| b.effective.cmp(&a.effective).then(a.id.cmp(&b.id)));
    out
}

#[derive(Serialize)]
struct IndexEntry<'a> {
    file: String,
    #[serde(flatten)]
    announcement: &'a Announcement,
}

/// `index.json`: each announcement with its file name, newest first.
pub fn index(list: &[&Announcement]) -> Vec<u8> {
    let entries: Vec<IndexEntry> = list
        .iter()
        .map(|a| IndexEntry {
            file: a.file_name(),
            announcement: a,
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&entries).expect("an index serialises");
    out.push(b'\n');
    out
}

/// A supplier's `/ANNOUNCEMENTS` folder: (file name, contents), the index
/// first; empty when nothing concerns it (then there is no folder).
pub fn folder(list: &[&Announcement]) -> Vec<(String, Vec<u8>)> {
    if list.is_empty() {
        return Vec::new();
    }
    std::iter::once((INDEX.to_string(), index(list)))
        .chain(
            list.iter()
                .map(|a| (a.file_name(), a.markdown().into_bytes())),
        )
        .collect()
}

/// A draft announcement of a new version of an area, from what changed
/// (`CHANGES.json`), as TOML the operator edits and adds to the
/// announcements file.
pub fn version_draft(area: &str, change: &crate::load::version::SchemaChange) -> String {
    let columns = |list: Vec<String>| {
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    let body = format!(
        "Version {to} of the data area {area} replaces version {from}; its first load is {load}.\n\n\
         - Added columns: {added}\n- Removed columns: {removed}\n- Changed types: {retyped}\n\n\
         Loads of version {to} are in `v{to}/`; `CHANGES.json` and `v{to}/DICTIONARY.md` describe them.",
        to = change.to_version,
        from = change.from_version,
        load = change.load_id,
        added = columns(
            change
                .added
                .iter()
                .map(|c| format!("`{}` ({})", c.name, c.data_type))
                .collect()
        ),
        removed = columns(
            change
                .removed
                .iter()
                .map(|c| format!("`{}`", c.name))
                .collect()
        ),
        retyped = columns(
            change
                .retyped
                .iter()
                .map(|r| format!("`{}` ({} to {})", r.name, r.from, r.to))
                .collect()
        ),
    );
    let effective = crate::tree::LoadId::parse(&change.load_id)
        .map(|id| id.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    format!(
        "# A draft: edit it, then add it to the announcements file.\n\
         [[announcement]]\n\
         id = \"{area}-v{to}\"\n\
         title = \"{area}: version {to}\"\n\
         kind = \"data_conversion\"\n\
         areas = [\"{area}\"]\n\
         effective = \"{effective}\"\n\
         body = \"\"\"\n{body}\n\"\"\"\n",
        to = change.to_version,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{CooperationAgreement, Validity};
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    fn announcement(id: &str, areas: &[&str], effective: DateTime<Utc>) -> Announcement {
        Announcement {
            id: id.into(),
            title: format!("About {id}"),
            kind: Kind::Release,
            areas: areas.iter().map(|s| s.to_string()).collect(),
            effective,
            body: "Text with **Markdown**.".into(),
        }
    }

    fn cooperation(
        supplier: &str,
        areas: &[&str],
        to: Option<DateTime<Utc>>,
    ) -> CooperationAgreement {
        CooperationAgreement {
            id: format!("sup-{supplier}"),
            supplier: supplier.into(),
            areas: areas.iter().map(|s| s.to_string()).collect(),
            test_areas: Default::default(),
            validity: Validity {
                from: at(2025, 1, 1),
                to,
            },
        }
    }

    #[test]
    fn an_announcement_concerns_the_suppliers_whose_agreements_cover_its_areas() {
        let now = at(2026, 12, 5);
        let agreements = Agreements {
            cooperation: vec![
                cooperation("bi-alpha", &["joblog", "plans"], None),
                cooperation("bi-beta", &["joblog"], None),
                cooperation("bi-delta", &["members"], None),
                cooperation("bi-gamma", &["plans"], Some(at(2026, 3, 31))),
            ],
            ..Default::default()
        };
        let set = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let plans = announcement("plans-v2", &["plans"], now);
        assert_eq!(
            suppliers_concerned(&plans, &agreements, now),
            set(&["bi-alpha"])
        );
        let joblog = announcement("joblog", &["joblog", "members"], now);
        assert_eq!(
            suppliers_concerned(&joblog, &agreements, now),
            set(&["bi-alpha", "bi-beta", "bi-delta"])
        );
        let everyone = announcement("maintenance", &[], now);
        assert_eq!(
            suppliers_concerned(&everyone, &agreements, now),
            set(&["bi-alpha", "bi-beta", "bi-delta"]),
            "an ended agreement concerns no one"
        );
        let all = [plans, joblog, everyone];
        let beta: Vec<&str> = for_supplier(&all, &agreements, "bi-beta", now)
            .iter()
            .map(|a| a.id.as_str())
            .collect();
        assert_eq!(beta, ["joblog", "maintenance"]);
        assert!(for_supplier(&all, &agreements, "bi-gamma", now).is_empty());
    }

    #[test]
    fn the_folder_holds_an_index_and_a_file_per_announcement_newest_first() {
        let a = announcement(
            "release-1",
            &["joblog"],
            Utc.with_ymd_and_hms(2027, 2, 28, 23, 30, 0).unwrap(),
        );
        let b = announcement("release-2", &[], at(2027, 5, 1));
        let list = vec![&b, &a];
        let files = folder(&list);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        // 23:30 UTC on 28 February is 1 March in Denmark.
        assert_eq!(
            names,
            [
                "index.json",
                "2027-05-01-release-2.md",
                "2027-03-01-release-1.md"
            ]
        );
        let index: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(index[1]["file"], "2027-03-01-release-1.md");
        assert_eq!(index[1]["kind"], "release");
        assert_eq!(index[1]["areas"][0], "joblog");
        assert_eq!(index[1]["effective"], "2027-02-28T23:30:00Z");
        let md = String::from_utf8(files[2].1.clone()).unwrap();
        assert!(md.starts_with("# About release-1\n\n- Kind: Release\n- Data areas: joblog\n- Effective: 2027-03-01 00:30 (Danish time)\n\nText with **Markdown**.\n"), "{md}");
        assert!(
            String::from_utf8(files[1].1.clone())
                .unwrap()
                .contains("- Data areas: all\n")
        );
        assert!(folder(&[]).is_empty());
    }

    #[test]
    fn bodies_render_as_html_with_raw_html_escaped() {
        assert_eq!(
            html("Adds `kanal`.\n\n- one\n- two"),
            "<p>Adds <code>kanal</code>.</p>\n<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n"
        );
        let h = html("<script>alert(1)</script> and <b>bold</b>");
        assert!(!h.contains("<script>") && !h.contains("<b>"), "{h}");
        assert!(h.contains("&lt;script&gt;"), "{h}");
    }

    #[test]
    fn a_version_change_makes_a_draft_that_parses_as_an_announcement() {
        use crate::load::version::{Column, Retyped, SchemaChange};
        let change = SchemaChange {
            from_version: 1,
            to_version: 2,
            load_id: "000031_20270301T020000Z".into(),
            added: vec![Column {
                name: "kanal".into(),
                data_type: "Utf8".into(),
            }],
            removed: vec![],
            retyped: vec![Retyped {
                name: "postnr".into(),
                from: "Int32".into(),
                to: "Utf8".into(),
            }],
        };
        let draft = version_draft("joblog", &change);
        assert!(draft.contains("- Added columns: `kanal` (Utf8)"), "{draft}");
        assert!(draft.contains("- Removed columns: none"), "{draft}");
        assert!(
            draft.contains("- Changed types: `postnr` (Int32 to Utf8)"),
            "{draft}"
        );
        let parsed: toml::Value = toml::from_str(&draft).unwrap();
        let a = &parsed["announcement"][0];
        assert_eq!(a["id"].as_str(), Some("joblog-v2"));
        assert_eq!(a["kind"].as_str(), Some("data_conversion"));
        assert_eq!(a["effective"].as_str(), Some("2027-03-01T02:00:00Z"));
    }
}
