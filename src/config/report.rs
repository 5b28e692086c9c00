//! Access in reporting terms, pure: who may read what at a time (`access
//! explain` and `access matrix`), and what a new config changes in that
//! (logged and audited by a reload).

use std::collections::BTreeSet;

use chrono::Utc;

use super::Config;

/// A supplier or area a report was asked about that the config does not have.
#[derive(Debug, thiserror::Error)]
pub enum UnknownName {
    #[error("no supplier \"{0}\" in the config")]
    Supplier(String),
    #[error("no data area \"{0}\" in the config")]
    Area(String),
}

/// One change in who may read what, found by a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessChange {
    pub gained: bool,
    pub supplier: String,
    pub authority: crate::authority::AuthorityId,
    pub area: String,
}

impl std::fmt::Display for AccessChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}/{}",
            self.supplier,
            if self.gained { "gained" } else { "lost" },
            self.authority,
            self.area
        )
    }
}

/// Every (supplier, authority, area) readable at `now` under `config`.
pub fn access_at(
    config: &Config,
    now: chrono::DateTime<Utc>,
) -> BTreeSet<(String, crate::authority::AuthorityId, String)> {
    let mut out = BTreeSet::new();
    for supplier in config.suppliers.keys() {
        for (authority, areas) in config.agreements.visible(supplier, now) {
            for area in areas {
                out.insert((supplier.clone(), authority, area));
            }
        }
    }
    out
}

/// What changes in access terms from `old` to `new` at `now`.
pub fn access_changes(old: &Config, new: &Config, now: chrono::DateTime<Utc>) -> Vec<AccessChange> {
    let (before, after) = (access_at(old, now), access_at(new, now));
    let change = |gained: bool| {
        move |(supplier, authority, area): &(String, crate::authority::AuthorityId, String)| {
            AccessChange {
                gained,
                supplier: supplier.clone(),
                authority: *authority,
                area: area.clone(),
            }
        }
    };
    before
        .difference(&after)
        .map(change(false))
        .chain(after.difference(&before).map(change(true)))
        .collect()
}

/// One supplier's access to one authority's data area at a time, with the
/// reasons when it is denied (each names the agreement and its dates).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccessRow {
    pub supplier: String,
    pub authority: String,
    pub authority_name: String,
    pub area: String,
    pub allowed: bool,
    pub reasons: Vec<String>,
}

/// Access of the suppliers (all, or one) to the authorities named in any
/// agreement (or one) and the configured areas (or one), at `at`.
pub fn access_rows(
    config: &Config,
    supplier: Option<&str>,
    authority: Option<crate::authority::AuthorityId>,
    area: Option<&str>,
    at: chrono::DateTime<Utc>,
) -> Result<Vec<AccessRow>, UnknownName> {
    if let Some(s) = supplier
        && !config.suppliers.contains_key(s)
    {
        return Err(UnknownName::Supplier(s.into()));
    }
    if let Some(a) = area
        && config.area(a).is_none()
    {
        return Err(UnknownName::Area(a.into()));
    }
    let authorities: BTreeSet<_> = match authority {
        Some(a) => BTreeSet::from([a]),
        None => config
            .agreements
            .connection
            .iter()
            .map(|c| c.authority)
            .chain(
                config
                    .agreements
                    .data_processing
                    .iter()
                    .map(|d| d.authority),
            )
            .collect(),
    };
    let mut rows = Vec::new();
    for s in config
        .suppliers
        .keys()
        .filter(|s| supplier.is_none_or(|x| x == *s))
    {
        for a in &authorities {
            for ar in config
                .areas
                .iter()
                .filter(|ar| area.is_none_or(|x| x == ar.id))
            {
                // An area routed to the other kind of authority is never delivered there.
                let routed = ar.routes_to(a.kind);
                let decision = config.agreements.decide(s, *a, &ar.id, at);
                let mut reasons: Vec<String> = match &decision {
                    Ok(()) => Vec::new(),
                    Err(denials) => denials.iter().map(|d| d.to_string()).collect(),
                };
                if !routed {
                    reasons.push(format!(
                        "area {} holds no data for a {}",
                        ar.id,
                        a.kind.as_str()
                    ));
                }
                rows.push(AccessRow {
                    supplier: s.clone(),
                    authority: a.to_string(),
                    authority_name: a.name().unwrap_or_default().to_string(),
                    area: ar.id.clone(),
                    allowed: reasons.is_empty(),
                    reasons,
                });
            }
        }
    }
    Ok(rows)
}

/// `access explain`: one line per authority and area, allowed or why not.
pub fn explain_text(supplier: &str, at: chrono::DateTime<Utc>, rows: &[AccessRow]) -> String {
    let mut out = format!("{supplier} at {}:", at.to_rfc3339());
    for r in rows {
        let verdict = if r.allowed {
            "allowed".to_string()
        } else {
            format!("denied: {}", r.reasons.join("; "))
        };
        out.push_str(&format!("\n  {:<12} {:<30} {verdict}", r.authority, r.area));
    }
    out
}

