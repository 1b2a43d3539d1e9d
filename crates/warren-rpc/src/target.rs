//! Where a message goes: [`Target`], and the API [`Version`] it speaks.
//!
//! A target names a destination the way oslo.messaging does: an exchange
//! (default: the transport's control exchange, `openstack`), a topic (the
//! service, `volume`), optionally one server on that topic (`host1`), or
//! every server on it (`fanout`). Servers use the same type to say where they
//! listen. `namespace` and `version` select and check the endpoint that
//! handles a call.

use std::fmt;
use std::str::FromStr;

/// An RPC API version, `major.minor`.
///
/// A server implementing `M.m` can serve a caller asking for `M.n` when the
/// majors match and `n <= m`: minor versions only add. A third component
/// (oslo's revision, `1.2.3`) is accepted when parsing and ignored.
///
/// # Examples
///
/// ```
/// use warren_rpc::Version;
///
/// let server: Version = "3.4".parse()?;
/// assert!(server.can_serve(Version::new(3, 1)));
/// assert!(!server.can_serve(Version::new(3, 5)));
/// assert!(!server.can_serve(Version::new(2, 0)));
/// # Ok::<(), warren_rpc::VersionParseError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible changes bump it.
    pub major: u32,
    /// Compatible additions bump it.
    pub minor: u32,
}

impl Version {
    /// `1.0`, what oslo assumes when a message or an endpoint names no version.
    pub const DEFAULT: Version = Version::new(1, 0);

    /// The version `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Version {
        Version { major, minor }
    }

    /// Whether an implementation of this version can serve a caller asking
    /// for `requested`: same major, and `requested.minor <= self.minor`.
    pub fn can_serve(self, requested: Version) -> bool {
        self.major == requested.major && requested.minor <= self.minor
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::DEFAULT
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version string that is not `major.minor` with decimal integers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("version must be 'major.minor' with decimal integers, got '{0}'")]
pub struct VersionParseError(pub String);

impl FromStr for Version {
    type Err = VersionParseError;

    /// Parses `major.minor` (and ignores a third, revision component).
    ///
    /// # Errors
    ///
    /// [`VersionParseError`] for anything else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VersionParseError(s.to_owned());
        let mut parts = s.split('.');
        let major = parts.next().ok_or_else(bad)?;
        let minor = parts.next().ok_or_else(bad)?;
        let revision = parts.next();
        if parts.next().is_some() {
            return Err(bad());
        }
        let num = |p: &str| -> Result<u32, VersionParseError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let v = Version::new(num(major)?, num(minor)?);
        if let Some(r) = revision {
            num(r)?;
        }
        Ok(v)
    }
}

impl TryFrom<&str> for Version {
    type Error = VersionParseError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A destination for calls, casts and notifications, or what a server
/// listens on (oslo.messaging's `Target`).
///
/// | field       | for a client                                   | for a server                   |
/// |-------------|------------------------------------------------|--------------------------------|
/// | `exchange`  | the topic exchange (default: transport's)      | the same                       |
/// | `topic`     | the service: `volume`                          | the same                       |
/// | `server`    | one server only (queue `topic.server`)         | its name (required)            |
/// | `fanout`    | cast to every server on the topic              | —                              |
/// | `namespace` | selects the endpoint                           | —                              |
/// | `version`   | the API version the call needs                 | —                              |
///
/// # Examples
///
/// ```
/// use warren_rpc::{Target, Version};
///
/// let t = Target::new("volume").with_server("host1").with_version(Version::new(3, 1));
/// assert_eq!(t.topic, "volume");
/// assert_eq!(t.server.as_deref(), Some("host1"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Target {
    /// The topic exchange; `None` means the transport's default control
    /// exchange (`openstack`).
    pub exchange: Option<String>,
    /// The topic: which service.
    pub topic: String,
    /// One server on the topic (clients), or the server's own name (servers).
    pub server: Option<String>,
    /// Cast to every server on the topic (clients only; not for calls).
    pub fanout: bool,
    /// The endpoint namespace a call is meant for.
    pub namespace: Option<String>,
    /// The API version a call needs.
    pub version: Option<Version>,
}

impl Target {
    /// A target for `topic`, every other field unset.
    pub fn new(topic: impl Into<String>) -> Target {
        Target {
            topic: topic.into(),
            ..Target::default()
        }
    }

    /// Sets `exchange`.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Target {
        self.exchange = Some(exchange.into());
        self
    }

    /// Sets `server`.
    pub fn with_server(mut self, server: impl Into<String>) -> Target {
        self.server = Some(server.into());
        self
    }

    /// Sets `fanout`.
    pub fn with_fanout(mut self, fanout: bool) -> Target {
        self.fanout = fanout;
        self
    }

    /// Sets `namespace`.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Target {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets `version`.
    pub fn with_version(mut self, version: Version) -> Target {
        self.version = Some(version);
        self
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Target")?;
        if let Some(x) = &self.exchange {
            write!(f, " exchange={x}")?;
        }
        write!(f, " topic={}", self.topic)?;
        if let Some(s) = &self.server {
            write!(f, " server={s}")?;
        }
        if self.fanout {
            write!(f, " fanout")?;
        }
        if let Some(n) = &self.namespace {
            write!(f, " namespace={n}")?;
        }
        if let Some(v) = &self.version {
            write!(f, " version={v}")?;
        }
        write!(f, ">")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!("1.0".parse(), Ok(Version::new(1, 0)));
        assert_eq!("12.34".parse(), Ok(Version::new(12, 34)));
        assert_eq!("1.2.3".parse(), Ok(Version::new(1, 2)));
        for bad in [
            "", "1", "1.", ".1", "a.b", "1.2.3.4", "1.-2", "1.+2", " 1.2",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
        assert_eq!(Version::new(3, 1).to_string(), "3.1");
    }

    #[test]
    fn compatibility_is_oslos() {
        let imp = Version::new(2, 3);
        assert!(imp.can_serve(Version::new(2, 0)));
        assert!(imp.can_serve(Version::new(2, 3)));
        assert!(!imp.can_serve(Version::new(2, 4)));
        assert!(!imp.can_serve(Version::new(1, 0)));
        assert!(!imp.can_serve(Version::new(3, 0)));
    }

    #[test]
    fn target_display() {
        let t = Target::new("volume")
            .with_server("h")
            .with_version(Version::new(1, 2));
        assert_eq!(t.to_string(), "<Target topic=volume server=h version=1.2>");
    }
}
