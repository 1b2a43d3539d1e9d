//! Connection negotiation with lapin: login, vhosts, tune, channels, close.

mod common;

use common::{code, start, start_with, text, within};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use warren_core::Broker;
use warren_wire::{Limits, User};

#[tokio::test(flavor = "multi_thread")]
async fn connects_opens_channels_and_closes_cleanly() {
    let env = start().await;
    let conn = env.connect().await;
    assert!(conn.status().connected());
    let a = within(conn.create_channel()).await.unwrap();
    let b = within(conn.create_channel()).await.unwrap();
    assert_ne!(a.id(), b.id());
    within(a.queue_declare(
        "qa".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(b.queue_declare(
        "qb".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(a.close(200, "bye".into())).await.unwrap();
    // b is unaffected by a's close
    within(b.queue_declare(
        "qc".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(env.server.connection_count(), 1);
    within(conn.close(200, "bye".into())).await.unwrap();
    within(env.server.wait_for_connection_count(0)).await;
    assert!(env.broker.has_queue("qa") && env.broker.has_queue("qc"));
}

#[tokio::test(flavor = "multi_thread")]
async fn amqplain_login_as_py_amqp_and_lapin_send_it() {
    let env = start().await;
    let url = format!("{}?auth_mechanism=amqplain", env.url());
    let conn = env.connect_url(&url).await.unwrap();
    within(conn.create_channel()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_refused_with_403() {
    let env = start().await;
    let url = format!("amqp://guest:nope@{}/%2f", env.addr());
    let err = env.connect_url(&url).await.unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
    assert!(text(&err).starts_with("ACCESS_REFUSED - Login was refused"));
    let url = format!("amqp://nobody:guest@{}/%2f", env.addr());
    let err = env.connect_url(&url).await.unwrap_err();
    assert_eq!(code(&err), Some(403), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vhosts_and_per_user_access() {
    let other = Broker::new();
    let env = start_with(|c| {
        c.with_vhost("other", other.clone())
            .with_user(User::new("app", "pw").with_vhosts(["other"]))
    })
    .await;
    // unknown vhost: 530
    let url = format!("amqp://guest:guest@{}/nope", env.addr());
    let err = env.connect_url(&url).await.unwrap_err();
    assert_eq!(code(&err), Some(530), "{err:?}");
    assert_eq!(text(&err), "NOT_ALLOWED - vhost nope not found");
    // app may open `other`, not `/`
    let url = format!("amqp://app:pw@{}/%2f", env.addr());
    let err = env.connect_url(&url).await.unwrap_err();
    assert_eq!(code(&err), Some(530), "{err:?}");
    assert_eq!(
        text(&err),
        "NOT_ALLOWED - access to vhost '/' refused for user 'app'"
    );
    let url = format!("amqp://app:pw@{}/other", env.addr());
    let conn = env.connect_url(&url).await.unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare(
        "in-other".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(other.has_queue("in-other"));
    assert!(!env.broker.has_queue("in-other"));
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_works_from_loopback() {
    let env = start().await;
    // 127.0.0.1 is loopback, so guest (loopback only) gets in.
    let conn = env.connect().await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiated_frame_max_splits_bodies_both_ways() {
    let env = start().await;
    let url = format!("{}?frame_max=4096&heartbeat=5", env.url());
    let conn = env.connect_url(&url).await.unwrap();
    assert_eq!(conn.configuration().frame_max(), 4096);
    assert_eq!(conn.configuration().heartbeat(), 5);
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.queue_declare(
        "big".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let confirm = within(ch.basic_publish(
        "".into(),
        "big".into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    // in-process: the body arrived whole
    let d = env.broker.get("big", Default::default()).unwrap().unwrap();
    assert_eq!(&d.body()[..], &body[..]);
    d.reject(true);
    // and back out, split by 4096
    let mut consumer = within(ch.basic_consume(
        "big".into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    use futures_lite::StreamExt;
    let got = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(got.data, body);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_heartbeats_an_idle_connection() {
    use amq_protocol::frame::AMQPFrame;
    let env = start_with(|c| {
        c.with_limits(Limits {
            heartbeat: 1,
            ..Limits::default()
        })
    })
    .await;
    let mut raw = env.raw().await;
    raw.handshake_full(0, 0, 1).await;
    // Idle: the server beats every half interval; answering keeps the
    // connection open across several intervals.
    for _ in 0..4 {
        assert_eq!(raw.frame().await, Some(AMQPFrame::Heartbeat));
        raw.send(&common::frame_bytes(&AMQPFrame::Heartbeat)).await;
    }
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_silent_for_two_heartbeats_is_dropped() {
    let env = start_with(|c| {
        c.with_limits(Limits {
            heartbeat: 1,
            ..Limits::default()
        })
    })
    .await;
    let mut raw = env.raw().await;
    raw.handshake_full(0, 0, 1).await;
    // The client never sends anything again; the server hangs up.
    assert!(raw.eof().await);
    within(env.server.wait_for_connection_count(0)).await;
}
