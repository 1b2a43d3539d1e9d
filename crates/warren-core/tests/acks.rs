//! Consumers, acknowledgements and queue management: ack / nack / reject,
//! requeue order, no-ack, prefetch, cancel, drop, exclusive and auto-delete,
//! delete and purge, exclusive queues with owners, declare errors.

use std::sync::mpsc;
use std::time::Duration;

use warren_core::{
    AMQPValue, Broker, ConsumeOptions, Consumer, Delivery, FieldTable, GetOptions,
    QueueDeclareOptions, QueueDeleteOptions, RecvError, RecvTimeoutError, TryRecvError,
};

const WAIT: Duration = Duration::from_secs(5);

fn assert_conserved(b: &Broker) {
    let t = b.totals();
    assert_eq!(
        t.enqueued,
        t.ready + t.unacked + t.acked + t.discarded + t.dropped + t.expired + t.purged + t.deleted,
        "{t:?}"
    );
}

fn queue(b: &Broker, name: &str) {
    b.declare_queue(name, QueueDeclareOptions::default())
        .unwrap();
}

fn publish(b: &Broker, q: &str, bodies: &[&str]) {
    for m in bodies {
        assert_eq!(
            b.publish("", q, m.to_string().into_bytes()).unwrap().routed,
            1
        );
    }
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.body().to_vec()).unwrap()
}

fn consume(b: &Broker, q: &str, prefetch: u32) -> Consumer {
    b.consume(
        q,
        ConsumeOptions {
            prefetch,
            ..Default::default()
        },
    )
    .unwrap()
}

fn recv_n(c: &Consumer, n: usize) -> Vec<Delivery> {
    (0..n).map(|_| c.recv_timeout(WAIT).unwrap()).collect()
}

fn bodies(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(body).collect()
}

fn stats(b: &Broker, q: &str) -> (u64, u64, u64) {
    let s = b.queue_stats(q).unwrap();
    (s.ready, s.unacked, s.acked)
}

#[test]
fn ack_completes_a_delivery() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a", "b"]);
    let c = consume(&b, "q", 0);
    let ds = recv_n(&c, 2);
    assert_eq!(stats(&b, "q"), (0, 2, 0));
    assert_eq!(ds[0].delivery_tag(), 1);
    assert_eq!(ds[1].delivery_tag(), 2);
    assert_eq!(ds[0].consumer_tag(), Some(c.consumer_tag()));
    assert_eq!(ds[0].queue(), "q");
    assert!(c.consumer_tag().starts_with("amq.ctag-"));
    for d in ds {
        d.ack();
    }
    assert_eq!(stats(&b, "q"), (0, 0, 2));
    assert_conserved(&b);
}

#[test]
fn nack_requeue_restores_the_original_position() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3", "4"]);
    let c = consume(&b, "q", 3);
    let mut ds = recv_n(&c, 3);
    // Stop dispatch, so requeued messages stay in the queue to be looked at.
    c.cancel();
    let d3 = ds.pop().unwrap();
    let d2 = ds.pop().unwrap();
    let d1 = ds.pop().unwrap();
    d3.ack();
    d2.nack(true);
    d1.nack(true);
    assert_eq!(stats(&b, "q"), (3, 0, 1));
    let c2 = consume(&b, "q", 0);
    let again = recv_n(&c2, 3);
    assert_eq!(bodies(&again), ["1", "2", "4"]);
    assert_eq!(
        again.iter().map(Delivery::redelivered).collect::<Vec<_>>(),
        [true, true, false]
    );
    drop(again);
    drop(c2);
    assert_conserved(&b);
}

#[test]
fn nack_requeue_goes_straight_back_to_a_consumer_with_credit() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2"]);
    let c = consume(&b, "q", 0);
    let ds = recv_n(&c, 2);
    for d in ds.into_iter().rev() {
        d.nack(true);
    }
    let again = recv_n(&c, 2);
    assert!(again.iter().all(Delivery::redelivered));
    for d in again {
        d.ack();
    }
    assert_eq!(stats(&b, "q"), (0, 0, 2));
}

