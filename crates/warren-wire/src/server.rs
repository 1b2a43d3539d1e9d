//! The server: what every connection shares (configuration, the memory
//! alarm, the channels consuming from direct reply-to, the shutdown signal),
//! the [`ConnectionHandler`] that serves one connection over any byte stream,
//! and the TCP [`Server`] that accepts connections and hands them to it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::channel::ChannelShared;
use crate::config::{MemoryWatermark, ServerConfig};
use crate::connection;

/// What every connection of one server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// `true` once the server shuts down.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Sets `shutdown`.
    stop: watch::Sender<bool>,
    /// `true` while the memory alarm is on.
    pub(crate) alarm: watch::Sender<bool>,
    /// Channels consuming from `amq.rabbitmq.reply-to`, by token.
    pub(crate) reply_to: Mutex<HashMap<String, Weak<ChannelShared>>>,
    /// Body bytes and messages published over the wire (memory estimate).
    pub(crate) published_bytes: AtomicU64,
    pub(crate) published_messages: AtomicU64,
    connections: watch::Sender<usize>,
    /// Connections not read from until the client reads what it was sent.
    flow: watch::Sender<usize>,
    ids: AtomicU64,
    random: RandomState,
}

impl Shared {
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// `prefix` followed by 22 URL-safe random characters, as RabbitMQ names
    /// generated things.
    pub(crate) fn generate_name(&self, prefix: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut h = self.random.build_hasher();
        h.write_u64(self.next_id());
        let mut a = h.finish();
        let mut h = self.random.build_hasher();
        h.write_u64(a ^ 0x9e37_79b9_7f4a_7c15);
        let mut b = h.finish();
        let mut s = String::with_capacity(prefix.len() + 22);
        s.push_str(prefix);
        for i in 0..22 {
            let src = if i < 11 { &mut a } else { &mut b };
            s.push(ALPHABET[(*src & 63) as usize] as char);
            *src >>= 6;
        }
        s
    }

    /// The default memory measure: the body bytes of every ready message in
    /// every virtual host (exact), plus the unacknowledged ones at the
    /// average body size published over the wire (an estimate).
    fn estimate_memory(&self) -> u64 {
        let messages = self.published_messages.load(Ordering::Relaxed);
        let average = self
            .published_bytes
            .load(Ordering::Relaxed)
            .checked_div(messages)
            .unwrap_or(0);
        self.config
            .vhosts
            .values()
            .map(|b| {
                let s = b.stats();
                let unacked: u64 = s.queues.iter().map(|q| q.unacked).sum();
                s.ready_bytes
                    .saturating_add(unacked.saturating_mul(average))
            })
            .sum()
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.send_modify(|n| *n += 1);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Open client connections, counting those still in the handshake.
    pub(crate) fn connection_count(&self) -> usize {
        *self.connections.borrow()
    }

    /// A connection's reader pauses for its writer until the guard drops.
    pub(crate) fn flow_started(&self) -> FlowGuard<'_> {
        self.flow.send_modify(|n| *n += 1);
        FlowGuard(self)
    }
}

/// Counts a connection in [`Server::flow_connection_count`] while it lives.
pub(crate) struct FlowGuard<'a>(&'a Shared);

impl Drop for FlowGuard<'_> {
    fn drop(&mut self) {
        self.0.flow.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Shared {
    /// Everything a server's connections share, and the memory alarm's task
    /// if `config` has a watermark.
    fn start(config: ServerConfig) -> Arc<Shared> {
        let (stop, shutdown) = watch::channel(false);
        let memory = config.memory.clone();
        let shared = Arc::new(Shared {
            config,
            shutdown,
            stop,
            alarm: watch::channel(false).0,
            reply_to: Mutex::new(HashMap::new()),
            published_bytes: AtomicU64::new(0),
            published_messages: AtomicU64::new(0),
            connections: watch::channel(0usize).0,
            flow: watch::channel(0).0,
            ids: AtomicU64::new(1),
            random: RandomState::new(),
        });
        if let Some(wm) = memory {
            tokio::spawn(memory_monitor(
                Arc::downgrade(&shared),
                wm,
                shared.shutdown.clone(),
            ));
        }
        shared
    }
}

/// Serves AMQP 0-9-1 connections over any byte stream: a Unix socket, a TLS
/// stream, an in-memory [`tokio::io::duplex`] pair, or a TCP connection
/// accepted by the embedder.
///
/// It is what a [`Server`] hands each accepted TCP connection to. Build one
/// from a [`ServerConfig`] with [`ConnectionHandler::new`] when the
/// connections come from elsewhere, or take a TCP server's with
/// [`Server::handler`] to serve other streams next to its TCP clients (they
/// then share its brokers, direct reply-to, memory alarm and shutdown).
///
/// A cheap `Clone` handle: every clone serves for the same server.
///
/// # Examples
///
/// A client over an in-memory pipe:
///
/// ```
/// use warren_core::Broker;
/// use warren_wire::{ConnectionHandler, ServerConfig};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handler = ConnectionHandler::new(ServerConfig::with_broker(Broker::new()));
/// let (mut client, server_side) = tokio::io::duplex(64 * 1024);
/// // The peer address decides whether loopback-only users (`guest`) may log in.
/// let peer = "127.0.0.1:0".parse().unwrap();
/// let connection = tokio::spawn(handler.serve(server_side, peer));
///
/// client.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
/// let mut frame_type = [0u8; 1];
/// client.read_exact(&mut frame_type).await.unwrap();
/// assert_eq!(frame_type[0], 1); // a method frame: connection.start
///
/// drop(client); // the client goes away: the connection ends
/// connection.await.unwrap();
/// assert_eq!(handler.connection_count(), 0);
/// # }
/// ```
///
/// A Unix socket (any `AsyncRead + AsyncWrite` stream is served the same way):
///
/// ```no_run
/// # #[cfg(unix)]
/// # async fn run() -> std::io::Result<()> {
/// use warren_core::Broker;
/// use warren_wire::{ConnectionHandler, ServerConfig};
///
/// let handler = ConnectionHandler::new(ServerConfig::with_broker(Broker::new()));
/// let listener = tokio::net::UnixListener::bind("/run/warren.sock")?;
/// let local = "127.0.0.1:0".parse().unwrap();
/// loop {
///     let (stream, _) = listener.accept().await?;
///     tokio::spawn(handler.serve(stream, local));
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct ConnectionHandler {
    shared: Arc<Shared>,
}

impl fmt::Debug for ConnectionHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandler")
            .field("vhosts", &self.shared.config.vhost_names())
            .field("connections", &*self.shared.connections.borrow())
            .finish()
    }
}

