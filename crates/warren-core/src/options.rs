//! Options structs and small value types of the broker API.

use std::fmt;
use std::str::FromStr;

use crate::clock::ManualClock;
use crate::error::Error;
use crate::field::FieldTable;

/// The exchange types warren implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes to bindings whose key equals the routing key.
    Direct,
    /// Routes to every binding.
    Fanout,
    /// Routes by dotted patterns with `*` and `#` wildcards.
    Topic,
    /// Routes by message headers against binding arguments.
    Headers,
}

impl ExchangeKind {
    /// The AMQP name: `direct`, `fanout`, `topic`, `headers`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExchangeKind {
    type Err = Error;

    /// Parses an AMQP exchange type name.
    ///
    /// # Errors
    ///
    /// 503 COMMAND_INVALID for an unknown type, as RabbitMQ answers.
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            other => {
                return Err(Error::CommandInvalid(format!(
                    "unknown exchange type '{other}'"
                )))
            }
        })
    }
}

/// Options of [`Broker::declare_exchange`](crate::Broker::declare_exchange).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExchangeDeclareOptions {
    /// Only check that it exists (404 if not); create nothing.
    pub passive: bool,
    /// Kept for the wire protocol; warren holds everything in memory.
    pub durable: bool,
    /// Delete the exchange when its last binding goes.
    pub auto_delete: bool,
    /// Refuse direct publishes; reachable only through exchange bindings.
    pub internal: bool,
    /// Arguments, e.g. `alternate-exchange`.
    pub arguments: FieldTable,
}

/// Who owns an exclusive queue (in AMQP, a connection).
///
/// In-process callers that pass no owner are trusted and may use any queue;
/// an owner is checked against the exclusive queues of other owners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub(crate) u64);

/// What a full bounded queue does with one more message (`x-overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter, reason `maxlen`) the oldest ready message.
    #[default]
    DropHead,
    /// Refuse the new message (publisher confirms see a nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
    /// warren's in-process extension: the publisher waits for room.
    Block,
}

impl Overflow {
    /// The `x-overflow` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
            Overflow::Block => "block",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Overflow> {
        Some(match s {
            "drop-head" => Overflow::DropHead,
            "reject-publish" => Overflow::RejectPublish,
            "reject-publish-dlx" => Overflow::RejectPublishDlx,
            "block" => Overflow::Block,
            _ => return None,
        })
    }
}

/// Options of [`Broker::declare_queue`](crate::Broker::declare_queue).
///
/// Bounds, TTL and dead-lettering come through `arguments`, under RabbitMQ's
/// names (`x-max-length`, `x-max-length-bytes`, `x-overflow`,
/// `x-message-ttl`, `x-expires`, `x-dead-letter-exchange`,
/// `x-dead-letter-routing-key`); the `with_*` helpers set them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueDeclareOptions {
    /// Only check that it exists (404 if not); create nothing.
    pub passive: bool,
    /// Kept for the wire protocol; warren holds everything in memory.
    pub durable: bool,
    /// Usable only by its owner (`owner` must be set), deleted with it.
    pub exclusive: bool,
    /// Delete the queue when its last consumer leaves.
    pub auto_delete: bool,
    /// Queue arguments.
    pub arguments: FieldTable,
    /// The declaring owner, for exclusive queues.
    pub owner: Option<OwnerId>,
}

impl QueueDeclareOptions {
    /// Sets `x-max-length`.
    pub fn with_max_length(mut self, n: u64) -> Self {
        self.arguments.insert("x-max-length", clamp_i64(n));
        self
    }
    /// Sets `x-max-length-bytes`.
    pub fn with_max_length_bytes(mut self, n: u64) -> Self {
        self.arguments.insert("x-max-length-bytes", clamp_i64(n));
        self
    }
    /// Sets `x-overflow`.
    pub fn with_overflow(mut self, overflow: Overflow) -> Self {
        self.arguments.insert("x-overflow", overflow.as_str());
        self
    }
    /// Sets `x-message-ttl` (milliseconds).
    pub fn with_message_ttl(mut self, ms: u64) -> Self {
        self.arguments.insert("x-message-ttl", clamp_i64(ms));
        self
    }
    /// Sets `x-expires` (milliseconds unused before the queue is deleted).
    pub fn with_expires(mut self, ms: u64) -> Self {
        self.arguments.insert("x-expires", clamp_i64(ms));
        self
    }
    /// Sets `x-dead-letter-exchange` and, if given, `x-dead-letter-routing-key`.
    pub fn with_dead_letter(mut self, exchange: &str, routing_key: Option<&str>) -> Self {
        self.arguments.insert("x-dead-letter-exchange", exchange);
        if let Some(rk) = routing_key {
            self.arguments.insert("x-dead-letter-routing-key", rk);
        }
        self
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What a queue declare reports (AMQP's `queue.declare-ok`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue's name (server-chosen when the declare gave none).
    pub queue: String,
    /// Ready messages.
    pub message_count: u64,
    /// Consumers.
    pub consumer_count: u32,
}

/// Options of [`Broker::delete_queue`](crate::Broker::delete_queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Refuse (406) if the queue has consumers.
    pub if_unused: bool,
    /// Refuse (406) if the queue has ready messages.
    pub if_empty: bool,
    /// The caller, checked against an exclusive queue's owner.
    pub owner: Option<OwnerId>,
}

/// Options of [`Broker::consume`](crate::Broker::consume).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsumeOptions {
    /// The consumer tag; empty = server-generated (`amq.ctag-…`).
    pub consumer_tag: String,
    /// Deliveries need no answer; they count as acked once received.
    pub no_ack: bool,
    /// Be the queue's only consumer (403 if it has others).
    pub exclusive: bool,
    /// At most this many deliveries unanswered (0 = no limit).
    ///
    /// The consumer holds a hand-off ring sized to this window: the window
    /// rounded up to a power of two, at most 1,024 entries of 128 bytes
    /// (128 KiB); 256 entries (32 KiB) without a limit. Deliveries the window
    /// allows beyond the ring wait in the queue, counted as ready, and are
    /// handed over as the consumer catches up (RabbitMQ would already count
    /// them as unacked).
    ///
    /// A consumer at its limit with deliveries still to receive gets its
    /// credit back in batches of a quarter window, so that a fast publisher
    /// and the consumer do not trade a cache line per message; one that has
    /// received everything it was given is refilled by its next answer, as
    /// in RabbitMQ.
    pub prefetch: u32,
    /// Consumer arguments (kept, not interpreted).
    pub arguments: FieldTable,
    /// The caller, checked against an exclusive queue's owner.
    pub owner: Option<OwnerId>,
}

/// Options of [`Broker::get`](crate::Broker::get).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// The message counts as acked at once.
    pub no_ack: bool,
    /// The caller, checked against an exclusive queue's owner.
    pub owner: Option<OwnerId>,
}

/// Settings of a [`Broker`](crate::Broker).
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// The virtual host's name, used in error texts (default `/`).
    pub vhost: String,
    /// A manual clock for deterministic TTL tests (default: the system's).
    pub clock: Option<ManualClock>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            vhost: "/".to_owned(),
            clock: None,
        }
    }
}
