//! What the `wire_frames` fuzz target checks: a client's bytes fed to a
//! warren-wire connection over an in-memory pipe.
//!
//! The fuzz target in `fuzz_targets/wire_frames.rs` calls [`wire_frames`],
//! and so does `crates/warren-wire/tests/fuzz_regression.rs`, which replays
//! the committed corpus and every minimised failure on each `cargo test`. So
//! this file depends on `warren_wire`, `warren_core`, `amq_protocol`, `tokio`
//! and `arbitrary` only.
//!
//! An input decodes (with `arbitrary`) into a [`Session`]: an optional
//! prelude (protocol header; handshake as `guest`; channel 1 opened), then
//! items: raw bytes, frames with arbitrary payloads, well-formed methods,
//! publishes with their content frames, and cuts that end one write. The
//! bytes go to a server connection ([`ConnectionHandler::serve`]) over
//! [`tokio::io::duplex`] on a current-thread runtime whose clock is paused:
//! time only moves when every task is waiting, so the server's timers
//! (handshake, heartbeats, waiting for `close-ok`) run at once and the same
//! input always plays out the same way.
//!
//! Checks:
//!
//! Sessions that turn the memory alarm on ([`Item::Alarm`]) get a server
//! with a watermark whose probe the session sets; the alarm is cleared
//! before the client goes (a blocked connection reads nothing).
//!
//! - nothing panics, on any task;
//! - once the input is written, the connection ends, or waits for input with
//!   no timer pending; once the client then closes its side (or the server
//!   shuts down), it ends within two virtual minutes;
//! - the server writes back at most [`output_limit`] bytes;
//! - what it writes is the protocol header alone (for a wrong header), or
//!   frames that amq-protocol parses, starting with `connection.start`,
//!   each within the 128 KiB `frame_max` the server offers, content (header
//!   and bodies adding up to the announced size) right after each
//!   `basic.deliver`, `get-ok` and `return`, valid reply codes in every
//!   `close`, and nothing but heartbeats (and a `close-ok` answering a
//!   client's crossing `close`) after a `connection.close` or `close-ok`;
//! - when the server ends the connection on its own before the client goes
//!   away and before any of its timers could fire, the last method it wrote
//!   is `connection.close` or `connection.close-ok`;
//! - afterwards the broker holds no consumer, no unacknowledged message and
//!   no exclusive queue of the connection, and the connection count is 0.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame, WriteContext};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use arbitrary::{Arbitrary, Unstructured};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use warren_core::{Broker, BrokerOptions, ManualClock, QueueDeclareOptions};
use warren_wire::{ConnectionHandler, MemoryWatermark, ServerConfig};

/// The protocol header of AMQP 0-9-1.
const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The `frame_max` the server offers (its default).
const FRAME_MAX: usize = 131_072;
/// At most this many cuts are honoured; later ones are ignored, so a long
/// input spends at most this many virtual milliseconds waiting.
const MAX_WRITES: usize = 64;
/// How long the server may stay busy after the input before it must have
/// ended or be waiting for input (virtual time: longer than any timer a
/// client can arm, two heartbeat intervals of 65 535 s).
const IDLE: Duration = Duration::from_secs(3 * 24 * 3600);
/// How long the connection may take to end once the client has gone
/// (virtual time: the server's own timers are at most 30 s).
const END: Duration = Duration::from_secs(120);
/// How often the server measures memory in sessions with [`Item::Alarm`].
const ALARM_INTERVAL: Duration = Duration::from_secs(1);
/// [`IDLE`] for sessions with [`Item::Alarm`].
const ALARM_IDLE: Duration = Duration::from_secs(600);

/// The most bytes the server may write back for `input` bytes. A
/// publish can be delivered to as many queues as the input declares and
/// redelivered as often as it asks, so the bound is generous; what it
/// catches is a server that never stops writing.
pub fn output_limit(input: usize) -> usize {
    4 * 1024 * 1024 + input.saturating_mul(input) / 8
}

// ---------------------------------------------------------------------------
// The input

/// A client session: what it starts with, what it sends, how it ends.
#[derive(Arbitrary, Debug)]
pub struct Session {
    pub prelude: Prelude,
    pub items: Vec<Item>,
    pub end: End,
}

/// What precedes the items.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Prelude {
    /// Nothing: the items start with the protocol header, or do not.
    Nothing,
    /// The protocol header.
    Header,
    /// The header and a handshake as `guest` on `/`.
    Handshake(Tune),
    /// The handshake and `channel.open` on channel 1.
    Channel(Tune),
}

/// The client's `connection.tune-ok`.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Tune {
    /// 0 (no limit), or a small number of channels.
    pub channel_max: u8,
    /// 0: the server's; 1: the minimum, 4096; otherwise the server's.
    pub small_frames: bool,
    /// Seconds; 0 disables heartbeats.
    pub heartbeat: u8,
}

/// How the session ends once its items are written.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum End {
    /// The client closes its side of the pipe.
    Eof,
    /// The server shuts down (320 CONNECTION_FORCED), then the client goes.
    Shutdown,
}

/// One piece of the session.
#[derive(Arbitrary, Debug)]
pub enum Item {
    /// Bytes as they are.
    Bytes(Vec<u8>),
    /// A frame of `kind` around an arbitrary payload, with a correct size
    /// and end byte.
    Frame {
        kind: u8,
        channel: Chan,
        payload: Vec<u8>,
    },
    /// A method frame for a known class and method with arbitrary arguments.
    RawMethod {
        channel: Chan,
        method: u8,
        args: Vec<u8>,
    },
    /// A well-formed method.
    Method { channel: Chan, method: Method },
    /// A content header and bodies (announcing `body.len() + size_delta`
    /// bytes, cut into `pieces` body frames).
    Content {
        channel: Chan,
        class: bool,
        properties: Props,
        body: Vec<u8>,
        size_delta: i8,
        pieces: u8,
    },
    /// `basic.publish` with its content, well formed.
    Publish {
        channel: Chan,
        exchange: Name,
        routing_key: Name,
        mandatory: bool,
        properties: Props,
        body: Vec<u8>,
    },
    /// A heartbeat frame.
    Heartbeat(Chan),
    /// End the current write, then advance the broker's clock by this many
    /// seconds (message TTL, `x-expires`) and run its expiry.
    Tick(u8),
    /// End the current write and let the server handle it.
    Cut,
    /// End the current write, then turn the memory alarm on or off (the
    /// server measures once a virtual second; publishers are blocked while
    /// it is on).
    Alarm(bool),
}

/// A channel number: mostly 1 and 2, sometimes 0 or another.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Chan(pub u8);

impl Chan {
    fn id(self) -> u16 {
        match self.0 % 16 {
            0..=9 => 1,
            10..=12 => 2,
            13 => 0,
            14 => 3,
            _ => u16::from(self.0) << 8 | 0xff,
        }
    }
}

