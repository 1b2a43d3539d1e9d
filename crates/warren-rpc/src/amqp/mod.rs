//! The `amqp://` transport (see [`AmqpTransport`]).

mod config;
mod link;
mod listen;

use std::fmt;
use std::sync::Arc;

use lapin::ExchangeKind;
use tokio::sync::{mpsc, OnceCell};

use self::config::Config;
use self::link::{queue_arguments, Delivered, ExchangeDecl, Outgoing, Shared};
use self::listen::{ExchangeSpec, QueueSpec, Sink, Subscription, Topology};
use crate::context::Context;
use crate::error::TransportError;
use crate::notify::Priority;
use crate::shared::{bump, expect_reply, request_route, Pending, RequestRoute, SeenIds};
use crate::target::Target;
use crate::transport::{
    BoxFuture, IncomingCall, IncomingNotification, ListenOptions, Listener, Reply, SendOptions,
    Transport, TransportStats,
};
use crate::util::random_hex;
use crate::wire::{encode_request, RequestFields, RpcMessage, WireNotification, Wrap};

/// The reply queue and the calls waiting on it.
struct Replies {
    queue: Arc<str>,
    pending: Arc<Pending>,
    _subscription: Subscription,
}

/// The `amqp://` transport: RPC and notifications through an AMQP 0-9-1
/// broker — a RabbitMQ cluster, or `warren serve` — laid out as
/// oslo.messaging's rabbit driver lays them out, so that Rust and Python
/// services on the same broker call each other.
///
/// Switching a service from `inproc://` is a change of URL:
///
/// ```text
/// amqp://user:pass@host:5672/vhost
/// rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost?heartbeat=30
/// ```
///
/// # The URL
///
/// `amqp://` or oslo's `rabbit://`; a comma-separated list of
/// `[user[:password]@]host[:port]` (default `guest`/`guest`, port 5672),
/// tried in turn; the virtual host as the path (percent-encoded: `%2F` is
/// `/`; none or empty means `/`); options in the query string:
///
/// | option | default | meaning (oslo.messaging's name) |
/// |--------|---------|--------------------------------|
/// | `heartbeat` | 60 | AMQP heartbeat in seconds, 0 for none (`heartbeat_timeout_threshold`) |
/// | `connection_timeout` | 10000 | how long one connection attempt may take, milliseconds |
/// | `prefetch` | — | unacknowledged messages per consumer; replaces a server's 1 and a notification listener's `max_in_flight` (`rabbit_qos_prefetch_count`) |
/// | `durable_queues` | false | durable control exchange and topic / notification queues (`amqp_durable_queues`) |
/// | `auto_delete` | false | auto-delete control exchange and topic / notification queues (`amqp_auto_delete`) |
/// | `quorum_queues` | false | topic and notification queues are quorum queues, hence durable (`rabbit_quorum_queue`) |
/// | `transient_queues_ttl` | 1800 | `x-expires` of reply and fanout queues in seconds, 0 for none (`rabbit_transient_queues_ttl`) |
/// | `retry` | -1 | connection retries of what has no retry of its own: server and listener start, and notifications sent through [`Transport::send_notification`]; -1 for no limit |
/// | `retry_interval`, `retry_backoff`, `interval_max` | 1, 2, 30 | reconnection backoff in seconds: first delay, step, cap (`rabbit_retry_interval`, ...) |
/// | `control_exchange` | `openstack` | the exchange of targets without one (`control_exchange`) |
/// | `login_method` | `PLAIN` | `PLAIN` or `AMQPLAIN` (`rabbit_login_method`) |
///
/// Queue and exchange flags must be the same on every service sharing the
/// broker: RabbitMQ refuses (406 `PRECONDITION_FAILED`) a declaration that
/// differs from the existing one. The defaults are oslo's.
///
/// # Layout and messages
///
/// As oslo.messaging 18's rabbit driver: control exchange (topic kind),
/// queues `topic` and `topic.server` bound by those keys, `topic_fanout`
/// (fanout, auto-delete) with one `topic_fanout_<uuid>` queue per server
/// (with `x-expires`), replies on the default exchange to one
/// `reply_<uuid>` queue per transport (with `x-expires`), notifications on
/// `topic.priority` with a default queue of that name. Bodies are oslo's
/// envelope (see [`WireRequest`](crate::WireRequest)), with `content_type`
/// `application/json`, `delivery_mode` 2, and a call's timeout as
/// `expiration`.
///
/// Every publish waits for the broker's confirm; replies are `mandatory`
/// (a reply whose caller went away is dropped). A server acknowledges a
/// request as it starts it (at most once, as oslo); a notification is
/// acknowledged, or requeued, once handled.
///
/// # Connection loss
///
/// The connection is made on first use, by a task on the Tokio runtime
/// of that use (the client itself runs its I/O on a thread of its own).
/// When it is lost, the transport connects again — to the next host of the
/// list, with backoff — and declares and consumes again what its servers,
/// listeners and reply queue had. Meanwhile:
///
/// - a cast or a call being published waits for the connection, up to its
///   `retry` connection failures (`None`: no limit), then fails with
///   [`TransportError::Connection`]; a call also ends at its timeout;
/// - a call already sent keeps waiting for its reply until its timeout:
///   the reply queue outlives the connection, so the reply arrives if the
///   server could send it;
/// - a server's reply waits up to 60 s for the connection, then is
///   given up;
/// - requests a server took but had not acknowledged, and notifications
///   not yet settled, go back to their queues and are delivered again.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), warren_rpc::RpcError> {
/// use warren_rpc::*;
///
/// let transport = transport_from_url("amqp://guest:guest@127.0.0.1:5672/%2F")?;
/// let client = RpcClient::new(transport, Target::new("volume"));
/// let answer: serde_json::Value = client.call(&Context::new(), "get_volume", &serde_json::json!({"volume_id": "v1"})).await?;
/// # let _ = answer;
/// # Ok(())
/// # }
/// ```
pub struct AmqpTransport {
    shared: Arc<Shared>,
    default_exchange: String,
    replies: OnceCell<Replies>,
}

