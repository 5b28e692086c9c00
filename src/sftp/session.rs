//! One supplier's SFTP session: read-only, confined to its view. Every path
//! goes through [`tree::resolve`], then the access policy at the current
//! time, then to the disk. File-system and policy errors become SFTP status
//! codes here and nowhere else. Requests come decoded by [`wire`]; replies
//! are encoded into the caller's buffer. Reads of files on disk run on
//! blocking threads and finish in any order ([`InFlight`]): the channel
//! plumbing ([`super::pipe`]) keeps several under way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use chrono::Utc;

use super::wire::{self, Attrs, DataReply, Entry, Request, StatusCode};

use crate::audit::{Action, Event, Trail};
use crate::authority::AuthorityKind;
use crate::config::Live;
use crate::metrics;
use crate::tree::{self, Location, Store};

/// How long an open handle trusts its last access check; a revoked
/// agreement or a config edit stops its reads within this time.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

const MAX_HANDLES: usize = 256;

pub struct SftpSession {
    supplier: String,
    config: Arc<Live>,
    /// The published tree (its root with symlinks resolved).
    store: Store,
    handles: HashMap<u64, OpenHandle>,
    next_handle: u64,
    /// Buffers for DATA replies: one comes back (empty) when its reply is
    /// sent, and reclaims its memory once the SSH layer has encrypted it,
    /// so a download does not allocate per read. Taken oldest first: the
    /// newest may still be on its way.
    buffers: std::collections::VecDeque<BytesMut>,
    audit: Trail,
    address: std::net::IpAddr,
    /// Makes the supplier's `LEDGER.json`; none without a state database.
    ledger: Option<LedgerSource>,
    /// Held until the session's last audit events are recorded: a stop waits for it.
    _guard: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// Makes a supplier's delivery ledger (JSON), given its id; `None` when it
/// has none (nothing it may read) or it cannot be made now (the state
/// database is away): then the file is not there.
pub type LedgerSource = Arc<
    dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>
        + Send
        + Sync,
>;

/// What an open file handle reads from.
enum Content {
    Disk(Arc<std::fs::File>),
    /// A file made for the session (`LEDGER.json`, an announcement).
    Memory(Arc<Vec<u8>>),
}

/// A listing entry: name and attributes.
type Listed = (String, Attrs);

enum OpenHandle {
    Dir {
        location: Location,
        /// Entries not yet sent; none left means the listing is done.
        entries: Vec<Listed>,
        checked: Checked,
    },
    File {
        location: Location,
        content: Content,
        size: u64,
        mtime: u32,
        checked: Checked,
        /// Bytes sent, and the highest offset reached, for the audit trail.
        served: u64,
        reached: u64,
        /// Where the last read asked for ended: a read starting there (or
        /// at 0) is sequential.
        asked_to: u64,
        /// The block after the last one asked for, being read already.
        ahead: Option<ReadAhead>,
        /// Whether the file system answers reads from the page cache
        /// without waiting (`RWF_NOWAIT`); FUSE file systems may not.
        nowait: bool,
    },
}

/// A read started before it was asked for: clients read a file from start
/// to end, so while one block is encrypted and sent the next is read. It
/// hides the latency of a slow file system (a shared one, a cold disk).
struct ReadAhead {
    offset: u64,
    len: usize,
    read: Block,
}

/// A block being read on a blocking thread, into a DATA reply without its id.
type Block = tokio::task::JoinHandle<std::io::Result<(BytesMut, DataReply)>>;

/// Reads `len` bytes at `offset` on a blocking thread, straight into the
/// DATA reply in `buf`: the bytes are written once, then encrypted.
fn read_block(file: Arc<std::fs::File>, offset: u64, len: usize, mut buf: BytesMut) -> Block {
    tokio::task::spawn_blocking(move || {
        buf.clear();
        buf.reserve(wire::DATA_HEADER + len);
        let reply = wire::begin_data(&mut buf);
        append_read(&file, offset, len, &mut buf)?;
        Ok((buf, reply))
    })
}

/// Reads the rest of a DATA reply begun in `buf` on a blocking thread.
fn read_rest(
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
    mut buf: BytesMut,
    reply: DataReply,
) -> Block {
    tokio::task::spawn_blocking(move || {
        append_read(&file, offset, len, &mut buf)?;
        Ok((buf, reply))
    })
}

/// Appends up to `len` bytes at `offset` of `file` to `buf`.
fn append_read(
    file: &std::fs::File,
    offset: u64,
    len: usize,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    buf.reserve(len);
    let start = buf.len();
    // Read into the spare capacity: zeroing the room first was a visible
    // share of the server's CPU in a download.
    let got = rustix::io::pread(file, &mut buf.spare_capacity_mut()[..len], offset)?
        .0
        .len();
    // SAFETY: pread initialised the first `got` bytes after `start`.
    unsafe { buf.set_len(start + got) };
    Ok(())
}

/// What a read from the page cache alone found.
enum Cached {
    /// Every byte asked for was there, and is now in the buffer.
    All,
    /// The first bytes were there and are in the buffer; the rest must come
    /// from storage (the kernel's read-ahead is under way, say).
    Part(usize),
    /// None was there: read on a blocking thread.
    Not,
    /// The file system cannot tell without waiting.
    Unsupported,
}

/// Appends the bytes of `want` at `offset` of `file` that are in the page
/// cache to `out`, without waiting for storage (`preadv2` with
/// `RWF_NOWAIT`); `want` must not reach past the end of the file.
fn read_cached(file: &std::fs::File, offset: u64, want: usize, out: &mut BytesMut) -> Cached {
    use std::os::fd::AsRawFd;
    out.reserve(want);
    let room = &mut out.spare_capacity_mut()[..want];
    let iov = libc::iovec {
        iov_base: room.as_mut_ptr().cast(),
        iov_len: want,
    };
    let Ok(at) = i64::try_from(offset) else {
        return Cached::Unsupported;
    };
    // SAFETY: `iov` points at `want` bytes of `out`'s spare capacity, which
    // outlive the call and are written by nothing else.
    let got = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
    if got < 0 {
        return match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Cached::Not,
            // Not supported here (EOPNOTSUPP), or an error the blocking
            // read will meet again and report.
            _ => Cached::Unsupported,
        };
    }
    let got = got as usize;
    if got == 0 {
        return Cached::Not;
    }
    // SAFETY: preadv2 initialised the `got` bytes after the current end.
    unsafe { out.set_len(out.len() + got) };
    if got < want {
        Cached::Part(got)
    } else {
        Cached::All
    }
}

