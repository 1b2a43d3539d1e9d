//! What the fuzz targets check, as plain functions over a byte string.
//!
//! The cargo-fuzz targets in `fuzz_targets/` call these, and so does
//! `crates/warren-core/tests/fuzz_regression.rs`, which replays the committed
//! corpus and every minimised crash in `fuzz/regressions/` on each
//! `cargo test`. So this file depends on `warren_core` and `arbitrary` only.
//!
//! - [`topic_match`]: the compiled [`TopicTrie`] agrees with the reference
//!   matcher [`topic_matches`] on arbitrary patterns and keys, through inserts
//!   and removals, and prunes back to its root when emptied.
//! - [`broker_ops`]: an arbitrary sequence of broker operations never panics
//!   or blocks, and after every step the conservation law of `QueueStats`
//!   holds, prefetch is respected and `redelivered` is right.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use warren_core::{
    topic_matches, AMQPValue, BasicProperties, Broker, BrokerOptions, ConsumeOptions, Consumer,
    Delivery, ExchangeDeclareOptions, ExchangeKind, FieldTable, GetOptions, ManualClock, Message,
    PublishAsync, PublishError, QueueDeclareOptions, QueueDeleteOptions, QueueStats, TopicTrie,
};

// ---------------------------------------------------------------------------
// topic_match

/// At most this many words in a pattern or key, and this many `#` in a
/// pattern: the reference matcher backtracks, and its cost grows as
/// C(words + hashes, hashes); these caps keep every input well under a
/// millisecond.
const MAX_WORDS: usize = 12;
const MAX_HASHES: usize = 4;

/// Words to build patterns and keys from: wildcards, the empty word, words
/// that only look like wildcards, and a multi-byte one.
const WORDS: [&str; 12] = [
    "a", "b", "c", "", "*", "#", "ab", "a#", "**", "##", "*a", "é",
];

/// A word: one of [`WORDS`], or any short string (which may contain dots).
#[derive(Arbitrary, Debug)]
enum Word {
    Known(u8),
    Raw(String),
}

impl Word {
    fn push_to(&self, out: &mut Vec<String>) {
        match self {
            Word::Known(i) => out.push(WORDS[usize::from(*i) % WORDS.len()].to_owned()),
            Word::Raw(s) => out.push(s.chars().take(6).collect()),
        }
    }
}

fn join(words: &[Word]) -> Option<String> {
    let mut parts = Vec::new();
    for w in words.iter().take(MAX_WORDS) {
        w.push_to(&mut parts);
    }
    let s = parts.join(".");
    let n_words = if s.is_empty() {
        0
    } else {
        s.split('.').count()
    };
    let hashes = s.split('.').filter(|w| *w == "#").count();
    (n_words <= MAX_WORDS && hashes <= MAX_HASHES).then_some(s)
}

#[derive(Arbitrary, Debug)]
struct TopicCase {
    patterns: Vec<Vec<Word>>,
    keys: Vec<Vec<Word>>,
    /// Patterns (by index) to remove after the first round of checks.
    removals: Vec<u8>,
}

/// Checks the trie holding `live` (pattern index → pattern) against the
/// reference matcher on every key.
fn check_trie(trie: &TopicTrie<usize>, live: &BTreeSet<(String, usize)>, keys: &[String]) {
    assert_eq!(trie.len(), live.len());
    assert_eq!(trie.is_empty(), live.is_empty());
    for key in keys {
        let want: Vec<usize> = live
            .iter()
            .filter(|(p, _)| topic_matches(p, key))
            .map(|&(_, v)| v)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let got = trie.matches(key);
        assert_eq!(got, want, "key {key:?} patterns {live:?}");
        // `matches_into` appends after what is there, leaving it alone.
        let mut out = vec![usize::MAX];
        trie.matches_into(key, &mut out);
        assert_eq!(out[0], usize::MAX);
        assert_eq!(&out[1..], &want[..]);
    }
}

