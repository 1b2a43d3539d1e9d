//! Exchanges: kinds, exchange-to-exchange bindings, alternate exchanges,
//! internal and auto-delete exchanges, reserved names and declare errors.

use warren_core::{
    Broker, ExchangeDeclareOptions, ExchangeKind, FieldTable, GetOptions, Message, PublishError,
    QueueDeclareOptions,
};

fn none() -> FieldTable {
    FieldTable::new()
}

fn ready(b: &Broker, q: &str) -> u64 {
    b.queue_stats(q).unwrap().ready
}

fn queues(b: &Broker, names: &[&str]) {
    for q in names {
        b.declare_queue(q, QueueDeclareOptions::default()).unwrap();
    }
}

fn exchange(b: &Broker, name: &str, kind: ExchangeKind) {
    b.declare_exchange(name, kind, ExchangeDeclareOptions::default())
        .unwrap();
}

fn with_ae(ae: &str) -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        arguments: FieldTable::new().with("alternate-exchange", ae),
        ..Default::default()
    }
}

#[test]
fn fanout_ignores_the_key_and_reaches_every_queue() {
    let b = Broker::new();
    exchange(&b, "f", ExchangeKind::Fanout);
    queues(&b, &["a", "b", "c"]);
    for q in ["a", "b", "c"] {
        b.bind_queue(q, "f", "whatever", &none()).unwrap();
    }
    // Binding twice is a no-op.
    b.bind_queue("a", "f", "whatever", &none()).unwrap();
    let out = b.publish("f", "any.key", "m").unwrap();
    assert_eq!(out.routed, 3);
    for q in ["a", "b", "c"] {
        assert_eq!(ready(&b, q), 1);
    }
    b.unbind_queue("b", "f", "whatever", &none()).unwrap();
    assert_eq!(b.publish("f", "", "m").unwrap().routed, 2);
    let s = b.stats();
    let f = s.exchanges.iter().find(|x| x.name == "f").unwrap();
    assert_eq!((f.published, f.routed, f.unroutable), (2, 2, 0));
}

#[test]
fn unroutable_publishes_stay_counted_after_their_exchange_is_deleted() {
    let b = Broker::new();
    exchange(&b, "x", ExchangeKind::Direct);
    exchange(&b, "y", ExchangeKind::Topic);
    assert!(b.publish("x", "k", "m").unwrap().is_unroutable());
    // A publisher keeps its route, and the route its exchange, past the
    // deletion: what it counted is read from the deleted exchange.
    let mut p = b.publisher("y", "k");
    for _ in 0..2 {
        assert!(p.publish("m").unwrap().is_unroutable());
    }
    assert_eq!(b.stats().unroutable, 3);
    b.delete_exchange("x", false).unwrap();
    b.delete_exchange("y", false).unwrap();
    let s = b.stats();
    assert!(s.exchanges.iter().all(|x| x.name != "x" && x.name != "y"));
    assert_eq!(s.unroutable, 3);
    // The exchange is gone for new publishes (404), which count nowhere.
    let err = p.publish("m").unwrap_err();
    assert_eq!(err.error().map(|e| e.reply_code()), Some(404));
    drop(p);
    assert_eq!(b.stats().unroutable, 3);
    // A new exchange of the same name counts from zero; the total goes on.
    exchange(&b, "x", ExchangeKind::Direct);
    assert!(b.publish("x", "k", "m").unwrap().is_unroutable());
    let s = b.stats();
    let x = s.exchanges.iter().find(|x| x.name == "x").unwrap();
    assert_eq!((x.published, x.unroutable, s.unroutable), (1, 1, 4));
}

#[test]
fn direct_routes_by_exact_key() {
    let b = Broker::new();
    queues(&b, &["a", "b"]);
    b.bind_queue("a", "amq.direct", "k", &none()).unwrap();
    b.bind_queue("b", "amq.direct", "k", &none()).unwrap();
    b.bind_queue("b", "amq.direct", "j", &none()).unwrap();
    assert_eq!(b.publish("amq.direct", "k", "m").unwrap().routed, 2);
    assert_eq!(b.publish("amq.direct", "j", "m").unwrap().routed, 1);
    assert!(b.publish("amq.direct", "K", "m").unwrap().is_unroutable());
    assert_eq!(b.stats().unroutable, 1);
}

