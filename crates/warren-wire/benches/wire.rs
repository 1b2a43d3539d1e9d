//! warren-wire against RabbitMQ on loopback, with the same client (lapin);
//! every message body is 16 bytes:
//!
//! - `confirms`: 1000 publishes on one channel under publisher confirms,
//!   each written before the next is sent, then every confirm awaited;
//! - `confirms_pipelined`: the same with up to 256 publishes in flight in
//!   the client (see below);
//! - `confirms_4conn`: the same 1000 confirmed publishes split over 4
//!   client connections publishing in parallel;
//! - `auto_ack`: 1000 publishes, received by a no-ack consumer on another
//!   connection;
//! - `auto_ack_pipelined`: the same with up to 256 publishes in flight;
//! - `auto_ack_amqprs`: the same with the amqprs client (publisher and
//!   no-ack consumer on two connections), whose publishes return once
//!   queued for its writer;
//! - `auto_ack_4conn`: the same 1000 split over 4 pairs running in
//!   parallel, each a publisher connection, its own queue and its own no-ack
//!   consumer connection;
//! - `auto_ack_4conn_pipelined`: `auto_ack_4conn` with up to 256 publishes
//!   in flight on each publisher connection;
//! - `manual_ack`: 2000 publishes received by a consumer with basic.qos
//!   prefetch 1000 that acks each delivery (2000 basic.ack);
//! - `manual_ack_pipelined`: the same with up to 256 publishes and 256 acks
//!   in flight;
//! - `manual_ack_multi100`: the same, acking with `multiple` every 100th
//!   delivery (20 basic.ack);
//! - `manual_ack_4conn`: `manual_ack` split over 4 pairs as in
//!   `auto_ack_4conn`, still acking each delivery;
//! - `manual_ack_4conn_pipelined`: `manual_ack_4conn` with up to 256
//!   publishes and 256 acks in flight on each pair;
//! - `topic_1000`: 1000 publishes to a topic exchange with 1000 wildcard
//!   bindings (seeded random 3–5 word patterns over a 50-word vocabulary,
//!   ~10% `*`, ~5% `#`) onto 10 queues, consumed (no-ack) from all 10; each
//!   key instantiates a random binding, so every message is routed somewhere;
//! - `topic_1000_pipelined`: the same with up to 256 publishes in flight;
//! - `roundtrip`: 100 sequential publish → deliver round trips (one way
//!   through a queue to a no-ack consumer on another connection; not yet an
//!   RPC with `reply_to` / `correlation_id`, and a total, not a p50);
//! - `roundtrip_4conn`: the same 100 split over 4 pairs in parallel;
//! - `rpc_p50`: 100 sequential RPCs as RPC clients make them: a request with
//!   `reply_to` (direct reply-to, `amq.rabbitmq.reply-to`) and a
//!   `correlation_id`, answered by a server on another connection to its
//!   `reply_to` with the same `correlation_id`. Its "time" is 100 × the run's
//!   median round trip, so its ratio is the ratio of p50s.
//!
//! "In flight": lapin resolves `basic_publish` (and `ack`) only once its I/O
//! thread has written the frames, so a loop that awaits each publish before
//! the next makes one round trip to that thread per message and leaves the
//! socket idle in between; the plain cases measure that producer. The
//! `_pipelined` cases keep up to 256 publishes (acks) pending, as a producer
//! written for throughput does, so lapin writes them in batches and the
//! broker, not the client's hand-offs, sets the pace.
//!
//! The baseline is RabbitMQ, measured in the same run, rounds interleaved;
//! the report states warren's time as a ratio of RabbitMQ's. Set
//! `WARREN_RABBITMQ_ADDR=127.0.0.1:5673` (a RabbitMQ with guest/guest); without
//! it only warren is measured. warren's server runs in this process but on a
//! tokio runtime of its own, built as `warren serve` builds it (threads named
//! `warren-wire`), so it shares no threads with the client; RabbitMQ runs in
//! its own process.
//!
//! Next to each time the report shows where the CPU went (Linux, from
//! `/proc`), as shares of the wall time: all client threads (lapin's
//! `lapin-io-loop` thread per connection, the client runtime, the main
//! thread), the busiest single client thread, and the server: warren's
//! `warren-wire` threads, or RabbitMQ's process if `WARREN_RABBITMQ_PID` is
//! set (else `?`).
//!
//! The client is the bottleneck against warren (2 shared cores): lapin's
//! threads spend 2–4.5x the CPU of warren's server in every case (0.3–1.8x
//! against RabbitMQ), and 4 connections cut wall time only where a lone
//! connection waits (confirms, round trips); for auto/manual ack they add
//! client CPU instead. Pipelining is what lets the broker show: with 256 in
//! flight warren's wall time drops 3–5x and RabbitMQ's about 2x, while the
//! client alone still takes 1.2–1.6 of the 2 cores against warren. The
//! one-at-a-time cases measure lapin's hand-offs between threads more than
//! either broker, and their ratios swing from run to run (0.5–2 for the
//! same binary within the hour); read the `_pipelined` rows, and the server
//! CPU per message (server share × wall time / messages), for the brokers.
//!
//! ```sh
//! WARREN_RABBITMQ_ADDR=127.0.0.1:5673 WARREN_RABBITMQ_PID=$(pgrep beam.smp) \
//!     cargo bench -p warren-wire --bench wire
//! ```
//!
//! `WARREN_WIRE_CASES=rpc_p50,topic_1000` limits the interleaved report to
//! those cases (criterion's own filter is the usual trailing argument).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warren_core::Broker;
use warren_wire::{Server, ServerConfig};

