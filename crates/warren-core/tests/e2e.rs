//! End-to-end paths through the public API: declare, bind, publish, consume.

use std::time::Duration;

use warren_core::{
    AMQPValue, BasicProperties, Broker, ConsumeOptions, ExchangeKind, FieldTable, GetOptions,
    QueueDeclareOptions, RecvTimeoutError, SharedProperties, TryRecvError,
};

const WAIT: Duration = Duration::from_secs(5);

/// A broker with queue `q` and a consumer of it with this prefetch window.
fn queue_with_consumer(prefetch: u32) -> (Broker, warren_core::Consumer) {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let options = ConsumeOptions {
        prefetch,
        ..Default::default()
    };
    let c = b.consume("q", options).unwrap();
    (b, c)
}

#[test]
fn direct_publish_consume_ack() {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("q", "amq.direct", "k", &FieldTable::new())
        .unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    let out = b.publish("amq.direct", "k", "hello").unwrap();
    assert_eq!(out.routed, 1);
    let d = c.recv_timeout(WAIT).unwrap();
    assert_eq!(&d.body()[..], b"hello");
    assert_eq!(d.exchange(), "amq.direct");
    assert_eq!(d.routing_key(), "k");
    assert!(!d.redelivered());
    d.ack();
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.unacked, s.acked), (0, 0, 1));
}

/// A receiver whose copies were waiting for it, and which then finds the
/// ring empty, looks again less often (it has caught up with a stream): it
/// still gets what comes next, in order, from another thread, and still
/// times out when nothing comes.
#[test]
fn a_receiver_that_caught_up_with_a_stream_gets_what_comes_next() {
    let (b, c) = queue_with_consumer(64);
    for i in 0..20u32 {
        b.publish("", "q", i.to_be_bytes().to_vec()).unwrap();
    }
    let mut next = 0u32;
    let take = |d: warren_core::Delivery, next: &mut u32| {
        assert_eq!(&d.body()[..], &next.to_be_bytes()[..]);
        *next += 1;
        d.ack();
    };
    // Copies waiting: each receive finds one at once.
    for _ in 0..10 {
        take(c.recv().unwrap(), &mut next);
    }
    for _ in 0..10 {
        take(c.try_recv().unwrap(), &mut next);
    }
    // Caught up: a receive with nothing coming times out.
    assert!(matches!(
        c.recv_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    ));
    // Caught up, then fed from another thread: the receiver meets the
    // publisher, falls behind and catches up again many times.
    let publisher = {
        let b = b.clone();
        std::thread::spawn(move || {
            for i in 20..2000u32 {
                b.publish("", "q", i.to_be_bytes().to_vec()).unwrap();
            }
        })
    };
    while next < 2000 {
        take(c.recv_timeout(WAIT).unwrap(), &mut next);
    }
    publisher.join().unwrap();
    assert!(matches!(c.try_recv(), Err(TryRecvError::Empty)));
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.unacked, s.acked), (0, 0, 2000));
}

#[test]
fn default_exchange_routes_by_queue_name() {
    let b = Broker::new();
    b.declare_queue("jobs", QueueDeclareOptions::default())
        .unwrap();
    assert_eq!(b.publish("", "jobs", "x").unwrap().routed, 1);
    assert!(b.publish("", "nope", "x").unwrap().is_unroutable());
    let d = b.get("jobs", GetOptions::default()).unwrap().unwrap();
    assert_eq!(d.message_count(), Some(0));
    d.ack();
}

