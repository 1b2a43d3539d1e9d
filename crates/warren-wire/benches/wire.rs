//! warren-wire against RabbitMQ on loopback, with the same client (lapin):
//!
//! - `confirms`: 1000 publishes of 64 bytes in flight under publisher
//!   confirms, until every ack is in;
//! - `pubsub`: 1000 publishes received by a no-ack consumer on another
//!   connection;
//! - `roundtrip`: 100 sequential publish → deliver round trips.
//!
//! The baseline is RabbitMQ, measured in the same run, rounds interleaved;
//! the report states warren's time as a ratio of RabbitMQ's. Set
//! `WARREN_RABBITMQ_ADDR=127.0.0.1:5673` (a RabbitMQ with guest/guest); without
//! it only warren is measured. warren's server runs in this process, so
//! client and server share its CPU; RabbitMQ runs in its own.
//!
//! ```sh
//! WARREN_RABBITMQ_ADDR=127.0.0.1:5673 cargo bench -p warren-wire --bench wire
//! ```

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::runtime::Runtime;
use warren_core::Broker;
use warren_wire::{Server, ServerConfig};

const BATCH: usize = 1000;
const ROUNDTRIPS: usize = 100;
const BODY: [u8; 64] = [7; 64];

struct Target {
    name: &'static str,
    publisher: Channel,
    consumer_conn: Connection,
    _conn: Connection,
    queue: String,
}

async fn target(name: &'static str, url: &str, tag: &str) -> Target {
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
    Target {
        name,
        publisher,
        consumer_conn,
        _conn: conn,
        queue,
    }
}

async fn publish(ch: &Channel, queue: &str) -> lapin::PublisherConfirm {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        &BODY,
        BasicProperties::default(),
    )
    .await
    .expect("publish")
}

/// `BATCH` publishes in flight under confirms.
async fn confirms(t: &Target, ch: &Channel) -> Duration {
    let start = Instant::now();
    let mut pending = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        pending.push(publish(ch, &t.queue).await);
    }
    for p in pending {
        p.await.expect("confirm");
    }
    let d = start.elapsed();
    ch.queue_purge(t.queue.as_str().into(), Default::default())
        .await
        .expect("purge");
    d
}

/// `BATCH` publishes received by a consumer on another connection.
async fn pubsub(t: &Target) -> Duration {
    let cch = t.consumer_conn.create_channel().await.expect("channel");
    let mut consumer = cch
        .basic_consume(
            t.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let start = Instant::now();
    for _ in 0..BATCH {
        publish(&t.publisher, &t.queue).await;
    }
    for _ in 0..BATCH {
        consumer.next().await.expect("delivery").expect("delivery");
    }
    let d = start.elapsed();
    cch.close(200, "done".into()).await.expect("close");
    d
}

/// `ROUNDTRIPS` sequential publish → deliver round trips.
async fn roundtrip(t: &Target) -> Duration {
    let cch = t.consumer_conn.create_channel().await.expect("channel");
    let mut consumer = cch
        .basic_consume(
            t.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let start = Instant::now();
    for _ in 0..ROUNDTRIPS {
        publish(&t.publisher, &t.queue).await;
        consumer.next().await.expect("delivery").expect("delivery");
    }
    let d = start.elapsed();
    cch.close(200, "done".into()).await.expect("close");
    d
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let rt = Runtime::new().expect("runtime");
    let broker = Broker::new();
    let server = rt
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
    let mut targets = vec![rt.block_on(target("warren", &warren_url, "w"))];
    if let Some(url) = &rabbit_url {
        targets.push(rt.block_on(target("rabbitmq", url, "r")));
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
    {
        let mut g = c.benchmark_group("confirms");
        g.throughput(Throughput::Elements(BATCH as u64));
        for (t, ch) in targets.iter().zip(&confirm_channels) {
            g.bench_function(t.name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(confirms(t, ch))).sum())
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("pubsub");
        g.throughput(Throughput::Elements(BATCH as u64));
        for t in &targets {
            g.bench_function(t.name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(pubsub(t))).sum())
            });
        }
        g.finish();
    }
    {
        let mut g = c.benchmark_group("roundtrip");
        g.throughput(Throughput::Elements(ROUNDTRIPS as u64));
        for t in &targets {
            g.bench_function(t.name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(roundtrip(t))).sum())
            });
        }
        g.finish();
    }
    c.final_summary();

    if targets.len() == 2 {
        // The ratio, from interleaved rounds under the same noise.
        let rounds = if quick { 1 } else { 15 };
        println!(
            "\nwarren / RabbitMQ (median of {rounds} interleaved rounds; below 1 = warren faster)"
        );
        type Workload = for<'a> fn(
            &'a Target,
            &'a Channel,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Duration> + 'a>,
        >;
        let workloads: [(&str, Workload); 3] = [
            ("confirms", |t, ch| Box::pin(confirms(t, ch))),
            ("pubsub", |t, _| Box::pin(pubsub(t))),
            ("roundtrip", |t, _| Box::pin(roundtrip(t))),
        ];
        for (name, w) in workloads {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for _ in 0..rounds {
                a.push(rt.block_on(w(&targets[0], &confirm_channels[0])));
                b.push(rt.block_on(w(&targets[1], &confirm_channels[1])));
            }
            let (ta, tb) = (median(&mut a), median(&mut b));
            println!(
                "  {name:<10} warren {:>9.2?}  rabbitmq {:>9.2?}  ratio {:.2}",
                ta,
                tb,
                ta.as_secs_f64() / tb.as_secs_f64()
            );
        }
    }
    for t in &targets {
        let _ = rt.block_on(
            t.publisher
                .queue_delete(t.queue.as_str().into(), Default::default()),
        );
    }
    rt.block_on(server.shutdown());
}
