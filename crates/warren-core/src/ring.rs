//! The hand-off between a queue and one of its consumers: a bounded ring of
//! queue entries with one producer and one consumer at a time.
//!
//! The producer is whoever dispatches: always under the queue's lock, so
//! pushes never race each other. The consumer is whoever receives: always
//! under the consumer's receive lock, so pops never race each other. Each
//! slot carries a stamp, the number of the entry in it (as crossbeam's
//! array channel stamps its slots): the producer writes the entry and then
//! the stamp; the consumer reads them and moves its own index on, without
//! writing to the slot. The producer keeps its own copy of the consumer's
//! index and reads the real one only when the ring looks full. So a message
//! crossing from the publishing thread to the receiving thread moves only
//! its slot's lines, and only one way: no lock word, no shared counter.
//!
//! Both indices only grow (wrapping `usize`); `tail - head` is the number of
//! entries in the ring.
//!
//! The one module of warren-core with `unsafe` (the crate denies it
//! elsewhere): a slot is written and read through raw pointers, under the
//! protocol above, and a push asks the processor for the lines of a slot a
//! few ahead (`prefetchw`, see [`claim_ahead`]). `tests/loom.rs` runs the
//! ring under loom, whose `UnsafeCell` fails a model on any unsynchronised
//! access to a slot; the unit tests below check order, wrap-around and that
//! every entry is dropped once.
//! (Miri would be the next check; it needs a nightly toolchain, which the
//! project's machines do not have.)
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;

use crate::queue::Entry;
use crate::sync::{AtomicUsize, UnsafeCell};

/// The most entries a ring holds (a slot is 128 bytes, so 128 KiB). A consumer with a
/// larger prefetch window keeps the rest of its window in the queue, ready:
/// they are handed over when its receiver runs dry (see
/// `ConsumerShared::try_take_credit`).
///
/// Under the model checker it is 2, so that small models reach a full ring.
pub(crate) const MAX_CAPACITY: usize = if cfg!(loom) { 2 } else { 1024 };

/// The ring of a consumer without a prefetch window (no limit): 32 KiB, so
/// that the many consumers of an AMQP server that sets no `basic.qos` do not
/// each hold the largest ring.
const UNLIMITED_CAPACITY: usize = if cfg!(loom) { 2 } else { 256 };

/// One entry's place. `stamp` is the number of the entry it holds plus one
/// (entries are numbered from 0 as pushed): written by the producer once the
/// entry is in, and only read by the consumer, which hands the slot back by
/// moving its own index past it. So the slot's lines travel one way per
/// message, from the publishing core to the receiving one.
///
/// 128 bytes, aligned to 128: no two slots share a line, nor a pair of lines
/// that the processor fetches together, so the producer writing one slot does
/// not take away the line the consumer is reading the one before from.
#[repr(align(128))]
struct Slot {
    stamp: AtomicUsize,
    entry: UnsafeCell<MaybeUninit<Entry>>,
}

#[repr(align(128))]
#[derive(Debug)]
struct ProducerSide {
    /// Entries pushed so far.
    tail: AtomicUsize,
    /// The producer's last reading of `head`: it reads the real one only
    /// when this says the ring is full.
    head_seen: AtomicUsize,
}

#[repr(align(128))]
#[derive(Debug)]
struct ConsumerSide {
    /// Entries popped so far.
    head: AtomicUsize,
}

pub(crate) struct Ring {
    producer: ProducerSide,
    consumer: ConsumerSide,
    slots: Box<[Slot]>,
    mask: usize,
    /// How far ahead of `tail` a push claims a slot's lines for writing
    /// (see [`claim_ahead`]); 0 in rings too small for it.
    ahead: usize,
}

/// How many slots ahead of the one it writes a push claims lines for its
/// later writes. Far enough that the consumer, which polls the slot at its
/// `head`, is not reading them (unless the ring is within this many of
/// full, when the hint only costs the consumer a fetch back), and that the
/// claim has a few pushes' time to arrive; near enough that the lines are
/// still there when written.
const AHEAD: usize = 4;

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.slots.len())
            .field("len", &self.len())
            .finish()
    }
}

// SAFETY: the slots hold `Entry`s (which are `Send`), handed from the
// producer to the consumer with release/acquire on each slot's stamp, and
// back with release/acquire on `head`; each slot is accessed by one side at
// a time (see `push` and `pop`).
unsafe impl Send for Ring {}
// SAFETY: as above: `&Ring` methods are split between the two sides, and
// each side is serialised by its caller's lock.
unsafe impl Sync for Ring {}

