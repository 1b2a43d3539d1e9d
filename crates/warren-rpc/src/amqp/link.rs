//! The connection to the broker: made on first use, watched, and made again
//! (to the next host, with backoff) when it is lost.
//!
//! A [`Link`] is one connection and its shared channels; a new one replaces
//! it after a loss, with a higher generation. Operations wait for a usable
//! link within their retry budget ([`Budget`]); consumers (listeners, the
//! reply reader) open their own channel on the current link and open it
//! again on the next one.

use std::collections::HashSet;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPError, AMQPErrorKind};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::config::Config;
use crate::error::TransportError;
use crate::shared::{bump, Stats};
use crate::util::{log_debug, log_warn, IdGen};

/// How long closing the transport may spend on a broker that does not
/// answer.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// How long an operation that failed on a connection waits for news of its
/// loss before it tries that connection again.
const NO_NEWS: Duration = Duration::from_secs(2);

/// What every task of the transport can see of the connection.
#[derive(Clone, Default)]
struct LinkState {
    /// The current connection, while it is up.
    link: Option<Arc<Link>>,
    /// Failed connection attempts so far.
    failures: u64,
    /// Why the last attempt failed.
    last_error: Option<Arc<str>>,
    /// The transport is closed: no more connections.
    closed: bool,
}

/// One connection and its shared channels.
pub(crate) struct Link {
    /// 1 for the first connection, then one more per reconnection.
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// Index of the host it is connected to.
    pub(crate) host: usize,
    /// Publishes, in confirm mode.
    publisher: tokio::sync::Mutex<Option<Channel>>,
    /// Declares and deletes: a refusal (406...) closes this channel, not
    /// the publisher's.
    admin: tokio::sync::Mutex<Option<Channel>>,
    /// Exchanges and queues declared on this connection, not to redo.
    declared: Mutex<HashSet<String>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("generation", &self.generation)
            .field("host", &self.host)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Link {
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    async fn channel(
        &self,
        slot: &tokio::sync::Mutex<Option<Channel>>,
        confirm: bool,
    ) -> lapin::Result<Channel> {
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.status().connected() {
                return Ok(c.clone());
            }
        }
        let c = self.connection.create_channel().await?;
        if confirm {
            c.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The channel for publishing (confirm mode), opened again if closed.
    pub(crate) async fn publisher(&self) -> lapin::Result<Channel> {
        self.channel(&self.publisher, true).await
    }

    /// The channel for declaring and deleting, opened again if closed.
    pub(crate) async fn admin(&self) -> lapin::Result<Channel> {
        self.channel(&self.admin, false).await
    }

    pub(crate) fn is_declared(&self, what: &str) -> bool {
        self.declared.lock().contains(what)
    }

    pub(crate) fn mark_declared(&self, what: &str) {
        self.declared.lock().insert(what.to_owned());
    }

    pub(crate) fn forget_declared(&self, what: &str) {
        self.declared.lock().remove(what);
    }
}

/// How long an operation may wait for the connection: oslo's `retry`, the
/// number of connection failures it tolerates (`None`: any number).
#[derive(Debug)]
pub(crate) struct Budget {
    retry: Option<u32>,
    used: u32,
    /// Connection attempts that had failed when the operation started.
    base_failures: Option<u64>,
    /// Only a link of a later generation will do (the operation failed on
    /// this one).
    after: u64,
}

impl Budget {
    pub(crate) fn new(retry: Option<u32>) -> Budget {
        Budget {
            retry,
            used: 0,
            base_failures: None,
            after: 0,
        }
    }

    /// The operation failed because `link` was lost: the next attempt needs
    /// a newer connection, if retries remain.
    pub(crate) fn lost(&mut self, link: &Link, why: &str) -> Result<(), TransportError> {
        if let Some(n) = self.retry {
            if self.used >= n {
                return Err(TransportError::Connection(format!(
                    "connection lost ({why}); no retry left"
                )));
            }
        }
        self.used += 1;
        self.after = self.after.max(link.generation);
        Ok(())
    }

    fn exhausted(&self, failures: u64) -> bool {
        match (self.retry, self.base_failures) {
            (Some(n), Some(base)) => {
                failures.saturating_sub(base) > u64::from(n.saturating_sub(self.used))
            }
            _ => false,
        }
    }
}

/// Why a broker operation failed.
pub(crate) enum Fault {
    /// The connection is gone.
    Lost(String),
    /// The channel was closed (by an earlier error); the connection is up.
    Channel(String),
    /// The broker refused (404, 406...).
    Broker(warren_core::Error),
    /// Anything else.
    Other(String),
}

impl Fault {
    pub(crate) fn of(link: &Link, e: &lapin::Error) -> Fault {
        match e.kind() {
            ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(_) => match broker_error(amqp) {
                    Some(b) => Fault::Broker(b),
                    None => Fault::Other(e.to_string()),
                },
                AMQPErrorKind::Hard(_) => Fault::Lost(e.to_string()),
            },
            ErrorKind::IOError(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::ParsingError(_)
            | ErrorKind::RuntimeShutdownError(_) => Fault::Lost(e.to_string()),
            _ if !link.is_connected() => Fault::Lost(e.to_string()),
            ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => {
                Fault::Channel(e.to_string())
            }
            _ => Fault::Other(e.to_string()),
        }
    }

    /// The error for the caller, when not retried.
    pub(crate) fn into_error(self) -> TransportError {
        match self {
            Fault::Lost(m) => TransportError::Connection(m),
            Fault::Broker(b) => TransportError::Broker(b),
            Fault::Channel(m) | Fault::Other(m) => TransportError::Protocol(m),
        }
    }
}

/// The warren-core error for a broker refusal with a known reply code; the
/// text without RabbitMQ's `CODE - ` prefix (warren-core puts it back).
pub(crate) fn broker_error(e: &AMQPError) -> Option<warren_core::Error> {
    let text = e.get_message().as_str();
    let text = match text.split_once(" - ") {
        Some((code, rest)) if code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => rest,
        _ => text,
    }
    .to_owned();
    use warren_core::Error as E;
    Some(match e.get_id() {
        403 => E::AccessRefused(text),
        404 => E::NotFound(text),
        405 => E::ResourceLocked(text),
        406 => E::PreconditionFailed(text),
        503 => E::CommandInvalid(text),
        530 => E::NotAllowed(text),
        540 => E::NotImplemented(text),
        _ => return None,
    })
}

/// An exchange to declare before publishing to it.
#[derive(Clone, Debug)]
pub(crate) struct ExchangeDecl {
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
}

/// A message to publish.
pub(crate) struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    /// Declare the exchange first (once per connection, or every time for
    /// an auto-delete exchange, which may have gone since).
    pub(crate) declare: Option<ExchangeDecl>,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    /// Time to live, milliseconds (calls).
    pub(crate) expiration: Option<u128>,
    pub(crate) mandatory: bool,
}

/// What the broker did with a published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Confirmed.
    Routed,
    /// Mandatory and unroutable: returned (then confirmed).
    Returned,
    /// Nacked: a queue refused it.
    Nacked,
}

