//! Queues: ready messages, overflow, TTL, dead letters, and dispatch.
//!
//! # What a queue promises
//!
//! Every message copy a queue accepts is, at any moment, in exactly one place:
//! *ready* (in the queue), *unacked* (handed to a consumer or `get`, not yet
//! answered), or gone for a counted reason: acked, discarded by a
//! `nack`/`reject` without requeue, dropped from the head by `drop-head`
//! overflow, expired, purged, or deleted with the queue. (A copy handed out
//! before its queue was deleted stays unacked until it is answered.) A copy
//! refused at the door by `reject-publish` is counted as rejected and never
//! entered. Copies that leave for a reason the queue dead-letters (rejected,
//! expired, maxlen) are republished to the dead-letter exchange and counted
//! there too. The counters in [`QueueStats`](crate::QueueStats) obey that
//! conservation law; the crate's property tests check it.
//!
//! # How it works
//!
//! One mutex guards the ready list, the consumer list and the counters. Ready
//! messages are kept sorted by a per-queue sequence number, so a requeued
//! message goes back to its original place, whatever order deliveries are
//! answered in. Dispatch runs under that lock whenever something changes
//! (a publish, a requeue, a new consumer, credit coming back): it hands the head
//! to the next consumer in round-robin order that has prefetch credit and
//! room in its ring, writing it into that consumer's ring (one writer, the
//! queue lock's holder; one reader, the consumer's receiver; no lock between
//! them, see `ring.rs`). Entries carry their content by value, so a message
//! with no properties crosses from the publishing thread to the receiving
//! one without an allocation or a shared reference count. Credit comes
//! back through an atomic counter without the queue lock. When it comes back
//! to a consumer that was at its prefetch limit, the dispatch it makes
//! possible is run at once only if that consumer has nothing left to
//! receive; otherwise it is owed, and paid by the queue's next publish or by
//! the consumer's receiver when it runs dry. So a consumer working through a
//! backlog does not fight the publisher for the queue lock on every ack:
//! the publisher's own dispatch refills it.
//!
//! A message that arrives at an empty queue while a consumer has credit goes
//! straight to that consumer, before its TTL is looked at: a TTL of 0 means
//! "deliver now or never", as in RabbitMQ. Otherwise expiry is checked at the
//! head (as RabbitMQ does) on every operation and by the broker's timer.
//!
//! Dead letters are collected under the lock and published after it is
//! released, so a dead-letter cycle back into the same queue cannot deadlock.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use crate::broker::BrokerInner;
use crate::clock::Clock;
use crate::consumer::ConsumerShared;
use crate::field::FieldTable;
use crate::message::Content;
use crate::options::{Overflow, OwnerId};
use crate::sync::{AtomicBool, AtomicU64, ConsumerArc, Mutex, MutexGuard};
use crate::wait::WaitList;

/// The parsed, validated settings of a queue.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueConfig {
    pub(crate) durable: bool,
    pub(crate) exclusive: Option<OwnerId>,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_length_bytes: Option<u64>,
    pub(crate) overflow: Overflow,
    pub(crate) message_ttl: Option<u64>,
    pub(crate) expires: Option<u64>,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
}

/// One message copy in a queue: 96 bytes, the content held by value (the
/// `redelivered` flag lives in the sequence number's top bit).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) content: Content,
    seq_flags: u64,
    /// Milliseconds on the broker clock; `u64::MAX` = never.
    pub(crate) expires_at: u64,
}

const REDELIVERED: u64 = 1 << 63;

impl Entry {
    pub(crate) fn new(content: Content, seq: u64, expires_at: u64, redelivered: bool) -> Entry {
        Entry {
            content,
            seq_flags: (seq & !REDELIVERED) | if redelivered { REDELIVERED } else { 0 },
            expires_at,
        }
    }

    /// Position in the queue's publish order.
    pub(crate) fn seq(&self) -> u64 {
        self.seq_flags & !REDELIVERED
    }