#[test]
fn unbinding_one_of_two_bindings_with_the_same_key_keeps_the_other() {
    // Bindings are (destination, key, arguments): two bindings that differ
    // only by arguments are two bindings, and removing one leaves the other.
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
    ] {
        let b = Broker::new();
        exchange(&b, "x", kind);
        queues(&b, &["q"]);
        let args = FieldTable::new().with("tag", 1i32);
        b.bind_queue("q", "x", "a.b", &none()).unwrap();
        b.bind_queue("q", "x", "a.b", &args).unwrap();
        assert_eq!(b.publish("x", "a.b", "m").unwrap().routed, 1, "{kind}");
        b.unbind_queue("q", "x", "a.b", &none()).unwrap();
        assert_eq!(b.publish("x", "a.b", "m").unwrap().routed, 1, "{kind}");
        b.unbind_queue("q", "x", "a.b", &args).unwrap();
        assert!(
            b.publish("x", "a.b", "m").unwrap().is_unroutable(),
            "{kind}"
        );
    }
}

#[test]
fn exchange_to_exchange_bindings() {
    let b = Broker::new();
    exchange(&b, "src", ExchangeKind::Topic);
    exchange(&b, "mid", ExchangeKind::Direct);
    queues(&b, &["q"]);
    b.bind_exchange("mid", "src", "logs.*", &none()).unwrap();
    b.bind_queue("q", "mid", "logs.error", &none()).unwrap();
    // The original routing key is used at every hop.
    assert_eq!(b.publish("src", "logs.error", "m").unwrap().routed, 1);
    assert!(b.publish("src", "logs.info", "m").unwrap().is_unroutable());
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert_eq!(d.exchange(), "src");
    assert_eq!(d.routing_key(), "logs.error");
    d.ack();
    b.unbind_exchange("mid", "src", "logs.*", &none()).unwrap();
    assert!(b.publish("src", "logs.error", "m").unwrap().is_unroutable());
    // Missing things: 404; the default exchange: 403.
    assert_eq!(
        b.bind_exchange("nope", "src", "", &none())
            .unwrap_err()
            .reply_code(),
        404
    );
    assert_eq!(
        b.bind_exchange("mid", "", "", &none())
            .unwrap_err()
            .reply_code(),
        403
    );
    assert_eq!(
        b.bind_queue("q", "", "q", &none())
            .unwrap_err()
            .reply_code(),
        403
    );
    assert_eq!(
        b.bind_queue("nope", "mid", "", &none())
            .unwrap_err()
            .reply_code(),
        404
    );
}

#[test]
fn cycles_end_and_a_queue_reached_twice_gets_one_copy() {
    let b = Broker::new();
    exchange(&b, "a", ExchangeKind::Fanout);
    exchange(&b, "b", ExchangeKind::Fanout);
    exchange(&b, "c", ExchangeKind::Fanout);
    queues(&b, &["q", "r"]);
    b.bind_exchange("b", "a", "", &none()).unwrap();
    b.bind_exchange("a", "b", "", &none()).unwrap(); // a -> b -> a
    b.bind_exchange("c", "a", "", &none()).unwrap();
    b.bind_queue("q", "a", "", &none()).unwrap();
    b.bind_queue("q", "b", "", &none()).unwrap();
    b.bind_queue("q", "c", "", &none()).unwrap();
    b.bind_queue("r", "b", "", &none()).unwrap();
    for x in ["a", "b", "c"] {
        let want = if x == "c" { 1 } else { 2 };
        assert_eq!(b.publish(x, "", "m").unwrap().routed, want, "{x}");
    }
    assert_eq!(ready(&b, "q"), 3);
    assert_eq!(ready(&b, "r"), 2);
    // A self-binding is harmless too.
    b.bind_exchange("c", "c", "", &none()).unwrap();
    assert_eq!(b.publish("c", "", "m").unwrap().routed, 1);
}