#[test]
fn round_robin_between_consumers() {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let c1 = b.consume("q", ConsumeOptions::default()).unwrap();
    let c2 = b.consume("q", ConsumeOptions::default()).unwrap();
    for i in 0..4 {
        b.publish("", "q", format!("{i}").into_bytes()).unwrap();
    }
    let a: Vec<_> = (0..2).map(|_| c1.recv_timeout(WAIT).unwrap()).collect();
    let z: Vec<_> = (0..2).map(|_| c2.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(&a[0].body()[..], b"0");
    assert_eq!(&z[0].body()[..], b"1");
    assert_eq!(&a[1].body()[..], b"2");
    assert_eq!(&z[1].body()[..], b"3");
}

#[test]
fn dropped_delivery_is_requeued_redelivered() {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    b.publish("", "q", "m").unwrap();
    drop(c.recv_timeout(WAIT).unwrap());
    let d = c.recv_timeout(WAIT).unwrap();
    assert!(d.redelivered());
    d.ack();
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn prefetch_limits_unacked() {
    let (b, c) = queue_with_consumer(2);
    for _ in 0..5 {
        b.publish("", "q", "m").unwrap();
    }
    let d1 = c.recv_timeout(WAIT).unwrap();
    let _d2 = c.recv_timeout(WAIT).unwrap();
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(b.queue_stats("q").unwrap().ready, 3);
    d1.ack();
    let _d3 = c.recv_timeout(WAIT).unwrap();
}

#[test]
fn topic_routing_with_properties() {
    let b = Broker::new();
    b.declare_exchange("logs", ExchangeKind::Topic, Default::default())
        .unwrap();
    b.declare_queue("errors", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("errors", "logs", "*.error", &FieldTable::new())
        .unwrap();
    b.bind_queue("errors", "logs", "db.#", &FieldTable::new())
        .unwrap();
    let m = warren_core::Message::new("x")
        .with_properties(BasicProperties::default().with_correlation_id("7"));
    assert_eq!(b.publish("logs", "db.error", m).unwrap().routed, 1);
    let d = b
        .get(
            "errors",
            GetOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!(d.properties().correlation_id.as_deref(), Some("7"));
    assert_eq!(b.queue_stats("errors").unwrap().ready, 0);
}

#[test]
fn shared_properties_are_shared_by_every_message_published_with_them() {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let props = SharedProperties::new(
        BasicProperties::default()
            .with_content_type("application/json")
            .with_reply_to("replies"),
    );
    // The first publish on this route takes the general path (and caches the
    // route), the others the cached one: alike to a consumer.
    for body in ["a", "b", "c"] {
        assert_eq!(b.publish_shared("", "q", &props, body).unwrap().routed, 1);
    }
    let get = || b.get("q", GetOptions::default()).unwrap().unwrap();
    let (a, bb, c) = (get(), get(), get());
    for (d, body) in [(&a, "a"), (&bb, "b"), (&c, "c")] {
        assert_eq!(&d.body()[..], body.as_bytes());
        assert_eq!(d.properties(), props.properties());
        assert_eq!((d.exchange(), d.routing_key()), ("", "q"));
    }
    // Messages on the cached route hold the very same properties.
    assert!(std::ptr::eq(bb.properties(), c.properties()));
    assert!(std::ptr::eq(c.properties(), props.properties()));
    // Nothing set: nothing held.
    let none = SharedProperties::new(BasicProperties::default());
    b.publish_shared("", "q", &none, "d").unwrap();
    assert_eq!(get().properties(), BasicProperties::empty());
}

#[test]
fn shared_properties_follow_publish_rules() {
    let b = Broker::new();
    for q in ["q", "cc"] {
        b.declare_queue(q, QueueDeclareOptions::default()).unwrap();
    }
    // A bad expiration is refused, cached route or not; the message comes
    // back whole.
    b.publish("", "q", "warm the route").unwrap();
    let bad = SharedProperties::new(BasicProperties::default().with_expiration("soon"));
    let e = b.publish_shared("", "q", &bad, "x").unwrap_err();
    assert_eq!(e.error().unwrap().reply_code(), 406);
    let m = e.into_message();
    assert_eq!(
        (&m.body[..], m.properties.expiration.as_deref()),
        (&b"x"[..], Some("soon"))
    );
    // CC adds a route, BCC too and is taken out of what the queues hold.
    let mut headers = FieldTable::new();
    headers.insert("BCC", AMQPValue::FieldArray(vec!["cc".into()]));
    let bcc = SharedProperties::new(BasicProperties::default().with_headers(headers));
    assert_eq!(b.publish_shared("", "q", &bcc, "y").unwrap().routed, 2);
    let d = b.get("cc", GetOptions::default()).unwrap().unwrap();
    assert_eq!(&d.body()[..], b"y");
    assert!(!d.properties().headers.as_ref().unwrap().contains_key("BCC"));
    // Publishing to a missing exchange is refused with 404.
    let e = b.publish_shared("nope", "q", &bcc, "z").unwrap_err();
    assert_eq!(e.error().unwrap().reply_code(), 404);
}
