//! The dispatcher: namespaces, versions and version caps, no such method,
//! remote errors, expected errors, panicking handlers, bad arguments.

#[macro_use]
mod common;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use warren_rpc::{
    Context, Endpoint, HandlerError, PrepareOptions, RpcClient, RpcError, RpcServer, Target,
    Transport, Version,
};

use common::{fresh, within, Rig};

/// A transport and the (unique) topic its server listens on.
struct On {
    t: Arc<dyn Transport>,
    topic: String,
}

fn on(rig: &Rig) -> On {
    On {
        t: rig.transport(),
        topic: rig.name("volume"),
    }
}

async fn serve(on: &On, endpoints: Vec<Endpoint>) -> RpcServer {
    let s = RpcServer::new(
        on.t.clone(),
        Target::new(&on.topic).with_server("host1"),
        endpoints,
    );
    s.start().await.unwrap();
    s
}

fn answers(tag: &'static str) -> Endpoint {
    Endpoint::new().method("get", move |_ctx: Context, (): ()| async move {
        Ok::<_, HandlerError>(tag)
    })
}

fn client(on: &On) -> RpcClient {
    RpcClient::new(on.t.clone(), Target::new(&on.topic))
}

each_transport! {
    #[tokio::test]
    async fn endpoints_are_chosen_by_namespace_and_version(rig) {
        let t = on(&rig);
        let _s = serve(
            &t,
            vec![
                answers("v1").with_version(Version::new(1, 3)),
                answers("v2").with_version(Version::new(2, 1)),
                answers("baremetal")
                    .with_namespace("baremetal")
                    .with_version(Version::new(1, 0)),
            ],
        )
        .await;
        let c = client(&t);
        let ctx = Context::new();
        let at = |v: Option<Version>, ns: Option<&str>| {
            let mut o = PrepareOptions::new();
            o.version = Some(v);
            o.namespace = Some(ns.map(str::to_owned));
            c.prepare(o)
        };
        // No version means 1.0.
        let got: String = within(at(None, None).call(&ctx, "get", &())).await.unwrap();
        assert_eq!(got, "v1");
        let got: String = within(at(Some(Version::new(1, 3)), None).call(&ctx, "get", &()))
            .await
            .unwrap();
        assert_eq!(got, "v1");
        let got: String = within(at(Some(Version::new(2, 0)), None).call(&ctx, "get", &()))
            .await
            .unwrap();
        assert_eq!(got, "v2");
        let got: String = within(at(None, Some("baremetal")).call(&ctx, "get", &()))
            .await
            .unwrap();
        assert_eq!(got, "baremetal");
    }
}

each_transport! {
    #[tokio::test]
    async fn unsupported_version_is_a_typed_error(rig) {
        let t = on(&rig);
        let s = serve(&t, vec![answers("v1").with_version(Version::new(1, 3))]).await;
        let ctx = Context::new();
        for (v, text) in [(Version::new(1, 4), "1.4"), (Version::new(2, 0), "2.0")] {
            let c = client(&t).prepare(PrepareOptions::new().with_version(v));
            let e = within(c.call::<_, Value>(&ctx, "get", &()))
                .await
                .unwrap_err();
            match e {
                RpcError::UnsupportedVersion { version, method } => {
                    assert_eq!(version, text);
                    assert_eq!(method, "get");
                }
                other => panic!("expected UnsupportedVersion, got {other:?}"),
            }
        }
        // A namespace no endpoint has: no compatible endpoint either.
        let c = client(&t).prepare(PrepareOptions::new().with_namespace("other"));
        let e = within(c.call::<_, Value>(&ctx, "get", &()))
            .await
            .unwrap_err();
        assert!(matches!(e, RpcError::UnsupportedVersion { .. }), "{e:?}");
        assert_eq!(s.stats().unsupported_version, 3);
    }
}

