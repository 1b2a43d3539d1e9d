//! The hand-off between a queue and one of its consumers: a bounded ring of
//! queue entries with one producer and one consumer at a time.
//!
//! The producer is whoever dispatches: always under the queue's lock, so
//! pushes never race each other. The consumer is whoever receives: always
//! under the consumer's receive lock, so pops never race each other. Each
//! slot carries a `full` flag that says whose turn it is (as crossbeam's
//! array channel stamps its slots): the producer writes the entry and sets
//! the flag, the consumer reads the entry and clears it. Each side keeps its
//! own index, on its own cache line, and neither reads the other's on the
//! way: a full ring is one whose next slot to write is still full. So a
//! message crossing from the publishing thread to the receiving thread moves
//! only its slot's lines: no lock word, no shared counter, no index.
//!
//! Both indices only grow (wrapping `usize`); `tail - head` is the number of
//! entries in the ring.
//!
//! The one module of warren-core with `unsafe` (the crate denies it
//! elsewhere): a slot is written and read through raw pointers, under the
//! protocol above. `tests/loom.rs` runs it under loom, whose `UnsafeCell`
//! fails a model on any unsynchronised access to a slot; the unit tests
//! below check order, wrap-around and that every entry is dropped once.
//! (Miri would be the next check; it needs a nightly toolchain, which the
//! project's machines do not have.)
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::sync::atomic::Ordering;

use crate::queue::Entry;
use crate::sync::{AtomicBool, AtomicUsize, UnsafeCell};

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

/// One entry's place. `full` says whose turn it is: set by the producer
/// once the entry is written, cleared by the consumer once it is read.
///
/// 128 bytes, aligned to a cache line: no two slots share a line, so the
/// producer writing one slot does not take away the line the consumer is
/// reading the one before from (measured: 4.10 against 3.94 M msg/s in the
/// two-thread hop, medians of 10 interleaved runs).
#[repr(align(64))]
struct Slot {
    full: AtomicBool,
    entry: UnsafeCell<MaybeUninit<Entry>>,
}

#[repr(align(128))]
#[derive(Debug)]
struct ProducerSide {
    /// Entries pushed so far (the producer's alone; others read it only for
    /// [`Ring::len`]).
    tail: AtomicUsize,
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
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.slots.len())
            .field("len", &self.len())
            .finish()
    }
}

// SAFETY: the slots hold `Entry`s (which are `Send`), handed from the
// producer to the consumer with release/acquire on each slot's `full` flag;
// each slot is accessed by one side at a time (see `push` and `pop`).
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
            },
            consumer: ConsumerSide {
                head: AtomicUsize::new(0),
            },
            slots: (0..want)
                .map(|_| Slot {
                    full: AtomicBool::new(false),
                    entry: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            mask: want - 1,
        }
    }

    /// Entries in the ring now (a snapshot, from either side).
    pub(crate) fn len(&self) -> usize {
        let head = self.consumer.head.load(Ordering::Acquire);
        let tail = self.producer.tail.load(Ordering::Acquire);
        tail.wrapping_sub(head)
    }

    /// Whether the ring is empty: its next entry to read is not there yet.
    /// From any thread; "not empty" means the ring held an entry at some
    /// moment of the call.
    pub(crate) fn is_empty(&self) -> bool {
        let head = self.consumer.head.load(Ordering::Acquire);
        !self.slots[head & self.mask].full.load(Ordering::Acquire)
    }

    /// Producer side: whether a push would fit (the consumer has read the
    /// slot the next push writes). Call under the queue lock.
    pub(crate) fn has_room(&self) -> bool {
        let tail = self.producer.tail.load(Ordering::Relaxed);
        // Pairs with `pop`'s release: the entry was read out of the slot.
        !self.slots[tail & self.mask].full.load(Ordering::Acquire)
    }

    /// Producer side: appends `e`. Call under the queue lock, after
    /// [`has_room`](Self::has_room) said yes.
    pub(crate) fn push(&self, e: Entry) {
        let tail = self.producer.tail.load(Ordering::Relaxed);
        let slot = &self.slots[tail & self.mask];
        debug_assert!(!slot.full.load(Ordering::Acquire));
        slot.entry.with_mut(|p| {
            // SAFETY: the slot is not full, so the consumer is done with it
            // (it cleared `full` after reading, and `has_room` acquired
            // that), and only the producer, which the queue lock makes
            // unique, writes slots.
            unsafe { (*p).write(e) };
        });
        // Publishes the entry to the consumer.
        slot.full.store(true, Ordering::Release);
        self.producer
            .tail
            .store(tail.wrapping_add(1), Ordering::Release);
    }

    /// Consumer side: takes the oldest entry. Call under the consumer's
    /// receive lock (or once nothing can push any more).
    pub(crate) fn pop(&self) -> Option<Entry> {
        let head = self.consumer.head.load(Ordering::Relaxed);
        let slot = &self.slots[head & self.mask];
        // Pairs with `push`'s release: the entry is visible.
        if !slot.full.load(Ordering::Acquire) {
            return None;
        }
        let e = slot.entry.with_mut(|p| {
            // SAFETY: the slot is full: the producer wrote it and will not
            // touch it again until `full` is cleared; the receive lock makes
            // this the only reader.
            unsafe { (*p).assume_init_read() }
        });
        // Hands the slot back to the producer.
        slot.full.store(false, Ordering::Release);
        self.consumer
            .head
            .store(head.wrapping_add(1), Ordering::Release);
        Some(e)
    }
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
    use crate::message::{Content, Message};

    fn entry(seq: u64, body: &Bytes) -> Entry {
        let mut m = Message::new(body.clone());
        Entry::new(
            Content::new("x", "k", &mut m, Vec::new()),
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
    fn entries_come_out_in_order_across_many_wraps() {
        let body = Bytes::from(vec![7u8; 16]);
        let ring = Ring::for_prefetch(4);
        let (mut pushed, mut popped) = (0u64, 0u64);
        for round in 0..1000u64 {
            // Fill by a varying amount, then drain part of it.
            while ring.has_room() && pushed < popped + 1 + round % 4 {
                ring.push(entry(pushed, &body));
                pushed += 1;
            }
            assert_eq!(ring.len() as u64, pushed - popped);
            for _ in 0..=(round % 3) {
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
        ring.push(entry(0, &body));
        ring.push(entry(1, &body));
        assert!(!ring.has_room());
        assert_eq!(ring.pop().map(|e| e.seq()), Some(0));
        assert!(ring.has_room());
        ring.push(entry(2, &body));
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
            ring.push(entry(seq, &body));
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
