//! Message TTL (queue `x-message-ttl` and per-message `expiration`),
//! dead-lettering and its `x-death` header, and queue leases (`x-expires`).
//!
//! Time is a [`ManualClock`] except in the one test that proves the broker's
//! own timer thread expires messages nobody touches.

use std::time::Duration;

use warren_core::{
    AMQPValue, BasicProperties, Broker, BrokerOptions, ConsumeOptions, Delivery, ExchangeKind,
    FieldTable, GetOptions, ManualClock, Message, PublishError, QueueDeclareOptions,
};

const WAIT: Duration = Duration::from_secs(5);

fn none() -> FieldTable {
    FieldTable::new()
}

fn manual() -> (Broker, ManualClock) {
    let clock = ManualClock::new();
    let b = Broker::with_options(BrokerOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    });
    (b, clock)
}

fn advance(b: &Broker, clock: &ManualClock, ms: u64) {
    clock.advance(Duration::from_millis(ms));
    b.run_expiry();
}

fn expiring(body: &'static str, ms: &str) -> Message {
    Message::new(body).with_properties(BasicProperties::default().with_expiration(ms))
}

fn assert_conserved(b: &Broker) {
    let t = b.totals();
    assert_eq!(
        t.enqueued,
        t.ready + t.unacked + t.acked + t.discarded + t.dropped + t.expired + t.purged + t.deleted,
        "{t:?}"
    );
}

fn ready(b: &Broker, q: &str) -> u64 {
    b.queue_stats(q).unwrap().ready
}

fn get(b: &Broker, q: &str) -> Option<Delivery> {
    b.get(q, GetOptions::default()).unwrap()
}

fn body(d: &Delivery) -> &str {
    std::str::from_utf8(d.body()).unwrap()
}

/// A fanout exchange `dlx` feeding queue `dlq`.
fn dlq(b: &Broker) {
    b.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())
        .unwrap();
    b.declare_queue("dlq", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("dlq", "dlx", "", &none()).unwrap();
}

fn header<'a>(d: &'a Delivery, k: &str) -> Option<&'a AMQPValue> {
    d.properties().headers.as_ref().and_then(|h| h.get(k))
}

fn header_str<'a>(d: &'a Delivery, k: &str) -> Option<&'a str> {
    header(d, k).and_then(AMQPValue::as_str)
}

fn deaths(d: &Delivery) -> Vec<FieldTable> {
    header(d, "x-death")
        .and_then(AMQPValue::as_array)
        .unwrap_or(&[])
        .iter()
        .map(|v| v.as_table().unwrap().clone())
        .collect()
}

fn field<'a>(t: &'a FieldTable, k: &str) -> Option<&'a str> {
    t.get(k).and_then(AMQPValue::as_str)
}

fn count(t: &FieldTable) -> i64 {
    t.get("count").and_then(AMQPValue::as_i64).unwrap()
}

fn keys(t: &FieldTable) -> Vec<String> {
    t.get("routing-keys")
        .and_then(AMQPValue::as_array)
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn queue_ttl_expires_messages() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default().with_message_ttl(100))
        .unwrap();
    b.publish("", "q", "a").unwrap();
    advance(&b, &clock, 50);
    b.publish("", "q", "b").unwrap();
    advance(&b, &clock, 49);
    assert_eq!(ready(&b, "q"), 2);
    advance(&b, &clock, 1); // a: 100 ms old
    assert_eq!(ready(&b, "q"), 1);
    assert_eq!(b.queue_stats("q").unwrap().expired, 1);
    advance(&b, &clock, 50);
    assert_eq!(ready(&b, "q"), 0);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.expired, s.dead_lettered), (2, 0));
    assert_eq!(b.stats().expired, 2);
    assert_conserved(&b);
}

