//! The state database (sqlx): load runs with their outcome and cause of
//! failure, and the published watermark per area and version. The only module
//! with state SQL. The published tree stays the truth for what was published:
//! `reconcile` makes the state agree with it after a crash.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::config::Config;
use crate::load::LoadReport;
use crate::tree::LoadKind;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("state database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("reading the published tree: {0}")]
    Tree(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub enum State {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// One row of `loads`, as the tests and operators read it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LoadRow {
    pub area: String,
    pub kind: String,
    /// `manual`, `schedule` or `recovery`.
    pub trigger: String,
    pub status: String,
    pub load_id: Option<String>,
    pub watermark_to: Option<i64>,
    pub error: Option<String>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

macro_rules! on {
    ($state:expr, $pool:ident => $body:expr) => {
        match $state {
            State::Sqlite($pool) => $body,
            State::Postgres($pool) => $body,
        }
    };
}

// After `on!`, so the audit SQL uses the same dispatch.
mod audit;
mod lease;
mod notify;
mod status;

pub use audit::AuditFilter;
pub use lease::AreaLease;
pub use notify::Pending;

impl State {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<State, StateError> {
        let err = |source| StateError::Open {
            url: crate::source::redact(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let opts: SqliteConnectOptions = url.parse().map_err(err)?;
            let pool = SqlitePoolOptions::new()
                .max_connections(2)
                .connect_with(
                    opts.create_if_missing(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .busy_timeout(std::time::Duration::from_secs(10)),
                )
                .await
                .map_err(err)?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
            Ok(State::Sqlite(pool))
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .map_err(err)?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
            Ok(State::Postgres(pool))
        }
    }

    pub async fn close(&self) {
        on!(self, p => p.close().await)
    }

    /// Whether the database answers (a readiness probe).
    pub async fn ping(&self) -> Result<(), StateError> {
        on!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Records that a load started; returns its row id.
    pub async fn load_started(
        &self,
        area: &str,
        version: u32,
        kind: LoadKind,
        trigger: &str,
    ) -> Result<i64, StateError> {
        let sql = "INSERT INTO loads (area, version, kind, trigger, status, started_at) \
                   VALUES ($1, $2, $3, $4, 'running', $5) RETURNING id";
        let (id,): (i64,) = on!(self, p => sqlx::query_as(sql)
            .bind(area)
            .bind(version as i64)
            .bind(kind.as_str())
            .bind(trigger)
            .bind(now())
            .fetch_one(p)
            .await?);
        Ok(id)
    }

    /// Records a published load and moves the area's watermark.
    pub async fn load_published(
        &self,
        id: i64,
        version: u32,
        r: &LoadReport,
    ) -> Result<(), StateError> {
        let sql = "UPDATE loads SET status = 'published', load_id = $2, authorities = $3, watermark_from = $4, \
                   watermark_to = $5, rows_read = $6, rows_written = $7, bytes = $8, finished_at = $9 WHERE id = $1";
        on!(self, p => sqlx::query(sql)
            .bind(id)
            .bind(r.load_id.to_string())
            .bind(r.authorities as i64)
            .bind(r.watermark_from)
            .bind(r.watermark_to)
            .bind(r.rows_read as i64)
            .bind(r.rows_written as i64)
            .bind(r.bytes as i64)
            .bind(now())
            .execute(p)
            .await
            .map(|_| ())?);
        self.set_watermark(&r.area, version, r.watermark_to, &r.load_id.to_string())
            .await
    }

    /// Records a failed load with its cause (an error message, never row data).
    pub async fn load_failed(&self, id: i64, error: &str) -> Result<(), StateError> {
        let sql = "UPDATE loads SET status = 'failed', error = $2, finished_at = $3 WHERE id = $1";
        on!(self, p => sqlx::query(sql).bind(id).bind(error).bind(now()).execute(p).await.map(|_| ())?);
        Ok(())
    }

    async fn set_watermark(
        &self,
        area: &str,
        version: u32,
        watermark: i64,
        load_id: &str,
    ) -> Result<(), StateError> {
        let sql = "INSERT INTO watermarks (area, version, watermark, load_id, updated_at) VALUES ($1, $2, $3, $4, $5) \
                   ON CONFLICT (area, version) DO UPDATE SET watermark = excluded.watermark, \
                   load_id = excluded.load_id, updated_at = excluded.updated_at";
        on!(self, p => sqlx::query(sql)
            .bind(area)
            .bind(version as i64)
            .bind(watermark)
            .bind(load_id)
            .bind(now())
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// The recorded watermark of an area's version.
    pub async fn watermark(
        &self,
        area: &str,
        version: u32,
    ) -> Result<Option<(i64, String)>, StateError> {
        let sql = "SELECT watermark, load_id FROM watermarks WHERE area = $1 AND version = $2";
        Ok(
            on!(self, p => sqlx::query_as(sql).bind(area).bind(version as i64).fetch_optional(p).await?),
        )
    }

    pub async fn loads(&self, area: &str) -> Result<Vec<LoadRow>, StateError> {
        let sql = "SELECT area, kind, trigger, status, load_id, watermark_to, error FROM loads WHERE area = $1 ORDER BY id";
        Ok(on!(self, p => sqlx::query_as(sql).bind(area).fetch_all(p).await?))
    }

    /// The load ids this database records as published for `area`.
    pub async fn recorded_loads(&self, area: &str) -> Result<BTreeSet<String>, StateError> {
        let sql = "SELECT load_id FROM loads WHERE area = $1 AND status = 'published' AND load_id IS NOT NULL";
        let rows: Vec<(String,)> =
            on!(self, p => sqlx::query_as(sql).bind(area).fetch_all(p).await?);
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// A load in the tree that no run records as published (the process
    /// stopped between the publication and its record, or the next run
    /// finished publishing it): the latest unfinished run of that area and
    /// kind started before it becomes its run; without one, a `recovery` run
    /// is recorded.
    pub async fn adopt_published(
        &self,
        area: &str,
        version: u32,
        kind: LoadKind,
        load_id: &str,
        created: DateTime<Utc>,
    ) -> Result<(), StateError> {
        // Load ids have whole seconds; a run starts before its id is taken.
        let before =
            (created + chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
        let note = "published before a stop or crash; recorded afterwards";
        let sql = "UPDATE loads SET status = 'published', load_id = $1, finished_at = $2, error = $3 \
                   WHERE id = (SELECT id FROM loads WHERE area = $4 AND kind = $5 AND load_id IS NULL \
                   AND status IN ('running', 'interrupted') AND started_at <= $6 ORDER BY id DESC LIMIT 1)";
        let adopted = on!(self, p => sqlx::query(sql)
            .bind(load_id)
            .bind(now())
            .bind(note)
            .bind(area)
            .bind(kind.as_str())
            .bind(&before)
            .execute(p)
            .await?
            .rows_affected());
        if adopted == 0 {
            let sql = "INSERT INTO loads (area, version, kind, trigger, status, load_id, started_at, finished_at, error) \
                       VALUES ($1, $2, $3, 'recovery', 'published', $4, $5, $5, $6)";
            on!(self, p => sqlx::query(sql)
                .bind(area)
                .bind(version as i64)
                .bind(kind.as_str())
                .bind(load_id)
                .bind(now())
                .bind(note)
                .execute(p)
                .await
                .map(|_| ())?);
        }
        Ok(())
    }

    /// After a crash: runs still marked running were interrupted, and the
    /// watermarks are set from the published tree (the truth). A run is only
    /// marked where the area's lease is free: with replicas, a run another
    /// one has under way holds the lease and keeps its status.
    pub async fn reconcile(&self, config: &Config) -> Result<usize, StateError> {
        let running: Vec<(String,)> = on!(self, p => sqlx::query_as(
            "SELECT DISTINCT area FROM loads WHERE status = 'running'",
        )
        .fetch_all(p)
        .await?);
        let mut interrupted = 0;
        for (area,) in running {
            let Some(lease) = self.area_lease(&area, false).await? else {
                continue;
            };
            let sql = "UPDATE loads SET status = 'interrupted', finished_at = $1 \
                       WHERE status = 'running' AND area = $2";
            interrupted += on!(self, p => sqlx::query(sql)
                .bind(now())
                .bind(&area)
                .execute(p)
                .await?
                .rows_affected());
            lease.release().await;
        }
        for area in &config.areas {
            let latest = crate::load::latest_loads(&config.store(), area)?;
            if let Some((id, wm)) = latest.values().max_by_key(|(id, _)| *id) {
                self.set_watermark(&area.id, area.version, *wm, &id.to_string())
                    .await?;
            }
        }
        Ok(interrupted as usize)
    }

    /// Whether a run of `area` that started at or after `since` is recorded
    /// as published: any run for a delta, a full one for a full. A load is
    /// recorded before its lease is released, so this holds even where a
    /// shared file system shows a replica another's new load late.
    pub async fn published_since(
        &self,
        area: &str,
        kind: LoadKind,
        since: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let sql = "SELECT COUNT(*) FROM loads WHERE area = $1 AND status = 'published' \
                   AND started_at >= $2 AND (kind = 'full' OR $3 = 'delta')";
        let (n,): (i64,) = on!(self, p => sqlx::query_as(sql)
            .bind(area)
            .bind(since.to_rfc3339_opts(SecondsFormat::Millis, true))
            .bind(kind.as_str())
            .fetch_one(p)
            .await?);
        Ok(n > 0)
    }
}
