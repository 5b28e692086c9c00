//! Announcements as operators write them and suppliers meet them: saved in
//! the announcements file of a running `udstil serve`, one appears within a
//! second on the status page (rendered in Chromium), in the SFTP root of
//! exactly the suppliers whose agreements cover its areas, and as a
//! notification to exactly their contacts (and the operator).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::notify::{Got, notices_in, receiver, wait_for};
use crate::reload::{Daemon, areas_of, within};
use crate::status_page::check_page;
use udstil::app;

const SECRET: &str = "a-webhook-secret-of-32-bytes-len";

/// Concerns plans-and-activities (bi-alpha) and a-kasse membership (bi-delta);
/// not bi-beta (joblog only) nor bi-gamma (its agreement has ended).
const ANNOUNCEMENT: &str = r#"
[[announcement]]
id = "spring-release"
title = "Forårsrelease: nye felter i planer og medlemskaber"
kind = "release"
areas = ["plans-and-activities", "unemployment-fund-membership"]
effective = "2027-03-01"
body = """
DFDG's spring release adds **two columns**:

- `kanal` in plans-and-activities
- `ophoer` in unemployment-fund-membership
"""
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_reaches_the_page_and_exactly_the_suppliers_it_concerns_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, http) = (free_addr(), free_addr());
    let config_path = app::prepare_demo(dir.path(), addr, 100, 7).await.unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(None))
        .await
        .unwrap();
    let hooks: Vec<(&str, Option<&str>, std::net::SocketAddr, Got)> = vec![
        ("ops", None, free_addr(), Got::default()),
        (
            "alpha-contact",
            Some("bi-alpha"),
            free_addr(),
            Got::default(),
        ),
        ("beta-contact", Some("bi-beta"), free_addr(), Got::default()),
        (
            "delta-contact",
            Some("bi-delta"),
            free_addr(),
            Got::default(),
        ),
    ];
    std::fs::write(dir.path().join("webhook-secret"), SECRET).unwrap();
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    text.push_str(&format!("\n[http]\nlisten = \"{http}\"\n"));
    for (id, supplier, hook, got) in &hooks {
        receiver(*hook, got.clone()).await;
        text.push_str(&format!(
            "\n[[notify]]\nid = \"{id}\"\nwebhook = \"http://{hook}/hook\"\nsecret_file = \"webhook-secret\"\nevents = [\"announcement\"]\n"
        ));
        if let Some(s) = supplier {
            text.push_str(&format!("supplier = \"{s}\"\n"));
        }
    }
    std::fs::write(&config_path, text).unwrap();
    let announcements = dir.path().join("announcements.toml");
    std::fs::write(&announcements, "# nothing announced yet\n").unwrap();

    let log = dir.path().join("daemon.log");
    let _daemon = Daemon::serve(&config_path, &log);
    assert!(
        within(Duration::from_secs(20), async || http_get(http, "/readyz")
            .0
            == 200)
        .await,
        "not ready: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    let key = |s: &str| dir.path().join("keys").join(s);
    let mut sessions = Vec::new();
    for s in ["bi-alpha", "bi-beta", "bi-delta"] {
        sessions.push((s, library_session(addr, s, &key(s)).await.unwrap()));
    }
    let root_has = async |sftp: &russh_sftp::client::SftpSession| {
        areas_of(sftp, "/")
            .await
            .unwrap_or_default()
            .contains(&"ANNOUNCEMENTS".to_string())
    };
    for (s, (_, sftp)) in &sessions {
        assert!(!root_has(sftp).await, "{s} has announcements before any");
    }
    assert!(http_get(http, "/").1.contains("Ingen meddelelser."));

    // The operator saves the file.
    std::fs::write(&announcements, ANNOUNCEMENT).unwrap();
    let saved = Instant::now();
    let (mut on_page, mut alpha, mut delta) = (None, None, None);
    while on_page.is_none() || alpha.is_none() || delta.is_none() {
        assert!(
            saved.elapsed() < Duration::from_secs(5),
            "not there 5 s after saving"
        );
        if on_page.is_none() && http_get(http, "/").1.contains("Forårsrelease") {
            on_page = Some(saved.elapsed());
        }
        if alpha.is_none() && root_has(&sessions[0].1.1).await {
            alpha = Some(saved.elapsed());
        }
        if delta.is_none() && root_has(&sessions[2].1.1).await {
            delta = Some(saved.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!(
        "after saving: on the status page in {} ms, in bi-alpha's root in {} ms, in bi-delta's in {} ms",
        on_page.unwrap().as_millis(),
        alpha.unwrap().as_millis(),
        delta.unwrap().as_millis()
    );
    for t in [on_page, alpha, delta] {
        assert!(t.unwrap() < Duration::from_secs(1), "{t:?}");
    }
    // Notifications: the operator and the two suppliers' contacts, once each.
    let got = |id: &str| hooks.iter().find(|h| h.0 == id).unwrap().3.clone();
    for id in ["ops", "alpha-contact", "delta-contact"] {
        wait_for(&got(id), 1).await;
    }
    let notified = saved.elapsed();
    println!("notified {} ms after saving", notified.as_millis());
    assert!(notified < Duration::from_secs(1), "{notified:?}");
    // Not for bi-beta: its agreements cover neither area.
    let beta = &sessions[1].1.1;
    assert!(!root_has(beta).await);
    assert!(beta.metadata("/ANNOUNCEMENTS").await.is_err());
    assert!(
        beta.open("/ANNOUNCEMENTS/2027-03-01-spring-release.md")
            .await
            .is_err()
    );

    // What bi-alpha finds in its root.
    let alpha_sftp = &sessions[0].1.1;
    assert_eq!(
        areas_of(alpha_sftp, "/ANNOUNCEMENTS").await.unwrap(),
        ["2027-03-01-spring-release.md", "index.json"]
    );
    let read = async |path: &str| {
        use tokio::io::AsyncReadExt;
        let mut f = alpha_sftp.open(path).await.unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).await.unwrap();
        s
    };
    let md = read("/ANNOUNCEMENTS/2027-03-01-spring-release.md").await;
    assert!(
        md.starts_with("# Forårsrelease: nye felter i planer og medlemskaber\n\n- Kind: Release\n- Data areas: plans-and-activities, unemployment-fund-membership\n- Effective: 2027-03-01 00:00 (Danish time)\n\nDFDG's spring release adds **two columns**:"),
        "{md}"
    );
    let index: serde_json::Value =
        serde_json::from_str(&read("/ANNOUNCEMENTS/index.json").await).unwrap();
    assert_eq!(index[0]["id"], "spring-release");
    assert_eq!(index[0]["file"], "2027-03-01-spring-release.md");

    // The page, in Chromium: rendered, and accessible.
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();
    let violations = check_page(
        &format!("http://{http}/"),
        &shots.join("announcement-da.png"),
    );
    assert!(violations.as_array().unwrap().is_empty(), "{violations}");
    let page = http_get(http, "/").1;
    assert!(
        page.contains("<h3>Release: Forårsrelease: nye felter i planer og medlemskaber</h3>"),
        "{page}"
    );
    assert!(
        page.contains("<li><code>kanal</code> in plans-and-activities</li>"),
        "{page}"
    );
    assert!(
        http_get(http, "/feed.atom")
            .1
            .contains("urn:udstil:announcement:spring-release")
    );

    // Once each, and none for bi-beta's contact.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, want) in [
        ("ops", 1),
        ("alpha-contact", 1),
        ("beta-contact", 0),
        ("delta-contact", 1),
    ] {
        let notices = notices_in(&got(id));
        assert_eq!(notices.len(), want, "{id}: {notices:?}");
        for n in notices {
            assert_eq!(n["event"], "announcement");
            assert_eq!(
                n["details"]["file"],
                "/ANNOUNCEMENTS/2027-03-01-spring-release.md"
            );
            assert_eq!(n["suppliers"], serde_json::json!(["bi-alpha", "bi-delta"]));
        }
    }

    // An invalid edit is refused with the file and line; the page keeps the last good one.
    std::fs::write(
        &announcements,
        ANNOUNCEMENT.replace("kind = \"release\"", "kind = \"news\""),
    )
    .unwrap();
    assert!(
        within(Duration::from_secs(5), async || {
            std::fs::read_to_string(&log).unwrap().contains(
                "announcements.toml:5: announcement spring-release: unknown kind \"news\"",
            )
        })
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(http_get(http, "/").1.contains("Forårsrelease"));
}
