//! A Rust service and a Python OpenStack service (oslo.messaging's rabbit
//! driver) on the same broker call each other and read each other's
//! notifications: calls, casts, fanout, targeted servers, remote errors with
//! their type, unsupported versions, unknown methods, the request context,
//! call-monitor heartbeats both ways.
//!
//! Needs a broker (`WARREN_TEST_AMQP_URL`) and a Python with oslo.messaging
//! (`WARREN_TEST_PYTHON`, e.g. the venv `tests/python/oslo/ci.sh` makes);
//! skipped, with a message, without them. The Python side is
//! `tests/python/oslo/oslo_server.py` and `oslo_client.py`.
#![cfg(feature = "amqp")]

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, Semaphore};
use warren_rpc::{
    AmqpTransport, Context, Endpoint, HandlerError, Notification, NotificationEndpoint,
    NotificationListener, Notifier, PrepareOptions, RpcClient, RpcError, RpcServer, Target,
    Transport, Version,
};

use common::{amqp_url, unique_suffix, within};

/// How long a Python process may take (it starts slowly).
const PY_PATIENCE: Duration = Duration::from_secs(90);

struct Python {
    exe: String,
    scripts: PathBuf,
    /// The broker URL as oslo writes it (`rabbit://`).
    url: String,
}

/// The broker URL and the Python, or `None` (printed).
fn setup(test: &str) -> Option<(String, Python)> {
    let url = amqp_url(test)?;
    let Ok(exe) = std::env::var("WARREN_TEST_PYTHON") else {
        eprintln!(
            "SKIPPED {test}: WARREN_TEST_PYTHON is not set (a python with \
             oslo.messaging, e.g. target/ci-venv/bin/python from tests/python/oslo/ci.sh)"
        );
        return None;
    };
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/oslo");
    let py_url = match url.split_once("://") {
        Some((_, rest)) => format!("rabbit://{rest}"),
        None => url.clone(),
    };
    Some((
        url,
        Python {
            exe,
            scripts,
            url: py_url,
        },
    ))
}

