//! The broker: one virtual host's exchanges, queues and bindings.
//!
//! # Locking: how publishers and binding changes stay out of each other's way
//!
//! Publishing takes only *read* locks on the routing table: a read lock on the
//! exchange map to find the exchange (a hash lookup, then the lock is dropped),
//! and a read lock on that exchange's binding index while it is matched
//! (the topic trie's match allocates nothing and takes time proportional to the
//! key, not the number of bindings). Many publishers route at once.
//!
//! A binding change takes the *write* lock of one exchange's index for the
//! time of one insert or removal in that index (a trie insert is proportional
//! to the pattern's length): publishers to other exchanges never wait, and
//! publishers to the same exchange wait at most that long. No lock is held
//! across exchanges, queues or user code.
//!
//! A thread that publishes again to the same exchange with the same routing
//! key skips even those read locks: it keeps its last few routes in a
//! thread-local cache (`RouteCache`), valid while the broker's topology
//! counter has not moved. Every declare, delete, bind and unbind bumps the
//! counter once its change is made, and a publisher reads the counter before
//! it routes, so a cached route is always one the publish could have computed
//! itself at that moment. Routes that depend on the message (a headers
//! exchange on the way, `CC`/`BCC` keys) are not cached.
//!
//! Then each destination queue's own mutex is taken in turn to enqueue. The
//! global lock order is: exchange map / queue map, then an exchange's
//! bindings, then a queue, then a consumer's receive lock (taken under a
//! queue's lock only when the queue is deleted and drains its consumers'
//! rings; a dispatch writes into a consumer's ring without a lock, see
//! `ring.rs`). Work that would need a
//! lock earlier in that order (publishing a dead letter, deleting an
//! auto-delete queue) is collected and done after the later locks are
//! released.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::clock::{unix_seconds, Clock};
use crate::consumer::{Consumer, ConsumerShared, Delivery};
use crate::error::{Error, Result};
use crate::exchange::{Dest, Exchange, PublishCounts};
use crate::field::{AMQPValue, FieldTable};
use crate::message::{BasicProperties, Content, Message, Names, SharedProperties, NO_PROPERTIES};
use crate::options::{
    BrokerOptions, ConsumeOptions, ExchangeDeclareOptions, ExchangeKind, GetOptions, Overflow,
    OwnerId, QueueDeclareOk, QueueDeclareOptions, QueueDeleteOptions,
};
use crate::queue::{AfterUnlock, Counters, DeadLetter, Offer, Queue, QueueConfig, QueueState};
use crate::stats::{BrokerStats, ExchangeStats, QueueStats};
use crate::sync::{
    fold_released, thread, thread_local, AtomicU64, Condvar, ConsumerArc, Mutex, RwLock,
};

mod publisher;
pub use publisher::Publisher;

/// The owner that in-process exclusive declares without an owner get.
const PROCESS_OWNER: OwnerId = OwnerId(0);

/// An in-process broker: one virtual host.
///
/// A cheap handle: clones share the same broker. Every `Broker::new()` is a
/// separate, isolated broker.
///
/// # Examples
///
/// ```
/// use warren_core::{Broker, ConsumeOptions, ExchangeKind, QueueDeclareOptions};
///
/// let broker = Broker::new();
/// broker.declare_exchange("logs", ExchangeKind::Topic, Default::default())?;
/// broker.declare_queue("errors", QueueDeclareOptions::default())?;
/// broker.bind_queue("errors", "logs", "*.error", &Default::default())?;
///
/// let consumer = broker.consume("errors", ConsumeOptions::default())?;
/// let outcome = broker.publish("logs", "db.error", "disk full")?;
/// assert_eq!(outcome.routed, 1);
///
/// let delivery = consumer.recv()?;
/// assert_eq!(&delivery.body()[..], b"disk full");
/// delivery.ack();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<BrokerInner>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("vhost", &self.inner.vhost)
            .finish()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

/// What a publish did: how many queues took the message and how many refused
/// it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Queues that accepted a copy.
    pub routed: u32,
    /// Queues that refused it under `reject-publish` / `reject-publish-dlx`.
    pub rejected: u32,
}

impl Published {
    /// No queue was reached: a `mandatory` publisher gets `basic.return` (312
    /// NO_ROUTE).
    pub fn is_unroutable(&self) -> bool {
        self.routed == 0 && self.rejected == 0
    }

    /// Some queue refused it: a publisher under confirms gets `basic.nack`.
    pub fn is_rejected(&self) -> bool {
        self.rejected > 0
    }
}

/// Why a publish failed; hands the message back.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the publish (404 no such exchange, 403 internal
    /// exchange, 406 bad `expiration` or `CC`).
    #[error("{error}")]
    Refused {
        /// The AMQP error.
        error: Error,
        /// The message, unpublished (boxed: the error path allocates so the
        /// hot path never copies a whole message in its `Result`).
        message: Box<Message>,
    },
    /// `try_publish` only: a `block` queue is full; nothing was published.
    #[error("a queue with overflow 'block' is full")]
    Full(Box<Message>),
}

impl PublishError {
    /// The message, unpublished.
    pub fn into_message(self) -> Message {
        match self {
            PublishError::Refused { message, .. } | PublishError::Full(message) => *message,
        }
    }

    /// The AMQP error, for [`PublishError::Refused`].
    pub fn error(&self) -> Option<&Error> {
        match self {
            PublishError::Refused { error, .. } => Some(error),
            PublishError::Full(_) => None,
        }
    }
}

/// The counters of deleted queues and exchanges, so broker totals never go
/// backwards.
///
/// A deleted queue may still be referred to by deliveries (and consumers)
/// that have not been answered yet; their answers still count, on the dead
/// queue. Such a queue stays here, read live, until nothing else refers to
/// it; then its final counters are folded in. A deleted exchange likewise,
/// while a route cached before the deletion may still count a publish on it.
#[derive(Debug, Default)]
struct Gone {
    /// Folded counters of deleted queues nothing refers to any more.
    counters: Counters,
    acked: u64,
    /// Deleted queues still referred to from outside the broker.
    zombies: Vec<Arc<Queue>>,
    /// Unroutable publishes folded in from deleted exchanges nothing
    /// refers to any more.
    unroutable: u64,
    /// Deleted exchanges still referred to (by cached routes).
    exchanges: Vec<Arc<Exchange>>,
}

impl Gone {
    /// Folds in every deleted queue nothing else refers to any more.
    fn reap(&mut self) {
        fold_released(&mut self.zombies, |q| {
            let st = q.lock();
            let (c, g) = (&st.counters, &mut self.counters);
            g.enqueued += c.enqueued;
            g.rejected += c.rejected;
            g.dropped += c.dropped;
            g.expired += c.expired;
            g.discarded += c.discarded;
            g.purged += c.purged;
            g.dead_lettered += c.dead_lettered;
            // Copies still counted unacked can never be answered now (a
            // forgotten `Delivery`): they went with the queue.
            g.deleted += c.deleted + q.unacked(&st);
            self.acked += q.acked(&st);
        });
    }

    /// Unroutable publishes counted by deleted exchanges: folded in once
    /// nothing refers to them, read live until then.
    fn unroutable(&mut self) -> u64 {
        fold_released(&mut self.exchanges, |x| self.unroutable += x.published().1);
        let live: u64 = self.exchanges.iter().map(|x| x.published().1).sum();
        self.unroutable + live
    }

    /// Everything deleted queues counted, zombies read live.
    fn totals(&mut self) -> QueueStats {
        self.reap();
        let mut t = QueueStats::default();
        add_counters(&mut t, &self.counters);
        t.acked += self.acked;
        for q in &self.zombies {
            add_stats(&mut t, &queue_stats(q));
        }
        t
    }
}

pub(crate) struct BrokerInner {
    vhost: String,
    clock: Clock,
    exchanges: RwLock<NameMap<Arc<Exchange>>>,
    queues: RwLock<NameMap<Arc<Queue>>>,
    ids: AtomicU64,
    owners: AtomicU64,
    names: RandomState,
    timer: Arc<Timer>,
    /// Counters of deleted queues, so broker totals never go backwards.
    /// Lock order: `gone`, then a deleted queue's state.
    gone: Mutex<Gone>,
    /// Bumped after every change that can change a route (exchanges,
    /// queues, bindings): publishers' route caches check it.
    topology: AtomicU64,
    /// Unique among every broker of the process, so a route cache entry is
    /// never taken for another broker's.
    uid: u64,
    this: Weak<BrokerInner>,
}

impl fmt::Debug for BrokerInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerInner")
            .field("vhost", &self.vhost)
            .finish()
    }
}

impl Drop for BrokerInner {
    fn drop(&mut self) {
        // The last strong count is gone by now; counting the drop with
        // release lets another thread that sees the count also see that.
        BROKERS_DROPPED.fetch_add(1, Ordering::Release);
        // Not while this thread is publishing (a drop from inside a publish
        // finds the cache borrowed; its next publish prunes), nor once the
        // thread's locals are gone.
        let _ = SCRATCH.try_with(|cell| {
            if let Ok(mut s) = cell.try_borrow_mut() {
                s.routes.forget_dropped_brokers();
            }
        });
        {
            let mut t = self.timer.state.lock();
            t.shutdown = true;
            self.timer.cv.notify_all();
        }
        // Break the cycles exchange-to-exchange bindings may form, or those
        // exchanges (and the queues they lead to) would never be freed.
        for x in self.exchanges.read().values() {
            x.bindings.write().clear();
        }
    }
}

