//! The headers exchange's index through the broker: many bindings, binding
//! churn (unbind, queue deletion, rebinding), bindings the index keeps in its
//! residual list, and one copy per queue however many bindings match.
//! (`src/headers.rs` compares the index with a linear scan of the matchers;
//! `tests/headers.rs` holds the matching rules themselves.)

use warren_core::{
    AMQPValue, BasicProperties, Broker, ExchangeKind, FieldTable, Message, QueueDeclareOptions,
};

fn t() -> FieldTable {
    FieldTable::new()
}

fn with_headers(h: FieldTable) -> Message {
    Message::new("m").with_properties(BasicProperties::default().with_headers(h))
}

/// A broker with headers exchange `h`.
fn broker() -> Broker {
    let b = Broker::new();
    b.declare_exchange("h", ExchangeKind::Headers, Default::default())
        .unwrap();
    b
}

fn queue(b: &Broker, name: &str) {
    b.declare_queue(name, QueueDeclareOptions::default())
        .unwrap();
}

/// The queues (of `names`) a message with `headers` reaches through `h`,
/// each checked to hold at most one copy; empties them.
fn reached(b: &Broker, headers: Option<FieldTable>, names: &[String]) -> Vec<String> {
    let m = headers.map_or_else(|| Message::new("m"), with_headers);
    let published = b.publish("h", "", m).unwrap();
    let mut got = Vec::new();
    for name in names {
        match b.purge_queue(name).unwrap() {
            0 => {}
            1 => got.push(name.clone()),
            n => panic!("{name} got {n} copies"),
        }
    }
    assert_eq!(published.routed as usize, got.len());
    got
}

#[test]
fn a_thousand_bindings_each_message_finds_its_queue() {
    let b = broker();
    let names: Vec<String> = (0..1000).map(|i| format!("q{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        queue(&b, name);
        let args = t()
            .with("format", format!("f{}", i % 10))
            .with("region", (i / 10) as i32);
        b.bind_queue(name, "h", "", &args).unwrap();
    }
    for i in (0..1000).step_by(37) {
        // Other numeric kinds for the region, and an extra header.
        let h = t()
            .with("region", AMQPValue::Double((i / 10) as f64))
            .with("size", 1i64)
            .with(
                "format",
                AMQPValue::ByteArray(format!("f{}", i % 10).into()),
            );
        assert_eq!(reached(&b, Some(h), &names), [format!("q{i}")]);
    }
    // Unbinding half of them: those no longer route, the others still do.
    for (i, name) in names.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let args = t()
            .with("format", format!("f{}", i % 10))
            .with("region", (i / 10) as i32);
        b.unbind_queue(name, "h", "", &args).unwrap();
    }
    for i in 0..20 {
        let h = t()
            .with("format", format!("f{}", i % 10))
            .with("region", (i / 10) as i64);
        let want: Vec<String> = if i % 2 == 0 {
            vec![]
        } else {
            vec![format!("q{i}")]
        };
        assert_eq!(reached(&b, Some(h), &names), want);
    }
}

#[test]
fn unbinding_one_of_two_bindings_keeps_the_other() {
    let b = broker();
    queue(&b, "q");
    let names = ["q".to_owned()];
    let red = t().with("colour", "red");
    let any_blue = t().with("x-match", "any").with("colour", "blue");
    b.bind_queue("q", "h", "", &red).unwrap();
    b.bind_queue("q", "h", "", &any_blue).unwrap();
    // The same arguments under another routing key: a binding of its own.
    b.bind_queue("q", "h", "other", &red).unwrap();
    let blue = || Some(t().with("colour", "blue"));
    let red_msg = || Some(t().with("colour", "red"));
    assert_eq!(reached(&b, red_msg(), &names), names);
    assert_eq!(reached(&b, blue(), &names), names);
    b.unbind_queue("q", "h", "", &red).unwrap();
    assert_eq!(reached(&b, red_msg(), &names), names);
    b.unbind_queue("q", "h", "other", &red).unwrap();
    assert!(reached(&b, red_msg(), &names).is_empty());
    assert_eq!(reached(&b, blue(), &names), names);
    b.unbind_queue("q", "h", "", &any_blue).unwrap();
    assert!(reached(&b, blue(), &names).is_empty());
    // Rebinding after the index emptied out.
    b.bind_queue("q", "h", "", &red).unwrap();
    assert_eq!(reached(&b, red_msg(), &names), names);
}

