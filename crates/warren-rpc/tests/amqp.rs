//! The `amqp://` transport on a real broker (`WARREN_TEST_AMQP_URL`): the
//! layout and declare arguments are oslo's (a service declaring them as
//! oslo does is not refused), messages carry oslo's properties, retries and
//! timeouts bound every operation, and the transport comes back after its
//! connection is cut (through a TCP proxy in the test, so on any broker),
//! also to the next host of its list.
//!
//! Skipped, with a message, when `WARREN_TEST_AMQP_URL` is unset.
#![cfg(feature = "amqp")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Notify};
use warren_rpc::{
    AmqpTransport, Context, Endpoint, HandlerError, Notifier, RpcClient, RpcError, RpcServer,
    Target, Transport, TransportError,
};

use common::{amqp_probe, amqp_url, unique_suffix, within, Load, PATIENCE};

fn echo_endpoint() -> Endpoint {
    Endpoint::new()
        .method("echo", |_ctx: Context, args: Value| async move {
            Ok::<_, HandlerError>(args)
        })
        .method("ping", |_ctx: Context, (): ()| async move {
            Ok::<_, HandlerError>("pong")
        })
}

async fn serve(t: &Arc<dyn Transport>, topic: &str, server: &str) -> RpcServer {
    let s = RpcServer::new(
        t.clone(),
        Target::new(topic).with_server(server),
        vec![echo_endpoint()],
    );
    within(s.start()).await.expect("server starts");
    s
}

fn transport(url: &str) -> Arc<dyn Transport> {
    Arc::new(AmqpTransport::from_url(url).expect("URL"))
}

/// oslo's queue arguments: `x-expires` for reply and fanout queues.
fn expires_1800s() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-expires".into(), AMQPValue::LongInt(1_800_000));
    t
}

