//! The SSH front door (russh) and the SFTP subsystem (russh-sftp).
//!
//! Step 1, platform access: the SSH user name is the supplier id and only
//! public-key authentication with one of that supplier's keys succeeds.
//! Step 2, data access, is the access policy, asked on every path lookup of
//! the SFTP session (see `session`). Only the `sftp` subsystem is served:
//! shell, exec, pty and every kind of forwarding are refused.

mod pipe;
mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::TcpListener;

use crate::config::Config;
pub use session::{MAX_READ, SftpSession};

#[derive(Debug, thiserror::Error)]
pub enum SftpError {
    #[error("host key {path}: {message}")]
    HostKey { path: PathBuf, message: String },
    #[error("storage root {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("listening: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the host key, or creates an ed25519 key (mode 0600) on first start.
pub fn host_key(path: &Path) -> Result<PrivateKey, SftpError> {
    let err = |message: String| SftpError::HostKey {
        path: path.to_path_buf(),
        message,
    };
    if path.exists() {
        return russh::keys::load_secret_key(path, None).map_err(|e| err(e.to_string()));
    }
    let key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(|e| err(e.to_string()))?;
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    tracing::info!(path = %path.display(), fingerprint = %key.public_key().fingerprint(HashAlg::Sha256), "generated a new host key");
    Ok(key)
}

/// russh settings: public key only, modern algorithms, sane limits.
pub fn ssh_config(key: PrivateKey) -> russh::server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-udstil".into()),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH probes with "none" first; answering it at once is no leak.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: 6,
        inactivity_timeout: Some(Duration::from_secs(600)),
        keepalive_interval: Some(Duration::from_secs(60)),
        window_size: 8 << 20,
        maximum_packet_size: 65_535,
        channel_buffer_size: 256,
        nodelay: true,
        ..Default::default()
    }
}

/// The state every connection shares.
pub struct Shared {
    pub config: Arc<Config>,
    /// The storage root with symlinks resolved.
    pub root: PathBuf,
}

impl Shared {
    pub fn new(config: Arc<Config>) -> Result<Arc<Shared>, SftpError> {
        std::fs::create_dir_all(&config.storage_root).map_err(|source| SftpError::Root {
            path: config.storage_root.clone(),
            source,
        })?;
        let root =
            std::fs::canonicalize(&config.storage_root).map_err(|source| SftpError::Root {
                path: config.storage_root.clone(),
                source,
            })?;
        Ok(Arc::new(Shared { config, root }))
    }
}

/// Serves SFTP on `listener` until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    key: PrivateKey,
) -> Result<(), SftpError> {
    let config = Arc::new(ssh_config(key));
    let mut server = Server { shared };
    server.run_on_socket(config, &listener).await?;
    Ok(())
}

struct Server {
    shared: Arc<Shared>,
}

impl russh::server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection {
            shared: self.shared.clone(),
            peer,
            supplier: None,
            channels: HashMap::new(),
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        // Malformed traffic ends that connection only.
        tracing::debug!(%error, "ssh connection ended with an error");
    }
}

struct Connection {
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    supplier: Option<String>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl Connection {
    fn key_allowed(&self, user: &str, key: &PublicKey) -> bool {
        self.shared
            .config
            .suppliers
            .get(user)
            .is_some_and(|s| s.keys.iter().any(|k| k.key_data() == key.key_data()))
    }

    fn peer(&self) -> String {
        self.peer.map(|p| p.to_string()).unwrap_or_default()
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.key_allowed(user, offer.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256);
        if self.key_allowed(user, key.public_key) {
            tracing::info!(supplier = user, %fingerprint, peer = %self.peer(), "login accepted");
            self.supplier = Some(user.to_string());
            Ok(Auth::Accept)
        } else {
            tracing::info!(user, %fingerprint, peer = %self.peer(), "login refused: unknown user or key");
            Ok(Auth::reject())
        }
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        tracing::info!(user, peer = %self.peer(), "login refused: password authentication is not offered");
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.supplier.is_none() || self.channels.len() >= 4 {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        _host: &str,
        _port: u32,
        _orig: &str,
        _orig_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _addr: &str,
        _port: &mut u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        session.channel_failure(channel)?;
        Ok(false)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(supplier = ?self.supplier, "shell refused");
        session.channel_failure(channel)?;
        session.close(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(supplier = ?self.supplier, "exec refused");
        session.channel_failure(channel)?;
        session.close(channel)
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.close(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(supplier), true) = (self.supplier.clone(), name == "sftp") else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        let Some(channel) = self.channels.remove(&channel_id) else {
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        let handler = SftpSession::new(
            supplier,
            self.shared.config.clone(),
            self.shared.root.clone(),
        );
        russh_sftp::server::run(pipe::stream(channel), handler).await;
        Ok(())
    }
}