/// A name for queues, exchanges, routing keys and consumer tags.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Name(pub u8);

const NAMES: [&str; 16] = [
    "q",
    "r",
    "",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "x",
    "y",
    "amq.rabbitmq.reply-to",
    "a.b",
    "a.*",
    "#",
    "amq.gen-1",
    "dlx",
    "tag",
];

impl Name {
    fn get(self) -> ShortString {
        NAMES[usize::from(self.0) % NAMES.len()].into()
    }
}

/// A delivery tag: small ones (those the server hands out), 0, or huge.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Tag(pub u8);

impl Tag {
    fn get(self) -> u64 {
        match self.0 {
            0..=239 => u64::from(self.0 % 12),
            240..=247 => u64::from(u32::MAX) + u64::from(self.0),
            _ => u64::MAX - u64::from(self.0 - 248),
        }
    }
}

/// An argument table from the keys warren and RabbitMQ interpret.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct Args(pub Vec<(u8, Value)>);

const KEYS: [&str; 16] = [
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-message-ttl",
    "x-expires",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-match",
    "alternate-exchange",
    "x-queue-type",
    "x-single-active-consumer",
    "x-priority",
    "x-max-priority",
    "x-cancel-on-ha-failover",
    "a",
    "x-consumer-timeout",
];

/// A field value: the types RabbitMQ checks arguments for, and odd ones.
#[derive(Arbitrary, Debug, Clone)]
pub enum Value {
    Int(i32),
    Long(i64),
    Byte(i8),
    Str(Name),
    Text(u8),
    Bool(bool),
    Float(f32),
    Void,
    Bytes(Vec<u8>),
    Table(Vec<(u8, u8)>),
    Array(Vec<i16>),
}

const TEXTS: [&str; 8] = [
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "all",
    "any",
    "classic",
    "quorum",
    "-1",
];

impl Value {
    fn get(&self) -> AMQPValue {
        match self {
            Value::Int(i) => AMQPValue::LongInt(*i),
            Value::Long(i) => AMQPValue::LongLongInt(*i),
            Value::Byte(i) => AMQPValue::ShortShortInt(*i),
            Value::Str(n) => AMQPValue::LongString(LongString::from(n.get().as_str())),
            Value::Text(t) => {
                AMQPValue::LongString(LongString::from(TEXTS[usize::from(*t) % TEXTS.len()]))
            }
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Float(f) => AMQPValue::Float(*f),
            Value::Void => AMQPValue::Void,
            Value::Bytes(b) => AMQPValue::ByteArray(b.clone().into()),
            Value::Table(entries) => {
                let mut t = FieldTable::default();
                for (k, v) in entries.iter().take(4) {
                    t.insert(
                        KEYS[usize::from(*k) % KEYS.len()].into(),
                        AMQPValue::ShortShortUInt(*v),
                    );
                }
                AMQPValue::FieldTable(t)
            }
            Value::Array(items) => {
                let mut a = FieldArray::default();
                for i in items.iter().take(4) {
                    a.push(AMQPValue::ShortInt(*i));
                }
                AMQPValue::FieldArray(a)
            }
        }
    }
}

impl Args {
    fn get(&self) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in self.0.iter().take(6) {
            t.insert(KEYS[usize::from(*k) % KEYS.len()].into(), v.get());
        }
        t
    }
}

/// Message properties.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct Props {
    pub expiration: Option<u8>,
    pub headers: Option<Args>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub reply_to: Option<Name>,
    pub correlation_id: Option<Name>,
    pub user_id: Option<bool>,
}

const EXPIRATIONS: [&str; 8] = [
    "0",
    "1",
    "1000",
    "",
    "-1",
    "abc",
    "99999999999999999999",
    "60000",
];

impl Props {
    fn get(&self) -> BasicProperties {
        let mut p = BasicProperties::default();
        if let Some(e) = self.expiration {
            p = p.with_expiration(EXPIRATIONS[usize::from(e) % EXPIRATIONS.len()].into());
        }
        if let Some(h) = &self.headers {
            p = p.with_headers(h.get());
        }
        if let Some(d) = self.delivery_mode {
            p = p.with_delivery_mode(d % 4);
        }
        if let Some(pr) = self.priority {
            p = p.with_priority(pr);
        }
        if let Some(r) = self.reply_to {
            p = p.with_reply_to(r.get());
        }
        if let Some(c) = self.correlation_id {
            p = p.with_correlation_id(c.get());
        }
        if let Some(guest) = self.user_id {
            p = p.with_user_id(if guest { "guest" } else { "other" }.into());
        }
        p
    }
}

/// A well-formed method a client may send (and some it may not).
#[derive(Arbitrary, Debug)]
pub enum Method {
    ChannelOpen,
    ChannelClose(u16),
    ChannelCloseOk,
    ChannelFlow(bool),
    ChannelFlowOk(bool),
    ExchangeDeclare {
        exchange: Name,
        kind: u8,
        passive: bool,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        nowait: bool,
        arguments: Args,
    },
    ExchangeDelete {
        exchange: Name,
        if_unused: bool,
        nowait: bool,
    },
    ExchangeBind {
        destination: Name,
        source: Name,
        routing_key: Name,
        nowait: bool,
        arguments: Args,
    },
    ExchangeUnbind {
        destination: Name,
        source: Name,
        routing_key: Name,
        nowait: bool,
    },
    QueueDeclare {
        queue: Name,
        passive: bool,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        nowait: bool,
        arguments: Args,
    },
    QueueBind {
        queue: Name,
        exchange: Name,
        routing_key: Name,
        nowait: bool,
        arguments: Args,
    },
    QueueUnbind {
        queue: Name,
        exchange: Name,
        routing_key: Name,
    },
    QueuePurge {
        queue: Name,
        nowait: bool,
    },
    QueueDelete {
        queue: Name,
        if_unused: bool,
        if_empty: bool,
        nowait: bool,
    },
    Qos {
        prefetch_count: u8,
        global: bool,
    },
    Consume {
        queue: Name,
        consumer_tag: Name,
        no_local: bool,
        no_ack: bool,
        exclusive: bool,
        nowait: bool,
        arguments: Args,
    },
    Cancel {
        consumer_tag: Name,
        nowait: bool,
    },
    Publish {
        exchange: Name,
        routing_key: Name,
        mandatory: bool,
        immediate: bool,
    },
    Get {
        queue: Name,
        no_ack: bool,
    },
    Ack {
        delivery_tag: Tag,
        multiple: bool,
    },
    Reject {
        delivery_tag: Tag,
        requeue: bool,
    },
    Nack {
        delivery_tag: Tag,
        multiple: bool,
        requeue: bool,
    },
    Recover(bool),
    RecoverAsync(bool),
    ConfirmSelect(bool),
    TxSelect,
    TxCommit,
    TxRollback,
    ConnectionClose(u16),
    ConnectionCloseOk,
    UpdateSecret,
    StartOk(u8),
    TuneOk(Tune),
    Open(Name),
}