async fn py_within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(PY_PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

impl Python {
    /// Runs `oslo_client.py` with these steps; one result per step.
    async fn client(&self, steps: Value) -> Vec<Value> {
        let mut child = Command::new(&self.exe)
            .arg(self.scripts.join("oslo_client.py"))
            .args(["--url", &self.url, "--steps", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(steps.to_string().as_bytes())
            .await
            .expect("steps written");
        drop(stdin);
        let out = py_within("oslo_client.py", child.wait_with_output())
            .await
            .expect("python runs");
        assert!(
            out.status.success(),
            "oslo_client.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "oslo_client.py printed no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Starts `oslo_server.py` and waits until it listens.
    async fn server(&self, args: &[&str]) -> PyServer {
        let mut child = Command::new(&self.exe)
            .arg(self.scripts.join("oslo_server.py"))
            .args(["--url", &self.url])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python starts");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = PyServer {
            child,
            stdin,
            lines,
        };
        let ready = s.event().await;
        assert_eq!(ready["event"], "ready", "{ready}");
        s
    }
}

/// A running `oslo_server.py`.
struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyServer {
    /// The next event it reports.
    async fn event(&mut self) -> Value {
        let line = py_within("an event from oslo_server.py", self.lines.next_line())
            .await
            .expect("reading oslo_server.py")
            .expect("oslo_server.py exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = py_within("oslo_server.py to stop", self.child.wait()).await;
    }

    /// Kills it (SIGKILL): a server that dies, whatever it was doing.
    async fn kill(mut self) {
        self.child.kill().await.expect("oslo_server.py killed");
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the database is gone")]
struct DatabaseGone;

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct VolumeArgs {
    volume_id: String,
}

/// The Rust twin of `oslo_server.py`'s endpoint (version 2.3).
fn rust_endpoint(name: &str, casts: mpsc::UnboundedSender<(String, Value, Context)>) -> Endpoint {
    let (n1, n2, n3) = (name.to_owned(), name.to_owned(), name.to_owned());
    Endpoint::new()
        .with_version(Version::new(2, 3))
        .method("echo", move |ctx: Context, args: Value| {
            let server = n1.clone();
            async move { Ok::<_, HandlerError>(json!({"args": args, "ctx": ctx, "server": server})) }
        })
        .method("whoami", move |_ctx: Context, (): ()| {
            let server = n2.clone();
            async move { Ok::<_, HandlerError>(server) }
        })
        .method("add", |_ctx: Context, a: AddArgs| async move {
            Ok::<_, HandlerError>(a.a + a.b)
        })
        .method("fail", |_ctx: Context, a: VolumeArgs| async move {
            Err::<(), _>(
                HandlerError::new(
                    "VolumeNotFound",
                    format!("Volume {} could not be found.", a.volume_id),
                )
                .with_module("cinder.exception")
                .with_data(json!({"volume_id": a.volume_id}))
                .expected(),
            )
        })
        .method("broken", |_ctx: Context, (): ()| async move {
            Err::<(), _>(DatabaseGone)
        })
        .method("record", move |ctx: Context, args: Value| {
            let _ = casts.send((n3.clone(), args, ctx));
            async { Ok::<_, HandlerError>(()) }
        })
}

fn amqp(url: &str) -> Arc<dyn Transport> {
    Arc::new(AmqpTransport::from_url(url).expect("URL"))
}

fn error_of(r: &Value) -> &Value {
    assert_eq!(r["ok"], false, "expected an error: {r}");
    &r["error"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_calls_a_rust_server() {
    let Some((url, py)) = setup("a_python_client_calls_a_rust_server") else {
        return;
    };
    let topic = format!("interop-rs{}", unique_suffix());
    let t = amqp(&url);
    let (tx, mut casts) = mpsc::unbounded_channel();
    let mut servers = Vec::new();
    for name in ["r1", "r2"] {
        let s = RpcServer::new(
            t.clone(),
            Target::new(&topic).with_server(name),
            vec![rust_endpoint(name, tx.clone())],
        );
        within(s.start()).await.unwrap();
        servers.push(s);
    }
    let step = |op: &str, method: &str, extra: Value| {
        let mut s = json!({"op": op, "topic": topic, "method": method, "version": "2.0"});
        if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), extra) {
            s.extend(extra);
        }
        s
    };
    let results = py
        .client(json!([
            step("call", "echo", json!({"args": {"x": 1, "s": "d\u{e9}j\u{e0}"}, "ctx": {"user": "alice", "request_id": "req-py-1"}})),
            step("call", "add", json!({"args": {"a": 2, "b": 3}, "version": "2.3"})),
            step("call", "whoami", json!({"server": "r2"})),
            step("cast", "record", json!({"args": {"k": 1}, "ctx": {"user": "bob"}})),
            step("cast", "record", json!({"args": {"k": 2}, "fanout": true})),
            step("call", "fail", json!({"args": {"volume_id": "v9"}})),
            step("call", "broken", json!({})),
            step("call", "echo", json!({"version": "9.0"})),
            step("call", "no_such_thing", json!({})),
            step("call", "whoami", json!({"server": "r1", "version": "2.4"})),
        ]))
        .await;
    assert_eq!(results.len(), 10, "{results:?}");

    // call: arguments, result and context cross as they are.
    let echo = &results[0];
    assert_eq!(echo["ok"], true, "{echo}");
    assert_eq!(echo["result"]["args"], json!({"x": 1, "s": "déjà"}));
    assert_eq!(echo["result"]["ctx"]["user"], "alice");
    assert_eq!(echo["result"]["ctx"]["request_id"], "req-py-1");
    assert_eq!(results[1]["result"], 5);
    // targeted server
    assert_eq!(results[2]["result"], "r2");
    // cast: one server gets it, with its context
    for r in &results[3..5] {
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within(casts.recv()).await.unwrap());
    }
    let plain: Vec<_> = got.iter().filter(|(_, a, _)| a["k"] == 1).collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(plain[0].2.get_str("user"), Some("bob"));
    // fanout: each server once
    let fanned: HashSet<&str> = got
        .iter()
        .filter(|(_, a, _)| a["k"] == 2)
        .map(|(s, _, _)| s.as_str())
        .collect();
    assert_eq!(fanned, HashSet::from(["r1", "r2"]));
    // remote errors, with their type
    let e = error_of(&results[5]);
    assert_eq!(e["class"], "RemoteError");
    assert_eq!(e["exc_type"], "VolumeNotFound");
    assert_eq!(e["value"], "Volume v9 could not be found.");
    let e = error_of(&results[6]);
    assert_eq!(e["exc_type"], "DatabaseGone");
    assert_eq!(e["value"], "the database is gone");
    // oslo's own dispatcher errors are rebuilt as their classes: same
    // arguments as a Python server sends.
    let e = error_of(&results[7]);
    assert_eq!(
        (
            e["class"].as_str(),
            e["module"].as_str(),
            e["rebuilt"].as_bool()
        ),
        (
            Some("UnsupportedVersion"),
            Some("oslo_messaging.rpc.dispatcher"),
            Some(true)
        )
    );
    assert!(
        e["str"]
            .as_str()
            .unwrap_or("")
            .starts_with("Endpoint does not support RPC version 9.0. Attempted method: echo"),
        "{e}"
    );
    let e = error_of(&results[8]);
    assert_eq!(e["class"], "NoSuchMethod");
    assert!(e["str"]
        .as_str()
        .unwrap_or("")
        .starts_with("Endpoint does not support RPC method no_such_thing"));
    let e = error_of(&results[9]);
    assert_eq!(
        e["class"], "UnsupportedVersion",
        "2.4 is above the endpoint's 2.3"
    );
    for s in &servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_client_calls_a_python_server() {
    let Some((url, py)) = setup("a_rust_client_calls_a_python_server") else {
        return;
    };
    let topic = format!("interop-py{}", unique_suffix());
    let mut server = py.server(&["--topic", &topic, "--servers", "p1,p2"]).await;
    let t = amqp(&url);
    let client = RpcClient::new(
        t.clone(),
        Target::new(&topic).with_version(Version::new(2, 0)),
    )
    .with_timeout(Duration::from_secs(30));
    let ctx = Context::new()
        .with("user", "alice")
        .with("request_id", "req-rs-1")
        .with("roles", json!(["admin"]));

    // call
    let echo: Value = within(client.call(&ctx, "echo", &json!({"x": 1, "s": "déjà"})))
        .await
        .unwrap();
    assert_eq!(echo["args"], json!({"x": 1, "s": "déjà"}));
    assert_eq!(echo["ctx"]["user"], "alice");
    assert_eq!(echo["ctx"]["request_id"], "req-rs-1");
    assert_eq!(echo["ctx"]["roles"], json!(["admin"]));
    let sum: i64 = within(
        client
            .prepare(PrepareOptions::new().with_version(Version::new(2, 3)))
            .call(&ctx, "add", &json!({"a": 2, "b": 3})),
    )
    .await
    .unwrap();
    assert_eq!(sum, 5);
    // targeted server
    let p2 = client.prepare(PrepareOptions::new().with_server("p2"));
    for _ in 0..3 {
        let who: String = within(p2.call(&ctx, "whoami", &())).await.unwrap();
        assert_eq!(who, "p2");
    }
    // a namespace
    let bm: String = within(
        client
            .prepare(
                PrepareOptions::new()
                    .with_namespace("baremetal")
                    .with_version(Version::new(1, 0)),
            )
            .call(&ctx, "whoami", &()),
    )
    .await
    .unwrap();
    assert!(bm.starts_with("baremetal:p"), "{bm}");
    // cast, then fanout cast
    client.cast(&ctx, "record", &json!({"k": 1})).await.unwrap();
    let e = server.event().await;
    assert_eq!(
        (e["event"].as_str(), e["args"]["k"].as_i64()),
        (Some("cast"), Some(1))
    );
    assert_eq!(e["ctx"]["user"], "alice");
    client
        .prepare(PrepareOptions::new().with_fanout(true))
        .cast(&ctx, "record", &json!({"k": 2}))
        .await
        .unwrap();
    let mut fanned = HashSet::new();
    for _ in 0..2 {
        let e = server.event().await;
        assert_eq!(e["args"]["k"], 2, "{e}");
        fanned.insert(e["server"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(fanned, HashSet::from(["p1".to_owned(), "p2".to_owned()]));
    // a Python exception: its type, module, message, data and traceback
    let e = within(client.call::<_, Value>(&ctx, "fail", &json!({"volume_id": "v9"})))
        .await
        .unwrap_err();
    let r = e.remote().expect("a remote error");
    assert_eq!(r.class(), "VolumeNotFound");
    assert_eq!(r.module(), "cinder.exception");
    assert_eq!(r.message(), "Volume v9 could not be found.");
    assert_eq!(r.data()["volume_id"], "v9");
    assert!(
        r.traceback().iter().any(|l| l.contains("Traceback")),
        "{:?}",
        r.traceback()
    );
    // unsupported version, no such method: the typed errors
    let e = within(
        client
            .prepare(PrepareOptions::new().with_version(Version::new(9, 0)))
            .call::<_, Value>(&ctx, "echo", &()),
    )
    .await
    .unwrap_err();
    match e {
        RpcError::UnsupportedVersion { version, method } => {
            assert_eq!((version.as_str(), method.as_str()), ("9.0", "echo"))
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    let e = within(client.call::<_, Value>(&ctx, "no_such_thing", &()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RpcError::NoSuchMethod { method } if method == "no_such_thing"),
        "{e:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_servers_share_a_topic() {
    let Some((url, py)) = setup("rust_and_python_servers_share_a_topic") else {
        return;
    };
    // Both declare the same exchanges and queues: neither is refused.
    let topic = format!("interop-mixed{}", unique_suffix());
    let mut python = py.server(&["--topic", &topic, "--servers", "p1"]).await;
    let t = amqp(&url);
    let (tx, mut casts) = mpsc::unbounded_channel();
    let rust = RpcServer::new(
        t.clone(),
        Target::new(&topic).with_server("r1"),
        vec![rust_endpoint("r1", tx)],
    );
    within(rust.start()).await.unwrap();
    let client = RpcClient::new(
        t.clone(),
        Target::new(&topic).with_version(Version::new(2, 0)),
    )
    .with_timeout(Duration::from_secs(30));
    for server in ["p1", "r1"] {
        let who: String = within(
            client
                .prepare(PrepareOptions::new().with_server(server))
                .call(&Context::new(), "whoami", &()),
        )
        .await
        .unwrap();
        assert_eq!(who, server);
    }
    client
        .prepare(PrepareOptions::new().with_fanout(true))
        .cast(&Context::new(), "record", &json!({"k": 3}))
        .await
        .unwrap();
    let e = python.event().await;
    assert_eq!(
        (e["server"].as_str(), e["args"]["k"].as_i64()),
        (Some("p1"), Some(3))
    );
    let (who, args, _) = within(casts.recv()).await.unwrap();
    assert_eq!((who.as_str(), &args), ("r1", &json!({"k": 3})));
    // A Python client reaches both too.
    let results = py
        .client(json!([
            {"op": "call", "topic": topic, "method": "whoami", "version": "2.0", "server": "r1"},
            {"op": "call", "topic": topic, "method": "whoami", "version": "2.0", "server": "p1"},
        ]))
        .await;
    assert_eq!(results[0]["result"], "r1", "{results:?}");
    assert_eq!(results[1]["result"], "p1", "{results:?}");
    rust.stop().await;
    python.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notifications_reach_a_rust_listener() {
    let Some((url, py)) = setup("python_notifications_reach_a_rust_listener") else {
        return;
    };
    let topic = format!("interop-notes-py{}", unique_suffix());
    let t = amqp(&url);
    let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
    let (tx2, tx3) = (tx.clone(), tx);
    let ep = NotificationEndpoint::new()
        .info(move |n: Notification| {
            let _ = tx2.send(n);
            std::future::ready(())
        })
        .error(move |n: Notification| {
            let _ = tx3.send(n);
            std::future::ready(())
        });
    let listener = NotificationListener::new(t.clone(), vec![Target::new(&topic)], vec![ep]);
    within(listener.start()).await.unwrap();
    let results = py
        .client(json!([
            {"op": "notify", "topic": topic, "priority": "info", "publisher_id": "compute.pyhost",
             "event_type": "compute.instance.create.end", "payload": {"instance": "i-1", "n": 1.5},
             "ctx": {"request_id": "req-py-9", "user": "alice"}},
            {"op": "notify", "topic": topic, "priority": "error", "publisher_id": "compute.pyhost",
             "event_type": "compute.instance.create.error", "payload": {"reason": "no host"}},
        ]))
        .await;
    assert!(results.iter().all(|r| r["ok"] == true), "{results:?}");
    let mut got = [
        within(rx.recv()).await.unwrap(),
        within(rx.recv()).await.unwrap(),
    ];
    got.sort_by(|a, b| a.event_type.cmp(&b.event_type));
    let (created, failed) = (&got[0], &got[1]);
    assert_eq!(created.priority, warren_rpc::Priority::Info);
    assert_eq!(created.publisher_id, "compute.pyhost");
    assert_eq!(created.event_type, "compute.instance.create.end");
    assert_eq!(created.payload, json!({"instance": "i-1", "n": 1.5}));
    assert_eq!(created.ctx.get_str("request_id"), Some("req-py-9"));
    assert_eq!(created.ctx.get_str("user"), Some("alice"));
    assert_eq!(created.metadata.message_id.len(), 36);
    assert_eq!(created.metadata.timestamp.len(), 26);
    assert_eq!(failed.priority, warren_rpc::Priority::Error);
    assert_eq!(failed.payload["reason"], "no host");
    listener.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_notifications_reach_a_python_listener() {
    let Some((url, py)) = setup("rust_notifications_reach_a_python_listener") else {
        return;
    };
    let topic = format!("interop-notes-rs{}", unique_suffix());
    let mut python = py.server(&["--notify-topic", &topic]).await;
    let t = amqp(&url);
    let notifier = Notifier::new(t.clone(), "volume.rshost").with_topics([topic.clone()]);
    let ctx = Context::new()
        .with("request_id", "req-rs-9")
        .with("user", "bob");
    notifier
        .info(
            &ctx,
            "volume.create.end",
            &json!({"volume_id": "v1", "size": 10}),
        )
        .await
        .unwrap();
    notifier
        .warn(&ctx, "volume.slow", &json!({"ms": 1234}))
        .await
        .unwrap();
    let mut got = [python.event().await, python.event().await];
    got.sort_by(|a, b| a["event_type"].as_str().cmp(&b["event_type"].as_str()));
    let (created, slow) = (&got[0], &got[1]);
    assert_eq!(created["event"], "notification");
    assert_eq!(created["priority"], "info");
    assert_eq!(created["publisher_id"], "volume.rshost");
    assert_eq!(created["event_type"], "volume.create.end");
    assert_eq!(created["payload"], json!({"volume_id": "v1", "size": 10}));
    assert_eq!(created["ctx"]["request_id"], "req-rs-9");
    assert_eq!(created["ctx"]["user"], "bob");
    assert_eq!(
        created["metadata"]["message_id"].as_str().map(str::len),
        Some(36)
    );
    assert_eq!(
        created["metadata"]["timestamp"].as_str().map(str::len),
        Some(26)
    );
    assert_eq!(slow["priority"], "warn");
    assert_eq!(slow["payload"]["ms"], 1234);
    python.stop().await;
}

/// The bare bodies an in-process transport sends with
/// `with_envelope(false)` (oslo's format 1.0) are oslo's: made by warren
/// in process, then put on the broker as they are, a Python RPC server takes
/// the cast and a Python listener the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warrens_bare_bodies_reach_python_services() {
    let Some((url, py)) = setup("warrens_bare_bodies_reach_python_services") else {
        return;
    };
    let topic = format!("interop-bare{}", unique_suffix());
    let notes = format!("interop-bare-notes{}", unique_suffix());
    let mut python = py
        .server(&[
            "--topic",
            &topic,
            "--servers",
            "b1",
            "--notify-topic",
            &notes,
        ])
        .await;

    // The bodies, as a bare in-process transport sends them.
    let broker = warren_core::Broker::new();
    let bare: Arc<dyn Transport> =
        Arc::new(warren_rpc::InprocTransport::new(broker.clone()).with_envelope(false));
    common::probe(&broker, "openstack", &topic);
    let ctx = Context::new()
        .with("user", "carol")
        .with("request_id", "req-bare");
    // (version 2.0: oslo_server.py's endpoint is 2.3; none would mean 1.0)
    RpcClient::new(
        bare.clone(),
        Target::new(&topic).with_version(Version::new(2, 0)),
    )
    .cast(&ctx, "record", &json!({"k": 7, "s": "déjà \"vu\""}))
    .await
    .unwrap();
    Notifier::new(bare.clone(), "volume.barehost")
        .with_topics([notes.clone()])
        .info(&ctx, "volume.bare", &json!({"size": 1}))
        .await
        .unwrap();
    // Each body with its content type and encoding, which Python's kombu
    // decodes it by.
    let take = |queue: &str| {
        let d = broker
            .get(queue, warren_core::GetOptions::default())
            .unwrap()
            .expect("a body");
        let p = d.properties();
        let mut props = common::amqp_probe::BasicProperties::default();
        if let Some(t) = &p.content_type {
            props = props.with_content_type(t.as_str().into());
        }
        if let Some(e) = &p.content_encoding {
            props = props.with_content_encoding(e.as_str().into());
        }
        let body = d.body().to_vec();
        d.ack();
        (body, props)
    };
    let (cast, note) = (take("probe"), take(&format!("{notes}.info")));
    for (body, _) in [&cast, &note] {
        let v: Value = serde_json::from_slice(body).unwrap();
        assert!(v.get("oslo.version").is_none(), "not bare: {v}");
    }

    // On the real broker, as they are.
    common::amqp_probe::publish_with(&url, "openstack", &topic, &cast.0, cast.1).await;
    let key = format!("{notes}.info");
    common::amqp_probe::publish_with(&url, "openstack", &key, &note.0, note.1).await;
    let mut got = [python.event().await, python.event().await];
    got.sort_by(|a, b| a["event"].as_str().cmp(&b["event"].as_str()));
    let (cast, note) = (&got[0], &got[1]);
    assert_eq!(cast["event"], "cast", "{cast}");
    assert_eq!(cast["args"], json!({"k": 7, "s": "déjà \"vu\""}));
    assert_eq!(cast["ctx"]["user"], "carol");
    assert_eq!(note["event"], "notification", "{note}");
    assert_eq!(note["event_type"], "volume.bare");
    assert_eq!(note["publisher_id"], "volume.barehost");
    assert_eq!(note["payload"], json!({"size": 1}));
    assert_eq!(note["ctx"]["request_id"], "req-bare");
    python.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_with_a_call_monitor_timeout_calls_a_slow_rust_handler() {
    let Some((url, py)) =
        setup("a_python_client_with_a_call_monitor_timeout_calls_a_slow_rust_handler")
    else {
        return;
    };
    let topic = format!("interop-cm-rs{}", unique_suffix());
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let ep = Endpoint::new().with_version(Version::new(2, 3)).method(
        "wait",
        move |_ctx: Context, (): ()| {
            let g = g.clone();
            async move {
                let _ = g.acquire().await.map(|p| p.forget());
                Ok::<_, HandlerError>("done")
            }
        },
    );
    let s = RpcServer::new(amqp(&url), Target::new(&topic).with_server("r1"), vec![ep]);
    within(s.start()).await.unwrap();
    // oslo's client with call_monitor_timeout=2: it gives up after 2 s
    // without news. The handler answers only once the server has sent it
    // three heartbeats (a second apart): 3 s, kept alive by them.
    let python = py.client(json!([
        {"op": "call", "topic": topic, "method": "wait", "version": "2.0",
         "call_monitor_timeout": 2, "timeout": 30},
    ]));
    let release = async {
        py_within("three heartbeats", s.wait_for_heartbeats(3)).await;
        gate.add_permits(1);
    };
    let (results, ()) = tokio::join!(python, release);
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[0]["result"], "done");
    assert!(s.stats().heartbeats >= 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_client_with_a_call_monitor_timeout_calls_a_slow_python_handler() {
    let Some((url, py)) =
        setup("a_rust_client_with_a_call_monitor_timeout_calls_a_slow_python_handler")
    else {
        return;
    };
    let topic = format!("interop-cm-py{}", unique_suffix());
    let mut server = py.server(&["--topic", &topic, "--servers", "p1"]).await;
    let t = amqp(&url);
    // oslo's server heartbeats every int(2.0) / 2 = 1 s; its handler takes
    // 4 s, twice the call-monitor timeout.
    let client = RpcClient::new(
        t.clone(),
        Target::new(&topic).with_version(Version::new(2, 0)),
    )
    .with_timeout(Duration::from_secs(30))
    .with_call_monitor_timeout(Duration::from_secs(2));
    let r: String = within(client.call(&Context::new(), "slow", &json!({"seconds": 4})))
        .await
        .unwrap();
    assert_eq!(r, "slept");
    assert_eq!(server.event().await["event"], "slow");
    assert!(t.stats().heartbeats_received >= 1, "{:?}", t.stats());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_server_killed_mid_call_fails_it_after_the_call_monitor_timeout() {
    let Some((url, py)) =
        setup("a_python_server_killed_mid_call_fails_it_after_the_call_monitor_timeout")
    else {
        return;
    };
    let topic = format!("interop-cm-kill{}", unique_suffix());
    let mut server = py.server(&["--topic", &topic, "--servers", "p1"]).await;
    let client = RpcClient::new(
        amqp(&url),
        Target::new(&topic).with_version(Version::new(2, 0)),
    )
    .with_timeout(Duration::from_secs(60))
    .with_call_monitor_timeout(Duration::from_secs(2));
    let call = tokio::spawn(async move {
        client
            .call::<_, String>(&Context::new(), "slow", &json!({"seconds": 300}))
            .await
    });
    // The handler runs (and the server heartbeats): kill the server.
    assert_eq!(server.event().await["event"], "slow");
    server.kill().await;
    // The timeout reported is the call monitor's: it ran out, not the
    // call's minute.
    match within(call).await.unwrap().unwrap_err() {
        RpcError::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_secs(2)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