#[test]
fn reject_without_requeue_discards() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a", "b"]);
    let c = consume(&b, "q", 0);
    let ds = recv_n(&c, 2);
    let mut it = ds.into_iter();
    it.next().unwrap().reject(false);
    it.next().unwrap().nack(false);
    let s = b.queue_stats("q").unwrap();
    assert_eq!(
        (s.ready, s.unacked, s.discarded, s.dead_lettered),
        (0, 0, 2, 0)
    );
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_conserved(&b);
}

#[test]
fn reject_requeue_marks_redelivered() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a"]);
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert!(!d.redelivered());
    d.reject(true);
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert!(d.redelivered());
    assert_eq!(body(&d), "a");
    d.ack();
}

#[test]
fn no_ack_consumers_need_no_answer() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a", "b", "c"]);
    let c = b
        .consume(
            "q",
            ConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap();
    let d = c.recv_timeout(WAIT).unwrap();
    assert_eq!(stats(&b, "q").2, 1, "counted as acked once received");
    d.nack(true); // does nothing
    let rest = recv_n(&c, 2);
    drop(rest); // dropping does not requeue either
    assert_eq!(stats(&b, "q"), (0, 0, 3));
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_conserved(&b);
}

#[test]
fn no_ack_get() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a"]);
    let d = b
        .get(
            "q",
            GetOptions {
                no_ack: true,
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
    drop(d);
    assert_eq!(stats(&b, "q"), (0, 0, 1));
}

#[test]
fn prefetch_limits_and_credit_comes_back_by_every_answer() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3", "4", "5", "6"]);
    let c = consume(&b, "q", 2);
    let mut ds = recv_n(&c, 2);
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(stats(&b, "q"), (4, 2, 0));
    ds.remove(0).ack(); // "1"
    ds.push(c.recv_timeout(WAIT).unwrap()); // "3"
    ds.remove(0).nack(false); // "2"
    ds.push(c.recv_timeout(WAIT).unwrap()); // "4"
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    drop(ds.remove(0)); // "3", requeued
    let d = c.recv_timeout(WAIT).unwrap();
    assert_eq!(body(&d), "3");
    assert!(d.redelivered());
    ds.push(d);
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(bodies(&ds), ["4", "3"]);
    drop(ds);
    assert_conserved(&b);
}

#[test]
fn a_full_window_refills_as_soon_as_the_consumer_has_nothing_left() {
    // A window of 8 works through a backlog of 40. While the consumer still
    // has deliveries to receive, its credit comes back in batches; once it
    // has received everything it was given, a single ack brings the next.
    let b = Broker::new();
    queue(&b, "q");
    let names: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    publish(
        &b,
        "q",
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let c = consume(&b, "q", 8);
    let mut held = recv_n(&c, 8);
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    let first = held.remove(0);
    let mut got = vec![body(&first)];
    first.ack();
    let next = c
        .try_recv()
        .expect("one ack refills a consumer that ran dry");
    assert_eq!(body(&next), "8");
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Empty);
    held.push(next);
    // Answer as they come: every message arrives once, in order, and the
    // window is never exceeded.
    got.extend(bodies(&held));
    for d in held {
        d.ack();
    }
    while got.len() < 40 {
        let d = c.recv_timeout(WAIT).unwrap();
        got.push(body(&d));
        assert!(b.queue_stats("q").unwrap().unacked <= 8);
        d.ack();
    }
    assert_eq!(got, names);
    assert_eq!(stats(&b, "q"), (0, 0, 40));
    assert_conserved(&b);
}

#[test]
fn round_robin_with_prefetch() {
    let b = Broker::new();
    queue(&b, "q");
    let c1 = consume(&b, "q", 1);
    let c2 = consume(&b, "q", 1);
    publish(&b, "q", &["1", "2", "3"]);
    let a = c1.recv_timeout(WAIT).unwrap();
    let z = c2.recv_timeout(WAIT).unwrap();
    assert_eq!((body(&a), body(&z)), ("1".into(), "2".into()));
    assert_eq!(stats(&b, "q").0, 1);
    z.ack();
    let z = c2.recv_timeout(WAIT).unwrap();
    assert_eq!(body(&z), "3");
    a.ack();
    z.ack();
}

