//! One supplier's SFTP session: read-only, confined to its view. Every path
//! goes through [`tree::resolve`], then the access policy at the current
//! time, then to the disk. File-system and policy errors become SFTP status
//! codes here and nowhere else.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use chrono::Utc;
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle, Name, OpenFlags, Packet, Status,
    StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use crate::audit::{Action, Event, Trail};
use crate::authority::AuthorityKind;
use crate::config::Live;
use crate::metrics;
use crate::tree::{self, Location, Store};

/// How long an open handle trusts its last access check; a revoked
/// agreement or a config edit stops its reads within this time.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Largest read answered (as OpenSSH's sftp-server: 256 KiB less headers).
pub const MAX_READ: u32 = 261_120;
const MAX_PACKET: u64 = 262_144;
const MAX_HANDLES: usize = 256;

pub struct SftpSession {
    supplier: String,
    config: Arc<Live>,
    /// The published tree (its root with symlinks resolved).
    store: Store,
    handles: HashMap<String, OpenHandle>,
    next_handle: u64,
    version_seen: bool,
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

enum OpenHandle {
    Dir {
        location: Location,
        entries: Option<Vec<File>>,
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
        /// The block after the last one read, being read already.
        ahead: Option<ReadAhead>,
    },
}

/// A read started before it was asked for: clients read a file from start
/// to end, so while one block is encrypted and sent the next is read. It
/// hides the latency of a slow file system (a shared one, a cold disk).
struct ReadAhead {
    offset: u64,
    len: usize,
    read: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
}

/// Reads `len` bytes at `offset` on a blocking thread.
fn read_at(
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::task::spawn_blocking(move || {
        // Read into the fresh buffer's spare capacity: zeroing it first
        // was a visible share of the server's CPU in a download.
        let mut buf = Vec::with_capacity(len);
        rustix::io::pread(&*file, rustix::buffer::spare_capacity(&mut buf), offset)?;
        Ok(buf)
    })
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

type Reply<T> = Result<T, StatusReply>;

fn denied(what: &str) -> StatusReply {
    refused("read_only");
    StatusCode::PermissionDenied.with_message(format!("{what}: the platform is read-only"))
}

/// Counts a refused request by reason (a fixed set).
fn refused(reason: &'static str) {
    metrics::get()
        .refusals
        .get_or_create(&metrics::Reason { reason })
        .inc();
}

fn not_found() -> StatusReply {
    StatusCode::NoSuchFile.with_message("no such file or folder")
}

fn failure(e: std::io::Error) -> StatusReply {
    if e.kind() == std::io::ErrorKind::NotFound {
        not_found()
    } else if e.kind() == std::io::ErrorKind::IsADirectory {
        StatusCode::Failure.with_message("not a regular file")
    } else {
        tracing::warn!(error = %e, "sftp file-system error");
        StatusCode::Failure.with_message("internal error")
    }
}

fn dir_attrs(mtime: u32) -> FileAttributes {
    FileAttributes {
        size: Some(0),
        uid: Some(0),
        gid: Some(0),
        permissions: Some(0o040_555),
        atime: Some(mtime),
        mtime: Some(mtime),
        ..FileAttributes::empty()
    }
}

fn attrs_of(meta: &std::fs::Metadata) -> FileAttributes {
    let mtime = meta.mtime().clamp(0, u32::MAX as i64) as u32;
    if meta.is_dir() {
        dir_attrs(mtime)
    } else {
        file_attrs(meta.len(), mtime)
    }
}

/// A read-only file's attributes.
fn file_attrs(size: u64, mtime: u32) -> FileAttributes {
    FileAttributes {
        size: Some(size),
        uid: Some(0),
        gid: Some(0),
        permissions: Some(0o100_444),
        atime: Some(mtime),
        mtime: Some(mtime),
        ..FileAttributes::empty()
    }
}

/// A read-only file made for the session.
fn memory_attrs(size: u64) -> FileAttributes {
    file_attrs(size, now_mtime())
}

fn now_mtime() -> u32 {
    Utc::now().timestamp().clamp(0, u32::MAX as i64) as u32
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    }
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
            version_seen: false,
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
    fn recheck(&mut self, handle: &str) -> Reply<()> {
        let generation = self.config.generation();
        let Some(
            OpenHandle::File {
                location, checked, ..
            }
            | OpenHandle::Dir {
                location, checked, ..
            },
        ) = self.handles.get_mut(handle)
        else {
            return Err(StatusCode::Failure.with_message("unknown handle"));
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
        if let Some(h) = self.handles.remove(handle)
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
            .map_err(|_| StatusReply::from(StatusCode::Failure))?
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

    async fn attrs(&self, loc: &Location) -> Reply<FileAttributes> {
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

    async fn list(&self, loc: &Location) -> Reply<Vec<File>> {
        let now = Utc::now();
        let visible = self.config.get().agreements.visible(&self.supplier, now);
        let mtime = self.root_mtime().await;
        let mut out = vec![
            File::new(".", dir_attrs(mtime)),
            File::new("..", dir_attrs(mtime)),
        ];
        match loc {
            Location::Root => {
                for kind in AuthorityKind::ALL {
                    if Location::Kind(kind).is_visible(&visible) {
                        out.push(File::new(kind.as_str(), dir_attrs(mtime)));
                    }
                }
                if let Ok(ledger) = self.ledger().await {
                    out.push(File::new(tree::LEDGER, memory_attrs(ledger.len() as u64)));
                }
                if !self.announcements().is_empty() {
                    out.push(File::new(crate::announce::FOLDER, dir_attrs(mtime)));
                }
            }
            Location::Ledger | Location::Announcement(_) => {
                return Err(StatusCode::Failure.with_message("not a folder"));
            }
            Location::Announcements => {
                let files = self.announcements();
                if files.is_empty() {
                    return Err(not_found());
                }
                out.extend(
                    files
                        .into_iter()
                        .map(|(name, data)| File::new(name, memory_attrs(data.len() as u64))),
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
                        out.push(File::new(a.code_str(), dir_attrs(mtime)));
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
                        out.push(File::new(area, dir_attrs(mtime)));
                    }
                }
            }
            Location::Area { .. } => {
                let at = loc.clone();
                let entries = self.on_store(move |s| s.list(&at)).await?;
                out.extend(
                    entries
                        .into_iter()
                        .map(|(name, meta)| File::new(name, attrs_of(&meta))),
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

    fn new_handle(&mut self, h: OpenHandle) -> Reply<String> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure.with_message("too many open handles"));
        }
        self.next_handle += 1;
        let id = self.next_handle.to_string();
        self.handles.insert(id.clone(), h);
        Ok(id)
    }
}

impl russh_sftp::server::Handler for SftpSession {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(&mut self, _version: u32, _ext: HashMap<String, String>) -> Reply<Version> {
        if self.version_seen {
            return Err(StatusCode::ConnectionLost.into());
        }
        self.version_seen = true;
        let mut v = Version::new();
        v.extensions.insert("limits@openssh.com".into(), "1".into());
        Ok(v)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Reply<Handle> {
        let writes = OpenFlags::WRITE
            | OpenFlags::APPEND
            | OpenFlags::CREATE
            | OpenFlags::TRUNCATE
            | OpenFlags::EXCLUDE;
        if pflags.intersects(writes) {
            return Err(denied("open for writing"));
        }
        let loc = self.locate_audited(&filename, Action::FileOpen).await?;
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
            ahead: None,
        })?;
        tracing::info!(supplier = %self.supplier, path = %loc.virtual_path(), "file opened");
        self.audit
            .record(
                self.event(Action::FileOpen, "ok", &loc)
                    .detail(&format!("file size {size}")),
            )
            .await;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Reply<Status> {
        let h = self
            .handles
            .remove(&handle)
            .ok_or_else(|| StatusReply::from(StatusCode::Failure))?;
        if let Some(e) = self.download_event(&h, "closed") {
            self.audit.record(e).await;
        }
        Ok(ok(id))
    }

    async fn read(&mut self, id: u32, handle: String, offset: u64, len: u32) -> Reply<Data> {
        self.recheck(&handle)?;
        let Some(OpenHandle::File {
            content,
            size,
            ahead,
            reached,
            ..
        }) = self.handles.get_mut(&handle)
        else {
            return Err(StatusCode::Failure.with_message("not an open file handle"));
        };
        if offset >= *size {
            return Err(StatusCode::Eof.into());
        }
        let len = len.min(MAX_READ) as usize;
        let data = match content {
            Content::Memory(data) => {
                let end = (offset as usize).saturating_add(len).min(data.len());
                data[offset as usize..end].to_vec()
            }
            Content::Disk(file) => {
                // The block read ahead if it is the one asked for; any
                // other read ahead is dropped (its result unused).
                let (read, sequential) = match ahead.take() {
                    Some(a) if a.offset == offset && a.len == len => (a.read, true),
                    _ => (
                        read_at(file.clone(), offset, len),
                        offset == 0 || offset == *reached,
                    ),
                };
                // Only a reader going from start to end gets read ahead
                // for: one that jumps about (a Parquet reader seeking its
                // footer, then its row groups) would make it wasted reads.
                let next = offset + len as u64;
                if sequential && next < *size {
                    *ahead = Some(ReadAhead {
                        offset: next,
                        len,
                        read: read_at(file.clone(), next, len),
                    });
                }
                read.await
                    .map_err(|_| StatusReply::from(StatusCode::Failure))?
                    .map_err(failure)?
            }
        };
        if data.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        if let Some(OpenHandle::File {
            served, reached, ..
        }) = self.handles.get_mut(&handle)
        {
            *served += data.len() as u64;
            *reached = (*reached).max(offset + data.len() as u64);
        }
        Ok(Data { id, data })
    }

    async fn write(&mut self, _id: u32, _h: String, _o: u64, _d: Vec<u8>) -> Reply<Status> {
        Err(denied("write"))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        let loc = self.locate_audited(&path, Action::Lookup).await?;
        Ok(Attrs {
            id,
            attrs: self.attrs(&loc).await?,
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Reply<Attrs> {
        self.lstat(id, path).await
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Reply<Attrs> {
        self.recheck(&handle)?;
        match self.handles.get(&handle) {
            Some(OpenHandle::File { size, mtime, .. }) => Ok(Attrs {
                id,
                attrs: file_attrs(*size, *mtime),
            }),
            Some(OpenHandle::Dir { .. }) => Ok(Attrs {
                id,
                attrs: dir_attrs(self.root_mtime().await),
            }),
            None => Err(StatusCode::Failure.with_message("unknown handle")),
        }
    }

    async fn setstat(&mut self, _id: u32, _p: String, _a: FileAttributes) -> Reply<Status> {
        Err(denied("setstat"))
    }

    async fn fsetstat(&mut self, _id: u32, _h: String, _a: FileAttributes) -> Reply<Status> {
        Err(denied("setstat"))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Reply<Handle> {
        let loc = self.locate_audited(&path, Action::Listing).await?;
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
            entries: Some(entries),
            checked: self.checked_now(),
        })?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Reply<Name> {
        self.recheck(&handle)?;
        match self.handles.get_mut(&handle) {
            Some(OpenHandle::Dir { entries, .. }) => match entries.take() {
                Some(files) => Ok(Name { id, files }),
                None => Err(StatusCode::Eof.into()),
            },
            _ => Err(StatusCode::Failure.with_message("not an open folder handle")),
        }
    }

    async fn remove(&mut self, _id: u32, _f: String) -> Reply<Status> {
        Err(denied("remove"))
    }

    async fn mkdir(&mut self, _id: u32, _p: String, _a: FileAttributes) -> Reply<Status> {
        Err(denied("mkdir"))
    }

    async fn rmdir(&mut self, _id: u32, _p: String) -> Reply<Status> {
        Err(denied("rmdir"))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Reply<Name> {
        let loc = self.locate_audited(&path, Action::Lookup).await?;
        Ok(Name {
            id,
            files: vec![File::dummy(loc.virtual_path())],
        })
    }

    async fn rename(&mut self, _id: u32, _o: String, _n: String) -> Reply<Status> {
        Err(denied("rename"))
    }

    async fn readlink(&mut self, _id: u32, _p: String) -> Reply<Name> {
        Err(not_found())
    }

    async fn symlink(&mut self, _id: u32, _l: String, _t: String) -> Reply<Status> {
        Err(denied("symlink"))
    }

    async fn extended(&mut self, id: u32, request: String, _data: Vec<u8>) -> Reply<Packet> {
        match request.as_str() {
            "limits@openssh.com" => {
                let mut data = Vec::with_capacity(32);
                for v in [MAX_PACKET, MAX_READ as u64, 0, MAX_HANDLES as u64] {
                    data.extend_from_slice(&v.to_be_bytes());
                }
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            _ => Err(StatusCode::OpUnsupported.into()),
        }
    }
}
