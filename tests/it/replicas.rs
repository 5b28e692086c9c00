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
         WHERE l.locktype = 'advisory' AND l.classid = 1969517428 AND l.granted LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await
    .ok()?;
    let _ = conn.close().await;
    holder.map(|(n,)| n)
}

/// Full loads of joblog for kommune/101 in the tree, by their start second.
fn full_loads(root: &std::path::Path) -> Vec<chrono::DateTime<chrono::Utc>> {
    loads_of(root, "full")
}

/// Loads of `kind` of joblog for kommune/101 in the tree, by their start second.
fn loads_of(root: &std::path::Path, kind: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let dir = root.join("kommune/101/joblog/v1").join(kind);
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
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let client = Client {
                front,
                key: dir.path().join("keys/bi-alpha"),
                out: dir.path().join(format!("client{c}")),
                file: file.clone(),
                want: want.clone(),
                options: vec!["-o".into(), format!("BindAddress=127.0.0.{}", 20 + c)],
            };
            client.download_until(stop.clone())
        })
        .collect();
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
    let total = downloads_of(clients).await;
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

/// A supplier's client downloading one file through the balancer in a loop.
struct Client {
    front: std::net::SocketAddr,
    key: std::path::PathBuf,
    /// Its own folder for what it fetches.
    out: std::path::PathBuf,
    file: String,
    /// The file's sha256.
    want: String,
    /// More `sftp` options (its own address, a rate limit).
    options: Vec<String>,
}

