use super::*;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF96/5qags1wXylJFqn17qwSlFgmPXR3ZBHYg5E1eGEH test";

fn minimal(extra: &str) -> String {
    format!(
        r#"[sftp]
listen = "127.0.0.1:2222"
host_key = "host_key"
[storage]
root = "tree"
[source]
url = "sqlite://dfdg.sqlite"
[[supplier]]
id = "bi-a"
name = "A"
keys = ["{KEY}"]
{extra}"#
    )
}

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new("/etc/udstil/u.toml"), text) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn minimal_config_is_valid_and_resolves_paths() {
    let c = parse(Path::new("/etc/udstil/u.toml"), &minimal("")).unwrap();
    assert_eq!(c.storage_root, Path::new("/etc/udstil/tree"));
    assert_eq!(c.source_url, "sqlite:///etc/udstil/dfdg.sqlite");
    assert_eq!(c.suppliers["bi-a"].keys.len(), 1);
}

#[test]
fn collects_every_error_with_file_and_line() {
    let text = minimal(
        r#"[[agreements.data_processing]]
id = "dpa-1"
supplier = "bi-x"
authority = "kommune/999"
valid_from = "2026-02-30"
[[agreements.data_processing]]
id = "dpa-1"
supplier = "bi-a"
authority = "kommune/101"
valid_from = "2026-03-01"
valid_to = "2026-01-01"
"#,
    );
    let errs = errors(&text);
    let want = [
        "/etc/udstil/u.toml:15: data-processing agreement dpa-1 names unknown authority: `kommune/999` is not on the official list of kommunes",
        "/etc/udstil/u.toml:16: data-processing agreement dpa-1: valid_from = 2026-02-30 is not a date",
        "/etc/udstil/u.toml:14: data-processing agreement dpa-1 names unknown supplier \"bi-x\"",
        "/etc/udstil/u.toml:18: duplicate agreement id \"dpa-1\"",
        "/etc/udstil/u.toml:22: data-processing agreement dpa-1: valid_to (2026-01-01) is not after valid_from (2026-03-01)",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn syntax_and_unknown_fields_name_the_line() {
    let errs = errors(&minimal("[sftp2]\nx = 1\n"));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("/etc/udstil/u.toml:12: unknown section or field `sftp2`"),
        "{errs:?}"
    );
    let errs = errors(&minimal(
        "[[supplier]]\nid = \"b\"\nname = \"B\"\nkeyz = []\n",
    ));
    assert!(
        errs.contains(&"/etc/udstil/u.toml:15: supplier b: unknown field `keyz`".to_string()),
        "{errs:?}"
    );
    let errs = errors("[sftp]\nlisten = \"127.0.0.1:1\"\nhost_key = \"k\"\nx = = 1\n");
    assert!(!errs.is_empty());
    assert!(
        errs.iter().all(|e| e.starts_with("/etc/udstil/u.toml:4: ")),
        "{errs:?}"
    );
}

#[test]
fn every_unknown_field_and_wrong_type_is_reported_with_its_line() {
    let text = r#"[sftp]
listn = "127.0.0.1:2222"
host_key = "host_key"
ban_seconds = "300"
[storage]
root = "tree"
rooot = "tree2"
[source]
url = "sqlite://dfdg.sqlite"
[[supplier]]
id = "bi-a"
nmae = "A"
[[supplier]]
id = "bi-b"
name = "B"
keys = []
allow_form = ["10.0.0.0/8"]
[[supplier.key]]
key = "x"
vaild_to = 2026-01-01
[[agreements.data_processing]]
id = "dpa-1"
supplier = "bi-a"
authority = "kommune/101"
valid_from = "2026-01-01"
[[agreements.contract]]
id = "c"
"#;
    let errs = errors(text);
    let want = [
        "/etc/udstil/u.toml:1: [sftp]: missing field `listen`",
        "/etc/udstil/u.toml:2: [sftp]: unknown field `listn`",
        "/etc/udstil/u.toml:4: [sftp]: invalid type: string \"300\", expected i64",
        "/etc/udstil/u.toml:7: [storage]: unknown field `rooot`",
        "/etc/udstil/u.toml:10: supplier bi-a: missing field `name`",
        "/etc/udstil/u.toml:12: supplier bi-a: unknown field `nmae`",
        "/etc/udstil/u.toml:17: supplier bi-b: unknown field `allow_form`",
        "/etc/udstil/u.toml:20: supplier bi-b: unknown field `key.0.vaild_to`",
        "/etc/udstil/u.toml:26: [agreements]: unknown kind `contract`",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errs:#?}"
        );
    }
    // The unreadable supplier bi-a is not reported again by its agreement.
    assert!(
        !errs.iter().any(|e| e.contains("unknown supplier")),
        "{errs:#?}"
    );
    // bi-b's unreadable key line is still checked.
    assert!(
        errs.iter()
            .any(|e| e
                .contains("supplier bi-b: [[supplier.key]] key 1 is not an OpenSSH public key")),
        "{errs:#?}"
    );
    let lines: Vec<&str> = errs.iter().map(|e| e.split(':').nth(1).unwrap()).collect();
    let numbers: Vec<usize> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] <= w[1]), "{errs:#?}");
}

