//! Bounded queues: `x-max-length`, `x-max-length-bytes` and the overflow
//! policies `drop-head`, `reject-publish`, `reject-publish-dlx` and warren's
//! `block` (sync and async back-pressure).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use warren_core::{
    AMQPValue, Broker, ConsumeOptions, ExchangeKind, FieldTable, GetOptions, Overflow,
    PublishError, Published, QueueDeclareOptions,
};

const WAIT: Duration = Duration::from_secs(5);

fn none() -> FieldTable {
    FieldTable::new()
}

fn assert_conserved(b: &Broker) {
    let t = b.totals();
    assert_eq!(
        t.enqueued,
        t.ready + t.unacked + t.acked + t.discarded + t.dropped + t.expired + t.purged + t.deleted,
        "{t:?}"
    );
}

/// Ready bodies of a queue, oldest first, taken with no-ack gets.
fn drain(b: &Broker, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = b
        .get(
            q,
            GetOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap()
    {
        out.push(String::from_utf8(d.body().to_vec()).unwrap());
    }
    out
}

fn publish_n(b: &Broker, q: &str, bodies: &[&str]) -> Vec<Published> {
    bodies
        .iter()
        .map(|m| b.publish("", q, m.to_string().into_bytes()).unwrap())
        .collect()
}

fn bounded(overflow: Overflow, max_len: u64) -> QueueDeclareOptions {
    QueueDeclareOptions::default()
        .with_max_length(max_len)
        .with_overflow(overflow)
}

/// A broker with a fanout `dlx` feeding queue `dlq`.
fn with_dlq() -> Broker {
    let b = Broker::new();
    b.declare_exchange("dlx", ExchangeKind::Fanout, Default::default())
        .unwrap();
    b.declare_queue("dlq", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("dlq", "dlx", "", &none()).unwrap();
    b
}

#[test]
fn drop_head_drops_the_oldest() {
    let b = Broker::new();
    b.declare_queue("q", bounded(Overflow::DropHead, 2))
        .unwrap();
    let outs = publish_n(&b, "q", &["1", "2", "3", "4"]);
    assert!(outs.iter().all(|o| o.routed == 1 && o.rejected == 0));
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.dropped, s.enqueued), (2, 2, 4));
    assert_eq!(b.stats().dropped, 2);
    assert_conserved(&b);
    assert_eq!(drain(&b, "q"), ["3", "4"]);
}

#[test]
fn drop_head_is_the_default_overflow() {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default().with_max_length(1))
        .unwrap();
    publish_n(&b, "q", &["1", "2"]);
    assert_eq!(drain(&b, "q"), ["2"]);
}

#[test]
fn drop_head_by_bytes() {
    let b = Broker::new();
    b.declare_queue(
        "q",
        QueueDeclareOptions::default().with_max_length_bytes(10),
    )
    .unwrap();
    publish_n(&b, "q", &["aaaa", "bbbb", "cccc"]); // 12 bytes > 10
    assert_eq!(b.queue_stats("q").unwrap().dropped, 1);
    // Properties do not count, only the body.
    let m = warren_core::Message::new("dd").with_properties(
        warren_core::BasicProperties::default().with_correlation_id("a long correlation id"),
    );
    b.publish("", "q", m).unwrap(); // 4 + 4 + 2 = 10: fits
    assert_eq!(b.queue_stats("q").unwrap().dropped, 1);
    // A body bigger than the bound cannot stay at all.
    b.publish("", "q", "0123456789ab").unwrap();
    assert_eq!(drain(&b, "q"), Vec::<String>::new());
    assert_conserved(&b);
}

#[test]
fn drop_head_dead_letters_with_reason_maxlen() {
    let b = with_dlq();
    b.declare_queue(
        "q",
        bounded(Overflow::DropHead, 1).with_dead_letter("dlx", None),
    )
    .unwrap();
    publish_n(&b, "q", &["old", "new"]);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.dropped, s.dead_lettered), (1, 1));
    let d = b.get("dlq", GetOptions::default()).unwrap().unwrap();
    assert_eq!(&d.body()[..], b"old");
    let h = d.properties().headers.as_ref().unwrap();
    let death = h.get("x-death").and_then(AMQPValue::as_array).unwrap()[0]
        .as_table()
        .unwrap();
    assert_eq!(
        death.get("reason").and_then(AMQPValue::as_str),
        Some("maxlen")
    );
    assert_eq!(death.get("queue").and_then(AMQPValue::as_str), Some("q"));
    d.ack();
    assert_eq!(drain(&b, "q"), ["new"]);
    assert_conserved(&b);
}

