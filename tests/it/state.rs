//! The state database records every load run with its outcome and cause, and
//! the watermark per area; after a crash it is reconciled with the tree.
//! On SQLite (the default) and PostgreSQL.

use crate::common;

use udstil::state::State;
use udstil::tree::LoadKind;

async fn check_state(state_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 200, 8)
        .await
        .unwrap();
    let mut config = udstil::app::check_config(&config_path).await.unwrap();
    config.state_url = Some(state_url.to_string());

    let full = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    let source = udstil::source::Source::connect(&config.source_url)
        .await
        .unwrap();
    udstil::fixtures::mutate(&source, 30, 1).await.unwrap();
    source.close().await;
    let delta = udstil::app::run_loads(&config, udstil::app::LoadRequest::delta(Some("joblog")))
        .await
        .unwrap();

    // The source goes away: the run fails and the cause is recorded.
    let mut broken = config.clone();
    broken.source_url = "postgres://postgres@127.0.0.1:1/gone".into();
    assert!(
        udstil::app::run_loads(&broken, udstil::app::LoadRequest::delta(Some("joblog")))
            .await
            .is_err()
    );

    // Also when every area was asked for: each area's run is recorded as failed.
    assert!(
        udstil::app::run_loads(&broken, udstil::app::LoadRequest::full(None))
            .await
            .is_err()
    );

    let state = State::open(state_url).await.unwrap();
    for area in ["plans-and-activities", "unemployment-fund-membership"] {
        let rows = state.loads(area).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            (rows[0].kind.as_str(), rows[0].status.as_str()),
            ("full", "failed")
        );
        assert!(
            rows[0]
                .error
                .as_deref()
                .unwrap()
                .contains("cannot connect to source")
        );
    }
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
            ("delta", "failed"),
            ("full", "failed")
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
    let tree = udstil::load::latest_loads(&config.store(), config.area("joblog").unwrap()).unwrap();
    let (id, wm) = tree.values().max_by_key(|(id, _)| *id).unwrap();
    assert_eq!(
        state.watermark("joblog", 1).await.unwrap(),
        Some((*wm, id.to_string()))
    );
    check_operating_tables(&state).await;
    state.close().await;
    check_audit(&config).await;
}