/// Publish scratch space reused per thread (taken, not borrowed, so a
/// re-entrant publish gets its own).
#[derive(Default)]
struct Scratch {
    queues: Vec<Arc<Queue>>,
    dests: Vec<Dest>,
    work: Vec<Arc<Exchange>>,
    visited: Vec<u64>,
    routes: RouteCache,
}

/// Source of [`BrokerInner::uid`].
static NEXT_BROKER_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Brokers dropped so far in the process: a route cache that has seen fewer
/// drops than this may hold a dropped broker's queues, and lets them go.
static BROKERS_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The last few routes this thread computed, so that publishing again to the
/// same exchange with the same routing key skips the exchange lookup, the
/// binding index and their locks.
///
/// An entry is valid while its broker's topology counter has not moved: every
/// change that can change a route (declaring or deleting an exchange or a
/// queue, binding, unbinding) bumps the counter after it is made, and a
/// publisher reads it before it routes, so a cached route is one the
/// publish could have computed itself at that moment. Routes that depend on
/// the message (a headers exchange anywhere on the path, `CC`/`BCC` keys) are
/// not cached.
///
/// Queues are held strongly, so a hit costs no reference-count traffic (a
/// weak handle costs two atomic operations per queue per publish, to upgrade
/// and release it). What that keeps alive is bounded:
/// - a deleted queue holds no messages, and every miss drops the entries
///   that can never hit again (an older topology of the same broker);
/// - a dropped broker's entries go at once on the thread that drops it, and
///   on any other thread at its next publish (each publish compares a
///   process-wide count of dropped brokers with the one it last saw), so
///   dropping a broker frees its queued messages.
#[derive(Default)]
struct RouteCache {
    entries: Vec<CachedRoute>,
    /// Next entry to replace once the cache is full.
    next: usize,
    /// `BROKERS_DROPPED` when the entries were last checked for dead brokers.
    drops_seen: u64,
}

struct CachedRoute {
    broker: u64,
    /// To tell, on a miss, that the broker is gone.
    owner: Weak<BrokerInner>,
    topology: u64,
    exchange: Arc<Exchange>,
    routing_key: Box<str>,
    queues: Box<[Arc<Queue>]>,
    /// The exchange's name and the routing key, as messages hold them.
    names: Names,
    /// Where this thread counts its publishes on the route for the exchange
    /// (only this thread writes it; see `Exchange::thread_counts`).
    counts: Arc<PublishCounts>,
}

impl RouteCache {
    const CAPACITY: usize = 8;

    fn position(&self, broker: u64, topology: u64, exchange: &str, key: &str) -> Option<usize> {
        self.entries.iter().position(|e| {
            e.broker == broker
                && e.topology == topology
                && &*e.routing_key == key
                && &*e.exchange.name == exchange
        })
    }

    /// Drops the entries of brokers that are gone, if any broker was dropped
    /// since the last look (one load otherwise).
    fn forget_dropped_brokers(&mut self) {
        // Acquire, pairing with the drop's release: a broker counted here
        // shows a strong count of 0 below.
        let drops = BROKERS_DROPPED.load(Ordering::Acquire);
        if drops != self.drops_seen {
            self.drops_seen = drops;
            self.retain(|e| e.owner.strong_count() > 0);
        }
    }

    /// Keeps the entries `keep` says to keep.
    fn retain(&mut self, keep: impl FnMut(&CachedRoute) -> bool) {
        self.entries.retain(keep);
        if self.next >= self.entries.len() {
            self.next = 0;
        }
    }

    fn insert(&mut self, route: CachedRoute) {
        // Entries that can never hit again: a broker that is gone, or an
        // older topology of this one.
        self.retain(|e| {
            e.owner.strong_count() > 0 && (e.broker != route.broker || e.topology == route.topology)
        });
        if let Some(e) = self.entries.iter_mut().find(|e| {
            e.broker == route.broker
                && e.routing_key == route.routing_key
                && e.exchange.name == route.exchange.name
        }) {
            *e = route;
        } else if self.entries.len() < Self::CAPACITY {
            self.entries.push(route);
        } else {
            self.entries[self.next] = route;
            self.next = (self.next + 1) % Self::CAPACITY;
        }
    }
}

/// Exchange and queue names to their objects. foldhash, randomly seeded per
/// broker: several times faster than SipHash on short names, and still seeded
/// so a client cannot precompute colliding names.
pub(crate) type NameMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A message routed and ready to offer to its queues.
struct Prepared {
    exchange: Arc<Exchange>,
    /// `None` once the last queue has taken it (see [`Content::copy`]).
    content: Option<Content>,
    ttl: Option<u64>,
    /// The headers as published, when routing changed them (`BCC` removed).
    original_headers: Option<FieldTable>,
}

/// What [`BrokerInner::offer_all`] returns: the outcome packed in one word,
/// or the message back from a full `block` queue that the publish could not
/// wait for. Two words in all, returned in two registers.
///
/// Why not `Result<Published, PublishError>`: that is returned through
/// memory, and so is a `Result` holding a `Published` (two `u32`s). Each
/// level of the publish path stored it in one width and the next read it
/// back in another, which the processor cannot serve from its store buffer:
/// the read waits until the store reaches the cache, some ten cycles, on
/// every publish. Only the public methods build the public `Result`, once.
type Offered = Result<Packed, Full>;

/// [`Published`] in one word: `routed` in the low half, `rejected` in the
/// high one.
#[derive(Clone, Copy)]
struct Packed(u64);

impl From<Published> for Packed {
    fn from(p: Published) -> Packed {
        Packed(u64::from(p.routed) | u64::from(p.rejected) << 32)
    }
}

/// A `block` queue was full and the publish could not wait: the message,
/// unpublished.
struct Full(Box<Message>);

/// The public form of an [`Offered`].
#[inline]
fn published(r: Offered) -> Result<Published, PublishError> {
    match r {
        Ok(Packed(p)) => Ok(Published {
            routed: p as u32,
            rejected: (p >> 32) as u32,
        }),
        Err(Full(m)) => Err(PublishError::Full(m)),
    }
}

/// The message as the publisher gave it (`original_headers`: the headers
/// before routing removed `BCC`), to hand back unpublished.
fn unpublished(content: &Content, original_headers: Option<&FieldTable>) -> Message {
    let mut m = content.to_message();
    if let Some(h) = original_headers {
        m.properties.headers = Some(h.clone());
    }
    m
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Park the thread while a `block` queue is full.
    Block,
    /// Never wait: `block` queues were checked for room beforehand.
    Never,
}

impl Broker {
    /// A new, empty broker with virtual host `/` and the predefined exchanges.
    pub fn new() -> Self {
        Broker::with_options(BrokerOptions::default())
    }

    /// A new broker with these options.
    pub fn with_options(options: BrokerOptions) -> Self {
        let clock = match options.clock {
            Some(m) => Clock::Manual(m),
            None => Clock::System(Instant::now()),
        };
        let inner = Arc::new_cyclic(|this| BrokerInner {
            vhost: options.vhost,
            clock,
            exchanges: RwLock::new(NameMap::default()),
            queues: RwLock::new(NameMap::default()),
            ids: AtomicU64::new(1),
            owners: AtomicU64::new(1),
            names: RandomState::new(),
            timer: Arc::new(Timer::default()),
            gone: Mutex::new(Gone::default()),
            topology: AtomicU64::new(0),
            uid: NEXT_BROKER_UID.fetch_add(1, Ordering::Relaxed),
            this: this.clone(),
        });
        {
            let mut map = inner.exchanges.write();
            for (name, kind) in [
                ("", ExchangeKind::Direct),
                ("amq.direct", ExchangeKind::Direct),
                ("amq.fanout", ExchangeKind::Fanout),
                ("amq.topic", ExchangeKind::Topic),
                ("amq.headers", ExchangeKind::Headers),
                ("amq.match", ExchangeKind::Headers),
            ] {
                let name: Arc<str> = Arc::from(name);
                let x = Exchange::new(
                    inner.next_id(),
                    name.clone(),
                    kind,
                    true,
                    false,
                    false,
                    FieldTable::new(),
                );
                map.insert(name, Arc::new(x));
            }
        }
        Broker { inner }
    }

    /// The virtual host's name.
    pub fn vhost(&self) -> &str {
        &self.inner.vhost
    }

    /// A fresh owner identity for exclusive queues (a connection, in AMQP).
    pub fn new_owner(&self) -> OwnerId {
        OwnerId(self.inner.owners.fetch_add(1, Ordering::Relaxed))
    }

    /// Deletes every exclusive queue of `owner` (its connection closed).
    pub fn release_owner(&self, owner: OwnerId) {
        let mine: Vec<Arc<Queue>> = self
            .inner
            .queues
            .read()
            .values()
            .filter(|q| q.config.exclusive == Some(owner))
            .cloned()
            .collect();
        for q in mine {
            self.inner.remove_queue(&q);
        }
    }

