//! Shared test set-up: a demo data folder with a small synthetic DFDG, loads
//! built, and the server running in-process on 127.0.0.1:0.
#![allow(dead_code)]

pub mod pg;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use udstil::app;
use udstil::config::Config;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: Arc<Config>,
    pub addr: SocketAddr,
    /// The HTTP listener, when the config has `[http] listen`.
    pub http_addr: Option<SocketAddr>,
    /// The config in force in the running server (reloads replace it).
    pub live: Arc<udstil::config::Live>,
}

impl Env {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn key(&self, supplier: &str) -> PathBuf {
        self.path().join("keys").join(supplier)
    }

    pub fn root(&self) -> &Path {
        &self.config.storage_root
    }

    /// Runs the OpenSSH `sftp` client in batch mode as `supplier`.
    /// Blocks this test's thread only; the server keeps running on the others.
    pub fn sftp(&self, supplier: &str, batch: &str, extra: &[&str]) -> Output {
        tokio::task::block_in_place(|| {
            sftp_with_key(self.addr, supplier, &self.key(supplier), batch, extra)
        })
    }
}

impl Env {
    /// Runs OpenSSH's `ssh` as `supplier` with `args` (a command, `-T`, ...).
    pub fn ssh(&self, supplier: &str, args: &[&str]) -> Output {
        tokio::task::block_in_place(|| {
            Command::new("ssh")
                .args(ssh_opts())
                .arg("-i")
                .arg(self.key(supplier))
                .args(["-p", &self.addr.port().to_string()])
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        })
    }
}

pub fn sftp_with_key(
    addr: SocketAddr,
    user: &str,
    key: &Path,
    batch: &str,
    extra: &[&str],
) -> Output {
    let batch_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(batch_file.path(), batch).unwrap();
    let mut cmd = Command::new("sftp");
    cmd.args(["-b"]).arg(batch_file.path());
    cmd.args(["-P", &addr.port().to_string(), "-i"]).arg(key);
    cmd.args(ssh_opts());
    cmd.args(extra);
    cmd.arg(format!("{user}@{}", addr.ip()));
    cmd.stdin(std::process::Stdio::null());
    cmd.output().expect("the OpenSSH sftp client is installed")
}

/// Options that make the OpenSSH client non-interactive and deterministic.
pub fn ssh_opts() -> Vec<String> {
    [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Builds a demo folder (`citizens` synthetic citizens), runs full loads of
/// every area and starts the server.
pub async fn start(citizens: u64) -> Env {
    start_with(citizens, |_, _| {}).await
}

/// Like [`start`], with the demo config text edited by `edit` (in the data
/// folder, so relative key paths resolve there) before it is checked.
pub async fn start_with(citizens: u64, edit: impl FnOnce(&Path, &mut String)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config_path = app::prepare_demo(dir.path(), "127.0.0.1:0".parse().unwrap(), citizens, 7)
        .await
        .unwrap();
    let mut text = std::fs::read_to_string(&config_path).unwrap();
    edit(dir.path(), &mut text);
    std::fs::write(&config_path, text).unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    app::run_loads(&config, app::LoadRequest::full(None))
        .await
        .unwrap();
    let config = Arc::new(config);
    let server = app::Server::bind(config.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (addr, http_addr) = (server.addr, server.http_addr);
    let live = server.live();
    tokio::spawn(server.run());
    Env {
        dir,
        config_path,
        config,
        addr,
        http_addr,
        live,
    }
}

/// Asserts that `sha256sum -c SHA256SUMS` passes in a downloaded load
/// folder `dir` (what `client` fetched), and that its manifest came too.
pub fn assert_load_verifies(client: &str, dir: &Path) {
    let check = Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .expect("sha256sum is installed");
    assert!(
        check.status.success(),
        "{client}: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(
        dir.join("MANIFEST.json").exists(),
        "{client}: no MANIFEST.json"
    );
}

/// Makes an OpenSSH key pair `<dir>/keys/<name>` with `ssh-keygen`.
pub fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let path = dir.join("keys").join(name);
    let out = Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen is installed");
    assert!(out.status.success(), "ssh-keygen: {}", stderr(&out));
    path
}

pub struct AcceptAnyHostKey;

impl russh::client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// An SSH login through the client library (russh), without a channel yet.
pub async fn library_login(
    addr: SocketAddr,
    user: &str,
    key: &Path,
) -> Result<russh::client::Handle<AcceptAnyHostKey>, String> {
    use russh::keys::{PrivateKeyWithHashAlg, load_secret_key};
    let mut session = russh::client::connect(
        Arc::new(russh::client::Config::default()),
        addr,
        AcceptAnyHostKey,
    )
    .await
    .map_err(|e| format!("connect: {e}"))?;
    let key = load_secret_key(key, None).unwrap();
    let auth = session
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .map_err(|e| format!("authenticate: {e}"))?;
    if !auth.success() {
        return Err(format!("{user} could not log in"));
    }
    Ok(session)
}

/// An SFTP session through the client library (russh + russh-sftp). The SSH
/// handle is returned too: dropping it would end the session.
pub async fn library_session(
    addr: SocketAddr,
    user: &str,
    key: &Path,
) -> Result<
    (
        russh::client::Handle<AcceptAnyHostKey>,
        russh_sftp::client::SftpSession,
    ),
    String,
> {
    let session = library_login(addr, user, key).await?;
    let channel = session
        .channel_open_session()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| format!("subsystem: {e}"))?;
    let sftp = russh_sftp::client::SftpSession::new(channel.into_stream())
        .await
        .map_err(|e| format!("sftp: {e}"))?;
    Ok((session, sftp))
}

/// The first entry of a folder through the client library (a load's id, say).
pub async fn first_entry(sftp: &russh_sftp::client::SftpSession, dir: &str) -> String {
    let mut entries = sftp.read_dir(dir).await.unwrap();
    entries
        .next()
        .unwrap_or_else(|| panic!("{dir} is empty"))
        .file_name()
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// Every file under `root` with its hash, and every folder: a fingerprint of the tree.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(p);
            } else {
                out.insert(rel, sha256_file(&p));
            }
        }
    }
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The demo config laid out in `dir`, reading DFDG from `source_url`.
pub async fn demo_config_for(dir: &Path, source_url: &str) -> (PathBuf, Config) {
    let config_path = app::prepare_demo(dir, "127.0.0.1:0".parse().unwrap(), 1, 1)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&config_path).unwrap().replace(
        "url = \"sqlite://dfdg.sqlite\"",
        &format!("url = \"{source_url}\""),
    );
    std::fs::write(&config_path, text).unwrap();
    let config = app::check_config(&config_path).await.unwrap();
    (config_path, config)
}