impl fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("url", &self.shared.config.redacted)
            .field("default_exchange", &self.default_exchange)
            .field("connected", &self.shared.is_connected())
            .finish()
    }
}

impl AmqpTransport {
    /// A transport for this URL (see the type's docs). Connects on first
    /// use, not here: no runtime is needed yet.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidUrl`] without `://`,
    /// [`TransportError::UnsupportedScheme`] for a scheme other than `amqp`
    /// and `rabbit`, [`TransportError::BadUrl`] for a bad host, port,
    /// percent-encoding or option, or TLS (`amqps`, `ssl=1`: not in this
    /// build).
    ///
    /// # Examples
    ///
    /// ```
    /// use warren_rpc::{AmqpTransport, Transport};
    ///
    /// let t = AmqpTransport::from_url("rabbit://nova:s3cret@mq1:5672,nova:s3cret@mq2:5672/nova?heartbeat=30")?;
    /// assert_eq!(t.url(), "rabbit://nova:***@mq1:5672,nova:***@mq2:5672/nova?heartbeat=30");
    /// assert_eq!(t.default_exchange(), "openstack");
    /// # Ok::<(), warren_rpc::TransportError>(())
    /// ```
    pub fn from_url(url: &str) -> Result<AmqpTransport, TransportError> {
        let config = Config::parse(url)?;
        Ok(AmqpTransport {
            default_exchange: config.control_exchange.clone(),
            shared: Arc::new(Shared::new(config)),
            replies: OnceCell::new(),
        })
    }

    /// Sets the control exchange used when a target names none (oslo's
    /// `control_exchange`; the URL option of that name does the same).
    pub fn with_default_exchange(mut self, exchange: impl Into<String>) -> AmqpTransport {
        self.default_exchange = exchange.into();
        self
    }

