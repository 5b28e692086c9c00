//! A PostgreSQL database of a test's own, dropped when the guard goes out of
//! scope, also when the test panics (so failed runs leave nothing behind).

use sqlx::{AssertSqlSafe, Connection, PgConnection};

pub fn admin_url() -> String {
    std::env::var("UDSTIL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct TempDb {
    pub name: String,
    pub url: String,
}

impl TempDb {
    pub async fn create(prefix: &str) -> TempDb {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must run at {admin} for this test: {e}"));
        let name = format!(
            "udstil_{prefix}_{}_{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        TempDb { name, url }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime (or while unwinding): use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}
