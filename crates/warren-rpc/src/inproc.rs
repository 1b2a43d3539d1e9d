//! The `inproc://` transport (see [`InprocTransport`]).

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::Poll;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;
use warren_core::{
    BasicProperties, Broker, ConsumeOptions, Consumer, Delivery, Error as CoreError,
    ExchangeDeclareOptions, ExchangeKind, FieldTable, PublishError, QueueDeclareOptions,
    QueueDeleteOptions, Recv, SharedProperties,
};

use crate::context::Context;
use crate::error::TransportError;
use crate::notify::Priority;
use crate::shared::{
    bump, call_monitor_timeout, complete_reply, expect_reply, request_route, Pending, PendingGuard,
    ReplyWait, RequestRoute, SeenIds, SeenKey, Stats,
};
use crate::target::Target;
use crate::transport::{
    Acknowledger, BoxFuture, IncomingCall, IncomingNotification, ListenOptions, Listener, Reply,
    Responder, SendOptions, Transport, TransportStats,
};
use crate::util::{finished, log_debug, log_warn, random_hex, IdGen, SmallStr};
use crate::wire::{
    encode_answer, encode_heartbeat, encode_request, read_request, RequestFields, RpcMessage,
    WireError, WireNotification, Wrap,
};

const DEFAULT_EXCHANGE: &str = "openstack";

/// The process-wide registry behind `inproc://name` URLs: weak, so a named
/// broker lives while some transport of that name does.
fn registry() -> &'static Mutex<HashMap<String, Weak<NamedBroker>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<NamedBroker>>>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

#[derive(Debug)]
struct NamedBroker {
    broker: Broker,
}

#[derive(Debug)]
struct ReplyState {
    queue: Arc<str>,
    pending: Arc<Pending>,
    task: JoinHandle<()>,
}

/// The `inproc://` transport: RPC and notifications over a warren-core
/// [`Broker`] in this process.
///
/// Build it around a broker handle ([`new`](Self::new)) or by name from the
/// process-wide registry ([`named`](Self::named), or
/// [`transport_from_url`](crate::transport_from_url) with `inproc://name`),
/// so that tests and services in one process share a broker without passing
/// it around. Each transport has its own reply queue.
///
/// The layout is oslo's rabbit driver's, on the in-process broker:
///
/// | what | exchange (kind) | queue | routing key |
/// |------|-----------------|-------|-------------|
/// | call / cast to any server | `Target.exchange`, default `openstack` (topic) | `topic` (shared: a work queue) | `topic` |
/// | call / cast to one server | the same | `topic.server` | `topic.server` |
/// | fanout cast | `topic_fanout` (fanout) | `topic_fanout_<unique>`, one per server | — |
/// | reply | `""` (default) | `reply_<uuid>`, one per transport | the queue's name |
/// | notification | control exchange (topic) | `topic.priority`, or the pool's name | `topic.priority` |
///
/// Replies come back on one reply queue per transport, read by one task that
/// matches each reply to its waiting call by `_msg_id` in a map of pending
/// calls: a reply for a call that gave up finds no entry and is dropped.
///
/// Needs a Tokio runtime for calls (a task reads the replies).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use warren_core::Broker;
/// use warren_rpc::{InprocTransport, Transport};
///
/// let broker = Broker::new();
/// let transport: Arc<dyn Transport> = Arc::new(InprocTransport::new(broker.clone()));
/// assert_eq!(transport.default_exchange(), "openstack");
/// ```
#[derive(Debug)]
pub struct InprocTransport {
    broker: Broker,
    url: String,
    default_exchange: String,
    _named: Option<Arc<NamedBroker>>,
    ids: Arc<IdGen>,
    stats: Arc<Stats>,
    /// The exchanges (and notification queues) declared: looked up for
    /// every message sent, with foldhash (seeded) rather than SipHash.
    declared: RwLock<HashSet<String, foldhash::fast::RandomState>>,
    replies: Mutex<Option<ReplyState>>,
    /// The properties of the last call's request, by its `expiration` in
    /// milliseconds: a client's calls mostly share one timeout, so they
    /// share one set of properties.
    call_properties: Mutex<Option<(u128, SharedProperties)>>,
    /// How this transport's requests, replies and notifications are laid
    /// out (see [`with_envelope`](Self::with_envelope)).
    wrap: Wrap,
}

