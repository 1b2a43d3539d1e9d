//! Many threads on one work queue: publishers, and consumers that ack, nack
//! with requeue, drop deliveries, hold some across their own replacement and
//! drop and re-create their consumer. At the end every message was acked
//! exactly once, every redelivery said so, and the counters conserve.
//!
//! The soak (`soak_eight_threads_...`) adds discards to a dead-letter queue
//! and cancellation with re-subscription, over 50 000 messages.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_core::{
    Broker, ConsumeOptions, Delivery, Overflow, QueueDeclareOptions, RecvTimeoutError,
};

/// Give up (and fail) when no message is acked for this long.
const STALL: Duration = Duration::from_secs(20);

/// xorshift64*: a tiny deterministic generator, one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Shared {
    total: usize,
    /// Acks per message id.
    acks: Vec<AtomicU32>,
    /// Whether a message was ever handed to the application.
    seen: Vec<AtomicBool>,
    acked: AtomicU64,
    /// Deliveries shown, and how many of them were redeliveries.
    deliveries: AtomicU64,
    redeliveries: AtomicU64,
    last_progress: Progress,
}

/// The moment of the last ack, to detect a stall (not to time the run).
struct Progress(Mutex<Instant>);

impl Progress {
    fn new() -> Self {
        Progress(Mutex::new(Instant::now()))
    }
    fn tick(&self) {
        *self.0.lock().unwrap() = Instant::now();
    }
    fn since(&self) -> Duration {
        self.0.lock().unwrap().elapsed()
    }
}

impl Shared {
    fn new(total: usize) -> Arc<Shared> {
        Arc::new(Shared {
            total,
            acks: (0..total).map(|_| AtomicU32::new(0)).collect(),
            seen: (0..total).map(|_| AtomicBool::new(false)).collect(),
            acked: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
            last_progress: Progress::new(),
        })
    }

    fn done(&self) -> bool {
        self.acked.load(Ordering::SeqCst) as usize >= self.total
    }

    fn id(d: &Delivery) -> usize {
        let b: [u8; 4] = d.body()[..].try_into().unwrap();
        u32::from_le_bytes(b) as usize
    }

    /// A delivery reached the application: the redelivered flag must say
    /// whether it had been before.
    fn receive(&self, d: &Delivery) {
        let id = Self::id(d);
        let before = self.seen[id].swap(true, Ordering::SeqCst);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.redeliveries
            .fetch_add(u64::from(before), Ordering::Relaxed);
        assert_eq!(
            d.redelivered(),
            before,
            "message {id}: redelivered flag {} but seen before {before}",
            d.redelivered()
        );
    }

    fn ack(&self, d: Delivery) {
        let id = Self::id(&d);
        // Count first: once the broker has the ack, the run may end.
        let n = self.acks[id].fetch_add(1, Ordering::SeqCst);
        assert_eq!(n, 0, "message {id} acked twice");
        d.ack();
        self.acked.fetch_add(1, Ordering::SeqCst);
        self.last_progress.tick();
    }
}

fn publishers(b: &Broker, shared: &Arc<Shared>, n: usize) -> Vec<std::thread::JoinHandle<()>> {
    let per = shared.total / n;
    (0..n)
        .map(|p| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in p * per..(p + 1) * per {
                    let id = u32::try_from(i).unwrap().to_le_bytes().to_vec();
                    assert_eq!(b.publish("", "work", id).unwrap().routed, 1);
                }
            })
        })
        .collect()
}

