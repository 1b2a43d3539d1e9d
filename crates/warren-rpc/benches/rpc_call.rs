//! In-process RPC: `call` round trips (1 and 16 concurrent callers) and
//! casts, against a raw request/response ping-pong over two crossbeam
//! channels between two threads, measured in the same run.
//!
//! Besides criterion's figures, prints p50 / p99 from its own sample of
//! sequential calls, calls/s at 1 and 16 callers, casts/s, and the ratios
//! to the ping-pong baseline; on a current-thread and a multi-thread
//! runtime, with oslo's envelope (the default) and with bare bodies
//! (`InprocTransport::with_envelope(false)`). The sample is taken in
//! interleaved rounds (a slice of each configuration and of the baseline in
//! turn), so that the machine's swings from minute to minute fall on all of
//! them alike.
//!
//! `cargo bench -p warren-rpc --bench rpc_call -- zzznomatch` skips
//! criterion's part and prints only that report.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use serde::{Deserialize, Serialize};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Notify;
use warren_core::Broker;
use warren_rpc::{
    Context, Endpoint, HandlerError, InprocTransport, RpcClient, RpcServer, Target, Transport,
};

#[derive(Serialize, Deserialize)]
struct Req {
    n: u64,
}

const SAMPLE: usize = 20_000;
/// Interleaved rounds the sample is taken in.
const ROUNDS: usize = 10;

/// A server ("echo" returns n + 1, "tick" counts casts) and a client.
struct Rig {
    rt: Runtime,
    client: RpcClient,
    ticks: Arc<AtomicU64>,
    ticked: Arc<Notify>,
    _server: RpcServer,
}

/// The runtime and body layouts measured: (name, multi-thread runtime,
/// oslo's envelope). `bare`: `InprocTransport::with_envelope(false)`.
const RIGS: [(&str, bool, bool); 4] = [
    ("current_thread", false, true),
    ("multi_thread", true, true),
    ("current_thread_bare", false, false),
    ("multi_thread_bare", true, false),
];

fn rig(multi_thread: bool, envelope: bool) -> Rig {
    let rt = if multi_thread {
        Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        Builder::new_current_thread().enable_all().build()
    }
    .expect("runtime");
    let ticks = Arc::new(AtomicU64::new(0));
    let ticked = Arc::new(Notify::new());
    let (server, client) = rt.block_on(async {
        let t: Arc<dyn Transport> =
            Arc::new(InprocTransport::new(Broker::new()).with_envelope(envelope));
        let (tk, tn) = (ticks.clone(), ticked.clone());
        let ep = Endpoint::new()
            .method("echo", |_c: Context, r: Req| async move {
                Ok::<_, HandlerError>(r.n + 1)
            })
            .method("tick", move |_c: Context, _r: Req| {
                tk.fetch_add(1, Ordering::Release);
                tn.notify_one();
                async { Ok::<_, HandlerError>(()) }
            });
        let server = RpcServer::new(t.clone(), Target::new("bench").with_server("b1"), vec![ep]);
        server.start().await.expect("server");
        let client = RpcClient::new(t, Target::new("bench").with_server("b1"));
        (server, client)
    });
    Rig {
        rt,
        client,
        ticks,
        ticked,
        _server: server,
    }
}

async fn one_call(client: &RpcClient, ctx: &Context, n: u64) {
    let r: u64 = client.call(ctx, "echo", &Req { n }).await.expect("call");
    assert_eq!(r, n + 1);
}

/// `total` calls spread over `callers` tasks; returns the elapsed time.
fn concurrent_calls(rig: &Rig, callers: u64, total: u64) -> Duration {
    let per = (total / callers).max(1);
    rig.rt.block_on(async {
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..callers {
            let client = rig.client.clone();
            set.spawn(async move {
                let ctx = Context::new().with("request_id", "req-bench");
                for i in 0..per {
                    one_call(&client, &ctx, c * per + i).await;
                }
            });
        }
        while set.join_next().await.is_some() {}
        start.elapsed()
    })
}

/// `n` casts, then wait until the server handled all of them.
fn casts(rig: &Rig, n: u64) -> Duration {
    rig.rt.block_on(async {
        let ctx = Context::new();
        let target = rig.ticks.load(Ordering::Acquire) + n;
        let start = Instant::now();
        for i in 0..n {
            rig.client
                .cast(&ctx, "tick", &Req { n: i })
                .await
                .expect("cast");
        }
        while rig.ticks.load(Ordering::Acquire) < target {
            rig.ticked.notified().await;
        }
        start.elapsed()
    })
}

