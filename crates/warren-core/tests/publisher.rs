//! `Publisher`: a publisher bound to one exchange and routing key keeps its
//! route, and behaves as `Broker::publish` in every other respect.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use warren_core::{
    AMQPValue, BasicProperties, Broker, ConsumeOptions, ExchangeKind, FieldTable, GetOptions,
    Overflow, PublishError, QueueDeclareOptions, SharedProperties,
};

const WAIT: Duration = Duration::from_secs(5);

fn broker_with(queues: &[&str]) -> Broker {
    let b = Broker::new();
    for q in queues {
        b.declare_queue(q, QueueDeclareOptions::default()).unwrap();
    }
    b
}

fn body_of(b: &Broker, queue: &str) -> Option<Vec<u8>> {
    let d = b.get(queue, GetOptions::default()).unwrap()?;
    let body = d.body().to_vec();
    d.ack();
    Some(body)
}

fn exchange_counts(b: &Broker, name: &str) -> (u64, u64, u64) {
    let s = b.stats();
    let x = s.exchanges.iter().find(|x| x.name == name).unwrap();
    (x.published, x.routed, x.unroutable)
}

#[test]
fn publishes_as_the_broker_does() {
    let b = broker_with(&["q"]);
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    let mut p = b.publisher("", "q");
    assert_eq!((p.exchange(), p.routing_key()), ("", "q"));
    for body in ["a", "b", "c"] {
        assert_eq!(p.publish(body).unwrap().routed, 1);
    }
    for body in ["a", "b", "c"] {
        let d = c.recv_timeout(WAIT).unwrap();
        assert_eq!(&d.body()[..], body.as_bytes());
        assert_eq!((d.exchange(), d.routing_key()), ("", "q"));
        assert_eq!(d.properties(), BasicProperties::empty());
        d.ack();
    }
}

#[test]
fn follows_topology_changes() {
    let b = broker_with(&["one", "two"]);
    b.bind_queue("one", "amq.direct", "k", &FieldTable::new())
        .unwrap();
    let mut p = b.publisher("amq.direct", "k");
    assert_eq!(p.publish("1").unwrap().routed, 1);
    // A binding made after the route was kept is seen by the next publish.
    b.bind_queue("two", "amq.direct", "k", &FieldTable::new())
        .unwrap();
    assert_eq!(p.publish("2").unwrap().routed, 2);
    // So is an unbinding, and a queue's deletion.
    b.unbind_queue("one", "amq.direct", "k", &FieldTable::new())
        .unwrap();
    assert_eq!(p.publish("3").unwrap().routed, 1);
    b.delete_queue("two", Default::default()).unwrap();
    assert!(p.publish("4").unwrap().is_unroutable());
    assert_eq!(body_of(&b, "one").as_deref(), Some(&b"1"[..]));
    assert_eq!(body_of(&b, "one").as_deref(), Some(&b"2"[..]));
    assert_eq!(body_of(&b, "one"), None);
    // Every publish is counted on the exchange, routed or not.
    assert_eq!(exchange_counts(&b, "amq.direct"), (4, 3, 1));
}

#[test]
fn a_missing_exchange_is_refused_until_it_exists() {
    let b = broker_with(&["q"]);
    let mut p = b.publisher("later", "k");
    let e = p.publish("x").unwrap_err();
    assert_eq!(e.error().unwrap().reply_code(), 404);
    assert_eq!(&e.into_message().body[..], b"x");
    b.declare_exchange("later", ExchangeKind::Direct, Default::default())
        .unwrap();
    b.bind_queue("q", "later", "k", &FieldTable::new()).unwrap();
    assert_eq!(p.publish("y").unwrap().routed, 1);
    assert_eq!(body_of(&b, "q").as_deref(), Some(&b"y"[..]));
    // Deleted again: refused again.
    b.delete_exchange("later", false).unwrap();
    let e = p.publish("z").unwrap_err();
    assert_eq!(e.error().unwrap().reply_code(), 404);
}

#[test]
fn an_internal_exchange_is_refused() {
    let b = broker_with(&["q"]);
    let opts = warren_core::ExchangeDeclareOptions {
        internal: true,
        ..Default::default()
    };
    b.declare_exchange("inside", ExchangeKind::Fanout, opts)
        .unwrap();
    b.bind_queue("q", "inside", "", &FieldTable::new()).unwrap();
    let mut p = b.publisher("inside", "");
    for _ in 0..2 {
        let e = p.publish("x").unwrap_err();
        assert_eq!(e.error().unwrap().reply_code(), 403);
    }
    assert_eq!(body_of(&b, "q"), None);
}

