//! The notifications nothing else raises: an agreement about to end, a
//! supplier about to gain or lose access, a supplier falling behind, and an
//! announcement that is new or changed (looked for whenever the config,
//! with its announcements file, is reloaded). `serve` checks shortly after its start and then
//! every hour; each is sent once per recipient (per day, for a supplier
//! behind), as the state database records what was sent.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Live};
use crate::notify::{EventKind, Notice, Recipient, agreements_ending};
use crate::state::State;

/// How often the watch looks.
const EVERY: Duration = Duration::from_secs(3600);
/// The first look, once the server has settled.
const FIRST: Duration = Duration::from_secs(2);

/// How often the watch checks whether the config was reloaded.
const RELOADED: Duration = Duration::from_millis(250);

/// Runs the watch until `stop`.
pub async fn watch_notices(live: Arc<Live>, state: State, stop: CancellationToken) {
    let mut next_look = tokio::time::Instant::now() + FIRST;
    let mut generation = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELOADED) => {}
        }
        let config = live.get();
        if generation != Some(live.generation()) {
            generation = Some(live.generation());
            announcements(&config, &state).await;
        }
        if tokio::time::Instant::now() < next_look {
            continue;
        }
        next_look = tokio::time::Instant::now() + EVERY;
        // A stop does not wait for a pass (the ledger can take a while).
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = look(&config, &state) => {}
        }
    }
}

/// Each announcement to every recipient that wants it: an operator hears
/// of all, a supplier's contact of those whose areas its agreements cover.
/// Sent once per version of its text (an edited announcement is news).
async fn announcements(config: &Config, state: &State) {
    let now = Utc::now();
    for a in &config.announcements {
        let digest = {
            use sha2::Digest;
            let text = serde_json::to_vec(a).expect("serialises");
            hex::encode(&sha2::Sha256::digest(&text)[..8])
        };
        let suppliers: Vec<String> =
            crate::announce::suppliers_concerned(a, &config.agreements, now)
                .into_iter()
                .collect();
        let notice = Notice {
            event: EventKind::Announcement,
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            area: (a.areas.len() == 1)
                .then(|| a.areas.iter().next().cloned())
                .flatten(),
            summary: format!("{}: {}", a.kind.label(false), a.title),
            details: serde_json::json!({
                "announcement": a,
                "file": format!("/{}/{}", crate::announce::FOLDER, a.file_name()),
                "markdown": a.markdown(),
            }),
            suppliers,
        };
        for r in config
            .notify
            .iter()
            .filter(|r| r.events.contains(&EventKind::Announcement))
        {
            // An empty list here means no supplier is concerned, not all.
            if r.supplier.is_some() && notice.suppliers.is_empty() {
                continue;
            }
            let key = format!("announcement:{}:{}:{digest}", r.id, a.id);
            send_once(state, r, &key, &notice).await;
        }
    }
}

/// One pass: every recipient's agreements about to end and suppliers behind.
async fn look(config: &Config, state: &State) {
    let wanted = |k: EventKind| config.notify.iter().filter(move |r| r.events.contains(&k));
    for r in wanted(EventKind::AgreementEnding) {
        agreements(config, state, r).await;
    }
    for r in wanted(EventKind::AccessChange) {
        access_changes(config, state, r).await;
    }
    // The ledger reads every kept manifest: only built when someone wants it.
    if wanted(EventKind::SupplierBehind).next().is_some() {
        let filter = super::LedgerFilter::default();
        match super::ledger_on(config, state, &filter).await {
            Ok(entries) => {
                for r in wanted(EventKind::SupplierBehind) {
                    behind(state, r, &entries).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "notifications: cannot build the delivery ledger"),
        }
    }
}

async fn agreements(config: &Config, state: &State, r: &Recipient) {
    let now = Utc::now();
    let within = chrono::Duration::days(r.agreement_days.into());
    for e in agreements_ending(&config.agreements, now, within) {
        let key = format!("agreement_ending:{}:{}:{}", r.id, e.id, e.end.to_rfc3339());
        let notice = Notice {
            event: EventKind::AgreementEnding,
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            area: None,
            summary: format!(
                "the {} agreement {} ({}) ends at {}",
                e.kind.replace('_', "-"),
                e.id,
                e.parties,
                e.end
                    .with_timezone(&chrono_tz::Europe::Copenhagen)
                    .format("%Y-%m-%d %H:%M (Danish time)")
            ),
            details: serde_json::json!({ "agreement": e.id, "kind": e.kind, "ends": e.end.to_rfc3339() }),
            suppliers: e.suppliers.clone(),
        };
        send_once(state, r, &key, &notice).await;
    }
}

/// Each gain or loss of access within the recipient's `agreement_days`:
/// the operator hears of all, a supplier's contact of its own.
async fn access_changes(config: &Config, state: &State, r: &Recipient) {
    let now = Utc::now();
    let until = now + chrono::Duration::days(r.agreement_days.into());
    for c in crate::config::report::planned_changes(config, now, until) {
        let key = format!(
            "access_change:{}:{}:{}:{}:{}:{}",
            r.id,
            c.supplier,
            c.authority,
            c.area,
            c.gained,
            c.at.to_rfc3339()
        );
        let notice = Notice {
            event: EventKind::AccessChange,
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            area: Some(c.area.clone()),
            summary: format!(
                "{} {} {}/{} at {} ({})",
                c.supplier,
                if c.gained { "gains" } else { "loses" },
                c.authority,
                c.area,
                c.at.with_timezone(&chrono_tz::Europe::Copenhagen)
                    .format("%Y-%m-%d %H:%M (Danish time)"),
                c.reasons.join("; ")
            ),
            details: serde_json::to_value(&c).expect("serialises"),
            suppliers: vec![c.supplier.clone()],
        };
        send_once(state, r, &key, &notice).await;
    }
}

async fn behind(state: &State, r: &Recipient, entries: &[crate::ledger::Entry]) {
    let now = Utc::now();
    let mut per_supplier: std::collections::BTreeMap<&str, usize> = Default::default();
    for e in entries {
        *per_supplier.entry(e.supplier.as_str()).or_default() += e.not_fetched.len();
    }
    for (supplier, n) in per_supplier {
        if n < r.behind_loads as usize {
            continue;
        }
        let key = format!("supplier_behind:{}:{supplier}:{}", r.id, now.date_naive());
        let notice = Notice {
            event: EventKind::SupplierBehind,
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            area: None,
            summary: format!(
                "{supplier} lacks {n} kept loads (udstil ledger --supplier {supplier})"
            ),
            details: serde_json::json!({ "supplier": supplier, "not_fetched": n }),
            suppliers: vec![supplier.to_string()],
        };
        send_once(state, r, &key, &notice).await;
    }
}

/// Queues `notice` for `r` unless `key` was sent before (or the notice is
/// about another supplier than the recipient's own).
async fn send_once(state: &State, r: &Recipient, key: &str, notice: &Notice) {
    if !r.wants(notice) {
        return;
    }
    match state.notify_once(key).await {
        Ok(true) => {
            let body = serde_json::to_string(notice).expect("a notice serialises");
            if let Err(e) = state
                .notify_enqueue(&r.id, notice.event.as_str(), &body)
                .await
            {
                tracing::error!(recipient = %r.id, error = %e, "cannot queue a notification");
            }
            crate::notify::outbox::queued();
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "notifications: cannot record what was sent"),
    }
}