each_transport! {
    #[tokio::test]
    async fn no_such_method_is_a_typed_error(rig) {
        let t = on(&rig);
        let s = serve(&t, vec![answers("v1")]).await;
        let e = within(client(&t).call::<_, Value>(&Context::new(), "delete_everything", &()))
            .await
            .unwrap_err();
        match &e {
            RpcError::NoSuchMethod { method } => assert_eq!(method, "delete_everything"),
            other => panic!("expected NoSuchMethod, got {other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "endpoint does not support RPC method delete_everything"
        );
        assert_eq!(s.stats().no_such_method, 1);
        // A cast to a missing method goes nowhere, and the server goes on.
        client(&t).cast(&Context::new(), "nope", &()).await.unwrap();
        let got: String = within(client(&t).call(&Context::new(), "get", &()))
            .await
            .unwrap();
        assert_eq!(got, "v1");
    }
}

each_transport! {
    #[tokio::test]
    async fn the_version_cap_keeps_calls_from_being_sent(rig) {
        let t = on(&rig);
        let _s = serve(&t, vec![answers("v3").with_version(Version::new(3, 5))]).await;
        let c = client(&t).with_version_cap(Version::new(3, 2));
        assert!(c.can_send_version(Version::new(3, 0)));
        assert!(c.can_send_version(Version::new(3, 2)));
        assert!(!c.can_send_version(Version::new(3, 3)));
        assert!(!c.can_send_version(Version::new(2, 9)));
        let sent = t.t.stats().requests_sent;
        let too_new = c.prepare(PrepareOptions::new().with_version(Version::new(3, 4)));
        let e = too_new
            .call::<_, Value>(&Context::new(), "get", &())
            .await
            .unwrap_err();
        match e {
            RpcError::VersionCap { version, cap } => {
                assert_eq!(version, Version::new(3, 4));
                assert_eq!(cap, Version::new(3, 2));
            }
            other => panic!("expected VersionCap, got {other:?}"),
        }
        let e = too_new.cast(&Context::new(), "get", &()).await.unwrap_err();
        assert!(matches!(e, RpcError::VersionCap { .. }));
        assert_eq!(t.t.stats().requests_sent, sent, "nothing was sent");
        // Under the cap, it goes.
        let ok = c.prepare(PrepareOptions::new().with_version(Version::new(3, 2)));
        let got: String = within(ok.call(&Context::new(), "get", &())).await.unwrap();
        assert_eq!(got, "v3");
        // Without a cap, anything may be sent.
        assert!(client(&t).can_send_version(Version::new(99, 0)));
    }
}

#[derive(Debug, thiserror::Error)]
#[error("volume {0} could not be found")]
struct VolumeNotFound(String);

#[derive(Debug, thiserror::Error)]
#[error("the database is gone")]
struct DatabaseGone;

#[derive(Deserialize)]
struct Id {
    id: String,
}

each_transport! {
    #[tokio::test]
    async fn remote_errors_carry_type_message_and_data(rig) {
        let t = on(&rig);
        let ep = Endpoint::new()
            .method("quota", |_ctx: Context, (): ()| async move {
                Err::<(), _>(
                    HandlerError::new("OverQuota", "quota exceeded for gigabytes")
                        .with_module("cinder.exception")
                        .with_data(json!({"overs": ["gigabytes"], "usages": {"gigabytes": 1000}})),
                )
            })
            .method("db", |_ctx: Context, (): ()| async move {
                Err::<(), _>(DatabaseGone)
            });
        let s = serve(&t, vec![ep]).await;
        let e = within(client(&t).call::<_, Value>(&Context::new(), "quota", &()))
            .await
            .unwrap_err();
        let r = e.remote().expect("a remote error");
        assert_eq!(r.class(), "OverQuota");
        assert_eq!(r.module(), "cinder.exception");
        assert_eq!(r.message(), "quota exceeded for gigabytes");
        assert_eq!(r.data()["overs"], json!(["gigabytes"]));
        #[derive(Deserialize)]
        struct Over {
            usages: Value,
        }
        assert_eq!(r.data_as::<Over>().unwrap().usages["gigabytes"], 1000);
        assert_eq!(
            e.to_string(),
            "remote error: OverQuota quota exceeded for gigabytes"
        );

        // Any std error converts with `?`, under its type name.
        let e = within(client(&t).call::<_, Value>(&Context::new(), "db", &()))
            .await
            .unwrap_err();
        let r = e.remote().expect("a remote error");
        assert_eq!(r.class(), "DatabaseGone");
        assert_eq!(r.message(), "the database is gone");
        let st = s.stats();
        assert_eq!((st.failed, st.expected_failures), (2, 0));
    }
}

each_transport! {
    #[tokio::test]
    async fn expected_errors_are_returned_but_not_server_failures(rig) {
        let t = on(&rig);
        let ep = Endpoint::new()
            .expected_error::<VolumeNotFound>()
            .method("get_volume", |_ctx: Context, a: Id| async move {
                Err::<(), _>(VolumeNotFound(a.id))
            })
            .method("marked", |_ctx: Context, (): ()| async move {
                Err::<(), _>(HandlerError::new("Conflict", "busy").expected())
            })
            .method("unexpected", |_ctx: Context, (): ()| async move {
                Err::<(), _>(DatabaseGone)
            });
        let s = serve(&t, vec![ep]).await;
        let c = client(&t);
        let ctx = Context::new();
        let e = within(c.call::<_, Value>(&ctx, "get_volume", &json!({"id": "v9"})))
            .await
            .unwrap_err();
        assert_eq!(e.remote().map(|r| r.class()), Some("VolumeNotFound"));
        assert_eq!(
            e.remote().map(|r| r.message()),
            Some("volume v9 could not be found")
        );
        let e = within(c.call::<_, Value>(&ctx, "marked", &()))
            .await
            .unwrap_err();
        assert_eq!(e.remote().map(|r| r.class()), Some("Conflict"));
        let e = within(c.call::<_, Value>(&ctx, "unexpected", &()))
            .await
            .unwrap_err();
        assert_eq!(e.remote().map(|r| r.class()), Some("DatabaseGone"));
        let st = s.stats();
        assert_eq!(st.expected_failures, 2);
        assert_eq!(st.failed, 1);
    }
}

each_transport! {
    #[tokio::test]
    async fn a_panicking_handler_fails_its_caller_and_the_server_goes_on(rig) {
        let t = on(&rig);
        let ep = Endpoint::new()
            .method("boom", |_ctx: Context, a: Value| async move {
                if a["now"].as_bool() == Some(true) {
                    panic!("kaboom {}", 42);
                }
                Ok::<_, HandlerError>("no boom")
            })
            .method("ok", |_ctx: Context, (): ()| async move {
                Ok::<_, HandlerError>("fine")
            });
        let s = serve(&t, vec![ep]).await;
        let c = client(&t);
        let ctx = Context::new();
        let e = within(c.call::<_, Value>(&ctx, "boom", &json!({"now": true})))
            .await
            .unwrap_err();
        let r = e.remote().expect("a remote error");
        assert_eq!(r.class(), "Panic");
        assert!(r.message().contains("kaboom 42"), "{}", r.message());
        // A cast that panics hurts nobody either.
        c.cast(&ctx, "boom", &json!({"now": true})).await.unwrap();
        for _ in 0..3 {
            let ok: String = within(c.call(&ctx, "ok", &())).await.unwrap();
            assert_eq!(ok, "fine");
        }
        let no: String = within(c.call(&ctx, "boom", &json!({"now": false})))
            .await
            .unwrap();
        assert_eq!(no, "no boom");
        s.stop().await;
        assert_eq!(s.stats().panics, 2);
        assert!(!s.is_running());
    }
}

each_transport! {
    #[tokio::test]
    async fn bad_arguments_are_the_callers_type_error(rig) {
        let t = on(&rig);
        let ep = Endpoint::new().method("get_volume", |_ctx: Context, a: Id| async move {
            Ok::<_, HandlerError>(a.id)
        });
        let s = serve(&t, vec![ep]).await;
        let e = within(client(&t).call::<_, Value>(&Context::new(), "get_volume", &json!({"name": 1})))
            .await
            .unwrap_err();
        let r = e.remote().expect("a remote error");
        assert_eq!((r.class(), r.module()), ("TypeError", "builtins"));
        assert!(r.message().contains("get_volume"), "{}", r.message());
        assert_eq!(s.stats().expected_failures, 1);
        assert_eq!(s.stats().failed, 0);
    }
}

#[tokio::test]
async fn a_server_needs_a_topic_and_a_name() {
    let (t, _) = fresh();
    for target in [Target::new("volume"), Target::new("").with_server("h")] {
        let s = RpcServer::new(t.clone(), target, vec![]);
        let e = s.start().await.unwrap_err();
        assert!(matches!(e, RpcError::InvalidTarget { .. }), "{e:?}");
        assert!(!s.is_running());
    }
}
