//! The same full load from a PostgreSQL DFDG (the production database).
//! Needs PostgreSQL at UDSTIL_TEST_PG (default postgres://postgres@127.0.0.1:5432/test);
//! each run works in a database of its own and drops it afterwards.

use std::collections::BTreeSet;

use arrow_array::{Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::common;
use crate::common::pg::{TempDb, admin_url};
use udstil::load::Manifest;
use udstil::source::Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_load_from_postgres_routes_every_row_to_its_authorities_only() {
    let db = TempDb::create("test").await;
    let dir = tempfile::tempdir().unwrap();
    let source = Source::create(&db.url).await.unwrap();
    let summary = udstil::fixtures::generate(&source, 600, 3).await.unwrap();
    assert!(summary.rows[0] > 0);

    // The demo config with the PostgreSQL source.
    let (_config_path, config) = common::demo_config_for(dir.path(), &db.url).await;
    assert!(config.source_url.starts_with("postgres"));
    let reports = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    let report = &reports[0];

    let Source::Postgres(pool) = &source else {
        unreachable!()
    };
    let (watermark,): (i64,) = sqlx::query_as("SELECT MAX(seq) FROM joblog_journal")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(report.watermark_to, watermark);
    // The generator leaves every table as autovacuum would: vacuumed (a
    // visibility map for index-only probes) and analysed.
    let (kept, tables): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE last_vacuum IS NOT NULL AND last_analyze IS NOT NULL), \
         count(*) FROM pg_stat_user_tables",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((kept, tables), (6, 6));

    // Every published row, per authority, is exactly the source's non-draft rows for it.
    let mut published_total = 0;
    for kind_dir in std::fs::read_dir(&config.storage_root).unwrap() {
        let kind_dir = kind_dir.unwrap().path();
        let kind = kind_dir.file_name().unwrap().to_string_lossy().into_owned();
        if kind.starts_with('.') {
            continue;
        }
        let column = if kind == "kommune" {
            "kommune_kode"
        } else {
            "akasse_kode"
        };
        for auth in std::fs::read_dir(&kind_dir).unwrap() {
            let auth = auth.unwrap().path();
            let code = auth.file_name().unwrap().to_string_lossy().into_owned();
            let full = auth.join("joblog/v1/full");
            let load = std::fs::read_dir(&full)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            let manifest: Manifest =
                serde_json::from_slice(&std::fs::read(load.join("MANIFEST.json")).unwrap())
                    .unwrap();
            assert_eq!(manifest.watermark_to, watermark);
            assert!(
                manifest
                    .schema
                    .iter()
                    .all(|f| f.name != "skat_indkomst" && f.name != "kladde")
            );
            let mut got = BTreeSet::new();
            for f in &manifest.files {
                let reader = ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(load.join(&f.name)).unwrap(),
                )
                .unwrap()
                .build()
                .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let ids = batch
                        .column_by_name("joblog_id")
                        .unwrap()
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap();
                    got.extend(ids.iter().map(|v| v.unwrap()));
                }
            }
            let sql = format!("SELECT joblog_id FROM joblog WHERE {column} = $1 AND NOT kladde");
            let want: BTreeSet<i64> = sqlx::query_as::<_, (i64,)>(AssertSqlSafe(sql))
                .bind(&code)
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|(k,)| k)
                .collect();
            assert_eq!(got, want, "{kind}/{code}");
            published_total += got.len() as u64;
        }
    }
    let (routable,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM joblog WHERE NOT kladde) + (SELECT COUNT(*) FROM joblog WHERE NOT kladde AND akasse_kode IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        published_total, routable as u64,
        "each row once per authority it belongs to"
    );
    assert_eq!(report.rows_written, published_total);
    source.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_fails_the_load_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 50, 1)
        .await
        .unwrap();
    let config = udstil::app::check_config(&config_path).await.unwrap();
    udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    let before = std::fs::read_dir(config.storage_root.join("kommune/101/joblog/v1/full"))
        .unwrap()
        .count();
    let mut broken = config.clone();
    // Port 1 on loopback: nothing listens there.
    broken.source_url = "postgres://postgres@127.0.0.1:1/none".into();
    let err = udstil::app::run_loads(&broken, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot connect to source postgres://postgres@127.0.0.1:1/none"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(config.storage_root.join("kommune/101/joblog/v1/full"))
            .unwrap()
            .count(),
        before
    );
}