impl Ring {
    /// A ring for a consumer with this prefetch window (0 = unlimited).
    pub(crate) fn for_prefetch(prefetch: u32) -> Ring {
        let want = if prefetch == 0 {
            UNLIMITED_CAPACITY
        } else {
            (prefetch as usize).next_power_of_two().min(MAX_CAPACITY)
        };
        Ring {
            producer: ProducerSide {
                tail: AtomicUsize::new(0),
                head_seen: AtomicUsize::new(0),
            },
            consumer: ConsumerSide {
                head: AtomicUsize::new(0),
            },
            slots: (0..want)
                .map(|_| Slot {
                    stamp: AtomicUsize::new(0),
                    entry: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            mask: want - 1,
            ahead: if want >= 4 * AHEAD { AHEAD } else { 0 },
        }
    }

    /// Entries in the ring now (a snapshot, from either side).
    pub(crate) fn len(&self) -> usize {
        let head = self.consumer.head.load(Ordering::Acquire);
        let tail = self.producer.tail.load(Ordering::Acquire);
        tail.wrapping_sub(head)
    }

    /// Whether the ring is empty: the entry at `head` is not there yet.
    ///
    /// From any thread. Read with a `head` older than the consumer's, it may
    /// say "not empty" when the ring has just been emptied, never "empty"
    /// when it holds an entry: the hand-overs that use it (owed dispatches,
    /// sleeping receivers) only need the second.
    pub(crate) fn is_empty(&self) -> bool {
        self.is_empty_reading_head(Ordering::Acquire)
    }

    /// As [`is_empty`](Self::is_empty), reading `head` with `SeqCst`: the
    /// read half of a store-then-load hand-over whose write half is a
    /// `SeqCst` read-modify-write, and whose other side fences after moving
    /// `head` (see `ConsumerShared::return_credit`). On x86-64 the read is a
    /// plain load, where a fence would be a locked instruction.
    pub(crate) fn is_empty_seqcst(&self) -> bool {
        self.is_empty_reading_head(Ordering::SeqCst)
    }

    fn is_empty_reading_head(&self, order: Ordering) -> bool {
        let head = self.consumer.head.load(order);
        let slot = &self.slots[head & self.mask];
        slot.stamp.load(Ordering::Acquire) != head.wrapping_add(1)
    }

    /// Producer side: whether a push would fit. Call under the queue lock.
    pub(crate) fn has_room(&self) -> bool {
        let tail = self.producer.tail.load(Ordering::Relaxed);
        let seen = self.producer.head_seen.load(Ordering::Relaxed);
        if tail.wrapping_sub(seen) < self.slots.len() {
            return true;
        }
        // Pairs with `pop`'s release: the slots it passed are free to reuse.
        let head = self.consumer.head.load(Ordering::Acquire);
        self.producer.head_seen.store(head, Ordering::Relaxed);
        tail.wrapping_sub(head) < self.slots.len()
    }

    /// Producer side: appends the entry `e` makes. Call under the queue
    /// lock, after [`has_room`](Self::has_room) said yes.
    ///
    /// The entry is built in its slot (`e` and this are inlined): built
    /// first and then moved in, it was copied twice more on the way, each
    /// copy reading what the one before had just stored, and a publish took
    /// some 8 ns more (one thread, alternated in one process).
    #[inline]
    pub(crate) fn push(&self, e: impl FnOnce() -> Entry) {
        let tail = self.producer.tail.load(Ordering::Relaxed);
        let slot = &self.slots[tail & self.mask];
        slot.entry.with_mut(|p| {
            // SAFETY: `has_room` saw `head` past this slot's previous entry
            // (acquiring the consumer's release of it), so the consumer is
            // done with it, and only the producer, which the queue lock
            // makes unique, writes slots.
            unsafe { (*p).write(e()) };
        });
        // Publishes the entry to the consumer.
        slot.stamp.store(tail.wrapping_add(1), Ordering::Release);
        self.producer
            .tail
            .store(tail.wrapping_add(1), Ordering::Release);
        if self.ahead != 0 {
            claim_ahead(&self.slots[tail.wrapping_add(self.ahead) & self.mask]);
        }
    }

    /// Consumer side: takes the oldest entry. Call under the consumer's
    /// receive lock (or once nothing can push any more).
    pub(crate) fn pop(&self) -> Option<Entry> {
        let head = self.consumer.head.load(Ordering::Relaxed);
        let slot = &self.slots[head & self.mask];
        // Pairs with `push`'s release: the entry is visible.
        if slot.stamp.load(Ordering::Acquire) != head.wrapping_add(1) {
            return None;
        }
        let e = slot.entry.with_mut(|p| {
            // SAFETY: the stamp says the producer wrote entry `head` here,
            // and it will not write the slot again until `head` has moved
            // past it; the receive lock makes this the only reader.
            unsafe { (*p).assume_init_read() }
        });
        // Hands the slot back to the producer.
        self.consumer
            .head
            .store(head.wrapping_add(1), Ordering::Release);
        Some(e)
    }
}

/// Asks the processor for `slot`'s two lines in the state a write needs
/// (`prefetchw`), for a push a few entries from now. A hint: it changes
/// nothing a program can observe, only when the lines move.
///
/// Why: the consumer read this slot's lines when it took the entry the ring
/// held there a lap ago, so its core holds copies. A push's write must take
/// the lines from that core first, a round trip between cores (about 130 ns
/// on the machines warren is measured on, longer than the rest of a
/// publish), and the queue lock's release, a locked instruction, waits for
/// the write to complete. Asked for a few pushes early, the lines are this
/// core's by the time the push writes them: in the two-thread queue hop a
/// message went from about one such round trip to 0.6-0.75 of one, and
/// the hop from 6-8.5 to 8.3-11.6 M msg/s.
///
/// x86-64 only: there `prefetchw` is a no-op on processors without it. Other
/// targets do without the hint.
#[inline(always)]
fn claim_ahead(slot: &Slot) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        let p: *const Slot = slot;
        // SAFETY: `prefetchw` reads and writes nothing a program can see
        // (it only moves a line into this core's cache, and does not fault
        // on any address); `p` points into the ring's slots anyway.
        unsafe {
            std::arch::asm!(
                "prefetchw [{p}]",
                "prefetchw [{p} + 64]",
                p = in(reg) p,
                options(nostack, preserves_flags, readonly),
            );
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = slot;
}

impl Drop for Ring {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::{Content, Message, Names};

    fn entry(seq: u64, body: &Bytes) -> Entry {
        let mut m = Message::new(body.clone());
        Entry::new(
            Content::new(Names::new("x", "k"), &mut m, Vec::new()),
            seq,
            u64::MAX,
            false,
        )
    }

    #[test]
    fn capacity_follows_the_prefetch_window() {
        assert_eq!(Ring::for_prefetch(1).slots.len(), 1);
        assert_eq!(Ring::for_prefetch(3).slots.len(), 4);
        assert_eq!(Ring::for_prefetch(1000).slots.len(), 1024);
        assert_eq!(Ring::for_prefetch(100_000).slots.len(), MAX_CAPACITY);
        assert_eq!(Ring::for_prefetch(0).slots.len(), UNLIMITED_CAPACITY);
    }

    #[test]
    fn only_rings_with_room_to_spare_claim_lines_ahead() {
        assert_eq!(Ring::for_prefetch(1).ahead, 0);
        // Windows round up to a power of two: 8 slots, then 16.
        assert_eq!(Ring::for_prefetch(2 * AHEAD as u32).ahead, 0);
        assert_eq!(Ring::for_prefetch(2 * AHEAD as u32 + 1).ahead, AHEAD);
        assert_eq!(Ring::for_prefetch(1000).ahead, AHEAD);
        assert_eq!(Ring::for_prefetch(0).ahead, AHEAD);
    }

    #[test]
    fn entries_come_out_in_order_across_many_wraps() {
        // A ring too small to claim lines ahead, and one that does.
        for (window, fill) in [(4, 4), (64, 80)] {
            in_order_across_wraps(window, fill);
        }
    }

    fn in_order_across_wraps(window: u32, fill: u64) {
        let body = Bytes::from(vec![7u8; 16]);
        let ring = Ring::for_prefetch(window);
        let (mut pushed, mut popped) = (0u64, 0u64);
        for round in 0..1000u64 {
            // Fill by a varying amount, then drain part of it.
            while ring.has_room() && pushed < popped + 1 + round % fill {
                ring.push(|| entry(pushed, &body));
                pushed += 1;
            }
            assert_eq!(ring.len() as u64, pushed - popped);
            for _ in 0..=(round % (fill - 1)) {
                match ring.pop() {
                    Some(e) => {
                        assert_eq!(e.seq(), popped);
                        assert_eq!(&e.content.body[..], &body[..]);
                        popped += 1;
                    }
                    None => assert_eq!(pushed, popped),
                }
            }
        }
        assert!(pushed > 1000);
    }

    #[test]
    fn a_full_ring_says_so_and_frees_a_slot_per_pop() {
        let body = Bytes::from_static(b"b");
        let ring = Ring::for_prefetch(2);
        ring.push(|| entry(0, &body));
        ring.push(|| entry(1, &body));
        assert!(!ring.has_room());
        assert_eq!(ring.pop().map(|e| e.seq()), Some(0));
        assert!(ring.has_room());
        ring.push(|| entry(2, &body));
        assert_eq!(ring.pop().map(|e| e.seq()), Some(1));
        assert_eq!(ring.pop().map(|e| e.seq()), Some(2));
        assert!(ring.pop().is_none());
        assert!(ring.is_empty());
    }

    #[test]
    fn dropping_the_ring_drops_what_it_holds() {
        let body = Bytes::from(vec![1u8; 64]);
        let ring = Ring::for_prefetch(8);
        for seq in 0..5 {
            ring.push(|| entry(seq, &body));
        }
        drop(ring.pop());
        assert!(!body.is_unique());
        drop(ring);
        assert!(
            body.is_unique(),
            "an entry left in the ring was not dropped"
        );
    }
}
