//! Consumers and deliveries.
//!
//! # Semantics
//!
//! A [`Consumer`] receives the messages its queue dispatches to it, in turn
//! with the queue's other consumers (round-robin), at most `prefetch` of them
//! unanswered at a time. Each arrives as a [`Delivery`] that must be answered:
//! [`ack`](Delivery::ack), [`nack`](Delivery::nack) or
//! [`reject`](Delivery::reject), with or without requeue. A delivery dropped
//! without an answer goes back to its queue, marked `redelivered`: nothing is
//! lost because a handler returned early or panicked.
//!
//! [`Consumer::cancel`] stops new dispatches (what AMQP's `basic.cancel`
//! does); messages already dispatched can still be received and answered.
//! Dropping the `Consumer` cancels it and puts every message it had been
//! handed but not yet shown to the application back in the queue, in its
//! original order.
//!
//! The same object serves sync and async callers: [`Consumer::recv`] parks the
//! thread, [`Consumer::recv_async`] is a future for any executor, and with the
//! `stream` feature a `Consumer` is a `futures_core::Stream`.

use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::{BasicProperties, Content, Message};
use crate::queue::{AfterUnlock, Entry, Queue};
use crate::ring::Ring;
use crate::sync::{
    fence, seqcst_handover, spin_loop, thread, AtomicBool, AtomicU32, AtomicU64, AtomicUsize,
    ConsumerArc, Mutex,
};
use crate::wait::WaitList;

/// The part of a consumer the queue holds.
///
/// Laid out for two threads: the fields at the top and `returns` are the
/// consumer side's; the publisher side touches `credit`, the ring's slots
/// and, only when someone waits, `wake`, each on its own cache line, so the
/// two cores do not steal lines from each other per message.
#[derive(Debug)]
pub(crate) struct ConsumerShared {
    pub(crate) id: u64,
    pub(crate) tag: Arc<str>,
    pub(crate) exclusive: bool,
    no_ack: bool,
    queue: Arc<Queue>,
    /// A dispatch this consumer may be owed: credit came back while it was
    /// at its prefetch limit, or its ring was full, and the dispatch was
    /// left for later: to the queue's next operation (a publish dispatches
    /// anyway) or to this consumer's receiver when it runs dry. Written by
    /// answering and dispatching threads, read by the receiver.
    owed: AtomicBool,
    /// Deliveries dropped, and [`CLOSED`] once the `Consumer` is (see
    /// [`Held`]).
    finished: AtomicU64,
    /// Serialises receivers (the ring has one consumer at a time) and
    /// numbers deliveries.
    recv: Receiving,
    credit: Credit,
    returns: Returns,
    starved: Starved,
    /// Dispatched copies on their way to the receiver.
    ring: Ring,
    wake: Wake,
}

/// Prefetch credit, the dispatcher's half. Copies in flight (dispatched and
/// not yet answered; for no-ack consumers, not yet received) are
/// `dispatched` minus the answers ([`Returns::answered`]), wrapping: counts
/// on two cache lines, each written by one side. The dispatcher reads the
/// answers' count only when the last value it read leaves no credit, so with
/// a window to spare neither side touches the other's line per message. (One
/// shared in-flight count, added to by one core and taken from by the other,
/// moved its line between them twice a message: a quarter of the two-thread
/// hop's time in a profile.)
#[derive(Debug)]
#[repr(align(128))]
struct Credit {
    prefetch: u32,
    /// Copies dispatched; written by the dispatcher alone, under the queue
    /// lock. Not counted without a window (`prefetch` 0).
    dispatched: AtomicU32,
    /// The last count of answers the dispatcher read.
    answered_seen: AtomicU32,
}

/// The answering side's counts: prefetch credit given back, and the acks
/// the queue's stats count.
///
/// An ack adds to `acked` alone: one locked instruction gives the credit
/// back and counts the ack for the stats. (The queue counted acks on a
/// counter of its own as well, one more locked instruction per message on
/// the receiving side of a two-thread hop.) The queue sums the `acked` of
/// its consumers, including those that went but whose deliveries may still
/// be answered (`QueueState::departed`).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Returns {
    /// `Credit::prefetch` again, so that an answer reads nothing on the
    /// dispatcher's line.
    prefetch: u32,
    /// How many answers a starved consumer collects before it calls the
    /// dispatcher back, unless it runs dry first (see [`Starved`]).
    batch: u32,
    /// Copies acknowledged (for no-ack consumers: received).
    acked: AtomicU64,
    /// Copies answered otherwise (requeued, discarded; the queue counts
    /// those in its stats itself).
    released: AtomicU64,
}

impl Returns {
    /// Copies answered, either way (wrapping, as credit counts).
    fn answered(&self) -> u32 {
        let acked = self.acked.load(Ordering::SeqCst);
        acked.wrapping_add(self.released.load(Ordering::SeqCst)) as u32
    }
}

/// The dispatcher found the consumer at its limit, and stops looking at its
/// answers until the answering side calls it back: [`STARVED`] with the
/// count of answers the dispatcher last read, or 0.
///
/// A consumer that works through a backlog at its prefetch limit answers
/// as fast as it can while the publisher, faster, finds no credit on every
/// publish. If the dispatcher reread the answers each time, the answers'
/// line would cross between the two cores twice a message. Instead the
/// answering side calls back once it has answered a quarter of its window
/// (`Returns::batch`), or as soon as its receiver has nothing left to
/// receive: the dispatcher then finds credit for a batch at once, and a
/// receiver never waits for credit it has. (RabbitMQ refills a window one
/// ack at a time; the difference shows only as copies counted ready a
/// little longer while the consumer still has deliveries to work through.)
///
/// On its own cache line: the answering side reads it on every answer, and
/// the dispatcher writes it once per batch.
#[derive(Debug)]
#[repr(align(128))]
struct Starved {
    at: AtomicU64,
}

