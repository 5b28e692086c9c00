//! The state database records every load run with its outcome and cause, and
//! the watermark per area; after a crash it is reconciled with the tree.
//! On SQLite (the default) and PostgreSQL.

mod common;

use udstil::state::State;
use udstil::tree::LoadKind;

async fn check_state(state_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 200, 8)
        .await
        .unwrap();
    let mut config = udstil::app::check_config(&config_path).await.unwrap();
    config.state_url = Some(state_url.to_string());

    let full = udstil::app::run_loads(&config, Some("joblog"), LoadKind::Full)
        .await
        .unwrap();
    let source = udstil::source::Source::connect(&config.source_url)
        .await
        .unwrap();
    udstil::fixtures::mutate(&source, 30, 1).await.unwrap();
    source.close().await;
    let delta = udstil::app::run_loads(&config, Some("joblog"), LoadKind::Delta)
        .await
        .unwrap();

    // The source goes away: the run fails and the cause is recorded.
    let mut broken = config.clone();
    broken.source_url = "postgres://postgres@127.0.0.1:1/gone".into();
    assert!(
        udstil::app::run_loads(&broken, Some("joblog"), LoadKind::Delta)
            .await
            .is_err()
    );

    let state = State::open(state_url).await.unwrap();
    let rows = state.loads("joblog").await.unwrap();
    let summary: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("full", "published"),
            ("delta", "published"),
            ("delta", "failed")
        ]
    );
    assert_eq!(rows[0].load_id, Some(full[0].load_id.to_string()));
    assert_eq!(rows[1].watermark_to, Some(delta[0].watermark_to));
    assert!(
        rows[2]
            .error
            .as_deref()
            .unwrap()
            .contains("cannot connect to source"),
        "{:?}",
        rows[2].error
    );
    assert_eq!(
        state.watermark("joblog", 1).await.unwrap(),
        Some((delta[0].watermark_to, delta[0].load_id.to_string()))
    );

    // A run that was killed stays "running"; start-up reconciliation marks it.
    state
        .load_started("joblog", 1, LoadKind::Delta, "schedule")
        .await
        .unwrap();
    assert_eq!(state.reconcile(&config).await.unwrap(), 1);
    assert_eq!(
        state.loads("joblog").await.unwrap().last().unwrap().status,
        "interrupted"
    );
    // The tree is the truth for watermarks.
    let tree =
        udstil::load::latest_loads(&config.storage_root, config.area("joblog").unwrap()).unwrap();
    let (id, wm) = tree.values().max_by_key(|(id, _)| *id).unwrap();
    assert_eq!(
        state.watermark("joblog", 1).await.unwrap(),
        Some((*wm, id.to_string()))
    );
    state.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_on_sqlite_records_runs_failures_and_reconciles() {
    let dir = tempfile::tempdir().unwrap();
    check_state(&format!(
        "sqlite://{}",
        dir.path().join("state.sqlite").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_on_postgres_records_runs_failures_and_reconciles() {
    let db = common::pg::TempDb::create("state").await;
    check_state(&db.url).await;
}
