//! Publisher confirms, mandatory returns and transactions.

mod common;

use common::{code, start, text, within};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation};

async fn declare(ch: &Channel, q: &str, args: FieldTable) {
    within(ch.queue_declare(q.into(), QueueDeclareOptions::default(), args))
        .await
        .unwrap();
}

async fn publish(ch: &Channel, key: &str, body: &[u8], mandatory: bool) -> Confirmation {
    let confirm = within(ch.basic_publish(
        "".into(),
        key.into(),
        BasicPublishOptions {
            mandatory,
            ..Default::default()
        },
        body,
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap()
}

/// Publishes; returns the confirm without waiting for it.
async fn publish_pending(ch: &Channel, key: &str, body: &[u8]) -> lapin::PublisherConfirm {
    within(ch.basic_publish(
        "".into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_publish_is_acked() {
    let env = start().await;
    let (_c, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    declare(&ch, "c", FieldTable::default()).await;
    let mut pending = Vec::new();
    for i in 0..100u32 {
        pending.push(
            within(ch.basic_publish(
                "".into(),
                "c".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ))
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(within(p).await.unwrap().is_ack());
    }
    assert_eq!(env.broker.queue_stats("c").unwrap().ready, 100);
    assert!(within(ch.wait_for_confirms()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unroutable_mandatory_is_returned_before_its_ack() {
    let env = start().await;
    let (_c, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    // lapin attaches a basic.return to the confirm only if it came first
    let c = publish(&ch, "nowhere", b"lost", true).await;
    assert!(c.is_ack(), "unroutable messages are acked: {c:?}");
    let returned = c.take_message().expect("basic.return before the ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(returned.delivery.data, b"lost");
    // not mandatory: acked, not returned
    let c = publish(&ch, "nowhere", b"dropped", false).await;
    assert_eq!(c, Confirmation::Ack(None));
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_publish_queue_nacks() {
    let env = start().await;
    let (_c, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    declare(&ch, "bounded", args).await;
    assert!(publish(&ch, "bounded", b"1", false).await.is_ack());
    assert!(publish(&ch, "bounded", b"2", false).await.is_nack());
    assert!(publish(&ch, "bounded", b"3", true).await.is_nack());
    assert_eq!(env.broker.queue_stats("bounded").unwrap().ready, 1);
    // acks resume after the queue has room
    env.broker.purge_queue("bounded").unwrap();
    assert!(publish(&ch, "bounded", b"4", false).await.is_ack());
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_hold_publishes_and_acks_until_commit() {
    let env = start().await;
    let (_c, ch) = env.channel().await;
    declare(&ch, "tx", FieldTable::default()).await;
    within(ch.tx_select()).await.unwrap();
    let publish_plain = |body: &'static [u8]| {
        let ch = ch.clone();
        async move {
            within(ch.basic_publish(
                "".into(),
                "tx".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            ))
            .await
            .unwrap();
        }
    };
    publish_plain(b"rolled back").await;
    within(ch.tx_rollback()).await.unwrap();
    assert_eq!(env.broker.queue_stats("tx").unwrap().ready, 0);

    publish_plain(b"committed").await;
    // a round trip: the publish has been read, and is held
    declare(&ch, "tx", FieldTable::default()).await;
    assert_eq!(env.broker.queue_stats("tx").unwrap().ready, 0);
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(env.broker.queue_stats("tx").unwrap().ready, 1);

    // acks are transactional too
    let m = within(ch.basic_get("tx".into(), BasicGetOptions::default()))
        .await
        .unwrap()
        .unwrap();
    within(m.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.tx_rollback()).await.unwrap();
    assert_eq!(env.broker.queue_stats("tx").unwrap().unacked, 1);
    within(ch.basic_ack(m.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(ch.tx_commit()).await.unwrap();
    let s = env.broker.queue_stats("tx").unwrap();
    assert_eq!((s.unacked, s.acked), (0, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn mode_errors_close_the_channel() {
    let env = start().await;
    let (conn, ch) = env.channel().await;
    let err = within(ch.tx_commit()).await.unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert_eq!(
        text(&err),
        "PRECONDITION_FAILED - channel is not transactional"
    );

    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.tx_select()).await.unwrap();
    let err = within(ch.confirm_select(Default::default()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert_eq!(
        text(&err),
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
    );

    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let err = within(ch.tx_select()).await.unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn block_overflow_holds_the_publisher_until_there_is_room() {
    let env = start().await;
    let (_c, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("block")),
    );
    declare(&ch, "narrow", args).await;
    let first = publish_pending(&ch, "narrow", b"1").await;
    let second = publish_pending(&ch, "narrow", b"2").await;
    // the first is confirmed even while the second waits for room
    assert!(within(first).await.unwrap().is_ack());
    let d = env
        .broker
        .get("narrow", Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(&d.body()[..], b"1");
    d.ack();
    assert!(within(second).await.unwrap().is_ack());
    assert_eq!(env.broker.queue_stats("narrow").unwrap().ready, 1);
}