    /// Declares an exchange, or checks an existing one is equivalent.
    ///
    /// # Errors
    ///
    /// 404 for a passive declare of a missing exchange; 403 for a new name
    /// starting with `amq.` or for the default exchange; 406 when an exchange of
    /// that name exists with another type, `durable`, `auto_delete`,
    /// `internal` or `alternate-exchange`.
    pub fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeDeclareOptions,
    ) -> Result<()> {
        let inner = &self.inner;
        if name.is_empty() {
            return Err(Error::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if options.passive {
            return inner.exchange(name).map(drop);
        }
        let mut map = inner.exchanges.write();
        if let Some(x) = map.get(name) {
            return inner.exchange_equivalent(x, kind, &options);
        }
        if name.starts_with("amq.") {
            return Err(Error::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let name: Arc<str> = Arc::from(name);
        let x = Exchange::new(
            inner.next_id(),
            name.clone(),
            kind,
            options.durable,
            options.auto_delete,
            options.internal,
            options.arguments,
        );
        map.insert(name, Arc::new(x));
        inner.topology_changed();
        Ok(())
    }

    /// Deletes an exchange and every binding from or to it. Deleting a
    /// missing exchange succeeds.
    ///
    /// # Errors
    ///
    /// 403 for the default and `amq.` exchanges; 406 with `if_unused` when it
    /// has bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        if name.is_empty() {
            return Err(Error::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if name.starts_with("amq.") {
            return Err(Error::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.inner.vhost
            )));
        }
        let Some(x) = self.inner.exchanges.read().get(name).cloned() else {
            return Ok(());
        };
        if if_unused && !x.bindings.read().list.is_empty() {
            return Err(Error::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.inner.vhost
            )));
        }
        self.inner.remove_exchange(&x);
        Ok(())
    }

    /// Declares a queue, or checks an existing one is equivalent. An empty
    /// name makes the server choose one (`amq.gen-…`).
    ///
    /// # Errors
    ///
    /// 404 for a passive declare of a missing queue; 403 for a name starting
    /// with `amq.` (unless passive: server-named queues are redeclared
    /// passively, as in RabbitMQ); 405 for another owner's exclusive queue, or
    /// a redeclare whose `exclusive` differs from the queue's; 406 for
    /// an invalid argument, or when the queue exists with another `durable`,
    /// `auto_delete` or known `x-` argument (RabbitMQ's wording:
    /// `inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true'
    /// but current is 'false'`).
    pub fn declare_queue(
        &self,
        name: &str,
        options: QueueDeclareOptions,
    ) -> Result<QueueDeclareOk> {
        let inner = &self.inner;
        let now = inner.now();
        if options.passive {
            let q = inner.queue(name)?;
            inner.check_owner(&q, options.owner)?;
            return Ok(q.touch_and_report(now));
        }
        let name: Arc<str> = if name.is_empty() {
            Arc::from(inner.generate_name("amq.gen-").as_str())
        } else if name.starts_with("amq.") {
            // RabbitMQ checks a name the client chose before looking it up:
            // even an existing server-named queue cannot be redeclared by name.
            return Err(Error::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        } else {
            Arc::from(name)
        };
        let config = parse_queue_config(&name, &inner.vhost, &options)?;
        let q = {
            let mut map = inner.queues.write();
            if let Some(q) = map.get(&name) {
                let q = q.clone();
                drop(map);
                inner.check_redeclare_owner(&q, options.owner, config.exclusive)?;
                queue_equivalent(&q, &config, &inner.vhost)?;
                return Ok(q.touch_and_report(now));
            }
            let q = Arc::new(Queue::new(
                inner.next_id(),
                name.clone(),
                config,
                inner.this.clone(),
                inner.clock.clone(),
            ));
            map.insert(name.clone(), q.clone());
            inner.topology_changed();
            q
        };
        let mut after = AfterUnlock::default();
        q.plan_timer(&mut q.lock(), &mut after);
        inner.finish(after);
        Ok(QueueDeclareOk {
            queue: name.to_string(),
            message_count: 0,
            consumer_count: 0,
        })
    }

    /// Deletes a queue: its ready messages go, its consumers are cancelled.
    /// Returns how many ready messages it held. Deleting a missing queue
    /// succeeds with 0.
    ///
    /// # Errors
    ///
    /// 405 for another owner's exclusive queue; 406 with `if_unused` when it
    /// has consumers, with `if_empty` when it has ready messages.
    pub fn delete_queue(&self, name: &str, options: QueueDeleteOptions) -> Result<u64> {
        let inner = &self.inner;
        let Some(q) = inner.queues.read().get(name).cloned() else {
            return Ok(0);
        };
        inner.check_owner(&q, options.owner)?;
        {
            let st = q.lock();
            if options.if_unused && !st.consumers.is_empty() {
                return Err(Error::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' in use",
                    inner.vhost
                )));
            }
            if options.if_empty && !st.ready.is_empty() {
                return Err(Error::PreconditionFailed(format!(
                    "queue '{name}' in vhost '{}' not empty",
                    inner.vhost
                )));
            }
        }
        Ok(inner.remove_queue(&q))
    }

    /// Removes every ready message from a queue; returns how many. Unacked
    /// messages are not touched.
    ///
    /// # Errors
    ///
    /// 404 for a missing queue.
    pub fn purge_queue(&self, name: &str) -> Result<u64> {
        let q = self.inner.queue(name)?;
        let n = q.purge(&mut q.lock());
        Ok(n)
    }

    /// Binds a queue to an exchange. Binding the same thing twice is a no-op.
    ///
    /// # Errors
    ///
    /// 404 for a missing queue or exchange; 403 for the default exchange; 406
    /// for a headers binding with an invalid `x-match`.
    pub fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let x = self.inner.bindable(exchange)?;
        let q = self.inner.queue(queue)?;
        let r = x
            .bindings
            .write()
            .add(Dest::Queue(q), routing_key, arguments);
        self.inner.topology_changed();
        r
    }

    /// Removes a binding made by [`bind_queue`](Self::bind_queue); the
    /// arguments must be the same. A missing binding is not an error.
    ///
    /// # Errors
    ///
    /// 404 for a missing queue or exchange; 403 for the default exchange.
    pub fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let x = self.inner.bindable(exchange)?;
        let q = self.inner.queue(queue)?;
        self.inner.unbind(&x, q.id, routing_key, arguments);
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source`: what `source` routes
    /// with this key goes on through `destination`.
    ///
    /// # Errors
    ///
    /// 404 for a missing exchange; 403 for the default exchange; 406 for a
    /// headers binding with an invalid `x-match`.
    pub fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let src = self.inner.bindable(source)?;
        let dst = self.inner.bindable(destination)?;
        let r = src
            .bindings
            .write()
            .add(Dest::Exchange(dst), routing_key, arguments);
        self.inner.topology_changed();
        r
    }

    /// Removes an exchange-to-exchange binding. A missing binding is not an
    /// error.
    ///
    /// # Errors
    ///
    /// 404 for a missing exchange; 403 for the default exchange.
    pub fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<()> {
        let src = self.inner.bindable(source)?;
        let dst = self.inner.bindable(destination)?;
        self.inner.unbind(&src, dst.id, routing_key, arguments);
        Ok(())
    }

    /// Publishes a message. Never waits, except for room in a queue whose
    /// overflow is `block`: then the thread parks until there is room.
    ///
    /// Returns what happened: how many queues took it, how many refused it.
    ///
    /// # Errors
    ///
    /// [`PublishError::Refused`] for a missing exchange (404), an internal
    /// exchange (403), an `expiration` that is not a non-negative integer or a
    /// `CC`/`BCC` header that is not an array (406). The message comes back.
    pub fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: impl Into<Message>,
    ) -> Result<Published, PublishError> {
        let mut message = message.into();
        if message.properties.is_empty() {
            // The body goes with shared (no) properties: on a cached route
            // nothing more is built, copied or dropped. What is left owns
            // nothing (properties all `None`, an empty static body), so it
            // is forgotten rather than put through fourteen drop checks.
            let body = std::mem::take(&mut message.body);
            std::mem::forget(message);
            return (self.inner).publish_shared(exchange, routing_key, &NO_PROPERTIES, body);
        }
        self.inner
            .publish(exchange, routing_key, &mut message, Wait::Block)
    }

    /// Publishes a body with properties shared with other messages (see
    /// [`SharedProperties`]): as [`publish`](Self::publish) in every other
    /// respect, with no copy of the properties when the route is one this
    /// thread has published on before.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish); the message handed back holds a copy of
    /// the properties.
    pub fn publish_shared(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &SharedProperties,
        body: impl Into<Bytes>,
    ) -> Result<Published, PublishError> {
        self.inner
            .publish_shared(exchange, routing_key, properties, body.into())
    }

    /// Publishes without ever waiting.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), plus [`PublishError::Full`] when a
    /// `block` queue it routes to is full (then no queue gets it). Under
    /// concurrent publishers a `block` queue may go over its bound by at most
    /// one message per publisher racing past the room check.
    pub fn try_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: impl Into<Message>,
    ) -> Result<Published, PublishError> {
        let mut message = message.into();
        self.inner
            .publish(exchange, routing_key, &mut message, Wait::Never)
    }

    /// Publishes, waiting asynchronously for room in `block` queues.
    ///
    /// Routing and validation happen when this is called; the future offers the
    /// message to its queues in turn.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe while it waits for room: dropping the future then means
    /// the waiting queue and those after it do not get the message (queues
    /// before it already have it). Without `block` queues the first poll
    /// completes it.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub fn publish_async(
        &self,
        exchange: &str,
        routing_key: &str,
        message: impl Into<Message>,
    ) -> PublishAsync {
        let mut queues = Vec::new();
        let mut message = message.into();
        // Routing is synchronous: it uses this thread's scratch space and
        // route cache, as `publish` does; only the offers wait.
        let prepared = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => {
                self.inner
                    .prepare(exchange, routing_key, &mut message, &mut queues, &mut s)
            }
            Err(_) => self.inner.prepare(
                exchange,
                routing_key,
                &mut message,
                &mut queues,
                &mut Scratch::default(),
            ),
        });
        let state = match prepared {
            Ok(p) => Ok(p),
            Err(e) => Err(Some(e)),
        };
        PublishAsync {
            broker: self.inner.clone(),
            state,
            queues,
            next: 0,
            outcome: Published::default(),
            key: 0,
        }
    }

    /// Starts a consumer on a queue.
    ///
    /// # Errors
    ///
    /// 404 for a missing queue; 405 for another owner's exclusive queue; 403
    /// when the queue has an exclusive consumer, or when `exclusive` is asked
    /// and it has consumers; 530 for a consumer tag already in use on it.
    pub fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer> {
        let inner = &self.inner;
        let q = inner.queue(queue)?;
        inner.check_owner(&q, options.owner)?;
        let tag: Arc<str> = if options.consumer_tag.is_empty() {
            Arc::from(inner.generate_name("amq.ctag-").as_str())
        } else {
            Arc::from(options.consumer_tag.as_str())
        };
        let shared = ConsumerArc::new(ConsumerShared::new(
            inner.next_id(),
            tag.clone(),
            q.clone(),
            options.prefetch,
            options.no_ack,
            options.exclusive,
        ));
        let now = inner.now();
        let mut after = AfterUnlock::default();
        {
            let mut st = q.lock();
            if st.deleted {
                return Err(inner.no_queue(queue));
            }
            if st.has_exclusive_consumer || (options.exclusive && !st.consumers.is_empty()) {
                return Err(Error::AccessRefused(format!(
                    "queue '{queue}' in vhost '{}' in exclusive use",
                    inner.vhost
                )));
            }
            // Consumer tags are unique per AMQP channel, not per queue
            // (oslo.messaging's servers all consume one topic queue with tag
            // "1"): the wire layer checks them per channel.
            st.has_exclusive_consumer = options.exclusive;
            st.had_consumer = true;
            st.last_used = now;
            st.consumers.push(shared.clone());
            q.dispatch(&mut st, now, &mut after);
        }
        inner.finish(after);
        Ok(Consumer::new(shared, q))
    }

    /// Takes one message from a queue, if any (AMQP's `basic.get`).
    ///
    /// # Errors
    ///
    /// 404 for a missing queue; 405 for another owner's exclusive queue.
    pub fn get(&self, queue: &str, options: GetOptions) -> Result<Option<Delivery>> {
        let inner = &self.inner;
        let q = inner.queue(queue)?;
        inner.check_owner(&q, options.owner)?;
        let now = inner.now();
        let mut after = AfterUnlock::default();
        let got = q.get(&mut q.lock(), now, options.no_ack, &mut after);
        inner.finish(after);
        Ok(got.map(|(e, left)| {
            let tag = q.next_get_tag();
            Delivery::from_get(e, q.clone(), tag, left, options.no_ack)
        }))
    }

    /// Runs TTL expiry and `x-expires` leases now. The broker's timer does this
    /// by itself; call it when the broker runs on a
    /// [`ManualClock`](crate::ManualClock), after advancing it.
    pub fn run_expiry(&self) {
        let queues: Vec<Arc<Queue>> = self.inner.queues.read().values().cloned().collect();
        for q in queues {
            self.inner.run_queue_timer(&q);
        }
    }

    /// A snapshot of one queue's counters.
    ///
    /// # Errors
    ///
    /// 404 for a missing queue.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats> {
        let q = self.inner.queue(name)?;
        Ok(settled_queue_stats(&q))
    }

    /// A snapshot of every queue's and exchange's counters.
    pub fn stats(&self) -> BrokerStats {
        let live = self.inner.live_queues();
        let mut queues: Vec<QueueStats> = live.iter().map(|q| settled_queue_stats(q)).collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let mut exchanges: Vec<ExchangeStats> = self
            .inner
            .exchanges
            .read()
            .values()
            .map(|x| {
                let (routed, unroutable) = x.published();
                ExchangeStats {
                    name: x.name.to_string(),
                    published: routed + unroutable,
                    routed,
                    unroutable,
                }
            })
            .collect();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        let (gone, gone_unroutable) = {
            let mut gone = self.inner.gone.lock();
            (gone.totals(), gone.unroutable())
        };
        BrokerStats {
            dropped: gone.dropped + queues.iter().map(|q| q.dropped).sum::<u64>(),
            dead_lettered: gone.dead_lettered + queues.iter().map(|q| q.dead_lettered).sum::<u64>(),
            expired: gone.expired + queues.iter().map(|q| q.expired).sum::<u64>(),
            unroutable: gone_unroutable + exchanges.iter().map(|x| x.unroutable).sum::<u64>(),
            ready_bytes: queues.iter().map(|q| q.ready_bytes).sum(),
            queues,
            exchanges,
        }
    }

    /// Counters summed over every queue this broker ever had, deleted ones
    /// included: for conservation checks. A delivery from a deleted queue
    /// counts as unacked until it is answered (or dropped), then as acked,
    /// discarded or deleted.
    pub fn totals(&self) -> QueueStats {
        let live = self.inner.live_queues();
        let mut t = self.inner.gone.lock().totals();
        for q in &live {
            add_stats(&mut t, &settled_queue_stats(q));
        }
        t
    }

    /// Names of the queues, sorted.
    pub fn queue_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .queues
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// Names of the exchanges, sorted (`""` is the default exchange).
    pub fn exchange_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .exchanges
            .read()
            .keys()
            .map(|k| k.to_string())
            .collect();
        v.sort();
        v
    }

    /// Whether a queue of this name exists.
    pub fn has_queue(&self, name: &str) -> bool {
        self.inner.queues.read().contains_key(name)
    }

    /// Whether an exchange of this name exists.
    pub fn has_exchange(&self, name: &str) -> bool {
        self.inner.exchanges.read().contains_key(name)
    }
}

fn add_counters(t: &mut QueueStats, c: &Counters) {
    t.enqueued += c.enqueued;
    t.discarded += c.discarded;
    t.dropped += c.dropped;
    t.rejected += c.rejected;
    t.expired += c.expired;
    t.purged += c.purged;
    t.deleted += c.deleted;
    t.dead_lettered += c.dead_lettered;
}

fn add_stats(t: &mut QueueStats, s: &QueueStats) {
    t.ready += s.ready;
    t.unacked += s.unacked;
    t.consumers += s.consumers;
    t.acked += s.acked;
    t.enqueued += s.enqueued;
    t.discarded += s.discarded;
    t.dropped += s.dropped;
    t.rejected += s.rejected;
    t.expired += s.expired;
    t.purged += s.purged;
    t.deleted += s.deleted;
    t.dead_lettered += s.dead_lettered;
}

/// A live queue's counters, after running any dispatch its consumers' answers
/// left owed (see `ConsumerShared::release_credit`), so they show what
/// RabbitMQ would: credit that came back is already filled from the ready
/// messages.
fn settled_queue_stats(q: &Queue) -> QueueStats {
    let mut after = AfterUnlock::default();
    let s = {
        let mut st = q.lock();
        let now = q.now_if_timed(None);
        q.dispatch(&mut st, now, &mut after);
        q.plan_timer(&mut st, &mut after);
        stats_of(q, &st)
    };
    q.finish(after);
    s
}

fn queue_stats(q: &Queue) -> QueueStats {
    stats_of(q, &q.lock())
}

fn stats_of(q: &Queue, st: &QueueState) -> QueueStats {
    let mut s = QueueStats {
        name: q.name.to_string(),
        ready: st.ready.len() as u64,
        ready_bytes: st.ready_bytes,
        unacked: q.unacked(st),
        consumers: st.consumers.len() as u32,
        acked: q.acked(st),
        ..QueueStats::default()
    };
    add_counters(&mut s, &st.counters);
    s
}

impl Queue {
    fn touch_and_report(&self, now: u64) -> QueueDeclareOk {
        let mut st = self.lock();
        st.last_used = now;
        QueueDeclareOk {
            queue: self.name.to_string(),
            message_count: st.ready.len() as u64,
            consumer_count: st.consumers.len() as u32,
        }
    }
}

impl BrokerInner {
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn generate_name(&self, prefix: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut h = self.names.build_hasher();
        h.write_u64(self.next_id());
        let mut a = h.finish();
        let mut h2 = self.names.build_hasher();
        h2.write_u64(a);
        let mut b = h2.finish();
        let mut s = String::with_capacity(prefix.len() + 22);
        s.push_str(prefix);
        for i in 0..22 {
            let src = if i < 11 { &mut a } else { &mut b };
            s.push(ALPHABET[(*src & 63) as usize] as char);
            *src >>= 6;
        }
        s
    }

    fn no_queue(&self, name: &str) -> Error {
        Error::NotFound(format!("no queue '{name}' in vhost '{}'", self.vhost))
    }

    fn exchange(&self, name: &str) -> Result<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned().ok_or_else(|| {
            Error::NotFound(format!("no exchange '{name}' in vhost '{}'", self.vhost))
        })
    }

    /// An exchange that may take part in bindings (not the default one).
    fn bindable(&self, name: &str) -> Result<Arc<Exchange>> {
        if name.is_empty() {
            return Err(Error::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        self.exchange(name)
    }

    fn queue(&self, name: &str) -> Result<Arc<Queue>> {
        self.queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| self.no_queue(name))
    }

    fn locked(&self, q: &Queue) -> Error {
        Error::ResourceLocked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            q.name, self.vhost
        ))
    }

    /// Use of a queue (RabbitMQ's lax check): its owner, or anyone when it
    /// is not exclusive. A caller without an owner is trusted.
    fn check_owner(&self, q: &Queue, caller: Option<OwnerId>) -> Result<()> {
        match (q.config.exclusive, caller) {
            (Some(owner), Some(c)) if owner != c => Err(self.locked(q)),
            _ => Ok(()),
        }
    }

    /// A redeclare (RabbitMQ's strict check): the exclusive owner asked for
    /// (`None` for a shared queue) must be the queue's. A caller without an
    /// owner that does not ask for exclusivity is trusted.
    fn check_redeclare_owner(
        &self,
        q: &Queue,
        caller: Option<OwnerId>,
        requested: Option<OwnerId>,
    ) -> Result<()> {
        if caller.is_none() && requested.is_none() || q.config.exclusive == requested {
            Ok(())
        } else {
            Err(self.locked(q))
        }
    }

    fn exchange_equivalent(
        &self,
        x: &Exchange,
        kind: ExchangeKind,
        o: &ExchangeDeclareOptions,
    ) -> Result<()> {
        let ineq = |arg: &str, got: &dyn fmt::Display, cur: &dyn fmt::Display| {
            Err(Error::PreconditionFailed(format!(
                "inequivalent arg '{arg}' for exchange '{}' in vhost '{}': received '{got}' but current is '{cur}'",
                x.name, self.vhost
            )))
        };
        if x.kind != kind {
            return ineq("type", &kind, &x.kind);
        }
        if x.durable != o.durable {
            return ineq("durable", &o.durable, &x.durable);
        }
        if x.auto_delete != o.auto_delete {
            return ineq("auto_delete", &o.auto_delete, &x.auto_delete);
        }
        if x.internal != o.internal {
            return ineq("internal", &o.internal, &x.internal);
        }
        let got = o
            .arguments
            .get("alternate-exchange")
            .and_then(AMQPValue::as_str);
        if got != x.alternate.as_deref() {
            return Err(Error::PreconditionFailed(format!(
                "inequivalent arg 'alternate-exchange' for exchange '{}' in vhost '{}': received {} but current is {}",
                x.name,
                self.vhost,
                got.map_or("none".to_owned(), |g| format!("the value '{g}' of type 'longstr'")),
                x.alternate.as_deref().map_or("none".to_owned(), |g| format!("the value '{g}' of type 'longstr'")),
            )));
        }
        Ok(())
    }

    fn unbind(&self, x: &Arc<Exchange>, dest: u64, routing_key: &str, arguments: &FieldTable) {
        let now_empty = {
            let mut b = x.bindings.write();
            b.remove(dest, routing_key, arguments) && b.list.is_empty()
        };
        self.topology_changed();
        if now_empty && x.auto_delete {
            self.remove_exchange(x);
        }
    }

    /// Removes a queue from the vhost: bindings first, then its contents.
    /// Returns how many ready messages it held.
    pub(crate) fn remove_queue(&self, q: &Arc<Queue>) -> u64 {
        {
            let mut map = self.queues.write();
            match map.get(&q.name) {
                Some(cur) if Arc::ptr_eq(cur, q) => {
                    map.remove(&q.name);
                }
                _ => return 0,
            }
        }
        self.topology_changed();
        self.remove_bindings_to(q.id);
        let n = q.mark_deleted(&mut q.lock());
        // Deliveries still out count on the dead queue when answered.
        let mut gone = self.gone.lock();
        gone.zombies.push(q.clone());
        gone.reap();
        n
    }

    fn remove_exchange(&self, x: &Arc<Exchange>) {
        {
            let mut map = self.exchanges.write();
            match map.get(&x.name) {
                Some(cur) if Arc::ptr_eq(cur, x) => {
                    map.remove(&x.name);
                }
                _ => return,
            }
        }
        self.topology_changed();
        self.remove_bindings_to(x.id);
        {
            let mut b = x.bindings.write();
            let ids: Vec<u64> = b.list.iter().map(|b| b.dest.id()).collect();
            for id in ids {
                b.remove_dest(id);
            }
        }
        self.topology_changed();
        // What it counted still counts in the broker's totals.
        let mut gone = self.gone.lock();
        gone.exchanges.push(x.clone());
        gone.unroutable();
    }

    /// The queues now declared. Stats read them after the map's lock is
    /// released: settling a queue may publish dead letters, which take it.
    fn live_queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// Invalidates every thread's cached routes into this broker; call after
    /// (never before) the change is made.
    fn topology_changed(&self) {
        self.topology.fetch_add(1, Ordering::Release);
    }

    /// Removes every binding whose destination is `id`; auto-delete exchanges
    /// left without bindings go too.
    fn remove_bindings_to(&self, id: u64) {
        let all: Vec<Arc<Exchange>> = self.exchanges.read().values().cloned().collect();
        for x in all {
            let emptied = {
                let mut b = x.bindings.write();
                b.remove_dest(id) > 0 && b.list.is_empty()
            };
            self.topology_changed();
            if emptied && x.auto_delete {
                self.remove_exchange(&x);
            }
        }
    }

    /// Finishes what a queue operation left for after its lock (usually
    /// nothing: checked inline, on every publish).
    #[inline]
    pub(crate) fn finish(&self, after: AfterUnlock) {
        if !after.is_empty() {
            self.finish_work(after);
        }
    }

    #[cold]
    fn finish_work(&self, after: AfterUnlock) {
        let AfterUnlock {
            dead_letters,
            schedule,
        } = after;
        if let Some((at, name, id)) = schedule {
            self.schedule(at, name, id);
        }
        for dl in dead_letters {
            self.publish_dead_letter(dl);
        }
    }

    fn schedule(&self, at: u64, name: Arc<str>, id: u64) {
        if at == u64::MAX || self.clock.is_manual() {
            return;
        }
        let mut t = self.timer.state.lock();
        t.heap.push(Reverse(TimerEntry { at, name, id }));
        if !t.started {
            t.started = true;
            let timer = self.timer.clone();
            let broker = self.this.clone();
            let clock = self.clock.clone();
            let spawned = std::thread::Builder::new()
                .name("warren-timer".into())
                .spawn(move || timer_thread(timer, broker, clock));
            if spawned.is_err() {
                // No thread: expiry still happens lazily on queue operations.
                t.started = false;
            }
        }
        self.timer.cv.notify_all();
    }

    fn run_queue_timer(&self, q: &Arc<Queue>) {
        let now = self.now();
        let mut after = AfterUnlock::default();
        let lease_over = q.on_timer(&mut q.lock(), now, &mut after);
        self.finish(after);
        if lease_over {
            self.remove_queue(q);
        }
    }

    /// Validates and routes a message; fills `queues` with its destinations.
    fn prepare(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &mut Message,
        queues: &mut Vec<Arc<Queue>>,
        scratch: &mut Scratch,
    ) -> Result<Prepared, PublishError> {
        // The message is taken by reference and moved out only at the end: it
        // is a few hundred bytes, and the hot path should not copy it around.
        let refuse = |error: Error, message: &mut Message| {
            Err(PublishError::Refused {
                error,
                message: Box::new(std::mem::take(message)),
            })
        };
        // Read before routing: a route cached under this value is one this
        // publish could have computed itself (see `RouteCache`).
        let topology = self.topology.load(Ordering::Acquire);
        let hit = scratch
            .routes
            .position(self.uid, topology, exchange, routing_key);
        let x = match hit {
            Some(i) => scratch.routes.entries[i].exchange.clone(),
            None => match self.exchange(exchange) {
                Ok(x) => x,
                Err(e) => return refuse(e, message),
            },
        };
        if x.internal {
            let e = Error::AccessRefused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.vhost
            ));
            return refuse(e, message);
        }
        let ttl = match message
            .properties
            .expiration
            .as_deref()
            .map(parse_expiration)
        {
            None => None,
            Some(Ok(ms)) => Some(ms),
            Some(Err(e)) => return refuse(e, message),
        };
        let mut extra: Vec<String> = Vec::new();
        let mut bcc: Vec<String> = Vec::new();
        if let Some(h) = &message.properties.headers {
            for name in ["CC", "BCC"] {
                match h.get(name) {
                    None => {}
                    Some(AMQPValue::FieldArray(a)) => {
                        let keys = a.iter().filter_map(|v| v.as_str().map(str::to_owned));
                        if name == "BCC" {
                            bcc.extend(keys);
                            extra.extend(bcc.iter().cloned());
                        } else {
                            extra.extend(keys);
                        }
                    }
                    Some(_) => {
                        let e = Error::PreconditionFailed(format!(
                            "invalid {name} header: expected an array of strings"
                        ));
                        return refuse(e, message);
                    }
                }
            }
        }
        // BCC never reaches a queue (nor a headers binding), whatever it holds.
        // The original headers are kept to hand the message back untouched.
        let original_headers = match message.properties.headers.as_mut() {
            Some(h) if h.contains_key("BCC") => {
                let original = h.clone();
                h.remove("BCC");
                Some(original)
            }
            _ => None,
        };
        let one = [routing_key];
        let all_keys: Vec<&str>;
        let keys: &[&str] = if extra.is_empty() {
            &one
        } else {
            all_keys = std::iter::once(routing_key)
                .chain(extra.iter().map(String::as_str))
                .collect();
            &all_keys
        };
        match hit {
            Some(i) if extra.is_empty() => {
                queues.extend(scratch.routes.entries[i].queues.iter().cloned());
            }
            _ => {
                let cacheable = self.route(
                    &x,
                    keys,
                    message.properties.headers.as_ref(),
                    queues,
                    scratch,
                );
                if cacheable && extra.is_empty() {
                    let route = self.cached_route(topology, x.clone(), routing_key, queues);
                    scratch.routes.insert(route);
                }
            }
        }
        let content = Content::new(Names::new(&x.name, routing_key), message, bcc);
        Ok(Prepared {
            exchange: x,
            content: Some(content),
            ttl,
            original_headers,
        })
    }

    /// A route to keep: from `x` with `routing_key`, to `queues`, computed at
    /// `topology`, with a counter cell of its own on `x`.
    fn cached_route(
        &self,
        topology: u64,
        x: Arc<Exchange>,
        routing_key: &str,
        queues: &[Arc<Queue>],
    ) -> CachedRoute {
        CachedRoute {
            broker: self.uid,
            owner: self.this.clone(),
            topology,
            names: Names::new(&x.name, routing_key),
            counts: x.thread_counts(),
            exchange: x,
            routing_key: routing_key.into(),
            queues: queues.into(),
        }
    }

    /// Walks the exchange graph from `x`, collecting each queue once.
    /// Returns whether the route depends only on the exchange and the keys
    /// (no headers exchange on the way), so it may be cached.
    fn route(
        &self,
        x: &Arc<Exchange>,
        keys: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<Queue>>,
        s: &mut Scratch,
    ) -> bool {
        let mut cacheable = true;
        if x.name.is_empty() {
            let map = self.queues.read();
            for k in keys {
                if let Some(q) = map.get(*k) {
                    out.push(q.clone());
                }
            }
        } else {
            s.work.push(x.clone());
            s.visited.push(x.id);
            while let Some(x) = s.work.pop() {
                cacheable &= x.kind != ExchangeKind::Headers;
                s.dests.clear();
                x.bindings.read().route(keys, headers, &mut s.dests);
                if s.dests.is_empty() {
                    if let Some(ae) = x
                        .alternate
                        .as_deref()
                        .and_then(|n| self.exchanges.read().get(n).cloned())
                    {
                        if !s.visited.contains(&ae.id) {
                            s.visited.push(ae.id);
                            s.work.push(ae);
                        }
                    }
                }
                for d in s.dests.drain(..) {
                    match d {
                        Dest::Queue(q) => out.push(q),
                        Dest::Exchange(e) => {
                            if !s.visited.contains(&e.id) {
                                s.visited.push(e.id);
                                s.work.push(e);
                            }
                        }
                    }
                }
            }
            s.visited.clear();
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|q| q.id);
            out.dedup_by_key(|q| q.id);
        }
        cacheable
    }

    fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &mut Message,
        wait: Wait,
    ) -> Result<Published, PublishError> {
        // Reuse this thread's scratch space; a re-entrant publish (from inside
        // another's dead-lettering) finds it borrowed and uses a fresh one.
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => self.publish_with(exchange, routing_key, message, wait, &mut s),
            Err(_) => {
                let mut s = Scratch::default();
                self.publish_with(exchange, routing_key, message, wait, &mut s)
            }
        })
    }

    fn publish_shared(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &SharedProperties,
        body: Bytes,
    ) -> Result<Published, PublishError> {
        let mut body = Some(body);
        if let Some(ttl) = properties.route_ttl {
            let fast = SCRATCH.with(|cell| {
                let mut s = cell.try_borrow_mut().ok()?;
                self.on_cached_route(&mut s, exchange, routing_key, |route| {
                    let body = body.take().unwrap_or_default();
                    let content = Content::shared(route.names.clone(), properties, body);
                    let (count, queues) = (CountOn::Cell(&route.counts), &route.queues);
                    self.offer_all(count, queues, Some(content), ttl, None, Wait::Block)
                })
            });
            if let Some(r) = fast {
                return published(r);
            }
        }
        let mut message = Message {
            properties: properties.properties().clone(),
            body: body.unwrap_or_default(),
        };
        self.publish(exchange, routing_key, &mut message, Wait::Block)
    }

    /// The common case of a publish: a route this thread has cached. `offer`
    /// gets the cached exchange, queues and names, borrowed: no lookup, no
    /// reference counts. `None` (and `offer` not called) if the route is not
    /// cached. Only for messages that [`fast_ttl`] lets through.
    fn on_cached_route<R>(
        &self,
        s: &mut Scratch,
        exchange: &str,
        routing_key: &str,
        offer: impl FnOnce(&CachedRoute) -> R,
    ) -> Option<R> {
        s.routes.forget_dropped_brokers();
        let topology = self.topology.load(Ordering::Acquire);
        let i = s
            .routes
            .position(self.uid, topology, exchange, routing_key)?;
        Some(offer(&s.routes.entries[i]))
    }

    fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &mut Message,
        wait: Wait,
        s: &mut Scratch,
    ) -> Result<Published, PublishError> {
        if let Some(ttl) = fast_ttl(&message.properties) {
            let fast = self.on_cached_route(s, exchange, routing_key, |route| {
                let content = Content::new(route.names.clone(), message, Vec::new());
                self.offer_all(
                    CountOn::Cell(&route.counts),
                    &route.queues,
                    Some(content),
                    ttl,
                    None,
                    wait,
                )
            });
            if let Some(r) = fast {
                return published(r);
            }
        }
        let mut queues = std::mem::take(&mut s.queues);
        let r = self
            .prepare(exchange, routing_key, message, &mut queues, s)
            .and_then(|p| {
                let h = p.original_headers.as_ref();
                let count = CountOn::Exchange(&p.exchange);
                published(self.offer_all(count, &queues, p.content, p.ttl, h, wait))
            });
        queues.clear();
        s.queues = queues;
        r
    }

    /// Offers a routed message to its queues, in turn, and counts what they
    /// did with it on the exchange (`count`).
    fn offer_all(
        &self,
        count: CountOn<'_>,
        queues: &[Arc<Queue>],
        mut content: Option<Content>,
        ttl: Option<u64>,
        original_headers: Option<&FieldTable>,
        wait: Wait,
    ) -> Offered {
        let bytes = content.as_ref().map_or(0, Content::body_len) as u64;
        if wait == Wait::Never {
            for q in queues
                .iter()
                .filter(|q| q.config.overflow == Overflow::Block)
            {
                let st = q.lock();
                if !st.deleted && !q.has_room(&st, bytes) {
                    let m = (content.as_ref())
                        .map(|c| unpublished(c, original_headers))
                        .unwrap_or_default();
                    return Err(Full(Box::new(m)));
                }
            }
        }
        let mut out = Published::default();
        let n = queues.len();
        for (i, q) in queues.iter().enumerate() {
            loop {
                let now = q.now_if_timed(ttl);
                let mut after = AfterUnlock::default();
                let mut key = 0;
                let r = {
                    let mut st = q.lock();
                    let r = q.offer(
                        &mut st,
                        &mut content,
                        i + 1 == n,
                        q.deadline(now, ttl),
                        now,
                        wait == Wait::Never,
                        &mut after,
                    );
                    if r == Offer::Full {
                        key = st.room.park_current();
                    }
                    r
                };
                self.finish(after);
                if r == Offer::Full {
                    thread::park_timeout(Duration::from_millis(100));
                    q.lock().room.remove(key);
                    continue;
                }
                tally(&mut out, r);
                break;
            }
        }
        count.record(&out);
        Ok(Packed::from(out))
    }

    fn publish_dead_letter(&self, dl: DeadLetter) {
        let DeadLetter {
            content,
            reason,
            queue,
            exchange,
            routing_key,
        } = dl;
        let Ok(x) = self.exchange(&exchange) else {
            return; // RabbitMQ drops dead letters to a missing exchange.
        };
        let mut props = content.properties().clone();
        let original_expiration = props.expiration.take();
        let headers = props.headers.get_or_insert_with(FieldTable::new);
        // x-death's routing-keys: the publish key and the CC keys (BCC
        // stays secret); the dead letter is routed with the BCC keys too.
        let mut keys: Vec<String> = vec![content.routing_key().to_owned()];
        if let Some(AMQPValue::FieldArray(cc)) = headers.get("CC") {
            keys.extend(cc.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        }
        add_death(
            headers,
            &queue,
            reason.as_str(),
            content.exchange(),
            &keys,
            original_expiration,
        );
        if routing_key.is_some() {
            // RabbitMQ: a dead-letter routing key replaces every key, CC too.
            headers.remove("CC");
        }
        let route_keys: Vec<&str> = match &routing_key {
            Some(rk) => vec![rk.as_str()],
            None => keys
                .iter()
                .chain(content.bcc())
                .map(String::as_str)
                .collect(),
        };
        let mut queues = Vec::new();
        self.route(
            &x,
            &route_keys,
            props.headers.as_ref(),
            &mut queues,
            &mut Scratch::default(),
        );
        if reason.as_str() != "rejected" {
            let deaths = props
                .headers
                .as_ref()
                .and_then(|h| h.get("x-death"))
                .and_then(AMQPValue::as_array)
                .unwrap_or(&[]);
            queues.retain(|q| !is_cycle(&q.name, deaths));
        }
        let rk = routing_key.as_deref().unwrap_or(content.routing_key());
        let mut content = Some(Content::new(
            Names::new(&x.name, rk),
            &mut Message {
                properties: props,
                body: content.body.clone(),
            },
            // A later dead-lettering routes with the keys this one used
            // (RabbitMQ's routing_keys): BCC too, unless a dead-letter
            // routing key replaced them all.
            if routing_key.is_some() {
                Vec::new()
            } else {
                content.bcc().to_vec()
            },
        ));
        let mut out = Published::default();
        for (i, q) in queues.iter().enumerate() {
            let now = self.now();
            let mut after = AfterUnlock::default();
            let r = q.offer(
                &mut q.lock(),
                &mut content,
                i + 1 == queues.len(),
                q.deadline(now, None),
                now,
                true,
                &mut after,
            );
            self.finish(after);
            tally(&mut out, r);
        }
        CountOn::Exchange(&x).record(&out);
    }
}

fn tally(out: &mut Published, r: Offer) {
    match r {
        Offer::Accepted => out.routed += 1,
        Offer::Rejected => out.rejected += 1,
        Offer::Full | Offer::Gone => {}
    }
}

/// Where a publish is counted: on its exchange's shared counts, or on the
/// calling thread's own cell for a cached route.
#[derive(Clone, Copy)]
enum CountOn<'a> {
    Exchange(&'a Exchange),
    Cell(&'a PublishCounts),
}

impl CountOn<'_> {
    /// Counts one publish: routed or unroutable (`published` is their sum).
    fn record(self, out: &Published) {
        let routed = !out.is_unroutable();
        match self {
            CountOn::Exchange(x) => x.count(routed),
            CountOn::Cell(c) => c.add_own(routed),
        }
    }
}

/// Whether a message may take a cached route, and its TTL: a cached route
/// depends on nothing in a message but its CC/BCC keys (which change the
/// route), and an expiration that does not parse goes the general path,
/// which refuses it. `Some(ttl)` if it may.
pub(crate) fn fast_ttl(properties: &BasicProperties) -> Option<Option<u64>> {
    let cc = (properties.headers.as_ref())
        .is_some_and(|h| h.contains_key("CC") || h.contains_key("BCC"));
    if cc {
        return None;
    }
    match properties.expiration.as_deref() {
        None => Some(None),
        Some(e) => parse_expiration(e).ok().map(Some),
    }
}

/// RabbitMQ's `expiration`: a decimal integer of milliseconds, at least 0,
/// with RabbitMQ's error terms (`rabbit_basic:parse_expiration`): `no_integer`,
/// `{value_negative,N}`, `{leftover_string,"..."}`.
fn parse_expiration(s: &str) -> Result<u64> {
    let bad = |why: String| Error::PreconditionFailed(format!("invalid expiration '{s}': {why}"));
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad("no_integer".into()));
    }
    let (number, leftover) = rest.split_at(digits);
    if !leftover.is_empty() {
        return Err(bad(format!("{{leftover_string,\"{leftover}\"}}")));
    }
    if negative && number.bytes().any(|b| b != b'0') {
        return Err(bad(format!(
            "{{value_negative,-{}}}",
            number.trim_start_matches('0')
        )));
    }
    number
        .parse()
        .map_err(|_| bad(format!("{{value_too_large,{number}}}")))
}

/// Adds one death to `x-death` as RabbitMQ 3.10 does: an existing entry for the
/// same queue and reason gets its count raised and moves to the front; else a
/// new entry goes in front. `x-first-death-*` are set once.
fn add_death(
    h: &mut FieldTable,
    queue: &str,
    reason: &str,
    exchange: &str,
    keys: &[String],
    original_expiration: Option<String>,
) {
    let mut deaths: Vec<AMQPValue> = match h.remove("x-death") {
        Some(AMQPValue::FieldArray(a)) => a,
        _ => Vec::new(),
    };
    let same = |d: &AMQPValue| {
        d.as_table().is_some_and(|t| {
            t.get("queue").and_then(AMQPValue::as_str) == Some(queue)
                && t.get("reason").and_then(AMQPValue::as_str) == Some(reason)
        })
    };
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::new(),
            };
            let n = t.get("count").and_then(AMQPValue::as_i64).unwrap_or(0);
            t.insert("count", n + 1);
            t
        }
        None => {
            let mut t = FieldTable::new()
                .with("count", 1i64)
                .with("reason", reason)
                .with("queue", queue)
                .with("time", AMQPValue::Timestamp(unix_seconds()))
                .with("exchange", exchange)
                .with(
                    "routing-keys",
                    AMQPValue::FieldArray(
                        keys.iter().map(|k| AMQPValue::from(k.as_str())).collect(),
                    ),
                );
            if let Some(e) = original_expiration {
                t.insert("original-expiration", e);
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    h.insert("x-death", AMQPValue::FieldArray(deaths));
    if !h.contains_key("x-first-death-reason") {
        h.insert("x-first-death-exchange", exchange);
        h.insert("x-first-death-queue", queue);
        h.insert("x-first-death-reason", reason);
    }
}

/// RabbitMQ's cycle rule: dead-lettering into `queue` again is a cycle when
/// the deaths back to (and including) its last visit there show no rejection.
fn is_cycle(queue: &str, deaths: &[AMQPValue]) -> bool {
    let field = |d: &AMQPValue, k: &str| {
        d.as_table()
            .and_then(|t| t.get(k))
            .and_then(AMQPValue::as_str)
            .map(str::to_owned)
    };
    match deaths
        .iter()
        .position(|d| field(d, "queue").as_deref() == Some(queue))
    {
        None => false,
        Some(i) => deaths[..=i]
            .iter()
            .all(|d| d.as_table().is_some() && field(d, "reason").as_deref() != Some("rejected")),
    }
}

fn arg_int(name: &str, v: &AMQPValue, queue: &str, vhost: &str, min: i64) -> Result<u64> {
    let bad = |why: String| {
        Err(Error::PreconditionFailed(format!(
            "invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {why}"
        )))
    };
    match v.as_i64() {
        Some(n) if n >= min => Ok(n as u64),
        Some(n) if n == 0 => bad(format!("{{value_zero,{n}}}")),
        Some(n) => bad(format!("{{value_negative,{n}}}")),
        None => bad(format!("{{unacceptable_type,{}}}", type_name(v))),
    }
}

fn arg_str(name: &str, v: &AMQPValue, queue: &str, vhost: &str) -> Result<String> {
    v.as_str().map(str::to_owned).ok_or_else(|| {
        Error::PreconditionFailed(format!(
            "invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {{unacceptable_type,{}}}",
            type_name(v)
        ))
    })
}

fn parse_queue_config(name: &str, vhost: &str, o: &QueueDeclareOptions) -> Result<QueueConfig> {
    let mut c = QueueConfig {
        durable: o.durable,
        exclusive: o.exclusive.then_some(o.owner.unwrap_or(PROCESS_OWNER)),
        auto_delete: o.auto_delete,
        arguments: o.arguments.clone(),
        ..QueueConfig::default()
    };
    for (k, v) in o.arguments.iter() {
        match k {
            "x-max-length" => c.max_length = Some(arg_int(k, v, name, vhost, 0)?),
            "x-max-length-bytes" => c.max_length_bytes = Some(arg_int(k, v, name, vhost, 0)?),
            "x-message-ttl" => c.message_ttl = Some(arg_int(k, v, name, vhost, 0)?),
            "x-expires" => c.expires = Some(arg_int(k, v, name, vhost, 1)?),
            "x-overflow" => {
                let s = arg_str(k, v, name, vhost)?;
                c.overflow = Overflow::parse(&s).ok_or_else(|| {
                    Error::PreconditionFailed(format!(
                        "invalid arg '{k}' for queue '{name}' in vhost '{vhost}': {{unknown_overflow_type,<<\"{s}\">>}}"
                    ))
                })?;
            }
            "x-dead-letter-exchange" => c.dead_letter_exchange = Some(arg_str(k, v, name, vhost)?),
            "x-dead-letter-routing-key" => {
                c.dead_letter_routing_key = Some(arg_str(k, v, name, vhost)?)
            }
            _ => {}
        }
    }
    if c.dead_letter_routing_key.is_some() && c.dead_letter_exchange.is_none() {
        return Err(Error::PreconditionFailed(format!(
            "invalid arg 'x-dead-letter-routing-key' for queue '{name}' in vhost '{vhost}': routing_key_but_no_dlx_defined"
        )));
    }
    Ok(c)
}

/// Queue arguments RabbitMQ compares on redeclare (others are ignored).
const COMPARED_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-max-priority",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

fn queue_equivalent(q: &Queue, c: &QueueConfig, vhost: &str) -> Result<()> {
    let ineq = |arg: &str, got: bool, cur: bool| {
        Err(Error::PreconditionFailed(format!(
            "inequivalent arg '{arg}' for queue '{}' in vhost '{vhost}': received '{got}' but current is '{cur}'",
            q.name
        )))
    };
    if q.config.durable != c.durable {
        return ineq("durable", c.durable, q.config.durable);
    }
    if q.config.auto_delete != c.auto_delete {
        return ineq("auto_delete", c.auto_delete, q.config.auto_delete);
    }
    for k in COMPARED_ARGS {
        let got = c.arguments.get(k);
        let cur = q.config.arguments.get(k);
        let same = match (got, cur) {
            (None, None) => true,
            (Some(a), Some(b)) => match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) => x == y,
                _ => a.as_str().is_some() && a.as_str() == b.as_str() || a == b,
            },
            _ => false,
        };
        if !same {
            let show = |v: Option<&AMQPValue>| match v {
                None => "none".to_owned(),
                Some(v) => format!("the value '{}' of type '{}'", value_text(v), type_name(v)),
            };
            return Err(Error::PreconditionFailed(format!(
                "inequivalent arg '{k}' for queue '{}' in vhost '{vhost}': received {} but current is {}",
                q.name,
                show(got),
                show(cur)
            )));
        }
    }
    Ok(())
}

fn value_text(v: &AMQPValue) -> String {
    if let Some(n) = v.as_i64() {
        return n.to_string();
    }
    if let Some(s) = v.as_str() {
        return s.to_owned();
    }
    format!("{v:?}")
}

/// RabbitMQ's names for field types, as its error texts use them.
fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::Void => "void",
    }
}

/// The future of [`Broker::publish_async`].
#[must_use = "futures do nothing unless polled"]
pub struct PublishAsync {
    broker: Arc<BrokerInner>,
    state: std::result::Result<Prepared, Option<PublishError>>,
    queues: Vec<Arc<Queue>>,
    next: usize,
    outcome: Published,
    key: u64,
}

impl fmt::Debug for PublishAsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishAsync")
            .field("queues", &self.queues.len())
            .field("next", &self.next)
            .finish()
    }
}

impl Future for PublishAsync {
    type Output = Result<Published, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let p = match &mut this.state {
            Ok(p) => p,
            Err(e) => {
                return match e.take() {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(this.outcome)),
                }
            }
        };
        while let Some(q) = this.queues.get(this.next) {
            let now = q.now_if_timed(p.ttl);
            let mut after = AfterUnlock::default();
            let r = {
                let mut st = q.lock();
                let r = q.offer(
                    &mut st,
                    &mut p.content,
                    this.next + 1 == this.queues.len(),
                    q.deadline(now, p.ttl),
                    now,
                    false,
                    &mut after,
                );
                if r == Offer::Full {
                    this.key = st.room.register_waker(this.key, cx.waker());
                } else if this.key != 0 {
                    st.room.remove(this.key);
                    this.key = 0;
                }
                r
            };
            this.broker.finish(after);
            if r == Offer::Full {
                return Poll::Pending;
            }
            tally(&mut this.outcome, r);
            this.next += 1;
        }
        CountOn::Exchange(&p.exchange).record(&this.outcome);
        this.state = Err(None);
        Poll::Ready(Ok(this.outcome))
    }
}

impl Drop for PublishAsync {
    fn drop(&mut self) {
        if self.key != 0 {
            if let Some(q) = self.queues.get(self.next) {
                q.lock().room.remove(self.key);
            }
        }
    }
}

#[derive(Debug)]
struct TimerEntry {
    at: u64,
    name: Arc<str>,
    id: u64,
}
impl PartialEq for TimerEntry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.cmp(&o.at)
    }
}

#[derive(Debug, Default)]
struct TimerState {
    heap: BinaryHeap<Reverse<TimerEntry>>,
    started: bool,
    shutdown: bool,
}

#[derive(Debug, Default)]
struct Timer {
    state: Mutex<TimerState>,
    cv: Condvar,
}

/// The broker's one timer thread: sleeps until the earliest TTL or lease
/// deadline, then runs that queue's expiry. Exits when the broker is dropped.
fn timer_thread(timer: Arc<Timer>, broker: Weak<BrokerInner>, clock: Clock) {
    loop {
        let mut due = Vec::new();
        {
            let mut t = timer.state.lock();
            loop {
                if t.shutdown {
                    return;
                }
                let now = clock.now_ms();
                match t.heap.peek() {
                    Some(Reverse(e)) if e.at <= now => {
                        while t.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
                            if let Some(Reverse(e)) = t.heap.pop() {
                                due.push(e);
                            }
                        }
                        break;
                    }
                    Some(Reverse(e)) => {
                        let wait = Duration::from_millis(e.at - now);
                        timer.cv.wait_for(&mut t, wait);
                    }
                    None => timer.cv.wait(&mut t),
                }
            }
        }
        let Some(b) = broker.upgrade() else { return };
        for e in due {
            let q = b.queues.read().get(&e.name).cloned();
            if let Some(q) = q.filter(|q| q.id == e.id) {
                b.run_queue_timer(&q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_counts_stay_exact_across_threads_and_topology_changes() {
        let b = Broker::new();
        b.declare_queue("q", QueueDeclareOptions::default())
            .unwrap();
        b.bind_queue("q", "amq.direct", "k", &FieldTable::new())
            .unwrap();
        let publishers: Vec<_> = (0..4)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        assert_eq!(b.publish("amq.direct", "k", "m").unwrap().routed, 1);
                        assert!(b
                            .publish("amq.direct", "none", "m")
                            .unwrap()
                            .is_unroutable());
                        if i % 50 == 0 {
                            // Every cached route goes stale: new cells.
                            let name = format!("t{t}-{i}");
                            b.declare_queue(&name, QueueDeclareOptions::default())
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        // Through the general path too (a message with properties).
        let m = Message::new("m").with_properties(BasicProperties::default().with_priority(1));
        b.publish("amq.direct", "k", m).unwrap();
        let x = b.stats().exchanges;
        let x = x.iter().find(|x| x.name == "amq.direct").unwrap();
        assert_eq!((x.routed, x.unroutable, x.published), (2001, 2000, 4001));
        // The publishing threads are gone, and so are their cached routes:
        // their cells were folded into the exchange's own counts. The one
        // left is this thread's route, cached by the last publish.
        let direct = b.inner.exchange("amq.direct").unwrap();
        assert_eq!(direct.published(), (2001, 2000));
        assert_eq!(direct.cells.lock().len(), 1);
    }

    #[test]
    fn dropping_the_broker_frees_exchange_binding_cycles() {
        let b = Broker::new();
        for x in ["a", "b"] {
            b.declare_exchange(x, ExchangeKind::Topic, Default::default())
                .unwrap();
        }
        b.declare_queue("q", QueueDeclareOptions::default())
            .unwrap();
        let none = FieldTable::new();
        b.bind_exchange("a", "a", "#", &none).unwrap();
        b.bind_exchange("b", "a", "#", &none).unwrap();
        b.bind_exchange("a", "b", "#", &none).unwrap();
        b.bind_queue("q", "b", "#", &none).unwrap();
        let weak = |x: &str| Arc::downgrade(&b.inner.exchange(x).unwrap());
        let (a, x) = (weak("a"), weak("b"));
        let q = Arc::downgrade(&b.inner.queue("q").unwrap());
        drop(b);
        assert!(
            a.upgrade().is_none() && x.upgrade().is_none(),
            "exchanges leaked"
        );
        assert!(q.upgrade().is_none(), "queue leaked");
    }

    /// A broker with a queue `q`, and a weak handle on that queue.
    fn broker_with_q() -> (Broker, Weak<Queue>) {
        let b = Broker::new();
        b.declare_queue("q", QueueDeclareOptions::default())
            .unwrap();
        let q = Arc::downgrade(&b.inner.queue("q").unwrap());
        (b, q)
    }

    #[test]
    fn dropping_a_broker_frees_its_queues_from_this_threads_route_cache() {
        let (b, q) = broker_with_q();
        b.bind_queue("q", "amq.direct", "k", &FieldTable::new())
            .unwrap();
        // The second publish hits the route the first one cached.
        for _ in 0..2 {
            assert_eq!(b.publish("amq.direct", "k", "m").unwrap().routed, 1);
        }
        drop(b);
        assert!(
            q.upgrade().is_none(),
            "the dead broker's queue is still cached"
        );
    }

    #[test]
    fn a_dropped_brokers_queues_leave_other_threads_caches_at_their_next_publish() {
        let (b, q) = broker_with_q();
        let (to_publisher, publisher_rx) = std::sync::mpsc::channel::<Option<Broker>>();
        let (to_main, main_rx) = std::sync::mpsc::channel::<()>();
        let publisher = std::thread::spawn(move || {
            // Cache the route on this thread, then wait.
            let b = publisher_rx.recv().unwrap().unwrap();
            for _ in 0..2 {
                b.publish("", "q", "m").unwrap();
            }
            drop(b);
            to_main.send(()).unwrap();
            // Publish to another broker once the first is gone.
            assert!(publisher_rx.recv().unwrap().is_none());
            let other = Broker::new();
            other
                .declare_queue("r", QueueDeclareOptions::default())
                .unwrap();
            other.publish("", "r", "m").unwrap();
        });
        to_publisher.send(Some(b.clone())).unwrap();
        main_rx.recv().unwrap();
        drop(b); // the last handle, on this thread
        assert!(q.upgrade().is_some(), "held by the other thread's cache");
        to_publisher.send(None).unwrap();
        publisher.join().unwrap();
        assert!(
            q.upgrade().is_none(),
            "the dead broker's queue is still cached"
        );
    }

    #[test]
    fn a_deleted_queue_leaves_the_route_cache_at_the_next_miss() {
        let (b, q) = broker_with_q();
        b.publish("", "q", "m").unwrap();
        b.delete_queue("q", Default::default()).unwrap();
        // The broker keeps the dead queue for its totals while anything else
        // refers to it (see `Gone`); here that is the route cache.
        assert_eq!(q.strong_count(), 2);
        // The topology moved: this publish misses, routes nowhere, and drops
        // the stale entry.
        assert!(b.publish("", "q", "m").unwrap().is_unroutable());
        assert_eq!(q.strong_count(), 1, "the deleted queue is still cached");
        // Then the broker folds its counters in and lets it go.
        assert_eq!(b.totals().enqueued, 1);
        assert!(q.upgrade().is_none());
    }
}
