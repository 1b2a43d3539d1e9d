//! warren-core: an in-process message broker engine with RabbitMQ's model.
//!
//! Exchanges (direct, fanout, topic, headers), bindings (queue and
//! exchange-to-exchange), bounded queues with explicit overflow policies,
//! TTL and dead-lettering, consumers with acknowledgements and prefetch: the
//! AMQP 0-9-1 model RabbitMQ made standard, as a library, with RabbitMQ's
//! observable semantics. Sync and async callers use the same objects; no async
//! runtime is needed.
//!
//! ```
//! use warren_core::{Broker, ConsumeOptions, QueueDeclareOptions};
//!
//! let broker = Broker::new();
//! broker.declare_queue("tasks", QueueDeclareOptions::default())?;
//! let worker = broker.consume("tasks", ConsumeOptions { prefetch: 1, ..Default::default() })?;
//!
//! broker.publish("", "tasks", "resize image 42")?; // the default exchange routes by queue name
//! let task = worker.recv()?;
//! assert_eq!(&task.body()[..], b"resize image 42");
//! task.ack();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! | feature  | default | what it adds |
//! |----------|---------|--------------|
//! | `stream` | off     | [`Consumer`] implements `futures_core::Stream` |
//!
//! # Where warren differs from RabbitMQ, on purpose
//!
//! - Overflow `block`: the publisher waits for room (in-process back-pressure).
//! - A [`Delivery`] dropped without an answer is requeued at once (RabbitMQ
//!   requeues when the channel closes).
//! - Nothing is durable: `durable` is kept and compared, for the wire protocol.
//! - A consumer at its prefetch limit that still has deliveries to receive
//!   gets its credit back a quarter window at a time; one that has received
//!   everything is refilled by its next answer, as in RabbitMQ (see
//!   [`ConsumeOptions::prefetch`]).
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod clock;
mod consumer;
mod error;
mod exchange;
mod field;
mod headers;
mod message;
mod options;
mod queue;
mod ring;
mod stats;
mod sync;
mod topic;
mod wait;

pub use crate::broker::{Broker, PublishAsync, PublishError, Published, Publisher};
pub use crate::clock::ManualClock;
pub use crate::consumer::{Consumer, Delivery, Recv, RecvError, RecvTimeoutError, TryRecvError};
pub use crate::error::{Error, Result};
pub use crate::field::{AMQPValue, DecimalValue, FieldTable};
pub use crate::message::{BasicProperties, Message, SharedProperties};
pub use crate::options::{
    BrokerOptions, ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, GetOptions, Overflow,
    OwnerId, QueueDeclareOk, QueueDeclareOptions, QueueDeleteOptions,
};
pub use crate::stats::{BrokerStats, ExchangeStats, QueueStats};
pub use crate::topic::{topic_matches, TopicTrie};