#[test]
fn max_length_zero_delivers_to_a_waiting_consumer() {
    let b = Broker::new();
    b.declare_queue("q", bounded(Overflow::DropHead, 0))
        .unwrap();
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    b.publish("", "q", "m").unwrap();
    let d = c.recv_timeout(WAIT).unwrap();
    d.ack();
    assert_eq!(b.queue_stats("q").unwrap().dropped, 0);
    drop(c);
    b.publish("", "q", "m").unwrap();
    assert_eq!(b.queue_stats("q").unwrap().dropped, 1);
}

#[test]
fn reject_publish_refuses_the_new_message() {
    let b = Broker::new();
    b.declare_queue("q", bounded(Overflow::RejectPublish, 2))
        .unwrap();
    b.declare_queue("other", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("q", "amq.fanout", "", &none()).unwrap();
    b.bind_queue("other", "amq.fanout", "", &none()).unwrap();
    publish_n(&b, "q", &["1", "2"]);
    let out = b.publish("", "q", "3").unwrap();
    assert_eq!(
        out,
        Published {
            routed: 0,
            rejected: 1
        }
    );
    assert!(out.is_rejected());
    assert!(!out.is_unroutable());
    // Through a fanout: the other queue still takes it.
    let out = b.publish("amq.fanout", "", "4").unwrap();
    assert_eq!(
        out,
        Published {
            routed: 1,
            rejected: 1
        }
    );
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.rejected, s.enqueued, s.dropped), (2, 2, 2, 0));
    assert_conserved(&b);
    assert_eq!(drain(&b, "q"), ["1", "2"]);
    // Room again: accepted.
    assert_eq!(b.publish("", "q", "5").unwrap().routed, 1);
}

#[test]
fn reject_publish_by_bytes() {
    let b = Broker::new();
    b.declare_queue(
        "q",
        QueueDeclareOptions::default()
            .with_max_length_bytes(5)
            .with_overflow(Overflow::RejectPublish),
    )
    .unwrap();
    assert_eq!(b.publish("", "q", "abc").unwrap().routed, 1);
    assert!(b.publish("", "q", "def").unwrap().is_rejected());
    assert_eq!(b.publish("", "q", "de").unwrap().routed, 1);
}

#[test]
fn reject_publish_dlx_dead_letters_the_refused_message() {
    let b = with_dlq();
    b.declare_queue(
        "q",
        bounded(Overflow::RejectPublishDlx, 1).with_dead_letter("dlx", None),
    )
    .unwrap();
    publish_n(&b, "q", &["kept"]);
    let out = b.publish("", "q", "refused").unwrap();
    assert_eq!(
        out,
        Published {
            routed: 0,
            rejected: 1
        }
    );
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.rejected, s.dead_lettered, s.enqueued), (1, 1, 1));
    let d = b.get("dlq", GetOptions::default()).unwrap().unwrap();
    assert_eq!(&d.body()[..], b"refused");
    let death = d
        .properties()
        .headers
        .as_ref()
        .unwrap()
        .get("x-death")
        .unwrap();
    let death = death.as_array().unwrap()[0].as_table().unwrap();
    assert_eq!(
        death.get("reason").and_then(AMQPValue::as_str),
        Some("maxlen")
    );
    d.ack();
    assert_eq!(drain(&b, "q"), ["kept"]);
    assert_conserved(&b);
}

