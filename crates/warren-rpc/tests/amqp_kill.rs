//! The AMQP transport comes back after the broker itself closes its
//! connections, under load: with `WARREN_TEST_AMQP_KILL_CMD`, a shell command
//! that drops the client connections of this process (the test appends the
//! text that identifies them, `:<pid> (warren-rpc)`, found in their
//! connection names; a command may ignore it and drop them all), e.g.
//! `tests/python/oslo/rabbitmq.sh close-connections` (RabbitMQ's
//! `rabbitmqctl close_connection`), or a restart of `warren serve`.
//!
//! A test binary of its own: nothing else of this process is connected
//! while it runs. Skipped, with a message, without `WARREN_TEST_AMQP_URL` or
//! the command.
#![cfg(feature = "amqp")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use warren_rpc::{
    AmqpTransport, Context, Endpoint, HandlerError, RpcClient, RpcServer, Target, Transport,
};

use common::{amqp_url, unique_suffix, within, Load};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_transport_comes_back_after_the_broker_closes_its_connections() {
    let Some(url) = amqp_url("the_transport_comes_back_after_the_broker_closes_its_connections")
    else {
        return;
    };
    let Ok(kill) = std::env::var("WARREN_TEST_AMQP_KILL_CMD") else {
        eprintln!(
            "SKIPPED the_transport_comes_back_after_the_broker_closes_its_connections: \
             WARREN_TEST_AMQP_KILL_CMD is not set (e.g. \
             'tests/python/oslo/rabbitmq.sh close-connections')"
        );
        return;
    };
    let topic = format!("kill{}", unique_suffix());
    let fast = if url.contains('?') { "&" } else { "?" };
    let url = format!("{url}{fast}retry_interval=0.1&retry_backoff=0.1&interval_max=0.5");
    let server_t: Arc<dyn Transport> = Arc::new(AmqpTransport::from_url(&url).unwrap());
    let client_t: Arc<dyn Transport> = Arc::new(AmqpTransport::from_url(&url).unwrap());
    let ep = Endpoint::new().method("echo", |_ctx: Context, args: Value| async move {
        Ok::<_, HandlerError>(args)
    });
    let s = RpcServer::new(
        server_t.clone(),
        Target::new(&topic).with_server("s1"),
        vec![ep],
    );
    within(s.start()).await.unwrap();
    let client =
        RpcClient::new(client_t.clone(), Target::new(&topic)).with_timeout(Duration::from_secs(2));
    let load = Load::start(client, 8);
    load.succeeded(200).await;
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{kill} ':{} (warren-rpc)'", std::process::id()))
        .status()
        .await
        .expect("the kill command runs");
    assert!(status.success(), "{kill}: {status}");
    load.succeeded(200).await;
    let (ok, failed) = load.finish().await;
    assert!(ok >= 400, "{ok} calls succeeded, {failed} failed");
    assert!(client_t.stats().reconnects >= 1);
    assert!(server_t.stats().reconnects >= 1);
    s.stop().await;
}
