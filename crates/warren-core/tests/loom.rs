//! Model checking of the queue / consumer / acknowledgement state machine
//! with [loom](https://docs.rs/loom): every interleaving (and every
//! reordering the memory model allows) of a few small scenarios, run through
//! the production code, whose primitives `src/sync.rs` swaps for loom's.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p warren-core --test loom --release -- --nocapture
//! ```
//!
//! Each model ends by settling everything and checking that
//! - no message is lost or duplicated: every published message is acked
//!   exactly once in the end, and the broker's counters conserve;
//! - no dispatch is lost: when the threads are done, a message is still ready
//!   only if every live consumer's prefetch window is full;
//! - `redelivered` is set exactly on the second and later showings;
//! - nothing deadlocks (loom fails a model whose threads all block).
//!
//! The models use no TTL and a manual clock, so the broker starts no timer
//! thread, and only `try_*` or blocking calls whose wake-up is the subject
//! of the model. Each explores every interleaving with up to 4 preemptions
//! (`LOOM_MAX_PREEMPTIONS` to change it).
//!
//! History: `ack_redispatch_vs_publisher_holding_the_lock` and
//! `publish_vs_consume_vs_ack` found a lost dispatch in an earlier
//! try-lock-or-delegate `Queue::redispatch` (a store-buffering race on its
//! `dispatch_pending` flag). Today an ack at the prefetch limit leaves the
//! dispatch owed unless the consumer has run dry, and the receiver pays it
//! when it does (`ConsumerShared::release_credit`): the
//! `owed_dispatch_*` models check that hand-over. A consumer the dispatcher
//! found at its limit calls it back after a batch of answers, or when it
//! runs dry: `starved_consumer_calls_back_when_it_runs_dry` checks that
//! second hand-over.
#![cfg(loom)]

use std::sync::atomic::{AtomicUsize, Ordering};

use loom::thread;
use warren_core::{
    Broker, BrokerOptions, ConsumeOptions, Consumer, Delivery, ManualClock, Overflow,
    QueueDeclareOptions, TryRecvError,
};

/// Runs a model; prints how many executions loom explored.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        // Bugs need few preemptions to show (the CHESS result); the bound
        // keeps the whole file to seconds. `LOOM_MAX_PREEMPTIONS` overrides
        // (6 takes minutes, and passes).
        builder.preemption_bound = Some(4);
    }
    // Scheduling points per execution: setup through the broker's API takes
    // more than loom's default of 1000.
    builder.max_branches = builder.max_branches.max(20_000);
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    eprintln!(
        "loom model {name}: {} executions explored, all passed",
        runs.load(Ordering::Relaxed)
    );
}

fn broker(queue: QueueDeclareOptions) -> Broker {
    let b = Broker::with_options(BrokerOptions {
        clock: Some(ManualClock::new()),
        ..Default::default()
    });
    b.declare_queue("q", queue).unwrap();
    b
}

fn publish(b: &Broker, id: u8) {
    let out = b.try_publish("", "q", vec![id]).unwrap();
    assert_eq!(out.routed, 1);
}