/// The `topic_match` target.
pub fn topic_match(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = TopicCase::arbitrary(&mut u) else {
        return;
    };
    let patterns: Vec<String> = case
        .patterns
        .iter()
        .take(8)
        .filter_map(|p| join(p))
        .collect();
    let keys: Vec<String> = case.keys.iter().take(8).filter_map(|k| join(k)).collect();
    let mut trie = TopicTrie::new();
    let mut live = BTreeSet::new();
    // Pattern i is bound with value i; some patterns repeat, under their
    // own values. Inserting a pair twice is a no-op.
    for (i, p) in patterns.iter().enumerate() {
        assert_eq!(trie.insert(p, i), live.insert((p.clone(), i)));
        assert!(!trie.insert(p, i));
    }
    check_trie(&trie, &live, &keys);
    for r in &case.removals {
        let Some(p) = patterns.get(usize::from(*r) % patterns.len().max(1)) else {
            break;
        };
        let i = usize::from(*r) % patterns.len();
        assert_eq!(trie.remove(p, &i), live.remove(&(p.clone(), i)));
        check_trie(&trie, &live, &keys);
    }
    for (p, i) in std::mem::take(&mut live) {
        assert!(trie.remove(&p, &i));
    }
    check_trie(&trie, &live, &keys);
    assert_eq!(trie.node_count(), 1, "an emptied trie prunes to its root");
    assert_eq!(trie.word_count(), 0, "an emptied trie forgets its words");
}

// ---------------------------------------------------------------------------
// broker_ops

/// Queue names the operations use; the last one is never given limits.
const QUEUES: [&str; 4] = ["q0", "q1", "q2", "dead"];
/// Exchange names: the predefined ones, and a few the operations declare.
const EXCHANGES: [&str; 9] = [
    "",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "x.topic",
    "x.headers",
    "x.fanout",
    "dlx",
];
/// Routing keys and binding patterns.
const KEYS: [&str; 12] = [
    "", "a", "b", "a.b", "#", "*", "a.*", "#.b", "q0", "q1", "q2", "dead",
];
const OVERFLOWS: [&str; 5] = [
    "drop-head",
    "reject-publish",
    "reject-publish-dlx",
    "block",
    "bogus",
];

/// A name, key or argument: mostly from a small set so operations meet,
/// sometimes arbitrary input.
#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Raw(String),
}