fn consumer_thread(
    b: Broker,
    shared: Arc<Shared>,
    seed: u64,
    prefetch: u32,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let opts = ConsumeOptions {
            prefetch,
            ..Default::default()
        };
        let mut consumer = b.consume("work", opts.clone()).unwrap();
        // Deliveries held unanswered: (from the current consumer?, delivery).
        let mut held: Vec<(bool, Delivery)> = Vec::new();
        while !shared.done() {
            assert!(
                shared.last_progress.since() < STALL,
                "no progress for {STALL:?}: {:?}",
                b.totals()
            );
            let d = match consumer.recv_timeout(Duration::from_millis(20)) {
                Ok(d) => d,
                Err(RecvTimeoutError::Timeout) => {
                    // Nothing new: answer what we hold, so credit flows.
                    for (_, d) in held.drain(..) {
                        shared.ack(d);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Cancelled) => panic!("cancelled"),
            };
            shared.receive(&d);
            match rng.below(100) {
                0..=59 => shared.ack(d),
                60..=69 => d.nack(true),
                70..=74 => d.reject(true),
                75..=79 => drop(d),
                _ => held.push((true, d)),
            }
            let from_current = held.iter().filter(|(cur, _)| *cur).count();
            assert!(from_current <= prefetch as usize, "prefetch exceeded");
            // Answer a random held one now and then, out of order.
            if !held.is_empty() && rng.below(3) == 0 {
                let at = rng.below(held.len() as u64) as usize;
                let (_, d) = held.swap_remove(at);
                match rng.below(4) {
                    0 => d.nack(true),
                    _ => shared.ack(d),
                }
            }
            // Now and then, replace the consumer; held deliveries outlive it.
            if rng.below(200) == 0 {
                for h in &mut held {
                    h.0 = false;
                }
                drop(consumer);
                consumer = b.consume("work", opts.clone()).unwrap();
            }
        }
        // Every message is acked once: nothing can still be held.
        assert!(held.is_empty());
    })
}

fn check_end(b: &Broker, shared: &Shared) {
    for (id, n) in shared.acks.iter().enumerate() {
        assert_eq!(n.load(Ordering::SeqCst), 1, "message {id}");
    }
    let t = b.totals();
    let n = shared.total as u64;
    assert_eq!(
        (t.enqueued, t.acked, t.ready, t.unacked),
        (n, n, 0, 0),
        "{t:?}"
    );
    assert_eq!(
        t.enqueued,
        t.ready + t.unacked + t.acked + t.discarded + t.dropped + t.expired + t.purged + t.deleted
    );
}

fn run(queue: QueueDeclareOptions, total: usize, threads: usize, prefetch: u32) {
    let b = Broker::new();
    b.declare_queue("work", queue).unwrap();
    let shared = Shared::new(total);
    let consumers: Vec<_> = (0..threads)
        .map(|i| {
            consumer_thread(
                b.clone(),
                shared.clone(),
                0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
                prefetch,
            )
        })
        .collect();
    let pubs = publishers(&b, &shared, threads);
    for p in pubs {
        p.join().unwrap();
    }
    for c in consumers {
        c.join().unwrap();
    }
    check_end(&b, &shared);
    assert_eq!(b.queue_stats("work").unwrap().consumers, 0);
}

#[test]
fn work_queue_with_requeues_drops_and_consumer_churn() {
    run(QueueDeclareOptions::default(), 20_000, 4, 10);
}

#[test]
fn bounded_block_queue_under_contention() {
    let q = QueueDeclareOptions::default()
        .with_max_length(16)
        .with_overflow(Overflow::Block);
    run(q, 8_000, 4, 3);
}

