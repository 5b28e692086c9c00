//! The status page's SQL: incidents, their updates, planned maintenance,
//! and the load runs per day (see `status`).

use chrono::{DateTime, Utc};

use super::{State, StateError, now};
use crate::status::{Incident, LoadDay, Maintenance, Update, parse_impact};

fn time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(sqlx::FromRow)]
struct MaintenanceRow {
    id: i64,
    kind: String,
    title: String,
    component: Option<String>,
    starts_at: String,
    ends_at: String,
    description: String,
}

impl State {
    /// Opens an incident with its first update (`investigating`); returns its id.
    pub async fn incident_open(
        &self,
        component: &str,
        impact: &str,
        title: &str,
        message: &str,
    ) -> Result<i64, StateError> {
        let sql = "INSERT INTO status_incidents (component, impact, title, opened_at) \
                   VALUES ($1, $2, $3, $4) RETURNING id";
        let at = now();
        let (id,): (i64,) = on!(self, p => sqlx::query_as(sql)
            .bind(component)
            .bind(impact)
            .bind(title)
            .bind(&at)
            .fetch_one(p)
            .await)?;
        self.incident_update(id, "investigating", message).await?;
        Ok(id)
    }

    /// Adds an update; `resolved` also closes the incident. Returns whether
    /// the incident exists.
    pub async fn incident_update(
        &self,
        id: i64,
        state: &str,
        message: &str,
    ) -> Result<bool, StateError> {
        let at = now();
        let exists = "SELECT COUNT(*) FROM status_incidents WHERE id = $1";
        let (n,): (i64,) = on!(self, p => sqlx::query_as(exists).bind(id).fetch_one(p).await)?;
        if n == 0 {
            return Ok(false);
        }
        let sql =
            "INSERT INTO status_updates (incident_id, at, state, message) VALUES ($1, $2, $3, $4)";
        on!(self, p => sqlx::query(sql)
            .bind(id)
            .bind(&at)
            .bind(state)
            .bind(message)
            .execute(p)
            .await
            .map(|_| ()))?;
        if state == "resolved" {
            let sql = "UPDATE status_incidents SET resolved_at = $1 WHERE id = $2 AND resolved_at IS NULL";
            on!(self, p => sqlx::query(sql).bind(&at).bind(id).execute(p).await.map(|_| ()))?;
        }
        Ok(true)
    }

    /// Plans maintenance or a release; returns its id.
    pub async fn maintenance_plan(&self, m: &Maintenance) -> Result<i64, StateError> {
        let sql = "INSERT INTO status_maintenance (kind, title, component, starts_at, ends_at, description) \
                   VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        let (id,): (i64,) = on!(self, p => sqlx::query_as(sql)
            .bind(&m.kind)
            .bind(&m.title)
            .bind(&m.component)
            .bind(text(m.starts_at))
            .bind(text(m.ends_at))
            .bind(&m.description)
            .fetch_one(p)
            .await)?;
        Ok(id)
    }

    /// Incidents open now or resolved since `since`, with their updates.
    pub async fn incidents(&self, since: DateTime<Utc>) -> Result<Vec<Incident>, StateError> {
        let sql = "SELECT id, component, impact, title, opened_at, resolved_at FROM status_incidents \
                   WHERE resolved_at IS NULL OR resolved_at >= $1 ORDER BY id";
        let rows: Vec<(i64, String, String, String, String, Option<String>)> =
            on!(self, p => sqlx::query_as(sql).bind(text(since)).fetch_all(p).await)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, component, impact, title, opened, resolved) in rows {
            let sql =
                "SELECT at, state, message FROM status_updates WHERE incident_id = $1 ORDER BY id";
            let updates: Vec<(String, String, String)> =
                on!(self, p => sqlx::query_as(sql).bind(id).fetch_all(p).await)?;
            out.push(Incident {
                id,
                component,
                impact: parse_impact(&impact).unwrap_or(crate::status::Level::Degraded),
                title,
                opened_at: time(&opened),
                resolved_at: resolved.as_deref().map(time),
                updates: updates
                    .into_iter()
                    .map(|(at, state, message)| Update {
                        at: time(&at),
                        state,
                        message,
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Maintenance that ends after `since`.
    pub async fn maintenance(&self, since: DateTime<Utc>) -> Result<Vec<Maintenance>, StateError> {
        let sql = "SELECT id, kind, title, component, starts_at, ends_at, description \
                   FROM status_maintenance WHERE ends_at >= $1 ORDER BY starts_at";
        let rows: Vec<MaintenanceRow> =
            on!(self, p => sqlx::query_as(sql).bind(text(since)).fetch_all(p).await)?;
        Ok(rows
            .into_iter()
            .map(|r| Maintenance {
                id: r.id,
                kind: r.kind,
                title: r.title,
                component: r.component,
                starts_at: time(&r.starts_at),
                ends_at: time(&r.ends_at),
                description: r.description,
            })
            .collect())
    }

    /// The days since `since` with load runs of `area` that ended, and
    /// whether one of them failed; and whether the newest ended run failed.
    pub async fn load_days(
        &self,
        area: &str,
        since: DateTime<Utc>,
    ) -> Result<(Vec<LoadDay>, bool), StateError> {
        let sql = "SELECT started_at, status FROM loads WHERE area = $1 AND started_at >= $2 \
                   AND status IN ('published', 'failed') ORDER BY id";
        let rows: Vec<(String, String)> =
            on!(self, p => sqlx::query_as(sql).bind(area).bind(text(since)).fetch_all(p).await)?;
        let mut days: Vec<LoadDay> = Vec::new();
        for (at, status) in &rows {
            let day = time(at).date_naive();
            let failed = status == "failed";
            match days.last_mut() {
                Some(d) if d.day == day => d.failed |= failed,
                _ => days.push(LoadDay { day, failed }),
            }
        }
        let last_failed = rows.last().is_some_and(|(_, s)| s == "failed");
        Ok((days, last_failed))
    }
}
