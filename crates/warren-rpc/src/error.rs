//! Errors: what a caller gets back ([`RpcError`]), what a transport reports
//! ([`TransportError`]), and the remote failure that crosses the wire
//! ([`RemoteError`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::target::Version;

/// The module oslo.messaging's dispatcher errors live in; a failure whose
/// class is `NoSuchMethod` or `UnsupportedVersion` from this module is turned
/// into the typed [`RpcError`] variants (Python servers send the same names).
pub(crate) const DISPATCHER_MODULE: &str = "oslo_messaging.rpc.dispatcher";

/// Why a call, cast or notification failed, as the caller sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply came within the call's timeout, or, for a call with a
    /// call-monitor timeout, neither the reply nor a heartbeat came within
    /// that (oslo's `MessagingTimeout`, in both cases). A reply arriving
    /// later is dropped.
    #[error("timed out after {timeout:?} waiting for a reply to '{method}'")]
    Timeout {
        /// The method called.
        method: String,
        /// The timeout that ran out: the call's, or its call-monitor
        /// timeout.
        timeout: Duration,
    },
    /// The handler failed: the remote error's type name, message and data.
    #[error("remote error: {0}")]
    Remote(Box<RemoteError>),
    /// No endpoint compatible with the call's namespace and version has this
    /// method (oslo's `NoSuchMethod`).
    #[error("endpoint does not support RPC method {method}")]
    NoSuchMethod {
        /// The method called.
        method: String,
    },
    /// No endpoint has the call's namespace with a compatible version
    /// (oslo's `UnsupportedVersion`).
    #[error("endpoint does not support RPC version {version}. Attempted method: {method}")]
    UnsupportedVersion {
        /// The version the call asked for.
        version: String,
        /// The method called.
        method: String,
    },
    /// The call's version is above the client's version cap; nothing was
    /// sent (oslo's `RPCVersionCapError`).
    #[error("requested message version, {version} is incompatible with the version cap {cap}")]
    VersionCap {
        /// The version the call asked for.
        version: Version,
        /// The client's cap.
        cap: Version,
    },
    /// The target cannot be used this way: a call with `fanout`, an empty
    /// topic, a server without a server name.
    #[error("invalid target {target}: {reason}")]
    InvalidTarget {
        /// The target, as `Display`ed.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The arguments (or a notification payload) could not be serialized, or
    /// are not a JSON object (oslo passes arguments as keyword arguments).
    #[error("cannot encode the arguments: {0}")]
    Encode(String),
    /// The result could not be deserialized into the type asked for.
    #[error("cannot decode the result: {0}")]
    Decode(#[source] serde_json::Error),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl RpcError {
    /// The remote error, for [`RpcError::Remote`].
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            RpcError::Remote(r) => Some(r),
            _ => None,
        }
    }

    /// Whether this is a [`RpcError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, RpcError::Timeout { .. })
    }
}

/// A failure of the messaging layer underneath RPC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The URL is not `scheme://...`.
    #[error("invalid transport URL '{0}'")]
    InvalidUrl(String),
    /// No driver for this URL scheme (in this build).
    #[error("no transport driver for scheme '{0}'")]
    UnsupportedScheme(String),
    /// The URL has the right scheme but cannot be used: a bad host, port or
    /// option (the password, if any, is not repeated here).
    #[error("invalid transport URL '{url}': {reason}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection to the broker could not be made or was lost, and the
    /// operation's connection retries ran out.
    #[error("no connection to the broker: {0}")]
    Connection(String),
    /// The AMQP client or the broker reported an error that is neither a
    /// broker refusal with a known reply code ([`TransportError::Broker`])
    /// nor a lost connection.
    #[error("AMQP error: {0}")]
    Protocol(String),
    /// The broker refused an operation (declare, bind, publish).
    #[error("broker error: {0}")]
    Broker(#[from] warren_core::Error),
    /// A mandatory message reached no queue.
    #[error("message to exchange '{exchange}' with routing key '{routing_key}' reached no queue")]
    Unroutable {
        /// The exchange published to.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// A queue with overflow `reject-publish` refused the message.
    #[error(
        "a queue refused the message to exchange '{exchange}' with routing key '{routing_key}'"
    )]
    Rejected {
        /// The exchange published to.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// The listener or the transport is closed.
    #[error("transport closed")]
    Closed,
    /// The operation needs a Tokio runtime and none is running.
    #[error("no Tokio runtime is running")]
    NoRuntime,
    /// A message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// A call with a call-monitor timeout got neither its reply nor a
    /// heartbeat for that long: the server is presumed gone. The client
    /// reports it as [`RpcError::Timeout`].
    #[error("no reply or heartbeat within the call-monitor timeout of {0:?}")]
    CallMonitorTimeout(Duration),
}

