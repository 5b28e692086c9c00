//! Delivery of notifications through the state database's outbox: an event
//! is queued once per recipient that wants it, and `deliver` (run by
//! `serve`) posts what is due, retrying with backoff until the receiver
//! answers 2xx. A queued notification survives a restart of either side.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DELIVERY_HEADER, Notice, SIGNATURE_HEADER, retry_delay, signature};
use crate::config::{Config, Live};
use crate::state::{Pending, State};

/// How often the outbox is checked for due notifications.
const POLL: Duration = Duration::from_secs(1);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Queues `notice` for every recipient that wants it. A state database
/// that cannot take it is logged: the event itself has happened anyway.
pub async fn enqueue(config: &Config, state: &State, notice: &Notice) {
    let body = serde_json::to_string(notice).expect("a notice serialises");
    for r in config.notify.iter().filter(|r| r.wants(notice)) {
        if let Err(e) = state
            .notify_enqueue(&r.id, notice.event.as_str(), &body)
            .await
        {
            tracing::error!(recipient = %r.id, event = notice.event.as_str(), error = %e, "cannot queue a notification");
        }
    }
}

/// Posts due notifications until `stop`.
pub async fn deliver(live: Arc<Live>, state: State, stop: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notifications: cannot make an HTTP client");
            return;
        }
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = match state.notify_due(50).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "notifications: cannot read the outbox");
                continue;
            }
        };
        for n in due {
            let config = live.get();
            let sent = tokio::select! {
                _ = stop.cancelled() => return,
                sent = send(&client, &config, &n) => sent,
            };
            let recorded = match sent {
                Ok(()) => state.notify_delivered(n.id).await,
                Err(why) => {
                    let wait = retry_delay(n.attempts.clamp(0, 32) as u32);
                    tracing::warn!(recipient = %n.recipient, delivery = n.id, attempt = n.attempts + 1, retry_s = wait.as_secs(), error = %why, "notification not delivered; will retry");
                    state.notify_failed(n.id, wait, &why).await
                }
            };
            if let Err(e) = recorded {
                tracing::warn!(delivery = n.id, error = %e, "notifications: cannot record a delivery");
            }
        }
    }
}

/// One attempt: a signed POST to the recipient's webhook.
async fn send(client: &reqwest::Client, config: &Config, n: &Pending) -> Result<(), String> {
    let Some(r) = config.notify.iter().find(|r| r.id == n.recipient) else {
        return Err("the recipient is no longer in the config".into());
    };
    let response = client
        .post(&r.webhook)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(&r.secret, n.body.as_bytes()))
        .header(DELIVERY_HEADER, n.id.to_string())
        .header("X-Udstil-Event", &n.event)
        .body(n.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        tracing::info!(recipient = %r.id, delivery = n.id, event = %n.event, "notification delivered");
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}