impl Text {
    fn pick<'a>(&'a self, known: &[&'a str]) -> &'a str {
        match self {
            Text::Known(i) => known[usize::from(*i) % known.len()],
            Text::Raw(s) => s.get(..s.len().min(40)).unwrap_or(""),
        }
    }
}

/// A queue argument's value: usually well-formed, sometimes not.
#[derive(Arbitrary, Debug)]
enum Arg {
    Small(u8),
    Negative(i8),
    Text(Text),
    Flag(bool),
}

impl Arg {
    fn value(&self, known: &[&str]) -> AMQPValue {
        match self {
            Arg::Small(n) => AMQPValue::LongLongInt(i64::from(*n % 16)),
            Arg::Negative(n) => AMQPValue::LongInt(i32::from(*n)),
            Arg::Text(t) => AMQPValue::from(t.pick(known)),
            Arg::Flag(b) => AMQPValue::Boolean(*b),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct QueueSpec {
    max_length: Option<Arg>,
    max_length_bytes: Option<Arg>,
    overflow: Option<Arg>,
    message_ttl: Option<Arg>,
    expires: Option<Arg>,
    dead_letter_exchange: Option<Arg>,
    dead_letter_routing_key: Option<Arg>,
    auto_delete: bool,
    exclusive: bool,
}

impl QueueSpec {
    fn options(&self) -> QueueDeclareOptions {
        let mut a = FieldTable::new();
        let mut put = |k: &str, v: &Option<Arg>, known: &[&str]| {
            if let Some(v) = v {
                a.insert(k, v.value(known));
            }
        };
        // Numbers given as text are refused (406), as RabbitMQ does.
        let numbers = ["1", "ten"];
        put("x-max-length", &self.max_length, &numbers);
        put("x-max-length-bytes", &self.max_length_bytes, &numbers);
        put("x-overflow", &self.overflow, &OVERFLOWS);
        put("x-message-ttl", &self.message_ttl, &numbers);
        put("x-expires", &self.expires, &numbers);
        put(
            "x-dead-letter-exchange",
            &self.dead_letter_exchange,
            &EXCHANGES,
        );
        put(
            "x-dead-letter-routing-key",
            &self.dead_letter_routing_key,
            &KEYS,
        );
        QueueDeclareOptions {
            auto_delete: self.auto_delete,
            exclusive: self.exclusive,
            arguments: a,
            ..Default::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    DeclareQueue {
        queue: Text,
        spec: QueueSpec,
    },
    DeclareExchange {
        exchange: Text,
        kind: u8,
        auto_delete: bool,
        internal: bool,
        alternate: Option<Text>,
    },
    DeleteExchange {
        exchange: Text,
        if_unused: bool,
    },
    BindQueue {
        queue: Text,
        exchange: Text,
        key: Text,
        x_match: Option<Text>,
        unbind: bool,
    },
    BindExchange {
        destination: Text,
        source: Text,
        key: Text,
        unbind: bool,
    },
    Publish {
        exchange: Text,
        key: Text,
        size: u8,
        expiration: Option<Text>,
        cc: Option<Text>,
        bcc: bool,
        header: Option<Text>,
    },
    /// `publish_async`, polled once by hand: a future left pending (a full
    /// `block` queue) is kept to poll again or drop.
    PublishAsync {
        exchange: Text,
        key: Text,
        size: u8,
    },
    PollPublish(u8),
    DropPublish(u8),
    Consume {
        queue: Text,
        prefetch: u8,
        no_ack: bool,
        exclusive: bool,
    },
    Recv(u8),
    /// `recv_async`, polled once by hand; if pending, the future is dropped
    /// (cancel safety: nothing may be lost).
    RecvAsync(u8),
    Get {
        queue: Text,
        no_ack: bool,
    },
    Ack(u8),
    Nack(u8, bool),
    Reject(u8, bool),
    DropDelivery(u8),
    Cancel(u8),
    DropConsumer(u8),
    Purge(Text),
    DeleteQueue {
        queue: Text,
        if_unused: bool,
        if_empty: bool,
    },
    Advance(u8),
}

const MAX_OPS: usize = 200;

struct Sub {
    id: u64,
    prefetch: u32,
    no_ack: bool,
    consumer: Consumer,
}

struct Held {
    /// The consumer it came from (`None` for `get`).
    from: Option<u64>,
    /// Whether it awaits an answer (not no-ack), so counts as unacked.
    pending: bool,
    delivery: Delivery,
}

struct World {
    broker: Broker,
    clock: ManualClock,
    subs: Vec<Sub>,
    next_sub: u64,
    held: Vec<Held>,
    next_message: u32,
    /// Sum of `Published::routed` over the publishes made.
    routed: u64,
    /// Whether a queue may dead-letter (then dead letters add copies).
    dead_letters_possible: bool,
    /// `publish_async` futures still pending.
    publishing: Vec<PublishAsync>,
    /// Whether a pending `publish_async` was dropped: the queues it reached
    /// before are not in `routed`.
    routed_inexact: bool,
    /// Copies shown to the application: (queue, message id, deaths).
    shown: HashSet<(String, u32, String)>,
}

/// A copy's dead-letter history: with the message id and the queue it
/// identifies the copy (each dead-lettering makes a new copy with a longer
/// or counted-up `x-death`).
fn deaths(d: &Delivery) -> String {
    let h = d.properties().headers.as_ref();
    format!("{:?}", h.and_then(|h| h.get("x-death")))
}

fn conserved(s: &QueueStats) -> bool {
    s.enqueued
        == s.ready
            + s.unacked
            + s.acked
            + s.discarded
            + s.dropped
            + s.expired
            + s.purged
            + s.deleted
}

impl World {
    fn new() -> World {
        let clock = ManualClock::new();
        let broker = Broker::with_options(BrokerOptions {
            clock: Some(clock.clone()),
            ..Default::default()
        });
        World {
            broker,
            clock,
            subs: Vec::new(),
            next_sub: 0,
            held: Vec::new(),
            next_message: 0,
            routed: 0,
            dead_letters_possible: false,
            publishing: Vec::new(),
            routed_inexact: false,
            shown: HashSet::new(),
        }
    }

    fn take_held(&mut self, i: u8) -> Option<Delivery> {
        if self.held.is_empty() {
            return None;
        }
        let at = usize::from(i) % self.held.len();
        Some(self.held.swap_remove(at).delivery)
    }

    fn sub(&self, i: u8) -> Option<usize> {
        (!self.subs.is_empty()).then(|| usize::from(i) % self.subs.len())
    }

    /// A delivery reaches the application: `redelivered` must say whether
    /// this copy was shown before.
    fn show(&mut self, d: &Delivery, from: Option<u64>) {
        let id = d
            .body()
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .unwrap_or_else(|| panic!("a body that is not ours: {d:?}"));
        let copy = (d.queue().to_owned(), id, deaths(d));
        let before = !self.shown.insert(copy.clone());
        assert_eq!(d.redelivered(), before, "copy {copy:?}: {d:?}");
        if let Some(from) = from {
            let sub = self.subs.iter().find(|s| s.id == from);
            if let Some(s) = sub.filter(|s| s.prefetch > 0 && !s.no_ack) {
                let out = self.held.iter().filter(|h| h.from == Some(from)).count();
                assert!(
                    out < s.prefetch as usize,
                    "prefetch {} exceeded",
                    s.prefetch
                );
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::DeclareQueue { queue, spec } => {
                let o = spec.options();
                if o.arguments.contains_key("x-dead-letter-exchange") {
                    self.dead_letters_possible = true;
                }
                let _ = self.broker.declare_queue(queue.pick(&QUEUES), o);
            }
            Op::DeclareExchange {
                exchange,
                kind,
                auto_delete,
                internal,
                alternate,
            } => {
                let kind = [
                    ExchangeKind::Direct,
                    ExchangeKind::Fanout,
                    ExchangeKind::Topic,
                    ExchangeKind::Headers,
                ][usize::from(*kind) % 4];
                let mut arguments = FieldTable::new();
                if let Some(a) = alternate {
                    arguments.insert("alternate-exchange", a.pick(&EXCHANGES));
                }
                let o = ExchangeDeclareOptions {
                    auto_delete: *auto_delete,
                    internal: *internal,
                    arguments,
                    ..Default::default()
                };
                let _ = self
                    .broker
                    .declare_exchange(exchange.pick(&EXCHANGES), kind, o);
            }
            Op::DeleteExchange {
                exchange,
                if_unused,
            } => {
                let _ = self
                    .broker
                    .delete_exchange(exchange.pick(&EXCHANGES), *if_unused);
            }
            Op::BindQueue {
                queue,
                exchange,
                key,
                x_match,
                unbind,
            } => {
                let mut args = FieldTable::new();
                if let Some(m) = x_match {
                    args.insert("x-match", m.pick(&["all", "any", "all-with-x", "nope"]));
                    args.insert("h", "1");
                }
                let (q, x, k) = (
                    queue.pick(&QUEUES),
                    exchange.pick(&EXCHANGES),
                    key.pick(&KEYS),
                );
                let _ = if *unbind {
                    self.broker.unbind_queue(q, x, k, &args)
                } else {
                    self.broker.bind_queue(q, x, k, &args)
                };
            }
            Op::BindExchange {
                destination,
                source,
                key,
                unbind,
            } => {
                let (d, s, k) = (
                    destination.pick(&EXCHANGES),
                    source.pick(&EXCHANGES),
                    key.pick(&KEYS),
                );
                let _ = if *unbind {
                    self.broker.unbind_exchange(d, s, k, &FieldTable::new())
                } else {
                    self.broker.bind_exchange(d, s, k, &FieldTable::new())
                };
            }
            Op::Publish {
                exchange,
                key,
                size,
                expiration,
                cc,
                bcc,
                header,
            } => {
                let mut body = self.next_message.to_le_bytes().to_vec();
                self.next_message += 1;
                body.resize(4 + usize::from(*size % 8), b'x');
                let mut props = BasicProperties::default();
                if let Some(e) = expiration {
                    props = props.with_expiration(e.pick(&["0", "1", "5", "20", "-1", "x"]));
                }
                let mut headers = FieldTable::new();
                if let Some(c) = cc {
                    let v = AMQPValue::FieldArray(vec![c.pick(&KEYS).into()]);
                    headers.insert(if *bcc { "BCC" } else { "CC" }, v);
                } else if *bcc {
                    headers.insert("BCC", "not an array");
                }
                if let Some(h) = header {
                    headers.insert("h", h.pick(&["1", "2"]));
                }
                if !headers.is_empty() {
                    props = props.with_headers(headers);
                }
                let m = Message::new(body).with_properties(props);
                match self
                    .broker
                    .try_publish(exchange.pick(&EXCHANGES), key.pick(&KEYS), m)
                {
                    Ok(out) => self.routed += u64::from(out.routed),
                    Err(e @ PublishError::Full(_)) => assert!(e.error().is_none()),
                    Err(e) => assert!(e.error().is_some()),
                }
            }
            Op::Consume {
                queue,
                prefetch,
                no_ack,
                exclusive,
            } => {
                let o = ConsumeOptions {
                    prefetch: u32::from(*prefetch % 4),
                    no_ack: *no_ack,
                    exclusive: *exclusive,
                    ..Default::default()
                };
                if let Ok(c) = self.broker.consume(queue.pick(&QUEUES), o.clone()) {
                    self.next_sub += 1;
                    self.subs.push(Sub {
                        id: self.next_sub,
                        prefetch: o.prefetch,
                        no_ack: o.no_ack,
                        consumer: c,
                    });
                }
            }
            Op::PublishAsync {
                exchange,
                key,
                size,
            } => {
                let mut body = self.next_message.to_le_bytes().to_vec();
                self.next_message += 1;
                body.resize(4 + usize::from(*size % 8), b'y');
                let f = self.broker.publish_async(
                    exchange.pick(&EXCHANGES),
                    key.pick(&KEYS),
                    Message::new(body),
                );
                self.publishing.push(f);
                let last = self.publishing.len() - 1;
                self.poll_publish(last);
            }
            Op::PollPublish(i) => {
                if !self.publishing.is_empty() {
                    self.poll_publish(usize::from(*i) % self.publishing.len());
                }
            }
            Op::DropPublish(i) => {
                if !self.publishing.is_empty() {
                    let at = usize::from(*i) % self.publishing.len();
                    drop(self.publishing.swap_remove(at));
                    self.routed_inexact = true;
                }
            }
            Op::RecvAsync(i) => {
                if let Some(at) = self.sub(*i) {
                    let got = {
                        let mut f = self.subs[at].consumer.recv_async();
                        poll_once(Pin::new(&mut f))
                    };
                    if let Poll::Ready(Ok(d)) = got {
                        let (from, no_ack) = (self.subs[at].id, self.subs[at].no_ack);
                        self.show(&d, Some(from));
                        self.held.push(Held {
                            from: Some(from),
                            pending: !no_ack,
                            delivery: d,
                        });
                    }
                }
            }
            Op::Recv(i) => {
                if let Some(at) = self.sub(*i) {
                    if let Ok(d) = self.subs[at].consumer.try_recv() {
                        let (from, no_ack) = (self.subs[at].id, self.subs[at].no_ack);
                        self.show(&d, Some(from));
                        self.held.push(Held {
                            from: Some(from),
                            pending: !no_ack,
                            delivery: d,
                        });
                    }
                }
            }
            Op::Get { queue, no_ack } => {
                let o = GetOptions {
                    no_ack: *no_ack,
                    ..Default::default()
                };
                if let Ok(Some(d)) = self.broker.get(queue.pick(&QUEUES), o) {
                    self.show(&d, None);
                    self.held.push(Held {
                        from: None,
                        pending: !no_ack,
                        delivery: d,
                    });
                }
            }
            Op::Ack(i) => {
                if let Some(d) = self.take_held(*i) {
                    d.ack();
                }
            }
            Op::Nack(i, requeue) => {
                if let Some(d) = self.take_held(*i) {
                    d.nack(*requeue);
                }
            }
            Op::Reject(i, requeue) => {
                if let Some(d) = self.take_held(*i) {
                    d.reject(*requeue);
                }
            }
            Op::DropDelivery(i) => drop(self.take_held(*i)),
            Op::Cancel(i) => {
                if let Some(at) = self.sub(*i) {
                    self.subs[at].consumer.cancel();
                }
            }
            Op::DropConsumer(i) => {
                if let Some(at) = self.sub(*i) {
                    drop(self.subs.swap_remove(at));
                }
            }
            Op::Purge(q) => {
                let _ = self.broker.purge_queue(q.pick(&QUEUES));
            }
            Op::DeleteQueue {
                queue,
                if_unused,
                if_empty,
            } => {
                let o = QueueDeleteOptions {
                    if_unused: *if_unused,
                    if_empty: *if_empty,
                    ..Default::default()
                };
                let _ = self.broker.delete_queue(queue.pick(&QUEUES), o);
            }
            Op::Advance(ms) => {
                self.clock
                    .advance(Duration::from_millis(u64::from(*ms % 32)));
                self.broker.run_expiry();
            }
        }
    }

    fn poll_publish(&mut self, at: usize) {
        match poll_once(Pin::new(&mut self.publishing[at])) {
            Poll::Pending => {}
            Poll::Ready(r) => {
                drop(self.publishing.swap_remove(at));
                match r {
                    Ok(out) => self.routed += u64::from(out.routed),
                    Err(e) => assert!(e.error().is_some(), "{e:?}"),
                }
            }
        }
    }

    fn check(&self, after: &dyn std::fmt::Debug) {
        let t = self.broker.totals();
        assert!(conserved(&t), "after {after:?}: totals {t:?}");
        let stats = self.broker.stats();
        for s in &stats.queues {
            assert!(conserved(s), "after {after:?}: queue {s:?}");
        }
        // Every copy came from one of our publishes or from a dead letter.
        assert!(t.enqueued >= self.routed, "after {after:?}: {t:?}");
        if !self.dead_letters_possible && !self.routed_inexact {
            assert_eq!(t.enqueued, self.routed, "after {after:?}: {t:?}");
            assert_eq!(t.dead_lettered, 0, "after {after:?}: {t:?}");
        }
        // What the application holds unanswered is counted unacked.
        let held = self.held.iter().filter(|h| h.pending).count() as u64;
        assert!(t.unacked >= held, "after {after:?}: {held} held, {t:?}");
    }
}

/// A waker that does nothing: futures are polled by hand, once per step.
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    let waker = Waker::from(Arc::new(Noop));
    f.poll(&mut Context::from_waker(&waker))
}

/// The `broker_ops` target.
pub fn broker_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut w = World::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        w.apply(&op);
        w.check(&op);
    }
    // Answer nothing, drop everything: every copy goes back or is counted.
    w.routed_inexact |= !w.publishing.is_empty();
    w.publishing.clear();
    w.held.clear();
    w.check(&"dropping deliveries");
    w.subs.clear();
    w.check(&"dropping consumers");
    let t = w.broker.totals();
    assert_eq!((t.unacked, t.consumers), (0, 0), "{t:?}");
}