/// A read of a file on disk under way: a future that yields the finished
/// read with what the session needs to answer it.
pub struct InFlight {
    id: u32,
    handle: u64,
    offset: u64,
    read: Block,
}

/// A read that finished (or failed).
pub struct Finished {
    id: u32,
    handle: u64,
    offset: u64,
    result: std::io::Result<(BytesMut, DataReply)>,
}

impl std::future::Future for InFlight {
    type Output = Finished;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finished> {
        let result = ready!(Pin::new(&mut self.read).poll(cx))
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        Poll::Ready(Finished {
            id: self.id,
            handle: self.handle,
            offset: self.offset,
            result,
        })
    }
}

/// What a request leads to.
pub enum Answer {
    /// The reply is in the buffer (or none is due).
    Done,
    /// A read of a file on disk was started; it answers when it finishes.
    Reading(InFlight),
    /// A read of a file on disk answered from the page cache at once.
    Ready(Finished),
    /// The client broke the protocol; the session ends.
    End(&'static str),
}

impl SftpSession {
    /// The audit event of a file handle that ends: bytes served and whether
    /// the whole file was sent.
    fn download_event(&self, handle: &OpenHandle, how: &str) -> Option<Event> {
        let OpenHandle::File {
            location,
            size,
            served,
            reached,
            ..
        } = handle
        else {
            return None;
        };
        let complete = *reached >= *size && *served >= *size;
        if let Location::Area { area, .. } = location {
            let m = metrics::get();
            let area = area.clone();
            m.bytes_served
                .get_or_create(&metrics::AreaLabel { area: area.clone() })
                .inc_by(*served);
            m.downloads
                .get_or_create(&metrics::Download {
                    area,
                    outcome: if complete { "complete" } else { "partial" },
                })
                .inc();
        }
        Some(
            Event::new(
                Action::Download,
                if complete { "complete" } else { "incomplete" },
            )
            .supplier(&self.supplier)
            .address(self.address)
            .location(location)
            .bytes(*served)
            .detail(&format!("{how}; file size {size}")),
        )
    }
}

impl Drop for SftpSession {
    /// A session that ends with files open (client gone, revoked, timed
    /// out) still records those downloads.
    fn drop(&mut self) {
        let handles = std::mem::take(&mut self.handles);
        for h in handles.values() {
            if let Some(e) = self.download_event(h, "session ended") {
                self.audit.record_detached(e);
            }
        }
    }
}

/// When a handle's access was last found allowed, and under which config.
#[derive(Debug, Clone, Copy)]
struct Checked {
    at: std::time::Instant,
    generation: u64,
}

/// A request refused or failed: the STATUS that answers it.
#[derive(Debug)]
struct Refusal {
    code: StatusCode,
    message: Cow<'static, str>,
}

impl Refusal {
    fn new(code: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

impl From<StatusCode> for Refusal {
    fn from(code: StatusCode) -> Self {
        let message = match code {
            StatusCode::Ok => "Ok",
            StatusCode::Eof => "end of file",
            StatusCode::NoSuchFile => "no such file or folder",
            StatusCode::PermissionDenied => "permission denied",
            StatusCode::Failure => "failure",
            StatusCode::BadMessage => "bad message",
            StatusCode::OpUnsupported => "operation not supported",
        };
        Refusal::new(code, message)
    }
}

type Reply<T> = Result<T, Refusal>;

fn denied(what: &str) -> Refusal {
    refused("read_only");
    Refusal::new(
        StatusCode::PermissionDenied,
        format!("{what}: the platform is read-only"),
    )
}

/// Counts a refused request by reason (a fixed set).
fn refused(reason: &'static str) {
    metrics::get()
        .refusals
        .get_or_create(&metrics::Reason { reason })
        .inc();
}

fn not_found() -> Refusal {
    StatusCode::NoSuchFile.into()
}

fn failure(e: std::io::Error) -> Refusal {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_found()
    } else if e.kind() == std::io::ErrorKind::IsADirectory {
        Refusal::new(StatusCode::Failure, "not a regular file")
    } else {
        tracing::warn!(error = %e, "sftp file-system error");
        Refusal::new(StatusCode::Failure, "internal error")
    }
}

fn dir_attrs(mtime: u32) -> Attrs {
    Attrs {
        size: Some(0),
        uid_gid: Some((0, 0)),
        permissions: Some(0o040_555),
        times: Some((mtime, mtime)),
    }
}

fn attrs_of(meta: &std::fs::Metadata) -> Attrs {
    let mtime = meta.mtime().clamp(0, u32::MAX as i64) as u32;
    if meta.is_dir() {
        dir_attrs(mtime)
    } else {
        file_attrs(meta.len(), mtime)
    }
}

/// A read-only file's attributes.
fn file_attrs(size: u64, mtime: u32) -> Attrs {
    Attrs {
        size: Some(size),
        uid_gid: Some((0, 0)),
        permissions: Some(0o100_444),
        times: Some((mtime, mtime)),
    }
}

/// The `ls -l` line of a listing entry, as OpenSSH's sftp-server makes it
/// (clients such as FileZilla show it; owner and group are `0`).
fn long_name(name: &str, attrs: &Attrs) -> String {
    let perm = attrs.permissions.unwrap_or(0);
    let mut mode = String::with_capacity(10);
    mode.push(if perm & 0o170_000 == 0o040_000 {
        'd'
    } else {
        '-'
    });
    for shift in [6, 3, 0] {
        let bits = perm >> shift;
        mode.push(if bits & 4 != 0 { 'r' } else { '-' });
        mode.push(if bits & 2 != 0 { 'w' } else { '-' });
        mode.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let mtime = attrs.times.map_or(0, |(_, m)| i64::from(m));
    let when = chrono::DateTime::from_timestamp(mtime, 0).unwrap_or_default();
    // Within about six months the time of day is shown, else the year (ls).
    let recent = (Utc::now() - when).num_days().abs() < 182;
    let when = if recent {
        when.format("%b %e %H:%M")
    } else {
        when.format("%b %e  %Y")
    };
    let size = attrs.size.unwrap_or(0);
    format!("{mode}    1 0        0        {size:>8} {when} {name}")
}

/// A read-only file made for the session.
fn memory_attrs(size: u64) -> Attrs {
    file_attrs(size, now_mtime())
}

fn now_mtime() -> u32 {
    Utc::now().timestamp().clamp(0, u32::MAX as i64) as u32
}

/// Whether `supplier` may see `loc` now, under the config in force.
fn allowed(config: &Live, supplier: &str, loc: &Location) -> bool {
    let config = config.get();
    // A supplier removed from the config loses its open sessions' access too.
    if !config.suppliers.contains_key(supplier) {
        return false;
    }
    loc.is_visible(&config.agreements.visible(supplier, Utc::now()))
}

impl SftpSession {
    pub fn new(
        supplier: String,
        config: Arc<Live>,
        store: Store,
        audit: Trail,
        address: std::net::IpAddr,
        ledger: Option<LedgerSource>,
        guard: tokio_util::task::task_tracker::TaskTrackerToken,
    ) -> Self {
        SftpSession {
            supplier,
            config,
            store,
            handles: HashMap::new(),
            next_handle: 0,
            buffers: std::collections::VecDeque::new(),
            audit,
            address,
            ledger,
            _guard: guard,
        }
    }

    /// `md5sum`/`sha1sum`/`sha256sum PATH` over exec: the same resolver and
    /// access check as a read, audited as a file open. Returns the answer
    /// line, or the error line for the client.
    pub async fn checksum(
        &self,
        algorithm: super::exec::Algorithm,
        path: &str,
    ) -> Result<String, String> {
        let no_such = || format!("{}: {path}: No such file or folder", algorithm.name());
        let loc = self
            .locate_audited(path, Action::FileOpen)
            .await
            .map_err(|_| no_such())?;
        let (store, at) = (self.store.clone(), loc.clone());
        let hex = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use std::io::Read;
            let (mut f, _) = store.open_file(&at)?;
            let mut hasher = algorithm.hasher();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hasher.hex())
        })
        .await
        .map_err(|_| no_such())?
        .map_err(|e| format!("{}: {path}: {e}", algorithm.name()))?;
        self.audit
            .record(
                self.event(Action::FileOpen, "ok", &loc)
                    .detail(algorithm.name()),
            )
            .await;
        Ok(super::exec::line(&hex, Some(path)))
    }

