//! Memory per queued message: the broker's overhead beyond the body, measured
//! with a counting allocator. Target: ≤ 128 bytes per message.
//!
//! Not a timing bench: it prints bytes per message for a few message shapes.
//! The baseline is the body itself (and, for reference, a `Bytes` in a
//! `crossbeam-channel`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use warren::{BasicProperties, Broker, Message, QueueDeclareOptions, SharedProperties};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; it only
// counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 100_000;

/// Heap bytes of the strings a publisher put in the properties.
fn props_heap(p: &BasicProperties) -> usize {
    [
        &p.content_type,
        &p.correlation_id,
        &p.reply_to,
        &p.message_id,
    ]
    .iter()
    .map(|s| s.as_ref().map_or(0, |s| s.capacity()))
    .sum()
}

/// Publishes `N` messages from `make`, or their bodies with `shared`
/// properties, and prints the broker's memory per message.
fn measure(
    label: &str,
    make: impl Fn(usize) -> Message,
    routing_key: &str,
    shared: Option<&SharedProperties>,
) {
    let b = Broker::new();
    b.declare_queue("q", QueueDeclareOptions::default())
        .expect("declare");
    b.bind_queue("q", "amq.direct", routing_key, &Default::default())
        .expect("bind");
    let mut msgs: Vec<Message> = (0..N).map(&make).collect();
    let body_bytes: usize = msgs.iter().map(|m| m.body.len()).sum();
    // Properties the publisher allocated move into the broker; count them as
    // the message's, not the broker's.
    let props: usize = msgs.iter().map(|m| props_heap(&m.properties)).sum();
    let before = LIVE.load(Ordering::Relaxed);
    for m in msgs.drain(..) {
        match shared {
            None => b.publish("amq.direct", routing_key, m),
            Some(p) => b.publish_shared("amq.direct", routing_key, p, m.body),
        }
        .expect("publish");
    }
    let after = LIVE.load(Ordering::Relaxed) - props as isize;
    // The bodies were allocated before `before`; what grew is the broker's.
    let overhead = (after - before) as f64 / N as f64;
    println!(
        "memory: {label:<40} {overhead:>6.1} bytes/message of broker overhead (body {} bytes, not counted)",
        body_bytes / N
    );
}

fn main() {
    measure(
        "16-byte body, no properties, key 'k'",
        |_| Message::new(vec![0u8; 16]),
        "k",
        None,
    );
    measure(
        "16-byte body, no properties, 30-byte key",
        |_| Message::new(vec![0u8; 16]),
        "a.routing.key.of.thirty.bytes.",
        None,
    );
    measure(
        "16-byte body, content type + correlation id",
        |i| {
            Message::new(vec![0u8; 16]).with_properties(
                BasicProperties::default()
                    .with_content_type("text/plain")
                    .with_correlation_id(i.to_string()),
            )
        },
        "k",
        None,
    );
    let json = SharedProperties::new(
        BasicProperties::default()
            .with_content_type("application/json")
            .with_reply_to("replies"),
    );
    measure(
        "16-byte body, shared content type + reply-to",
        |_| Message::new(vec![0u8; 16]),
        "k",
        Some(&json),
    );
    let (tx, rx) = crossbeam_channel::unbounded::<Bytes>();
    let mut bodies: Vec<Bytes> = (0..N).map(|_| Bytes::from(vec![0u8; 16])).collect();
    let before = LIVE.load(Ordering::Relaxed);
    for b in bodies.drain(..) {
        tx.send(b).expect("open");
    }
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "memory: {:<40} {:>6.1} bytes/message (baseline)",
        "crossbeam unbounded channel of Bytes",
        (after - before) as f64 / N as f64
    );
    drop(rx);
}
