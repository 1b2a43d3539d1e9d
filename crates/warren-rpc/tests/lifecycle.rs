//! Server lifecycle: the executor bound, stop while calls are in flight,
//! start again.
//!
//! The in-process tests run on a paused clock: a task that sleeps
//! (virtually) runs only once every other task waits. "Release the handlers
//! after an hour" thus means "once nothing else can happen": a server that
//! broke its bound, or a stop that did not wait, would show it before.
//!
//! A paused clock cannot stand in for a network (time would jump while the
//! broker answers), so the same behaviours also run on every transport on a
//! real clock, driven by the handlers' own events.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use warren_rpc::{Context, Endpoint, HandlerError, RpcClient, RpcServer, RpcServerOptions, Target};

use common::{fresh, within, Rig};

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Gauge {
    active: AtomicUsize,
    max_active: AtomicUsize,
    done: AtomicUsize,
}

/// An endpoint whose `work` reports its start, then waits for a permit of
/// `gate`, tracking how many run at once.
fn gated(gate: Arc<Semaphore>, started: mpsc::UnboundedSender<u64>, gauge: Arc<Gauge>) -> Endpoint {
    Endpoint::new().method("work", move |_ctx: Context, a: Value| {
        let gate = gate.clone();
        let started = started.clone();
        let gauge = gauge.clone();
        async move {
            let now = gauge.active.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.max_active.fetch_max(now, Ordering::SeqCst);
            let n = a["n"].as_u64().unwrap_or(0);
            let _ = started.send(n);
            let permit = gate
                .acquire()
                .await
                .map_err(|e| HandlerError::new("Closed", e.to_string()))?;
            permit.forget();
            gauge.active.fetch_sub(1, Ordering::SeqCst);
            gauge.done.fetch_add(1, Ordering::SeqCst);
            Ok::<_, HandlerError>(n * 10)
        }
    })
}

/// Adds `n` permits to `gate` once every other task waits.
///
/// Not a sleep to let things settle: these tests run on tokio's paused clock
/// (`start_paused = true`), which auto-advances only when every task is idle,
/// so this timer fires exactly at the event "nothing else can make progress".
fn release_when_idle(gate: &Arc<Semaphore>, n: usize) {
    let gate = gate.clone();
    tokio::spawn(async move {
        tokio::time::sleep(HOUR).await;
        gate.add_permits(n);
    });
}

#[tokio::test(start_paused = true)]
async fn the_executor_bound_limits_calls_in_flight() {
    let (t, _) = fresh();
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let gauge = Arc::new(Gauge::default());
    let s = RpcServer::with_options(
        t.clone(),
        Target::new("work").with_server("w1"),
        vec![gated(gate.clone(), started_tx, gauge.clone())],
        RpcServerOptions { max_in_flight: 2 },
    );
    s.start().await.unwrap();
    let client = RpcClient::new(t, Target::new("work")).with_timeout(10 * HOUR);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..6u64 {
        let c = client.clone();
        calls.spawn(async move {
            c.call::<_, u64>(&Context::new(), "work", &json!({ "n": n }))
                .await
        });
    }
    release_when_idle(&gate, 6);
    let mut results = Vec::new();
    while let Some(r) = calls.join_next().await {
        results.push(r.unwrap().unwrap());
    }
    results.sort_unstable();
    assert_eq!(results, [0, 10, 20, 30, 40, 50]);
    assert_eq!(
        gauge.max_active.load(Ordering::SeqCst),
        2,
        "at most (and here exactly) 2 at once"
    );
    assert_eq!(s.stats().calls, 6);
    let mut n = 0;
    while started.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 6);
}

#[tokio::test(start_paused = true)]
async fn stop_finishes_the_calls_in_flight_and_start_resumes() {
    let (t, broker) = fresh();
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let gauge = Arc::new(Gauge::default());
    let s = RpcServer::new(
        t.clone(),
        Target::new("work").with_server("w1"),
        vec![gated(gate.clone(), started_tx, gauge.clone())],
    );
    s.start().await.unwrap();
    assert!(s.is_running());
    let client = RpcClient::new(t, Target::new("work")).with_timeout(10 * HOUR);
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..3u64 {
        let c = client.clone();
        calls.spawn(async move {
            c.call::<_, u64>(&Context::new(), "work", &json!({ "n": n }))
                .await
        });
    }
    for _ in 0..3 {
        started.recv().await.unwrap();
    }
    // Three calls run. Stop: it returns only once they are done, which is
    // after the gate opens, which is once nothing else can happen.
    let before = Instant::now();
    release_when_idle(&gate, 3);
    s.stop().await;
    assert!(!s.is_running());
    assert!(
        before.elapsed() >= HOUR,
        "stop returned before the calls could finish"
    );
    assert_eq!(gauge.done.load(Ordering::SeqCst), 3);
    let mut results = Vec::new();
    while let Some(r) = calls.join_next().await {
        results.push(r.unwrap().unwrap());
    }
    results.sort_unstable();
    assert_eq!(results, [0, 10, 20]);

    // Stopped: a cast waits in the shared queue.
    client
        .cast(&Context::new(), "work", &json!({"n": 7}))
        .await
        .unwrap();
    assert_eq!(broker.queue_stats("work").unwrap().ready, 1);
    assert_eq!(s.stats().casts, 0);

    // Started again: it is taken, and calls work.
    gate.add_permits(2);
    s.start().await.unwrap();
    assert_eq!(started.recv().await, Some(7));
    let r: u64 = client
        .call(&Context::new(), "work", &json!({"n": 8}))
        .await
        .unwrap();
    assert_eq!(r, 80);
    s.stop().await;
    assert_eq!(s.stats().casts, 1);
    assert_eq!(s.stats().calls, 4);
    assert_eq!(broker.queue_stats("work").unwrap().ready, 0);
}

