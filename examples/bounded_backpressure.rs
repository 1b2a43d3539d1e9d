//! Bounded queues and their overflow policies. A fast producer and a slow
//! consumer: with `block` the producer waits for room (in-process
//! back-pressure, warren's extension); with `drop-head` the oldest messages go
//! (dead-lettered here, so they are not lost silently); with `reject-publish`
//! the new message is refused and the publisher is told.
//!
//! Run: `cargo run --example bounded_backpressure`

use std::thread;
use std::time::{Duration, Instant};

use warren::{Broker, ConsumeOptions, Overflow, QueueDeclareOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::new();

    // 1. block: the producer can never be more than 10 messages ahead.
    broker.declare_queue(
        "frames",
        QueueDeclareOptions::default()
            .with_max_length(10)
            .with_overflow(Overflow::Block),
    )?;
    let slow = broker.consume(
        "frames",
        ConsumeOptions {
            prefetch: 1,
            ..Default::default()
        },
    )?;
    let consumer = thread::spawn(move || {
        for _ in 0..50 {
            if let Ok(d) = slow.recv() {
                thread::sleep(Duration::from_millis(2)); // a slow consumer, for the demo
                d.ack();
            }
        }
    });
    let start = Instant::now();
    for i in 0..50u32 {
        broker.publish("", "frames", i.to_be_bytes().to_vec())?; // waits while the queue is full
        let ready = broker.queue_stats("frames")?.ready;
        assert!(ready <= 10);
    }
    consumer.join().ok();
    println!(
        "block: 50 messages through a 10-message queue in {:?}, never more than 10 waiting",
        start.elapsed()
    );

    // 2. drop-head with a dead-letter queue: the oldest go to `overflowed`.
    broker.declare_queue("overflowed", QueueDeclareOptions::default())?;
    broker.declare_queue(
        "latest",
        QueueDeclareOptions::default()
            .with_max_length(3)
            .with_dead_letter("", Some("overflowed")),
    )?;
    for i in 0..5u8 {
        broker.publish("", "latest", vec![b'0' + i])?;
    }
    let stats = broker.queue_stats("latest")?;
    println!(
        "drop-head: 'latest' keeps {} messages, dropped {} (dead-lettered to 'overflowed': {})",
        stats.ready,
        stats.dropped,
        broker.queue_stats("overflowed")?.ready
    );

    // 3. reject-publish: the publisher learns the queue refused the message.
    broker.declare_queue(
        "strict",
        QueueDeclareOptions::default()
            .with_max_length(1)
            .with_overflow(Overflow::RejectPublish),
    )?;
    let first = broker.publish("", "strict", "one")?;
    let second = broker.publish("", "strict", "two")?;
    println!(
        "reject-publish: first rejected? {}, second rejected? {}",
        first.is_rejected(),
        second.is_rejected()
    );

    // 4. try_publish never waits: a full `block` queue hands the message back.
    broker.declare_queue(
        "tiny",
        QueueDeclareOptions::default()
            .with_max_length(1)
            .with_overflow(Overflow::Block),
    )?;
    broker.try_publish("", "tiny", "fits")?;
    match broker.try_publish("", "tiny", "does not fit") {
        Err(warren::PublishError::Full(message)) => {
            println!(
                "try_publish: full, got back {:?}",
                String::from_utf8_lossy(&message.body)
            )
        }
        other => println!("try_publish: unexpected {other:?}"),
    }
    Ok(())
}