/// The source drops mid-load (its backend is terminated while the extract
/// streams): the load fails with the cause, nothing is published, staging is
/// cleaned, and the next run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dropping_mid_load_publishes_nothing_and_the_next_run_succeeds() {
    let (db, _dir, source, config) = loaded_joblog(20_000, 9).await;
    let before = tree_files(&config.storage_root);

    // Terminate the extract's backend (a binary COPY) as soon as it is streaming.
    let killer = {
        let admin = admin_url();
        let name = db.name.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&admin).await.unwrap();
            for _ in 0..2000 {
                let killed: Vec<(bool,)> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND state = 'active' AND query LIKE 'COPY (SELECT \"joblog_id\"%'",
                )
                .bind(&name)
                .fetch_all(&mut conn)
                .await
                .unwrap();
                if killed.iter().any(|(k,)| *k) {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            false
        })
    };
    let err = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap_err()
        .to_string();
    assert!(killer.await.unwrap(), "the extract was never seen running");
    assert!(
        err.contains("area joblog") && err.contains("source query on joblog failed"),
        "{err}"
    );
    assert_eq!(
        tree_files(&config.storage_root),
        before,
        "the published tree changed"
    );
    let staging: Vec<_> = std::fs::read_dir(config.storage_root.join(".staging"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");

    let r = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    assert!(r[0].rows_read > 0);
    source.close().await;
}

/// A source row PostgreSQL holds but Parquet cannot (an infinite timestamp):
/// the full load fails naming table, column and row, not the value; nothing
/// is published; once the row is mended the next run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_source_value_fails_the_load_naming_where_and_publishes_nothing() {
    let (db, _dir, source, config) = loaded_joblog(500, 4).await;
    let before = tree_files(&config.storage_root);

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // The 3rd published row in key order (the extract's order).
    let (id,): (i64,) = sqlx::query_as(
        "SELECT joblog_id FROM joblog WHERE NOT COALESCE(kladde, FALSE) \
         ORDER BY joblog_id OFFSET 2 LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let set = |value: &'static str| {
        format!("UPDATE joblog SET sidst_opdateret = {value} WHERE joblog_id = {id}")
    };
    sqlx::query(AssertSqlSafe(set("'infinity'")))
        .execute(&mut conn)
        .await
        .unwrap();
    let err = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "source row 3 of joblog: column sidst_opdateret does not hold a valid timestamp"
        ) && err.contains("infinite timestamp"),
        "{err}"
    );
    assert!(!err.contains("infinity"), "the value is not quoted: {err}");
    assert_eq!(tree_files(&config.storage_root), before);

    sqlx::query(AssertSqlSafe(set("now()")))
        .execute(&mut conn)
        .await
        .unwrap();
    let r = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    assert!(r[0].rows_read > 0);
    conn.close().await.unwrap();
    source.close().await;
}

/// A DFDG of its own with `citizens` generated, the demo config over it and
/// a first full load of joblog published.
async fn loaded_joblog(
    citizens: u64,
    seed: u64,
) -> (TempDb, tempfile::TempDir, Source, udstil::config::Config) {
    let db = TempDb::create("test").await;
    let dir = tempfile::tempdir().unwrap();
    let source = Source::create(&db.url).await.unwrap();
    udstil::fixtures::generate(&source, citizens, seed)
        .await
        .unwrap();
    let (_config_path, config) = common::demo_config_for(dir.path(), &db.url).await;
    udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    (db, dir, source, config)
}

/// Every file under the tree (staging excluded) with its size.
fn tree_files(root: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::metadata(&p).unwrap().len());
            }
        }
    }
    out
}

/// Opens a transaction that journals an update of the live row last journalled
/// at `copy_of`, under sequence number `seq`; the caller commits it (or not).
async fn journal_update(conn: &mut PgConnection, copy_of: i64, seq: i64) {
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TEMP TABLE change_{seq} AS SELECT * FROM joblog_journal WHERE seq = {copy_of}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE change_{seq} SET seq = {seq}, op = 'U', changed_at = now()"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO joblog_journal SELECT * FROM change_{seq}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
}

