//! Wiring: from a config file to running parts, and the commands an
//! operator runs. Policy, planning and layout live in their own modules.

mod demo;
mod ledger;
mod lifecycle;
mod loads;
mod serve;
mod status;
mod watch;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{self, Action, Event};
use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::load::LoadError;
use crate::sftp::SftpError;
use crate::source::{Source, SourceError};
use crate::state::State;

pub use demo::{Demo, demo, describe_access, prepare_demo};
pub use ledger::{LedgerFilter, ledger, ledger_on};
pub use loads::{
    LoadRequest, audit_housekeeping, reconcile_state, run_loads, schedules_differ, spawn_schedules,
};
pub use serve::{Server, config_files_state, reload, reload_recorded, serve, serve_until_stopped};
pub use status::{StatusChange, StatusError, change_status};
pub use watch::watch_notices;

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
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no data area \"{0}\" in the config")]
    UnknownArea(String),
    #[error("data area {area} is {stage} now ([area.lifecycle]): it has no loads to run")]
    NotLoading { area: String, stage: &'static str },
    #[error(transparent)]
    Unknown(#[from] config::report::UnknownName),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("no [state] url in the config: the audit trail lives in the state database")]
    NoState,
    #[error(
        "the state database cannot be reached; it keeps replicas from running the same load, so none runs"
    )]
    NoCoordination,
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
        Ok(columns) => {
            errors.extend(config::check_columns(&config, &columns));
            warnings(&config, &columns);
        }
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

/// What a config check warns of: a published column without a description
/// (the dictionary says so rather than guess), and a planned step of an
/// area that no announcement tells suppliers of.
fn warnings(config: &Config, columns: &config::TableColumns) {
    for warning in config::unannounced_steps(config) {
        tracing::warn!("announcements: {warning}");
    }
    for (area, missing) in config::undescribed_columns(config, columns) {
        tracing::warn!(area = %area, columns = %missing.join(", "),
            "data dictionary: published columns without a description ([area.fields])");
    }
}

/// How long the column check of `serve` and of a reload may take.
const COLUMN_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks the column names against DFDG in the background and logs what
/// does not match, or that DFDG could not be asked. Serving never waits for
/// it: SFTP and reloads must not depend on the source (loads retry on their own).
pub fn check_columns_in_background(config: Arc<Config>) {
    tokio::spawn(async move {
        let checked = tokio::time::timeout(COLUMN_CHECK_TIMEOUT, source_columns(&config)).await;
        crate::metrics::get().set_source_up(matches!(checked, Ok(Ok(_))));
        match checked {
            Ok(Ok(columns)) => {
                for e in config::check_columns(&config, &columns) {
                    tracing::warn!(error = %e, "column check: the area's config does not match DFDG");
                }
                warnings(&config, &columns);
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

/// How often a server with metrics checks that DFDG answers.
const SOURCE_PROBE: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps `udstil_source_up` current between loads: every minute, a
/// connection to DFDG is opened and closed, until `stop`.
pub async fn probe_source(live: Arc<config::Live>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(SOURCE_PROBE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let url = live.get().source_url.clone();
        let probe = async {
            match tokio::time::timeout(COLUMN_CHECK_TIMEOUT, Source::connect(&url)).await {
                Ok(Ok(source)) => {
                    source.close().await;
                    true
                }
                _ => false,
            }
        };
        // A stop does not wait for a source that does not answer.
        let up = tokio::select! {
            _ = stop.cancelled() => return,
            up = probe => up,
        };
        crate::metrics::get().set_source_up(up);
    }
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
