//! udstil behind HAProxy (Debian's), as a platform runs it: HAProxy checks
//! `/readyz` and passes each connection on with a PROXY protocol v2 header,
//! so udstil logs in, audits and bans the supplier's own address, not the
//! balancer's. A connection from the balancer without a header, and a
//! header from anywhere else, are refused.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::reload::within;

pub struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts HAProxy in the foreground: `front` -> each server's SFTP
/// `(name, sftp, http)` with `send-proxy-v2`, round robin, health-checked on
/// `/readyz` at `http` (a failed connect goes to another server); its stats
/// as CSV at `stats`.
pub fn haproxy(
    dir: &std::path::Path,
    front: std::net::SocketAddr,
    servers: &[(String, std::net::SocketAddr, std::net::SocketAddr)],
    stats: std::net::SocketAddr,
) -> Haproxy {
    let lines: String = servers
        .iter()
        .map(|(name, sftp, http)| {
            format!(
                "  server {name} {sftp} send-proxy-v2 check port {} inter 300ms fall 2 rise 2\n",
                http.port()
            )
        })
        .collect();
    let cfg = format!(
        "defaults\n  mode tcp\n  retries 3\n  option redispatch\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
         frontend sftp\n  bind {front}\n  default_backend udstil\n\n\
         backend udstil\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n{lines}\n\
         listen stats\n  mode http\n  bind {stats}\n  stats enable\n  stats uri /stats\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(cfg.as_bytes())
        .unwrap();
    let check = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(&path)
        .output()
        .expect("haproxy is installed");
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    Haproxy(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Whether HAProxy's health check has `server` up.
pub fn is_up(stats: std::net::SocketAddr, server: &str) -> bool {
    http_get(stats, "/stats;csv")
        .1
        .lines()
        .any(|l| l.starts_with(&format!("udstil,{server},")) && l.contains(",UP,"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_the_suppliers_own_address_is_logged_audited_and_banned() {
    let env = start_with(60, |dir, text| {
        keygen(dir, "intruder", &["-t", "ed25519"]);
        *text = text.replacen(
            "[sftp]\n",
            "[sftp]\nproxy_protocol_from = [\"127.0.0.1/32\"]\nban_after_failures = 2\nban_seconds = 600\n",
            1,
        );
        text.push_str("\n[http]\nlisten = \"127.0.0.1:0\"\n");
    })
    .await;
    let (front, stats) = (free_addr(), free_addr());
    let _haproxy = haproxy(
        env.path(),
        front,
        &[("replica1".into(), env.addr, env.http_addr.unwrap())],
        stats,
    );
    // HAProxy finds udstil ready through /readyz.
    assert!(
        within(Duration::from_secs(20), async || {
            is_up(stats, "replica1")
        })
        .await,
        "HAProxy never saw udstil ready: {}",
        http_get(stats, "/stats;csv").1
    );

    // Through the balancer from 127.0.0.9: logged in and audited as 127.0.0.9.
    let via = |user: &str, key: &std::path::Path, from: &str| {
        tokio::task::block_in_place(|| {
            sftp_with_key(
                front,
                user,
                key,
                "ls /\n",
                &["-o", &format!("BindAddress={from}")],
            )
        })
    };
    let out = via("bi-alpha", &env.key("bi-alpha"), "127.0.0.9");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("kommune"), "{}", stdout(&out));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logins = stdout(&udstil(
        &["audit", "query", "--action", "login", "--format", "json"],
        &env.config_path,
    ));
    let events: Vec<serde_json::Value> = serde_json::from_str(&logins).unwrap();
    let addresses: Vec<&str> = events
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["127.0.0.9"], "{logins}");

    // The balancer's own connection without a header is refused.
    let direct = tokio::task::block_in_place(|| {
        sftp_with_key(
            env.addr,
            "bi-alpha",
            &env.key("bi-alpha"),
            "ls /\n",
            &["-o", "BindAddress=127.0.0.1"],
        )
    });
    assert!(
        !direct.status.success(),
        "a connection from the balancer without a header got in"
    );
    // A header from an address that is no balancer is not read: the SSH
    // handshake refuses it, and the address it claims is never seen.
    let mut forged = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    forged.extend_from_slice(&[192, 0, 2, 1, 127, 0, 0, 1, 0x9c, 0x40, 0x08, 0xae]);
    forged.extend_from_slice(b"SSH-2.0-forger\r\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.11:0".parse().unwrap()).unwrap();
    let mut conn = socket.connect(env.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = conn.write_all(&forged).await;
    let mut buf = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    // A supplier connecting directly (not from a balancer) still gets in.
    let plain = tokio::task::block_in_place(|| {
        sftp_with_key(
            env.addr,
            "bi-beta",
            &env.key("bi-beta"),
            "ls /\n",
            &["-o", "BindAddress=127.0.0.12"],
        )
    });
    assert!(plain.status.success(), "{}", stderr(&plain));

    // Failed logins through the balancer ban 127.0.0.10, not the balancer:
    // 127.0.0.9 still gets in through it.
    let intruder = env.path().join("keys/intruder");
    for _ in 0..2 {
        let out = via("bi-alpha", &intruder, "127.0.0.10");
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}",
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let banned = via("bi-alpha", &env.key("bi-alpha"), "127.0.0.10");
    assert!(!banned.status.success(), "127.0.0.10 was not banned");
    assert!(
        !stderr(&banned).contains("Permission denied"),
        "turned away by the key, not the ban: {}",
        stderr(&banned)
    );
    let still = via("bi-alpha", &env.key("bi-alpha"), "127.0.0.9");
    assert!(
        still.status.success(),
        "the balancer was banned: {}",
        stderr(&still)
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = stdout(&udstil(
        &["audit", "query", "--format", "json"],
        &env.config_path,
    ));
    let events: Vec<serde_json::Value> = serde_json::from_str(&all).unwrap();
    let seen: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert!(
        !seen.contains("192.0.2.1"),
        "a forged address was believed: {seen:?}"
    );
    assert!(
        seen.contains("127.0.0.10") && seen.contains("127.0.0.9"),
        "{seen:?}"
    );
    assert!(
        !seen.contains("127.0.0.1"),
        "the balancer's address was recorded: {seen:?}"
    );
}