#[test]
fn a_missing_section_is_named() {
    let errs = errors("[storage]\nroot = \"t\"\n");
    assert_eq!(
        errs,
        [
            "/etc/udstil/u.toml: missing section [sftp]",
            "/etc/udstil/u.toml: missing section [source]",
        ]
    );
}

#[test]
fn danish_calendar_days_bound_agreements() {
    // Winter: CET is UTC+1, so 1 January starts at 23:00 UTC the day before.
    assert_eq!(
        parse_instant("2026-01-01", false).unwrap().to_rfc3339(),
        "2025-12-31T23:00:00+00:00"
    );
    // valid_to is inclusive of the day: ends when the next day starts (CEST in June).
    assert_eq!(
        parse_instant("2026-06-30", true).unwrap().to_rfc3339(),
        "2026-06-30T22:00:00+00:00"
    );
    assert_eq!(
        parse_instant("2026-06-30T12:00:00Z", true)
            .unwrap()
            .to_rfc3339(),
        "2026-06-30T12:00:00+00:00"
    );
    assert!(parse_instant("30-06-2026", false).is_none());
}

#[test]
fn audit_settings_default_to_six_months_and_a_key_beside_the_config() {
    let c = parse(Path::new("/etc/udstil/u.toml"), &minimal("")).unwrap();
    assert_eq!(c.audit.retention, Duration::from_secs(183 * 86_400));
    assert_eq!(c.audit.key_file, Path::new("/etc/udstil/audit.key"));
    let c = parse(
        Path::new("/etc/udstil/u.toml"),
        &minimal("[audit]\nretention_days = 400\nkey_file = \"/var/lib/udstil/k\"\n"),
    )
    .unwrap();
    assert_eq!(c.audit.retention, Duration::from_secs(400 * 86_400));
    assert_eq!(c.audit.key_file, Path::new("/var/lib/udstil/k"));
    let text = format!("[audit]\nretention_days = 0\n{}", minimal(""));
    let e = errors(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains(":2:") && e[0].contains("[audit] retention_days = 0 must be at least 1"),
        "{e:?}"
    );
}

/// A supplier switch: kommune/151 moves from bi-a to bi-b at one instant.
#[test]
fn planned_changes_list_a_supplier_switch_with_its_causes() {
    let switch = "2027-03-01T06:00:00+01:00";
    let text = minimal(&format!(
        r#"[[supplier]]
id = "bi-b"
name = "B"
keys = ["{KEY}"]
[[area]]
id = "joblog"
version = 1
table = "joblog"
journal = "joblog_journal"
key = ["joblog_id"]
sequence_column = "seq"
operation_column = "op"
changed_at_column = "changed_at"
route = {{ kommune = "kommune_kode" }}
[[area]]
id = "members"
version = 1
table = "m"
journal = "m_journal"
key = ["id"]
sequence_column = "seq"
operation_column = "op"
changed_at_column = "changed_at"
route = {{ akasse = "akasse_kode" }}
[[agreements.connection]]
id = "t-151-a"
authority = "kommune/151"
suppliers = ["bi-a"]
valid_from = "2025-01-01"
valid_to = "{switch}"
[[agreements.connection]]
id = "t-151-b"
authority = "kommune/151"
suppliers = ["bi-b"]
valid_from = "{switch}"
[[agreements.data_processing]]
id = "dba-a-151"
supplier = "bi-a"
authority = "kommune/151"
valid_from = "2025-01-01"
valid_to = "{switch}"
[[agreements.data_processing]]
id = "dba-b-151"
supplier = "bi-b"
authority = "kommune/151"
valid_from = "2025-01-01"
[[agreements.cooperation]]
id = "sup-a"
supplier = "bi-a"
areas = ["joblog", "members"]
valid_from = "2025-01-01"
[[agreements.cooperation]]
id = "sup-b"
supplier = "bi-b"
areas = ["joblog"]
valid_from = "2025-01-01"
valid_to = "2027-12-31"
"#
    ));
    let c = parse(Path::new("/etc/udstil/u.toml"), &text).unwrap();
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let at = t(switch);
    let changes = report::planned_changes(&c, t("2027-02-01T00:00:00Z"), t("2027-04-01T00:00:00Z"));
    let lines: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "2027-03-01T05:00:00Z bi-a loses kommune/151/joblog (connection agreement t-151-a ends; data-processing agreement dba-a-151 ends)",
            "2027-03-01T05:00:00Z bi-b gains kommune/151/joblog (connection agreement t-151-b starts)",
        ],
        "members is routed to a-kasser only, so kommune/151 has none of it"
    );
    assert!(changes.iter().all(|c| c.at == at));
    // The window is (from, to]: a change at `from` is already in force.
    assert!(report::planned_changes(&c, at, t("2027-04-01T00:00:00Z")).is_empty());
    assert_eq!(
        report::planned_changes(&c, at - chrono::Duration::seconds(1), at).len(),
        2
    );
    // The end of a cooperation agreement is a loss of every area it listed.
    let end = report::planned_changes(&c, t("2027-12-01T00:00:00Z"), t("2028-02-01T00:00:00Z"));
    assert_eq!(end.len(), 1, "{end:?}");
    assert_eq!(
        end[0].to_string(),
        "2027-12-31T23:00:00Z bi-b loses kommune/151/joblog (cooperation agreement sup-b ends)"
    );
    assert!(report::changes_text(at, at, &[]).starts_with("no access changes from"));
}