#[test]
fn properties_ttl_cc_and_headers_routes_are_the_brokers() {
    let b = broker_with(&["q", "cc", "h"]);
    let mut p = b.publisher("", "q");
    p.publish("warm the route").unwrap();
    assert!(body_of(&b, "q").is_some());
    // Shared properties reach the consumer, as they are.
    let json = SharedProperties::new(BasicProperties::default().with_content_type("json"));
    p.publish_shared(&json, "j").unwrap();
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert_eq!(d.properties().content_type.as_deref(), Some("json"));
    d.ack();
    // A bad expiration is refused (406), the message handed back whole.
    let bad = SharedProperties::new(BasicProperties::default().with_expiration("soon"));
    let e = p.publish_shared(&bad, "x").unwrap_err();
    assert_eq!(e.error().unwrap().reply_code(), 406);
    assert_eq!(
        e.into_message().properties.expiration.as_deref(),
        Some("soon")
    );
    // A per-message TTL of 0: gone unless a consumer takes it at once.
    let now_or_never = SharedProperties::new(BasicProperties::default().with_expiration("0"));
    assert_eq!(p.publish_shared(&now_or_never, "t").unwrap().routed, 1);
    assert_eq!(body_of(&b, "q"), None);
    assert_eq!(b.queue_stats("q").unwrap().expired, 1);
    // CC adds a route; BCC too, and is taken out of what the queues hold.
    let mut headers = FieldTable::new();
    headers.insert("BCC", AMQPValue::FieldArray(vec!["cc".into()]));
    let bcc = SharedProperties::new(BasicProperties::default().with_headers(headers));
    assert_eq!(p.publish_shared(&bcc, "y").unwrap().routed, 2);
    let d = b.get("cc", GetOptions::default()).unwrap().unwrap();
    assert!(!d.properties().headers.as_ref().unwrap().contains_key("BCC"));
    d.ack();
    assert_eq!(body_of(&b, "q").as_deref(), Some(&b"y"[..]));
    // A headers exchange routes each message by its own headers.
    let mut bind = FieldTable::new();
    bind.insert("kind", AMQPValue::LongString("a".into()));
    b.bind_queue("h", "amq.headers", "", &bind).unwrap();
    let mut p = b.publisher("amq.headers", "");
    let with = |kind: &'static str| {
        let mut h = FieldTable::new();
        h.insert("kind", AMQPValue::LongString(kind.into()));
        SharedProperties::new(BasicProperties::default().with_headers(h))
    };
    assert!(p.publish("no headers").unwrap().is_unroutable());
    assert_eq!(p.publish_shared(&with("a"), "a").unwrap().routed, 1);
    assert!(p.publish_shared(&with("b"), "b").unwrap().is_unroutable());
    assert_eq!(body_of(&b, "h").as_deref(), Some(&b"a"[..]));
    assert_eq!(exchange_counts(&b, "amq.headers"), (3, 1, 2));
}

#[test]
fn try_publish_refuses_a_full_block_queue() {
    let b = Broker::new();
    let bounded = QueueDeclareOptions::default()
        .with_max_length(1)
        .with_overflow(Overflow::Block);
    b.declare_queue("q", bounded).unwrap();
    let mut p = b.publisher("", "q");
    assert_eq!(p.try_publish("1").unwrap().routed, 1);
    match p.try_publish("2") {
        Err(PublishError::Full(m)) => assert_eq!(&m.body[..], b"2"),
        other => panic!("expected Full, got {other:?}"),
    }
    // `publish` waits for room: a consumer makes it.
    let waiter = {
        let b = b.clone();
        std::thread::spawn(move || {
            let c = b.consume("q", ConsumeOptions::default()).unwrap();
            for _ in 0..2 {
                c.recv_timeout(WAIT).unwrap().ack();
            }
        })
    };
    assert_eq!(p.publish("3").unwrap().routed, 1);
    waiter.join().unwrap();
    assert_eq!(b.queue_stats("q").unwrap().acked, 2);
}

#[test]
fn publishers_on_many_threads_keep_exact_counts() {
    let b = broker_with(&["q"]);
    b.bind_queue("q", "amq.direct", "k", &FieldTable::new())
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut p = b.publisher("amq.direct", "k");
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    assert_eq!(p.publish("m").unwrap().routed, 1);
                }
                // Moved on to another thread with its route: still counted.
                p
            })
        })
        .collect();
    let moved: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for mut p in moved {
        p.publish("m").unwrap();
    }
    assert_eq!(exchange_counts(&b, "amq.direct"), (4_004, 4_004, 0));
    assert_eq!(b.queue_stats("q").unwrap().ready, 4_004);
}

/// Counts its wake-ups.
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn publish_async_waits_for_room_in_a_block_queue() {
    let b = Broker::new();
    let options = QueueDeclareOptions::default()
        .with_max_length(1)
        .with_overflow(Overflow::Block);
    b.declare_queue("q", options).unwrap();
    let mut p = b.publisher("", "q");
    assert_eq!(p.publish("a").unwrap().routed, 1);

    let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(p.publish_async("b"));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

    // Taking the head makes room, and wakes the waiting publish.
    assert_eq!(body_of(&b, "q").as_deref(), Some(&b"a"[..]));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(out)) => assert_eq!(out.routed, 1),
        other => panic!("expected the publish to complete, got {other:?}"),
    }
    assert_eq!(body_of(&b, "q").as_deref(), Some(&b"b"[..]));
    assert_eq!(exchange_counts(&b, ""), (2, 2, 0));

    // Errors as `publish`'s: a missing exchange is a 404, at the first poll.
    let mut lost = b.publisher("nope", "q");
    let mut fut = pin!(lost.publish_async("c"));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert_eq!(e.error().map(|e| e.reply_code()), Some(404)),
        other => panic!("expected a 404, got {other:?}"),
    }
}
