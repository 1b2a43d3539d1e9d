//! RabbitMQ tutorial 5 ("Topics"), in process: logs routed by
//! `<facility>.<severity>` to consumers that bind with wildcard patterns.
//!
//! Run: `cargo run --example topic_logs`

use std::time::Duration;

use warren::{Broker, ConsumeOptions, ExchangeKind, FieldTable, QueueDeclareOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::new();
    broker.declare_exchange("topic_logs", ExchangeKind::Topic, Default::default())?;

    // Each receiver declares a server-named, exclusive queue and binds its patterns.
    let mut receivers = Vec::new();
    for patterns in [
        vec!["#"],
        vec!["kern.*"],
        vec!["*.critical"],
        vec!["kern.*", "*.critical"],
    ] {
        let q = broker.declare_queue(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
        )?;
        for p in &patterns {
            broker.bind_queue(&q.queue, "topic_logs", p, &FieldTable::new())?;
        }
        let consumer = broker.consume(
            &q.queue,
            ConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
        )?;
        receivers.push((patterns.join(" "), consumer));
    }

    for key in [
        "kern.critical",
        "kern.info",
        "auth.critical",
        "cron.warning",
        "anonymous.info",
    ] {
        let routed = broker
            .publish("topic_logs", key, format!("a {key} message").into_bytes())?
            .routed;
        println!("sent {key:<15} -> {routed} queue(s)");
    }

    for (patterns, consumer) in &receivers {
        let mut got = Vec::new();
        while let Ok(d) = consumer.recv_timeout(Duration::from_millis(50)) {
            got.push(d.routing_key().to_owned());
        }
        println!("[{patterns:^22}] received {got:?}");
    }
    Ok(())
}