const KINDS: [&str; 6] = ["direct", "fanout", "topic", "headers", "x-bogus", ""];

impl Method {
    fn get(&self) -> AMQPClass {
        use Method as M;
        let close_text = |code: u16| -> ShortString { format!("bye {code}").as_str().into() };
        match self {
            M::ChannelOpen => AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            M::ChannelClose(code) => {
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: *code,
                    reply_text: close_text(*code),
                    class_id: 0,
                    method_id: 0,
                }))
            }
            M::ChannelCloseOk => {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
            }
            M::ChannelFlow(active) => {
                AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: *active }))
            }
            M::ChannelFlowOk(active) => {
                AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                    active: *active,
                }))
            }
            M::ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                auto_delete,
                internal,
                nowait,
                arguments,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: exchange.get(),
                kind: KINDS[usize::from(*kind) % KINDS.len()].into(),
                passive: *passive,
                durable: *durable,
                auto_delete: *auto_delete,
                internal: *internal,
                nowait: *nowait,
                arguments: arguments.get(),
            })),
            M::ExchangeDelete {
                exchange,
                if_unused,
                nowait,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: exchange.get(),
                if_unused: *if_unused,
                nowait: *nowait,
            })),
            M::ExchangeBind {
                destination,
                source,
                routing_key,
                nowait,
                arguments,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: destination.get(),
                source: source.get(),
                routing_key: routing_key.get(),
                nowait: *nowait,
                arguments: arguments.get(),
            })),
            M::ExchangeUnbind {
                destination,
                source,
                routing_key,
                nowait,
            } => AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: destination.get(),
                source: source.get(),
                routing_key: routing_key.get(),
                nowait: *nowait,
                arguments: FieldTable::default(),
            })),
            M::QueueDeclare {
                queue,
                passive,
                durable,
                exclusive,
                auto_delete,
                nowait,
                arguments,
            } => AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: queue.get(),
                passive: *passive,
                durable: *durable,
                exclusive: *exclusive,
                auto_delete: *auto_delete,
                nowait: *nowait,
                arguments: arguments.get(),
            })),
            M::QueueBind {
                queue,
                exchange,
                routing_key,
                nowait,
                arguments,
            } => AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.get(),
                exchange: exchange.get(),
                routing_key: routing_key.get(),
                nowait: *nowait,
                arguments: arguments.get(),
            })),
            M::QueueUnbind {
                queue,
                exchange,
                routing_key,
            } => AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: queue.get(),
                exchange: exchange.get(),
                routing_key: routing_key.get(),
                arguments: FieldTable::default(),
            })),
            M::QueuePurge { queue, nowait } => {
                AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                    queue: queue.get(),
                    nowait: *nowait,
                }))
            }
            M::QueueDelete {
                queue,
                if_unused,
                if_empty,
                nowait,
            } => AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: queue.get(),
                if_unused: *if_unused,
                if_empty: *if_empty,
                nowait: *nowait,
            })),
            M::Qos {
                prefetch_count,
                global,
            } => AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: u16::from(*prefetch_count % 8),
                global: *global,
            })),
            M::Consume {
                queue,
                consumer_tag,
                no_local,
                no_ack,
                exclusive,
                nowait,
                arguments,
            } => AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.get(),
                consumer_tag: consumer_tag.get(),
                no_local: *no_local,
                no_ack: *no_ack,
                exclusive: *exclusive,
                nowait: *nowait,
                arguments: arguments.get(),
            })),
            M::Cancel {
                consumer_tag,
                nowait,
            } => AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: consumer_tag.get(),
                nowait: *nowait,
            })),
            M::Publish {
                exchange,
                routing_key,
                mandatory,
                immediate,
            } => AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.get(),
                routing_key: routing_key.get(),
                mandatory: *mandatory,
                immediate: *immediate,
            })),
            M::Get { queue, no_ack } => AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.get(),
                no_ack: *no_ack,
            })),
            M::Ack {
                delivery_tag,
                multiple,
            } => AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: delivery_tag.get(),
                multiple: *multiple,
            })),
            M::Reject {
                delivery_tag,
                requeue,
            } => AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: delivery_tag.get(),
                requeue: *requeue,
            })),
            M::Nack {
                delivery_tag,
                multiple,
                requeue,
            } => AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: delivery_tag.get(),
                multiple: *multiple,
                requeue: *requeue,
            })),
            M::Recover(requeue) => AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
                requeue: *requeue,
            })),
            M::RecoverAsync(requeue) => {
                AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                    requeue: *requeue,
                }))
            }
            M::ConfirmSelect(nowait) => {
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                    nowait: *nowait,
                }))
            }
            M::TxSelect => AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})),
            M::TxCommit => AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
            M::TxRollback => AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
            M::ConnectionClose(code) => {
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: *code,
                    reply_text: close_text(*code),
                    class_id: 0,
                    method_id: 0,
                }))
            }
            M::ConnectionCloseOk => {
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
            }
            M::UpdateSecret => AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(
                connection::UpdateSecret {
                    new_secret: LongString::from("secret"),
                    reason: "rotation".into(),
                },
            )),
            M::StartOk(which) => start_ok(*which),
            M::TuneOk(t) => tune_ok(*t),
            M::Open(vhost) => {
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: if vhost.0 % 4 == 0 {
                        vhost.get()
                    } else {
                        "/".into()
                    },
                }))
            }
        }
    }
}

/// `connection.start-ok`: PLAIN or AMQPLAIN as guest, or one of the ways to
/// get it wrong.
fn start_ok(which: u8) -> AMQPClass {
    let (mechanism, response): (&str, &[u8]) = match which % 8 {
        0..=3 => ("PLAIN", b"\0guest\0guest"),
        4 => ("PLAIN", b"\0guest\0nope"),
        5 => ("PLAIN", b"guest"),
        6 => (
            "AMQPLAIN",
            b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest",
        ),
        _ => ("EXTERNAL", b""),
    };
    // 0 and 1 (0 is the prelude's) announce the capabilities that make the
    // server send `connection.blocked` and `basic.cancel`.
    let mut client_properties = FieldTable::default();
    if which % 8 < 2 {
        let mut caps = FieldTable::default();
        for cap in ["connection.blocked", "consumer_cancel_notify"] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    }
    AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties,
        mechanism: mechanism.into(),
        response: LongString::from(response.to_vec()),
        locale: "en_US".into(),
    }))
}

fn tune_ok(t: Tune) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: u16::from(t.channel_max % 8),
        frame_max: if t.small_frames {
            4096
        } else {
            FRAME_MAX as u32
        },
        heartbeat: u16::from(t.heartbeat % 4),
    }))
}

// ---------------------------------------------------------------------------
// Encoding

fn frame(out: &mut Vec<u8>, f: &AMQPFrame) {
    if let Ok(ctx) = gen_frame(f)(WriteContext::from(Vec::new())) {
        out.extend_from_slice(&ctx.into_inner().0);
    }
}