#[test]
fn deleting_a_queue_drops_its_bindings() {
    let b = broker();
    let names = ["a".to_owned(), "b".to_owned()];
    for name in &names {
        queue(&b, name);
        b.bind_queue(name, "h", "", &t().with("k", AMQPValue::Void))
            .unwrap();
        b.bind_queue(name, "h", "", &t().with("x-match", "any").with("k", 1i32))
            .unwrap();
    }
    b.delete_queue("a", Default::default()).unwrap();
    let h = t().with("k", 1i64);
    let published = b.publish("h", "", with_headers(h.clone())).unwrap();
    assert_eq!(published.routed, 1);
    assert_eq!(b.purge_queue("b").unwrap(), 1);
    queue(&b, "a");
    assert_eq!(reached(&b, Some(h), &names), ["b".to_owned()]);
}

#[test]
fn residual_bindings_route_as_before() {
    let b = broker();
    let names: Vec<String> = ["all", "any", "all-x", "nan", "indexed"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for name in &names {
        queue(&b, name);
    }
    // `all` with nothing to check: every message, even without headers.
    b.bind_queue("all", "h", "", &t()).unwrap();
    // `any` with nothing to check: no message.
    b.bind_queue("any", "h", "", &t().with("x-match", "any"))
        .unwrap();
    // `all` ignores `x-` arguments, so this one checks nothing either.
    b.bind_queue("all-x", "h", "", &t().with("x-k", "v"))
        .unwrap();
    // A NaN equals nothing, itself included.
    b.bind_queue(
        "nan",
        "h",
        "",
        &t().with("x-match", "any")
            .with("n", f64::NAN)
            .with("k", "v"),
    )
    .unwrap();
    b.bind_queue("indexed", "h", "", &t().with("k", "v"))
        .unwrap();
    let all = |extra: &[&str]| {
        let mut v = vec!["all".to_owned(), "all-x".to_owned()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(reached(&b, None, &names)), all(&[]));
    assert_eq!(sorted(reached(&b, Some(t()), &names)), all(&[]));
    assert_eq!(
        sorted(reached(&b, Some(t().with("n", f64::NAN)), &names)),
        all(&[])
    );
    assert_eq!(
        sorted(reached(&b, Some(t().with("k", "v")), &names)),
        all(&["nan", "indexed"])
    );
}

#[test]
fn one_copy_however_many_bindings_match() {
    let b = broker();
    queue(&b, "q");
    let names = ["q".to_owned()];
    b.bind_queue("q", "h", "", &t().with("a", 1i32)).unwrap();
    b.bind_queue("q", "h", "", &t().with("b", AMQPValue::Void))
        .unwrap();
    b.bind_queue(
        "q",
        "h",
        "",
        &t().with("x-match", "any")
            .with("a", AMQPValue::Timestamp(1))
            .with("b", AMQPValue::Void),
    )
    .unwrap();
    b.bind_queue("q", "h", "", &t()).unwrap();
    // Through an exchange-to-exchange binding as well.
    b.declare_exchange("h2", ExchangeKind::Headers, Default::default())
        .unwrap();
    b.bind_exchange("h2", "h", "", &t().with("a", 1.0f64))
        .unwrap();
    b.bind_queue("q", "h2", "", &t().with("b", "x")).unwrap();
    let h = t().with("a", AMQPValue::LongLongInt(1)).with("b", "x");
    assert_eq!(reached(&b, Some(h), &names), names);
}
