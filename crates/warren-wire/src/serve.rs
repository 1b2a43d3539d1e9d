//! `warren serve`: a standalone server from a TOML file.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use warren_core::{Broker, BrokerOptions};

use crate::config::{Limits, MemoryWatermark, ServerConfig, User};
use crate::error::ConfigError;
use crate::server::Server;

/// The configuration of `warren serve`, usually read from a TOML file.
///
/// Every field has a default, so an empty file (or
/// [`ServeConfig::default()`]) serves virtual host `/` on
/// `127.0.0.1:5672` to `guest` / `guest` from loopback, like a fresh
/// RabbitMQ.
///
/// ```toml
/// listen = "127.0.0.1:5672"
/// vhosts = ["/", "staging"]
///
/// [limits]
/// frame_max = 131072            # bytes, at least 4096
/// channel_max = 2047
/// max_message_size = 134217728  # bytes
/// heartbeat = 60                # seconds, 0 = off
/// handshake_timeout_ms = 10000
/// connection_max = 10000        # optional: default no limit
///
/// [memory]                      # optional: block publishers above this
/// high_watermark = 1073741824   # bytes
/// interval_ms = 250
///
/// [[users]]                     # optional: without any, guest/guest (loopback only)
/// name = "guest"
/// password = "guest"            # loopback_only defaults to true for guest
///
/// [[users]]
/// name = "app"
/// password = "secret"
/// vhosts = ["staging"]          # default: every vhost
/// loopback_only = false
/// ```
///
/// # Examples
///
/// ```
/// use warren_wire::ServeConfig;
///
/// let config = ServeConfig::from_toml_str(r#"
///     listen = "127.0.0.1:0"
///     vhosts = ["/", "jobs"]
///     [[users]]
///     name = "app"
///     password = "secret"
///     vhosts = ["jobs"]
/// "#)?;
/// let server_config = config.server_config()?;
/// assert!(server_config.broker("jobs").is_some());
/// # Ok::<(), warren_wire::ConfigError>(())
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (default `127.0.0.1:5672`).
    pub listen: String,
    /// Virtual hosts, each served by its own broker (default `["/"]`).
    pub vhosts: Vec<String>,
    /// Users; empty means `guest` / `guest` from loopback only.
    pub users: Vec<UserEntry>,
    /// Protocol limits.
    pub limits: LimitsEntry,
    /// The memory alarm, if any.
    pub memory: Option<MemoryEntry>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "127.0.0.1:5672".to_owned(),
            vhosts: vec!["/".to_owned()],
            users: Vec::new(),
            limits: LimitsEntry::default(),
            memory: None,
        }
    }
}

/// A `[[users]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Virtual hosts the user may open (default: all).
    #[serde(default)]
    pub vhosts: Option<Vec<String>>,
    /// Accept only from loopback (default: true for `guest`, else false).
    #[serde(default)]
    pub loopback_only: Option<bool>,
}

/// The `[limits]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsEntry {
    /// See [`Limits::frame_max`].
    pub frame_max: u32,
    /// See [`Limits::channel_max`].
    pub channel_max: u16,
    /// See [`Limits::max_message_size`].
    pub max_message_size: u64,
    /// See [`Limits::heartbeat`].
    pub heartbeat: u16,
    /// See [`Limits::handshake_timeout`], in milliseconds.
    pub handshake_timeout_ms: u64,
    /// See [`Limits::connection_max`] (absent: no limit).
    pub connection_max: Option<usize>,
}

impl Default for LimitsEntry {
    fn default() -> Self {
        let l = Limits::default();
        LimitsEntry {
            frame_max: l.frame_max,
            channel_max: l.channel_max,
            max_message_size: l.max_message_size,
            heartbeat: l.heartbeat,
            handshake_timeout_ms: l.handshake_timeout.as_millis() as u64,
            connection_max: l.connection_max,
        }
    }
}

/// The `[memory]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemoryEntry {
    /// See [`MemoryWatermark::high_watermark`].
    pub high_watermark: u64,
    /// See [`MemoryWatermark::interval`], in milliseconds (default 250).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    250
}

