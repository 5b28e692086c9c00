//! Notifications: who is told of what. Pure here: the events, which
//! recipient wants which, the signed JSON body and the retry schedule.
//! `outbox.rs` delivers what the state database's outbox holds, so nothing
//! is lost across a restart or while a receiver is down.

pub mod outbox;

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a recipient can ask to be told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    LoadPublished,
    LoadFailed,
    IncidentOpened,
    IncidentUpdated,
    IncidentResolved,
    MaintenancePlanned,
    AgreementEnding,
    SupplierBehind,
    AccessChange,
    Announcement,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::LoadPublished,
        EventKind::LoadFailed,
        EventKind::IncidentOpened,
        EventKind::IncidentUpdated,
        EventKind::IncidentResolved,
        EventKind::MaintenancePlanned,
        EventKind::AgreementEnding,
        EventKind::SupplierBehind,
        EventKind::AccessChange,
        EventKind::Announcement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LoadPublished => "load_published",
            EventKind::LoadFailed => "load_failed",
            EventKind::IncidentOpened => "incident_opened",
            EventKind::IncidentUpdated => "incident_updated",
            EventKind::IncidentResolved => "incident_resolved",
            EventKind::MaintenancePlanned => "maintenance_planned",
            EventKind::AgreementEnding => "agreement_ending",
            EventKind::SupplierBehind => "supplier_behind",
            EventKind::AccessChange => "access_change",
            EventKind::Announcement => "announcement",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One thing that happened, as sent (no personal data: areas, load ids,
/// counts and error texts, which never hold row contents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub event: EventKind,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
    pub summary: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// The suppliers it concerns; empty for a notice about the platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppliers: Vec<String>,
}

/// A recipient of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub id: String,
    pub channel: Channel,
    pub events: std::collections::BTreeSet<EventKind>,
    /// `None`: every area.
    pub areas: Option<std::collections::BTreeSet<String>>,
    /// `agreement_ending`: this many days before an agreement ends.
    pub agreement_days: u32,
    /// `supplier_behind`: when a supplier lacks at least this many kept loads.
    pub behind_loads: u32,
    /// A supplier's own contact: told only of what concerns that supplier
    /// (and of notices about the platform as a whole). `None`: an operator.
    pub supplier: Option<String>,
}

/// How a recipient is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A signed POST to `url`.
    Webhook { url: String, secret: Vec<u8> },
    /// A mail to `to`, through `[smtp]`.
    Email { to: String },
}

/// The mail server notifications go through (`[smtp]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub from: String,
    /// Extra trusted certificate authorities (PEM).
    pub ca_pem: Option<Vec<u8>>,
    pub login: Option<(String, String)>,
}

/// A notice as a mail: subject and plain-text body.
pub fn mail_text(notice: &Notice) -> (String, String) {
    let subject = match &notice.area {
        Some(area) => format!("[udstil] {}: {area}", notice.event.as_str()),
        None => format!("[udstil] {}", notice.event.as_str()),
    };
    let mut body = format!("{}\n\n{}\n", notice.summary, notice.at);
    if !notice.details.is_null() {
        body.push('\n');
        body.push_str(&serde_json::to_string_pretty(&notice.details).expect("serialises"));
        body.push('\n');
    }
    (subject, body)
}

impl Recipient {
    pub fn wants(&self, notice: &Notice) -> bool {
        self.events.contains(&notice.event)
            && match (&self.areas, &notice.area) {
                (None, _) | (_, None) => true,
                (Some(areas), Some(area)) => areas.contains(area),
            }
            && match &self.supplier {
                None => true,
                Some(s) => notice.suppliers.is_empty() || notice.suppliers.contains(s),
            }
    }
}

/// The header value signing `body`: `sha256=<hex HMAC-SHA256>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// An agreement that ends within `within` of `now`: its id, kind, parties
/// and end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub id: String,
    pub kind: &'static str,
    pub parties: String,
    /// The suppliers party to it.
    pub suppliers: Vec<String>,
    pub end: DateTime<Utc>,
}

