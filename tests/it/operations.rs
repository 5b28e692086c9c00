//! The operating surface over HTTP as an operator's tools use it: health
//! and readiness probes with curl, the metrics exposition checked by
//! `promtool`, and scraped by a real Prometheus server whose API is queried.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// A Prometheus server on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: udstil\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = common::free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Prometheus is installed (Debian's prometheus package)");
        Prometheus { child, addr }
    }

    /// Runs an instant query until it has a result (or 60 s pass); returns
    /// the first sample's value.
    fn value(&self, query: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = tokio::task::block_in_place(|| {
                Command::new("curl")
                    .args(["-sS", "--max-time", "10", "--data-urlencode"])
                    .arg(format!("query={query}"))
                    .arg(format!("http://{}/api/v1/query", self.addr))
                    .output()
                    .unwrap()
            });
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                && let Some(sample) = v["data"]["result"].as_array().and_then(|r| r.first())
            {
                return sample["value"][1].as_str().unwrap().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has no result for {query}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_load_counter_and_the_watermark_age() {
    let env = common::start_with(300, |_, text| {
        text.push_str("\n[http]\nlisten = \"127.0.0.1:0\"\n")
    })
    .await;
    let http = env.http_addr.expect("[http] listen is set");
    assert_eq!(
        common::http_get(http, "/healthz"),
        (200, "ok\n".to_string())
    );
    assert_eq!(
        common::http_get(http, "/readyz"),
        (200, "ready\n".to_string())
    );

    // A download and a refused login, so the serving side has counted something.
    let dl = env.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let out = env.sftp(
        "bi-alpha",
        &format!("get -r /kommune/101/joblog/v1 {}\n", dl.display()),
        &[],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let stranger = common::keygen(env.path(), "stranger", &["-t", "ed25519"]);
    let refused = common::sftp_with_key(env.addr, "mallory", &stranger, "ls\n", &[]);
    assert!(!refused.status.success());

    let (code, exposition) = common::http_get(http, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "udstil_loads_total{area=\"joblog\",kind=\"full\",outcome=\"published\"}",
        "udstil_sftp_logins_total{outcome=\"accepted\"}",
        "udstil_sftp_downloads_total{area=\"joblog\",outcome=\"complete\"}",
        "udstil_area_data_age_seconds{area=\"joblog\"}",
        "udstil_refusals_total{reason=\"unknown_user\"}",
        "udstil_supplier_loads_behind{supplier=\"bi-gamma\"} 0",
    ] {
        assert!(exposition.contains(line), "{line} missing:\n{exposition}");
    }
    // Labels hold no person numbers (no long digit runs) and no user name a
    // client sent.
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or("", |(labels, _)| labels);
        let longest_digits = labels
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_digits < 6, "{line}");
        assert!(!labels.contains("mallory"), "{line}");
    }

    // promtool lints the exposition as Prometheus reads it.
    let lint = tokio::task::block_in_place(|| {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool is installed (Debian's prometheus package)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    });
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        common::stdout(&lint),
        common::stderr(&lint)
    );

    // A real Prometheus scrapes the endpoint; its API answers from what it stored.
    let prometheus = Prometheus::start(env.path(), http);
    let loads =
        prometheus.value("udstil_loads_total{area=\"joblog\",kind=\"full\",outcome=\"published\"}");
    assert!(loads >= 1.0, "{loads}");
    let age = prometheus.value("udstil_area_data_age_seconds{area=\"joblog\"}");
    assert!((0.0..600.0).contains(&age), "joblog's data is {age} s old");
    let watermark = prometheus.value("udstil_area_watermark{area=\"joblog\"}");
    assert!(watermark > 0.0, "{watermark}");
    let up = prometheus.value("up{job=\"udstil\"}");
    assert_eq!(up, 1.0);
    // bi-alpha fetched kommune 101's joblog only: its other areas are behind.
    let behind = prometheus.value("udstil_supplier_loads_behind{supplier=\"bi-alpha\"}");
    assert!(behind >= 1.0, "{behind}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_fails_while_the_tree_cannot_be_read_and_recovers() {
    let env = common::start_with(100, |_, text| {
        text.push_str("\n[http]\nlisten = \"127.0.0.1:0\"\n")
    })
    .await;
    let http = env.http_addr.unwrap();
    assert_eq!(common::http_get(http, "/readyz").0, 200);
    // The tree's volume gone: a file where the root folder was.
    let root = env.root().to_path_buf();
    let aside = env.path().join("tree-aside");
    std::fs::rename(&root, &aside).unwrap();
    std::fs::write(&root, "not a folder").unwrap();
    let (code, body) = common::http_get(http, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready: tree: "), "{body}");
    // Liveness is the process, not its volumes.
    assert_eq!(common::http_get(http, "/healthz").0, 200);
    std::fs::remove_file(&root).unwrap();
    std::fs::rename(&aside, &root).unwrap();
    assert_eq!(
        common::http_get(http, "/readyz"),
        (200, "ready\n".to_string())
    );
}

/// The shipped alert rules are valid and behave as their unit tests say
/// (a load failing, stale data, the source down, the audit backlog, a
/// replica down), run by Prometheus's own `promtool`.
#[test]
fn the_shipped_alert_rules_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        ["check", "rules", "udstil-alerts.yml"],
        ["test", "rules", "udstil-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is installed (Debian's prometheus package)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            common::stdout(&out),
            common::stderr(&out)
        );
    }
}

/// `--log-format json` writes one JSON object per line, for log shipping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 50, 1)
        .await
        .unwrap();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_udstil"))
            .args([
                "--log-format",
                "json",
                "load",
                "--full",
                "--area",
                "joblog",
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", common::stderr(&out));
    let lines: Vec<serde_json::Value> = common::stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let published = lines
        .iter()
        .find(|l| l["fields"]["message"] == "load published")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(published["fields"]["area"], "joblog");
    assert_eq!(published["level"], "INFO");
    assert!(published["timestamp"].is_string());
}