    pub(crate) fn redelivered(&self) -> bool {
        self.seq_flags & REDELIVERED != 0
    }

    pub(crate) fn mark_redelivered(&mut self) {
        self.seq_flags |= REDELIVERED;
    }
}

/// Why a copy left a queue for its dead-letter exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
}

impl DeathReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
        }
    }
}

/// A copy on its way to a dead-letter exchange.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub(crate) content: Content,
    pub(crate) reason: DeathReason,
    pub(crate) queue: Arc<str>,
    pub(crate) exchange: String,
    pub(crate) routing_key: Option<String>,
}

/// Counters kept under the queue lock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) enqueued: u64,
    pub(crate) rejected: u64,
    pub(crate) dropped: u64,
    pub(crate) expired: u64,
    pub(crate) discarded: u64,
    pub(crate) purged: u64,
    pub(crate) deleted: u64,
    pub(crate) dead_lettered: u64,
    /// Copies handed to a consumer or a `get` (those since acked or released
    /// are counted in [`Answers`]).
    pub(crate) delivered: u64,
}

#[derive(Debug, Default)]
pub(crate) struct QueueState {
    pub(crate) ready: VecDeque<Entry>,
    pub(crate) ready_bytes: u64,
    pub(crate) consumers: Vec<ConsumerArc<ConsumerShared>>,
    /// Consumers cancelled (or cut off by the queue's deletion) whose
    /// deliveries may still be answered: their acks count in the queue's
    /// stats (see `Returns` in `consumer.rs`) until the last reference to
    /// them goes, which folds them into `Answers::acked`.
    pub(crate) departed: Vec<ConsumerArc<ConsumerShared>>,
    rr: usize,
    next_seq: u64,
    pub(crate) deleted: bool,
    /// Broker-clock time the queue was last used (for `x-expires`).
    pub(crate) last_used: u64,
    pub(crate) had_consumer: bool,
    pub(crate) has_exclusive_consumer: bool,
    /// Publishers waiting for room (`block` overflow).
    pub(crate) room: WaitList,
    pub(crate) counters: Counters,
    /// Earliest deadline handed to the broker timer.
    scheduled: u64,
}

/// What happened to one copy offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// The queue took it (it may have pushed another out of the head).
    Accepted,
    /// `reject-publish` / `reject-publish-dlx` refused it.
    Rejected,
    /// `block` overflow and no room; nothing was taken.
    Full,
    /// The queue was deleted meanwhile.
    Gone,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) config: QueueConfig,
    pub(crate) broker: Weak<BrokerInner>,
    clock: Clock,
    state: Mutex<QueueState>,
    /// Answers counted on the consumers' side, on their own cache line so
    /// acking threads and publishing threads do not share one.
    pub(crate) answers: Answers,
    /// Set once the queue has, or ever had, a copy with a deadline: until
    /// then the hot path need not read the clock.
    timed: AtomicBool,
    get_tags: AtomicU64,
}

/// Counters the answering side bumps without the queue lock. Every copy
/// handed out (under the lock, counted in `Counters::delivered`) is settled
/// by exactly one of them, or by one consumer's ack count (see `Returns` in
/// `consumer.rs`): an ack adds to one counter, not two.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Answers {
    /// Copies acknowledged that `get` took (or that a no-ack `get` took),
    /// and the acks of consumers that are gone.
    pub(crate) acked: AtomicU64,
    /// Copies settled otherwise: requeued, discarded, given back by a
    /// dropped consumer, or dropped with their queue.
    pub(crate) released: AtomicU64,
}

impl Answers {
    /// One handed-out copy is acknowledged.
    pub(crate) fn ack(&self) {
        self.acked.fetch_add(1, Ordering::Release);
    }

    /// `n` handed-out copies are settled without an ack.
    pub(crate) fn release(&self, n: u64) {
        self.released.fetch_add(n, Ordering::Release);
    }
}

