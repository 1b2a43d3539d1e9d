//! The writer task: the one place that writes to a connection's socket.
//!
//! Everything the server sends on a connection (method replies from the
//! reader, deliveries from consumer tasks, heartbeats) goes through one
//! unbounded channel to this task, which encodes frames, batches whatever is
//! queued into one write, and sends a heartbeat when it has been idle for
//! half the negotiated interval.
//!
//! Back-pressure: content (deliveries, `get-ok`, returns) first takes a
//! share of a per-connection byte budget ([`OutTx::reserve`]), given back
//! once written. A client that stops reading therefore stops its consumers,
//! and unanswered messages stay in their queues, instead of piling up here.
//! Control frames (method replies, confirms) are small, but a client can ask
//! for them faster than it reads them: they are counted, and above
//! [`CONTROL_BACKLOG`] queued frames the connection's reader stops reading
//! ([`OutTx::room`]) until the writer has written them, so such a client
//! meets TCP back-pressure instead of growing this queue.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, BasicProperties as WireProperties};
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use crate::codec;

/// Bytes of content that may wait to be written per connection.
const BUDGET: usize = 4 * 1024 * 1024;
/// Method frames that may wait to be written before the reader pauses.
/// Each is at most a few hundred bytes.
pub(crate) const CONTROL_BACKLOG: usize = 4096;
/// Write once this much is batched.
const BATCH: usize = 256 * 1024;
/// A client that takes no bytes at all for this long is given up on (its
/// TCP window stayed shut): RabbitMQ's `send_timeout`.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Something to send.
pub(crate) enum Out {
    Method(u16, AMQPClass),
    Content {
        channel: u16,
        method: AMQPClass,
        properties: Box<WireProperties>,
        body: Bytes,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// From now on: split bodies by `frame_max`, heartbeat every
    /// `heartbeat / 2` seconds of silence (0 = never).
    Tune {
        frame_max: u32,
        heartbeat: u16,
    },
    /// Flush, shut the socket's write side, stop.
    Close,
}

/// The sending side, shared by the reader and the consumer tasks.
#[derive(Clone)]
pub(crate) struct OutTx {
    tx: mpsc::UnboundedSender<Out>,
    budget: Arc<Semaphore>,
    backlog: Arc<Backlog>,
}

/// Method frames queued and not yet written.
struct Backlog {
    frames: AtomicUsize,
    /// Woken when frames have been written.
    written: Notify,
}

impl OutTx {
    /// Queues `out`; false if the writer is gone.
    pub(crate) fn send(&self, out: Out) -> bool {
        let method = matches!(out, Out::Method(..));
        if method {
            self.backlog.frames.fetch_add(1, Ordering::AcqRel);
        }
        let sent = self.tx.send(out).is_ok();
        if method && !sent {
            self.backlog.frames.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Whether fewer than [`CONTROL_BACKLOG`] method frames wait to be
    /// written (or the writer is gone, so nothing will wait anymore).
    pub(crate) fn has_room(&self) -> bool {
        self.backlog.frames.load(Ordering::Acquire) < CONTROL_BACKLOG || self.tx.is_closed()
    }

    /// Waits until [`has_room`](Self::has_room).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn room(&self) {
        loop {
            let written = self.backlog.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if self.has_room() {
                return;
            }
            tokio::select! {
                _ = written => {}
                _ = self.tx.closed() => return,
            }
        }
    }

    /// Queues a method frame.
    pub(crate) fn method(&self, channel: u16, method: AMQPClass) -> bool {
        self.send(Out::Method(channel, method))
    }

    /// Completes once the writer task has stopped (the socket is gone).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Waits for room for `bytes` of content; `None` once the writer is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken unless it completes.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let cost = bytes.saturating_add(256).min(BUDGET) as u32;
        self.budget.clone().acquire_many_owned(cost).await.ok()
    }

