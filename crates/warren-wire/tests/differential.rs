//! Differential test against a real RabbitMQ: the same raw method sequences
//! go to warren-wire and to RabbitMQ, and what comes back (methods with their
//! fields, reply codes and texts, message bodies) must be the same, up to
//! generated names.
//!
//! Needs a RabbitMQ with `guest` / `guest` on loopback; it is skipped unless
//! `WARREN_RABBITMQ_ADDR` is set:
//!
//! ```sh
//! sudo RABBITMQ_NODE_PORT=5673 rabbitmq-server -detached
//! WARREN_RABBITMQ_ADDR=127.0.0.1:5673 cargo test -p warren-wire --test differential
//! sudo rabbitmqctl stop
//! ```

mod common;

use std::net::SocketAddr;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, exchange, queue, tx, AMQPClass, BasicProperties,
};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use common::{frame_bytes, start, Raw};

#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // test scripts: size does not matter
enum Step {
    /// Send a method on a channel.
    Send(u16, AMQPClass),
    /// Publish a message on channel 1.
    Publish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
        properties: BasicProperties,
        body: Vec<u8>,
    },
    /// Record the next `n` events (methods, with their content).
    Read(usize),
    /// Record everything up to a barrier on the channel (or its close).
    Sync(u16),
}

use Step::*;

struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
}

fn s(v: &str) -> ShortString {
    ShortString::from(v)
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(s(k), v.clone());
    }
    t
}

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn qd(name: &str) -> Step {
    qd_with(name, queue::Declare::default())
}

fn qd_with(name: &str, d: queue::Declare) -> Step {
    Send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: s(name),
            ..d
        })),
    )
}

fn xd(name: &str, kind: &str) -> Step {
    Send(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: s(name),
            kind: s(kind),
            ..Default::default()
        })),
    )
}

fn bind(q: &str, x: &str, rk: &str, args: FieldTable) -> Step {
    Send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: s(q),
            exchange: s(x),
            routing_key: s(rk),
            nowait: false,
            arguments: args,
        })),
    )
}

fn get(q: &str) -> Step {
    Send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: s(q),
            no_ack: false,
        })),
    )
}

fn ack(tag: u64, multiple: bool) -> Step {
    Send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        })),
    )
}

fn nack(tag: u64, multiple: bool, requeue: bool) -> Step {
    Send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple,
            requeue,
        })),
    )
}

fn publish(x: &str, rk: &str, body: &str) -> Step {
    publish_with(x, rk, body, false, BasicProperties::default())
}

fn publish_with(x: &str, rk: &str, body: &str, mandatory: bool, p: BasicProperties) -> Step {
    Publish {
        exchange: x.to_owned(),
        routing_key: rk.to_owned(),
        mandatory,
        properties: p,
        body: body.as_bytes().to_vec(),
    }
}

