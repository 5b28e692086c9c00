//! A TCP stream that acknowledges the client's packets at once while the
//! connection is young.
//!
//! OpenSSH's client does not set `TCP_NODELAY` for an sftp session, so during
//! the handshake it holds a small packet until its previous one is
//! acknowledged, and Linux delays that acknowledgement by 40 ms when the
//! server has nothing to send back: a stall in every login. Quick-ack mode is
//! not sticky, so it is set again after each read, for the first
//! [`HANDSHAKE_READS`]. BENCHMARKS.md has the login times it gives.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads covering banner, key exchange, authentication, channel and SFTP
/// init; after that the server's own data carries the acknowledgements.
const HANDSHAKE_READS: u32 = 64;

pub struct QuickAck {
    stream: TcpStream,
    reads_left: u32,
    /// Set once the peer has sent anything (a health check's bare connect does not).
    spoke: Arc<AtomicBool>,
}

impl QuickAck {
    pub fn new(stream: TcpStream, spoke: Arc<AtomicBool>) -> Self {
        QuickAck {
            stream,
            reads_left: HANDSHAKE_READS,
            spoke,
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.reads_left > 0
            && matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
        {
            if self.reads_left == HANDSHAKE_READS {
                self.spoke.store(true, Ordering::Release);
            }
            self.reads_left -= 1;
            // Best effort: a failure only means the old delay.
            let _ = SockRef::from(&self.stream).set_tcp_quickack(true);
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