impl InprocTransport {
    /// A transport over this broker handle.
    pub fn new(broker: Broker) -> InprocTransport {
        InprocTransport::build(broker, "inproc://".to_owned(), None)
    }

    /// A transport over the process-wide broker called `name`, created on
    /// first use. The broker lives while some transport of that name does;
    /// after the last one is dropped, the name starts afresh.
    pub fn named(name: &str) -> InprocTransport {
        let entry = {
            let mut reg = registry().lock();
            match reg.get(name).and_then(Weak::upgrade) {
                Some(e) => e,
                None => {
                    reg.retain(|_, w| w.strong_count() > 0);
                    let e = Arc::new(NamedBroker {
                        broker: Broker::new(),
                    });
                    reg.insert(name.to_owned(), Arc::downgrade(&e));
                    e
                }
            }
        };
        InprocTransport::build(
            entry.broker.clone(),
            format!("inproc://{name}"),
            Some(entry),
        )
    }

    /// A transport from an `inproc://name` URL (see [`named`](Self::named)).
    ///
    /// # Errors
    ///
    /// [`TransportError::UnsupportedScheme`] for another scheme,
    /// [`TransportError::InvalidUrl`] for a URL without `://`.
    pub fn from_url(url: &str) -> Result<InprocTransport, TransportError> {
        let invalid = || TransportError::InvalidUrl(url.to_owned());
        match url.split_once("://") {
            Some(("inproc", rest)) => {
                let (name, query) = rest.split_once('?').unwrap_or((rest, ""));
                let mut envelope = true;
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    envelope = match pair.split_once('=') {
                        Some(("envelope", "true" | "1")) => true,
                        Some(("envelope", "false" | "0")) => false,
                        _ => return Err(invalid()),
                    };
                }
                Ok(InprocTransport::named(name).with_envelope(envelope))
            }
            Some((scheme, _)) => Err(TransportError::UnsupportedScheme(scheme.to_owned())),
            None => Err(invalid()),
        }
    }

    fn build(broker: Broker, url: String, named: Option<Arc<NamedBroker>>) -> InprocTransport {
        InprocTransport {
            broker,
            url,
            default_exchange: DEFAULT_EXCHANGE.to_owned(),
            _named: named,
            ids: Arc::new(IdGen::new()),
            stats: Arc::new(Stats::default()),
            declared: RwLock::new(HashSet::default()),
            replies: Mutex::new(None),
            call_properties: Mutex::new(None),
            wrap: Wrap::Envelope,
        }
    }

    /// Whether the bodies this transport sends are wrapped in oslo's
    /// envelope (`{"oslo.version": "2.0", "oslo.message": "<the message as
    /// a JSON string>"}`, the default, exactly what oslo.messaging sends) or
    /// are the bare message (oslo's format 1.0).
    ///
    /// Bare bodies skip the escaping on the way out and the unwrapping on
    /// the way in: an in-process call costs about 15 % less CPU. They are
    /// still oslo's: every reader here takes both, and so does
    /// oslo.messaging's `deserialize_msg`, so a Python service reading the
    /// same broker through warren-wire understands them. Keep the default
    /// if something else reads the broker's raw messages and expects the
    /// envelope.
    ///
    /// `inproc://name?envelope=false` sets it from a URL.
    pub fn with_envelope(mut self, envelope: bool) -> InprocTransport {
        self.wrap = if envelope { Wrap::Envelope } else { Wrap::Bare };
        self
    }

    /// Sets the control exchange used when a target names none (oslo's
    /// `control_exchange`, default `openstack`).
    pub fn with_default_exchange(mut self, exchange: impl Into<String>) -> InprocTransport {
        self.default_exchange = exchange.into();
        self
    }

    /// The broker: to look at queues and messages in tests.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The name of this transport's reply queue, once a call made it.
    pub fn reply_queue(&self) -> Option<String> {
        self.replies.lock().as_ref().map(|r| r.queue.to_string())
    }

    fn exchange_for<'a>(&'a self, target: &'a Target) -> &'a str {
        target.exchange.as_deref().unwrap_or(&self.default_exchange)
    }

    /// Declares an exchange once per transport.
    fn ensure_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), TransportError> {
        if self.declared.read().contains(name) {
            return Ok(());
        }
        self.broker
            .declare_exchange(name, kind, ExchangeDeclareOptions::default())?;
        self.declared.write().insert(name.to_owned());
        Ok(())
    }

    fn forget_exchange(&self, name: &str) {
        self.declared.write().remove(name);
    }

    /// Declares a queue and binds it (idempotent).
    fn ensure_queue(&self, queue: &str, exchange: &str, key: &str) -> Result<(), TransportError> {
        self.broker
            .declare_queue(queue, QueueDeclareOptions::default())?;
        self.broker
            .bind_queue(queue, exchange, key, &FieldTable::default())?;
        Ok(())
    }

    /// The properties of a call's request that lives no longer than
    /// `timeout` (as oslo's), shared with the previous call's if the same.
    fn call_properties(&self, timeout: Duration) -> SharedProperties {
        let ms = timeout.as_millis().max(1);
        let mut last = self.call_properties.lock();
        match &*last {
            Some((at, p)) if *at == ms => p.clone(),
            _ => {
                let p = SharedProperties::new(json_properties().with_expiration(ms.to_string()));
                *last = Some((ms, p.clone()));
                p
            }
        }
    }

    /// Publishes; re-declares the exchange once if it went away.
    fn publish(
        &self,
        exchange: &str,
        kind: ExchangeKind,
        routing_key: &str,
        (properties, body): (&SharedProperties, Vec<u8>),
        mandatory: bool,
    ) -> Result<(), TransportError> {
        let published = match self
            .broker
            .publish_shared(exchange, routing_key, properties, body)
        {
            Err(e @ PublishError::Refused { .. })
                if matches!(e.error(), Some(CoreError::NotFound(_))) =>
            {
                self.forget_exchange(exchange);
                self.ensure_exchange(exchange, kind)?;
                self.broker.publish(exchange, routing_key, e.into_message())
            }
            other => other,
        };
        let published = published.map_err(|e| match e {
            PublishError::Refused { error, .. } => TransportError::Broker(error),
            PublishError::Full(_) => TransportError::Rejected {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            },
        })?;
        if mandatory && published.is_unroutable() {
            return Err(TransportError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        if mandatory && published.is_rejected() {
            return Err(TransportError::Rejected {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            });
        }
        Ok(())
    }

    /// Sends a request ([`Transport::send`] up to its wait): a cast, or a
    /// call registered in the pending calls first, which returns them with
    /// its key and its wait (the registration is the caller's to undo if it
    /// stops waiting).
    fn request(
        &self,
        target: &Target,
        ctx: &Context,
        message: &RpcMessage,
        options: &SendOptions,
    ) -> Result<Option<(Arc<Pending>, u64, ReplyWait)>, TransportError> {
        let route = request_route(target);
        let (exchange, kind, routing_key) = match &route {
            RequestRoute::Fanout(x) => (x.as_str(), ExchangeKind::Fanout, ""),
            RequestRoute::Topic(k) => (self.exchange_for(target), ExchangeKind::Topic, k.as_str()),
        };
        self.ensure_exchange(exchange, kind)?;
        let (_, unique_id) = self.ids.next();
        bump(&self.stats.requests_sent);
        let monitor = options.call_monitor_timeout.map(|d| d.as_secs_f64());
        if !options.wait_for_reply {
            let body = encode_request(
                message,
                ctx,
                &RequestFields::cast(unique_id.text()),
                self.wrap,
            )
            .map_err(|e| TransportError::Encode(e.to_string()))?;
            self.publish(
                exchange,
                kind,
                routing_key,
                json_message(body),
                options.mandatory,
            )?;
            return Ok(None);
        }
        let (reply_q, pending) = self.replies()?;
        let (key, msg_id) = self.ids.next();
        // Undoes the registration if the request is not sent.
        let (mut guard, wait) = expect_reply(&pending, key, options.call_monitor_timeout);
        let body = encode_request(
            message,
            ctx,
            &RequestFields {
                msg_id: Some(msg_id.text()),
                reply_q: Some(&reply_q),
                unique_id: Some(unique_id.text()),
                timeout: monitor,
                call: true,
            },
            self.wrap,
        )
        .map_err(|e| TransportError::Encode(e.to_string()))?;
        // As oslo: a call's request lives no longer than its timeout.
        let timed = options.timeout.map(|t| self.call_properties(t));
        let msg = match &timed {
            Some(properties) => (properties, body),
            None => json_message(body),
        };
        self.publish(exchange, kind, routing_key, msg, options.mandatory)?;
        guard.armed = false;
        drop(guard);
        Ok(Some((pending, key, wait)))
    }

    /// The reply queue and its reader, made on first use (and again if the
    /// reader's runtime went away).
    fn replies(&self) -> Result<(Arc<str>, Arc<Pending>), TransportError> {
        let mut guard = self.replies.lock();
        if let Some(r) = guard.as_ref() {
            if !r.task.is_finished() {
                return Ok((r.queue.clone(), r.pending.clone()));
            }
        }
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let queue: Arc<str> = match guard.take() {
            Some(old) => old.queue,
            None => Arc::from(format!("reply_{}", random_hex())),
        };
        self.broker
            .declare_queue(&queue, QueueDeclareOptions::default())?;
        let consumer = self.broker.consume(
            &queue,
            ConsumeOptions {
                no_ack: true,
                ..ConsumeOptions::default()
            },
        )?;
        let pending: Arc<Pending> = Arc::new(Mutex::new(HashMap::default()));
        let task = handle.spawn(read_replies(
            consumer,
            pending.clone(),
            self.ids.clone(),
            self.stats.clone(),
        ));
        *guard = Some(ReplyState {
            queue: queue.clone(),
            pending: pending.clone(),
            task,
        });
        Ok((queue, pending))
    }
}

impl Drop for InprocTransport {
    fn drop(&mut self) {
        if let Some(r) = self.replies.get_mut().take() {
            r.task.abort();
            let _ = self
                .broker
                .delete_queue(&r.queue, QueueDeleteOptions::default());
        }
    }
}

/// Reads the reply queue: each reply completes the call waiting for its
/// `_msg_id`, or is dropped.
async fn read_replies(
    consumer: Consumer,
    pending: Arc<Pending>,
    ids: Arc<IdGen>,
    stats: Arc<Stats>,
) {
    while let Ok(delivery) = consumer.recv_async().await {
        complete_reply(delivery.body(), &pending, &ids, &stats);
    }
}

/// The properties of a JSON body, typed as oslo's kombu producer types it
/// (`application/json`, `utf-8`): a Python service reading the broker
/// through warren-wire decodes it by its content type, and takes an untyped
/// body for opaque bytes.
fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json")
        .with_content_encoding("utf-8")
}