#[test]
fn max_length_counts_ready_messages_only() {
    for overflow in [Overflow::DropHead, Overflow::RejectPublish, Overflow::Block] {
        let b = Broker::new();
        b.declare_queue("q", bounded(overflow, 2)).unwrap();
        let c = b
            .consume(
                "q",
                ConsumeOptions {
                    prefetch: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        publish_n(&b, "q", &["1", "2"]);
        let d1 = c.recv_timeout(WAIT).unwrap();
        let d2 = c.recv_timeout(WAIT).unwrap();
        // Two unacked, none ready: two more fit.
        for m in ["3", "4"] {
            let out = b.try_publish("", "q", m).unwrap();
            assert_eq!(out.routed, 1, "{overflow:?}");
        }
        let s = b.queue_stats("q").unwrap();
        assert_eq!((s.ready, s.unacked, s.dropped, s.rejected), (2, 2, 0, 0));
        d1.ack();
        d2.ack();
        assert_conserved(&b);
    }
}

#[test]
fn requeue_over_the_limit_drops_from_the_head() {
    let b = Broker::new();
    b.declare_queue("q", bounded(Overflow::DropHead, 2))
        .unwrap();
    publish_n(&b, "q", &["1"]);
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    publish_n(&b, "q", &["2", "3"]);
    // "1" goes back to its place, the head, and the queue is over its bound.
    d.nack(true);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.dropped), (2, 1));
    assert_eq!(drain(&b, "q"), ["2", "3"]);
    assert_conserved(&b);
}

#[test]
fn messages_a_dropped_consumer_gives_back_respect_the_bound() {
    // RabbitMQ requeues a closed channel's messages, then drops from the
    // head what is over the limit (max-length counts ready messages).
    let b = with_dlq();
    b.declare_queue(
        "q",
        bounded(Overflow::DropHead, 2).with_dead_letter("dlx", None),
    )
    .unwrap();
    let c = b
        .consume(
            "q",
            ConsumeOptions {
                prefetch: 3,
                ..Default::default()
            },
        )
        .unwrap();
    publish_n(&b, "q", &["1", "2", "3", "4", "5"]);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.unacked), (2, 3));
    drop(c); // "1", "2", "3" go back, at the head
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.unacked, s.dropped), (2, 0, 3));
    assert_eq!(drain(&b, "q"), ["4", "5"]);
    assert_eq!(drain(&b, "dlq"), ["1", "2", "3"]);
    assert_conserved(&b);
}

fn block_queue(b: &Broker, max: u64) {
    b.declare_queue("q", bounded(Overflow::Block, max)).unwrap();
}

#[test]
fn try_publish_to_a_full_block_queue_hands_the_message_back() {
    let b = Broker::new();
    block_queue(&b, 1);
    b.declare_queue("side", QueueDeclareOptions::default())
        .unwrap();
    b.bind_queue("q", "amq.fanout", "", &none()).unwrap();
    b.bind_queue("side", "amq.fanout", "", &none()).unwrap();
    assert_eq!(b.try_publish("", "q", "1").unwrap().routed, 1);
    match b.try_publish("", "q", "2") {
        Err(PublishError::Full(m)) => assert_eq!(&m.body[..], b"2"),
        other => panic!("{other:?}"),
    }
    // Through a fanout: no queue gets it, not even the one with room.
    let e = b.try_publish("amq.fanout", "", "3").unwrap_err();
    assert!(e.error().is_none());
    assert_eq!(&e.into_message().body[..], b"3");
    assert_eq!(b.queue_stats("side").unwrap().ready, 0);
    assert_eq!(b.queue_stats("q").unwrap().ready, 1);
    assert_eq!(drain(&b, "q"), ["1"]);
    assert_eq!(b.try_publish("amq.fanout", "", "4").unwrap().routed, 2);
}

#[test]
fn sync_publish_waits_for_room() {
    let b = Broker::new();
    block_queue(&b, 1);
    b.publish("", "q", "1").unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let publisher = {
        let b = b.clone();
        std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            let out = b.publish("", "q", "2");
            done_tx.send(out.map_err(|e| e.to_string())).unwrap();
        })
    };
    started_rx.recv_timeout(WAIT).unwrap();
    // The publisher has not returned: the queue is full.
    assert_eq!(
        done_rx.recv_timeout(Duration::from_millis(100)),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    assert_eq!(b.queue_stats("q").unwrap().ready, 1);
    // A consumer in another thread makes room.
    let consumer = {
        let b = b.clone();
        std::thread::spawn(move || {
            let c = b.consume("q", ConsumeOptions::default()).unwrap();
            let d = c.recv_timeout(WAIT).unwrap();
            let body = d.body().clone();
            d.ack();
            body
        })
    };
    let out = done_rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(out.routed, 1);
    assert_eq!(&consumer.join().unwrap()[..], b"1");
    publisher.join().unwrap();
    assert_eq!(drain(&b, "q"), ["2"]);
    assert_conserved(&b);
}