fn consume(b: &Broker, prefetch: u32) -> Consumer {
    b.consume(
        "q",
        ConsumeOptions {
            prefetch,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Drives a future on this loom thread, parking between polls: a lost
/// wake-up leaves it parked forever, which loom reports as a deadlock.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// What the application saw: (message id, redelivered) per showing, and the
/// ids it acked.
#[derive(Default)]
struct Seen {
    shown: Vec<(u8, bool)>,
    acked: Vec<u8>,
}

impl Seen {
    fn show(&mut self, d: &Delivery) {
        self.shown.push((d.body()[0], d.redelivered()));
    }

    fn ack(&mut self, d: Delivery) {
        self.acked.push(d.body()[0]);
        d.ack();
    }

    fn merge(&mut self, other: Seen) {
        self.shown.extend(other.shown);
        self.acked.extend(other.acked);
    }
}

/// The end of every model: checks that no dispatch was lost, then answers
/// and drops everything and checks that each of the `n` messages was acked
/// exactly once, with `redelivered` right, and the counters conserve.
///
/// `live` are consumers still subscribed, with their prefetch and how many
/// of their deliveries the model still holds unanswered; `cancelled` are
/// consumers that may still hold dispatched deliveries.
fn settle(
    b: &Broker,
    n: u8,
    live: Vec<(Consumer, u32, Vec<Delivery>)>,
    cancelled: Vec<Consumer>,
    mut seen: Seen,
) {
    let mut out: Vec<Delivery> = Vec::new();
    let mut full = true;
    for (c, prefetch, held) in &live {
        let mut outstanding = held.len();
        while let Ok(d) = c.try_recv() {
            seen.show(&d);
            out.push(d);
            outstanding += 1;
        }
        if *prefetch == 0 {
            full = false; // no window: never full
        } else {
            assert!(outstanding <= *prefetch as usize, "prefetch exceeded");
            full &= outstanding == *prefetch as usize;
        }
    }
    // `queue_stats` runs any dispatch still owed; a receiver that reported
    // Empty must have been paid already, so nothing new may arrive after it.
    let ready = b.queue_stats("q").unwrap().ready;
    assert!(
        ready == 0 || full,
        "lost dispatch: {ready} ready while a consumer has credit"
    );
    for (c, _, _) in &live {
        assert!(
            matches!(c.try_recv(), Err(TryRecvError::Empty)),
            "lost dispatch: a consumer that ran dry was not refilled"
        );
    }
    for c in &cancelled {
        loop {
            match c.try_recv() {
                Ok(d) => {
                    seen.show(&d);
                    out.push(d);
                }
                Err(TryRecvError::Cancelled) => break,
                Err(TryRecvError::Empty) => panic!("a cancelled consumer reports Empty"),
            }
        }
    }
    for (c, _, held) in live {
        out.extend(held);
        drop(c);
    }
    drop(cancelled);
    for d in out {
        seen.ack(d);
    }
    while let Some(d) = b.get("q", Default::default()).unwrap() {
        seen.show(&d);
        seen.ack(d);
    }
    let mut acked = seen.acked.clone();
    acked.sort_unstable();
    assert_eq!(acked, (0..n).collect::<Vec<_>>(), "each message acked once");
    for id in 0..n {
        let first = seen.shown.iter().filter(|&&(i, r)| i == id && !r).count();
        assert_eq!(first, 1, "message {id}: {:?}", seen.shown);
    }
    let t = b.totals();
    assert_eq!((t.enqueued, t.acked), (u64::from(n), u64::from(n)), "{t:?}");
    assert_eq!((t.ready, t.unacked, t.consumers), (0, 0, 0), "{t:?}");
}

#[test]
fn publish_vs_consume_vs_ack() {
    // A publisher and a consumer at prefetch 1 that acks what it gets: the
    // ack at the limit restarts dispatch, perhaps while the publisher holds
    // the queue lock.
    model("publish_vs_consume_vs_ack", || {
        let b = broker(Default::default());
        let c = consume(&b, 1);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || {
                publish(&b, 0);
                publish(&b, 1);
            })
        };
        let consumer = thread::spawn(move || {
            let mut seen = Seen::default();
            for _ in 0..2 {
                if let Ok(d) = c.try_recv() {
                    seen.show(&d);
                    seen.ack(d);
                }
            }
            (c, seen)
        });
        publisher.join().unwrap();
        let (c, seen) = consumer.join().unwrap();
        settle(&b, 2, vec![(c, 1, vec![])], vec![], seen);
    });
}

#[test]
fn publish_vs_consumer_drop_vs_ack() {
    // Consumer A holds a shown delivery; one thread publishes (to A or B),
    // one drops A (its unshown inbox goes back, unmarked), one acks the
    // shown delivery after its consumer may be gone.
    model("publish_vs_consumer_drop_vs_ack", || {
        let b = broker(Default::default());
        publish(&b, 0);
        let a = consume(&b, 2);
        let d0 = a.try_recv().unwrap();
        let mut seen = Seen::default();
        seen.show(&d0);
        let bc = consume(&b, 1);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || publish(&b, 1))
        };
        let dropper = thread::spawn(move || drop(a));
        let acker = thread::spawn(move || {
            let mut seen = Seen::default();
            seen.ack(d0);
            seen
        });
        publisher.join().unwrap();
        dropper.join().unwrap();
        seen.merge(acker.join().unwrap());
        settle(&b, 2, vec![(bc, 1, vec![])], vec![], seen);
    });
}