#[test]
fn expiry_happens_on_queue_operations_too() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default().with_message_ttl(10))
        .unwrap();
    b.publish("", "q", "a").unwrap();
    clock.advance(Duration::from_millis(10));
    // No run_expiry: a get must not return an expired message.
    assert!(get(&b, "q").is_none());
    assert_eq!(b.queue_stats("q").unwrap().expired, 1);
    b.publish("", "q", "b").unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    clock.advance(Duration::from_millis(5));
    let d = c.recv_timeout(WAIT).unwrap();
    assert_eq!(body(&d), "b");
    d.ack();
}

#[test]
fn per_message_expiration() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    b.publish("", "q", expiring("a", "100")).unwrap();
    b.publish("", "q", "forever").unwrap();
    advance(&b, &clock, 99);
    assert_eq!(ready(&b, "q"), 2);
    advance(&b, &clock, 1);
    assert_eq!(ready(&b, "q"), 1);
    advance(&b, &clock, 1_000_000);
    assert_eq!(ready(&b, "q"), 1);
    let d = get(&b, "q").unwrap();
    assert_eq!(body(&d), "forever");
    d.ack();
}

#[test]
fn the_shorter_of_queue_and_message_ttl_wins() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default().with_message_ttl(100))
        .unwrap();
    b.publish("", "q", expiring("short", "10")).unwrap();
    b.publish("", "q", expiring("long", "1000")).unwrap();
    advance(&b, &clock, 10);
    assert_eq!(ready(&b, "q"), 1);
    advance(&b, &clock, 90);
    assert_eq!(ready(&b, "q"), 0);
}

#[test]
fn expiry_is_enforced_at_the_head_only() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    b.publish("", "q", expiring("long", "1000")).unwrap();
    b.publish("", "q", expiring("short", "10")).unwrap();
    advance(&b, &clock, 500);
    // "short" is past its TTL, but waits behind the head (RabbitMQ).
    assert_eq!(ready(&b, "q"), 2);
    assert_eq!(b.queue_stats("q").unwrap().expired, 0);
    advance(&b, &clock, 500);
    // The head expires, and with it everything expired behind it.
    assert_eq!(ready(&b, "q"), 0);
    assert_eq!(b.queue_stats("q").unwrap().expired, 2);

    // Once the long one is consumed, the short one behind it is found expired.
    b.publish("", "q", expiring("long", "1000")).unwrap();
    b.publish("", "q", expiring("short", "10")).unwrap();
    advance(&b, &clock, 20);
    let d = get(&b, "q").unwrap();
    assert_eq!(body(&d), "long");
    d.ack();
    assert!(get(&b, "q").is_none());
    assert_eq!(b.queue_stats("q").unwrap().expired, 3);
    assert_conserved(&b);
}

#[test]
fn ttl_zero_delivers_to_a_waiting_consumer_or_expires() {
    let (b, _clock) = manual();
    dlq(&b);
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_dead_letter("dlx", None),
    )
    .unwrap();
    // Nobody waiting: expired at once ("deliver now or never").
    b.publish("", "q", expiring("nobody", "0")).unwrap();
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.expired, s.dead_lettered), (0, 1, 1));
    // A consumer waiting: delivered.
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    b.publish("", "q", expiring("someone", "0")).unwrap();
    let d = c.try_recv().unwrap();
    assert_eq!(body(&d), "someone");
    d.ack();
    assert_eq!(b.queue_stats("q").unwrap().expired, 1);
    assert_conserved(&b);
}

#[test]
fn a_requeued_message_keeps_its_deadline() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    b.publish("", "q", expiring("a", "100")).unwrap();
    let d = get(&b, "q").unwrap();
    advance(&b, &clock, 150);
    d.nack(true);
    assert_eq!(ready(&b, "q"), 0);
    assert_eq!(b.queue_stats("q").unwrap().expired, 1);
    assert_conserved(&b);
}

