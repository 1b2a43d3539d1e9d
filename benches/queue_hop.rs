//! A queue hop between two threads: warren's direct publish → deliver → ack of
//! a 16-byte body, against a raw `crossbeam-channel` bounded SPSC hop carrying
//! a `Bytes` (the baseline, in the same run). Target: warren ≥ 70 % of the raw
//! hop's throughput.
//!
//! `cargo bench --bench queue_hop` prints criterion's figures, then the
//! median of interleaved rounds and the ratio. The publishing (sending)
//! thread runs on one CPU and the consuming one on another, for both (see
//! `common::pin`; `WARREN_BENCH_PIN=0` leaves them to the scheduler).
//!
//! A round's clock runs from the first send to the moment the consuming
//! thread has taken (and, for warren, acked) the last message, read on that
//! thread: the hop is done then, and how soon the publishing thread's `join`
//! wakes up after it is not part of it. The baseline's clock stops the same
//! way.
//!
//! It also times one cache line's round trip between the two CPUs (a store
//! on one seen by the other, and its answer seen back), and reports each
//! hop's time per message in those round trips. A hand-off in which each
//! message waits for the other side costs about one; below that, the two
//! sides overlap. The round trip is a property of the machine and the
//! placement of its two CPUs: it moves with the machine's load (114-215 ns
//! over one day here), far less than the baseline moves with its regime.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use warren::{Broker, ConsumeOptions, FieldTable, QueueDeclareOptions};

const BATCH: u64 = 20_000;
const BODY: &[u8; 16] = b"0123456789abcdef";

/// Raw crossbeam: one producer thread, one consumer thread, bounded 1024.
fn crossbeam_hop(n: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Bytes>(1024);
    let consumer = consumer_thread(move || {
        for _ in 0..n {
            let b = rx.recv().expect("sender alive");
            std::hint::black_box(b);
        }
        Instant::now()
    });
    let start = Instant::now();
    for _ in 0..n {
        tx.send(Bytes::from_static(BODY)).expect("receiver alive");
    }
    let end = consumer.join().expect("consumer thread");
    end - start
}

/// Starts the consuming side on the second CPU and returns once it is
/// there: the clock starts then, so neither side's round counts the
/// thread's start. The publisher spins on the consumer's flag rather than
/// sleeping in a `Barrier`, and the consumer goes straight on into its
/// loop, so no round starts with a CPU waking from idle.
fn consumer_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let there = Arc::new(AtomicBool::new(false));
    let flag = there.clone();
    let handle = thread::spawn(move || {
        common::pin(1);
        flag.store(true, Ordering::Release);
        f()
    });
    while !there.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    handle
}