/// Work to finish after the queue lock is released.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct AfterUnlock {
    pub(crate) dead_letters: Vec<DeadLetter>,
    pub(crate) schedule: Option<(u64, Arc<str>, u64)>,
}

impl AfterUnlock {
    pub(crate) fn is_empty(&self) -> bool {
        self.dead_letters.is_empty() && self.schedule.is_none()
    }
}

impl Queue {
    pub(crate) fn new(
        id: u64,
        name: Arc<str>,
        config: QueueConfig,
        broker: Weak<BrokerInner>,
        clock: Clock,
    ) -> Queue {
        let now = clock.now_ms();
        Queue {
            id,
            name,
            config,
            broker,
            clock,
            state: Mutex::new(QueueState {
                last_used: now,
                scheduled: u64::MAX,
                ..QueueState::default()
            }),
            answers: Answers::default(),
            timed: AtomicBool::new(false),
            get_tags: AtomicU64::new(0),
        }
    }

    /// The broker clock's reading when this queue may hold copies with
    /// deadlines (or is about to get one with `message_ttl`); 0 otherwise, which
    /// expires nothing and saves the hot path a clock read.
    pub(crate) fn now_if_timed(&self, message_ttl: Option<u64>) -> u64 {
        if self.config.message_ttl.is_some()
            || message_ttl.is_some()
            || self.timed.load(Ordering::Relaxed)
        {
            self.clock.now_ms()
        } else {
            0
        }
    }

