//! RPC over `amqp://`: Rust-to-Rust call latency through a broker, against
//! two baselines measured in the same run: a bare request / reply round
//! trip with the same client (lapin, no confirms, no envelope) through the
//! same broker, and the in-process transport; and, with a Python,
//! oslo.messaging's own client calling the Rust server and a Python server
//! (same broker, same run).
//!
//! Brokers: `WARREN_BENCH_AMQP_URLS` (`name=url;name=url`, e.g.
//! `rabbitmq=amqp://guest:guest@127.0.0.1:5673/%2F;warren=amqp://guest:guest@127.0.0.1:5674/%2F`
//! to compare RabbitMQ and `warren serve` in one run), else
//! `WARREN_TEST_AMQP_URL` (as `broker`). Without either the bench says so
//! and measures nothing. Python: `WARREN_TEST_PYTHON` (a python with
//! oslo.messaging); without it the Python figures are skipped.
//!
//! Besides criterion's figures it prints p50 / p99 of its own sample of
//! sequential calls, and the ratios to the in-process baseline.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serde::{Deserialize, Serialize};
use tokio::runtime::{Builder, Runtime};
use warren_core::Broker;
use warren_rpc::{
    AmqpTransport, Context, Endpoint, HandlerError, InprocTransport, RpcClient, RpcServer, Target,
    Transport, Version,
};

#[derive(Serialize, Deserialize)]
struct Req {
    n: u64,
}

const SAMPLE: usize = 2_000;
const PY_SAMPLE: usize = 1_000;

/// The brokers to measure, by name.
fn brokers() -> Vec<(String, String)> {
    if let Ok(list) = std::env::var("WARREN_BENCH_AMQP_URLS") {
        let v: Vec<(String, String)> = list
            .split(';')
            .filter_map(|e| e.split_once('='))
            .map(|(n, u)| (n.trim().to_owned(), u.trim().to_owned()))
            .collect();
        if !v.is_empty() {
            return v;
        }
    }
    match std::env::var("WARREN_TEST_AMQP_URL") {
        Ok(url) if !url.is_empty() => vec![("broker".to_owned(), url)],
        _ => Vec::new(),
    }
}

/// A server ("echo": n + 1, endpoint version 2.0) and a client on one
/// transport kind.
struct Rig {
    rt: Runtime,
    client: RpcClient,
    topic: String,
    _server: RpcServer,
}

fn rig(
    transport: impl FnOnce() -> Arc<dyn Transport>,
    client_transport: Option<Arc<dyn Transport>>,
) -> Rig {
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let topic = format!("bench-{}", std::process::id());
    let (server, client) = rt.block_on(async {
        let t = transport();
        let ep = Endpoint::new()
            .with_version(Version::new(2, 0))
            .method("echo", |_c: Context, r: Req| async move {
                Ok::<_, HandlerError>(r.n + 1)
            });
        let server = RpcServer::new(t.clone(), Target::new(&topic).with_server("b1"), vec![ep]);
        server.start().await.expect("server starts");
        let client = RpcClient::new(
            client_transport.unwrap_or(t),
            Target::new(&topic)
                .with_server("b1")
                .with_version(Version::new(2, 0)),
        )
        .with_timeout(Duration::from_secs(30));
        (server, client)
    });
    Rig {
        rt,
        client,
        topic,
        _server: server,
    }
}

fn inproc_rig() -> Rig {
    rig(
        || Arc::new(InprocTransport::new(Broker::new())) as Arc<dyn Transport>,
        None,
    )
}

fn amqp_rig(url: &str) -> Rig {
    let u = url.to_owned();
    // Server and client on connections of their own, as two services.
    let client_t: Arc<dyn Transport> = Arc::new(AmqpTransport::from_url(url).expect("URL"));
    rig(
        move || Arc::new(AmqpTransport::from_url(&u).expect("URL")) as Arc<dyn Transport>,
        Some(client_t),
    )
}

async fn one_call(client: &RpcClient, ctx: &Context, n: u64) {
    let r: u64 = client.call(ctx, "echo", &Req { n }).await.expect("call");
    assert_eq!(r, n + 1);
}

fn calls(rig: &Rig, iters: u64) -> Duration {
    let client = rig.client.clone();
    rig.rt.block_on(async move {
        let ctx = Context::new().with("request_id", "req-bench");
        let start = Instant::now();
        for i in 0..iters {
            one_call(&client, &ctx, i).await;
        }
        start.elapsed()
    })
}