    fn event(&self, action: Action, outcome: &str, loc: &Location) -> Event {
        Event::new(action, outcome)
            .supplier(&self.supplier)
            .address(self.address)
            .location(loc)
    }

    /// Resolves a client path to a visible location, evaluated now,
    /// recording an access the policy refused: a supplier reaching for an
    /// authority or area it may not read (shown to it as not found).
    async fn locate_audited(&self, path: &str, action: Action) -> Reply<Location> {
        let loc = tree::resolve(path).map_err(|_| not_found())?;
        if self.allowed(&loc) {
            return Ok(loc);
        }
        refused("no_agreement");
        self.audit
            .record(self.event(action, "refused: no agreement in force", &loc))
            .await;
        Err(not_found())
    }

    fn allowed(&self, loc: &Location) -> bool {
        allowed(&self.config, &self.supplier, loc)
    }

    fn checked_now(&self) -> Checked {
        Checked {
            at: std::time::Instant::now(),
            generation: self.config.generation(),
        }
    }

    /// Re-checks an open handle's access when its last check is stale, so
    /// the hot read path neither evaluates the policy nor allocates per packet.
    fn recheck(&mut self, handle: u64) -> Reply<()> {
        let generation = self.config.generation();
        let Some(
            OpenHandle::File {
                location, checked, ..
            }
            | OpenHandle::Dir {
                location, checked, ..
            },
        ) = self.handles.get_mut(&handle)
        else {
            return Err(Refusal::new(StatusCode::Failure, "unknown handle"));
        };
        if checked.generation == generation && checked.at.elapsed() < RECHECK {
            return Ok(());
        }
        if allowed(&self.config, &self.supplier, location) {
            *checked = Checked {
                at: std::time::Instant::now(),
                generation,
            };
            return Ok(());
        }
        tracing::info!(supplier = %self.supplier, path = %location.virtual_path(), "access ended while a handle was open");
        if let Some(h) = self.handles.remove(&handle)
            && let Some(e) = self.download_event(&h, "access ended")
        {
            self.audit.record_detached(e);
        }
        Err(not_found())
    }

