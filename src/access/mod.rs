//! The access policy, step 2 of admission: which authorities and data areas a
//! supplier may read at a given instant. Pure: no I/O, no async, cannot fail.
//!
//! A supplier may read `<authority>/<area>` only while all of these are in force:
//! - a connection agreement between STAR and the authority that lists the supplier;
//! - a data-processing agreement between the authority and the supplier;
//! - a cooperation agreement between STAR and the supplier that lists the area.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};

use crate::authority::AuthorityId;

/// When an agreement is in force: from `from` (inclusive) until `to` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub from: DateTime<Utc>,
    pub to: Option<DateTime<Utc>>,
}

impl Validity {
    pub fn state_at(&self, now: DateTime<Utc>) -> ValidityState {
        if now < self.from {
            ValidityState::NotYetValid
        } else if self.to.is_some_and(|to| now >= to) {
            ValidityState::Ended
        } else {
            ValidityState::InForce
        }
    }

    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.state_at(now) == ValidityState::InForce
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidityState {
    NotYetValid,
    InForce,
    Ended,
}

/// The authority's agreement with STAR; its annex lists the suppliers
/// (data processors) it has engaged.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionAgreement {
    pub id: String,
    pub authority: AuthorityId,
    pub suppliers: BTreeSet<String>,
    pub validity: Validity,
}

/// The supplier's agreement with the authority, which is the data controller.
#[derive(Debug, Clone, PartialEq)]
pub struct DataProcessingAgreement {
    pub id: String,
    pub supplier: String,
    pub authority: AuthorityId,
    pub validity: Validity,
}

/// The supplier's agreement with STAR; lists the data areas it may fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct CooperationAgreement {
    pub id: String,
    pub supplier: String,
    pub areas: BTreeSet<String>,
    /// Areas whose test loads (`<area>.test`) it may fetch.
    pub test_areas: BTreeSet<String>,
    pub validity: Validity,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agreements {
    pub connection: Vec<ConnectionAgreement>,
    pub data_processing: Vec<DataProcessingAgreement>,
    pub cooperation: Vec<CooperationAgreement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgreementKind {
    Connection,
    DataProcessing,
    Cooperation,
}

impl fmt::Display for AgreementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgreementKind::Connection => "connection agreement",
            AgreementKind::DataProcessing => "data-processing agreement",
            AgreementKind::Cooperation => "cooperation agreement",
        })
    }
}

/// Why access is denied; one per missing condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No agreement of this kind covers the supplier (and authority/area).
    Missing(AgreementKind),
    NotYetValid {
        kind: AgreementKind,
        id: String,
        from: DateTime<Utc>,
    },
    Ended {
        kind: AgreementKind,
        id: String,
        to: DateTime<Utc>,
    },
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::Missing(kind) => write!(f, "no {kind}"),
            Denial::NotYetValid { kind, id, from } => {
                write!(f, "{kind} {id} is not valid before {}", from.to_rfc3339())
            }
            Denial::Ended { kind, id, to } => write!(f, "{kind} {id} ended {}", to.to_rfc3339()),
        }
    }
}

impl CooperationAgreement {
    /// Whether it covers `area`: a production area it lists, or the test
    /// loads (`<area>.test`) of an area it lists as a test subscription.
    pub fn lists(&self, area: &str) -> bool {
        match crate::lifecycle::base_of_test(area) {
            Some(base) => self.test_areas.contains(base),
            None => self.areas.contains(area),
        }
    }
}

impl Agreements {
    /// Decides one supplier's access to one authority's data area at `now`.
    /// On denial, every unmet condition is named.
    pub fn decide(
        &self,
        supplier: &str,
        authority: AuthorityId,
        area: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Vec<Denial>> {
        let denials: Vec<Denial> = [
            check(
                AgreementKind::Connection,
                self.connection
                    .iter()
                    .filter(|c| c.authority == authority && c.suppliers.contains(supplier))
                    .map(|c| (&c.id, c.validity)),
                now,
            ),
            check(
                AgreementKind::DataProcessing,
                self.data_processing
                    .iter()
                    .filter(|d| d.authority == authority && d.supplier == supplier)
                    .map(|d| (&d.id, d.validity)),
                now,
            ),
            check(
                AgreementKind::Cooperation,
                self.cooperation
                    .iter()
                    .filter(|c| c.supplier == supplier && c.lists(area))
                    .map(|c| (&c.id, c.validity)),
                now,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if denials.is_empty() {
            Ok(())
        } else {
            Err(denials)
        }
    }

    /// Everything the supplier may read at `now`: authority -> data areas.
    /// An authority appears only with at least one area.
    pub fn visible(
        &self,
        supplier: &str,
        now: DateTime<Utc>,
    ) -> BTreeMap<AuthorityId, BTreeSet<String>> {
        let areas: BTreeSet<String> = self
            .cooperation
            .iter()
            .filter(|c| c.supplier == supplier && c.validity.in_force(now))
            .flat_map(|c| {
                c.areas
                    .iter()
                    .cloned()
                    .chain(c.test_areas.iter().map(|a| crate::lifecycle::test_id(a)))
            })
            .collect();
        let mut out = BTreeMap::new();
        if areas.is_empty() {
            return out;
        }
        for c in &self.connection {
            if !c.suppliers.contains(supplier) || !c.validity.in_force(now) {
                continue;
            }
            let processing = self.data_processing.iter().any(|d| {
                d.authority == c.authority && d.supplier == supplier && d.validity.in_force(now)
            });
            if processing {
                out.insert(c.authority, areas.clone());
            }
        }
        out
    }
}

/// One condition: some matching agreement in force. If none is, the denial
/// names the candidate closest to being in force (so the explanation is useful).
fn check<'a>(
    kind: AgreementKind,
    candidates: impl Iterator<Item = (&'a String, Validity)>,
    now: DateTime<Utc>,
) -> Option<Denial> {
    let mut best: Option<Denial> = None;
    for (id, v) in candidates {
        match v.state_at(now) {
            ValidityState::InForce => return None,
            ValidityState::NotYetValid => {
                best = Some(Denial::NotYetValid {
                    kind,
                    id: id.clone(),
                    from: v.from,
                })
            }
            ValidityState::Ended => {
                // Prefer "not yet valid" (about to be fixed) over "ended".
                if !matches!(best, Some(Denial::NotYetValid { .. })) {
                    best = Some(Denial::Ended {
                        kind,
                        id: id.clone(),
                        to: v.to.expect("ended implies an end"),
                    });
                }
            }
        }
    }
    Some(best.unwrap_or(Denial::Missing(kind)))
}

#[cfg(test)]
mod tests;