/// A failure as it crosses the wire: oslo's `failure`, the JSON of
/// `{"class", "module", "message", "tb", "args", "kwargs"}`.
///
/// `class` is the remote error's type name, `message` its text, `kwargs` its
/// data ([`data`](Self::data)), `tb` the remote traceback (for Rust handlers,
/// the error's `source()` chain).
///
/// # Examples
///
/// ```
/// use serde_json::json;
/// use warren_rpc::RemoteError;
///
/// let e = RemoteError::new("VolumeNotFound", "volume v1 could not be found")
///     .with_module("cinder.exception")
///     .with_data(json!({"volume_id": "v1"}));
/// let wire = e.to_failure_json();
/// let back = RemoteError::from_failure_json(&wire).unwrap();
/// assert_eq!(back, e);
/// assert_eq!(back.data()["volume_id"], "v1");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    #[serde(default)]
    class: String,
    #[serde(default)]
    module: String,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "tb")]
    traceback: Vec<String>,
    #[serde(default, deserialize_with = "lenient_args")]
    args: Vec<Value>,
    #[serde(default, deserialize_with = "lenient_kwargs")]
    kwargs: Map<String, Value>,
}

fn lenient_args<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a,
        Value::Null => Vec::new(),
        other => vec![other],
    })
}

fn lenient_kwargs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => {
            let mut m = Map::new();
            m.insert("data".to_owned(), other);
            m
        }
    })
}

impl RemoteError {
    /// A remote error of type `class` with this message; module `warren_rpc`,
    /// `args = [message]`, no data.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> RemoteError {
        let message = message.into();
        RemoteError {
            class: class.into(),
            module: "warren_rpc".to_owned(),
            args: vec![Value::String(message.clone())],
            message,
            traceback: Vec::new(),
            kwargs: Map::new(),
        }
    }

    /// Sets the module (Python: the exception's module, e.g.
    /// `cinder.exception`; Rust: the error type's path).
    pub fn with_module(mut self, module: impl Into<String>) -> RemoteError {
        self.module = module.into();
        self
    }

    /// Sets the data (oslo's `kwargs`): an object's entries, or any other
    /// value under the key `data`.
    pub fn with_data(mut self, data: impl Into<Value>) -> RemoteError {
        self.kwargs = match data.into() {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                let mut m = Map::new();
                m.insert("data".to_owned(), other);
                m
            }
        };
        self
    }

    /// Sets the positional arguments (oslo's `args`).
    pub fn with_args(mut self, args: Vec<Value>) -> RemoteError {
        self.args = args;
        self
    }

    /// Sets the traceback lines.
    pub fn with_traceback(mut self, traceback: Vec<String>) -> RemoteError {
        self.traceback = traceback;
        self
    }

    /// The remote error's type name (`VolumeNotFound`).
    pub fn class(&self) -> &str {
        &self.class
    }

    /// The remote error's module (`cinder.exception`).
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The remote error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The data the remote error carries (oslo's `kwargs`).
    pub fn data(&self) -> &Map<String, Value> {
        &self.kwargs
    }

    /// The data, deserialized.
    ///
    /// # Errors
    ///
    /// When the data does not fit `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(Value::Object(self.kwargs.clone()))
    }

    /// The positional arguments (oslo's `args`).
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// The remote traceback, one entry per line or frame.
    pub fn traceback(&self) -> &[String] {
        &self.traceback
    }

    /// The wire form: the JSON text oslo puts in a reply's `failure`.
    pub fn to_failure_json(&self) -> String {
        // A struct of strings, string vectors and JSON values always
        // serializes; the fallback is never taken.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Parses the wire form (missing fields are empty).
    ///
    /// # Errors
    ///
    /// When the text is not a JSON object.
    pub fn from_failure_json(json: &str) -> Result<RemoteError, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub(crate) fn is_dispatcher(&self, class: &str) -> bool {
        self.class == class && self.module.starts_with("oslo_messaging")
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.class, self.message)
    }
}

impl std::error::Error for RemoteError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_json_is_lenient() {
        let e = RemoteError::from_failure_json(
            r#"{"class": "KeyError", "module": "builtins", "message": "'x'", "tb": ["a", "b"], "args": null, "kwargs": null}"#,
        )
        .unwrap();
        assert_eq!(e.class(), "KeyError");
        assert!(e.args().is_empty() && e.data().is_empty());
        assert_eq!(e.traceback(), ["a", "b"]);
        let e = RemoteError::from_failure_json("{}").unwrap();
        assert_eq!(e.class(), "");
        assert!(RemoteError::from_failure_json("[1]").is_err());
    }
}
