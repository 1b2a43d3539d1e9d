//! Channels: the exchange, queue, basic, confirm and tx method families.
//!
//! A channel's state is split in two. What only the connection's reader
//! touches (content being assembled, the last declared queue, confirm and tx
//! bookkeeping, consumer task handles) lives in [`Channel`]. What consumer
//! tasks and direct reply-to publishers also touch (the delivery-tag counter,
//! the map of unacknowledged deliveries, the consumers) lives in
//! [`ChannelShared`] behind a mutex that is never held across an `.await`.
//!
//! Delivery tags are per channel and count from 1. Each unacknowledged
//! delivery is kept as the warren [`Delivery`] it came from; acknowledging
//! answers it, and a channel that closes drops the rest, which requeues them
//! (a dropped `Delivery` goes back to its queue).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{
    access, basic, confirm, exchange, queue, tx, AMQPClass, BasicProperties as WireProperties,
};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use warren_core::{
    Broker, ConsumeOptions, Delivery, ExchangeDeclareOptions, ExchangeKind, GetOptions, Message,
    Published, QueueDeclareOptions, QueueDeleteOptions,
};

use crate::connection::{Capabilities, Connection};
use crate::convert::{properties_from_wire, properties_to_wire, short, table_from_wire};
use crate::error::AmqpError;
use crate::server::Shared;
use crate::writer::{Out, OutTx};

/// RabbitMQ's direct reply-to pseudo-queue.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Prefix of the addresses direct reply-to hands out.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// One unacknowledged delivery.
pub(crate) struct Unacked {
    pub(crate) delivery: Delivery,
    /// Counts toward the channel's global prefetch (a consumer delivery, not
    /// a `basic.get`).
    pub(crate) counted: bool,
}

/// A consumer as its channel knows it; dropping it stops the consumer task.
pub(crate) struct ConsumerEntry {
    _stop: oneshot::Sender<()>,
}

/// The channel's consumer of `amq.rabbitmq.reply-to`.
pub(crate) struct ReplyConsumer {
    pub(crate) tag: String,
    pub(crate) token: String,
}

pub(crate) struct ChannelState {
    pub(crate) open: bool,
    pub(crate) next_tag: u64,
    pub(crate) unacked: BTreeMap<u64, Unacked>,
    pub(crate) consumer_unacked: u32,
    /// `basic.qos` with `global`: unacknowledged consumer deliveries allowed
    /// on the whole channel (0 = no limit).
    pub(crate) global_prefetch: u32,
    pub(crate) consumers: HashMap<String, ConsumerEntry>,
    pub(crate) reply: Option<ReplyConsumer>,
}

/// The part of a channel consumer tasks share.
pub(crate) struct ChannelShared {
    pub(crate) id: u16,
    pub(crate) out: OutTx,
    pub(crate) vhost: Arc<str>,
    pub(crate) cancel_notify: bool,
    pub(crate) state: Mutex<ChannelState>,
    /// Woken when unacknowledged deliveries are answered (global prefetch).
    pub(crate) credit: Notify,
}

impl ChannelShared {
    /// Removes the deliveries an ack / nack / reject names, RabbitMQ's way:
    /// `multiple` with tag 0 takes everything; otherwise the tag must be
    /// outstanding (406 `unknown delivery tag N`), and `multiple` takes every
    /// tag up to it.
    fn take(&self, tag: u64, multiple: bool) -> Result<Vec<(u64, Unacked)>, AmqpError> {
        let mut st = self.state.lock();
        let taken: Vec<(u64, Unacked)> = if multiple && tag == 0 {
            std::mem::take(&mut st.unacked).into_iter().collect()
        } else if !st.unacked.contains_key(&tag) {
            return Err(AmqpError::channel(
                406,
                format!("unknown delivery tag {tag}"),
            ));
        } else if multiple {
            let rest = st.unacked.split_off(&(tag + 1));
            std::mem::replace(&mut st.unacked, rest)
                .into_iter()
                .collect()
        } else {
            st.unacked
                .remove(&tag)
                .map(|u| (tag, u))
                .into_iter()
                .collect()
        };
        let counted = taken.iter().filter(|(_, u)| u.counted).count() as u32;
        st.consumer_unacked = st.consumer_unacked.saturating_sub(counted);
        drop(st);
        if counted > 0 {
            self.credit.notify_waiters();
        }
        Ok(taken)
    }

