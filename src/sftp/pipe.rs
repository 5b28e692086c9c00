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
        loop {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            match read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    activity.touch();
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
