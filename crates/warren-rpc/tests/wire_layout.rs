//! The broker layout and message bodies are oslo.messaging's rabbit
//! driver's: exchanges, queue names, envelope and fields, checked on the raw
//! broker; and a hand-written, Python-style reply completes a call.

mod common;

use std::sync::Arc;

use serde_json::{json, Value};
use warren_core::{BasicProperties, ConsumeOptions, GetOptions, Message};
use warren_rpc::{
    Context, Endpoint, HandlerError, InprocTransport, Notifier, RpcClient, RpcError, RpcServer,
    Target, Transport, WireRequest,
};

use common::{fresh, within};

fn inner(body: &[u8]) -> Value {
    let env: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(env["oslo.version"], "2.0");
    let m = env["oslo.message"]
        .as_str()
        .expect("oslo.message is a JSON string");
    serde_json::from_str(m).unwrap()
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn servers_and_clients_declare_oslos_layout() {
    let (t, broker) = fresh();
    let ep = Endpoint::new().method("ping", |_c: Context, (): ()| async {
        Ok::<_, HandlerError>(1)
    });
    let s = RpcServer::new(
        t.clone(),
        Target::new("volume").with_server("host1"),
        vec![ep],
    );
    s.start().await.unwrap();
    assert!(broker.has_exchange("openstack"));
    assert!(broker.has_exchange("volume_fanout"));
    assert!(broker.has_queue("volume"));
    assert!(broker.has_queue("volume.host1"));
    let fanout: Vec<String> = broker
        .queue_names()
        .into_iter()
        .filter(|q| q.starts_with("volume_fanout_"))
        .collect();
    assert_eq!(fanout.len(), 1);
    assert!(
        is_hex32(&fanout[0]["volume_fanout_".len()..]),
        "{}",
        fanout[0]
    );

    // One reply queue per transport, made by the first call, reused after.
    let client = RpcClient::new(t.clone(), Target::new("volume"));
    let _: i32 = within(client.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    let replies: Vec<String> = broker
        .queue_names()
        .into_iter()
        .filter(|q| q.starts_with("reply_"))
        .collect();
    assert_eq!(replies.len(), 1);
    assert!(is_hex32(&replies[0]["reply_".len()..]), "{}", replies[0]);
    for _ in 0..3 {
        let _: i32 = within(client.call(&Context::new(), "ping", &()))
            .await
            .unwrap();
    }
    assert_eq!(
        broker
            .queue_names()
            .iter()
            .filter(|q| q.starts_with("reply_"))
            .count(),
        1
    );

    // A target with its own exchange.
    let other = RpcServer::new(
        t.clone(),
        Target::new("volume")
            .with_server("h2")
            .with_exchange("cinder"),
        vec![],
    );
    other.start().await.unwrap();
    assert!(broker.has_exchange("cinder"));
    s.stop().await;
    other.stop().await;
    // A stopped server's fanout queue is gone; the shared queues stay.
    assert!(!broker
        .queue_names()
        .iter()
        .any(|q| q.starts_with("volume_fanout_")));
    assert!(broker.has_queue("volume.host1"));
}

#[tokio::test]
async fn a_dropped_transport_deletes_its_reply_queue() {
    let broker = warren_core::Broker::new();
    let t: Arc<dyn Transport> = Arc::new(InprocTransport::new(broker.clone()));
    let ep = Endpoint::new().method("ping", |_c: Context, (): ()| async {
        Ok::<_, HandlerError>(1)
    });
    let s = RpcServer::new(t.clone(), Target::new("p").with_server("h"), vec![ep]);
    s.start().await.unwrap();
    let client_t: Arc<dyn Transport> = Arc::new(InprocTransport::new(broker.clone()));
    let client = RpcClient::new(client_t.clone(), Target::new("p"));
    let _: i32 = within(client.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    assert_eq!(
        broker
            .queue_names()
            .iter()
            .filter(|q| q.starts_with("reply_"))
            .count(),
        1
    );
    drop(client);
    drop(client_t);
    assert_eq!(
        broker
            .queue_names()
            .iter()
            .filter(|q| q.starts_with("reply_"))
            .count(),
        0
    );
}

#[tokio::test]
async fn requests_are_oslo_envelopes_and_python_style_replies_complete_calls() {
    let (t, broker) = fresh();
    // Play the server by hand, on the raw broker, as a Python service would.
    broker
        .declare_exchange(
            "openstack",
            warren_core::ExchangeKind::Topic,
            Default::default(),
        )
        .unwrap();
    broker
        .declare_queue("volume.host1", Default::default())
        .unwrap();
    broker
        .bind_queue(
            "volume.host1",
            "openstack",
            "volume.host1",
            &Default::default(),
        )
        .unwrap();
    let raw_server = broker
        .consume("volume.host1", ConsumeOptions::default())
        .unwrap();

    let client = RpcClient::new(t.clone(), Target::new("volume").with_server("host1")).prepare(
        warren_rpc::PrepareOptions::new()
            .with_version(warren_rpc::Version::new(3, 1))
            .with_namespace("volume"),
    );
    let ctx = Context::new()
        .with("user", "alice")
        .with("request_id", "req-1");
    let call = tokio::spawn({
        let client = client.clone();
        let ctx = ctx.clone();
        async move {
            client
                .call::<_, Value>(&ctx, "get_volume", &json!({"volume_id": "v1"}))
                .await
        }
    });

    let d = within(raw_server.recv_async()).await.unwrap();
    assert_eq!(d.exchange(), "openstack");
    assert_eq!(d.routing_key(), "volume.host1");
    // As oslo: the request lives no longer than the call's timeout (60 s).
    assert_eq!(d.properties().expiration.as_deref(), Some("60000"));
    let m = inner(d.body());
    assert_eq!(m["method"], "get_volume");
    assert_eq!(m["args"], json!({"volume_id": "v1"}));
    assert_eq!(m["namespace"], "volume");
    assert_eq!(m["version"], "3.1");
    assert_eq!(m["_context_user"], "alice");
    assert_eq!(m["_context_request_id"], "req-1");
    assert_eq!(m["_timeout"], Value::Null);
    let msg_id = m["_msg_id"].as_str().unwrap().to_owned();
    let reply_q = m["_reply_q"].as_str().unwrap().to_owned();
    assert!(is_hex32(&msg_id) && is_hex32(m["_unique_id"].as_str().unwrap()));
    assert!(reply_q.starts_with("reply_"));
    let decoded = WireRequest::decode(d.body()).unwrap();
    assert_eq!(decoded.ctx, ctx);
    d.ack();

    // First a call-monitor heartbeat (ignored), then the reply, as Python's
    // json.dumps writes them.
    let heartbeat = format!(
        r#"{{"oslo.version": "2.0", "oslo.message": "{{\"result\": null, \"failure\": null, \"ending\": false, \"_msg_id\": \"{msg_id}\", \"_unique_id\": \"aa\"}}"}}"#
    );
    broker
        .publish("", &reply_q, Message::new(heartbeat.into_bytes()))
        .unwrap();
    let reply = format!(
        r#"{{"oslo.version": "2.0", "oslo.message": "{{\"result\": {{\"id\": \"v1\", \"name\": \"d\\u00e9j\\u00e0\"}}, \"failure\": null, \"ending\": true, \"_msg_id\": \"{msg_id}\", \"_unique_id\": \"bb\"}}"}}"#
    );
    broker
        .publish(
            "",
            &reply_q,
            Message::new(reply.into_bytes()).with_properties(BasicProperties::default()),
        )
        .unwrap();
    let v = within(call).await.unwrap().unwrap();
    assert_eq!(v, json!({"id": "v1", "name": "déjà"}));

    // A Python failure for a class we do not know is a remote error.
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call::<_, Value>(&Context::new(), "get_volume", &json!({}))
                .await
        }
    });
    let d = within(raw_server.recv_async()).await.unwrap();
    let m = inner(d.body());
    d.ack();
    let failure = json!({
        "class": "VolumeNotFound", "module": "cinder.exception",
        "message": "Volume v9 could not be found.",
        "tb": ["Traceback (most recent call last):\n", "..."],
        "args": [], "kwargs": {"volume_id": "v9"}
    })
    .to_string();
    let body = json!({
        "oslo.version": "2.0",
        "oslo.message": json!({
            "result": null, "failure": failure, "ending": true,
            "_msg_id": m["_msg_id"], "_unique_id": "cc"
        }).to_string()
    });
    broker
        .publish(
            "",
            m["_reply_q"].as_str().unwrap(),
            Message::new(body.to_string().into_bytes()),
        )
        .unwrap();
    match within(call).await.unwrap() {
        Err(RpcError::Remote(r)) => {
            assert_eq!(r.class(), "VolumeNotFound");
            assert_eq!(r.module(), "cinder.exception");
            assert_eq!(r.data()["volume_id"], "v9");
            assert_eq!(r.traceback().len(), 2);
        }
        other => panic!("expected a remote error, got {other:?}"),
    }

    // Python's NoSuchMethod is the typed error.
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call::<_, Value>(&Context::new(), "missing", &())
                .await
        }
    });
    let d = within(raw_server.recv_async()).await.unwrap();
    let m = inner(d.body());
    d.ack();
    let failure = json!({"class": "NoSuchMethod", "module": "oslo_messaging.rpc.dispatcher",
        "message": "Endpoint does not support RPC method missing", "tb": [], "args": ["missing"], "kwargs": {}})
    .to_string();
    let body = json!({"oslo.version": "2.0", "oslo.message": json!({
        "result": null, "failure": failure, "ending": true, "_msg_id": m["_msg_id"]}).to_string()});
    broker
        .publish(
            "",
            m["_reply_q"].as_str().unwrap(),
            Message::new(body.to_string().into_bytes()),
        )
        .unwrap();
    assert!(
        matches!(within(call).await.unwrap(), Err(RpcError::NoSuchMethod { method }) if method == "missing")
    );
}