    /// Runs a call on the store on a blocking thread (file-system calls block).
    async fn on_store<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Store) -> std::io::Result<T> + Send + 'static,
    ) -> Reply<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|_| Refusal::from(StatusCode::Failure))?
            .map_err(failure)
    }

    async fn root_mtime(&self) -> u32 {
        self.on_store(|s| s.stat(&Location::Root))
            .await
            .map(|m| m.mtime().clamp(0, u32::MAX as i64) as u32)
            .unwrap_or(0)
    }

    /// The supplier's `LEDGER.json` as of now.
    async fn ledger(&self) -> Reply<Vec<u8>> {
        let make = self.ledger.as_ref().ok_or_else(not_found)?;
        make(self.supplier.clone()).await.ok_or_else(not_found)
    }

    /// The supplier's `/ANNOUNCEMENTS` folder as of now, from the config in
    /// force: (file name, contents); empty when nothing concerns it.
    fn announcements(&self) -> Vec<(String, Vec<u8>)> {
        let config = self.config.get();
        let list = crate::announce::for_supplier(
            &config.announcements,
            &config.agreements,
            &self.supplier,
            Utc::now(),
        );
        crate::announce::folder(&list)
    }

    fn announcement(&self, name: &str) -> Reply<Vec<u8>> {
        self.announcements()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, data)| data)
            .ok_or_else(not_found)
    }

    async fn attrs(&self, loc: &Location) -> Reply<Attrs> {
        match loc {
            Location::Ledger => return Ok(memory_attrs(self.ledger().await?.len() as u64)),
            Location::Announcement(name) => {
                return Ok(memory_attrs(self.announcement(name)?.len() as u64));
            }
            Location::Announcements if self.announcements().is_empty() => return Err(not_found()),
            Location::Announcements => return Ok(dir_attrs(self.root_mtime().await)),
            _ => {}
        }
        let at = loc.clone();
        let meta = self
            .on_store(move |s| {
                // A visible authority folder exists only once something is published.
                if matches!(at, Location::Authority(_)) && !s.holds(&at) {
                    return Err(std::io::ErrorKind::NotFound.into());
                }
                s.stat(&at)
            })
            .await?;
        Ok(match loc {
            Location::Area { .. } => attrs_of(&meta),
            _ => dir_attrs(meta.mtime().clamp(0, u32::MAX as i64) as u32),
        })
    }

    async fn list(&self, loc: &Location) -> Reply<Vec<Listed>> {
        let now = Utc::now();
        let visible = self.config.get().agreements.visible(&self.supplier, now);
        let mtime = self.root_mtime().await;
        let mut out = vec![
            (".".to_string(), dir_attrs(mtime)),
            ("..".to_string(), dir_attrs(mtime)),
        ];
        match loc {
            Location::Root => {
                for kind in AuthorityKind::ALL {
                    if Location::Kind(kind).is_visible(&visible) {
                        out.push((kind.as_str().to_string(), dir_attrs(mtime)));
                    }
                }
                if let Ok(ledger) = self.ledger().await {
                    out.push((tree::LEDGER.to_string(), memory_attrs(ledger.len() as u64)));
                }
                if !self.announcements().is_empty() {
                    out.push((crate::announce::FOLDER.to_string(), dir_attrs(mtime)));
                }
            }
            Location::Ledger | Location::Announcement(_) => {
                return Err(Refusal::new(StatusCode::Failure, "not a folder"));
            }
            Location::Announcements => {
                let files = self.announcements();
                if files.is_empty() {
                    return Err(not_found());
                }
                out.extend(
                    files
                        .into_iter()
                        .map(|(name, data)| (name, memory_attrs(data.len() as u64))),
                );
            }
            // The synthetic levels list what is visible and has something published.
            Location::Kind(kind) => {
                let candidates: Vec<Location> = visible
                    .keys()
                    .filter(|a| a.kind == *kind)
                    .map(|a| Location::Authority(*a))
                    .collect();
                for at in self.published(candidates).await? {
                    if let Location::Authority(a) = at {
                        out.push((a.code_str().to_string(), dir_attrs(mtime)));
                    }
                }
            }
            Location::Authority(a) => {
                let candidates: Vec<Location> = visible
                    .get(a)
                    .into_iter()
                    .flatten()
                    .map(|area| Location::Area {
                        authority: *a,
                        area: area.clone(),
                        rest: Vec::new(),
                    })
                    .collect();
                for at in self.published(candidates).await? {
                    if let Location::Area { area, .. } = at {
                        out.push((area, dir_attrs(mtime)));
                    }
                }
            }
            Location::Area { .. } => {
                let at = loc.clone();
                let entries = self.on_store(move |s| s.list(&at)).await?;
                out.extend(
                    entries
                        .into_iter()
                        .map(|(name, meta)| (name, attrs_of(&meta))),
                );
            }
        }
        Ok(out)
    }

    /// The locations among `candidates` that have something published.
    async fn published(&self, candidates: Vec<Location>) -> Reply<Vec<Location>> {
        self.on_store(move |s| Ok(candidates.into_iter().filter(|l| s.holds(l)).collect()))
            .await
    }

    /// A new handle, as the client will send it back: its number in decimal.
    fn new_handle(&mut self, h: OpenHandle) -> Reply<u64> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(Refusal::new(StatusCode::Failure, "too many open handles"));
        }
        self.next_handle += 1;
        self.handles.insert(self.next_handle, h);
        Ok(self.next_handle)
    }
}

