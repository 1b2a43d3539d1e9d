//! Load and back-pressure: clients that stop reading, a publisher faster
//! than its consumer, a thousand connections at once. The server's memory
//! per connection stays bounded, the other connections keep flowing, and
//! nothing accepted is lost.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, queue, AMQPClass, BasicProperties as WireProperties};
use bytes::Bytes;
use common::{frame_bytes, method_bytes, start, start_with, within, Raw};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::QueueDeclareOptions;
use warren_wire::MemoryWatermark;

/// One delivery as a raw client reads it: channel, method, properties, body.
struct RawDelivery {
    properties: WireProperties,
    body: Vec<u8>,
}

async fn next_delivery(raw: &mut Raw) -> RawDelivery {
    let channel = loop {
        match raw.frame().await.expect("connection ended") {
            AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => break ch,
            AMQPFrame::Method(_, m) => assert!(
                !matches!(m, AMQPClass::Channel(_) | AMQPClass::Connection(_)),
                "unexpected {m:?}"
            ),
            _ => {}
        }
    };
    let h = match raw.frame().await {
        Some(AMQPFrame::Header(ch, h)) if ch == channel => h,
        other => panic!("expected a content header, got {other:?}"),
    };
    let mut body = Vec::new();
    while (body.len() as u64) < h.body_size {
        match raw.frame().await {
            Some(AMQPFrame::Body(ch, b)) if ch == channel => body.extend_from_slice(&b),
            other => panic!("expected a content body, got {other:?}"),
        }
    }
    RawDelivery {
        properties: h.properties,
        body,
    }
}

/// `basic.publish` with its content, as one buffer.
fn publish_bytes(routing_key: &str, properties: WireProperties, body: &[u8]) -> Vec<u8> {
    let mut v = method_bytes(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    );
    v.extend(frame_bytes(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties,
        },
    )));
    v.extend(frame_bytes(&AMQPFrame::Body(1, body.to_vec())));
    v
}