#[test]
fn invalid_expiration_is_406() {
    let (b, _) = manual();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    // One plain message first, so that this thread has the route cached and
    // the bad expirations meet the cached-route publish too.
    assert_eq!(b.publish("", "q", "plain").unwrap().routed, 1);
    for bad in [
        "abc",
        "-1",
        "",
        "1.5",
        " 1",
        "1e3",
        "-5",
        "10abc",
        "99999999999999999999999",
    ] {
        let m = expiring("m", bad);
        match b.publish("", "q", m.clone()) {
            Err(PublishError::Refused { error, message }) => {
                assert_eq!(error.reply_code(), 406, "{bad:?}");
                assert!(
                    error.reply_text().starts_with(&format!(
                        "PRECONDITION_FAILED - invalid expiration '{bad}': "
                    )),
                    "{}",
                    error.reply_text()
                );
                assert_eq!(*message, m);
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(b.totals().enqueued, 1);
    // RabbitMQ 3.10 parses with Erlang's string:to_integer: a sign is allowed
    // ("+5", "-0" are accepted), checked against the real server.
    for good in ["0", "10", "007", "+5", "-0"] {
        assert_eq!(b.publish("", "q", expiring("m", good)).unwrap().routed, 1);
    }
}

#[test]
fn dead_letter_on_reject() {
    let (b, _) = manual();
    dlq(&b);
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_dead_letter("dlx", None),
    )
    .unwrap();
    b.bind_queue("q", "amq.direct", "rk", &none()).unwrap();
    let props = BasicProperties::default()
        .with_correlation_id("c1")
        .with_headers(FieldTable::new().with("app", "kept"));
    b.publish("amq.direct", "rk", Message::new("m").with_properties(props))
        .unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    c.recv_timeout(WAIT).unwrap().nack(false);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.discarded, s.dead_lettered, s.ready), (1, 1, 0));

    let d = get(&b, "dlq").unwrap();
    assert_eq!(body(&d), "m");
    assert_eq!(d.exchange(), "dlx");
    assert_eq!(d.routing_key(), "rk");
    assert!(!d.redelivered());
    assert_eq!(d.properties().correlation_id.as_deref(), Some("c1"));
    assert_eq!(header_str(&d, "app"), Some("kept"));
    let x = deaths(&d);
    assert_eq!(x.len(), 1);
    assert_eq!(count(&x[0]), 1);
    assert_eq!(x[0].get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(field(&x[0], "reason"), Some("rejected"));
    assert_eq!(field(&x[0], "queue"), Some("q"));
    assert_eq!(field(&x[0], "exchange"), Some("amq.direct"));
    assert_eq!(keys(&x[0]), ["rk"]);
    assert!(matches!(x[0].get("time"), Some(AMQPValue::Timestamp(t)) if *t > 0));
    assert!(x[0].get("original-expiration").is_none());
    assert_eq!(header_str(&d, "x-first-death-reason"), Some("rejected"));
    assert_eq!(header_str(&d, "x-first-death-queue"), Some("q"));
    assert_eq!(header_str(&d, "x-first-death-exchange"), Some("amq.direct"));
    d.ack();
    assert_conserved(&b);
}

#[test]
fn reject_and_requeue_false_on_a_get_dead_letters_too() {
    let (b, _) = manual();
    dlq(&b);
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_dead_letter("dlx", None),
    )
    .unwrap();
    b.publish("", "q", "m").unwrap();
    get(&b, "q").unwrap().reject(false);
    let d = get(&b, "dlq").unwrap();
    let x = deaths(&d);
    assert_eq!(field(&x[0], "exchange"), Some(""));
    assert_eq!(keys(&x[0]), ["q"]);
    d.ack();
    // Requeue: no dead letter.
    b.publish("", "q", "m").unwrap();
    get(&b, "q").unwrap().reject(true);
    assert_eq!(ready(&b, "q"), 1);
    assert_eq!(ready(&b, "dlq"), 0);
}