/// Most entries sent in one NAME reply to READDIR (as OpenSSH's
/// sftp-server): a long listing goes in several, each well inside a
/// client's packet limit.
const ENTRIES_PER_READDIR: usize = 100;

/// Most DATA buffers kept for reuse.
const KEPT_BUFFERS: usize = 32;

/// A handle as the client sends it back: the decimal number udstil gave.
fn handle_key(handle: &[u8]) -> Reply<u64> {
    std::str::from_utf8(handle)
        .ok()
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| Refusal::new(StatusCode::Failure, "unknown handle"))
}

impl SftpSession {
    /// The VERSION that answers the client's INIT.
    pub fn init(&self, out: &mut BytesMut) {
        wire::put_version(out, &[("limits@openssh.com", "1")]);
    }

    /// Answers one request after INIT: the reply goes into `out`, or a read
    /// of a file on disk is started and answers when it finishes.
    pub async fn answer(&mut self, request: Request<'_>, out: &mut BytesMut) -> Answer {
        let Some(id) = request.id() else {
            return Answer::End("a second INIT");
        };
        let result = match request {
            Request::Read {
                handle,
                offset,
                len,
                ..
            } => match self.read(id, handle, offset, len, out) {
                Ok(answer) => return answer,
                Err(r) => Err(r),
            },
            Request::Open { path, pflags, .. } => self.open(id, path, pflags, out).await,
            Request::Close { handle, .. } => self.close(id, handle, out).await,
            Request::Lstat { path, .. } | Request::Stat { path, .. } => {
                self.stat(id, path, out).await
            }
            Request::Fstat { handle, .. } => self.fstat(id, handle, out).await,
            Request::Opendir { path, .. } => self.opendir(id, path, out).await,
            Request::Readdir { handle, .. } => self.readdir(id, handle, out),
            Request::Realpath { path, .. } => self.realpath(id, path, out).await,
            Request::Readlink { .. } => Err(not_found()),
            Request::Write { .. } => Err(denied("write")),
            Request::Setstat { .. } | Request::Fsetstat { .. } => Err(denied("setstat")),
            Request::Remove { .. } => Err(denied("remove")),
            Request::Mkdir { .. } => Err(denied("mkdir")),
            Request::Rmdir { .. } => Err(denied("rmdir")),
            Request::Rename { .. } => Err(denied("rename")),
            Request::Symlink { .. } => Err(denied("symlink")),
            Request::Extended {
                name: "limits@openssh.com",
                ..
            } => {
                wire::put_limits(out, id, MAX_HANDLES as u64);
                Ok(())
            }
            Request::Extended { .. } | Request::Unknown { .. } | Request::Init { .. } => {
                Err(StatusCode::OpUnsupported.into())
            }
        };
        if let Err(r) = result {
            wire::put_status(out, id, r.code, &r.message);
        }
        Answer::Done
    }