#[test]
fn dropping_a_consumer_requeues_its_undelivered_inbox_in_order() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3", "4", "5"]);
    let c = consume(&b, "q", 0);
    let first = c.recv_timeout(WAIT).unwrap();
    assert_eq!(stats(&b, "q"), (0, 5, 0));
    drop(c);
    // "2".."5" were never shown to the application: back, in order, not
    // redelivered. "1" is still held.
    assert_eq!(stats(&b, "q"), (4, 1, 0));
    let c = consume(&b, "q", 0);
    let rest = recv_n(&c, 4);
    assert_eq!(bodies(&rest), ["2", "3", "4", "5"]);
    assert!(rest.iter().all(|d| !d.redelivered()));
    // A delivery that outlived its consumer can still be acked.
    first.ack();
    for d in rest {
        d.ack();
    }
    assert_eq!(stats(&b, "q"), (0, 0, 5));
    assert_conserved(&b);
}

#[test]
fn a_delivery_outliving_its_consumer_can_be_answered() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a", "b"]);
    let c = consume(&b, "q", 0);
    let ds = recv_n(&c, 2);
    drop(c);
    let mut it = ds.into_iter();
    it.next().unwrap().ack();
    it.next().unwrap().nack(true);
    assert_eq!(stats(&b, "q"), (1, 0, 1));
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert_eq!(body(&d), "b");
    assert!(d.redelivered());
    d.ack();
}

#[test]
fn deliveries_outliving_their_consumer_are_answered_on_other_threads() {
    // A delivery does not hold a counted reference to its consumer: the
    // consumer's state lives until the last of its deliveries is gone,
    // whichever thread drops it, and whether the consumer went first.
    let b = Broker::new();
    queue(&b, "q");
    let names: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    publish(&b, "q", &names);
    // Acked, except every fourth, dropped unanswered (requeued); then the
    // 50 requeued ones again, no-ack.
    for (no_ack, n, ready, acked) in [(false, 200, 50, 150), (true, 50, 0, 200)] {
        let c = b
            .consume(
                "q",
                ConsumeOptions {
                    no_ack,
                    ..Default::default()
                },
            )
            .unwrap();
        let ds = recv_n(&c, n);
        let tag = c.consumer_tag().to_owned();
        drop(c);
        let (odd, even): (Vec<_>, Vec<_>) = ds.into_iter().partition(|d| d.delivery_tag() % 2 == 1);
        let threads = [odd, even].map(|half| {
            let tag = tag.clone();
            std::thread::spawn(move || {
                for d in half {
                    assert_eq!((d.queue(), d.consumer_tag()), ("q", Some(&*tag)));
                    if d.delivery_tag() % 4 == 0 {
                        drop(d);
                    } else {
                        d.ack();
                    }
                }
            })
        });
        for t in threads {
            t.join().unwrap();
        }
        let s = b.queue_stats("q").unwrap();
        assert_eq!(
            (s.ready, s.unacked, s.acked, s.consumers),
            (ready, 0, acked, 0)
        );
        assert_conserved(&b);
    }
}

#[test]
fn acks_of_a_departed_consumers_deliveries_count_at_once() {
    // Acks on a consumer's deliveries count in the queue's stats at once,
    // whether the consumer is cancelled, dropped, or cut off by the queue's
    // deletion, and stay counted once it is gone.
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["a", "b", "c", "d"]);
    let c = consume(&b, "q", 0);
    let mut ds = recv_n(&c, 4);
    c.cancel();
    ds.pop().unwrap().ack();
    assert_eq!(stats(&b, "q"), (0, 3, 1));
    drop(c);
    ds.pop().unwrap().ack();
    assert_eq!(stats(&b, "q"), (0, 2, 2));
    ds.pop().unwrap().nack(true);
    assert_eq!(stats(&b, "q"), (1, 1, 2));
    ds.pop().unwrap().ack();
    assert_eq!(stats(&b, "q"), (1, 0, 3));
    assert_conserved(&b);

    let c = consume(&b, "q", 0);
    let d = c.recv_timeout(WAIT).unwrap();
    b.delete_queue("q", QueueDeleteOptions::default()).unwrap();
    assert_eq!(b.totals().acked, 3);
    d.ack();
    drop(c);
    let t = b.totals();
    assert_eq!((t.acked, t.unacked, t.ready), (4, 0, 0));
    assert_conserved(&b);
}