#[test]
fn delivery_drop_requeue_vs_publish() {
    // A delivery dropped unanswered goes back marked redelivered while a
    // publisher adds another message and a second consumer waits for work.
    model("delivery_drop_requeue_vs_publish", || {
        let b = broker(Default::default());
        publish(&b, 0);
        let a = consume(&b, 1);
        let d0 = a.try_recv().unwrap();
        let mut seen = Seen::default();
        seen.show(&d0);
        let bc = consume(&b, 1);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || publish(&b, 1))
        };
        let dropper = thread::spawn(move || drop(d0));
        publisher.join().unwrap();
        dropper.join().unwrap();
        settle(&b, 2, vec![(a, 1, vec![]), (bc, 1, vec![])], vec![], seen);
    });
}

#[test]
fn nack_requeue_vs_cancel() {
    // A's delivery is nacked with requeue while A is cancelled: the message
    // goes back to A (if it still subscribes), to B, or waits in the queue
    // only if B is full.
    model("nack_requeue_vs_cancel", || {
        let b = broker(Default::default());
        publish(&b, 0);
        let a = std::sync::Arc::new(consume(&b, 1));
        let d0 = a.try_recv().unwrap();
        let mut seen = Seen::default();
        seen.show(&d0);
        let bc = consume(&b, 1);
        let nacker = thread::spawn(move || d0.nack(true));
        let canceller = {
            let a = a.clone();
            thread::spawn(move || a.cancel())
        };
        nacker.join().unwrap();
        canceller.join().unwrap();
        let a = std::sync::Arc::into_inner(a).unwrap();
        settle(&b, 1, vec![(bc, 1, vec![])], vec![a], seen);
    });
}

#[test]
fn two_consumers_prefetch_1_acks_race_redispatch() {
    // Both consumers are at their limit with a message waiting; both ack at
    // once. Each ack restarts dispatch with the try-lock-or-delegate
    // `redispatch`: one runs the dispatch, the other may leave its share to
    // it, and the waiting message must reach a freed consumer.
    model("two_consumers_prefetch_1_acks_race_redispatch", || {
        let b = broker(Default::default());
        for id in 0..3 {
            publish(&b, id);
        }
        let a = consume(&b, 1);
        let bc = consume(&b, 1);
        let mut seen = Seen::default();
        let da = a.try_recv().unwrap();
        let db = bc.try_recv().unwrap();
        seen.show(&da);
        seen.show(&db);
        let acker_a = thread::spawn(move || {
            let mut seen = Seen::default();
            seen.ack(da);
            seen
        });
        let acker_b = thread::spawn(move || {
            let mut seen = Seen::default();
            seen.ack(db);
            seen
        });
        seen.merge(acker_a.join().unwrap());
        seen.merge(acker_b.join().unwrap());
        settle(&b, 3, vec![(a, 1, vec![]), (bc, 1, vec![])], vec![], seen);
    });
}

#[test]
fn ack_redispatch_vs_publisher_holding_the_lock() {
    // A consumer at its limit acks while a publisher holds the queue lock:
    // the dispatch it delegates must be run by the publisher as it unlocks.
    model("ack_redispatch_vs_publisher_holding_the_lock", || {
        let b = broker(Default::default());
        publish(&b, 0);
        publish(&b, 1);
        let a = consume(&b, 1);
        let mut seen = Seen::default();
        let d0 = a.try_recv().unwrap();
        seen.show(&d0);
        let acker = thread::spawn(move || {
            let mut seen = Seen::default();
            seen.ack(d0);
            seen
        });
        let publisher = {
            let b = b.clone();
            thread::spawn(move || publish(&b, 2))
        };
        seen.merge(acker.join().unwrap());
        publisher.join().unwrap();
        settle(&b, 3, vec![(a, 1, vec![])], vec![], seen);
    });
}

