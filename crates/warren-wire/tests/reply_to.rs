//! RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`).

mod common;

use common::{code, start, text, within};
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[tokio::test(flavor = "multi_thread")]
async fn rpc_round_trip_over_direct_reply_to() {
    let env = start().await;
    // the server side: a service consuming requests
    let (_sc, service) = env.channel().await;
    within(service.queue_declare(
        "rpc".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut requests = within(service.basic_consume(
        "rpc".into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();

    // the client: consume the pseudo-queue (no-ack), then publish with reply_to
    let (_cc, client) = env.channel().await;
    let mut replies = within(client.basic_consume(
        REPLY_TO.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(
        client.basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default()
                .with_reply_to(REPLY_TO.into())
                .with_correlation_id("42".into()),
        ),
    )
    .await
    .unwrap();

    let req = within(requests.next()).await.unwrap().unwrap();
    let reply_to = req.properties.reply_to().clone().unwrap();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "rewritten: {reply_to}"
    );
    // the address can be checked with a passive declare
    within(service.queue_declare(
        reply_to.clone(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(service.basic_publish(
        "".into(),
        reply_to.clone(),
        BasicPublishOptions::default(),
        b"pong",
        BasicProperties::default().with_correlation_id("42".into()),
    ))
    .await
    .unwrap();
    let reply = within(replies.next()).await.unwrap().unwrap();
    assert_eq!(reply.data, b"pong");
    assert_eq!(reply.routing_key.as_str(), reply_to.as_str());
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("42")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reply_to_misuse_gets_rabbitmq_errors() {
    let env = start().await;
    let (conn, ch) = env.channel().await;
    let err = within(ch.basic_consume(
        REPLY_TO.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert_eq!(
        text(&err),
        "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    );

    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let confirm = within(ch.basic_publish(
        "".into(),
        "anything".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    ))
    .await
    .unwrap();
    let err = within(confirm).await.unwrap_err();
    assert_eq!(code(&err), Some(406));
    assert_eq!(
        text(&err),
        "PRECONDITION_FAILED - fast reply consumer does not exist"
    );

    // a reply to an address nobody holds is unroutable: returned if mandatory
    assert_eq!(
        common::publish_mandatory(&conn, "amq.rabbitmq.reply-to.bogus", b"x").await,
        Some(312)
    );
    let ch = within(conn.create_channel()).await.unwrap();
    let err = within(ch.queue_declare(
        "amq.rabbitmq.reply-to.bogus".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(code(&err), Some(404));
}
