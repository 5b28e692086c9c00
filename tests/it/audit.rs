//! The audit trail as an operator uses it: real SFTP clients log in, list
//! and download; `udstil audit query` shows it, `udstil audit person` names
//! exactly the suppliers that received a file holding a person, and an edit
//! of one audit row makes `udstil audit verify` fail naming that row.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{stderr, stdout, udstil};

/// The (only) full load folder of `area` for `authority`.
fn full_load(root: &Path, authority: &str, area: &str) -> PathBuf {
    let dir = root.join(authority).join(area).join("v1").join("full");
    let mut loads: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(loads.len(), 1, "{loads:?}");
    loads.remove(0)
}

fn parquet_in(load: &Path) -> PathBuf {
    std::fs::read_dir(load)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap()
}

/// The view path of a real path under the tree.
fn view(root: &Path, real: &Path) -> String {
    format!("/{}", real.strip_prefix(root).unwrap().display())
}

/// Suppliers in the text output of `audit person` (third column).
fn suppliers_of(out: &Output) -> BTreeSet<String> {
    assert!(out.status.success(), "{}", stderr(out));
    stdout(out)
        .lines()
        .filter(|l| l.contains(" download "))
        .map(|l| l.split_whitespace().nth(3).unwrap().to_string())
        .collect()
}