const BATCH: usize = 1000;
const ROUNDTRIPS: usize = 100;
const BODY: [u8; 16] = [7; 16];
const MANUAL: usize = 2000;
const PREFETCH: u16 = 1000;
const PAR_CONNS: usize = 4;
/// `manual_ack_multi100` acks with `multiple` every this many deliveries.
const ACK_EVERY: usize = 100;
/// Publishes (and acks) in flight at once in the `_pipelined` cases.
const PIPELINE: usize = 256;
const TOPIC_BINDINGS: usize = 1000;
const TOPIC_QUEUES: usize = 10;
const TOPIC_VOCAB: usize = 50;

/// A small seeded PRNG (xorshift64*), so both targets get the same topology.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more.
fn topic_matches(p: &[&str], k: &[&str]) -> bool {
    match p.split_first() {
        None => k.is_empty(),
        Some((&"#", rest)) => (0..=k.len()).any(|i| topic_matches(rest, &k[i..])),
        Some((&"*", rest)) => !k.is_empty() && topic_matches(rest, &k[1..]),
        Some((w, rest)) => k.first() == Some(w) && topic_matches(rest, &k[1..]),
    }
}

/// The `topic_1000` topology and traffic, the same for every target.
struct TopicSpec {
    /// (pattern, queue index)
    bindings: Vec<(String, usize)>,
    keys: Vec<String>,
    /// Deliveries the keys produce over all queues (one per matching queue).
    deliveries: usize,
}

fn topic_spec() -> TopicSpec {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let vocab: Vec<String> = (0..TOPIC_VOCAB).map(|i| format!("w{i:02}")).collect();
    let bindings: Vec<(String, usize)> = (0..TOPIC_BINDINGS)
        .map(|_| {
            let len = 3 + rng.below(3);
            let words: Vec<&str> = (0..len)
                .map(|_| match rng.below(100) {
                    0..=9 => "*",
                    10..=14 => "#",
                    _ => vocab[rng.below(TOPIC_VOCAB)].as_str(),
                })
                .collect();
            (words.join("."), rng.below(TOPIC_QUEUES))
        })
        .collect();
    let keys: Vec<String> = (0..BATCH)
        .map(|_| {
            let (pattern, _) = &bindings[rng.below(bindings.len())];
            let mut words: Vec<&str> = Vec::new();
            for w in pattern.split('.') {
                match w {
                    "*" => words.push(&vocab[rng.below(TOPIC_VOCAB)]),
                    "#" => {
                        for _ in 0..rng.below(3) {
                            words.push(&vocab[rng.below(TOPIC_VOCAB)]);
                        }
                    }
                    w => words.push(w),
                }
            }
            words.join(".")
        })
        .collect();
    let deliveries = keys
        .iter()
        .map(|k| {
            let k: Vec<&str> = k.split('.').collect();
            let mut hit = [false; TOPIC_QUEUES];
            for (p, q) in &bindings {
                if !hit[*q] && topic_matches(&p.split('.').collect::<Vec<_>>(), &k) {
                    hit[*q] = true;
                }
            }
            hit.iter().filter(|h| **h).count()
        })
        .sum();
    TopicSpec {
        bindings,
        keys,
        deliveries,
    }
}