impl ConnectionHandler {
    /// A handler serving `config`, with no listener of its own.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime when `config` has a
    /// [memory watermark](ServerConfig::with_memory_watermark) (its monitor
    /// is a task).
    pub fn new(config: ServerConfig) -> ConnectionHandler {
        ConnectionHandler {
            shared: Shared::start(config),
        }
    }

    /// Serves one client connection over `stream` until either side closes
    /// it: the protocol header, the handshake, then channels, exactly as for
    /// a TCP client.
    ///
    /// The returned future does the work: spawn it (`tokio::spawn`) or await
    /// it. It holds no borrow of the handler. The connection counts in
    /// [`connection_count`](Self::connection_count) from the future's first
    /// poll until it completes.
    ///
    /// `peer_addr` is the client's address. It is used only to apply
    /// [`User::loopback_only`](crate::User::loopback_only) (RabbitMQ's rule
    /// for `guest`): pass a loopback address for a local transport such as
    /// a Unix socket or an in-memory pipe to let such users in, any other
    /// address to keep them out.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the connection without a `connection.close`,
    /// as if the client had vanished: its unacknowledged messages go back to
    /// their queues and its exclusive queues are deleted.
    pub fn serve<S>(
        &self,
        stream: S,
        peer_addr: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = self.shared.clone();
        async move {
            shared.connection_opened();
            let (rd, wr) = tokio::io::split(stream);
            connection::serve(rd, wr, peer_addr, shared).await;
        }
    }

    /// What the handler serves.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// How many client connections are open.
    pub fn connection_count(&self) -> usize {
        *self.shared.connections.borrow()
    }

    /// Waits until exactly `n` client connections are open (for example 0
    /// after clients went away, once the server has requeued their
    /// messages and deleted their exclusive queues).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_connection_count(&self, n: usize) {
        let mut rx = self.shared.connections.subscribe();
        let _ = rx.wait_for(|c| *c == n).await;
    }

    /// How many connections the handler is not reading from right now
    /// because their client does not read the replies it asked for
    /// (RabbitMQ shows such connections in state `flow`): the client meets
    /// back-pressure instead of the server queueing replies for it without
    /// bound.
    pub fn flow_connection_count(&self) -> usize {
        *self.shared.flow.borrow()
    }

    /// Waits until exactly `n` connections are in flow control (see
    /// [`flow_connection_count`](Self::flow_connection_count)).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_flow_connection_count(&self, n: usize) {
        let mut rx = self.shared.flow.subscribe();
        let _ = rx.wait_for(|c| *c == n).await;
    }

    /// Whether the memory alarm is on (publishers are blocked).
    pub fn memory_alarm(&self) -> bool {
        *self.shared.alarm.borrow()
    }

    /// Waits until the memory alarm is `on` (or off).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_memory_alarm(&self, on: bool) {
        let mut rx = self.shared.alarm.subscribe();
        let _ = rx.wait_for(|a| *a == on).await;
    }

    /// Closes every connection with 320 CONNECTION_FORCED (their
    /// unacknowledged messages go back to their queues) and waits, up to
    /// ten seconds, for them to end. Connections served afterwards are
    /// closed the same way as soon as they start. Shuts down the [`Server`]
    /// this handler came from too, if any (it stops accepting).
    ///
    /// # Cancel safety
    ///
    /// Cancelling it leaves the shutdown in progress in the background.
    pub async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.wait_for_connection_count(0)).await;
    }
}