    /// Answers a read that finished: the DATA reply to send, or `None` when
    /// a STATUS went into `out` instead (end of file, a failed read).
    pub fn finished(&mut self, done: Finished, out: &mut BytesMut) -> Option<BytesMut> {
        let (mut buf, reply) = match done.result {
            Ok(read) => read,
            Err(e) => {
                let r = failure(e);
                wire::put_status(out, done.id, r.code, &r.message);
                return None;
            }
        };
        let got = reply.len(&buf);
        if got == 0 {
            wire::put_status(out, done.id, StatusCode::Eof, "end of file");
            self.recycle(buf);
            return None;
        }
        reply.finish(&mut buf, done.id);
        if let Some(OpenHandle::File {
            served, reached, ..
        }) = self.handles.get_mut(&done.handle)
        {
            *served += got as u64;
            *reached = (*reached).max(done.offset + got as u64);
        }
        Some(buf)
    }

    /// Takes back a DATA reply's buffer once its bytes are split off to be
    /// sent; it reclaims its memory when they have been encrypted.
    pub fn recycle(&mut self, buf: BytesMut) {
        if self.buffers.len() < KEPT_BUFFERS {
            self.buffers.push_back(buf);
        }
    }

    fn read(
        &mut self,
        id: u32,
        handle: &[u8],
        offset: u64,
        len: u32,
        out: &mut BytesMut,
    ) -> Reply<Answer> {
        let key = handle_key(handle)?;
        self.recheck(key)?;
        let Some(OpenHandle::File {
            content,
            size,
            ahead,
            asked_to,
            served,
            reached,
            nowait,
            ..
        }) = self.handles.get_mut(&key)
        else {
            return Err(Refusal::new(StatusCode::Failure, "not an open file handle"));
        };
        if offset >= *size {
            return Err(StatusCode::Eof.into());
        }
        let len = len.min(wire::MAX_READ) as usize;
        match content {
            Content::Memory(data) => {
                let start = offset as usize;
                let chunk = &data[start..start.saturating_add(len).min(data.len())];
                if chunk.is_empty() {
                    return Err(StatusCode::Eof.into());
                }
                let reply = wire::begin_data(out);
                out.extend_from_slice(chunk);
                reply.finish(out, id);
                *served += chunk.len() as u64;
                *reached = (*reached).max(offset + chunk.len() as u64);
                Ok(Answer::Done)
            }
            Content::Disk(file) => {
                let sequential = offset == 0 || offset == *asked_to;
                let next = offset + len as u64;
                *asked_to = next;
                let read_ahead = matches!(ahead, Some(a) if a.offset == offset && a.len == len);
                // Bytes in the page cache are copied at once, here: a trip
                // to a blocking thread and back costs more than the copy.
                // Only bytes that must come from storage go the long way.
                let mut started = None;
                if !read_ahead && *nowait {
                    let want = len.min((*size - offset) as usize);
                    let mut buf = self.buffers.pop_front().unwrap_or_default();
                    buf.clear();
                    buf.reserve(wire::DATA_HEADER + want);
                    let reply = wire::begin_data(&mut buf);
                    match read_cached(file, offset, want, &mut buf) {
                        Cached::All => {
                            *ahead = None;
                            return Ok(Answer::Ready(Finished {
                                id,
                                handle: key,
                                offset,
                                result: Ok((buf, reply)),
                            }));
                        }
                        // What was cached is kept; only the rest is read.
                        Cached::Part(got) => {
                            started = Some(read_rest(
                                file.clone(),
                                offset + got as u64,
                                want - got,
                                buf,
                                reply,
                            ));
                        }
                        Cached::Not => self.buffers.push_front(buf),
                        Cached::Unsupported => {
                            *nowait = false;
                            self.buffers.push_front(buf);
                        }
                    }
                }
                // The block read ahead if it is the one asked for; any
                // other read ahead is dropped (its result unused).
                let read = match (started, ahead.take()) {
                    (Some(read), _) => read,
                    (None, Some(a)) if a.offset == offset && a.len == len => a.read,
                    _ => read_block(
                        file.clone(),
                        offset,
                        len,
                        self.buffers.pop_front().unwrap_or_default(),
                    ),
                };
                // Only a reader going from start to end gets read ahead
                // for: one that jumps about (a Parquet reader seeking its
                // footer, then its row groups) would make it wasted reads.
                // It starts when the page cache missed: the file is coming
                // from storage.
                if sequential && next < *size {
                    *ahead = Some(ReadAhead {
                        offset: next,
                        len,
                        read: read_block(
                            file.clone(),
                            next,
                            len,
                            self.buffers.pop_front().unwrap_or_default(),
                        ),
                    });
                }
                Ok(Answer::Reading(InFlight {
                    id,
                    handle: key,
                    offset,
                    read,
                }))
            }
        }
    }