#[tokio::test]
async fn declarations_match_oslos_so_both_can_declare_them() {
    let Some(url) = amqp_url("declarations_match_oslos_so_both_can_declare_them") else {
        return;
    };
    let topic = format!("layout{}", unique_suffix());
    let amqp = Arc::new(AmqpTransport::from_url(&url).unwrap());
    let t: Arc<dyn Transport> = amqp.clone();
    let s = serve(&t, &topic, "host1").await;
    let client = RpcClient::new(t.clone(), Target::new(&topic));
    let _: String = within(client.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    let reply_q = amqp.reply_queue().expect("made by the call");

    // Declared again exactly as oslo.messaging's rabbit driver does (kombu,
    // default options): no 406 PRECONDITION_FAILED.
    let conn = amqp_probe::connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    let x = |durable, auto_delete| ExchangeDeclareOptions {
        durable,
        auto_delete,
        ..Default::default()
    };
    let q = |durable, auto_delete| QueueDeclareOptions {
        durable,
        auto_delete,
        ..Default::default()
    };
    ch.exchange_declare(
        "openstack".into(),
        ExchangeKind::Topic,
        x(false, false),
        FieldTable::default(),
    )
    .await
    .expect("control exchange: topic, not durable, not auto-delete");
    ch.exchange_declare(
        format!("{topic}_fanout").as_str().into(),
        ExchangeKind::Fanout,
        x(false, true),
        FieldTable::default(),
    )
    .await
    .expect("fanout exchange: not durable, auto-delete");
    for name in [topic.clone(), format!("{topic}.host1")] {
        ch.queue_declare(name.as_str().into(), q(false, false), FieldTable::default())
            .await
            .expect("topic queues: no arguments");
    }
    ch.queue_declare(reply_q.as_str().into(), q(false, false), expires_1800s())
        .await
        .expect("reply queue: x-expires 1800 s");
    // And a declaration that differs is refused, so the above means
    // something.
    let e = ch
        .queue_declare(topic.as_str().into(), q(true, false), FieldTable::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("PRECONDITION_FAILED"), "{e}");
    let _ = conn.close(200, "OK".into()).await;
    s.stop().await;
}

#[tokio::test]
async fn messages_carry_oslos_properties() {
    let Some(url) = amqp_url("messages_carry_oslos_properties") else {
        return;
    };
    let topic = format!("props{}", unique_suffix());
    let probe_q = format!("probe{}", unique_suffix());
    let conn = amqp_probe::connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "openstack".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        probe_q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        probe_q.as_str().into(),
        "openstack".into(),
        topic.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let t = transport(&url);
    let client = RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(PATIENCE);
    client
        .cast(&Context::new().with("user", "u"), "hello", &json!({"a": 1}))
        .await
        .unwrap();
    let cast = ch
        .basic_get(probe_q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the cast");
    let p = &cast.delivery.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(
        p.content_encoding().as_ref().map(|s| s.as_str()),
        Some("utf-8")
    );
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(*p.priority(), Some(0));
    assert_eq!(*p.expiration(), None);
    let env: Value = serde_json::from_slice(&cast.delivery.data).unwrap();
    assert_eq!(env["oslo.version"], "2.0");
    let m: Value = serde_json::from_str(env["oslo.message"].as_str().unwrap()).unwrap();
    assert_eq!(m["method"], "hello");
    assert_eq!(m["_context_user"], "u");

    // A call: expiration = its timeout, in milliseconds; nobody answers.
    let short =
        client.prepare(warren_rpc::PrepareOptions::new().with_timeout(Duration::from_millis(1500)));
    let e = short
        .call::<_, Value>(&Context::new(), "hello", &())
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // (Expired in the probe queue by now, or about to: read it or not.)
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test]
async fn a_request_lives_no_longer_than_its_call() {
    let Some(url) = amqp_url("a_request_lives_no_longer_than_its_call") else {
        return;
    };
    let topic = format!("expiry{}", unique_suffix());
    let probe_q = format!("probe{}", unique_suffix());
    let conn = amqp_probe::connect(&url).await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "openstack".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        probe_q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        probe_q.as_str().into(),
        "openstack".into(),
        topic.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Consume the probe so the request is read before it expires.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = ch
        .basic_consume(
            probe_q.as_str().into(),
            "probe".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    consumer.set_delegate(move |d: lapin::message::DeliveryResult| {
        let tx = tx.clone();
        async move {
            if let Ok(Some(d)) = d {
                let _ = tx.send(d);
            }
        }
    });
    let t = transport(&url);
    let client =
        RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(7));
    let call =
        tokio::spawn(async move { client.call::<_, Value>(&Context::new(), "hello", &()).await });
    let d = within(rx.recv()).await.unwrap();
    assert_eq!(
        d.properties.expiration().as_ref().map(|s| s.as_str()),
        Some("7000")
    );
    assert_eq!(*d.properties.delivery_mode(), Some(2));
    let env: Value = serde_json::from_slice(&d.data).unwrap();
    let m: Value = serde_json::from_str(env["oslo.message"].as_str().unwrap()).unwrap();
    let reply_q = m["_reply_q"].as_str().unwrap().to_owned();
    assert!(reply_q.starts_with("reply_"));
    assert!(m["_msg_id"].is_string() && m["_timeout"].is_null());
    call.abort();
    let _ = conn.close(200, "OK".into()).await;
}

#[tokio::test]
async fn malformed_requests_are_dropped_and_the_server_goes_on() {
    let Some(url) = amqp_url("malformed_requests_are_dropped_and_the_server_goes_on") else {
        return;
    };
    let topic = format!("malformed{}", unique_suffix());
    let t = transport(&url);
    let s = serve(&t, &topic, "h").await;
    amqp_probe::publish(&url, "openstack", &format!("{topic}.h"), b"not json").await;
    amqp_probe::publish(
        &url,
        "openstack",
        &topic,
        br#"{"oslo.version": "9.0", "oslo.message": "{}"}"#,
    )
    .await;
    let client = RpcClient::new(t.clone(), Target::new(&topic).with_server("h"));
    let pong: String = within(client.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    s.stop().await;
    assert_eq!(t.stats().malformed, 2);
}

#[tokio::test]
async fn retries_and_timeouts_bound_every_operation_without_a_broker() {
    // A port nobody listens on: no broker needed for this one.
    let unused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!(
        "amqp://guest:guest@{unused}/%2F?retry=0&retry_interval=0.05&connection_timeout=2000"
    );
    let t = Arc::new(AmqpTransport::from_url(&url).unwrap());
    let e = within(t.connect()).await.unwrap_err();
    assert!(matches!(e, TransportError::Connection(_)), "{e:?}");
    let dyn_t: Arc<dyn Transport> = t.clone();
    // The client's own retry: none.
    let client = RpcClient::new(dyn_t.clone(), Target::new("nowhere")).with_retry(Some(0));
    let e = within(client.cast(&Context::new(), "m", &()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Connection(_))),
        "{e:?}"
    );
    let e = within(client.call::<_, Value>(&Context::new(), "m", &()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Connection(_))),
        "{e:?}"
    );
    // Retrying without limit: the call's timeout ends it.
    let patient = RpcClient::new(dyn_t.clone(), Target::new("nowhere"))
        .with_retry(None)
        .with_timeout(Duration::from_millis(300));
    let e = within(patient.call::<_, Value>(&Context::new(), "m", &()))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // A server start uses the URL's retry (0 here).
    let s = RpcServer::new(
        dyn_t.clone(),
        Target::new("nowhere").with_server("s"),
        vec![],
    );
    let e = within(s.start()).await.unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Connection(_))),
        "{e:?}"
    );
    let e = within(Notifier::new(dyn_t.clone(), "p").with_retry(Some(0)).info(
        &Context::new(),
        "e",
        &(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Connection(_))),
        "{e:?}"
    );
    // Closed: everything fails at once.
    t.close().await;
    let e = within(client.cast(&Context::new(), "m", &()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Closed)),
        "{e:?}"
    );
}

