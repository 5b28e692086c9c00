//! SFTP version 3 on the wire (draft-ietf-secsh-filexfer-02, as OpenSSH
//! speaks it): framing of the channel's byte stream into packets, requests
//! decoded without copying (paths and handles borrow from the packet), and
//! replies encoded into the outgoing buffer, a DATA reply's bytes read
//! straight into it. Pure: no I/O, no clock, no allocation per request.

use bytes::{Buf, BufMut, BytesMut};

/// The protocol version udstil speaks.
pub const VERSION: u32 = 3;
/// The longest packet accepted from a client (its length field excluded):
/// OpenSSH's limit, enough for a 255 KiB write plus its header.
pub const MAX_PACKET: usize = 256 * 1024;
/// The most a READ is answered with: a DATA reply fits in [`MAX_PACKET`].
pub const MAX_READ: u32 = 255 * 1024;
/// The longest handle a client may send back (the draft's limit).
pub const MAX_HANDLE: usize = 256;

mod kind {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// Attribute flags.
const SIZE: u32 = 0x1;
const UIDGID: u32 = 0x2;
const PERMISSIONS: u32 = 0x4;
const ACMODTIME: u32 = 0x8;
const EXTENDED: u32 = 0x8000_0000;

/// `pflags` of OPEN that ask to change the file.
pub const OPEN_WRITING: u32 = 0x02 | 0x04 | 0x08 | 0x10 | 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StatusCode {
    Ok = 0,
    Eof = 1,
    NoSuchFile = 2,
    PermissionDenied = 3,
    Failure = 4,
    BadMessage = 5,
    OpUnsupported = 8,
}

/// File attributes as version 3 carries them; extended attributes are read
/// past, never kept (udstil sends none and acts on none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    pub permissions: Option<u32>,
    /// (atime, mtime), seconds since the epoch.
    pub times: Option<(u32, u32)>,
}

/// A client's request; strings borrow from the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Init {
        version: u32,
    },
    Open {
        id: u32,
        path: &'a str,
        pflags: u32,
        attrs: Attrs,
    },
    Close {
        id: u32,
        handle: &'a [u8],
    },
    Read {
        id: u32,
        handle: &'a [u8],
        offset: u64,
        len: u32,
    },
    Write {
        id: u32,
        handle: &'a [u8],
        offset: u64,
        data: &'a [u8],
    },
    Lstat {
        id: u32,
        path: &'a str,
    },
    Fstat {
        id: u32,
        handle: &'a [u8],
    },
    Setstat {
        id: u32,
        path: &'a str,
        attrs: Attrs,
    },
    Fsetstat {
        id: u32,
        handle: &'a [u8],
        attrs: Attrs,
    },
    Opendir {
        id: u32,
        path: &'a str,
    },
    Readdir {
        id: u32,
        handle: &'a [u8],
    },
    Remove {
        id: u32,
        path: &'a str,
    },
    Mkdir {
        id: u32,
        path: &'a str,
        attrs: Attrs,
    },
    Rmdir {
        id: u32,
        path: &'a str,
    },
    Realpath {
        id: u32,
        path: &'a str,
    },
    Stat {
        id: u32,
        path: &'a str,
    },
    Rename {
        id: u32,
        from: &'a str,
        to: &'a str,
    },
    Readlink {
        id: u32,
        path: &'a str,
    },
    Symlink {
        id: u32,
        link: &'a str,
        target: &'a str,
    },
    Extended {
        id: u32,
        name: &'a str,
        data: &'a [u8],
    },
    /// A packet type udstil does not know, answered OP_UNSUPPORTED.
    Unknown {
        id: u32,
        kind: u8,
    },
}

impl Request<'_> {
    /// The request id a reply must carry (INIT has none).
    pub fn id(&self) -> Option<u32> {
        use Request::*;
        match self {
            Init { .. } => None,
            Open { id, .. }
            | Close { id, .. }
            | Read { id, .. }
            | Write { id, .. }
            | Lstat { id, .. }
            | Fstat { id, .. }
            | Setstat { id, .. }
            | Fsetstat { id, .. }
            | Opendir { id, .. }
            | Readdir { id, .. }
            | Remove { id, .. }
            | Mkdir { id, .. }
            | Rmdir { id, .. }
            | Realpath { id, .. }
            | Stat { id, .. }
            | Rename { id, .. }
            | Readlink { id, .. }
            | Symlink { id, .. }
            | Extended { id, .. }
            | Unknown { id, .. } => Some(*id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("packet of {0} bytes, longer than the {MAX_PACKET} allowed")]
    TooLong(usize),
    #[error("empty packet")]
    Empty,
    /// A packet that ends early or carries a bad field; `id` when it was read.
    #[error("malformed packet (type {kind}): {what}")]
    Malformed {
        kind: u8,
        id: Option<u32>,
        what: &'static str,
    },
}

/// Splits the channel's byte stream into packets.
#[derive(Debug, Default)]
pub struct Frames {
    buf: BytesMut,
}

impl Frames {
    /// Appends bytes received on the channel.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole packet (type byte and payload), or `None` until more
    /// bytes arrive. A too long length is an error: the stream cannot be
    /// resynchronised after it.
    pub fn next_packet(&mut self) -> Result<Option<BytesMut>, WireError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("four bytes")) as usize;
        if len > MAX_PACKET {
            return Err(WireError::TooLong(len));
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len)))
    }

    /// Bytes received but not yet a whole packet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Reads the fields of one packet's payload.
