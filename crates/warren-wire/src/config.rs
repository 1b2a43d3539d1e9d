//! What a [`Server`](crate::Server) serves and to whom: virtual hosts, users,
//! limits, and the memory watermark.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use warren_core::Broker;

/// A user that may log in, with the virtual hosts it may open.
///
/// # Examples
///
/// ```
/// use warren_wire::User;
///
/// let alice = User::new("alice", "s3cret").with_vhosts(["/", "billing"]);
/// assert!(alice.may_open("billing"));
/// assert!(!alice.may_open("other"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The password, compared as given (PLAIN and AMQPLAIN carry it in clear).
    pub password: String,
    /// Virtual hosts this user may open; `None` means all of them.
    pub vhosts: Option<Vec<String>>,
    /// Accept this user only from a loopback address (RabbitMQ's rule for
    /// `guest`).
    pub loopback_only: bool,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password", &"<hidden>")
            .field("vhosts", &self.vhosts)
            .field("loopback_only", &self.loopback_only)
            .finish()
    }
}

impl User {
    /// A user allowed on every virtual host, from any address.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        User {
            name: name.into(),
            password: password.into(),
            vhosts: None,
            loopback_only: false,
        }
    }

    /// RabbitMQ's default user: `guest` / `guest`, loopback only.
    pub fn guest() -> Self {
        User::new("guest", "guest").with_loopback_only(true)
    }

    /// Restricts the user to these virtual hosts.
    pub fn with_vhosts<I, S>(mut self, vhosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.vhosts = Some(vhosts.into_iter().map(Into::into).collect());
        self
    }

    /// Sets [`loopback_only`](Self::loopback_only).
    pub fn with_loopback_only(mut self, loopback_only: bool) -> Self {
        self.loopback_only = loopback_only;
        self
    }

    /// Whether this user may open the virtual host `vhost`.
    pub fn may_open(&self, vhost: &str) -> bool {
        match &self.vhosts {
            None => true,
            Some(v) => v.iter().any(|h| h == vhost),
        }
    }
}

/// Protocol limits the server negotiates and enforces.
///
/// Exceeding them gets the AMQP error RabbitMQ sends: a frame larger than
/// `frame_max` closes the connection with 501 FRAME_ERROR, a channel beyond
/// `channel_max` with 530 NOT_ALLOWED, a message larger than
/// `max_message_size` closes its channel with 406 PRECONDITION_FAILED.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header and end byte included, that the server proposes
    /// and accepts (RabbitMQ: 131072). At least 4096.
    pub frame_max: u32,
    /// Most channels per connection the server proposes (RabbitMQ: 2047).
    pub channel_max: u16,
    /// Largest message body accepted, in bytes (RabbitMQ: 128 MiB).
    pub max_message_size: u64,
    /// Heartbeat interval the server proposes, in seconds; 0 disables
    /// (RabbitMQ: 60). The client's answer wins.
    pub heartbeat: u16,
    /// How long a client may take from TCP connect to `connection.open`
    /// (RabbitMQ: 10 s).
    pub handshake_timeout: Duration,
    /// Most client connections open at once (RabbitMQ's `connection_max`;
    /// `None`, the default, is no limit). Connections still in the
    /// handshake count. A client opening one connection too many is refused
    /// at `connection.open` with 530 NOT_ALLOWED, as current RabbitMQ does
    /// (3.10 hands the limit to its acceptor pool, which leaves extra
    /// sockets unserved, without a word, and counts per acceptor: with
    /// `connection_max = 1`, 3.10.8 served 8 connections).
    pub connection_max: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_max: 131_072,
            channel_max: 2047,
            max_message_size: 128 * 1024 * 1024,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            connection_max: None,
        }
    }
}

/// A function that reports how many bytes of messages the server holds.
pub type MemoryProbe = Arc<dyn Fn() -> u64 + Send + Sync>;