fn consume(q: &str, tag: &str, no_ack: bool) -> Step {
    Send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: s(q),
            consumer_tag: s(tag),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

fn confirm_select() -> Step {
    Send(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
}

fn tx(m: tx::AMQPMethod) -> Step {
    Send(1, AMQPClass::Tx(m))
}

/// Every scenario uses names starting with `N`, replaced by a per-run
/// prefix so runs against a long-lived RabbitMQ do not collide.
fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "queue declare, redeclare, inequivalent",
            steps: vec![
                qd("N-q"),
                qd("N-q"),
                qd_with(
                    "N-q",
                    queue::Declare {
                        durable: true,
                        ..Default::default()
                    },
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "passive declare of a missing queue",
            steps: vec![
                qd_with(
                    "N-missing",
                    queue::Declare {
                        passive: true,
                        ..Default::default()
                    },
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "unknown exchange type",
            steps: vec![xd("N-x", "bogus"), Sync(1)],
        },
        Scenario {
            name: "reserved exchange names",
            steps: vec![xd("amq.N", "direct"), Sync(1)],
        },
        Scenario {
            name: "delete a system exchange",
            steps: vec![
                Send(
                    1,
                    AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                        exchange: s("amq.direct"),
                        if_unused: false,
                        nowait: false,
                    })),
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "redeclare a predefined exchange",
            steps: vec![xd("amq.topic", "topic"), xd("amq.topic", "direct"), Sync(1)],
        },
        Scenario {
            name: "bind to a missing exchange",
            steps: vec![
                qd("N-b"),
                bind("N-b", "N-nox", "k", FieldTable::default()),
                Sync(1),
            ],
        },
        Scenario {
            name: "bind a missing queue",
            steps: vec![
                bind("N-noq", "amq.direct", "k", FieldTable::default()),
                Sync(1),
            ],
        },
        Scenario {
            name: "publish to a missing exchange",
            steps: vec![publish("N-nox", "k", "x"), Sync(1)],
        },
        Scenario {
            name: "get, counts, multiple ack",
            steps: vec![
                qd("N-g"),
                get("N-g"),
                publish("", "N-g", "one"),
                publish("", "N-g", "two"),
                publish("", "N-g", "three"),
                get("N-g"),
                get("N-g"),
                ack(2, true),
                qd("N-g"),
                Sync(1),
            ],
        },
        Scenario {
            name: "unknown delivery tag",
            steps: vec![ack(0, true), qd("N-u"), ack(7, false), Sync(1)],
        },
        Scenario {
            name: "nack requeue and reject",
            steps: vec![
                qd("N-n"),
                publish("", "N-n", "a"),
                get("N-n"),
                nack(1, false, true),
                get("N-n"),
                Send(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                        delivery_tag: 2,
                        requeue: false,
                    })),
                ),
                get("N-n"),
                Sync(1),
            ],
        },
        Scenario {
            name: "double ack",
            steps: vec![
                qd("N-d"),
                publish("", "N-d", "a"),
                get("N-d"),
                ack(1, false),
                ack(1, false),
                Sync(1),
            ],
        },
        Scenario {
            name: "mandatory return comes before the ack",
            steps: vec![
                confirm_select(),
                publish_with("", "N-nowhere", "lost", true, BasicProperties::default()),
                publish_with(
                    "amq.direct",
                    "N-nowhere",
                    "lost",
                    true,
                    BasicProperties::default(),
                ),
                publish("", "N-nowhere", "dropped"),
                Read(1),
                Read(1),
                Read(1),
                Read(1),
                Read(1),
                Sync(1),
            ],
        },
        Scenario {
            name: "reject-publish nacks",
            steps: vec![
                qd_with(
                    "N-rp",
                    queue::Declare {
                        arguments: table(&[
                            ("x-max-length", AMQPValue::LongInt(1)),
                            ("x-overflow", text("reject-publish")),
                        ]),
                        ..Default::default()
                    },
                ),
                confirm_select(),
                publish("", "N-rp", "1"),
                publish("", "N-rp", "2"),
                Read(1),
                Read(1),
                Read(1),
                Read(1),
                Sync(1),
            ],
        },
        Scenario {
            name: "drop-head keeps the newest",
            steps: vec![
                qd_with(
                    "N-dh",
                    queue::Declare {
                        arguments: table(&[("x-max-length", AMQPValue::LongInt(2))]),
                        ..Default::default()
                    },
                ),
                publish("", "N-dh", "1"),
                publish("", "N-dh", "2"),
                publish("", "N-dh", "3"),
                get("N-dh"),
                Sync(1),
            ],
        },
        Scenario {
            name: "transactions",
            steps: vec![
                qd("N-tx"),
                tx(tx::AMQPMethod::Select(tx::Select {})),
                publish("", "N-tx", "rolled back"),
                tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
                get("N-tx"),
                Sync(1),
                publish("", "N-tx", "committed"),
                publish_with(
                    "",
                    "N-nowhere",
                    "returned",
                    true,
                    BasicProperties::default(),
                ),
                tx(tx::AMQPMethod::Commit(tx::Commit {})),
                // nothing may be sent before commit-ok (RabbitMQ: 504)
                Read(2),
                get("N-tx"),
                Sync(1),
            ],
        },
        Scenario {
            name: "commit without select",
            steps: vec![tx(tx::AMQPMethod::Commit(tx::Commit {})), Sync(1)],
        },
        Scenario {
            name: "confirm after tx",
            steps: vec![
                tx(tx::AMQPMethod::Select(tx::Select {})),
                confirm_select(),
                Sync(1),
            ],
        },
        Scenario {
            name: "recover requeues",
            steps: vec![
                qd("N-r"),
                publish("", "N-r", "x"),
                get("N-r"),
                Send(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
                ),
                Read(1),
                get("N-r"),
                Sync(1),
            ],
        },
        Scenario {
            name: "consume, deliver, cancel",
            steps: vec![
                qd("N-c"),
                publish("", "N-c", "m1"),
                consume("N-c", "tag-1", false),
                Read(3),
                Send(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: s("tag-1"),
                        nowait: false,
                    })),
                ),
                // RabbitMQ answers after the queue process did: not in
                // order with the barrier
                Read(1),
                ack(1, false),
                qd("N-c"),
                Sync(1),
            ],
        },
        Scenario {
            name: "reused consumer tag",
            steps: vec![
                qd("N-t"),
                consume("N-t", "dup", false),
                Read(1),
                consume("N-t", "dup", false),
                Sync(1),
            ],
        },
        Scenario {
            name: "empty queue name without a declared queue",
            steps: vec![get(""), Sync(1)],
        },
        Scenario {
            name: "empty queue name means the last declared",
            steps: vec![
                qd("N-last"),
                bind("", "amq.direct", "", FieldTable::default()),
                publish("amq.direct", "N-last", "via default binding key"),
                get(""),
                Sync(1),
            ],
        },
        Scenario {
            name: "headers exchange",
            steps: vec![
                qd("N-h"),
                bind(
                    "N-h",
                    "amq.headers",
                    "",
                    table(&[
                        ("x-match", text("any")),
                        ("N-k", text("v")),
                        ("N-n", AMQPValue::LongInt(1)),
                    ]),
                ),
                publish_with(
                    "amq.headers",
                    "",
                    "matches",
                    false,
                    BasicProperties::default()
                        .with_headers(table(&[("N-n", AMQPValue::LongLongInt(1))])),
                ),
                publish_with(
                    "amq.headers",
                    "",
                    "does not",
                    false,
                    BasicProperties::default().with_headers(table(&[("N-k", text("w"))])),
                ),
                get("N-h"),
                get("N-h"),
                Sync(1),
            ],
        },
        Scenario {
            name: "exchange to exchange",
            steps: vec![
                xd("N-src", "fanout"),
                xd("N-dst", "topic"),
                Send(
                    1,
                    AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                        destination: s("N-dst"),
                        source: s("N-src"),
                        routing_key: s(""),
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                ),
                qd("N-e2e"),
                bind("N-e2e", "N-dst", "a.#", FieldTable::default()),
                publish("N-src", "a.b", "through"),
                publish("N-src", "b.a", "not through"),
                get("N-e2e"),
                get("N-e2e"),
                Sync(1),
            ],
        },
        Scenario {
            name: "delete if-unused and if-empty, purge",
            steps: vec![
                qd("N-del"),
                publish("", "N-del", "x"),
                Send(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                        queue: s("N-del"),
                        if_unused: false,
                        if_empty: true,
                        nowait: false,
                    })),
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "purge and delete counts",
            steps: vec![
                qd("N-p"),
                publish("", "N-p", "x"),
                publish("", "N-p", "y"),
                Send(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                        queue: s("N-p"),
                        nowait: false,
                    })),
                ),
                publish("", "N-p", "z"),
                Send(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                        queue: s("N-p"),
                        if_unused: false,
                        if_empty: false,
                        nowait: false,
                    })),
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "invalid expiration",
            steps: vec![
                qd("N-exp"),
                publish_with(
                    "",
                    "N-exp",
                    "x",
                    false,
                    BasicProperties::default().with_expiration(s("-5")),
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "invalid queue arguments",
            steps: vec![
                qd_with(
                    "N-bad",
                    queue::Declare {
                        arguments: table(&[("x-expires", AMQPValue::LongInt(0))]),
                        ..Default::default()
                    },
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "dead-letter routing key without exchange",
            steps: vec![
                qd_with(
                    "N-dlx",
                    queue::Declare {
                        arguments: table(&[("x-dead-letter-routing-key", text("k"))]),
                        ..Default::default()
                    },
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "direct reply-to misuse",
            steps: vec![consume("amq.rabbitmq.reply-to", "", false), Sync(1)],
        },
        Scenario {
            name: "direct reply-to without a consumer",
            steps: vec![
                publish_with(
                    "",
                    "N-any",
                    "x",
                    false,
                    BasicProperties::default().with_reply_to(s("amq.rabbitmq.reply-to")),
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "direct reply-to round trip",
            steps: vec![
                consume("amq.rabbitmq.reply-to", "replies", true),
                Read(1),
                qd("N-rpc"),
                publish_with(
                    "",
                    "N-rpc",
                    "request",
                    false,
                    BasicProperties::default().with_reply_to(s("amq.rabbitmq.reply-to")),
                ),
                get("N-rpc"),
                Sync(1),
            ],
        },
        Scenario {
            name: "channel.flow false",
            steps: vec![
                Send(
                    1,
                    AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
                ),
                Sync(1),
            ],
        },
        Scenario {
            name: "method on an unopened channel",
            steps: vec![
                Send(
                    7,
                    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                        queue: s("N-x"),
                        ..Default::default()
                    })),
                ),
                Read(1),
            ],
        },
        Scenario {
            name: "exclusive consumer",
            steps: vec![
                qd("N-ex"),
                Send(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                        queue: s("N-ex"),
                        consumer_tag: s("a"),
                        no_local: false,
                        no_ack: false,
                        exclusive: true,
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                ),
                Read(1),
                consume("N-ex", "b", false),
                Sync(1),
            ],
        },
    ]
}

/// Replaces the per-run prefix and generated names.
fn normalize(line: &str, prefix: &str) -> String {
    let mut out = line.replace(prefix, "N");
    for gen in ["amq.gen-", "amq.ctag-", "amq.rabbitmq.reply-to."] {
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(gen) {
            result.push_str(&rest[..i + gen.len()]);
            result.push('*');
            rest = &rest[i + gen.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || "-_=+/.".contains(c)))
                .unwrap_or(rest.len());
            rest = &rest[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

fn describe(ch: u16, m: &AMQPClass) -> String {
    format!("ch{ch} {m:?}")
}

/// Reads one event: a method, with its header and body when it carries
/// content. `None` at end of stream.
async fn raw_event(raw: &mut Raw) -> Option<(u16, AMQPClass, String)> {
    let (ch, m) = raw.method().await?;
    let content = matches!(
        m,
        AMQPClass::Basic(
            basic::AMQPMethod::Deliver(_)
                | basic::AMQPMethod::GetOk(_)
                | basic::AMQPMethod::Return(_)
        )
    );
    if !content {
        return Some((ch, m, String::new()));
    }
    let header = match raw.frame().await? {
        AMQPFrame::Header(_, h) => h,
        other => return Some((ch, m, format!(" <expected a header, got {other:?}>"))),
    };
    let mut body = Vec::new();
    while (body.len() as u64) < header.body_size {
        match raw.frame().await? {
            AMQPFrame::Body(_, b) => body.extend_from_slice(&b),
            other => return Some((ch, m, format!(" <expected a body, got {other:?}>"))),
        }
    }
    Some((
        ch,
        m,
        format!(
            " props={:?} body={:?}",
            header.properties,
            String::from_utf8_lossy(&body)
        ),
    ))
}

/// Events in a canonical form: publisher confirms that cover several
/// messages (`multiple`) are expanded into one per message, since when to
/// batch them is the server's choice.
struct Reader {
    raw: Raw,
    pending: std::collections::VecDeque<(u16, AMQPClass, String)>,
    confirmed: u64,
}

impl Reader {
    async fn event(&mut self) -> Option<(u16, AMQPClass, String)> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        let (ch, m, content) = raw_event(&mut self.raw).await?;
        let (tag, multiple, ack, requeue) = match &m {
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                (a.delivery_tag, a.multiple, true, false)
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                (n.delivery_tag, n.multiple, false, n.requeue)
            }
            _ => return Some((ch, m, content)),
        };
        let first = if multiple { self.confirmed + 1 } else { tag };
        for t in first..=tag {
            let one = if ack {
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: t,
                    multiple: false,
                }))
            } else {
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: t,
                    multiple: false,
                    requeue,
                }))
            };
            self.pending.push_back((ch, one, String::new()));
        }
        self.confirmed = self.confirmed.max(tag);
        self.pending.pop_front()
    }
}

