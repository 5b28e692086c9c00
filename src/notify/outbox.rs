//! Delivery of notifications through the state database's outbox: an event
//! is queued once per recipient that wants it, and `deliver` (run by
//! `serve`) posts what is due, retrying with backoff until the receiver
//! answers 2xx. A queued notification survives a restart of either side.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    Channel, DELIVERY_HEADER, Notice, SIGNATURE_HEADER, Smtp, mail_text, retry_delay, signature,
};
use crate::config::{Config, Live};
use crate::state::{Pending, State};

/// How often the outbox is checked for due notifications.
const POLL: Duration = Duration::from_secs(1);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a taken delivery is this process's: a process that dies while
/// sending leaves it to another replica after this (at least once; the
/// delivery header lets a receiver drop a repeat).
const CLAIM: Duration = Duration::from_secs(60);

/// Wakes `deliver` in this process when something was queued, so a notice
/// goes out at once rather than at the next poll (which still finds what
/// other processes queue, and what is due for a retry).
static QUEUED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Tells this process's `deliver` that a notification was queued.
pub fn queued() {
    QUEUED.notify_one();
}

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
    queued();
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
            _ = QUEUED.notified() => {}
        }
        let due = match state.notify_due(50).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "notifications: cannot read the outbox");
                continue;
            }
        };
        for n in due {
            // Replicas read the same outbox: the one that takes it sends it.
            match state.notify_claim(&n, CLAIM).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(delivery = n.id, error = %e, "notifications: cannot take a delivery");
                    continue;
                }
            }
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

/// One attempt: a signed POST to the recipient's webhook, or a mail.
async fn send(client: &reqwest::Client, config: &Config, n: &Pending) -> Result<(), String> {
    let Some(r) = config.notify.iter().find(|r| r.id == n.recipient) else {
        return Err("the recipient is no longer in the config".into());
    };
    match &r.channel {
        Channel::Webhook { url, secret } => post(client, url, secret, n).await?,
        Channel::Email { to } => {
            let smtp = config.smtp.as_ref().ok_or("no [smtp] in the config")?;
            mail(smtp, to, n).await?
        }
    }
    tracing::info!(recipient = %r.id, delivery = n.id, event = %n.event, "notification delivered");
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    n: &Pending,
) -> Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, n.body.as_bytes()))
        .header(DELIVERY_HEADER, n.id.to_string())
        .header("X-Udstil-Event", &n.event)
        .body(n.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {}", response.status()))
    }
}

/// Sends a notice as a plain-text mail, with STARTTLS required (no
/// credentials or mail go over an unencrypted connection).
async fn mail(smtp: &Smtp, to: &str, n: &Pending) -> Result<(), String> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let notice: Notice = serde_json::from_str(&n.body).map_err(|e| e.to_string())?;
    let (subject, text) = mail_text(&notice);
    let message = Message::builder()
        .from(smtp.from.parse().map_err(|e| format!("from: {e}"))?)
        .to(to.parse().map_err(|e| format!("to: {e}"))?)
        .subject(subject)
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| e.to_string())?;
    let mut tls = TlsParameters::builder(smtp.host.clone());
    if let Some(pem) = &smtp.ca_pem {
        tls = tls.add_root_certificate(Certificate::from_pem(pem).map_err(|e| e.to_string())?);
    }
    let tls = tls.build_rustls().map_err(|e| e.to_string())?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .tls(Tls::Required(tls))
        .timeout(Some(TIMEOUT));
    if let Some((user, password)) = &smtp.login {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
