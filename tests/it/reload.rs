//! Config reload in a running daemon (`udstil serve`, a real process): an
//! edit takes effect in open sessions without reconnecting; an invalid edit
//! is refused and the config in force keeps serving.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use udstil::app;

pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// `udstil serve --config <config>`, its log in `log`.
    pub fn serve(config: &std::path::Path, log: &std::path::Path) -> Daemon {
        Daemon(
            Command::new(env!("CARGO_BIN_EXE_udstil"))
                .args(["serve", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `check` every 100 ms for up to `limit`.
pub async fn within<F: AsyncFnMut() -> bool>(limit: Duration, mut check: F) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

pub async fn areas_of(sftp: &russh_sftp::client::SftpSession, dir: &str) -> Option<Vec<String>> {
    let mut names: Vec<String> = sftp
        .read_dir(dir)
        .await
        .ok()?
        .map(|e| e.file_name())
        .collect();
    names.sort();
    Some(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_apply_to_open_sessions_and_invalid_edits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = app::prepare_demo(dir.path(), addr, 60, 7).await.unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(None))
        .await
        .unwrap();
    let good = std::fs::read_to_string(&config_path).unwrap();

    let log = dir.path().join("daemon.log");
    let _daemon = Daemon::serve(&config_path, &log);
    assert!(
        within(Duration::from_secs(20), async || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await,
        "the daemon did not start listening"
    );
    let key = dir.path().join("keys/bi-alpha");
    let (_ssh, sftp) = library_session(addr, "bi-alpha", &key).await.unwrap();
    assert_eq!(
        areas_of(&sftp, "/kommune/101").await.unwrap(),
        ["joblog", "plans-and-activities"]
    );

    // Remove joblog from bi-alpha's cooperation agreement: gone without reconnecting.
    let narrowed = good.replacen(
        "id = \"sup-alpha\"\nsupplier = \"bi-alpha\"\nareas = [\"joblog\", \"plans-and-activities\"]",
        "id = \"sup-alpha\"\nsupplier = \"bi-alpha\"\nareas = [\"plans-and-activities\"]",
        1,
    );
    assert_ne!(narrowed, good);
    std::fs::write(&config_path, &narrowed).unwrap();
    assert!(
        within(Duration::from_secs(5), async || {
            areas_of(&sftp, "/kommune/101").await == Some(vec!["plans-and-activities".into()])
        })
        .await,
        "joblog still listed after the edit"
    );
    assert!(sftp.metadata("/kommune/101/joblog").await.is_err());

    // An invalid edit is refused as a whole; the config in force keeps serving.
    std::fs::write(
        &config_path,
        good.replacen(
            "id = \"sup-alpha\"",
            "id = \"sup-alpha\"\nvalid_from = \"not a date\"",
            1,
        ),
    )
    .unwrap();
    let t = Instant::now();
    let log_has = |s: &str| std::fs::read_to_string(&log).unwrap().contains(s);
    assert!(
        within(Duration::from_secs(5), async || log_has(
            "config reload refused"
        ))
        .await,
        "no refusal logged"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        areas_of(&sftp, "/kommune/101").await.unwrap(),
        ["plans-and-activities"],
        "the refused edit changed access"
    );
    let check = Command::new(env!("CARGO_BIN_EXE_udstil"))
        .args(["config", "check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(!check.status.success());
    assert!(
        stderr(&check).contains("udstil.toml:"),
        "{}",
        stderr(&check)
    );
    // New logins are still served by the config in force.
    let beta = library_session(addr, "bi-beta", &dir.path().join("keys/bi-beta")).await;
    assert!(beta.is_ok(), "{:?}", beta.err());

    // Restore and signal: joblog is back in the open session.
    std::fs::write(&config_path, &good).unwrap();
    let pid = _daemon.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        within(Duration::from_secs(5), async || {
            areas_of(&sftp, "/kommune/101").await
                == Some(vec!["joblog".into(), "plans-and-activities".into()])
        })
        .await,
        "joblog not back after restoring the config"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("access changed")
            && text.contains("area=joblog")
            && text.contains("change=lost")
            && text.contains("change=gained"),
        "{text}"
    );
}

/// Regression: with DFDG down, `serve` refused to start ("the config has
/// errors") and a reload took 11 s waiting for the column check. Now SFTP
/// serves and reloads whatever the source is doing; the column check is a
/// warning in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_and_reloading_do_not_wait_for_a_source_that_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = app::prepare_demo(dir.path(), addr, 60, 7).await.unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(None))
        .await
        .unwrap();
    // DFDG "moves" to a port where nothing listens (a PostgreSQL that is down).
    let closed = free_addr().port();
    let good = std::fs::read_to_string(&config_path).unwrap().replace(
        "url = \"sqlite://dfdg.sqlite\"",
        &format!("url = \"postgres://postgres@127.0.0.1:{closed}/test\""),
    );
    std::fs::write(&config_path, &good).unwrap();

    let log = dir.path().join("daemon.log");
    let started = Instant::now();
    let _daemon = Daemon::serve(&config_path, &log);
    let key = dir.path().join("keys/bi-alpha");
    assert!(
        within(Duration::from_secs(10), async || {
            library_session(addr, "bi-alpha", &key).await.is_ok()
        })
        .await,
        "no login with the source down: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let serving_after = started.elapsed();
    let (_ssh, sftp) = library_session(addr, "bi-alpha", &key).await.unwrap();
    assert!(areas_of(&sftp, "/kommune/147").await.is_some());
    assert!(
        within(Duration::from_secs(10), async || {
            std::fs::read_to_string(&log)
                .unwrap()
                .contains("column names not checked")
        })
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // bi-alpha loses kommune/147; the open session sees it within a reload's time.
    let edited = good.replacen(
        "suppliers = [\"bi-alpha\", \"bi-gamma\"]",
        "suppliers = [\"bi-gamma\"]",
        1,
    );
    assert_ne!(edited, good);
    let t = Instant::now();
    std::fs::write(&config_path, &edited).unwrap();
    assert!(
        within(Duration::from_secs(5), async || areas_of(
            &sftp,
            "/kommune/147"
        )
        .await
        .is_none())
        .await,
        "the reload waited for the source: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    eprintln!(
        "serving {} ms after start; the revocation applied {} ms after the edit",
        serving_after.as_millis(),
        t.elapsed().as_millis()
    );
}

/// Refused handshakes (no algorithm in common) and refused logins are in
/// the log with the peer's address and the reason, not only in the audit table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_and_logins_are_logged_with_peer_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = app::prepare_demo(dir.path(), addr, 40, 7).await.unwrap();
    let log = dir.path().join("daemon.log");
    let _daemon = Daemon::serve(&config_path, &log);
    assert!(
        within(Duration::from_secs(20), async || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await
    );
    let stranger = dir.path().join("keys/stranger");
    std::fs::write(&stranger, include_str!("../../fixtures/keys/stranger")).unwrap();
    let mut perms = std::fs::metadata(&stranger).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&stranger, perms).unwrap();
    let cbc = tokio::task::block_in_place(|| {
        sftp_with_key(
            addr,
            "bi-alpha",
            &dir.path().join("keys/bi-alpha"),
            "ls /\n",
            &["-o", "Ciphers=aes128-cbc"],
        )
    });
    assert!(!cbc.status.success());
    let refused =
        tokio::task::block_in_place(|| sftp_with_key(addr, "bi-alpha", &stranger, "ls /\n", &[]));
    assert!(!refused.status.success());
    let logged = |needles: &[&str]| {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    };
    assert!(
        within(Duration::from_secs(5), async || logged(&[
            "ssh handshake failed",
            "peer=127.0.0.1:",
            "reason="
        ]) && logged(&[
            "login refused",
            "peer=127.0.0.1:",
            "reason=\"unknown key\""
        ]))
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

/// Names in `/kommune` of a session (`None` when the listing is refused).
async fn kommuner_of(sftp: &russh_sftp::client::SftpSession) -> Option<Vec<String>> {
    areas_of(sftp, "/kommune").await
}

/// A supplier switch planned in the agreements: kommune/151 moves from
/// bi-alpha to bi-beta at a time the test sets. `access changes` lists it
/// beforehand; at that time the open sessions change within a second,
/// without a restart or reload; the audit trail records both sides; and
/// restoring the agreements undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_switch_happens_at_its_time_and_is_undone_by_restoring_the_agreements() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config_path = app::prepare_demo(dir.path(), addr, 200, 7).await.unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(None))
        .await
        .unwrap();
    let original = std::fs::read_to_string(&config_path).unwrap();
    let switch_at = chrono::Utc::now() + chrono::Duration::seconds(12);
    let at = switch_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let switched = original
        .replacen(
            "authority = \"kommune/151\"\nsuppliers = [\"bi-alpha\"]\nvalid_from = \"2025-01-01\"",
            &format!(
                "authority = \"kommune/151\"\nsuppliers = [\"bi-alpha\"]\nvalid_from = \"2025-01-01\"\nvalid_to = \"{at}\"\n\n\
                 [[agreements.connection]]\nid = \"tilslutning-151-beta\"\nauthority = \"kommune/151\"\nsuppliers = [\"bi-beta\"]\nvalid_from = \"{at}\""
            ),
            1,
        )
        .replacen(
            "supplier = \"bi-alpha\"\nauthority = \"kommune/151\"\nvalid_from = \"2025-01-01\"",
            &format!(
                "supplier = \"bi-alpha\"\nauthority = \"kommune/151\"\nvalid_from = \"2025-01-01\"\nvalid_to = \"{at}\"\n\n\
                 [[agreements.data_processing]]\nid = \"dba-beta-151\"\nsupplier = \"bi-beta\"\nauthority = \"kommune/151\"\nvalid_from = \"{at}\""
            ),
            1,
        );
    assert_eq!(switched.matches(&at).count(), 4, "{switched}");
    std::fs::write(&config_path, &switched).unwrap();

    // Previewed: bi-alpha loses both areas, bi-beta gains joblog (its
    // cooperation agreement does not list plans-and-activities).
    let preview = Command::new(env!("CARGO_BIN_EXE_udstil"))
        .args(["access", "changes", "--config"])
        .arg(&config_path)
        .args(["--to", "2099-01-01"])
        .output()
        .unwrap();
    assert!(preview.status.success(), "{}", stderr(&preview));
    let text = stdout(&preview);
    let second = switch_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for line in [
        format!(
            "{second} bi-alpha loses kommune/151/joblog (connection agreement tilslutning-151 ends; data-processing agreement dba-alpha-151 ends)"
        ),
        format!(
            "{second} bi-alpha loses kommune/151/plans-and-activities (connection agreement tilslutning-151 ends; data-processing agreement dba-alpha-151 ends)"
        ),
        format!(
            "{second} bi-beta gains kommune/151/joblog (connection agreement tilslutning-151-beta starts; data-processing agreement dba-beta-151 starts)"
        ),
    ] {
        assert!(text.contains(&line), "{line}\nnot in:\n{text}");
    }
    assert!(!text.contains("bi-beta gains kommune/151/plans"), "{text}");
    println!("{text}");

    let log = dir.path().join("daemon.log");
    let daemon = Daemon::serve(&config_path, &log);
    let key = |s: &str| dir.path().join("keys").join(s);
    assert!(
        within(Duration::from_secs(20), async || {
            library_session(addr, "bi-alpha", &key("bi-alpha"))
                .await
                .is_ok()
        })
        .await,
        "the daemon did not start: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let (_a, alpha) = library_session(addr, "bi-alpha", &key("bi-alpha"))
        .await
        .unwrap();
    let (_b, beta) = library_session(addr, "bi-beta", &key("bi-beta"))
        .await
        .unwrap();
    let has_151 = async |s: &russh_sftp::client::SftpSession| {
        kommuner_of(s)
            .await
            .unwrap_or_default()
            .contains(&"151".to_string())
    };
    assert!(has_151(&alpha).await, "{:?}", kommuner_of(&alpha).await);
    assert!(!has_151(&beta).await, "{:?}", kommuner_of(&beta).await);
    // bi-alpha holds a file of kommune/151 open across the switch.
    let full = areas_of(&alpha, "/kommune/151/joblog/v1/full")
        .await
        .unwrap();
    let data = format!("/kommune/151/joblog/v1/full/{}/MANIFEST.json", full[0]);
    let mut open = alpha.open(&data).await.unwrap();
    assert!(switch_at > chrono::Utc::now(), "the set-up took too long");

    // At the time: both sessions change within a second.
    let (mut lost, mut gained) = (None, None);
    while lost.is_none() || gained.is_none() {
        let now = chrono::Utc::now();
        assert!(
            now < switch_at + chrono::Duration::seconds(5),
            "no switch by 5 s after"
        );
        if lost.is_none() && !has_151(&alpha).await {
            lost = Some(chrono::Utc::now());
        }
        if gained.is_none() && has_151(&beta).await {
            gained = Some(chrono::Utc::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (lost, gained) = (lost.unwrap(), gained.unwrap());
    println!(
        "bi-alpha lost kommune/151 {} ms and bi-beta gained it {} ms after the switch",
        (lost - switch_at).num_milliseconds(),
        (gained - switch_at).num_milliseconds()
    );
    for t in [lost, gained] {
        assert!(t >= switch_at, "changed before its time");
        assert!(t - switch_at < chrono::Duration::seconds(1), "changed late");
    }
    assert_eq!(areas_of(&beta, "/kommune/151").await.unwrap(), ["joblog"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = Vec::new();
    assert!(
        open.read_to_end(&mut buf).await.is_err(),
        "bi-alpha's open file of kommune/151 still reads after the switch"
    );

    // Both sides are in the audit trail, with the agreements that caused them.
    let audit_of = |action: &str| {
        stdout(&udstil(
            &["audit", "query", "--action", action, "--format", "json"],
            &config_path,
        ))
    };
    assert!(
        within(Duration::from_secs(5), async || {
            audit_of("access_change").matches("\"kommune/151\"").count() == 3
        })
        .await,
        "{}",
        audit_of("access_change")
    );
    let events: Vec<serde_json::Value> = serde_json::from_str(&audit_of("access_change")).unwrap();
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["supplier"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["area"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("bi-alpha", "lost", "joblog"),
        ("bi-alpha", "lost", "plans-and-activities"),
        ("bi-beta", "gained", "joblog"),
    ] {
        assert!(
            summary
                .iter()
                .any(|(s, o, a)| (s.as_str(), o.as_str(), a.as_str()) == want),
            "{want:?} not in {summary:?}"
        );
    }
    assert!(
        events
            .iter()
            .all(|e| e["detail"].as_str().unwrap().contains("agreement"))
    );

    // Rolled back by restoring the agreements: a reload gives kommune/151 back.
    std::fs::write(&config_path, &original).unwrap();
    assert!(
        within(Duration::from_secs(5), async || {
            has_151(&alpha).await && !has_151(&beta).await
        })
        .await,
        "the rollback did not apply"
    );
    let reloads = audit_of("config_reload");
    assert!(
        reloads.contains("bi-alpha gained kommune/151/joblog")
            && reloads.contains("bi-beta lost kommune/151/joblog"),
        "{reloads}"
    );
    drop(daemon);
    let verify = udstil(&["audit", "verify"], &config_path);
    assert!(verify.status.success(), "{}", stderr(&verify));
}