struct Fields<'a> {
    rest: &'a [u8],
    kind: u8,
    id: Option<u32>,
}

impl<'a> Fields<'a> {
    fn bad(&self, what: &'static str) -> WireError {
        WireError::Malformed {
            kind: self.kind,
            id: self.id,
            what,
        }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<4>() else {
            return Err(self.bad(what));
        };
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let Some((head, rest)) = self.rest.split_first_chunk::<8>() else {
            return Err(self.bad(what));
        };
        self.rest = rest;
        Ok(u64::from_be_bytes(*head))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        if self.rest.len() < len {
            return Err(self.bad(what));
        }
        let (s, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(s)
    }

    fn text(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map_err(|_| self.bad(what))
    }

    fn handle(&mut self) -> Result<&'a [u8], WireError> {
        let h = self.bytes("handle")?;
        if h.len() > MAX_HANDLE {
            return Err(self.bad("handle longer than 256 bytes"));
        }
        Ok(h)
    }

    fn attrs(&mut self) -> Result<Attrs, WireError> {
        let flags = self.u32("attribute flags")?;
        let mut a = Attrs::default();
        if flags & SIZE != 0 {
            a.size = Some(self.u64("size")?);
        }
        if flags & UIDGID != 0 {
            a.uid_gid = Some((self.u32("uid")?, self.u32("gid")?));
        }
        if flags & PERMISSIONS != 0 {
            a.permissions = Some(self.u32("permissions")?);
        }
        if flags & ACMODTIME != 0 {
            a.times = Some((self.u32("atime")?, self.u32("mtime")?));
        }
        if flags & EXTENDED != 0 {
            let n = self.u32("extended count")?;
            for _ in 0..n {
                self.bytes("extended type")?;
                self.bytes("extended data")?;
            }
        }
        Ok(a)
    }

    /// A request's fields must fill its packet exactly.
    fn end(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad("bytes after the last field"))
        }
    }
}

/// Decodes one packet (type byte and payload, as [`Frames`] yields it).
pub fn decode(packet: &[u8]) -> Result<Request<'_>, WireError> {
    let Some((&kind, rest)) = packet.split_first() else {
        return Err(WireError::Empty);
    };
    let mut f = Fields {
        rest,
        kind,
        id: None,
    };
    if kind == kind::INIT {
        let version = f.u32("version")?;
        // Extension pairs from the client are allowed and ignored.
        while !f.rest.is_empty() {
            f.bytes("extension name")?;
            f.bytes("extension data")?;
        }
        return Ok(Request::Init { version });
    }
    let id = f.u32("request id")?;
    f.id = Some(id);
    let r = match kind {
        kind::OPEN => Request::Open {
            id,
            path: f.text("path")?,
            pflags: f.u32("pflags")?,
            attrs: f.attrs()?,
        },
        kind::CLOSE => Request::Close {
            id,
            handle: f.handle()?,
        },
        kind::READ => Request::Read {
            id,
            handle: f.handle()?,
            offset: f.u64("offset")?,
            len: f.u32("length")?,
        },
        kind::WRITE => Request::Write {
            id,
            handle: f.handle()?,
            offset: f.u64("offset")?,
            data: f.bytes("data")?,
        },
        kind::LSTAT => Request::Lstat {
            id,
            path: f.text("path")?,
        },
        kind::FSTAT => Request::Fstat {
            id,
            handle: f.handle()?,
        },
        kind::SETSTAT => Request::Setstat {
            id,
            path: f.text("path")?,
            attrs: f.attrs()?,
        },
        kind::FSETSTAT => Request::Fsetstat {
            id,
            handle: f.handle()?,
            attrs: f.attrs()?,
        },
        kind::OPENDIR => Request::Opendir {
            id,
            path: f.text("path")?,
        },
        kind::READDIR => Request::Readdir {
            id,
            handle: f.handle()?,
        },
        kind::REMOVE => Request::Remove {
            id,
            path: f.text("path")?,
        },
        kind::MKDIR => Request::Mkdir {
            id,
            path: f.text("path")?,
            attrs: f.attrs()?,
        },
        kind::RMDIR => Request::Rmdir {
            id,
            path: f.text("path")?,
        },
        kind::REALPATH => Request::Realpath {
            id,
            path: f.text("path")?,
        },
        kind::STAT => Request::Stat {
            id,
            path: f.text("path")?,
        },
        kind::RENAME => Request::Rename {
            id,
            from: f.text("old path")?,
            to: f.text("new path")?,
        },
        kind::READLINK => Request::Readlink {
            id,
            path: f.text("path")?,
        },
        kind::SYMLINK => Request::Symlink {
            id,
            link: f.text("link path")?,
            target: f.text("target path")?,
        },
        kind::EXTENDED => {
            let name = f.text("extension name")?;
            let data = std::mem::take(&mut f.rest);
            Request::Extended { id, name, data }
        }
        // The rest of an unknown packet is its own business.
        _ => return Ok(Request::Unknown { id, kind }),
    };
    f.end()?;
    Ok(r)
}