#[test]
fn urls_are_checked_without_a_runtime() {
    let t =
        warren_rpc::transport_from_url("rabbit://u:pw@h1:5672,u:pw@h2/nova?heartbeat=5").unwrap();
    assert_eq!(t.url(), "rabbit://u:***@h1:5672,u:***@h2/nova?heartbeat=5");
    for bad in [
        "amqp://h/?frobnicate=1",
        "amqp://h:port/",
        "amqps://h/",
        "amqp://h/?durable_queues=maybe",
    ] {
        assert!(
            matches!(
                warren_rpc::transport_from_url(bad),
                Err(TransportError::BadUrl { .. })
            ),
            "{bad}"
        );
    }
    // No connection is made until first use.
    let t = AmqpTransport::from_url("amqp://127.0.0.1:1/").unwrap();
    assert!(!t.is_connected());
}

#[tokio::test]
async fn close_deletes_the_reply_queue_and_fails_waiting_calls() {
    let Some(url) = amqp_url("close_deletes_the_reply_queue_and_fails_waiting_calls") else {
        return;
    };
    let topic = format!("close{}", unique_suffix());
    let server_t = transport(&url);
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let ep = Endpoint::new().method("hang", move |_c: Context, (): ()| {
        let r = r.clone();
        async move {
            r.notified().await;
            Ok::<_, HandlerError>(())
        }
    });
    let s = RpcServer::new(
        server_t.clone(),
        Target::new(&topic).with_server("h"),
        vec![ep],
    );
    s.start().await.unwrap();
    let t = Arc::new(AmqpTransport::from_url(&url).unwrap());
    let client = RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(PATIENCE * 2);
    let waiting =
        tokio::spawn(async move { client.call::<_, ()>(&Context::new(), "hang", &()).await });
    // Once the reply queue exists, the call is on its way.
    let reply_q = loop {
        if let Some(q) = t.reply_queue() {
            break q;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(amqp_probe::ready(&url, &reply_q).await, Some(0));
    t.close().await;
    let e = within(waiting).await.unwrap().unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Closed)),
        "{e:?}"
    );
    assert_eq!(
        amqp_probe::ready(&url, &reply_q).await,
        None,
        "reply queue deleted"
    );
    release.notify_waiters();
    s.stop().await;
}

/// A TCP proxy to the broker that the test can cut, and make refuse.
struct Proxy {
    addr: SocketAddr,
    cut: broadcast::Sender<()>,
    refusing: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = broadcast::channel::<()>(4);
        let refusing = Arc::new(AtomicBool::new(false));
        let (cut2, refusing2) = (cut.clone(), refusing.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refusing2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            refusing,
        }
    }

    /// Drops every connection through it.
    fn cut(&self) {
        let _ = self.cut.send(());
    }

    fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }
}