    /// Puts deliveries back as unacknowledged (`tx.rollback`).
    fn restore(&self, items: Vec<(u64, Unacked)>) {
        let mut st = self.state.lock();
        for (tag, u) in items {
            if u.counted {
                st.consumer_unacked += 1;
            }
            st.unacked.insert(tag, u);
        }
    }
}

/// How a delivery is answered.
#[derive(Clone, Copy)]
enum Answer {
    Ack,
    Nack { requeue: bool },
}

fn apply(items: Vec<(u64, Unacked)>, answer: Answer) {
    for (_, u) in items {
        match answer {
            Answer::Ack => u.delivery.ack(),
            Answer::Nack { requeue } => u.delivery.nack(requeue),
        }
    }
}

/// Content being assembled after a `basic.publish`.
enum Content {
    Idle,
    Header(basic::Publish),
    Body {
        publish: basic::Publish,
        properties: Box<WireProperties>,
        size: u64,
        body: BytesMut,
    },
}

/// Publisher confirms: sequence numbers and acks not sent yet. Acks are
/// batched with `multiple` until the reader has nothing more to read; a nack
/// first sends the acks before it.
struct Confirms {
    next: u64,
    confirmed: u64,
    pending: u64,
}

impl Confirms {
    fn record(&mut self, ack: bool, ch: u16, out: &OutTx) {
        let seq = self.next;
        self.next += 1;
        if ack {
            self.pending = seq;
        } else {
            self.flush(ch, out);
            out.method(
                ch,
                // RabbitMQ sets `requeue` (meaningless here) in its nacks
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: true,
                })),
            );
            self.confirmed = seq;
            self.pending = seq;
        }
    }

    fn flush(&mut self, ch: u16, out: &OutTx) {
        if self.pending > self.confirmed {
            out.method(
                ch,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: self.pending,
                    multiple: self.pending - self.confirmed > 1,
                })),
            );
            self.confirmed = self.pending;
        }
    }
}

/// A publish held until `tx.commit`.
struct PendingPublish {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    message: Message,
}

/// A transaction in progress.
#[derive(Default)]
struct Tx {
    publishes: Vec<PendingPublish>,
    answers: Vec<(Vec<(u64, Unacked)>, Answer)>,
}

/// A channel, as the connection's reader sees it.
pub(crate) struct Channel {
    pub(crate) shared: Arc<ChannelShared>,
    /// `channel.close` sent; waiting for `close-ok`.
    pub(crate) closing: bool,
    content: Content,
    last_queue: Option<String>,
    confirms: Option<Confirms>,
    tx: Option<Tx>,
    /// `basic.qos` without `global`: prefetch of consumers created next.
    prefetch: u32,
    tasks: HashMap<String, JoinHandle<()>>,
}

impl Channel {
    pub(crate) fn new(id: u16, out: OutTx, vhost: Arc<str>, caps: Capabilities) -> Self {
        Channel {
            shared: Arc::new(ChannelShared {
                id,
                out,
                vhost,
                cancel_notify: caps.consumer_cancel_notify,
                state: Mutex::new(ChannelState {
                    open: true,
                    next_tag: 0,
                    unacked: BTreeMap::new(),
                    consumer_unacked: 0,
                    global_prefetch: 0,
                    consumers: HashMap::new(),
                    reply: None,
                }),
                credit: Notify::new(),
            }),
            closing: false,
            content: Content::Idle,
            last_queue: None,
            confirms: None,
            tx: None,
            prefetch: 0,
            tasks: HashMap::new(),
        }
    }

    /// The error for a method frame arriving where content was expected.
    pub(crate) fn expecting_content_error(&self) -> Option<AmqpError> {
        let text = match self.content {
            Content::Idle => return None,
            Content::Header(_) => {
                "expected content header for class 60, got non content header frame instead"
            }
            Content::Body { .. } => "expected content body, got non content body frame instead",
        };
        Some(AmqpError::connection(505, text).at(60, 40))
    }

    pub(crate) fn flush_confirms(&mut self, out: &OutTx) {
        if let Some(c) = self.confirms.as_mut() {
            c.flush(self.shared.id, out);
        }
    }

    /// Releases what the channel holds: consumers stop (what they had not
    /// shown goes back to the queue), unacknowledged deliveries are requeued,
    /// the direct reply-to address goes away.
    pub(crate) async fn release(&mut self, shared: &Shared) {
        let (unacked, consumers, reply) = {
            let mut st = self.shared.state.lock();
            st.open = false;
            st.consumer_unacked = 0;
            (
                std::mem::take(&mut st.unacked),
                std::mem::take(&mut st.consumers),
                st.reply.take(),
            )
        };
        drop(consumers);
        self.shared.credit.notify_waiters();
        if let Some(r) = reply {
            shared.reply_to.lock().remove(&r.token);
        }
        for (_, task) in self.tasks.drain() {
            let _ = task.await;
        }
        drop(unacked);
        self.tx = None;
        self.content = Content::Idle;
    }

