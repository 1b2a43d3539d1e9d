//! Clients that go away at the worst moment: mid-publish, holding
//! unacknowledged deliveries on several channels while others publish, or
//! silent past two heartbeat intervals. What they leave behind is exact:
//! nothing half-received is routed, every message they held goes back to its
//! queue once, marked redelivered, and the server keeps serving the others.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, queue, AMQPClass, BasicProperties as WireProperties};
use common::{frame_bytes, method_bytes, start, start_with, within, Raw};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_core::QueueDeclareOptions;
use warren_wire::Limits;

/// `basic.publish` to the default exchange, routing key `queue`.
fn publish(channel: u16, queue: &str) -> Vec<u8> {
    method_bytes(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: queue.into(),
            mandatory: false,
            immediate: false,
        })),
    )
}

/// A content header announcing `size` body bytes.
fn header(channel: u16, size: u64) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: size,
            properties: WireProperties::default(),
        },
    ))
}

fn body(channel: u16, bytes: &[u8]) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Body(channel, bytes.to_vec()))
}

/// One `basic.deliver` with its content, as a raw client reads it.
struct RawDelivery {
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    body: Vec<u8>,
}

async fn next_delivery(raw: &mut Raw) -> RawDelivery {
    let (channel, d) = loop {
        match raw.frame().await.expect("connection ended") {
            AMQPFrame::Method(ch, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                break (ch, d)
            }
            AMQPFrame::Method(_, m) => {
                assert!(
                    !matches!(m, AMQPClass::Channel(_) | AMQPClass::Connection(_)),
                    "unexpected {m:?}"
                );
            }
            _ => {}
        }
    };
    let size = match raw.frame().await {
        Some(AMQPFrame::Header(ch, h)) if ch == channel => h.body_size,
        other => panic!("expected a content header, got {other:?}"),
    };
    let mut body = Vec::new();
    while (body.len() as u64) < size {
        match raw.frame().await {
            Some(AMQPFrame::Body(ch, b)) if ch == channel => body.extend_from_slice(&b),
            other => panic!("expected a content body, got {other:?}"),
        }
    }
    RawDelivery {
        channel,
        delivery_tag: d.delivery_tag,
        redelivered: d.redelivered,
        body,
    }
}