    async fn open(&mut self, id: u32, path: &str, pflags: u32, out: &mut BytesMut) -> Reply<()> {
        if pflags & wire::OPEN_WRITING != 0 {
            return Err(denied("open for writing"));
        }
        let loc = self.locate_audited(path, Action::FileOpen).await?;
        let made = match &loc {
            Location::Ledger => Some(self.ledger().await?),
            Location::Announcement(name) => Some(self.announcement(name)?),
            _ => None,
        };
        let (content, size, mtime) = if let Some(data) = made {
            let size = data.len() as u64;
            (Content::Memory(Arc::new(data)), size, now_mtime())
        } else {
            let at = loc.clone();
            let (file, meta) = self.on_store(move |s| s.open_file(&at)).await?;
            let mtime = meta.mtime().clamp(0, u32::MAX as i64) as u32;
            (Content::Disk(Arc::new(file)), meta.len(), mtime)
        };
        let handle = self.new_handle(OpenHandle::File {
            location: loc.clone(),
            content,
            size,
            mtime,
            checked: self.checked_now(),
            served: 0,
            reached: 0,
            asked_to: 0,
            ahead: None,
            nowait: true,
        })?;
        tracing::info!(supplier = %self.supplier, path = %loc.virtual_path(), "file opened");
        self.audit
            .record(
                self.event(Action::FileOpen, "ok", &loc)
                    .detail(&format!("file size {size}")),
            )
            .await;
        wire::put_handle(out, id, handle.to_string().as_bytes());
        Ok(())
    }

    async fn close(&mut self, id: u32, handle: &[u8], out: &mut BytesMut) -> Reply<()> {
        let h = self
            .handles
            .remove(&handle_key(handle)?)
            .ok_or_else(|| Refusal::new(StatusCode::Failure, "unknown handle"))?;
        if let Some(e) = self.download_event(&h, "closed") {
            self.audit.record(e).await;
        }
        wire::put_status(out, id, StatusCode::Ok, "Ok");
        Ok(())
    }

    async fn stat(&mut self, id: u32, path: &str, out: &mut BytesMut) -> Reply<()> {
        let loc = self.locate_audited(path, Action::Lookup).await?;
        let attrs = self.attrs(&loc).await?;
        wire::put_attrs_reply(out, id, &attrs);
        Ok(())
    }

    async fn fstat(&mut self, id: u32, handle: &[u8], out: &mut BytesMut) -> Reply<()> {
        let key = handle_key(handle)?;
        self.recheck(key)?;
        let attrs = match self.handles.get(&key) {
            Some(OpenHandle::File { size, mtime, .. }) => file_attrs(*size, *mtime),
            Some(OpenHandle::Dir { .. }) => dir_attrs(self.root_mtime().await),
            None => return Err(Refusal::new(StatusCode::Failure, "unknown handle")),
        };
        wire::put_attrs_reply(out, id, &attrs);
        Ok(())
    }

    async fn opendir(&mut self, id: u32, path: &str, out: &mut BytesMut) -> Reply<()> {
        let loc = self.locate_audited(path, Action::Listing).await?;
        // Listing happens now, so the handle shows the view as it was when opened.
        let entries = self.list(&loc).await?;
        self.audit
            .record(
                self.event(Action::Listing, "ok", &loc)
                    .detail(&format!("{} entries", entries.len().saturating_sub(2))),
            )
            .await;
        let handle = self.new_handle(OpenHandle::Dir {
            location: loc,
            entries,
            checked: self.checked_now(),
        })?;
        wire::put_handle(out, id, handle.to_string().as_bytes());
        Ok(())
    }