/// The flag in `Starved::at`.
const STARVED: u64 = 1 << 32;

/// The divisor of the window that gives `Returns::batch`. Under the model
/// checker a whole window, so that the small windows the models can afford
/// exercise the wait for a batch.
const BATCH_OF_WINDOW: u32 = if cfg!(loom) { 1 } else { 4 };

/// The receivers' lock: one receiver at a time takes from the ring, and
/// numbers what it takes.
///
/// A spin lock whose release is a plain store, not `parking_lot`'s mutex,
/// whose release is a locked instruction (it must look for parked
/// waiters): a receive holds it for one `pop`, and only receivers of the
/// same consumer racing each other ever wait for it, so none ever needs to
/// sleep on it. Every delivery took it and let it go, and the release's
/// locked instruction was one of the seven a two-thread hop's receiving
/// side spent per message.
#[derive(Debug, Default)]
struct Receiving {
    held: AtomicBool,
    /// Deliveries numbered so far; read and written only under the lock.
    tags: AtomicU64,
    /// Whether the last receive found its copy waiting, without waiting: a
    /// hint for how soon a receiver that finds the ring empty looks again
    /// (see `Consumer::recv_deadline`). Nothing else depends on it.
    streaming: AtomicBool,
}

impl Receiving {
    fn lock(&self) -> ReceiveGuard<'_> {
        let mut step = 0;
        while self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // The holder is a receiver of this consumer, one `pop` from
            // letting go, unless it was preempted: then yield to it.
            back_off(step);
            step = step.saturating_add(1);
        }
        ReceiveGuard { lock: self }
    }

    /// Notes that a receive found its copy waiting (see `streaming`); a
    /// store only when that changes.
    fn found_waiting(&self) {
        if !self.streaming.load(Ordering::Relaxed) {
            self.streaming.store(true, Ordering::Relaxed);
        }
    }

    /// Deliveries numbered so far. Exact once no receiver can run (the
    /// `Consumer` is being dropped).
    fn numbered(&self) -> u64 {
        self.tags.load(Ordering::Relaxed)
    }
}

/// A held [`Receiving`] lock.
struct ReceiveGuard<'a> {
    lock: &'a Receiving,
}

impl ReceiveGuard<'_> {
    /// The tag of the next delivery (tags count from 1).
    fn next_tag(&self) -> u64 {
        let tags = &self.lock.tags;
        let tag = tags.load(Ordering::Relaxed) + 1;
        tags.store(tag, Ordering::Relaxed);
        tag
    }
}

impl Drop for ReceiveGuard<'_> {
    fn drop(&mut self) {
        self.lock.held.store(false, Ordering::Release);
    }
}

/// Receivers waiting for the ring to fill or the consumer to be cancelled.
#[derive(Debug)]
#[repr(align(128))]
struct Wake {
    waiters: Mutex<WaitList>,
    /// How many are registered in `waiters`: a dispatcher reads it, under
    /// the queue lock, and takes the waiters' lock only when someone waits.
    /// Always written under the waiters' lock; a registration writes it
    /// under the queue lock too (see `ConsumerShared::register`).
    sleepers: AtomicUsize,
    cancelled: AtomicBool,
}

impl ConsumerShared {
    pub(crate) fn new(
        id: u64,
        tag: Arc<str>,
        queue: Arc<Queue>,
        prefetch: u32,
        no_ack: bool,
        exclusive: bool,
    ) -> Self {
        ConsumerShared {
            id,
            tag,
            exclusive,
            no_ack,
            queue,
            owed: AtomicBool::new(false),
            finished: AtomicU64::new(0),
            recv: Receiving::default(),
            credit: Credit {
                prefetch,
                dispatched: AtomicU32::new(0),
                answered_seen: AtomicU32::new(0),
            },
            returns: Returns {
                prefetch,
                batch: (prefetch / BATCH_OF_WINDOW).max(1),
                acked: AtomicU64::new(0),
                released: AtomicU64::new(0),
            },
            starved: Starved {
                at: AtomicU64::new(0),
            },
            ring: Ring::for_prefetch(prefetch),
            wake: Wake {
                waiters: Mutex::new(WaitList::default()),
                sleepers: AtomicUsize::new(0),
                cancelled: AtomicBool::new(false),
            },
        }
    }