/// Sequential calls, each timed, sorted.
fn sample(rig: &Rig, n: usize) -> Vec<Duration> {
    let client = rig.client.clone();
    rig.rt.block_on(async move {
        let ctx = Context::new().with("request_id", "req-bench");
        for i in 0..200 {
            one_call(&client, &ctx, i).await;
        }
        let mut v = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            one_call(&client, &ctx, i).await;
            v.push(t.elapsed());
        }
        v.sort_unstable();
        v
    })
}

/// The bare round trip: publish to a queue, an echo consumer publishes the
/// body back to a reply queue, wait for it. Same client, same broker.
struct RawRig {
    rt: Runtime,
    channel: lapin::Channel,
    request_q: String,
    replies: lapin::Consumer,
    _conns: (lapin::Connection, lapin::Connection),
}

fn raw_rig(url: &str) -> RawRig {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let request_q = format!("bench-raw-req-{}", std::process::id());
    let reply_q = format!("bench-raw-rep-{}", std::process::id());
    let (channel, replies, conns) = rt.block_on(async {
        let temp = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let server = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let sch = server.create_channel().await.expect("channel");
        sch.queue_declare(request_q.as_str().into(), temp, FieldTable::default())
            .await
            .expect("declare");
        let mut requests = sch
            .basic_consume(
                request_q.as_str().into(),
                "raw-server".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let reply_to = reply_q.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = next(&mut requests).await {
                let _ = sch
                    .basic_publish(
                        "".into(),
                        reply_to.as_str().into(),
                        BasicPublishOptions::default(),
                        &d.data,
                        BasicProperties::default(),
                    )
                    .await;
            }
        });
        let client = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let cch = client.create_channel().await.expect("channel");
        cch.queue_declare(reply_q.as_str().into(), temp, FieldTable::default())
            .await
            .expect("declare");
        let replies = cch
            .basic_consume(
                reply_q.as_str().into(),
                "raw-client".into(),
                no_ack,
                FieldTable::default(),
            )
            .await
            .expect("consume");
        (cch, replies, (server, client))
    });
    RawRig {
        rt,
        channel,
        request_q,
        replies,
        _conns: conns,
    }
}

async fn next(c: &mut lapin::Consumer) -> Option<lapin::Result<lapin::message::Delivery>> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *c).poll_next(cx)).await
}