struct Target {
    name: &'static str,
    publisher: Channel,
    consumer_conn: Connection,
    _conn: Connection,
    queue: String,
    /// Confirm-mode channels, one per extra connection, for `confirms_4conn`.
    par: Vec<Channel>,
    /// Plain channels on the same extra connections, publishers of the
    /// other `_4conn` cases.
    par_publishers: Vec<Channel>,
    _par_conns: Vec<Connection>,
    /// One consumer connection and one queue per publisher connection.
    par_consumer_conns: Vec<Connection>,
    par_queues: Vec<String>,
    topic_exchange: String,
    topic_queues: Vec<String>,
    topic_keys: Vec<String>,
    topic_deliveries: usize,
    /// amqprs, the other Rust client: a publisher and a consumer channel,
    /// each on its own connection.
    prs_publisher: amqprs::channel::Channel,
    prs_consumer: amqprs::channel::Channel,
    _prs_conns: [amqprs::connection::Connection; 2],
}

/// An amqprs connection to the host and port of `url`
/// (`amqp://guest:guest@host:port/...`), and a channel on it.
async fn amqprs_channel(url: &str) -> (amqprs::connection::Connection, amqprs::channel::Channel) {
    let authority = url
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("amqp://user:pass@host:port/ URL");
    let (host, port) = authority.rsplit_once(':').expect("host:port");
    let args = amqprs::connection::OpenConnectionArguments::new(
        host,
        port.parse().expect("port"),
        "guest",
        "guest",
    );
    let conn = amqprs::connection::Connection::open(&args)
        .await
        .expect("amqprs connect");
    let ch = conn.open_channel(None).await.expect("amqprs channel");
    (conn, ch)
}

