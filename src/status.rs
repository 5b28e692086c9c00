//! Driftsstatus: the platform's status as STAR publishes it, per component
//! (the SFTP service, each data area's loads, the source), now and per day
//! for the last 90 days, with incidents and planned maintenance. Pure: the
//! inputs come from the state database (`state/status.rs`), the page from
//! `http`. No personal data and nothing per supplier.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

/// Days of history shown.
pub const HISTORY_DAYS: i64 = 90;

/// How a component is doing; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Operational,
    Maintenance,
    Degraded,
    Outage,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Operational => "operational",
            Level::Maintenance => "maintenance",
            Level::Degraded => "degraded",
            Level::Outage => "outage",
        }
    }

    pub fn label(self, lang: Lang) -> &'static str {
        match (self, lang) {
            (Level::Operational, Lang::Da) => "I drift",
            (Level::Maintenance, Lang::Da) => "Vedligeholdelse",
            (Level::Degraded, Lang::Da) => "Forstyrrelser",
            (Level::Outage, Lang::Da) => "Nede",
            (Level::Operational, Lang::En) => "Operational",
            (Level::Maintenance, Lang::En) => "Maintenance",
            (Level::Degraded, Lang::En) => "Degraded",
            (Level::Outage, Lang::En) => "Outage",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    Da,
    En,
}

/// An incident's impact, set by the operator.
pub fn parse_impact(s: &str) -> Option<Level> {
    match s {
        "degraded" => Some(Level::Degraded),
        "outage" => Some(Level::Outage),
        _ => None,
    }
}