/// Polls `audit query` until `action` has `n` events (the writer is asynchronous).
fn wait_for(config: &Path, action: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = udstil(&["audit", "query", "--action", action], config);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        if text.lines().count() >= n || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_are_audited_searchable_by_person_and_tamper_evident() {
    let env = common::start(300).await;
    let root = env.root().to_path_buf();
    let cfg = env.config_path.clone();

    // Files: kommune/101's joblog (bi-alpha downloads it, bi-beta only lists
    // it) and akasse/902's joblog (bi-delta downloads it).
    let k101 = parquet_in(&full_load(&root, "kommune/101", "joblog"));
    let a902 = parquet_in(&full_load(&root, "akasse/902", "joblog"));
    let in_101 = common::persons_in(k101.parent().unwrap());
    let in_902 = common::persons_in(a902.parent().unwrap());
    let only_101 = in_101
        .difference(&in_902)
        .next()
        .expect("a person only in 101")
        .clone();
    let only_902 = in_902
        .difference(&in_101)
        .next()
        .expect("a person only in 902")
        .clone();
    // A person of kommune/147: in files nobody downloads.
    let in_147 = common::persons_in(&full_load(&root, "kommune/147", "joblog"));
    let nobody = in_147
        .iter()
        .find(|c| !in_101.contains(*c) && !in_902.contains(*c))
        .expect("a person of 147 only")
        .clone();

    let got = env.path().join("got.parquet");
    let out = env.sftp(
        "bi-alpha",
        &format!("get {} {}\n", view(&root, &k101), got.display()),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.sftp(
        "bi-beta",
        &format!("ls {}\n", view(&root, k101.parent().unwrap())),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // bi-delta through the client library, reading the whole file.
    {
        let (_ssh, sftp) = common::library_session(env.addr, "bi-delta", &env.key("bi-delta"))
            .await
            .unwrap();
        let data = sftp.read(view(&root, &a902)).await.unwrap();
        assert_eq!(data.len() as u64, std::fs::metadata(&a902).unwrap().len());
    }
    // A failed login: bi-alpha's name with bi-beta's key.
    let out = common::sftp_with_key(env.addr, "bi-alpha", &env.key("bi-beta"), "ls\n", &[]);
    assert!(!out.status.success());

    let downloads = wait_for(&cfg, "download", 2);
    let size = std::fs::metadata(&k101).unwrap().len();
    let alpha = downloads
        .lines()
        .find(|l| l.contains(" bi-alpha "))
        .unwrap_or_else(|| panic!("no download by bi-alpha in:\n{downloads}"));
    assert!(
        alpha.contains(&view(&root, &k101))
            && alpha.contains(&format!("bytes={size} "))
            && alpha.contains("from=127.0.0.1")
            && alpha.contains("outcome=complete"),
        "{alpha}"
    );
    assert!(
        downloads
            .lines()
            .any(|l| l.contains(" bi-delta ") && l.contains("outcome=complete")),
        "{downloads}"
    );
    assert!(!downloads.contains(" bi-beta "), "{downloads}");

    let logins = wait_for(&cfg, "login", 3);
    for s in ["bi-alpha", "bi-beta", "bi-delta"] {
        assert!(
            logins.lines().any(|l| l.contains(&format!(" {s} "))
                && l.contains("key=SHA256:")
                && l.contains("outcome=ok")),
            "no login of {s} in:\n{logins}"
        );
    }
    let refused = wait_for(&cfg, "login_refused", 1);
    assert!(
        refused.lines().any(|l| l.contains(" bi-alpha ")
            && l.contains("key=SHA256:")
            && l.contains("unknown key")),
        "{refused}"
    );
    let listings = wait_for(&cfg, "listing", 1);
    assert!(
        listings
            .lines()
            .any(|l| l.contains(" bi-beta ") && l.contains("joblog")),
        "{listings}"
    );

    // Who received data about a person: exactly the suppliers that downloaded a file holding it.
    let person = |cpr: &str| suppliers_of(&udstil(&["audit", "person", cpr], &cfg));
    assert_eq!(person(&only_101), BTreeSet::from(["bi-alpha".to_string()]));
    assert_eq!(person(&only_902), BTreeSet::from(["bi-delta".to_string()]));
    let out = udstil(&["audit", "person", &nobody], &cfg);
    assert!(
        suppliers_of(&out).is_empty() && stdout(&out).contains("no downloads"),
        "{}",
        stdout(&out)
    );
    // A malformed CPR number is refused with a reason.
    let out = udstil(&["audit", "person", "12345"], &cfg);
    assert!(
        !out.status.success() && stderr(&out).contains("10 digits"),
        "{}",
        stderr(&out)
    );
    // The CPR numbers asked about are not written into the audit trail itself.
    let all = stdout(&udstil(&["audit", "query"], &cfg));
    assert!(all.contains("person lookup"), "{all}");
    assert!(!all.contains(&only_101) && !all.contains(&nobody));

    // The chain verifies; an edit of one row (a download made smaller) is found and named.
    let out = udstil(&["audit", "verify"], &cfg);
    assert!(
        stdout(&out).contains("audit chain intact"),
        "{} {}",
        stdout(&out),
        stderr(&out)
    );
    let state = udstil::state::State::open(env.config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let id = common::tamper_audit(
        &state,
        "bytes = 1",
        "supplier = 'bi-alpha' AND action = 'download'",
    )
    .await;
    state.close().await;
    let out = udstil(&["audit", "verify"], &cfg);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("audit row {id} ("))
            && stderr(&out).contains("download")
            && stderr(&out).contains("does not match its contents"),
        "{}",
        stderr(&out)
    );
}

/// Regression: a SIGTERM or SIGINT during a download lost its `download`
/// event (9 of 9 tries). A stop now closes open sessions, records their
/// partial downloads with the bytes served, flushes the trail, then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_download_records_it_before_exiting() {
    use tokio::io::AsyncReadExt;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let addr = common::free_addr();
        let cfg = udstil::app::prepare_demo(dir.path(), addr, 300, 3)
            .await
            .unwrap();
        let config = udstil::app::check_config(&cfg).await.unwrap();
        udstil::app::run_loads(&config, udstil::app::LoadRequest::full(None))
            .await
            .unwrap();
        let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_udstil"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "udstil=info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let root = config.storage_root.clone();
        let file = parquet_in(&full_load(&root, "kommune/101", "joblog"));
        let size = std::fs::metadata(&file).unwrap().len();
        let key = dir.path().join("keys/bi-alpha");
        let (_ssh, sftp) = common::library_session(addr, "bi-alpha", &key)
            .await
            .unwrap();
        let mut f = sftp.open(view(&root, &file)).await.unwrap();
        let mut first = vec![0u8; 1000];
        f.read_exact(&mut first).await.unwrap();
        // SAFETY: a signal to the child this test started.
        unsafe {
            libc::kill(server.id() as i32, signal);
        }
        let t = Instant::now();
        let status = tokio::task::block_in_place(|| server.wait()).unwrap();
        let took = t.elapsed();
        let mut log = String::new();
        std::io::Read::read_to_string(server.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert!(status.success(), "exit {status}: {log}");
        assert!(took < Duration::from_secs(12), "stopping took {took:?}");
        assert!(!log.contains("event was lost"), "{log}");
        let out = udstil(&["audit", "query", "--action", "download"], &cfg);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.contains("bi-alpha") && l.contains(&view(&root, &file)))
            .unwrap_or_else(|| panic!("signal {signal}: no download event: {text}\n{log}"));
        // The handle was still open when the stop closed the session (the
        // client library may have read ahead, so the byte count is its own).
        assert!(line.contains("session ended"), "{line}");
        assert!(line.contains(&format!("file size {size}")), "{line}");
    }
}