    /// Takes one unit of prefetch credit, if the ring has room for the copy
    /// it pays for. Only the dispatcher (under the queue lock) takes credit;
    /// answers give it back concurrently (see [`Credit`]).
    pub(crate) fn try_take_credit(&self) -> bool {
        if !self.ring.has_room() {
            // The receiver is a ring behind (only possible with a prefetch
            // window larger than the ring, or none): the rest of its window
            // waits in the queue, and it is owed a dispatch when it runs dry.
            // Same hand-over as `owe_dispatch`: write the debt, fence, look
            // again; the receiver empties the ring, fences, reads the debt.
            if !self.owed.load(Ordering::Relaxed) {
                self.owed.store(true, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            if !self.ring.has_room() {
                return false;
            }
        }
        let c = &self.credit;
        if c.prefetch == 0 {
            return true;
        }
        let dispatched = c.dispatched.load(Ordering::Relaxed);
        if dispatched.wrapping_sub(c.answered_seen.load(Ordering::Relaxed)) >= c.prefetch
            && !self.refresh_credit(dispatched)
        {
            return false;
        }
        c.dispatched
            .store(dispatched.wrapping_add(1), Ordering::Relaxed);
        true
    }

    /// The last count of answers read leaves no credit: unless the consumer
    /// is marked starved and has not called back yet (see [`Starved`]),
    /// reads it again, and if there is still none, marks the consumer
    /// starved.
    ///
    /// No dispatch is lost: this writes `starved` and then reads `answered`;
    /// an answer adds to `answered` and then reads `starved`; all four are
    /// `SeqCst` accesses (with a fence as well here, on this rare path), so at
    /// least one side sees the other's write (`tests/loom.rs` checks it). A
    /// stale first reading is harmless: it only brings the second.
    #[cold]
    fn refresh_credit(&self, dispatched: u32) -> bool {
        let (c, r) = (&self.credit, &self.returns);
        if self.starved.at.load(Ordering::Acquire) != 0 {
            return false;
        }
        let has_credit = || {
            let answered = r.answered();
            c.answered_seen.store(answered, Ordering::Relaxed);
            dispatched.wrapping_sub(answered) < c.prefetch
        };
        if has_credit() {
            return true;
        }
        let seen = c.answered_seen.load(Ordering::Relaxed);
        self.starved
            .at
            .store(STARVED | u64::from(seen), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let found = has_credit();
        if found {
            // An answer came in between: nothing is owed for it. (Should
            // the answering side have called back meanwhile, this writes
            // the 0 it wrote.)
            self.starved.at.store(0, Ordering::Relaxed);
        }
        found
    }

    pub(crate) fn return_credit_no_dispatch(&self) {
        let c = &self.credit;
        if c.prefetch != 0 {
            let d = c.dispatched.load(Ordering::Relaxed);
            c.dispatched.store(d.wrapping_sub(1), Ordering::Relaxed);
        }
    }

    /// The acks this consumer counted (see [`Returns`]).
    pub(crate) fn acked(&self) -> u64 {
        self.returns.acked.load(Ordering::Acquire)
    }

    /// Counts a no-ack receipt as an ack, gives its unit of credit back,
    /// and sees to the dispatch that may make possible (see
    /// [`owe_dispatch`](Self::owe_dispatch)).
    fn received_no_ack(&self) {
        if self.answered(true, false) {
            self.owe_dispatch();
        }
    }

    /// Counts an answer, an ack or not (see [`Returns`]), which gives one
    /// unit of credit back; true if this answer calls the dispatcher back
    /// to a starved consumer (see [`Starved`]), so the queue may hold
    /// messages for it. `now`: call back whatever the count (the caller
    /// dispatches anyway).
    fn answered(&self, ack: bool, now: bool) -> bool {
        let r = &self.returns;
        let (count, other) = if ack {
            (&r.acked, &r.released)
        } else {
            (&r.released, &r.acked)
        };
        let counted = count.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        if r.prefetch == 0 {
            return false;
        }
        // The other count only paces the call back (an answer reads its
        // own add; a stale other count calls back a little later, and a
        // receiver running dry calls back anyway).
        let answered = counted.wrapping_add(other.load(Ordering::Relaxed)) as u32;
        // No fence instruction here, on every answer: the `SeqCst` add and
        // load are ordered as the hand-over needs (see `seqcst_handover`).
        seqcst_handover();
        let at = self.starved.at.load(Ordering::SeqCst);
        if at == 0 {
            return false;
        }
        // Starved: call back after a batch of answers, or at once if the
        // receiver has nothing left to work through. The receiver empties
        // the ring, fences and reads `answered` (in `ran_dry`); this added
        // to `answered` and reads the ring's head, both `SeqCst`: one of the
        // two sees the other, and calls back. (With a fence on one side,
        // `SeqCst` accesses on the other suffice: C++20's rules for fences,
        // [atomics.order] 4.2 and 4.3. A fence here was a locked
        // instruction on every answer of a consumer working through a
        // backlog.)
        if !now && answered.wrapping_sub(at as u32) < r.batch {
            seqcst_handover();
            if !self.ring.is_empty_seqcst() {
                return false;
            }
        }
        self.call_back(at)
    }

    /// Ends the starved state `at`, if still current: true for the one
    /// caller that ends it.
    fn call_back(&self, at: u64) -> bool {
        self.starved
            .at
            .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Credit came back to a consumer that was at its limit, so the queue may
    /// hold messages for it: they are dispatched now only if the consumer has
    /// nothing left to receive. Otherwise the dispatch is owed, and paid by
    /// whichever comes first: the queue's next publish (which dispatches
    /// anyway), or this consumer's receiver finding its ring empty (see
    /// [`ran_dry`](Self::ran_dry)). So a consumer working through a backlog
    /// at its limit does not take the queue lock on every answer, and a
    /// publisher keeps the dispatching in one place.
    ///
    /// No dispatch is lost: this writes `owed` and then reads whether the
    /// ring is empty; the receiver empties the ring and then reads `owed`; a
    /// `SeqCst` fence between the write and the read on both sides means at
    /// least one of them sees the other's write (`tests/loom.rs` checks it).
    fn owe_dispatch(&self) {
        // Release: whoever takes the debt (`swap` below) also sees the credit
        // returned before it, so its dispatch finds that credit.
        self.owed.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.ring.is_empty() {
            self.pay_owed();
        }
    }

    /// Runs the dispatch owed to this consumer, if any.
    fn pay_owed(&self) {
        if self.owed.load(Ordering::Relaxed) && self.owed.swap(false, Ordering::AcqRel) {
            self.queue.redispatch();
        }
    }

    /// Called by a receiver that found the ring empty, before it waits:
    /// calls the dispatcher back if the consumer is starved and answered
    /// something since (see [`return_credit`](Self::return_credit)), and
    /// pays what is owed.
    fn ran_dry(&self) {
        fence(Ordering::SeqCst);
        let at = self.starved.at.load(Ordering::SeqCst);
        if at != 0 && self.returns.answered() != at as u32 && self.call_back(at) {
            self.queue.redispatch();
        }
        self.pay_owed();
    }

    /// Hands a copy to the receiver, built in the ring (see `Ring::push`).
    /// Call under the queue lock, after
    /// [`try_take_credit`](Self::try_take_credit) said yes; then call
    /// [`wake_sleeper`](Self::wake_sleeper).
    #[inline]
    pub(crate) fn push(&self, e: impl FnOnce() -> Entry) {
        self.ring.push(e);
    }

    /// Wakes a sleeping receiver, if any. Call under the queue lock, after
    /// a push. A receiver registers to sleep under that lock too, and looks
    /// at the ring again once registered (see [`register`](Self::register)):
    /// so either this push came first and the receiver sees it on its second
    /// look, or the registration came first and this sees it. No fence is
    /// needed for that, on the path every message takes: the lock orders
    /// the two.
    pub(crate) fn wake_sleeper(&self) {
        if self.wake.sleepers.load(Ordering::Relaxed) != 0 {
            let woken = {
                let mut w = self.wake.waiters.lock();
                let woken = w.take_one();
                self.wake.sleepers.store(w.len(), Ordering::Relaxed);
                woken
            };
            if let Some(w) = woken {
                w.wake();
            }
        }
    }

    /// Takes everything from the ring (receivers are serialised by `recv`).
    fn drain(&self) -> Vec<Entry> {
        let _recv = self.recv.lock();
        let mut left = Vec::with_capacity(self.ring.len());
        while let Some(e) = self.ring.pop() {
            left.push(e);
        }
        left
    }

    /// The queue went away: drop what was waiting, wake receivers. Returns how
    /// many copies were dropped. Called under the queue lock.
    pub(crate) fn cancel_by_server(&self) -> u64 {
        self.wake.cancelled.store(true, Ordering::Release);
        let n = self.drain().len() as u64;
        self.wake_all();
        n
    }

    fn mark_cancelled(&self) {
        self.wake.cancelled.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        let woken = {
            let mut w = self.wake.waiters.lock();
            self.wake.sleepers.store(0, Ordering::Relaxed);
            w.take_all()
        };
        for w in woken {
            w.wake();
        }
    }

    /// Registers a waiter (`register` runs under the waiters' lock), then
    /// looks again: true if the wait is still needed. The caller must
    /// `forget_waiter(key)` when it stops waiting.
    ///
    /// The registration (and the count of sleepers a dispatcher reads) is
    /// written under the queue's lock as well, the lock every push into the
    /// ring is made under: a push made before it is seen by the second
    /// look, and a push made after it sees the sleeper (see
    /// [`wake_sleeper`](Self::wake_sleeper)). Only a receiver about to
    /// sleep takes the queue lock for this; a dispatcher pays no fence.
    fn register(&self, register: impl FnOnce(&mut WaitList) -> u64) -> (u64, bool) {
        let key = {
            let _queue = self.queue.lock();
            let mut w = self.wake.waiters.lock();
            let key = register(&mut w);
            self.wake.sleepers.store(w.len(), Ordering::Relaxed);
            key
        };
        let wait = self.ring.is_empty() && !self.wake.cancelled.load(Ordering::Acquire);
        (key, wait)
    }

    /// Forgets a waiter; if it had been woken but leaves without taking
    /// anything, the wake-up goes on to another waiter.
    fn forget_waiter(&self, key: u64) {
        if key == 0 {
            return;
        }
        let woken = {
            let mut w = self.wake.waiters.lock();
            let woken = if !w.remove(key) && !self.ring.is_empty() {
                w.take_one()
            } else {
                None
            };
            self.wake.sleepers.store(w.len(), Ordering::Relaxed);
            woken
        };
        if let Some(w) = woken {
            w.wake();
        }
    }
}

/// The consumer was cancelled (by [`Consumer::cancel`], or because its queue
/// was deleted) and has nothing left to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("consumer cancelled")]
pub struct RecvError;

/// Why [`Consumer::try_recv`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    /// Nothing is waiting right now.
    #[error("no delivery waiting")]
    Empty,
    /// The consumer was cancelled and has nothing left.
    #[error("consumer cancelled")]
    Cancelled,
}

/// Why [`Consumer::recv_timeout`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvTimeoutError {
    /// The time ran out.
    #[error("timed out waiting for a delivery")]
    Timeout,
    /// The consumer was cancelled and has nothing left.
    #[error("consumer cancelled")]
    Cancelled,
}

/// A subscription to a queue.
///
/// It receives the messages its queue dispatches to it, in turn with the
/// queue's other consumers (round-robin), at most `prefetch` of them
/// unanswered at a time. Each arrives as a [`Delivery`] that must be
/// answered; one dropped unanswered goes back to the queue, marked
/// `redelivered`. [`cancel`](Self::cancel) stops new dispatches; dropping the
/// `Consumer` cancels it and puts what it had been handed but had not yet
/// shown to the application back in the queue, in its original order. The
/// same object serves sync ([`recv`](Self::recv)) and async
/// ([`recv_async`](Self::recv_async), `Stream` with the `stream` feature)
/// callers.
///
/// Created by [`Broker::consume`](crate::Broker::consume).
pub struct Consumer {
    /// Dropped with the `Consumer`, or handed over to its deliveries (see
    /// [`Held`]).
    shared: ManuallyDrop<ConsumerArc<ConsumerShared>>,
    queue: Arc<Queue>,
    #[cfg_attr(not(feature = "stream"), allow(dead_code))]
    stream_key: u64,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue.name)
            .field("tag", &self.shared.tag)
            .finish()
    }
}

