//! The conservation law of `stats.rs`, checked over random operation
//! sequences: every copy a queue accepted is, at every moment, in exactly one
//! place (ready, unacked, acked, discarded, dropped, expired, purged,
//! deleted), for every live queue and summed over every queue the broker ever
//! had. And every accepted copy came from a publish or a dead letter.
//!
//! `CONSERVATION_CASES=20000 cargo test --release --test conservation` runs a
//! longer search than the default 64 cases.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use warren_core::{
    BasicProperties, Broker, BrokerOptions, ConsumeOptions, Consumer, Delivery, ExchangeKind,
    FieldTable, GetOptions, ManualClock, Message, Overflow, PublishError, QueueDeclareOptions,
    QueueStats,
};

/// Work queues the operations act on; "dead" is the dead-letter queue behind
/// the fanout exchange "dlx", which operations never delete.
const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
const DEAD: &str = "dead";

#[derive(Clone, Debug)]
enum Dlx {
    None,
    /// The fanout exchange "dlx", whose only queue is "dead".
    Fanout,
    /// The default exchange with this work queue's name as the key (possibly
    /// the queue itself: a cycle).
    Default(usize),
}

#[derive(Clone, Debug)]
struct QueueSpec {
    max_length: Option<u64>,
    max_bytes: Option<u64>,
    overflow: Overflow,
    ttl: Option<u64>,
    expires: Option<u64>,
    dlx: Dlx,
    auto_delete: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Declare(usize, QueueSpec),
    Bind(usize, usize),
    Publish {
        exchange: usize,
        key: usize,
        size: usize,
        expiration: Option<u64>,
    },
    Consume {
        queue: usize,
        prefetch: u32,
        no_ack: bool,
    },
    Recv(Index),
    Get(usize, bool),
    Ack(Index),
    Nack(Index, bool),
    Reject(Index, bool),
    DropDelivery(Index),
    Cancel(Index),
    DropConsumer(Index),
    Purge(usize),
    Delete(usize),
    Advance(u64),
}

fn overflow() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        Just(Overflow::DropHead),
        Just(Overflow::RejectPublish),
        Just(Overflow::RejectPublishDlx),
        Just(Overflow::Block),
    ]
}

fn spec() -> impl Strategy<Value = QueueSpec> {
    (
        proptest::option::weighted(0.5, 0u64..4),
        proptest::option::weighted(0.2, 0u64..12),
        overflow(),
        proptest::option::weighted(0.3, 0u64..40),
        proptest::option::weighted(0.15, 1u64..60),
        prop_oneof![
            Just(Dlx::None),
            Just(Dlx::Fanout),
            (0..QUEUES.len()).prop_map(Dlx::Default)
        ],
        proptest::bool::weighted(0.15),
    )
        .prop_map(
            |(max_length, max_bytes, overflow, ttl, expires, dlx, auto_delete)| QueueSpec {
                max_length,
                max_bytes,
                overflow,
                ttl,
                expires,
                dlx,
                auto_delete,
            },
        )
}

/// Queues a consumer or get may use: the work queues and "dead".
fn any_queue() -> impl Strategy<Value = usize> {
    0..=QUEUES.len()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..QUEUES.len(), spec()).prop_map(|(q, s)| Op::Declare(q, s)),
        1 => (0..QUEUES.len(), 0usize..3).prop_map(|(q, k)| Op::Bind(q, k)),
        6 => (0usize..3, 0usize..5, 0usize..6, proptest::option::weighted(0.3, 0u64..30))
            .prop_map(|(exchange, key, size, expiration)| Op::Publish {
                exchange,
                key,
                size,
                expiration
            }),
        2 => (any_queue(), 0u32..4, proptest::bool::weighted(0.2))
            .prop_map(|(queue, prefetch, no_ack)| Op::Consume { queue, prefetch, no_ack }),
        4 => any::<Index>().prop_map(Op::Recv),
        2 => (any_queue(), any::<bool>()).prop_map(|(q, n)| Op::Get(q, n)),
        3 => any::<Index>().prop_map(Op::Ack),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(i, r)| Op::Nack(i, r)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, r)| Op::Reject(i, r)),
        1 => any::<Index>().prop_map(Op::DropDelivery),
        1 => any::<Index>().prop_map(Op::Cancel),
        1 => any::<Index>().prop_map(Op::DropConsumer),
        1 => any_queue().prop_map(Op::Purge),
        1 => (0..QUEUES.len()).prop_map(Op::Delete),
        2 => (0u64..30).prop_map(Op::Advance),
    ]
}