    /// Connects now, instead of on first use, and waits until connected.
    ///
    /// # Errors
    ///
    /// [`TransportError::Connection`] when the URL's `retry` connection
    /// attempts failed (never, with the default of no limit: it keeps
    /// trying), [`TransportError::NoRuntime`] outside a Tokio runtime,
    /// [`TransportError::Closed`] after [`close`](Self::close).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the transport keeps connecting in the background.
    pub async fn connect(&self) -> Result<(), TransportError> {
        self.shared
            .link(&mut link::Budget::new(self.shared.config.retry))
            .await
            .map(drop)
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// The name of this transport's reply queue, once a call made it.
    pub fn reply_queue(&self) -> Option<String> {
        self.replies.get().map(|r| r.queue.to_string())
    }

    /// Closes the transport: calls waiting for a reply fail with
    /// [`TransportError::Closed`], listeners stop, the reply queue is
    /// deleted and the connection closed. Dropping the transport does the
    /// same in the background.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: closing finishes in the background.
    pub async fn close(&self) {
        self.shared.close().await;
    }

    fn exchange_for<'a>(&'a self, target: &'a Target) -> &'a str {
        target.exchange.as_deref().unwrap_or(&self.default_exchange)
    }

    fn control_exchange_decl(&self) -> ExchangeDecl {
        ExchangeDecl {
            kind: ExchangeKind::Topic,
            durable: self.shared.config.durable(),
            auto_delete: self.shared.config.auto_delete,
        }
    }

    fn control_exchange_spec(&self, name: &str) -> ExchangeSpec {
        ExchangeSpec {
            name: name.to_owned(),
            kind: ExchangeKind::Topic,
            durable: self.shared.config.durable(),
            auto_delete: self.shared.config.auto_delete,
        }
    }

    /// A topic or notification queue, as oslo declares it.
    fn topic_queue(&self, name: &str, bindings: Vec<(String, String)>) -> QueueSpec {
        let c = &self.shared.config;
        QueueSpec {
            name: name.to_owned(),
            durable: c.durable(),
            auto_delete: c.auto_delete,
            arguments: queue_arguments(None, c.quorum_queues),
            bindings,
        }
    }

    fn prefetch(&self, asked: u32) -> u16 {
        self.shared
            .config
            .prefetch
            .unwrap_or_else(|| u16::try_from(asked.max(1)).unwrap_or(u16::MAX))
    }

    /// The reply queue and its reader, made by the first call.
    async fn replies(&self, retry: Option<u32>) -> Result<&Replies, TransportError> {
        self.replies
            .get_or_try_init(|| async {
                let queue = format!("reply_{}", random_hex());
                let topology = Topology {
                    exchanges: Vec::new(),
                    queues: vec![QueueSpec {
                        name: queue.clone(),
                        durable: false,
                        auto_delete: false,
                        arguments: queue_arguments(
                            Some(self.shared.config.transient_ttl_ms),
                            false,
                        ),
                        bindings: Vec::new(),
                    }],
                    delete_on_close: Vec::new(),
                    prefetch: 0,
                    no_ack: true,
                };
                let pending: Arc<Pending> = Arc::default();
                let subscription = Subscription::start(
                    &self.shared,
                    topology,
                    Sink::Replies(pending.clone()),
                    retry,
                )
                .await?;
                *self.shared.reply_queue.lock() = Some(queue.clone());
                Ok(Replies {
                    queue: Arc::from(queue),
                    pending,
                    _subscription: subscription,
                })
            })
            .await
    }

    async fn publish_notification(
        &self,
        exchange: Option<&str>,
        topic: &str,
        priority: Priority,
        message: WireNotification,
        retry: Option<u32>,
    ) -> Result<(), TransportError> {
        let exchange = exchange.unwrap_or(&self.default_exchange);
        let key = format!("{topic}.{}", priority.as_str());
        let body = message
            .encode()
            .map_err(|e| TransportError::Encode(e.to_string()))?;
        bump(&self.shared.stats.notifications_sent);
        // As oslo's notify_send: the default queue, named like the routing
        // key, is declared (once per connection), so that notifications wait
        // there for a listener.
        let marker = format!("queue\0{exchange}\0{key}");
        let mut declared_again = false;
        loop {
            self.ensure_notification_queue(exchange, &key, &marker, retry)
                .await?;
            let out = Outgoing {
                exchange,
                declare: Some(self.control_exchange_decl()),
                routing_key: &key,
                body: &body,
                expiration: None,
                mandatory: !declared_again,
            };
            match self.shared.publish(&out, retry).await? {
                Delivered::Routed => return Ok(()),
                Delivered::Nacked => {
                    return Err(TransportError::Rejected {
                        exchange: exchange.to_owned(),
                        routing_key: key,
                    })
                }
                Delivered::Returned if !declared_again => {
                    // Someone deleted the default queue: declare it again.
                    self.forget_declared(&marker);
                    declared_again = true;
                }
                Delivered::Returned => return Ok(()),
            }
        }
    }

    fn forget_declared(&self, marker: &str) {
        if let Ok(link) = self.current_link() {
            link.forget_declared(marker);
        }
    }

    fn current_link(&self) -> Result<Arc<link::Link>, TransportError> {
        self.shared.current_link().ok_or(TransportError::Closed)
    }

    async fn ensure_notification_queue(
        &self,
        exchange: &str,
        key: &str,
        marker: &str,
        retry: Option<u32>,
    ) -> Result<(), TransportError> {
        let queue = self.topic_queue(key, vec![(exchange.to_owned(), key.to_owned())]);
        let x = self.control_exchange_spec(exchange);
        self.shared
            .with_link(retry, |link| {
                let queue = &queue;
                let x = &x;
                async move {
                    if link.is_declared(marker) {
                        return Ok(());
                    }
                    let ch = link.admin().await?;
                    declare_exchange(&ch, x).await?;
                    declare_queue(&ch, queue).await?;
                    link.mark_declared(marker);
                    Ok(())
                }
            })
            .await
    }
}

async fn declare_exchange(ch: &lapin::Channel, x: &ExchangeSpec) -> lapin::Result<()> {
    ch.exchange_declare(
        x.name.as_str().into(),
        x.kind.clone(),
        lapin::options::ExchangeDeclareOptions {
            durable: x.durable,
            auto_delete: x.auto_delete,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
}

async fn declare_queue(ch: &lapin::Channel, q: &QueueSpec) -> lapin::Result<()> {
    ch.queue_declare(
        q.name.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: q.durable,
            auto_delete: q.auto_delete,
            ..Default::default()
        },
        q.arguments.clone(),
    )
    .await?;
    for (exchange, key) in &q.bindings {
        ch.queue_bind(
            q.name.as_str().into(),
            exchange.as_str().into(),
            key.as_str().into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

impl Drop for AmqpTransport {
    fn drop(&mut self) {
        self.shared.close_in_background();
    }
}

impl Transport for AmqpTransport {
    fn url(&self) -> &str {
        &self.shared.config.redacted
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
            let route = request_route(target);
            let (exchange, declare, routing_key) = match &route {
                RequestRoute::Fanout(x) => {
                    let decl = ExchangeDecl {
                        kind: ExchangeKind::Fanout,
                        durable: false,
                        auto_delete: true,
                    };
                    (x.as_str(), decl, "")
                }
                RequestRoute::Topic(k) => (
                    self.exchange_for(target),
                    self.control_exchange_decl(),
                    k.as_ref(),
                ),
            };
            let (_, unique_id) = self.shared.ids.next();
            bump(&self.shared.stats.requests_sent);
            let check = |d: Delivered| match d {
                Delivered::Routed => Ok(()),
                Delivered::Returned => Err(TransportError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                }),
                Delivered::Nacked => Err(TransportError::Rejected {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                }),
            };
            if !options.wait_for_reply {
                let body = encode_request(
                    &message,
                    ctx,
                    &RequestFields::cast(unique_id.text()),
                    Wrap::Envelope,
                )
                .map_err(|e| TransportError::Encode(e.to_string()))?;
                let out = Outgoing {
                    exchange,
                    declare: Some(declare),
                    routing_key,
                    body: &body,
                    expiration: None,
                    mandatory: options.mandatory,
                };
                check(self.shared.publish(&out, options.retry).await?)?;
                return Ok(None);
            }
            let replies = self.replies(options.retry).await?;
            let (key, msg_id) = self.shared.ids.next();
            let (mut guard, wait) =
                expect_reply(&replies.pending, key, options.call_monitor_timeout);
            let body = encode_request(
                &message,
                ctx,
                &RequestFields {
                    msg_id: Some(msg_id.text()),
                    reply_q: Some(&replies.queue),
                    unique_id: Some(unique_id.text()),
                    timeout: options.call_monitor_timeout.map(|d| d.as_secs_f64()),
                    call: true,
                },
                Wrap::Envelope,
            )
            .map_err(|e| TransportError::Encode(e.to_string()))?;
            let out = Outgoing {
                exchange,
                declare: Some(declare),
                routing_key,
                body: &body,
                // As oslo: a call's request lives no longer than its timeout.
                expiration: options.timeout.map(|t| t.as_millis().max(1)),
                mandatory: options.mandatory,
            };
            check(self.shared.publish(&out, options.retry).await?)?;
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
        let retry = self.shared.config.retry;
        Box::pin(self.publish_notification(exchange, topic, priority, message, retry))
    }

    fn send_notification_with_retry<'a>(
        &'a self,
        exchange: Option<&'a str>,
        topic: &'a str,
        priority: Priority,
        message: WireNotification,
        retry: Option<u32>,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(self.publish_notification(exchange, topic, priority, message, retry))
    }

    fn listen<'a>(
        &'a self,
        target: &'a Target,
        options: ListenOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Listener<IncomingCall>>, TransportError>> {
        Box::pin(async move {
            let exchange = self.exchange_for(target);
            let topic = target.topic.as_str();
            let fanout_x = format!("{topic}_fanout");
            let fanout_q = format!("{topic}_fanout_{}", random_hex());
            let mut queues =
                vec![self.topic_queue(topic, vec![(exchange.to_owned(), topic.to_owned())])];
            if let Some(server) = &target.server {
                let q = format!("{topic}.{server}");
                queues.push(self.topic_queue(&q, vec![(exchange.to_owned(), q.clone())]));
            }
            queues.push(QueueSpec {
                name: fanout_q.clone(),
                durable: false,
                auto_delete: false,
                arguments: queue_arguments(Some(self.shared.config.transient_ttl_ms), false),
                bindings: vec![(fanout_x.clone(), topic.to_owned())],
            });
            let topology = Topology {
                exchanges: vec![
                    self.control_exchange_spec(exchange),
                    ExchangeSpec {
                        name: fanout_x,
                        kind: ExchangeKind::Fanout,
                        durable: false,
                        auto_delete: true,
                    },
                ],
                queues,
                delete_on_close: vec![fanout_q],
                prefetch: self.prefetch(options.prefetch),
                no_ack: false,
            };
            let seen = SeenIds::for_prefetch(u32::from(topology.prefetch));
            let (tx, rx) = mpsc::unbounded_channel();
            let subscription = Subscription::start(
                &self.shared,
                topology,
                Sink::Listener(tx),
                self.shared.config.retry,
            )
            .await?;
            Ok(Box::new(listen::RpcListener {
                shared: self.shared.clone(),
                deliveries: rx,
                subscription: Some(subscription),
                seen,
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
            let mut exchanges: Vec<ExchangeSpec> = Vec::new();
            let mut queues: Vec<QueueSpec> = Vec::new();
            for (target, priority) in targets_and_priorities {
                let exchange = self.exchange_for(target);
                if !exchanges.iter().any(|x| x.name == exchange) {
                    exchanges.push(self.control_exchange_spec(exchange));
                }
                let key = format!("{}.{}", target.topic, priority.as_str());
                let queue = pool.map_or_else(|| key.clone(), str::to_owned);
                let binding = (exchange.to_owned(), key);
                match queues.iter_mut().find(|q| q.name == queue) {
                    Some(q) => {
                        if !q.bindings.contains(&binding) {
                            q.bindings.push(binding);
                        }
                    }
                    None => queues.push(self.topic_queue(&queue, vec![binding])),
                }
            }
            let topology = Topology {
                exchanges,
                queues,
                delete_on_close: Vec::new(),
                prefetch: self.prefetch(options.prefetch),
                no_ack: false,
            };
            let seen = SeenIds::for_prefetch(u32::from(topology.prefetch));
            let (tx, rx) = mpsc::unbounded_channel();
            let subscription = Subscription::start(
                &self.shared,
                topology,
                Sink::Listener(tx),
                self.shared.config.retry,
            )
            .await?;
            Ok(Box::new(listen::NotificationListener {
                shared: self.shared.clone(),
                deliveries: rx,
                subscription: Some(subscription),
                seen: Arc::new(parking_lot::Mutex::new(seen)),
            }) as Box<dyn Listener<IncomingNotification>>)
        })
    }

    fn stats(&self) -> TransportStats {
        self.shared.stats.snapshot()
    }
}
