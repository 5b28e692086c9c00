//! Running loads: on request or on their schedules, each recorded in the
//! state database with an audit event; reconciling the state with the tree
//! after a stop or crash; the audit trail's upkeep.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use super::AppError;
use crate::audit::{self, Action, Event};
use crate::config::{self, Config, Live};
use crate::load::{self, LoadError, LoadReport};
use crate::source::Source;
use crate::state::State;
use crate::tree::LoadKind;

/// Opens the state database if one is configured. The tree is the truth, so
/// loads go on without it; the problem is logged.
async fn open_state(config: &Config) -> Option<State> {
    let url = config.state_url.as_ref()?;
    match State::open(url).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "state database unavailable; loads are not recorded");
            None
        }
    }
}

/// Which loads to run and why; the trigger is recorded with each run.
pub struct LoadRequest<'a> {
    /// One area, or every area when `None`.
    pub area: Option<&'a str>,
    pub kind: LoadKind,
    /// `manual`, `schedule`, ...: recorded with each run.
    pub trigger: &'a str,
    /// Counts the rows read, for a progress display.
    pub progress: Option<load::Progress>,
    /// The scheduled instant this run is for. Replicas run the same
    /// schedules: the one that gets an area's lease first loads; the
    /// others wait for the lease and then find a load published since this
    /// instant, and do nothing. `None` (an operator's load): runs, or fails
    /// at once as busy while another load of the area runs.
    pub for_tick: Option<chrono::DateTime<Utc>>,
}

impl<'a> LoadRequest<'a> {
    /// An operator's load (`udstil load`, the demo): trigger `manual`.
    pub fn manual(kind: LoadKind, area: Option<&'a str>) -> Self {
        LoadRequest {
            area,
            kind,
            trigger: "manual",
            progress: None,
            for_tick: None,
        }
    }

    /// A manual full load of one area, or of every area.
    pub fn full(area: Option<&'a str>) -> Self {
        Self::manual(LoadKind::Full, area)
    }

    /// A manual delta load of one area, or of every area.
    pub fn delta(area: Option<&'a str>) -> Self {
        Self::manual(LoadKind::Delta, area)
    }
}

