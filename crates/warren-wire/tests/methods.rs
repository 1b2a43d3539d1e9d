//! Exchange, queue and basic methods through lapin, checked against the
//! in-process broker behind the server.

mod common;

use common::{code, start, text, within};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use warren_core::{ConsumeOptions, QueueDeclareOptions as CoreQueueOptions};

fn no_args() -> FieldTable {
    FieldTable::default()
}

async fn declare(ch: &Channel, q: &str) -> lapin::Queue {
    within(ch.queue_declare(q.into(), QueueDeclareOptions::default(), no_args()))
        .await
        .unwrap()
}

/// Publishes under confirms, so that the message is routed when it returns.
async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await;
}

async fn publish_with(ch: &Channel, exchange: &str, key: &str, body: &[u8], p: BasicProperties) {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        p,
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap();
}

async fn confirming(env: &common::Env) -> (lapin::Connection, Channel) {
    let (c, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    (c, ch)
}

#[tokio::test(flavor = "multi_thread")]
async fn declare_bind_publish_consume_ack() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    within(ch.exchange_declare(
        "logs".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    declare(&ch, "errors").await;
    within(ch.queue_bind(
        "errors".into(),
        "logs".into(),
        "*.error".into(),
        QueueBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    publish(&ch, "logs", "db.error", b"disk full").await;
    publish(&ch, "logs", "db.info", b"fine").await;
    assert_eq!(env.broker.queue_stats("errors").unwrap().ready, 1);

    let mut consumer = within(ch.basic_consume(
        "errors".into(),
        "my-tag".into(),
        BasicConsumeOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    let d = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.data, b"disk full");
    assert_eq!(d.exchange.as_str(), "logs");
    assert_eq!(d.routing_key.as_str(), "db.error");
    assert_eq!(d.delivery_tag, 1);
    assert!(!d.redelivered);
    assert_eq!(env.broker.queue_stats("errors").unwrap().unacked, 1);
    within(d.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    // a synchronous round trip orders the ack before the check
    declare(&ch, "errors").await;
    let s = env.broker.queue_stats("errors").unwrap();
    assert_eq!((s.ready, s.unacked, s.acked), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn properties_and_headers_cross_the_wire_both_ways() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "props").await;
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongInt(7));
    headers.insert("s".into(), AMQPValue::LongString(LongString::from("x")));
    let p = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id("c-1".into())
        .with_reply_to("replies".into())
        .with_delivery_mode(2)
        .with_priority(4)
        .with_message_id("m-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("t".into())
        .with_app_id("tests".into())
        .with_headers(headers);
    publish_with(&ch, "", "props", b"{}", p).await;
    let d = env
        .broker
        .get("props", Default::default())
        .unwrap()
        .unwrap();
    let got = d.properties();
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    assert_eq!(got.correlation_id.as_deref(), Some("c-1"));
    assert_eq!(got.reply_to.as_deref(), Some("replies"));
    assert_eq!(got.delivery_mode, Some(2));
    assert_eq!(got.priority, Some(4));
    assert_eq!(got.timestamp, Some(1_700_000_000));
    assert_eq!(got.kind.as_deref(), Some("t"));
    let h = got.headers.as_ref().unwrap();
    assert_eq!(h.get("n").and_then(|v| v.as_i64()), Some(7));
    assert_eq!(h.get("s").and_then(|v| v.as_str()), Some("x"));
    d.reject(true);
    // and out again
    let m = within(ch.basic_get("props".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.properties.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-1")
    );
    assert_eq!(m.properties.delivery_mode(), &Some(2));
    let h = m.properties.headers().as_ref().unwrap();
    assert_eq!(h.inner().get("n"), Some(&AMQPValue::LongInt(7)));
    assert!(m.redelivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_and_wire_share_queues() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    env.broker
        .declare_queue("shared", CoreQueueOptions::default())
        .unwrap();
    env.broker.publish("", "shared", "from inside").unwrap();
    let m = within(ch.basic_get("shared".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.data, b"from inside");
    assert_eq!(m.message_count, 0);
    within(m.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();

    let inside = env
        .broker
        .consume("shared", ConsumeOptions::default())
        .unwrap();
    publish(&ch, "", "shared", b"from outside").await;
    let d = within(inside.recv_async()).await.unwrap();
    assert_eq!(&d.body()[..], b"from outside");
    d.ack();
}

#[tokio::test(flavor = "multi_thread")]
async fn get_reports_count_and_empty() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "g").await;
    assert!(within(ch.basic_get("g".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .is_none());
    for i in 0..3u8 {
        publish(&ch, "", "g", &[i]).await;
    }
    let m = within(ch.basic_get("g".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_count, 2);
    assert_eq!(m.data, [0]);
    assert_eq!(m.delivery_tag, 1);
    let m2 = within(ch.basic_get("g".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m2.delivery_tag, 2);
    // multiple ack of tag 2 answers 1 and 2
    within(ch.basic_ack(2, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    declare(&ch, "g").await;
    let s = env.broker.queue_stats("g").unwrap();
    assert_eq!((s.ready, s.unacked, s.acked), (1, 0, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn nack_and_reject_requeue_or_drop() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "n").await;
    publish(&ch, "", "n", b"a").await;
    publish(&ch, "", "n", b"b").await;
    let a = within(ch.basic_get("n".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    within(a.acker.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let again = within(ch.basic_get("n".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.data, b"a");
    assert!(again.redelivered);
    within(again.acker.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let b = within(ch.basic_get("n".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.data, b"b");
    within(ch.basic_nack(
        b.delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    ))
    .await
    .unwrap();
    declare(&ch, "n").await;
    let s = env.broker.queue_stats("n").unwrap();
    assert_eq!((s.ready, s.unacked, s.discarded), (0, 0, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_zero_multiple_acks_everything() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "all").await;
    for i in 0..5u8 {
        publish(&ch, "", "all", &[i]).await;
    }
    for _ in 0..5 {
        within(ch.basic_get("all".into(), BasicGetOptions::default()))
            .await
            .unwrap()
            .unwrap();
    }
    within(ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    declare(&ch, "all").await;
    let s = env.broker.queue_stats("all").unwrap();
    assert_eq!((s.unacked, s.acked), (0, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn qos_limits_unacked_per_consumer() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "work").await;
    for i in 0..3u8 {
        publish(&ch, "", "work", &[i]).await;
    }
    within(ch.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(ch.basic_consume(
        "work".into(),
        "".into(),
        BasicConsumeOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    assert!(consumer.tag().as_str().starts_with("amq.ctag-"));
    let first = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(first.data, [0]);
    // prefetch 1: the other two wait in the queue until the ack
    let s = env.broker.queue_stats("work").unwrap();
    assert_eq!((s.ready, s.unacked), (2, 1));
    within(first.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let second = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(second.data, [1]);
    assert_eq!(second.delivery_tag, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn global_qos_limits_the_channel() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    within(ch.basic_qos(1, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c1 = within(ch.basic_consume("q1".into(), "c1".into(), Default::default(), no_args()))
        .await
        .unwrap();
    let mut c2 = within(ch.basic_consume("q2".into(), "c2".into(), Default::default(), no_args()))
        .await
        .unwrap();
    publish(&ch, "", "q1", b"1").await;
    let d1 = within(c1.next()).await.unwrap().unwrap();
    publish(&ch, "", "q2", b"2").await;
    // q2's message is held until the channel's one unacked delivery is answered
    within(d1.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let d2 = within(c2.next()).await.unwrap().unwrap();
    assert_eq!(d2.data, b"2");
    assert_eq!(d2.delivery_tag, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn exchange_to_exchange_bindings_and_deletes() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    for (x, k) in [("x1", ExchangeKind::Fanout), ("x2", ExchangeKind::Direct)] {
        within(ch.exchange_declare(x.into(), k, ExchangeDeclareOptions::default(), no_args()))
            .await
            .unwrap();
    }
    within(ch.exchange_bind(
        "x2".into(),
        "x1".into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    ))
    .await
    .unwrap();
    declare(&ch, "via").await;
    within(ch.queue_bind(
        "via".into(),
        "x2".into(),
        "k".into(),
        Default::default(),
        no_args(),
    ))
    .await
    .unwrap();
    publish(&ch, "x1", "k", b"hop").await;
    assert_eq!(env.broker.queue_stats("via").unwrap().ready, 1);
    within(ch.exchange_unbind(
        "x2".into(),
        "x1".into(),
        "".into(),
        Default::default(),
        no_args(),
    ))
    .await
    .unwrap();
    publish(&ch, "x1", "k", b"lost").await;
    assert_eq!(env.broker.queue_stats("via").unwrap().ready, 1);
    within(ch.queue_unbind("via".into(), "x2".into(), "k".into(), no_args()))
        .await
        .unwrap();
    within(ch.exchange_delete("x2".into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!env.broker.has_exchange("x2"));
    let purged = within(ch.queue_purge("via".into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    publish(&ch, "", "via", b"one").await;
    let deleted = within(ch.queue_delete("via".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert!(!env.broker.has_queue("via"));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_named_queue_and_empty_name_means_last_declared() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    let q = within(ch.queue_declare(
        "".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    let name = q.name().as_str().to_owned();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert!(env.broker.has_queue(&name));
    // bind "" with key "" binds the last queue with its own name as key
    within(ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        Default::default(),
        no_args(),
    ))
    .await
    .unwrap();
    publish(&ch, "amq.direct", &name, b"to last").await;
    let m = within(ch.basic_get("".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.data, b"to last");

    // a fresh channel has no last queue: 404
    let (_c2, fresh) = env.channel().await;
    let err = within(fresh.basic_get("".into(), BasicGetOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(404));
    assert_eq!(text(&err), "NOT_FOUND - no previously declared queue");
}

#[tokio::test(flavor = "multi_thread")]
async fn nowait_methods_take_effect() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    within(ch.exchange_declare(
        "nw".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            nowait: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    within(ch.queue_declare(
        "nwq".into(),
        QueueDeclareOptions {
            nowait: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "nwq".into(),
        "nw".into(),
        "".into(),
        QueueBindOptions { nowait: true },
        no_args(),
    ))
    .await
    .unwrap();
    publish(&ch, "nw", "", b"x").await;
    assert_eq!(env.broker.queue_stats("nwq").unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_declares() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "here").await;
    publish(&ch, "", "here", b"1").await;
    let q = within(ch.queue_declare(
        "here".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    assert_eq!(q.message_count(), 1);
    within(ch.exchange_declare(
        "amq.topic".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    let err = within(ch.queue_declare(
        "missing".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(404));
    assert_eq!(text(&err), "NOT_FOUND - no queue 'missing' in vhost '/'");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_server_sent_cancel() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "c").await;
    let consumer = within(ch.basic_consume("c".into(), "t1".into(), Default::default(), no_args()))
        .await
        .unwrap();
    assert_eq!(env.broker.queue_stats("c").unwrap().consumers, 1);
    within(ch.basic_cancel("t1".into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert_eq!(env.broker.queue_stats("c").unwrap().consumers, 0);
    drop(consumer);

    // the queue deleted under a consumer: the server cancels it
    let mut consumer =
        within(ch.basic_consume("c".into(), "t2".into(), Default::default(), no_args()))
            .await
            .unwrap();
    env.broker.delete_queue("c", Default::default()).unwrap();
    assert!(within(consumer.next()).await.is_none());
    // the channel is still usable
    declare(&ch, "c2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recover_requeues_unacked() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "r").await;
    publish(&ch, "", "r", b"x").await;
    within(ch.basic_get("r".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.broker.queue_stats("r").unwrap().unacked, 1);
    within(ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    let s = env.broker.queue_stats("r").unwrap();
    assert_eq!((s.ready, s.unacked), (1, 0));
    let m = within(ch.basic_get("r".into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert!(m.redelivered);
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_round_robin_across_connections() {
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "rr").await;
    let (_c1, ch1) = env.channel().await;
    let (_c2, ch2) = env.channel().await;
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut a = within(ch1.basic_consume("rr".into(), "".into(), opts, no_args()))
        .await
        .unwrap();
    let mut b = within(ch2.basic_consume("rr".into(), "".into(), opts, no_args()))
        .await
        .unwrap();
    for i in 0..4u8 {
        publish(&ch, "", "rr", &[i]).await;
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(within(a.next()).await.unwrap().unwrap().data[0]);
        got.push(within(b.next()).await.unwrap().unwrap().data[0]);
    }
    got.sort();
    assert_eq!(got, [0, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_tags_are_per_channel() {
    // kombu / oslo.messaging: every connection consumes the shared topic
    // queue with tag "1"
    let env = start().await;
    let (_c, ch) = confirming(&env).await;
    declare(&ch, "shared-topic").await;
    let (_c1, ch1) = env.channel().await;
    let (_c2, ch2) = env.channel().await;
    let opts = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut a = within(ch1.basic_consume("shared-topic".into(), "1".into(), opts, no_args()))
        .await
        .unwrap();
    let mut b = within(ch2.basic_consume("shared-topic".into(), "1".into(), opts, no_args()))
        .await
        .unwrap();
    assert_eq!(env.broker.queue_stats("shared-topic").unwrap().consumers, 2);
    publish(&ch, "", "shared-topic", b"x").await;
    publish(&ch, "", "shared-topic", b"y").await;
    let da = within(a.next()).await.unwrap().unwrap();
    let db = within(b.next()).await.unwrap().unwrap();
    assert_eq!(da.routing_key.as_str(), "shared-topic");
    assert_eq!(db.routing_key.as_str(), "shared-topic");
    // the client sees its own tag
    assert_eq!(a.tag().as_str(), "1");
    assert_eq!(b.tag().as_str(), "1");
}
