//! Malformed and hostile input over a raw socket: each gets the close
//! RabbitMQ 3.10 sends (codes and texts checked against it), and nothing
//! takes the server down.

mod common;

use amq_protocol::protocol::{basic, channel, connection, queue, AMQPClass};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use common::{raw_frame, start, start_with, within, Closed, Raw};
use warren_wire::Limits;

fn closed(connection: bool, code: u16, text: &str, class_id: u16, method_id: u16) -> Closed {
    Closed {
        connection,
        code,
        text: text.to_owned(),
        class_id,
        method_id,
    }
}

fn publish() -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate: false,
    }))
}

fn declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        ..Default::default()
    }))
}

/// A content header frame payload: class, weight, body size, no properties.
fn header(class: u16, size: u64) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_protocol_header_gets_ours_and_a_close() {
    let env = start().await;
    for wrong in [
        &b"AMQP\x00\x00\x09\x02"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"AMQP\x01\x01\x00\x0a",
    ] {
        let mut raw = env.raw().await;
        raw.send(wrong).await;
        let mut got = Vec::new();
        use tokio::io::AsyncReadExt;
        within(raw.s.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"AMQP\x00\x00\x09\x01");
    }
    within(env.server.wait_for_connection_count(0)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_input_is_dropped_quietly() {
    let env = start().await;
    // half a protocol header
    let mut raw = env.raw().await;
    raw.send(b"AMQ").await;
    drop(raw);
    // half a frame after the handshake
    let mut raw = Raw::ready(env.addr()).await;
    let frame = common::method_bytes(1, declare("q"));
    raw.send(&frame[..frame.len() / 2]).await;
    drop(raw);
    within(env.server.wait_for_connection_count(0)).await;
    // the server still serves
    let (_c, ch) = env.channel().await;
    within(ch.queue_declare("after".into(), Default::default(), Default::default()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_frame_end() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(1, 1, &[0, 20, 0, 10, 0], 0)).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            501,
            "FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: {invalid_frame_end_marker,0}",
            0,
            0
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_frame_type() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(5, 1, b"abc", 0xce)).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            501,
            "FRAME_ERROR - type 5, all octets = <<\"abc\">>: unknown_frame",
            0,
            0
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_class_and_method() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(1, 1, &[0, 99, 0, 1], 0xce)).await;
    let c = raw.closed().await;
    assert_eq!(
        (c.connection, c.code, c.class_id, c.method_id),
        (true, 540, 99, 1)
    );
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(1, 1, &[0, 60, 0, 99], 0xce)).await;
    let c = raw.closed().await;
    assert_eq!(
        (c.connection, c.code, c.class_id, c.method_id),
        (true, 540, 60, 99)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_frame_is_refused_before_it_is_read() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    // only the 7-byte header: the server must not wait for 4 GiB of payload
    raw.send(&[3, 0, 1, 0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            501,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4294967295,131064}",
            0,
            0
        )
    );
    // and against a negotiated, smaller frame_max
    let mut raw = Raw::connect(env.addr()).await;
    raw.handshake_with(0, 4096).await;
    raw.open_channel(1).await;
    raw.send(&raw_frame(3, 1, &[0; 5000], 0xce)).await;
    let c = raw.closed().await;
    assert_eq!(
        c.text,
        "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,5000,4088}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_on_unopened_channels() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(5, declare("q")).await;
    assert_eq!(
        raw.closed().await,
        closed(true, 504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    );
    // and after the channel was closed
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        raw.method().await,
        Some((1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))))
    ));
    raw.send_method(1, declare("q")).await;
    assert_eq!(raw.closed().await.code, 504);
}