/// The properties oslo's kombu producer sets: JSON, persistent.
fn properties(expiration: Option<u128>) -> BasicProperties {
    let p = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_content_encoding(ShortString::from("utf-8"))
        .with_headers(FieldTable::default())
        .with_delivery_mode(2)
        .with_priority(0);
    match expiration {
        Some(ms) => p.with_expiration(ShortString::from(ms.to_string())),
        None => p,
    }
}

/// `x-expires`, and `x-queue-type: quorum`, as oslo declares them.
pub(crate) fn queue_arguments(expires_ms: Option<u32>, quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    if quorum {
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
    }
    if let Some(ms) = expires_ms.filter(|ms| *ms > 0) {
        args.insert(ShortString::from("x-expires"), AMQPValue::LongUInt(ms));
    }
    args
}

/// The state shared by the transport, its listeners and responders.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    pub(crate) ids: IdGen,
    state: watch::Sender<LinkState>,
    /// Asks the supervisor to check the connection now.
    nudge: Notify,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// Connections made so far: the last link's generation.
    generations: AtomicU64,
    /// The reply queue, deleted when the transport closes.
    pub(crate) reply_queue: Mutex<Option<String>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("Shared")
            .field("url", &self.config.redacted)
            .field("link", &s.link)
            .field("failures", &s.failures)
            .field("closed", &s.closed)
            .finish()
    }
}

impl Shared {
    pub(crate) fn new(config: Config) -> Shared {
        Shared {
            config,
            stats: Stats::default(),
            ids: IdGen::new(),
            state: watch::Sender::new(LinkState::default()),
            nudge: Notify::new(),
            shutdown: watch::Sender::new(false),
            supervisor: Mutex::new(None),
            generations: AtomicU64::new(0),
            reply_queue: Mutex::new(None),
        }
    }

    /// Whether a connection is up now.
    pub(crate) fn is_connected(&self) -> bool {
        self.state
            .borrow()
            .link
            .as_ref()
            .is_some_and(|l| l.is_connected())
    }

    /// The current link, if connected or not yet known to be lost.
    pub(crate) fn current_link(&self) -> Option<Arc<Link>> {
        self.state.borrow().link.clone()
    }