/// The agreements that end after `now` but within `within`.
pub fn agreements_ending(
    agreements: &crate::access::Agreements,
    now: DateTime<Utc>,
    within: chrono::Duration,
) -> Vec<Ending> {
    let soon = |v: &crate::access::Validity| v.to.filter(|t| *t >= now && *t - now <= within);
    let mut out = Vec::new();
    for a in &agreements.connection {
        if let Some(end) = soon(&a.validity) {
            out.push(Ending {
                id: a.id.clone(),
                kind: "connection",
                parties: format!(
                    "{} with {}",
                    a.authority,
                    a.suppliers.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                suppliers: a.suppliers.iter().cloned().collect(),
                end,
            });
        }
    }
    for a in &agreements.data_processing {
        if let Some(end) = soon(&a.validity) {
            out.push(Ending {
                id: a.id.clone(),
                kind: "data_processing",
                parties: format!("{} with {}", a.supplier, a.authority),
                suppliers: vec![a.supplier.clone()],
                end,
            });
        }
    }
    for a in &agreements.cooperation {
        if let Some(end) = soon(&a.validity) {
            out.push(Ending {
                id: a.id.clone(),
                kind: "cooperation",
                parties: format!("{} with STAR", a.supplier),
                suppliers: vec![a.supplier.clone()],
                end,
            });
        }
    }
    out
}

/// The name of the signature header.
pub const SIGNATURE_HEADER: &str = "X-Udstil-Signature";
/// The header naming the delivery (the outbox row), the same on every retry,
/// so a receiver can drop a repeat.
pub const DELIVERY_HEADER: &str = "X-Udstil-Delivery";

/// How long to wait before attempt `attempts + 1`: 1 s doubling to 5 min.
pub fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: EventKind, area: Option<&str>) -> Notice {
        Notice {
            event,
            at: "2026-12-05T02:00:00Z".into(),
            area: area.map(str::to_string),
            summary: "x".into(),
            details: serde_json::Value::Null,
            suppliers: Vec::new(),
        }
    }

    #[test]
    fn recipients_get_the_events_and_areas_they_asked_for() {
        let r = Recipient {
            id: "ops".into(),
            channel: Channel::Email {
                to: "drift@example.dk".into(),
            },
            events: [EventKind::LoadFailed].into(),
            areas: Some(["joblog".to_string()].into()),
            agreement_days: 30,
            behind_loads: 3,
            supplier: None,
        };
        assert!(r.wants(&notice(EventKind::LoadFailed, Some("joblog"))));
        assert!(!r.wants(&notice(EventKind::LoadFailed, Some("plans"))));
        assert!(!r.wants(&notice(EventKind::LoadPublished, Some("joblog"))));
        let all = Recipient { areas: None, ..r };
        assert!(all.wants(&notice(EventKind::LoadFailed, Some("plans"))));
    }

    #[test]
    fn a_suppliers_contact_gets_only_what_concerns_that_supplier() {
        let alpha = Recipient {
            id: "alpha".into(),
            channel: Channel::Email {
                to: "drift@alpha.example".into(),
            },
            events: [EventKind::AccessChange, EventKind::IncidentOpened].into(),
            areas: None,
            agreement_days: 30,
            behind_loads: 3,
            supplier: Some("bi-alpha".into()),
        };
        let about = |suppliers: &[&str]| Notice {
            suppliers: suppliers.iter().map(|s| s.to_string()).collect(),
            ..notice(EventKind::AccessChange, Some("joblog"))
        };
        assert!(alpha.wants(&about(&["bi-alpha"])));
        assert!(alpha.wants(&about(&["bi-beta", "bi-alpha"])));
        assert!(!alpha.wants(&about(&["bi-beta"])));
        // A notice about the platform reaches every contact that asked for it.
        assert!(alpha.wants(&notice(EventKind::IncidentOpened, None)));
        let operator = Recipient {
            supplier: None,
            ..alpha
        };
        assert!(operator.wants(&about(&["bi-beta"])));
    }

    #[test]
    fn agreements_that_end_soon_are_found() {
        use crate::access::{Agreements, CooperationAgreement, Validity};
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap();
        let ends = |days: i64| CooperationAgreement {
            id: format!("sup-{days}"),
            supplier: "bi-alpha".into(),
            areas: Default::default(),
            test_areas: Default::default(),
            validity: Validity {
                from: now - chrono::Duration::days(400),
                to: Some(now + chrono::Duration::days(days)),
            },
        };
        let a = Agreements {
            cooperation: vec![ends(-1), ends(10), ends(40)],
            ..Default::default()
        };
        let found = agreements_ending(&a, now, chrono::Duration::days(30));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].id.as_str(), found[0].kind),
            ("sup-10", "cooperation")
        );
        assert_eq!(found[0].parties, "bi-alpha with STAR");
    }

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off_to_five_minutes() {
        let d: Vec<u64> = (0..12).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
