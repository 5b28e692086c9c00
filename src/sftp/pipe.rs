//! The channel plumbing between russh and the SFTP handler.
//!
//! russh-sftp handles one request at a time: read, answer, write. If the write
//! waits for channel window while the client keeps pipelining requests, the
//! channel's bounded message queue fills, the SSH session loop blocks on it
//! and never reads the client's WINDOW_ADJUST: a deadlock (seen with
//! `sftp -R 256`). So a pump task drains the channel into an unbounded queue
//! at all times; the SSH loop never blocks on us. The queue is capped in bytes:
//! a client that pipelines more than [`MAX_QUEUED_BYTES`] of requests without
//! reading answers is misbehaving, and its channel is closed.
//!
//! The pump also follows the SFTP framing (a 4-byte length before each
//! packet): a packet longer than the SFTP limit, or empty, closes the channel.
//! russh-sftp would answer the first with an error and go on reading the
//! packet's body as the next packet, out of step with the client for good.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use russh::Channel;
use russh::server::Msg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::io::StreamReader;

/// Requests are small (a read request is 30 bytes), so this is thousands of them.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// The longest SFTP packet a client may send (russh-sftp's limit, and OpenSSH's).
pub const MAX_PACKET_LEN: u32 = 256 * 1024;

/// Follows packet boundaries in the client's byte stream.
#[derive(Debug, Default)]
pub struct Framer {
    header: [u8; 4],
    have: usize,
    /// Body bytes of the current packet still to come.
    remaining: u32,
}

impl Framer {
    /// Takes the next bytes of the stream; an error names the bad length.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), u32> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = bytes.len().min(self.remaining as usize);
                self.remaining -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let n = (4 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 4 {
                let len = u32::from_be_bytes(self.header);
                if len == 0 || len > MAX_PACKET_LEN {
                    return Err(len);
                }
                self.have = 0;
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// Splits the channel into a stream for the SFTP handler that cannot stall
/// the SSH session.
/// Every chunk the client sends touches `activity` (for the idle timeout).
pub fn stream(
    channel: Channel<Msg>,
    activity: Arc<super::Activity>,
) -> impl AsyncRead + AsyncWrite + Unpin + Send + 'static {
    let (mut read, write) = tokio::io::split(channel.into_stream());
    let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let pumped = queued.clone();
    tokio::spawn(async move {
        let mut framer = Framer::default();
        loop {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    activity.touch();
                    if let Err(len) = framer.feed(&buf) {
                        tracing::warn!(
                            length = len,
                            "malformed sftp packet length; closing channel"
                        );
                        break;
                    }
                    if pumped.fetch_add(n, Ordering::AcqRel) + n > MAX_QUEUED_BYTES {
                        tracing::warn!(
                            "sftp client pipelined too much without reading; closing channel"
                        );
                        break;
                    }
                    if tx.unbounded_send(buf.freeze()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let reader = StreamReader::new(rx.map(move |b| {
        queued.fetch_sub(b.len(), Ordering::AcqRel);
        Ok::<_, std::io::Error>(b)
    }));
    tokio::io::join(reader, write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(body_len: u32) -> Vec<u8> {
        let mut p = body_len.to_be_bytes().to_vec();
        p.resize(4 + body_len as usize, 7);
        p
    }

    #[test]
    fn packets_split_anywhere_are_followed() {
        let stream: Vec<u8> = [packet(5), packet(MAX_PACKET_LEN), packet(1), packet(30)].concat();
        for chunk in [1, 2, 3, 4, 5, 7, 4096, stream.len()] {
            let mut f = Framer::default();
            for c in stream.chunks(chunk) {
                assert_eq!(f.feed(c), Ok(()), "chunk {chunk}");
            }
            assert_eq!((f.have, f.remaining), (0, 0));
        }
    }

    #[test]
    fn an_empty_or_oversized_packet_is_refused_even_mid_stream() {
        for bad in [0, MAX_PACKET_LEN + 1, u32::MAX] {
            let mut stream = packet(9);
            stream.extend_from_slice(&bad.to_be_bytes());
            for chunk in [1, 3, stream.len()] {
                let mut f = Framer::default();
                let r: Result<Vec<()>, u32> = stream.chunks(chunk).map(|c| f.feed(c)).collect();
                assert_eq!(r, Err(bad), "chunk {chunk}");
            }
        }
    }
}
