use super::*;
use chrono::{Duration, TimeZone};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

const S: &str = "bi-alpha";
const OTHER: &str = "bi-other";

fn a() -> AuthorityId {
    "kommune/101".parse().unwrap()
}
fn b() -> AuthorityId {
    "kommune/147".parse().unwrap()
}

fn always() -> Validity {
    Validity {
        from: Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
        to: None,
    }
}

/// All three agreements in force for S with authorities A and B, areas joblog and plans.
fn base() -> Agreements {
    let mut ag = Agreements::default();
    for auth in [a(), b()] {
        ag.connection.push(ConnectionAgreement {
            id: format!("con-{}", auth.code),
            authority: auth,
            suppliers: [S.to_string(), OTHER.to_string()].into(),
            validity: always(),
        });
        ag.data_processing.push(DataProcessingAgreement {
            id: format!("dpa-{}", auth.code),
            supplier: S.into(),
            authority: auth,
            validity: always(),
        });
    }
    ag.cooperation.push(CooperationAgreement {
        id: "coop".into(),
        supplier: S.into(),
        areas: ["joblog".to_string(), "plans".to_string()].into(),
        test_areas: Default::default(),
        validity: always(),
    });
    ag
}

const NOW: &str = "2026-11-22T12:00:00Z";

enum Change {
    Remove,
    /// Validity window; checked at NOW.
    Window(&'static str, Option<&'static str>),
}

/// Applies `change` to the agreement of `kind` that concerns authority A
/// (the cooperation agreement is the supplier's only one).
fn with(kind: AgreementKind, change: Change) -> Agreements {
    let mut ag = base();
    let validity = |c: &Change| match c {
        Change::Remove => unreachable!(),
        Change::Window(from, to) => Validity {
            from: t(from),
            to: to.map(t),
        },
    };
    match (kind, &change) {
        (AgreementKind::Connection, Change::Remove) => ag.connection.retain(|c| c.authority != a()),
        (AgreementKind::DataProcessing, Change::Remove) => {
            ag.data_processing.retain(|d| d.authority != a())
        }
        (AgreementKind::Cooperation, Change::Remove) => ag.cooperation.clear(),
        (AgreementKind::Connection, c) => {
            ag.connection
                .iter_mut()
                .find(|x| x.authority == a())
                .unwrap()
                .validity = validity(c)
        }
        (AgreementKind::DataProcessing, c) => {
            ag.data_processing
                .iter_mut()
                .find(|x| x.authority == a())
                .unwrap()
                .validity = validity(c)
        }
        (AgreementKind::Cooperation, c) => ag.cooperation[0].validity = validity(c),
    }
    ag
}