#[test]
fn blocked_publisher_returns_when_the_queue_is_deleted() {
    let b = Broker::new();
    block_queue(&b, 1);
    b.publish("", "q", "1").unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let publisher = {
        let b = b.clone();
        std::thread::spawn(move || {
            let out = b.publish("", "q", "2").map_err(|e| e.to_string());
            done_tx.send(out).unwrap();
        })
    };
    assert!(done_rx.recv_timeout(Duration::from_millis(50)).is_err());
    b.delete_queue("q", Default::default()).unwrap();
    let out = done_rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(out.routed, 0);
    publisher.join().unwrap();
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<CountingWaker>, Waker) {
    let c = Arc::new(CountingWaker::default());
    (c.clone(), Waker::from(c))
}

#[test]
fn publish_async_waits_for_room_without_a_runtime() {
    let b = Broker::new();
    block_queue(&b, 1);
    b.publish("", "q", "1").unwrap();
    let (count, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(b.publish_async("", "q", "2"));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    assert_eq!(b.queue_stats("q").unwrap().ready, 1);
    // Make room: the future is woken and completes.
    assert_eq!(drain(&b, "q"), ["1"]);
    assert!(count.0.load(Ordering::SeqCst) >= 1);
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(out)) => assert_eq!(out.routed, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(drain(&b, "q"), ["2"]);
    assert_conserved(&b);
}

#[test]
fn publish_async_completes_at_once_with_room_and_reports_errors() {
    let b = Broker::new();
    block_queue(&b, 5);
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(b.publish_async("", "q", "1"));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(out)) => assert_eq!(out.routed, 1),
        other => panic!("{other:?}"),
    }
    let mut fut = pin!(b.publish_async("missing", "q", "1"));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert_eq!(e.error().unwrap().reply_code(), 404),
        other => panic!("{other:?}"),
    }
}

#[test]
fn dropping_a_pending_publish_async_publishes_nothing_more() {
    let b = Broker::new();
    block_queue(&b, 1);
    b.publish("", "q", "1").unwrap();
    let (count, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    {
        let mut fut = pin!(b.publish_async("", "q", "2"));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(drain(&b, "q"), ["1"]);
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        0,
        "a dropped future is not woken"
    );
    assert_eq!(b.queue_stats("q").unwrap().ready, 0);
}

#[test]
fn many_blocked_publishers_all_get_through() {
    let b = Broker::new();
    block_queue(&b, 2);
    let n = 8;
    let per = 50;
    let publishers: Vec<_> = (0..n)
        .map(|p| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let out = b.publish("", "q", format!("{p}:{i}").into_bytes()).unwrap();
                    assert_eq!(out.routed, 1);
                }
            })
        })
        .collect();
    let c = b
        .consume(
            "q",
            ConsumeOptions {
                prefetch: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let mut last = vec![-1i64; n];
    for _ in 0..n * per {
        let d = c.recv_timeout(WAIT).unwrap();
        let s = std::str::from_utf8(d.body()).unwrap().to_owned();
        let (p, i) = s.split_once(':').unwrap();
        let (p, i): (usize, i64) = (p.parse().unwrap(), i.parse().unwrap());
        assert!(i > last[p], "per-publisher order kept");
        last[p] = i;
        d.ack();
    }
    for p in publishers {
        p.join().unwrap();
    }
    let s = b.queue_stats("q").unwrap();
    assert_eq!(
        (s.enqueued, s.acked, s.dropped, s.rejected),
        (400, 400, 0, 0)
    );
}

#[test]
fn invalid_bounds_are_406() {
    let b = Broker::new();
    for (k, v) in [
        ("x-max-length", AMQPValue::LongLongInt(-1)),
        ("x-max-length", AMQPValue::from("10")),
        ("x-max-length-bytes", AMQPValue::LongLongInt(-5)),
        ("x-overflow", AMQPValue::from("drop-tail")),
        ("x-overflow", AMQPValue::LongInt(1)),
    ] {
        let o = QueueDeclareOptions {
            arguments: FieldTable::new().with(k, v.clone()),
            ..Default::default()
        };
        let e = b.declare_queue("q", o).unwrap_err();
        assert_eq!(e.reply_code(), 406, "{k}={v:?}");
        assert!(!b.has_queue("q"));
    }
}