#[test]
fn alternate_exchange_only_when_nothing_matched() {
    let b = Broker::new();
    exchange(&b, "ae", ExchangeKind::Fanout);
    b.declare_exchange("x", ExchangeKind::Direct, with_ae("ae"))
        .unwrap();
    queues(&b, &["main", "lost"]);
    b.bind_queue("lost", "ae", "", &none()).unwrap();
    b.bind_queue("main", "x", "k", &none()).unwrap();
    assert_eq!(b.publish("x", "k", "m").unwrap().routed, 1);
    assert_eq!((ready(&b, "main"), ready(&b, "lost")), (1, 0));
    let out = b.publish("x", "other", "m").unwrap();
    assert_eq!(out.routed, 1);
    assert_eq!((ready(&b, "main"), ready(&b, "lost")), (1, 1));
    let d = b.get("lost", GetOptions::default()).unwrap().unwrap();
    assert_eq!(d.exchange(), "x", "the message keeps its original exchange");
    assert_eq!(d.routing_key(), "other");
    d.ack();
    // A missing alternate exchange: unroutable, no error.
    b.declare_exchange("y", ExchangeKind::Direct, with_ae("missing"))
        .unwrap();
    assert!(b.publish("y", "k", "m").unwrap().is_unroutable());
}

#[test]
fn a_binding_to_an_exchange_counts_as_a_destination() {
    // x --k--> inner (routes nowhere). x's AE is not used; inner's own AE is.
    let b = Broker::new();
    exchange(&b, "x-ae", ExchangeKind::Fanout);
    exchange(&b, "inner-ae", ExchangeKind::Fanout);
    b.declare_exchange("x", ExchangeKind::Direct, with_ae("x-ae"))
        .unwrap();
    b.declare_exchange("inner", ExchangeKind::Direct, with_ae("inner-ae"))
        .unwrap();
    queues(&b, &["x-lost", "inner-lost"]);
    b.bind_queue("x-lost", "x-ae", "", &none()).unwrap();
    b.bind_queue("inner-lost", "inner-ae", "", &none()).unwrap();
    b.bind_exchange("inner", "x", "k", &none()).unwrap();

    assert_eq!(b.publish("x", "k", "m").unwrap().routed, 1);
    assert_eq!((ready(&b, "x-lost"), ready(&b, "inner-lost")), (0, 1));
    // A key that matches nothing at x: x's AE.
    assert_eq!(b.publish("x", "j", "m").unwrap().routed, 1);
    assert_eq!((ready(&b, "x-lost"), ready(&b, "inner-lost")), (1, 1));
}

#[test]
fn alternate_exchange_cycles_end() {
    let b = Broker::new();
    b.declare_exchange("a", ExchangeKind::Direct, with_ae("b"))
        .unwrap();
    b.declare_exchange("b", ExchangeKind::Direct, with_ae("a"))
        .unwrap();
    assert!(b.publish("a", "k", "m").unwrap().is_unroutable());
    queues(&b, &["q"]);
    b.bind_queue("q", "b", "k", &none()).unwrap();
    assert_eq!(b.publish("a", "k", "m").unwrap().routed, 1);
}