#[tokio::test(flavor = "multi_thread")]
async fn second_channel_open_and_channel_max() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            504,
            "CHANNEL_ERROR - second 'channel.open' seen",
            20,
            10
        )
    );
    let mut raw = Raw::connect(env.addr()).await;
    raw.handshake_with(2, 0).await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    raw.send_method(
        3,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    let c = raw.closed().await;
    assert_eq!(
        (c.connection, c.code, c.class_id, c.method_id),
        (true, 530, 20, 10)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_frames_out_of_place() {
    let env = start().await;
    // header with no publish
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(2, 1, &header(60, 5), 0xce)).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0
        )
    );
    // body with no header
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(3, 1, b"hello", 0xce)).await;
    assert_eq!(raw.closed().await.code, 505);
    // a method where the header should be
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(1, publish()).await;
    raw.send_method(1, publish()).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );
    // a method where the body should be
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(1, publish()).await;
    raw.send(&raw_frame(2, 1, &header(60, 5), 0xce)).await;
    raw.send_method(1, publish()).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            60,
            40
        )
    );
    // a header of another class
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(1, publish()).await;
    raw.send(&raw_frame(2, 1, &header(50, 5), 0xce)).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            60,
            40
        )
    );
    // heartbeat on a channel
    let mut raw = Raw::ready(env.addr()).await;
    raw.send(&raw_frame(8, 1, &[], 0xce)).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            505,
            "UNEXPECTED_FRAME - type 8, all octets = <<>>",
            0,
            0
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn message_larger_than_max_closes_the_channel() {
    let env = start_with(|c| {
        c.with_limits(Limits {
            max_message_size: 1000,
            ..Limits::default()
        })
    })
    .await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(1, publish()).await;
    // refused on the header, before any body is buffered
    raw.send(&raw_frame(2, 1, &header(60, 600 * 1024 * 1024), 0xce))
        .await;
    assert_eq!(
        raw.closed().await,
        closed(
            false,
            406,
            "PRECONDITION_FAILED - message size 629145600 is larger than configured max size 1000",
            60,
            40
        )
    );
    // bodies for the closing channel are ignored; the connection lives on
    raw.send(&raw_frame(3, 1, &[0; 100], 0xce)).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_arguments() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    // queue.declare cut after the queue name
    raw.send(&raw_frame(1, 1, &[0, 50, 0, 10, 0, 0, 1, b'q'], 0xce))
        .await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            501,
            "FRAME_ERROR - cannot decode <<0,0,1,113>>",
            50,
            10
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_tables_are_refused() {
    let env = start().await;
    // built by hand: encoding (or dropping) it recursively would overflow
    // this test's own stack
    let mut table = vec![0, 0, 0, 0];
    for _ in 0..18_000 {
        let mut entry = vec![1, b'a', b'F'];
        entry.extend_from_slice(&table);
        table = (entry.len() as u32).to_be_bytes().to_vec();
        table.extend_from_slice(&entry);
    }
    let mut payload = vec![0, 50, 0, 10, 0, 0, 4, b'd', b'e', b'e', b'p', 0];
    payload.extend_from_slice(&table);
    let mut raw = Raw::connect(env.addr()).await;
    raw.handshake().await;
    raw.open_channel(1).await;
    assert!(payload.len() < 131_000);
    raw.send(&raw_frame(1, 1, &payload, 0xce)).await;
    let c = raw.closed().await;
    assert_eq!(
        (c.connection, c.code, c.class_id, c.method_id),
        (true, 501, 50, 10)
    );
    assert!(!env.broker.has_queue("deep"));
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_methods_and_misplaced_classes() {
    let env = start().await;
    // prefetch_size != 0
    let mut raw = Raw::ready(env.addr()).await;
    let mut qos = vec![0, 60, 0, 10];
    qos.extend_from_slice(&10u32.to_be_bytes());
    qos.extend_from_slice(&1u16.to_be_bytes());
    qos.push(0);
    raw.send(&raw_frame(1, 1, &qos, 0xce)).await;
    assert_eq!(
        raw.closed().await,
        closed(true, 540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)", 60, 10)
    );
    // channel.flow(false)
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
    )
    .await;
    assert_eq!(
        raw.closed().await,
        closed(true, 540, "NOT_IMPLEMENTED - active=false", 20, 20)
    );
    // a connection method on a channel
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(
        1,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    assert_eq!(
        raw.closed().await,
        closed(true, 503, "COMMAND_INVALID - unimplemented method", 10, 40)
    );
    // a queue method on channel 0
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(0, declare("q")).await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            50,
            10
        )
    );
    // basic.publish with immediate
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    )
    .await;
    assert_eq!(
        raw.closed().await,
        closed(true, 540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_violations() {
    let env = start().await;
    // a channel method before start-ok
    let mut raw = env.raw().await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.method().await;
    raw.send_method(
        0,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    )
    .await;
    assert_eq!(
        raw.closed().await,
        closed(
            true,
            504,
            "CHANNEL_ERROR - unexpected method in connection state starting",
            20,
            10
        )
    );
    // an unknown mechanism
    let mut raw = env.raw().await;
    raw.send(b"AMQP\x00\x00\x09\x01").await;
    raw.method().await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: ShortString::from("EXTERNAL"),
            response: LongString::from(""),
            locale: "en_US".into(),
        })),
    )
    .await;
    let c = raw.closed().await;
    assert_eq!((c.connection, c.code), (true, 503));
    // tune-ok asking for more than the server offers
    for (frame_max, text) in [
        (
            10 * 1024 * 1024,
            "NOT_ALLOWED - frame_max=10485760 > 131072 max size",
        ),
        (1000, "NOT_ALLOWED - frame_max=1000 < 4096 min size"),
    ] {
        let mut raw = env.raw().await;
        raw.send(b"AMQP\x00\x00\x09\x01").await;
        raw.method().await;
        raw.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        )
        .await;
        raw.method().await;
        raw.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 0,
                frame_max,
                heartbeat: 0,
            })),
        )
        .await;
        assert_eq!(raw.closed().await, closed(true, 530, text, 10, 31));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn close_with_reply_code_zero() {
    let env = start().await;
    let mut raw = Raw::ready(env.addr()).await;
    raw.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 0,
            reply_text: "".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    assert!(matches!(
        raw.method().await,
        Some((0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))))
    ));
    assert!(raw.eof().await);
}

/// A small deterministic generator for the garbage test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_never_takes_the_server_down() {
    let env = start().await;
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let valid = [
        common::method_bytes(1, declare("g")),
        common::method_bytes(1, publish()),
        raw_frame(2, 1, &header(60, 3), 0xce),
        raw_frame(3, 1, b"abc", 0xce),
    ];
    for round in 0..60 {
        let mut raw = Raw::ready(env.addr()).await;
        let mut bytes = Vec::new();
        for _ in 0..(1 + rng.next() % 8) {
            let mut f = valid[(rng.next() % valid.len() as u64) as usize].clone();
            // flip a few bytes, cut, or extend
            match rng.next() % 4 {
                0 => {
                    for _ in 0..3 {
                        let i = (rng.next() % f.len() as u64) as usize;
                        f[i] = rng.next() as u8;
                    }
                }
                1 => f.truncate((rng.next() % f.len() as u64) as usize),
                2 => f.extend((0..rng.next() % 40).map(|_| rng.next() as u8)),
                _ => {}
            }
            bytes.extend_from_slice(&f);
        }
        if round % 5 == 0 {
            bytes = (0..200).map(|_| rng.next() as u8).collect();
        }
        raw.send(&bytes).await;
        drop(raw);
    }
    within(env.server.wait_for_connection_count(0)).await;
    let (_c, ch) = env.channel().await;
    within(ch.queue_declare("still-up".into(), Default::default(), Default::default()))
        .await
        .unwrap();
}