/// Publishes `n` messages on a lapin channel and consumes them back, acking:
/// the proof that a connection flows while another one is stuck.
async fn round_trip(env: &common::Env, queue: &str, n: u32) {
    let (_conn, ch) = env.channel().await;
    within(ch.queue_declare(queue.into(), Default::default(), FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut consumer = within(ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut confirms = Vec::new();
    for i in 0..n {
        confirms.push(
            within(ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(within(c).await.unwrap().is_ack());
    }
    let mut seen = BTreeSet::new();
    while seen.len() < n as usize {
        let d = within(consumer.next()).await.unwrap().unwrap();
        assert!(seen.insert(u32::from_be_bytes(d.data[..].try_into().unwrap())));
        within(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_stops_reading_holds_a_bounded_share_of_its_queue() {
    // 100 MiB waiting for one consumer; each message is one shared buffer in
    // the broker, but would be a copy in the connection's outgoing buffer.
    const SIZE: usize = 256 * 1024;
    const COUNT: u64 = 400;
    let env = start().await;
    env.broker
        .declare_queue("big", QueueDeclareOptions::default())
        .unwrap();
    let payload = Bytes::from(vec![b'x'; SIZE]);
    for _ in 0..COUNT {
        env.broker.publish("", "big", payload.clone()).unwrap();
    }

    // A no-ack consumer that never reads its socket. In no-ack mode the
    // queue counts a message as `acked` when the connection takes it to
    // send, so `acked` is exactly what the connection has taken off the
    // queue: sent, buffered in the socket, or waiting in the server.
    let mut stuck = Raw::ready(env.addr()).await;
    stuck
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "big".into(),
                no_ack: true,
                ..Default::default()
            })),
        )
        .await;
    within(async {
        while env.broker.queue_stats("big").unwrap().acked == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // Meanwhile another client publishes and consumes 1,000 messages.
    round_trip(&env, "side", 1000).await;

    // What the stuck connection took is bounded by the server's outgoing
    // budget (4 MiB) plus what the kernel's socket buffers hold (a few MiB):
    // well under 16 MiB. The rest is still in the queue.
    let s = env.broker.queue_stats("big").unwrap();
    println!(
        "stuck consumer took {} of {COUNT} messages of 256 KiB",
        s.acked
    );
    assert!(s.acked <= 64, "{s:?}");
    assert_eq!(s.ready + s.unacked + s.acked, COUNT, "{s:?}");

    // Once it reads, everything arrives.
    for _ in 0..COUNT {
        let d = next_delivery(&mut stuck).await;
        assert_eq!(d.body.len(), SIZE);
    }
    let s = env.broker.queue_stats("big").unwrap();
    assert_eq!((s.ready, s.unacked, s.acked), (0, 0, COUNT));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_asks_without_reading_is_not_read_until_it_reads() {
    // Passive declares of a queue with a 255-byte name: each request and
    // each reply is ~280 bytes. The client pipelines 100,000 of them
    // (27 MB) and reads nothing, so the replies cannot be written. Before
    // the fix the server kept reading and queued every reply in memory; now
    // it stops reading once 4,096 replies wait (the client meets TCP
    // back-pressure), which `flow_connection_count` shows, and resumes when
    // the client reads.
    const REQUESTS: usize = 100_000;
    let env = start().await;
    let name = "q".repeat(255);
    env.broker
        .declare_queue(&name, QueueDeclareOptions::default())
        .unwrap();
    let raw = Raw::ready(env.addr()).await;
    let request = method_bytes(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.as_str().into(),
            passive: true,
            ..Default::default()
        })),
    );
    let chunk: Vec<u8> = request.repeat(1000);
    let (mut rd, mut wr) = raw.s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..REQUESTS / 1000 {
            wr.write_all(&chunk).await.unwrap();
        }
        wr
    });
    within(env.server.wait_for_flow_connection_count(1)).await;

    // Another connection is served meanwhile.
    round_trip(&env, "side", 1000).await;
    // And the stuck one is still paused. (Until the kernel's buffers are
    // full, the pause lifts for a moment each time the writer hands them
    // more replies, so wait for the state rather than sample it.)
    within(env.server.wait_for_flow_connection_count(1)).await;

    // The client reads: every request gets its reply, and the server goes
    // back to reading it.
    let reply_len = method_bytes(
        1,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: name.as_str().into(),
            message_count: 0,
            consumer_count: 0,
        })),
    )
    .len();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    while got < REQUESTS * reply_len {
        let n = within(rd.read(&mut buf)).await.unwrap();
        assert!(n > 0, "connection closed after {got} bytes");
        got += n;
    }
    assert_eq!(got, REQUESTS * reply_len);
    let _wr = within(writer).await.unwrap();
    within(env.server.wait_for_flow_connection_count(0)).await;
    assert_eq!(env.server.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fast_publisher_is_blocked_near_the_watermark_and_resumes_after_a_drain() {
    const WATERMARK: u64 = 256 * 1024;
    const SIZE: usize = 1024;
    const TOTAL: u32 = 8000; // 8 MiB: 32 times the watermark
    let env = start_with(|c| {
        c.with_memory_watermark(
            MemoryWatermark::new(WATERMARK).with_interval(Duration::from_millis(2)),
        )
    })
    .await;
    env.broker
        .declare_queue("fill", QueueDeclareOptions::default())
        .unwrap();
    let (pub_conn, pub_ch) = env.channel().await;
    let mut events = pub_conn.events_listener();
    within(pub_ch.confirm_select(Default::default()))
        .await
        .unwrap();
    // As fast as it can: no waiting for confirms until the end.
    let publisher = tokio::spawn(async move {
        let mut confirms = Vec::new();
        for i in 0..TOTAL {
            let mut body = vec![0u8; SIZE];
            body[..4].copy_from_slice(&i.to_be_bytes());
            confirms.push(
                within(pub_ch.basic_publish(
                    "".into(),
                    "fill".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                ))
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(within(c).await.unwrap().is_ack());
        }
        pub_ch
    });
    loop {
        match next_event(&mut events).await {
            Event::ConnectionBlocked(reason) => {
                assert_eq!(reason, "low on memory");
                break;
            }
            Event::ConnectionUnblocked => panic!("unblocked before blocked"),
            _ => {}
        }
    }
    // Blocked: the connection is not read anymore, so what the broker
    // holds stops growing, a little over the watermark: what the publisher
    // routes between two measures (seen: 1.02 times the watermark). The
    // bound leaves room for a loaded machine delaying the measure, and is
    // still a quarter of what the publisher would have pushed.
    let held = env.broker.stats().ready_bytes;
    println!("blocked with {held} bytes held (watermark {WATERMARK})");
    assert!(held > WATERMARK);
    assert!(held <= 8 * WATERMARK, "{held}");
    // The last confirms cannot have come: the publisher is still waiting.
    assert!(!publisher.is_finished());

    // A consumer drains; the alarm clears and the publisher goes on.
    let (_conn, ch) = env.channel().await;
    within(ch.basic_qos(100, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(ch.basic_consume(
        "fill".into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    let mut peak = held;
    let mut unblocked = false;
    while seen.len() < TOTAL as usize {
        let d = within(consumer.next()).await.unwrap().unwrap();
        let n = u32::from_be_bytes(d.data[..4].try_into().unwrap());
        assert!(seen.insert(n), "message {n} twice");
        within(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
        peak = peak.max(env.broker.stats().ready_bytes);
        while let Some(Some(e)) = futures_lite::future::poll_once(events.next()).await {
            unblocked |= matches!(e, Event::ConnectionUnblocked);
        }
    }
    let _pub_ch = within(publisher).await.unwrap();
    while !unblocked {
        unblocked = matches!(next_event(&mut events).await, Event::ConnectionUnblocked);
    }
    println!("peak held while draining: {peak} bytes");
    assert!(peak <= 8 * WATERMARK, "{peak}");
    let s = env.broker.queue_stats("fill").unwrap();
    assert_eq!((s.enqueued, s.ready), (u64::from(TOTAL), 0), "{s:?}");
}

async fn next_event(events: &mut (impl futures_lite::Stream<Item = Event> + Unpin)) -> Event {
    within(events.next()).await.expect("event stream ended")
}

/// The soft and hard limits on open files, from /proc/self/limits.
fn open_files_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line.split_whitespace().filter_map(|w| {
        w.parse::<u64>()
            .ok()
            .or((w == "unlimited").then_some(u64::MAX))
    });
    Some((nums.next()?, nums.next()?))
}

/// Raises the soft open-files limit to `want` (within the hard limit) with
/// util-linux's `prlimit`, so that the test needs no unsafe code.
fn ensure_open_files(want: u64) -> Result<(), String> {
    let (soft, hard) = open_files_limit().ok_or("cannot read /proc/self/limits")?;
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        return Err(format!("hard limit on open files is {hard} < {want}"));
    }
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()
        .map_err(|e| format!("prlimit: {e}"))?;
    match open_files_limit() {
        Some((soft, _)) if soft >= want => Ok(()),
        _ => Err(format!("could not raise the open-files limit ({status})")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_connections_each_get_their_own_rpc_answer() {
    const CLIENTS: usize = 1000;
    if let Err(why) = ensure_open_files(2100) {
        println!("SKIPPED a_thousand_connections_each_get_their_own_rpc_answer: {why}");
        return;
    }
    let env = start().await;
    env.broker
        .declare_queue("rpc", QueueDeclareOptions::default())
        .unwrap();

    // One server: answers each request to its reply-to, same correlation id.
    let (_server_conn, server_ch) = env.channel().await;
    within(server_ch.basic_qos(500, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut requests = within(server_ch.basic_consume(
        "rpc".into(),
        "server".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let responder = tokio::spawn(async move {
        let mut answered = 0usize;
        while let Some(Ok(d)) = requests.next().await {
            let reply_to = d.properties.reply_to().clone().expect("reply_to");
            let correlation_id = d
                .properties
                .correlation_id()
                .clone()
                .expect("correlation id");
            let mut answer = b"answer ".to_vec();
            answer.extend_from_slice(&d.data);
            server_ch
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &answer,
                    BasicProperties::default().with_correlation_id(correlation_id),
                )
                .await
                .unwrap();
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
            answered += 1;
        }
        answered
    });

    // The clients: raw, one connection each, all open at once. Even ones
    // use direct reply-to, odd ones an exclusive server-named queue.
    let started = Instant::now();
    let all_open = Arc::new(tokio::sync::Barrier::new(CLIENTS + 1));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let addr = env.addr();
        let all_open = all_open.clone();
        clients.push(tokio::spawn(async move {
            let mut raw = Raw::ready(addr).await;
            let reply_to = if i % 2 == 0 {
                "amq.rabbitmq.reply-to".to_owned()
            } else {
                raw.send_method(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                        exclusive: true,
                        ..Default::default()
                    })),
                )
                .await;
                match raw.method().await {
                    Some((1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))) => {
                        ok.queue.to_string()
                    }
                    other => panic!("expected declare-ok, got {other:?}"),
                }
            };
            raw.send_method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: reply_to.as_str().into(),
                    no_ack: true,
                    ..Default::default()
                })),
            )
            .await;
            match raw.method().await {
                Some((1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)))) => {}
                other => panic!("expected consume-ok, got {other:?}"),
            }
            all_open.wait().await;
            let correlation_id = format!("call-{i}");
            let props = WireProperties::default()
                .with_reply_to(reply_to.as_str().into())
                .with_correlation_id(correlation_id.as_str().into());
            raw.send(&publish_bytes("rpc", props, i.to_string().as_bytes()))
                .await;
            let d = next_delivery(&mut raw).await;
            assert_eq!(
                d.properties.correlation_id().as_ref().map(|c| c.as_str()),
                Some(correlation_id.as_str())
            );
            assert_eq!(d.body, format!("answer {i}").into_bytes());
            raw
        }));
    }
    within(all_open.wait()).await;
    let opened = started.elapsed();
    assert_eq!(env.server.connection_count(), CLIENTS + 1);
    let mut raws = Vec::new();
    for c in clients {
        raws.push(within(c).await.unwrap());
    }
    let answered = started.elapsed();
    drop(raws);
    within(env.server.wait_for_connection_count(1)).await;
    // the exclusive reply queues went with their connections
    let queues: Vec<String> = env
        .broker
        .stats()
        .queues
        .into_iter()
        .map(|q| q.name)
        .collect();
    assert_eq!(queues, ["rpc"]);
    let s = env.broker.queue_stats("rpc").unwrap();
    assert_eq!((s.enqueued, s.ready), (CLIENTS as u64, 0));
    responder.abort();
    println!(
        "{CLIENTS} connections open in {opened:?}, all answered in {answered:?}, all closed in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replies_to_a_direct_reply_to_consumer_that_stops_reading_are_returned() {
    // Direct reply-to has no queue to hold replies: they go straight to the
    // consumer's connection. One that stops reading must not make the
    // server buffer whatever others send it; past the connection's outgoing
    // budget, replies are unroutable (returned if mandatory), as when the
    // consumer is gone.
    const SIZE: usize = 256 * 1024;
    const REPLIES: usize = 200; // 50 MiB
    let env = start().await;
    env.broker
        .declare_queue("probe", QueueDeclareOptions::default())
        .unwrap();
    let mut stuck = Raw::ready(env.addr()).await;
    stuck
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "amq.rabbitmq.reply-to".into(),
                no_ack: true,
                ..Default::default()
            })),
        )
        .await;
    // its address: it sends a request carrying it
    stuck
        .send(&publish_bytes(
            "probe",
            WireProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
            b"request",
        ))
        .await;
    let address = within(async {
        loop {
            if let Some(d) = env.broker.get("probe", Default::default()).unwrap() {
                return d.properties().reply_to.clone().unwrap();
            }
            tokio::task::yield_now().await;
        }
    })
    .await;

    // The client reads nothing from now on; another one sends it replies.
    let (_conn, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let body = vec![b'r'; SIZE];
    let mut confirms = Vec::new();
    for _ in 0..REPLIES {
        confirms.push(
            within(ch.basic_publish(
                "".into(),
                address.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    let mut returned = 0;
    for c in confirms {
        let c = within(c).await.unwrap();
        assert!(c.is_ack());
        returned += usize::from(c.take_message().is_some());
    }
    let delivered = REPLIES - returned;
    println!("stuck reply consumer: {delivered} of {REPLIES} replies of 256 KiB taken, {returned} returned");
    // the outgoing budget (4 MiB) and the socket buffers: well under 16 MiB
    assert!(delivered <= 64, "{delivered}");

    // What was taken arrives once it reads.
    for _ in 0..delivered {
        assert_eq!(next_delivery(&mut stuck).await.body.len(), SIZE);
    }
}