#[test]
fn the_data_dictionary_is_checked_against_the_source_columns() {
    let text = minimal(
        r#"[[area]]
id = "joblog"
version = 1
table = "joblog"
journal = "joblog_journal"
key = ["joblog_id"]
sequence_column = "seq"
operation_column = "op"
changed_at_column = "changed_at"
route = { kommune = "kommune_kode" }
draft_column = "kladde"
exclude_columns = ["skat"]
description = "Job search"
[area.fields]
joblog_id = "The entry's id"
kanal = "A column DFDG does not have"
skat = "An excluded column"
"#,
    );
    let c = parse(Path::new("/etc/udstil/u.toml"), &text).unwrap();
    let cols = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let tables: TableColumns = [
        (
            "joblog".to_string(),
            cols(&[
                "joblog_id",
                "cpr",
                "kommune_kode",
                "kladde",
                "skat",
                "postnr",
            ]),
        ),
        (
            "joblog_journal".to_string(),
            cols(&["seq", "op", "changed_at"]),
        ),
    ]
    .into();
    let found: Vec<String> = check_columns(&c, &tables)
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        found,
        [
            "/etc/udstil/u.toml:27: area joblog: fields describes column \"kanal\", which table joblog does not have",
            "/etc/udstil/u.toml:28: area joblog: fields describes column \"skat\", which is never published (a draft or excluded column)",
        ]
    );
    // Published but undescribed: a warning, not an error.
    assert_eq!(
        undescribed_columns(&c, &tables),
        [(
            "joblog".to_string(),
            vec![
                "cpr".to_string(),
                "kommune_kode".to_string(),
                "postnr".to_string()
            ]
        )]
    );
    let empty = errors(&minimal(
        "[[area]]\nid = \"a\"\nversion = 1\ntable = \"t\"\njournal = \"j\"\nkey = [\"k\"]\nsequence_column = \"s\"\noperation_column = \"o\"\nchanged_at_column = \"c\"\nroute = { kommune = \"k\" }\nfields = { k = \" \" }\n",
    ));
    assert_eq!(
        empty,
        ["/etc/udstil/u.toml:22: area a: the description of k is empty"]
    );
}