/// Runs the requested loads, one area after another, each recorded in the
/// state database (when there is one) with its outcome and an audit event;
/// stops at the first failure.
pub async fn run_loads(
    config: &Config,
    request: LoadRequest<'_>,
) -> Result<Vec<LoadReport>, AppError> {
    let (kind, trigger) = (request.kind, request.trigger);
    let requested: Vec<&config::Area> = match request.area {
        Some(id) => vec![
            config
                .area(id)
                .ok_or_else(|| AppError::UnknownArea(id.into()))?,
        ],
        None => config.areas.iter().collect(),
    };
    let owned = loading_now(requested, &request)?;
    let areas: Vec<&config::Area> = owned.iter().collect();
    let state = open_state(config).await;
    // On PostgreSQL the state database is what keeps replicas from loading
    // the same area at once: without it, no load.
    if state.is_none()
        && config
            .state_url
            .as_deref()
            .is_some_and(|u| !u.starts_with("sqlite:"))
    {
        return Err(AppError::NoCoordination);
    }
    let mut reports = Vec::new();
    let mut failure = None;
    // Areas in order, one connection per run of areas on the same DFDG
    // (test loads may come from a test source).
    let mut connected: Option<(String, Source)> = None;
    for area in &areas {
        let url = source_of(config, area);
        if connected.as_ref().is_none_or(|(u, _)| *u != url) {
            if let Some((_, old)) = connected.take() {
                old.close().await;
            }
            match Source::connect(&url).await {
                Ok(source) => connected = Some((url, source)),
                Err(e) => {
                    crate::metrics::get().set_source_up(false);
                    failure = Some(AppError::Source(e));
                    break;
                }
            }
        }
        let (_, source) = connected.as_ref().expect("connected above");
        let lease = match lease(config, state.as_ref(), area, &request).await {
            Ok(Leased::Run(lease)) => lease,
            Ok(Leased::Done) => continue,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        // Under the lease: replicas waiting for it do not touch the area.
        if let Some(s) = &state {
            record_unrecorded_loads(config, &[*area], s).await;
        }
        let result = run_one(config, source, state.as_ref(), area, &request).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        match result {
            Ok(r) => reports.push(r),
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        }
    }
    if let Some((_, source)) = connected {
        source.close().await;
    }
    if let Some(s) = &state
        && !reports.is_empty()
    {
        index_persons(config, &areas, s).await;
    }
    if let Some(s) = state {
        // A source that could not be reached is a failed run of every area asked for.
        if let Some(AppError::Source(e)) = &failure {
            for area in &areas {
                if let Ok(id) = s.load_started(&area.id, area.version, kind, trigger).await {
                    let _ = s.load_failed(id, &e.to_string()).await.map_err(log_state);
                }
            }
        }
        s.close().await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

enum Leased {
    /// This process runs the load, holding the lease (none without a state database).
    Run(Option<crate::state::AreaLease>),
    /// Another replica already published a load for the scheduled instant.
    Done,
}

/// Takes the area's lease among replicas (waiting for it for a scheduled
/// run, failing as busy for an operator's), then checks the tree: a load
/// published since the scheduled instant means another replica ran it.
async fn lease(
    config: &Config,
    state: Option<&State>,
    area: &config::Area,
    request: &LoadRequest<'_>,
) -> Result<Leased, AppError> {
    let lease = match state {
        Some(s) => match s.area_lease(&area.id, request.for_tick.is_some()).await? {
            Some(lease) => Some(lease),
            None => {
                return Err(AppError::Load(LoadError::Busy {
                    area: area.id.clone(),
                }));
            }
        },
        None => None,
    };
    if let Some(tick) = request.for_tick {
        // A load a dead replica left staged is finished (or discarded)
        // first, so one it had all but published counts as the tick's. (A
        // lease dropped on an error closes its connection, which frees it.)
        let (store, twin, kind) = (config.store(), area.clone(), request.kind);
        let done = tokio::task::spawn_blocking(move || {
            // The tree's lock may be held for a moment by a replica starting
            // up (it records what is published); wait for it, briefly.
            let mut tries = 0;
            loop {
                match load::lock_area(&store, &twin) {
                    Err(LoadError::Busy { .. }) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    held => break drop(held?),
                }
            }
            load::published_since(&store, &twin.id, kind, tick).map_err(|source| LoadError::Io {
                area: twin.id.clone(),
                path: store.root().to_path_buf(),
                source,
            })
        })
        .await
        .unwrap_or(Ok(false))?;
        // The state database too: on a shared file system a replica may see
        // another's new load a moment late.
        let done = done
            || match state {
                Some(s) => s.published_since(&area.id, request.kind, tick).await?,
                None => false,
            };
        if done {
            tracing::info!(area = %area.id, kind = request.kind.as_str(), tick = %tick.to_rfc3339(),
                "another replica published this scheduled load; nothing to do");
            if let Some(lease) = lease {
                lease.release().await;
            }
            return Ok(Leased::Done);
        }
    }
    Ok(Leased::Run(lease))
}

/// The areas of a request as they load now: an area in its test stage as
/// its test twin; one planned or retired left out, or refused when an
/// operator asked for it by name.
fn loading_now(
    requested: Vec<&config::Area>,
    request: &LoadRequest<'_>,
) -> Result<Vec<config::Area>, AppError> {
    use crate::lifecycle::Stage;
    let now = Utc::now();
    let mut out = Vec::new();
    for area in requested {
        match area.stage_at(now) {
            Stage::Production => out.push(area.clone()),
            Stage::Test => out.push(area.test_twin()),
            stage if request.area.is_some() && request.trigger == "manual" => {
                return Err(AppError::NotLoading {
                    area: area.id.clone(),
                    stage: stage.as_str(),
                });
            }
            stage => {
                tracing::debug!(area = %area.id, stage = stage.as_str(), "no loads in this stage");
            }
        }
    }
    Ok(out)
}

/// The DFDG an area's loads come from: its test source for test loads, if it has one.
fn source_of(config: &Config, area: &config::Area) -> String {
    area.is_test()
        .then(|| area.lifecycle.as_ref()?.test_source.clone())
        .flatten()
        .unwrap_or_else(|| config.source_url.clone())
}

/// One load of one area, recorded: its run in the state database (started,
/// then published or failed), and its audit event. The area's lock is held
/// until the run is recorded, so no other process records it as a load
/// published before a crash.
async fn run_one(
    config: &Config,
    source: &Source,
    state: Option<&State>,
    area: &config::Area,
    request: &LoadRequest<'_>,
) -> Result<LoadReport, LoadError> {
    let (kind, trigger, progress) = (request.kind, request.trigger, request.progress.as_ref());
    let run = match state {
        Some(s) => s
            .load_started(&area.id, area.version, kind, trigger)
            .await
            .map_err(log_state)
            .ok(),
        None => None,
    };
    let result = match load::lock_area(&config.store(), area) {
        Err(e) => Err(e),
        Ok(held) => {
            let r = match kind {
                LoadKind::Full => load::full_load(config, source, area, &held, progress).await,
                LoadKind::Delta => load::delta_load(config, source, area, &held, progress).await,
            };
            if let Ok(r) = &r {
                recorded(state, run, area, r, trigger).await;
                if let Some(change) = &r.new_version {
                    write_version_draft(config, area, change);
                }
            }
            r
        }
    };
    if let (Some(s), Some(id), Err(e)) = (state, run, &result) {
        let _ = s.load_failed(id, &e.to_string()).await.map_err(log_state);
    }
    count_load(area, kind, &result);
    if let Some(s) = state {
        crate::notify::outbox::enqueue(config, s, &notice(area, kind, &result)).await;
    }
    result
}

/// Where the draft announcement of a new version goes: a folder beside the
/// config, never read by udstil itself.
pub fn drafts_dir(config: &Config) -> std::path::PathBuf {
    let dir = config.file.parent().unwrap_or(std::path::Path::new("."));
    dir.join("announcement-drafts")
}

/// Writes the draft announcement of a new version of `area` for the
/// operator to edit and add to the announcements file; a failure is logged.
fn write_version_draft(
    config: &Config,
    area: &config::Area,
    change: &crate::load::version::SchemaChange,
) {
    let dir = drafts_dir(config);
    let path = dir.join(format!("{}-v{}.toml", area.id, change.to_version));
    let text = crate::announce::version_draft(&area.id, change);
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => {
            tracing::info!(area = %area.id, version = change.to_version, path = %path.display(),
            "a new version began: a draft announcement of what changed is ready to edit and publish")
        }
        Err(e) => tracing::warn!(area = %area.id, path = %path.display(), error = %e,
            "could not write the draft announcement of the new version"),
    }
}

/// What the notification recipients are told of a load.
fn notice(
    area: &config::Area,
    kind: LoadKind,
    result: &Result<LoadReport, LoadError>,
) -> crate::notify::Notice {
    use crate::notify::{EventKind, Notice};
    let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match result {
        Ok(r) => Notice {
            event: EventKind::LoadPublished,
            at,
            area: Some(area.id.clone()),
            summary: r.to_string(),
            details: serde_json::json!({
                "kind": kind.as_str(),
                "load_id": r.load_id.to_string(),
                "version": area.version,
                "authorities": r.authorities,
                "rows_written": r.rows_written,
                "watermark_to": r.watermark_to,
                "new_version": r.new_version,
            }),
            suppliers: Vec::new(),
        },
        Err(e) => Notice {
            event: EventKind::LoadFailed,
            at,
            area: Some(area.id.clone()),
            summary: format!("{} load of {} failed: {e}", kind.as_str(), area.id),
            details: serde_json::json!({ "kind": kind.as_str(), "version": area.version }),
            suppliers: Vec::new(),
        },
    }
}

/// The load's metrics: its outcome, and for a published load its duration
/// and size. (The area's watermark and age are read at scrape time from the
/// state database, which also sees loads of other processes.)
fn count_load(area: &config::Area, kind: LoadKind, result: &Result<LoadReport, LoadError>) {
    use crate::metrics::LoadLabels;
    let m = crate::metrics::get();
    m.load_ended(&area.id, kind.as_str(), result.is_ok());
    // A source that cannot be reached, not one that refuses a query (a
    // missing table is the config's or DFDG's fault, not the network's).
    if let Err(LoadError::Source { source, .. }) = result
        && source.is_unreachable()
    {
        m.set_source_up(false);
    }
    let Ok(r) = result else { return };
    m.set_source_up(true);
    let labels = LoadLabels {
        area: area.id.clone(),
        kind: kind.as_str(),
    };
    m.load_seconds
        .get_or_create(&labels)
        .observe(r.elapsed.as_secs_f64());
    m.load_rows.get_or_create(&labels).inc_by(r.rows_written);
    m.load_bytes.get_or_create(&labels).inc_by(r.bytes);
}

/// Records a published load: its run, its audit event and the log lines.
async fn recorded(
    state: Option<&State>,
    run: Option<i64>,
    area: &config::Area,
    r: &LoadReport,
    trigger: &str,
) {
    if let Some(s) = state {
        if let Some(id) = run {
            let _ = s
                .load_published(id, area.version, r)
                .await
                .map_err(log_state);
        }
        let mut event = Event::new(Action::LoadPublished, "ok")
            .detail(&format!(
                "{} load v{}, {} authorities, {} rows, watermark {}{}, trigger {trigger}",
                r.kind.as_str(),
                area.version,
                r.authorities,
                r.rows_written,
                r.watermark_from.map_or(String::new(), |w| format!("{w}..")),
                r.watermark_to
            ))
            .bytes(r.bytes);
        event.area = Some(r.area.clone());
        event.load_id = Some(r.load_id.to_string());
        audit::writer::append_retrying(s, &[event], 20).await;
    }
    tracing::info!(
        area = %r.area, kind = r.kind.as_str(), load = %r.load_id, rows = r.rows_read,
        authorities = r.authorities, files = r.files, bytes = r.bytes,
        watermark_to = r.watermark_to, removed = r.removed,
        elapsed_ms = r.elapsed.as_millis() as u64, "load published"
    );
    for (reason, n) in &r.withheld {
        tracing::warn!(area = %r.area, reason = %reason, rows = n, "rows withheld");
    }
}

/// Brings the audit person index up to date with the tree. A failure is
/// logged, not fatal: the load is published, and the next run catches up.
async fn index_persons(config: &Config, areas: &[&config::Area], state: &State) {
    let key = match audit::load_or_create_key(&config.audit.key_file) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(path = %config.audit.key_file.display(), error = %e, "audit key unavailable; person index not updated");
            return;
        }
    };
    match audit::index::index_tree(config, areas, state, &key).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(folders = n, "audit person index updated"),
        Err(e) => {
            tracing::error!(error = %e, "audit person index not updated; the next run retries")
        }
    }
}