async fn target(name: &'static str, url: &str, tag: &str, spec: &TopicSpec) -> Target {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let publisher = conn.create_channel().await.expect("channel");
    let consumer_conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let queue = format!("bench-{tag}-{}", std::process::id());
    publisher
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let mut par = Vec::new();
    let mut par_publishers = Vec::new();
    let mut par_conns = Vec::new();
    let mut par_consumer_conns = Vec::new();
    let mut par_queues = Vec::new();
    for i in 0..PAR_CONNS {
        let c = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = c.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        par.push(ch);
        par_publishers.push(c.create_channel().await.expect("channel"));
        par_conns.push(c);
        par_consumer_conns.push(
            Connection::connect(url, ConnectionProperties::default())
                .await
                .expect("connect"),
        );
        let q = format!("{queue}-p{i}");
        publisher
            .queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
            .await
            .expect("declare");
        par_queues.push(q);
    }
    // The topic topology, declared once, outside any timed region.
    let topic_exchange = format!("bench-topic-{tag}-{}", std::process::id());
    publisher
        .exchange_declare(
            topic_exchange.as_str().into(),
            ExchangeKind::Topic,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange declare");
    let topic_queues: Vec<String> = (0..TOPIC_QUEUES)
        .map(|i| format!("{topic_exchange}-q{i}"))
        .collect();
    for q in &topic_queues {
        publisher
            .queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
            .await
            .expect("declare");
    }
    for (pattern, q) in &spec.bindings {
        publisher
            .queue_bind(
                topic_queues[*q].as_str().into(),
                topic_exchange.as_str().into(),
                pattern.as_str().into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }
    let (prs_pub_conn, prs_publisher) = amqprs_channel(url).await;
    let (prs_con_conn, prs_consumer) = amqprs_channel(url).await;
    Target {
        name,
        publisher,
        consumer_conn,
        _conn: conn,
        queue,
        par,
        par_publishers,
        _par_conns: par_conns,
        par_consumer_conns,
        par_queues,
        topic_exchange,
        topic_queues,
        topic_keys: spec.keys.clone(),
        topic_deliveries: spec.deliveries,
        prs_publisher,
        prs_consumer,
        _prs_conns: [prs_pub_conn, prs_con_conn],
    }
}

/// A consumer of `queue` on `ch` (server-chosen tag), acking itself when
/// `no_ack`.
async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

async fn publish(ch: &Channel, queue: &str) -> lapin::PublisherConfirm {
    publish_to(ch, "", queue, &BODY).await
}

async fn publish_to(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("publish")
}

/// Publishes one message per key with up to `window` publishes in flight.
///
/// lapin resolves a `basic_publish` once its I/O thread has written the
/// frames, so a producer that awaits each publish before the next pays a
/// round trip to that thread per message and leaves the socket idle in
/// between. A producer written for throughput keeps several in flight, and
/// lapin then writes them in batches. `window` 1 is the one-at-a-time
/// producer.
async fn publish_window<'k>(
    ch: &Channel,
    exchange: &str,
    keys: impl Iterator<Item = &'k str>,
    window: usize,
) -> Vec<lapin::PublisherConfirm> {
    let mut in_flight = futures_util::stream::FuturesOrdered::new();
    let mut confirms = Vec::new();
    for key in keys {
        in_flight.push_back(publish_to(ch, exchange, key, &BODY));
        if in_flight.len() >= window {
            confirms.extend(futures_util::StreamExt::next(&mut in_flight).await);
        }
    }
    while let Some(confirm) = futures_util::StreamExt::next(&mut in_flight).await {
        confirms.push(confirm);
    }
    confirms
}

/// `n` publishes of the 16-byte body to `queue` through the default
/// exchange, `window` in flight.
async fn publish_n(
    ch: &Channel,
    queue: &str,
    n: usize,
    window: usize,
) -> Vec<lapin::PublisherConfirm> {
    publish_window(ch, "", std::iter::repeat_n(queue, n), window).await
}

/// Acks deliveries with up to `window` acks in flight (lapin resolves an ack
/// when it is written, as it does a publish).
struct Acks {
    window: usize,
    in_flight: futures_util::stream::FuturesUnordered<
        std::pin::Pin<Box<dyn std::future::Future<Output = lapin::Result<()>> + Send>>,
    >,
}

impl Acks {
    fn new(window: usize) -> Acks {
        Acks {
            window,
            in_flight: Default::default(),
        }
    }

    async fn ack(&mut self, d: lapin::message::Delivery, multiple: bool) {
        self.in_flight.push(Box::pin(async move {
            d.ack(BasicAckOptions { multiple }).await.map(|_| ())
        }));
        while self.in_flight.len() >= self.window {
            self.next().await;
        }
    }

    async fn next(&mut self) {
        if let Some(r) = futures_util::StreamExt::next(&mut self.in_flight).await {
            r.expect("ack");
        }
    }

    async fn drain(mut self) {
        while !self.in_flight.is_empty() {
            self.next().await;
        }
    }
}

/// `BATCH` publishes under confirms, `window` in flight, then every confirm.
async fn confirms(t: &Target, ch: &Channel, window: usize) -> Duration {
    let start = Instant::now();
    let pending = publish_n(ch, &t.queue, BATCH, window).await;
    for p in pending {
        p.await.expect("confirm");
    }
    let d = start.elapsed();
    ch.queue_purge(t.queue.as_str().into(), Default::default())
        .await
        .expect("purge");
    d
}

/// `BATCH` publishes split over `PAR_CONNS` connections publishing in
/// parallel, each under confirms.
async fn confirms_par(t: &Target) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = t
        .par
        .iter()
        .map(|ch| {
            let (ch, queue) = (ch.clone(), t.queue.clone());
            tokio::spawn(async move {
                let mut pending = Vec::with_capacity(BATCH / PAR_CONNS);
                for _ in 0..BATCH / PAR_CONNS {
                    pending.push(publish(&ch, &queue).await);
                }
                for p in pending {
                    p.await.expect("confirm");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher task");
    }
    let d = start.elapsed();
    t.publisher
        .queue_purge(t.queue.as_str().into(), Default::default())
        .await
        .expect("purge");
    d
}

/// `MANUAL` publishes received by a prefetch-limited consumer on another
/// connection that acks every `ack_every`-th delivery (with `multiple` when
/// `ack_every > 1`, so every delivery is acked).
async fn manual_ack(t: &Target, ack_every: usize, window: usize) -> Duration {
    let cch = t.consumer_conn.create_channel().await.expect("channel");
    cch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&cch, &t.queue, false).await;
    let start = Instant::now();
    publish_n(&t.publisher, &t.queue, MANUAL, window).await;
    let mut acks = Acks::new(window);
    for i in 1..=MANUAL {
        let d = consumer.next().await.expect("delivery").expect("delivery");
        if i % ack_every == 0 {
            acks.ack(d, ack_every > 1).await;
        }
    }
    acks.drain().await;
    let d = start.elapsed();
    cch.close(200, "done".into()).await.expect("close");
    d
}

/// What each of the `PAR_CONNS` client pairs of a `_4conn` case does.
#[derive(Clone, Copy)]
enum Pair {
    /// Publish all, then receive all with a no-ack consumer.
    AutoAck,
    /// Publish all, then receive all with a prefetch-limited consumer that
    /// acks each delivery.
    ManualAck,
    /// Publish one, receive it (no-ack), repeat.
    Roundtrip,
}

/// `n` messages split over `PAR_CONNS` publisher connections, each with its
/// own queue and consumer connection, all pairs running in parallel.
async fn pairs(t: &Target, mode: Pair, n: usize, window: usize) -> Duration {
    let manual = matches!(mode, Pair::ManualAck);
    let mut consumers = Vec::with_capacity(PAR_CONNS);
    for (conn, queue) in t.par_consumer_conns.iter().zip(&t.par_queues) {
        let cch = conn.create_channel().await.expect("channel");
        if manual {
            cch.basic_qos(PREFETCH, BasicQosOptions::default())
                .await
                .expect("qos");
        }
        let consumer = consume(&cch, queue, !manual).await;
        consumers.push((cch, consumer));
    }
    let start = Instant::now();
    let tasks: Vec<_> = consumers
        .into_iter()
        .zip(t.par_publishers.iter().zip(&t.par_queues))
        .map(|((cch, mut consumer), (pch, queue))| {
            let (pch, queue) = (pch.clone(), queue.clone());
            tokio::spawn(async move {
                let n = n / PAR_CONNS;
                if let Pair::Roundtrip = mode {
                    for _ in 0..n {
                        publish(&pch, &queue).await;
                        consumer.next().await.expect("delivery").expect("delivery");
                    }
                } else {
                    publish_n(&pch, &queue, n, window).await;
                    let mut acks = Acks::new(window);
                    for _ in 0..n {
                        let d = consumer.next().await.expect("delivery").expect("delivery");
                        if manual {
                            acks.ack(d, false).await;
                        }
                    }
                    acks.drain().await;
                }
                cch
            })
        })
        .collect();
    let mut channels = Vec::with_capacity(PAR_CONNS);
    for task in tasks {
        channels.push(task.await.expect("pair task"));
    }
    let d = start.elapsed();
    for cch in channels {
        cch.close(200, "done".into()).await.expect("close");
    }
    d
}

/// `BATCH` publishes with random keys to the 1000-binding topic exchange,
/// consumed (no-ack) from its 10 queues.
async fn topic(t: &Target, window: usize) -> Duration {
    let cch = t.consumer_conn.create_channel().await.expect("channel");
    let mut merged: Option<futures_lite::stream::Boxed<lapin::Result<lapin::message::Delivery>>> =
        None;
    for q in &t.topic_queues {
        let c = consume(&cch, q, true).await;
        merged = Some(match merged {
            None => c.boxed(),
            Some(m) => m.or(c).boxed(),
        });
    }
    let mut merged = merged.expect("queues");
    let start = Instant::now();
    publish_window(
        &t.publisher,
        &t.topic_exchange,
        t.topic_keys.iter().map(String::as_str),
        window,
    )
    .await;
    let mut got = 0;
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while got < t.topic_deliveries {
            merged.next().await.expect("delivery").expect("delivery");
            got += 1;
        }
    })
    .await;
    if drained.is_err() {
        panic!(
            "{}: topic_1000 got {got} of {} deliveries",
            t.name, t.topic_deliveries
        );
    }
    let d = start.elapsed();
    cch.close(200, "done".into()).await.expect("close");
    d
}

/// `BATCH` publishes received by a no-ack consumer on another connection.
async fn auto_ack(t: &Target, window: usize) -> Duration {
    let cch = t.consumer_conn.create_channel().await.expect("channel");
    let mut consumer = consume(&cch, &t.queue, true).await;
    let start = Instant::now();
    publish_n(&t.publisher, &t.queue, BATCH, window).await;
    for _ in 0..BATCH {
        consumer.next().await.expect("delivery").expect("delivery");
    }
    let d = start.elapsed();
    cch.close(200, "done".into()).await.expect("close");
    d
}

/// `ROUNDTRIPS` sequential RPCs (request with `reply_to` and
/// `correlation_id`, reply by a server on the consumer connection); returns
/// `ROUNDTRIPS` × the median round trip.
async fn rpc_p50(t: &Target) -> Duration {
    let server_ch = t.consumer_conn.create_channel().await.expect("channel");
    let mut requests = consume(&server_ch, &t.queue, true).await;
    let server = {
        let ch = server_ch.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = requests.next().await {
                let (Some(reply_to), Some(id)) = (
                    d.properties.reply_to().clone(),
                    d.properties.correlation_id().clone(),
                ) else {
                    continue;
                };
                let _ = ch
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        BasicPublishOptions::default(),
                        &BODY,
                        BasicProperties::default().with_correlation_id(id),
                    )
                    .await;
            }
        })
    };
    let client_ch = t._conn.create_channel().await.expect("channel");
    let mut replies = consume(&client_ch, "amq.rabbitmq.reply-to", true).await;
    let mut times = Vec::with_capacity(ROUNDTRIPS);
    for i in 0..ROUNDTRIPS {
        let id = format!("call-{i}");
        let start = Instant::now();
        client_ch
            .basic_publish(
                "".into(),
                t.queue.as_str().into(),
                BasicPublishOptions::default(),
                &BODY,
                BasicProperties::default()
                    .with_reply_to("amq.rabbitmq.reply-to".into())
                    .with_correlation_id(id.as_str().into()),
            )
            .await
            .expect("request");
        loop {
            let d = replies.next().await.expect("reply").expect("reply");
            if d.properties.correlation_id().as_ref().map(|c| c.as_str()) == Some(id.as_str()) {
                break;
            }
        }
        times.push(start.elapsed());
    }
    client_ch.close(200, "done".into()).await.expect("close");
    server_ch.close(200, "done".into()).await.expect("close");
    let _ = server.await;
    times.sort_unstable();
    times[times.len() / 2] * ROUNDTRIPS as u32
}