/// A JSON body with [`json_properties`], built once and shared by every
/// message (see [`SharedProperties`]).
fn json_message(body: Vec<u8>) -> (&'static SharedProperties, Vec<u8>) {
    static JSON: OnceLock<SharedProperties> = OnceLock::new();
    (JSON.get_or_init(|| json_properties().into()), body)
}

impl Transport for InprocTransport {
    fn url(&self) -> &str {
        &self.url
    }

    fn default_exchange(&self) -> &str {
        &self.default_exchange
    }

    fn send<'a>(
        &'a self,
        target: &'a Target,
        ctx: &'a Context,
        message: RpcMessage,
        options: SendOptions,
    ) -> BoxFuture<'a, Result<Option<Reply>, TransportError>> {
        Box::pin(async move {
            // All but the wait is done in `request`, whose locals then take
            // no room in this future (boxed for each call).
            let Some((pending, key, wait)) = self.request(target, ctx, &message, &options)? else {
                return Ok(None);
            };
            let mut guard = PendingGuard {
                pending: &pending,
                key,
                armed: true,
            };
            let reply = wait.wait().await?;
            guard.armed = false;
            Ok(Some(reply))
        })
    }

    fn send_notification<'a>(
        &'a self,
        exchange: Option<&'a str>,
        topic: &'a str,
        priority: Priority,
        message: WireNotification,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            let exchange = exchange.unwrap_or(&self.default_exchange);
            let key = format!("{topic}.{}", priority.as_str());
            self.ensure_exchange(exchange, ExchangeKind::Topic)?;
            // As oslo's notify_send: declare the default queue named like the
            // routing key, so notifications wait for a listener to come.
            let marker = format!("queue\0{exchange}\0{key}");
            if !self.declared.read().contains(&marker) {
                self.ensure_queue(&key, exchange, &key)?;
                self.declared.write().insert(marker);
            }
            let body = message
                .encode_as(self.wrap)
                .map_err(|e| TransportError::Encode(e.to_string()))?;
            bump(&self.stats.notifications_sent);
            match self.publish(
                exchange,
                ExchangeKind::Topic,
                &key,
                json_message(body.clone()),
                true,
            ) {
                Err(TransportError::Unroutable { .. }) => {
                    // Someone deleted the default queue: declare it again.
                    self.ensure_queue(&key, exchange, &key)?;
                    self.publish(
                        exchange,
                        ExchangeKind::Topic,
                        &key,
                        json_message(body),
                        false,
                    )
                }
                other => other,
            }
        })
    }

    fn listen<'a>(
        &'a self,
        target: &'a Target,
        options: ListenOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Listener<IncomingCall>>, TransportError>> {
        Box::pin(async move {
            let exchange = self.exchange_for(target);
            let topic = target.topic.as_str();
            self.ensure_exchange(exchange, ExchangeKind::Topic)?;
            let mut queues = vec![topic.to_owned()];
            self.ensure_queue(topic, exchange, topic)?;
            if let Some(server) = &target.server {
                let q = format!("{topic}.{server}");
                self.ensure_queue(&q, exchange, &q)?;
                queues.push(q);
            }
            let fanout_x = format!("{topic}_fanout");
            self.ensure_exchange(&fanout_x, ExchangeKind::Fanout)?;
            let fanout_q = format!("{topic}_fanout_{}", random_hex());
            self.ensure_queue(&fanout_q, &fanout_x, topic)?;
            queues.push(fanout_q.clone());
            let mut consumers = Vec::with_capacity(queues.len());
            for q in &queues {
                let c = self.broker.consume(
                    q,
                    ConsumeOptions {
                        no_ack: true,
                        prefetch: options.prefetch,
                        ..ConsumeOptions::default()
                    },
                );
                match c {
                    Ok(c) => consumers.push(c),
                    Err(e) => {
                        drop(consumers);
                        let _ = self
                            .broker
                            .delete_queue(&fanout_q, QueueDeleteOptions::default());
                        return Err(e.into());
                    }
                }
            }
            Ok(Box::new(RpcListener {
                consumers,
                next: 0,
                broker: self.broker.clone(),
                fanout_queue: fanout_q,
                ids: self.ids.clone(),
                stats: self.stats.clone(),
                seen: SeenIds::for_prefetch(options.prefetch),
                wrap: self.wrap,
                last_reply_q: None,
            }) as Box<dyn Listener<IncomingCall>>)
        })
    }

    fn listen_for_notifications<'a>(
        &'a self,
        targets_and_priorities: &'a [(Target, Priority)],
        pool: Option<&'a str>,
        options: ListenOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Listener<IncomingNotification>>, TransportError>> {
        Box::pin(async move {
            let mut queues: Vec<String> = Vec::new();
            for (target, priority) in targets_and_priorities {
                let exchange = self.exchange_for(target);
                self.ensure_exchange(exchange, ExchangeKind::Topic)?;
                let key = format!("{}.{}", target.topic, priority.as_str());
                let queue = pool.map_or_else(|| key.clone(), str::to_owned);
                self.ensure_queue(&queue, exchange, &key)?;
                if !queues.contains(&queue) {
                    queues.push(queue);
                }
            }
            let mut consumers = Vec::with_capacity(queues.len());
            for q in &queues {
                consumers.push(self.broker.consume(
                    q,
                    ConsumeOptions {
                        prefetch: options.prefetch,
                        ..ConsumeOptions::default()
                    },
                )?);
            }
            Ok(Box::new(NotificationListener {
                consumers,
                next: 0,
                stats: self.stats.clone(),
                seen: Arc::new(Mutex::new(SeenIds::for_prefetch(options.prefetch))),
            }) as Box<dyn Listener<IncomingNotification>>)
        })
    }

    fn stats(&self) -> TransportStats {
        self.stats.snapshot()
    }
}

