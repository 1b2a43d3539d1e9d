//! Calls and casts: routing (targeted, work queue, fanout), typed arguments
//! and results, the request context, concurrency, timeouts and late replies.
//!
//! Each behaviour runs on every transport (see `common::each_transport!`).

#[macro_use]
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Barrier, Notify};
use warren_rpc::{
    Context, Endpoint, HandlerError, PrepareOptions, RpcClient, RpcError, RpcServer,
    RpcServerOptions, Target, Transport, TransportError,
};

use common::{fresh, within};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CreateVolume {
    name: String,
    size_gb: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Volume {
    id: String,
    name: String,
    size_gb: u32,
    host: String,
}

/// An endpoint whose `whoami` answers the server's name.
fn named_endpoint(name: &str) -> Endpoint {
    let name = name.to_owned();
    Endpoint::new().method("whoami", move |_ctx: Context, (): ()| {
        let name = name.clone();
        async move { Ok::<_, HandlerError>(name) }
    })
}

async fn server(
    transport: &Arc<dyn Transport>,
    topic: &str,
    host: &str,
    endpoints: Vec<Endpoint>,
) -> RpcServer {
    let s = RpcServer::new(
        transport.clone(),
        Target::new(topic).with_server(host),
        endpoints,
    );
    s.start().await.expect("server starts");
    s
}

each_transport! {
    #[tokio::test]
    async fn call_returns_the_typed_result(rig) {
        let t = rig.transport();
        let topic = rig.name("volume");
        let ep = Endpoint::new().method(
            "create_volume",
            |_ctx: Context, a: CreateVolume| async move {
                Ok::<_, HandlerError>(Volume {
                    id: "v1".into(),
                    name: a.name,
                    size_gb: a.size_gb,
                    host: "host1".into(),
                })
            },
        );
        let s = server(&t, &topic, "host1", vec![ep]).await;
        let client = RpcClient::new(t.clone(), Target::new(&topic));
        let v: Volume = within(client.call(
            &Context::new(),
            "create_volume",
            &CreateVolume {
                name: "data".into(),
                size_gb: 10,
            },
        ))
        .await
        .unwrap();
        assert_eq!(
            v,
            Volume {
                id: "v1".into(),
                name: "data".into(),
                size_gb: 10,
                host: "host1".into()
            }
        );
        assert_eq!(s.stats().calls, 1);
        assert_eq!(s.stats().succeeded, 1);
    }
}

each_transport! {
    #[tokio::test]
    async fn untyped_calls_use_json_values(rig) {
        let t = rig.transport();
        let topic = rig.name("misc");
        let ep = Endpoint::new()
            .method("echo", |_ctx: Context, args: Value| async move {
                Ok::<_, HandlerError>(args)
            })
            .method("nothing", |_ctx: Context, (): ()| async move {
                Ok::<_, HandlerError>(())
            });
        let _s = server(&t, &topic, "h", vec![ep]).await;
        let client = RpcClient::new(t, Target::new(&topic));
        let ctx = Context::new();
        let v: Value = within(client.call(&ctx, "echo", &json!({"a": [1, 2], "b": null})))
            .await
            .unwrap();
        assert_eq!(v, json!({"a": [1, 2], "b": null}));
        let v: Value = within(client.call(&ctx, "echo", &())).await.unwrap();
        assert_eq!(v, json!({}));
        within(client.call::<_, ()>(&ctx, "nothing", &()))
            .await
            .unwrap();
        // Arguments must be keyword arguments: a JSON object.
        let e = client
            .call::<_, Value>(&ctx, "echo", &[1, 2])
            .await
            .unwrap_err();
        assert!(matches!(e, RpcError::Encode(_)), "{e:?}");
        // A result that does not fit the type asked for.
        let e = within(client.call::<_, u32>(&ctx, "echo", &json!({"x": 1})))
            .await
            .unwrap_err();
        assert!(matches!(e, RpcError::Decode(_)), "{e:?}");
    }
}

each_transport! {
    #[tokio::test]
    async fn cast_reaches_a_server_and_returns_at_once(rig) {
        let t = rig.transport();
        let topic = rig.name("volume");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ep = Endpoint::new().method("create_volume", move |_ctx: Context, a: CreateVolume| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(a);
                Ok::<_, HandlerError>(())
            }
        });
        let s = server(&t, &topic, "host1", vec![ep]).await;
        let client = RpcClient::new(t, Target::new(&topic));
        client
            .cast(
                &Context::new(),
                "create_volume",
                &CreateVolume {
                    name: "a".into(),
                    size_gb: 1,
                },
            )
            .await
            .unwrap();
        let got = within(rx.recv()).await.unwrap();
        assert_eq!(
            got,
            CreateVolume {
                name: "a".into(),
                size_gb: 1
            }
        );
        s.stop().await;
        assert_eq!(s.stats().casts, 1);
        assert_eq!(s.stats().calls, 0);
    }
}

