//! The hand-off between a queue and one of its consumers: a bounded ring of
//! queue entries with one producer and one consumer at a time.
//!
//! The producer is whoever dispatches: always under the queue's lock, so
//! pushes never race each other. The consumer is whoever receives: always
//! under the consumer's receive lock, so pops never race each other. The
//! two sides share only the slots and two indices, each index on its own
//! cache line and written by one side only; the producer keeps its own copy
//! of the consumer's index and reads the real one only when the ring looks
//! full. So a message crossing from the publishing thread to the receiving
//! thread moves the slot's line and, now and then, an index's line: no lock
//! word, no shared counter.
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
use crate::sync::{AtomicUsize, UnsafeCell};

/// The most entries a ring holds (an entry is 96 bytes). A consumer with a
/// larger prefetch window keeps the rest of its window in the queue, ready:
/// they are handed over when its receiver runs dry (see
/// `ConsumerShared::try_take_credit`).
///
/// Under the model checker it is 2, so that small models reach a full ring.
pub(crate) const MAX_CAPACITY: usize = if cfg!(loom) { 2 } else { 1024 };

/// The ring of a consumer without a prefetch window (no limit): 24 KiB, so
/// that the many consumers of an AMQP server that sets no `basic.qos` do not
/// each hold the largest ring.
const UNLIMITED_CAPACITY: usize = if cfg!(loom) { 2 } else { 256 };

#[repr(align(128))]
#[derive(Debug)]
struct ProducerSide {
    tail: AtomicUsize,
    /// The producer's last reading of `head` (only the producer uses it).
    head_seen: AtomicUsize,
}

#[repr(align(128))]
#[derive(Debug)]
struct ConsumerSide {
    head: AtomicUsize,
}

pub(crate) struct Ring {
    producer: ProducerSide,
    consumer: ConsumerSide,
    slots: Box<[UnsafeCell<MaybeUninit<Entry>>]>,
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
// producer to the consumer with release/acquire on the indices; each slot is
// accessed by one side at a time (see `push` and `pop`).
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
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
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

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Producer side: whether a push would fit. Call under the queue lock.
    pub(crate) fn has_room(&self) -> bool {
        let tail = self.producer.tail.load(Ordering::Relaxed);
        let seen = self.producer.head_seen.load(Ordering::Relaxed);
        if tail.wrapping_sub(seen) < self.slots.len() {
            return true;
        }
        // Pairs with `pop`'s release: the slot it read is free to reuse.
        let head = self.consumer.head.load(Ordering::Acquire);
        self.producer.head_seen.store(head, Ordering::Relaxed);
        tail.wrapping_sub(head) < self.slots.len()
    }

    /// Producer side: appends `e`. Call under the queue lock, after
    /// [`has_room`](Self::has_room) said yes.
    pub(crate) fn push(&self, e: Entry) {
        let tail = self.producer.tail.load(Ordering::Relaxed);
        debug_assert!(
            tail.wrapping_sub(self.consumer.head.load(Ordering::Acquire)) < self.slots.len()
        );
        self.slots[tail & self.mask].with_mut(|slot| {
            // SAFETY: the slot is outside `head..tail`, so the consumer is
            // not reading it (it released it before moving `head` past it,
            // and `has_room` acquired that), and only the producer, which
            // the queue lock makes unique, writes slots.
            unsafe { (*slot).write(e) };
        });
        // Publishes the slot to the consumer.
        self.producer
            .tail
            .store(tail.wrapping_add(1), Ordering::Release);
    }

    /// Consumer side: takes the oldest entry. Call under the consumer's
    /// receive lock (or once nothing can push any more).
    pub(crate) fn pop(&self) -> Option<Entry> {
        let head = self.consumer.head.load(Ordering::Relaxed);
        // Pairs with `push`'s release: the slot's contents are visible.
        let tail = self.producer.tail.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let e = self.slots[head & self.mask].with_mut(|slot| {
            // SAFETY: `head < tail`: the producer wrote this slot and will
            // not touch it again until `head` moves past it; the receive
            // lock makes this the only reader.
            unsafe { (*slot).assume_init_read() }
        });
        // Hands the slot back to the producer.
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