#[test]
fn cancel_lets_the_inbox_drain_then_reports_cancelled() {
    let b = Broker::new();
    queue(&b, "q");
    let c = consume(&b, "q", 0);
    publish(&b, "q", &["1", "2", "3"]);
    c.cancel();
    assert_eq!(b.queue_stats("q").unwrap().consumers, 0);
    publish(&b, "q", &["after"]);
    let got = recv_n(&c, 3);
    assert_eq!(bodies(&got), ["1", "2", "3"]);
    assert_eq!(c.recv().unwrap_err(), RecvError);
    assert_eq!(c.try_recv().unwrap_err(), TryRecvError::Cancelled);
    assert_eq!(
        c.recv_timeout(WAIT).unwrap_err(),
        RecvTimeoutError::Cancelled
    );
    // Cancelling twice is harmless; the deliveries can still be answered.
    c.cancel();
    for d in got {
        d.ack();
    }
    assert_eq!(stats(&b, "q"), (1, 0, 3));
    assert_conserved(&b);
}

#[test]
fn cancel_wakes_a_blocked_receiver() {
    let b = Broker::new();
    queue(&b, "q");
    let c = consume(&b, "q", 0);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(c.recv().map(|d| body(&d))).unwrap());
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        c.cancel();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Err(RecvError));
    });
}

#[test]
fn exclusive_consumer() {
    let b = Broker::new();
    queue(&b, "q");
    let ex = b
        .consume(
            "q",
            ConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap();
    let e = b.consume("q", ConsumeOptions::default()).unwrap_err();
    assert_eq!(e.reply_code(), 403);
    assert_eq!(
        e.reply_text(),
        "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use"
    );
    drop(ex);
    let c = b.consume("q", ConsumeOptions::default()).unwrap();
    let e = b
        .consume(
            "q",
            ConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.reply_code(), 403);
    // A refused exclusive consume leaves the others alone.
    let c2 = b.consume("q", ConsumeOptions::default()).unwrap();
    assert_eq!(b.queue_stats("q").unwrap().consumers, 2);
    drop((c, c2));
}

#[test]
fn consumer_tags_may_repeat_across_consumers() {
    // RabbitMQ scopes consumer tags to a channel; oslo.messaging's servers all
    // consume a shared topic queue with tag "1". warren-wire checks per channel.
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    let tagged = || ConsumeOptions {
        consumer_tag: "1".into(),
        ..Default::default()
    };
    let c1 = b.consume("q", tagged()).unwrap();
    let c2 = b.consume("q", tagged()).unwrap();
    assert_eq!((c1.consumer_tag(), c2.consumer_tag()), ("1", "1"));
    assert_eq!(b.queue_stats("q").unwrap().consumers, 2);
}

#[test]
fn auto_delete_queue_goes_with_its_last_consumer() {
    let b = Broker::new();
    let ad = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    b.declare_queue("q", ad.clone()).unwrap();
    b.bind_queue("q", "amq.fanout", "", &FieldTable::new())
        .unwrap();
    // Never consumed: stays.
    publish(&b, "q", &["1", "2"]);
    assert!(b.has_queue("q"));
    let c1 = consume(&b, "q", 1);
    let c2 = consume(&b, "q", 1);
    let d = c1.recv_timeout(WAIT).unwrap();
    c1.cancel();
    assert!(b.has_queue("q"));
    drop(c2); // the last one: the queue goes
    assert!(!b.has_queue("q"));
    assert!(b.publish("amq.fanout", "", "m").unwrap().is_unroutable());
    // The held delivery can still be answered.
    d.ack();
    assert_conserved(&b);
    assert_eq!(b.totals().unacked, 0);

    // Dropping (not cancelling) the last consumer works the same.
    b.declare_queue("q", ad).unwrap();
    let c = consume(&b, "q", 0);
    drop(c);
    assert!(!b.has_queue("q"));
}

#[test]
fn deleting_a_queue_cancels_its_consumers() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3"]);
    let c = consume(&b, "q", 0);
    let held = c.recv_timeout(WAIT).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let other = consume(&b, "q", 0);
        s.spawn(move || tx.send(other.recv().map(|d| body(&d))).unwrap());
        assert_eq!(b.delete_queue("q", Default::default()).unwrap(), 0);
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), Err(RecvError));
    });
    // Waiting messages in the inbox went with the queue.
    assert_eq!(c.recv().unwrap_err(), RecvError);
    assert!(!b.has_queue("q"));
    assert_eq!(
        b.consume("q", ConsumeOptions::default())
            .unwrap_err()
            .reply_code(),
        404
    );
    // Answering a delivery of a deleted queue is harmless and keeps the books.
    held.nack(true);
    assert_conserved(&b);
    let t = b.totals();
    assert_eq!((t.unacked, t.ready, t.enqueued), (0, 0, 3));
}

