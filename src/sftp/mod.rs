//! The SSH front door (russh) and the SFTP subsystem (russh-sftp).
//!
//! Step 1, platform access: the SSH user name is the supplier id and only
//! public-key authentication with one of that supplier's keys, valid now,
//! of an accepted type and signed with SHA-2, from an allowed address,
//! succeeds. Around it: a login grace time, an idle timeout, caps on
//! unauthenticated connections and on sessions per supplier, and penalties
//! for addresses that fail (see `defender`).
//! Step 2, data access, is the access policy against the live config, asked
//! on every path lookup and again on reads of open handles (see `session`).
//! Only the `sftp` subsystem is served: shell, exec, pty and every kind of
//! forwarding are refused.

mod defender;
mod pipe;
mod quickack;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};

use crate::audit::{Action, Event, Trail};
use crate::config::Live;
pub use defender::{Defender, Verdict};
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

/// russh settings: public key only, modern algorithms only, strict key
/// exchange (the Terrapin counter-measure) advertised.
pub fn ssh_config(key: PrivateKey) -> russh::server::Config {
    use russh::{cipher, kex, mac};
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
        // Login grace and idle time are enforced per connection (see `watch`);
        // keepalives find dead peers.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        window_size: 8 << 20,
        maximum_packet_size: 65_535,
        channel_buffer_size: 256,
        preferred: russh::Preferred {
            kex: std::borrow::Cow::Borrowed(&[
                kex::MLKEM768X25519_SHA256,
                kex::CURVE25519,
                kex::CURVE25519_PRE_RFC_8731,
                kex::EXTENSION_SUPPORT_AS_SERVER,
                kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
            ]),
            // Host keys are advertised only for keys the server has (ed25519);
            // this list is also `server-sig-algs`, the client-key signatures
            // accepted: no `ssh-rsa` (SHA-1), no DSA.
            key: std::borrow::Cow::Borrowed(&[
                Algorithm::Ed25519,
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP256,
                },
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP384,
                },
                Algorithm::Ecdsa {
                    curve: russh::keys::EcdsaCurve::NistP521,
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha512),
                },
                Algorithm::Rsa {
                    hash: Some(HashAlg::Sha256),
                },
            ]),
            cipher: std::borrow::Cow::Borrowed(&[
                cipher::CHACHA20_POLY1305,
                cipher::AES_256_GCM,
                cipher::AES_128_GCM,
            ]),
            mac: std::borrow::Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
            ..russh::Preferred::default()
        },
        ..Default::default()
    }
}

/// Milliseconds on a process-wide monotonic clock, for cheap atomics.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When the client last sent anything on its SFTP channel.
#[derive(Debug)]
pub struct Activity(AtomicU64);

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity(AtomicU64::new(now_ms())))
    }

    pub fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// The state every connection shares.
pub struct Shared {
    pub config: Arc<Live>,
    /// The storage root with symlinks resolved.
    pub root: PathBuf,
    defender: Mutex<Defender>,
    unauthenticated: AtomicUsize,
    sessions: Mutex<HashMap<String, usize>>,
    /// Connections ended so far (the heap is trimmed after some end).
    ended: AtomicU64,
    pub audit: Trail,
}

impl Shared {
    pub fn new(config: Arc<Live>, audit: Trail) -> Result<Arc<Shared>, SftpError> {
        let c = config.get();
        std::fs::create_dir_all(&c.storage_root).map_err(|source| SftpError::Root {
            path: c.storage_root.clone(),
            source,
        })?;
        let root = std::fs::canonicalize(&c.storage_root).map_err(|source| SftpError::Root {
            path: c.storage_root.clone(),
            source,
        })?;
        let defender = Defender::new(c.sftp.ban_after_failures, c.sftp.ban);
        Ok(Arc::new(Shared {
            config,
            root,
            defender: Mutex::new(defender),
            unauthenticated: AtomicUsize::new(0),
            sessions: Mutex::new(HashMap::new()),
            ended: AtomicU64::new(0),
            audit,
        }))
    }

    /// Takes one of the supplier's session slots, if one is free.
    fn session_slot(self: &Arc<Self>, supplier: &str, cap: usize) -> Option<SessionSlot> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let n = sessions.entry(supplier.to_string()).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(SessionSlot {
            shared: self.clone(),
            supplier: supplier.to_string(),
        })
    }
}