    fn readdir(&mut self, id: u32, handle: &[u8], out: &mut BytesMut) -> Reply<()> {
        let key = handle_key(handle)?;
        self.recheck(key)?;
        let Some(OpenHandle::Dir { entries, .. }) = self.handles.get_mut(&key) else {
            return Err(Refusal::new(
                StatusCode::Failure,
                "not an open folder handle",
            ));
        };
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let batch: Vec<Listed> = entries
            .drain(..entries.len().min(ENTRIES_PER_READDIR))
            .collect();
        let longs: Vec<String> = batch.iter().map(|(n, a)| long_name(n, a)).collect();
        let named: Vec<Entry<'_>> = batch
            .iter()
            .zip(&longs)
            .map(|((name, attrs), long)| Entry {
                name,
                long,
                attrs: *attrs,
            })
            .collect();
        wire::put_name(out, id, &named);
        Ok(())
    }

    async fn realpath(&mut self, id: u32, path: &str, out: &mut BytesMut) -> Reply<()> {
        let loc = self.locate_audited(path, Action::Lookup).await?;
        let name = loc.virtual_path();
        // As OpenSSH's sftp-server: the long name is the path, no attributes.
        wire::put_name(
            out,
            id,
            &[Entry {
                name: &name,
                long: &name,
                attrs: Attrs::default(),
            }],
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_read_as_ls_does() {
        let now = now_mtime();
        let line = long_name("part-0.parquet", &file_attrs(1234, now));
        assert!(
            line.starts_with("-r--r--r--    1 0        0            1234 "),
            "{line}"
        );
        assert!(line.ends_with(" part-0.parquet"), "{line}");
        let line = long_name("joblog", &dir_attrs(0));
        assert!(line.starts_with("dr-xr-xr-x "), "{line}");
        // An old time shows the year instead of the time of day.
        assert!(line.contains("Jan  1  1970 joblog"), "{line}");
    }

    #[test]
    fn bytes_in_the_page_cache_are_read_without_waiting_and_appended() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"0123456789").unwrap();
        let mut out = BytesMut::from(&b"head"[..]);
        assert!(matches!(read_cached(&file, 3, 5, &mut out), Cached::All));
        assert_eq!(&out[..], b"head34567");
        // Fewer bytes than asked (here: past the end) are a part, kept.
        assert!(matches!(
            read_cached(&file, 8, 5, &mut out),
            Cached::Part(2)
        ));
        assert_eq!(&out[..], b"head3456789");
        // None at all leaves the buffer as it was.
        assert!(matches!(read_cached(&file, 10, 5, &mut out), Cached::Not));
        assert_eq!(&out[..], b"head3456789");
    }

    /// A block whose first part is cached and the rest not: the cached part
    /// is kept and only the rest is read from storage, into the same reply.
    #[tokio::test]
    async fn a_partly_cached_block_keeps_its_cached_part_and_reads_the_rest() {
        use std::os::fd::AsRawFd;
        const MIB: usize = 1 << 20;
        let data: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        file.sync_all().unwrap();
        // Drops the second half from the page cache (from a boundary no
        // large folio straddles).
        // SAFETY: a valid descriptor; advice only.
        let dropped = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                4 * MIB as i64,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(dropped, 0);
        let (offset, want) = (4 * MIB - 64 * 1024, 128 * 1024);
        let mut buf = BytesMut::new();
        let reply = wire::begin_data(&mut buf);
        let got = match read_cached(&file, offset as u64, want, &mut buf) {
            Cached::Part(got) => got,
            Cached::All => panic!("all of it was cached"),
            Cached::Not => panic!("none of it was cached"),
            Cached::Unsupported => panic!("RWF_NOWAIT is not supported here"),
        };
        assert_eq!(got, 64 * 1024);
        let rest = read_rest(
            Arc::new(file),
            (offset + got) as u64,
            want - got,
            buf,
            reply,
        );
        let (mut buf, reply) = rest.await.unwrap().unwrap();
        reply.finish(&mut buf, 7);
        assert_eq!(&buf[5..9], &7u32.to_be_bytes());
        assert_eq!(&buf[wire::DATA_HEADER..], &data[offset..offset + want]);
    }

    #[test]
    fn handles_are_the_numbers_given_and_nothing_else() {
        assert_eq!(handle_key(b"17").unwrap(), 17);
        for bad in [&b""[..], b"x", b"-1", b"18446744073709551616", b"\xff"] {
            assert!(handle_key(bad).is_err(), "{bad:?}");
        }
    }
}