/// Waits for a delivery on any of the consumers, starting the scan at a
/// rotating position so that no queue starves the others.
async fn recv_any(consumers: &[Consumer], next: &mut usize) -> Result<Delivery, TransportError> {
    match consumers {
        [] => Err(TransportError::Closed),
        [one] => one.recv_async().await.map_err(|_| TransportError::Closed),
        [a, b] => recv_among([a.recv_async(), b.recv_async()], next).await,
        [a, b, c] => recv_among([a.recv_async(), b.recv_async(), c.recv_async()], next).await,
        _ => {
            recv_among(
                consumers
                    .iter()
                    .map(Consumer::recv_async)
                    .collect::<Vec<_>>(),
                next,
            )
            .await
        }
    }
}

async fn recv_among<'a, F>(mut futures: F, next: &mut usize) -> Result<Delivery, TransportError>
where
    F: AsMut<[Recv<'a>]>,
{
    let n = futures.as_mut().len();
    let start = *next % n;
    *next = next.wrapping_add(1);
    poll_fn(|cx| {
        let futures = futures.as_mut();
        let mut closed = 0;
        for i in 0..n {
            match Pin::new(&mut futures[(start + i) % n]).poll(cx) {
                Poll::Ready(Ok(d)) => return Poll::Ready(Ok(d)),
                Poll::Ready(Err(_)) => closed += 1,
                Poll::Pending => {}
            }
        }
        if closed == n {
            Poll::Ready(Err(TransportError::Closed))
        } else {
            Poll::Pending
        }
    })
    .await
}

use std::future::Future as _;

/// A server's listener: queues `topic`, `topic.server` and its fanout queue.
#[derive(Debug)]
struct RpcListener {
    consumers: Vec<Consumer>,
    next: usize,
    broker: Broker,
    fanout_queue: String,
    ids: Arc<IdGen>,
    stats: Arc<Stats>,
    /// The `_unique_id`s of the requests taken last (oslo's `_MsgIdCache`).
    seen: SeenIds,
    /// How replies are laid out: as the transport's requests.
    wrap: Wrap,
    /// The reply queue the last call named (see `reply_queue`).
    last_reply_q: Option<Arc<str>>,
}

impl RpcListener {
    /// The reply queue `name` as a responder keeps it: shared with the
    /// previous request's when the same (a client's calls all name its one
    /// reply queue), so that most requests copy no name.
    fn reply_queue(&mut self, name: &str) -> Arc<str> {
        match &self.last_reply_q {
            Some(q) if **q == *name => q.clone(),
            _ => {
                let q: Arc<str> = Arc::from(name);
                self.last_reply_q = Some(q.clone());
                q
            }
        }
    }
}

impl Listener<IncomingCall> for RpcListener {
    fn recv(&mut self) -> BoxFuture<'_, Result<IncomingCall, TransportError>> {
        Box::pin(async move {
            loop {
                let delivery = recv_any(&self.consumers, &mut self.next).await?;
                // `None`: a duplicate.
                let read = read_request(delivery.body(), |request| {
                    // As oslo's RPC listener: an id seen before is a
                    // duplicate, dropped; a new one is remembered as it is
                    // taken.
                    if let Some(key) = SeenKey::of(request.unique_id.as_deref()) {
                        if !self.seen.insert(key) {
                            return None;
                        }
                    }
                    let responder = match (request.msg_id, request.reply_q) {
                        (Some(msg_id), Some(reply_q)) => Some(Box::new(InprocResponder {
                            broker: self.broker.clone(),
                            reply_q: self.reply_queue(&reply_q),
                            msg_id: SmallStr::from(&*msg_id),
                            ids: self.ids.clone(),
                            stats: self.stats.clone(),
                            wrap: self.wrap,
                        })
                            as Box<dyn Responder>),
                        _ => None,
                    };
                    Some(IncomingCall {
                        ctx: request.ctx,
                        message: request.message,
                        responder,
                        call_monitor_timeout: call_monitor_timeout(request.timeout),
                    })
                });
                match read {
                    Ok(Some(call)) => return Ok(call),
                    Ok(None) => {
                        bump(&self.stats.duplicates);
                        log_debug!("dropping a duplicate request on {}", delivery.queue());
                    }
                    Err(e) => {
                        bump(&self.stats.malformed);
                        log_warn!(
                            "dropping a malformed request on {}: {}",
                            delivery.queue(),
                            e
                        );
                    }
                }
            }
        })
    }
}

