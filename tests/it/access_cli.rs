//! `udstil access explain` and `udstil access matrix` as an operator runs them.

use crate::common::{stderr, stdout, udstil};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_agreement_and_matrix_covers_every_combination() {
    let dir = tempfile::tempdir().unwrap();
    let config = udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 10, 1)
        .await
        .unwrap();

    // bi-beta: kommune/101 allowed; 751's connection agreement ended 2026-06-30 (inclusive).
    let out = udstil(
        &[
            "access",
            "explain",
            "--supplier",
            "bi-beta",
            "--area",
            "joblog",
            "--at",
            "2026-11-22",
        ],
        &config,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |auth: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(auth))
            .unwrap_or_else(|| panic!("no line for {auth} in:\n{text}"))
            .to_string()
    };
    assert!(line("kommune/101").ends_with("allowed"), "{text}");
    let ended = line("kommune/751");
    assert!(
        ended.contains("denied")
            && ended
                .contains("connection agreement tilslutning-751 ended 2026-06-30T22:00:00+00:00"),
        "{ended}"
    );
    // The day before it ended, it was in force.
    let out = udstil(
        &[
            "access",
            "explain",
            "--supplier",
            "bi-beta",
            "--authority",
            "kommune/751",
            "--area",
            "joblog",
            "--at",
            "2026-06-30",
        ],
        &config,
    );
    assert!(stdout(&out).contains("allowed"), "{}", stdout(&out));
    // bi-gamma's cooperation agreement ended; it is named, with its date.
    let out = udstil(
        &[
            "access",
            "explain",
            "--supplier",
            "bi-gamma",
            "--authority",
            "kommune/147",
            "--at",
            "2026-11-22",
        ],
        &config,
    );
    assert!(
        stdout(&out).contains("cooperation agreement sup-gamma ended"),
        "{}",
        stdout(&out)
    );
    // Unknown names are errors, not empty reports.
    let out = udstil(&["access", "explain", "--supplier", "bi-nobody"], &config);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bi-nobody"), "{}", stderr(&out));

    // The matrix: one row per supplier x authority named in an agreement x area.
    let out = udstil(
        &["access", "matrix", "--at", "2026-11-22", "--format", "json"],
        &config,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let c = udstil::config::load(&config).unwrap();
    let authorities: std::collections::BTreeSet<_> = c
        .agreements
        .connection
        .iter()
        .map(|a| a.authority)
        .chain(c.agreements.data_processing.iter().map(|d| d.authority))
        .collect();
    assert_eq!(
        rows.len(),
        c.suppliers.len() * authorities.len() * c.areas.len()
    );
    let allowed: Vec<String> = rows
        .iter()
        .filter(|r| r["allowed"] == true)
        .map(|r| {
            format!(
                "{} {} {}",
                r["supplier"].as_str().unwrap(),
                r["authority"].as_str().unwrap(),
                r["area"].as_str().unwrap()
            )
        })
        .collect();
    assert!(allowed.contains(&"bi-delta akasse/905 unemployment-fund-membership".to_string()));
    assert!(
        !allowed.iter().any(|a| a.starts_with("bi-gamma")),
        "{allowed:?}"
    );
    let csv = udstil(&["access", "matrix", "--at", "2026-11-22"], &config);
    assert_eq!(stdout(&csv).lines().count(), rows.len() + 1);
    assert!(stdout(&csv).starts_with("supplier,authority,authority_name,area,allowed,reasons"));
}