#[test]
fn dead_letter_on_expiry_per_message_keeps_original_expiration() {
    let (b, clock) = manual();
    dlq(&b);
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_dead_letter("dlx", None),
    )
    .unwrap();
    b.publish("", "q", expiring("m", "250")).unwrap();
    advance(&b, &clock, 250);
    let d = get(&b, "dlq").unwrap();
    assert_eq!(d.properties().expiration, None, "the copy loses expiration");
    let x = deaths(&d);
    assert_eq!(field(&x[0], "reason"), Some("expired"));
    assert_eq!(field(&x[0], "original-expiration"), Some("250"));
    assert_eq!(header_str(&d, "x-first-death-reason"), Some("expired"));
    d.ack();

    // With a queue TTL there is no original-expiration.
    b.declare_queue(
        "qt",
        QueueDeclareOptions::default()
            .with_message_ttl(5)
            .with_dead_letter("dlx", None),
    )
    .unwrap();
    b.publish("", "qt", "m").unwrap();
    advance(&b, &clock, 5);
    let d = get(&b, "dlq").unwrap();
    let x = deaths(&d);
    assert_eq!(field(&x[0], "reason"), Some("expired"));
    assert_eq!(field(&x[0], "queue"), Some("qt"));
    assert!(x[0].get("original-expiration").is_none());
    d.ack();
    assert_conserved(&b);
}

#[test]
fn dead_letter_on_maxlen() {
    let (b, _) = manual();
    dlq(&b);
    b.declare_queue(
        "q",
        QueueDeclareOptions::default()
            .with_max_length(1)
            .with_dead_letter("dlx", None),
    )
    .unwrap();
    b.publish("", "q", "first").unwrap();
    b.publish("", "q", "second").unwrap();
    let d = get(&b, "dlq").unwrap();
    assert_eq!(body(&d), "first");
    assert_eq!(field(&deaths(&d)[0], "reason"), Some("maxlen"));
    d.ack();
}

#[test]
fn dead_letter_routing_key_replaces_the_key() {
    let (b, _) = manual();
    b.declare_exchange("dlx", ExchangeKind::Direct, Default::default())
        .unwrap();
    b.declare_queue("dead", QueueDeclareOptions::default())
        .unwrap();
    b.declare_queue("by-orig", QueueDeclareOptions::default())
        .unwrap();
    b.declare_queue("by-cc", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("dead", "dlx", "dead", &none()).unwrap();
    b.bind_queue("by-orig", "dlx", "orig", &none()).unwrap();
    b.bind_queue("by-cc", "dlx", "cc-key", &none()).unwrap();
    b.declare_queue(
        "with-key",
        QueueDeclareOptions::default().with_dead_letter("dlx", Some("dead")),
    )
    .unwrap();
    b.declare_queue(
        "without-key",
        QueueDeclareOptions::default().with_dead_letter("dlx", None),
    )
    .unwrap();
    for q in ["with-key", "without-key"] {
        b.bind_queue(q, "amq.direct", "orig", &none()).unwrap();
    }
    let cc = AMQPValue::FieldArray(vec![AMQPValue::from("cc-key")]);
    let m = Message::new("m").with_properties(
        BasicProperties::default().with_headers(FieldTable::new().with("CC", cc.clone())),
    );
    // CC "cc-key" reaches nothing at amq.direct; only "orig" routes.
    assert_eq!(b.publish("amq.direct", "orig", m).unwrap().routed, 2);

    get(&b, "with-key").unwrap().nack(false);
    assert_eq!(
        (ready(&b, "dead"), ready(&b, "by-orig"), ready(&b, "by-cc")),
        (1, 0, 0)
    );
    let d = get(&b, "dead").unwrap();
    assert_eq!(d.routing_key(), "dead");
    assert_eq!(keys(&deaths(&d)[0]), ["orig", "cc-key"]);
    // With a dead-letter routing key, RabbitMQ drops CC from the copy.
    assert!(header(&d, "CC").is_none());
    d.ack();

    // Without one, the original key and the CC keys route the copy.
    get(&b, "without-key").unwrap().nack(false);
    assert_eq!(
        (ready(&b, "dead"), ready(&b, "by-orig"), ready(&b, "by-cc")),
        (0, 1, 1)
    );
    let d = get(&b, "by-orig").unwrap();
    assert_eq!(d.routing_key(), "orig");
    assert_eq!(header(&d, "CC"), Some(&cc));
    assert_eq!(keys(&deaths(&d)[0]), ["orig", "cc-key"]);
    d.ack();
    assert_conserved(&b);
}

#[test]
fn a_missing_dead_letter_exchange_drops_the_message() {
    let (b, _) = manual();
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_dead_letter("nowhere", None),
    )
    .unwrap();
    b.publish("", "q", "m").unwrap();
    get(&b, "q").unwrap().nack(false);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.discarded), (0, 1));
    assert_conserved(&b);
}