#[test]
fn a_delivery_held_across_delete_is_counted_until_answered() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3", "4"]);
    let ds: Vec<Delivery> = (0..4)
        .map(|_| b.get("q", GetOptions::default()).unwrap().unwrap())
        .collect();
    b.delete_queue("q", Default::default()).unwrap();
    assert_conserved(&b);
    let mut it = ds.into_iter();
    it.next().unwrap().ack();
    assert_conserved(&b);
    it.next().unwrap().nack(false);
    assert_conserved(&b);
    it.next().unwrap().nack(true);
    assert_conserved(&b);
    drop(it);
    assert_conserved(&b);
    let t = b.totals();
    assert_eq!((t.enqueued, t.unacked), (4, 0));
    // Deleted queues' counters stay in the totals.
    queue(&b, "q");
    publish(&b, "q", &["5"]);
    let t = b.totals();
    assert_eq!(t.enqueued, 5);
    assert_conserved(&b);
}

#[test]
fn delete_if_unused_and_if_empty() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1"]);
    let c = consume(&b, "q", 1);
    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    let e = b.delete_queue("q", if_unused).unwrap_err();
    assert_eq!(e.reply_code(), 406);
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - queue 'q' in vhost '/' in use"
    );
    let d = c.recv_timeout(WAIT).unwrap();
    drop(c);
    d.ack();
    publish(&b, "q", &["2"]);
    let e = b.delete_queue("q", if_empty).unwrap_err();
    assert_eq!(e.reply_code(), 406);
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty"
    );
    b.delete_queue("q", if_unused).unwrap();
    assert!(!b.has_queue("q"));
    // Deleting what is not there succeeds.
    assert_eq!(b.delete_queue("q", if_empty).unwrap(), 0);
}

#[test]
fn delete_returns_the_ready_count() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3"]);
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert_eq!(b.delete_queue("q", Default::default()).unwrap(), 2);
    d.ack();
    assert_conserved(&b);
}

#[test]
fn purge_returns_the_count_and_leaves_unacked_alone() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2", "3"]);
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert_eq!(b.purge_queue("q").unwrap(), 2);
    assert_eq!(b.purge_queue("q").unwrap(), 0);
    let s = b.queue_stats("q").unwrap();
    assert_eq!((s.ready, s.unacked, s.purged), (0, 1, 2));
    d.nack(true);
    assert_eq!(b.queue_stats("q").unwrap().ready, 1);
    assert_eq!(b.purge_queue("missing").unwrap_err().reply_code(), 404);
    assert_conserved(&b);
}

#[test]
fn get_reports_the_message_count() {
    let b = Broker::new();
    queue(&b, "q");
    assert!(b.get("q", GetOptions::default()).unwrap().is_none());
    publish(&b, "q", &["1", "2", "3"]);
    let mut left = Vec::new();
    let mut tags = Vec::new();
    while let Some(d) = b.get("q", GetOptions::default()).unwrap() {
        left.push(d.message_count().unwrap());
        tags.push(d.delivery_tag());
        assert_eq!(d.consumer_tag(), None);
        d.ack();
    }
    assert_eq!(left, [2, 1, 0]);
    assert!(tags.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        b.get("missing", GetOptions::default())
            .unwrap_err()
            .reply_code(),
        404
    );
}

