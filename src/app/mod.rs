//! Wiring: from a config file to running parts. No policy or layout here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use tokio::net::TcpListener;

use crate::audit::{self, Action, Event, Trail};
use crate::config::{self, Config, ConfigError, ConfigErrors, Live};
use crate::load::{self, LoadError, LoadReport};
use crate::sftp::{self, SftpError, Shared};
use crate::source::{Source, SourceError};
use crate::state::State;
use crate::tree::LoadKind;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Sftp(#[from] SftpError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no data area \"{0}\" in the config")]
    UnknownArea(String),
    #[error("no supplier \"{0}\" in the config")]
    UnknownSupplier(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("no [state] url in the config: the audit trail lives in the state database")]
    NoState,
    #[error("audit key {path}: {source}")]
    AuditKey {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit trail broken: {0}")]
    AuditBroken(#[from] audit::Broken),
}

/// Everything `config check` checks: the file itself and the column names
/// against the source database, all errors in one run (the columns are
/// checked even when the file has other errors, as far as it could be read).
pub async fn check_config(path: &Path) -> Result<Config, ConfigErrors> {
    let (config, mut errors) = config::load_all(path);
    let Some(config) = config else {
        return Err(ConfigErrors(errors));
    };
    match source_columns(&config).await {
        Ok(columns) => errors.extend(config::check_columns(&config, &columns)),
        Err(e) => errors.push(ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: format!("[source] {e}"),
        }),
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        errors.sort_by_key(|e| e.line.unwrap_or(0));
        Err(ConfigErrors(errors))
    }
}

/// The columns of every table and journal the config's areas name, read from DFDG.
async fn source_columns(config: &Config) -> Result<config::TableColumns, SourceError> {
    let source = Source::connect(&config.source_url).await?;
    let tables: BTreeSet<String> = config
        .areas
        .iter()
        .flat_map(|a| [a.table.clone(), a.journal.clone()])
        .collect();
    let columns = source.table_columns(&tables).await;
    source.close().await;
    columns
}

/// How long the column check of `serve` and of a reload may take.
const COLUMN_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks the column names against DFDG in the background and logs what
/// does not match, or that DFDG could not be asked. Serving never waits for
/// it: SFTP and reloads must not depend on the source (loads retry on their own).
pub fn check_columns_in_background(config: Arc<Config>) {
    tokio::spawn(async move {
        match tokio::time::timeout(COLUMN_CHECK_TIMEOUT, source_columns(&config)).await {
            Ok(Ok(columns)) => {
                for e in config::check_columns(&config, &columns) {
                    tracing::warn!(error = %e, "column check: loads of this area will fail until it is fixed");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "column check: DFDG unreachable, column names not checked; loads retry on their schedule")
            }
            Err(_) => tracing::warn!(
                timeout_s = COLUMN_CHECK_TIMEOUT.as_secs(),
                "column check: DFDG did not answer in time, column names not checked; loads retry on their schedule"
            ),
        }
    });
}

/// One full load of one area, or of every area when `area` is `None`.
pub async fn full_loads(config: &Config, area: Option<&str>) -> Result<Vec<LoadReport>, AppError> {
    run_loads(config, area, LoadKind::Full).await
}

/// One load of `kind` of one area, or of every area when `area` is `None`.
pub async fn run_loads(
    config: &Config,
    area: Option<&str>,
    kind: LoadKind,
) -> Result<Vec<LoadReport>, AppError> {
    run_loads_by(config, area, kind, "manual").await
}

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

/// Like [`run_loads`], recording each run in the state database with `trigger`.
pub async fn run_loads_by(
    config: &Config,
    area: Option<&str>,
    kind: LoadKind,
    trigger: &str,
) -> Result<Vec<LoadReport>, AppError> {
    run_loads_with(config, area, kind, trigger, None).await
}

/// Like [`run_loads_by`], counting rows read into `progress`.
pub async fn run_loads_with(
    config: &Config,
    area: Option<&str>,
    kind: LoadKind,
    trigger: &str,
    progress: Option<load::Progress>,
) -> Result<Vec<LoadReport>, AppError> {
    let areas: Vec<&config::Area> = match area {
        Some(id) => vec![
            config
                .area(id)
                .ok_or_else(|| AppError::UnknownArea(id.into()))?,
        ],
        None => config.areas.iter().collect(),
    };
    let state = open_state(config).await;
    if let Some(s) = &state {
        record_unrecorded_loads(config, &areas, s).await;
    }
    let mut reports = Vec::new();
    let mut failure = None;
    match Source::connect(&config.source_url).await {
        Err(e) => failure = Some(AppError::Source(e)),
        Ok(source) => {
            for area in &areas {
                let run = match &state {
                    Some(s) => s
                        .load_started(&area.id, area.version, kind, trigger)
                        .await
                        .map_err(log_state)
                        .ok(),
                    None => None,
                };
                // The area's lock is held until the run is recorded (the end
                // of this iteration), so no other process records it as a
                // load published before a crash.
                let (r, _held) = match load::lock_area(&config.storage_root, area) {
                    Err(e) => (Err(e), None),
                    Ok(held) => {
                        let p = progress.as_ref();
                        let r = match kind {
                            LoadKind::Full => {
                                load::full_load(config, &source, area, &held, p).await
                            }
                            LoadKind::Delta => {
                                load::delta_load(config, &source, area, &held, p).await
                            }
                        };
                        (r, Some(held))
                    }
                };
                match r {
                    Ok(r) => {
                        if let (Some(s), Some(id)) = (&state, run) {
                            let _ = s
                                .load_published(id, area.version, &r)
                                .await
                                .map_err(log_state);
                        }
                        if let Some(s) = &state {
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
                        reports.push(r);
                    }
                    Err(e) => {
                        if let (Some(s), Some(id)) = (&state, run) {
                            let _ = s.load_failed(id, &e.to_string()).await.map_err(log_state);
                        }
                        failure = Some(e.into());
                        break;
                    }
                }
            }
            source.close().await;
        }
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
pub async fn audit_housekeeping(live: Arc<Live>, state: State) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
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
        // A load that is running now is recorded by its own run.
        let _held = match load::lock_area(&config.storage_root, area) {
            Ok(held) => held,
            Err(load::LoadError::Busy { .. }) => continue,
            Err(e) => {
                tracing::error!(area = %area.id, error = %e, "cannot check for unrecorded loads");
                continue;
            }
        };
        let (folders, recorded) = match (
            load::published_loads(&config.storage_root, &area.id),
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

/// A bound, ready server: the caller decides when to run it.
pub struct Server {
    pub addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    keys: Vec<russh::keys::PrivateKey>,
    /// The legacy profile is on (see `sftp::ssh_config`).
    legacy: bool,
    state: Option<State>,
}

impl Server {
    /// Binds the listener and, with a state database, starts the audit
    /// writer: a server that cannot keep its audit trail does not start.
    pub async fn bind(config: Arc<Config>, listen: SocketAddr) -> Result<Server, AppError> {
        let keys = sftp::host_keys(&config.sftp)?;
        let legacy = config.sftp.legacy_host_key.is_some();
        let (trail, state) = match &config.state_url {
            Some(url) => {
                let state = State::open(url).await?;
                let (trail, _writer) = audit::writer::spawn(state.clone());
                (trail, Some(state))
            }
            None => {
                tracing::warn!("no [state] url: the audit trail is not kept");
                (Trail::disabled(), None)
            }
        };
        let shared = Shared::new(Live::new(config), trail)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| AppError::Io {
                what: format!("cannot listen on {listen}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AppError::Io {
            what: "listener address".into(),
            source,
        })?;
        Ok(Server {
            addr,
            listener,
            shared,
            keys,
            legacy,
            state,
        })
    }

    /// Where this server records audit events.
    pub fn audit(&self) -> Trail {
        self.shared.audit.clone()
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.get()
    }

    /// The config handle that reloads replace.
    pub fn live(&self) -> Arc<Live> {
        self.shared.config.clone()
    }

    /// Cancelling it stops the server gracefully: no new connections, open
    /// ones closed, their last audit events recorded; then `run` returns.
    pub fn stopper(&self) -> tokio_util::sync::CancellationToken {
        self.shared.stopper()
    }

    pub async fn run(self) -> Result<(), AppError> {
        let upkeep = self
            .state
            .clone()
            .map(|s| tokio::spawn(audit_housekeeping(self.shared.config.clone(), s)));
        let served = sftp::serve(self.listener, self.shared, self.keys, self.legacy).await;
        if let Some(task) = upkeep {
            task.abort();
        }
        served?;
        Ok(())
    }
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

/// Re-reads the config file and, if it is valid, puts it in force. An
/// invalid file is refused as a whole and the config in force stays. The
/// column check against DFDG runs afterwards in the background: DFDG, up or
/// down, never holds back an access change (a revocation must never wait).
pub async fn reload(live: &Live, path: &Path) -> Result<Vec<AccessChange>, ConfigErrors> {
    let new = Arc::new(config::load(path)?);
    let old = live.get();
    for (what, changed) in [
        ("[sftp] listen", old.sftp.listen != new.sftp.listen),
        ("[sftp] host_key", old.sftp.host_key != new.sftp.host_key),
        (
            "[sftp] legacy_profile",
            old.sftp.legacy_host_key != new.sftp.legacy_host_key,
        ),
        ("[storage] root", old.storage_root != new.storage_root),
        ("[state] url", old.state_url != new.state_url),
    ] {
        if changed {
            tracing::warn!(
                setting = what,
                "config reload: this setting takes effect at the next restart"
            );
        }
    }
    let changes = access_changes(&old, &new, Utc::now());
    live.replace(new.clone());
    check_columns_in_background(new);
    for c in &changes {
        let change = if c.gained { "gained" } else { "lost" };
        tracing::info!(supplier = %c.supplier, authority = %c.authority, area = %c.area,
            change = %change, "config reload: access changed");
    }
    tracing::info!(access_changes = changes.len(), "config reloaded");
    Ok(changes)
}

/// [`reload`], recording the outcome in the audit trail: the access changes
/// of an accepted reload, the errors of a refused one.
pub async fn reload_recorded(
    live: &Live,
    path: &Path,
    audit: &Trail,
    trigger: &str,
) -> Result<Vec<AccessChange>, ConfigErrors> {
    let result = reload(live, path).await;
    let event = match &result {
        Ok(changes) => {
            let list: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
            Event::new(Action::ConfigReload, "ok").detail(&format!(
                "{trigger}; {} access change(s){}{}",
                changes.len(),
                if list.is_empty() { "" } else { ": " },
                list.join("; ")
            ))
        }
        Err(errors) => {
            Event::new(Action::ConfigRefused, "refused").detail(&format!("{trigger}; {errors}"))
        }
    };
    audit.record(event).await;
    result
}

/// The files a config is read from, with their modification time and size,
/// to notice edits by polling (portable, and cheap at one stat per second).
pub fn config_files_state(config: &Config) -> Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)> {
    std::iter::once(config.file.clone())
        .chain(config.key_files.iter().cloned())
        .map(|p| {
            let m = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p, m)
        })
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
) -> Result<Vec<AccessRow>, AppError> {
    if let Some(s) = supplier
        && !config.suppliers.contains_key(s)
    {
        return Err(AppError::UnknownSupplier(s.into()));
    }
    if let Some(a) = area
        && config.area(a).is_none()
    {
        return Err(AppError::UnknownArea(a.into()));
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
                )
            })
            .collect::<Vec<_>>()
    };
    of(a) != of(b)
}

/// Test keys and the demo config, compiled in so `udstil demo` runs from anywhere.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
const DEMO_KEYS: &[(&str, &str)] = &[
    ("bi-alpha", include_str!("../fixtures/keys/bi-alpha")),
    (
        "bi-alpha.pub",
        include_str!("../fixtures/keys/bi-alpha.pub"),
    ),
    ("bi-beta", include_str!("../fixtures/keys/bi-beta")),
    ("bi-beta.pub", include_str!("../fixtures/keys/bi-beta.pub")),
    ("bi-gamma", include_str!("../fixtures/keys/bi-gamma")),
    (
        "bi-gamma.pub",
        include_str!("../fixtures/keys/bi-gamma.pub"),
    ),
    ("bi-delta", include_str!("../fixtures/keys/bi-delta")),
    (
        "bi-delta.pub",
        include_str!("../fixtures/keys/bi-delta.pub"),
    ),
];

/// Lays out a demo data folder: keys (mode 0600), `udstil.toml` listening on
/// `listen`, and a synthetic DFDG if there is none yet. Returns the config path.
pub async fn prepare_demo(
    dir: &Path,
    listen: SocketAddr,
    citizens: u64,
    seed: u64,
) -> Result<PathBuf, AppError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |source| AppError::Io { what, source };
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(io(format!("creating {}", keys.display())))?;
    for (name, text) in DEMO_KEYS {
        let path = keys.join(name);
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        // OpenSSH refuses a private key others can read; git keeps no modes.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("chmod {}", path.display())))?;
    }
    let default_listen = "listen = \"127.0.0.1:2222\"";
    assert!(
        DEMO_CONFIG.contains(default_listen),
        "config/demo.toml sets the demo listen address"
    );
    let text = DEMO_CONFIG.replacen(default_listen, &format!("listen = \"{listen}\""), 1);
    let config_path = dir.join("udstil.toml");
    std::fs::write(&config_path, text).map_err(io(format!("writing {}", config_path.display())))?;

    let db = dir.join("dfdg.sqlite");
    if !db.exists() {
        let source = Source::create(&format!("sqlite://{}", db.display())).await?;
        let summary = crate::fixtures::generate(&source, citizens, seed).await?;
        source.close().await;
        tracing::info!(citizens = summary.citizens, "generated a synthetic DFDG");
    }
    Ok(config_path)
}