fn queue_name(i: usize) -> &'static str {
    QUEUES.get(i).copied().unwrap_or(DEAD)
}

fn declare_options(s: &QueueSpec) -> QueueDeclareOptions {
    let mut o = QueueDeclareOptions {
        auto_delete: s.auto_delete,
        ..Default::default()
    };
    if let Some(n) = s.max_length {
        o = o.with_max_length(n);
    }
    if let Some(n) = s.max_bytes {
        o = o.with_max_length_bytes(n);
    }
    if s.max_length.is_some() || s.max_bytes.is_some() {
        o = o.with_overflow(s.overflow);
    }
    if let Some(ms) = s.ttl {
        o = o.with_message_ttl(ms);
    }
    if let Some(ms) = s.expires {
        o = o.with_expires(ms);
    }
    match s.dlx {
        Dlx::None => {}
        Dlx::Fanout => o = o.with_dead_letter("dlx", None),
        Dlx::Default(j) => o = o.with_dead_letter("", Some(QUEUES[j])),
    }
    o
}

fn conserved(s: &QueueStats) -> bool {
    s.enqueued
        == s.ready
            + s.unacked
            + s.acked
            + s.discarded
            + s.dropped
            + s.expired
            + s.purged
            + s.deleted
}

struct World {
    broker: Broker,
    clock: ManualClock,
    consumers: Vec<Consumer>,
    deliveries: Vec<Delivery>,
    /// Sum of `Published::routed` over this test's own publishes.
    routed: u64,
    /// Whether any queue was ever declared with the default exchange as its
    /// dead-letter exchange (then dead letters also land in work queues).
    default_dlx_used: bool,
}

impl World {
    fn new() -> World {
        let clock = ManualClock::new();
        let broker = Broker::with_options(BrokerOptions {
            clock: Some(clock.clone()),
            ..Default::default()
        });
        broker
            .declare_exchange("dlx", ExchangeKind::Fanout, Default::default())
            .unwrap();
        broker
            .declare_queue(DEAD, QueueDeclareOptions::default())
            .unwrap();
        broker
            .bind_queue(DEAD, "dlx", "", &FieldTable::new())
            .unwrap();
        World {
            broker,
            clock,
            consumers: Vec::new(),
            deliveries: Vec::new(),
            routed: 0,
            default_dlx_used: false,
        }
    }

    fn take_delivery(&mut self, i: Index) -> Option<Delivery> {
        if self.deliveries.is_empty() {
            None
        } else {
            let at = i.index(self.deliveries.len());
            Some(self.deliveries.swap_remove(at))
        }
    }