#[test]
fn exclusive_queue_belongs_to_its_owner() {
    let b = Broker::new();
    let a = b.new_owner();
    let other = b.new_owner();
    assert_ne!(a, other);
    let excl = QueueDeclareOptions {
        exclusive: true,
        owner: Some(a),
        ..Default::default()
    };
    b.declare_queue("q", excl.clone()).unwrap();
    b.declare_queue("q", excl.clone()).unwrap(); // the owner may redeclare
    publish(&b, "q", &["m"]); // anyone may publish to it

    let locked = |e: warren_core::Error| {
        assert_eq!(e.reply_code(), 405, "{e}");
        assert_eq!(
            e.reply_text(),
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        );
    };
    locked(
        b.declare_queue(
            "q",
            QueueDeclareOptions {
                owner: Some(other),
                ..excl.clone()
            },
        )
        .unwrap_err(),
    );
    locked(
        b.declare_queue(
            "q",
            QueueDeclareOptions {
                passive: true,
                owner: Some(other),
                ..Default::default()
            },
        )
        .unwrap_err(),
    );
    locked(
        b.consume(
            "q",
            ConsumeOptions {
                owner: Some(other),
                ..Default::default()
            },
        )
        .unwrap_err(),
    );
    locked(
        b.get(
            "q",
            GetOptions {
                owner: Some(other),
                ..Default::default()
            },
        )
        .unwrap_err(),
    );
    locked(
        b.delete_queue(
            "q",
            QueueDeleteOptions {
                owner: Some(other),
                ..Default::default()
            },
        )
        .unwrap_err(),
    );
    let c = b
        .consume(
            "q",
            ConsumeOptions {
                owner: Some(a),
                ..Default::default()
            },
        )
        .unwrap();
    c.recv_timeout(WAIT).unwrap().ack();

    // Another owner's queues are untouched by a release.
    b.release_owner(other);
    assert!(b.has_queue("q"));
    b.release_owner(a);
    assert!(!b.has_queue("q"));
    assert_eq!(c.recv().unwrap_err(), RecvError);
    // The name is free again.
    b.declare_queue(
        "q",
        QueueDeclareOptions {
            owner: Some(other),
            ..excl
        },
    )
    .unwrap();
}

#[test]
fn a_redeclare_must_match_the_exclusive_property() {
    // RabbitMQ checks exclusivity strictly on a (non-passive) redeclare: an
    // exclusive queue redeclared as non-exclusive, even by its owner, or a
    // shared queue redeclared as exclusive, is 405.
    let b = Broker::new();
    let a = b.new_owner();
    let as_owner = |exclusive| QueueDeclareOptions {
        exclusive,
        owner: Some(a),
        ..Default::default()
    };
    b.declare_queue("mine", as_owner(true)).unwrap();
    assert_eq!(
        b.declare_queue("mine", as_owner(false))
            .unwrap_err()
            .reply_code(),
        405
    );
    queue(&b, "shared");
    assert_eq!(
        b.declare_queue("shared", as_owner(true))
            .unwrap_err()
            .reply_code(),
        405
    );
    b.declare_queue("shared", as_owner(false)).unwrap();
    // A passive declare is lax: the owner, or anyone for a shared queue.
    let passive = QueueDeclareOptions {
        passive: true,
        owner: Some(a),
        ..Default::default()
    };
    b.declare_queue("mine", passive.clone()).unwrap();
    b.declare_queue("shared", passive).unwrap();
    // In-process callers without an owner are trusted.
    queue(&b, "mine");
}

#[test]
fn server_named_queues() {
    let b = Broker::new();
    let ok1 = b.declare_queue("", QueueDeclareOptions::default()).unwrap();
    let ok2 = b.declare_queue("", QueueDeclareOptions::default()).unwrap();
    for ok in [&ok1, &ok2] {
        assert!(ok.queue.starts_with("amq.gen-"), "{}", ok.queue);
        assert!(ok.queue.len() > "amq.gen-".len() + 10);
        assert_eq!((ok.message_count, ok.consumer_count), (0, 0));
        assert!(b.has_queue(&ok.queue));
    }
    assert_ne!(ok1.queue, ok2.queue);
    // Usable like any queue; a passive declare finds it.
    publish(&b, &ok1.queue, &["m"]);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let ok = b.declare_queue(&ok1.queue, passive).unwrap();
    assert_eq!(ok.message_count, 1);
    // But the amq. prefix is reserved for the server: a client cannot name one.
    let e = b
        .declare_queue(&ok1.queue, QueueDeclareOptions::default())
        .unwrap_err();
    assert_eq!(e.reply_code(), 403);
}