impl Drop for RpcListener {
    fn drop(&mut self) {
        // Cancel first, so undelivered messages of the shared queues go back
        // to them for other servers; then the fanout queue goes.
        self.consumers.clear();
        let _ = self
            .broker
            .delete_queue(&self.fanout_queue, QueueDeleteOptions::default());
    }
}

#[derive(Debug)]
struct InprocResponder {
    broker: Broker,
    reply_q: Arc<str>,
    /// Inline when it is 32 hex digits (any id oslo or this crate makes).
    msg_id: SmallStr<32>,
    ids: Arc<IdGen>,
    stats: Arc<Stats>,
    wrap: Wrap,
}

impl InprocResponder {
    /// Publishes a reply body to the reply queue; `false` if the queue is
    /// gone.
    fn send(&self, body: Result<Vec<u8>, WireError>) -> Result<bool, TransportError> {
        let body = body.map_err(|e| TransportError::Encode(e.to_string()))?;
        let (properties, body) = json_message(body);
        match self
            .broker
            .publish_shared("", &self.reply_q, properties, body)
        {
            Ok(p) => Ok(!p.is_unroutable()),
            Err(e) => Err(TransportError::Broker(e.error().cloned().unwrap_or_else(
                || CoreError::PreconditionFailed("queue full".into()),
            ))),
        }
    }
}