/// Backoff steps before a receiver parks: spins of 1, 2, 4 … 64 iterations,
/// then yields. (None under the model checker: the spin only polls early,
/// and the parking protocol is what the models check.)
const SPIN_LIMIT: u32 = 7;
const SPIN_STEPS: u32 = if cfg!(loom) { 0 } else { 12 };

/// Where that backoff starts for a receiver that has just caught up with a
/// stream: after its first look, it waits 32 spins (about 0.4 µs on the
/// machines warren is measured on), then 64, rather than 1, 2, 4 …
///
/// Why: a receiver faster than its publisher catches up with it on every
/// message, and each look at the empty ring reads the slot the publisher is
/// about to write, taking the slot's line away from the publisher's core;
/// the publisher's next locked instruction then waits for the line to come
/// back. Looking less often lets a few copies gather, taken one after
/// another with no line pulled mid-write. In the two-thread queue hop
/// through `Broker::publish` (alternated in one process), once the receive
/// fast path had made the receiving side faster: 7.9-8.1 M msg/s looking
/// as often as before, 12.7-12.8 with this. A receiver that waits for one
/// reply at a time is not streaming, and still looks again at once.
const CAUGHT_UP_FIRST_STEP: u32 = if cfg!(loom) { 0 } else { 5 };

/// One step of that backoff: `2^step` spins, or past [`SPIN_LIMIT`] a yield.
fn back_off(step: u32) {
    if step < SPIN_LIMIT {
        for _ in 0..(1u32 << step) {
            spin_loop();
        }
    } else {
        thread::yield_now();
    }
}