    /// A receiver that sees `true` once the transport closes.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks the supervisor to look at the connection now (an operation saw
    /// it fail).
    pub(crate) fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Starts the supervisor on the current runtime, unless it runs.
    fn ensure_started(self: &Arc<Self>) -> Result<(), TransportError> {
        let mut sup = self.supervisor.lock();
        if sup.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        if *self.shutdown.borrow() {
            return Err(TransportError::Closed);
        }
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        // A supervisor whose runtime went away left a stale link behind.
        self.state.send_modify(|s| s.link = None);
        *sup = Some(handle.spawn(supervise(self.clone())));
        Ok(())
    }

    /// The current link, waiting for one within `budget`.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] once the transport is closed,
    /// [`TransportError::Connection`] when the budget runs out,
    /// [`TransportError::NoRuntime`] outside a Tokio runtime.
    pub(crate) async fn link(
        self: &Arc<Self>,
        budget: &mut Budget,
    ) -> Result<Arc<Link>, TransportError> {
        self.ensure_started()?;
        let mut rx = self.state.subscribe();
        loop {
            {
                let s = rx.borrow_and_update();
                if s.closed {
                    return Err(TransportError::Closed);
                }
                budget.base_failures.get_or_insert(s.failures);
                if let Some(l) = &s.link {
                    if l.generation > budget.after && l.is_connected() {
                        return Ok(l.clone());
                    }
                    // Lost, and the supervisor may not know yet.
                    self.nudge();
                }
                if budget.exhausted(s.failures) {
                    return Err(TransportError::Connection(
                        s.last_error
                            .as_deref()
                            .unwrap_or("cannot connect to the broker")
                            .to_owned(),
                    ));
                }
            }
            match tokio::time::timeout(NO_NEWS, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(TransportError::Closed),
                // The connection the operation failed on is still up after
                // all: use it again rather than wait for a loss that does
                // not come.
                Err(_) => budget.after = 0,
            }
        }
    }

    /// Runs `op` on a link, again on the next link when the connection is
    /// lost (within `retry`), or on a fresh channel when its channel was
    /// closed under it.
    ///
    /// # Errors
    ///
    /// As [`link`](Self::link), and the op's own failure.
    pub(crate) async fn with_link<T, F, Fut>(
        self: &Arc<Self>,
        retry: Option<u32>,
        mut op: F,
    ) -> Result<T, TransportError>
    where
        F: FnMut(Arc<Link>) -> Fut,
        Fut: std::future::Future<Output = lapin::Result<T>>,
    {
        let mut budget = Budget::new(retry);
        let mut channel_retries = 0;
        loop {
            let link = self.link(&mut budget).await?;
            match op(link.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => match Fault::of(&link, &e) {
                    Fault::Lost(why) => {
                        self.nudge();
                        budget.lost(&link, &why)?;
                    }
                    Fault::Channel(_) if channel_retries < 3 => channel_retries += 1,
                    other => return Err(other.into_error()),
                },
            }
        }
    }

    /// Publishes with confirms; waits for the connection and publishes
    /// again when it was lost (within `retry`).
    ///
    /// # Errors
    ///
    /// As [`with_link`](Self::with_link).
    pub(crate) async fn publish(
        self: &Arc<Self>,
        out: &Outgoing<'_>,
        retry: Option<u32>,
    ) -> Result<Delivered, TransportError> {
        let mut budget = Budget::new(retry);
        let mut channel_retries = 0;
        let mut redeclared = false;
        loop {
            let link = self.link(&mut budget).await?;
            match publish_once(&link, out).await {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {
                    return Ok(Delivered::Routed)
                }
                Ok(Confirmation::Ack(Some(_))) => return Ok(Delivered::Returned),
                Ok(Confirmation::Nack(_)) => return Ok(Delivered::Nacked),
                Err(e) => match Fault::of(&link, &e) {
                    Fault::Lost(why) => {
                        self.nudge();
                        budget.lost(&link, &why)?;
                    }
                    // The exchange went away since we declared it.
                    Fault::Broker(warren_core::Error::NotFound(_))
                        if out.declare.is_some() && !redeclared =>
                    {
                        link.forget_declared(out.exchange);
                        redeclared = true;
                    }
                    Fault::Channel(_) if channel_retries < 3 => channel_retries += 1,
                    other => return Err(other.into_error()),
                },
            }
        }
    }

    /// Closes: no new connection; the reply queue is deleted and the
    /// connection closed (at most a few seconds on a broker that does not
    /// answer); waits until done.
    pub(crate) async fn close(&self) {
        self.shutdown.send_replace(true);
        let handle = self.supervisor.lock().take();
        match handle {
            Some(h) => {
                let _ = tokio::time::timeout(CLOSE_PATIENCE * 2, h).await;
            }
            None => self.state.send_modify(|s| s.closed = true),
        }
    }

