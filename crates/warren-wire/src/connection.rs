//! One client connection: the protocol header, the handshake, then frames
//! dispatched to channels, until either side closes.
//!
//! One task (this module) reads and handles frames in order; the writer task
//! sends; consumer tasks forward deliveries. Errors follow RabbitMQ: a
//! channel-level error (reply code below 500) closes the channel with
//! `channel.close`, a connection-level one closes the connection with
//! `connection.close`; either way the closed channels' unacknowledged
//! messages go back to their queues, and the connection's exclusive queues are
//! deleted when it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue as WireValue, FieldTable as WireTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use warren_core::{Broker, OwnerId};

use crate::auth;
use crate::channel::Channel;
use crate::codec::{self, Inbound, FRAME_OVERHEAD};
use crate::convert::short;
use crate::error::{AmqpError, Scope};
use crate::server::Shared;
use crate::writer::{self, Out, OutTx};

/// The protocol header of AMQP 0-9-1.
pub(crate) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The smallest `frame_max` AMQP allows.
const FRAME_MIN_SIZE: u32 = 4096;
/// How long to wait for `connection.close-ok` after sending `connection.close`.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to let the writer flush when the connection ends.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `connection.start` sent, waiting for `start-ok`.
    Starting,
    /// `connection.tune` sent, waiting for `tune-ok`.
    Tuning,
    /// Waiting for `connection.open`.
    Opening,
    Running,
    /// `connection.close` sent, waiting for `close-ok`.
    Closing,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Tuning => "tuning",
            State::Opening => "opening",
            State::Running => "running",
            State::Closing | State::Closed => "closing",
        }
    }
}

/// What the client told us it understands.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Capabilities {
    pub(crate) consumer_cancel_notify: bool,
    pub(crate) connection_blocked: bool,
}

/// The configured handshake timeout, bounded so deadlines cannot overflow.
fn handshake_timeout(shared: &Shared) -> Duration {
    shared
        .config
        .limits
        .handshake_timeout
        .min(Duration::from_secs(24 * 3600))
}

/// Whether `login` may log in from `peer`: a known user, the right password,
/// and a loopback address for loopback-only users (RabbitMQ's `guest`).
fn login_allowed(
    config: &crate::config::ServerConfig,
    login: &auth::Login,
    peer: SocketAddr,
) -> bool {
    let loopback = peer.ip().to_canonical().is_loopback();
    match config.user(&login.user) {
        Some(u) => u.password == login.password && (loopback || !u.loopback_only),
        None => false,
    }
}

/// Serves one connection to the end, reading from `rd` and writing to `wr`
/// (a TCP stream's halves, or any stream's). The caller has counted it in
/// with [`Shared::connection_opened`]; it is counted out when this ends or
/// is dropped.
pub(crate) async fn serve<R, W>(mut rd: R, mut wr: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    struct Count(Arc<Shared>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.connection_closed();
        }
    }
    let _count = Count(shared.clone());

    let mut header = [0u8; 8];
    let got = tokio::time::timeout(handshake_timeout(&shared), rd.read_exact(&mut header)).await;
    match got {
        Ok(Ok(_)) if &header == PROTOCOL_HEADER => {}
        Ok(Ok(_)) => {
            // Wrong protocol or version: answer with ours and close.
            let _ = wr.write_all(PROTOCOL_HEADER).await;
            let _ = wr.shutdown().await;
            return;
        }
        _ => return,
    }

    let (out, writer) = writer::spawn(wr);
    let mut conn = Connection::new(shared, peer, out);
    conn.send_start();
    conn.run(&mut rd).await;
    conn.teardown().await;
    conn.out.send(Out::Close);
    drop(conn);
    let abort = writer.abort_handle();
    if tokio::time::timeout(FLUSH_TIMEOUT, writer).await.is_err() {
        abort.abort();
    }
}

pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
    pub(crate) out: OutTx,
    rbuf: BytesMut,
    state: State,
    pub(crate) frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    pub(crate) user: String,
    pub(crate) vhost: Arc<str>,
    pub(crate) broker: Option<Broker>,
    pub(crate) owner: Option<OwnerId>,
    pub(crate) caps: Capabilities,
    pub(crate) channels: HashMap<u16, Channel>,
    pub(crate) alarm: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    torn_down: bool,
}

