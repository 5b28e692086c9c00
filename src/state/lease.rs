//! Which replica runs an area's load: a PostgreSQL advisory lock per area
//! (tree name), held on a connection of its own for the whole load. A
//! replica that dies loses its connection, and with it the lock, at once;
//! another one waiting takes it over. With a SQLite state database there is
//! one host, and the tree's file lock is enough.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::{State, StateError};

/// The advisory lock's first key: "udstil load" in a number of its own.
const LOAD_LOCKS: i32 = 0x7564_7374;

/// How often a replica that waits asks for the lock again.
const RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Held while one replica runs a load of an area; released when dropped
/// (the connection closes) or by [`AreaLease::release`].
pub struct AreaLease {
    conn: Option<PgConnection>,
    area: String,
}

impl AreaLease {
    /// Gives the lock back and closes its connection.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(LOAD_LOCKS)
                .bind(&self.area)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

impl State {
    /// The lease of `area` (a tree name), or `None` while another replica
    /// holds it and `wait` is false. With `wait`, asks every 250 ms until
    /// it is free. Always granted without PostgreSQL.
    pub async fn area_lease(
        &self,
        area: &str,
        wait: bool,
    ) -> Result<Option<AreaLease>, StateError> {
        let State::Postgres(pool) = self else {
            return Ok(Some(AreaLease {
                conn: None,
                area: area.to_string(),
            }));
        };
        // A connection of its own: one returned to the pool would keep the lock.
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        loop {
            let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(LOAD_LOCKS)
                .bind(area)
                .fetch_one(&mut conn)
                .await?;
            if got {
                return Ok(Some(AreaLease {
                    conn: Some(conn),
                    area: area.to_string(),
                }));
            }
            if !wait {
                let _ = conn.close().await;
                return Ok(None);
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}