/// The audit trail's upkeep while serving: at start the person index of
/// anything published while the daemon was down, then hourly retention.
pub async fn audit_housekeeping(
    live: Arc<Live>,
    state: State,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        // A stop waits for a round under way (its writes are short and whole).
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let config = live.get();
        let areas: Vec<&config::Area> = config.areas.iter().collect();
        index_persons(&config, &areas, &state).await;
        // A retention longer than chrono can subtract keeps everything.
        let cutoff = chrono::Duration::from_std(config.audit.retention)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        match state.audit_prune(&audit::timestamp(cutoff)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "audit retention removed old events"),
            Err(e) => tracing::error!(error = %e, "audit retention failed; retried in an hour"),
        }
    }
}

fn log_state(e: crate::state::StateError) -> crate::state::StateError {
    tracing::error!(error = %e, "could not record a load in the state database");
    e
}

/// Loads in the tree that no run records as published (a stop or crash
/// came between the publication and its record, or hit the publication
/// half-way and the next run finishes it) get their run record and their
/// `load_published` event now.
async fn record_unrecorded_loads(config: &Config, areas: &[&config::Area], state: &State) {
    for area in areas {
        // A load that is running now, here or on another replica, is
        // recorded by its own run: skip an area whose lease is taken.
        let lease = match state.area_lease(&area.id, false).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(area = %area.id, error = %e, "cannot check for unrecorded loads");
                continue;
            }
        };
        // Dropped with the iteration: its connection closes, which frees it.
        let _lease = lease;
        let _held = match load::lock_area(&config.store(), area) {
            Ok(held) => held,
            Err(load::LoadError::Busy { .. }) => continue,
            Err(e) => {
                tracing::error!(area = %area.id, error = %e, "cannot check for unrecorded loads");
                continue;
            }
        };
        let (folders, recorded) = match (
            config.store().loads(&area.id),
            state.recorded_loads(&area.id).await,
        ) {
            (Ok(p), Ok(r)) => (p, r),
            (Err(e), _) => {
                tracing::error!(area = %area.id, error = %e, "cannot list the published loads");
                continue;
            }
            (_, Err(e)) => {
                tracing::error!(area = %area.id, error = %e, "cannot read the recorded loads");
                continue;
            }
        };
        // Per load: its kind and how many authorities hold it.
        let mut published: BTreeMap<crate::tree::LoadId, (LoadKind, usize)> = BTreeMap::new();
        for f in folders {
            published.entry(f.id).or_insert((f.kind, 0)).1 += 1;
        }
        for (id, (kind, authorities)) in published {
            let load_id = id.to_string();
            if recorded.contains(&load_id) {
                continue;
            }
            if let Err(e) = state
                .adopt_published(&area.id, area.version, kind, &load_id, id.at)
                .await
            {
                tracing::error!(area = %area.id, load = %load_id, error = %e, "cannot record a recovered load");
                continue;
            }
            let mut event = Event::new(Action::LoadPublished, "ok").detail(&format!(
                "{} load v{}, {authorities} authorities, recorded after a stop or crash",
                kind.as_str(),
                area.version
            ));
            event.area = Some(area.id.clone());
            event.load_id = Some(load_id.clone());
            audit::writer::append_retrying(state, &[event], 20).await;
            tracing::warn!(area = %area.id, load = %load_id, kind = kind.as_str(),
                "a load published before a stop or crash is now recorded");
        }
    }
}