enum Poll1 {
    Ready(Delivery),
    Cancelled,
    Empty,
}

impl Consumer {
    pub(crate) fn new(shared: ConsumerArc<ConsumerShared>, queue: Arc<Queue>) -> Self {
        Consumer {
            shared: ManuallyDrop::new(shared),
            queue,
            stream_key: 0,
        }
    }

    /// The consumer tag.
    pub fn consumer_tag(&self) -> &str {
        &self.shared.tag
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue.name
    }

    /// Takes the next waiting delivery without blocking.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] if nothing is waiting,
    /// [`TryRecvError::Cancelled`] if the consumer is cancelled and drained.
    pub fn try_recv(&self) -> Result<Delivery, TryRecvError> {
        if let Some(d) = self.take_waiting() {
            return Ok(d);
        }
        self.try_recv_slow()
    }

    #[inline(never)]
    fn try_recv_slow(&self) -> Result<Delivery, TryRecvError> {
        match self.poll_once() {
            Poll1::Ready(d) => Ok(d),
            Poll1::Cancelled => Err(TryRecvError::Cancelled),
            Poll1::Empty => Err(TryRecvError::Empty),
        }
    }

    /// Blocks the thread until a delivery arrives.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once the consumer is cancelled and drained.
    pub fn recv(&self) -> Result<Delivery, RecvError> {
        if let Some(d) = self.take_waiting() {
            return Ok(d);
        }
        self.recv_deadline(None).map_err(|_| RecvError)
    }

