//! The read-only HTTP side (`[http] listen`), on axum: `/healthz` (the
//! process answers), `/readyz` (the tree is readable and the state database
//! answers; DFDG is not asked, as serving does not depend on it) and
//! `/metrics` (Prometheus text format). Nothing here changes state.

use std::sync::Arc;

mod status;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Live;
use crate::metrics::{self, AreaLabel};
use crate::sftp::Shared;
use crate::state::State;
use crate::tree::LoadId;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// How often the per-supplier ledger gauge is recomputed: it reads every
/// kept manifest of the areas suppliers may read.
const LEDGER_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What the endpoints look at.
#[derive(Clone)]
pub struct Views {
    pub config: Arc<Live>,
    pub state: Option<State>,
    pub sftp: Arc<Shared>,
    /// When the ledger gauge was last computed.
    pub ledger_at: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
}

pub fn router(views: Views) -> Router {
    Router::new()
        .route("/", get(status::html))
        .route("/feed.atom", get(status::atom))
        .route("/api/status.json", get(status::json))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(views)
}

/// Binds the listener (so a port in use fails the start, not later).
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until `stop` is cancelled; requests under way finish.
pub async fn serve(
    listener: TcpListener,
    views: Views,
    stop: CancellationToken,
) -> Result<(), HttpError> {
    axum::serve(listener, router(views))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(HttpError::Serve)
}

/// 200 when the tree can be listed and the state database answers; 503
/// naming what failed otherwise.
async fn readyz(Extract(views): Extract<Views>) -> impl IntoResponse {
    let mut failed = Vec::new();
    let store = views.config.get().store();
    match tokio::task::spawn_blocking(move || store.authorities()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => failed.push(format!("tree: {e}")),
        Err(e) => failed.push(format!("tree: {e}")),
    }
    if let Some(state) = &views.state
        && let Err(e) = state.ping().await
    {
        failed.push(format!("state database: {e}"));
    }
    if failed.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        tracing::warn!(failed = %failed.join("; "), "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failed.join("; ")),
        )
    }
}

async fn metrics(Extract(views): Extract<Views>) -> impl IntoResponse {
    refresh(&views).await;
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        metrics::get().encode(),
    )
}

/// Sets the gauges that are read at scrape time: open sessions, and per
/// area the published watermark and the age of the newest load, from the
/// state database (so loads run by another process or replica count too),
/// or from the tree when there is none.
async fn refresh(views: &Views) {
    let m = metrics::get();
    m.sessions.set(views.sftp.sessions_open() as i64);
    let config = views.config.get();
    refresh_ledger(views, &config).await;
    let now = chrono::Utc::now();
    for area in &config.areas {
        let schedules: Vec<&cron::Schedule> = [&area.schedule_delta, &area.schedule_full]
            .into_iter()
            .flatten()
            .collect();
        if let Some(gap) = crate::schedule::longest_gap(&schedules, now) {
            m.schedule_gap
                .get_or_create(&AreaLabel {
                    area: area.id.clone(),
                })
                .set(gap.as_secs_f64());
        }
        let latest = match &views.state {
            Some(state) => match state.watermark(&area.id, area.version).await {
                Ok(w) => w.and_then(|(wm, id)| Some((wm, LoadId::parse(&id)?))),
                Err(e) => {
                    tracing::warn!(area = %area.id, error = %e, "metrics: cannot read the watermark");
                    continue;
                }
            },
            None => {
                let (config, id) = (config.clone(), area.id.clone());
                tokio::task::spawn_blocking(move || {
                    let area = config.area(&id)?;
                    let loads = crate::load::latest_loads(&config.store(), area).ok()?;
                    loads.into_values().max().map(|(id, wm)| (wm, id))
                })
                .await
                .ok()
                .flatten()
            }
        };
        let Some((watermark, id)) = latest else {
            continue;
        };
        let label = AreaLabel {
            area: area.id.clone(),
        };
        m.watermark.get_or_create(&label).set(watermark);
        m.last_load
            .get_or_create(&label)
            .set(id.at.timestamp() as f64);
        m.data_age
            .get_or_create(&label)
            .set((now - id.at).num_milliseconds() as f64 / 1000.0);
    }
}

/// Sets `udstil_supplier_loads_behind` from the delivery ledger, at most
/// once a minute (concurrent scrapes wait for the one computing it).
async fn refresh_ledger(views: &Views, config: &crate::config::Config) {
    let Some(state) = &views.state else { return };
    let mut at = views.ledger_at.lock().await;
    if at.is_some_and(|t| t.elapsed() < LEDGER_EVERY) {
        return;
    }
    *at = Some(std::time::Instant::now());
    let filter = crate::app::LedgerFilter::default();
    let entries = match crate::app::ledger_on(config, state, &filter).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot build the delivery ledger");
            return;
        }
    };
    let mut behind: std::collections::BTreeMap<&str, i64> =
        config.suppliers.keys().map(|s| (s.as_str(), 0)).collect();
    for e in &entries {
        if let Some(n) = behind.get_mut(e.supplier.as_str()) {
            *n += e.not_fetched.len() as i64;
        }
    }
    let m = metrics::get();
    for (supplier, n) in behind {
        m.loads_behind
            .get_or_create(&metrics::SupplierLabel {
                supplier: supplier.to_string(),
            })
            .set(n);
    }
}