    /// Takes room for content without waiting; `None` when there is none
    /// (for direct reply-to, where the publisher must not wait on another
    /// connection's reader).
    pub(crate) fn reserve_now(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let cost = bytes.saturating_add(256).min(BUDGET) as u32;
        self.budget.clone().try_acquire_many_owned(cost).ok()
    }
}

/// Starts the writer task for `socket`.
pub(crate) fn spawn<W>(socket: W) -> (OutTx, tokio::task::JoinHandle<()>)
where
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(BUDGET));
    let backlog = Arc::new(Backlog {
        frames: AtomicUsize::new(0),
        written: Notify::new(),
    });
    let handle = tokio::spawn(run(socket, rx, budget.clone(), backlog.clone()));
    (
        OutTx {
            tx,
            budget,
            backlog,
        },
        handle,
    )
}

struct State {
    frame_max: u32,
    heartbeat: Option<Duration>,
    close: bool,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    permits: Vec<OwnedSemaphorePermit>,
    /// Method frames in `buf`.
    methods: usize,
}

impl State {
    fn encode(&mut self, out: Out) {
        match out {
            Out::Method(ch, m) => {
                codec::write_method(&mut self.buf, &mut self.scratch, ch, m);
                self.methods += 1;
            }
            Out::Content {
                channel,
                method,
                properties,
                body,
                permit,
            } => {
                codec::write_content(
                    &mut self.buf,
                    &mut self.scratch,
                    channel,
                    method,
                    *properties,
                    &body,
                    self.frame_max,
                );
                self.permits.extend(permit);
            }
            Out::Tune {
                frame_max,
                heartbeat,
            } => {
                self.frame_max = frame_max;
                self.heartbeat =
                    (heartbeat > 0).then(|| Duration::from_millis(u64::from(heartbeat) * 500));
            }
            Out::Close => self.close = true,
        }
    }
}

async fn run<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    budget: Arc<Semaphore>,
    backlog: Arc<Backlog>,
) {
    let mut st = State {
        frame_max: 131_072,
        heartbeat: None,
        close: false,
        buf: Vec::with_capacity(64 * 1024),
        scratch: Vec::new(),
        permits: Vec::new(),
        methods: 0,
    };
    loop {
        // Some(message), Some(None) when every sender is gone, None when a
        // heartbeat is due.
        let first: Option<Option<Out>> = match st.heartbeat {
            Some(idle) => match tokio::time::timeout(idle, rx.recv()).await {
                Ok(m) => Some(m),
                Err(_) => {
                    codec::write_heartbeat(&mut st.buf, &mut st.scratch);
                    None
                }
            },
            None => Some(rx.recv().await),
        };
        match first {
            Some(Some(m)) => st.encode(m),
            Some(None) => break,
            None => {}
        }
        while st.buf.len() < BATCH && !st.close {
            match rx.try_recv() {
                Ok(m) => st.encode(m),
                Err(_) => break,
            }
        }
        if !st.buf.is_empty() {
            if write(&mut socket, &st.buf).await.is_err() {
                break;
            }
            st.buf.clear();
            if st.buf.capacity() > 4 * BATCH {
                st.buf.shrink_to(64 * 1024);
            }
        }
        st.permits.clear();
        if st.methods > 0 {
            backlog.frames.fetch_sub(st.methods, Ordering::AcqRel);
            st.methods = 0;
            backlog.written.notify_waiters();
        }
        if st.close {
            let _ = socket.flush().await;
            let _ = socket.shutdown().await;
            break;
        }
    }
    // Wake consumer tasks waiting for room: nothing will be written anymore.
    budget.close();
    // And the reader, should it wait for the backlog (it also watches the
    // channel closing, which happens when `rx` drops on return).
    backlog.written.notify_waiters();
}

/// Writes `buf`, in pieces that must each go out within [`STALL_TIMEOUT`].
async fn write<W: AsyncWrite + Unpin>(socket: &mut W, buf: &[u8]) -> std::io::Result<()> {
    for piece in buf.chunks(BATCH) {
        match tokio::time::timeout(STALL_TIMEOUT, socket.write_all(piece)).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    Ok(())
}