    /// Blocks the thread until a delivery arrives or `timeout` passes.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when the time runs out,
    /// [`RecvTimeoutError::Cancelled`] once the consumer is cancelled and drained.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Delivery, RecvTimeoutError> {
        if let Some(d) = self.take_waiting() {
            return Ok(d);
        }
        self.recv_deadline(Some(Instant::now() + timeout))
    }

    #[cfg_attr(loom, allow(clippy::reversed_empty_ranges))] // no spinning under loom
    fn recv_deadline(&self, deadline: Option<Instant>) -> Result<Delivery, RecvTimeoutError> {
        // Spin, then yield, before parking (as crossbeam's `Backoff` does): a
        // publisher on another core usually delivers within a few hundred
        // nanoseconds, far less than a park/unpark round trip costs.
        // A receiver whose last copy was waiting for it is keeping up with
        // a stream, and has just caught up: it looks less often (see
        // `CAUGHT_UP_FIRST_STEP`). One whose last receive waited too (a
        // request and its reply, one at a time) looks again at once.
        let streaming = &self.shared.recv.streaming;
        let first = if streaming.load(Ordering::Relaxed) {
            streaming.store(false, Ordering::Relaxed);
            CAUGHT_UP_FIRST_STEP
        } else {
            0
        };
        for step in first..SPIN_STEPS {
            if !self.shared.ring.is_empty() {
                match self.poll_once() {
                    Poll1::Ready(d) => return Ok(d),
                    Poll1::Cancelled => return Err(RecvTimeoutError::Cancelled),
                    Poll1::Empty => {}
                }
            }
            back_off(step);
        }
        loop {
            match self.poll_once() {
                Poll1::Ready(d) => return Ok(d),
                Poll1::Cancelled => return Err(RecvTimeoutError::Cancelled),
                Poll1::Empty => {}
            }
            let (key, wait) = self.shared.register(WaitList::park_current);
            if wait {
                match deadline {
                    None => thread::park(),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            self.shared.forget_waiter(key);
                            return Err(RecvTimeoutError::Timeout);
                        }
                        thread::park_timeout(d - now);
                    }
                }
            }
            self.shared.forget_waiter(key);
        }
    }

    /// Waits for the next delivery asynchronously, on any executor.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it completes loses no delivery
    /// (nothing is taken from the ring until the future returns it), and a
    /// wake-up it had received is passed on to another waiting receiver.
    ///
    /// # Errors
    ///
    /// [`RecvError`] once the consumer is cancelled and drained.
    pub fn recv_async(&self) -> Recv<'_> {
        Recv {
            consumer: self,
            key: 0,
        }
    }

    /// Stops new deliveries (AMQP's `basic.cancel`). Deliveries already
    /// dispatched can still be received and answered; after them, the receive
    /// methods report cancellation. An `auto_delete` queue whose last consumer
    /// this was is deleted.
    pub fn cancel(&self) {
        let queue = &self.queue;
        let mut after = AfterUnlock::default();
        let auto_delete = {
            let mut st = queue.lock();
            let at = st.consumers.iter().position(|c| c.id == self.shared.id);
            // Its acks still count in the queue's stats (see `Returns`).
            let removed = at.is_some();
            if let Some(i) = at {
                let gone = st.consumers.remove(i);
                st.departed.push(gone);
            }
            if removed && self.shared.exclusive {
                st.has_exclusive_consumer = false;
            }
            if removed && st.consumers.is_empty() {
                st.last_used = queue.now();
                queue.plan_timer(&mut st, &mut after);
            }
            removed && queue.config.auto_delete && st.consumers.is_empty() && !st.deleted
        };
        self.shared.mark_cancelled();
        if let Some(broker) = queue.broker.upgrade() {
            broker.finish(after);
            if auto_delete {
                broker.remove_queue(queue);
            }
        }
    }

    /// Takes the next copy from the ring, numbered. An empty ring first
    /// pays any dispatch owed to this consumer (see
    /// `ConsumerShared::owe_dispatch`), which may fill it.
    fn take(&self) -> Option<(Entry, u64)> {
        if self.shared.ring.is_empty() {
            self.shared.ran_dry();
        }
        self.pop_numbered()
    }

    /// The copy at the head of the ring, if any, and its tag.
    #[inline(always)]
    fn pop_numbered(&self) -> Option<(Entry, u64)> {
        let recv = self.shared.recv.lock();
        let e = self.shared.ring.pop()?;
        Some((e, recv.next_tag()))
    }

    /// The receive methods' fast path: the copy at the head of the ring, if
    /// there is one, delivered straight into the caller's `Result`. Anything
    /// else (an empty ring, a dispatch owed, a cancellation, another
    /// receiver taking the copy first) is left to the general path.
    ///
    /// Inlined, so that the delivery is built where the caller returns it:
    /// through `poll_once`'s enum and a second `Result` it was copied twice
    /// more. A receive and ack took about 360 instructions, and takes 293
    /// with this (callgrind, one thread).
    #[inline(always)]
    fn take_waiting(&self) -> Option<Delivery> {
        if self.shared.ring.is_empty() {
            return None;
        }
        let (e, tag) = self.pop_numbered()?;
        self.shared.recv.found_waiting();
        Some(self.deliver(e, tag))
    }

    /// One look at the ring.
    fn poll_once(&self) -> Poll1 {
        if let Some((e, tag)) = self.take() {
            return Poll1::Ready(self.deliver(e, tag));
        }
        if self.shared.wake.cancelled.load(Ordering::Acquire) {
            // Nothing is pushed after the cancellation; what was pushed
            // before it is still received first.
            return match self.take() {
                Some((e, tag)) => Poll1::Ready(self.deliver(e, tag)),
                None => Poll1::Cancelled,
            };
        }
        Poll1::Empty
    }

    fn poll_recv(&self, key: &mut u64, cx: &mut Context<'_>) -> Poll<Result<Delivery, RecvError>> {
        loop {
            let r = match self.poll_once() {
                Poll1::Ready(d) => Ok(d),
                Poll1::Cancelled => Err(RecvError),
                Poll1::Empty => {
                    let (k, wait) = self.shared.register(|w| w.register_waker(*key, cx.waker()));
                    *key = k;
                    if wait {
                        return Poll::Pending;
                    }
                    continue;
                }
            };
            self.shared.forget_waiter(std::mem::take(key));
            return Poll::Ready(r);
        }
    }

    #[inline(always)]
    fn deliver(&self, entry: Entry, tag: u64) -> Delivery {
        let pending = if self.shared.no_ack { 0 } else { PENDING };
        if self.shared.no_ack {
            self.shared.received_no_ack();
        }
        Delivery {
            entry,
            tag_flags: tag | pending,
            origin: Origin::Consumer(Held::new(&self.shared)),
            message_count: NO_COUNT,
        }
    }
}

