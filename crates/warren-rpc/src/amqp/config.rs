//! The `amqp://` URL: hosts, credentials, virtual host and options.

use std::time::Duration;

use lapin::uri::{
    AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo, SASLMechanism,
};

use crate::error::TransportError;

const DEFAULT_PORT: u16 = 5672;

/// One broker of the URL's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Host {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: String,
    pub(crate) password: String,
}

/// Everything an `amqp://` URL says.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Config {
    /// The brokers, tried in turn.
    pub(crate) hosts: Vec<Host>,
    /// The virtual host (`/` when the URL names none).
    pub(crate) vhost: String,
    /// The URL with passwords replaced by `***`.
    pub(crate) redacted: String,
    /// AMQP heartbeat, seconds (0: none).
    pub(crate) heartbeat: u16,
    /// How long one connection attempt may take.
    pub(crate) connection_timeout: Duration,
    /// Replaces the listeners' own prefetch when set.
    pub(crate) prefetch: Option<u16>,
    /// oslo's `amqp_durable_queues`.
    pub(crate) durable_queues: bool,
    /// oslo's `amqp_auto_delete`.
    pub(crate) auto_delete: bool,
    /// oslo's `rabbit_quorum_queue`.
    pub(crate) quorum_queues: bool,
    /// oslo's `rabbit_transient_queues_ttl`, in milliseconds (`x-expires` of
    /// reply and fanout queues); 0: none.
    pub(crate) transient_ttl_ms: u32,
    /// Connection retries of operations that have no retry of their own
    /// (`None`: without limit).
    pub(crate) retry: Option<u32>,
    /// Reconnection backoff: first delay, step, cap (oslo's
    /// `rabbit_retry_interval`, `rabbit_retry_backoff`, `rabbit_interval_max`).
    pub(crate) retry_interval: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) interval_max: Duration,
    /// oslo's `control_exchange`.
    pub(crate) control_exchange: String,
    /// oslo's `rabbit_login_method`.
    pub(crate) login_method: SASLMechanism,
}

impl Config {
    /// Whether topic exchanges and queues are durable (oslo's `durable`:
    /// `amqp_durable_queues or rabbit_quorum_queue`).
    pub(crate) fn durable(&self) -> bool {
        self.durable_queues || self.quorum_queues
    }

    /// The lapin URI of host `i` (modulo the number of hosts).
    pub(crate) fn uri(&self, i: usize) -> AMQPUri {
        let h = &self.hosts[i % self.hosts.len()];
        AMQPUri {
            scheme: AMQPScheme::AMQP,
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: h.username.clone(),
                    password: h.password.clone(),
                },
                host: h.host.clone(),
                port: h.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(self.heartbeat),
                connection_timeout: Some(
                    u64::try_from(self.connection_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                auth_mechanism: Some(self.login_method),
                ..AMQPQueryString::default()
            },
        }
    }