#[test]
fn routing_key_without_exchange_is_406() {
    let (b, _) = manual();
    let o = QueueDeclareOptions {
        arguments: FieldTable::new().with("x-dead-letter-routing-key", "k"),
        ..Default::default()
    };
    assert_eq!(b.declare_queue("q", o).unwrap_err().reply_code(), 406);
}

#[test]
fn x_death_count_grows_in_a_retry_loop() {
    // work --reject--> (default exchange, key "retry") --> retry
    // retry --TTL 10--> (default exchange, key "work") --> work
    let (b, clock) = manual();
    b.declare_queue(
        "work",
        QueueDeclareOptions::default().with_dead_letter("", Some("retry")),
    )
    .unwrap();
    b.declare_queue(
        "retry",
        QueueDeclareOptions::default()
            .with_message_ttl(10)
            .with_dead_letter("", Some("work")),
    )
    .unwrap();
    b.publish("", "work", "job").unwrap();
    let c = b.consume("work", ConsumeOptions::default()).unwrap();
    for round in 1..=3i64 {
        let d = c.recv_timeout(WAIT).unwrap();
        if round > 1 {
            let x = deaths(&d);
            assert_eq!(x.len(), 2, "one entry per (queue, reason)");
            assert_eq!(
                (field(&x[0], "queue"), field(&x[0], "reason")),
                (Some("retry"), Some("expired"))
            );
            assert_eq!(
                (field(&x[1], "queue"), field(&x[1], "reason")),
                (Some("work"), Some("rejected"))
            );
            assert_eq!(count(&x[0]), round - 1);
            assert_eq!(count(&x[1]), round - 1);
            assert_eq!(header_str(&d, "x-first-death-queue"), Some("work"));
            assert_eq!(header_str(&d, "x-first-death-reason"), Some("rejected"));
            assert_eq!(d.routing_key(), "work");
            assert_eq!(d.exchange(), "");
        }
        d.nack(false);
        assert_eq!(ready(&b, "retry"), 1);
        advance(&b, &clock, 10);
    }
    let d = c.recv_timeout(WAIT).unwrap();
    let x = deaths(&d);
    assert_eq!(count(&x[0]), 3);
    assert_eq!(count(&x[1]), 3);
    d.ack();
    assert_conserved(&b);
}

#[test]
fn an_expiry_cycle_is_dropped() {
    let (b, clock) = manual();
    // The queue dead-letters to itself (default exchange, its own name).
    b.declare_queue(
        "q",
        QueueDeclareOptions::default()
            .with_message_ttl(10)
            .with_dead_letter("", None),
    )
    .unwrap();
    b.publish("", "q", "m").unwrap();
    advance(&b, &clock, 10);
    let s = b.queue_stats("q").unwrap();
    assert_eq!(
        (s.ready, s.enqueued, s.expired, s.dead_lettered),
        (0, 1, 1, 1)
    );
    advance(&b, &clock, 100);
    assert_eq!(b.queue_stats("q").unwrap().enqueued, 1);

    // A longer automatic cycle: a -> b -> a, both by expiry.
    for (q, next) in [("a", "b"), ("b", "a")] {
        b.declare_queue(
            q,
            QueueDeclareOptions::default()
                .with_message_ttl(10)
                .with_dead_letter("", Some(next)),
        )
        .unwrap();
    }
    b.publish("", "a", "m").unwrap();
    advance(&b, &clock, 10);
    assert_eq!((ready(&b, "a"), ready(&b, "b")), (0, 1));
    advance(&b, &clock, 10);
    assert_eq!((ready(&b, "a"), ready(&b, "b")), (0, 0));
    assert_eq!(b.queue_stats("a").unwrap().enqueued, 1);
    assert_conserved(&b);
}