/// `auto_ack` with amqprs for both publisher and consumer. An amqprs publish
/// returns once its frames are queued for the connection's writer, so its
/// publishes are in flight without the caller keeping them.
async fn auto_ack_amqprs(t: &Target) -> Duration {
    use amqprs::channel::{BasicCancelArguments, BasicConsumeArguments, BasicPublishArguments};
    const TAG: &str = "bench-amqprs";
    let (_, mut deliveries) = t
        .prs_consumer
        .basic_consume_rx(BasicConsumeArguments {
            no_ack: true,
            ..BasicConsumeArguments::new(&t.queue, TAG)
        })
        .await
        .expect("amqprs consume");
    let publish = BasicPublishArguments::new("", &t.queue);
    let start = Instant::now();
    for _ in 0..BATCH {
        t.prs_publisher
            .basic_publish(
                amqprs::BasicProperties::default(),
                BODY.to_vec(),
                publish.clone(),
            )
            .await
            .expect("amqprs publish");
    }
    for _ in 0..BATCH {
        deliveries.recv().await.expect("amqprs delivery");
    }
    let d = start.elapsed();
    t.prs_consumer
        .basic_cancel(BasicCancelArguments::new(TAG))
        .await
        .expect("amqprs cancel");
    d
}

/// `ROUNDTRIPS` sequential publish → deliver round trips.
async fn roundtrip(t: &Target) -> Duration {
    let cch = t.consumer_conn.create_channel().await.expect("channel");
    let mut consumer = consume(&cch, &t.queue, true).await;
    let start = Instant::now();
    for _ in 0..ROUNDTRIPS {
        publish(&t.publisher, &t.queue).await;
        consumer.next().await.expect("delivery").expect("delivery");
    }
    let d = start.elapsed();
    cch.close(200, "done".into()).await.expect("close");
    d
}

