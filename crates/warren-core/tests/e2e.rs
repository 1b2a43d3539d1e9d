//! End-to-end paths through the public API: declare, bind, publish, consume.

use std::time::Duration;

use warren_core::{
    BasicProperties, Broker, ConsumeOptions, ExchangeKind, FieldTable, GetOptions,
    QueueDeclareOptions, TryRecvError,
};

const WAIT: Duration = Duration::from_secs(5);

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
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let c = b
        .consume(
            "q",
            ConsumeOptions {
                prefetch: 2,
                ..Default::default()
            },
        )
        .unwrap();
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