/// Starts a packet of `kind` in `out`; returns where its length goes.
fn begin(out: &mut BytesMut, kind: u8) -> usize {
    let at = out.len();
    out.put_u32(0);
    out.put_u8(kind);
    at
}

/// Writes the length of the packet begun at `at`.
fn finish(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

fn put_attrs(out: &mut BytesMut, a: &Attrs) {
    let flags = a.size.map_or(0, |_| SIZE)
        | a.uid_gid.map_or(0, |_| UIDGID)
        | a.permissions.map_or(0, |_| PERMISSIONS)
        | a.times.map_or(0, |_| ACMODTIME);
    out.put_u32(flags);
    if let Some(size) = a.size {
        out.put_u64(size);
    }
    if let Some((uid, gid)) = a.uid_gid {
        out.put_u32(uid);
        out.put_u32(gid);
    }
    if let Some(p) = a.permissions {
        out.put_u32(p);
    }
    if let Some((atime, mtime)) = a.times {
        out.put_u32(atime);
        out.put_u32(mtime);
    }
}

/// VERSION, with the extensions udstil offers.
pub fn put_version(out: &mut BytesMut, extensions: &[(&str, &str)]) {
    let at = begin(out, kind::VERSION);
    out.put_u32(VERSION);
    for (name, data) in extensions {
        put_str(out, name.as_bytes());
        put_str(out, data.as_bytes());
    }
    finish(out, at);
}

pub fn put_status(out: &mut BytesMut, id: u32, code: StatusCode, message: &str) {
    let at = begin(out, kind::STATUS);
    out.put_u32(id);
    out.put_u32(code as u32);
    put_str(out, message.as_bytes());
    put_str(out, b"en");
    finish(out, at);
}

pub fn put_handle(out: &mut BytesMut, id: u32, handle: &[u8]) {
    let at = begin(out, kind::HANDLE);
    out.put_u32(id);
    put_str(out, handle);
    finish(out, at);
}

pub fn put_attrs_reply(out: &mut BytesMut, id: u32, attrs: &Attrs) {
    let at = begin(out, kind::ATTRS);
    out.put_u32(id);
    put_attrs(out, attrs);
    finish(out, at);
}

/// One entry of a NAME reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    /// The `ls -l` line clients show.
    pub long: &'a str,
    pub attrs: Attrs,
}