/// `url` with its host replaced by `addrs` (same credentials, vhost) and
/// fast reconnection.
fn through(url: &str, addrs: &[SocketAddr]) -> (String, String) {
    let (_, rest) = url.split_once("://").unwrap();
    let (netloc, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = netloc.rsplit_once('@').unwrap_or(("guest:guest", netloc));
    let hosts: Vec<String> = addrs.iter().map(|a| format!("{userinfo}@{a}")).collect();
    let path = path.split('?').next().unwrap_or("");
    (
        format!(
            "amqp://{}/{path}?retry_interval=0.05&retry_backoff=0.05&interval_max=0.2&heartbeat=5",
            hosts.join(",")
        ),
        hostport.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_transport_comes_back_after_its_connection_is_cut_under_load() {
    let Some(url) = amqp_url("the_transport_comes_back_after_its_connection_is_cut_under_load")
    else {
        return;
    };
    let topic = format!("fault{}", unique_suffix());
    let (_, upstream) = through(&url, &[]);
    let proxy = Proxy::start(upstream).await;
    let (proxied, _) = through(&url, &[proxy.addr]);
    let server_t = transport(&proxied);
    let client_t = transport(&proxied);
    let casts = Arc::new(AtomicU64::new(0));
    let cast_seen = Arc::new(Notify::new());
    let (c2, n2) = (casts.clone(), cast_seen.clone());
    let ep = echo_endpoint().method("count", move |_c: Context, (): ()| {
        c2.fetch_add(1, Ordering::SeqCst);
        n2.notify_waiters();
        async { Ok::<_, HandlerError>(()) }
    });
    let s = RpcServer::new(
        server_t.clone(),
        Target::new(&topic).with_server("s1"),
        vec![ep],
    );
    within(s.start()).await.unwrap();
    let client =
        RpcClient::new(client_t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(2));
    let load = Load::start(client.clone(), 8);
    load.succeeded(200).await;

    // Cut every connection, and keep the broker out of reach for a while.
    proxy.refuse(true);
    proxy.cut();
    // A cast that may not retry fails; one that may waits for the broker.
    let no_retry = client.prepare(warren_rpc::PrepareOptions::new().with_retry(Some(0)));
    let e = within(no_retry.cast(&Context::new(), "count", &()))
        .await
        .unwrap_err();
    assert!(
        matches!(e, RpcError::Transport(TransportError::Connection(_))),
        "{e:?}"
    );
    let waiting_casts = tokio::spawn({
        let client = client.clone();
        async move {
            for _ in 0..5 {
                client.cast(&Context::new(), "count", &()).await.unwrap();
            }
        }
    });
    // Calls meanwhile fail or time out; none hangs (the load's calls).
    proxy.refuse(false);
    load.succeeded(200).await;
    within(waiting_casts).await.unwrap();
    within(async {
        loop {
            let seen = cast_seen.notified();
            if casts.load(Ordering::SeqCst) >= 5 {
                return;
            }
            seen.await;
        }
    })
    .await;
    let (ok, failed) = load.finish().await;
    assert!(ok >= 400, "{ok} calls succeeded, {failed} failed");
    assert!(client_t.stats().reconnects >= 1);
    assert!(server_t.stats().reconnects >= 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_host_fails_over_to_the_next_one() {
    let Some(url) = amqp_url("a_lost_host_fails_over_to_the_next_one") else {
        return;
    };
    let topic = format!("failover{}", unique_suffix());
    let (_, upstream) = through(&url, &[]);
    let first = Proxy::start(upstream.clone()).await;
    let second = Proxy::start(upstream).await;
    let (two_hosts, _) = through(&url, &[first.addr, second.addr]);
    let t = transport(&two_hosts);
    let s = serve(&t, &topic, "s1").await;
    let client =
        RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(2));
    let pong: String = within(client.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    // The first host goes away for good.
    first.refuse(true);
    first.cut();
    let patient = client.prepare(warren_rpc::PrepareOptions::new().with_timeout(PATIENCE));
    let pong: String = within(patient.call(&Context::new(), "ping", &()))
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    assert!(t.stats().reconnects >= 1);
    s.stop().await;
}

#[tokio::test]
async fn durable_and_quorum_queues_as_oslo_declares_them() {
    let Some(url) = amqp_url("durable_and_quorum_queues_as_oslo_declares_them") else {
        return;
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    for (option, quorum) in [("durable_queues=true", false), ("quorum_queues=true", true)] {
        // A control exchange of its own: services sharing one must agree
        // on its durability.
        let exchange = format!("openstack-durable{}", unique_suffix());
        let topic = format!("durable{}", unique_suffix());
        let t = transport(&format!("{url}{sep}{option}&control_exchange={exchange}"));
        let s = serve(&t, &topic, "h1").await;
        let client = RpcClient::new(t.clone(), Target::new(&topic));
        let pong: String = within(client.call(&Context::new(), "ping", &()))
            .await
            .unwrap();
        assert_eq!(pong, "pong");
        Notifier::new(t.clone(), "p")
            .with_topics([topic.clone()])
            .info(&Context::new(), "e", &())
            .await
            .unwrap();
        // As oslo declares them with amqp_durable_queues / rabbit_quorum_queue.
        let conn = amqp_probe::connect(&url).await;
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable control exchange");
        let mut args = FieldTable::default();
        if quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        for q in [
            topic.clone(),
            format!("{topic}.h1"),
            format!("{topic}.info"),
        ] {
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args.clone(),
            )
            .await
            .unwrap_or_else(|e| panic!("{q} with {option}: {e}"));
        }
        s.stop().await;
        // Durable queues stay: remove them.
        for q in [
            topic.clone(),
            format!("{topic}.h1"),
            format!("{topic}.info"),
        ] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        let _ = ch
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
        let _ = conn.close(200, "OK".into()).await;
    }
}