#[test]
fn amq_queue_names_are_reserved() {
    let b = Broker::new();
    for name in ["amq.foo", "amq.gen-chosen-by-client"] {
        let e = b
            .declare_queue(name, QueueDeclareOptions::default())
            .unwrap_err();
        assert_eq!(e.reply_code(), 403);
        assert_eq!(
            e.reply_text(),
            format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'")
        );
        assert!(!b.has_queue(name));
    }
    // "amq" without the dot is an ordinary name.
    queue(&b, "amqfoo");
}

#[test]
fn declare_ok_reports_counts() {
    let b = Broker::new();
    queue(&b, "q");
    publish(&b, "q", &["1", "2"]);
    let c = consume(&b, "q", 1);
    let ok = b
        .declare_queue("q", QueueDeclareOptions::default())
        .unwrap();
    assert_eq!(
        (ok.queue.as_str(), ok.message_count, ok.consumer_count),
        ("q", 1, 1)
    );
    drop(c);
}

#[test]
fn passive_declare_of_a_missing_queue_is_404() {
    let b = Broker::new();
    let e = b
        .declare_queue(
            "q",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.reply_text(), "NOT_FOUND - no queue 'q' in vhost '/'");
    assert!(!b.has_queue("q"));
}

#[test]
fn inequivalent_redeclare() {
    let b = Broker::new();
    queue(&b, "q");
    let e = b
        .declare_queue(
            "q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    let e = b
        .declare_queue(
            "q",
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.reply_code(), 406);

    // Unknown arguments are not compared.
    let with = |k: &str, v: AMQPValue| QueueDeclareOptions {
        arguments: FieldTable::new().with(k, v),
        ..Default::default()
    };
    b.declare_queue("q", with("x-unknown", AMQPValue::from("anything")))
        .unwrap();
    b.declare_queue("q", with("my-arg", AMQPValue::LongInt(1)))
        .unwrap();

    // Known ones are, with integer kinds equivalent.
    b.declare_queue("m", QueueDeclareOptions::default().with_max_length(10))
        .unwrap();
    b.declare_queue("m", with("x-max-length", AMQPValue::LongInt(10)))
        .unwrap();
    b.declare_queue("m", with("x-max-length", AMQPValue::ShortInt(10)))
        .unwrap();
    let e = b
        .declare_queue("m", QueueDeclareOptions::default().with_max_length(11))
        .unwrap_err();
    assert_eq!(e.reply_code(), 406);
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'm' in vhost '/': received the value '11' of type 'long' but current is the value '10' of type 'long'"
    );
    let e = b
        .declare_queue("m", QueueDeclareOptions::default())
        .unwrap_err();
    assert_eq!(
        e.reply_text(),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'm' in vhost '/': received none but current is the value '10' of type 'long'"
    );
    b.declare_queue(
        "d",
        QueueDeclareOptions::default().with_dead_letter("dlx", None),
    )
    .unwrap();
    let e = b
        .declare_queue(
            "d",
            QueueDeclareOptions::default().with_dead_letter("other", None),
        )
        .unwrap_err();
    assert_eq!(e.reply_code(), 406);
    // The queue is unchanged by a failed redeclare.
    assert_eq!(
        b.declare_queue(
            "d",
            QueueDeclareOptions::default().with_dead_letter("dlx", None)
        )
        .unwrap()
        .queue,
        "d"
    );
}

#[test]
fn delivery_properties_and_message_copy() {
    let b = Broker::new();
    queue(&b, "q");
    let props = warren_core::BasicProperties::default()
        .with_message_id("id-1")
        .with_reply_to("r")
        .with_delivery_mode(2);
    let m = warren_core::Message::new("body").with_properties(props.clone());
    b.publish("", "q", m.clone()).unwrap();
    let d = b.get("q", GetOptions::default()).unwrap().unwrap();
    assert_eq!(d.properties(), &props);
    assert_eq!(d.to_message(), m);
    assert_eq!(d.exchange(), "");
    assert_eq!(d.routing_key(), "q");
    d.ack();
}