#[test]
fn the_announcements_file_is_checked_with_its_own_name_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("u.toml");
    std::fs::write(&config, minimal("[announcements]\nfile = \"a.toml\"\n")).unwrap();
    let check = |text: &str| -> Vec<String> {
        std::fs::write(dir.path().join("a.toml"), text).unwrap();
        match load(&config) {
            Ok(c) => {
                assert_eq!(
                    c.key_files.last(),
                    Some(&dir.path().join("a.toml")),
                    "watched"
                );
                vec![]
            }
            Err(e) => {
                e.0.iter()
                    .map(|e| e.to_string().replace(&dir.path().display().to_string(), ""))
                    .collect()
            }
        }
    };
    let good = "[[announcement]]\nid = \"r-1\"\ntitle = \"Release\"\nkind = \"maintenance\"\neffective = \"2027-03-01\"\nbody = \"Text\"\n";
    assert_eq!(check(good), Vec::<String>::new());
    assert_eq!(check(""), Vec::<String>::new());
    assert_eq!(
        check(&format!(
            "{good}[[announcement]]\nid = \"r-1\"\ntitle = \"\"\nkind = \"news\"\nareas = [\"nope\"]\neffective = \"2027-02-30\"\nbody = \"x\"\n"
        )),
        [
            "/a.toml:8: duplicate announcement id \"r-1\"",
            "/a.toml:9: announcement r-1: title is empty",
            "/a.toml:10: announcement r-1: unknown kind \"news\" (known: release, data_conversion, new_area, retirement, maintenance)",
            "/a.toml:11: announcement r-1: unknown area \"nope\"",
            "/a.toml:12: announcement r-1: effective = 2027-02-30 is not a date (2026-01-31) or an RFC 3339 time (2026-01-31T08:00:00+01:00)",
        ]
    );
    let typo = check(&good.replace("body", "bodyy"));
    assert_eq!(typo.len(), 1, "{typo:?}");
    assert!(
        typo[0].starts_with("/a.toml:6: unknown field `bodyy`"),
        "{typo:?}"
    );
    std::fs::remove_file(dir.path().join("a.toml")).unwrap();
    let missing = match load(&config) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a missing announcements file was accepted"),
    };
    assert!(
        missing.contains("u.toml:13: [announcements] file"),
        "{missing}"
    );
}

const NEW_AREA: &str = r#"[[area]]
id = "next"
version = 1
table = "t"
journal = "j"
key = ["k"]
sequence_column = "s"
operation_column = "o"
changed_at_column = "c"
route = { kommune = "kk" }
"#;

#[test]
fn a_lifecycle_is_in_order_and_test_subscriptions_need_a_test_stage() {
    let with = |lifecycle: &str, cooperation: &str| {
        minimal(&format!(
            "[[agreements.cooperation]]\nid = \"sup-a\"\nsupplier = \"bi-a\"\nareas = [\"next\"]\n{cooperation}valid_from = \"2025-01-01\"\n{NEW_AREA}{lifecycle}"
        ))
    };
    let good = with(
        "[area.lifecycle]\ntest_from = \"2027-01-04\"\nproduction_from = \"2027-02-01T06:00:00+01:00\"\nretired_from = \"2028-01-01\"\n",
        "test_areas = [\"next\"]\n",
    );
    let c = parse(Path::new("/etc/udstil/u.toml"), &good).unwrap();
    let l = c.areas[0].lifecycle.clone().unwrap();
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    assert_eq!(l.production_from, t("2027-02-01T05:00:00Z"));
    assert_eq!(
        l.test_removed_from,
        t("2027-02-15T05:00:00Z"),
        "14 days by default"
    );
    assert_eq!(
        l.removed_from,
        Some(t("2028-01-30T23:00:00Z")),
        "30 days after retirement"
    );
    // The test subscription reads `next.test`, the production one `next`.
    let coop = &c.agreements.cooperation[0];
    assert!(coop.lists("next") && coop.lists("next.test") && !coop.lists("other.test"));
    assert_eq!(c.areas[0].test_twin().id, "next.test");
    assert!(c.areas[0].test_twin().is_test() && !c.areas[0].is_test());

    assert_eq!(
        errors(&with(
            "[area.lifecycle]\ntest_from = \"2027-03-01\"\nproduction_from = \"2027-02-01\"\n",
            ""
        )),
        ["/etc/udstil/u.toml:29: area next: lifecycle: production_from is not after test_from"]
    );
    assert_eq!(
        errors(&with(
            "[area.lifecycle]\nproduction_from = \"2027-02-01\"\nremoved_from = \"2027-03-01\"\n",
            "test_areas = [\"next\"]\n"
        )),
        [
            "/etc/udstil/u.toml:16: cooperation agreement sup-a: test_areas names \"next\", which is not an area with a test stage ([area.lifecycle] test_from)",
            "/etc/udstil/u.toml:30: area next: lifecycle: removed_from needs retired_from (an area is retired before its loads are removed)",
        ]
    );
}

