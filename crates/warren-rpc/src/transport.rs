//! The driver interface (see [`Transport`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::context::Context;
use crate::error::{RemoteError, TransportError};
use crate::notify::Priority;
use crate::target::Target;
use crate::wire::{RpcMessage, WireNotification};

/// A boxed, `Send` future: what [`Transport`]'s async methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How to send one RPC request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SendOptions {
    /// A call: the transport waits for the reply and returns it.
    pub wait_for_reply: bool,
    /// The call's timeout. Calls are published with this time to live, so
    /// a request nobody took in time expires instead of running late.
    pub timeout: Option<Duration>,
    /// oslo's call-monitor timeout, sent as `_timeout` (calls only): the
    /// server heartbeats while it handles the call, and the transport
    /// fails the call with [`TransportError::CallMonitorTimeout`] when
    /// neither the reply nor a heartbeat came for this long.
    pub call_monitor_timeout: Option<Duration>,
    /// Connection retries (`None`: without limit). A driver with a
    /// connection to lose honours it; `inproc` never needs to retry.
    pub retry: Option<u32>,
    /// Fail with [`TransportError::Unroutable`] when no queue takes the
    /// request (oslo's `at_least_once`); otherwise such a request is
    /// dropped, and a call then times out.
    pub mandatory: bool,
}

/// The answer to a call, as the transport hands it back.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The handler's result (JSON).
    Result(Box<RawValue>),
    /// The handler's failure.
    Failure(Box<RemoteError>),
}

/// Settings of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenOptions {
    /// How many messages, per queue, the listener may hold that `recv` has
    /// not returned yet, or (for notifications) that are not yet settled:
    /// the broker's prefetch. An RPC server asks for 1 (it takes a request
    /// only when it can run it); a notification listener for its bound.
    pub prefetch: u32,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { prefetch: 64 }
    }
}

/// A stream of incoming messages: requests for a server
/// ([`IncomingCall`]) or notifications ([`IncomingNotification`]).
///
/// Dropping a listener stops it: messages it had not handed out go back to
/// their queues; a server's fanout queue is deleted.
///
/// The listeners of warren-rpc's transports check for duplicates as oslo's
/// rabbit driver does: a request whose `_unique_id` the listener took
/// recently, or a notification whose `_unique_id` it acknowledged recently,
/// is acknowledged and dropped (counted in [`TransportStats::duplicates`]),
/// so that a redelivery after a lost acknowledgement is not handled twice.
pub trait Listener<T>: Send + fmt::Debug {
    /// The next message.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] once the listener can deliver no more
    /// (its queues were deleted, the connection is gone).
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: dropping the future loses no
    /// message.
    fn recv(&mut self) -> BoxFuture<'_, Result<T, TransportError>>;

    /// Stops the listener and waits until it let go of what it held:
    /// messages it had not handed out are back in their queues, a server's
    /// fanout queue is deleted. Dropping a listener does the same, except
    /// that a transport with a connection to tear down finishes in the
    /// background. The default drops it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the listener to finish closing in the
    /// background.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        drop(self);
        Box::pin(std::future::ready(()))
    }
}

/// Sends the reply to one call.
pub trait Responder: Send + fmt::Debug {
    /// Sends `reply` to the caller.
    ///
    /// # Errors
    ///
    /// When the reply could not be sent. A reply queue that no longer
    /// exists (the caller went away) is not an error: the reply is dropped.
    fn reply(self: Box<Self>, reply: Reply) -> BoxFuture<'static, Result<(), TransportError>>;

