//! Consuming: a [`Subscription`] declares its queues, consumes them on its
//! own channel and does it again after a reconnection; the RPC and
//! notification listeners, the responder and the acknowledger on top.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_core::Stream;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Channel, Consumer, ExchangeKind};
use tokio::sync::{mpsc, oneshot, watch};

use super::link::{Budget, Delivered, Fault, Link, Outgoing, Shared};
use crate::error::TransportError;
use crate::shared::{bump, call_monitor_timeout, complete_reply, Pending, SeenIds, SeenKey};
use crate::transport::{
    Acknowledger, BoxFuture, IncomingCall, IncomingNotification, Listener, Reply, Responder,
};
use crate::util::{log_debug, log_warn, random_hex};
use crate::wire::{encode_answer, encode_heartbeat, WireNotification, WireRequest, Wrap};

/// How long a reply may wait for the connection to come back before it is
/// given up (oslo's `kombu_missing_consumer_retry_timeout`).
const REPLY_PATIENCE: Duration = Duration::from_secs(60);

/// An exchange a subscription declares.
#[derive(Clone, Debug)]
pub(crate) struct ExchangeSpec {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
}

/// A queue a subscription declares, binds and consumes.
#[derive(Clone, Debug)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
    /// (exchange, routing key)
    pub(crate) bindings: Vec<(String, String)>,
}

/// What a subscription declares and consumes.
#[derive(Clone, Debug)]
pub(crate) struct Topology {
    pub(crate) exchanges: Vec<ExchangeSpec>,
    pub(crate) queues: Vec<QueueSpec>,
    /// Deleted when the subscription closes (a server's fanout queue).
    pub(crate) delete_on_close: Vec<String>,
    /// Unacknowledged deliveries per consumer (0: no limit).
    pub(crate) prefetch: u16,
    pub(crate) no_ack: bool,
}

/// Where a subscription's deliveries go.
pub(crate) enum Sink {
    /// To a listener.
    Listener(mpsc::UnboundedSender<Delivery>),
    /// Replies, completing the calls that wait for them.
    Replies(Arc<Pending>),
}

struct Opened {
    channel: Channel,
    consumers: Vec<Consumer>,
}