    /// What [`release`](Self::release) does without waiting for the
    /// consumer tasks, for a channel dropped before it was released (its
    /// connection's future was dropped): the consumers stop, the
    /// unacknowledged deliveries go back to their queues.
    fn release_now(&mut self) {
        let (unacked, consumers) = {
            let mut st = self.shared.state.lock();
            st.open = false;
            st.consumer_unacked = 0;
            (
                std::mem::take(&mut st.unacked),
                std::mem::take(&mut st.consumers),
            )
        };
        drop(consumers);
        self.shared.credit.notify_waiters();
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
        drop(unacked);
    }

    fn expand_queue(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::channel(404, "no previously declared queue"))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // After `release` there is nothing left to do.
        self.release_now();
    }
}

/// Sends a reply method: `reply!(out, ch, basic::QosOk(value))`.
macro_rules! reply {
    ($out:expr, $ch:expr, access :: $method:ident ( $value:expr )) => {
        $out.method($ch, AMQPClass::Access(access::AMQPMethod::$method($value)))
    };
    ($out:expr, $ch:expr, basic :: $method:ident ( $value:expr )) => {
        $out.method($ch, AMQPClass::Basic(basic::AMQPMethod::$method($value)))
    };
    ($out:expr, $ch:expr, confirm :: $method:ident ( $value:expr )) => {
        $out.method(
            $ch,
            AMQPClass::Confirm(confirm::AMQPMethod::$method($value)),
        )
    };
    ($out:expr, $ch:expr, exchange :: $method:ident ( $value:expr )) => {
        $out.method(
            $ch,
            AMQPClass::Exchange(exchange::AMQPMethod::$method($value)),
        )
    };
    ($out:expr, $ch:expr, queue :: $method:ident ( $value:expr )) => {
        $out.method($ch, AMQPClass::Queue(queue::AMQPMethod::$method($value)))
    };
    ($out:expr, $ch:expr, tx :: $method:ident ( $value:expr )) => {
        $out.method($ch, AMQPClass::Tx(tx::AMQPMethod::$method($value)))
    };
}

impl Connection {
    fn broker(&self) -> Result<Broker, AmqpError> {
        // Channels exist only once the connection is open, with its broker.
        self.broker
            .clone()
            .ok_or_else(|| AmqpError::connection(504, "expected 'connection.open'"))
    }

    fn chan(&mut self, ch: u16) -> Result<&mut Channel, AmqpError> {
        self.channels
            .get_mut(&ch)
            .ok_or_else(|| AmqpError::connection(504, "expected 'channel.open'"))
    }

