//! The SSH front door (russh) and the SFTP subsystem (spoken by udstil: `wire`, `session`, `pipe`).
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
mod exec;
mod gate;
mod pipe;
mod proxy;
mod quickack;
mod session;
pub mod wire;

pub use session::LedgerSource;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Action, Event, Trail};
use crate::config::Live;
use crate::metrics::{Outcome, Reason};
use crate::tree::Store;
pub use defender::{Defender, Verdict};
pub use gate::{Admission, Caps, Gate};
pub use session::SftpSession;

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

/// The host keys the server offers: the ed25519 key, and with the legacy
/// profile also the ECDSA P-256 key (each created on first start).
pub fn host_keys(settings: &crate::config::SftpSettings) -> Result<Vec<PrivateKey>, SftpError> {
    let mut keys = vec![host_key(&settings.host_key)?];
    if let Some(path) = &settings.legacy_host_key {
        let algorithm = Algorithm::Ecdsa {
            curve: russh::keys::EcdsaCurve::NistP256,
        };
        keys.push(host_key_of(path, algorithm)?);
    }
    Ok(keys)
}

/// Loads the host key, or creates an ed25519 key (mode 0600) on first start.
pub fn host_key(path: &Path) -> Result<PrivateKey, SftpError> {
    host_key_of(path, Algorithm::Ed25519)
}