#[allow(unsafe_code)] // see `Held`
impl Drop for Consumer {
    fn drop(&mut self) {
        self.cancel();
        let left = self.shared.drain();
        if !left.is_empty() {
            let n = left.len() as u64;
            let q = &self.queue;
            let now = q.now();
            let mut after = AfterUnlock::default();
            {
                let mut st = q.lock();
                q.answers.release(n);
                q.restore(&mut st, left, now, &mut after);
            }
            q.finish(after);
        }
        // No receiver runs any more: every delivery there will be is
        // numbered. Close the count (see `Held`); if some are still out,
        // the last of them to go drops this reference.
        let made = self.shared.recv.numbered();
        let before = self
            .shared
            .finished
            .fetch_add(CLOSED.wrapping_sub(made), Ordering::AcqRel);
        // SAFETY: `shared` is not used after this.
        let shared = unsafe { ManuallyDrop::take(&mut self.shared) };
        if before == made {
            self.queue.forget_departed(&shared);
        } else {
            let _ = ConsumerArc::into_raw(shared);
        }
    }
}

/// The future of [`Consumer::recv_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a> {
    consumer: &'a Consumer,
    key: u64,
}

impl fmt::Debug for Recv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recv")
            .field("consumer", self.consumer)
            .finish()
    }
}

impl Future for Recv<'_> {
    type Output = Result<Delivery, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.consumer.poll_recv(&mut this.key, cx)
    }
}

impl Drop for Recv<'_> {
    fn drop(&mut self) {
        self.consumer.shared.forget_waiter(self.key);
    }
}

#[cfg(feature = "stream")]
impl futures_core::Stream for Consumer {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = self.get_mut();
        let mut key = this.stream_key;
        let r = this.poll_recv(&mut key, cx);
        this.stream_key = key;
        r.map(Result::ok)
    }
}

/// One message handed to a consumer or returned by `get`, with the duty to
/// answer it.
///
/// Answer with [`ack`](Self::ack), [`nack`](Self::nack) or
/// [`reject`](Self::reject). Dropping it unanswered requeues the message
/// (marked redelivered). Deliveries of no-ack consumers and no-ack `get`s need
/// no answer; answering them does nothing.
pub struct Delivery {
    entry: Entry,
    /// The delivery tag, and [`PENDING`] while an answer is owed.
    tag_flags: u64,
    origin: Origin,
    /// For `get`: how many stayed ready; [`NO_COUNT`] for consumers.
    message_count: u64,
}

// A `Delivery` is moved on every receive (out of the ring, through `Result`s,
// into the caller's hands): at 128 bytes or less a move is a few vector
// moves rather than a call to `memcpy`, which was 9 % of a two-thread hop.
const _: () = assert!(std::mem::size_of::<Delivery>() <= 128);
const _: () = assert!(std::mem::size_of::<Result<Delivery, RecvTimeoutError>>() <= 128);

/// The flag in `Delivery::tag_flags` saying an answer is owed (tags count
/// from 1 and never reach it).
const PENDING: u64 = 1 << 63;
/// `Delivery::message_count` of a consumer's delivery.
const NO_COUNT: u64 = u64::MAX;

/// Where a delivery came from. A consumer's deliveries reach their queue
/// through the consumer.
enum Origin {
    Consumer(Held),
    Get(Arc<Queue>),
}

/// A consumer's delivery's reference to the consumer: not a counted one.
///
/// Counting one per delivery took a locked instruction to clone and
/// another to drop, two of the handful a two-thread hop's receiving side
/// spent per message. Instead a dropped delivery adds one to
/// `ConsumerShared::finished` (one locked instruction), and the consumer's
/// own reference keeps it alive:
/// - while the `Consumer` lives, its reference does;
/// - when it is dropped, no receiver can run, so the deliveries made are
///   all numbered (`made`, the count of tags). It adds [`CLOSED`] − `made`
///   to `finished`: from then on `finished` is `CLOSED` − the deliveries
///   still out. If none are, it drops its reference as usual; otherwise it
///   leaves it to them.
/// - The delivery whose drop brings `finished` to exactly `CLOSED` is the
///   last one, after the close: it drops the reference. Before the close
///   `finished` counts drops only, and stays far below `CLOSED`.
///
/// Every use a delivery makes of the consumer comes before its add
/// (release), and whoever drops the reference has acquired all of those
/// adds (the read-modify-writes on `finished` form one release sequence),
/// as with `Arc`'s own count.
struct Held(NonNull<ConsumerShared>);

/// Added to `ConsumerShared::finished` when the `Consumer` is dropped (see
/// [`Held`]).
const CLOSED: u64 = 1 << 63;

// SAFETY: a `Held` is a shared reference to a `ConsumerShared` (which is
// `Send + Sync`) that stays valid as long as the `Held` exists (see above).
#[allow(unsafe_code)] // see `Held`
unsafe impl Send for Held {}
#[allow(unsafe_code)] // see `Held`
unsafe impl Sync for Held {}

#[allow(unsafe_code)] // see `Held`
impl Held {
    fn new(shared: &ConsumerArc<ConsumerShared>) -> Held {
        // A shared `Arc`'s pointer is never null.
        Held(NonNull::from(&**shared))
    }

    fn get(&self) -> &ConsumerShared {
        // SAFETY: valid until this `Held` is dropped (see above).
        unsafe { self.0.as_ref() }
    }
}