impl Client {
    /// Downloads until `stop` is set; a download that fails or does not
    /// verify is retried once. Gives the downloads done, those done on
    /// their retry, and (by the count done before) those that failed twice.
    fn download_until(
        self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<(u32, u32, Vec<u32>)> {
        std::fs::create_dir_all(&self.out).unwrap();
        tokio::task::spawn_blocking(move || {
            let options: Vec<&str> = self.options.iter().map(String::as_str).collect();
            let dest = self.out.join("part.parquet");
            let (mut done, mut retried, mut failed) = (0u32, 0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let ok = (0..2).find(|_| {
                    let _ = std::fs::remove_file(&dest);
                    let got = sftp_with_key(
                        self.front,
                        "bi-alpha",
                        &self.key,
                        &format!("get {} {}\n", self.file, dest.display()),
                        &options,
                    );
                    got.status.success() && sha256_file(&dest) == self.want
                });
                match ok {
                    Some(attempt) => {
                        done += 1;
                        retried += attempt;
                    }
                    None => failed.push(done),
                }
            }
            (done, retried, failed)
        })
    }
}

/// Waits for the clients (told to stop) and asserts each downloaded
/// something and none failed twice; gives the downloads and retries in all.
async fn downloads_of(clients: Vec<tokio::task::JoinHandle<(u32, u32, Vec<u32>)>>) -> (u32, u32) {
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
    total
}

/// The host key a server at `addr` offers, read by paramiko from an address
/// that is not a balancer's (127.0.0.1 must send a PROXY header).
fn host_key_of(addr: std::net::SocketAddr) -> String {
    let script = format!(
        "import socket, paramiko\n\
         s = socket.create_connection(('{}', {}), source_address=('127.0.0.9', 0))\n\
         t = paramiko.Transport(s)\n\
         t.start_client(timeout=10)\n\
         print(t.get_remote_server_key().get_base64())\n\
         t.close()\n",
        addr.ip(),
        addr.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with paramiko (.ci/run installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// Sets its flag when dropped.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// The connections a server listening on `port` has open now.
fn connections_to(port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Three replicas behind HAProxy with the tree on GlusterFS (one volume,
/// mounted by each replica) while DFDG changes and a delta of joblog runs
/// every 10 s: six suppliers download through the balancer in a loop; the
/// replica running a scheduled delta is killed (SIGKILL) while it also
/// serves downloads. Another replica publishes that tick's delta, nothing
/// is published twice, the deltas replay to a fresh full load, every
/// interrupted download succeeds on its client's retry, and the audit
/// trail is one valid chain holding the clients' own addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_glusterfs_behind_haproxy_survive_a_kill_mid_load_and_mid_download() {
    use crate::balancer::{haproxy, is_up};
    use std::sync::atomic::{AtomicBool, Ordering};
    let volume = crate::gluster::Volume::create("udstilreplicas", 3);
    let db = TempDb::create("sharedtree").await;
    let dir = tempfile::tempdir().unwrap();
    let (base, text) = shared_config(dir.path(), 20_000, &db).await;
    let text = text
        .replacen(
            "[sftp]\n",
            "[sftp]\nproxy_protocol_from = [\"127.0.0.1/32\"]\n",
            1,
        )
        .replace(
            "schedule = { delta = \"0 0 * * * *\", full = \"0 30 2 * * Sun\" }",
            "schedule = { delta = \"*/10 * * * * *\" }",
        )
        .replace("schedule = { delta = \"0 15 * * * *\" }\n", "")
        .replace("schedule = { delta = \"0 45 1 * * *\" }\n", "");
    assert!(text.contains("*/10 * * * * *") && text.contains("root = \"tree\""));
    // Each replica has the volume at a mount of its own.
    let on = |i: usize| {
        text.replace(
            "root = \"tree\"",
            &format!("root = \"{}\"", volume.mounts[i].display()),
        )
    };
    std::fs::write(&base, on(0)).unwrap();
    let config = app::check_config(&base).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    let root = volume.mounts[0].clone();
    // What the suppliers fetch, and what it must hash to; seen through
    // another replica's mount.
    let full = root.join("kommune/101/joblog/v1/full");
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
    let other = volume.mounts[2].join(&file[1..]);
    let want = sha256_file(&other);
    let size = std::fs::metadata(&other).unwrap().len();
    // A rate (Kbit/s) at which one download takes about two seconds, so
    // that a replica always has some under way.
    let limit = (size * 8 / 1000 / 2).max(8).to_string();

    let mut replicas: Vec<Option<Replica>> = (0..3)
        .map(|i| Some(Replica::start(dir.path(), &on(i), i, Some(free_addr()))))
        .collect();
    let (front, stats) = (free_addr(), free_addr());
    let servers: Vec<_> = replicas
        .iter()
        .flatten()
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
    // One host key on every replica (from the one file they share), so a
    // supplier's known_hosts holds whichever one the balancer picks.
    let host_keys: std::collections::BTreeSet<String> = servers
        .iter()
        .map(|(_, sftp, _)| host_key_of(*sftp))
        .collect();
    assert_eq!(host_keys.len(), 1, "{host_keys:?}");

    // DFDG changes all along.
    let changing = std::sync::Arc::new(AtomicBool::new(true));
    // On a failed assertion too: the runtime waits for the clients' threads.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let mutator = {
        let (changing, url) = (changing.clone(), config.source_url.clone());
        tokio::spawn(async move {
            let source = udstil::source::Source::connect(&url).await.unwrap();
            let mut round = 0;
            while changing.load(Ordering::Acquire) {
                udstil::fixtures::mutate(&source, 20, 7_000 + round)
                    .await
                    .unwrap();
                round += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            source.close().await;
        })
    };
    // Six suppliers' clients, each from its own address, download until
    // told to stop; a download that fails is retried once.
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let client = Client {
                front,
                key: dir.path().join("keys/bi-alpha"),
                out: dir.path().join(format!("client{c}")),
                file: file.clone(),
                want: want.clone(),
                options: vec![
                    "-l".into(),
                    limit.clone(),
                    "-o".into(),
                    format!("BindAddress=127.0.0.{}", 40 + c),
                ],
            };
            client.download_until(stop.clone())
        })
        .collect();

    // A delta by the replicas, then: at a later tick, kill the replica
    // running the delta as soon as it also serves a download.
    let started = chrono::Utc::now();
    assert!(
        within(Duration::from_secs(30), async || loads_of(&root, "delta")
            .iter()
            .any(|t| *t > started))
        .await,
        "no scheduled delta"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (victim, tick, serving) = loop {
        assert!(
            Instant::now() < deadline,
            "never found the replica running a delta while serving downloads"
        );
        let now = chrono::Utc::now().timestamp();
        if now % 10 < 8
            && let Some(holder) = lease_holder(&db.url).await
        {
            let i: usize = holder.trim_start_matches("replica").parse().unwrap();
            let serving = connections_to(replicas[i].as_ref().unwrap().sftp.port());
            if serving > 0
                && !loads_of(&root, "delta")
                    .iter()
                    .any(|t| tick_of(*t) == now / 10 * 10)
            {
                break (i, now / 10 * 10, serving);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut dead = replicas[victim].take().unwrap();
    dead.daemon.0.kill().unwrap();
    let killed_at = Instant::now();
    let _ = dead.daemon.0.wait();
    println!(
        "killed replica{victim} while it ran the delta of the tick at {tick} and served {serving} connection(s)"
    );
    assert!(
        within(Duration::from_secs(20), async || {
            loads_of(&root, "delta").iter().any(|t| tick_of(*t) == tick)
        })
        .await,
        "no replica took over the delta of {tick}: {}",
        replicas
            .iter()
            .flatten()
            .map(|r| std::fs::read_to_string(&r.log).unwrap())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
    println!(
        "the tick's delta was published {} ms after the kill",
        killed_at.elapsed().as_millis()
    );

    // One more tick with changes, then a last delta after the changes stop.
    tokio::time::sleep(Duration::from_secs(10)).await;
    changing.store(false, Ordering::Release);
    mutator.await.unwrap();
    let quiet = chrono::Utc::now();
    assert!(
        within(Duration::from_secs(25), async || loads_of(&root, "delta")
            .iter()
            .any(|t| *t > quiet))
        .await,
        "no delta after the changes stopped"
    );
    // Published for every authority: each authority's folder is renamed in
    // turn, and the run is recorded after the last.
    assert!(
        within(Duration::from_secs(30), async || {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM loads WHERE area = 'joblog' AND kind = 'delta' \
                 AND status = 'published' AND started_at > $1",
            )
            .bind(quiet.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .fetch_one(&mut conn)
            .await
            .unwrap();
            let _ = conn.close().await;
            n > 0
        })
        .await,
        "the last delta was never recorded as published"
    );
    stop.store(true, Ordering::Release);
    let total = downloads_of(clients).await;
    println!(
        "{} downloads by 6 clients through HAProxy, {} completed on a retry",
        total.0, total.1
    );
    assert!(total.1 > 0, "the kill interrupted no download");

    // Nothing published twice: one delta per tick.
    let deltas = loads_of(&root, "delta");
    let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for t in &deltas {
        *per_tick.entry(tick_of(*t)).or_default() += 1;
    }
    println!("deltas per tick: {per_tick:?}");
    assert!(
        per_tick.values().all(|n| *n == 1),
        "a tick loaded twice: {per_tick:?}"
    );
    for e in std::fs::read_dir(root.join("kommune/101/joblog/v1/delta")).unwrap() {
        assert_load_verifies("tree", &e.unwrap().path());
    }
    let config0 = replicas.iter().flatten().next().unwrap().config.clone();
    drop(replicas);

    // Every authority's deltas replay to what a fresh full load gives now.
    let mut fresh = config.clone();
    fresh.state_url = None;
    crate::replay::assert_joblog_replays_to_a_fresh_full_load(&fresh).await;

    // One chain with three writers; the suppliers' own addresses.
    let verify = udstil(&["audit", "verify"], &config0);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let downloads = stdout(&udstil(
        &["audit", "query", "--action", "download", "--format", "json"],
        &config0,
    ));
    let events: Vec<serde_json::Value> = serde_json::from_str(&downloads).unwrap();
    let addresses: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    let clients: std::collections::BTreeSet<String> =
        (0..6).map(|c| format!("127.0.0.{}", 40 + c)).collect();
    assert_eq!(
        addresses,
        clients.iter().map(String::as_str).collect(),
        "download events' addresses"
    );
}
