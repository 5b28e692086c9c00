//! `udstil config check` on broken configs: every error named with file and
//! line, all at once; and the daemon refuses to start on them.

use std::path::Path;
use std::process::{Command, Output};

fn udstil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udstil"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in config"))]
        .matches('\n')
        .count()
        + 1
}

/// A demo data folder (50 citizens) and its config file.
async fn demo() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = udstil::app::prepare_demo(dir.path(), "127.0.0.1:2222".parse().unwrap(), 50, 1)
        .await
        .unwrap();
    (dir, config)
}

/// (what is broken, text replaced, replacement, expected message)
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "unknown authority",
        "authority = \"kommune/751\"",
        "authority = \"kommune/752\"",
        "names unknown authority: `kommune/752` is not on the official list",
    ),
    (
        "duplicate id",
        "id = \"dba-beta-751\"",
        "id = \"dba-beta-101\"",
        "duplicate agreement id \"dba-beta-101\"",
    ),
    (
        "bad date",
        "valid_to = \"2026-06-30\"",
        "valid_to = \"2026-06-31\"",
        "valid_to = 2026-06-31 is not a date",
    ),
    (
        "end before start",
        "valid_to = \"2026-03-31\"",
        "valid_to = \"2024-03-31\"",
        "valid_to (2024-03-31) is not after valid_from (2025-01-01)",
    ),
    (
        "unknown data area",
        "areas = [\"joblog\"]",
        "areas = [\"joblog\", \"payroll\"]",
        "names unknown data area \"payroll\"",
    ),
    (
        "bad cron",
        "delta = \"0 45 1 * * *\"",
        "delta = \"0 61 1 * * *\"",
        "schedule.delta = \"0 61 1 * * *\" is not a cron expression",
    ),
    (
        "unreadable key file",
        "key_files = [\"keys/bi-gamma.pub\"]",
        "key_files = [\"keys/missing.pub\"]",
        "supplier bi-gamma: cannot read key file",
    ),
    (
        "malformed key",
        "key_files = [\"keys/bi-delta.pub\"]",
        "keys = [\"ssh-ed25519 AAAAnotakey bi-delta\"]",
        "supplier bi-delta: key line 1 is not an OpenSSH public key",
    ),
    (
        "unknown column",
        "exclude_columns = [\"anden_aktoer_notat\"]",
        "exclude_columns = [\"anden_aktor_notat\"]",
        "exclude_columns names unknown column \"anden_aktor_notat\" of table plan_aktivitet",
    ),
    (
        "unknown supplier",
        "suppliers = [\"bi-alpha\"]",
        "suppliers = [\"bi-alpha\", \"bi-omega\"]",
        "names unknown supplier \"bi-omega\"",
    ),
    (
        "bad listen address",
        "listen = \"127.0.0.1:2222\"",
        "listen = \"localhost\"",
        "[sftp] listen = \"localhost\" is not an address and port",
    ),
    (
        "bad source url",
        "url = \"sqlite://dfdg.sqlite\"",
        "url = \"mysql://dfdg\"",
        "[source] url = \"mysql://dfdg\" must start with sqlite:// or postgres://",
    ),
    (
        "bad legacy package",
        "datapakke = \"08\"",
        "datapakke = \"8\"",
        "legacy datapakke \"8\" must be two digits",
    ),
    (
        "misspelt field",
        "draft_column = \"kladde\"\nexclude_columns = [\"skat_indkomst\"]\nschedule = { delta = \"0 0",
        "draft_colum = \"kladde\"\nexclude_columns = [\"skat_indkomst\"]\nschedule = { delta = \"0 0",
        "unknown field `draft_colum`",
    ),
    (
        "misspelt section field",
        "root = \"tree\"",
        "roots = \"tree\"",
        "[storage]: unknown field `roots`",
    ),
    (
        "misspelt supplier field",
        "name = \"BI Alpha ApS\"",
        "nmae = \"BI Alpha ApS\"",
        "supplier bi-alpha: unknown field `nmae`",
    ),
    (
        "wrong type",
        "retention_days = 183",
        "retention_days = \"183\"",
        "[audit]: invalid type: string \"183\", expected i64",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_config_gets_a_clear_error_and_the_daemon_refuses_it() {
    let (_dir, config) = demo().await;
    let good = std::fs::read_to_string(&config).unwrap();
    let path = config.to_str().unwrap();
    let ok = udstil(&["config", "check", "--config", path]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let mut all = good.clone();
    for (what, from, to, message) in CASES {
        assert!(good.contains(from), "{what}: fixture text moved");
        let broken = good.replacen(from, to, 1);
        std::fs::write(&config, &broken).unwrap();
        let out = udstil(&["config", "check", "--config", path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        let line = line_of(&good, from);
        let want = format!("{path}:{line}: ");
        let found = err.lines().any(|l| l.starts_with(&want) && l.contains(message))
            // A column problem is reported at the area it belongs to.
            || (*what == "unknown column" && err.lines().any(|l| l.starts_with(path) && l.contains(message)));
        assert!(found, "{what}: expected {want}...{message}\ngot:\n{err}");

        // A column that does not match DFDG is a warning for `serve` (SFTP
        // does not depend on the source); every other error stops it.
        if *what != "unknown column" {
            let out = udstil(&["serve", "--config", path]);
            assert!(!out.status.success(), "{what}: serve started");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("refusing to start"),
                "{what}"
            );
        }
        // Without a usable source the columns cannot be checked, so the
        // bad URL is left out of the all-at-once run.
        if *what != "bad source url" {
            all = all.replacen(from, to, 1);
        }
    }

    // Every (non-syntax) error at once, in one run: unknown fields in several
    // sections, a wrong type, and the column check against DFDG too.
    std::fs::write(&config, &all).unwrap();
    let out = udstil(&["config", "check", "--config", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    for (what, from, _, message) in CASES.iter().filter(|c| c.0 != "bad source url") {
        let found = if *what == "unknown column" {
            err.lines()
                .any(|l| l.starts_with(path) && l.contains(message))
        } else {
            let want = format!("{path}:{}: ", line_of(&good, from));
            err.lines()
                .any(|l| l.starts_with(&want) && l.contains(message))
        };
        assert!(found, "{what} missing when all errors are present:\n{err}");
    }
    // A supplier whose section could not be read is reported once, not again
    // by every agreement that names it.
    assert!(!err.contains("unknown supplier \"bi-alpha\""), "{err}");
    // In file order.
    let lines: Vec<usize> = err
        .lines()
        .filter_map(|l| {
            l.strip_prefix(&format!("{path}:"))?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{err}");
    assert!(Path::new(path).exists());
}

/// Regression: a 100 MB config took 6.8 GB of memory and `key_files =
/// ["/dev/zero"]` grew past 3 GB; a private key where the public one
/// belongs was not named as such. Each is now a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_files_and_private_keys_are_refused_by_name() {
    let (_dir, config) = demo().await;
    let good = std::fs::read_to_string(&config).unwrap();
    let path = config.to_str().unwrap();
    let check = || udstil(&["config", "check", "--config", path]);

    let zero = good.replacen("keys/bi-beta.pub", "/dev/zero", 1);
    std::fs::write(&config, zero).unwrap();
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("supplier bi-beta: cannot read key file /dev/zero: larger than"),
        "{err}"
    );

    let private = good.replacen("keys/bi-beta.pub", "keys/bi-beta", 1);
    std::fs::write(&config, private).unwrap();
    let err = String::from_utf8_lossy(&check().stderr).into_owned();
    assert!(err.contains("holds a private key"), "{err}");

    let mut huge = good.clone();
    huge.push_str(&format!("\n# {}\n", "x".repeat(5 << 20)));
    std::fs::write(&config, huge).unwrap();
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot read config file: larger than"),
        "{err}"
    );
}

/// `udstil load` without a kind names both; output cut short by a closed
/// pipe ends quietly rather than with a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_without_a_kind_and_a_closed_pipe_get_plain_answers() {
    let (_dir, config) = demo().await;
    let path = config.to_str().unwrap();
    let out = udstil(&["load", "--config", path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--full|--delta"), "{err}");

    // The reader is gone before the first line is written (`| true`), as
    // `| head` is once it has its lines.
    let sh = format!(
        "set -o pipefail; {} access matrix --config {path} | true",
        env!("CARGO_BIN_EXE_udstil")
    );
    let out = Command::new("bash").args(["-c", &sh]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// docs/config.md is `udstil config reference`'s output, so the documented
/// settings and defaults are the ones the code has.
#[test]
fn the_config_reference_in_docs_is_the_commands_output() {
    let out = udstil(&["config", "reference"]);
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md");
    let written = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        printed == written,
        "docs/config.md is out of date: run `cargo run -- config reference > docs/config.md`"
    );
    assert!(printed.contains("- `ban_seconds` (whole number, default 300)"));
}