    /// Parses `amqp://` (or oslo's `rabbit://`) URLs:
    /// `amqp://user:pass@host:port[,user:pass@host:port...]/vhost?option=value&...`.
    pub(crate) fn parse(url: &str) -> Result<Config, TransportError> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(TransportError::InvalidUrl(url.to_owned()));
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (netlocs, path) = match before_query.split_once('/') {
            Some((n, p)) => (n, Some(p)),
            None => (before_query, None),
        };
        let mut redacted = format!("{scheme}://");
        for (i, netloc) in netlocs.split(',').enumerate() {
            if i > 0 {
                redacted.push(',');
            }
            match netloc.rsplit_once('@') {
                Some((userinfo, hostport)) => {
                    match userinfo.split_once(':') {
                        Some((user, _)) => {
                            redacted.push_str(user);
                            redacted.push_str(":***");
                        }
                        None => redacted.push_str(userinfo),
                    }
                    redacted.push('@');
                    redacted.push_str(hostport);
                }
                None => redacted.push_str(netloc),
            }
        }
        if let Some(p) = path {
            redacted.push('/');
            redacted.push_str(p);
        }
        if let Some(q) = query {
            redacted.push('?');
            redacted.push_str(q);
        }
        let with_url = |reason: String| TransportError::BadUrl {
            url: redacted.clone(),
            reason,
        };
        let hosts = netlocs
            .split(',')
            .map(parse_host)
            .collect::<Result<Vec<_>, _>>()
            .map_err(with_url)?;
        match scheme {
            "amqp" | "rabbit" => {}
            "amqps" => {
                return Err(with_url(
                    "TLS (amqps) is not supported by this build".to_owned(),
                ))
            }
            other => return Err(TransportError::UnsupportedScheme(other.to_owned())),
        }
        let vhost = match path {
            None => "/".to_owned(),
            Some(p) => {
                let v = decode(p).map_err(with_url)?;
                if v.is_empty() {
                    "/".to_owned()
                } else {
                    v
                }
            }
        };
        let mut config = Config {
            hosts,
            vhost,
            redacted: redacted.clone(),
            heartbeat: 60,
            connection_timeout: Duration::from_secs(10),
            prefetch: None,
            durable_queues: false,
            auto_delete: false,
            quorum_queues: false,
            transient_ttl_ms: 1_800_000,
            retry: None,
            retry_interval: Duration::from_secs(1),
            retry_backoff: Duration::from_secs(2),
            interval_max: Duration::from_secs(30),
            control_exchange: "openstack".to_owned(),
            login_method: SASLMechanism::Plain,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            config.set(key, value).map_err(with_url)?;
        }
        Ok(config)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let value = decode(value)?;
        let bad = || format!("bad value '{value}' for option '{key}'");
        let int = |v: &str| v.parse::<u64>().map_err(|_| bad());
        let secs = |v: &str| match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
            _ => Err(bad()),
        };
        let flag = |v: &str| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(bad()),
        };
        match key {
            "heartbeat" => self.heartbeat = u16::try_from(int(&value)?).map_err(|_| bad())?,
            "connection_timeout" => self.connection_timeout = Duration::from_millis(int(&value)?),
            "prefetch" => {
                let n = u16::try_from(int(&value)?).map_err(|_| bad())?;
                self.prefetch = (n > 0).then_some(n);
            }
            "durable_queues" => self.durable_queues = flag(&value)?,
            "auto_delete" => self.auto_delete = flag(&value)?,
            "quorum_queues" => self.quorum_queues = flag(&value)?,
            "transient_queues_ttl" => {
                let ms = int(&value)?.checked_mul(1000).ok_or_else(bad)?;
                self.transient_ttl_ms = u32::try_from(ms).map_err(|_| bad())?;
            }
            "retry" => {
                self.retry = match value.parse::<i64>() {
                    Ok(n) if n < 0 => None,
                    Ok(n) => Some(u32::try_from(n).map_err(|_| bad())?),
                    Err(_) => return Err(bad()),
                }
            }
            "retry_interval" => self.retry_interval = secs(&value)?,
            "retry_backoff" => self.retry_backoff = secs(&value)?,
            "interval_max" => self.interval_max = secs(&value)?,
            "control_exchange" => {
                if value.is_empty() {
                    return Err(bad());
                }
                self.control_exchange = value;
            }
            "login_method" => {
                self.login_method = match value.to_ascii_uppercase().as_str() {
                    "PLAIN" => SASLMechanism::Plain,
                    "AMQPLAIN" => SASLMechanism::AMQPlain,
                    _ => return Err(bad()),
                }
            }
            "ssl" => {
                if flag(&value)? {
                    return Err("TLS (ssl) is not supported by this build".to_owned());
                }
            }
            other => return Err(format!("unknown option '{other}'")),
        }
        Ok(())
    }
}

/// `[user[:password]@]host[:port]`; guest / guest and localhost:5672 by
/// default. Errors never quote the password.
fn parse_host(netloc: &str) -> Result<Host, String> {
    let (userinfo, hostport) = match netloc.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, netloc),
    };
    let (username, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                decode(user)?,
                Some(decode(pass).map_err(|_| "bad percent-encoding in a password".to_owned())?),
            ),
            None => (decode(u)?, None),
        },
        None => (String::new(), None),
    };
    let (host, port) = split_host_port(hostport)?;
    Ok(Host {
        host: if host.is_empty() {
            "localhost".to_owned()
        } else {
            host
        },
        port: port.unwrap_or(DEFAULT_PORT),
        username: if username.is_empty() {
            "guest".to_owned()
        } else {
            username
        },
        password: password.unwrap_or_else(|| "guest".to_owned()),
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("bad port '{p}'"))
            .map(Some)
    };
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("bad host '{s}'"));
        };
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_owned(), port(p)?)),
            None if after.is_empty() => Ok((host.to_owned(), None)),
            None => Err(format!("bad host '{s}'")),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Ok((decode(h)?, port(p)?)),
        None => Ok((decode(s)?, None)),
    }
}