    /// Tells the caller that its call is still being handled: oslo's
    /// call-monitor heartbeat, a reply with no result, no failure and
    /// `ending: false`. A server sends one every half
    /// [`IncomingCall::call_monitor_timeout`] while the handler runs. The
    /// default sends nothing (a caller monitoring the call then gives up
    /// after its call-monitor timeout).
    ///
    /// # Errors
    ///
    /// When it could not be sent, including when the reply queue no longer
    /// exists ([`TransportError::Unroutable`]): the server then stops
    /// heartbeating that call.
    fn heartbeat(&self) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Settles one notification once handled.
pub trait Acknowledger: Send + fmt::Debug {
    /// Acknowledges it (`requeue == false`) or puts it back in its queue.
    ///
    /// # Errors
    ///
    /// When the broker could not be told.
    fn settle(self: Box<Self>, requeue: bool) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// One request a server received.
#[derive(Debug)]
pub struct IncomingCall {
    /// The request context, as the caller sent it.
    pub ctx: Context,
    /// Method, arguments, namespace and version.
    pub message: RpcMessage,
    /// Where the reply goes: `Some` for a call, `None` for a cast.
    pub responder: Option<Box<dyn Responder>>,
    /// The caller's call-monitor timeout (`_timeout`): it expects a
    /// heartbeat at least this often while the call is handled.
    pub call_monitor_timeout: Option<Duration>,
}

/// One notification a listener received.
#[derive(Debug)]
pub struct IncomingNotification {
    /// The notification as it travelled.
    pub message: WireNotification,
    /// Acknowledges or requeues it.
    pub acknowledger: Box<dyn Acknowledger>,
}

/// Counters of a transport, for tests and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Requests sent (calls and casts).
    pub requests_sent: u64,
    /// Replies received that completed a waiting call.
    pub replies_received: u64,
    /// Replies that found no waiting call (it timed out or was dropped):
    /// dropped, never handed to another call.
    pub late_replies: u64,
    /// Messages that could not be decoded, dropped.
    pub malformed: u64,
    /// Replies whose reply queue no longer existed, dropped.
    pub undeliverable_replies: u64,
    /// Notifications sent.
    pub notifications_sent: u64,
    /// Connections to the broker re-established after a loss (always 0 for
    /// `inproc`).
    pub reconnects: u64,
    /// Call-monitor heartbeats received for calls waiting (each restarts
    /// that call's call-monitor timeout).
    pub heartbeats_received: u64,
    /// Requests and notifications dropped because the listener had received
    /// one with the same `_unique_id` (a redelivery, as after a lost
    /// acknowledgement): oslo's duplicate message check.
    pub duplicates: u64,
}

/// A messaging driver: sends and listens (oslo's `BaseDriver`).
///
/// A [`Transport`] does what an oslo.messaging driver does: it sends a
/// request to a [`Target`], waiting for the reply or not; it sends a
/// notification; and it listens on a target (for a server) or on topics and
/// priorities (for a notification listener), handing out incoming messages
/// through a [`Listener`]. The routing layout and the message envelope are
/// oslo's rabbit driver's (see the crate docs), so that a driver for a real
/// AMQP broker can serve the same clients and servers.
///
/// The trait is object safe: clients and servers hold an
/// `Arc<dyn Transport>`, and the async methods return boxed futures.
/// Implemented by [`InprocTransport`](crate::InprocTransport) and, with the
/// `amqp` feature, by `AmqpTransport` (RabbitMQ and other AMQP 0-9-1
/// brokers).
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The transport URL (`inproc://name`; an `amqp://` URL with its
    /// passwords hidden).
    fn url(&self) -> &str;

    /// The control exchange used when a target names none (`openstack`).
    fn default_exchange(&self) -> &str;

    /// Sends a request to `target`: to queue `topic` (any server), to
    /// `topic.server` (one server) or through `topic_fanout` (every server).
    /// With [`SendOptions::wait_for_reply`], waits for and returns the reply.
    ///
    /// # Errors
    ///
    /// [`TransportError`] when the request could not be sent.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe for a caller that gives up: dropping the future while it
    /// waits abandons the call, and the reply, if it comes, is dropped.
    fn send<'a>(
        &'a self,
        target: &'a Target,
        ctx: &'a Context,
        message: RpcMessage,
        options: SendOptions,
    ) -> BoxFuture<'a, Result<Option<Reply>, TransportError>>;