impl Responder for InprocResponder {
    fn reply(self: Box<Self>, reply: Reply) -> BoxFuture<'static, Result<(), TransportError>> {
        let (_, unique_id) = self.ids.next();
        let body = encode_answer(&reply, self.msg_id.text(), unique_id.text(), self.wrap);
        let result = self.send(body).map(|routed| {
            if !routed {
                bump(&self.stats.undeliverable_replies);
                log_debug!("reply queue {} is gone; reply dropped", self.reply_q);
            }
        });
        finished(result)
    }

    fn heartbeat(&self) -> BoxFuture<'static, Result<(), TransportError>> {
        let (_, unique_id) = self.ids.next();
        let body = encode_heartbeat(self.msg_id.text(), unique_id.text(), self.wrap);
        let result = match self.send(body) {
            Ok(true) => Ok(()),
            Ok(false) => Err(TransportError::Unroutable {
                exchange: String::new(),
                routing_key: self.reply_q.to_string(),
            }),
            Err(e) => Err(e),
        };
        finished(result)
    }
}

/// A notification listener: one consumer per queue.
#[derive(Debug)]
struct NotificationListener {
    consumers: Vec<Consumer>,
    next: usize,
    stats: Arc<Stats>,
    /// The `_unique_id`s of the notifications handled last (acknowledged,
    /// not requeued): oslo's `_MsgIdCache`.
    seen: Arc<Mutex<SeenIds>>,
}