/// Declares the topology and consumes its queues on a new channel.
async fn open(link: Arc<Link>, t: &Topology) -> lapin::Result<Opened> {
    let ch = link.connection.create_channel().await?;
    if t.prefetch > 0 {
        ch.basic_qos(t.prefetch, BasicQosOptions::default()).await?;
    }
    for x in &t.exchanges {
        ch.exchange_declare(
            ShortString::from(x.name.as_str()),
            x.kind.clone(),
            ExchangeDeclareOptions {
                durable: x.durable,
                auto_delete: x.auto_delete,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    for q in &t.queues {
        ch.queue_declare(
            ShortString::from(q.name.as_str()),
            QueueDeclareOptions {
                durable: q.durable,
                auto_delete: q.auto_delete,
                ..QueueDeclareOptions::default()
            },
            q.arguments.clone(),
        )
        .await?;
        for (exchange, key) in &q.bindings {
            ch.queue_bind(
                ShortString::from(q.name.as_str()),
                ShortString::from(exchange.as_str()),
                ShortString::from(key.as_str()),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let mut consumers = Vec::with_capacity(t.queues.len());
    for q in &t.queues {
        consumers.push(
            ch.basic_consume(
                ShortString::from(q.name.as_str()),
                ShortString::from(format!("warren-rpc-{}", random_hex())),
                BasicConsumeOptions {
                    no_ack: t.no_ack,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?,
        );
    }
    Ok(Opened {
        channel: ch,
        consumers,
    })
}

/// Stops consuming, deletes what goes with the subscription, closes the
/// channel (unacknowledged deliveries go back to their queues).
async fn teardown(opened: Opened, t: &Topology, patience: Duration) {
    if !opened.channel.status().connected() {
        return;
    }
    let work = async {
        for c in &opened.consumers {
            let _ = opened
                .channel
                .basic_cancel(c.tag(), BasicCancelOptions::default())
                .await;
        }
        for q in &t.delete_on_close {
            let _ = opened
                .channel
                .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
                .await;
        }
        let _ = opened.channel.close(200, ShortString::from("OK")).await;
    };
    let _ = tokio::time::timeout(patience, work).await;
}

/// The next delivery from any consumer (`Err`/`None`: that consumer ended,
/// the subscription must be opened again).
async fn next_any(consumers: &mut [Consumer], next: &mut usize) -> Option<lapin::Result<Delivery>> {
    if consumers.is_empty() {
        return std::future::pending().await;
    }
    let n = consumers.len();
    let start = *next % n;
    *next = next.wrapping_add(1);
    poll_fn(|cx| {
        for i in 0..n {
            let c = &mut consumers[(start + i) % n];
            match Pin::new(c).poll_next(cx) {
                Poll::Ready(Some(Ok(d))) => return Poll::Ready(Some(Ok(d))),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// A running subscription: its deliveries, and a way to close it.
pub(crate) struct Subscription {
    close: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl Subscription {
    /// Opens it (waiting for the connection within `retry`), then keeps it
    /// open in a task until closed, dropped, or the transport closes.
    ///
    /// # Errors
    ///
    /// When the first opening fails: no connection within `retry`, or the
    /// broker refused a declaration.
    pub(crate) async fn start(
        shared: &Arc<Shared>,
        topology: Topology,
        sink: Sink,
        retry: Option<u32>,
    ) -> Result<Subscription, TransportError> {
        let opened = shared
            .with_link(retry, |link| open(link, &topology))
            .await?;
        let (close, closing) = oneshot::channel();
        tokio::spawn(run(shared.clone(), topology, opened, sink, closing));
        Ok(Subscription { close: Some(close) })
    }

    /// Closes it and waits until done.
    pub(crate) async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let (done, finished) = oneshot::channel();
            if close.send(done).is_ok() {
                let _ = finished.await;
            }
        }
    }
}

/// Why a subscription stops delivering.
enum Stop {
    /// Asked to close (and to say when done).
    Close(Option<oneshot::Sender<()>>),
    /// The transport closes.
    Shutdown,
    /// A consumer ended: open again.
    Reopen(String),
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|closed| *closed).await;
}

async fn sink_closed(sink: &Sink) {
    match sink {
        Sink::Listener(tx) => tx.closed().await,
        Sink::Replies(_) => std::future::pending().await,
    }
}

async fn run(
    shared: Arc<Shared>,
    topology: Topology,
    opened: Opened,
    sink: Sink,
    mut closing: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let mut shutdown = shared.shutdown_signal();
    let patience = shared.config.connection_timeout;
    let mut opened = Some(opened);
    let mut next = 0usize;
    let stop = 'outer: loop {
        // Deliver until something ends.
        let Some(current) = opened.as_mut() else {
            break Stop::Shutdown;
        };
        let stop = loop {
            tokio::select! {
                biased;
                done = &mut closing => break Stop::Close(done.ok()),
                _ = sink_closed(&sink) => break Stop::Close(None),
                _ = wait_shutdown(&mut shutdown) => break Stop::Shutdown,
                d = next_any(&mut current.consumers, &mut next) => match d {
                    Some(Ok(d)) => deliver(&sink, &shared, d),
                    Some(Err(e)) => break Stop::Reopen(e.to_string()),
                    None => break Stop::Reopen("consumer cancelled".to_owned()),
                },
            }
        };
        let why = match stop {
            Stop::Reopen(why) => why,
            other => break other,
        };
        log_warn!(
            "consumer of {:?} ended ({}); opening again",
            topology.queues.first().map(|q| &q.name),
            why
        );
        if let Some(old) = opened.take() {
            teardown_channel_only(old, patience).await;
        }
        shared.nudge();
        // Open again, on the current connection or the next one.
        let mut delay = shared.config.retry_interval;
        loop {
            let attempt = async {
                let link = shared.link(&mut Budget::new(None)).await?;
                open(link.clone(), &topology)
                    .await
                    .map_err(|e| Fault::of(&link, &e).into_error())
            };
            let result = tokio::select! {
                biased;
                done = &mut closing => break 'outer Stop::Close(done.ok()),
                _ = sink_closed(&sink) => break 'outer Stop::Close(None),
                _ = wait_shutdown(&mut shutdown) => break 'outer Stop::Shutdown,
                r = attempt => r,
            };
            match result {
                Ok(o) => {
                    opened = Some(o);
                    break;
                }
                Err(TransportError::Closed) => break 'outer Stop::Shutdown,
                Err(e) => {
                    log_warn!("cannot consume again: {}", e);
                    tokio::select! {
                        biased;
                        done = &mut closing => break 'outer Stop::Close(done.ok()),
                        _ = wait_shutdown(&mut shutdown) => break 'outer Stop::Shutdown,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay + shared.config.retry_backoff).min(shared.config.interval_max);
                }
            }
        }
    };
    match stop {
        Stop::Close(done) => {
            if let Some(o) = opened.take() {
                teardown(o, &topology, patience).await;
            }
            if let Some(done) = done {
                let _ = done.send(());
            }
        }
        Stop::Shutdown | Stop::Reopen(_) => {}
    }
    if let Sink::Replies(pending) = &sink {
        // No more replies: the calls still waiting fail now.
        pending.lock().clear();
    }
}

/// Closes a channel whose consumers ended, before opening a new one.
async fn teardown_channel_only(old: Opened, patience: Duration) {
    if old.channel.status().connected() {
        let _ =
            tokio::time::timeout(patience, old.channel.close(200, ShortString::from("OK"))).await;
    }
}

fn deliver(sink: &Sink, shared: &Shared, d: Delivery) {
    match sink {
        Sink::Listener(tx) => {
            let _ = tx.send(d);
        }
        Sink::Replies(pending) => complete_reply(&d.data, pending, &shared.ids, &shared.stats),
    }
}

/// Acknowledges in the background: what matters is that the frame is sent.
fn ack_in_background(acker: Acker) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = acker.ack(BasicAckOptions::default()).await;
        });
    }
}

/// A server's listener: queues `topic`, `topic.server` and its fanout
/// queue, acknowledged as each request is handed out (at most once, as
/// oslo).
pub(crate) struct RpcListener {
    pub(crate) shared: Arc<Shared>,
    pub(crate) deliveries: mpsc::UnboundedReceiver<Delivery>,
    pub(crate) subscription: Option<Subscription>,
    /// The `_unique_id`s of the requests taken last (oslo's
    /// `_MsgIdCache`); it outlives reconnections.
    pub(crate) seen: SeenIds,
}

impl std::fmt::Debug for RpcListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpRpcListener").finish_non_exhaustive()
    }
}

impl Listener<IncomingCall> for RpcListener {
    fn recv(&mut self) -> BoxFuture<'_, Result<IncomingCall, TransportError>> {
        Box::pin(async move {
            loop {
                let d = self.deliveries.recv().await.ok_or(TransportError::Closed)?;
                if !d.acker.usable() {
                    // Its channel is gone: the broker delivers it again.
                    continue;
                }
                ack_in_background(d.acker.clone());
                let request = match WireRequest::decode(&d.data) {
                    Ok(r) => r,
                    Err(e) => {
                        bump(&self.shared.stats.malformed);
                        log_warn!("dropping a malformed request on {}: {}", d.routing_key, e);
                        continue;
                    }
                };
                // As oslo's RPC listener: acknowledged, then an id seen
                // before is a duplicate (a redelivery after a lost
                // acknowledgement), dropped; a new one is remembered.
                if let Some(key) = SeenKey::of(request.unique_id.as_deref()) {
                    if !self.seen.insert(key) {
                        bump(&self.shared.stats.duplicates);
                        log_debug!("dropping a duplicate request on {}", d.routing_key);
                        continue;
                    }
                }
                let responder = match (request.msg_id, request.reply_q) {
                    (Some(msg_id), Some(reply_q)) => Some(Box::new(AmqpResponder {
                        shared: self.shared.clone(),
                        reply_q,
                        msg_id,
                    })
                        as Box<dyn Responder>),
                    _ => None,
                };
                return Ok(IncomingCall {
                    ctx: request.ctx,
                    message: request.message,
                    responder,
                    call_monitor_timeout: call_monitor_timeout(request.timeout),
                });
            }
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(s) = self.subscription.take() {
                s.close().await;
            }
        })
    }
}

/// Sends a reply on the default exchange, mandatory: a reply queue that is
/// gone returns it, and it is dropped.
#[derive(Debug)]
struct AmqpResponder {
    shared: Arc<Shared>,
    reply_q: String,
    msg_id: String,
}

/// Publishes a reply body to `reply_q`, waiting up to [`REPLY_PATIENCE`]
/// for the connection.
async fn send_reply(
    shared: &Arc<Shared>,
    reply_q: &str,
    body: &[u8],
) -> Result<Delivered, TransportError> {
    let out = Outgoing {
        exchange: "",
        declare: None,
        routing_key: reply_q,
        body,
        expiration: None,
        mandatory: true,
    };
    match tokio::time::timeout(REPLY_PATIENCE, shared.publish(&out, None)).await {
        Ok(Ok(Delivered::Nacked)) => Err(TransportError::Rejected {
            exchange: String::new(),
            routing_key: reply_q.to_owned(),
        }),
        Ok(r) => r,
        Err(_) => Err(TransportError::Connection(format!(
            "no connection to send the reply within {REPLY_PATIENCE:?}"
        ))),
    }
}

impl Responder for AmqpResponder {
    fn reply(self: Box<Self>, reply: Reply) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let (_, unique_id) = self.shared.ids.next();
            let body = encode_answer(
                &reply,
                self.msg_id.as_str(),
                unique_id.text(),
                Wrap::Envelope,
            )
            .map_err(|e| TransportError::Encode(e.to_string()))?;
            if send_reply(&self.shared, &self.reply_q, &body).await? == Delivered::Returned {
                bump(&self.shared.stats.undeliverable_replies);
                log_debug!("reply queue {} is gone; reply dropped", self.reply_q);
            }
            Ok(())
        })
    }

    fn heartbeat(&self) -> BoxFuture<'static, Result<(), TransportError>> {
        let (_, unique_id) = self.shared.ids.next();
        let body = encode_heartbeat(self.msg_id.as_str(), unique_id.text(), Wrap::Envelope);
        let shared = self.shared.clone();
        let reply_q = self.reply_q.clone();
        Box::pin(async move {
            let body = body.map_err(|e| TransportError::Encode(e.to_string()))?;
            match send_reply(&shared, &reply_q, &body).await? {
                Delivered::Returned => Err(TransportError::Unroutable {
                    exchange: String::new(),
                    routing_key: reply_q,
                }),
                _ => Ok(()),
            }
        })
    }
}