each_transport! {
    #[tokio::test]
    async fn stop_and_start_are_idempotent(rig) {
        let t = rig.transport();
        let topic = rig.name("p");
        let ep = Endpoint::new().method("ping", |_ctx: Context, (): ()| async move {
            Ok::<_, HandlerError>("pong")
        });
        let s = RpcServer::new(t.clone(), Target::new(&topic).with_server("p1"), vec![ep]);
        s.stop().await;
        s.start().await.unwrap();
        s.start().await.unwrap();
        let c = RpcClient::new(t, Target::new(&topic));
        for _ in 0..3 {
            let pong: String = within(c.call(&Context::new(), "ping", &())).await.unwrap();
            assert_eq!(pong, "pong");
            s.stop().await;
            s.stop().await;
            assert!(!s.is_running());
            s.start().await.unwrap();
        }
    }
}

/// A server on `topic` with [`gated`] handlers.
fn gated_server(
    rig: &Rig,
    topic: &str,
    max_in_flight: usize,
) -> (
    RpcServer,
    Arc<Semaphore>,
    mpsc::UnboundedReceiver<u64>,
    Arc<Gauge>,
) {
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, started) = mpsc::unbounded_channel();
    let gauge = Arc::new(Gauge::default());
    let s = RpcServer::with_options(
        rig.transport(),
        Target::new(topic).with_server("w1"),
        vec![gated(gate.clone(), started_tx, gauge.clone())],
        RpcServerOptions { max_in_flight },
    );
    (s, gate, started, gauge)
}

each_transport! {
    // Calls start only as earlier ones finish: each time the handlers in
    // flight reach the bound, one is let go, and the next may start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_in_flight_stay_within_the_bound(rig) {
        let topic = rig.name("work");
        let (s, gate, mut started, gauge) = gated_server(&rig, &topic, 2);
        s.start().await.unwrap();
        let client = RpcClient::new(rig.transport(), Target::new(&topic)).with_timeout(common::PATIENCE);
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..6u64 {
            let c = client.clone();
            calls.spawn(async move {
                c.call::<_, u64>(&Context::new(), "work", &json!({ "n": n }))
                    .await
            });
        }
        for i in 0..6 {
            within(started.recv()).await.unwrap();
            // Once two run, the others must wait for one to finish.
            if i >= 1 {
                gate.add_permits(1);
            }
        }
        gate.add_permits(1);
        let mut results = Vec::new();
        while let Some(r) = within(calls.join_next()).await {
            results.push(r.unwrap().unwrap());
        }
        results.sort_unstable();
        assert_eq!(results, [0, 10, 20, 30, 40, 50]);
        assert!(gauge.max_active.load(Ordering::SeqCst) <= 2, "the bound held");
        assert_eq!(s.stats().calls, 6);
        s.stop().await;
    }
}

each_transport! {
    #[tokio::test]
    async fn stop_waits_for_the_calls_in_flight_and_start_resumes(rig) {
        let topic = rig.name("work");
        let (s, gate, mut started, gauge) = gated_server(&rig, &topic, 64);
        s.start().await.unwrap();
        let client = RpcClient::new(rig.transport(), Target::new(&topic)).with_timeout(common::PATIENCE);
        let mut calls = tokio::task::JoinSet::new();
        for n in 0..3u64 {
            let c = client.clone();
            calls.spawn(async move {
                c.call::<_, u64>(&Context::new(), "work", &json!({ "n": n }))
                    .await
            });
        }
        for _ in 0..3 {
            within(started.recv()).await.unwrap();
        }
        // Three calls run: stop must not return before they are done, and
        // they cannot be done before the gate opens.
        {
            let stop = s.stop();
            tokio::pin!(stop);
            tokio::select! {
                biased;
                _ = &mut stop => panic!("stop returned while calls were running"),
                _ = tokio::task::yield_now() => {}
            }
            assert!(!s.is_running());
            gate.add_permits(3);
            within(stop).await;
        }
        assert_eq!(gauge.done.load(Ordering::SeqCst), 3, "stop waited for them");
        let mut results = Vec::new();
        while let Some(r) = within(calls.join_next()).await {
            results.push(r.unwrap().unwrap());
        }
        results.sort_unstable();
        assert_eq!(results, [0, 10, 20]);

        // Stopped: a cast waits in the shared queue.
        client
            .cast(&Context::new(), "work", &json!({"n": 7}))
            .await
            .unwrap();
        assert_eq!(rig.ready(&topic).await, Some(1));
        assert_eq!(s.stats().casts, 0);

        // Started again: it is taken, and calls work.
        gate.add_permits(2);
        s.start().await.unwrap();
        assert_eq!(within(started.recv()).await, Some(7));
        let r: u64 = within(client.call(&Context::new(), "work", &json!({"n": 8})))
            .await
            .unwrap();
        assert_eq!(r, 80);
        s.stop().await;
        assert_eq!(s.stats().casts, 1);
        assert_eq!(s.stats().calls, 4);
        assert_eq!(rig.ready(&topic).await, Some(0));
    }
}