#[test]
fn a_reject_cycle_is_not_dropped() {
    let (b, _) = manual();
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_dead_letter("", None),
    )
    .unwrap();
    b.publish("", "q", "m").unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    for n in 1..=3 {
        c.recv_timeout(WAIT).unwrap().nack(false);
        let d = c.recv_timeout(WAIT).unwrap();
        let x = deaths(&d);
        assert_eq!(x.len(), 1);
        assert_eq!(count(&x[0]), n);
        assert_eq!(field(&x[0], "reason"), Some("rejected"));
        assert!(!d.redelivered(), "a dead-lettered copy is a new message");
        d.nack(true); // requeue: no death
        let d = c.recv_timeout(WAIT).unwrap();
        assert!(d.redelivered());
        assert_eq!(count(&deaths(&d)[0]), n);
        drop(d); // unanswered: requeued again
    }
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.discarded, s.dead_lettered, s.enqueued), (3, 3, 4));
    assert_conserved(&b);
}

#[test]
fn x_expires_deletes_an_unused_queue() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default().with_expires(100))
        .unwrap();
    b.publish("", "q", "publishing does not count as use")
        .unwrap();
    advance(&b, &clock, 99);
    assert!(b.has_queue("q"));
    advance(&b, &clock, 1);
    assert!(!b.has_queue("q"));
    assert_eq!(b.totals().deleted, 1);
    assert_conserved(&b);
}

#[test]
fn a_passive_declare_renews_the_lease() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default().with_expires(100))
        .unwrap();
    advance(&b, &clock, 90);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    b.declare_queue("q", passive.clone()).unwrap();
    advance(&b, &clock, 90);
    assert!(b.has_queue("q"));
    // A redeclare and a get renew it too.
    b.declare_queue("q", QueueDeclareOptions::default().with_expires(100))
        .unwrap();
    advance(&b, &clock, 90);
    assert!(get(&b, "q").is_none());
    advance(&b, &clock, 90);
    assert!(b.has_queue("q"));
    advance(&b, &clock, 10);
    assert!(!b.has_queue("q"));
    assert_eq!(b.declare_queue("q", passive).unwrap_err().reply_code(), 404);
}

#[test]
fn a_queue_with_consumers_does_not_expire() {
    let (b, clock) = manual();
    b.declare_queue("q", QueueDeclareOptions::default().with_expires(100))
        .unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    advance(&b, &clock, 1_000);
    assert!(b.has_queue("q"));
    c.cancel();
    advance(&b, &clock, 99);
    assert!(
        b.has_queue("q"),
        "the lease restarts when the last consumer goes"
    );
    advance(&b, &clock, 1);
    assert!(!b.has_queue("q"));
    // The consumer saw its queue go.
    assert!(c.recv_timeout(WAIT).is_err());
}

#[test]
fn invalid_ttl_arguments_are_406() {
    let (b, _) = manual();
    for (k, v) in [
        ("x-message-ttl", AMQPValue::LongLongInt(-1)),
        ("x-message-ttl", AMQPValue::from("100")),
        ("x-expires", AMQPValue::LongLongInt(0)),
        ("x-expires", AMQPValue::LongLongInt(-10)),
        ("x-dead-letter-exchange", AMQPValue::LongInt(1)),
    ] {
        let o = QueueDeclareOptions {
            arguments: FieldTable::new().with(k, v.clone()),
            ..Default::default()
        };
        assert_eq!(
            b.declare_queue("q", o).unwrap_err().reply_code(),
            406,
            "{k}={v:?}"
        );
    }
    // TTL 0 is allowed.
    b.declare_queue("q", QueueDeclareOptions::default().with_message_ttl(0))
        .unwrap();
}

