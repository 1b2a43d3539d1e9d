//! Another Rust client, amqprs, through the common method families.

mod common;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicPublishArguments,
    BasicQosArguments, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use common::{start, within};

#[tokio::test(flavor = "multi_thread")]
async fn amqprs_declare_publish_get_consume_ack() {
    let env = start().await;
    let args = OpenConnectionArguments::new("127.0.0.1", env.addr().port(), "guest", "guest");
    let conn = within(Connection::open(&args)).await.unwrap();
    let ch = within(conn.open_channel(None)).await.unwrap();

    within(ch.exchange_declare(ExchangeDeclareArguments::new("prs-x", "topic")))
        .await
        .unwrap();
    let (queue, _, _) = within(ch.queue_declare(QueueDeclareArguments::default()))
        .await
        .unwrap()
        .unwrap();
    assert!(queue.starts_with("amq.gen-"), "{queue}");
    within(ch.queue_bind(QueueBindArguments::new(&queue, "prs-x", "a.*")))
        .await
        .unwrap();

    let publish = BasicPublishArguments::new("prs-x", "a.b");
    for body in [&b"one"[..], b"two", b""] {
        within(ch.basic_publish(BasicProperties::default(), body.to_vec(), publish.clone()))
            .await
            .unwrap();
    }
    // a round trip orders the publishes before the get
    within(ch.basic_qos(BasicQosArguments::new(0, 10, false)))
        .await
        .unwrap();
    let (get_ok, _props, body) = within(ch.basic_get(BasicGetArguments::new(&queue)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, b"one");
    assert_eq!(get_ok.message_count(), 2);
    within(ch.basic_ack(BasicAckArguments::new(get_ok.delivery_tag(), false)))
        .await
        .unwrap();

    let (_tag, mut rx) = within(ch.basic_consume_rx(BasicConsumeArguments::new(&queue, "prs")))
        .await
        .unwrap();
    for want in [&b"two"[..], b""] {
        let m = within(rx.recv()).await.unwrap();
        assert_eq!(m.content.as_deref(), Some(want));
        let tag = m.deliver.unwrap().delivery_tag();
        within(ch.basic_ack(BasicAckArguments::new(tag, false)))
            .await
            .unwrap();
    }
    within(ch.close()).await.unwrap();
    within(conn.close()).await.unwrap();
    let s = env.broker.queue_stats(&queue);
    // an exclusive-less server-named queue stays; everything was acked
    assert_eq!(
        s.map(|s| (s.ready, s.unacked, s.acked)).ok(),
        Some((0, 0, 3))
    );
}