type Workload = for<'a> fn(
    &'a Target,
    &'a Channel,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Duration> + 'a>>;

/// (name, messages per run, workload), in report order.
const WORKLOADS: [(&str, usize, Workload); 18] = [
    ("confirms", BATCH, |t, ch| Box::pin(confirms(t, ch, 1))),
    ("confirms_pipelined", BATCH, |t, ch| {
        Box::pin(confirms(t, ch, PIPELINE))
    }),
    ("confirms_4conn", BATCH, |t, _| Box::pin(confirms_par(t))),
    ("auto_ack", BATCH, |t, _| Box::pin(auto_ack(t, 1))),
    ("auto_ack_pipelined", BATCH, |t, _| {
        Box::pin(auto_ack(t, PIPELINE))
    }),
    ("auto_ack_amqprs", BATCH, |t, _| {
        Box::pin(auto_ack_amqprs(t))
    }),
    ("auto_ack_4conn", BATCH, |t, _| {
        Box::pin(pairs(t, Pair::AutoAck, BATCH, 1))
    }),
    ("auto_ack_4conn_pipelined", BATCH, |t, _| {
        Box::pin(pairs(t, Pair::AutoAck, BATCH, PIPELINE))
    }),
    ("manual_ack", MANUAL, |t, _| Box::pin(manual_ack(t, 1, 1))),
    ("manual_ack_pipelined", MANUAL, |t, _| {
        Box::pin(manual_ack(t, 1, PIPELINE))
    }),
    ("manual_ack_multi100", MANUAL, |t, _| {
        Box::pin(manual_ack(t, ACK_EVERY, 1))
    }),
    ("manual_ack_4conn", MANUAL, |t, _| {
        Box::pin(pairs(t, Pair::ManualAck, MANUAL, 1))
    }),
    ("manual_ack_4conn_pipelined", MANUAL, |t, _| {
        Box::pin(pairs(t, Pair::ManualAck, MANUAL, PIPELINE))
    }),
    ("topic_1000", BATCH, |t, _| Box::pin(topic(t, 1))),
    ("topic_1000_pipelined", BATCH, |t, _| {
        Box::pin(topic(t, PIPELINE))
    }),
    ("roundtrip", ROUNDTRIPS, |t, _| Box::pin(roundtrip(t))),
    ("roundtrip_4conn", ROUNDTRIPS, |t, _| {
        Box::pin(pairs(t, Pair::Roundtrip, ROUNDTRIPS, 1))
    }),
    ("rpc_p50", ROUNDTRIPS, |t, _| Box::pin(rpc_p50(t))),
];