fn method(out: &mut Vec<u8>, channel: u16, m: AMQPClass) {
    frame(out, &AMQPFrame::Method(channel, m));
}

fn raw_frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xce);
}

/// Class and method ids the server knows, for [`Item::RawMethod`].
const METHODS: [(u16, u16); 40] = [
    (10, 11),
    (10, 31),
    (10, 40),
    (10, 50),
    (10, 51),
    (10, 70),
    (20, 10),
    (20, 20),
    (20, 21),
    (20, 40),
    (20, 41),
    (40, 10),
    (40, 20),
    (40, 30),
    (40, 40),
    (50, 10),
    (50, 20),
    (50, 30),
    (50, 40),
    (50, 50),
    (60, 10),
    (60, 20),
    (60, 30),
    (60, 40),
    (60, 70),
    (60, 80),
    (60, 90),
    (60, 100),
    (60, 110),
    (60, 120),
    (85, 10),
    (90, 10),
    (90, 20),
    (90, 30),
    (30, 10),
    (10, 10),
    (60, 60),
    (60, 50),
    (99, 1),
    (60, 99),
];

fn content(
    out: &mut Vec<u8>,
    channel: u16,
    class_id: u16,
    properties: BasicProperties,
    body: &[u8],
    body_size: u64,
    pieces: usize,
) {
    frame(
        out,
        &AMQPFrame::Header(
            channel,
            AMQPContentHeader {
                class_id,
                body_size,
                properties,
            },
        ),
    );
    let piece = body.len().div_ceil(pieces.max(1)).max(1);
    for p in body.chunks(piece) {
        raw_frame(out, 3, channel, p);
    }
}

/// One write of the client: bytes, then seconds to advance the broker's
/// clock by once the server has handled them, and the memory alarm to set.
#[derive(Debug, Default)]
pub struct Write {
    pub bytes: Vec<u8>,
    pub tick: u8,
    pub alarm: Option<bool>,
}

impl Session {
    /// The client's writes.
    pub fn writes(&self) -> Vec<Write> {
        let mut writes: Vec<Write> = Vec::new();
        let mut out = Vec::new();
        match self.prelude {
            Prelude::Nothing => {}
            Prelude::Header => out.extend_from_slice(HEADER),
            Prelude::Handshake(t) | Prelude::Channel(t) => {
                out.extend_from_slice(HEADER);
                method(&mut out, 0, start_ok(0));
                method(&mut out, 0, tune_ok(t));
                method(
                    &mut out,
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                        virtual_host: "/".into(),
                    })),
                );
                if matches!(self.prelude, Prelude::Channel(_)) {
                    method(&mut out, 1, Method::ChannelOpen.get());
                }
            }
        }
        for item in &self.items {
            match item {
                Item::Bytes(b) => out.extend_from_slice(b),
                Item::Frame {
                    kind,
                    channel,
                    payload,
                } => raw_frame(&mut out, *kind % 10, channel.id(), payload),
                Item::RawMethod {
                    channel,
                    method: m,
                    args,
                } => {
                    let (class, id) = METHODS[usize::from(*m) % METHODS.len()];
                    let mut payload = class.to_be_bytes().to_vec();
                    payload.extend_from_slice(&id.to_be_bytes());
                    payload.extend_from_slice(args);
                    raw_frame(&mut out, 1, channel.id(), &payload);
                }
                Item::Method { channel, method: m } => method(&mut out, channel.id(), m.get()),
                Item::Content {
                    channel,
                    class,
                    properties,
                    body,
                    size_delta,
                    pieces,
                } => {
                    let size = (body.len() as i64 + i64::from(*size_delta)).max(0) as u64;
                    content(
                        &mut out,
                        channel.id(),
                        if *class { 60 } else { 50 },
                        properties.get(),
                        body,
                        size,
                        usize::from(*pieces % 4),
                    );
                }
                Item::Publish {
                    channel,
                    exchange,
                    routing_key,
                    mandatory,
                    properties,
                    body,
                } => {
                    let ch = channel.id();
                    method(
                        &mut out,
                        ch,
                        Method::Publish {
                            exchange: *exchange,
                            routing_key: *routing_key,
                            mandatory: *mandatory,
                            immediate: false,
                        }
                        .get(),
                    );
                    content(
                        &mut out,
                        ch,
                        60,
                        properties.get(),
                        body,
                        body.len() as u64,
                        1,
                    );
                }
                Item::Heartbeat(channel) => raw_frame(&mut out, 8, channel.id(), &[]),
                Item::Tick(secs) => {
                    if writes.len() < MAX_WRITES {
                        writes.push(Write {
                            bytes: std::mem::take(&mut out),
                            tick: *secs,
                            alarm: None,
                        });
                    }
                }
                Item::Cut => {
                    if writes.len() < MAX_WRITES {
                        writes.push(Write {
                            bytes: std::mem::take(&mut out),
                            ..Write::default()
                        });
                    }
                }
                Item::Alarm(on) => {
                    if writes.len() < MAX_WRITES {
                        writes.push(Write {
                            bytes: std::mem::take(&mut out),
                            tick: 0,
                            alarm: Some(*on),
                        });
                    }
                }
            }
        }
        writes.push(Write {
            bytes: out,
            ..Write::default()
        });
        writes.retain(|w| !w.bytes.is_empty() || w.tick > 0 || w.alarm.is_some());
        writes
    }
}

// ---------------------------------------------------------------------------
// Running and checking

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts panics on every thread (tokio catches those of its tasks), then
/// does what the previous hook did (under libFuzzer: abort).
fn count_panics() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// First byte of a raw input: see [`Session::from_raw`].
pub const RAW: u8 = 0xff;

impl Session {
    /// A session from a raw input: [`RAW`], a byte of options, then the
    /// bytes to send. Options: bits 0-1 the prelude (nothing, header,
    /// handshake, channel 1 opened; default tune), bit 2 the end (EOF,
    /// shutdown), bits 3-7 `n`: the bytes go in writes of `13 * n` bytes
    /// (0: one write; 31: each write is prefixed by its length, a
    /// big-endian `u16`).
    ///
    /// Seeds are easier to write this way than through `arbitrary`'s
    /// encoding; the fuzzer mutates both forms.
    pub fn from_raw(options: u8, bytes: &[u8]) -> Session {
        let tune = Tune {
            channel_max: 0,
            small_frames: false,
            heartbeat: 0,
        };
        let prelude = match options & 3 {
            0 => Prelude::Nothing,
            1 => Prelude::Header,
            2 => Prelude::Handshake(tune),
            _ => Prelude::Channel(tune),
        };
        let end = if options & 4 == 0 {
            End::Eof
        } else {
            End::Shutdown
        };
        let stride = usize::from(options >> 3) * 13;
        let items = if stride == 0 {
            vec![Item::Bytes(bytes.to_vec())]
        } else if options >> 3 == 31 {
            // Writes of a length given by a big-endian u16 before each.
            let mut items = Vec::new();
            let mut rest = bytes;
            while let [a, b, tail @ ..] = rest {
                let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
                items.push(Item::Bytes(tail[..n].to_vec()));
                items.push(Item::Cut);
                rest = &tail[n..];
            }
            items
        } else {
            bytes
                .chunks(stride)
                .flat_map(|c| [Item::Bytes(c.to_vec()), Item::Cut])
                .collect()
        };
        Session {
            prelude,
            items,
            end,
        }
    }