/// A request/response ping-pong over two crossbeam channels.
struct PingPong {
    req: crossbeam_channel::Sender<u64>,
    resp: crossbeam_channel::Receiver<u64>,
    worker: Option<thread::JoinHandle<()>>,
}

impl PingPong {
    fn new() -> PingPong {
        let (req, req_rx) = crossbeam_channel::unbounded::<u64>();
        let (resp_tx, resp) = crossbeam_channel::unbounded::<u64>();
        let worker = thread::spawn(move || {
            while let Ok(n) = req_rx.recv() {
                if resp_tx.send(n + 1).is_err() {
                    break;
                }
            }
        });
        PingPong {
            req,
            resp,
            worker: Some(worker),
        }
    }

    fn round_trip(&self, n: u64) -> u64 {
        self.req.send(n).expect("send");
        self.resp.recv().expect("recv")
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let (dead, _) = crossbeam_channel::unbounded();
        self.req = dead;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn criterion_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("rpc_call");
    g.sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));

    let pp = PingPong::new();
    g.bench_function("baseline_crossbeam_ping_pong", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            black_box(pp.round_trip(n))
        })
    });
    drop(pp);

    for (name, multi, envelope) in RIGS {
        let r = rig(multi, envelope);
        g.bench_function(format!("call_1_caller_{name}"), |b| {
            b.iter_custom(|iters| concurrent_calls(&r, 1, iters))
        });
        g.bench_function(format!("call_16_callers_{name}"), |b| {
            b.iter_custom(|iters| concurrent_calls(&r, 16, iters.max(16)))
        });
        g.bench_function(format!("cast_{name}"), |b| {
            b.iter_custom(|iters| casts(&r, iters))
        });
    }
    g.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `n` sequential calls from one task of the runtime (a worker thread, on
/// the multi-thread runtime), each timed, after a short warm-up.
fn sample_calls(rig: &Rig, n: usize) -> Vec<Duration> {
    let client = rig.client.clone();
    let task = rig.rt.spawn(async move {
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
        v
    });
    rig.rt.block_on(task).expect("sampling task")
}

fn sample_ping_pong(pp: &PingPong, n: usize) -> Vec<Duration> {
    for i in 0..200 {
        pp.round_trip(i);
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        black_box(pp.round_trip(i));
        v.push(t.elapsed());
    }
    v
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn own_report() {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!(
        "== rpc_call: own sample ({SAMPLE} sequential round trips each, in {ROUNDS} interleaved rounds) =="
    );
    let rigs: Vec<(&str, Rig)> = RIGS
        .iter()
        .map(|&(name, multi, envelope)| (name, rig(multi, envelope)))
        .collect();
    let pp = PingPong::new();
    let mut pp_sample = Vec::with_capacity(SAMPLE);
    let mut samples = vec![Vec::with_capacity(SAMPLE); rigs.len()];
    for _ in 0..ROUNDS {
        pp_sample.extend(sample_ping_pong(&pp, SAMPLE / ROUNDS));
        for ((_, r), s) in rigs.iter().zip(&mut samples) {
            s.extend(sample_calls(r, SAMPLE / ROUNDS));
        }
    }
    pp_sample.sort_unstable();
    let (pp50, pp99) = (percentile(&pp_sample, 0.50), percentile(&pp_sample, 0.99));
    println!(
        "baseline crossbeam ping-pong     p50 {:>7.2} us   p99 {:>7.2} us   {:>10.0} round trips/s",
        us(pp50),
        us(pp99),
        per_sec(pp_sample.len() as u64, pp_sample.iter().sum())
    );
    for ((name, r), mut s) in rigs.iter().zip(samples) {
        s.sort_unstable();
        let (p50, p99) = (percentile(&s, 0.50), percentile(&s, 0.99));
        let one = per_sec(SAMPLE as u64, concurrent_calls(r, 1, SAMPLE as u64));
        let sixteen = per_sec(SAMPLE as u64, concurrent_calls(r, 16, SAMPLE as u64));
        let cast = per_sec(100_000, casts(r, 100_000));
        println!(
            "call ({name:<19})   p50 {:>7.2} us   p99 {:>7.2} us   ratio to ping-pong: p50 {:.2}x, p99 {:.2}x",
            us(p50),
            us(p99),
            p50.as_secs_f64() / pp50.as_secs_f64(),
            p99.as_secs_f64() / pp99.as_secs_f64()
        );
        println!(
            "    calls/s: 1 caller {one:>10.0}   16 callers {sixteen:>10.0}   casts/s {cast:>10.0}"
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    own_report();
}