/// The table's one helper: what S sees at `now`, and the denial for A/joblog.
fn check(ag: &Agreements, now: &str, visible: &[(AuthorityId, &[&str])], denial: Option<Denial>) {
    let now = t(now);
    let got = ag.visible(S, now);
    let want: BTreeMap<AuthorityId, BTreeSet<String>> = visible
        .iter()
        .map(|(auth, areas)| (*auth, areas.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(got, want, "visible at {now}");
    // `decide` must agree with `visible` for every authority and area.
    for auth in [a(), b()] {
        for area in ["joblog", "plans", "other"] {
            let allowed = want.get(&auth).is_some_and(|s| s.contains(area));
            assert_eq!(
                ag.decide(S, auth, area, now).is_ok(),
                allowed,
                "{auth} {area} at {now}"
            );
        }
    }
    match denial {
        None => assert!(ag.decide(S, a(), "joblog", now).is_ok()),
        Some(d) => assert_eq!(ag.decide(S, a(), "joblog", now), Err(vec![d])),
    }
}

const BOTH: &[&str] = &["joblog", "plans"];

#[test]
fn all_three_in_force_shows_everything_listed() {
    check(&base(), NOW, &[(a(), BOTH), (b(), BOTH)], None);
}

#[test]
fn each_agreement_missing_not_started_or_ended_hides_only_what_it_covers() {
    use AgreementKind::*;
    for kind in [Connection, DataProcessing] {
        let id = match kind {
            Connection => "con-101",
            _ => "dpa-101",
        };
        // Missing: A disappears, B stays.
        check(
            &with(kind, Change::Remove),
            NOW,
            &[(b(), BOTH)],
            Some(Denial::Missing(kind)),
        );

        // Not yet started: hidden one second before, visible at the instant.
        let ag = with(kind, Change::Window("2026-12-01T00:00:00Z", None));
        check(
            &ag,
            "2026-11-30T23:59:59Z",
            &[(b(), BOTH)],
            Some(Denial::NotYetValid {
                kind,
                id: id.into(),
                from: t("2026-12-01T00:00:00Z"),
            }),
        );
        check(
            &ag,
            "2026-12-01T00:00:00Z",
            &[(a(), BOTH), (b(), BOTH)],
            None,
        );

        // Ended: visible one second before the end, hidden at the end.
        let ag = with(
            kind,
            Change::Window("2020-01-01T00:00:00Z", Some("2026-11-22T12:00:00Z")),
        );
        check(
            &ag,
            "2026-11-22T11:59:59Z",
            &[(a(), BOTH), (b(), BOTH)],
            None,
        );
        check(
            &ag,
            "2026-11-22T12:00:00Z",
            &[(b(), BOTH)],
            Some(Denial::Ended {
                kind,
                id: id.into(),
                to: t("2026-11-22T12:00:00Z"),
            }),
        );
    }

    // The cooperation agreement is the supplier's own: without it nothing is visible.
    check(
        &with(Cooperation, Change::Remove),
        NOW,
        &[],
        Some(Denial::Missing(Cooperation)),
    );
    let ag = with(Cooperation, Change::Window("2026-12-01T00:00:00Z", None));
    check(
        &ag,
        "2026-11-30T23:59:59Z",
        &[],
        Some(Denial::NotYetValid {
            kind: Cooperation,
            id: "coop".into(),
            from: t("2026-12-01T00:00:00Z"),
        }),
    );
    check(
        &ag,
        "2026-12-01T00:00:00Z",
        &[(a(), BOTH), (b(), BOTH)],
        None,
    );
    let ag = with(
        Cooperation,
        Change::Window("2020-01-01T00:00:00Z", Some(NOW)),
    );
    let before = (t(NOW) - Duration::seconds(1)).to_rfc3339();
    check(&ag, &before, &[(a(), BOTH), (b(), BOTH)], None);
    check(
        &ag,
        NOW,
        &[],
        Some(Denial::Ended {
            kind: Cooperation,
            id: "coop".into(),
            to: t(NOW),
        }),
    );
}

#[test]
fn area_missing_from_cooperation_hides_just_that_area() {
    let mut ag = base();
    ag.cooperation[0].areas.remove("plans");
    check(&ag, NOW, &[(a(), &["joblog"]), (b(), &["joblog"])], None);
    assert_eq!(
        ag.decide(S, a(), "plans", t(NOW)),
        Err(vec![Denial::Missing(AgreementKind::Cooperation)])
    );
}

#[test]
fn supplier_not_listed_in_connection_annex_is_denied() {
    let mut ag = base();
    ag.connection[0].suppliers.remove(S);
    check(
        &ag,
        NOW,
        &[(b(), BOTH)],
        Some(Denial::Missing(AgreementKind::Connection)),
    );
}

#[test]
fn another_suppliers_agreements_give_nothing() {
    let ag = base();
    assert!(ag.visible(OTHER, t(NOW)).is_empty());
    assert_eq!(
        ag.decide(OTHER, a(), "joblog", t(NOW)),
        Err(vec![
            Denial::Missing(AgreementKind::DataProcessing),
            Denial::Missing(AgreementKind::Cooperation)
        ])
    );
}

#[test]
fn a_renewed_agreement_in_force_wins_over_an_ended_one() {
    let mut ag = base();
    let mut old = ag.data_processing[0].clone();
    old.id = "dpa-101-old".into();
    old.validity.to = Some(t("2021-01-01T00:00:00Z"));
    ag.data_processing.insert(0, old);
    check(&ag, NOW, &[(a(), BOTH), (b(), BOTH)], None);
}