    /// The session `data` encodes: raw ([`from_raw`](Self::from_raw)) if it
    /// starts with [`RAW`], otherwise decoded with `arbitrary`.
    pub fn decode(data: &[u8]) -> Option<Session> {
        match data {
            [RAW, options, bytes @ ..] => Some(Session::from_raw(*options, bytes)),
            _ => Session::arbitrary_take_rest(Unstructured::new(data)).ok(),
        }
    }
}

/// Decodes `data` as a [`Session`] and runs it through [`check_session`].
pub fn wire_frames(data: &[u8]) {
    if let Some(session) = Session::decode(data) {
        check_session(&session);
    }
}

/// Plays `session` against a fresh server and checks what happens; returns
/// what the server wrote.
///
/// # Panics
///
/// When a check fails (and when the server panics).
pub fn check_session(session: &Session) -> Vec<u8> {
    count_panics();
    let panics = PANICS.load(Ordering::SeqCst);
    let writes = session.writes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    let output = runtime.block_on(play(session, &writes));
    drop(runtime);
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        panics,
        "something panicked (see above)"
    );
    output
}

/// What one session did.
struct Played {
    output: Vec<u8>,
    /// The server ended the connection before the client went away, with no
    /// timer able to fire first.
    ended_on_its_own: bool,
    /// When (virtual time after the start) the protocol header's last byte
    /// was written.
    header_at: Option<Duration>,
}

async fn play(session: &Session, writes: &[Write]) -> Vec<u8> {
    let clock = ManualClock::new();
    let broker = Broker::with_options(BrokerOptions {
        clock: Some(clock.clone()),
        ..BrokerOptions::default()
    });
    // The memory alarm, when the session uses it: what the probe reports.
    let memory = Arc::new(AtomicU64::new(0));
    let alarms = writes.iter().any(|w| w.alarm.is_some());
    let mut config = ServerConfig::with_broker(broker.clone());
    if alarms {
        let probe = memory.clone();
        config = config.with_memory_watermark(
            MemoryWatermark::new(1000)
                .with_interval(ALARM_INTERVAL)
                .with_probe(move || probe.load(Ordering::SeqCst)),
        );
    }
    let handler = ConnectionHandler::new(config);
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let peer = "127.0.0.1:5672".parse().expect("an address");
    let mut connection = tokio::spawn(handler.serve(server_side, peer));

    let input: usize = writes.iter().map(|w| w.bytes.len()).sum();
    let limit = output_limit(input);
    let reader = tokio::spawn(async move {
        let mut output = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => return output,
                Ok(n) => {
                    output.extend_from_slice(&buf[..n]);
                    assert!(
                        output.len() <= limit,
                        "the server wrote more than {limit} bytes for {input} bytes of input"
                    );
                }
            }
        }
    });

    let started = Instant::now();
    let mut written = 0;
    let mut header_at = None;
    for w in writes {
        written += w.bytes.len();
        if written >= HEADER.len() && header_at.is_none() {
            header_at = Some(started.elapsed());
        }
        if to_server.write_all(&w.bytes).await.is_err() {
            break;
        }
        // Virtual time: this completes once every task waits (the server
        // has handled what it could of this write).
        tokio::time::sleep(Duration::from_millis(1)).await;
        if w.tick > 0 {
            clock.advance(Duration::from_secs(u64::from(w.tick)));
            broker.run_expiry();
        }
        if let Some(on) = w.alarm {
            memory.store(if on { 1_000_000 } else { 0 }, Ordering::SeqCst);
            // (the server notices within an interval)
            tokio::time::sleep(ALARM_INTERVAL * 2).await;
        }
    }
    // The memory monitor ticks every virtual second: waiting days for the
    // connection to go idle would take as many ticks.
    let idle = if alarms { ALARM_IDLE } else { IDLE };
    let ended = tokio::time::timeout(idle, &mut connection).await;
    // No server timer is shorter than a second: an end this early is the
    // server's own decision.
    let ended_on_its_own = !alarms && ended.is_ok() && started.elapsed() < Duration::from_secs(1);
    // A blocked connection reads nothing, and would not see the client go:
    // the alarm clears first.
    if alarms {
        memory.store(0, Ordering::SeqCst);
        tokio::time::sleep(ALARM_INTERVAL * 2).await;
    }
    if let Ok(r) = &ended {
        assert!(r.is_ok(), "the connection task failed: {r:?}");
    }

    // The client goes (after a shutdown, if asked).
    if let End::Shutdown = session.end {
        let stop = handler.clone();
        let shutdown = tokio::spawn(async move { stop.shutdown().await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        // (the pipe stays open while the reading half lives: shut it)
        let _ = to_server.shutdown().await;
        let _ = tokio::time::timeout(END, shutdown).await;
    } else {
        let _ = to_server.shutdown().await;
    }
    drop(to_server);
    if ended.is_err() {
        match tokio::time::timeout(END, &mut connection).await {
            Ok(r) => assert!(r.is_ok(), "the connection task failed: {r:?}"),
            Err(_) => panic!("the connection did not end after the client went away"),
        }
    }
    let output = match tokio::time::timeout(END, reader).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("reading the server's output failed: {e:?}"),
        Err(_) => panic!("the server's side of the pipe stayed open"),
    };
    let played = Played {
        output,
        ended_on_its_own,
        header_at,
    };
    check_output(writes, &played);
    check_broker(&handler, &broker);
    played.output
}

/// Reply codes a `close` may carry (AMQP 0-9-1 and RabbitMQ's).
const REPLY_CODES: [u16; 19] = [
    200, 311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540, 541,
];

fn reply_code_ok(code: u16) -> bool {
    REPLY_CODES.contains(&code)
}

