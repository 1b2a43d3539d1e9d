//! The headers exchange through the broker, and the `CC` / `BCC` routing
//! headers (RabbitMQ's sender-selected distribution).

use std::time::Duration;

use warren_core::{
    AMQPValue, BasicProperties, Broker, ConsumeOptions, ExchangeKind, FieldTable, GetOptions,
    Message, PublishError, QueueDeclareOptions,
};

const WAIT: Duration = Duration::from_secs(5);

fn no_args() -> FieldTable {
    FieldTable::new()
}

/// A broker with headers exchange `h` and queue `q` bound with `args`.
fn bound(args: FieldTable) -> Broker {
    let b = Broker::new();
    b.declare_exchange("h", ExchangeKind::Headers, Default::default())
        .unwrap();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("q", "h", "", &args).unwrap();
    b
}

fn with_headers(h: FieldTable) -> Message {
    Message::new("m").with_properties(BasicProperties::default().with_headers(h))
}

/// Whether a message with these headers reaches `q` through `h`.
fn routes(b: &Broker, h: Option<FieldTable>) -> bool {
    let m = match h {
        Some(h) => with_headers(h),
        None => Message::new("m"),
    };
    let out = b.publish("h", "ignored", m).unwrap();
    let got = b
        .get(
            "q",
            GetOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(out.routed == 1, got.is_some());
    got.is_some()
}

fn t() -> FieldTable {
    FieldTable::new()
}

#[test]
fn predefined_headers_exchanges_exist() {
    let b = Broker::new();
    for name in ["amq.headers", "amq.match"] {
        assert!(b.has_exchange(name), "{name}");
        b.declare_queue(name.replace('.', "-").as_str(), Default::default())
            .unwrap();
        let q = name.replace('.', "-");
        b.bind_queue(&q, name, "", &t().with("k", "v")).unwrap();
        let out = b
            .publish(name, "", with_headers(t().with("k", "v")))
            .unwrap();
        assert_eq!(out.routed, 1, "{name}");
        // Both are headers exchanges, durable like RabbitMQ's.
        b.declare_exchange(
            name,
            ExchangeKind::Headers,
            warren_core::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
}

#[test]
fn x_match_all_is_the_default() {
    let b = bound(t().with("a", 1i32).with("b", "x"));
    assert!(routes(&b, Some(t().with("a", 1i32).with("b", "x"))));
    assert!(routes(
        &b,
        Some(t().with("b", "x").with("a", 1i32).with("c", 9i32))
    ));
    assert!(!routes(&b, Some(t().with("a", 1i32))));
    assert!(!routes(&b, Some(t().with("a", 2i32).with("b", "x"))));
    assert!(!routes(&b, None));
}

#[test]
fn x_match_all_explicit_and_any() {
    let all = bound(t().with("x-match", "all").with("a", 1i32).with("b", 2i32));
    assert!(routes(&all, Some(t().with("a", 1i32).with("b", 2i32))));
    assert!(!routes(&all, Some(t().with("a", 1i32))));

    let any = bound(t().with("x-match", "any").with("a", 1i32).with("b", 2i32));
    assert!(routes(&any, Some(t().with("a", 1i32))));
    assert!(routes(&any, Some(t().with("b", 2i32))));
    assert!(routes(&any, Some(t().with("a", 0i32).with("b", 2i32))));
    assert!(!routes(&any, Some(t().with("a", 0i32))));
    assert!(!routes(&any, Some(t())));
    assert!(!routes(&any, None));
}

#[test]
fn all_without_arguments_matches_everything_any_nothing() {
    let all = bound(t());
    assert!(routes(&all, None));
    assert!(routes(&all, Some(t().with("z", 1i32))));
    let all_x = bound(t().with("x-match", "all").with("x-foo", "bar"));
    assert!(routes(&all_x, None), "x- arguments are ignored by all");

    let any = bound(t().with("x-match", "any"));
    assert!(!routes(&any, None));
    assert!(!routes(&any, Some(t().with("z", 1i32))));
    let any_x = bound(t().with("x-match", "any").with("x-foo", "bar"));
    assert!(
        !routes(&any_x, Some(t().with("x-foo", "bar"))),
        "x- arguments are ignored by any"
    );
}

#[test]
fn with_x_modes_compare_x_arguments() {
    let all = bound(
        t().with("x-match", "all-with-x")
            .with("x-foo", "bar")
            .with("a", 1i32),
    );
    assert!(routes(&all, Some(t().with("x-foo", "bar").with("a", 1i32))));
    assert!(!routes(&all, Some(t().with("a", 1i32))));

    let any = bound(t().with("x-match", "any-with-x").with("x-foo", "bar"));
    assert!(routes(&any, Some(t().with("x-foo", "bar"))));
    assert!(!routes(&any, Some(t().with("x-foo", "baz"))));
    // x-match itself is never compared.
    assert!(!routes(&any, Some(t().with("x-match", "any-with-x"))));
}

#[test]
fn void_means_present_with_any_value() {
    let b = bound(t().with("a", AMQPValue::Void));
    assert!(routes(&b, Some(t().with("a", 1i32))));
    assert!(routes(&b, Some(t().with("a", "text"))));
    assert!(routes(&b, Some(t().with("a", AMQPValue::Void))));
    assert!(!routes(&b, Some(t().with("b", 1i32))));
}

#[test]
fn numbers_compare_across_kinds() {
    let b = bound(t().with("n", AMQPValue::LongInt(1)));
    for v in [
        AMQPValue::ShortShortInt(1),
        AMQPValue::ShortInt(1),
        AMQPValue::LongLongInt(1),
        AMQPValue::LongUInt(1),
        AMQPValue::Double(1.0),
        AMQPValue::Float(1.0),
        AMQPValue::Timestamp(1),
    ] {
        assert!(routes(&b, Some(t().with("n", v.clone()))), "{v:?}");
    }
    for v in [
        AMQPValue::Boolean(true),
        AMQPValue::from("1"),
        AMQPValue::DecimalValue(warren_core::DecimalValue { scale: 0, value: 1 }),
        AMQPValue::Double(1.5),
    ] {
        assert!(!routes(&b, Some(t().with("n", v.clone()))), "{v:?}");
    }
    let f = bound(t().with("f", AMQPValue::Double(0.1)));
    assert!(!routes(&f, Some(t().with("f", AMQPValue::Float(0.1)))));
    let s = bound(t().with("s", "a"));
    assert!(routes(
        &s,
        Some(t().with("s", AMQPValue::ByteArray(bytes_of("a"))))
    ));
}

fn bytes_of(s: &'static str) -> bytes::Bytes {
    bytes::Bytes::from_static(s.as_bytes())
}

#[test]
fn bad_x_match_is_refused_at_bind() {
    let b = Broker::new();
    b.declare_exchange("h", ExchangeKind::Headers, Default::default())
        .unwrap();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    for bad in [
        AMQPValue::from("ALL"),
        AMQPValue::from("foo"),
        AMQPValue::from(""),
        AMQPValue::LongInt(1),
        AMQPValue::Boolean(true),
    ] {
        let e = b
            .bind_queue("q", "h", "", &t().with("x-match", bad.clone()))
            .unwrap_err();
        assert_eq!(e.reply_code(), 406, "{bad:?}: {e}");
    }
    // Nothing was bound: a publish reaches no queue.
    assert!(b
        .publish("h", "", Message::new("m"))
        .unwrap()
        .is_unroutable());
    // The same holds for an exchange-to-exchange binding.
    b.declare_exchange("h2", ExchangeKind::Headers, Default::default())
        .unwrap();
    let e = b
        .bind_exchange("h2", "h", "", &t().with("x-match", "nope"))
        .unwrap_err();
    assert_eq!(e.reply_code(), 406);
}

#[test]
fn unbind_needs_the_same_arguments() {
    let b = bound(t().with("x-match", "any").with("a", 1i32).with("b", 2i32));
    // Other arguments: nothing removed, no error.
    b.unbind_queue("q", "h", "", &t().with("a", 1i32)).unwrap();
    assert!(routes(&b, Some(t().with("a", 1i32))));
    // Same entries in another order: removed.
    b.unbind_queue(
        "q",
        "h",
        "",
        &t().with("b", 2i32).with("a", 1i32).with("x-match", "any"),
    )
    .unwrap();
    assert!(!routes(&b, Some(t().with("a", 1i32))));
}

#[test]
fn two_bindings_to_one_queue_give_one_copy_and_unbind_separately() {
    let b = bound(t().with("a", 1i32));
    b.bind_queue("q", "h", "", &t().with("b", 2i32)).unwrap();
    let out = b
        .publish("h", "", with_headers(t().with("a", 1i32).with("b", 2i32)))
        .unwrap();
    assert_eq!(out.routed, 1);
    b.purge_queue("q").unwrap();
    b.unbind_queue("q", "h", "", &t().with("a", 1i32)).unwrap();
    assert!(!routes(&b, Some(t().with("a", 1i32))));
    assert!(routes(&b, Some(t().with("b", 2i32))));
}

// --- CC / BCC -------------------------------------------------------------

fn cc_broker() -> Broker {
    let b = Broker::new();
    for q in ["main", "cc1", "cc2", "bcc1"] {
        b.declare_queue(q, QueueDeclareOptions::default()).unwrap();
        b.bind_queue(q, "amq.direct", q, &no_args()).unwrap();
    }
    b
}

fn strs(v: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(v.iter().map(|s| AMQPValue::from(*s)).collect())
}

#[test]
fn cc_and_bcc_add_routing_keys() {
    let b = cc_broker();
    let h = t()
        .with("CC", strs(&["cc1", "cc2"]))
        .with("BCC", strs(&["bcc1"]))
        .with("other", "kept");
    let out = b.publish("amq.direct", "main", with_headers(h)).unwrap();
    assert_eq!(out.routed, 4);
    for q in ["main", "cc1", "cc2", "bcc1"] {
        let c = b.consume(q, ConsumeOptions::default()).unwrap();
        let d = c.recv_timeout(WAIT).unwrap();
        // The routing key the message carries is the publish's own.
        assert_eq!(d.routing_key(), "main");
        let h = d.properties().headers.as_ref().unwrap();
        assert_eq!(h.get("CC"), Some(&strs(&["cc1", "cc2"])), "{q}: CC kept");
        assert!(h.get("BCC").is_none(), "{q}: BCC stripped");
        assert_eq!(h.get("other").and_then(AMQPValue::as_str), Some("kept"));
        d.ack();
    }
}

#[test]
fn cc_through_the_default_exchange_and_duplicates_give_one_copy() {
    let b = cc_broker();
    let h = t()
        .with("CC", strs(&["cc1", "main", "cc1"]))
        .with("BCC", strs(&["cc1"]));
    let out = b.publish("", "main", with_headers(h)).unwrap();
    assert_eq!(out.routed, 2);
    assert_eq!(b.queue_stats("main").unwrap().ready, 1);
    assert_eq!(b.queue_stats("cc1").unwrap().ready, 1);
}

#[test]
fn cc_through_a_topic_exchange() {
    let b = Broker::new();
    b.declare_exchange("t", ExchangeKind::Topic, Default::default())
        .unwrap();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("q", "t", "audit.#", &no_args()).unwrap();
    let h = t().with("CC", strs(&["audit.copy"]));
    assert_eq!(
        b.publish("t", "main.key", with_headers(h)).unwrap().routed,
        1
    );
}

#[test]
fn bcc_is_stripped_even_when_it_adds_nothing() {
    let b = cc_broker();
    for bcc in [
        strs(&[]),
        AMQPValue::FieldArray(vec![AMQPValue::LongInt(1)]),
    ] {
        let h = t().with("BCC", bcc.clone()).with("k", "v");
        assert_eq!(b.publish("", "main", with_headers(h)).unwrap().routed, 1);
        let d = b.get("main", GetOptions::default()).unwrap().unwrap();
        let h = d.properties().headers.as_ref().unwrap();
        assert!(h.get("BCC").is_none(), "{bcc:?} still there");
        assert!(h.get("k").is_some());
        d.ack();
    }
}

#[test]
fn a_headers_binding_on_bcc_never_matches() {
    let b = bound(t().with("BCC", AMQPValue::Void));
    assert!(!routes(&b, Some(t().with("BCC", strs(&["x"])))));
    assert!(!routes(&b, Some(t().with("BCC", strs(&[])))));
    // CC stays and can be matched.
    let b = bound(t().with("CC", AMQPValue::Void));
    assert!(routes(&b, Some(t().with("CC", strs(&["x"])))));
}

#[test]
fn non_array_cc_or_bcc_is_406() {
    let b = cc_broker();
    for name in ["CC", "BCC"] {
        for v in [AMQPValue::from("cc1"), AMQPValue::LongInt(1)] {
            let m = with_headers(t().with(name, v.clone()));
            let e = b.publish("", "main", m.clone()).unwrap_err();
            match &e {
                PublishError::Refused { error, message } => {
                    assert_eq!(error.reply_code(), 406, "{name}={v:?}");
                    assert_eq!(**message, m, "the message comes back untouched");
                }
                other => panic!("expected Refused, got {other:?}"),
            }
            assert_eq!(e.error().map(|e| e.reply_code()), Some(406));
        }
    }
    assert_eq!(b.totals().enqueued, 0);
}

#[test]
fn full_hands_back_the_message_with_its_bcc() {
    // A `block` queue refusing a try_publish must hand back what was given,
    // BCC included, so a retry reaches the same queues.
    let b = Broker::new();
    b.declare_queue(
        "full",
        QueueDeclareOptions::default()
            .with_max_length(0)
            .with_overflow(warren_core::Overflow::Block),
    )
    .unwrap();
    b.declare_queue("bcc1", QueueDeclareOptions::default())
        .unwrap();
    let m = with_headers(t().with("BCC", strs(&["bcc1"])).with("k", "v"));
    let e = b.try_publish("", "full", m.clone()).unwrap_err();
    assert!(matches!(e, PublishError::Full(_)));
    assert_eq!(e.into_message(), m);
    assert_eq!(b.queue_stats("bcc1").unwrap().ready, 0);
}