    /// Tells the supervisor to close, without waiting.
    pub(crate) fn close_in_background(&self) {
        self.shutdown.send_replace(true);
        if self.supervisor.lock().is_none() {
            self.state.send_modify(|s| s.closed = true);
        }
    }
}

async fn publish_once(link: &Link, out: &Outgoing<'_>) -> lapin::Result<Confirmation> {
    if let Some(d) = &out.declare {
        let cache = !d.auto_delete;
        if !cache || !link.is_declared(out.exchange) {
            let admin = link.admin().await?;
            admin
                .exchange_declare(
                    ShortString::from(out.exchange),
                    d.kind.clone(),
                    ExchangeDeclareOptions {
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            if cache {
                link.mark_declared(out.exchange);
            }
        }
    }
    let ch = link.publisher().await?;
    ch.basic_publish(
        ShortString::from(out.exchange),
        ShortString::from(out.routing_key),
        BasicPublishOptions {
            mandatory: out.mandatory,
            immediate: false,
        },
        out.body,
        properties(out.expiration),
    )
    .await?
    .await
}

/// Connects to host `i` of the list.
async fn connect(config: &Config, i: usize) -> Result<Connection, String> {
    let name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "warren-rpc".to_owned());
    let props = ConnectionProperties::default()
        .with_connection_name(format!("{name}:{} (warren-rpc)", std::process::id()).into());
    let host = &config.hosts[i % config.hosts.len()];
    let attempt = Connection::connect_uri(config.uri(i), props);
    match tokio::time::timeout(config.connection_timeout, attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("{}:{}: {e}", host.host, host.port)),
        Err(_) => Err(format!(
            "{}:{}: no answer within {:?}",
            host.host, host.port, config.connection_timeout
        )),
    }
}

/// Makes the connection, watches it, makes it again when lost, until the
/// transport closes.
async fn supervise(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let config = &shared.config;
    let hosts = config.hosts.len().max(1);
    let mut host = 0usize;
    loop {
        // Connect, trying each host in turn, with backoff.
        let mut delay = config.retry_interval;
        let connection = loop {
            if *shutdown.borrow() {
                return finish(&shared, None).await;
            }
            match connect(config, host).await {
                Ok(c) => break c,
                Err(e) => {
                    log_warn!("AMQP connection failed: {}", e);
                    shared.state.send_modify(|s| {
                        s.failures += 1;
                        s.last_error = Some(Arc::from(e));
                    });
                    host = (host + 1) % hosts;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = closed(&mut shutdown) => {}
                    }
                    delay = (delay + config.retry_backoff).min(config.interval_max);
                }
            }
        };
        let generation = shared.generations.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 {
            bump(&shared.stats.reconnects);
        }
        log_debug!(
            "AMQP connected to host {} (generation {})",
            host,
            generation
        );
        let link = Arc::new(Link {
            generation,
            connection,
            host,
            publisher: tokio::sync::Mutex::new(None),
            admin: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashSet::new()),
        });
        let mut events = Some(Box::pin(link.connection.events_listener()));
        shared.state.send_modify(|s| {
            s.link = Some(link.clone());
            s.last_error = None;
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = closed(&mut shutdown) => return finish(&shared, Some(link)).await,
                event = next_event(&mut events) => {
                    if event.is_none() {
                        events = None;
                    }
                }
                _ = shared.nudge.notified() => {}
                _ = tick.tick() => {}
            }
            if !link.is_connected() {
                break;
            }
        }
        log_warn!("AMQP connection to host {} lost; reconnecting", host);
        shared.state.send_modify(|s| s.link = None);
        drop(link);
        host = (host + 1) % hosts;
    }
}

/// Resolves once the transport closes.
async fn closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|closed| *closed).await;
}

async fn next_event<S: Stream + ?Sized>(events: &mut Option<Pin<Box<S>>>) -> Option<S::Item> {
    match events {
        Some(s) => poll_fn(|cx| s.as_mut().poll_next(cx)).await,
        None => std::future::pending().await,
    }
}

/// The transport closes: delete the reply queue, close the connection.
async fn finish(shared: &Shared, link: Option<Arc<Link>>) {
    shared.state.send_modify(|s| {
        s.closed = true;
        s.link = None;
    });
    let Some(link) = link else { return };
    if !link.is_connected() {
        return;
    }
    let reply_queue = shared.reply_queue.lock().take();
    let work = async {
        if let Some(q) = reply_queue {
            if let Ok(ch) = link.admin().await {
                let _ = ch
                    .queue_delete(ShortString::from(q), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = link
            .connection
            .close(200, ShortString::from("transport closed"))
            .await;
    };
    let _ = tokio::time::timeout(CLOSE_PATIENCE, work).await;
}
