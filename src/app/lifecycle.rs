//! Areas through their lives in `serve`: at each planned instant what has
//! to happen happens without an operator: a first full load when an area's
//! test or production stage begins, its test loads taken out of the tree
//! once they have been kept long enough, and a retired area's loads taken
//! out after its notice period. Run with the schedules (and restarted with
//! them when a reload changes a lifecycle).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{LoadRequest, run_loads};
use crate::config::{Area, Config};
use crate::lifecycle::{self, Stage, Step};
use crate::tree::LoadKind;

/// The longest wait between looks, so a clock that jumps is noticed.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Runs until `stop`.
pub async fn run(config: Arc<Config>, stop: CancellationToken) {
    let mut since = Utc::now();
    for area in &config.areas {
        catch_up(&config, area).await;
    }
    remove_due(&config, since).await;
    loop {
        let next = config
            .areas
            .iter()
            .filter_map(|a| lifecycle::next_instant(a.lifecycle.as_ref()?, since))
            .min();
        let wait = next
            .and_then(|t| (t - Utc::now()).to_std().ok())
            .unwrap_or_default()
            .min(LONGEST_WAIT);
        let wait = if next.is_none() { LONGEST_WAIT } else { wait };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        // Test loads leave before production's first load arrives.
        remove_due(&config, now).await;
        for area in &config.areas {
            if let Some(l) = &area.lifecycle {
                for (at, step) in lifecycle::steps(l, since, now) {
                    take(&config, area, at, step).await;
                }
            }
        }
        since = now;
    }
}

/// A stage that began while `serve` was not running has its first full
/// load now, if it has none yet.
async fn catch_up(config: &Arc<Config>, area: &Area) {
    if area.lifecycle.is_none() {
        return;
    }
    let tree_name = match area.stage_at(Utc::now()) {
        Stage::Test => lifecycle::test_id(&area.id),
        Stage::Production => area.id.clone(),
        Stage::Planned | Stage::Retired => return,
    };
    let store = config.store();
    let empty = tokio::task::spawn_blocking(move || store.loads(&tree_name).map(|l| l.is_empty()))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false);
    if empty {
        // Any instant in the stage: a replica that catches up first loads.
        let since = match area.stage_at(Utc::now()) {
            Stage::Test => area.lifecycle.as_ref().and_then(|l| l.test_from),
            _ => area.lifecycle.as_ref().map(|l| l.production_from),
        };
        first_load(
            config,
            area,
            "lifecycle catch-up",
            since.unwrap_or_else(Utc::now),
        )
        .await;
    }
}

/// What happens at one step of an area's life.
async fn take(config: &Arc<Config>, area: &Area, at: DateTime<Utc>, step: Step) {
    let when = at.to_rfc3339();
    match step {
        Step::TestBegins => {
            tracing::info!(area = %area.id, at = when, "test stage begins: a first full test load");
            first_load(config, area, "test stage", at).await;
        }
        Step::ProductionBegins => {
            tracing::info!(area = %area.id, at = when, "production begins: a first full load");
            first_load(config, area, "production", at).await;
        }
        Step::Retired => {
            tracing::info!(area = %area.id, at = when, "retired: no more loads; its loads stay until removed_from");
        }
        // Taken by `remove_due`, which also catches up after a stop.
        Step::TestRemoved | Step::Removed => {}
    }
}

async fn first_load(config: &Config, area: &Area, trigger: &str, at: DateTime<Utc>) {
    let request = LoadRequest {
        area: Some(&area.id),
        kind: LoadKind::Full,
        trigger,
        progress: None,
        // Replicas all reach this step: one loads, the others find its load.
        for_tick: Some(at),
    };
    if let Err(e) = run_loads(config, request).await {
        tracing::error!(area = %area.id, error = %e, "the first full load of the stage failed; the area's schedule tries again");
    }
}

/// Takes out of the tree what should no longer be there at `now`: test
/// loads kept long enough, and the loads of an area past `removed_from`.
async fn remove_due(config: &Config, now: DateTime<Utc>) {
    let mut names = Vec::new();
    for area in &config.areas {
        let Some(l) = &area.lifecycle else { continue };
        let (test_gone, area_gone) = lifecycle::removed_at(l, now);
        if test_gone || area_gone {
            names.push(lifecycle::test_id(&area.id));
        }
        if area_gone {
            names.push(area.id.clone());
        }
    }
    if names.is_empty() {
        return;
    }
    let store = config.store();
    let removed = tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| {
                let r = store.remove_area(&name);
                (name, r)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (name, r) in removed {
        match r {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(area = %name, authorities = n, "lifecycle: the area's loads were taken out of the tree")
            }
            Err(e) => {
                tracing::error!(area = %name, error = %e, "lifecycle: could not take the area's loads out of the tree; tried again at the next look")
            }
        }
    }
}
