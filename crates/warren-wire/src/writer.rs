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
//! Control frames are small and bounded by what the client itself sends.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, BasicProperties as WireProperties};
use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::codec;

/// Bytes of content that may wait to be written per connection.
const BUDGET: usize = 4 * 1024 * 1024;
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
}

impl OutTx {
    /// Queues `out`; false if the writer is gone.
    pub(crate) fn send(&self, out: Out) -> bool {
        self.tx.send(out).is_ok()
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

    /// Takes room for content without waiting, even past the budget (for
    /// direct reply-to, where the publisher must not wait on another
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
    let handle = tokio::spawn(run(socket, rx, budget.clone()));
    (OutTx { tx, budget }, handle)
}

struct State {
    frame_max: u32,
    heartbeat: Option<Duration>,
    close: bool,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    permits: Vec<OwnedSemaphorePermit>,
}

impl State {
    fn encode(&mut self, out: Out) {
        match out {
            Out::Method(ch, m) => codec::write_method(&mut self.buf, &mut self.scratch, ch, m),
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
) {
    let mut st = State {
        frame_max: 131_072,
        heartbeat: None,
        close: false,
        buf: Vec::with_capacity(64 * 1024),
        scratch: Vec::new(),
        permits: Vec::new(),
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
        if st.close {
            let _ = socket.flush().await;
            let _ = socket.shutdown().await;
            break;
        }
    }
    // Wake consumer tasks waiting for room: nothing will be written anymore.
    budget.close();
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