/// The notification outbox, the status page's tables, the load days and
/// the ledger's download query on this database (the SQL the HTTP side,
/// the watch and `udstil status` use).
async fn check_operating_tables(state: &State) {
    // Outbox: queued, due, a failed attempt deferred, then delivered.
    state
        .notify_enqueue("ops", "load_published", "{}")
        .await
        .unwrap();
    let due = state.notify_due(10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].recipient.as_str(), due[0].attempts), ("ops", 0));
    state
        .notify_failed(due[0].id, std::time::Duration::from_secs(60), "down")
        .await
        .unwrap();
    assert!(state.notify_due(10).await.unwrap().is_empty(), "deferred");
    state.notify_delivered(due[0].id).await.unwrap();
    assert_eq!(state.notify_waiting().await.unwrap(), 0);
    assert!(state.notify_once("k").await.unwrap());
    assert!(!state.notify_once("k").await.unwrap());

    // Incidents and maintenance.
    let id = state
        .incident_open("sftp", "outage", "Nede", "Vi undersøger.")
        .await
        .unwrap();
    assert!(
        state
            .incident_update(id, "resolved", "Løst.")
            .await
            .unwrap()
    );
    assert!(
        !state
            .incident_update(id + 100, "resolved", "x")
            .await
            .unwrap()
    );
    let since = chrono::Utc::now() - chrono::Duration::days(90);
    let incidents = state.incidents(since).await.unwrap();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].updates.len(), 2);
    assert!(incidents[0].resolved_at.is_some());
    let now = chrono::Utc::now();
    state
        .maintenance_plan(&udstil::status::Maintenance {
            id: 0,
            kind: "release".into(),
            title: "R".into(),
            component: None,
            starts_at: now + chrono::Duration::days(1),
            ends_at: now + chrono::Duration::days(2),
            description: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(state.maintenance(since).await.unwrap().len(), 1);

    // Load days: this database recorded joblog runs today, the newest a failure.
    let (days, last_failed) = state.load_days("joblog", since).await.unwrap();
    assert!(
        !days.is_empty() && days.iter().any(|d| d.failed),
        "{days:?}"
    );
    assert!(last_failed);

    // The ledger's query answers (no downloads recorded here).
    assert!(
        state
            .complete_downloads(Some("bi-alpha"), None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The audit chain and the person index on this database: loads recorded,
/// every CPR of a published file indexed, two writers appending at once
/// keep one unbroken chain, retention moves its start, an edit is found.
async fn check_audit(config: &udstil::config::Config) {
    use udstil::audit::{Action, Event};
    let state = State::open(config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let published = state
        .audit_query(&udstil::state::AuditFilter {
            action: Some("load_published".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(published.len(), 2, "{published:?}");
    assert!(
        published[0]
            .event
            .detail
            .as_deref()
            .unwrap()
            .starts_with("full load")
    );

    // Every person in one authority's full-load file is in the index of that load.
    let key = udstil::audit::load_or_create_key(&config.audit.key_file).unwrap();
    let loads = config.store().loads("joblog").unwrap();
    let full = loads
        .iter()
        .find(|l| l.kind == udstil::tree::LoadKind::Full)
        .unwrap();
    let dir_of = |l: &udstil::tree::store::Load| {
        config.storage_root.join(format!(
            "{}/{}/v{}/{}/{}",
            l.authority,
            l.area,
            l.version,
            l.kind.as_str(),
            l.id
        ))
    };
    let persons = common::persons_in(&dir_of(full));
    assert!(!persons.is_empty());
    for cpr in &persons {
        assert!(
            state
                .audit_index_holds(
                    &key.person(cpr),
                    &full.authority.to_string(),
                    &full.id.to_string()
                )
                .await
                .unwrap()
        );
    }
    // ... and a person of another authority only, not.
    let other = loads
        .iter()
        .filter(|l| l.authority != full.authority && l.id == full.id)
        .flat_map(|l| common::persons_in(&dir_of(l)))
        .find(|c| !persons.contains(c))
        .expect("another authority has other persons");
    assert!(
        !state
            .audit_index_holds(
                &key.person(&other),
                &full.authority.to_string(),
                &full.id.to_string()
            )
            .await
            .unwrap()
    );

    // Two writers (as the daemon and a `udstil load` are) append at once.
    let second = State::open(config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let batch = |who: &str| -> Vec<Event> {
        (0..5)
            .map(|i| {
                Event::new(Action::Listing, "ok")
                    .supplier(who)
                    .detail(&format!("{i}"))
            })
            .collect()
    };
    let (a, b) = (state.clone(), second.clone());
    let one = tokio::spawn(async move {
        for _ in 0..10 {
            udstil::audit::writer::append_retrying(&a, &batch("one"), 1000).await;
        }
    });
    let two = tokio::spawn(async move {
        for _ in 0..10 {
            udstil::audit::writer::append_retrying(&b, &batch("two"), 1000).await;
        }
    });
    one.await.unwrap();
    two.await.unwrap();
    second.close().await;
    let summary = udstil::app::audit_verify(config).await.unwrap();
    assert_eq!(summary.first_id, Some(1));
    // 2 loads + 1 index-free verify read is after; 100 listings.
    assert!(summary.rows >= 102, "{summary:?}");

    // Retention: everything before now goes; the chain still verifies, from the anchor.
    let cutoff = udstil::audit::timestamp(chrono::Utc::now() + chrono::Duration::seconds(1));
    let removed = state.audit_prune(&cutoff).await.unwrap();
    assert!(removed >= 103, "{removed}");
    let summary = udstil::app::audit_verify(config).await.unwrap();
    assert_eq!(summary.first_id, Some(removed as i64 + 1));
    let anchor = state.audit_anchor().await.unwrap().unwrap();
    assert_eq!(anchor.last_removed_id, removed as i64);

    // An edit of one row is found and named.
    state
        .audit_append(&[Event::new(Action::Download, "complete")
            .supplier("bi-alpha")
            .bytes(10)])
        .await
        .unwrap();
    let edited = common::tamper_audit(&state, "bytes = 11", "action = 'download'").await;
    let err = udstil::app::audit_verify(config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("audit row {edited} "))
            && err.contains("does not match its contents"),
        "{err}"
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

/// Regression: a load published just before a kill (or half-published and
/// finished by the next run) kept a run record saying `running` or
/// `interrupted`, and never got its `load_published` event. The next start
/// or run records it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_published_but_not_recorded_is_recorded_once_afterwards() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 60, 2)
        .await
        .unwrap();
    let config = udstil::app::check_config(&config_path).await.unwrap();
    let state = State::open(config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    // The run of a process killed after its renames, before its record.
    state
        .load_started("joblog", 1, LoadKind::Full, "schedule")
        .await
        .unwrap();
    let mut unrecorded = config.clone();
    unrecorded.state_url = None;
    let r = udstil::app::run_loads(&unrecorded, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    let id = r[0].load_id.to_string();

    // While a load of the area holds its lock (a run that has published and
    // is about to record), the load is that run's to record, not adopted.
    let joblog = config.area("joblog").unwrap();
    let held = udstil::load::lock_area(&config.store(), joblog).unwrap();
    udstil::app::reconcile_state(&config).await;
    let runs = state.loads("joblog").await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_ne!(
        runs[0].status, "published",
        "adopted under a running load's lock"
    );
    assert_eq!(runs[0].load_id, None);
    drop(held);

    udstil::app::reconcile_state(&config).await;
    let runs = state.loads("joblog").await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "published");
    assert_eq!(runs[0].trigger, "schedule");
    assert_eq!(runs[0].load_id.as_deref(), Some(id.as_str()));
    // Another run (and start) finds it recorded: no second event or record.
    udstil::app::run_loads(&config, udstil::app::LoadRequest::delta(Some("joblog")))
        .await
        .unwrap();
    udstil::app::reconcile_state(&config).await;
    let events = state
        .audit_query(&udstil::state::AuditFilter {
            action: Some("load_published".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let recovered: Vec<_> = events
        .iter()
        .filter(|e| e.event.load_id.as_deref() == Some(id.as_str()))
        .collect();
    assert_eq!(recovered.len(), 1, "{events:?}");
    assert!(
        recovered[0]
            .event
            .detail
            .as_deref()
            .unwrap()
            .contains("recorded after a stop or crash")
    );
    assert_eq!(
        events.len(),
        2,
        "the delta's own event and the recovered one"
    );
    assert_eq!(state.loads("joblog").await.unwrap().len(), 2);
    state.close().await;
}