impl Listener<IncomingNotification> for NotificationListener {
    fn recv(&mut self) -> BoxFuture<'_, Result<IncomingNotification, TransportError>> {
        Box::pin(async move {
            loop {
                let delivery = recv_any(&self.consumers, &mut self.next).await?;
                match WireNotification::decode(delivery.body()) {
                    Ok(message) => {
                        let key = SeenKey::of(message.unique_id.as_deref());
                        if key.as_ref().is_some_and(|k| self.seen.lock().contains(k)) {
                            // Handled already (its acknowledgement was lost):
                            // acknowledged now, not handled again.
                            bump(&self.stats.duplicates);
                            log_debug!("dropping a duplicate notification");
                            delivery.ack();
                            continue;
                        }
                        return Ok(IncomingNotification {
                            message,
                            acknowledger: Box::new(InprocAck {
                                delivery,
                                remember: key.map(|k| (self.seen.clone(), k)),
                            }),
                        });
                    }
                    Err(e) => {
                        bump(&self.stats.malformed);
                        log_warn!("dropping a malformed notification: {}", e);
                        delivery.ack();
                    }
                }
            }
        })
    }
}

#[derive(Debug)]
struct InprocAck {
    delivery: Delivery,
    /// Where its `_unique_id` goes once acknowledged.
    remember: Option<(Arc<Mutex<SeenIds>>, SeenKey)>,
}

