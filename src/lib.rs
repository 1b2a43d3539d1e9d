//! warren: an embeddable message broker engine with RabbitMQ's model.
//!
//! This facade re-exports the engine ([`warren_core`]) at its root, and the
//! optional layers as modules:
//!
//! | feature  | default | module        | what it adds |
//! |----------|---------|---------------|--------------|
//! | `rpc`    | on      | [`rpc`]       | oslo.messaging-style call / cast / fanout and notifications |
//! | `wire`   | on      | [`wire`]      | the AMQP 0-9-1 server (`warren serve`) |
//! | `stream` | off     |               | [`Consumer`] implements `futures_core::Stream` |
//!
//! ```
//! use warren::{Broker, ConsumeOptions, QueueDeclareOptions};
//!
//! let broker = Broker::new();
//! broker.declare_queue("hello", QueueDeclareOptions::default())?;
//! let consumer = broker.consume("hello", ConsumeOptions::default())?;
//! broker.publish("", "hello", "world")?;
//! let delivery = consumer.recv()?;
//! assert_eq!(&delivery.body()[..], b"world");
//! delivery.ack();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub use warren_core::*;

/// oslo.messaging-style RPC and notifications (the `warren-rpc` crate).
#[cfg(feature = "rpc")]
pub use warren_rpc as rpc;

/// The AMQP 0-9-1 server (the `warren-wire` crate).
#[cfg(feature = "wire")]
pub use warren_wire as wire;
