//! The memory alarm: `connection.blocked` / `unblocked`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start_with, within};
use futures_lite::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Event};
use warren_wire::MemoryWatermark;

async fn next_blocking_event(
    events: &mut (impl futures_lite::Stream<Item = Event> + Unpin),
) -> Event {
    loop {
        match within(events.next()).await {
            Some(e @ (Event::ConnectionBlocked(_) | Event::ConnectionUnblocked)) => return e,
            Some(_) => continue,
            None => panic!("event stream ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishers_are_blocked_above_the_watermark() {
    let used = Arc::new(AtomicU64::new(0));
    let probe = used.clone();
    let env = start_with(|c| {
        c.with_memory_watermark(
            MemoryWatermark::new(1000)
                .with_interval(Duration::from_millis(5))
                .with_probe(move || probe.load(Ordering::SeqCst)),
        )
    })
    .await;
    let (conn, ch) = env.channel().await;
    let mut events = conn.events_listener();
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.queue_declare(
        "m".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();

    used.store(5000, Ordering::SeqCst);
    within(env.server.wait_for_memory_alarm(true)).await;
    let confirm = within(ch.basic_publish(
        "".into(),
        "m".into(),
        BasicPublishOptions::default(),
        b"held",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    match next_blocking_event(&mut events).await {
        Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on memory"),
        other => panic!("{other:?}"),
    }
    // blocked: the publish was not taken
    assert_eq!(env.broker.queue_stats("m").unwrap().ready, 0);

    used.store(0, Ordering::SeqCst);
    assert!(matches!(
        next_blocking_event(&mut events).await,
        Event::ConnectionUnblocked
    ));
    assert!(within(confirm).await.unwrap().is_ack());
    assert_eq!(env.broker.queue_stats("m").unwrap().ready, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_measure_follows_queued_messages() {
    let env = start_with(|c| {
        c.with_memory_watermark(
            MemoryWatermark::new(10 * 1024).with_interval(Duration::from_millis(5)),
        )
    })
    .await;
    let (_conn, ch) = env.channel().await;
    within(ch.confirm_select(Default::default())).await.unwrap();
    within(ch.queue_declare(
        "fill".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // 5 KiB over the wire (under the watermark) sets the average size...
    let body = vec![0u8; 1024];
    for _ in 0..5 {
        let c = within(ch.basic_publish(
            "".into(),
            "fill".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        within(c).await.unwrap();
    }
    assert!(!env.server.memory_alarm());
    // ...then in-process publishers fill the queue past it
    for _ in 0..15 {
        env.broker.publish("", "fill", body.clone()).unwrap();
    }
    within(env.server.wait_for_memory_alarm(true)).await;
    assert!(env.server.memory_alarm());
    env.broker.purge_queue("fill").unwrap();
    within(env.server.wait_for_memory_alarm(false)).await;
}