impl Acknowledger for InprocAck {
    fn settle(self: Box<Self>, requeue: bool) -> BoxFuture<'static, Result<(), TransportError>> {
        let InprocAck { delivery, remember } = *self;
        if requeue {
            delivery.nack(true);
        } else {
            // As oslo: remembered once acknowledged; a requeued one is
            // meant to come back.
            if let Some((seen, key)) = remember {
                seen.lock().insert(key);
            }
            delivery.ack();
        }
        finished(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_shares_and_forgets() {
        let a = InprocTransport::named("unit-registry");
        let b = InprocTransport::named("unit-registry");
        a.broker()
            .declare_queue("probe", QueueDeclareOptions::default())
            .unwrap();
        assert!(b.broker().has_queue("probe"));
        drop((a, b));
        let c = InprocTransport::named("unit-registry");
        assert!(!c.broker().has_queue("probe"));
        assert_eq!(c.url(), "inproc://unit-registry");
    }

    #[test]
    fn urls() {
        assert!(InprocTransport::from_url("inproc://x").is_ok());
        assert!(matches!(
            InprocTransport::from_url("amqp://x"),
            Err(TransportError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            InprocTransport::from_url("nope"),
            Err(TransportError::InvalidUrl(_))
        ));
        let t = InprocTransport::from_url("inproc://urls-test?envelope=false").unwrap();
        assert_eq!(t.wrap, Wrap::Bare);
        // the query is not part of the name: the same broker
        let u = InprocTransport::from_url("inproc://urls-test").unwrap();
        assert_eq!(u.wrap, Wrap::Envelope);
        u.broker().declare_queue("q", Default::default()).unwrap();
        assert!(t.broker().has_queue("q"));
        for bad in [
            "inproc://x?envelope=no",
            "inproc://x?other=1",
            "inproc://x?envelope",
        ] {
            assert!(
                matches!(
                    InprocTransport::from_url(bad),
                    Err(TransportError::InvalidUrl(_))
                ),
                "{bad}"
            );
        }
    }
}