/// When to block publishers: RabbitMQ's memory alarm.
///
/// Every `interval` the server measures the bytes its brokers hold; above
/// `high_watermark`, connections that publish are sent `connection.blocked`
/// and are not read from until the measure falls back under the watermark
/// (then `connection.unblocked`). Consumers keep receiving meanwhile.
#[derive(Clone)]
pub struct MemoryWatermark {
    /// Bytes above which publishers are blocked.
    pub high_watermark: u64,
    /// How often to measure.
    pub interval: Duration,
    /// How to measure. `None`: the body bytes of the ready messages in every
    /// virtual host, plus the unacknowledged ones at the average body size
    /// published over the wire.
    pub probe: Option<MemoryProbe>,
}

impl fmt::Debug for MemoryWatermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWatermark")
            .field("high_watermark", &self.high_watermark)
            .field("interval", &self.interval)
            .field("probe", &self.probe.as_ref().map(|_| "custom"))
            .finish()
    }
}

impl MemoryWatermark {
    /// A watermark measured with the default probe every 250 ms.
    pub fn new(high_watermark: u64) -> Self {
        MemoryWatermark {
            high_watermark,
            interval: Duration::from_millis(250),
            probe: None,
        }
    }

    /// Measures with `probe` instead of the default estimate.
    pub fn with_probe(mut self, probe: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// Sets how often to measure.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// What a [`Server`](crate::Server) serves: virtual hosts mapped to brokers,
/// users, limits.
///
/// A new config has no virtual host and one user, RabbitMQ's `guest` /
/// `guest`, accepted only from loopback addresses.
///
/// # Examples
///
/// ```
/// use warren_core::Broker;
/// use warren_wire::{ServerConfig, User};
///
/// let config = ServerConfig::new()
///     .with_vhost("/", Broker::new())
///     .with_user(User::new("app", "secret").with_vhosts(["/"]));
/// assert!(config.broker("/").is_some());
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) vhosts: HashMap<String, Broker>,
    pub(crate) users: Vec<User>,
    /// Protocol limits.
    pub limits: Limits,
    /// The memory alarm; `None` never blocks publishers.
    pub memory: Option<MemoryWatermark>,
    /// The `product` the server announces in `connection.start`.
    pub product: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::new()
    }
}

impl ServerConfig {
    /// No virtual hosts, the `guest` user, default limits, no memory alarm.
    pub fn new() -> Self {
        ServerConfig {
            vhosts: HashMap::new(),
            users: vec![User::guest()],
            limits: Limits::default(),
            memory: None,
            product: "warren".to_owned(),
        }
    }

    /// A config serving `broker` as virtual host `/`.
    pub fn with_broker(broker: Broker) -> Self {
        ServerConfig::new().with_vhost("/", broker)
    }

    /// Serves `broker` as virtual host `name` (replacing one of that name).
    ///
    /// Error texts quote the broker's own name
    /// ([`Broker::vhost`](warren_core::Broker::vhost)), so create it with
    /// `BrokerOptions { vhost: name, .. }` for them to name `name`.
    pub fn with_vhost(mut self, name: impl Into<String>, broker: Broker) -> Self {
        self.vhosts.insert(name.into(), broker);
        self
    }

    /// Adds a user, replacing one of the same name (so `guest` can be given
    /// another password or made reachable from anywhere).
    pub fn with_user(mut self, user: User) -> Self {
        self.users.retain(|u| u.name != user.name);
        self.users.push(user);
        self
    }

    /// Removes a user (for example `guest`).
    pub fn without_user(mut self, name: &str) -> Self {
        self.users.retain(|u| u.name != name);
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the memory alarm.
    pub fn with_memory_watermark(mut self, memory: MemoryWatermark) -> Self {
        self.memory = Some(memory);
        self
    }

    /// The broker serving virtual host `name`.
    pub fn broker(&self, name: &str) -> Option<&Broker> {
        self.vhosts.get(name)
    }

    /// The virtual hosts' names, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vhosts.keys().cloned().collect();
        v.sort();
        v
    }

    /// The users.
    pub fn users(&self) -> &[User] {
        &self.users
    }

    pub(crate) fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}
