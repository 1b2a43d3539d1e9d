//! RabbitMQ tutorial 2 ("Work queues") in process: fair dispatch with
//! prefetch 1, explicit acks, and what happens to a task whose worker fails:
//! it is requeued (marked redelivered) and another worker gets it.
//!
//! Run: `cargo run --example work_queue_acks`

use std::thread;

use warren::{Broker, ConsumeOptions, QueueDeclareOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::new();
    broker.declare_queue(
        "task_queue",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    for task in ["easy", "hard....", "crashes", "medium..", "easy"] {
        broker.publish("", "task_queue", task.as_bytes().to_vec())?;
    }

    let mut handles = Vec::new();
    for worker in 0..2 {
        // prefetch 1: a worker gets a new task only after acking the last one.
        let tasks = broker.consume(
            "task_queue",
            ConsumeOptions {
                prefetch: 1,
                ..Default::default()
            },
        )?;
        handles.push(thread::spawn(move || {
            let mut log = Vec::new();
            while let Ok(task) = tasks.recv_timeout(std::time::Duration::from_millis(200)) {
                let body = String::from_utf8_lossy(task.body()).into_owned();
                if body == "crashes" && !task.redelivered() {
                    // Dropping the delivery without an answer requeues it.
                    log.push(format!("worker {worker}: failed on {body:?}, dropped it"));
                    drop(task);
                    continue;
                }
                log.push(format!(
                    "worker {worker}: did {body:?} (redelivered: {})",
                    task.redelivered()
                ));
                task.ack();
            }
            log
        }));
    }
    for h in handles {
        for line in h.join().unwrap_or_default() {
            println!("{line}");
        }
    }
    let stats = broker.queue_stats("task_queue")?;
    println!(
        "ready {}, unacked {}, acked {}",
        stats.ready, stats.unacked, stats.acked
    );
    Ok(())
}
