//! Shared test helpers: a server on an ephemeral port, lapin connections,
//! and a raw AMQP client for malformed input.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame, WriteContext};
use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{FieldTable, LongString};
use bytes::BytesMut;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_core::Broker;
use warren_wire::{Server, ServerConfig};

/// Publishes `body` with `mandatory` to the default exchange under
/// `routing_key` on a fresh confirm-mode channel of `conn`; the confirm must
/// be an ack. Returns the `basic.return`'s reply code, `None` if routed.
pub async fn publish_mandatory(conn: &Connection, routing_key: &str, body: &[u8]) -> Option<u16> {
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(Default::default())).await.unwrap();
    let confirm = within(ch.basic_publish(
        "".into(),
        routing_key.into(),
        lapin::options::BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        body,
        lapin::BasicProperties::default(),
    ))
    .await
    .unwrap();
    let confirmation = within(confirm).await.unwrap();
    assert!(confirmation.is_ack(), "{confirmation:?}");
    confirmation.take_message().map(|m| m.reply_code)
}

/// How long any single awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("timed out waiting for an event")
}

pub struct Env {
    pub broker: Broker,
    pub server: Server,
}

/// A server for one fresh broker on 127.0.0.1:0.
pub async fn start() -> Env {
    start_with(|c| c).await
}

pub async fn start_with(f: impl FnOnce(ServerConfig) -> ServerConfig) -> Env {
    let broker = Broker::new();
    let mut config = ServerConfig::with_broker(broker.clone());
    // A test's clients may take as long as `WAIT` for any step, the
    // handshake included. With the default 10 s, a thousand clients on a
    // loaded two-core machine can be slower than that to send their
    // protocol header, and the server closes them: the likely cause of a
    // CI failure (2026-11-22: a client saw the stream end instead of
    // connection.start, in a run 15x slower than usual). A test about the
    // handshake timeout sets its own.
    config.limits.handshake_timeout = WAIT;
    let config = f(config);
    let server = Server::bind("127.0.0.1:0", config).await.expect("bind");
    Env { broker, server }
}

impl Env {
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    pub async fn connect(&self) -> Connection {
        self.connect_url(&self.url()).await.expect("connect")
    }

    pub async fn connect_url(&self, url: &str) -> lapin::Result<Connection> {
        within(Connection::connect(url, ConnectionProperties::default())).await
    }

    pub async fn channel(&self) -> (Connection, Channel) {
        let c = self.connect().await;
        let ch = within(c.create_channel()).await.expect("channel");
        (c, ch)
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr()).await
    }
}

/// The AMQP reply code of a lapin error, if it is one.
pub fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(a) => Some(a.get_id()),
        _ => None,
    }
}

/// The AMQP reply text of a lapin error.
pub fn text(e: &lapin::Error) -> String {
    match e.kind() {
        ErrorKind::ProtocolError(a) => a.get_message().to_string(),
        other => format!("{other:?}"),
    }
}

pub fn method_bytes(channel: u16, m: AMQPClass) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(channel, m))
}

pub fn frame_bytes(f: &AMQPFrame) -> Vec<u8> {
    let (v, _) = gen_frame(f)(WriteContext::from(Vec::new()))
        .expect("encode")
        .into_inner();
    v
}

/// A raw frame: type, channel, payload, end byte.
pub fn raw_frame(ty: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(end);
    v
}

/// A close the server sent: which, code, text, class, method.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub connection: bool,
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

/// A hand-driven AMQP client, over TCP or any other stream.
pub struct Raw<S = TcpStream> {
    pub s: S,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = within(TcpStream::connect(addr)).await.expect("tcp connect");
        s.set_nodelay(true).expect("nodelay");
        Raw::over(s)
    }

    /// Handshake and channel 1.
    pub async fn ready(addr: SocketAddr) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.handshake().await;
        r.open_channel(1).await;
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    /// A client over `s` (a `tokio::io::duplex` end, for example).
    pub fn over(s: S) -> Raw<S> {
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b).await;
    }

    pub async fn send_method(&mut self, channel: u16, m: AMQPClass) {
        self.send(&method_bytes(channel, m)).await;
    }

    /// The next frame, or `None` at end of stream.
    pub async fn frame(&mut self) -> Option<AMQPFrame> {
        loop {
            if !self.buf.is_empty() {
                match parse_frame(&self.buf[..]) {
                    Ok((rest, f)) => {
                        let used = self.buf.len() - rest.len();
                        let _ = self.buf.split_to(used);
                        return Some(f);
                    }
                    Err(e) if e.is_incomplete() => {}
                    Err(e) => panic!("server sent an unparsable frame: {e:?}"),
                }
            }
            let n = within(self.s.read_buf(&mut self.buf)).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// The next method frame (skipping heartbeats and content).
    pub async fn method(&mut self) -> Option<(u16, AMQPClass)> {
        loop {
            match self.frame().await? {
                AMQPFrame::Method(ch, m) => return Some((ch, m)),
                _ => continue,
            }
        }
    }

    /// Reads until the server closes the channel or connection.
    pub async fn closed(&mut self) -> Closed {
        loop {
            match self.method().await {
                Some((ch, AMQPClass::Channel(channel::AMQPMethod::Close(c)))) => {
                    assert_ne!(ch, 0);
                    return Closed {
                        connection: false,
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                        class_id: c.class_id,
                        method_id: c.method_id,
                    };
                }
                Some((0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                    return Closed {
                        connection: true,
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                        class_id: c.class_id,
                        method_id: c.method_id,
                    }
                }
                Some(_) => continue,
                None => panic!("connection ended without a close"),
            }
        }
    }

    /// Reads until end of stream; true if the server closed the socket.
    pub async fn eof(&mut self) -> bool {
        while self.frame().await.is_some() {}
        true
    }

    /// Protocol header, PLAIN guest/guest, tune-ok echoing the server,
    /// open `/`.
    pub async fn handshake(&mut self) {
        self.handshake_with(0, 0).await;
    }

    /// As [`handshake`](Self::handshake) with the client's channel max and
    /// frame max (0 = echo the server's).
    pub async fn handshake_with(&mut self, channel_max: u16, frame_max: u32) {
        self.handshake_full(channel_max, frame_max, 0).await;
    }

    /// As [`handshake_with`](Self::handshake_with), also asking for
    /// `heartbeat` seconds.
    pub async fn handshake_full(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.send(b"AMQP\x00\x00\x09\x01").await;
        match self.method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Start(_)))) => {}
            other => panic!("expected connection.start, got {other:?}"),
        }
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: LongString::from("\0guest\0guest"),
                locale: "en_US".into(),
            })),
        )
        .await;
        let tune = match self.method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::Tune(t)))) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: if channel_max == 0 {
                    tune.channel_max
                } else {
                    channel_max
                },
                frame_max: if frame_max == 0 {
                    tune.frame_max
                } else {
                    frame_max
                },
                heartbeat,
            })),
        )
        .await;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        )
        .await;
        match self.method().await {
            Some((0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    pub async fn open_channel(&mut self, ch: u16) {
        self.send_method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        match self.method().await {
            Some((c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) if c == ch => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }
}