/// At start-up: marks interrupted runs, records loads published but not
/// recorded, and sets watermarks from the tree.
pub async fn reconcile_state(config: &Config) {
    if let Some(s) = open_state(config).await {
        let areas: Vec<&config::Area> = config.areas.iter().collect();
        record_unrecorded_loads(config, &areas, &s).await;
        match s.reconcile(config).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                interrupted = n,
                "found load runs interrupted by a stop or crash"
            ),
            Err(e) => {
                tracing::error!(error = %e, "could not reconcile the state database with the tree")
            }
        }
        s.close().await;
    }
}

/// Whether two configs schedule their areas differently.
pub fn schedules_differ(a: &Config, b: &Config) -> bool {
    let of = |c: &Config| {
        c.areas
            .iter()
            .map(|a| {
                (
                    a.id.clone(),
                    a.schedule_delta.as_ref().map(|s| s.to_string()),
                    a.schedule_full.as_ref().map(|s| s.to_string()),
                    a.lifecycle.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    of(a) != of(b)
}

/// When the area last got a load of `kind` (a full counts for a delta too),
/// from the published tree.
fn last_load_at(
    config: &Config,
    area: &crate::config::Area,
    kind: LoadKind,
) -> Option<chrono::DateTime<Utc>> {
    let loads = config.store().loads(&area.id).ok()?;
    loads
        .iter()
        .filter(|l| l.version == area.version && (kind == LoadKind::Delta || l.kind == kind))
        .map(|l| l.id.at)
        .max()
}

/// Starts one task per configured schedule. All schedules of an area share a
/// lock. A delta of an area with no full load yet runs a full load instead.
pub fn spawn_schedules(
    config: Arc<Config>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let clock = crate::schedule::Clock::system();
    let mut tasks = Vec::new();
    for area in &config.areas {
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        for (kind, schedule) in [
            (LoadKind::Delta, &area.schedule_delta),
            (LoadKind::Full, &area.schedule_full),
        ] {
            let Some(schedule) = schedule.clone() else {
                continue;
            };
            let config = config.clone();
            let area_id = area.id.clone();
            let last_run = last_load_at(&config, area, kind);
            let name = format!("{} {}", area.id, kind.as_str());
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(crate::schedule::run(
                name,
                schedule,
                clock,
                lock.clone(),
                last_run,
                move |tick| {
                    let config = config.clone();
                    let area_id = area_id.clone();
                    async move {
                        let request = |kind| LoadRequest {
                            area: Some(area_id.as_str()),
                            kind,
                            trigger: "schedule",
                            progress: None,
                            for_tick: Some(tick),
                        };
                        match run_loads(&config, request(kind)).await {
                            Err(AppError::Load(LoadError::NoFullLoad { .. })) => {
                                run_loads(&config, request(LoadKind::Full))
                                    .await
                                    .map(|_| ())
                            }
                            r => r.map(|_| ()),
                        }
                    }
                },
                async move { stop.cancelled().await },
            )));
        }
    }
    if config.areas.iter().any(|a| a.lifecycle.is_some()) {
        tasks.push(tokio::spawn(super::lifecycle::run(config, shutdown)));
    }
    tasks
}
