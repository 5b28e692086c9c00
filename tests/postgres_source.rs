//! The same full load from a PostgreSQL DFDG (the production database).
//! Needs PostgreSQL at UDSTIL_TEST_PG (default postgres://postgres@127.0.0.1:5432/test);
//! each run works in a database of its own and drops it afterwards.

use std::collections::BTreeSet;

use arrow_array::{Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

mod common;
use common::pg::{TempDb, admin_url};
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
    let reports = udstil::app::full_loads(&config, Some("joblog"))
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
    udstil::app::full_loads(&config, Some("joblog"))
        .await
        .unwrap();
    let before = std::fs::read_dir(config.storage_root.join("kommune/101/joblog/v1/full"))
        .unwrap()
        .count();
    let mut broken = config.clone();
    // Port 1 on loopback: nothing listens there.
    broken.source_url = "postgres://postgres@127.0.0.1:1/none".into();
    let err = udstil::app::full_loads(&broken, Some("joblog"))
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
    let db = TempDb::create("test").await;
    let dir = tempfile::tempdir().unwrap();
    let source = Source::create(&db.url).await.unwrap();
    udstil::fixtures::generate(&source, 20_000, 9)
        .await
        .unwrap();
    let (_config_path, config) = common::demo_config_for(dir.path(), &db.url).await;
    udstil::app::full_loads(&config, Some("joblog"))
        .await
        .unwrap();
    let before = tree_files(&config.storage_root);

    // Terminate the extract's backend as soon as it is streaming.
    let killer = {
        let admin = admin_url();
        let name = db.name.clone();
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&admin).await.unwrap();
            for _ in 0..2000 {
                let killed: Vec<(bool,)> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND state = 'active' AND query LIKE 'SELECT \"joblog_id\"%'",
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
    let err = udstil::app::full_loads(&config, Some("joblog"))
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

    let r = udstil::app::full_loads(&config, Some("joblog"))
        .await
        .unwrap();
    assert!(r[0].rows_read > 0);
    source.close().await;
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