#[test]
fn queues_deleted_and_redeclared_under_load_keep_the_books() {
    // Publishers fan out to three queues while consumers answer in every way
    // and another thread deletes, purges and redeclares the queues. Once all
    // is dropped, every copy is accounted for and nothing is left unacked.
    let b = Broker::new();
    let names = ["a", "b", "c"];
    let declare = |b: &Broker, q: &str| {
        b.declare_queue(q, QueueDeclareOptions::default().with_max_length(50))
            .unwrap();
        b.bind_queue(q, "amq.fanout", "", &Default::default())
            .unwrap();
    };
    for q in names {
        declare(&b, q);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publishing = Arc::new(AtomicU64::new(3));
    std::thread::scope(|s| {
        for p in 0..3 {
            let (b, published, publishing) = (b.clone(), published.clone(), publishing.clone());
            s.spawn(move || {
                for i in 0..3_000u32 {
                    let out = b.publish("amq.fanout", "", (p * 10_000 + i).to_le_bytes().to_vec());
                    published.fetch_add(u64::from(out.unwrap().routed), Ordering::SeqCst);
                }
                publishing.fetch_sub(1, Ordering::SeqCst);
            });
        }
        for t in 0..3u64 {
            let (b, stop) = (b.clone(), stop.clone());
            s.spawn(move || {
                let mut rng = Rng(0x1234_5678 + t);
                let mut held: Vec<Delivery> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let q = names[rng.below(3) as usize];
                    let Ok(c) = b.consume(
                        q,
                        ConsumeOptions {
                            prefetch: 1 + rng.below(5) as u32,
                            no_ack: rng.below(10) == 0,
                            ..Default::default()
                        },
                    ) else {
                        continue;
                    };
                    for _ in 0..rng.below(40) {
                        let Ok(d) = c.recv_timeout(Duration::from_millis(5)) else {
                            break;
                        };
                        match rng.below(6) {
                            0 => d.ack(),
                            1 => d.nack(true),
                            2 => d.nack(false),
                            3 => drop(d),
                            _ => held.push(d),
                        }
                        if held.len() > 8 {
                            let at = rng.below(held.len() as u64) as usize;
                            held.swap_remove(at).ack();
                        }
                    }
                    if rng.below(2) == 0 {
                        c.cancel();
                    }
                    drop(c);
                }
                // Answer what is held after its queue may be long gone.
                for d in held {
                    d.ack();
                }
            });
        }
        {
            let (b, stop, publishing) = (b.clone(), stop.clone(), publishing.clone());
            s.spawn(move || {
                let mut rng = Rng(99);
                let mut rounds = 0;
                while rounds < 300 || publishing.load(Ordering::SeqCst) > 0 {
                    rounds += 1;
                    let q = names[rng.below(3) as usize];
                    match rng.below(3) {
                        0 => {
                            b.delete_queue(q, Default::default()).unwrap();
                            declare(&b, q);
                        }
                        1 => {
                            b.purge_queue(q).unwrap();
                        }
                        _ => {
                            if let Ok(Some(d)) = b.get(q, Default::default()) {
                                d.nack(true);
                            }
                        }
                    }
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::SeqCst);
            });
        }
    });
    let t = b.totals();
    assert_eq!(t.unacked, 0, "{t:?}");
    assert_eq!(t.consumers, 0, "{t:?}");
    assert_eq!(t.enqueued, published.load(Ordering::SeqCst), "{t:?}");
    assert_eq!(
        t.enqueued,
        t.ready + t.unacked + t.acked + t.discarded + t.dropped + t.expired + t.purged + t.deleted,
        "{t:?}"
    );
}