async fn run(addr: SocketAddr, sc: &Scenario, prefix: &str) -> Vec<String> {
    let mut raw = Raw::connect(addr).await;
    raw.handshake().await;
    raw.open_channel(1).await;
    let mut reader = Reader {
        raw,
        pending: Default::default(),
        confirmed: 0,
    };
    let raw = &mut reader;
    let mut out = Vec::new();
    let fix = |s: &str| s.replace("N-", &format!("{prefix}-"));
    for step in &sc.steps {
        match step {
            Send(ch, m) => {
                // names in the method carry the run prefix
                let m = rename(m.clone(), prefix);
                raw.raw.send_method(*ch, m).await;
            }
            Publish {
                exchange,
                routing_key,
                mandatory,
                properties,
                body,
            } => {
                let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: s(&fix(exchange)),
                    routing_key: s(&fix(routing_key)),
                    mandatory: *mandatory,
                    immediate: false,
                }));
                let mut bytes = common::method_bytes(1, m);
                bytes.extend(frame_bytes(&AMQPFrame::Header(
                    1,
                    AMQPContentHeader {
                        class_id: 60,
                        body_size: body.len() as u64,
                        properties: rename_props(properties.clone(), prefix),
                    },
                )));
                if !body.is_empty() {
                    bytes.extend(frame_bytes(&AMQPFrame::Body(1, body.clone())));
                }
                raw.raw.send(&bytes).await;
            }
            Read(n) => {
                for _ in 0..*n {
                    match raw.event().await {
                        Some((ch, m, content)) => {
                            out.push(normalize(&(describe(ch, &m) + &content), prefix))
                        }
                        None => {
                            out.push("<end of stream>".into());
                            return out;
                        }
                    }
                }
            }
            Sync(ch) => {
                raw.raw
                    .send_method(
                        *ch,
                        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                            prefetch_count: 0,
                            global: false,
                        })),
                    )
                    .await;
                loop {
                    let Some((c, m, content)) = raw.event().await else {
                        out.push("<end of stream>".into());
                        return out;
                    };
                    match &m {
                        AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) if c == *ch => break,
                        AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                            out.push(normalize(&describe(c, &m), prefix));
                            raw.raw
                                .send_method(
                                    c,
                                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                                        channel::CloseOk {},
                                    )),
                                )
                                .await;
                            if c == *ch {
                                break;
                            }
                        }
                        AMQPClass::Connection(_) => {
                            out.push(normalize(&describe(c, &m), prefix));
                            return out;
                        }
                        _ => out.push(normalize(&(describe(c, &m) + &content), prefix)),
                    }
                }
            }
        }
    }
    out
}