fn host_key_of(path: &Path, algorithm: Algorithm) -> Result<PrivateKey, SftpError> {
    let err = |message: String| SftpError::HostKey {
        path: path.to_path_buf(),
        message,
    };
    if path.exists() {
        return russh::keys::load_secret_key(path, None).map_err(|e| err(e.to_string()));
    }
    let key = PrivateKey::random(&mut rand::rng(), algorithm).map_err(|e| err(e.to_string()))?;
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

/// Key exchanges of the default profile.
const KEX: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::EXTENSION_SUPPORT_AS_SERVER,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// The legacy profile adds ECDH over NIST P-256 (with the ECDSA P-256 host
/// key): the one key exchange JSch 0.1.54/0.1.55 shares with the default
/// profile's ciphers and MACs (aes128-ctr, hmac-sha2-256). ssh-audit fails
/// both for their NIST curves; hence opt-in.
const KEX_LEGACY: &[russh::kex::Name] = &[
    russh::kex::MLKEM768X25519_SHA256,
    russh::kex::CURVE25519,
    russh::kex::CURVE25519_PRE_RFC_8731,
    russh::kex::ECDH_SHA2_NISTP256,
    russh::kex::EXTENSION_SUPPORT_AS_SERVER,
    russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// russh settings: public key only, modern algorithms only, strict key
/// exchange (the Terrapin counter-measure) advertised. `legacy` adds the
/// legacy profile's key exchange; `keys` are the host keys to offer;
/// `window` is the channel window offered to clients, in bytes.
pub fn ssh_config(keys: Vec<PrivateKey>, legacy: bool, window: u32) -> russh::server::Config {
    use russh::{cipher, mac};
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-udstil".into()),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH probes with "none" first; answering it at once is no leak.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        max_auth_attempts: 6,
        // Login grace and idle time are enforced per connection (see `watch`);
        // keepalives find dead peers.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 3,
        window_size: window,
        // What a client may send in one SSH packet (requests are small);
        // what udstil sends is cut to the client's own maximum.
        maximum_packet_size: 65_535,
        channel_buffer_size: 256,
        preferred: russh::Preferred {
            kex: std::borrow::Cow::Borrowed(if legacy { KEX_LEGACY } else { KEX }),
            // Host keys are advertised only for keys the server has (ed25519,
            // and ECDSA P-256 in the legacy profile);
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
            // After the AEAD ciphers and the encrypt-then-MAC modes: CTR and
            // plain HMAC-SHA2 for libssh2 before 1.11 (Debian 12's curl, PHP's
            // ssh2, R), which has neither. ssh-audit fails none of them (it warns of the plain HMACs' encrypt-and-MAC mode).
            cipher: std::borrow::Cow::Borrowed(&[
                cipher::CHACHA20_POLY1305,
                cipher::AES_256_GCM,
                cipher::AES_128_GCM,
                cipher::AES_256_CTR,
                cipher::AES_128_CTR,
            ]),
            mac: std::borrow::Cow::Borrowed(&[
                mac::HMAC_SHA512_ETM,
                mac::HMAC_SHA256_ETM,
                mac::HMAC_SHA512,
                mac::HMAC_SHA256,
            ]),
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
    /// The published tree.
    pub store: Store,
    defender: Mutex<Defender>,
    /// Connections not logged in yet; each place holds its connection's
    /// cancel handle and whether it has sent anything.
    gate: Mutex<Gate<(CancellationToken, Arc<AtomicBool>)>>,
    sessions: Mutex<HashMap<String, usize>>,
    /// Connections ended so far (the heap is trimmed after some end).
    ended: AtomicU64,
    pub audit: Trail,
    /// Makes a supplier's `LEDGER.json` (with a state database).
    ledger: Option<session::LedgerSource>,
    /// Cancelled when the server stops: every connection closes.
    stop: CancellationToken,
    /// Every connection and SFTP session: a stop waits for them to end, so
    /// their last audit events are written.
    tracker: TaskTracker,
    /// What the front door turned away since the last summary.
    drops: Drops,
}

/// Connections dropped or closed before login, summarised in the log once a
/// minute rather than a line each (a flood wrote 127 MB of log in 110 s).
#[derive(Default)]
struct Drops {
    banned: AtomicU64,
    per_address: AtomicU64,
    evicted: AtomicU64,
    silent: AtomicU64,
    timed_out: AtomicU64,
}

impl Drops {
    fn take(&self) -> [(&'static str, u64); 5] {
        let t = |a: &AtomicU64| a.swap(0, Ordering::AcqRel);
        [
            ("from banned addresses", t(&self.banned)),
            ("over the per-address cap", t(&self.per_address)),
            ("gave way to newer ones", t(&self.evicted)),
            ("sent nothing", t(&self.silent)),
            ("timed out before login", t(&self.timed_out)),
        ]
    }
}

impl Shared {
    pub fn new(
        config: Arc<Live>,
        audit: Trail,
        ledger: Option<session::LedgerSource>,
    ) -> Result<Arc<Shared>, SftpError> {
        let c = config.get();
        let store = Store::prepare(&c.storage_root).map_err(|source| SftpError::Root {
            path: c.storage_root.clone(),
            source,
        })?;
        let defender = Defender::new(c.sftp.ban_after_failures, c.sftp.ban);
        Ok(Arc::new(Shared {
            config,
            store,
            defender: Mutex::new(defender),
            gate: Mutex::new(Gate::default()),
            sessions: Mutex::new(HashMap::new()),
            ended: AtomicU64::new(0),
            audit,
            ledger,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            drops: Drops::default(),
        }))
    }

    /// The handle that stops [`serve`]: it stops accepting, closes every
    /// connection and returns once their sessions have ended.
    pub fn stopper(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Connections that have not logged in yet.
    pub fn unauthenticated(&self) -> usize {
        self.gate.lock().expect("gate lock").len()
    }

    /// Logged-in connections holding a session slot.
    pub fn sessions_open(&self) -> usize {
        self.sessions.lock().expect("sessions lock").values().sum()
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
/// in its arenas, so after many concurrent downloads the resident size
/// stayed high with no session open, and crept up from one busy hour to the
/// next.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the allocator's
    // own locks and touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often the front door's drops are summarised in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Whether a new connection from `peer` may wait for its login: not from a
/// banned address, and a place among the connections not logged in (an
/// older one may give way, see `gate`). Its place, or `None` when dropped.
fn admit(
    shared: &Shared,
    peer: SocketAddr,
    cancel: &CancellationToken,
    spoke: &Arc<AtomicBool>,
) -> Option<u64> {
    let config = shared.config.get();
    let settings = &config.sftp;
    let ip = peer.ip();
    let (verdict, exempt) = {
        let mut d = shared.defender.lock().expect("defender lock");
        d.configure(
            settings.ban_after_failures,
            settings.ban,
            &settings.ban_exempt,
        );
        (d.check(ip, Instant::now()), d.is_exempt(ip))
    };
    if let Verdict::Banned { remaining } = verdict {
        shared.drops.banned.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %peer, remaining_s = remaining.as_secs(), "connection from a banned address dropped");
        return None;
    }
    let caps = Caps {
        total: settings.max_unauthenticated,
        per_address: settings.max_unauthenticated_per_address,
    };
    let admitted = shared.gate.lock().expect("gate lock").admit(
        ip,
        exempt,
        Instant::now(),
        caps,
        (cancel.clone(), spoke.clone()),
        |(_, spoke)| spoke.load(Ordering::Acquire),
    );
    match admitted {
        Admission::PerAddressCap => {
            shared.drops.per_address.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer, "connection dropped: its address holds its share of connections not logged in");
            None
        }
        Admission::Admitted { place, evicted } => {
            if let Some((older, _)) = evicted {
                shared.drops.evicted.fetch_add(1, Ordering::Relaxed);
                older.cancel();
            }
            Some(place)
        }
    }
}

/// Serves SFTP on `listener` until the shared stop handle is cancelled, then
/// closes every connection and waits (at most the stop timeout) until their
/// sessions have ended and recorded their last audit events.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    keys: Vec<PrivateKey>,
    legacy: bool,
) -> Result<(), SftpError> {
    let window = shared.config.get().sftp.channel_window;
    let ssh = Arc::new(ssh_config(keys, legacy, window));
    let mut trim = tokio::time::interval(TRIM_EVERY);
    let mut summary = tokio::time::interval(SUMMARY_EVERY);
    let mut ended_at_trim = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.stop.cancelled() => break,
            _ = trim.tick() => {
                let ended = shared.ended.load(Ordering::Acquire);
                if ended != ended_at_trim {
                    ended_at_trim = ended;
                    tokio::task::spawn_blocking(trim_heap);
                }
                continue;
            }
            _ = summary.tick() => {
                log_drops(&shared);
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
        if from_balancer(&shared, peer) {
            // The header is read on the connection's own task: a slow
            // balancer never holds up the accept loop.
            shared
                .tracker
                .spawn(behind_balancer(shared.clone(), ssh.clone(), stream, peer));
            continue;
        }
        let cancel = shared.stop.child_token();
        let spoke = Arc::new(AtomicBool::new(false));
        let Some(place) = admit(&shared, peer, &cancel, &spoke) else {
            continue;
        };
        shared.tracker.spawn(connection(
            shared.clone(),
            ssh.clone(),
            stream,
            peer,
            place,
            cancel,
            spoke,
        ));
    }
    drop(listener);
    shared.tracker.close();
    let timeout = shared.config.get().sftp.stop_timeout;
    let open = shared.tracker.len();
    tracing::info!(
        connections = open,
        "stopped accepting; closing open connections"
    );
    if tokio::time::timeout(timeout, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::error!(
            left = shared.tracker.len(),
            timeout_s = timeout.as_secs(),
            "connections still open at the stop timeout"
        );
    }
    log_drops(&shared);
    Ok(())
}

fn log_drops(shared: &Shared) {
    let drops = shared.drops.take();
    if drops.iter().any(|(_, n)| *n > 0) {
        let [banned, per_address, evicted, silent, timed_out] = drops.map(|(_, n)| n);
        tracing::warn!(
            banned,
            per_address,
            evicted,
            silent,
            timed_out,
            waiting = shared.unauthenticated(),
            "connections turned away or closed before login in the last interval"
        );
    }
}

/// Whether `peer` is a load balancer of `[sftp] proxy_protocol_from`.
fn from_balancer(shared: &Shared, peer: SocketAddr) -> bool {
    let config = shared.config.get();
    let nets = &config.sftp.proxy_from;
    if nets.is_empty() {
        return false;
    }
    // An IPv4 balancer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer.ip(), std::net::IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// A connection from a load balancer: its PROXY header names the client,
/// whose address is then admitted, banned, logged and audited like a
/// direct connection's. No valid header in the handshake time: refused.
async fn behind_balancer(
    shared: Arc<Shared>,
    ssh: Arc<russh::server::Config>,
    mut stream: TcpStream,
    balancer: SocketAddr,
) {
    let limit = {
        let settings = &shared.config.get().sftp;
        settings.handshake.min(settings.login_grace)
    };
    let read = tokio::select! {
        r = proxy::read_header(&mut stream, limit) => r,
        _ = shared.stop.cancelled() => return,
    };
    let client = match read {
        Ok(Some(client)) => client,
        // The balancer speaking for itself (a health check).
        Ok(None) => balancer,
        Err(e) => {
            tracing::warn!(balancer = %balancer, error = %e, "connection from a load balancer refused");
            return;
        }
    };
    tracing::debug!(peer = %client, balancer = %balancer, "connection through a load balancer");
    let cancel = shared.stop.child_token();
    let spoke = Arc::new(AtomicBool::new(false));
    let Some(place) = admit(&shared, client, &cancel, &spoke) else {
        return;
    };
    connection(shared, ssh, stream, client, place, cancel, spoke).await;
}

/// What the watchdog of a connection needs to know about it.
struct ConnState {
    supplier: OnceLock<String>,
    activity: Arc<Activity>,
    /// Its place among the connections not logged in (see `gate`).
    place: gate::Place,
    /// Whether the peer sent anything: a bare TCP connect (a health check)
    /// is no failed login.
    spoke: Arc<AtomicBool>,
}

/// One TCP connection from accept to close: the SSH session, watched for
/// its handshake, login grace and idle time, then its failure recorded (if
/// it tried and never logged in) against its address.
async fn connection(
    shared: Arc<Shared>,
    ssh: Arc<russh::server::Config>,
    stream: TcpStream,
    peer: SocketAddr,
    place: gate::Place,
    cancel: CancellationToken,
    spoke: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let state = Arc::new(ConnState {
        supplier: OnceLock::new(),
        activity: Activity::new(),
        place,
        spoke,
    });
    let handler = Connection {
        shared: shared.clone(),
        peer,
        state: state.clone(),
        slot: None,
        channels: HashMap::new(),
    };
    // The login grace time bounds the handshake too.
    let handshake = {
        let settings = &shared.config.get().sftp;
        settings.handshake.min(settings.login_grace)
    };
    // russh's `nodelay` setting applies only to sockets it accepts itself;
    // without it every login stalled 40 ms on Nagle (see `quickack`).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(peer = %peer, error = %e, "could not set TCP_NODELAY");
    }
    let stream = quickack::QuickAck::new(stream, state.spoke.clone());
    let opened = tokio::select! {
        _ = cancel.cancelled() => None,
        r = tokio::time::timeout(handshake, russh::server::run_stream(ssh, stream, handler)) => Some(r),
    };
    let outcome = match opened {
        None => Closed::Cancelled,
        Some(Err(_)) => Closed::TimedOut("no SSH identification within the handshake time"),
        Some(Ok(Err(e))) => Closed::Failed(e.to_string()),
        // Closed gracefully from here on: a disconnect message, then the end.
        Some(Ok(Ok(session))) => watch(&shared, session, &state, started, &cancel).await,
    };
    shared.ended.fetch_add(1, Ordering::AcqRel);
    log_close(&shared, peer, &outcome, state.supplier.get());
    if state.supplier.get().is_none() {
        left_without_login(&shared, peer, place, state.spoke.load(Ordering::Acquire));
    }
}

/// One log line for how a connection ended, at the level it deserves.
fn log_close(shared: &Shared, peer: SocketAddr, outcome: &Closed, logged_in: Option<&String>) {
    match (outcome, logged_in) {
        (Closed::Cancelled, _) if shared.stop.is_cancelled() => {}
        (Closed::Cancelled, None) => {}
        (Closed::Cancelled, Some(s)) => {
            tracing::info!(peer = %peer, supplier = %s, "connection closed")
        }
        (Closed::TimedOut(reason), Some(s)) => {
            tracing::info!(peer = %peer, supplier = %s, reason, "connection closed")
        }
        (Closed::TimedOut(reason), None) => {
            shared.drops.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %peer, reason, "connection closed");
        }
        // Refused handshakes (no common algorithm, bad packets) are worth a
        // line each; after a login it is mostly a client that left without a
        // goodbye.
        (Closed::Failed(reason), None) => {
            tracing::info!(peer = %peer, reason = %reason, "ssh handshake failed")
        }
        (Closed::Failed(reason), Some(s)) => {
            tracing::debug!(peer = %peer, supplier = %s, reason = %reason, "ssh connection ended with an error")
        }
        (Closed::Ended, _) => {}
    }
}

/// A connection that ended without a login: counted for the drop summary,
/// and a failure against its address (a ban after enough), unless it gave
/// way to a newer one, never spoke (a health check), or the server stops.
fn left_without_login(shared: &Shared, peer: SocketAddr, place: gate::Place, spoke: bool) {
    let left = shared.gate.lock().expect("gate lock").leave(place);
    if left.is_none() && !shared.stop.is_cancelled() {
        // It gave way to a newer connection: that is the flood's doing, not this address's.
        tracing::debug!(peer = %peer, "connection not logged in gave way to a newer one");
        return;
    }
    if !spoke {
        shared.drops.silent.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if shared.stop.is_cancelled() {
        return;
    }
    let config = shared.config.get();
    let exempt_of: Vec<&str> = config
        .suppliers
        .values()
        .filter(|s| s.allow_from.iter().any(|n| n.contains(&peer.ip())))
        .map(|s| s.id.as_str())
        .collect();
    let ban = {
        let mut d = shared.defender.lock().expect("defender lock");
        if d.is_exempt(peer.ip()) {
            None
        } else {
            d.failed(peer.ip(), Instant::now())
        }
    };
    if !exempt_of.is_empty() {
        // Never banned: the supplier's own network. Its failures are its to see.
        tracing::warn!(peer = %peer, suppliers = %exempt_of.join(","), "a connection from a supplier's network ended without a login");
    } else if let Some(length) = ban {
        tracing::warn!(peer = %peer.ip(), ban_s = length.as_secs(), "address banned after repeated failed logins");
        crate::metrics::get().bans.inc();
    }
}

/// How a connection ended.
enum Closed {
    /// The session ended by itself (the client left, or an error after login).
    Ended,
    /// Closed by the server: stop, or it gave way to a newer connection.
    Cancelled,
    /// Closed by the server for a timeout; why.
    TimedOut(&'static str),
    /// The SSH handshake or session failed: why.
    Failed(String),
}

/// Runs a session to its end, closing it when the login grace time or the
/// idle timeout of the config in force runs out, or when it is cancelled.
async fn watch(
    shared: &Shared,
    session: russh::server::RunningSession<Connection>,
    state: &ConnState,
    started: Instant,
    cancel: &CancellationToken,
) -> Closed {
    let handle = session.handle();
    tokio::pin!(session);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (closed, reason) = loop {
        tokio::select! {
            r = &mut session => {
                return match r {
                    // Malformed traffic, or no algorithm in common: ends that connection only.
                    Err(e) => Closed::Failed(e.to_string()),
                    Ok(()) => Closed::Ended,
                };
            }
            _ = cancel.cancelled() => {
                let why = if shared.stop.is_cancelled() {
                    "the server is stopping"
                } else {
                    "too many connections not logged in; the oldest gives way"
                };
                break (Closed::Cancelled, why);
            }
            _ = tick.tick() => {
                let settings = &shared.config.get().sftp;
                if state.supplier.get().is_none() {
                    if started.elapsed() >= settings.login_grace {
                        let why = "login grace time exceeded";
                        break (Closed::TimedOut(why), why);
                    }
                } else if state.activity.idle() >= settings.idle_timeout {
                    break (Closed::TimedOut("idle timeout"), "idle timeout");
                }
            }
        }
    };
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, reason.into(), "en".into())
        .await;
    // A peer that does not read its disconnect message is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
    closed
}

struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    slot: Option<SessionSlot>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

/// Why a key offered by `user` is not accepted now, if it is not.
/// Why a login is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    UnknownUser,
    AddressNotAllowed,
    Sha1Signature,
    KeyNotValidNow,
    UnknownKey,
    Password,
}

impl Refusal {
    /// For the log and the audit trail.
    fn message(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown user",
            Refusal::AddressNotAllowed => "address not allowed for this supplier",
            Refusal::Sha1Signature => "ssh-rsa (SHA-1) signature refused",
            Refusal::KeyNotValidNow => "key not valid now",
            Refusal::UnknownKey => "unknown key",
            Refusal::Password => "password authentication is not offered",
        }
    }

    /// The `reason` label of `udstil_refusals_total`.
    fn label(self) -> &'static str {
        match self {
            Refusal::UnknownUser => "unknown_user",
            Refusal::AddressNotAllowed => "address_not_allowed",
            Refusal::Sha1Signature => "sha1_signature",
            Refusal::KeyNotValidNow => "key_not_valid_now",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Password => "password",
        }
    }
}

fn login_refusal(
    config: &crate::config::Config,
    user: &str,
    key: &PublicKey,
    algorithm: &Algorithm,
    ip: IpAddr,
) -> Option<Refusal> {
    let Some(supplier) = config.suppliers.get(user) else {
        return Some(Refusal::UnknownUser);
    };
    if !supplier.allows_address(ip) {
        return Some(Refusal::AddressNotAllowed);
    }
    // The same RSA key may sign with SHA-1 (`ssh-rsa`); only SHA-2 is accepted.
    if matches!(algorithm, Algorithm::Rsa { hash: None }) {
        return Some(Refusal::Sha1Signature);
    }
    if supplier.key_valid_at(key, Utc::now()).is_none() {
        return Some(
            if supplier
                .keys
                .iter()
                .any(|k| k.key.key_data() == key.key_data())
            {
                Refusal::KeyNotValidNow
            } else {
                Refusal::UnknownKey
            },
        );
    }
    None
}

impl Connection {
    fn ip(&self) -> IpAddr {
        self.peer.ip()
    }

    /// Records a refused login attempt in the audit trail and the metrics.
    async fn audit_refusal(&self, user: &str, fingerprint: Option<String>, reason: Refusal) {
        let m = crate::metrics::get();
        m.logins
            .get_or_create(&Outcome { outcome: "refused" })
            .inc();
        m.refusals
            .get_or_create(&Reason {
                reason: reason.label(),
            })
            .inc();
        let mut e = Event::new(
            Action::LoginRefused,
            &format!("refused: {}", reason.message()),
        )
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
                tracing::info!(user, %fingerprint, peer = %self.peer, reason = reason.message(), "login refused");
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
            tracing::info!(user, %fingerprint, peer = %self.peer, reason = reason.message(), "login refused");
            self.audit_refusal(user, Some(fingerprint.to_string()), reason)
                .await;
            self.penalty().await;
            return Ok(Auth::reject());
        }
        let cap = config.suppliers[user].max_sessions;
        // Over the cap, the login itself succeeds (it is no attack) but no
        // session channel opens; see `channel_open_session`.
        self.slot = self.shared.session_slot(user, cap);
        let (outcome, label) = if self.slot.is_none() {
            tracing::warn!(supplier = user, cap, peer = %self.peer, "session refused: the supplier has reached its session cap");
            (
                "ok; no session: the supplier's session cap is reached",
                "no_session",
            )
        } else {
            tracing::info!(supplier = user, %fingerprint, peer = %self.peer, "login accepted");
            ("ok", "accepted")
        };
        crate::metrics::get()
            .logins
            .get_or_create(&Outcome { outcome: label })
            .inc();
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
            self.shared
                .gate
                .lock()
                .expect("gate lock")
                .leave(self.state.place);
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
        self.audit_refusal(user, None, Refusal::Password).await;
        self.penalty().await;
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Channels that have not started SFTP (or a checksum) yet; closed ones leave the map.
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

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
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

    // Every request not served is answered (when the client wants a reply):
    // a client waiting for one would hang.
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: russh::Sig,
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
        let supplier = self.state.supplier.get().map_or("-", String::as_str);
        tracing::info!(supplier, peer = %self.peer, "shell refused: SFTP only");
        // Answered on the channel, so a plain `ssh` login says why it ends.
        self.refuse_on_channel(channel, session, SFTP_ONLY)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let supplier = self.state.supplier.get().cloned();
        let (Some(supplier), Some(ch)) = (supplier, self.channels.remove(&channel)) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let command = match exec::parse(data) {
            Ok(c) => c,
            Err(message) => {
                tracing::info!(supplier = %supplier, peer = %self.peer, "exec refused: not a checksum command");
                self.channels.insert(channel, ch);
                return self.refuse_on_channel(channel, session, &message);
            }
        };
        session.channel_success(channel)?;
        let sftp = self.sftp_session(supplier);
        self.state.activity.touch();
        self.shared
            .tracker
            .spawn(answer_checksum(ch, sftp, command));
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A channel handed to a task (SFTP, a checksum of input) is ended by that task.
        if self.channels.contains_key(&channel) {
            session.close(channel)?;
        }
        Ok(())
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
        let session = self.sftp_session(supplier);
        let reads = self.shared.config.get().sftp.reads_in_flight;
        self.shared.tracker.spawn(pipe::run(
            channel,
            session,
            reads,
            self.state.activity.clone(),
        ));
        Ok(())
    }
}