/// One cache line's round trip between the two CPUs: the publishing
/// thread stores a number, the consuming one waits to see it and stores the
/// next, and so on, `n` times each way. The time of one round trip.
fn line_round_trip(n: u32) -> Duration {
    #[repr(align(128))]
    struct Line(AtomicU64);
    let line = Arc::new(Line(AtomicU64::new(0)));
    let other = line.clone();
    let answerer = consumer_thread(move || {
        for i in 0..u64::from(n) {
            while other.0.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            other.0.store(2 * i + 2, Ordering::Release);
        }
    });
    let start = Instant::now();
    for i in 0..u64::from(n) {
        line.0.store(2 * i + 1, Ordering::Release);
        while line.0.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let took = start.elapsed();
    answerer.join().expect("answering thread");
    took / n
}

/// A broker with `amq.direct` bound to one queue and a consumer with
/// `prefetch` credit.
fn setup(prefetch: u32) -> (Broker, warren::Consumer) {
    let broker = Broker::new();
    broker
        .declare_queue("hop", QueueDeclareOptions::default())
        .expect("declare");
    broker
        .bind_queue("hop", "amq.direct", "hop", &FieldTable::new())
        .expect("bind");
    let consumer = broker
        .consume(
            "hop",
            ConsumeOptions {
                prefetch,
                ..Default::default()
            },
        )
        .expect("consume");
    (broker, consumer)
}

/// How warren's publishing thread publishes.
#[derive(Clone, Copy)]
enum Via {
    /// `broker.publish("amq.direct", "hop", …)`: the thread's route cache
    /// finds the route by the names on every publish.
    Broker,
    /// A `Publisher` for `amq.direct` and `hop`, which keeps its route: what
    /// a producer that always sends to one place holds, as a crossbeam
    /// `Sender` is bound to its channel.
    Publisher,
}

/// warren: publish through `amq.direct` on this thread, receive and ack on
/// another.
fn warren_hop(
    broker: &Broker,
    consumer: warren::Consumer,
    n: u64,
    via: Via,
) -> (Duration, warren::Consumer) {
    let handle = consumer_thread(move || {
        for _ in 0..n {
            let d = consumer.recv().expect("consumer alive");
            d.ack();
        }
        (Instant::now(), consumer)
    });
    let start = Instant::now();
    match via {
        Via::Broker => {
            for _ in 0..n {
                broker
                    .publish("amq.direct", "hop", Bytes::from_static(BODY))
                    .expect("publish");
            }
        }
        Via::Publisher => {
            let mut publisher = broker.publisher("amq.direct", "hop");
            for _ in 0..n {
                publisher
                    .publish(Bytes::from_static(BODY))
                    .expect("publish");
            }
        }
    }
    let (end, consumer) = handle.join().expect("consumer thread");
    (end - start, consumer)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_hop");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("crossbeam_bounded_spsc", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| crossbeam_hop(BATCH)).sum())
    });
    let (broker, consumer) = setup(1000);
    let mut slot = Some(consumer);
    for (name, via) in [
        ("warren_direct_publish_deliver_ack", Via::Broker),
        ("warren_publisher_deliver_ack", Via::Publisher),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let c = slot.take().expect("consumer");
                    let (t, c) = warren_hop(&broker, c, BATCH, via);
                    slot = Some(c);
                    total += t;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    common::pin(0);
    benches();
    let rounds = if common::quick() { 1 } else { 15 };
    let (broker, consumer) = setup(1000);
    let mut slot = Some(consumer);
    let mut hop = |via| {
        let (t, c) = warren_hop(&broker, slot.take().expect("consumer"), BATCH, via);
        slot = Some(c);
        t
    };
    // The three interleaved, so that each round of each meets the same
    // phases of the machine.
    let (mut raw, mut ours, mut bound) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw.push(crossbeam_hop(BATCH));
        ours.push(hop(Via::Broker));
        bound.push(hop(Via::Publisher));
    }
    let (raw, ours, bound) = (
        common::median(&mut raw),
        common::median(&mut ours),
        common::median(&mut bound),
    );
    let mut trips: Vec<Duration> = (0..rounds.min(5))
        .map(|_| line_round_trip(if common::quick() { 1_000 } else { 100_000 }))
        .collect();
    let trip = common::median(&mut trips);
    let rate = |d: Duration| BATCH as f64 / d.as_secs_f64();
    let per_trip = |d: Duration| d.as_secs_f64() / BATCH as f64 / trip.as_secs_f64();
    println!(
        "queue_hop: crossbeam {:.2} M msg/s; warren through broker.publish {:.2} M msg/s, through a Publisher {:.2} (medians of {rounds} interleaved rounds of {BATCH}, {}); warren/crossbeam = {:.0} % and {:.0} %",
        rate(raw) / 1e6,
        rate(ours) / 1e6,
        rate(bound) / 1e6,
        common::placement(),
        100.0 * rate(ours) / rate(raw),
        100.0 * rate(bound) / rate(raw)
    );
    println!(
        "queue_hop: a cache line's round trip between the two CPUs {:.0} ns; per message, crossbeam {:.2} round trips, warren {:.2} and {:.2}",
        trip.as_secs_f64() * 1e9,
        per_trip(raw),
        per_trip(ours),
        per_trip(bound)
    );
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