fn check_output(writes: &[Write], played: &Played) {
    let out = &played.output[..];
    let input: Vec<u8> = writes
        .iter()
        .flat_map(|w| w.bytes.iter().copied())
        .collect();
    if input.len() < 8 {
        assert!(out.is_empty(), "output without a protocol header: {out:?}");
        return;
    }
    // Sessions that wait for the memory alarm can send the header after the
    // handshake timeout: the server has hung up without a word by then.
    let timeout = warren_wire::Limits::default().handshake_timeout;
    match played.header_at {
        Some(t) if t > timeout + Duration::from_millis(100) => {
            assert!(
                out.is_empty(),
                "output after the handshake timeout: {out:?}"
            );
            return;
        }
        Some(t) if t + Duration::from_millis(100) >= timeout => return,
        _ => {}
    }
    if &input[..8] != HEADER {
        assert_eq!(out, HEADER, "a wrong protocol header gets ours back");
        return;
    }
    let frames = parse_all(out);
    match frames.first() {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))) => {}
        other => panic!("the server's first frame is not connection.start: {other:?}"),
    }
    // Content after each content-bearing method.
    let mut expect_content: Option<(u16, Option<u64>)> = None;
    // Set once the server sent connection.close / close-ok.
    let mut closed: Option<&'static str> = None;
    let mut last_method: Option<&AMQPClass> = None;
    for f in &frames {
        if let Some((ch, remaining)) = expect_content {
            match (f, remaining) {
                (AMQPFrame::Header(c, h), None) if *c == ch => {
                    expect_content = (h.body_size > 0).then_some((ch, Some(h.body_size)));
                    continue;
                }
                (AMQPFrame::Body(c, b), Some(left)) if *c == ch && b.len() as u64 <= left => {
                    let left = left - b.len() as u64;
                    expect_content = (left > 0).then_some((ch, Some(left)));
                    continue;
                }
                _ => panic!("content frames out of order on channel {ch}: {f:?}"),
            }
        }
        if let AMQPFrame::Heartbeat = f {
            continue;
        }
        let AMQPFrame::Method(ch, m) = f else {
            panic!("content frames outside content: {f:?}");
        };
        match closed {
            None => {}
            Some("close") => assert!(
                matches!(m, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))),
                "the server sent {m:?} after connection.close"
            ),
            Some(what) => panic!("the server sent {m:?} after connection.{what}"),
        }
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                assert_eq!(*ch, 0, "connection.close on channel {ch}");
                assert!(reply_code_ok(c.reply_code), "reply code {}", c.reply_code);
                closed = Some("close");
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                assert_eq!(*ch, 0, "connection.close-ok on channel {ch}");
                closed = Some("close-ok");
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                assert_ne!(*ch, 0, "channel.close on channel 0");
                assert!(reply_code_ok(c.reply_code), "reply code {}", c.reply_code);
            }
            AMQPClass::Basic(
                basic::AMQPMethod::Deliver(_)
                | basic::AMQPMethod::GetOk(_)
                | basic::AMQPMethod::Return(_),
            ) => expect_content = Some((*ch, None)),
            _ => {}
        }
        last_method = Some(m);
    }
    assert!(
        expect_content.is_none(),
        "the output ends inside a message's content"
    );
    if played.ended_on_its_own {
        assert!(
            matches!(
                last_method,
                Some(AMQPClass::Connection(
                    connection::AMQPMethod::Close(_) | connection::AMQPMethod::CloseOk(_)
                ))
            ),
            "the server ended the connection after {last_method:?}, not connection.close"
        );
    }
}

/// Every frame in `out`; panics on anything amq-protocol cannot parse.
fn parse_all(mut out: &[u8]) -> Vec<AMQPFrame> {
    let mut frames = Vec::new();
    while !out.is_empty() {
        if out.len() >= 7 {
            let size = u32::from_be_bytes([out[3], out[4], out[5], out[6]]) as usize;
            assert!(
                size + 8 <= FRAME_MAX,
                "a frame of {} bytes, above frame_max",
                size + 8
            );
        }
        match parse_frame(out) {
            Ok((rest, f)) => {
                frames.push(f);
                out = rest;
            }
            Err(e) => panic!(
                "the server wrote an unparsable frame ({e:?}) at {:?}",
                &out[..out.len().min(64)]
            ),
        }
    }
    frames
}