#[test]
fn internal_exchanges_refuse_publish_but_route_through_bindings() {
    let b = Broker::new();
    b.declare_exchange(
        "int",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
    )
    .unwrap();
    exchange(&b, "front", ExchangeKind::Fanout);
    queues(&b, &["q"]);
    b.bind_queue("q", "int", "", &none()).unwrap();
    b.bind_exchange("int", "front", "", &none()).unwrap();
    let m = Message::new("direct");
    match b.publish("int", "", m.clone()).unwrap_err() {
        PublishError::Refused { error, message } => {
            assert_eq!(error.reply_code(), 403);
            assert_eq!(*message, m);
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(ready(&b, "q"), 0);
    assert_eq!(b.publish("front", "", "via").unwrap().routed, 1);
    assert_eq!(ready(&b, "q"), 1);
    // An internal exchange may be an alternate exchange.
    b.declare_exchange("x", ExchangeKind::Direct, with_ae("int"))
        .unwrap();
    assert_eq!(b.publish("x", "k", "m").unwrap().routed, 1);
}

#[test]
fn publish_to_a_missing_exchange_is_404() {
    let b = Broker::new();
    let e = b.publish("nope", "k", "m").unwrap_err();
    assert_eq!(e.error().unwrap().reply_code(), 404);
    assert_eq!(
        e.error().unwrap().reply_text(),
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert_eq!(&e.into_message().body[..], b"m");
}

#[test]
fn auto_delete_exchange_goes_with_its_last_binding() {
    let b = Broker::new();
    let ad = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    b.declare_exchange("ad", ExchangeKind::Fanout, ad.clone())
        .unwrap();
    queues(&b, &["q1", "q2"]);
    b.bind_queue("q1", "ad", "", &none()).unwrap();
    b.bind_queue("q2", "ad", "", &none()).unwrap();
    b.unbind_queue("q1", "ad", "", &none()).unwrap();
    assert!(b.has_exchange("ad"));
    // Unbinding something that is not bound removes nothing.
    b.unbind_queue("q1", "ad", "", &none()).unwrap();
    assert!(b.has_exchange("ad"));
    b.unbind_queue("q2", "ad", "", &none()).unwrap();
    assert!(!b.has_exchange("ad"));

    // Deleting the bound queue removes the binding: the exchange goes too.
    b.declare_exchange("ad", ExchangeKind::Fanout, ad.clone())
        .unwrap();
    b.bind_queue("q1", "ad", "", &none()).unwrap();
    b.delete_queue("q1", Default::default()).unwrap();
    assert!(!b.has_exchange("ad"));

    // And an exchange-to-exchange binding from it: deleting the destination.
    b.declare_exchange("ad", ExchangeKind::Fanout, ad).unwrap();
    exchange(&b, "dst", ExchangeKind::Fanout);
    b.bind_exchange("dst", "ad", "", &none()).unwrap();
    b.delete_exchange("dst", false).unwrap();
    assert!(!b.has_exchange("ad"));
}

#[test]
fn auto_delete_exchange_without_bindings_stays() {
    let b = Broker::new();
    b.declare_exchange(
        "ad",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(b.has_exchange("ad"));
    b.publish("ad", "", "m").unwrap();
    assert!(b.has_exchange("ad"));
}

#[test]
fn delete_exchange_if_unused_and_cleanup() {
    let b = Broker::new();
    exchange(&b, "x", ExchangeKind::Direct);
    exchange(&b, "up", ExchangeKind::Direct);
    queues(&b, &["q"]);
    b.bind_queue("q", "x", "k", &none()).unwrap();
    let e = b.delete_exchange("x", true).unwrap_err();
    assert_eq!(e.reply_code(), 406);
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use"
    );
    assert!(b.has_exchange("x"));
    // Bound as a destination only: unused as a source.
    b.unbind_queue("q", "x", "k", &none()).unwrap();
    b.bind_exchange("x", "up", "k", &none()).unwrap();
    b.delete_exchange("x", true).unwrap();
    assert!(!b.has_exchange("x"));
    // The binding from `up` went with it.
    assert!(b.publish("up", "k", "m").unwrap().is_unroutable());
    // Deleting a missing exchange succeeds.
    b.delete_exchange("x", false).unwrap();
    b.delete_exchange("never", true).unwrap();
}

#[test]
fn reserved_amq_names() {
    let b = Broker::new();
    let e = b
        .declare_exchange("amq.custom", ExchangeKind::Direct, Default::default())
        .unwrap_err();
    assert_eq!(e.reply_code(), 403);
    assert!(!b.has_exchange("amq.custom"));
    // Redeclaring a predefined one with its properties (durable) is fine.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        b.declare_exchange(name, kind, durable.clone()).unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        b.declare_exchange(name, ExchangeKind::Fanout, passive)
            .unwrap();
        assert_eq!(
            b.delete_exchange(name, false).unwrap_err().reply_code(),
            403
        );
        assert!(b.has_exchange(name));
    }
    assert_eq!(
        b.delete_exchange("amq.direct", false)
            .unwrap_err()
            .reply_text(),
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    );
    assert_eq!(
        e.reply_text(),
        "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'"
    );
    // With other properties: 406, as for any exchange.
    let e = b
        .declare_exchange("amq.direct", ExchangeKind::Topic, durable)
        .unwrap_err();
    assert_eq!(e.reply_code(), 406);
    // There is no amq.default; the default exchange is "" and is not
    // declarable, deletable or bindable.
    assert!(!b.has_exchange("amq.default"));
    assert!(b.has_exchange(""));
    assert_eq!(
        b.declare_exchange("", ExchangeKind::Direct, Default::default())
            .unwrap_err()
            .reply_code(),
        403
    );
    assert_eq!(
        b.declare_exchange(
            "",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            }
        )
        .unwrap_err()
        .reply_code(),
        403
    );
    assert_eq!(b.delete_exchange("", false).unwrap_err().reply_code(), 403);
}

#[test]
fn passive_declare() {
    let b = Broker::new();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let e = b
        .declare_exchange("x", ExchangeKind::Direct, passive.clone())
        .unwrap_err();
    assert_eq!(e.reply_code(), 404);
    assert_eq!(e.reply_text(), "NOT_FOUND - no exchange 'x' in vhost '/'");
    assert!(!b.has_exchange("x"));
    exchange(&b, "x", ExchangeKind::Topic);
    // A passive declare checks existence only, whatever the other fields say.
    b.declare_exchange("x", ExchangeKind::Direct, passive)
        .unwrap();
}

#[test]
fn inequivalent_redeclare_is_406_with_rabbitmq_text() {
    let b = Broker::new();
    exchange(&b, "x", ExchangeKind::Direct);
    let e = b
        .declare_exchange("x", ExchangeKind::Fanout, Default::default())
        .unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
    let e = b
        .declare_exchange(
            "x",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'"
    );
    for o in [
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        with_ae("ae"),
    ] {
        let e = b
            .declare_exchange("x", ExchangeKind::Direct, o.clone())
            .unwrap_err();
        assert_eq!(e.reply_code(), 406, "{o:?}");
    }
    // The same properties: fine.
    exchange(&b, "x", ExchangeKind::Direct);
}

#[test]
fn unknown_exchange_type_is_503() {
    let e = "foo".parse::<ExchangeKind>().unwrap_err();
    assert_eq!(e.reply_code(), 503);
    assert!(e.is_connection_error());
    assert_eq!(
        e.reply_text(),
        "COMMAND_INVALID - unknown exchange type 'foo'"
    );
    for (s, k) in [
        ("direct", ExchangeKind::Direct),
        ("fanout", ExchangeKind::Fanout),
        ("topic", ExchangeKind::Topic),
        ("headers", ExchangeKind::Headers),
    ] {
        assert_eq!(s.parse::<ExchangeKind>().unwrap(), k);
        assert_eq!(k.to_string(), s);
    }
}

#[test]
fn deleting_an_exchange_removes_bindings_to_and_from_it() {
    let b = Broker::new();
    exchange(&b, "a", ExchangeKind::Fanout);
    exchange(&b, "b", ExchangeKind::Fanout);
    queues(&b, &["q"]);
    b.bind_exchange("b", "a", "", &none()).unwrap();
    b.bind_queue("q", "b", "", &none()).unwrap();
    assert_eq!(b.publish("a", "", "m").unwrap().routed, 1);
    b.delete_exchange("b", false).unwrap();
    assert!(b.publish("a", "", "m").unwrap().is_unroutable());
    // Re-creating `b` starts with no bindings.
    exchange(&b, "b", ExchangeKind::Fanout);
    assert!(b.publish("b", "", "m").unwrap().is_unroutable());
    assert!(b.publish("a", "", "m").unwrap().is_unroutable());
}

#[test]
fn deleted_queue_is_no_longer_routed_to() {
    let b = Broker::new();
    queues(&b, &["q"]);
    b.bind_queue("q", "amq.fanout", "", &none()).unwrap();
    b.delete_queue("q", Default::default()).unwrap();
    assert!(b.publish("amq.fanout", "", "m").unwrap().is_unroutable());
    assert!(b.publish("", "q", "m").unwrap().is_unroutable());
    // A new queue of the same name is not bound.
    queues(&b, &["q"]);
    assert!(b.publish("amq.fanout", "", "m").unwrap().is_unroutable());
}