/// A notification listener: its queues, settled by the handlers.
pub(crate) struct NotificationListener {
    pub(crate) shared: Arc<Shared>,
    pub(crate) deliveries: mpsc::UnboundedReceiver<Delivery>,
    pub(crate) subscription: Option<Subscription>,
    /// The `_unique_id`s of the notifications handled last (acknowledged,
    /// not requeued): oslo's `_MsgIdCache`.
    pub(crate) seen: Arc<parking_lot::Mutex<SeenIds>>,
}

impl std::fmt::Debug for NotificationListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpNotificationListener")
            .finish_non_exhaustive()
    }
}

impl Listener<IncomingNotification> for NotificationListener {
    fn recv(&mut self) -> BoxFuture<'_, Result<IncomingNotification, TransportError>> {
        Box::pin(async move {
            loop {
                let d = self.deliveries.recv().await.ok_or(TransportError::Closed)?;
                if !d.acker.usable() {
                    continue;
                }
                match WireNotification::decode(&d.data) {
                    Ok(message) => {
                        let key = SeenKey::of(message.unique_id.as_deref());
                        if key.as_ref().is_some_and(|k| self.seen.lock().contains(k)) {
                            // Handled already, its acknowledgement lost with
                            // a connection: acknowledged now, not handled
                            // again.
                            bump(&self.shared.stats.duplicates);
                            log_debug!("dropping a duplicate notification");
                            ack_in_background(d.acker);
                            continue;
                        }
                        return Ok(IncomingNotification {
                            message,
                            acknowledger: Box::new(AmqpAck {
                                acker: d.acker,
                                remember: key.map(|k| (self.seen.clone(), k)),
                            }),
                        });
                    }
                    Err(e) => {
                        bump(&self.shared.stats.malformed);
                        log_warn!("dropping a malformed notification: {}", e);
                        ack_in_background(d.acker);
                    }
                }
            }
        })
    }

    fn close(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(s) = self.subscription.take() {
                s.close().await;
            }
        })
    }
}

#[derive(Debug)]
struct AmqpAck {
    acker: Acker,
    /// Where its `_unique_id` goes once acknowledged.
    remember: Option<(Arc<parking_lot::Mutex<SeenIds>>, SeenKey)>,
}

impl Acknowledger for AmqpAck {
    fn settle(self: Box<Self>, requeue: bool) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let AmqpAck { acker, remember } = *self;
            let result = if requeue {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            } else {
                // As oslo: remembered as it is acknowledged, whether or not
                // the acknowledgement reaches the broker: if the connection
                // loses it, the redelivered copy is dropped. A requeued one
                // is meant to come back.
                if let Some((seen, key)) = remember {
                    seen.lock().insert(key);
                }
                acker.ack(BasicAckOptions::default()).await
            };
            match result {
                Ok(_) => Ok(()),
                // The channel is gone: the broker delivers it again.
                Err(_) if acker.poisoned() => Ok(()),
                Err(e) => Err(TransportError::Protocol(e.to_string())),
            }
        })
    }
}
