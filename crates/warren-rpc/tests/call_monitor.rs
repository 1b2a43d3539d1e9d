//! Call-monitor heartbeats (oslo's `call_monitor_timeout`): a client that
//! sets one sends it with the request (`_timeout`); the server heartbeats
//! every half of it while the handler runs; the client fails the call once
//! neither the reply nor a heartbeat came for that long, and the call's
//! timeout still bounds it as a whole.
//!
//! The in-process tests run on tokio's paused clock, as `lifecycle.rs`
//! does: time moves only when every task waits, so a handler that "takes
//! ten minutes" sleeps ten virtual minutes, and the instants at which calls
//! end are exact. The same behaviours then run on every transport on a
//! real clock, driven by events.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use warren_rpc::{
    Context, Endpoint, HandlerError, ListenOptions, PrepareOptions, RpcClient, RpcError, RpcServer,
    Target, Transport,
};

use common::{fresh, within};

const MINUTE: Duration = Duration::from_secs(60);

/// `slow` sleeps for `minutes` (on the paused clock: virtual minutes). The
/// sleep is the handler's work, the slow call under test, not a test
/// waiting for something to settle.
fn sleepy() -> Endpoint {
    Endpoint::new().method("slow", |_ctx: Context, a: serde_json::Value| async move {
        let minutes = a["minutes"].as_u64().unwrap_or(0);
        tokio::time::sleep(minutes as u32 * MINUTE).await;
        Ok::<_, HandlerError>("done")
    })
}

/// A started server on topic `slow`, server `s1`, with [`sleepy`].
async fn slow_server(t: &Arc<dyn Transport>) -> RpcServer {
    let s = RpcServer::new(
        t.clone(),
        Target::new("slow").with_server("s1"),
        vec![sleepy()],
    );
    s.start().await.unwrap();
    s
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_slow_call_alive_past_its_call_monitor_timeout() {
    let (t, _) = fresh();
    let s = slow_server(&t).await;
    let client = RpcClient::new(t.clone(), Target::new("slow"))
        .with_timeout(60 * MINUTE)
        .with_call_monitor_timeout(MINUTE);
    let before = Instant::now();
    let r: String = client
        .call(&Context::new(), "slow", &json!({"minutes": 10}))
        .await
        .unwrap();
    assert_eq!(r, "done");
    assert!(before.elapsed() >= 10 * MINUTE, "the handler took its time");
    // Every 30 s for 10 minutes.
    assert!(s.stats().heartbeats >= 19, "{:?}", s.stats());
    assert_eq!(t.stats().heartbeats_received, s.stats().heartbeats);
    assert_eq!(t.stats().late_replies, 0);

    // Without a call-monitor timeout: no heartbeats.
    let sent = s.stats().heartbeats;
    let plain = client.prepare(PrepareOptions::new().without_call_monitor_timeout());
    let r: String = plain
        .call(&Context::new(), "slow", &json!({"minutes": 3}))
        .await
        .unwrap();
    assert_eq!(r, "done");
    assert_eq!(s.stats().heartbeats, sent);
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_timeout_still_bounds_a_heartbeating_call() {
    let (t, _) = fresh();
    let s = slow_server(&t).await;
    let client = RpcClient::new(t, Target::new("slow"))
        .with_timeout(10 * MINUTE)
        .with_call_monitor_timeout(MINUTE);
    let before = Instant::now();
    let e = client
        .call::<_, String>(&Context::new(), "slow", &json!({"minutes": 60}))
        .await
        .unwrap_err();
    match e {
        RpcError::Timeout { timeout, .. } => assert_eq!(timeout, 10 * MINUTE),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(before.elapsed(), 10 * MINUTE);
    drop(s);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_dies_mid_call_fails_it_after_the_call_monitor_timeout() {
    let (t, broker) = fresh();
    let target = Target::new("gone").with_server("s1");
    let client = RpcClient::new(t.clone(), Target::new("gone"))
        .with_timeout(60 * MINUTE)
        .with_call_monitor_timeout(MINUTE);
    // The server's queues exist before the call is sent.
    let server = common::another(&broker);
    let mut listener = server
        .listen(&target, ListenOptions { prefetch: 1 })
        .await
        .unwrap();
    let before = Instant::now();
    let call = tokio::spawn(async move {
        client
            .call::<_, String>(&Context::new(), "slow", &json!({}))
            .await
    });
    let taken = within(listener.recv()).await.unwrap();
    assert_eq!(taken.call_monitor_timeout, Some(MINUTE));
    drop(taken);
    let e = call.await.unwrap().unwrap_err();
    match e {
        RpcError::Timeout { timeout, .. } => assert_eq!(timeout, MINUTE),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // After the call-monitor timeout, long before the timeout.
    assert_eq!(before.elapsed(), MINUTE);
    listener.close().await;
}

each_transport! {
    // Real clock: the handler waits until the server has sent three
    // heartbeats (half a second apart: 1.5 s, past the 1 s call-monitor
    // timeout), then answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_keep_a_slow_call_alive(rig) {
        let topic = rig.name("hb");
        let gate = Arc::new(Semaphore::new(0));
        let g = gate.clone();
        let ep = Endpoint::new().method("wait", move |_ctx: Context, (): ()| {
            let g = g.clone();
            async move {
                let _ = g.acquire().await.map(|p| p.forget());
                Ok::<_, HandlerError>("done")
            }
        });
        let s = Arc::new(RpcServer::new(rig.transport(), Target::new(&topic).with_server("s1"), vec![ep]));
        s.start().await.unwrap();
        let client_t = rig.another();
        let client = RpcClient::new(client_t.clone(), Target::new(&topic))
            .with_timeout(common::PATIENCE)
            .with_call_monitor_timeout(Duration::from_secs(1));
        let call = tokio::spawn(async move { client.call::<_, String>(&Context::new(), "wait", &()).await });
        within(s.wait_for_heartbeats(3)).await;
        gate.add_permits(1);
        assert_eq!(within(call).await.unwrap().unwrap(), "done");
        assert!(client_t.stats().heartbeats_received >= 3);
        s.stop().await;
    }
}

each_transport! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_to_a_server_that_died_fails_after_the_call_monitor_timeout(rig) {
        let topic = rig.name("dead");
        let target = Target::new(&topic).with_server("s1");
        let client = RpcClient::new(rig.transport(), Target::new(&topic))
            .with_timeout(common::PATIENCE)
            .with_call_monitor_timeout(Duration::from_secs(1));
        // The server's queues exist before the call is sent.
        let server_t = rig.another();
        let mut listener = server_t.listen(&target, ListenOptions { prefetch: 1 }).await.unwrap();
        let call = tokio::spawn(async move { client.call::<_, String>(&Context::new(), "x", &()).await });
        let taken = within(listener.recv()).await.unwrap();
        assert_eq!(taken.call_monitor_timeout, Some(Duration::from_secs(1)));
        drop(taken);
        // The timeout it reports is the call monitor's: that one ran out,
        // not the call's.
        match within(call).await.unwrap().unwrap_err() {
            RpcError::Timeout { timeout, .. } => assert_eq!(timeout, Duration::from_secs(1)),
            other => panic!("expected a timeout, got {other:?}"),
        }
        listener.close().await;
    }
}