impl Connection {
    fn new(shared: Arc<Shared>, peer: SocketAddr, out: OutTx) -> Self {
        let alarm = shared.alarm.subscribe();
        let shutdown = shared.shutdown.clone();
        let frame_max = shared.config.limits.frame_max.max(FRAME_MIN_SIZE);
        Connection {
            shared,
            peer,
            out,
            rbuf: BytesMut::with_capacity(16 * 1024),
            state: State::Starting,
            frame_max,
            channel_max: 0,
            heartbeat: 0,
            user: String::new(),
            vhost: Arc::from(""),
            broker: None,
            owner: None,
            caps: Capabilities::default(),
            channels: HashMap::new(),
            alarm,
            shutdown,
            torn_down: false,
        }
    }

    fn send_start(&self) {
        let mut caps = WireTable::default();
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "authentication_failure_close",
            "per_consumer_qos",
            "direct_reply_to",
        ] {
            caps.insert(cap.into(), WireValue::Boolean(true));
        }
        let mut props = WireTable::default();
        let text = |s: &str| WireValue::LongString(LongString::from(s));
        props.insert("capabilities".into(), WireValue::FieldTable(caps));
        props.insert("product".into(), text(&self.shared.config.product));
        props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
        props.insert("platform".into(), text("Rust"));
        props.insert("cluster_name".into(), text("warren"));
        props.insert(
            "information".into(),
            text("warren-wire: an AMQP 0-9-1 server for warren brokers"),
        );
        props.insert("copyright".into(), text("The warren authors"));
        self.out.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props,
                mechanisms: LongString::from(auth::MECHANISMS),
                locales: LongString::from("en_US"),
            })),
        );
    }

    /// Reads and handles frames until the connection is over.
    async fn run<R: AsyncRead + Unpin>(&mut self, rd: &mut R) {
        let handshake_deadline = Instant::now() + handshake_timeout(&self.shared);
        loop {
            loop {
                match codec::next_frame(&mut self.rbuf, self.frame_max - FRAME_OVERHEAD) {
                    Ok(Some(frame)) => {
                        if let Err(e) = self.handle(frame).await {
                            self.fail(e, rd).await;
                            return;
                        }
                        if self.state == State::Closed {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.fail(e, rd).await;
                        return;
                    }
                }
            }
            self.flush_confirms();
            let heartbeat = (self.state == State::Running && self.heartbeat > 0)
                .then(|| Duration::from_secs(u64::from(self.heartbeat) * 2));
            let handshake = (self.state != State::Running).then_some(handshake_deadline);
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            let event = {
                let rbuf = &mut self.rbuf;
                let shutdown = &mut self.shutdown;
                let out = &self.out;
                let shared = &self.shared;
                let read = async {
                    // A client asking for replies faster than it reads them:
                    // read no more until the writer has caught up.
                    if !out.has_room() {
                        let _flow = shared.flow_started();
                        out.room().await;
                    }
                    // Two heartbeat intervals from now, not from before a pause:
                    // what the client sent meanwhile is still unread.
                    let deadline = handshake.or_else(|| heartbeat.map(|h| Instant::now() + h));
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, rd.read_buf(rbuf))
                            .await
                            .unwrap_or(Ok(0)),
                        None => rd.read_buf(rbuf).await,
                    }
                };
                let writer_gone = self.out.closed();
                tokio::select! {
                    r = read => Some(r),
                    // The writer gave up on the socket: nothing more to do.
                    _ = writer_gone => Some(Ok(0)),
                    _ = shutdown.wait_for(|s| *s) => None,
                }
            };
            match event {
                // Closed by the peer, broken, or silent for two heartbeat
                // intervals (RabbitMQ then drops the socket without a close).
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(_)) => {}
                None => {
                    let e = AmqpError::connection(
                        320,
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    self.fail(e, rd).await;
                    return;
                }
            }
        }
    }

    /// Sends `connection.close` for `e`, releases everything, and waits a
    /// little for the client's `close-ok`.
    async fn fail<R: AsyncRead + Unpin>(&mut self, e: AmqpError, rd: &mut R) {
        self.flush_confirms();
        self.out.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.state = State::Closing;
        self.teardown().await;
        let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, self.await_close_ok(rd)).await;
    }

    async fn await_close_ok<R: AsyncRead + Unpin>(&mut self, rd: &mut R) {
        loop {
            loop {
                match codec::next_frame(&mut self.rbuf, self.frame_max - FRAME_OVERHEAD) {
                    Ok(Some(Inbound::Method(0, m))) => match *m {
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => return,
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                            self.out.method(
                                0,
                                AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                    connection::CloseOk {},
                                )),
                            );
                            return;
                        }
                        _ => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            self.rbuf.reserve(16 * 1024);
            match rd.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Closes every channel (requeueing their unacknowledged messages) and
    /// deletes the connection's exclusive queues. Runs once.
    pub(crate) async fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut ch) = self.channels.remove(&id) {
                ch.release(&self.shared).await;
            }
        }
        if let (Some(broker), Some(owner)) = (&self.broker, self.owner) {
            broker.release_owner(owner);
        }
    }

    pub(crate) fn flush_confirms(&mut self) {
        for ch in self.channels.values_mut() {
            ch.flush_confirms(&self.out);
        }
    }

    async fn handle(&mut self, frame: Inbound) -> Result<(), AmqpError> {
        match self.state {
            State::Running => self.handle_running(frame).await,
            State::Closing | State::Closed => Ok(()),
            _ => self.handle_handshake(frame),
        }
    }

    fn unexpected(&self, m: &AMQPClass) -> AmqpError {
        AmqpError::connection(
            504,
            format!(
                "unexpected method in connection state {}",
                self.state.name()
            ),
        )
        .at(m.get_amqp_class_id(), m.get_amqp_method_id())
    }

    fn handle_handshake(&mut self, frame: Inbound) -> Result<(), AmqpError> {
        let m = match frame {
            Inbound::Heartbeat(_) => return Ok(()),
            Inbound::Method(0, m) => m,
            Inbound::Method(_, m) => return Err(self.unexpected(&m)),
            Inbound::Header(..) | Inbound::Body(..) => {
                return Err(AmqpError::connection(
                    505,
                    "expected method frame, got non method frame instead",
                ))
            }
        };
        match (self.state, *m) {
            (_, AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.state = State::Closed;
                Ok(())
            }
            (State::Starting, AMQPClass::Connection(connection::AMQPMethod::StartOk(s))) => {
                self.start_ok(s)
            }
            (State::Tuning, AMQPClass::Connection(connection::AMQPMethod::TuneOk(t))) => {
                self.tune_ok(t)
            }
            (State::Opening, AMQPClass::Connection(connection::AMQPMethod::Open(o))) => {
                self.open(o)
            }
            (_, m) => Err(self.unexpected(&m)),
        }
    }

    fn start_ok(&mut self, s: connection::StartOk) -> Result<(), AmqpError> {
        if let Some(WireValue::FieldTable(caps)) = s.client_properties.inner().get("capabilities") {
            let flag = |k: &str| matches!(caps.inner().get(k), Some(WireValue::Boolean(true)));
            self.caps.consumer_cancel_notify = flag("consumer_cancel_notify");
            self.caps.connection_blocked = flag("connection.blocked");
        }
        let mechanism = s.mechanism.as_str();
        if mechanism != "PLAIN" && mechanism != "AMQPLAIN" {
            return Err(AmqpError::connection(
                503,
                format!("unknown authentication mechanism '{mechanism}'"),
            ));
        }
        let refused = || {
            AmqpError::connection(
                403,
                format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            )
        };
        let login = auth::parse_response(mechanism, s.response.as_bytes()).ok_or_else(refused)?;
        if !login_allowed(&self.shared.config, &login, self.peer) {
            return Err(refused());
        }
        self.user = login.user;
        let limits = &self.shared.config.limits;
        self.out.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: limits.channel_max,
                frame_max: self.frame_max,
                heartbeat: limits.heartbeat,
            })),
        );
        self.state = State::Tuning;
        Ok(())
    }

    fn tune_ok(&mut self, t: connection::TuneOk) -> Result<(), AmqpError> {
        let server_frame_max = self.frame_max;
        let frame_max = if t.frame_max == 0 {
            server_frame_max
        } else {
            t.frame_max
        };
        if frame_max < FRAME_MIN_SIZE {
            return Err(AmqpError::connection(
                530,
                format!("frame_max={frame_max} < {FRAME_MIN_SIZE} min size"),
            )
            .at(10, 31));
        }
        if frame_max > server_frame_max {
            return Err(AmqpError::connection(
                530,
                format!("frame_max={frame_max} > {server_frame_max} max size"),
            )
            .at(10, 31));
        }
        let server_channel_max = self.shared.config.limits.channel_max;
        let channel_max = match (t.channel_max, server_channel_max) {
            (0, s) => s,
            (c, 0) => c,
            (c, s) if c > s => {
                return Err(
                    AmqpError::connection(530, format!("channel_max={c} > {s} max size"))
                        .at(10, 31),
                )
            }
            (c, _) => c,
        };
        self.frame_max = frame_max;
        self.channel_max = if channel_max == 0 {
            u16::MAX
        } else {
            channel_max
        };
        self.heartbeat = t.heartbeat;
        self.out.send(Out::Tune {
            frame_max,
            heartbeat: t.heartbeat,
        });
        self.state = State::Opening;
        Ok(())
    }

    fn open(&mut self, o: connection::Open) -> Result<(), AmqpError> {
        let vhost = o.virtual_host.as_str();
        let Some(broker) = self.shared.config.vhosts.get(vhost) else {
            return Err(AmqpError::connection(530, format!("vhost {vhost} not found")).at(10, 40));
        };
        let allowed = self
            .shared
            .config
            .user(&self.user)
            .is_some_and(|u| u.may_open(vhost));
        if !allowed {
            return Err(AmqpError::connection(
                530,
                format!("access to vhost '{vhost}' refused for user '{}'", self.user),
            )
            .at(10, 40));
        }
        if let Some(max) = self.shared.config.limits.connection_max {
            if self.shared.connection_count() > max {
                return Err(AmqpError::connection(
                    530,
                    format!("connection refused: node connection limit ({max}) is reached"),
                )
                .at(10, 40));
            }
        }
        self.owner = Some(broker.new_owner());
        self.broker = Some(broker.clone());
        self.vhost = Arc::from(vhost);
        self.out.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.state = State::Running;
        Ok(())
    }

    async fn handle_running(&mut self, frame: Inbound) -> Result<(), AmqpError> {
        match frame {
            Inbound::Heartbeat(0) => Ok(()),
            Inbound::Heartbeat(_) => Err(AmqpError::connection(505, "type 8, all octets = <<>>")),
            Inbound::Method(0, m) => self.connection_method(*m).await,
            Inbound::Method(ch, m) => self.channel_frame(ch, *m).await,
            Inbound::Header(ch, h) => {
                let r = self.content_header(ch, *h).await;
                self.channel_result(ch, r).await
            }
            Inbound::Body(ch, b) => {
                let r = self.content_body(ch, b).await;
                self.channel_result(ch, r).await
            }
        }
    }

    /// Closes channel `ch` for a channel-level error; passes a
    /// connection-level one up.
    async fn channel_result(&mut self, ch: u16, r: Result<(), AmqpError>) -> Result<(), AmqpError> {
        match r {
            Err(e) if e.scope == Scope::Channel => {
                self.close_channel(ch, e).await;
                Ok(())
            }
            r => r,
        }
    }

    async fn connection_method(&mut self, m: AMQPClass) -> Result<(), AmqpError> {
        match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                self.teardown().await;
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.state = State::Closed;
                Ok(())
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                self.out.method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Connection(
                connection::AMQPMethod::CloseOk(_)
                | connection::AMQPMethod::Blocked(_)
                | connection::AMQPMethod::Unblocked(_),
            ) => Ok(()),
            m => Err(self.unexpected(&m)),
        }
    }

    /// A method on channel `ch` (not 0).
    async fn channel_frame(&mut self, ch: u16, m: AMQPClass) -> Result<(), AmqpError> {
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        if class_id == 10 {
            return Err(AmqpError::connection(503, "unimplemented method").at(class_id, method_id));
        }
        let Some(chan) = self.channels.get_mut(&ch) else {
            return match m {
                AMQPClass::Channel(channel::AMQPMethod::Open(_)) => self.open_channel(ch),
                _ => {
                    Err(AmqpError::connection(504, "expected 'channel.open'")
                        .at(class_id, method_id))
                }
            };
        };
        if chan.closing {
            // Waiting for close-ok: everything else is dropped.
            match m {
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                    self.channels.remove(&ch);
                }
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.out.method(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    self.channels.remove(&ch);
                }
                _ => {}
            }
            return Ok(());
        }
        if let Some(e) = chan.expecting_content_error() {
            return Err(e);
        }
        let r = match m {
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                Err(AmqpError::connection(504, "second 'channel.open' seen"))
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                if let Some(mut chan) = self.channels.remove(&ch) {
                    chan.flush_confirms(&self.out);
                    chan.release(&self.shared).await;
                }
                self.out.method(
                    ch,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => Ok(()),
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                if f.active {
                    self.out.method(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                            active: true,
                        })),
                    );
                    Ok(())
                } else {
                    Err(AmqpError::connection(540, "active=false"))
                }
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            m => self.channel_method(ch, m).await,
        };
        let r = r.map_err(|e| e.or_at(class_id, method_id));
        self.channel_result(ch, r).await
    }

    fn open_channel(&mut self, ch: u16) -> Result<(), AmqpError> {
        if ch > self.channel_max {
            return Err(AmqpError::connection(
                530,
                format!(
                    "channel number {ch} exceeds the negotiated channel_max ({})",
                    self.channel_max
                ),
            )
            .at(20, 10));
        }
        if self.channels.len() >= usize::from(self.channel_max) {
            return Err(AmqpError::connection(
                530,
                format!(
                    "number of channels opened ({}) has reached the negotiated channel_max ({})",
                    self.channels.len(),
                    self.channel_max
                ),
            )
            .at(20, 10));
        }
        let chan = Channel::new(ch, self.out.clone(), self.vhost.clone(), self.caps);
        self.channels.insert(ch, chan);
        self.out.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        Ok(())
    }

    /// Closes channel `ch` with a channel-level error: `channel.close` is
    /// sent, its resources released; it stays, ignoring everything, until the
    /// client's `close-ok`.
    pub(crate) async fn close_channel(&mut self, ch: u16, e: AmqpError) {
        let Some(chan) = self.channels.get_mut(&ch) else {
            return;
        };
        chan.flush_confirms(&self.out);
        self.out.method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: short(&e.text),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        chan.closing = true;
        chan.release(&self.shared).await;
    }

    /// Blocks the connection while the memory alarm is on (RabbitMQ's
    /// `connection.blocked`): nothing more is read until it clears.
    pub(crate) async fn wait_while_blocked(&mut self) -> Result<(), AmqpError> {
        if !*self.alarm.borrow() {
            return Ok(());
        }
        self.flush_confirms();
        if self.caps.connection_blocked {
            self.out.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: "low on memory".into(),
                })),
            );
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = self.alarm.wait_for(|on| !*on) => {}
            _ = shutdown.wait_for(|s| *s) => {
                return Err(AmqpError::connection(
                    320,
                    "broker forced connection closure with reason 'shutdown'",
                ));
            }
        }
        if self.caps.connection_blocked {
            self.out.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
        Ok(())
    }
}

impl Drop for Connection {
    /// A connection dropped before its teardown (its future was dropped):
    /// its channels release what they hold as they drop; its exclusive
    /// queues go here.
    fn drop(&mut self) {
        if !self.torn_down {
            if let (Some(broker), Some(owner)) = (&self.broker, self.owner) {
                broker.release_owner(owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerConfig, User};

    #[test]
    fn guest_only_from_loopback() {
        let config = ServerConfig::new().with_user(User::new("app", "pw"));
        let login = |user: &str, password: &str| auth::Login {
            user: user.into(),
            password: password.into(),
        };
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let local6: SocketAddr = "[::1]:4000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        for peer in [local, local6, mapped] {
            assert!(login_allowed(&config, &login("guest", "guest"), peer));
        }
        assert!(!login_allowed(&config, &login("guest", "guest"), remote));
        assert!(!login_allowed(&config, &login("guest", "nope"), local));
        assert!(login_allowed(&config, &login("app", "pw"), remote));
        assert!(!login_allowed(&config, &login("nobody", "pw"), local));
        let open_guest = config.with_user(User::new("guest", "guest"));
        assert!(login_allowed(&open_guest, &login("guest", "guest"), remote));
    }
}