/// Percent-decoding (`%2F` is `/`); the result must be UTF-8.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return Err(format!("bad percent-encoding in '{s}'")),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host() {
        let c = Config::parse("amqp://guest:s%40cret@127.0.0.1:5673/%2F").unwrap();
        assert_eq!(
            c.hosts,
            [Host {
                host: "127.0.0.1".into(),
                port: 5673,
                username: "guest".into(),
                password: "s@cret".into()
            }]
        );
        assert_eq!(c.vhost, "/");
        assert_eq!(c.redacted, "amqp://guest:***@127.0.0.1:5673/%2F");
        let u = c.uri(0);
        assert_eq!(u.authority.userinfo.password, "s@cret");
        assert_eq!(u.query.heartbeat, Some(60));
    }

    #[test]
    fn defaults_and_oslo_forms() {
        let c = Config::parse("rabbit://").unwrap();
        assert_eq!(c.hosts[0].host, "localhost");
        assert_eq!(c.hosts[0].port, 5672);
        assert_eq!(
            (c.hosts[0].username.as_str(), c.hosts[0].password.as_str()),
            ("guest", "guest")
        );
        assert_eq!(c.vhost, "/");
        assert_eq!(c.control_exchange, "openstack");
        assert_eq!(c.transient_ttl_ms, 1_800_000);
        assert_eq!(Config::parse("amqp://h/").unwrap().vhost, "/");
        assert_eq!(Config::parse("amqp://h/nova").unwrap().vhost, "nova");
        assert_eq!(Config::parse("amqp://h:1/a%2Fb").unwrap().vhost, "a/b");
        let c = Config::parse("amqp://u@[::1]:5673").unwrap();
        assert_eq!((c.hosts[0].host.as_str(), c.hosts[0].port), ("::1", 5673));
        assert_eq!(c.hosts[0].password, "guest");
    }

    #[test]
    fn several_hosts() {
        let c = Config::parse("amqp://a:pa@h1:5672,b:pb@h2:5673/vh").unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.hosts[1].host, "h2");
        assert_eq!(c.hosts[1].username, "b");
        assert_eq!(c.redacted, "amqp://a:***@h1:5672,b:***@h2:5673/vh");
        assert_eq!(c.uri(3).authority.host, "h2");
        assert_eq!(c.vhost, "vh");
    }

    #[test]
    fn options() {
        let c = Config::parse(
            "amqp://h/?heartbeat=10&connection_timeout=500&prefetch=8&durable_queues=true\
             &auto_delete=0&quorum_queues=yes&transient_queues_ttl=60&retry=3\
             &retry_interval=0.25&retry_backoff=0.5&interval_max=4&control_exchange=nova\
             &login_method=amqplain",
        )
        .unwrap();
        assert_eq!(c.heartbeat, 10);
        assert_eq!(c.connection_timeout, Duration::from_millis(500));
        assert_eq!(c.prefetch, Some(8));
        assert!(c.durable_queues && !c.auto_delete && c.quorum_queues && c.durable());
        assert_eq!(c.transient_ttl_ms, 60_000);
        assert_eq!(c.retry, Some(3));
        assert_eq!(c.retry_interval, Duration::from_millis(250));
        assert_eq!(c.interval_max, Duration::from_secs(4));
        assert_eq!(c.control_exchange, "nova");
        assert_eq!(c.login_method, SASLMechanism::AMQPlain);
        assert_eq!(Config::parse("amqp://h?retry=-1").unwrap().retry, None);
        assert_eq!(Config::parse("amqp://h?prefetch=0").unwrap().prefetch, None);
    }

    #[test]
    fn errors_hide_the_password() {
        for (url, needle) in [
            ("amqp://u:secret@h/?nope=1", "unknown option 'nope'"),
            ("amqp://u:secret@h/?heartbeat=x", "bad value 'x'"),
            ("amqp://u:secret@h:99999/", "bad port"),
            ("amqps://u:secret@h/", "TLS"),
            ("amqp://u:secret@h/?ssl=1", "TLS"),
            ("amqp://u:secret@h/%zz", "percent"),
            ("amqp://u:sec%zzret@h/", "password"),
        ] {
            match Config::parse(url) {
                Err(e @ TransportError::BadUrl { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(needle), "{text}");
                    assert!(!text.contains("secret"), "{text}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(matches!(
            Config::parse("kafka://h"),
            Err(TransportError::UnsupportedScheme(s)) if s == "kafka"
        ));
        assert!(Config::parse("amqp://h/?ssl=0").is_ok());
    }
}
