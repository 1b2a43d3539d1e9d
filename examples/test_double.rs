//! Unit-testing a service that uses warren-rpc, with `inproc://`.
//!
//! The code under test is `boot_instance` of a nova-like API service: it
//! asks the scheduler for a host (an RPC *call*), tells that compute host to
//! spawn the instance (a *cast*), and sends a notification. The test gives it
//! a fresh in-process broker, plays the scheduler with a fake endpoint that
//! records what it was asked, and reads the cast and the notification
//! straight off the broker's queues, decoding oslo's envelope: it asserts on
//! exactly what was sent and received, with no RabbitMQ and no sleeping.
//!
//! In a real project the `check_boot_instance` function below would be a
//! `#[tokio::test]`. Run: `cargo run --example test_double`

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warren::rpc::{
    Context, Endpoint, HandlerError, InprocTransport, Notifier, PrepareOptions, RpcClient,
    RpcError, RpcServer, Target, Transport, WireNotification, WireRequest,
};
use warren::{Broker, GetOptions, QueueDeclareOptions};

// ---- the code under test ------------------------------------------------

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct SelectDestinations {
    flavor: String,
    num_instances: u32,
}

/// A nova-like API service: knows the scheduler and compute topics.
struct ComputeApi {
    scheduler: RpcClient,
    compute: RpcClient,
    notifier: Notifier,
}

impl ComputeApi {
    fn new(transport: Arc<dyn Transport>) -> ComputeApi {
        ComputeApi {
            scheduler: RpcClient::new(transport.clone(), Target::new("scheduler")),
            compute: RpcClient::new(transport.clone(), Target::new("compute")),
            notifier: Notifier::new(transport, "api.host0"),
        }
    }

    async fn boot_instance(
        &self,
        ctx: &Context,
        name: &str,
        flavor: &str,
    ) -> Result<String, RpcError> {
        let hosts: Vec<String> = self
            .scheduler
            .call(
                ctx,
                "select_destinations",
                &SelectDestinations {
                    flavor: flavor.into(),
                    num_instances: 1,
                },
            )
            .await?;
        let host = hosts.into_iter().next().unwrap_or_else(|| "nowhere".into());
        self.compute
            .prepare(PrepareOptions::new().with_server(host.as_str()))
            .cast(
                ctx,
                "build_and_run_instance",
                &json!({"name": name, "flavor": flavor}),
            )
            .await?;
        self.notifier
            .info(
                ctx,
                "compute.instance.create.start",
                &json!({"name": name, "host": host}),
            )
            .await?;
        Ok(host)
    }
}

// ---- the test -----------------------------------------------------------

async fn check_boot_instance() -> Result<(), Box<dyn std::error::Error>> {
    // A broker of our own: tests run in parallel without seeing each other.
    let broker = Broker::new();
    let transport: Arc<dyn Transport> = Arc::new(InprocTransport::new(broker.clone()));

    // The scheduler double: records each request, answers "host7".
    let (asked_tx, mut asked) = mpsc::unbounded_channel();
    let fake_scheduler = Endpoint::new().method(
        "select_destinations",
        move |ctx: Context, req: SelectDestinations| {
            let _ = asked_tx.send((ctx, req));
            async { Ok::<_, HandlerError>(vec!["host7"]) }
        },
    );
    let scheduler = RpcServer::new(
        transport.clone(),
        Target::new("scheduler").with_server("sched-1"),
        vec![fake_scheduler],
    );
    scheduler.start().await?;

    // No compute service runs: its host queue is declared (and bound, as a
    // compute server would) so that the cast waits there for us to read.
    broker.declare_exchange("openstack", warren::ExchangeKind::Topic, Default::default())?;
    broker.declare_queue("compute.host7", QueueDeclareOptions::default())?;
    broker.bind_queue(
        "compute.host7",
        "openstack",
        "compute.host7",
        &Default::default(),
    )?;

    // Exercise the code under test.
    let api = ComputeApi::new(transport.clone());
    let ctx = Context::new()
        .with("user_id", "u1")
        .with("project_id", "p1")
        .with("request_id", "req-42");
    let host = api.boot_instance(&ctx, "web-1", "m1.small").await?;
    assert_eq!(host, "host7");

    // What the scheduler received: the arguments, and the context unchanged.
    let (seen_ctx, req) = asked.try_recv()?;
    assert_eq!(
        req,
        SelectDestinations {
            flavor: "m1.small".into(),
            num_instances: 1
        }
    );
    assert_eq!(seen_ctx, ctx);

    // What was cast to the compute host, as it travelled.
    let delivery = broker
        .get("compute.host7", GetOptions::default())?
        .ok_or("no cast")?;
    let cast = WireRequest::decode(delivery.body())?;
    delivery.ack();
    assert_eq!(cast.message.method, "build_and_run_instance");
    let args: Value = serde_json::from_str(cast.message.args.get())?;
    assert_eq!(args, json!({"name": "web-1", "flavor": "m1.small"}));
    assert_eq!(cast.ctx.request_id(), Some("req-42"));
    assert!(cast.msg_id.is_none(), "a cast expects no reply");

    // The notification waits in the default queue of its topic and priority.
    let delivery = broker
        .get("notifications.info", GetOptions::default())?
        .ok_or("no notification")?;
    let note = WireNotification::decode(delivery.body())?;
    delivery.ack();
    assert_eq!(note.event_type, "compute.instance.create.start");
    assert_eq!(note.publisher_id, "api.host0");
    assert_eq!(note.priority, "INFO");

    // Failures of the dependency reach the code under test as typed errors.
    scheduler.stop().await;
    let failing = Endpoint::new().method("select_destinations", |_c: Context, _r: Value| async {
        Err::<Vec<String>, _>(
            HandlerError::new("NoValidHost", "No valid host was found.").expected(),
        )
    });
    let scheduler = RpcServer::new(
        transport.clone(),
        Target::new("scheduler").with_server("sched-1"),
        vec![failing],
    );
    scheduler.start().await?;
    match api.boot_instance(&ctx, "web-2", "m1.huge").await {
        Err(RpcError::Remote(e)) => assert_eq!(e.class(), "NoValidHost"),
        other => return Err(format!("expected NoValidHost, got {other:?}").into()),
    }
    assert_eq!(
        broker.queue_stats("compute.host7")?.ready,
        0,
        "nothing cast after a failure"
    );
    scheduler.stop().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    check_boot_instance().await?;
    println!("boot_instance: every assertion held");
    Ok(())
}