fn rename_str(v: &ShortString, prefix: &str) -> ShortString {
    s(&v.as_str()
        .replace("N-", &format!("{prefix}-"))
        .replace("amq.N", &format!("amq.{prefix}")))
}

fn rename_table(t: FieldTable, prefix: &str) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in t.inner() {
        out.insert(rename_str(k, prefix), v.clone());
    }
    out
}

fn rename_props(p: BasicProperties, prefix: &str) -> BasicProperties {
    match p.headers().clone() {
        Some(h) => p.with_headers(rename_table(h, prefix)),
        None => p,
    }
}

fn rename(m: AMQPClass, prefix: &str) -> AMQPClass {
    let r = |v: &ShortString| rename_str(v, prefix);
    match m {
        AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: r(&d.queue),
                ..d
            }))
        }
        AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: r(&b.queue),
                exchange: r(&b.exchange),
                routing_key: r(&b.routing_key),
                arguments: rename_table(b.arguments.clone(), prefix),
                ..b
            }))
        }
        AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: r(&d.queue),
                ..d
            }))
        }
        AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: r(&p.queue),
                ..p
            }))
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: r(&d.exchange),
                ..d
            }))
        }
        AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: r(&b.destination),
                source: r(&b.source),
                ..b
            }))
        }
        AMQPClass::Basic(basic::AMQPMethod::Get(g)) => {
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: r(&g.queue),
                ..g
            }))
        }
        AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => {
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: r(&c.queue),
                ..c
            }))
        }
        m => m,
    }
}

