//! A data area through its life, pure: planned, then `test` (test loads,
//! only for suppliers subscribed to the area as a test), `production`
//! (from a planned instant, starting with a full load), `retired` (no more
//! loads) and removed (its loads taken out of the tree after a notice
//! period). An area without a lifecycle is in production for good.
//!
//! Test loads are an area of their own in the tree, `<area>.test`
//! (`/kommune/101/joblog.test/v1/full/<load>/`, `"stage": "test"` in each
//! MANIFEST.json), so they never mix with production loads, their
//! watermarks and locks are their own, and access to them is its own.

use chrono::{DateTime, Utc};

/// The suffix of a test area's name in the tree.
pub const TEST_SUFFIX: &str = ".test";

/// The tree name of `area`'s test loads.
pub fn test_id(area: &str) -> String {
    format!("{area}{TEST_SUFFIX}")
}

/// The area a test area's tree name belongs to (`None` for a production name).
pub fn base_of_test(name: &str) -> Option<&str> {
    name.strip_suffix(TEST_SUFFIX)
}

/// An area's planned life (`[area.lifecycle]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Test loads from then; `None`: no test stage.
    pub test_from: Option<DateTime<Utc>>,
    /// Production loads from then (a first full load at that instant);
    /// test loads stop.
    pub production_from: DateTime<Utc>,
    /// Test loads leave the tree then.
    pub test_removed_from: DateTime<Utc>,
    /// No more loads from then.
    pub retired_from: Option<DateTime<Utc>>,
    /// The area's loads leave the tree then (after `retired_from`).
    pub removed_from: Option<DateTime<Utc>>,
    /// Test loads from this DFDG instead of `[source] url`.
    pub test_source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Not loading yet.
    Planned,
    Test,
    Production,
    Retired,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Planned => "planned",
            Stage::Test => "test",
            Stage::Production => "production",
            Stage::Retired => "retired",
        }
    }
}

/// The stage at `at` of an area with `lifecycle` (production without one).
pub fn stage_at(lifecycle: Option<&Lifecycle>, at: DateTime<Utc>) -> Stage {
    let Some(l) = lifecycle else {
        return Stage::Production;
    };
    if l.retired_from.is_some_and(|t| at >= t) {
        Stage::Retired
    } else if at >= l.production_from {
        Stage::Production
    } else if l.test_from.is_some_and(|t| at >= t) {
        Stage::Test
    } else {
        Stage::Planned
    }
}

/// What happens to an area at an instant of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// Test loads start: a first full test load.
    TestBegins,
    /// Production starts: a first full load.
    ProductionBegins,
    /// The test loads leave the tree.
    TestRemoved,
    /// Loads stop.
    Retired,
    /// The area's loads leave the tree.
    Removed,
}

/// The steps of a lifecycle in `(from, to]`, in time order.
pub fn steps(l: &Lifecycle, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<(DateTime<Utc>, Step)> {
    let mut out: Vec<(DateTime<Utc>, Step)> = [
        l.test_from.map(|t| (t, Step::TestBegins)),
        Some((l.production_from, Step::ProductionBegins)),
        l.test_from
            .map(|_| (l.test_removed_from, Step::TestRemoved)),
        l.retired_from.map(|t| (t, Step::Retired)),
        l.removed_from.map(|t| (t, Step::Removed)),
    ]
    .into_iter()
    .flatten()
    .filter(|(t, _)| *t > from && *t <= to)
    .collect();
    out.sort();
    out
}

/// The first instant of the lifecycle after `after`, if any is left.
pub fn next_instant(l: &Lifecycle, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    steps(l, after, DateTime::<Utc>::MAX_UTC)
        .first()
        .map(|(t, _)| *t)
}

/// What the tree should no longer hold at `at`: (test loads, the area's loads).
pub fn removed_at(l: &Lifecycle, at: DateTime<Utc>) -> (bool, bool) {
    (
        l.test_from.is_some() && at >= l.test_removed_from,
        l.removed_from.is_some_and(|t| at >= t),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 1, d, 6, 0, 0).unwrap()
    }

    fn life() -> Lifecycle {
        Lifecycle {
            test_from: Some(day(4)),
            production_from: day(11),
            test_removed_from: day(18),
            retired_from: Some(day(25)),
            removed_from: Some(day(28)),
            test_source: None,
        }
    }

    #[test]
    fn the_stage_follows_the_dates() {
        let l = life();
        let second = chrono::Duration::seconds(1);
        for (at, want) in [
            (day(1), Stage::Planned),
            (day(4) - second, Stage::Planned),
            (day(4), Stage::Test),
            (day(11) - second, Stage::Test),
            (day(11), Stage::Production),
            (day(24), Stage::Production),
            (day(25), Stage::Retired),
            (day(30), Stage::Retired),
        ] {
            assert_eq!(stage_at(Some(&l), at), want, "{at}");
        }
        assert_eq!(stage_at(None, day(1)), Stage::Production);
        let no_test = Lifecycle {
            test_from: None,
            ..life()
        };
        assert_eq!(stage_at(Some(&no_test), day(5)), Stage::Planned);
        assert_eq!(removed_at(&no_test, day(30)), (false, true));
    }

    #[test]
    fn steps_come_in_time_order_within_a_window() {
        let l = life();
        assert_eq!(
            steps(&l, day(1), day(31)),
            [
                (day(4), Step::TestBegins),
                (day(11), Step::ProductionBegins),
                (day(18), Step::TestRemoved),
                (day(25), Step::Retired),
                (day(28), Step::Removed),
            ]
        );
        // (from, to]: a step at `from` is past.
        assert_eq!(steps(&l, day(11), day(18)), [(day(18), Step::TestRemoved)]);
        assert_eq!(next_instant(&l, day(11)), Some(day(18)));
        assert_eq!(next_instant(&l, day(28)), None);
        assert_eq!(removed_at(&l, day(17)), (false, false));
        assert_eq!(removed_at(&l, day(18)), (true, false));
        assert_eq!(removed_at(&l, day(28)), (true, true));
    }

    #[test]
    fn test_areas_have_names_of_their_own() {
        assert_eq!(test_id("joblog"), "joblog.test");
        assert_eq!(base_of_test("joblog.test"), Some("joblog"));
        assert_eq!(base_of_test("joblog"), None);
    }
}
