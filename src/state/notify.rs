//! The notification outbox's SQL (see `notify::outbox`).

use super::{State, StateError, now};

/// One notification waiting to be delivered.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub recipient: String,
    pub event: String,
    pub body: String,
    pub attempts: i64,
    /// When it became due, as stored: what [`State::notify_claim`] compares.
    pub due_at: String,
}

impl State {
    /// Queues `body` for `recipient`, due at once.
    pub async fn notify_enqueue(
        &self,
        recipient: &str,
        event: &str,
        body: &str,
    ) -> Result<(), StateError> {
        let sql = "INSERT INTO notify_outbox (recipient, event, body, created_at, next_attempt_at) \
                   VALUES ($1, $2, $3, $4, $4)";
        let at = now();
        on!(self, p => sqlx::query(sql)
            .bind(recipient)
            .bind(event)
            .bind(body)
            .bind(&at)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Notifications due now, oldest first.
    pub async fn notify_due(&self, limit: i64) -> Result<Vec<Pending>, StateError> {
        let sql = "SELECT id, recipient, event, body, CAST(attempts AS BIGINT) AS attempts, \
                   next_attempt_at AS due_at FROM notify_outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
                   ORDER BY id LIMIT $2";
        let at = now();
        Ok(on!(self, p => sqlx::query_as(sql).bind(&at).bind(limit).fetch_all(p).await)?)
    }

    /// Takes a due notification for this process for `lease`: its due time
    /// moves on only if no other replica took it since it was read. A
    /// process that dies while sending leaves it due again after `lease`.
    pub async fn notify_claim(
        &self,
        n: &Pending,
        lease: std::time::Duration,
    ) -> Result<bool, StateError> {
        let sql = "UPDATE notify_outbox SET next_attempt_at = $1 \
                   WHERE id = $2 AND delivered_at IS NULL AND next_attempt_at = $3";
        let until = (chrono::Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let taken = on!(self, p => sqlx::query(sql)
            .bind(&until)
            .bind(n.id)
            .bind(&n.due_at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(taken == 1)
    }

    pub async fn notify_delivered(&self, id: i64) -> Result<(), StateError> {
        let sql =
            "UPDATE notify_outbox SET delivered_at = $1, attempts = attempts + 1 WHERE id = $2";
        let at = now();
        on!(self, p => sqlx::query(sql).bind(&at).bind(id).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Records a failed attempt; the next one is due after `wait`.
    pub async fn notify_failed(
        &self,
        id: i64,
        wait: std::time::Duration,
        error: &str,
    ) -> Result<(), StateError> {
        let sql = "UPDATE notify_outbox SET attempts = attempts + 1, next_attempt_at = $1, \
                   last_error = $2 WHERE id = $3";
        let next = (chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        on!(self, p => sqlx::query(sql)
            .bind(&next)
            .bind(error)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Notifications not delivered yet (for the operator and the tests).
    pub async fn notify_waiting(&self) -> Result<i64, StateError> {
        let sql = "SELECT COUNT(*) FROM notify_outbox WHERE delivered_at IS NULL";
        let (n,): (i64,) = on!(self, p => sqlx::query_as(sql).fetch_one(p).await)?;
        Ok(n)
    }

    /// Claims `key`: true the first time, false ever after.
    pub async fn notify_once(&self, key: &str) -> Result<bool, StateError> {
        let sql = "INSERT INTO notify_sent (key, at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
        let at = now();
        let n = on!(self, p => sqlx::query(sql)
            .bind(key)
            .bind(&at)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }
}
