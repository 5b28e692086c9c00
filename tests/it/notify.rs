//! Webhook notifications as a receiver sees them: signed, each delivered
//! once, and nothing lost while the receiver is down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use sqlx::Connection;

use crate::common;

const SECRET: &str = "a-webhook-secret-of-32-bytes-len";

/// What the receiver got: signature header, delivery id, event, body.
pub type Got = Arc<Mutex<Vec<(String, String, String, Bytes)>>>;

/// Starts a webhook receiver on `addr`, recording every POST to `/hook`.
pub async fn receiver(addr: std::net::SocketAddr, got: Got) {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            async move {
                let h = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                got.lock().unwrap().push((
                    h("x-udstil-signature"),
                    h("x-udstil-delivery"),
                    h("x-udstil-event"),
                    body,
                ));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// Waits until `got` holds `n` notifications (or 60 s pass).
pub async fn wait_for(got: &Got, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} notifications",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_and_delivered_once_after_the_receiver_comes_back() {
    let hook = common::free_addr();
    let env = common::start_with(200, |dir, text| {
        std::fs::write(dir.join("webhook-secret"), SECRET).unwrap();
        text.push_str(&format!(
            "\n[[notify]]\nid = \"star-ops\"\nwebhook = \"http://{hook}/hook\"\nsecret_file = \"webhook-secret\"\nevents = [\"load_published\", \"load_failed\"]\n\
             \n[[notify]]\nid = \"joblog-failures\"\nwebhook = \"http://{hook}/hook\"\nsecret_file = \"webhook-secret\"\nevents = [\"load_failed\"]\nareas = [\"joblog\"]\n"
        ));
    })
    .await;
    // The full loads of the three areas were queued before the server started;
    // the receiver is down for the first attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got: Got = Arc::default();
    receiver(hook, got.clone()).await;
    wait_for(&got, 3).await;

    // A failed load of joblog reaches both recipients.
    common::fail_a_joblog_load(&env.config).await;
    wait_for(&got, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "each notification once");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(ids.len(), 5, "distinct deliveries");
    let mut published = Vec::new();
    let mut failed = 0;
    for (sig, _, event, body) in &got {
        assert_eq!(
            sig,
            &udstil::notify::signature(SECRET.as_bytes(), body),
            "signed"
        );
        let notice: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(notice["event"], event.as_str());
        match event.as_str() {
            "load_published" => published.push(notice["area"].as_str().unwrap().to_string()),
            "load_failed" => {
                assert_eq!(notice["area"], "joblog");
                failed += 1;
            }
            other => panic!("{other}"),
        }
    }
    published.sort();
    assert_eq!(
        published,
        [
            "joblog",
            "plans-and-activities",
            "unemployment-fund-membership"
        ]
    );
    assert_eq!(failed, 2, "one per recipient that asked for it");
    let state = udstil::state::State::open(env.config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(state.notify_waiting().await.unwrap(), 0);
    state.close().await;
    // The first attempts met a receiver that was down.
    let mut db = sqlx::SqliteConnection::connect(env.config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let (attempts,): (i64,) =
        sqlx::query_as("SELECT MIN(attempts) FROM notify_outbox WHERE event = 'load_published'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(attempts >= 2, "{attempts} attempts");
}

/// A real SMTP server (aiosmtpd) with STARTTLS required, stopped when dropped.
struct SmtpSink {
    child: std::process::Child,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    fn start(
        port: u16,
        cert: &std::path::Path,
        key: &std::path::Path,
        out: &std::path::Path,
    ) -> SmtpSink {
        use std::io::BufRead;
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/smtp_sink.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(cert)
            .arg(key)
            .arg(out)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd is installed");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        SmtpSink { child }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_goes_over_starttls_to_a_real_smtp_server_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca_and_server_cert(dir.path());
    let smtp = common::free_addr();
    let env = common::start_with(200, |_, text| {
        text.push_str(&format!(
            "\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"udstil@star.example.dk\"\nca_file = \"{}\"\n\
             \n[[notify]]\nid = \"drift\"\nemail = \"drift@star.example.dk\"\nevents = [\"load_published\"]\nareas = [\"joblog\"]\n",
            smtp.port(),
            ca.display()
        ));
    })
    .await;
    // The mail server is down for the first attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = dir.path().join("mail");
    std::fs::create_dir_all(&out).unwrap();
    let _sink = tokio::task::block_in_place(|| SmtpSink::start(smtp.port(), &cert, &key, &out));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mail = loop {
        if let Ok(m) = std::fs::read_to_string(out.join("1.eml")) {
            break m;
        }
        assert!(Instant::now() < deadline, "no mail arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "one mail: joblog only, once"
    );
    assert!(mail.contains("X-Sink-Transport: tls"), "{mail}");
    assert!(
        mail.contains("X-Sink-Rcpt: drift@star.example.dk"),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: [udstil] load_published: joblog"),
        "{mail}"
    );
    assert!(mail.contains("joblog: full load"), "{mail}");
    assert!(mail.contains("From: udstil@star.example.dk"), "{mail}");
    drop(env);
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, made
/// with openssl: `(ca.pem, cert.pem, key.pem)`.
fn test_ca_and_server_cert(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |name: &str| dir.join(name);
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let run = |args: Vec<std::ffi::OsString>| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
    };
    let os = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
    let mut ca = os(&["req", "-x509"]);
    ca.extend(os(&ec));
    ca.extend(os(&[
        "-days",
        "2",
        "-subj",
        "/CN=udstil test CA",
        "-keyout",
    ]));
    ca.extend([p("ca.key").into(), "-out".into(), p("ca.pem").into()]);
    run(ca);
    let mut csr = os(&["req"]);
    csr.extend(os(&ec));
    csr.extend(os(&["-subj", "/CN=127.0.0.1", "-keyout"]));
    csr.extend([p("key.pem").into(), "-out".into(), p("server.csr").into()]);
    run(csr);
    let mut sign = os(&["x509", "-req", "-days", "2", "-in"]);
    sign.extend([
        p("server.csr").into(),
        "-CA".into(),
        p("ca.pem").into(),
        "-CAkey".into(),
        p("ca.key").into(),
        "-CAcreateserial".into(),
        "-extfile".into(),
        p("server.ext").into(),
        "-out".into(),
        p("cert.pem").into(),
    ]);
    run(sign);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// The events of what `got` received.
pub fn notices_in(got: &Got) -> Vec<serde_json::Value> {
    got.lock()
        .unwrap()
        .iter()
        .map(|g| serde_json::from_slice(&g.3).unwrap())
        .collect()
}

/// An operator (`contracts`) hears of every agreement about to end, access
/// change ahead and supplier behind; a supplier's own contact only of what
/// concerns that supplier.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agreements_ending_access_changes_and_suppliers_behind_are_each_sent_once_to_whom_they_concern()
 {
    let (hook, gamma_hook, beta_hook) = (
        common::free_addr(),
        common::free_addr(),
        common::free_addr(),
    );
    let (got, gamma_got, beta_got): (Got, Got, Got) = Default::default();
    receiver(hook, got.clone()).await;
    receiver(gamma_hook, gamma_got.clone()).await;
    receiver(beta_hook, beta_got.clone()).await;
    let ends = (chrono::Utc::now() + chrono::Duration::days(10)).date_naive();
    let env = common::start_with(200, |dir, text| {
        std::fs::write(dir.join("webhook-secret"), SECRET).unwrap();
        text.push_str(&format!(
            "\n[[agreements.cooperation]]\nid = \"sup-gamma-2\"\nsupplier = \"bi-gamma\"\nareas = [\"joblog\"]\nvalid_from = \"2026-01-01\"\nvalid_to = \"{ends}\"\n\
             \n[[notify]]\nid = \"contracts\"\nwebhook = \"http://{hook}/hook\"\nsecret_file = \"webhook-secret\"\n\
             events = [\"agreement_ending\", \"supplier_behind\", \"access_change\"]\nagreement_days = 30\nbehind_loads = 1\n\
             \n[[notify]]\nid = \"gamma-contact\"\nsupplier = \"bi-gamma\"\nwebhook = \"http://{gamma_hook}/hook\"\nsecret_file = \"webhook-secret\"\n\
             events = [\"supplier_behind\", \"access_change\"]\nbehind_loads = 1\n\
             \n[[notify]]\nid = \"beta-contact\"\nsupplier = \"bi-beta\"\nwebhook = \"http://{beta_hook}/hook\"\nsecret_file = \"webhook-secret\"\n\
             events = [\"supplier_behind\", \"access_change\"]\nbehind_loads = 1\n"
        ));
    })
    .await;
    // No supplier has fetched anything: each is behind (bi-gamma too, now
    // that its second cooperation agreement is in force).
    wait_for(&got, 6).await;
    wait_for(&gamma_got, 2).await;
    wait_for(&beta_got, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let notices = notices_in(&got);
    let of = |notices: &[serde_json::Value], event: &str| -> Vec<serde_json::Value> {
        notices
            .iter()
            .filter(|n| n["event"] == event)
            .cloned()
            .collect()
    };
    let ending = of(&notices, "agreement_ending");
    assert_eq!(ending.len(), 1, "{notices:?}");
    assert_eq!(ending[0]["details"]["agreement"], "sup-gamma-2");
    let mut behind: Vec<String> = of(&notices, "supplier_behind")
        .iter()
        .map(|n| n["details"]["supplier"].as_str().unwrap().to_string())
        .collect();
    behind.sort();
    assert_eq!(
        behind,
        ["bi-alpha", "bi-beta", "bi-delta", "bi-gamma"],
        "{notices:?}"
    );
    assert!(
        ending[0]["summary"].as_str().unwrap().ends_with(&format!(
            "ends at {} 00:00 (Danish time)",
            ends + chrono::Duration::days(1)
        )),
        "valid_to is the last day in force: {}",
        ending[0]["summary"]
    );
    // The end of sup-gamma-2 takes joblog of kommune/147 from bi-gamma.
    let change = of(&notices, "access_change");
    assert_eq!(change.len(), 1, "{notices:?}");
    assert_eq!(change[0]["details"]["supplier"], "bi-gamma");
    assert_eq!(change[0]["details"]["authority"], "kommune/147");
    assert_eq!(change[0]["details"]["gained"], false);
    assert_eq!(
        change[0]["details"]["reasons"][0],
        "cooperation agreement sup-gamma-2 ends"
    );
    // bi-gamma's contact: its own access change and delivery; bi-beta's: its delivery only.
    let gamma = notices_in(&gamma_got);
    assert_eq!(gamma.len(), 2, "{gamma:?}");
    assert_eq!(
        of(&gamma, "access_change")[0]["summary"],
        change[0]["summary"]
    );
    assert_eq!(
        of(&gamma, "supplier_behind")[0]["details"]["supplier"],
        "bi-gamma"
    );
    let beta = notices_in(&beta_got);
    assert_eq!(beta.len(), 1, "{beta:?}");
    assert_eq!(beta[0]["details"]["supplier"], "bi-beta");
    // Sent once: the key is taken.
    let state = udstil::state::State::open(env.config.state_url.as_ref().unwrap())
        .await
        .unwrap();
    let key = format!(
        "supplier_behind:contracts:bi-alpha:{}",
        chrono::Utc::now().date_naive()
    );
    assert!(!state.notify_once(&key).await.unwrap());
    state.close().await;
}