    /// Sends a notification on `exchange` (`None`: the control exchange)
    /// with routing key `topic.priority`. The topic's default queue (named
    /// like the routing key) is declared, so notifications wait there until
    /// a listener comes.
    ///
    /// # Errors
    ///
    /// [`TransportError`] when it could not be sent.
    fn send_notification<'a>(
        &'a self,
        exchange: Option<&'a str>,
        topic: &'a str,
        priority: Priority,
        message: WireNotification,
    ) -> BoxFuture<'a, Result<(), TransportError>>;

    /// [`send_notification`](Self::send_notification) with a connection
    /// retry limit, for drivers that have a connection to lose (`None`:
    /// without limit, as oslo's notifier). The default ignores `retry`.
    ///
    /// # Errors
    ///
    /// As [`send_notification`](Self::send_notification).
    fn send_notification_with_retry<'a>(
        &'a self,
        exchange: Option<&'a str>,
        topic: &'a str,
        priority: Priority,
        message: WireNotification,
        retry: Option<u32>,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        let _ = retry;
        self.send_notification(exchange, topic, priority, message)
    }

    /// Listens as the server `target.server` on `target.topic`: queues
    /// `topic` and `topic.server`, and a fresh fanout queue.
    ///
    /// # Errors
    ///
    /// [`TransportError`] when the queues could not be set up.
    fn listen<'a>(
        &'a self,
        target: &'a Target,
        options: ListenOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Listener<IncomingCall>>, TransportError>>;

    /// Listens for notifications on each (target, priority): routing key
    /// `topic.priority`; queue named like the key, or `pool` when set
    /// (listeners in one pool share one queue; each pool gets its own copy).
    ///
    /// # Errors
    ///
    /// [`TransportError`] when the queues could not be set up.
    fn listen_for_notifications<'a>(
        &'a self,
        targets_and_priorities: &'a [(Target, Priority)],
        pool: Option<&'a str>,
        options: ListenOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Listener<IncomingNotification>>, TransportError>>;

    /// A snapshot of the counters.
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
}

/// Opens a transport from its URL.
///
/// | scheme      | driver |
/// |-------------|--------|
/// | `inproc://name` | [`InprocTransport::named`](crate::InprocTransport::named): the process-wide broker called `name` |
/// | `amqp://user:pass@host:port/vhost`, `rabbit://...` | `AmqpTransport::from_url` (feature `amqp`): a RabbitMQ cluster, `warren serve`, any AMQP 0-9-1 broker |
///
/// Without the `amqp` feature, `amqp://` and `rabbit://` are unsupported
/// schemes.
///
/// # Errors
///
/// [`TransportError::InvalidUrl`] for a URL without `://`,
/// [`TransportError::UnsupportedScheme`] for another scheme,
/// [`TransportError::BadUrl`] for an `amqp://` URL that cannot be used.
///
/// # Examples
///
/// ```
/// let a = warren_rpc::transport_from_url("inproc://doc-from-url")?;
/// let b = warren_rpc::transport_from_url("inproc://doc-from-url")?;
/// assert_eq!(a.url(), "inproc://doc-from-url");
/// # let _ = b;
/// # Ok::<(), warren_rpc::TransportError>(())
/// ```
pub fn transport_from_url(url: &str) -> Result<Arc<dyn Transport>, TransportError> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Err(TransportError::InvalidUrl(url.to_owned()));
    };
    match scheme {
        "inproc" => Ok(Arc::new(crate::inproc::InprocTransport::from_url(url)?)),
        #[cfg(feature = "amqp")]
        "amqp" | "rabbit" | "amqps" => Ok(Arc::new(crate::amqp::AmqpTransport::from_url(url)?)),
        other => Err(TransportError::UnsupportedScheme(other.to_owned())),
    }
}