/// What each supplier sees now, for the demo's welcome text.
pub fn describe_access(config: &Config, config_path: &Path, addr: SocketAddr) -> String {
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let mut out = String::new();
    let now = Utc::now();
    for s in config.suppliers.values() {
        let key = dir.join("keys").join(&s.id);
        out.push_str(&format!(
            "\n  {} ({})\n    sftp -P {} -i {} -o UserKnownHostsFile={} {}@{}\n",
            s.id,
            s.name,
            addr.port(),
            key.display(),
            dir.join("known_hosts").display(),
            s.id,
            addr.ip()
        ));
        let visible = config.agreements.visible(&s.id, now);
        if visible.is_empty() {
            out.push_str("    sees: nothing (logs in, empty tree)\n");
        }
        for (authority, areas) in visible {
            out.push_str(&format!(
                "    sees: /{authority} ({}): {}\n",
                authority.name().unwrap_or("?"),
                areas.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    out
}

/// When the area last got a load of `kind` (a full counts for a delta too),
/// from the published tree.
fn last_load_at(
    config: &Config,
    area: &crate::config::Area,
    kind: LoadKind,
) -> Option<chrono::DateTime<Utc>> {
    let root = &config.storage_root;
    let mut latest = None;
    for a in crate::authority::AuthorityId::all() {
        for k in [LoadKind::Full, LoadKind::Delta] {
            if kind == LoadKind::Full && k == LoadKind::Delta {
                continue;
            }
            let dir = crate::tree::kind_dir(root, a, &area.id, area.version, k);
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if let Some(id) = crate::tree::LoadId::parse(&e.file_name().to_string_lossy()) {
                    latest = latest.max(Some(id.at));
                }
            }
        }
    }
    latest
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
                move || {
                    let config = config.clone();
                    let area_id = area_id.clone();
                    async move {
                        match run_loads_by(&config, Some(&area_id), kind, "schedule").await {
                            Err(AppError::Load(LoadError::NoFullLoad { .. })) => {
                                run_loads_by(&config, Some(&area_id), LoadKind::Full, "schedule")
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
    tasks
}

/// The state database of a config, for the audit commands (which need one).
async fn required_state(config: &Config) -> Result<State, AppError> {
    let url = config.state_url.as_ref().ok_or(AppError::NoState)?;
    Ok(State::open(url).await?)
}

/// Who runs an audit command, as the operating system says.
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reading the audit trail is itself recorded in it.
async fn record_audit_read(state: &State, what: &str) {
    let event =
        Event::new(Action::AuditRead, "ok").detail(&format!("operator {}: {what}", operator()));
    audit::writer::append_retrying(state, &[event], 20).await;
}

/// Checks the whole chain a page at a time; the first broken row is the error.
pub async fn audit_verify(config: &Config) -> Result<audit::Summary, AppError> {
    let state = required_state(config).await?;
    let anchor = state.audit_anchor().await?;
    // Rows are read from the anchor on (all rows when none).
    let mut after = anchor.as_ref().map_or(0, |a| a.last_removed_id);
    let mut verifier = audit::Verifier::new(anchor);
    let result = loop {
        let page = state.audit_page(after, 10_000).await?;
        let Some(last) = page.last() else {
            break verifier.finish();
        };
        after = last.id;
        if let Err(broken) = page.iter().try_for_each(|r| verifier.check(r)) {
            break Err(broken);
        }
    };
    record_audit_read(
        &state,
        &format!(
            "verify: {}",
            match &result {
                Ok(s) => format!("intact, {} rows", s.rows),
                Err(b) => format!("broken at row {}", b.id),
            }
        ),
    )
    .await;
    state.close().await;
    Ok(result?)
}

/// Audit events matching a filter.
pub async fn audit_query(
    config: &Config,
    filter: &crate::state::AuditFilter,
) -> Result<Vec<audit::Record>, AppError> {
    let state = required_state(config).await?;
    let rows = state.audit_query(filter).await?;
    record_audit_read(
        &state,
        &format!("query{}: {} rows", filter.describe(), rows.len()),
    )
    .await;
    state.close().await;
    Ok(rows)
}

/// Which suppliers received files holding this person, and when: downloads
/// of data files of loads whose person index holds the CPR number.
pub async fn audit_person(config: &Config, cpr: &str) -> Result<Vec<audit::Record>, AppError> {
    let key =
        audit::load_or_create_key(&config.audit.key_file).map_err(|source| AppError::AuditKey {
            path: config.audit.key_file.clone(),
            source,
        })?;
    let state = required_state(config).await?;
    let person = key.person(cpr);
    let rows = state.audit_person(&person).await?;
    // The CPR number itself is not written into the log, only its index key.
    record_audit_read(
        &state,
        &format!(
            "person lookup {}: {} downloads",
            hex::encode(person),
            rows.len()
        ),
    )
    .await;
    state.close().await;
    Ok(rows)
}