    /// Exchange, queue, basic, confirm, tx and access methods on an open
    /// channel.
    pub(crate) async fn channel_method(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        match m {
            AMQPClass::Exchange(m) => self.exchange_method(ch, m),
            AMQPClass::Queue(m) => self.queue_method(ch, m),
            AMQPClass::Basic(m) => self.basic_method(ch, m).await,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                let chan = self.chan(ch)?;
                if chan.tx.is_some() {
                    return Err(AmqpError::channel(
                        406,
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if chan.confirms.is_none() {
                    chan.confirms = Some(Confirms {
                        next: 1,
                        confirmed: 0,
                        pending: 0,
                    });
                }
                if !s.nowait {
                    reply!(self.out, ch, confirm::SelectOk(confirm::SelectOk {}));
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(ch, m).await,
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                reply!(self.out, ch, access::RequestOk(access::RequestOk {}));
                Ok(())
            }
            m => Err(AmqpError::connection(540, "unsupported method")
                .at(m.get_amqp_class_id(), m.get_amqp_method_id())),
        }
    }

    fn exchange_method(&mut self, ch: u16, m: exchange::AMQPMethod) -> Result<(), AmqpError> {
        let broker = self.broker()?;
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let kind = if d.passive {
                    ExchangeKind::Direct // not looked at
                } else {
                    d.kind.as_str().parse::<ExchangeKind>()?
                };
                broker.declare_exchange(
                    d.exchange.as_str(),
                    kind,
                    ExchangeDeclareOptions {
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: table_from_wire(&d.arguments),
                    },
                )?;
                if !d.nowait {
                    reply!(self.out, ch, exchange::DeclareOk(exchange::DeclareOk {}));
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                broker.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    reply!(self.out, ch, exchange::DeleteOk(exchange::DeleteOk {}));
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                broker.bind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    &table_from_wire(&b.arguments),
                )?;
                if !b.nowait {
                    reply!(self.out, ch, exchange::BindOk(exchange::BindOk {}));
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                broker.unbind_exchange(
                    b.destination.as_str(),
                    b.source.as_str(),
                    b.routing_key.as_str(),
                    &table_from_wire(&b.arguments),
                )?;
                if !b.nowait {
                    reply!(self.out, ch, exchange::UnbindOk(exchange::UnbindOk {}));
                }
            }
            m => {
                return Err(AmqpError::connection(540, "unsupported method")
                    .at(40, AMQPClass::Exchange(m).get_amqp_method_id()))
            }
        }
        Ok(())
    }

    fn queue_method(&mut self, ch: u16, m: queue::AMQPMethod) -> Result<(), AmqpError> {
        let broker = self.broker()?;
        let owner = self.owner;
        match m {
            queue::AMQPMethod::Declare(d) => {
                let name = d.queue.as_str();
                if d.passive && (name == REPLY_TO || name.starts_with(REPLY_TO_PREFIX)) {
                    return self.declare_reply_to(ch, name, d.nowait);
                }
                let ok = broker.declare_queue(
                    name,
                    QueueDeclareOptions {
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: table_from_wire(&d.arguments),
                        owner,
                    },
                )?;
                self.chan(ch)?.last_queue = Some(ok.queue.clone());
                if !d.nowait {
                    reply!(
                        self.out,
                        ch,
                        queue::DeclareOk(queue::DeclareOk {
                            queue: short(&ok.queue),
                            message_count: saturate(ok.message_count),
                            consumer_count: ok.consumer_count,
                        })
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                let chan = self.chan(ch)?;
                let q = chan.expand_queue(b.queue.as_str())?;
                let rk = if b.queue.as_str().is_empty() && b.routing_key.as_str().is_empty() {
                    q.clone()
                } else {
                    b.routing_key.as_str().to_owned()
                };
                broker.bind_queue(&q, b.exchange.as_str(), &rk, &table_from_wire(&b.arguments))?;
                if !b.nowait {
                    reply!(self.out, ch, queue::BindOk(queue::BindOk {}));
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let q = self.chan(ch)?.expand_queue(b.queue.as_str())?;
                broker.unbind_queue(
                    &q,
                    b.exchange.as_str(),
                    b.routing_key.as_str(),
                    &table_from_wire(&b.arguments),
                )?;
                reply!(self.out, ch, queue::UnbindOk(queue::UnbindOk {}));
            }
            queue::AMQPMethod::Purge(p) => {
                let q = self.chan(ch)?.expand_queue(p.queue.as_str())?;
                let n = broker.purge_queue(&q)?;
                if !p.nowait {
                    reply!(
                        self.out,
                        ch,
                        queue::PurgeOk(queue::PurgeOk {
                            message_count: saturate(n)
                        })
                    );
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let q = self.chan(ch)?.expand_queue(d.queue.as_str())?;
                let n = broker.delete_queue(
                    &q,
                    QueueDeleteOptions {
                        if_unused: d.if_unused,
                        if_empty: d.if_empty,
                        owner,
                    },
                )?;
                if !d.nowait {
                    reply!(
                        self.out,
                        ch,
                        queue::DeleteOk(queue::DeleteOk {
                            message_count: saturate(n)
                        })
                    );
                }
            }
            m => {
                return Err(AmqpError::connection(540, "unsupported method")
                    .at(50, AMQPClass::Queue(m).get_amqp_method_id()))
            }
        }
        Ok(())
    }

    /// Passive declare of the direct reply-to pseudo-queue, or of an address
    /// it handed out (404 once its consumer is gone).
    fn declare_reply_to(&mut self, ch: u16, name: &str, nowait: bool) -> Result<(), AmqpError> {
        if let Some(token) = name.strip_prefix(REPLY_TO_PREFIX) {
            let alive = self
                .shared
                .reply_to
                .lock()
                .get(token)
                .and_then(std::sync::Weak::upgrade)
                .is_some_and(|c| *c.vhost == *self.vhost);
            if !alive {
                return Err(AmqpError::channel(
                    404,
                    format!("no queue '{name}' in vhost '{}'", self.vhost),
                ));
            }
        }
        if !nowait {
            reply!(
                self.out,
                ch,
                queue::DeclareOk(queue::DeclareOk {
                    queue: short(name),
                    message_count: 0,
                    consumer_count: 1,
                })
            );
        }
        Ok(())
    }

    async fn basic_method(&mut self, ch: u16, m: basic::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            basic::AMQPMethod::Qos(q) => {
                let chan = self.chan(ch)?;
                if q.global {
                    chan.shared.state.lock().global_prefetch = u32::from(q.prefetch_count);
                    chan.shared.credit.notify_waiters();
                } else {
                    chan.prefetch = u32::from(q.prefetch_count);
                }
                reply!(self.out, ch, basic::QosOk(basic::QosOk {}));
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => self.consume(ch, c),
            basic::AMQPMethod::Cancel(c) => self.cancel(ch, c).await,
            basic::AMQPMethod::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::connection(540, "immediate=true"));
                }
                self.wait_while_blocked().await?;
                self.chan(ch)?.content = Content::Header(p);
                Ok(())
            }
            basic::AMQPMethod::Get(g) => self.get(ch, g).await,
            basic::AMQPMethod::Ack(a) => self.answer(ch, a.delivery_tag, a.multiple, Answer::Ack),
            basic::AMQPMethod::Nack(n) => self.answer(
                ch,
                n.delivery_tag,
                n.multiple,
                Answer::Nack { requeue: n.requeue },
            ),
            basic::AMQPMethod::Reject(r) => self.answer(
                ch,
                r.delivery_tag,
                false,
                Answer::Nack { requeue: r.requeue },
            ),
            basic::AMQPMethod::Recover(r) => {
                self.recover(ch, r.requeue)?;
                reply!(self.out, ch, basic::RecoverOk(basic::RecoverOk {}));
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(ch, r.requeue),
            m => Err(AmqpError::connection(540, "unsupported method")
                .at(60, AMQPClass::Basic(m).get_amqp_method_id())),
        }
    }

    fn consume(&mut self, ch: u16, c: basic::Consume) -> Result<(), AmqpError> {
        let broker = self.broker()?;
        let owner = self.owner;
        let generated = self.shared.generate_name("amq.ctag-");
        let shared = self.shared.clone();
        let out = self.out.clone();
        let chan = self.chan(ch)?;
        let requested = c.consumer_tag.as_str();
        {
            let st = chan.shared.state.lock();
            let reused = st.consumers.contains_key(requested)
                || st.reply.as_ref().is_some_and(|r| r.tag == requested);
            if !requested.is_empty() && reused {
                return Err(AmqpError::connection(
                    530,
                    format!("attempt to reuse consumer tag '{requested}'"),
                ));
            }
        }
        if c.queue.as_str() == REPLY_TO {
            if !c.no_ack {
                return Err(AmqpError::channel(406, "reply consumer cannot acknowledge"));
            }
            let mut st = chan.shared.state.lock();
            if st.reply.is_some() {
                return Err(AmqpError::channel(406, "reply consumer already set"));
            }
            let tag = if requested.is_empty() {
                generated
            } else {
                requested.to_owned()
            };
            let token = shared.generate_name("");
            shared
                .reply_to
                .lock()
                .insert(token.clone(), Arc::downgrade(&chan.shared));
            st.reply = Some(ReplyConsumer {
                tag: tag.clone(),
                token,
            });
            if !c.nowait {
                reply!(
                    out,
                    ch,
                    basic::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: short(&tag)
                    })
                );
            }
            return Ok(());
        }
        let queue = chan.expand_queue(c.queue.as_str())?;
        let global = chan.shared.state.lock().global_prefetch;
        let prefetch = match (chan.prefetch, global) {
            (0, g) => g,
            (p, 0) => p,
            (p, g) => p.min(g),
        };
        let options = ConsumeOptions {
            consumer_tag: requested.to_owned(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch,
            arguments: table_from_wire(&c.arguments),
            owner,
        };
        // AMQP consumer tags are unique per channel (checked above), not per
        // queue: two kombu connections both consume a queue with tag "1".
        let consumer = broker.consume(&queue, options)?;
        let tag = if requested.is_empty() {
            consumer.consumer_tag().to_owned()
        } else {
            requested.to_owned()
        };
        let (stop, stopped) = oneshot::channel();
        {
            let mut st = chan.shared.state.lock();
            st.consumers
                .insert(tag.clone(), ConsumerEntry { _stop: stop });
            // Under the lock: consume-ok goes out before any delivery.
            if !c.nowait {
                reply!(
                    out,
                    ch,
                    basic::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: short(&tag)
                    })
                );
            }
        }
        chan.tasks.retain(|_, t| !t.is_finished());
        let task = tokio::spawn(crate::consumer::forward(
            chan.shared.clone(),
            consumer,
            tag.clone(),
            c.no_ack,
            stopped,
        ));
        chan.tasks.insert(tag, task);
        Ok(())
    }

    async fn cancel(&mut self, ch: u16, c: basic::Cancel) -> Result<(), AmqpError> {
        let shared = self.shared.clone();
        let chan = self.chan(ch)?;
        let tag = c.consumer_tag.as_str();
        let entry = {
            let mut st = chan.shared.state.lock();
            if st.reply.as_ref().is_some_and(|r| r.tag == tag) {
                if let Some(r) = st.reply.take() {
                    shared.reply_to.lock().remove(&r.token);
                }
            }
            st.consumers.remove(tag)
        };
        drop(entry);
        if let Some(task) = chan.tasks.remove(tag) {
            let _ = task.await;
        }
        if !c.nowait {
            reply!(
                self.out,
                ch,
                basic::CancelOk(basic::CancelOk {
                    consumer_tag: c.consumer_tag
                })
            );
        }
        Ok(())
    }

    async fn get(&mut self, ch: u16, g: basic::Get) -> Result<(), AmqpError> {
        let broker = self.broker()?;
        let owner = self.owner;
        let out = self.out.clone();
        let queue = self.chan(ch)?.expand_queue(g.queue.as_str())?;
        let got = broker.get(
            &queue,
            GetOptions {
                no_ack: g.no_ack,
                owner,
            },
        )?;
        let Some(d) = got else {
            reply!(out, ch, basic::GetEmpty(basic::GetEmpty {}));
            return Ok(());
        };
        let properties = properties_to_wire(d.properties());
        let body = d.body().clone();
        let permit = out.reserve(body.len()).await;
        let chan = self.chan(ch)?;
        let mut st = chan.shared.state.lock();
        st.next_tag += 1;
        let delivery_tag = st.next_tag;
        out.send(Out::Content {
            channel: ch,
            method: AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag,
                redelivered: d.redelivered(),
                exchange: short(d.exchange()),
                routing_key: short(d.routing_key()),
                message_count: saturate(d.message_count().unwrap_or(0)),
            })),
            properties,
            body,
            permit,
        });
        if !g.no_ack {
            st.unacked.insert(
                delivery_tag,
                Unacked {
                    delivery: d,
                    counted: false,
                },
            );
        }
        Ok(())
    }

    fn answer(
        &mut self,
        ch: u16,
        tag: u64,
        multiple: bool,
        answer: Answer,
    ) -> Result<(), AmqpError> {
        let chan = self.chan(ch)?;
        let taken = chan.shared.take(tag, multiple)?;
        match chan.tx.as_mut() {
            Some(tx) => tx.answers.push((taken, answer)),
            None => apply(taken, answer),
        }
        Ok(())
    }

    fn recover(&mut self, ch: u16, requeue: bool) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::connection(540, "requeue=false"));
        }
        let chan = self.chan(ch)?;
        let taken = chan.shared.take(0, true)?;
        apply(taken, Answer::Nack { requeue: true });
        Ok(())
    }

    async fn tx_method(&mut self, ch: u16, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        let chan = self.chan(ch)?;
        match m {
            tx::AMQPMethod::Select(_) => {
                if chan.confirms.is_some() {
                    return Err(AmqpError::channel(
                        406,
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if chan.tx.is_none() {
                    chan.tx = Some(Tx::default());
                }
                reply!(self.out, ch, tx::SelectOk(tx::SelectOk {}));
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(tx) = chan.tx.replace(Tx::default()) else {
                    return Err(AmqpError::channel(406, "channel is not transactional"));
                };
                for p in tx.publishes {
                    self.route_publish(ch, &p.exchange, &p.routing_key, p.mandatory, p.message)
                        .await?;
                }
                for (items, answer) in tx.answers {
                    apply(items, answer);
                }
                reply!(self.out, ch, tx::CommitOk(tx::CommitOk {}));
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(tx) = chan.tx.replace(Tx::default()) else {
                    return Err(AmqpError::channel(406, "channel is not transactional"));
                };
                for (items, _) in tx.answers {
                    chan.shared.restore(items);
                }
                reply!(self.out, ch, tx::RollbackOk(tx::RollbackOk {}));
            }
            m => {
                return Err(AmqpError::connection(540, "unsupported method")
                    .at(90, AMQPClass::Tx(m).get_amqp_method_id()))
            }
        }
        Ok(())
    }

    /// A content header frame.
    pub(crate) async fn content_header(
        &mut self,
        ch: u16,
        h: AMQPContentHeader,
    ) -> Result<(), AmqpError> {
        let max = self.shared.config.limits.max_message_size;
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::connection(
                505,
                "expected method frame, got non method frame instead",
            ));
        };
        if chan.closing {
            return Ok(());
        }
        let publish = match std::mem::replace(&mut chan.content, Content::Idle) {
            Content::Header(p) => p,
            other => {
                let e = match other {
                    Content::Body { .. } => AmqpError::connection(
                        505,
                        "expected content body, got non content body frame instead",
                    )
                    .at(60, 40),
                    _ => AmqpError::connection(
                        505,
                        "expected method frame, got non method frame instead",
                    ),
                };
                return Err(e);
            }
        };
        if h.class_id != 60 {
            return Err(AmqpError::connection(
                505,
                format!(
                    "expected content header for class 60, got one for class {} instead",
                    h.class_id
                ),
            )
            .at(60, 40));
        }
        if h.body_size > max {
            let e = AmqpError::channel(
                406,
                format!(
                    "message size {} is larger than configured max size {max}",
                    h.body_size
                ),
            )
            .at(60, 40);
            self.close_channel(ch, e).await;
            return Ok(());
        }
        if h.body_size == 0 {
            return self
                .finish_publish(ch, publish, h.properties, Bytes::new())
                .await;
        }
        chan.content = Content::Body {
            publish,
            properties: Box::new(h.properties),
            size: h.body_size,
            body: BytesMut::new(),
        };
        Ok(())
    }

    /// A content body frame.
    pub(crate) async fn content_body(&mut self, ch: u16, b: Bytes) -> Result<(), AmqpError> {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return Err(AmqpError::connection(
                505,
                "expected method frame, got non method frame instead",
            ));
        };
        if chan.closing {
            return Ok(());
        }
        let Content::Body { size, body, .. } = &mut chan.content else {
            let e = match chan.content {
                Content::Header(_) => AmqpError::connection(
                    505,
                    "expected content header for class 60, got non content header frame instead",
                )
                .at(60, 40),
                _ => AmqpError::connection(
                    505,
                    "expected method frame, got non method frame instead",
                ),
            };
            return Err(e);
        };
        let have = body.len() as u64;
        if have + b.len() as u64 > *size {
            return Err(AmqpError::connection(
                501,
                format!(
                    "content body of {} bytes exceeds the {size} declared in its header",
                    have + b.len() as u64
                ),
            )
            .at(60, 40));
        }
        if body.is_empty() {
            // Grow with the data, not with what the header claims.
            body.reserve((*size as usize).min(b.len().max(64 * 1024)));
        }
        body.extend_from_slice(&b);
        if (body.len() as u64) < *size {
            return Ok(());
        }
        let Content::Body {
            publish,
            properties,
            body,
            ..
        } = std::mem::replace(&mut chan.content, Content::Idle)
        else {
            return Ok(());
        };
        self.finish_publish(ch, publish, *properties, body.freeze())
            .await
    }

    /// A complete message: publish it (or hold it, in a transaction).
    async fn finish_publish(
        &mut self,
        ch: u16,
        publish: basic::Publish,
        properties: WireProperties,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let mut properties = properties_from_wire(&properties);
        let broker = self.broker()?;
        let user = self.user.clone();
        let vhost = self.vhost.clone();
        let chan = self.chan(ch)?;
        let fail = |code: u16, text: String| Err(AmqpError::channel(code, text).at(60, 40));
        if let Some(u) = properties.user_id.as_deref() {
            if u != user {
                return fail(
                    406,
                    format!("user_id property set to '{u}' but authenticated user was '{user}'"),
                );
            }
        }
        if properties.reply_to.as_deref() == Some(REPLY_TO) {
            let st = chan.shared.state.lock();
            match &st.reply {
                Some(r) => properties.reply_to = Some(format!("{REPLY_TO_PREFIX}{}", r.token)),
                None => return fail(406, "fast reply consumer does not exist".to_owned()),
            }
        }
        let message = Message { properties, body };
        let exchange = publish.exchange.as_str();
        if let Some(tx) = chan.tx.as_mut() {
            if !broker.has_exchange(exchange) {
                return fail(404, format!("no exchange '{exchange}' in vhost '{vhost}'"));
            }
            tx.publishes.push(PendingPublish {
                exchange: exchange.to_owned(),
                routing_key: publish.routing_key.as_str().to_owned(),
                mandatory: publish.mandatory,
                message,
            });
            return Ok(());
        }
        let outcome = self
            .route_publish(
                ch,
                exchange,
                publish.routing_key.as_str(),
                publish.mandatory,
                message,
            )
            .await?;
        let out = self.out.clone();
        if let Some(c) = self.chan(ch)?.confirms.as_mut() {
            c.record(!outcome.is_rejected(), ch, &out);
        }
        Ok(())
    }

    /// Routes one message, sends `basic.return` if it was mandatory and went
    /// nowhere. Direct reply-to addresses are delivered to their channel.
    async fn route_publish(
        &mut self,
        ch: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        message: Message,
    ) -> Result<Published, AmqpError> {
        let len = message.body.len() as u64;
        let returned = mandatory.then(|| message.clone());
        let outcome = if exchange.is_empty() && routing_key.starts_with(REPLY_TO_PREFIX) {
            self.deliver_reply(&routing_key[REPLY_TO_PREFIX.len()..], routing_key, message)
        } else {
            let mut publishing =
                std::pin::pin!(self.broker()?.publish_async(exchange, routing_key, message));
            // Completes at once unless a `block` queue is full; then confirms
            // already earned go out before the wait.
            let first = std::future::poll_fn(|cx| Poll::Ready(publishing.as_mut().poll(cx))).await;
            let result = match first {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    self.flush_confirms();
                    let mut shutdown = self.shared.shutdown.clone();
                    tokio::select! {
                        r = publishing => r,
                        _ = shutdown.wait_for(|s| *s) => {
                            return Err(AmqpError::connection(
                                320,
                                "broker forced connection closure with reason 'shutdown'",
                            ));
                        }
                    }
                }
            };
            match result {
                Ok(p) => p,
                Err(e) => {
                    let e = e
                        .error()
                        .cloned()
                        .map(AmqpError::from)
                        .unwrap_or_else(|| AmqpError::channel(406, "queue is full"));
                    return Err(e.at(60, 40));
                }
            }
        };
        self.shared
            .published_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.shared
            .published_messages
            .fetch_add(1, Ordering::Relaxed);
        if let (true, Some(m)) = (outcome.is_unroutable(), returned) {
            // Earlier messages' acks first, as RabbitMQ orders them.
            let out = self.out.clone();
            if let Some(chan) = self.channels.get_mut(&ch) {
                chan.flush_confirms(&out);
            }
            let permit = self.out.reserve(m.body.len()).await;
            self.out.send(Out::Content {
                channel: ch,
                method: AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: short(exchange),
                    routing_key: short(routing_key),
                })),
                properties: properties_to_wire(&m.properties),
                body: m.body,
                permit,
            });
        }
        Ok(outcome)
    }

    /// Delivers a reply straight to the channel consuming from direct
    /// reply-to whose token this is.
    fn deliver_reply(&self, token: &str, routing_key: &str, message: Message) -> Published {
        let target = self
            .shared
            .reply_to
            .lock()
            .get(token)
            .and_then(std::sync::Weak::upgrade);
        let Some(t) = target.filter(|t| *t.vhost == *self.vhost) else {
            return Published::default();
        };
        // No queue holds replies: one the consumer's connection has no room
        // for (its client stopped reading) goes nowhere, as when the
        // consumer is gone, rather than into an unbounded buffer.
        let Some(permit) = t.out.reserve_now(message.body.len()) else {
            return Published::default();
        };
        let properties = properties_to_wire(&message.properties);
        let mut st = t.state.lock();
        let Some(tag) = st.reply.as_ref().filter(|_| st.open).map(|r| r.tag.clone()) else {
            return Published::default();
        };
        st.next_tag += 1;
        let delivery_tag = st.next_tag;
        t.out.send(Out::Content {
            channel: t.id,
            method: AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: short(&tag),
                delivery_tag,
                redelivered: false,
                exchange: short(""),
                routing_key: short(routing_key),
            })),
            properties,
            body: message.body,
            permit: Some(permit),
        });
        Published {
            routed: 1,
            rejected: 0,
        }
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
