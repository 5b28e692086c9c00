//! A format change in DFDG: loads of the old version refuse the new columns,
//! a new version starts with a full load in v<new>/, CHANGES.json says what
//! changed, and retention removes the old version in time.

use udstil::load::version::SchemaChange;
use udstil::source::Source;
use udstil::tree::LoadKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_change_starts_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let config_path =
        udstil::app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), 300, 21)
            .await
            .unwrap();
    let mut config = udstil::app::check_config(&config_path).await.unwrap();
    let root = config.storage_root.clone();
    udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();

    // DFDG adds a column.
    let source = Source::connect(&config.source_url).await.unwrap();
    let Source::Sqlite(pool) = &source else {
        unreachable!()
    };
    for table in ["joblog", "joblog_journal"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} ADD COLUMN kanal TEXT"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
    udstil::fixtures::mutate(&source, 20, 1).await.unwrap();

    // Version 1 refuses it, and says what to do.
    for kind in [LoadKind::Delta, LoadKind::Full] {
        let err = udstil::app::run_loads(
            &config,
            udstil::app::LoadRequest::manual(kind, Some("joblog")),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("added [kanal]") && err.contains("raise the area's version"),
            "{err}"
        );
    }
    assert!(!root.join("kommune/101/joblog/v2").exists());

    // The operator raises the version: a delta cannot start it, a full load does.
    config
        .areas
        .iter_mut()
        .find(|a| a.id == "joblog")
        .unwrap()
        .version = 2;
    let err = udstil::app::run_loads(&config, udstil::app::LoadRequest::delta(Some("joblog")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no full load of version 2"), "{err}");
    let r = udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    assert!(
        root.join("kommune/101/joblog/v2/full")
            .join(r[0].load_id.to_string())
            .join("MANIFEST.json")
            .exists()
    );
    let changes: Vec<SchemaChange> = serde_json::from_slice(
        &std::fs::read(root.join("kommune/101/joblog/CHANGES.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!((changes[0].from_version, changes[0].to_version), (1, 2));
    assert_eq!(
        changes[0]
            .added
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["kanal"]
    );
    assert!(changes[0].removed.is_empty() && changes[0].retyped.is_empty());
    // Each version has its own data dictionary; the new column is listed,
    // undescribed until the operator describes it.
    let dictionary = |v: &str| {
        std::fs::read_to_string(
            root.join("kommune/101/joblog")
                .join(v)
                .join("DICTIONARY.md"),
        )
        .unwrap()
    };
    assert!(
        dictionary("v2").contains("| `kanal` | Utf8 | yes | (no description yet) |"),
        "{}",
        dictionary("v2")
    );
    assert!(dictionary("v2").starts_with("# joblog, version 2\n"));
    assert!(!dictionary("v1").contains("kanal"), "{}", dictionary("v1"));
    // A draft announcement of the change waits for the operator; added to
    // the announcements file as it is, it is a valid announcement.
    let draft =
        std::fs::read_to_string(dir.path().join("announcement-drafts/joblog-v2.toml")).unwrap();
    assert!(draft.contains("- Added columns: `kanal` (Utf8)"), "{draft}");
    let file = dir.path().join("announcements.toml");
    let mut announcements = std::fs::read_to_string(&file).unwrap();
    announcements.push_str(&draft);
    std::fs::write(&file, announcements).unwrap();
    let with_draft = udstil::app::check_config(&config_path).await.unwrap();
    let a = with_draft
        .announcements
        .iter()
        .find(|a| a.id == "joblog-v2")
        .unwrap();
    assert_eq!(a.kind, udstil::announce::Kind::DataConversion);
    assert!(a.areas.contains("joblog"));
    // Deltas continue in v2; v1 stops updating.
    udstil::fixtures::mutate(&source, 20, 2).await.unwrap();
    udstil::app::run_loads(&config, udstil::app::LoadRequest::delta(Some("joblog")))
        .await
        .unwrap();
    assert!(root.join("kommune/101/joblog/v2/delta").exists());
    assert!(
        !root.join("kommune/101/joblog/v1/delta").exists()
            || std::fs::read_dir(root.join("kommune/101/joblog/v1/delta"))
                .unwrap()
                .count()
                == 0
    );
    assert!(
        root.join("kommune/101/joblog/v1").exists(),
        "v1 kept while retention allows"
    );

    // With retention of one full load, the next full removes v1.
    config
        .areas
        .iter_mut()
        .find(|a| a.id == "joblog")
        .unwrap()
        .retention_full_loads = 1;
    udstil::app::run_loads(&config, udstil::app::LoadRequest::full(Some("joblog")))
        .await
        .unwrap();
    assert!(
        !root.join("kommune/101/joblog/v1").exists(),
        "old version not removed"
    );
    source.close().await;
}