/// PostgreSQL draws sequence numbers before commit: a change journalled as
/// n+1 can commit after n+2. A load must wait for it rather than publish a
/// watermark of n+2 and skip n+1 for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_of_a_lower_sequence_is_not_skipped() {
    let db = TempDb::create("late").await;
    let dir = tempfile::tempdir().unwrap();
    let source = Source::create(&db.url).await.unwrap();
    udstil::fixtures::generate(&source, 200, 5).await.unwrap();
    let (_config_path, config) = common::demo_config_for(dir.path(), &db.url).await;
    let Source::Postgres(pool) = &source else {
        unreachable!()
    };
    // Two keys whose last journal entry is a live row, to journal updates of.
    let live: Vec<i64> = sqlx::query_scalar(
        "SELECT seq FROM joblog_journal j WHERE op <> 'D' AND NOT kladde AND seq = \
         (SELECT MAX(seq) FROM joblog_journal k WHERE k.joblog_id = j.joblog_id) \
         ORDER BY seq DESC LIMIT 4",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let top: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM joblog_journal")
        .fetch_one(pool)
        .await
        .unwrap();

    // A full load while n+1 is uncommitted and n+2 committed: it waits for n+1.
    let mut slow = PgConnection::connect(&db.url).await.unwrap();
    let mut fast = PgConnection::connect(&db.url).await.unwrap();
    journal_update(&mut slow, live[0], top + 1).await;
    journal_update(&mut fast, live[1], top + 2).await;
    sqlx::query("COMMIT").execute(&mut fast).await.unwrap();
    let cfg = config.clone();
    let full = tokio::spawn(async move {
        udstil::app::run_loads(&cfg, udstil::app::LoadRequest::full(Some("joblog"))).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!full.is_finished(), "the full load must wait for n+1");
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    let report = full.await.unwrap().unwrap().remove(0);
    assert_eq!(report.watermark_to, top + 2);

    // The same for a delta: it must carry n+3 and n+4, not only n+4.
    journal_update(&mut slow, live[2], top + 3).await;
    journal_update(&mut fast, live[3], top + 4).await;
    sqlx::query("COMMIT").execute(&mut fast).await.unwrap();
    let cfg = config.clone();
    let delta = tokio::spawn(async move {
        udstil::app::run_loads(&cfg, udstil::app::LoadRequest::delta(Some("joblog"))).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!delta.is_finished(), "the delta must wait for n+3");
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    let report = delta.await.unwrap().unwrap().remove(0);
    assert_eq!(report.watermark_from, Some(top + 2));
    assert_eq!(report.watermark_to, top + 4);

    // Both changes reached their authorities' deltas.
    let mut seqs = BTreeSet::new();
    let mut stack = vec![config.storage_root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet")
                && p.to_string_lossy().contains("/delta/")
            {
                let reader =
                    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&p).unwrap())
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let col = batch.column_by_name("_seq").unwrap();
                    let col = col.as_any().downcast_ref::<Int64Array>().unwrap();
                    seqs.extend(col.iter().map(|v| v.unwrap()));
                }
            }
        }
    }
    assert_eq!(seqs, BTreeSet::from([top + 3, top + 4]));
    drop((slow, fast));
    source.close().await;
}

/// A stop while a scheduled load is under way, its extract held up by a lock
/// on DFDG's table, ends within the stop timeout: the run is abandoned and
/// nothing of it is published (the next start discards what it staged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_abandons_a_scheduled_load_that_does_not_finish_in_time() {
    use std::time::{Duration, Instant};
    let db = TempDb::create("stopload").await;
    let source = Source::create(&db.url).await.unwrap();
    udstil::fixtures::generate(&source, 100, 2).await.unwrap();
    source.close().await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, config) = common::demo_config_for(dir.path(), &db.url).await;
    let every_second = "schedule = { full = \"* * * * * *\" }";
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replacen("[sftp]\n", "[sftp]\nstop_timeout_seconds = 2\n", 1)
        .replacen(
            "schedule = { delta = \"0 0 * * * *\", full = \"0 30 2 * * Sun\" }",
            every_second,
            1,
        );
    assert!(text.contains(every_second), "demo config moved");
    std::fs::write(&cfg, text).unwrap();

    // Another session holds joblog: the scheduled extract waits for it.
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE joblog IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let log = dir.path().join("serve.log");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_udstil"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "udstil=info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut watcher = PgConnection::connect(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE NOT granted")
            .fetch_one(&mut watcher)
            .await
            .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduled load never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break Some(status);
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = server.kill();
            let _ = server.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = t.elapsed();
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let status = status.unwrap_or_else(|| panic!("still running 30 s after SIGTERM:\n{text}"));
    assert!(status.success(), "{status}\n{text}");
    assert!(
        took < Duration::from_secs(12),
        "the stop took {took:?}\n{text}"
    );
    assert!(text.contains("abandoned at the stop"), "{text}");
    // Nothing of the abandoned load reached the tree.
    let joblog = config.storage_root.join("kommune/101/joblog");
    assert!(!joblog.exists(), "{} exists", joblog.display());
}