/// The run time of each thread of process `pid` ("self" for this one), by
/// thread id: (thread name, time on CPU). Linux only (`/proc`); elsewhere
/// empty, and the report leaves the CPU columns out.
fn thread_cpu(pid: &str) -> HashMap<u64, (String, Duration)> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in dir.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // schedstat: nanoseconds on CPU, nanoseconds waiting, timeslices.
        let ns = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        if let Some(ns) = ns {
            threads.insert(tid, (name.trim().to_owned(), Duration::from_nanos(ns)));
        }
    }
    threads
}

/// CPU time spent during one timed run.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// All client threads (this process, minus warren's server threads).
    client: Duration,
    /// The busiest single client thread.
    busiest: Duration,
    /// The server: warren's `warren-wire` threads, or RabbitMQ's process
    /// when `WARREN_RABBITMQ_PID` is set.
    server: Option<Duration>,
}

/// Runs `run`, measuring its wall time and the CPU time it cost.
fn measured(run: impl FnOnce() -> Duration, server_pid: Option<&str>) -> (Duration, Cpu) {
    let before = thread_cpu("self");
    let server_before = server_pid.map(thread_cpu);
    let wall = run();
    let after = thread_cpu("self");
    let server_after = server_pid.map(thread_cpu);
    let delta = |tid: &u64, cpu: Duration, before: &HashMap<u64, (String, Duration)>| {
        cpu.saturating_sub(before.get(tid).map_or(Duration::ZERO, |(_, d)| *d))
    };
    let mut cpu = Cpu::default();
    let mut warren = Duration::ZERO;
    for (tid, (name, t)) in &after {
        let d = delta(tid, *t, &before);
        if name.starts_with(SERVER_THREADS) {
            warren += d;
        } else {
            cpu.client += d;
            cpu.busiest = cpu.busiest.max(d);
        }
    }
    cpu.server = match (server_before, server_after) {
        (Some(b), Some(a)) => Some(a.iter().map(|(tid, (_, t))| delta(tid, *t, &b)).sum()),
        _ => server_pid.is_none().then_some(warren),
    };
    (wall, cpu)
}

/// The thread name of warren's server runtime, as in `warren serve`.
const SERVER_THREADS: &str = "warren-wire";

