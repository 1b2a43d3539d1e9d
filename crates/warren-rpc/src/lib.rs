//! warren-rpc: OpenStack-style RPC and notifications over warren.
//!
//! The model is oslo.messaging's, as nova, cinder and neutron use it: a
//! service listens as a *server* on a *topic*; clients *call* its methods
//! (and wait for the result), *cast* to it (and do not), or cast to every
//! server on the topic (*fanout*). Services also publish *notifications*
//! that listeners consume in *pools*. Versions (`major.minor`) let clients
//! and servers of different releases talk, with a version cap on the client.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), warren_rpc::RpcError> {
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use warren_rpc::*;
//!
//! #[derive(Serialize, Deserialize)]
//! struct GetVolume { volume_id: String }
//!
//! let transport = transport_from_url("inproc://crate-doc")?;
//!
//! // The service: one server ("host1") on topic "volume".
//! let endpoint = Endpoint::new()
//!     .with_version(Version::new(3, 0))
//!     .method("get_volume", |ctx: Context, args: GetVolume| async move {
//!         Ok::<_, HandlerError>(format!("{} for {}", args.volume_id, ctx.get_str("user").unwrap_or("?")))
//!     });
//! let server = RpcServer::new(transport.clone(), Target::new("volume").with_server("host1"), vec![endpoint]);
//! server.start().await?;
//!
//! // A client: call, typed in and out.
//! let client = RpcClient::new(transport, Target::new("volume").with_version(Version::new(3, 0)));
//! let ctx = Context::new().with("user", "alice");
//! let answer: String = client.call(&ctx, "get_volume", &GetVolume { volume_id: "v1".into() }).await?;
//! assert_eq!(answer, "v1 for alice");
//!
//! server.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! # oslo.messaging and warren-rpc
//!
//! | oslo.messaging | warren-rpc |
//! |----------------|------------|
//! | `get_rpc_transport(conf, url)` | [`transport_from_url`]`("inproc://name")`, [`InprocTransport::new`]`(broker)`; `transport_from_url("rabbit://...")` (feature `amqp`) |
//! | driver (`impl_rabbit`, `impl_fake`) | the [`Transport`] trait (`Arc<dyn Transport>`); `AmqpTransport` (feature `amqp`), [`InprocTransport`] |
//! | `Target(exchange, topic, server, fanout, namespace, version)` | [`Target`] |
//! | version string `'3.1'`, `version_is_compatible` | [`Version`], [`Version::can_serve`] |
//! | `RPCClient(transport, target, timeout=, version_cap=, retry=, call_monitor_timeout=)` | [`RpcClient::new`] + `with_timeout` / `with_version_cap` / `with_retry` / [`with_call_monitor_timeout`](RpcClient::with_call_monitor_timeout) |
//! | `client.prepare(server=, fanout=, timeout=, version=, call_monitor_timeout=, ...)` | [`RpcClient::prepare`]`(`[`PrepareOptions`]`)` |
//! | call-monitor heartbeats (`_timeout` in the request; the dispatcher's watchdog sends `ending: false` replies every half of it) | servers heartbeat on their own ([`ServerStats::heartbeats`]); a call fails with [`RpcError::Timeout`] after its call-monitor timeout without news |
//! | `client.call(ctxt, 'method', **kwargs)` | [`RpcClient::call`]`(&ctx, "method", &args).await` (args: a struct, serde) |
//! | `client.cast(ctxt, 'method', **kwargs)` | [`RpcClient::cast`] |
//! | `client.can_send_version('3.2')` | [`RpcClient::can_send_version`] |
//! | request context (`oslo_context.RequestContext.to_dict()`) | [`Context`] |
//! | endpoint object with methods, `target = Target(namespace=, version=)` | [`Endpoint`] with [`Endpoint::method`], `with_namespace`, `with_version` |
//! | `get_rpc_server(transport, target, endpoints, executor)` | [`RpcServer::new`], [`RpcServerOptions::max_in_flight`] |
//! | `server.start()`, `server.stop(); server.wait()` | [`RpcServer::start`], [`RpcServer::stop`] |
//! | `MessagingTimeout` | [`RpcError::Timeout`] |
//! | `_unique_id` on every message, `_MsgIdCache` dropping duplicates | the same in every listener of both transports ([`TransportStats::duplicates`]) |
//! | `RemoteError(exc_type, value, traceback)` | [`RpcError::Remote`]`(`[`RemoteError`]`)` |
//! | `NoSuchMethod`, `UnsupportedVersion` | [`RpcError::NoSuchMethod`], [`RpcError::UnsupportedVersion`] |
//! | `RPCVersionCapError` | [`RpcError::VersionCap`] |
//! | exception raised by an endpoint | [`HandlerError`] (any `std::error::Error` converts) |
//! | `@expected_exceptions(...)` | [`HandlerError::expected`], [`Endpoint::expected_error`] |
//! | `Notifier(transport, publisher_id, driver='messagingv2', topics=)` | [`Notifier::new`], [`Notifier::with_topics`] |
//! | `notifier.info(ctxt, event_type, payload)` (and audit, debug, warn, error, critical, sample) | [`Notifier::info`] ..., [`Notifier::notify`] with [`Priority`] |
//! | `get_notification_listener(transport, targets, endpoints, pool=, allow_requeue=)` | [`NotificationListener::with_options`], [`NotificationListenerOptions`] |
//! | notification endpoint with `info(ctxt, publisher_id, event_type, payload, metadata)` | [`NotificationEndpoint::info`] ... taking a [`Notification`] |
//! | `NotificationResult.HANDLED` / `REQUEUE` | [`NotificationResult`] |
//! | `NotificationFilter(publisher_id=, event_type=, context=, metadata=, payload=)` | [`NotificationFilter::builder`] |
//! | message envelope 2.0 (`oslo.version`, `oslo.message`), and bare 1.0 messages on the way in | [`WireRequest`], [`WireReply`], [`WireNotification`] |
//!
//! # Routing layout (as oslo's rabbit driver)
//!
//! | what | exchange | queue |
//! |------|----------|-------|
//! | call / cast, any server | `Target.exchange` (default `openstack`), topic kind, key `topic` | `topic`, shared by the servers: a work queue |
//! | call / cast, one server | the same, key `topic.server` | `topic.server` |
//! | fanout cast | `topic_fanout`, fanout kind | `topic_fanout_<unique>`, one per server |
//! | reply | the default exchange, key = queue name | `reply_<uuid>`, one per transport, matched by `_msg_id` |
//! | notification | control exchange, key `topic.priority` | `topic.priority` (declared on first send), or the pool's name |
//!
//! The bodies follow oslo's envelope (see [`WireRequest`]): a Python service
//! on the same broker reads them. In process, where nothing else may need
//! it, [`InprocTransport::with_envelope`]`(false)` sends the bare message
//! instead (oslo's format 1.0, which oslo reads too): about 15 % less CPU
//! per call.
//!
//! # Moving to RabbitMQ
//!
//! With the `amqp` feature, `amqp://user:pass@host:port/vhost` (or oslo's
//! `rabbit://`, several hosts separated by commas) is a transport URL like
//! `inproc://name`: the same clients, servers, notifiers and listeners run
//! through a RabbitMQ cluster or `warren serve`, with oslo.messaging's
//! exchanges, queues, declare arguments and message envelope, so that Rust
//! and Python OpenStack services on the same broker call each other and read
//! each other's notifications. The connection is made on first use and made
//! again (to the next host, with backoff) when lost; see `AmqpTransport` for
//! the URL's options and what happens during an outage.
//!
//! What differs from `inproc://`, because a network is in between: calls
//! cost a broker round trip; a listener's queues are let go when it is
//! closed (an `RpcServer::stop` waits for that), but a dropped transport
//! finishes closing in the background; queue names cannot be listed (a
//! server's fanout queue and a transport's reply queue also expire on
//! their own, oslo's `x-expires`).
//!
//! # Where warren-rpc differs from oslo.messaging, on purpose
//!
//! - Arguments and results go through serde: a call's arguments are a
//!   struct (or map) that serializes to a JSON object, its keyword
//!   arguments.
//! - A handler that panics answers its caller with a `Panic` remote error.
//! - Handlers' errors keep their Rust type name as `class` and their path
//!   as `module`.
//! - A client with a version cap and no target version sends `1.0` (oslo
//!   refuses).
//! - A server heartbeats a call for any call-monitor timeout, every half of
//!   it (at most every 10 ms); oslo's truncates it to whole seconds and
//!   does not heartbeat under 2 s.
//! - A listener remembers the `_unique_id`s of up to twice its prefetch (at
//!   least oslo's 16), and acknowledges a duplicate notification it drops
//!   (oslo leaves it unacknowledged).
//!
//! # Feature flags
//!
//! | feature   | default | what it adds |
//! |-----------|---------|--------------|
//! | `tracing` | off     | logs server failures, dropped replies and malformed messages through `tracing` |
//! | `amqp`    | off     | `AmqpTransport`: `amqp://` / `rabbit://` URLs, through the `lapin` client on Tokio (plain TCP, no TLS); needs Rust 1.88 |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "amqp")]
mod amqp;
mod client;
mod context;
mod error;
mod inproc;
mod notify;
mod pump;
mod server;
mod shared;
mod target;
mod transport;
mod util;
mod wire;

#[cfg(feature = "amqp")]
pub use crate::amqp::AmqpTransport;
pub use crate::client::{PrepareOptions, RpcClient};
pub use crate::context::Context;
pub use crate::error::{RemoteError, RpcError, TransportError};
pub use crate::inproc::InprocTransport;
pub use crate::notify::{
    FilterError, ListenerStats, Notification, NotificationEndpoint, NotificationFilter,
    NotificationFilterBuilder, NotificationListener, NotificationListenerOptions,
    NotificationMetadata, NotificationResult, Notifier, Priority, PriorityParseError,
};
pub use crate::server::{Endpoint, HandlerError, RpcServer, RpcServerOptions, ServerStats};
pub use crate::target::{Target, Version, VersionParseError};
pub use crate::transport::{
    transport_from_url, Acknowledger, BoxFuture, IncomingCall, IncomingNotification, ListenOptions,
    Listener, Reply, Responder, SendOptions, Transport, TransportStats,
};
pub use crate::wire::{RpcMessage, WireError, WireNotification, WireReply, WireRequest};