each_transport! {
    #[tokio::test]
    async fn a_targeted_call_reaches_only_its_server(rig) {
        let t = rig.transport();
        let topic = rig.name("volume");
        let s1 = server(&t, &topic, "host1", vec![named_endpoint("host1")]).await;
        let s2 = server(&t, &topic, "host2", vec![named_endpoint("host2")]).await;
        let client = RpcClient::new(t.clone(), Target::new(&topic));
        let to_host2 = client.prepare(PrepareOptions::new().with_server("host2"));
        for _ in 0..20 {
            let who: String = within(to_host2.call(&Context::new(), "whoami", &()))
                .await
                .unwrap();
            assert_eq!(who, "host2");
        }
        // The target in the client itself works the same.
        let direct = RpcClient::new(t, Target::new(&topic).with_server("host1"));
        for _ in 0..5 {
            let who: String = within(direct.call(&Context::new(), "whoami", &()))
                .await
                .unwrap();
            assert_eq!(who, "host1");
        }
        s1.stop().await;
        s2.stop().await;
        assert_eq!(s1.stats().calls, 5);
        assert_eq!(s2.stats().calls, 20);
    }
}

each_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_without_a_server_are_spread_over_the_servers(rig) {
        // Each server runs one call at a time, and each call waits until two
        // calls run at once: the two calls can only finish if they went to
        // different servers.
        let t = rig.transport();
        let topic = rig.name("volume");
        let barrier = Arc::new(Barrier::new(2));
        let mut servers = Vec::new();
        for host in ["host1", "host2"] {
            let b = barrier.clone();
            let name = host.to_owned();
            let ep = Endpoint::new().method("meet", move |_ctx: Context, (): ()| {
                let b = b.clone();
                let name = name.clone();
                async move {
                    b.wait().await;
                    Ok::<_, HandlerError>(name)
                }
            });
            let s = RpcServer::with_options(
                t.clone(),
                Target::new(&topic).with_server(host),
                vec![ep],
                RpcServerOptions { max_in_flight: 1 },
            );
            s.start().await.unwrap();
            servers.push(s);
        }
        let client = RpcClient::new(t, Target::new(&topic));
        let ctx = Context::new();
        let (a, b) = within(async {
            tokio::join!(
                client.call::<_, String>(&ctx, "meet", &()),
                client.call::<_, String>(&ctx, "meet", &())
            )
        })
        .await;
        let got: HashSet<String> = [a.unwrap(), b.unwrap()].into_iter().collect();
        assert_eq!(got, HashSet::from(["host1".to_owned(), "host2".to_owned()]));
        for s in &servers {
            assert_eq!(s.stats().calls, 1);
        }
    }
}

each_transport! {
    #[tokio::test]
    async fn fanout_reaches_every_server_exactly_once(rig) {
        let t = rig.transport();
        let topic = rig.name("scheduler");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut servers = Vec::new();
        for host in ["h1", "h2", "h3"] {
            let tx = tx.clone();
            let name = host.to_owned();
            let ep = Endpoint::new().method("refresh", move |_ctx: Context, a: Value| {
                let tx = tx.clone();
                let name = name.clone();
                async move {
                    let _ = tx.send((name, a["n"].as_u64().unwrap_or(0)));
                    Ok::<_, HandlerError>(())
                }
            });
            servers.push(server(&t, &topic, host, vec![ep]).await);
        }
        let fanout = RpcClient::new(t, Target::new(&topic).with_fanout(true));
        for n in 0..5u64 {
            fanout
                .cast(&Context::new(), "refresh", &json!({ "n": n }))
                .await
                .unwrap();
        }
        let mut seen = HashSet::new();
        for _ in 0..15 {
            let event = within(rx.recv()).await.unwrap();
            assert!(seen.insert(event.clone()), "delivered twice: {event:?}");
        }
        for s in &servers {
            s.stop().await;
            assert_eq!(s.stats().casts, 5);
        }
        assert!(rx.try_recv().is_err(), "a server got a copy twice");
        let expected: HashSet<(String, u64)> = ["h1", "h2", "h3"]
            .iter()
            .flat_map(|h| (0..5).map(move |n| (h.to_string(), n)))
            .collect();
        assert_eq!(seen, expected);
        // Stopped servers' fanout queues are gone (where the broker lists them).
        if let Some(n) = rig.count_queues(&format!("{topic}_fanout_")) {
            assert_eq!(n, 0);
        }
    }
}

