//! Fanout to 10 queues and headers-exchange routing, each against a baseline
//! in the same run:
//! - fanout: sending a `Bytes` clone into 10 `crossbeam-channel`s and
//!   draining them, vs publishing through a fanout exchange bound to 10 queues
//!   and purging them;
//! - headers, with 100 and with 1,000 bindings: a linear scan of binding
//!   tables with plain structural equality (no RabbitMQ type coercion), vs
//!   warren's indexed headers exchange routing (and enqueueing) the same
//!   messages.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use warren::{
    AMQPValue, BasicProperties, Broker, ExchangeKind, FieldTable, Message, QueueDeclareOptions,
};

const BATCH: usize = 1_000;
const BODY: &[u8; 16] = b"0123456789abcdef";

fn fanout_broker() -> Broker {
    let b = Broker::new();
    b.declare_exchange("fan", ExchangeKind::Fanout, Default::default())
        .expect("declare");
    for i in 0..10 {
        let q = format!("q{i}");
        b.declare_queue(&q, QueueDeclareOptions::default())
            .expect("declare");
        b.bind_queue(&q, "fan", "", &FieldTable::new())
            .expect("bind");
    }
    b
}

fn warren_fanout(b: &Broker) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        b.publish("fan", "", Bytes::from_static(BODY))
            .expect("publish");
    }
    for i in 0..10 {
        b.purge_queue(&format!("q{i}")).expect("purge");
    }
    start.elapsed()
}

fn crossbeam_fanout(
    chans: &[(
        crossbeam_channel::Sender<Bytes>,
        crossbeam_channel::Receiver<Bytes>,
    )],
) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        let body = Bytes::from_static(BODY);
        for (tx, _) in chans {
            tx.send(body.clone()).expect("open");
        }
    }
    for (_, rx) in chans {
        std::hint::black_box(rx.try_iter().count());
    }
    start.elapsed()
}

/// `n` bindings `{format: f<i%10>, region: r<i/10>}` (x-match all), one
/// queue each, and messages carrying three headers (`format`, `region` and
/// `size`), each matching exactly one binding.
fn headers_setup(n: usize) -> (Broker, Vec<FieldTable>, Vec<Message>) {
    let b = Broker::new();
    b.declare_exchange("hdr", ExchangeKind::Headers, Default::default())
        .expect("declare");
    let mut tables = Vec::new();
    let regions = n / 10;
    for i in 0..n {
        let q = format!("h{i}");
        b.declare_queue(&q, QueueDeclareOptions::default())
            .expect("declare");
        let t = FieldTable::new()
            .with("x-match", "all")
            .with("format", format!("f{}", i % 10))
            .with("region", format!("r{}", i / 10));
        b.bind_queue(&q, "hdr", "", &t).expect("bind");
        tables.push(t);
    }
    let messages = (0..BATCH)
        .map(|i| {
            let h = FieldTable::new()
                .with("format", format!("f{}", i % 10))
                .with("region", format!("r{}", (i / 7) % regions))
                .with("size", i as i64);
            Message::new(Bytes::from_static(BODY))
                .with_properties(BasicProperties::default().with_headers(h))
        })
        .collect();
    (b, tables, messages)
}

fn warren_headers(b: &Broker, n: usize, messages: &[Message]) -> Duration {
    let start = Instant::now();
    for m in messages {
        b.publish("hdr", "", m.clone()).expect("publish");
    }
    let elapsed = start.elapsed();
    for i in 0..n {
        b.purge_queue(&format!("h{i}")).expect("purge");
    }
    elapsed
}

/// The naive matcher: every binding, every argument, structural equality.
fn linear_headers(tables: &[FieldTable], messages: &[Message]) -> Duration {
    let start = Instant::now();
    let mut hits = 0usize;
    for m in messages {
        let h = m.properties.headers.as_ref();
        // Cloning the message stands in for the publish's copy, as on warren's side.
        let m2 = std::hint::black_box(m.clone());
        for t in tables {
            let all = t
                .iter()
                .filter(|(k, _)| !k.starts_with("x-"))
                .all(|(k, v)| {
                    h.and_then(|h| h.get(k))
                        .is_some_and(|hv| hv == v || matches!(v, AMQPValue::Void))
                });
            hits += usize::from(all);
        }
        drop(m2);
    }
    std::hint::black_box(hits);
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout10");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    let chans: Vec<_> = (0..10).map(|_| crossbeam_channel::unbounded()).collect();
    g.bench_function("crossbeam_10_channels", |b| {
        b.iter_custom(|n| (0..n).map(|_| crossbeam_fanout(&chans)).sum())
    });
    let fb = fanout_broker();
    g.bench_function("warren_fanout_exchange", |b| {
        b.iter_custom(|n| (0..n).map(|_| warren_fanout(&fb)).sum())
    });
    g.finish();

    for n in HEADERS_BINDINGS {
        let mut g = c.benchmark_group(format!("headers{n}"));
        g.throughput(Throughput::Elements(BATCH as u64));
        g.sample_size(20);
        let (hb, tables, messages) = headers_setup(n);
        g.bench_function("linear_scan", |b| {
            b.iter_custom(|k| (0..k).map(|_| linear_headers(&tables, &messages)).sum())
        });
        g.bench_function("warren_headers_exchange", |b| {
            b.iter_custom(|k| (0..k).map(|_| warren_headers(&hb, n, &messages)).sum())
        });
        g.finish();
    }
}

/// The headers cases: how many bindings the exchange holds.
const HEADERS_BINDINGS: [usize; 2] = [100, 1_000];

criterion_group!(benches, bench);

fn main() {
    benches();
    let rounds = if common::quick() { 1 } else { 21 };
    let chans: Vec<_> = (0..10).map(|_| crossbeam_channel::unbounded()).collect();
    let fb = fanout_broker();
    let (raw, ours) =
        common::interleaved(rounds, || crossbeam_fanout(&chans), || warren_fanout(&fb));
    let per = |d: Duration| d.as_nanos() as f64 / BATCH as f64;
    println!(
        "fanout10: crossbeam {:.0} ns/msg, warren {:.0} ns/msg (medians of {rounds}); warren/crossbeam time = {:.2}x",
        per(raw),
        per(ours),
        per(ours) / per(raw)
    );
    for n in HEADERS_BINDINGS {
        let (hb, tables, messages) = headers_setup(n);
        let (lin, ours) = common::interleaved(
            rounds,
            || linear_headers(&tables, &messages),
            || warren_headers(&hb, n, &messages),
        );
        println!(
            "headers{n}: linear scan {:.0} ns/msg, warren publish {:.0} ns/msg (medians of {rounds}); speedup = {:.2}x",
            per(lin),
            per(ours),
            per(lin) / per(ours)
        );
    }
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
