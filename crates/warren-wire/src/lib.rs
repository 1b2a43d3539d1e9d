//! warren-wire: an AMQP 0-9-1 server for warren brokers.
//!
//! It serves [`warren_core::Broker`]s over the network so that unmodified
//! AMQP 0-9-1 clients (pika, kombu / py-amqp and so oslo.messaging, lapin,
//! amqprs) use them as they would use RabbitMQ 3.10: same methods, same
//! RabbitMQ extensions (publisher confirms, `basic.nack`, exchange-to-exchange
//! bindings, consumer cancel notifications, `connection.blocked`, direct
//! reply-to, per-consumer QoS), same error codes and texts, same choice of
//! which errors close a channel and which close the connection.
//!
//! The brokers stay ordinary in-process handles: one process can publish and
//! consume in-process while network clients do the same on the same queues.
//!
//! ```no_run
//! use warren_core::Broker;
//! use warren_wire::{Server, ServerConfig, User};
//!
//! # async fn run() -> std::io::Result<()> {
//! let orders = Broker::new();
//! let config = ServerConfig::with_broker(orders.clone())
//!     .with_user(User::new("shop", "secret").with_vhosts(["/"]));
//! let server = Server::bind("127.0.0.1:5672", config).await?;
//!
//! // amqp://shop:secret@127.0.0.1:5672/%2F reaches `orders`.
//! orders.declare_queue("invoices", Default::default()).ok();
//! # server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! To serve connections that do not come from a TCP listener (a Unix
//! socket, a TLS stream, an in-memory [`tokio::io::duplex`] pipe in tests),
//! hand each stream to a [`ConnectionHandler`].
//!
//! `warren serve` runs one standalone from a TOML file: see [`serve`] (or
//! [`blocking_serve`] from a synchronous `main`) and [`ServeConfig`].
//!
//! # What it implements
//!
//! - Handshake: protocol header check (a wrong header is answered with
//!   `AMQP 0 0 9 1` and the socket closed), `connection.start` with RabbitMQ's
//!   capabilities, PLAIN and AMQPLAIN (with or without the table's length
//!   prefix, as py-amqp sends it), tune (frame max, channel max, heartbeats:
//!   a client silent for two intervals is dropped), vhost open with per-user
//!   access, clean close.
//! - Channels: open, close, flow (`active=false` is refused with 540, as
//!   RabbitMQ does).
//! - Exchanges and queues: declare (passive, nowait, arguments), delete,
//!   bind, unbind, purge; an empty queue name means the channel's last
//!   declared queue.
//! - Basic: publish (mandatory → `basic.return` 312 NO_ROUTE before the
//!   confirm), consume (exclusive, no-ack, server-named tags), cancel (and
//!   server-sent cancel when a queue is deleted under a consumer), get,
//!   qos (per consumer; `global` per channel), ack / nack / reject with
//!   `multiple`, recover.
//! - Publisher confirms (acks batched with `multiple`; a queue refusing with
//!   `reject-publish` gives a nack) and transactions (`tx.select` /
//!   `commit` / `rollback`: publishes and acks held until commit).
//! - RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`).
//! - The memory alarm: above a watermark, publishing connections get
//!   `connection.blocked` and are not read until it clears.
//! - Limits: `frame_max`, `channel_max`, `max_message_size`,
//!   `connection_max`; nothing a client sends can panic the server or grow
//!   its memory without bound (a client that does not read what it asked
//!   for is not read from until it does).
//!
//! # Where it differs from RabbitMQ
//!
//! - Nothing is durable (warren-core keeps everything in memory).
//! - `basic.qos` with `global = true` is enforced by the channel as it
//!   forwards deliveries; each consumer on the channel is also given the
//!   global limit as its own prefetch, so at most that many messages wait in
//!   a blocked consumer instead of going to other consumers.
//! - Unknown classes or methods get `connection.close` 540 NOT_IMPLEMENTED
//!   (RabbitMQ 3.10 drops the TCP connection).
//! - A content body longer than its header announced closes the connection
//!   with 501 FRAME_ERROR at once (RabbitMQ notices on the next frame).
//! - `connection_max` refuses the extra connection at `connection.open`
//!   with 530, as current RabbitMQ does (3.10 leaves it unserved, without a
//!   word, and enforces the limit only approximately).
//! - The default memory measure is an estimate (messages held times the
//!   average body size published over the wire); pass
//!   [`MemoryWatermark::with_probe`] for an exact one.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | (none)  |         |              |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod channel;
mod codec;
mod config;
mod connection;
mod consumer;
mod convert;
mod error;
mod serve;
mod server;
mod writer;

pub use crate::config::{Limits, MemoryProbe, MemoryWatermark, ServerConfig, User};
pub use crate::error::ConfigError;
pub use crate::serve::{
    blocking_serve, serve, serve_until, LimitsEntry, MemoryEntry, ServeConfig, UserEntry,
};
pub use crate::server::{ConnectionHandler, Server};