#[test]
fn test_loads_are_visible_only_to_test_subscribers() {
    let text = minimal(&format!(
        r#"[[supplier]]
id = "bi-b"
name = "B"
keys = ["{KEY}"]
[[agreements.connection]]
id = "t-101"
authority = "kommune/101"
suppliers = ["bi-a", "bi-b"]
valid_from = "2025-01-01"
[[agreements.data_processing]]
id = "d-a"
supplier = "bi-a"
authority = "kommune/101"
valid_from = "2025-01-01"
[[agreements.data_processing]]
id = "d-b"
supplier = "bi-b"
authority = "kommune/101"
valid_from = "2025-01-01"
[[agreements.cooperation]]
id = "sup-a"
supplier = "bi-a"
areas = ["next"]
test_areas = ["next"]
valid_from = "2025-01-01"
[[agreements.cooperation]]
id = "sup-b"
supplier = "bi-b"
areas = ["next"]
valid_from = "2025-01-01"
{NEW_AREA}[area.lifecycle]
test_from = "2026-01-01"
production_from = "2030-01-01"
"#
    ));
    let c = parse(Path::new("/etc/udstil/u.toml"), &text).unwrap();
    let now = chrono::Utc::now();
    let k101: AuthorityId = "kommune/101".parse().unwrap();
    let areas = |s: &str| {
        c.agreements
            .visible(s, now)
            .remove(&k101)
            .unwrap_or_default()
    };
    assert_eq!(
        areas("bi-a"),
        BTreeSet::from(["next".to_string(), "next.test".to_string()])
    );
    assert_eq!(areas("bi-b"), BTreeSet::from(["next".to_string()]));
    assert!(c.agreements.decide("bi-a", k101, "next.test", now).is_ok());
    assert!(c.agreements.decide("bi-b", k101, "next.test", now).is_err());
}

#[test]
fn planned_steps_without_an_announcement_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("u.toml");
    std::fs::write(
        &config,
        minimal(&format!(
            "[announcements]\nfile = \"a.toml\"\n{NEW_AREA}[area.lifecycle]\nproduction_from = \"2027-02-01\"\nretired_from = \"2028-01-01\"\n"
        )),
    )
    .unwrap();
    let announce = |kind: &str| {
        format!(
            "[[announcement]]\nid = \"{kind}\"\ntitle = \"t\"\nkind = \"{kind}\"\nareas = [\"next\"]\neffective = \"2027-02-01\"\nbody = \"b\"\n"
        )
    };
    std::fs::write(dir.path().join("a.toml"), announce("new_area")).unwrap();
    assert_eq!(
        unannounced_steps(&load(&config).unwrap()),
        ["area next is retired 2027-12-31T23:00:00+00:00 but no retirement announcement covers it"]
    );
    std::fs::write(
        dir.path().join("a.toml"),
        announce("new_area") + &announce("retirement"),
    )
    .unwrap();
    assert!(unannounced_steps(&load(&config).unwrap()).is_empty());
}

#[test]
fn planned_changes_include_test_subscriptions() {
    let text = minimal(&format!(
        r#"[[agreements.connection]]
id = "t-101"
authority = "kommune/101"
suppliers = ["bi-a"]
valid_from = "2025-01-01"
[[agreements.data_processing]]
id = "d-a"
supplier = "bi-a"
authority = "kommune/101"
valid_from = "2025-01-01"
[[agreements.cooperation]]
id = "sup-a-test"
supplier = "bi-a"
areas = []
test_areas = ["next"]
valid_from = "2027-01-04"
{NEW_AREA}[area.lifecycle]
test_from = "2027-01-04"
production_from = "2027-02-01"
"#
    ));
    let c = parse(Path::new("/etc/udstil/u.toml"), &text).unwrap();
    let t = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc();
    let changes = report::planned_changes(&c, t("2027-01-01T00:00:00Z"), t("2027-01-10T00:00:00Z"));
    let lines: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        lines,
        [
            "2027-01-03T23:00:00Z bi-a gains kommune/101/next.test (cooperation agreement sup-a-test starts)"
        ]
    );
}

#[test]
fn the_channel_window_and_reads_in_flight_have_defaults_and_bounds() {
    let c = parse(Path::new("/etc/udstil/u.toml"), &minimal("")).unwrap();
    assert_eq!(
        (c.sftp.channel_window, c.sftp.reads_in_flight),
        (8 << 20, 16)
    );
    let set = |window: i64, reads: i64| {
        minimal("").replacen(
            "[sftp]\n",
            &format!("[sftp]\nchannel_window_kib = {window}\nreads_in_flight = {reads}\n"),
            1,
        )
    };
    let c = parse(Path::new("/etc/udstil/u.toml"), &set(65_536, 64)).unwrap();
    assert_eq!(
        (c.sftp.channel_window, c.sftp.reads_in_flight),
        (64 << 20, 64)
    );
    let e = errors(&set(16, 0));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains(":2:")
            && e[0].contains("[sftp] channel_window_kib = 16 must be from 64 to 1048576"),
        "{e:?}"
    );
    assert!(
        e[1].contains(":3:") && e[1].contains("[sftp] reads_in_flight = 0 must be from 1 to 256"),
        "{e:?}"
    );
    assert_eq!(errors(&set(2 << 20, 257)).len(), 2);
}
