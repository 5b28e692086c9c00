//! The channel plumbing of an SFTP session: bytes in from russh, packets
//! through [`wire`], answers from the [`SftpSession`], replies out.
//!
//! Reads of files on disk are kept under way several at a time (`[sftp]
//! reads_in_flight`) and answered as they finish, in any order (the
//! protocol matches replies to requests by id), so one slow read does not
//! hold up the requests behind it, and replies are ready when the client's
//! window opens. A CLOSE waits for the reads before it, so the audit trail
//! counts every byte its file's reads sent.
//!
//! Sending a reply waits for channel window. If that wait also stopped us
//! reading the channel, russh's bounded queue toward us would fill, its
//! session loop would block on it and never read the client's
//! WINDOW_ADJUST: a deadlock (seen with `sftp -R 256`). So a pump task
//! drains the channel into an unbounded queue at all times; the SSH loop
//! never blocks on us. The queue is capped in bytes: a client that
//! pipelines more than [`MAX_QUEUED_BYTES`] of requests without reading
//! answers is misbehaving, and its channel is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf};

use super::session::{Answer, Finished, SftpSession};
use super::wire::{self, Frames, Request, StatusCode, WireError};

/// Requests are small (a read request is 30 bytes), so this is thousands of them.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// Serves SFTP on `channel` until the client ends it or breaks the protocol,
/// with at most `reads` reads of files under way.
/// Every chunk the client sends touches `activity` (for the idle timeout).
pub async fn run(
    channel: Channel<Msg>,
    session: SftpSession,
    reads: usize,
    activity: Arc<super::Activity>,
) {
    let (mut read, write) = channel.split();
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<Bytes>();
    let queued = Arc::new(AtomicUsize::new(0));
    let pumped = queued.clone();
    tokio::spawn(async move {
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    activity.touch();
                    let n = data.len();
                    if pumped.fetch_add(n, Ordering::AcqRel) + n > MAX_QUEUED_BYTES {
                        tracing::warn!(
                            "sftp client pipelined too much without reading; closing channel"
                        );
                        break;
                    }
                    if tx.unbounded_send(data).is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => break,
                _ => {}
            }
        }
    });
    let mut served = Served {
        session,
        write,
        out: BytesMut::new(),
        in_flight: FuturesUnordered::new(),
        reads: reads.max(1),
        frames: Frames::default(),
        started: false,
    };
    let broken = loop {
        match served.answer_arrived().await {
            Ok(()) => {}
            Err(Stop::Broken(why)) => break Some(why),
            Err(Stop::Gone) => break None,
        }
        if served.flush().await.is_err() {
            break None;
        }
        let room = served.in_flight.len() < served.reads;
        tokio::select! {
            biased;
            Some(done) = served.in_flight.next(), if !served.in_flight.is_empty() => {
                if served.deliver(done).await.is_err() {
                    break None;
                }
            }
            chunk = rx.next(), if room => match chunk {
                Some(bytes) => {
                    queued.fetch_sub(bytes.len(), Ordering::AcqRel);
                    served.frames.extend(&bytes);
                }
                None => break None,
            },
        }
    };
    if let Some(why) = broken {
        tracing::warn!(reason = why, "sftp protocol violation; closing channel");
    } else {
        // The client is done sending; what it asked for still goes out.
        let _ = served.drain().await;
        let _ = served.flush().await;
    }
    let Served { session, write, .. } = served;
    // Ends the session (its open handles' downloads are audited) before the channel.
    drop(session);
    let _ = write.eof().await;
    let _ = write.close().await;
}

/// Why the loop stops.
enum Stop {
    /// The client broke the protocol.
    Broken(&'static str),
    /// The channel is gone.
    Gone,
}

struct Served {
    session: SftpSession,
    write: ChannelWriteHalf<Msg>,
    /// Replies other than DATA, sent together.
    out: BytesMut,
    in_flight: FuturesUnordered<super::session::InFlight>,
    /// The most reads under way at once.
    reads: usize,
    /// The client's bytes, cut into packets.
    frames: Frames,
    /// Whether INIT has been answered.
    started: bool,
}

impl Served {
    /// Answers the whole packets received, as far as the reads in flight allow.
    async fn answer_arrived(&mut self) -> Result<(), Stop> {
        while self.in_flight.len() < self.reads {
            let packet = match self.frames.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(WireError::TooLong(_)) => return Err(Stop::Broken("packet too long")),
                Err(_) => return Err(Stop::Broken("empty packet")),
            };
            let request = match wire::decode(&packet) {
                Ok(r) => r,
                Err(WireError::Malformed {
                    id: Some(id), what, ..
                }) if self.started => {
                    wire::put_status(&mut self.out, id, StatusCode::BadMessage, what);
                    continue;
                }
                Err(_) => return Err(Stop::Broken("malformed packet")),
            };
            if !self.started {
                let Request::Init { .. } = request else {
                    return Err(Stop::Broken("a request before INIT"));
                };
                self.session.init(&mut self.out);
                self.started = true;
                continue;
            }
            if let Request::Close { .. } = request {
                self.drain().await.map_err(|()| Stop::Gone)?;
            }
            match self.session.answer(request, &mut self.out).await {
                Answer::Done => {}
                Answer::Reading(read) => self.in_flight.push(read),
                Answer::Ready(done) => self.deliver(done).await.map_err(|()| Stop::Gone)?,
                Answer::End(why) => return Err(Stop::Broken(why)),
            }
        }
        Ok(())
    }

    /// Sends the replies gathered in `out`.
    async fn flush(&mut self) -> Result<(), ()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let replies = self.out.split().freeze();
        self.write.data_bytes(replies).await.map_err(drop)
    }

    /// Sends a finished read's reply.
    async fn deliver(&mut self, done: Finished) -> Result<(), ()> {
        let Some(mut data) = self.session.finished(done, &mut self.out) else {
            return Ok(());
        };
        let reply = data.split().freeze();
        self.session.recycle(data);
        self.write.data_bytes(reply).await.map_err(drop)
    }

    /// Waits for every read under way and sends its reply.
    async fn drain(&mut self) -> Result<(), ()> {
        while let Some(done) = self.in_flight.next().await {
            self.deliver(done).await?;
        }
        self.flush().await
    }
}