/// A supplier's session counted against its cap until dropped.
struct SessionSlot {
    shared: Arc<Shared>,
    supplier: String,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut sessions = self.shared.sessions.lock().expect("sessions lock");
        if let Some(n) = sessions.get_mut(&self.supplier) {
            *n = n.saturating_sub(1);
        }
    }
}

/// How often the heap is trimmed, if a connection ended since the last time.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Hands memory freed by ended downloads back to the system. glibc keeps it
/// in its arenas: after 32 concurrent 128 MiB downloads the resident size
/// stayed at 150 MiB with no session open, and 38 MiB after a trim; across
/// benchmark rounds it kept creeping up (BENCHMARKS.md).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's
    // own locks and touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves SFTP on `listener` until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    key: PrivateKey,
) -> Result<(), SftpError> {
    let ssh = Arc::new(ssh_config(key));
    let mut trim = tokio::time::interval(TRIM_EVERY);
    let mut ended_at_trim = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = trim.tick() => {
                let ended = shared.ended.load(Ordering::Acquire);
                if ended != ended_at_trim {
                    ended_at_trim = ended;
                    tokio::task::spawn_blocking(trim_heap);
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let settings = shared.config.get().sftp.clone();
        let ip = peer.ip();
        let verdict = {
            let mut d = shared.defender.lock().expect("defender lock");
            d.configure(settings.ban_after_failures, settings.ban);
            d.check(ip, Instant::now())
        };
        if let Verdict::Banned { remaining } = verdict {
            tracing::debug!(peer = %peer, remaining_s = remaining.as_secs(), "connection from a banned address dropped");
            continue;
        }
        if shared.unauthenticated.load(Ordering::Acquire) >= settings.max_unauthenticated {
            tracing::warn!(peer = %peer, cap = settings.max_unauthenticated, "too many connections not yet logged in; dropped");
            continue;
        }
        shared.unauthenticated.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(connection(shared.clone(), ssh.clone(), stream, peer));
    }
}

/// What the watchdog of a connection needs to know about it.
struct ConnState {
    supplier: OnceLock<String>,
    activity: Arc<Activity>,
}

/// One TCP connection from accept to close: the SSH session, watched for
/// its login grace time and idle time, then its failure recorded (if it
/// never logged in) against its address.
async fn connection(
    shared: Arc<Shared>,
    ssh: Arc<russh::server::Config>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let started = Instant::now();
    let state = Arc::new(ConnState {
        supplier: OnceLock::new(),
        activity: Activity::new(),
    });
    let handler = Connection {
        shared: shared.clone(),
        peer,
        state: state.clone(),
        slot: None,
        channels: HashMap::new(),
    };
    let grace = shared.config.get().sftp.login_grace;
    // russh's `nodelay` setting applies only to sockets it accepts itself;
    // without it every login stalled 40 ms on Nagle (see `quickack`).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(peer = %peer, error = %e, "could not set TCP_NODELAY");
    }
    let outcome = match tokio::time::timeout(
        grace,
        russh::server::run_stream(ssh, quickack::QuickAck::new(stream), handler),
    )
    .await
    {
        Err(_) => Some("login grace time exceeded before the SSH handshake"),
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "ssh handshake failed");
            None
        }
        Ok(Ok(session)) => watch(&shared, session, &state, started).await,
    };
    if let Some(reason) = outcome {
        tracing::info!(peer = %peer, supplier = ?state.supplier.get(), reason, "connection closed");
    }
    shared.ended.fetch_add(1, Ordering::AcqRel);
    if state.supplier.get().is_none() {
        shared.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        let ban = shared
            .defender
            .lock()
            .expect("defender lock")
            .failed(peer.ip(), Instant::now());
        if let Some(length) = ban {
            tracing::warn!(peer = %peer.ip(), ban_s = length.as_secs(), "address banned after repeated failed logins");
        }
    }
}

/// Runs a session to its end, closing it when the login grace time or the
/// idle timeout of the config in force runs out. Returns why it closed it.
async fn watch(
    shared: &Shared,
    session: russh::server::RunningSession<Connection>,
    state: &ConnState,
    started: Instant,
) -> Option<&'static str> {
    let handle = session.handle();
    tokio::pin!(session);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let reason = loop {
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    // Malformed traffic ends that connection only.
                    tracing::debug!(error = %e, "ssh connection ended with an error");
                }
                return None;
            }
            _ = tick.tick() => {
                let settings = &shared.config.get().sftp;
                if state.supplier.get().is_none() {
                    if started.elapsed() >= settings.login_grace {
                        break "login grace time exceeded";
                    }
                } else if state.activity.idle() >= settings.idle_timeout {
                    break "idle timeout";
                }
            }
        }
    };
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, reason.into(), "en".into())
        .await;
    // A peer that does not read its disconnect message is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
    Some(reason)
}

struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    slot: Option<SessionSlot>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

/// Why a key offered by `user` is not accepted now, if it is not.
fn login_refusal(
    config: &crate::config::Config,
    user: &str,
    key: &PublicKey,
    algorithm: &Algorithm,
    ip: IpAddr,
) -> Option<&'static str> {
    let Some(supplier) = config.suppliers.get(user) else {
        return Some("unknown user");
    };
    if !supplier.allows_address(ip) {
        return Some("address not allowed for this supplier");
    }
    // The same RSA key may sign with SHA-1 (`ssh-rsa`); only SHA-2 is accepted.
    if matches!(algorithm, Algorithm::Rsa { hash: None }) {
        return Some("ssh-rsa (SHA-1) signature refused");
    }
    if supplier.key_valid_at(key, Utc::now()).is_none() {
        return Some(
            if supplier
                .keys
                .iter()
                .any(|k| k.key.key_data() == key.key_data())
            {
                "key not valid now"
            } else {
                "unknown key"
            },
        );
    }
    None
}

impl Connection {
    fn ip(&self) -> IpAddr {
        self.peer.ip()
    }

    /// Records a refused login attempt in the audit trail.
    async fn audit_refusal(&self, user: &str, fingerprint: Option<String>, reason: &str) {
        let mut e = Event::new(Action::LoginRefused, &format!("refused: {reason}"))
            .supplier(user)
            .address(self.ip());
        e.key_fingerprint = fingerprint;
        self.shared.audit.record(e).await;
    }

    /// Holds back a rejection according to the address's record.
    async fn penalty(&self) {
        let delay = self
            .shared
            .defender
            .lock()
            .expect("defender lock")
            .delay(self.ip(), Instant::now());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let config = self.shared.config.get();
        match login_refusal(&config, user, offer.public_key, offer.algorithm, self.ip()) {
            None => Ok(Auth::Accept),
            Some(reason) => {
                let fingerprint = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
                self.audit_refusal(user, Some(fingerprint), reason).await;
                self.penalty().await;
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256);
        let config = self.shared.config.get();
        if let Some(reason) = login_refusal(&config, user, key.public_key, key.algorithm, self.ip())
        {
            tracing::info!(user, %fingerprint, peer = %self.peer, reason, "login refused");
            self.audit_refusal(user, Some(fingerprint.to_string()), reason)
                .await;
            self.penalty().await;
            return Ok(Auth::reject());
        }
        let cap = config.suppliers[user].max_sessions;
        // Over the cap, the login itself succeeds (it is no attack) but no
        // session channel opens; see `channel_open_session`.
        self.slot = self.shared.session_slot(user, cap);
        let outcome = if self.slot.is_none() {
            tracing::warn!(supplier = user, cap, peer = %self.peer, "session refused: the supplier has reached its session cap");
            "ok; no session: the supplier's session cap is reached"
        } else {
            tracing::info!(supplier = user, %fingerprint, peer = %self.peer, "login accepted");
            "ok"
        };
        self.shared
            .audit
            .record(
                Event::new(Action::Login, outcome)
                    .supplier(user)
                    .address(self.ip())
                    .fingerprint(&fingerprint.to_string()),
            )
            .await;
        if self.state.supplier.set(user.to_string()).is_ok() {
            self.shared.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared
            .defender
            .lock()
            .expect("defender lock")
            .succeeded(self.ip());
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        tracing::info!(user, peer = %self.peer, "login refused: password authentication is not offered");
        self.audit_refusal(user, None, "password authentication is not offered")
            .await;
        self.penalty().await;
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.slot.is_none() || self.channels.len() >= 4 {
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
        tracing::info!(supplier = ?self.state.supplier.get(), "shell refused");
        session.channel_failure(channel)?;
        session.close(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(supplier = ?self.state.supplier.get(), "exec refused");
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
        let (Some(supplier), true) = (self.state.supplier.get().cloned(), name == "sftp") else {
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
            self.shared.audit.clone(),
            self.ip(),
        );
        russh_sftp::server::run(pipe::stream(channel, self.state.activity.clone()), handler).await;
        Ok(())
    }
}
