//! The daemon's schedules run real loads: a delta every two seconds picks up
//! changes made to the source while it runs.

use std::time::Duration;

use udstil::source::Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_deltas_publish_changes() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 200, 5)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&config_path).unwrap().replace(
        "schedule = { delta = \"0 0 * * * *\", full = \"0 30 2 * * Sun\" }",
        "schedule = { delta = \"*/2 * * * * *\" }",
    );
    std::fs::write(&config_path, text).unwrap();
    let config = std::sync::Arc::new(udstil::app::check_config(&config_path).await.unwrap());
    assert!(config.area("joblog").unwrap().schedule_delta.is_some());

    // No full load yet: the first scheduled delta makes one.
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = udstil::app::spawn_schedules(config.clone(), stop.clone());
    let full_dir = config.storage_root.join("kommune/101/joblog/v1/full");
    let delta_dir = config.storage_root.join("kommune/101/joblog/v1/delta");
    let wait_for = |dir: std::path::PathBuf, n: usize| async move {
        for _ in 0..100 {
            if std::fs::read_dir(&dir).map(|r| r.count()).unwrap_or(0) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    assert!(
        wait_for(full_dir.clone(), 1).await,
        "no full load from the schedule"
    );

    let source = Source::connect(&config.source_url).await.unwrap();
    udstil::fixtures::mutate(&source, 50, 3).await.unwrap();
    let hwm = source
        .high_water_mark(config.area("joblog").unwrap())
        .await
        .unwrap();
    assert!(
        wait_for(delta_dir.clone(), 1).await,
        "no delta from the schedule"
    );
    // Eventually a delta reaches the source's high-water mark.
    let mut reached = false;
    for _ in 0..50 {
        let latest =
            udstil::load::latest_loads(&config.store(), config.area("joblog").unwrap()).unwrap();
        if latest.values().all(|(_, wm)| *wm >= hwm) {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reached, "deltas never reached watermark {hwm}");
    // Regression: scheduled runs were recorded as `manual`.
    let state = udstil::state::State::open(config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let runs = state.loads("joblog").await.unwrap();
    assert!(!runs.is_empty());
    for r in &runs {
        assert_eq!(r.trigger, "schedule", "{r:?}");
    }
    state.close().await;
    stop.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("schedules stop on shutdown")
            .unwrap();
    }
    source.close().await;
}