/// `part` as a percentage of `whole`.
fn pct(part: Duration, whole: Duration) -> f64 {
    100.0 * part.as_secs_f64() / whole.as_secs_f64()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    // warren's server gets a runtime (and threads) of its own, built as
    // `warren serve` builds it, so it shares no threads with the client,
    // like RabbitMQ.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(SERVER_THREADS)
        .build()
        .expect("server runtime");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("client runtime");
    // amqprs closes a channel from a task it spawns when the channel is
    // dropped: the targets are dropped (at the end) in the runtime's context.
    let _client_context = rt.enter();
    let broker = Broker::new();
    let server = server_rt
        .block_on(Server::bind(
            "127.0.0.1:0",
            ServerConfig::with_broker(broker),
        ))
        .expect("bind");
    let warren_url = format!("amqp://guest:guest@{}/%2f", server.local_addr());
    let rabbit_url = std::env::var("WARREN_RABBITMQ_ADDR")
        .ok()
        .map(|a| format!("amqp://guest:guest@{a}/%2f"));
    if rabbit_url.is_none() {
        eprintln!("WARREN_RABBITMQ_ADDR not set: measuring warren only, no ratio");
    }
    let rabbit_pid = std::env::var("WARREN_RABBITMQ_PID").ok();
    let spec = topic_spec();
    let mut targets = vec![rt.block_on(target("warren", &warren_url, "w", &spec))];
    if let Some(url) = &rabbit_url {
        targets.push(rt.block_on(target("rabbitmq", url, "r", &spec)));
    }
    let confirm_channels: Vec<Channel> = targets
        .iter()
        .map(|t| {
            rt.block_on(async {
                let ch = t._conn.create_channel().await.expect("channel");
                ch.confirm_select(Default::default())
                    .await
                    .expect("confirms");
                ch
            })
        })
        .collect();

    let mut c = Criterion::default().configure_from_args().sample_size(10);
    for (name, n, w) in WORKLOADS {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(n as u64));
        for (t, ch) in targets.iter().zip(&confirm_channels) {
            g.bench_function(t.name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(w(t, ch))).sum())
            });
        }
        g.finish();
    }
    c.final_summary();

    if targets.len() == 2 {
        // The ratio, from interleaved rounds under the same noise, and where
        // the CPU went: client threads in all, the busiest client thread,
        // and the server, as shares of the wall time.
        let rounds = if quick { 1 } else { 15 };
        println!(
            "\nwarren / RabbitMQ (median of {rounds} interleaved rounds; below 1 = warren faster)\n\
             cpu: client threads / busiest client thread / server, % of wall time"
        );
        // WARREN_WIRE_CASES=a,b limits the report to those cases.
        let only = std::env::var("WARREN_WIRE_CASES").ok();
        let wanted = |name: &str| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|c| c == name))
        };
        for (name, _, w) in WORKLOADS.into_iter().filter(|(name, _, _)| wanted(name)) {
            let mut walls = [Vec::new(), Vec::new()];
            let mut cpus = [(Duration::ZERO, Cpu::default()); 2];
            for _ in 0..rounds {
                for (i, (t, ch)) in targets.iter().zip(&confirm_channels).enumerate() {
                    let pid = if i == 0 { None } else { rabbit_pid.as_deref() };
                    let (wall, cpu) = measured(|| rt.block_on(w(t, ch)), pid);
                    walls[i].push(wall);
                    let sum = &mut cpus[i];
                    sum.0 += wall;
                    sum.1.client += cpu.client;
                    sum.1.busiest += cpu.busiest;
                    sum.1.server = cpu.server.map(|s| s + sum.1.server.unwrap_or_default());
                }
            }
            let [ta, tb] = walls.map(|mut v| median(&mut v));
            let cpu = cpus.map(|(wall, cpu)| match cpu.server {
                _ if cpu.client.is_zero() => String::new(),
                Some(s) => format!(
                    "{:>4.0}/{:>3.0}/{:>3.0}",
                    pct(cpu.client, wall),
                    pct(cpu.busiest, wall),
                    pct(s, wall)
                ),
                None => format!(
                    "{:>4.0}/{:>3.0}/  ?",
                    pct(cpu.client, wall),
                    pct(cpu.busiest, wall)
                ),
            });
            println!(
                "  {name:<20} warren {ta:>9.2?} cpu {}  rabbitmq {tb:>9.2?} cpu {}  ratio {:.2}",
                cpu[0],
                cpu[1],
                ta.as_secs_f64() / tb.as_secs_f64()
            );
        }
    }
    for t in &targets {
        let _ = rt.block_on(
            t.publisher
                .queue_delete(t.queue.as_str().into(), Default::default()),
        );
        for q in &t.topic_queues {
            let _ = rt.block_on(
                t.publisher
                    .queue_delete(q.as_str().into(), Default::default()),
            );
        }
        for q in &t.par_queues {
            let _ = rt.block_on(
                t.publisher
                    .queue_delete(q.as_str().into(), Default::default()),
            );
        }
        let _ = rt.block_on(
            t.publisher
                .exchange_delete(t.topic_exchange.as_str().into(), Default::default()),
        );
    }
    server_rt.block_on(server.shutdown());
}