    fn apply(&mut self, op: Op) {
        let b = &self.broker;
        match op {
            Op::Declare(q, s) => {
                if matches!(s.dlx, Dlx::Default(_)) {
                    self.default_dlx_used = true;
                }
                // An inequivalent redeclare is refused (406): fine.
                let _ = b.declare_queue(QUEUES[q], declare_options(&s));
            }
            Op::Bind(q, k) => {
                let (x, key) = match k {
                    0 => ("amq.direct", "a"),
                    1 => ("amq.direct", "b"),
                    _ => ("amq.fanout", ""),
                };
                let _ = b.bind_queue(QUEUES[q], x, key, &FieldTable::new());
            }
            Op::Publish {
                exchange,
                key,
                size,
                expiration,
            } => {
                let x = ["", "amq.direct", "amq.fanout"][exchange];
                let key = ["q0", "q1", "q2", "a", "b"][key];
                let mut props = BasicProperties::default();
                if let Some(ms) = expiration {
                    props = props.with_expiration(ms.to_string());
                }
                let m = Message::new(vec![b'x'; size]).with_properties(props);
                match b.try_publish(x, key, m) {
                    Ok(out) => self.routed += u64::from(out.routed),
                    Err(PublishError::Full(_)) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            Op::Consume {
                queue,
                prefetch,
                no_ack,
            } => {
                let o = ConsumeOptions {
                    prefetch,
                    no_ack,
                    ..Default::default()
                };
                if let Ok(c) = b.consume(queue_name(queue), o) {
                    self.consumers.push(c);
                }
            }
            Op::Recv(i) => {
                if !self.consumers.is_empty() {
                    let c = &self.consumers[i.index(self.consumers.len())];
                    if let Ok(d) = c.try_recv() {
                        self.deliveries.push(d);
                    }
                }
            }
            Op::Get(q, no_ack) => {
                let o = GetOptions {
                    no_ack,
                    ..Default::default()
                };
                if let Ok(Some(d)) = b.get(queue_name(q), o) {
                    self.deliveries.push(d);
                }
            }
            Op::Ack(i) => {
                if let Some(d) = self.take_delivery(i) {
                    d.ack();
                }
            }
            Op::Nack(i, requeue) => {
                if let Some(d) = self.take_delivery(i) {
                    d.nack(requeue);
                }
            }
            Op::Reject(i, requeue) => {
                if let Some(d) = self.take_delivery(i) {
                    d.reject(requeue);
                }
            }
            Op::DropDelivery(i) => drop(self.take_delivery(i)),
            Op::Cancel(i) => {
                if !self.consumers.is_empty() {
                    self.consumers[i.index(self.consumers.len())].cancel();
                }
            }
            Op::DropConsumer(i) => {
                if !self.consumers.is_empty() {
                    let at = i.index(self.consumers.len());
                    drop(self.consumers.swap_remove(at));
                }
            }
            Op::Purge(q) => {
                let _ = b.purge_queue(queue_name(q));
            }
            Op::Delete(q) => {
                let _ = b.delete_queue(QUEUES[q], Default::default());
            }
            Op::Advance(ms) => {
                self.clock.advance(Duration::from_millis(ms));
                b.run_expiry();
            }
        }
    }

    fn check(&self, after: &str) -> Result<(), TestCaseError> {
        let b = &self.broker;
        let t = b.totals();
        prop_assert!(conserved(&t), "after {}: totals {:?}", after, t);
        for s in b.stats().queues {
            prop_assert!(conserved(&s), "after {}: queue {:?}", after, s);
        }
        let dead = b.queue_stats(DEAD).unwrap();
        // Every dead letter to "dlx" lands in "dead", which never refuses.
        prop_assert!(dead.enqueued <= t.dead_lettered, "{:?} {:?}", dead, t);
        // Every accepted copy came from a publish of ours or a dead letter.
        let from_dead_letters = t.enqueued.checked_sub(self.routed);
        prop_assert!(
            from_dead_letters.is_some_and(|n| n >= dead.enqueued && n <= t.dead_lettered),
            "after {}: enqueued {} routed {} dead {} dead_lettered {}",
            after,
            t.enqueued,
            self.routed,
            dead.enqueued,
            t.dead_lettered
        );
        if !self.default_dlx_used {
            prop_assert_eq!(t.enqueued, self.routed + dead.enqueued, "after {}", after);
            prop_assert_eq!(dead.enqueued, t.dead_lettered, "after {}", after);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CONSERVATION_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_copy_is_accounted_for(
        specs in proptest::collection::vec(spec(), QUEUES.len()),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let mut w = World::new();
        for (q, s) in specs.into_iter().enumerate() {
            w.apply(Op::Declare(q, s));
        }
        w.check("start")?;
        for (i, op) in ops.into_iter().enumerate() {
            let what = format!("op {i}: {op:?}");
            w.apply(op);
            w.check(&what)?;
        }
        // Drop everything: nothing may stay unacked.
        w.deliveries.clear();
        w.check("dropping deliveries")?;
        w.consumers.clear();
        w.check("dropping consumers")?;
        let t = w.broker.totals();
        prop_assert_eq!(t.unacked, 0, "{:?}", t);
        prop_assert_eq!(t.consumers, 0);
    }
}

#[test]
fn dead_letters_to_the_fanout_are_counted_exactly() {
    // A fixed sequence through every dead-letter reason, as a smoke test of
    // the property's bookkeeping.
    let mut w = World::new();
    let spec = QueueSpec {
        max_length: Some(1),
        max_bytes: None,
        overflow: Overflow::DropHead,
        ttl: Some(10),
        expires: None,
        dlx: Dlx::Fanout,
        auto_delete: false,
    };
    w.apply(Op::Declare(0, spec));
    for _ in 0..3 {
        w.apply(Op::Publish {
            exchange: 0,
            key: 0,
            size: 1,
            expiration: None,
        });
    }
    w.apply(Op::Get(0, false));
    w.deliveries.pop().unwrap().nack(false);
    w.apply(Op::Publish {
        exchange: 0,
        key: 0,
        size: 1,
        expiration: None,
    });
    w.apply(Op::Advance(10));
    w.check("fixed").unwrap();
    let dead = w.broker.queue_stats(DEAD).unwrap();
    assert_eq!(dead.enqueued, 4, "2 maxlen + 1 rejected + 1 expired");
}