/// An AMQP 0-9-1 server serving warren brokers, running on the current tokio
/// runtime.
///
/// [`Server::bind`] starts it; it accepts connections until
/// [`Server::shutdown`] is called or the `Server` is dropped. The brokers in
/// its [`ServerConfig`] are ordinary [`Broker`](warren_core::Broker)
/// handles: the same process can publish and consume in-process while
/// network clients do the same over AMQP. To serve connections that do not
/// come from its TCP listener, see [`ConnectionHandler`].
///
/// # Examples
///
/// ```no_run
/// use warren_core::Broker;
/// use warren_wire::{Server, ServerConfig};
///
/// # async fn run() -> std::io::Result<()> {
/// let broker = Broker::new();
/// let server = Server::bind("127.0.0.1:5672", ServerConfig::with_broker(broker.clone())).await?;
/// println!("amqp://guest:guest@{}/%2F", server.local_addr());
/// // ... clients connect; `broker` is usable in-process at the same time ...
/// server.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Server {
    local_addr: SocketAddr,
    handler: ConnectionHandler,
    accept: Option<JoinHandle<()>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("vhosts", &self.handler.shared.config.vhost_names())
            .field("connections", &self.connection_count())
            .finish()
    }
}

impl Server {
    /// Listens on `addr` and starts serving `config` on the current tokio
    /// runtime. Use port 0 for an ephemeral port and read it back with
    /// [`local_addr`](Self::local_addr).
    ///
    /// # Errors
    ///
    /// The I/O error of binding the listener.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing runs until it completes.
    pub async fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Shared::start(config);
        let accept = tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            shared.shutdown.clone(),
        ));
        Ok(Server {
            local_addr,
            handler: ConnectionHandler { shared },
            accept: Some(accept),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handler the server gives its TCP connections to: serve other
    /// streams with it ([`ConnectionHandler::serve`]) and they share this
    /// server's brokers, direct reply-to, memory alarm, connection count
    /// and shutdown.
    pub fn handler(&self) -> &ConnectionHandler {
        &self.handler
    }

    /// What the server serves.
    pub fn config(&self) -> &ServerConfig {
        self.handler.config()
    }

    /// How many client connections are open (those served through
    /// [`handler`](Self::handler) included).
    pub fn connection_count(&self) -> usize {
        self.handler.connection_count()
    }

    /// Waits until exactly `n` client connections are open (for example 0
    /// after clients went away, once the server has requeued their
    /// messages and deleted their exclusive queues).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_connection_count(&self, n: usize) {
        self.handler.wait_for_connection_count(n).await;
    }

    /// How many connections the server is not reading from right now
    /// because their client does not read the replies it asked for
    /// (RabbitMQ shows such connections in state `flow`): the client meets
    /// TCP back-pressure instead of the server queueing replies for it
    /// without bound.
    pub fn flow_connection_count(&self) -> usize {
        self.handler.flow_connection_count()
    }

    /// Waits until exactly `n` connections are in flow control (see
    /// [`flow_connection_count`](Self::flow_connection_count)).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_flow_connection_count(&self, n: usize) {
        self.handler.wait_for_flow_connection_count(n).await;
    }

    /// Whether the memory alarm is on (publishers are blocked).
    pub fn memory_alarm(&self) -> bool {
        self.handler.memory_alarm()
    }

    /// Waits until the memory alarm is `on` (or off).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_memory_alarm(&self, on: bool) {
        self.handler.wait_for_memory_alarm(on).await;
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED
    /// (their unacknowledged messages go back to their queues), and waits
    /// for the connections to finish.
    ///
    /// # Cancel safety
    ///
    /// Cancelling it leaves the shutdown in progress in the background.
    pub async fn shutdown(mut self) {
        self.handler.shared.stop.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        // Connections served through the handler are not the accept loop's.
        self.handler.shutdown().await;
    }
}

impl Drop for Server {
    /// Dropping the server shuts it down in the background, as
    /// [`shutdown`](Self::shutdown) does without waiting.
    fn drop(&mut self) {
        self.handler.shared.stop.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    shared.connection_opened();
                    let _ = stream.set_nodelay(true);
                    let (rd, wr) = stream.into_split();
                    tasks.spawn(connection::serve(rd, wr, peer, shared.clone()));
                }
                // Out of file descriptors and the like: pause instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    // Connections see the shutdown themselves and close; those that do not
    // finish in time (a client that stopped reading) are dropped, which
    // still requeues their messages.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.shutdown().await;
}

/// How long [`Server::shutdown`] waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn memory_monitor(
    shared: Weak<Shared>,
    wm: MemoryWatermark,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = wm
        .interval
        .clamp(Duration::from_millis(1), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        let Some(s) = shared.upgrade() else { return };
        let used = match &wm.probe {
            Some(probe) => probe(),
            None => s.estimate_memory(),
        };
        let on = used > wm.high_watermark;
        s.alarm.send_if_modified(|a| {
            let changed = *a != on;
            *a = on;
            changed
        });
    }
}
