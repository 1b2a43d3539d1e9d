//! oslo's duplicate message check: every message carries a fresh
//! `_unique_id`; a listener drops one whose id it received (a request) or
//! handled (a notification) recently, as after a redelivery that followed a
//! lost acknowledgement. The redelivery is played here by publishing the
//! same body twice, as the broker would deliver it again.

#[macro_use]
mod common;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use warren_rpc::{
    Context, Endpoint, HandlerError, Notification, NotificationEndpoint, NotificationListener,
    NotificationListenerOptions, RpcClient, RpcMessage, RpcServer, Target, WireNotification,
    WireRequest,
};

use common::within;

fn unique_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn cast_body(n: u64, unique_id: &str) -> Vec<u8> {
    WireRequest {
        message: RpcMessage::new("record", &json!({ "n": n })).unwrap(),
        ctx: Context::new(),
        msg_id: None,
        reply_q: None,
        unique_id: Some(unique_id.to_owned()),
        timeout: None,
    }
    .encode()
    .unwrap()
}

fn recorder() -> (Endpoint, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ep = Endpoint::new().method("record", move |_ctx: Context, a: Value| {
        let _ = tx.send(a);
        async { Ok::<_, HandlerError>(()) }
    });
    (ep, rx)
}

each_transport! {
    #[tokio::test]
    async fn a_redelivered_request_is_handled_once(rig) {
        let topic = rig.name("dup");
        let (ep, mut rx) = recorder();
        let s = RpcServer::new(rig.transport(), Target::new(&topic).with_server("s1"), vec![ep]);
        s.start().await.unwrap();
        // One queue, taken in order: the first, its copy, another one.
        let key = format!("{topic}.s1");
        let (a, b) = (unique_id(), unique_id());
        rig.publish_raw("openstack", &key, &cast_body(1, &a)).await;
        rig.publish_raw("openstack", &key, &cast_body(1, &a)).await;
        rig.publish_raw("openstack", &key, &cast_body(2, &b)).await;
        assert_eq!(within(rx.recv()).await.unwrap()["n"], 1);
        // The copy came before this one: it was dropped, not delayed.
        assert_eq!(within(rx.recv()).await.unwrap()["n"], 2);
        s.stop().await;
        assert!(rx.try_recv().is_err());
        assert_eq!(s.stats().casts, 2);
        assert_eq!(rig.transport().stats().duplicates, 1);
    }
}

each_transport! {
    #[tokio::test]
    async fn distinct_messages_are_never_dropped(rig) {
        let topic = rig.name("distinct");
        let (ep, mut rx) = recorder();
        let s = RpcServer::new(rig.transport(), Target::new(&topic).with_server("s1"), vec![ep]);
        s.start().await.unwrap();
        // Far more than the listener remembers, and the same content
        // twice: each send is a new message with a new id.
        let client = RpcClient::new(rig.another(), Target::new(&topic));
        for n in 0..100u64 {
            client.cast(&Context::new(), "record", &json!({ "n": n / 2 })).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            got.push(within(rx.recv()).await.unwrap()["n"].as_u64().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, (0..100).map(|n| n / 2).collect::<Vec<_>>());
        s.stop().await;
        assert_eq!(rig.transport().stats().duplicates, 0);
    }
}

fn notification_body(event_type: &str, unique_id: &str) -> Vec<u8> {
    WireNotification {
        message_id: uuid::Uuid::new_v4().to_string(),
        publisher_id: "dup.test".into(),
        event_type: event_type.into(),
        priority: "INFO".into(),
        payload: serde_json::value::to_raw_value(&json!({})).unwrap(),
        timestamp: "2024-01-02 03:04:05.000006".into(),
        ctx: Context::new(),
        unique_id: Some(unique_id.to_owned()),
    }
    .encode()
    .unwrap()
}

each_transport! {
    #[tokio::test]
    async fn a_redelivered_notification_is_handled_once(rig) {
        let topic = rig.name("dup-notes");
        let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
        let ep = NotificationEndpoint::new().info(move |n: Notification| {
            let _ = tx.send(n);
            std::future::ready(())
        });
        // One at a time: the copy comes only once the first is handled and
        // acknowledged (as a redelivery does). oslo, like warren-rpc,
        // remembers a notification's id when it is acknowledged.
        let l = NotificationListener::with_options(
            rig.transport(),
            vec![Target::new(&topic)],
            vec![ep],
            NotificationListenerOptions {
                max_in_flight: 1,
                ..Default::default()
            },
        );
        l.start().await.unwrap();
        let key = format!("{topic}.info");
        let (a, b) = (unique_id(), unique_id());
        rig.publish_raw("openstack", &key, &notification_body("first", &a)).await;
        rig.publish_raw("openstack", &key, &notification_body("first", &a)).await;
        rig.publish_raw("openstack", &key, &notification_body("second", &b)).await;
        assert_eq!(within(rx.recv()).await.unwrap().event_type, "first");
        assert_eq!(within(rx.recv()).await.unwrap().event_type, "second");
        l.stop().await;
        assert!(rx.try_recv().is_err());
        assert_eq!(l.stats().received, 2);
        assert_eq!(rig.transport().stats().duplicates, 1);
        // The copy was acknowledged too: nothing is left in the queue.
        assert_eq!(rig.ready(&key).await, Some(0));
    }
}
