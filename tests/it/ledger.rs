//! The delivery ledger as second-line support uses it: a supplier fetches
//! some loads with OpenSSH's sftp and skips one, and `udstil ledger` names
//! the load it has not fetched completely; each supplier reads its own rows
//! as `LEDGER.json` in its SFTP root.

use crate::common;

/// Load folder names in `dir`, sorted.
fn loads_in(dir: &std::path::Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_names_the_delta_a_supplier_did_not_fetch_completely() {
    let env = common::start(300).await;
    let source = udstil::source::Source::connect(&env.config.source_url)
        .await
        .unwrap();
    for seed in [1, 2] {
        udstil::fixtures::mutate(&source, 200, seed).await.unwrap();
        udstil::app::run_loads(&env.config, udstil::app::LoadRequest::delta(Some("joblog")))
            .await
            .unwrap();
    }
    source.close().await;
    let v1 = env.root().join("kommune/101/joblog/v1");
    let full = loads_in(&v1.join("full"));
    let deltas = loads_in(&v1.join("delta"));
    assert_eq!((full.len(), deltas.len()), (1, 2), "{full:?} {deltas:?}");
    let (f1, d2, d3) = (&full[0], &deltas[0], &deltas[1]);

    // bi-alpha fetches the full load and the second delta whole, and of the
    // first delta its manifest only.
    let dl = env.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let base = "/kommune/101/joblog/v1";
    let batch = format!(
        "lcd {}\nget -r {base}/full/{f1}\nget -r {base}/delta/{d3}\nget {base}/delta/{d2}/MANIFEST.json\n",
        dl.display()
    );
    let out = env.sftp("bi-alpha", &batch, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    // The downloads reach the audit trail when the session ends.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let entry = loop {
        let out = common::udstil(
            &[
                "ledger",
                "--supplier",
                "bi-alpha",
                "--authority",
                "kommune/101",
                "--area",
                "joblog",
                "--format",
                "json",
            ],
            &env.config_path,
        );
        assert!(out.status.success(), "{}", common::stderr(&out));
        let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
        let entry = entries[0].clone();
        if entry["latest_fetched"] == *d3 || std::time::Instant::now() > deadline {
            break entry;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(entry["latest_published"], *d3, "{entry}");
    assert_eq!(entry["latest_fetched"], *d3, "{entry}");
    assert_eq!(entry["replayable_to"], *f1, "{entry}");
    assert_eq!(entry["not_fetched"], serde_json::json!([d2]), "{entry}");
    assert_eq!(entry["catch_up"], "deltas", "{entry}");
    assert_eq!(entry["needed"], serde_json::json!([d2]), "{entry}");

    // The text form for people, all of bi-alpha's rows.
    let out = common::udstil(&["ledger", "--supplier", "bi-alpha"], &env.config_path);
    let text = common::stdout(&out);
    let row = text
        .lines()
        .find(|l| l.contains("kommune/101") && l.contains("joblog"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.ends_with(d2.as_str()), "{row}");
    // Areas it may read but never fetched: start from the full load.
    assert!(
        text.lines()
            .any(|l| l.contains("kommune/147") && l.contains(" full ")),
        "{text}"
    );

    // The same rows, and only its own, in each supplier's SFTP root.
    for supplier in ["bi-alpha", "bi-beta"] {
        let got = env.path().join(format!("{supplier}-LEDGER.json"));
        let out = env.sftp(
            supplier,
            &format!("ls -l /\nget /LEDGER.json {}\n", got.display()),
            &[],
        );
        assert!(out.status.success(), "{}", common::stderr(&out));
        assert!(common::stdout(&out).contains("LEDGER.json"), "listed in /");
        let rows: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&got).unwrap()).unwrap();
        let rows = rows.as_array().unwrap();
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r["supplier"] == supplier), "{rows:?}");
        if supplier == "bi-alpha" {
            let row = rows
                .iter()
                .find(|r| r["authority"] == "kommune/101" && r["area"] == "joblog")
                .unwrap();
            assert_eq!(row, &entry, "the file and `udstil ledger` agree");
        }
    }
    // It is read-only like the rest of the view.
    let out = env.sftp("bi-alpha", "rm /LEDGER.json\n", &[]);
    assert!(!out.status.success());
}