fn check_broker(handler: &ConnectionHandler, broker: &Broker) {
    assert_eq!(
        handler.connection_count(),
        0,
        "a connection is still counted"
    );
    for q in broker.stats().queues {
        assert_eq!(q.consumers, 0, "queue {} keeps a consumer", q.name);
        assert_eq!(q.unacked, 0, "queue {} keeps unacked messages", q.name);
        // An exclusive queue would refuse another owner with 405.
        let other = QueueDeclareOptions {
            passive: true,
            owner: Some(broker.new_owner()),
            ..QueueDeclareOptions::default()
        };
        if let Err(e) = broker.declare_queue(&q.name, other) {
            assert_ne!(
                e.reply_code(),
                405,
                "queue {} is still exclusive to the closed connection",
                q.name
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Seeds

/// Raw-mode options (see [`Session::from_raw`]).
const NOTHING: u8 = 0;
const HANDSHAKE: u8 = 2;
const CHANNEL: u8 = 3;
const SHUTDOWN: u8 = 4;
/// Writes of 13 bytes.
const SPLIT: u8 = 1 << 3;
/// Writes prefixed by their length.
const WRITES: u8 = 31 << 3;

/// `writes` in the length-prefixed form of [`WRITES`].
fn prefixed(writes: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for w in writes {
        v.extend_from_slice(&(w.len() as u16).to_be_bytes());
        v.extend_from_slice(w);
    }
    v
}

/// Hand-written seed inputs (raw mode), by name: valid sessions and the
/// malformed input of `crates/warren-wire/tests/malformed.rs`.
/// `crates/warren-wire/tests/fuzz_regression.rs` runs them and can write
/// them to `fuzz/corpus/wire_frames/`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use Method as M;
    let n = Name;
    let m = |out: &mut Vec<u8>, ch: u16, x: M| method(out, ch, x.get());
    let publish =
        |out: &mut Vec<u8>, ch: u16, ex: u8, key: u8, mandatory: bool, p: Props, body: &[u8]| {
            m(
                out,
                ch,
                M::Publish {
                    exchange: n(ex),
                    routing_key: n(key),
                    mandatory,
                    immediate: false,
                },
            );
            content(out, ch, 60, p.get(), body, body.len() as u64, 1);
        };
    let declare = |out: &mut Vec<u8>, ch: u16, q: u8, exclusive: bool, arguments: Args| {
        m(
            out,
            ch,
            M::QueueDeclare {
                queue: n(q),
                passive: false,
                durable: false,
                exclusive,
                auto_delete: false,
                nowait: false,
                arguments,
            },
        )
    };
    let consume = |out: &mut Vec<u8>, ch: u16, q: u8, tag: u8, no_ack: bool| {
        m(
            out,
            ch,
            M::Consume {
                queue: n(q),
                consumer_tag: n(tag),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: Args::default(),
            },
        )
    };
    let close = |out: &mut Vec<u8>| {
        m(out, 1, M::ChannelClose(200));
        m(out, 0, M::ConnectionClose(200));
    };
    let raw = |options: u8, bytes: Vec<u8>| {
        let mut v = vec![RAW, options];
        v.extend_from_slice(&bytes);
        v
    };
    let mut seeds = Vec::new();

    // A full session: topology, confirms, mandatory, get, consume, acks,
    // transactions, close.
    let mut s = Vec::new();
    m(
        &mut s,
        1,
        M::ExchangeDeclare {
            exchange: n(7),
            kind: 2,
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: Args::default(),
        },
    );
    declare(&mut s, 1, 0, false, Args::default());
    m(
        &mut s,
        1,
        M::QueueBind {
            queue: n(0),
            exchange: n(7),
            routing_key: n(11),
            nowait: false,
            arguments: Args::default(),
        },
    );
    m(&mut s, 1, M::ConfirmSelect(false));
    publish(&mut s, 1, 7, 10, true, Props::default(), b"hello");
    publish(&mut s, 1, 7, 0, true, Props::default(), b"unroutable");
    m(
        &mut s,
        1,
        M::Get {
            queue: n(0),
            no_ack: false,
        },
    );
    m(
        &mut s,
        1,
        M::Ack {
            delivery_tag: Tag(1),
            multiple: false,
        },
    );
    m(
        &mut s,
        1,
        M::Qos {
            prefetch_count: 2,
            global: false,
        },
    );
    consume(&mut s, 1, 0, 15, false);
    for body in [&b"one"[..], b"two", b"three"] {
        publish(&mut s, 1, 2, 0, false, Props::default(), body);
    }
    // (the server delivers tags 2 and 3 while the client waits)
    let mut ack = Vec::new();
    m(
        &mut ack,
        1,
        M::Ack {
            delivery_tag: Tag(3),
            multiple: true,
        },
    );
    // (then tag 4)
    let mut nack = Vec::new();
    m(
        &mut nack,
        1,
        M::Nack {
            delivery_tag: Tag(4),
            multiple: false,
            requeue: true,
        },
    );
    // (then tag 5, redelivered)
    let mut end = Vec::new();
    m(
        &mut end,
        1,
        M::Cancel {
            consumer_tag: n(15),
            nowait: false,
        },
    );
    m(&mut end, 0, M::ConnectionClose(200));
    let writes = [s.clone(), ack, nack, end];
    seeds.push(("session-full", raw(CHANNEL | WRITES, prefixed(&writes))));
    let s = writes.concat();
    seeds.push(("session-full-split", raw(CHANNEL | SPLIT, s)));

    // Transactions on a second channel, with the handshake in the input.
    let mut s = Vec::new();
    m(&mut s, 2, M::ChannelOpen);
    declare(&mut s, 2, 1, true, Args::default());
    m(&mut s, 2, M::TxSelect);
    publish(&mut s, 2, 2, 1, false, Props::default(), b"tx");
    m(&mut s, 2, M::TxRollback);
    publish(&mut s, 2, 2, 1, false, Props::default(), b"tx2");
    m(&mut s, 2, M::TxCommit);
    m(
        &mut s,
        2,
        M::Get {
            queue: n(1),
            no_ack: false,
        },
    );
    m(&mut s, 2, M::Recover(true));
    m(
        &mut s,
        2,
        M::Get {
            queue: n(1),
            no_ack: true,
        },
    );
    m(&mut s, 2, M::ChannelClose(200));
    m(&mut s, 0, M::ConnectionClose(200));
    seeds.push(("session-tx", raw(HANDSHAKE, s)));

    // Queue arguments, dead-lettering, properties, headers exchange,
    // exchange-to-exchange bindings, deletes; ends with a shutdown.
    let mut s = Vec::new();
    let args = Args(vec![
        (0, Value::Int(2)),
        (2, Value::Text(1)),
        (3, Value::Int(0)),
        (5, Value::Str(n(14))),
    ]);
    declare(&mut s, 1, 0, false, args);
    declare(&mut s, 1, 1, false, Args::default());
    m(
        &mut s,
        1,
        M::ExchangeDeclare {
            exchange: n(14),
            kind: 1,
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: true,
            arguments: Args::default(),
        },
    );
    m(
        &mut s,
        1,
        M::QueueBind {
            queue: n(1),
            exchange: n(14),
            routing_key: n(2),
            nowait: true,
            arguments: Args::default(),
        },
    );
    m(
        &mut s,
        1,
        M::ExchangeBind {
            destination: n(14),
            source: n(6),
            routing_key: n(2),
            nowait: false,
            arguments: Args(vec![(7, Value::Text(4))]),
        },
    );
    let props = Props {
        expiration: Some(2),
        headers: Some(Args(vec![
            (14, Value::Bytes(b"v".to_vec())),
            (7, Value::Array(vec![1, 2])),
        ])),
        delivery_mode: Some(2),
        priority: Some(3),
        reply_to: Some(n(1)),
        correlation_id: Some(n(0)),
        user_id: Some(true),
    };
    for _ in 0..4 {
        publish(&mut s, 1, 2, 0, false, props.clone(), b"x");
    }
    publish(&mut s, 1, 6, 2, false, props.clone(), b"headers");
    m(
        &mut s,
        1,
        M::QueuePurge {
            queue: n(1),
            nowait: false,
        },
    );
    m(
        &mut s,
        1,
        M::QueueDelete {
            queue: n(0),
            if_unused: false,
            if_empty: false,
            nowait: false,
        },
    );
    m(
        &mut s,
        1,
        M::ExchangeDelete {
            exchange: n(14),
            if_unused: false,
            nowait: false,
        },
    );
    seeds.push(("session-arguments-shutdown", raw(CHANNEL | SHUTDOWN, s)));

    // Direct reply-to.
    let mut s = Vec::new();
    consume(&mut s, 1, 9, 2, true);
    let props = Props {
        reply_to: Some(n(9)),
        ..Props::default()
    };
    publish(&mut s, 1, 2, 9, false, props, b"rpc");
    close(&mut s);
    seeds.push(("session-direct-reply-to", raw(CHANNEL, s)));

    // Small frames (4096): a body in several frames both ways; AMQPLAIN;
    // heartbeats of 1 s (the server beats, then drops the silent client).
    let mut s = HEADER.to_vec();
    method(&mut s, 0, start_ok(6));
    method(
        &mut s,
        0,
        tune_ok(Tune {
            channel_max: 2,
            small_frames: true,
            heartbeat: 1,
        }),
    );
    m(&mut s, 0, M::Open(n(1)));
    m(&mut s, 1, M::ChannelOpen);
    declare(&mut s, 1, 0, false, Args::default());
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    m(
        &mut s,
        1,
        M::Publish {
            exchange: n(2),
            routing_key: n(0),
            mandatory: false,
            immediate: false,
        },
    );
    content(
        &mut s,
        1,
        60,
        BasicProperties::default(),
        &body,
        body.len() as u64,
        3,
    );
    consume(&mut s, 1, 0, 15, true);
    raw_frame(&mut s, 8, 0, &[]);
    seeds.push(("session-small-frames-heartbeat", raw(NOTHING, s)));

    // Handshake refusals.
    for (name, which) in [
        ("handshake-wrong-password", 4),
        ("handshake-bad-plain", 5),
        ("handshake-unknown-mechanism", 7),
    ] {
        let mut s = HEADER.to_vec();
        method(&mut s, 0, start_ok(which));
        seeds.push((name, raw(NOTHING, s)));
    }
    let mut s = HEADER.to_vec();
    method(&mut s, 0, start_ok(0));
    raw_frame(&mut s, 1, 0, &[0, 10, 0, 31, 0, 0, 0, 0, 3, 232, 0, 0]);
    seeds.push(("handshake-frame-max-too-small", raw(NOTHING, s)));
    let mut s = HEADER.to_vec();
    method(&mut s, 0, start_ok(0));
    method(
        &mut s,
        0,
        tune_ok(Tune {
            channel_max: 0,
            small_frames: false,
            heartbeat: 0,
        }),
    );
    m(&mut s, 0, M::Open(n(8)));
    seeds.push(("handshake-unknown-vhost", raw(NOTHING, s)));
    let mut s = HEADER.to_vec();
    m(&mut s, 0, M::ChannelOpen);
    seeds.push(("handshake-channel-method-before-start-ok", raw(NOTHING, s)));
    seeds.push((
        "header-wrong-version",
        raw(NOTHING, b"AMQP\x00\x00\x09\x02".to_vec()),
    ));
    seeds.push((
        "header-http",
        raw(NOTHING, b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ));
    seeds.push(("header-half", raw(NOTHING, b"AMQ".to_vec())));

    // Malformed frames after the handshake (channel 1 open).
    let frame_with = |kind: u8, ch: u16, payload: &[u8], end: u8| {
        let mut v = Vec::new();
        raw_frame(&mut v, kind, ch, payload);
        *v.last_mut().unwrap() = end;
        v
    };
    let header = |class: u16, size: u64| {
        let mut p = class.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&size.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    };
    let publish_method = |out: &mut Vec<u8>, immediate: bool| {
        m(
            out,
            1,
            M::Publish {
                exchange: n(2),
                routing_key: n(0),
                mandatory: false,
                immediate,
            },
        )
    };
    let mut qos = vec![0, 60, 0, 10];
    qos.extend_from_slice(&10u32.to_be_bytes());
    qos.extend_from_slice(&[0, 1, 0]);
    let mut nested = vec![0, 0, 0, 0];
    for _ in 0..100 {
        let mut entry = vec![1, b'a', b'F'];
        entry.extend_from_slice(&nested);
        nested = (entry.len() as u32).to_be_bytes().to_vec();
        nested.extend_from_slice(&entry);
    }
    let mut deep = vec![0, 50, 0, 10, 0, 0, 4, b'd', b'e', b'e', b'p', 0];
    deep.extend_from_slice(&nested);
    let malformed: Vec<(&'static str, Vec<u8>)> = vec![
        ("frame-wrong-end", frame_with(1, 1, &[0, 20, 0, 10, 0], 0)),
        ("frame-unknown-type", frame_with(5, 1, b"abc", 0xce)),
        (
            "frame-unknown-class",
            frame_with(1, 1, &[0, 99, 0, 1], 0xce),
        ),
        (
            "frame-unknown-method",
            frame_with(1, 1, &[0, 60, 0, 99], 0xce),
        ),
        ("frame-too-large", vec![3, 0, 1, 0xff, 0xff, 0xff, 0xff]),
        (
            "frame-truncated-arguments",
            frame_with(1, 1, &[0, 50, 0, 10, 0, 0, 1, b'q'], 0xce),
        ),
        ("frame-deep-table", frame_with(1, 1, &deep, 0xce)),
        ("frame-heartbeat-on-channel", frame_with(8, 1, &[], 0xce)),
        (
            "content-header-without-publish",
            frame_with(2, 1, &header(60, 5), 0xce),
        ),
        (
            "content-body-without-header",
            frame_with(3, 1, b"hello", 0xce),
        ),
        ("qos-prefetch-size", frame_with(1, 1, &qos, 0xce)),
        ("method-on-unopened-channel", {
            let mut v = Vec::new();
            declare(&mut v, 5, 0, false, Args::default());
            v
        }),
        ("second-channel-open", {
            let mut v = Vec::new();
            m(&mut v, 1, M::ChannelOpen);
            v
        }),
        ("flow-false", {
            let mut v = Vec::new();
            m(&mut v, 1, M::ChannelFlow(false));
            v
        }),
        ("connection-method-on-channel", {
            let mut v = Vec::new();
            m(&mut v, 1, M::Open(n(2)));
            v
        }),
        ("queue-method-on-channel-0", {
            let mut v = Vec::new();
            declare(&mut v, 0, 0, false, Args::default());
            v
        }),
        ("publish-immediate", {
            let mut v = Vec::new();
            publish_method(&mut v, true);
            v
        }),
        ("publish-twice", {
            let mut v = Vec::new();
            publish_method(&mut v, false);
            publish_method(&mut v, false);
            v
        }),
        ("publish-method-instead-of-body", {
            let mut v = Vec::new();
            publish_method(&mut v, false);
            v.extend(frame_with(2, 1, &header(60, 5), 0xce));
            publish_method(&mut v, false);
            v
        }),
        ("publish-header-of-class-50", {
            let mut v = Vec::new();
            publish_method(&mut v, false);
            v.extend(frame_with(2, 1, &header(50, 5), 0xce));
            v
        }),
        ("publish-body-longer-than-header", {
            let mut v = Vec::new();
            publish_method(&mut v, false);
            v.extend(frame_with(2, 1, &header(60, 2), 0xce));
            v.extend(frame_with(3, 1, b"abc", 0xce));
            v
        }),
        ("channel-error-unknown-delivery-tag-then-reopen", {
            let mut v = Vec::new();
            m(
                &mut v,
                1,
                M::Ack {
                    delivery_tag: Tag(9),
                    multiple: false,
                },
            );
            m(&mut v, 1, M::ChannelCloseOk);
            m(&mut v, 1, M::ChannelOpen);
            m(&mut v, 1, M::ChannelClose(200));
            v
        }),
        ("channel-max-exceeded", {
            let mut v = Vec::new();
            for ch in 2..5 {
                m(&mut v, ch, M::ChannelOpen);
            }
            m(&mut v, u16::MAX, M::ChannelOpen);
            v
        }),
        ("session-close-with-reply-code-0", {
            let mut v = Vec::new();
            m(&mut v, 0, M::ConnectionClose(0));
            v
        }),
        ("reused-consumer-tag", {
            let mut v = Vec::new();
            declare(&mut v, 1, 0, false, Args::default());
            consume(&mut v, 1, 0, 15, false);
            consume(&mut v, 1, 0, 15, false);
            v
        }),
    ];
    for (name, bytes) in malformed {
        seeds.push((name, raw(CHANNEL, bytes)));
    }
    seeds
}
