//! Serving connections that do not come from the TCP listener:
//! [`ConnectionHandler::serve`] over `tokio::io::duplex` pipes.

mod common;

use std::net::SocketAddr;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{basic, connection, queue, AMQPClass, BasicProperties};
use common::{frame_bytes, raw_frame, start, within, Raw};
use tokio::io::DuplexStream;
use warren_core::{Broker, QueueDeclareOptions};
use warren_wire::{ConnectionHandler, ServerConfig};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A client end of a pipe whose other end `handler` serves.
fn pipe(
    handler: &ConnectionHandler,
    peer: SocketAddr,
) -> (Raw<DuplexStream>, tokio::task::JoinHandle<()>) {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(handler.serve(server_side, peer));
    (Raw::over(client), task)
}

fn declare(name: &str, exclusive: bool) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        exclusive,
        ..Default::default()
    }))
}

fn get(name: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: name.into(),
        no_ack,
    }))
}

async fn publish(raw: &mut Raw<DuplexStream>, routing_key: &str, body: &[u8]) {
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        })),
    )
    .await;
    raw.send(&frame_bytes(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: BasicProperties::default(),
        },
    )))
    .await;
    raw.send(&raw_frame(3, 1, body, 0xce)).await;
}

#[tokio::test]
async fn a_full_session_over_an_in_memory_pipe() {
    let broker = Broker::new();
    let handler = ConnectionHandler::new(ServerConfig::with_broker(broker.clone()));
    let (mut raw, task) = pipe(&handler, loopback());
    raw.handshake().await;
    assert_eq!(handler.connection_count(), 1);
    raw.open_channel(1).await;
    raw.send_method(1, declare("q", false)).await;
    assert!(matches!(
        raw.method().await,
        Some((1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))))
    ));
    publish(&mut raw, "q", b"hello").await;
    raw.send_method(1, get("q", true)).await;
    match raw.method().await {
        Some((1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)))) => {
            assert_eq!(ok.routing_key.as_str(), "q");
        }
        other => panic!("expected basic.get-ok, got {other:?}"),
    }
    match raw.frame().await {
        Some(AMQPFrame::Header(1, h)) => assert_eq!(h.body_size, 5),
        other => panic!("expected a content header, got {other:?}"),
    }
    assert_eq!(
        raw.frame().await,
        Some(AMQPFrame::Body(1, b"hello".to_vec()))
    );
    // the in-process broker is the same one
    assert_eq!(broker.queue_stats("q").unwrap().acked, 1);
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        raw.method().await,
        Some((0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))))
    ));
    assert!(raw.eof().await);
    within(task).await.unwrap();
    assert_eq!(handler.connection_count(), 0);
}

#[tokio::test]
async fn loopback_only_users_need_a_loopback_peer() {
    let handler = ConnectionHandler::new(ServerConfig::with_broker(Broker::new()));
    let (mut raw, _task) = pipe(&handler, "10.1.2.3:4000".parse().unwrap());
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.method().await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
    )
    .await;
    let c = raw.closed().await;
    assert_eq!((c.connection, c.code), (true, 403));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_servers_handler_shares_its_brokers_count_and_shutdown() {
    let common::Env { broker, server } = start().await;
    let url = format!("amqp://guest:guest@{}/%2f", server.local_addr());
    let _tcp = within(lapin::Connection::connect(&url, Default::default()))
        .await
        .unwrap();
    let (mut raw, task) = pipe(server.handler(), loopback());
    raw.handshake().await;
    raw.open_channel(1).await;
    within(server.wait_for_connection_count(2)).await;
    raw.send_method(1, declare("piped", false)).await;
    raw.method().await;
    assert!(broker.has_queue("piped"));
    let shutdown = tokio::spawn(server.shutdown());
    let c = raw.closed().await;
    assert_eq!((c.connection, c.code), (true, 320));
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    )
    .await;
    within(task).await.unwrap();
    within(shutdown).await.unwrap();
    assert!(broker.has_queue("piped"));
}

#[tokio::test]
async fn dropping_the_connection_future_releases_what_it_held() {
    let broker = Broker::new();
    broker
        .declare_queue("jobs", QueueDeclareOptions::default())
        .unwrap();
    broker.publish("", "jobs", "work").unwrap();
    broker
        .declare_queue("feed", QueueDeclareOptions::default())
        .unwrap();
    broker.publish("", "feed", "delivered").unwrap();
    let handler = ConnectionHandler::new(ServerConfig::with_broker(broker.clone()));
    let (mut raw, task) = pipe(&handler, loopback());
    raw.handshake().await;
    raw.open_channel(1).await;
    raw.send_method(1, declare("mine", true)).await;
    raw.method().await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "feed".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        })),
    )
    .await;
    assert!(matches!(
        raw.method().await,
        Some((1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))))
    ));
    assert!(matches!(
        raw.method().await,
        Some((1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))))
    ));
    raw.send_method(1, get("jobs", false)).await;
    assert!(matches!(
        raw.method().await,
        Some((1, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))))
    ));
    assert_eq!(broker.queue_stats("jobs").unwrap().unacked, 1);
    assert!(broker.has_queue("mine"));
    // The embedder drops the future (here: aborts its task) mid-session.
    task.abort();
    assert!(within(task).await.unwrap_err().is_cancelled());
    let s = broker.queue_stats("jobs").unwrap();
    assert_eq!((s.ready, s.unacked), (1, 0));
    assert!(!broker.has_queue("mine"));
    assert_eq!(handler.connection_count(), 0);
    // The consumer's task was aborted; once it has been dropped, the
    // delivery it had forwarded is back in the queue.
    within(async {
        loop {
            let s = broker.queue_stats("feed").unwrap();
            if (s.ready, s.unacked, s.consumers) == (1, 0, 0) {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}