    /// The broker clock's reading.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Locks the queue.
    pub(crate) fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock()
    }

    /// Restarts dispatch after credit came back to a consumer that was at its
    /// prefetch limit (see `ConsumerShared::release_credit`, which calls it
    /// only when the consumer has run dry, not on every answer).
    pub(crate) fn redispatch(&self) {
        let now = self.now_if_timed(None);
        let mut after = AfterUnlock::default();
        {
            let mut st = self.lock();
            self.dispatch(&mut st, now, &mut after);
            self.plan_timer(&mut st, &mut after);
        }
        self.finish(after);
    }

    /// Hands work collected under the lock to the broker.
    pub(crate) fn finish(&self, after: AfterUnlock) {
        if !after.is_empty() {
            if let Some(b) = self.broker.upgrade() {
                b.finish(after);
            }
        }
    }

    /// The deadline for a copy enqueued now with an optional per-message TTL.
    pub(crate) fn deadline(&self, now: u64, message_ttl: Option<u64>) -> u64 {
        match (self.config.message_ttl, message_ttl) {
            (None, None) => u64::MAX,
            (a, b) => now.saturating_add(a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX))),
        }
    }

    fn over_limit(&self, st: &QueueState, extra_len: u64, extra_bytes: u64) -> bool {
        self.config
            .max_length
            .is_some_and(|m| st.ready.len() as u64 + extra_len > m)
            || self
                .config
                .max_length_bytes
                .is_some_and(|m| st.ready_bytes + extra_bytes > m)
    }

    /// Whether a `block` queue has room for one more message of this size.
    pub(crate) fn has_room(&self, st: &QueueState, bytes: u64) -> bool {
        !self.over_limit(st, 1, bytes)
    }

    /// Offers one copy. `force` makes a `block` queue take it even when full
    /// (used after a room check, and for dead letters, which must not wait).
    /// `last`: this is the last queue the message goes to, so the queue may
    /// take `content` itself rather than a copy (see [`Content::copy`]);
    /// after [`Offer::Full`] it is still there to offer again.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offer(
        &self,
        st: &mut QueueState,
        content: &mut Option<Content>,
        last: bool,
        expires_at: u64,
        now: u64,
        force: bool,
        after: &mut AfterUnlock,
    ) -> Offer {
        if st.deleted {
            return Offer::Gone;
        }
        self.expire_head(st, now, after);
        let bytes = content.as_ref().map_or(0, Content::body_len) as u64;
        if self.over_limit(st, 1, bytes) {
            match self.config.overflow {
                Overflow::DropHead => {}
                Overflow::RejectPublish => {
                    st.counters.rejected += 1;
                    return Offer::Rejected;
                }
                Overflow::RejectPublishDlx => {
                    st.counters.rejected += 1;
                    let copy = Content::copy(content, last);
                    self.dead_letter(st, copy, DeathReason::Maxlen, after);
                    return Offer::Rejected;
                }
                Overflow::Block if !force => return Offer::Full,
                Overflow::Block => {}
            }
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.counters.enqueued += 1;
        if expires_at != u64::MAX && !self.timed.load(Ordering::Relaxed) {
            self.timed.store(true, Ordering::Relaxed);
        }
        // Built where it goes: in a consumer's ring slot, or in the queue.
        let mut entry = || Entry::new(Content::copy(content, last), seq, expires_at, false);
        // A consumer waiting on an empty queue gets the message before its
        // TTL is looked at: a TTL of 0 means "now or never" (RabbitMQ).
        if st.ready.is_empty() {
            if let Some(idx) = Self::take_credit(st) {
                self.hand_to(st, idx, entry);
                return Offer::Accepted;
            }
        }
        st.ready_bytes += bytes;
        st.ready.push_back(entry());
        self.dispatch(st, now, after);
        // Nobody took it: a message whose TTL is already up goes now.
        self.expire_head(st, now, after);
        if self.config.overflow == Overflow::DropHead {
            self.drop_head_over_limit(st, after);
        }
        self.plan_timer(st, after);
        Offer::Accepted
    }

    /// Puts an unanswered copy back at its original place.
    pub(crate) fn requeue(
        &self,
        st: &mut QueueState,
        mut entry: Entry,
        now: u64,
        after: &mut AfterUnlock,
    ) {
        entry.mark_redelivered();
        self.restore(st, [entry], now, after);
    }

    /// Puts copies back at their original places, as they are (copies a
    /// consumer never showed to the application are not marked
    /// redelivered). Like any requeue, this may expire the head, dispatch,
    /// and drop from the head what is over a `drop-head` bound.
    pub(crate) fn restore(
        &self,
        st: &mut QueueState,
        entries: impl IntoIterator<Item = Entry>,
        now: u64,
        after: &mut AfterUnlock,
    ) {
        for e in entries {
            if st.deleted {
                st.counters.deleted += 1;
            } else {
                self.insert_sorted(st, e);
            }
        }
        if st.deleted {
            return;
        }
        self.expire_head(st, now, after);
        self.dispatch(st, now, after);
        if self.config.overflow == Overflow::DropHead {
            self.drop_head_over_limit(st, after);
        }
        self.plan_timer(st, after);
    }

    fn insert_sorted(&self, st: &mut QueueState, entry: Entry) {
        st.ready_bytes += entry.content.body_len() as u64;
        let at = st.ready.partition_point(|e| e.seq() < entry.seq());
        st.ready.insert(at, entry);
    }

    /// A copy answered with `nack`/`reject` and no requeue.
    pub(crate) fn discard(&self, st: &mut QueueState, content: Content, after: &mut AfterUnlock) {
        st.counters.discarded += 1;
        if !st.deleted {
            self.dead_letter(st, content, DeathReason::Rejected, after);
        }
    }

    fn pop_ready(st: &mut QueueState) -> Option<Entry> {
        let e = st.ready.pop_front()?;
        st.ready_bytes -= e.content.body_len() as u64;
        Some(e)
    }

    fn dead_letter(
        &self,
        st: &mut QueueState,
        content: Content,
        reason: DeathReason,
        after: &mut AfterUnlock,
    ) {
        if let Some(exchange) = &self.config.dead_letter_exchange {
            st.counters.dead_lettered += 1;
            after.dead_letters.push(DeadLetter {
                content,
                reason,
                queue: self.name.clone(),
                exchange: exchange.clone(),
                routing_key: self.config.dead_letter_routing_key.clone(),
            });
        }
    }

    fn drop_head_over_limit(&self, st: &mut QueueState, after: &mut AfterUnlock) {
        while self.over_limit(st, 0, 0) {
            let Some(e) = Self::pop_ready(st) else { break };
            st.counters.dropped += 1;
            self.dead_letter(st, e.content, DeathReason::Maxlen, after);
        }
        if self.config.overflow == Overflow::Block {
            st.room.notify_all();
        }
    }

    /// Drops expired copies from the head.
    #[inline]
    pub(crate) fn expire_head(&self, st: &mut QueueState, now: u64, after: &mut AfterUnlock) {
        if st.ready.front().is_some_and(|e| e.expires_at <= now) {
            self.expire_head_slow(st, now, after);
        }
    }

    #[cold]
    fn expire_head_slow(&self, st: &mut QueueState, now: u64, after: &mut AfterUnlock) {
        let mut freed = false;
        while st.ready.front().is_some_and(|e| e.expires_at <= now) {
            let Some(e) = Self::pop_ready(st) else { break };
            st.counters.expired += 1;
            freed = true;
            self.dead_letter(st, e.content, DeathReason::Expired, after);
        }
        if freed {
            self.room_freed(st);
        }
    }

    fn room_freed(&self, st: &mut QueueState) {
        if self.config.overflow == Overflow::Block && !st.room.is_empty() {
            st.room.notify_all();
        }
    }

    /// Hands ready copies to consumers with credit, round-robin.
    pub(crate) fn dispatch(&self, st: &mut QueueState, now: u64, after: &mut AfterUnlock) {
        if st.consumers.is_empty() || st.ready.is_empty() {
            return;
        }
        let mut moved = false;
        while !st.ready.is_empty() {
            let Some(idx) = Self::take_credit(st) else {
                break;
            };
            self.expire_head(st, now, after);
            let Some(e) = Self::pop_ready(st) else {
                st.consumers[idx].return_credit_no_dispatch();
                break;
            };
            self.hand_to(st, idx, || e);
            moved = true;
        }
        if moved {
            self.room_freed(st);
        }
    }

    /// Takes one unit of prefetch credit from the next consumer, in
    /// round-robin order, that has one; returns its index.
    ///
    /// No division on the way (the `%` it had, and the one in `hand_to`,
    /// were two hardware divides per publish): `rr` is below
    /// the consumer count unless a consumer left since it was set.
    fn take_credit(st: &QueueState) -> Option<usize> {
        let n = st.consumers.len();
        if n == 0 {
            return None;
        }
        let mut idx = if st.rr < n { st.rr } else { st.rr % n };
        for _ in 0..n {
            if st.consumers[idx].try_take_credit() {
                return Some(idx);
            }
            idx += 1;
            if idx == n {
                idx = 0;
            }
        }
        None
    }

    /// Hands a copy (`e` builds it in the ring) to the consumer whose credit
    /// was taken, and wakes its receiver if one sleeps. No fence between the
    /// two: receivers register to sleep under the queue lock, which this
    /// holds (see `ConsumerShared::register`).
    #[inline]
    fn hand_to(&self, st: &mut QueueState, idx: usize, e: impl FnOnce() -> Entry) {
        st.counters.delivered += 1;
        let c = &st.consumers[idx];
        c.push(e);
        c.wake_sleeper();
        // `idx` is a consumer's index: the next one, or the first.
        st.rr = if idx + 1 < st.consumers.len() {
            idx + 1
        } else {
            0
        };
    }

    /// `basic.get`: the head copy, if any, and how many stay ready.
    pub(crate) fn get(
        &self,
        st: &mut QueueState,
        now: u64,
        no_ack: bool,
        after: &mut AfterUnlock,
    ) -> Option<(Entry, u64)> {
        st.last_used = now;
        self.expire_head(st, now, after);
        let e = Self::pop_ready(st)?;
        st.counters.delivered += 1;
        if no_ack {
            self.answers.ack();
        }
        self.room_freed(st);
        self.plan_timer(st, after);
        Some((e, st.ready.len() as u64))
    }

    /// Copies handed out and not yet settled. Call with the queue locked:
    /// every hand-out happens under the lock and precedes its answer, so the
    /// difference cannot go negative.
    pub(crate) fn unacked(&self, st: &QueueState) -> u64 {
        let released = self.answers.released.load(Ordering::Acquire);
        let settled = self.acked(st).wrapping_add(released);
        st.counters.delivered.saturating_sub(settled)
    }

    /// Copies acknowledged: those counted here, and those its consumers
    /// counted, the departed ones' too. Call with the queue locked.
    pub(crate) fn acked(&self, st: &QueueState) -> u64 {
        let by_consumers = st.consumers.iter().chain(&st.departed);
        let acked = self.answers.acked.load(Ordering::Acquire);
        by_consumers.fold(acked, |n, c| n.wrapping_add(c.acked()))
    }

    /// The last reference to a departed consumer is going: its acks move
    /// into the queue's own count, and the queue lets go of it.
    pub(crate) fn forget_departed(&self, c: &ConsumerArc<ConsumerShared>) {
        let mut st = self.lock();
        if let Some(i) = st.departed.iter().position(|d| ConsumerArc::ptr_eq(d, c)) {
            let gone = st.departed.swap_remove(i);
            self.answers
                .acked
                .fetch_add(gone.acked(), Ordering::Release);
        }
    }

    pub(crate) fn next_get_tag(&self) -> u64 {
        self.get_tags.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Removes every ready copy; returns how many.
    pub(crate) fn purge(&self, st: &mut QueueState) -> u64 {
        let n = st.ready.len() as u64;
        st.ready.clear();
        st.ready_bytes = 0;
        st.counters.purged += n;
        self.room_freed(st);
        n
    }

    /// Marks the queue deleted: drops its ready copies, cancels its consumers,
    /// wakes blocked publishers. Returns how many ready copies it held.
    pub(crate) fn mark_deleted(&self, st: &mut QueueState) -> u64 {
        let n = st.ready.len() as u64;
        st.deleted = true;
        st.ready.clear();
        st.ready_bytes = 0;
        st.counters.deleted += n;
        while let Some(c) = st.consumers.pop() {
            let dropped = c.cancel_by_server();
            st.counters.deleted += dropped;
            self.answers.release(dropped);
            st.departed.push(c);
        }
        st.room.notify_all();
        n
    }

    /// The earliest moment something time-driven is due (head TTL or the
    /// `x-expires` lease), on the broker clock.
    fn next_deadline(&self, st: &QueueState) -> u64 {
        let head = st.ready.front().map_or(u64::MAX, |e| e.expires_at);
        let lease = match self.config.expires {
            Some(ms) if st.consumers.is_empty() => st.last_used.saturating_add(ms),
            _ => u64::MAX,
        };
        head.min(lease)
    }

    pub(crate) fn plan_timer(&self, st: &mut QueueState, after: &mut AfterUnlock) {
        let due = self.next_deadline(st);
        if due < st.scheduled {
            st.scheduled = due;
            after.schedule = Some((due, self.name.clone(), self.id));
        }
    }

    /// Timer pass: expire the head; report whether the `x-expires` lease ran out.
    pub(crate) fn on_timer(&self, st: &mut QueueState, now: u64, after: &mut AfterUnlock) -> bool {
        st.scheduled = u64::MAX;
        if st.deleted {
            return false;
        }
        self.expire_head(st, now, after);
        let lease_over = self
            .config
            .expires
            .is_some_and(|ms| st.consumers.is_empty() && now >= st.last_used.saturating_add(ms));
        if !lease_over {
            self.plan_timer(st, after);
        }
        lease_over
    }
}