#[allow(unsafe_code)] // see `Held`
impl Drop for Held {
    fn drop(&mut self) {
        let before = self.get().finished.fetch_add(1, Ordering::Release);
        if before.wrapping_add(1) == CLOSED {
            // The last delivery out, after the `Consumer` was dropped: the
            // reference it left is this one's to drop.
            fence(Ordering::Acquire);
            // SAFETY: the `Consumer` gave up its reference with
            // `into_raw`, for exactly this; nothing else reads through
            // this pointer any more.
            let shared = unsafe { ConsumerArc::from_raw(self.0.as_ptr()) };
            shared.queue.forget_departed(&shared);
        }
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("delivery_tag", &self.delivery_tag())
            .field("redelivered", &self.redelivered())
            .field("exchange", &self.exchange())
            .field("routing_key", &self.routing_key())
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// How a delivery was answered.
#[derive(Clone, Copy)]
enum Answer {
    Ack,
    Requeue,
    Discard,
}

impl Delivery {
    pub(crate) fn from_get(
        entry: Entry,
        queue: Arc<Queue>,
        tag: u64,
        remaining: u64,
        no_ack: bool,
    ) -> Delivery {
        Delivery {
            entry,
            tag_flags: tag | if no_ack { 0 } else { PENDING },
            origin: Origin::Get(queue),
            message_count: remaining.min(NO_COUNT - 1),
        }
    }

    fn content(&self) -> &Content {
        &self.entry.content
    }

    /// The delivery tag: increasing per consumer (for `get`, per queue).
    pub fn delivery_tag(&self) -> u64 {
        self.tag_flags & !PENDING
    }

    fn pending(&self) -> bool {
        self.tag_flags & PENDING != 0
    }

    /// Whether this message was delivered before and requeued.
    pub fn redelivered(&self) -> bool {
        self.entry.redelivered()
    }

    /// The exchange the message was published to (`""` for the default one).
    pub fn exchange(&self) -> &str {
        self.content().exchange()
    }

    /// The routing key it was published with.
    pub fn routing_key(&self) -> &str {
        self.content().routing_key()
    }

    /// Its properties.
    pub fn properties(&self) -> &BasicProperties {
        self.content().properties()
    }

    /// Its body.
    pub fn body(&self) -> &Bytes {
        &self.content().body
    }

    /// The queue it came from.
    pub fn queue(&self) -> &str {
        &self.q().name
    }

    fn q(&self) -> &Arc<Queue> {
        match &self.origin {
            Origin::Consumer(c) => &c.get().queue,
            Origin::Get(q) => q,
        }
    }

    /// The consumer tag, for consumer deliveries.
    pub fn consumer_tag(&self) -> Option<&str> {
        match &self.origin {
            Origin::Consumer(c) => Some(&c.get().tag),
            Origin::Get(_) => None,
        }
    }

    /// For `get`: how many messages stayed ready in the queue.
    pub fn message_count(&self) -> Option<u64> {
        (self.message_count != NO_COUNT).then_some(self.message_count)
    }

    /// A copy of the message (properties and body; the body is shared).
    pub fn to_message(&self) -> Message {
        self.content().to_message()
    }

    /// Acknowledges: the message is done.
    pub fn ack(mut self) {
        self.answer(Answer::Ack);
    }

    /// Negative acknowledgement: requeue it (marked redelivered) or, without
    /// requeue, discard it (dead-lettered with reason `rejected` when the queue
    /// has a dead-letter exchange).
    pub fn nack(mut self, requeue: bool) {
        self.answer(if requeue {
            Answer::Requeue
        } else {
            Answer::Discard
        });
    }

    /// Same as [`nack`](Self::nack) for one message (AMQP's `basic.reject`).
    pub fn reject(self, requeue: bool) {
        self.nack(requeue);
    }

    fn answer(&mut self, answer: Answer) {
        if !self.pending() {
            return;
        }
        self.tag_flags &= !PENDING;
        // Only an ack needs to see to the dispatch its credit makes possible:
        // a requeue or a discard runs one anyway, after the copy is back.
        let owes = match &self.origin {
            Origin::Consumer(c) => {
                let ack = matches!(answer, Answer::Ack);
                c.get().answered(ack, !ack).then(|| c.get())
            }
            Origin::Get(_) => None,
        };
        // A requeue or a discard moves the content out (see below).
        let content = match answer {
            Answer::Ack => None,
            Answer::Requeue | Answer::Discard => Some(std::mem::take(&mut self.entry.content)),
        };
        let q = self.q();
        match (answer, &self.origin) {
            // A consumer counted it (see `Returns`).
            (Answer::Ack, Origin::Consumer(_)) => {}
            (Answer::Ack, Origin::Get(_)) => q.answers.ack(),
            (Answer::Requeue | Answer::Discard, _) => q.answers.release(1),
        }
        match answer {
            Answer::Ack => {
                if let Some(c) = owes {
                    c.owe_dispatch();
                }
            }
            Answer::Requeue | Answer::Discard => {
                // The copy goes back (or on to its dead-letter exchange). The
                // delivery is answered for good and nothing reads its content
                // after this, so the content moves rather than being copied.
                let content = content.unwrap_or_default();
                let entry = Entry::new(content, self.entry.seq(), self.entry.expires_at, true);
                let now = q.now_if_timed(None);
                let mut after = AfterUnlock::default();
                {
                    let mut st = q.lock();
                    match answer {
                        Answer::Requeue => q.requeue(&mut st, entry, now, &mut after),
                        _ => {
                            q.discard(&mut st, entry.content, &mut after);
                            q.dispatch(&mut st, now, &mut after);
                        }
                    }
                }
                q.finish(after);
            }
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.pending() {
            self.answer(Answer::Requeue);
        }
    }
}