each_transport! {
    #[tokio::test]
    async fn a_call_cannot_use_fanout(rig) {
        let t = rig.transport();
        let client = RpcClient::new(t, Target::new("x").with_fanout(true));
        let e = client
            .call::<_, Value>(&Context::new(), "m", &())
            .await
            .unwrap_err();
        assert!(matches!(e, RpcError::InvalidTarget { .. }), "{e:?}");
    }
}

each_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_thousand_concurrent_calls_each_get_their_own_reply(rig) {
        let t1 = rig.transport();
        let t2 = rig.another();
        let topic = rig.name("math");
        let double = |host: &'static str| {
            Endpoint::new().method("double", move |ctx: Context, a: Value| async move {
                Ok::<_, HandlerError>(json!({
                    "caller": a["caller"],
                    "n": a["n"],
                    "double": a["n"].as_u64().unwrap_or(0) * 2,
                    "request_id": ctx.get_str("request_id"),
                    "host": host,
                }))
            })
        };
        let servers = [
            server(&t1, &topic, "m1", vec![double("m1")]).await,
            server(&t2, &topic, "m2", vec![double("m2")]).await,
            server(&t1, &topic, "m3", vec![double("m3")]).await,
        ];
        // Two transports (two reply queues), several clients, eight tasks.
        let clients = [
            RpcClient::new(t1.clone(), Target::new(&topic)),
            RpcClient::new(t2.clone(), Target::new(&topic)),
            RpcClient::new(t1.clone(), Target::new(&topic))
                .prepare(PrepareOptions::new().with_server("m2")),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..8u64 {
            let client = clients[caller as usize % clients.len()].clone();
            tasks.spawn(async move {
                let mut calls = tokio::task::JoinSet::new();
                for n in 0..125u64 {
                    let client = client.clone();
                    calls.spawn(async move {
                        let ctx = Context::new().with("request_id", format!("req-{caller}-{n}"));
                        let r: Value = client
                            .call(&ctx, "double", &json!({"caller": caller, "n": n}))
                            .await
                            .expect("call succeeds");
                        assert_eq!(r["caller"], caller);
                        assert_eq!(r["n"], n);
                        assert_eq!(r["double"], n * 2);
                        assert_eq!(r["request_id"], format!("req-{caller}-{n}"));
                        r["host"].as_str().unwrap_or_default().to_owned()
                    });
                }
                let mut hosts = Vec::new();
                while let Some(h) = calls.join_next().await {
                    hosts.push(h.expect("call task"));
                }
                hosts
            });
        }
        let mut per_host: HashMap<String, usize> = HashMap::new();
        let mut total = 0;
        within(async {
            while let Some(hosts) = tasks.join_next().await {
                for h in hosts.expect("caller task") {
                    *per_host.entry(h).or_default() += 1;
                    total += 1;
                }
            }
        })
        .await;
        assert_eq!(total, 1000);
        assert_eq!(per_host.values().sum::<usize>(), 1000);
        let served: u64 = servers.iter().map(|s| s.stats().calls).sum();
        assert_eq!(served, 1000);
        assert_eq!(t1.stats().late_replies + t2.stats().late_replies, 0);
        assert_eq!(
            t1.stats().replies_received + t2.stats().replies_received,
            1000
        );
    }
}

