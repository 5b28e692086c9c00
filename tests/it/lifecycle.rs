//! A new data area through its life in a running `udstil serve`, as
//! suppliers see it with OpenSSH's sftp: test loads (from a test DFDG) only
//! for the supplier subscribed to them, in `<area>.test/`; production from
//! its planned time with a first full load, the test loads gone; retired
//! (no more loads); removed after its notice period. Test loads never
//! appear in production paths.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use crate::reload::{Daemon, within};
use udstil::app;

const AREA: &str = "activities-next";

/// `ls -1` of `dir` as `supplier` sees it (`None` when refused).
fn ls(addr: std::net::SocketAddr, dir: &Path, supplier: &str, path: &str) -> Option<Vec<String>> {
    let out = tokio::task::block_in_place(|| {
        sftp_with_key(
            addr,
            supplier,
            &dir.join("keys").join(supplier),
            &format!("ls -1 {path}\n"),
            &[],
        )
    });
    out.status.success().then(|| {
        stdout(&out)
            .lines()
            .filter(|l| !l.starts_with("sftp>"))
            .map(|l| l.trim().rsplit('/').next().unwrap_or_default().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    })
}

/// Every MANIFEST.json under `dir` in the tree.
fn manifests(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "MANIFEST.json") {
                out.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
            }
        }
    }
    out
}