/// The stages an incident goes through.
pub const INCIDENT_STATES: [&str; 4] = ["investigating", "identified", "monitoring", "resolved"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Update {
    pub at: DateTime<Utc>,
    pub state: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incident {
    pub id: i64,
    /// `sftp`, `source` or `area:<id>`.
    pub component: String,
    pub impact: Level,
    pub title: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub updates: Vec<Update>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Maintenance {
    pub id: i64,
    /// `maintenance` or `release`.
    pub kind: String,
    pub title: String,
    /// `None`: the whole platform.
    pub component: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub description: String,
}

/// What the loads of an area did on one day (from the state database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadDay {
    pub day: NaiveDate,
    pub failed: bool,
}

/// Everything the status is made from.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The data areas, in config order.
    pub areas: Vec<String>,
    pub incidents: Vec<Incident>,
    pub maintenance: Vec<Maintenance>,
    /// Per area: whether its newest load run failed.
    pub last_load_failed: Vec<(String, bool)>,
    /// Per area, the days with load runs.
    pub load_days: Vec<(String, Vec<LoadDay>)>,
    /// Whether the source answered at its last check (`None`: not checked).
    pub source_up: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    pub id: String,
    pub level: Level,
    /// The worst level of each of the last 90 days, oldest first.
    pub days: Vec<(NaiveDate, Level)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    pub overall: Level,
    pub components: Vec<Component>,
    pub open: Vec<Incident>,
    /// Resolved in the last 90 days, newest first.
    pub past: Vec<Incident>,
    /// Maintenance that has not ended, soonest first.
    pub planned: Vec<Maintenance>,
}

/// The component ids: the SFTP service, each area, the source.
pub fn component_ids(areas: &[String]) -> Vec<String> {
    std::iter::once("sftp".to_string())
        .chain(areas.iter().map(|a| format!("area:{a}")))
        .chain(std::iter::once("source".to_string()))
        .collect()
}

/// The status at `now`.
pub fn status(inputs: &Inputs, now: DateTime<Utc>) -> Status {
    let today = now.date_naive();
    let first = today - Duration::days(HISTORY_DAYS - 1);
    let components: Vec<Component> = component_ids(&inputs.areas)
        .into_iter()
        .map(|id| {
            let mut level = Level::Operational;
            for i in inputs.incidents.iter().filter(|i| i.component == id) {
                if i.resolved_at.is_none() {
                    level = level.max(i.impact);
                }
            }
            for m in &inputs.maintenance {
                if m.component.as_deref().is_none_or(|c| c == id)
                    && m.starts_at <= now
                    && now < m.ends_at
                {
                    level = level.max(Level::Maintenance);
                }
            }
            if let Some(area) = id.strip_prefix("area:")
                && inputs
                    .last_load_failed
                    .iter()
                    .any(|(a, failed)| a == area && *failed)
            {
                level = level.max(Level::Degraded);
            }
            if id == "source" && inputs.source_up == Some(false) {
                level = level.max(Level::Outage);
            }
            let days = (0..HISTORY_DAYS)
                .map(|d| {
                    let day = first + Duration::days(d);
                    (day, day_level(inputs, &id, day))
                })
                .collect();
            Component { id, level, days }
        })
        .collect();
    let overall = components
        .iter()
        .map(|c| c.level)
        .max()
        .unwrap_or(Level::Operational);
    let mut open: Vec<Incident> = inputs
        .incidents
        .iter()
        .filter(|i| i.resolved_at.is_none())
        .cloned()
        .collect();
    open.sort_by_key(|i| std::cmp::Reverse(i.opened_at));
    let since = now - Duration::days(HISTORY_DAYS);
    let mut past: Vec<Incident> = inputs
        .incidents
        .iter()
        .filter(|i| i.resolved_at.is_some_and(|r| r >= since))
        .cloned()
        .collect();
    past.sort_by_key(|i| std::cmp::Reverse(i.resolved_at));
    let mut planned: Vec<Maintenance> = inputs
        .maintenance
        .iter()
        .filter(|m| m.ends_at > now)
        .cloned()
        .collect();
    planned.sort_by_key(|m| m.starts_at);
    Status {
        at: now,
        overall,
        components,
        open,
        past,
        planned,
    }
}

/// The worst a component was on `day`: incidents open that day, and for an
/// area, a failed load run that day.
fn day_level(inputs: &Inputs, id: &str, day: NaiveDate) -> Level {
    let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let end = start + Duration::days(1);
    let mut level = Level::Operational;
    for i in inputs.incidents.iter().filter(|i| i.component == id) {
        if i.opened_at < end && i.resolved_at.is_none_or(|r| r >= start) {
            level = level.max(i.impact);
        }
    }
    if let Some(area) = id.strip_prefix("area:")
        && inputs
            .load_days
            .iter()
            .any(|(a, days)| a == area && days.iter().any(|d| d.day == day && d.failed))
    {
        level = level.max(Level::Degraded);
    }
    level
}

/// A component's name on the page.
pub fn component_name(id: &str, lang: Lang) -> String {
    match (id, lang) {
        ("sftp", Lang::Da) => "SFTP-tjenesten".into(),
        ("sftp", Lang::En) => "SFTP service".into(),
        ("source", Lang::Da) => "Kilden (DFDG)".into(),
        ("source", Lang::En) => "Source (DFDG)".into(),
        (other, Lang::Da) => match other.strip_prefix("area:") {
            Some(a) => format!("Dataområde {a}: leverancer"),
            None => other.into(),
        },
        (other, Lang::En) => match other.strip_prefix("area:") {
            Some(a) => format!("Data area {a}: loads"),
            None => other.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap()
    }

    fn inputs() -> Inputs {
        Inputs {
            areas: vec!["joblog".into(), "plans".into()],
            incidents: vec![],
            maintenance: vec![],
            last_load_failed: vec![("joblog".into(), false), ("plans".into(), false)],
            load_days: vec![],
            source_up: Some(true),
        }
    }

    fn level_of(s: &Status, id: &str) -> Level {
        s.components.iter().find(|c| c.id == id).unwrap().level
    }

    #[test]
    fn all_is_operational_without_incidents_or_failures() {
        let s = status(&inputs(), t(5, 12));
        assert_eq!(s.overall, Level::Operational);
        assert_eq!(
            s.components
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            ["sftp", "area:joblog", "area:plans", "source"]
        );
        assert!(s.components.iter().all(|c| c.days.len() == 90));
        assert_eq!(s.components[0].days.last().unwrap().0, t(5, 0).date_naive());
    }

    #[test]
    fn incidents_failed_loads_maintenance_and_the_source_set_levels() {
        let mut i = inputs();
        i.incidents.push(Incident {
            id: 1,
            component: "sftp".into(),
            impact: Level::Outage,
            title: "x".into(),
            opened_at: t(3, 10),
            resolved_at: Some(t(4, 2)),
            updates: vec![],
        });
        i.incidents.push(Incident {
            id: 2,
            component: "area:plans".into(),
            impact: Level::Degraded,
            title: "y".into(),
            opened_at: t(5, 9),
            resolved_at: None,
            updates: vec![],
        });
        i.last_load_failed[0].1 = true;
        i.load_days.push((
            "joblog".into(),
            vec![LoadDay {
                day: t(1, 0).date_naive(),
                failed: true,
            }],
        ));
        i.maintenance.push(Maintenance {
            id: 1,
            kind: "release".into(),
            title: "z".into(),
            component: None,
            starts_at: t(6, 20),
            ends_at: t(6, 22),
            description: String::new(),
        });
        let s = status(&i, t(5, 12));
        assert_eq!(level_of(&s, "sftp"), Level::Operational, "resolved");
        assert_eq!(level_of(&s, "area:plans"), Level::Degraded);
        assert_eq!(
            level_of(&s, "area:joblog"),
            Level::Degraded,
            "its last load failed"
        );
        assert_eq!(s.overall, Level::Degraded);
        assert_eq!((s.open.len(), s.past.len(), s.planned.len()), (1, 1, 1));
        // History: the outage covers 3 and 4 December; joblog's failure 1 December.
        let days = |id: &str| {
            s.components
                .iter()
                .find(|c| c.id == id)
                .unwrap()
                .days
                .clone()
        };
        let on = |id: &str, d: u32| {
            days(id)
                .iter()
                .find(|x| x.0 == t(d, 0).date_naive())
                .unwrap()
                .1
        };
        assert_eq!(
            (on("sftp", 2), on("sftp", 3), on("sftp", 4), on("sftp", 5)),
            (
                Level::Operational,
                Level::Outage,
                Level::Outage,
                Level::Operational
            )
        );
        assert_eq!(on("area:joblog", 1), Level::Degraded);
        // During the maintenance window every component is in maintenance.
        let during = status(&i, t(6, 21));
        assert_eq!(level_of(&during, "sftp"), Level::Maintenance);
        // The source down is an outage.
        i.source_up = Some(false);
        assert_eq!(level_of(&status(&i, t(5, 12)), "source"), Level::Outage);
    }
}
