//! The driftsstatus page as people see it: an operator opens an incident
//! and plans a release with `udstil status`, a load fails, and the page,
//! its feed and its JSON show it; headless Chromium renders it (screenshots
//! kept under the test target folder) and axe-core finds no WCAG 2.1 AA
//! violation, in Danish and English.

use std::process::Command;

use crate::common;

/// Renders `url` in Chromium, saves a screenshot to `shot`, returns axe-core's violations.
pub fn check_page(url: &str, shot: &std::path::Path) -> serde_json::Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/page_check.js");
    let out = tokio::task::block_in_place(|| {
        Command::new("node")
            .arg(script)
            .arg(url)
            .arg(shot)
            .output()
            .expect("node is installed")
    });
    assert!(out.status.success(), "{}", common::stderr(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        result["passes"].as_u64().unwrap() > 10,
        "axe ran its rules: {result}"
    );
    result["violations"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_an_incident_and_a_failed_load_accessibly() {
    let env = common::start_with(200, |_, text| {
        text.push_str("\n[http]\nlisten = \"127.0.0.1:0\"\n")
    })
    .await;
    let http = env.http_addr.unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();

    // All in order at first.
    let (code, page) = common::http_get(http, "/");
    assert_eq!(code, 200);
    assert!(page.contains("Samlet status: I drift"), "{page}");
    assert!(page.contains("Ingen aktuelle hændelser."));
    // The data areas with their data dictionary.
    assert!(
        page.contains("<h2 id=\"areas-h\">Dataområder</h2>"),
        "{page}"
    );
    assert!(
        page.contains(
            "<strong>plans-and-activities</strong>, version 1, i produktion: Plans and activities"
        ),
        "{page}"
    );
    assert!(
        page.contains("<td><code>timer_pr_uge</code></td><td>Hours per week.</td>"),
        "{page}"
    );
    assert!(
        check_page(&format!("http://{http}/"), &shots.join("status-ok-da.png"))
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An operator opens an incident and plans a release.
    let udstil = |args: &[&str]| {
        let out = common::udstil(args, &env.config_path);
        assert!(out.status.success(), "{}", common::stderr(&out));
        common::stdout(&out)
    };
    let opened = udstil(&[
        "status",
        "open",
        "--component",
        "sftp",
        "--impact",
        "degraded",
        "--title",
        "Langsomme overførsler",
        "--message",
        "Vi undersøger langsomme downloads.",
    ]);
    assert!(opened.starts_with("incident 1 opened"), "{opened}");
    udstil(&[
        "status",
        "update",
        "1",
        "--state",
        "identified",
        "--message",
        "En disk er fuld.",
    ]);
    udstil(&[
        "status",
        "plan",
        "--release",
        "--title",
        "Release 2.4",
        "--from",
        "2030-01-10T18:00:00+01:00",
        "--to",
        "2030-01-10T20:00:00+01:00",
        "--description",
        "Nye kolonner i joblog.",
    ]);
    let bad = common::udstil(
        &[
            "status",
            "open",
            "--component",
            "nfs",
            "--impact",
            "outage",
            "--title",
            "x",
            "--message",
            "y",
        ],
        &env.config_path,
    );
    assert!(!bad.status.success());
    assert!(
        common::stderr(&bad).contains("no component \"nfs\""),
        "{}",
        common::stderr(&bad)
    );

    // A load of joblog fails: its component is degraded without anyone acting.
    common::fail_a_joblog_load(&env.config).await;

    let (_, page) = common::http_get(http, "/");
    assert!(page.contains("Samlet status: Forstyrrelser"), "{page}");
    assert!(page.contains("Langsomme overførsler") && page.contains("En disk er fuld."));
    assert!(page.contains("Release 2.4"));
    assert!(
        page.contains(
            "Dataområde joblog: leverancer</span> <span class=\"degraded\">Forstyrrelser"
        ),
        "{page}"
    );
    let (_, english) = common::http_get(http, "/?lang=en");
    assert!(english.contains("lang=\"en\"") && english.contains("Overall status: Degraded"));
    assert!(english.contains("Data area joblog: loads</span> <span class=\"degraded\">Degraded"));
    // No supplier and no person on the public page.
    assert!(!page.contains("bi-alpha") && !english.contains("bi-alpha"));

    let (code, feed) = common::http_get(http, "/feed.atom");
    assert_eq!(code, 200);
    assert!(
        feed.contains("<title>Langsomme overførsler – Årsag fundet</title>"),
        "{feed}"
    );
    assert!(feed.contains("Release 2.4"));
    let (_, json) = common::http_get(http, "/api/status.json");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["overall"], "degraded");
    let level = |id: &str| {
        json["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()["level"]
            .clone()
    };
    assert_eq!(level("sftp"), "degraded");
    assert_eq!(level("area:joblog"), "degraded");
    assert_eq!(level("area:plans-and-activities"), "operational");

    for (path, shot) in [
        ("/", "status-incident-da.png"),
        ("/?lang=en", "status-incident-en.png"),
    ] {
        let violations = check_page(&format!("http://{http}{path}"), &shots.join(shot));
        assert!(
            violations.as_array().unwrap().is_empty(),
            "{path}: {violations:#}"
        );
    }

    // Resolved: it moves to the past incidents; the audit trail has every change.
    udstil(&[
        "status",
        "update",
        "1",
        "--state",
        "resolved",
        "--message",
        "Disken er udvidet.",
    ]);
    let (_, page) = common::http_get(http, "/");
    assert!(page.contains("Tidligere hændelser") && page.contains("Disken er udvidet."));
    let audit = udstil(&["audit", "query", "--action", "status_change"]);
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("status_change"))
            .count(),
        4,
        "{audit}"
    );
}
