//! Fast, decoupled messaging between threads: one producer thread, two worker
//! threads sharing a queue (round-robin), acknowledgements, and a fanout of
//! status events to every listener.
//!
//! Run: `cargo run --example inter_thread`

use std::thread;

use warren::{Broker, ConsumeOptions, ExchangeKind, FieldTable, QueueDeclareOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Broker::new();
    broker.declare_queue("work", QueueDeclareOptions::default())?;
    broker.declare_exchange("status", ExchangeKind::Fanout, Default::default())?;
    broker.declare_queue("status.log", QueueDeclareOptions::default())?;
    broker.bind_queue("status.log", "status", "", &FieldTable::new())?;

    let workers: Vec<_> = (0..2)
        .map(|id| {
            let broker = broker.clone();
            let jobs = broker.consume(
                "work",
                ConsumeOptions {
                    prefetch: 8,
                    ..Default::default()
                },
            )?;
            Ok(thread::spawn(move || {
                let mut done = 0;
                // `recv` returns an error once the consumer is cancelled (here:
                // when `main` deletes the queue).
                while let Ok(job) = jobs.recv() {
                    let n: u64 = std::str::from_utf8(job.body())
                        .unwrap_or("0")
                        .parse()
                        .unwrap_or(0);
                    broker
                        .publish(
                            "status",
                            "",
                            format!("worker {id} squared {n} = {}", n * n).into_bytes(),
                        )
                        .ok();
                    job.ack();
                    done += 1;
                }
                done
            }))
        })
        .collect::<Result<_, warren::Error>>()?;

    for n in 0..100u64 {
        broker.publish("", "work", n.to_string().into_bytes())?;
    }

    let log = broker.consume("status.log", ConsumeOptions::default())?;
    for _ in 0..100 {
        let event = log.recv()?;
        if event.delivery_tag() % 25 == 0 {
            println!("{}", String::from_utf8_lossy(event.body()));
        }
        event.ack();
    }
    broker.delete_queue("work", Default::default())?;
    let per_worker: Vec<usize> = workers.into_iter().map(|w| w.join().unwrap_or(0)).collect();
    println!("jobs per worker: {per_worker:?}");
    Ok(())
}
