//! Notifications with listener pools and a filter.
//!
//! A volume service sends `info` and `error` notifications. Two listeners
//! form the pool `billing` (they share the notifications: each goes to one
//! of them); a third listener, pool `audit`, gets its own copy of every
//! notification but, through a filter, handles only errors about volumes.
//!
//! Run: `cargo run --example notifications`

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;
use warren::rpc::{
    Context, InprocTransport, Notification, NotificationEndpoint, NotificationFilter,
    NotificationListener, NotificationListenerOptions, Notifier, Target, Transport,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let transport: Arc<dyn Transport> = Arc::new(InprocTransport::new(warren::Broker::new()));
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Notification)>();

    let report = |who: &'static str| {
        let tx = seen_tx.clone();
        move |n: Notification| {
            let _ = tx.send((who.to_owned(), n));
            async {}
        }
    };

    // The billing pool: two listeners sharing the work.
    let billing = |who: &'static str| {
        NotificationListener::with_options(
            transport.clone(),
            vec![Target::new("notifications")],
            vec![NotificationEndpoint::new()
                .info(report(who))
                .error(report(who))],
            NotificationListenerOptions::default().with_pool("billing"),
        )
    };
    let billing_a = billing("billing-a");
    let billing_b = billing("billing-b");

    // The audit pool: every notification, but only volume errors handled.
    let volume_errors = NotificationFilter::builder()
        .event_type(r"^volume\.")
        .publisher_id(r"^volume\.")
        .build()?;
    let audit = NotificationListener::with_options(
        transport.clone(),
        vec![Target::new("notifications")],
        vec![NotificationEndpoint::new()
            .with_filter(volume_errors)
            .error(report("audit"))],
        NotificationListenerOptions::default().with_pool("audit"),
    );
    for l in [&billing_a, &billing_b, &audit] {
        l.start().await?;
    }

    let notifier = Notifier::new(transport.clone(), "volume.host1");
    let ctx = Context::new()
        .with("project_id", "demo")
        .with("request_id", "req-1");
    for i in 0..4 {
        notifier
            .info(
                &ctx,
                "volume.create.end",
                &json!({"volume_id": format!("vol-{i}"), "size": 10}),
            )
            .await?;
    }
    notifier
        .error(
            &ctx,
            "volume.create.error",
            &json!({"volume_id": "vol-9", "reason": "no space"}),
        )
        .await?;
    // Not about volumes: the audit filter drops it.
    notifier
        .prepare("compute.host3")
        .error(&ctx, "compute.instance.error", &json!({"instance": "i-1"}))
        .await?;

    // 6 notifications for the billing pool, 1 for audit.
    for _ in 0..7 {
        let Some((who, n)) = seen.recv().await else {
            break;
        };
        println!(
            "{who:<10} {:<6} {:<24} from {:<14} {}",
            n.priority.as_str(),
            n.event_type,
            n.publisher_id,
            n.payload
        );
    }
    for l in [&billing_a, &billing_b, &audit] {
        l.stop().await;
    }
    println!(
        "billing-a handled {}, billing-b {}, audit received {} and handled {}",
        billing_a.stats().dispatched,
        billing_b.stats().dispatched,
        audit.stats().received,
        audit.stats().dispatched
    );
    Ok(())
}