#[tokio::test]
async fn casts_and_fanout_casts_have_no_reply_fields() {
    let (t, broker) = fresh();
    common::probe(&broker, "openstack", "#");
    let c = RpcClient::new(t.clone(), Target::new("compute"));
    c.cast(
        &Context::new().with("user", "u"),
        "reboot",
        &json!({"instance": "i-1"}),
    )
    .await
    .unwrap();
    let d = common::probed(&broker);
    assert_eq!(d.routing_key(), "compute");
    assert_eq!(d.properties().expiration, None);
    let m = inner(d.body());
    assert_eq!(
        m.as_object().unwrap().keys().cloned().collect::<Vec<_>>(),
        ["_context_user", "_unique_id", "args", "method"]
    );
    d.ack();

    broker
        .declare_exchange(
            "compute_fanout",
            warren_core::ExchangeKind::Fanout,
            Default::default(),
        )
        .unwrap();
    broker
        .declare_queue("fan_probe", Default::default())
        .unwrap();
    broker
        .bind_queue(
            "fan_probe",
            "compute_fanout",
            "compute",
            &Default::default(),
        )
        .unwrap();
    let f = c.prepare(warren_rpc::PrepareOptions::new().with_fanout(true));
    f.cast(&Context::new(), "refresh", &()).await.unwrap();
    let d = broker
        .get("fan_probe", GetOptions::default())
        .unwrap()
        .expect("a fanout cast");
    assert_eq!(d.exchange(), "compute_fanout");
    assert_eq!(inner(d.body())["method"], "refresh");
}