/// The CPR numbers in the Parquet files of a load folder.
pub fn persons_in(dir: &Path) -> std::collections::BTreeSet<String> {
    use arrow_array::{Array, StringArray};
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&path).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = batch.column_by_name("cpr").expect("a cpr column");
            let col = col.as_any().downcast_ref::<StringArray>().unwrap();
            out.extend(col.iter().flatten().map(str::to_string));
        }
    }
    out
}

/// Edits the newest audit row matching `filter` behind the platform's back
/// (as someone with database access could); returns its id.
pub async fn tamper_audit(state: &udstil::state::State, set: &str, filter: &str) -> i64 {
    use sqlx::AssertSqlSafe;
    let find = format!("SELECT MAX(id) FROM audit WHERE {filter}");
    let update = |id: i64| format!("UPDATE audit SET {set} WHERE id = {id}");
    match state {
        udstil::state::State::Sqlite(p) => {
            let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(find))
                .fetch_one(p)
                .await
                .unwrap();
            sqlx::query(AssertSqlSafe(update(id)))
                .execute(p)
                .await
                .unwrap();
            id
        }
        udstil::state::State::Postgres(p) => {
            let (id,): (i64,) = sqlx::query_as(AssertSqlSafe(find))
                .fetch_one(p)
                .await
                .unwrap();
            sqlx::query(AssertSqlSafe(update(id)))
                .execute(p)
                .await
                .unwrap();
            id
        }
    }
}

/// Runs the `udstil` binary with `args`, then `--config <config>`.
pub fn udstil(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_udstil"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// A loopback address with a port free a moment ago, for a daemon's config.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Makes a delta load of joblog fail (its journal table renamed away in the
/// demo's SQLite DFDG) and runs one, as a schedule would.
pub async fn fail_a_joblog_load(config: &Config) {
    use sqlx::Connection;
    let mut dfdg = sqlx::SqliteConnection::connect(&config.source_url)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE joblog_journal RENAME TO joblog_journal_gone")
        .execute(&mut dfdg)
        .await
        .unwrap();
    dfdg.close().await.unwrap();
    assert!(
        app::run_loads(config, app::LoadRequest::delta(Some("joblog")))
            .await
            .is_err()
    );
}

/// GETs `path` from an HTTP listener with curl: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let out = tokio::task::block_in_place(|| {
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .expect("curl is installed")
    });
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}