pub fn put_name(out: &mut BytesMut, id: u32, entries: &[Entry<'_>]) {
    let at = begin(out, kind::NAME);
    out.put_u32(id);
    out.put_u32(entries.len() as u32);
    for e in entries {
        put_str(out, e.name.as_bytes());
        put_str(out, e.long.as_bytes());
        put_attrs(out, &e.attrs);
    }
    finish(out, at);
}

pub fn put_extended_reply(out: &mut BytesMut, id: u32, data: &[u8]) {
    let at = begin(out, kind::EXTENDED_REPLY);
    out.put_u32(id);
    out.put_slice(data);
    finish(out, at);
}

/// The `limits@openssh.com` reply: packet, read and write lengths, open handles.
pub fn put_limits(out: &mut BytesMut, id: u32, open_handles: u64) {
    let mut data = [0u8; 32];
    data[..8].copy_from_slice(&(MAX_PACKET as u64).to_be_bytes());
    data[8..16].copy_from_slice(&u64::from(MAX_READ).to_be_bytes());
    data[16..24].copy_from_slice(&0u64.to_be_bytes());
    data[24..].copy_from_slice(&open_handles.to_be_bytes());
    put_extended_reply(out, id, &data);
}

/// Length of a DATA reply's header: packet length, type, id, data length.
pub const DATA_HEADER: usize = 13;

/// A DATA reply under way: its header's place is held in the buffer and the
/// data is appended after it by the caller (read straight from a file into
/// the buffer's spare room); [`DataReply::finish`] writes the header once
/// the request id and the length are known. A block read ahead of its
/// request has no id yet.
#[derive(Debug, Clone, Copy)]
pub struct DataReply {
    at: usize,
}

/// Begins a DATA reply at the end of `out`.
pub fn begin_data(out: &mut BytesMut) -> DataReply {
    let at = out.len();
    out.put_bytes(0, DATA_HEADER);
    DataReply { at }
}

impl DataReply {
    /// The data bytes appended so far.
    pub fn len(&self, out: &BytesMut) -> usize {
        out.len() - self.at - DATA_HEADER
    }

    /// Ends the reply to request `id`; the data appended must not exceed
    /// [`MAX_READ`].
    pub fn finish(self, out: &mut BytesMut, id: u32) {
        let got = self.len(out);
        assert!(got <= MAX_READ as usize, "DATA longer than MAX_READ");
        out[self.at + 4] = kind::DATA;
        out[self.at + 5..self.at + 9].copy_from_slice(&id.to_be_bytes());
        out[self.at + 9..self.at + 13].copy_from_slice(&(got as u32).to_be_bytes());
        finish(out, self.at);
    }

    /// Takes the reply back out (the read failed; a STATUS goes instead).
    pub fn abandon(self, out: &mut BytesMut) {
        out.truncate(self.at);
    }
}

/// Encodes a request as a client would: for tests and the fuzzer's seeds.
pub fn put_request(out: &mut BytesMut, r: &Request<'_>) {
    use Request::*;
    let k = match r {
        Init { .. } => kind::INIT,
        Open { .. } => kind::OPEN,
        Close { .. } => kind::CLOSE,
        Read { .. } => kind::READ,
        Write { .. } => kind::WRITE,
        Lstat { .. } => kind::LSTAT,
        Fstat { .. } => kind::FSTAT,
        Setstat { .. } => kind::SETSTAT,
        Fsetstat { .. } => kind::FSETSTAT,
        Opendir { .. } => kind::OPENDIR,
        Readdir { .. } => kind::READDIR,
        Remove { .. } => kind::REMOVE,
        Mkdir { .. } => kind::MKDIR,
        Rmdir { .. } => kind::RMDIR,
        Realpath { .. } => kind::REALPATH,
        Stat { .. } => kind::STAT,
        Rename { .. } => kind::RENAME,
        Readlink { .. } => kind::READLINK,
        Symlink { .. } => kind::SYMLINK,
        Extended { .. } => kind::EXTENDED,
        Unknown { kind, .. } => *kind,
    };
    let at = begin(out, k);
    if let Init { version } = r {
        out.put_u32(*version);
        finish(out, at);
        return;
    }
    out.put_u32(r.id().expect("every request but INIT has an id"));
    match r {
        Init { .. } | Unknown { .. } => {}
        Open {
            path,
            pflags,
            attrs,
            ..
        } => {
            put_str(out, path.as_bytes());
            out.put_u32(*pflags);
            put_attrs(out, attrs);
        }
        Close { handle, .. } | Fstat { handle, .. } | Readdir { handle, .. } => {
            put_str(out, handle)
        }
        Read {
            handle,
            offset,
            len,
            ..
        } => {
            put_str(out, handle);
            out.put_u64(*offset);
            out.put_u32(*len);
        }
        Write {
            handle,
            offset,
            data,
            ..
        } => {
            put_str(out, handle);
            out.put_u64(*offset);
            put_str(out, data);
        }
        Lstat { path, .. }
        | Opendir { path, .. }
        | Remove { path, .. }
        | Rmdir { path, .. }
        | Realpath { path, .. }
        | Stat { path, .. }
        | Readlink { path, .. } => put_str(out, path.as_bytes()),
        Setstat { path, attrs, .. } | Mkdir { path, attrs, .. } => {
            put_str(out, path.as_bytes());
            put_attrs(out, attrs);
        }
        Fsetstat { handle, attrs, .. } => {
            put_str(out, handle);
            put_attrs(out, attrs);
        }
        Rename { from, to, .. } => {
            put_str(out, from.as_bytes());
            put_str(out, to.as_bytes());
        }
        Symlink { link, target, .. } => {
            put_str(out, link.as_bytes());
            put_str(out, target.as_bytes());
        }
        Extended { name, data, .. } => {
            put_str(out, name.as_bytes());
            out.put_slice(data);
        }
    }
    finish(out, at);
}

#[cfg(test)]
mod tests;
