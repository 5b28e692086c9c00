//! Three `udstil serve` replicas sharing one PostgreSQL state database and
//! one tree: each scheduled load runs on exactly one of them; when the
//! replica running a load is killed (SIGKILL), another one takes the load
//! over at once; the audit trail stays one valid chain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::common::pg::TempDb;
use crate::common::*;
use crate::reload::{Daemon, within};
use udstil::app;

/// The replica holding an area's load lease now, by its PostgreSQL
/// application name (`replica<N>`).
async fn lease_holder(url: &str) -> Option<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
    let holder: Option<(String,)> = sqlx::query_as(
        "SELECT a.application_name::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await
    .ok()?;
    let _ = conn.close().await;
    holder.map(|(n,)| n)
}

/// Full loads of joblog for kommune/101 in the tree, by their start second.
fn full_loads(root: &std::path::Path) -> Vec<chrono::DateTime<chrono::Utc>> {
    let dir = root.join("kommune/101/joblog/v1/full");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| udstil::tree::LoadId::parse(&e.file_name().to_string_lossy()))
        .map(|id| id.at)
        .collect();
    out.sort();
    out
}

/// The ten-second tick a load that started at `at` was for.
fn tick_of(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp() / 10 * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_run_each_scheduled_load_once_and_take_over_from_a_killed_one() {
    let db = TempDb::create("replicas").await;
    let dir = tempfile::tempdir().unwrap();
    // Big enough that a full load of joblog takes a few seconds (debug build).
    let base = app::prepare_demo(dir.path(), free_addr(), 20_000, 7)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace(
            "url = \"sqlite://state.sqlite\"",
            &format!("url = \"{}?application_name=REPLICA\"", db.url),
        )
        .replace(
            "schedule = { delta = \"0 0 * * * *\", full = \"0 30 2 * * Sun\" }",
            "schedule = { full = \"*/10 * * * * *\" }",
        )
        .replace("schedule = { delta = \"0 15 * * * *\" }\n", "")
        .replace("schedule = { delta = \"0 45 1 * * *\" }\n", "");
    assert!(text.contains("*/10 * * * * *") && text.contains("application_name=REPLICA"));
    let root = dir.path().join("tree");
    let mut replicas = BTreeMap::new();
    for i in 0..3 {
        let listen = free_addr();
        let config = dir.path().join(format!("replica{i}.toml"));
        std::fs::write(
            &config,
            text.replacen(
                &format!(
                    "listen = \"{}\"",
                    text.split("listen = \"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                ),
                &format!("listen = \"{listen}\""),
                1,
            )
            .replace(
                "application_name=REPLICA",
                &format!("application_name=replica{i}"),
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("replica{i}.log"));
        let daemon = Daemon::serve(&config, &log);
        // The first one makes the shared host key; the others start after it.
        assert!(
            within(Duration::from_secs(20), async || {
                std::net::TcpStream::connect(listen).is_ok()
            })
            .await,
            "replica{i} did not start: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        replicas.insert(format!("replica{i}"), (daemon, log, config));
    }

    // The first tick's load runs once.
    assert!(
        within(Duration::from_secs(30), async || !full_loads(&root)
            .is_empty())
        .await,
        "no scheduled load: {}",
        std::fs::read_to_string(&replicas["replica0"].1).unwrap()
    );
    // At the next tick: kill the replica that takes the lease, as soon as it has it.
    let first = tick_of(full_loads(&root)[0]);
    let next = first + 10;
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        assert!(
            Instant::now() < deadline,
            "no replica took the lease for the next tick"
        );
        if chrono::Utc::now().timestamp() >= next
            && let Some(holder) = lease_holder(&db.url).await
        {
            break holder;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut daemon, ..) = replicas.remove(&victim).unwrap();
    daemon.0.kill().unwrap();
    let killed_at = Instant::now();
    let _ = daemon.0.wait();
    println!("killed {victim}, which held joblog's lease for the tick at {next}");
    // Another replica takes it over and publishes that tick's load.
    assert!(
        within(Duration::from_secs(20), async || {
            full_loads(&root).iter().any(|t| tick_of(*t) == next)
        })
        .await,
        "no replica took over: {}",
        replicas
            .values()
            .map(|(_, log, _)| std::fs::read_to_string(log).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    println!(
        "the tick's load was published {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    // One more tick with the two left.
    assert!(
        within(Duration::from_secs(25), async || {
            full_loads(&root).iter().any(|t| tick_of(*t) >= next + 10)
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loads = full_loads(&root);
    let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for t in &loads {
        *per_tick.entry(tick_of(*t)).or_default() += 1;
    }
    println!("full loads per tick: {per_tick:?}");
    assert!(
        per_tick.values().all(|n| *n == 1),
        "a tick loaded twice: {per_tick:?}"
    );
    // Every load of the tree is whole: its SHA256SUMS verify.
    for t in &loads {
        let id = std::fs::read_dir(root.join("kommune/101/joblog/v1/full"))
            .unwrap()
            .flatten()
            .find(|e| {
                udstil::tree::LoadId::parse(&e.file_name().to_string_lossy())
                    .is_some_and(|i| i.at == *t)
            })
            .unwrap();
        assert_load_verifies("tree", &id.path());
    }
    // Three writers, one chain.
    let (_, _, config) = replicas.values().next().unwrap();
    let verify = udstil(&["audit", "verify"], config);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let published = stdout(&udstil(
        &[
            "audit",
            "query",
            "--action",
            "load_published",
            "--format",
            "json",
        ],
        config,
    ));
    let events: Vec<serde_json::Value> = serde_json::from_str(&published).unwrap();
    let mut recorded: Vec<String> = events
        .iter()
        .filter(|e| e["area"] == "joblog")
        .map(|e| e["load_id"].as_str().unwrap().to_string())
        .collect();
    recorded.sort();
    let before = recorded.len();
    recorded.dedup();
    assert_eq!(
        before,
        recorded.len(),
        "a load recorded twice: {recorded:?}"
    );
    assert_eq!(
        recorded.len(),
        loads.len(),
        "every load recorded once: {recorded:?}"
    );
    drop(replicas);
}