#[test]
fn binding_changes_do_not_disturb_concurrent_publishers() {
    use warren_core::ExchangeKind;
    let b = Broker::new();
    b.declare_exchange("t", ExchangeKind::Topic, Default::default())
        .unwrap();
    b.declare_queue("steady", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("steady", "t", "logs.#", &Default::default())
        .unwrap();
    for i in 0..4 {
        b.declare_queue(&format!("churn{i}"), QueueDeclareOptions::default())
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let per = 2_000u64;
    std::thread::scope(|s| {
        let pubs: Vec<_> = (0..3)
            .map(|p| {
                let b = b.clone();
                s.spawn(move || {
                    for i in 0..per {
                        let key = format!("logs.p{p}.{}", i % 7);
                        let out = b.publish("t", &key, "m").unwrap();
                        assert!(out.routed >= 1, "the steady binding always matches");
                    }
                })
            })
            .collect();
        let binder = {
            let (b, stop) = (b.clone(), stop.clone());
            s.spawn(move || {
                let mut rng = Rng(7);
                while !stop.load(Ordering::SeqCst) {
                    let q = format!("churn{}", rng.below(4));
                    let pattern =
                        ["logs.*.3", "logs.#", "#", "*.p1.*", "other"][rng.below(5) as usize];
                    if rng.below(2) == 0 {
                        b.bind_queue(&q, "t", pattern, &Default::default()).unwrap();
                    } else {
                        b.unbind_queue(&q, "t", pattern, &Default::default())
                            .unwrap();
                    }
                }
            })
        };
        for p in pubs {
            p.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        binder.join().unwrap();
    });
    assert_eq!(b.queue_stats("steady").unwrap().ready, 3 * per);
}

/// The soak: 2 publishers and 6 consumers on a bounded work queue
/// (`block`: publishers wait for room) whose discards (`nack`/`reject`
/// without requeue, the one way out besides an ack) are dead-lettered to a
/// graveyard queue. Consumers ack, requeue (`nack`,
/// `reject`, dropping the delivery), discard, hold deliveries across their
/// own cancellation and re-subscription, cancel and drain, or drop their
/// consumer outright. At the end each message was either acked exactly once
/// or sits exactly once in the graveyard, every redelivery said so, and the
/// counters conserve.
#[test]
fn soak_eight_threads_with_discards_cancels_and_resubscribes() {
    const TOTAL: usize = 50_000;
    const PUBLISHERS: usize = 2;
    const CONSUMERS: usize = 6;
    let b = Broker::new();
    b.declare_queue("graveyard", QueueDeclareOptions::default())
        .unwrap();
    b.declare_queue(
        "work",
        QueueDeclareOptions::default()
            .with_max_length(1_000)
            .with_overflow(Overflow::Block)
            .with_dead_letter("", Some("graveyard")),
    )
    .unwrap();
    let shared = Shared::new(TOTAL);
    let (cancels, resubscribes) = (AtomicU64::new(0), AtomicU64::new(0));
    // Settled = acked by us, or discarded into the graveyard.
    let settled = |b: &Broker, shared: &Shared| {
        shared.acked.load(Ordering::SeqCst) + b.queue_stats("graveyard").unwrap().ready
            >= TOTAL as u64
    };
    std::thread::scope(|s| {
        for p in 0..PUBLISHERS {
            let b = b.clone();
            s.spawn(move || {
                let per = TOTAL / PUBLISHERS;
                for i in p * per..(p + 1) * per {
                    let id = u32::try_from(i).unwrap().to_le_bytes().to_vec();
                    assert_eq!(b.publish("", "work", id).unwrap().routed, 1);
                }
            });
        }
        for t in 0..CONSUMERS {
            let (b, shared) = (b.clone(), shared.clone());
            let (cancels, resubscribes) = (&cancels, &resubscribes);
            s.spawn(move || {
                let mut rng = Rng(0x5eed_0000 + t as u64);
                let subscribe = |rng: &mut Rng| {
                    resubscribes.fetch_add(1, Ordering::Relaxed);
                    let prefetch = 1 + rng.below(8) as u32;
                    let opts = ConsumeOptions {
                        prefetch,
                        ..Default::default()
                    };
                    (b.consume("work", opts).unwrap(), prefetch)
                };
                let (mut consumer, mut prefetch) = subscribe(&mut rng);
                // Deliveries held unanswered: (from the current consumer?, d).
                let mut held: Vec<(bool, Delivery)> = Vec::new();
                // Deliveries until the next look at whether all is settled.
                let mut until_check = 512u32;
                loop {
                    assert!(
                        shared.last_progress.since() < STALL,
                        "no progress for {STALL:?}: {:?}",
                        b.totals()
                    );
                    let d = match consumer.recv_timeout(Duration::from_millis(20)) {
                        Ok(d) => d,
                        Err(RecvTimeoutError::Timeout) => {
                            // Nothing new: answer what we hold, so credit flows.
                            for (_, d) in held.drain(..) {
                                shared.ack(d);
                            }
                            if settled(&b, &shared) {
                                break;
                            }
                            continue;
                        }
                        Err(RecvTimeoutError::Cancelled) => {
                            // Drained after our own cancel: re-subscribe.
                            for h in &mut held {
                                h.0 = false;
                            }
                            (consumer, prefetch) = subscribe(&mut rng);
                            continue;
                        }
                    };
                    shared.receive(&d);
                    until_check -= 1;
                    match rng.below(100) {
                        0..=54 => shared.ack(d),
                        55..=64 => d.nack(true),
                        65..=69 => d.reject(true),
                        70..=74 => drop(d),
                        75..=77 => {
                            d.nack(false);
                            shared.last_progress.tick();
                        }
                        78..=79 => {
                            d.reject(false);
                            shared.last_progress.tick();
                        }
                        _ => held.push((true, d)),
                    }
                    let from_current = held.iter().filter(|(cur, _)| *cur).count();
                    assert!(from_current <= prefetch as usize, "prefetch exceeded");
                    if !held.is_empty() && rng.below(3) == 0 {
                        let at = rng.below(held.len() as u64) as usize;
                        let (_, d) = held.swap_remove(at);
                        match rng.below(4) {
                            0 => d.nack(true),
                            _ => shared.ack(d),
                        }
                    }
                    match rng.below(400) {
                        // Cancel: what was dispatched still arrives, then
                        // `Cancelled` makes us re-subscribe.
                        0 => {
                            cancels.fetch_add(1, Ordering::Relaxed);
                            consumer.cancel();
                        }
                        // Drop the consumer: its undelivered inbox goes back.
                        1 => {
                            for h in &mut held {
                                h.0 = false;
                            }
                            (consumer, prefetch) = subscribe(&mut rng);
                        }
                        _ => {}
                    }
                    if until_check == 0 {
                        until_check = 512;
                        if held.is_empty() && settled(&b, &shared) {
                            break;
                        }
                    }
                }
                assert!(held.is_empty(), "settled while holding deliveries");
            });
        }
    });
    // Every message: acked exactly once, or in the graveyard exactly once.
    let mut buried = vec![0u32; TOTAL];
    while let Some(d) = b
        .get(
            "graveyard",
            warren_core::GetOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap()
    {
        buried[Shared::id(&d)] += 1;
    }
    for (id, n) in shared.acks.iter().enumerate() {
        let acked = n.load(Ordering::SeqCst);
        assert_eq!(
            acked + buried[id],
            1,
            "message {id}: acked {acked}, buried {}",
            buried[id]
        );
    }
    let work = b.queue_stats("work").unwrap();
    let grave = b.queue_stats("graveyard").unwrap();
    let n = TOTAL as u64;
    assert_eq!(
        (work.enqueued, work.ready, work.unacked),
        (n, 0, 0),
        "{work:?}"
    );
    assert_eq!(
        (work.acked + work.discarded, work.dropped),
        (n, 0),
        "{work:?}"
    );
    assert_eq!(work.dead_lettered, work.discarded, "{work:?}");
    assert_eq!(grave.enqueued, work.dead_lettered, "{grave:?}");
    let t = b.totals();
    assert_eq!(
        t.enqueued,
        t.ready + t.unacked + t.acked + t.discarded + t.dropped + t.expired + t.purged + t.deleted,
        "{t:?}"
    );
    eprintln!(
        "soak: {n} messages, {} acked, {} discarded; {} deliveries, {} redelivered; \
         {} subscriptions, {} cancels",
        work.acked,
        work.discarded,
        shared.deliveries.load(Ordering::SeqCst),
        shared.redeliveries.load(Ordering::SeqCst),
        resubscribes.load(Ordering::SeqCst),
        cancels.load(Ordering::SeqCst),
    );
}

#[test]
fn receivers_on_many_threads_share_one_consumer() {
    // Four threads receive from one `Consumer` while a publisher fills its
    // queue: every message is received once, and the delivery tags are
    // 1..=n, each once (receivers take turns under the consumer's receive
    // lock).
    const N: u64 = 20_000;
    let b = Broker::new();
    b.declare_queue("work", QueueDeclareOptions::default())
        .unwrap();
    let c = Arc::new(
        b.consume(
            "work",
            ConsumeOptions {
                prefetch: 64,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let receivers: Vec<_> = (0..4)
        .map(|_| {
            let (c, received) = (c.clone(), received.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while received.load(Ordering::Relaxed) < N {
                    assert!(start.elapsed() < STALL, "receivers stalled");
                    match c.recv_timeout(Duration::from_millis(10)) {
                        Ok(d) => {
                            received.fetch_add(1, Ordering::Relaxed);
                            let id = u64::from_le_bytes(d.body()[..].try_into().unwrap());
                            got.push((d.delivery_tag(), id));
                            d.ack();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                got
            })
        })
        .collect();
    for id in 0..N {
        b.publish("", "work", id.to_le_bytes().to_vec()).unwrap();
    }
    let mut all: Vec<(u64, u64)> = Vec::new();
    for r in receivers {
        all.extend(r.join().unwrap());
    }
    let mut tags: Vec<u64> = all.iter().map(|&(tag, _)| tag).collect();
    let mut ids: Vec<u64> = all.iter().map(|&(_, id)| id).collect();
    tags.sort_unstable();
    ids.sort_unstable();
    assert_eq!(tags, (1..=N).collect::<Vec<_>>());
    assert_eq!(ids, (0..N).collect::<Vec<_>>());
    let s = b.queue_stats("work").unwrap();
    assert_eq!((s.ready, s.unacked, s.acked), (0, 0, N));
}
