//! `udstil status ...`: operators open, update and resolve incidents and
//! plan maintenance and releases. Each is recorded in the state database
//! (shown on the status page), audited, and sent to the recipients that want
//! it.

use chrono::{DateTime, Utc};

use super::{AppError, operator, required_state};
use crate::audit::{self, Action, Event};
use crate::config::Config;
use crate::notify::{EventKind, Notice};
use crate::state::State;
use crate::status::{Maintenance, component_ids, parse_impact};

/// What an operator does to the status.
#[derive(Debug, Clone)]
pub enum StatusChange {
    Open {
        component: String,
        impact: String,
        title: String,
        message: String,
    },
    Update {
        id: i64,
        state: String,
        message: String,
    },
    Plan {
        release: bool,
        title: String,
        component: Option<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        description: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no component \"{0}\" (known: {1})")]
    UnknownComponent(String, String),
    #[error("impact \"{0}\" is not degraded or outage")]
    Impact(String),
    #[error("state \"{0}\" is not identified, monitoring or resolved")]
    State(String),
    #[error("no incident {0}")]
    NoIncident(i64),
    #[error("the window ends before it starts")]
    Window,
}

/// Applies `change`; returns what was done, for the operator.
pub async fn change_status(config: &Config, change: &StatusChange) -> Result<String, AppError> {
    let known = component_ids(
        &config
            .areas
            .iter()
            .map(|a| a.id.clone())
            .collect::<Vec<_>>(),
    );
    let check = |c: &str| {
        if known.iter().any(|k| k == c) {
            Ok(())
        } else {
            Err(StatusError::UnknownComponent(c.into(), known.join(", ")))
        }
    };
    let state = required_state(config).await?;
    let result = apply(config, &state, change, check).await;
    state.close().await;
    result
}

async fn apply(
    config: &Config,
    state: &State,
    change: &StatusChange,
    check: impl Fn(&str) -> Result<(), StatusError>,
) -> Result<String, AppError> {
    let (event, area, summary, done) = match change {
        StatusChange::Open {
            component,
            impact,
            title,
            message,
        } => {
            check(component)?;
            parse_impact(impact).ok_or_else(|| StatusError::Impact(impact.clone()))?;
            let id = state
                .incident_open(component, impact, title, message)
                .await?;
            (
                EventKind::IncidentOpened,
                component.strip_prefix("area:").map(str::to_string),
                format!("incident {id} opened ({component}, {impact}): {title}. {message}"),
                format!("incident {id} opened"),
            )
        }
        StatusChange::Update {
            id,
            state: s,
            message,
        } => {
            if !["identified", "monitoring", "resolved"].contains(&s.as_str()) {
                return Err(StatusError::State(s.clone()).into());
            }
            if !state.incident_update(*id, s, message).await? {
                return Err(StatusError::NoIncident(*id).into());
            }
            let kind = if s == "resolved" {
                EventKind::IncidentResolved
            } else {
                EventKind::IncidentUpdated
            };
            (
                kind,
                None,
                format!("incident {id} {s}: {message}"),
                format!("incident {id} {s}"),
            )
        }
        StatusChange::Plan {
            release,
            title,
            component,
            from,
            to,
            description,
        } => {
            if let Some(c) = component {
                check(c)?;
            }
            if to <= from {
                return Err(StatusError::Window.into());
            }
            let kind = if *release { "release" } else { "maintenance" };
            let id = state
                .maintenance_plan(&Maintenance {
                    id: 0,
                    kind: kind.into(),
                    title: title.clone(),
                    component: component.clone(),
                    starts_at: *from,
                    ends_at: *to,
                    description: description.clone(),
                })
                .await?;
            (
                EventKind::MaintenancePlanned,
                component
                    .as_deref()
                    .and_then(|c| c.strip_prefix("area:"))
                    .map(str::to_string),
                format!("{kind} {id} planned {from} to {to}: {title}. {description}"),
                format!("{kind} {id} planned"),
            )
        }
    };
    let audit_event = Event::new(Action::StatusChange, "ok")
        .detail(&format!("operator {}: {summary}", operator()));
    audit::writer::append_retrying(state, &[audit_event], 20).await;
    let notice = Notice {
        event,
        at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        area,
        summary,
        details: serde_json::Value::Null,
        suppliers: Vec::new(),
    };
    crate::notify::outbox::enqueue(config, state, &notice).await;
    Ok(done)
}
