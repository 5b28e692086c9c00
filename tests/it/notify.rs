//! Webhook notifications as a receiver sees them: signed, each delivered
//! once, and nothing lost while the receiver is down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;

use crate::common;

const SECRET: &str = "a-webhook-secret-of-32-bytes-len";

/// What the receiver got: signature header, delivery id, event, body.
type Got = Arc<Mutex<Vec<(String, String, String, Bytes)>>>;

/// Starts a webhook receiver on `addr`, recording every POST to `/hook`.
async fn receiver(addr: std::net::SocketAddr, got: Got) {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move {
                let h = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                got.lock().unwrap().push((
                    h("x-udstil-signature"),
                    h("x-udstil-delivery"),
                    h("x-udstil-event"),
                    body,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// Waits until `got` holds `n` notifications (or 60 s pass).
async fn wait_for(got: &Got, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} notifications",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_and_delivered_once_after_the_receiver_comes_back() {
    let hook = common::free_addr();
    let env = common::start_with(200, |dir, text| {
        std::fs::write(dir.join("webhook-secret"), SECRET).unwrap();
        text.push_str(&format!(
            "\n[[notify]]\nid = \"star-ops\"\nwebhook = \"http://{hook}/hook\"\nsecret_file = \"webhook-secret\"\nevents = [\"load_published\", \"load_failed\"]\n\
             \n[[notify]]\nid = \"joblog-failures\"\nwebhook = \"http://{hook}/hook\"\nsecret_file = \"webhook-secret\"\nevents = [\"load_failed\"]\nareas = [\"joblog\"]\n"
        ));
    })
    .await;
    // The full loads of the three areas were queued before the server started;
    // the receiver is down for the first attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got: Got = Arc::default();
    receiver(hook, got.clone()).await;
    wait_for(&got, 3).await;

    // A failed load of joblog reaches both recipients.
    use sqlx::Connection;
    let mut dfdg = sqlx::SqliteConnection::connect(&env.config.source_url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE joblog_journal RENAME TO joblog_journal_gone")
        .execute(&mut dfdg)
        .await
        .unwrap();
    dfdg.close().await.unwrap();
    assert!(
        udstil::app::run_loads(&env.config, udstil::app::LoadRequest::delta(Some("joblog")))
            .await
            .is_err()
    );
    wait_for(&got, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "each notification once");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(ids.len(), 5, "distinct deliveries");
    let mut published = Vec::new();
    let mut failed = 0;
    for (sig, _, event, body) in &got {
        assert_eq!(
            sig,
            &udstil::notify::signature(SECRET.as_bytes(), body),
            "signed"
        );
        let notice: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(notice["event"], event.as_str());
        match event.as_str() {
            "load_published" => published.push(notice["area"].as_str().unwrap().to_string()),
            "load_failed" => {
                assert_eq!(notice["area"], "joblog");
                failed += 1;
            }
            other => panic!("{other}"),
        }
    }
    published.sort();
    assert_eq!(
        published,
        [
            "joblog",
            "plans-and-activities",
            "unemployment-fund-membership"
        ]
    );
    assert_eq!(failed, 2, "one per recipient that asked for it");
    let state = udstil::state::State::open(env.config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(state.notify_waiting().await.unwrap(), 0);
    state.close().await;
    // The first attempts met a receiver that was down.
    let mut db = sqlx::SqliteConnection::connect(env.config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let (attempts,): (i64,) =
        sqlx::query_as("SELECT MIN(attempts) FROM notify_outbox WHERE event = 'load_published'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(attempts >= 2, "{attempts} attempts");
}