async fn rows_in(db: &Path) -> i64 {
    let source = udstil::source::Source::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let udstil::source::Source::Sqlite(pool) = &source else {
        unreachable!()
    };
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM plan_aktivitet WHERE kommune_kode = '101' AND NOT kladde",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    source.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_area_goes_from_test_to_production_to_retired() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = app::prepare_demo(dir.path(), addr, 150, 7).await.unwrap();
    // The test DFDG: the same tables, other (synthetic) people.
    let test_db = dir.path().join("dfdg-test.sqlite");
    let test_source = udstil::source::Source::create(&format!("sqlite://{}", test_db.display()))
        .await
        .unwrap();
    udstil::fixtures::generate(&test_source, 60, 99)
        .await
        .unwrap();
    test_source.close().await;
    let (production_rows, test_rows) = (
        rows_in(&dir.path().join("dfdg.sqlite")).await,
        rows_in(&test_db).await,
    );
    assert_ne!(production_rows, test_rows);

    let now = chrono::Utc::now();
    let at = |s: i64| {
        (now + chrono::Duration::seconds(s)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (production_from, retired_from, removed_from) = (at(20), at(32), at(40));
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    // bi-alpha subscribes to the area and to its test loads; bi-beta to the area only.
    text = text
        .replacen(
            "supplier = \"bi-alpha\"\nareas = [\"joblog\", \"plans-and-activities\"]",
            &format!("supplier = \"bi-alpha\"\nareas = [\"joblog\", \"plans-and-activities\", \"{AREA}\"]\ntest_areas = [\"{AREA}\"]"),
            1,
        )
        .replacen(
            "supplier = \"bi-beta\"\nareas = [\"joblog\"]",
            &format!("supplier = \"bi-beta\"\nareas = [\"joblog\", \"{AREA}\"]"),
            1,
        );
    text.push_str(&format!(
        r#"
[[area]]
id = "{AREA}"
version = 1
table = "plan_aktivitet"
journal = "plan_aktivitet_journal"
key = ["aktivitet_id"]
sequence_column = "seq"
operation_column = "op"
changed_at_column = "changed_at"
route = {{ kommune = "kommune_kode" }}
draft_column = "kladde"
exclude_columns = ["anden_aktoer_notat"]
schedule = {{ delta = "*/3 * * * * *" }}
[area.lifecycle]
test_from = "2026-01-01"
test_source = "sqlite://dfdg-test.sqlite"
production_from = "{production_from}"
test_kept_days = 0
retired_from = "{retired_from}"
removed_from = "{removed_from}"
"#
    ));
    std::fs::write(&config_path, &text).unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    // Full loads of every area as they stand: the new one's is a test load.
    let reports = app::run_loads(&config, app::LoadRequest::full(None))
        .await
        .unwrap();
    assert!(reports.iter().any(|r| r.area == format!("{AREA}.test")));
    assert!(!reports.iter().any(|r| r.area == AREA));
    assert_eq!(
        config.area(AREA).unwrap().stage_at(chrono::Utc::now()),
        udstil::lifecycle::Stage::Test
    );
    let root = config.storage_root.clone();

    let log = dir.path().join("daemon.log");
    let _daemon = Daemon::serve(&config_path, &log);
    let d = dir.path();
    let test_dir = format!("{AREA}.test");

    // Test stage: the test load is there for bi-alpha only, marked test.
    assert!(
        within(Duration::from_secs(20), async || {
            ls(addr, d, "bi-alpha", "/kommune/101").is_some_and(|l| l.contains(&test_dir))
        })
        .await,
        "no test load for bi-alpha: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let alpha = ls(addr, d, "bi-alpha", "/kommune/101").unwrap();
    assert!(
        !alpha.contains(&AREA.to_string()),
        "production before its time: {alpha:?}"
    );
    let beta = ls(addr, d, "bi-beta", "/kommune/101").unwrap();
    assert!(
        !beta.iter().any(|a| a.starts_with(AREA)),
        "bi-beta sees {beta:?}"
    );
    assert!(ls(addr, d, "bi-beta", &format!("/kommune/101/{test_dir}")).is_none());
    let got = tempfile::tempdir().unwrap();
    let fetch = tokio::task::block_in_place(|| {
        sftp_with_key(
            addr,
            "bi-alpha",
            &d.join("keys/bi-alpha"),
            &format!(
                "get -R /kommune/101/{test_dir}/v1 {}/v1\n",
                got.path().display()
            ),
            &[],
        )
    });
    assert!(fetch.status.success(), "{}", stderr(&fetch));
    let test_manifests = manifests(got.path());
    assert!(!test_manifests.is_empty());
    for m in &test_manifests {
        assert_eq!(m["stage"], "test", "{m}");
        assert_eq!(m["area"], test_dir.as_str());
    }
    let test_full = test_manifests.iter().find(|m| m["kind"] == "full").unwrap();
    assert_eq!(
        test_full["rows"], test_rows,
        "test loads come from the test DFDG"
    );
    println!("test stage: bi-alpha sees {alpha:?}, bi-beta {beta:?}");

    // Production from its time: a first full load, the test loads gone.
    let production_at = chrono::DateTime::parse_from_rfc3339(&production_from).unwrap();
    assert!(
        chrono::Utc::now() < production_at,
        "the test stage was over before it was checked"
    );
    assert!(
        within(Duration::from_secs(40), async || {
            ls(addr, d, "bi-beta", "/kommune/101").is_some_and(|l| l.contains(&AREA.to_string()))
        })
        .await,
        "no production load: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        chrono::Utc::now() >= production_at,
        "production before its time"
    );
    let alpha = ls(addr, d, "bi-alpha", "/kommune/101").unwrap();
    assert!(
        alpha.contains(&AREA.to_string()) && !alpha.contains(&test_dir),
        "{alpha:?}"
    );
    assert!(
        !root.join("kommune/101").join(&test_dir).exists(),
        "test loads kept"
    );
    let production = manifests(&root.join("kommune/101").join(AREA));
    let full = production
        .iter()
        .find(|m| m["kind"] == "full")
        .expect("a first full load");
    assert_eq!(
        full["rows"], production_rows,
        "production loads come from DFDG"
    );
    assert!(
        production.iter().all(|m| m.get("stage").is_none()),
        "a test load in a production path: {production:?}"
    );
    println!("production: bi-alpha sees {alpha:?}");

    // Retired: the loads stay, no new ones.
    let retired_at = chrono::DateTime::parse_from_rfc3339(&retired_from).unwrap();
    while chrono::Utc::now() < retired_at + chrono::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let at_retirement = manifests(&root.join("kommune/101").join(AREA)).len();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        manifests(&root.join("kommune/101").join(AREA)).len(),
        at_retirement,
        "a load after retirement"
    );
    assert!(
        ls(addr, d, "bi-beta", "/kommune/101")
            .unwrap()
            .contains(&AREA.to_string())
    );
    let refused = udstil(&["load", "--area", AREA, "--delta"], &config_path);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("is retired now"),
        "{}",
        stderr(&refused)
    );

    // Removed after the notice period.
    assert!(
        within(Duration::from_secs(15), async || {
            ls(addr, d, "bi-beta", "/kommune/101").is_some_and(|l| !l.contains(&AREA.to_string()))
        })
        .await,
        "retired area not removed: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(!root.join("kommune/101").join(AREA).exists());
    assert!(
        ls(addr, d, "bi-alpha", "/kommune/101")
            .unwrap()
            .contains(&"joblog".to_string())
    );
}