/// Sends `method` and reads up to its reply on the same channel.
async fn call(raw: &mut Raw, channel: u16, method: AMQPClass) -> AMQPClass {
    raw.send_method(channel, method).await;
    match raw.method().await {
        Some((ch, m)) if ch == channel => m,
        other => panic!("expected a reply on channel {channel}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_dropping_mid_publish_routes_nothing() {
    let env = start().await;
    env.broker
        .declare_queue("in", QueueDeclareOptions::default())
        .unwrap();
    // A bystander connection, open throughout.
    let (_conn, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();

    // Every way to stop between `basic.publish` and the last body byte.
    let whole = {
        let mut v = publish(1, "in");
        v.extend(header(1, 6));
        v.extend(body(1, b"whole!"));
        v
    };
    let cuts: Vec<Vec<u8>> = vec![
        // the method only
        publish(1, "in"),
        // method and header, no body
        [publish(1, "in"), header(1, 1000)].concat(),
        // 400 of the 1000 body bytes announced, in a complete frame
        [publish(1, "in"), header(1, 1000), body(1, &[7; 400])].concat(),
        // the body frame itself cut in the middle
        {
            let b = body(1, &[7; 1000]);
            [publish(1, "in"), header(1, 1000), b[..500].to_vec()].concat()
        },
        // the header frame cut in the middle
        {
            let h = header(1, 1000);
            [publish(1, "in"), h[..h.len() - 3].to_vec()].concat()
        },
    ];
    let cases = cuts.len() as u64;
    for cut in cuts {
        let mut raw = Raw::ready(env.addr()).await;
        // one complete message first, then the cut-off one, then gone
        raw.send(&[whole.clone(), cut].concat()).await;
        drop(raw);
    }
    within(env.server.wait_for_connection_count(1)).await;

    // Exactly the complete messages were enqueued.
    let s = env.broker.queue_stats("in").unwrap();
    assert_eq!((s.enqueued, s.ready, s.unacked), (cases, cases, 0), "{s:?}");
    for _ in 0..cases {
        let d = env.broker.get("in", Default::default()).unwrap().unwrap();
        assert_eq!(&d.body()[..], b"whole!");
        d.ack();
    }
    let stats = env.broker.stats();
    assert_eq!(stats.ready_bytes, 0);
    assert_eq!(stats.unroutable, 0);

    // The bystander never noticed.
    let confirm = within(ch.basic_publish(
        "".into(),
        "in".into(),
        BasicPublishOptions::default(),
        b"after",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    assert_eq!(env.broker.queue_stats("in").unwrap().ready, 1);
    assert_eq!(env.server.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_deliveries_on_several_channels_go_to_another_consumer_once() {
    const TOTAL: u32 = 3000;
    const CHANNELS: u16 = 3;
    const PREFETCH: u16 = 10;
    let held = u32::from(CHANNELS * PREFETCH);
    let env = start().await;
    env.broker
        .declare_queue("work", QueueDeclareOptions::default())
        .unwrap();

    // A publisher that keeps publishing (each with its confirm) throughout.
    let (pub_conn, pub_ch) = env.channel().await;
    within(pub_ch.confirm_select(Default::default()))
        .await
        .unwrap();
    let publisher = tokio::spawn(async move {
        for i in 0..TOTAL {
            let confirm = within(pub_ch.basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap();
            assert!(within(confirm).await.unwrap().is_ack());
        }
        pub_conn
    });

    // A raw consumer: three channels, prefetch 10 each, never acks.
    let mut doomed = Raw::ready(env.addr()).await;
    for ch in 2..=CHANNELS {
        doomed.open_channel(ch).await;
    }
    for ch in 1..=CHANNELS {
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: PREFETCH,
            ..Default::default()
        }));
        assert!(matches!(
            call(&mut doomed, ch, qos).await,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
        ));
    }
    for ch in 1..=CHANNELS {
        let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "work".into(),
            consumer_tag: format!("doomed-{ch}").as_str().into(),
            ..Default::default()
        }));
        doomed.send_method(ch, consume).await;
    }
    let mut taken = BTreeSet::new();
    let mut per_channel = [0u16; CHANNELS as usize + 1];
    while taken.len() < held as usize {
        let d = next_delivery(&mut doomed).await;
        assert!(!d.redelivered);
        per_channel[usize::from(d.channel)] += 1;
        assert_eq!(
            u64::from(per_channel[usize::from(d.channel)]),
            d.delivery_tag
        );
        assert!(taken.insert(u32::from_be_bytes(d.body[..].try_into().unwrap())));
    }
    assert!(per_channel[1..].iter().all(|n| *n == PREFETCH));
    // prefetch holds: nothing more is outstanding than the three windows
    assert_eq!(
        env.broker.queue_stats("work").unwrap().unacked,
        u64::from(held)
    );
    let mut doomed = Some(doomed);

    // The survivor: a lapin consumer that acks everything it gets.
    let (_conn, ch) = env.channel().await;
    within(ch.basic_qos(50, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(ch.basic_consume(
        "work".into(),
        "survivor".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut got = BTreeSet::new();
    let mut redelivered = BTreeSet::new();
    let mut publishing_when_dropped = false;
    while got.len() < TOTAL as usize {
        let d = within(consumer.next()).await.unwrap().unwrap();
        let n = u32::from_be_bytes(d.data[..].try_into().unwrap());
        assert!(got.insert(n), "message {n} delivered twice");
        if d.redelivered {
            redelivered.insert(n);
        }
        within(d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
        if doomed.is_some() && got.len() >= 100 {
            // Gone without a word, with 30 unacknowledged deliveries.
            publishing_when_dropped = !publisher.is_finished();
            drop(doomed.take());
        }
    }
    // Exactly the held messages came back, each once, marked redelivered.
    assert_eq!(redelivered, taken);
    assert_eq!(got, (0..TOTAL).collect());
    let _pub_conn = within(publisher).await.unwrap();
    let s = env.broker.queue_stats("work").unwrap();
    assert_eq!((s.ready, s.enqueued), (0, u64::from(TOTAL)), "{s:?}");
    // the last acks may still be on their way
    within(async {
        while env.broker.queue_stats("work").unwrap().acked < u64::from(TOTAL) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(env.broker.queue_stats("work").unwrap().unacked, 0);
    println!("publisher still publishing when the consumer dropped: {publishing_when_dropped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_silent_for_two_heartbeats_loses_its_deliveries_and_exclusive_queues() {
    let env = start_with(|c| {
        c.with_limits(Limits {
            heartbeat: 1,
            ..Limits::default()
        })
    })
    .await;
    env.broker
        .declare_queue("jobs", QueueDeclareOptions::default())
        .unwrap();
    for i in 0..5u8 {
        env.broker.publish("", "jobs", vec![i]).unwrap();
    }
    let mut raw = Raw::connect(env.addr()).await;
    raw.handshake_full(0, 0, 1).await;
    raw.open_channel(1).await;
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "mine".into(),
        exclusive: true,
        ..Default::default()
    }));
    assert!(matches!(
        call(&mut raw, 1, declare).await,
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
    ));
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "jobs".into(),
            ..Default::default()
        })),
    )
    .await;
    // The last thing the client ever sends.
    let silent_since = Instant::now();
    for _ in 0..5 {
        next_delivery(&mut raw).await;
    }
    let s = env.broker.queue_stats("jobs").unwrap();
    assert_eq!((s.ready, s.unacked), (0, 5));
    assert!(env.broker.has_queue("mine"));

    // It keeps reading (the server's heartbeats arrive) but never answers:
    // the server hangs up, not before two intervals.
    assert!(raw.eof().await);
    let silent_for = silent_since.elapsed();
    assert!(silent_for.as_secs_f64() >= 2.0, "{silent_for:?}");
    within(env.server.wait_for_connection_count(0)).await;
    let s = env.broker.queue_stats("jobs").unwrap();
    assert_eq!((s.ready, s.unacked), (5, 0));
    assert!(!env.broker.has_queue("mine"));
    for i in 0..5u8 {
        let d = env.broker.get("jobs", Default::default()).unwrap().unwrap();
        assert_eq!((&d.body()[..], d.redelivered()), (&[i][..], true));
        d.ack();
    }
    println!("dropped after {silent_for:?} of silence (heartbeat 1 s)");
}