/// `access matrix --format csv`, with a header line.
pub fn matrix_csv(rows: &[AccessRow]) -> String {
    let mut out = String::from("supplier,authority,authority_name,area,allowed,reasons");
    for r in rows {
        let reasons = r.reasons.join("; ").replace('"', "\"\"");
        out.push_str(&format!(
            "\n{},{},\"{}\",{},{},\"{reasons}\"",
            r.supplier, r.authority, r.authority_name, r.area, r.allowed
        ));
    }
    out
}

/// One supplier gaining or losing an authority's data area at an instant
/// when an agreement starts or ends, with the agreements that cause it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlannedChange {
    #[serde(serialize_with = "rfc3339")]
    pub at: chrono::DateTime<Utc>,
    pub gained: bool,
    pub supplier: String,
    pub authority: crate::authority::AuthorityId,
    pub area: String,
    /// E.g. `data-processing agreement dba-alpha-151 ends`.
    pub reasons: Vec<String>,
}

fn rfc3339<S: serde::Serializer>(at: &chrono::DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl std::fmt::Display for PlannedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}/{} ({})",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.supplier,
            if self.gained { "gains" } else { "loses" },
            self.authority,
            self.area,
            self.reasons.join("; ")
        )
    }
}

/// Every gain or loss of access in `(from, to]`, in time order: the access
/// at each instant an agreement starts or ends, compared with the access
/// just before it. Areas never routed to an authority's kind are left out
/// (there is nothing to read there).
pub fn planned_changes(
    config: &Config,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
) -> Vec<PlannedChange> {
    let a = &config.agreements;
    let validities = a
        .connection
        .iter()
        .map(|c| c.validity)
        .chain(a.data_processing.iter().map(|d| d.validity))
        .chain(a.cooperation.iter().map(|c| c.validity));
    let instants: BTreeSet<_> = validities
        .flat_map(|v| [Some(v.from), v.to])
        .flatten()
        .filter(|t| *t > from && *t <= to)
        .collect();
    if instants.is_empty() {
        return Vec::new();
    }
    let routed = |at| {
        access_at(config, at)
            .into_iter()
            .filter(|(_, authority, area)| {
                // Test loads (`<area>.test`) route as their area does.
                let base = crate::lifecycle::base_of_test(area).unwrap_or(area);
                config
                    .area(base)
                    .is_some_and(|ar| ar.routes_to(authority.kind))
            })
            .collect::<BTreeSet<_>>()
    };
    let mut before = routed(from);
    let mut out = Vec::new();
    for at in instants {
        let after = routed(at);
        for (gained, changed) in [
            (false, before.difference(&after)),
            (true, after.difference(&before)),
        ] {
            for (supplier, authority, area) in changed {
                out.push(PlannedChange {
                    at,
                    gained,
                    supplier: supplier.clone(),
                    authority: *authority,
                    area: area.clone(),
                    reasons: causes(config, supplier, *authority, area, at, gained),
                });
            }
        }
        before = after;
    }
    out
}

/// The agreements of a (supplier, authority, area) that start (for a gain)
/// or end (for a loss) at `at`.
fn causes(
    config: &Config,
    supplier: &str,
    authority: crate::authority::AuthorityId,
    area: &str,
    at: chrono::DateTime<Utc>,
    gained: bool,
) -> Vec<String> {
    use crate::access::{AgreementKind, Validity};
    let a = &config.agreements;
    let candidates = a
        .connection
        .iter()
        .filter(|c| c.authority == authority && c.suppliers.contains(supplier))
        .map(|c| (AgreementKind::Connection, &c.id, c.validity))
        .chain(
            a.data_processing
                .iter()
                .filter(|d| d.authority == authority && d.supplier == supplier)
                .map(|d| (AgreementKind::DataProcessing, &d.id, d.validity)),
        )
        .chain(
            a.cooperation
                .iter()
                .filter(|c| c.supplier == supplier && c.lists(area))
                .map(|c| (AgreementKind::Cooperation, &c.id, c.validity)),
        );
    let boundary = |v: Validity| {
        if gained {
            v.from == at
        } else {
            v.to == Some(at)
        }
    };
    candidates
        .filter(|(_, _, v)| boundary(*v))
        .map(|(kind, id, _)| format!("{kind} {id} {}", if gained { "starts" } else { "ends" }))
        .collect()
}

/// `access changes`: one line per change, or a line saying there is none.
pub fn changes_text(
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
    changes: &[PlannedChange],
) -> String {
    let span = format!(
        "{} to {}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    if changes.is_empty() {
        return format!("no access changes from {span}");
    }
    let mut out = format!("{} access change(s) from {span}:", changes.len());
    for c in changes {
        out.push_str("\n  ");
        out.push_str(&c.to_string());
    }
    out
}