#[test]
fn owed_dispatch_ack_vs_receiver_running_dry() {
    // A consumer at its limit (2) whose ring (2 slots) is full: the rest of
    // the queue is owed to it. The ack leaves the dispatch owed while the
    // receiver still has a copy to take; the receiver takes it and then
    // waits for the next. Either the ack sees the ring empty and
    // dispatches, or the receiver sees the debt and pays it.
    ack_vs_receiver_running_dry("owed_dispatch_ack_vs_receiver_running_dry", 3, 2);
}

#[test]
fn starved_consumer_calls_back_when_it_runs_dry() {
    // A consumer at its limit (3) with room in its ring (4 slots): the
    // dispatcher marks it starved and stops reading its answers until it
    // calls back, after a whole window of answers under loom, or as soon as
    // its receiver has nothing left. Either the ack sees the ring empty and
    // calls back, or the receiver, running dry, sees the ack and calls back.
    ack_vs_receiver_running_dry("starved_consumer_calls_back_when_it_runs_dry", 4, 3);
}

/// `n` messages for a consumer with window `prefetch` = `n - 1`: the model
/// takes the first delivery, then one thread acks it while another receives
/// the rest with blocking `recv`s and acks them. If the ack and the
/// receiver running dry both missed each other, the last `recv` would never
/// return (loom reports the deadlock).
fn ack_vs_receiver_running_dry(name: &str, n: u8, prefetch: u32) {
    model(name, move || {
        let b = broker(Default::default());
        for id in 0..n {
            publish(&b, id);
        }
        let c = consume(&b, prefetch);
        let mut seen = Seen::default();
        let d0 = c.try_recv().unwrap();
        seen.show(&d0);
        let acker = thread::spawn(move || {
            let mut seen = Seen::default();
            seen.ack(d0);
            seen
        });
        let receiver = thread::spawn(move || {
            let mut seen = Seen::default();
            let mut held = Vec::new();
            for _ in 1..n {
                let d = c.recv().unwrap();
                seen.show(&d);
                held.push(d);
            }
            for d in held {
                seen.ack(d);
            }
            (c, seen)
        });
        seen.merge(acker.join().unwrap());
        let (c, r) = receiver.join().unwrap();
        seen.merge(r);
        settle(&b, n, vec![(c, prefetch, vec![])], vec![], seen);
    });
}

#[test]
fn full_ring_refills_when_the_receiver_runs_dry() {
    // No prefetch window: the consumer's ring (2 slots under loom) fills and
    // the rest waits in the queue, owed to the receiver, which takes it when
    // it runs dry, while a publisher adds one more. A blocking `recv` that
    // nobody refills is a deadlock loom reports.
    model("full_ring_refills_when_the_receiver_runs_dry", || {
        let b = broker(Default::default());
        for id in 0..3 {
            publish(&b, id);
        }
        let c = consume(&b, 0);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || publish(&b, 3))
        };
        let receiver = thread::spawn(move || {
            let mut seen = Seen::default();
            for _ in 0..4 {
                let d = c.recv().unwrap();
                seen.show(&d);
                seen.ack(d);
            }
            (c, seen)
        });
        publisher.join().unwrap();
        let (c, seen) = receiver.join().unwrap();
        settle(&b, 4, vec![(c, 0, vec![])], vec![], seen);
    });
}

#[test]
fn owed_dispatch_async_receiver() {
    // The same hand-over through `recv_async`'s poll: a waker registered on
    // an empty inbox must be woken by the dispatch the ack makes possible.
    model("owed_dispatch_async_receiver", || {
        let b = broker(Default::default());
        for id in 0..3 {
            publish(&b, id);
        }
        let c = consume(&b, 2);
        let mut seen = Seen::default();
        let d0 = c.try_recv().unwrap();
        let d1 = c.try_recv().unwrap();
        seen.show(&d0);
        seen.show(&d1);
        let acker = thread::spawn(move || {
            let mut seen = Seen::default();
            seen.ack(d0);
            seen
        });
        let d2 = block_on(c.recv_async()).unwrap();
        seen.show(&d2);
        seen.merge(acker.join().unwrap());
        settle(&b, 3, vec![(c, 2, vec![d1, d2])], vec![], seen);
    });
}