#[test]
fn the_timer_thread_expires_messages_nobody_touches() {
    let b = Broker::new(); // the system clock
    dlq(&b);
    b.declare_queue(
        "q",
        QueueDeclareOptions::default()
            .with_message_ttl(50)
            .with_dead_letter("dlx", None),
    )
    .unwrap();
    let c = b.consume("dlq", ConsumeOptions::default()).unwrap();
    b.publish("", "q", "m").unwrap();
    let d = c.recv_timeout(WAIT).expect("expired by the timer thread");
    assert_eq!(body(&d), "m");
    assert_eq!(field(&deaths(&d)[0], "reason"), Some("expired"));
    d.ack();
    assert_eq!(b.queue_stats("q").unwrap().expired, 1);
}

#[test]
fn the_timer_thread_handles_many_deadlines() {
    let b = Broker::new();
    dlq(&b);
    let c = b.consume("dlq", ConsumeOptions::default()).unwrap();
    for (i, ttl) in [30u64, 10, 20].into_iter().enumerate() {
        let q = format!("q{i}");
        b.declare_queue(
            &q,
            QueueDeclareOptions::default()
                .with_message_ttl(ttl)
                .with_dead_letter("dlx", None),
        )
        .unwrap();
        b.publish("", &q, "m").unwrap();
        b.publish("", &q, "n").unwrap();
    }
    b.publish("", "q0", expiring("short", "1")).unwrap();
    for _ in 0..7 {
        c.recv_timeout(WAIT).unwrap().ack();
    }
    assert_eq!(b.stats().expired, 7);
}

#[test]
fn invalid_expiration_texts_match_rabbitmq() {
    // Observed on RabbitMQ 3.10.8.
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    for (bad, why) in [
        ("-5", "{value_negative,-5}"),
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 1", "no_integer"),
        ("10abc", "{leftover_string,\"abc\"}"),
        ("1.5", "{leftover_string,\".5\"}"),
    ] {
        let e = b.publish("", "q", expiring("m", bad)).unwrap_err();
        assert_eq!(
            e.error().map(|e| e.reply_text()),
            Some(format!(
                "PRECONDITION_FAILED - invalid expiration '{bad}': {why}"
            ))
        );
    }
}

#[test]
fn dead_letters_are_routed_with_the_bcc_keys_too() {
    // As RabbitMQ 3.10.8 does (checked with pika, tests/rabbitmq/bcc_dead_letter.py):
    // a dead letter goes to the dead-letter exchange with every key the
    // message was published with, BCC included, while its `x-death`
    // routing-keys and its headers show only the key and the CC keys.
    let (b, _) = manual();
    b.declare_exchange("bdlx", ExchangeKind::Direct, Default::default())
        .unwrap();
    b.declare_queue(
        "bsrc",
        QueueDeclareOptions::default().with_dead_letter("bdlx", None),
    )
    .unwrap();
    for (q, key) in [
        ("bother", None),
        ("dl-main", Some("bsrc")),
        ("dl-bcc", Some("bother")),
        ("dl-cc", Some("ccq")),
    ] {
        b.declare_queue(q, QueueDeclareOptions::default()).unwrap();
        if let Some(key) = key {
            b.bind_queue(q, "bdlx", key, &none()).unwrap();
        }
    }
    let list = |k: &str| AMQPValue::FieldArray(vec![AMQPValue::from(k)]);
    let m = Message::new("x").with_properties(
        BasicProperties::default().with_headers(
            FieldTable::new()
                .with("BCC", list("bother"))
                .with("CC", list("ccq")),
        ),
    );
    assert_eq!(b.publish("", "bsrc", m).unwrap().routed, 2);
    let d = get(&b, "bsrc").unwrap();
    assert!(header(&d, "BCC").is_none());
    d.nack(false);
    for q in ["dl-main", "dl-bcc", "dl-cc"] {
        let d = get(&b, q).unwrap_or_else(|| panic!("{q} got no dead letter"));
        assert_eq!(d.routing_key(), "bsrc");
        assert!(header(&d, "BCC").is_none(), "{q}: BCC leaked");
        assert_eq!(keys(&deaths(&d)[0]), ["bsrc", "ccq"], "{q}");
        d.ack();
    }
    assert_eq!(ready(&b, "bother"), 1);
    assert_conserved(&b);
}