/// A server whose `slow` waits until released, and whose `fast` answers at
/// once; it runs one call at a time.
async fn slow_server(
    t: &Arc<dyn Transport>,
    topic: &str,
) -> (RpcServer, Arc<Notify>, mpsc::UnboundedReceiver<()>) {
    let release = Arc::new(Notify::new());
    let (started_tx, started) = mpsc::unbounded_channel();
    let r = release.clone();
    let ep = Endpoint::new()
        .method("slow", move |_ctx: Context, (): ()| {
            let r = r.clone();
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                r.notified().await;
                Ok::<_, HandlerError>("slow")
            }
        })
        .method("fast", |_ctx: Context, (): ()| async move {
            Ok::<_, HandlerError>("fast")
        });
    let s = RpcServer::with_options(
        t.clone(),
        Target::new(topic).with_server("s1"),
        vec![ep],
        RpcServerOptions { max_in_flight: 1 },
    );
    s.start().await.unwrap();
    (s, release, started)
}

// The clock is paused: it jumps ahead only when every task waits, so the
// server has taken the request before the call's timeout can run out.
#[tokio::test(start_paused = true)]
async fn a_call_times_out_and_its_late_reply_is_dropped() {
    let (t, _) = fresh();
    let (_s, release, mut started) = slow_server(&t, "svc").await;
    let client =
        RpcClient::new(t.clone(), Target::new("svc")).with_timeout(Duration::from_secs(30));
    let e = client
        .call::<_, String>(&Context::new(), "slow", &())
        .await
        .unwrap_err();
    match &e {
        RpcError::Timeout { method, timeout } => {
            assert_eq!(method, "slow");
            assert_eq!(*timeout, Duration::from_secs(30));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(e.is_timeout());
    started.recv().await.unwrap();
    // The slow handler now answers, late. The server runs one call at a
    // time and sends a reply before it takes the next request, so the late
    // reply is read before the next call's.
    release.notify_one();
    let fast: String = client.call(&Context::new(), "fast", &()).await.unwrap();
    assert_eq!(fast, "fast");
    let stats = t.stats();
    assert_eq!(stats.late_replies, 1);
    assert_eq!(stats.replies_received, 1);
}

each_transport! {
    // The same on a real clock, on every transport: the call's timeout runs
    // out while the server holds its request.
    #[tokio::test]
    async fn a_late_reply_is_dropped_and_never_reaches_another_call(rig) {
        let t = rig.transport();
        let topic = rig.name("svc");
        let (_s, release, mut started) = slow_server(&t, &topic).await;
        let client =
            RpcClient::new(t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(2));
        let ctx = Context::new();
        let (result, taken) = tokio::join!(
            client.call::<_, String>(&ctx, "slow", &()),
            within(started.recv())
        );
        taken.unwrap();
        assert!(result.unwrap_err().is_timeout());
        // The late reply is sent before the server takes the next request.
        release.notify_one();
        let patient = client.prepare(PrepareOptions::new().with_timeout(common::PATIENCE));
        let fast: String = within(patient.call(&Context::new(), "fast", &()))
            .await
            .unwrap();
        assert_eq!(fast, "fast");
        let stats = t.stats();
        assert_eq!(stats.late_replies, 1);
        assert_eq!(stats.replies_received, 1);
    }
}

each_transport! {
    #[tokio::test]
    async fn a_caller_that_gives_up_never_gets_someone_elses_reply(rig) {
        let t = rig.transport();
        let topic = rig.name("svc");
        let (_s, release, mut started) = slow_server(&t, &topic).await;
        let client = RpcClient::new(t.clone(), Target::new(&topic));
        let ctx = Context::new();
        {
            let call = client.call::<_, String>(&ctx, "slow", &());
            tokio::pin!(call);
            tokio::select! {
                _ = started.recv() => {}
                r = &mut call => panic!("the slow call returned early: {r:?}"),
            }
            // Dropped here, while the server runs it.
        }
        release.notify_one();
        for _ in 0..3 {
            let fast: String = within(client.call(&ctx, "fast", &())).await.unwrap();
            assert_eq!(fast, "fast");
        }
        assert_eq!(t.stats().late_replies, 1);
    }
}

each_transport! {
    #[tokio::test]
    async fn the_context_reaches_the_handler_unchanged(rig) {
        let t = rig.transport();
        let topic = rig.name("ctx");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ep = Endpoint::new()
            .method("ctx", |ctx: Context, (): ()| async move {
                Ok::<_, HandlerError>(ctx)
            })
            .method("cast_ctx", move |ctx: Context, (): ()| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(ctx);
                    Ok::<_, HandlerError>(())
                }
            });
        let _s = server(&t, &topic, "h", vec![ep]).await;
        let ctx = Context::new()
            .with("user", "alice")
            .with("project_id", "p-1")
            .with("request_id", "req-0b4e")
            .with("roles", json!(["admin", "member"]))
            .with("is_admin", true)
            .with("quota", 1.5)
            .with("nothing", Value::Null)
            .with("nested", json!({"a": {"b": "c\"\\\n"}}))
            .with("unicode", "ünïcødé ✓");
        let client = RpcClient::new(t, Target::new(&topic));
        let back: Context = within(client.call(&ctx, "ctx", &())).await.unwrap();
        assert_eq!(back, ctx);
        client.cast(&ctx, "cast_ctx", &()).await.unwrap();
        assert_eq!(within(rx.recv()).await.unwrap(), ctx);
        let empty: Context = within(client.call(&Context::new(), "ctx", &()))
            .await
            .unwrap();
        assert!(empty.is_empty());
    }
}