impl ServeConfig {
    /// Parses the TOML format shown in the [type docs](Self).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for invalid TOML, unknown keys or wrong types.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Io`] if it cannot be read, else as
    /// [`from_toml_str`](Self::from_toml_str).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The [`ServerConfig`] this describes, with a new broker per virtual
    /// host.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] for no virtual host, a user allowed on an
    /// undeclared virtual host, or a `frame_max` below 4096.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        if self.vhosts.is_empty() {
            return Err(ConfigError::Invalid("no virtual host".into()));
        }
        if self.limits.frame_max < 4096 {
            return Err(ConfigError::Invalid(format!(
                "frame_max {} is below AMQP's minimum of 4096",
                self.limits.frame_max
            )));
        }
        let mut config = ServerConfig::new().with_limits(Limits {
            frame_max: self.limits.frame_max,
            channel_max: self.limits.channel_max,
            max_message_size: self.limits.max_message_size,
            heartbeat: self.limits.heartbeat,
            handshake_timeout: Duration::from_millis(self.limits.handshake_timeout_ms),
            connection_max: self.limits.connection_max,
        });
        for v in &self.vhosts {
            let broker = Broker::with_options(BrokerOptions {
                vhost: v.clone(),
                ..BrokerOptions::default()
            });
            config = config.with_vhost(v.clone(), broker);
        }
        if !self.users.is_empty() {
            config = config.without_user("guest");
        }
        for u in &self.users {
            if let Some(hosts) = &u.vhosts {
                if let Some(h) = hosts.iter().find(|h| !self.vhosts.contains(h)) {
                    return Err(ConfigError::Invalid(format!(
                        "user '{}' is allowed on vhost '{h}', which is not declared",
                        u.name
                    )));
                }
            }
            let mut user = User::new(u.name.clone(), u.password.clone())
                .with_loopback_only(u.loopback_only.unwrap_or(u.name == "guest"));
            user.vhosts = u.vhosts.clone();
            config = config.with_user(user);
        }
        if let Some(m) = &self.memory {
            config = config.with_memory_watermark(
                MemoryWatermark::new(m.high_watermark)
                    .with_interval(Duration::from_millis(m.interval_ms.max(1))),
            );
        }
        Ok(config)
    }
}

/// Runs a standalone server until Ctrl-C (SIGINT), printing where it listens
/// and how to connect. What `warren serve` calls.
///
/// # Errors
///
/// An invalid configuration (as `InvalidInput`) or the I/O error of binding.
///
/// # Panics
///
/// Outside a tokio runtime.
///
/// # Cancel safety
///
/// Dropping the future stops the server at once.
pub async fn serve(config: ServeConfig) -> io::Result<()> {
    serve_until(config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// [`serve`] on a tokio runtime of its own, for a synchronous `main`: blocks
/// the thread until Ctrl-C.
///
/// ```no_run
/// fn main() -> std::io::Result<()> {
///     warren_wire::blocking_serve(warren_wire::ServeConfig::default())
/// }
/// ```
///
/// # Errors
///
/// As [`serve`], or the error of starting the runtime.
///
/// # Panics
///
/// Inside an async runtime (a runtime cannot be started from one).
pub fn blocking_serve(config: ServeConfig) -> io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren-wire")
        .build()?
        .block_on(serve(config))
}

/// As [`serve`], until `shutdown` completes instead of Ctrl-C.
///
/// # Errors
///
/// As [`serve`].
///
/// # Cancel safety
///
/// Dropping the future stops the server at once.
pub async fn serve_until(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let server_config = config
        .server_config()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let server = Server::bind(config.listen.as_str(), server_config).await?;
    println!("{}", banner(&config, &server));
    shutdown.await;
    println!("warren-wire: shutting down");
    server.shutdown().await;
    Ok(())
}

fn banner(config: &ServeConfig, server: &Server) -> String {
    let addr = server.local_addr();
    let vhost = config.vhosts.first().map(String::as_str).unwrap_or("/");
    let vhost_path = vhost.replace('%', "%25").replace('/', "%2F");
    let (user, password) = match config.users.first() {
        None => ("guest", "guest"),
        Some(u) if u.name == "guest" && u.password == "guest" => ("guest", "guest"),
        Some(u) => (u.name.as_str(), "<password>"),
    };
    format!(
        "warren-wire: AMQP 0-9-1 server listening on {addr} (vhosts: {})\n\
         connect with: amqp://{user}:{password}@{addr}/{vhost_path}\n\
         press Ctrl-C to stop",
        config.vhosts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_a_fresh_rabbitmq() {
        let c = ServeConfig::from_toml_str("").unwrap();
        assert_eq!(c, ServeConfig::default());
        let s = c.server_config().unwrap();
        assert_eq!(s.vhost_names(), ["/"]);
        assert_eq!(s.users(), [User::guest()]);
        assert_eq!(s.limits.connection_max, None);
    }

    #[test]
    fn full_file() {
        let c = ServeConfig::from_toml_str(
            r#"
            listen = "0.0.0.0:5673"
            vhosts = ["/", "b"]
            [limits]
            frame_max = 8192
            heartbeat = 0
            connection_max = 100
            [memory]
            high_watermark = 1000
            [[users]]
            name = "a"
            password = "p"
            vhosts = ["b"]
            "#,
        )
        .unwrap();
        let s = c.server_config().unwrap();
        assert_eq!(s.limits.frame_max, 8192);
        assert_eq!(s.limits.channel_max, 2047);
        assert_eq!(s.limits.connection_max, Some(100));
        assert_eq!(s.memory.as_ref().map(|m| m.high_watermark), Some(1000));
        assert_eq!(s.users().len(), 1);
        assert!(!s.users()[0].may_open("/"));
        assert!(s.broker("b").is_some_and(|b| b.vhost() == "b"));
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(matches!(
            ServeConfig::from_toml_str("lisen = \"x\""),
            Err(ConfigError::Parse(_))
        ));
        let c = ServeConfig::from_toml_str(
            "[[users]]\nname = \"a\"\npassword = \"p\"\nvhosts = [\"nope\"]",
        )
        .unwrap();
        assert!(matches!(c.server_config(), Err(ConfigError::Invalid(_))));
    }
}