async fn raw_round_trip(r: &mut RawRig, body: &[u8]) {
    r.channel
        .basic_publish(
            "".into(),
            r.request_q.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish");
    let d = next(&mut r.replies).await.expect("reply").expect("reply");
    assert_eq!(d.data, body);
}

fn raw_calls(r: &mut RawRig, iters: u64) -> Duration {
    let rt = r.rt.handle().clone();
    rt.block_on(async {
        let start = Instant::now();
        for i in 0..iters {
            raw_round_trip(r, &i.to_le_bytes()).await;
        }
        start.elapsed()
    })
}

fn raw_sample(r: &mut RawRig, n: usize) -> Vec<Duration> {
    let rt = r.rt.handle().clone();
    rt.block_on(async {
        for i in 0..200u64 {
            raw_round_trip(r, &i.to_le_bytes()).await;
        }
        let mut v = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            raw_round_trip(r, &i.to_le_bytes()).await;
            v.push(t.elapsed());
        }
        v.sort_unstable();
        v
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/oslo")
}

fn rabbit_url(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => format!("rabbit://{rest}"),
        None => url.to_owned(),
    }
}

/// oslo.messaging's client: `count` sequential calls to `server` on
/// `topic`, latencies in microseconds, sorted.
fn python_sample(
    python: &str,
    url: &str,
    topic: &str,
    server: &str,
    count: usize,
) -> Option<Vec<f64>> {
    let steps = serde_json::json!([{
        "op": "bench", "topic": topic, "server": server, "method": "echo",
        "args": {"n": 1}, "version": "2.0", "count": count, "warmup": 100, "timeout": 30,
    }]);
    let out = Command::new(python)
        .arg(scripts().join("oslo_client.py"))
        .args(["--url", &rabbit_url(url), "--steps", &steps.to_string()])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let lat = v[0]["latencies_us"].as_array()?;
    Some(lat.iter().filter_map(serde_json::Value::as_f64).collect())
}

/// An oslo.messaging server (`oslo_server.py`) on `topic`, until dropped.
struct PythonServer(std::process::Child);

impl PythonServer {
    fn start(python: &str, url: &str, topic: &str) -> Option<PythonServer> {
        use std::io::BufRead;
        let mut child = Command::new(python)
            .arg(scripts().join("oslo_server.py"))
            .args([
                "--url",
                &rabbit_url(url),
                "--topic",
                topic,
                "--servers",
                "py1",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).ok()?;
        line.contains("ready").then_some(PythonServer(child))
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn pct_f(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let brokers = brokers();
    if brokers.is_empty() {
        println!(
            "rpc_amqp: skipped, no broker (set WARREN_TEST_AMQP_URL, or WARREN_BENCH_AMQP_URLS=name=url;name=url)"
        );
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("rpc_amqp");
        g.sample_size(20)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1));
        g.throughput(Throughput::Elements(1));
        let base = inproc_rig();
        g.bench_function("baseline_call_inproc", |b| {
            b.iter_custom(|n| calls(&base, n))
        });
        for (name, url) in &brokers {
            let mut raw = raw_rig(url);
            g.bench_function(format!("baseline_raw_lapin_round_trip_{name}"), |b| {
                b.iter_custom(|n| raw_calls(&mut raw, n))
            });
            let r = amqp_rig(url);
            g.bench_function(format!("call_amqp_{name}"), |b| {
                b.iter_custom(|n| calls(&r, n))
            });
        }
        g.finish();
    }
    c.final_summary();

    println!();
    println!("== rpc_amqp: own sample ({SAMPLE} sequential calls each; Python: {PY_SAMPLE}) ==");
    let base = sample(&inproc_rig(), SAMPLE * 5);
    let (b50, b99) = (percentile(&base, 0.5), percentile(&base, 0.99));
    println!(
        "baseline: Rust call inproc              p50 {:>8.1} us   p99 {:>8.1} us",
        us(b50),
        us(b99)
    );
    let python = std::env::var("WARREN_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    for (name, url) in &brokers {
        let raw = raw_sample(&mut raw_rig(url), SAMPLE);
        let (r50, r99) = (percentile(&raw, 0.5), percentile(&raw, 0.99));
        println!(
            "{name}: baseline: bare lapin round trip p50 {:>8.1} us   p99 {:>8.1} us",
            us(r50),
            us(r99)
        );
        let r = amqp_rig(url);
        let s = sample(&r, SAMPLE);
        let (p50, p99) = (percentile(&s, 0.5), percentile(&s, 0.99));
        println!(
            "{name}: Rust client -> Rust server       p50 {:>8.1} us   p99 {:>8.1} us   ({:.2}x the bare round trip's p50; {:.0}x inproc)",
            us(p50),
            us(p99),
            p50.as_secs_f64() / r50.as_secs_f64(),
            p50.as_secs_f64() / b50.as_secs_f64()
        );
        let Some(python) = &python else {
            println!("{name}: Python figures skipped (WARREN_TEST_PYTHON is not set)");
            continue;
        };
        match python_sample(python, url, &r.topic, "b1", PY_SAMPLE) {
            Some(v) if !v.is_empty() => println!(
                "{name}: oslo client -> Rust server       p50 {:>8.1} us   p99 {:>8.1} us   ({:.1}x the Rust client's p50)",
                pct_f(&v, 0.5),
                pct_f(&v, 0.99),
                pct_f(&v, 0.5) / us(p50)
            ),
            _ => println!("{name}: oslo client -> Rust server: the Python client failed"),
        }
        let py_topic = format!("{}-py", r.topic);
        match PythonServer::start(python, url, &py_topic) {
            Some(server) => {
                match python_sample(python, url, &py_topic, "py1", PY_SAMPLE) {
                    Some(v) if !v.is_empty() => println!(
                        "{name}: oslo client -> oslo server       p50 {:>8.1} us   p99 {:>8.1} us",
                        pct_f(&v, 0.5),
                        pct_f(&v, 0.99)
                    ),
                    _ => println!("{name}: oslo client -> oslo server: the Python client failed"),
                }
                drop(server);
            }
            None => println!("{name}: oslo server did not start"),
        }
    }
}
