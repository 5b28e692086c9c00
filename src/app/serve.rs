//! Serving: the bound server, the serve loop with its signals, schedules and
//! graceful stop, and config reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;

use super::{
    AppError, audit_housekeeping, check_columns_in_background, schedules_differ, spawn_schedules,
};
use crate::audit::{self, Action, Event, Trail};
use crate::config::report::{AccessChange, access_changes};
use crate::config::{self, Config, ConfigErrors, Live};
use crate::sftp::{self, Shared};
use crate::state::State;

/// A bound, ready server: the caller decides when to run it.
pub struct Server {
    pub addr: SocketAddr,
    /// The HTTP listener's address, with `[http] listen`.
    pub http_addr: Option<SocketAddr>,
    listener: TcpListener,
    http: Option<TcpListener>,
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
        let http_listen = config.http_listen;
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
        let live = Live::new(config);
        let ledger = state
            .clone()
            .map(|state| ledger_source(live.clone(), state));
        let shared = Shared::new(live, trail, ledger)?;
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
        let http = match http_listen {
            Some(a) => Some(crate::http::bind(a).await?),
            None => None,
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        Ok(Server {
            addr,
            http_addr,
            listener,
            http,
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

    /// The state database, if the config has one.
    pub fn state(&self) -> Option<State> {
        self.state.clone()
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
        let stop = self.shared.stopper();
        let upkeep = self.state.clone().map(|s| {
            tokio::spawn(audit_housekeeping(
                self.shared.config.clone(),
                s,
                stop.clone(),
            ))
        });
        let notifications = self.state.clone().map(|state| {
            let live = self.shared.config.clone();
            let watch = tokio::spawn(super::watch_notices(
                live.clone(),
                state.clone(),
                stop.clone(),
            ));
            let deliver = tokio::spawn(crate::notify::outbox::deliver(live, state, stop.clone()));
            (watch, deliver)
        });
        let probe = self.http.is_some().then(|| {
            tokio::spawn(super::probe_source(
                self.shared.config.clone(),
                stop.clone(),
            ))
        });
        let http = self.http.map(|listener| {
            let views = crate::http::Views {
                config: self.shared.config.clone(),
                state: self.state.clone(),
                sftp: self.shared.clone(),
                ledger_at: Default::default(),
            };
            tokio::spawn(crate::http::serve(listener, views, stop.clone()))
        });
        let served = sftp::serve(self.listener, self.shared, self.keys, self.legacy).await;
        // The upkeep and the HTTP side end with the server (the same stop).
        stop.cancel();
        if let Some(task) = upkeep {
            let _ = task.await;
        }
        if let Some(task) = probe {
            let _ = task.await;
        }
        if let Some((watch, deliver)) = notifications {
            let _ = watch.await;
            let _ = deliver.await;
        }
        if let Some(task) = http
            && let Ok(Err(e)) = task.await
        {
            tracing::error!(error = %e, "the HTTP listener failed");
        }
        served?;
        Ok(())
    }
}

/// How long a supplier's `LEDGER.json` is reused: a listing of the root and
/// the download that follows see the same file, and a client listing in a
/// loop does not rebuild the ledger each time.
const LEDGER_REUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Makes a supplier's `LEDGER.json` for its SFTP root: its own rows of
/// the delivery ledger for what it may read now (the operator's `udstil
/// ledger` also shows what it fetched before an agreement ended). A
/// supplier that may read nothing has no ledger file, as its view is empty.
fn ledger_source(live: Arc<Live>, state: State) -> sftp::LedgerSource {
    type Made = std::collections::HashMap<String, (std::time::Instant, Vec<u8>)>;
    let made: Arc<tokio::sync::Mutex<Made>> = Default::default();
    Arc::new(move |supplier: String| {
        let (live, state, made) = (live.clone(), state.clone(), made.clone());
        Box::pin(async move {
            let mut made = made.lock().await;
            if let Some((at, json)) = made.get(&supplier)
                && at.elapsed() < LEDGER_REUSE
            {
                return Some(json.clone());
            }
            let filter = super::LedgerFilter {
                supplier: Some(supplier.clone()),
                ..Default::default()
            };
            let config = live.get();
            match super::ledger_on(&config, &state, &filter).await {
                Ok(mut entries) => {
                    let visible = config.agreements.visible(&supplier, chrono::Utc::now());
                    entries.retain(|e| {
                        e.authority
                            .parse()
                            .ok()
                            .and_then(|a| visible.get(&a))
                            .is_some_and(|areas| areas.contains(&e.area))
                    });
                    if entries.is_empty() {
                        return None;
                    }
                    let json = serde_json::to_vec_pretty(&entries).expect("serialises");
                    made.insert(supplier, (std::time::Instant::now(), json.clone()));
                    Some(json)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot make a supplier's LEDGER.json");
                    None
                }
            }
        })
    })
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
        (
            "[sftp] channel_window_kib",
            old.sftp.channel_window != new.sftp.channel_window,
        ),
        ("[storage] root", old.storage_root != new.storage_root),
        ("[state] url", old.state_url != new.state_url),
        ("[http] listen", old.http_listen != new.http_listen),
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
    crate::metrics::get()
        .reloads
        .get_or_create(&crate::metrics::Outcome {
            outcome: if result.is_ok() { "ok" } else { "refused" },
        })
        .inc();
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

/// Records each access an agreement's start or end gave or took since
/// `since`, in the audit trail and the log. Nothing else has to happen at
/// that instant: sessions ask the policy on every request and re-ask for
/// open files every 250 ms.
async fn record_agreement_boundaries(
    config: &Config,
    audit: &Trail,
    state: Option<&State>,
    since: &mut DateTime<Utc>,
) {
    let now = Utc::now();
    for c in crate::config::report::planned_changes(config, *since, now) {
        // Every replica sees the instant; the one that claims it records it.
        let key = format!(
            "audit:access_change:{}:{}:{}:{}:{}",
            c.supplier,
            c.authority,
            c.area,
            c.gained,
            c.at.to_rfc3339()
        );
        if let Some(s) = state
            && !s.notify_once(&key).await.unwrap_or(true)
        {
            continue;
        }
        let change = if c.gained { "gained" } else { "lost" };
        let reasons = c.reasons.join("; ");
        tracing::info!(supplier = %c.supplier, authority = %c.authority, area = %c.area,
            change, reasons = %reasons, "access changed: an agreement started or ended");
        let event = Event {
            authority: Some(c.authority.to_string()),
            area: Some(c.area.clone()),
            ..Event::new(Action::AccessChange, change)
                .supplier(&c.supplier)
                .detail(&reasons)
        };
        audit.record(event).await;
    }
    *since = now;
}

/// The files a config is read from, with their modification time and size,
/// to notice edits by polling (portable, and cheap at a few stats per second).
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

/// `udstil serve`: reads the config (refusing one with errors), reconciles
/// the state database with the tree, binds and serves until stopped. SFTP
/// does not depend on DFDG: its columns are checked in the background, and a
/// source that is down only delays loads.
pub async fn serve(config_path: &Path) -> Result<(), AppError> {
    let config = config::load(config_path)?;
    super::reconcile_state(&config).await;
    let listen = config.sftp.listen;
    let config = Arc::new(config);
    let server = Server::bind(config.clone(), listen).await?;
    tracing::info!(addr = %server.addr, "serving SFTP");
    check_columns_in_background(config);
    serve_until_stopped(server).await
}

/// Serves SFTP and runs the configured schedules until SIGINT or SIGTERM;
/// a load in progress is allowed to finish. The config is reloaded on
/// SIGHUP and when its files change; an invalid edit is refused and the
/// config in force keeps serving.
pub async fn serve_until_stopped(server: Server) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = |kind| {
        signal(kind).map_err(|source| AppError::Io {
            what: "listening for signals".into(),
            source,
        })
    };
    let mut term = signals(SignalKind::terminate())?;
    let mut hup = signals(SignalKind::hangup())?;
    let live = server.live();
    let audit = server.audit();
    let state = server.state();
    let path = live.get().file.clone();
    let mut stop = tokio_util::sync::CancellationToken::new();
    let mut schedules = spawn_schedules(live.get(), stop.clone());
    tracing::info!(schedules = schedules.len(), "schedules started");
    let mut watched = config_files_state(&live.get());
    let mut access_seen = Utc::now();
    // An edit takes effect, and an agreement's start or end is audited,
    // within a quarter second (sessions see the latter at once anyway).
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(250));
    let stopper = server.stopper();
    let run = server.run();
    tokio::pin!(run);
    let mut ended = None;
    loop {
        let why = tokio::select! {
            r = &mut run => { ended = Some(r); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); break; }
            _ = term.recv() => { tracing::info!("terminated; stopping"); break; }
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                record_agreement_boundaries(&live.get(), &audit, state.as_ref(), &mut access_seen).await;
                let now = config_files_state(&live.get());
                if now == watched { continue; }
                watched = now;
                "a config file changed"
            }
        };
        let before = live.get();
        // What the config in force did up to now is its own; the reload
        // records what the new one changes from now on.
        record_agreement_boundaries(&before, &audit, state.as_ref(), &mut access_seen).await;
        match reload_recorded(&live, &path, &audit, why).await {
            Ok(_) => {
                access_seen = Utc::now();
                let after = live.get();
                watched = config_files_state(&after);
                if schedules_differ(&before, &after) {
                    // A load in progress finishes; the per-area file lock keeps
                    // the new schedules from overlapping it.
                    stop.cancel();
                    stop = tokio_util::sync::CancellationToken::new();
                    schedules = spawn_schedules(after, stop.clone());
                    tracing::info!(schedules = schedules.len(), "schedules restarted");
                }
            }
            Err(errors) => {
                tracing::error!(trigger = why, errors = %errors, "config reload refused; the config in force keeps serving");
            }
        }
    }
    // A graceful stop: no new connections, open ones closed and their
    // partial downloads recorded (bounded by `[sftp] stop_timeout_seconds`).
    stopper.cancel();
    let served = match ended {
        Some(r) => r,
        None => run.await,
    };
    stop.cancel();
    // A scheduled load under way may finish within the stop timeout; after
    // it, the load is abandoned (the next start finishes or discards what it
    // staged, as after a kill), so a stop stays bounded.
    let timeout = live.get().sftp.stop_timeout;
    let finished = tokio::time::timeout(timeout, async {
        for task in &mut schedules {
            let _ = task.await;
        }
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            timeout_s = timeout.as_secs(),
            "a scheduled run under way was abandoned at the stop: a load is finished or discarded at the next start, a person index caught up by the next run"
        );
        for task in &schedules {
            task.abort();
        }
    }
    // Events of the last requests are written before the process ends.
    if tokio::time::timeout(std::time::Duration::from_secs(10), audit.flush())
        .await
        .is_err()
    {
        tracing::error!("audit trail not fully written at stop");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}
