//! RabbitMQ's errors: codes, texts, and whether the channel or the whole
//! connection closes; what happens to messages and exclusive queues when
//! channels and connections go away.

mod common;

use common::{code, start, text, within, Raw};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use warren_core::QueueDeclareOptions as CoreQueueOptions;

fn no_args() -> FieldTable {
    FieldTable::default()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_delivery_tag_closes_the_channel_only() {
    let env = start().await;
    let (conn, ch) = env.channel().await;
    // basic.ack has no reply: the server's channel.close comes on its own, and
    // whether it reaches lapin before or after the next call on the channel is
    // a race. The connection's event stream sees it either way.
    let mut events = conn.events_listener();
    within(ch.basic_ack(42, BasicAckOptions::default()))
        .await
        .unwrap();
    let err = within(async {
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("event stream ended without the channel error"),
            }
        }
    })
    .await;
    assert_eq!(code(&err), Some(406), "{err:?}");
    assert_eq!(text(&err), "PRECONDITION_FAILED - unknown delivery tag 42");
    // the channel is gone, whichever way lapin reports it
    within(ch.queue_declare("x".into(), Default::default(), no_args()))
        .await
        .unwrap_err();
    assert!(conn.status().connected());
    let ch2 = within(conn.create_channel()).await.unwrap();
    within(ch2.queue_declare("x".into(), Default::default(), no_args()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn channel_errors_keep_the_connection() {
    let env = start().await;
    let (conn, _ch) = env.channel().await;
    let cases: Vec<(u16, &str)> = vec![
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'"),
        // (the wording of this one is warren-core's)
        (403, "ACCESS_REFUSED - "),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'",
        ),
    ];
    for (i, (want_code, want_text)) in cases.into_iter().enumerate() {
        let ch = within(conn.create_channel()).await.unwrap();
        let err = match i {
            0 => within(ch.exchange_declare(
                "missing".into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                no_args(),
            ))
            .await
            .unwrap_err(),
            1 => within(ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()))
                .await
                .unwrap_err(),
            _ => within(ch.exchange_declare(
                "amq.mine".into(),
                ExchangeKind::Direct,
                Default::default(),
                no_args(),
            ))
            .await
            .unwrap_err(),
        };
        assert_eq!(code(&err), Some(want_code), "{err:?}");
        assert!(text(&err).starts_with(want_text), "{err:?}");
        assert!(conn.status().connected());
    }
    // inequivalent redeclare: RabbitMQ's wording, which oslo.messaging parses
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare("q".into(), Default::default(), no_args()))
        .await
        .unwrap();
    let err = within(ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert_eq!(
        text(&err),
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
    );
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_errors_close_the_connection() {
    let env = start().await;
    // unknown exchange type: 503, connection-level
    let (conn, ch) = env.channel().await;
    let err = within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Custom("bogus".into()),
        Default::default(),
        no_args(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(503), "{err:?}");
    assert_eq!(
        text(&err),
        "COMMAND_INVALID - unknown exchange type 'bogus'"
    );
    assert!(within(conn.create_channel()).await.is_err());
    within(env.server.wait_for_connection_count(0)).await;

    // a consumer tag reused on a channel: 530, connection-level
    let (conn, ch) = env.channel().await;
    within(ch.queue_declare("t".into(), Default::default(), no_args()))
        .await
        .unwrap();
    // (a lapin Consumer cancels itself when dropped: keep it)
    let _first = within(ch.basic_consume("t".into(), "tag".into(), Default::default(), no_args()))
        .await
        .unwrap();
    let err = within(ch.basic_consume("t".into(), "tag".into(), Default::default(), no_args()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(530), "{err:?}");
    assert_eq!(
        text(&err),
        "NOT_ALLOWED - attempt to reuse consumer tag 'tag'"
    );
    assert!(within(conn.create_channel()).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_queues_belong_to_their_connection() {
    let env = start().await;
    let (owner, ch) = env.channel().await;
    within(ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    let (_other, och) = env.channel().await;
    let err = within(och.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(405), "{err:?}");
    assert!(text(&err).starts_with(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'"
    ));
    // it dies with its connection: close-ok comes after the cleanup
    assert!(env.broker.has_queue("mine"));
    within(owner.close(200, "bye".into())).await.unwrap();
    assert!(!env.broker.has_queue("mine"));
}

#[tokio::test(flavor = "multi_thread")]
async fn exclusive_queue_dies_when_the_connection_drops() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    use amq_protocol::protocol::{queue, AMQPClass};
    raw.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "ephemeral".into(),
            exclusive: true,
            ..Default::default()
        })),
    )
    .await;
    assert!(matches!(
        raw.method().await,
        Some((1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))))
    ));
    assert!(env.broker.has_queue("ephemeral"));
    drop(raw);
    within(env.server.wait_for_connection_count(0)).await;
    assert!(!env.broker.has_queue("ephemeral"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_deliveries_are_requeued_when_the_channel_closes() {
    let env = start().await;
    env.broker
        .declare_queue("jobs", CoreQueueOptions::default())
        .unwrap();
    for i in 0..3u8 {
        env.broker.publish("", "jobs", vec![i]).unwrap();
    }
    let (conn, ch) = env.channel().await;
    let mut consumer =
        within(ch.basic_consume("jobs".into(), "".into(), Default::default(), no_args()))
            .await
            .unwrap();
    for _ in 0..3 {
        within(consumer.next()).await.unwrap().unwrap();
    }
    let s = env.broker.queue_stats("jobs").unwrap();
    assert_eq!((s.ready, s.unacked), (0, 3));
    within(ch.close(200, "done".into())).await.unwrap();
    let s = env.broker.queue_stats("jobs").unwrap();
    assert_eq!((s.ready, s.unacked, s.consumers), (3, 0, 0));
    // in their original order, marked redelivered
    let ch = within(conn.create_channel()).await.unwrap();
    for i in 0..3u8 {
        let m = within(ch.basic_get("jobs".into(), BasicGetOptions { no_ack: true }))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.data, [i]);
        assert!(m.redelivered);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unacked_deliveries_are_requeued_when_the_connection_drops() {
    let env = start().await;
    env.broker
        .declare_queue("jobs", CoreQueueOptions::default())
        .unwrap();
    env.broker.publish("", "jobs", "one").unwrap();
    let (conn, ch) = env.channel().await;
    let mut consumer =
        within(ch.basic_consume("jobs".into(), "".into(), Default::default(), no_args()))
            .await
            .unwrap();
    within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(env.broker.queue_stats("jobs").unwrap().unacked, 1);
    drop(consumer);
    drop(ch);
    drop(conn);
    within(env.server.wait_for_connection_count(0)).await;
    let s = env.broker.queue_stats("jobs").unwrap();
    assert_eq!((s.ready, s.unacked), (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_cancel_keeps_unacked_deliveries() {
    let env = start().await;
    env.broker
        .declare_queue("keep", CoreQueueOptions::default())
        .unwrap();
    env.broker.publish("", "keep", "x").unwrap();
    let (_conn, ch) = env.channel().await;
    let mut consumer =
        within(ch.basic_consume("keep".into(), "k".into(), Default::default(), no_args()))
            .await
            .unwrap();
    let d = within(consumer.next()).await.unwrap().unwrap();
    within(ch.basic_cancel("k".into(), Default::default()))
        .await
        .unwrap();
    // RabbitMQ: cancel does not requeue; the delivery can still be acked
    assert_eq!(env.broker.queue_stats("keep").unwrap().unacked, 1);
    within(d.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.queue_declare("keep".into(), Default::default(), no_args()))
        .await
        .unwrap();
    assert_eq!(env.broker.queue_stats("keep").unwrap().acked, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_errors_close_the_channel_after_earlier_confirms() {
    let env = start().await;
    let (conn, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.queue_declare("ok".into(), Default::default(), no_args()))
        .await
        .unwrap();
    let good = within(ch.basic_publish(
        "".into(),
        "ok".into(),
        BasicPublishOptions::default(),
        b"1",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    let bad = within(ch.basic_publish(
        "nope".into(),
        "ok".into(),
        BasicPublishOptions::default(),
        b"2",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(within(good).await.unwrap().is_ack());
    let err = within(bad).await.unwrap_err();
    assert_eq!(code(&err), Some(404));
    assert_eq!(text(&err), "NOT_FOUND - no exchange 'nope' in vhost '/'");
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_in_use_and_exclusive_consumers() {
    let env = start().await;
    let (conn, ch) = env.channel().await;
    within(ch.queue_declare("busy".into(), Default::default(), no_args()))
        .await
        .unwrap();
    let _exclusive = within(ch.basic_consume(
        "busy".into(),
        "".into(),
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
        no_args(),
    ))
    .await
    .unwrap();
    let ch2 = within(conn.create_channel()).await.unwrap();
    let err = within(ch2.basic_consume("busy".into(), "".into(), Default::default(), no_args()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
    let ch3 = within(conn.create_channel()).await.unwrap();
    let err = within(ch3.queue_delete(
        "busy".into(),
        QueueDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert_eq!(
        text(&err),
        "PRECONDITION_FAILED - queue 'busy' in vhost '/' in use"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_shutdown_closes_connections_and_requeues() {
    let env = start().await;
    env.broker
        .declare_queue("s", CoreQueueOptions::default())
        .unwrap();
    env.broker.publish("", "s", "x").unwrap();
    let (conn, ch) = env.channel().await;
    let mut consumer =
        within(ch.basic_consume("s".into(), "".into(), Default::default(), no_args()))
            .await
            .unwrap();
    within(consumer.next()).await.unwrap().unwrap();
    let mut events = conn.events_listener();
    let broker = env.broker.clone();
    within(env.server.shutdown()).await;
    assert_eq!(broker.queue_stats("s").unwrap().ready, 1);
    let ev = within(events.next()).await;
    match ev {
        Some(lapin::Event::Error(e)) => assert_eq!(code(&e), Some(320), "{e:?}"),
        other => panic!("expected an error event, got {other:?}"),
    }
}