#[test]
fn blocking_recv_wakes_on_publish() {
    // A receiver parked in `recv` is woken by the publish that fills its
    // inbox (loom reports a deadlock if the wake-up is lost).
    model("blocking_recv_wakes_on_publish", || {
        let b = broker(Default::default());
        let c = consume(&b, 1);
        let receiver = thread::spawn(move || {
            let mut seen = Seen::default();
            let d = c.recv().unwrap();
            seen.show(&d);
            seen.ack(d);
            (c, seen)
        });
        publish(&b, 0);
        let (c, seen) = receiver.join().unwrap();
        settle(&b, 1, vec![(c, 1, vec![])], vec![], seen);
    });
}

#[test]
fn blocking_recv_vs_cancel_vs_publish() {
    // A parked receiver returns whatever happens first: the message, or the
    // cancellation (then the message stays in the queue).
    model("blocking_recv_vs_cancel_vs_publish", || {
        let b = broker(Default::default());
        let c = std::sync::Arc::new(consume(&b, 1));
        let receiver = {
            let c = c.clone();
            thread::spawn(move || {
                let mut seen = Seen::default();
                if let Ok(d) = c.recv() {
                    seen.show(&d);
                    seen.ack(d);
                }
                seen
            })
        };
        let canceller = {
            let c = c.clone();
            thread::spawn(move || c.cancel())
        };
        publish(&b, 0);
        let seen = receiver.join().unwrap();
        canceller.join().unwrap();
        let c = std::sync::Arc::into_inner(c).unwrap();
        settle(&b, 1, vec![], vec![c], seen);
    });
}

#[test]
fn blocked_publisher_wakes_when_room_frees() {
    // `block` overflow: a publisher parked on a full queue is woken when a
    // `get` takes the head (a lost wake-up is a deadlock here: under loom a
    // timed park waits for its unpark).
    model("blocked_publisher_wakes_when_room_frees", || {
        let b = broker(
            QueueDeclareOptions::default()
                .with_max_length(1)
                .with_overflow(Overflow::Block),
        );
        publish(&b, 0);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || {
                assert_eq!(b.publish("", "q", vec![1u8]).unwrap().routed, 1);
            })
        };
        let mut seen = Seen::default();
        let d = b.get("q", Default::default()).unwrap().unwrap();
        seen.show(&d);
        seen.ack(d);
        publisher.join().unwrap();
        settle(&b, 2, vec![], vec![], seen);
    });
}

#[test]
fn two_receivers_share_one_consumer() {
    // Two threads receive from one `Consumer` (receivers take turns under
    // its receive lock, a spin lock released with a plain store): each
    // message is received once, with a tag of its own, while a third
    // thread publishes.
    model("two_receivers_share_one_consumer", || {
        let b = broker(Default::default());
        let c = std::sync::Arc::new(consume(&b, 2));
        publish(&b, 0);
        let publisher = {
            let b = b.clone();
            thread::spawn(move || publish(&b, 1))
        };
        let receivers: Vec<_> = (0..2)
            .map(|_| {
                let c = c.clone();
                thread::spawn(move || c.try_recv().ok())
            })
            .collect();
        publisher.join().unwrap();
        let mut seen = Seen::default();
        let mut tags = Vec::new();
        for r in receivers {
            if let Some(d) = r.join().unwrap() {
                seen.show(&d);
                tags.push(d.delivery_tag());
                seen.ack(d);
            }
        }
        while let Ok(d) = c.try_recv() {
            seen.show(&d);
            tags.push(d.delivery_tag());
            seen.ack(d);
        }
        tags.sort_unstable();
        assert_eq!(tags, [1, 2], "each delivery has a tag of its own");
        let c = std::sync::Arc::into_inner(c).unwrap();
        settle(&b, 2, vec![(c, 2, vec![])], vec![], seen);
    });
}
