//! Three `udstil serve` replicas sharing one PostgreSQL state database and
//! one tree: each scheduled load runs on exactly one of them; when the
//! replica running a load is killed (SIGKILL), another one takes the load
//! over at once; the audit trail stays one valid chain.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::common::pg::TempDb;
use crate::common::*;
use crate::reload::{Daemon, within};
use udstil::app;

/// One `udstil serve` of a replica set: its own config (listen addresses,
/// PostgreSQL application name), the rest shared.
pub struct Replica {
    pub daemon: Daemon,
    pub log: std::path::PathBuf,
    pub config: std::path::PathBuf,
    pub sftp: std::net::SocketAddr,
    pub http: Option<std::net::SocketAddr>,
}

impl Replica {
    /// Writes replica `i`'s config from the shared `text` (whose `[sftp]
    /// listen` it replaces, and `application_name=REPLICA` in the state
    /// URL) and starts it once it listens. With `http`, it also gets an
    /// `[http]` listener there.
    pub fn start(
        dir: &std::path::Path,
        text: &str,
        i: usize,
        http: Option<std::net::SocketAddr>,
    ) -> Replica {
        let sftp = free_addr();
        let first_listen = text
            .split("listen = \"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let mut own = text
            .replacen(
                &format!("listen = \"{first_listen}\""),
                &format!("listen = \"{sftp}\""),
                1,
            )
            .replace(
                "application_name=REPLICA",
                &format!("application_name=replica{i}"),
            );
        if let Some(h) = http {
            own.push_str(&format!("\n[http]\nlisten = \"{h}\"\n"));
        }
        let config = dir.join(format!("replica{i}.toml"));
        std::fs::write(&config, own).unwrap();
        let log = dir.join(format!("replica{i}.log"));
        let daemon = Daemon::serve(&config, &log);
        let up = std::time::Instant::now();
        while std::net::TcpStream::connect(sftp).is_err() {
            assert!(
                up.elapsed() < Duration::from_secs(20),
                "replica{i} did not start: {}",
                std::fs::read_to_string(&log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Replica {
            daemon,
            log,
            config,
            sftp,
            http,
        }
    }
}

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

/// A demo folder of `citizens` whose config keeps its state in `db`
/// (`application_name=REPLICA`, which [`Replica::start`] names): its path
/// and text.
async fn shared_config(
    dir: &std::path::Path,
    citizens: u64,
    db: &TempDb,
) -> (std::path::PathBuf, String) {
    let base = app::prepare_demo(dir, free_addr(), citizens, 7)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&base).unwrap().replace(
        "url = \"sqlite://state.sqlite\"",
        &format!("url = \"{}?application_name=REPLICA\"", db.url),
    );
    (base, text)
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
    let (_, text) = shared_config(dir.path(), 20_000, &db).await;
    let text = text
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
        let r = Replica::start(dir.path(), &text, i, None);
        replicas.insert(format!("replica{i}"), (r.daemon, r.log, r.config));
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

/// A rolling restart of all three replicas behind HAProxy while 8 clients
/// download in a loop through it: every download completes, after at most
/// one retry by its client, and verifies; the audit trail holds the clients'
/// own addresses (PROXY protocol), not the balancer's, in one valid chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_behind_haproxy_needs_at_most_one_retry_per_download() {
    use crate::balancer::{haproxy, is_up};
    let db = TempDb::create("rolling").await;
    let dir = tempfile::tempdir().unwrap();
    let (base, text) = shared_config(dir.path(), 3_000, &db).await;
    let text = text.replacen(
        "[sftp]\n",
        "[sftp]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n",
        1,
    );
    std::fs::write(&base, &text).unwrap();
    let config = app::check_config(&base).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    // What the clients fetch, and what it must hash to.
    let full = config.storage_root.join("kommune/101/joblog/v1/full");
    let load = std::fs::read_dir(&full)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let file = format!(
        "/kommune/101/joblog/v1/full/{}/part-00000.parquet",
        load.to_string_lossy()
    );
    let want = sha256_file(&full.join(&load).join("part-00000.parquet"));

    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica::start(dir.path(), &text, i, Some(free_addr())))
        .collect();
    let (front, stats) = (free_addr(), free_addr());
    let servers: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("replica{i}"), r.sftp, r.http.unwrap()))
        .collect();
    let _haproxy = haproxy(dir.path(), front, &servers, stats);
    for (name, ..) in &servers {
        assert!(
            within(Duration::from_secs(20), async || is_up(stats, name)).await,
            "{name} never up"
        );
    }

    // Eight clients, each from its own address, download until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, file, want) = (stop.clone(), file.clone(), want.clone());
        let key = dir.path().join("keys/bi-alpha");
        let out = dir.path().join(format!("client{c}"));
        std::fs::create_dir_all(&out).unwrap();
        clients.push(tokio::task::spawn_blocking(move || {
            let (mut done, mut retried, mut failed) = (0u32, 0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let dest = out.join("part.parquet");
                let mut ok = false;
                for attempt in 0..2 {
                    let _ = std::fs::remove_file(&dest);
                    let got = sftp_with_key(
                        front,
                        "bi-alpha",
                        &key,
                        &format!("get {file} {}\n", dest.display()),
                        &["-o", &format!("BindAddress=127.0.0.{}", 20 + c)],
                    );
                    if got.status.success() && sha256_file(&dest) == want {
                        ok = true;
                        retried += attempt;
                        break;
                    }
                }
                if ok {
                    done += 1;
                } else {
                    failed.push(done);
                }
            }
            (done, retried, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Restart each replica in turn (SIGTERM: a graceful stop), waiting
    // until HAProxy has it back before the next.
    for (i, r) in replicas.iter_mut().enumerate() {
        let pid = r.daemon.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = r.daemon.0.wait();
        r.daemon = Daemon::serve(&r.config, &r.log);
        let name = format!("replica{i}");
        assert!(
            within(Duration::from_secs(30), async || is_up(stats, &name)).await,
            "{name} not back: {}",
            std::fs::read_to_string(&r.log).unwrap()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut total = (0, 0);
    for (c, client) in clients.into_iter().enumerate() {
        let (done, retried, failed) = client.await.unwrap();
        assert!(
            failed.is_empty(),
            "client {c}: downloads that failed twice: {failed:?}"
        );
        assert!(done > 0, "client {c} downloaded nothing");
        total = (total.0 + done, total.1 + retried);
    }
    println!(
        "rolling restart of 3 replicas: {} downloads by 8 clients, {} needed one retry, none more",
        total.0, total.1
    );

    // The audit trail: the clients' addresses, one chain.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let verify = udstil(&["audit", "verify"], &replicas[0].config);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let downloads = stdout(&udstil(
        &["audit", "query", "--action", "download", "--format", "json"],
        &replicas[0].config,
    ));
    let events: Vec<serde_json::Value> = serde_json::from_str(&downloads).unwrap();
    let addresses: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert!(!addresses.contains("127.0.0.1"), "{addresses:?}");
    assert_eq!(addresses.len(), 8, "{addresses:?}");
}