#[tokio::test]
async fn notifications_are_oslo_envelopes_on_the_control_exchange() {
    let broker = warren_core::Broker::new();
    let t: Arc<dyn Transport> =
        Arc::new(InprocTransport::new(broker.clone()).with_default_exchange("nova"));
    Notifier::new(t.clone(), "compute.host1")
        .warn(
            &Context::new().with("project_id", "p1"),
            "compute.instance.exists",
            &json!({"a": 1}),
        )
        .await
        .unwrap();
    assert!(broker.has_exchange("nova"));
    let d = broker
        .get("notifications.warn", GetOptions::default())
        .unwrap()
        .expect("queued");
    assert_eq!(d.exchange(), "nova");
    assert_eq!(d.routing_key(), "notifications.warn");
    let m = inner(d.body());
    assert_eq!(m["priority"], "WARN");
    assert_eq!(m["publisher_id"], "compute.host1");
    assert_eq!(m["event_type"], "compute.instance.exists");
    assert_eq!(m["payload"], json!({"a": 1}));
    assert_eq!(m["_context_project_id"], "p1");
    assert_eq!(m["message_id"].as_str().unwrap().len(), 36);
    assert_eq!(m["timestamp"].as_str().unwrap().len(), 26);
    assert!(m["_unique_id"].is_string());
}