#[tokio::test]
async fn the_transport_url_registry_shares_a_broker() {
    let server_t = warren_rpc::transport_from_url("inproc://rpc-tests-registry").unwrap();
    let client_t = warren_rpc::transport_from_url("inproc://rpc-tests-registry").unwrap();
    let _s = server(&server_t, "reg", "h", vec![named_endpoint("h")]).await;
    let client = RpcClient::new(client_t, Target::new("reg"));
    let who: String = within(client.call(&Context::new(), "whoami", &()))
        .await
        .unwrap();
    assert_eq!(who, "h");
    #[cfg(not(feature = "amqp"))]
    assert!(matches!(
        warren_rpc::transport_from_url("amqp://guest:guest@localhost/"),
        Err(TransportError::UnsupportedScheme(s)) if s == "amqp"
    ));
    // With the feature, the URL is taken (it connects on first use).
    #[cfg(feature = "amqp")]
    assert_eq!(
        warren_rpc::transport_from_url("amqp://guest:guest@localhost/")
            .unwrap()
            .url(),
        "amqp://guest:***@localhost/"
    );
    assert!(matches!(
        warren_rpc::transport_from_url("localhost"),
        Err(TransportError::InvalidUrl(_))
    ));
}

each_transport! {
    #[tokio::test]
    async fn mandatory_calls_fail_fast_when_nobody_listens(rig) {
        let t = rig.transport();
        let topic = rig.name("nobody");
        let client = RpcClient::new(t.clone(), Target::new(&topic)).with_mandatory(true);
        let e = client
            .call::<_, Value>(&Context::new(), "m", &())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RpcError::Transport(TransportError::Unroutable { routing_key, .. }) if *routing_key == topic),
            "{e:?}"
        );
        let e = client.cast(&Context::new(), "m", &()).await.unwrap_err();
        assert!(
            matches!(e, RpcError::Transport(TransportError::Unroutable { .. })),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn prepare_overrides_and_keeps() {
    let (t, _) = fresh();
    let base = RpcClient::new(t, Target::new("volume").with_namespace("ns"))
        .with_timeout(Duration::from_secs(7))
        .with_retry(Some(3));
    let p = base.prepare(
        PrepareOptions::new()
            .with_server("h1")
            .with_version(warren_rpc::Version::new(3, 2))
            .with_timeout(Duration::from_secs(2)),
    );
    assert_eq!(p.target().server.as_deref(), Some("h1"));
    assert_eq!(p.target().namespace.as_deref(), Some("ns"));
    assert_eq!(p.target().version, Some(warren_rpc::Version::new(3, 2)));
    assert_eq!(p.timeout(), Duration::from_secs(2));
    let q = p.prepare(
        PrepareOptions::new()
            .without_server()
            .without_namespace()
            .with_fanout(true),
    );
    assert_eq!(q.target().server, None);
    assert_eq!(q.target().namespace, None);
    assert!(q.target().fanout);
    assert_eq!(q.timeout(), Duration::from_secs(2));
    assert_eq!(base.target().server, None);
    assert_eq!(base.timeout(), Duration::from_secs(7));
}