/// What a shell or an unknown command is told.
const SFTP_ONLY: &str =
    "This service offers SFTP only (sftp, curl, rclone, lftp, ...); there is no shell.";

impl Connection {
    /// The supplier's read-only view, holding a guard the stop waits for.
    fn sftp_session(&self, supplier: String) -> SftpSession {
        SftpSession::new(
            supplier,
            self.shared.config.clone(),
            self.shared.store.clone(),
            self.shared.audit.clone(),
            self.ip(),
            self.shared.ledger.clone(),
            self.shared.tracker.token(),
        )
    }

    /// Accepts the request, then says why it ends on standard error with
    /// exit status 1 and closes the channel.
    fn refuse_on_channel(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        message: &str,
    ) -> Result<(), russh::Error> {
        self.channels.remove(&channel);
        session.channel_success(channel)?;
        session.extended_data(channel, 1, bytes::Bytes::from(format!("{message}\r\n")))?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)
    }
}

/// Answers one checksum command on its channel, then closes it.
async fn answer_checksum(channel: Channel<Msg>, sftp: SftpSession, command: exec::Checksum) {
    let (mut reader, writer) = channel.split();
    let answer = match &command.path {
        Some(path) => sftp.checksum(command.algorithm, path).await,
        None => {
            // Standard input until EOF (rclone probes with empty input).
            let mut hasher = command.algorithm.hasher();
            let mut read = 0usize;
            loop {
                match reader.wait().await {
                    Some(russh::ChannelMsg::Data { data }) => {
                        read += data.len();
                        if read > STDIN_LIMIT {
                            break;
                        }
                        hasher.update(&data);
                    }
                    Some(russh::ChannelMsg::Eof) | None => break,
                    Some(_) => {}
                }
            }
            if read > STDIN_LIMIT {
                Err(format!(
                    "{}: input over {STDIN_LIMIT} bytes",
                    command.algorithm.name()
                ))
            } else {
                Ok(exec::line(&hasher.hex(), None))
            }
        }
    };
    let status = match answer {
        Ok(line) => writer.data(line.as_bytes()).await.map(|_| 0),
        Err(line) => writer
            .extended_data(1, format!("{line}\n").as_bytes())
            .await
            .map(|_| 1),
    };
    if let Ok(code) = status {
        let _ = writer.exit_status(code).await;
        let _ = writer.eof().await;
    }
    let _ = writer.close().await;
}

/// Standard input hashed at most (it is a probe, not an upload).
const STDIN_LIMIT: usize = 1 << 20;