#[tokio::test]
async fn malformed_requests_are_dropped_and_the_server_goes_on() {
    let (t, broker) = fresh();
    let ep = Endpoint::new().method("ping", |_c: Context, (): ()| async {
        Ok::<_, HandlerError>("pong")
    });
    let s = RpcServer::new(t.clone(), Target::new("m").with_server("h"), vec![ep]);
    s.start().await.unwrap();
    broker.publish("openstack", "m.h", "not json").unwrap();
    broker
        .publish(
            "openstack",
            "m",
            r#"{"oslo.version": "9.0", "oslo.message": "{}"}"#,
        )
        .unwrap();
    let client = RpcClient::new(t.clone(), Target::new("m").with_server("h"));
    let pong: String = within(client.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    s.stop().await;
    assert_eq!(t.stats().malformed, 2);
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RpcClient>();
    send_sync::<RpcServer>();
    send_sync::<Notifier>();
    send_sync::<warren_rpc::NotificationListener>();
    send_sync::<InprocTransport>();
    #[cfg(feature = "amqp")]
    send_sync::<warren_rpc::AmqpTransport>();
    send_sync::<Arc<dyn Transport>>();
    send_sync::<RpcError>();
    send_sync::<Context>();
    send_sync::<Target>();
    fn send<T: Send>() {}
    send::<warren_rpc::HandlerError>();
    send::<Box<dyn warren_rpc::Listener<warren_rpc::IncomingCall>>>();
    send::<Box<dyn warren_rpc::Listener<warren_rpc::IncomingNotification>>>();
}

/// `with_envelope(false)`: requests, replies and notifications are the bare
/// message (oslo's format 1.0), the same fields as inside the envelope, and
/// a transport that sends envelopes talks to it both ways.
#[tokio::test]
async fn a_bare_transport_sends_the_message_without_the_envelope() {
    let broker = warren_core::Broker::new();
    let bare: Arc<dyn Transport> =
        Arc::new(InprocTransport::new(broker.clone()).with_envelope(false));
    let wrapped: Arc<dyn Transport> = Arc::new(InprocTransport::new(broker.clone()));
    common::probe(&broker, "openstack", "compute");

    RpcClient::new(bare.clone(), Target::new("compute"))
        .cast(
            &Context::new().with("user", "u"),
            "reboot",
            &json!({"id": "i\"1"}),
        )
        .await
        .unwrap();
    let d = common::probed(&broker);
    let m: Value = serde_json::from_slice(d.body()).unwrap();
    assert_eq!(m["method"], "reboot");
    assert_eq!(m["args"], json!({"id": "i\"1"}));
    assert_eq!(m["_context_user"], "u");
    assert!(m.get("oslo.version").is_none());
    d.ack();
    broker.delete_queue("probe", Default::default()).unwrap();

    // A bare server answers an enveloped client, and the other way round.
    let ep = || {
        Endpoint::new().method("add", |_c: Context, v: Value| async move {
            Ok::<_, HandlerError>(v["a"].as_i64().unwrap_or(0) + v["b"].as_i64().unwrap_or(0))
        })
    };
    let bare_server = RpcServer::new(
        bare.clone(),
        Target::new("calc").with_server("b"),
        vec![ep()],
    );
    let wrapped_server = RpcServer::new(
        wrapped.clone(),
        Target::new("calc").with_server("w"),
        vec![ep()],
    );
    bare_server.start().await.unwrap();
    wrapped_server.start().await.unwrap();
    for (client, server) in [(&wrapped, "b"), (&bare, "w"), (&bare, "b")] {
        let c = RpcClient::new(client.clone(), Target::new("calc").with_server(server));
        let sum: i64 = within(c.call(&Context::new(), "add", &json!({"a": 2, "b": 3})))
            .await
            .unwrap();
        assert_eq!(sum, 5);
    }

    // Notifications: the bare message on the topic's queue.
    Notifier::new(bare.clone(), "compute.host1")
        .info(&Context::new(), "compute.instance.exists", &json!({"a": 1}))
        .await
        .unwrap();
    let d = broker
        .get("notifications.info", GetOptions::default())
        .unwrap()
        .expect("queued");
    let m: Value = serde_json::from_slice(d.body()).unwrap();
    assert_eq!(m["event_type"], "compute.instance.exists");
    assert_eq!(m["payload"], json!({"a": 1}));
    bare_server.stop().await;
    wrapped_server.stop().await;
}