/// Scenarios where warren differs from RabbitMQ 3.10 on purpose, with why.
/// Scenarios whose answers differ on purpose (name, why). None today.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread")]
async fn same_answers_as_rabbitmq() {
    let Ok(rabbit) = std::env::var("WARREN_RABBITMQ_ADDR") else {
        eprintln!("WARREN_RABBITMQ_ADDR not set: skipping the differential test");
        return;
    };
    let rabbit: SocketAddr = rabbit.parse().expect("WARREN_RABBITMQ_ADDR: host:port");
    let env = start().await;
    let nonce = format!(
        "d{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let mut failures = Vec::new();
    for (i, sc) in scenarios().iter().enumerate() {
        let prefix = format!("{nonce}x{i}");
        eprintln!("scenario: {}", sc.name);
        if std::env::var("WARREN_DIFF_DEBUG").is_ok() {
            eprintln!(
                "  warren:   {:#?}",
                run(env.addr(), sc, &format!("{prefix}dbg")).await
            );
            eprintln!(
                "  rabbitmq: {:#?}",
                run(rabbit, sc, &format!("{prefix}dbg")).await
            );
        }
        let mut ours = run(env.addr(), sc, &prefix).await;
        let mut theirs = run(rabbit, sc, &prefix).await;
        if ours != theirs {
            // Once more, with fresh names, before calling it a difference: a
            // RabbitMQ just started on a loaded CI machine has once answered
            // a scenario differently from every run before and after it
            // (`exclusive consumer`: 403 for the first exclusive consume of
            // a fresh queue). A real difference shows twice.
            eprintln!("  differs; running it again with fresh names");
            let again = format!("{prefix}r");
            ours = run(env.addr(), sc, &again).await;
            theirs = run(rabbit, sc, &again).await;
        }
        if ours != theirs {
            let known = KNOWN_DIFFERENCES.iter().find(|(n, _)| *n == sc.name);
            let mut report = format!(
                "--- {}{}\n",
                sc.name,
                if known.is_some() { " (known)" } else { "" }
            );
            let n = ours.len().max(theirs.len());
            for j in 0..n {
                let a = ours.get(j).map(String::as_str).unwrap_or("<nothing>");
                let b = theirs.get(j).map(String::as_str).unwrap_or("<nothing>");
                let mark = if a == b { "  " } else { "!!" };
                report.push_str(&format!("{mark} warren:   {a}\n{mark} rabbitmq: {b}\n"));
            }
            eprintln!("{report}");
            if known.is_none() {
                failures.push(sc.name);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "differences from RabbitMQ in: {failures:?}"
    );
}
