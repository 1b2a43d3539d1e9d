//! The RPC client: `call` (wait for the result), `cast` (fire and forget),
//! fanout casts, version caps, and `prepare` for per-call overrides.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;
use crate::error::{RpcError, TransportError};
use crate::target::{Target, Version};
use crate::transport::{Reply, SendOptions, Transport};
use crate::wire::{args_to_raw, RpcMessage};

/// oslo's `rpc_response_timeout` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Overrides for [`RpcClient::prepare`]: each field set replaces the
/// client's; unset fields keep it (oslo's `prepare(..)` keyword arguments).
///
/// Fields that are themselves optional in [`Target`] take an
/// `Option<Option<_>>`: `Some(None)` clears them. The `with_*` and
/// `without_*` methods read better.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use warren_rpc::{PrepareOptions, Version};
///
/// let o = PrepareOptions::new()
///     .with_server("host1")
///     .with_version(Version::new(3, 2))
///     .with_timeout(Duration::from_secs(5));
/// assert_eq!(o.server, Some(Some("host1".to_owned())));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrepareOptions {
    /// Replaces `Target.exchange`.
    pub exchange: Option<Option<String>>,
    /// Replaces `Target.topic`.
    pub topic: Option<String>,
    /// Replaces `Target.server`.
    pub server: Option<Option<String>>,
    /// Replaces `Target.fanout`.
    pub fanout: Option<bool>,
    /// Replaces `Target.namespace`.
    pub namespace: Option<Option<String>>,
    /// Replaces `Target.version`.
    pub version: Option<Option<Version>>,
    /// Replaces the call timeout.
    pub timeout: Option<Duration>,
    /// Replaces the version cap.
    pub version_cap: Option<Option<Version>>,
    /// Replaces the connection retry limit.
    pub retry: Option<Option<u32>>,
    /// Replaces the call-monitor timeout (see
    /// [`RpcClient::with_call_monitor_timeout`]).
    pub call_monitor_timeout: Option<Option<Duration>>,
}

impl PrepareOptions {
    /// No override.
    pub fn new() -> PrepareOptions {
        PrepareOptions::default()
    }

    /// Sends to one server.
    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(Some(server.into()));
        self
    }

    /// Sends to any server on the topic.
    pub fn without_server(mut self) -> Self {
        self.server = Some(None);
        self
    }

    /// Casts to every server on the topic (or not).
    pub fn with_fanout(mut self, fanout: bool) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// Sets the exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(Some(exchange.into()));
        self
    }

    /// Sets the topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(Some(namespace.into()));
        self
    }

    /// Clears the namespace.
    pub fn without_namespace(mut self) -> Self {
        self.namespace = Some(None);
        self
    }

    /// Sets the version the calls need.
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = Some(Some(version));
        self
    }

    /// Sets the call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the version cap.
    pub fn with_version_cap(mut self, cap: Version) -> Self {
        self.version_cap = Some(Some(cap));
        self
    }

    /// Sets the connection retry limit (`None`: without limit).
    pub fn with_retry(mut self, retry: Option<u32>) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets the call-monitor timeout (see
    /// [`RpcClient::with_call_monitor_timeout`]).
    pub fn with_call_monitor_timeout(mut self, timeout: Duration) -> Self {
        self.call_monitor_timeout = Some(Some(timeout));
        self
    }

    /// Calls are not monitored: they wait for their timeout only.
    pub fn without_call_monitor_timeout(mut self) -> Self {
        self.call_monitor_timeout = Some(None);
        self
    }
}

/// Invokes methods on remote servers (oslo's `RPCClient`).
///
/// Cheap to clone; [`prepare`](Self::prepare) makes a client with
/// overrides. Calls need a Tokio runtime with the time driver.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), warren_rpc::RpcError> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use serde::{Deserialize, Serialize};
/// use warren_rpc::*;
///
/// #[derive(Serialize, Deserialize)]
/// struct Ping { n: u32 }
///
/// let transport: Arc<dyn Transport> = Arc::new(InprocTransport::new(warren_core::Broker::new()));
/// let endpoint = Endpoint::new()
///     .method("ping", |_ctx: Context, p: Ping| async move { Ok::<_, HandlerError>(p.n + 1) });
/// let server = RpcServer::new(transport.clone(), Target::new("svc").with_server("s1"), vec![endpoint]);
/// server.start().await?;
///
/// let client = RpcClient::new(transport, Target::new("svc")).with_timeout(Duration::from_secs(5));
/// let n: u32 = client.call(&Context::new(), "ping", &Ping { n: 41 }).await?;
/// assert_eq!(n, 42);
///
/// // The same, to one server:
/// let s1 = client.prepare(PrepareOptions::new().with_server("s1"));
/// let n: u32 = s1.call(&Context::new(), "ping", &Ping { n: 1 }).await?;
/// assert_eq!(n, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RpcClient {
    transport: Arc<dyn Transport>,
    target: Arc<Target>,
    /// `target.version` as sent on the wire, made once.
    version_text: Option<Arc<str>>,
    timeout: Duration,
    call_monitor_timeout: Option<Duration>,
    version_cap: Option<Version>,
    retry: Option<u32>,
    mandatory: bool,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("call_monitor_timeout", &self.call_monitor_timeout)
            .field("version_cap", &self.version_cap)
            .field("retry", &self.retry)
            .field("transport", &self.transport.url())
            .finish()
    }
}

impl RpcClient {
    /// A client for `target`, timeout 60 s, no version cap.
    pub fn new(transport: Arc<dyn Transport>, target: Target) -> RpcClient {
        let version_text = target.version.map(|v| Arc::from(v.to_string()));
        RpcClient {
            transport,
            target: Arc::new(target),
            version_text,
            timeout: DEFAULT_TIMEOUT,
            call_monitor_timeout: None,
            version_cap: None,
            retry: None,
            mandatory: false,
        }
    }

    /// Sets the call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> RpcClient {
        self.timeout = timeout;
        self
    }

    /// Sets the call-monitor timeout (oslo's `call_monitor_timeout`): a
    /// call fails with [`RpcError::Timeout`] once neither its reply nor a
    /// heartbeat came for this long, even well before its timeout, which
    /// still bounds the call as a whole.
    ///
    /// The server, told of it with the request (`_timeout`), heartbeats
    /// every half of it while the handler runs: a slow handler keeps its
    /// call alive, a server that died with the call does not, and the
    /// caller learns it after about this long instead of the whole timeout.
    /// Set it below the timeout.
    ///
    /// oslo's servers truncate it to whole seconds and do not heartbeat
    /// under 2 s; warren-rpc's heartbeat for any value (at most every
    /// 10 ms). Use at least 2 s when Python servers may answer.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use warren_rpc::{InprocTransport, RpcClient, Target};
    ///
    /// let t = Arc::new(InprocTransport::new(warren_core::Broker::new()));
    /// let client = RpcClient::new(t, Target::new("volume"))
    ///     .with_timeout(Duration::from_secs(600))
    ///     .with_call_monitor_timeout(Duration::from_secs(30));
    /// assert_eq!(client.call_monitor_timeout(), Some(Duration::from_secs(30)));
    /// ```
    pub fn with_call_monitor_timeout(mut self, timeout: Duration) -> RpcClient {
        self.call_monitor_timeout = Some(timeout);
        self
    }

    /// Sets the version cap: calls and casts above it fail without being
    /// sent, and [`can_send_version`](Self::can_send_version) answers
    /// against it.
    pub fn with_version_cap(mut self, cap: Version) -> RpcClient {
        self.version_cap = Some(cap);
        self
    }

    /// Sets the connection retry limit (`None`: without limit).
    pub fn with_retry(mut self, retry: Option<u32>) -> RpcClient {
        self.retry = retry;
        self
    }

    /// Fail at once with an unroutable error when no queue takes a request
    /// (no server ever listened on the target), instead of timing out
    /// (oslo's `at_least_once`).
    pub fn with_mandatory(mut self, mandatory: bool) -> RpcClient {
        self.mandatory = mandatory;
        self
    }

    /// A client with these overrides (oslo's `prepare`).
    pub fn prepare(&self, options: PrepareOptions) -> RpcClient {
        let mut target = (*self.target).clone();
        let PrepareOptions {
            exchange,
            topic,
            server,
            fanout,
            namespace,
            version,
            timeout,
            version_cap,
            retry,
            call_monitor_timeout,
        } = options;
        if let Some(x) = exchange {
            target.exchange = x;
        }
        if let Some(t) = topic {
            target.topic = t;
        }
        if let Some(s) = server {
            target.server = s;
        }
        if let Some(f) = fanout {
            target.fanout = f;
        }
        if let Some(n) = namespace {
            target.namespace = n;
        }
        let version_text = match version {
            Some(v) => {
                target.version = v;
                v.map(|v| Arc::from(v.to_string()))
            }
            None => self.version_text.clone(),
        };
        RpcClient {
            transport: self.transport.clone(),
            target: Arc::new(target),
            version_text,
            timeout: timeout.unwrap_or(self.timeout),
            call_monitor_timeout: call_monitor_timeout.unwrap_or(self.call_monitor_timeout),
            version_cap: version_cap.unwrap_or(self.version_cap),
            retry: retry.unwrap_or(self.retry),
            mandatory: self.mandatory,
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The call-monitor timeout.
    pub fn call_monitor_timeout(&self) -> Option<Duration> {
        self.call_monitor_timeout
    }

    /// The version cap.
    pub fn version_cap(&self) -> Option<Version> {
        self.version_cap
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Whether a message of `version` may be sent under the version cap
    /// (always, without a cap): same major, minor at most the cap's.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use warren_rpc::{InprocTransport, RpcClient, Target, Version};
    ///
    /// let t = Arc::new(InprocTransport::new(warren_core::Broker::new()));
    /// let client = RpcClient::new(t, Target::new("volume")).with_version_cap(Version::new(3, 2));
    /// assert!(client.can_send_version(Version::new(3, 1)));
    /// assert!(!client.can_send_version(Version::new(3, 3)));
    /// assert!(!client.can_send_version(Version::new(4, 0)));
    /// ```
    pub fn can_send_version(&self, version: Version) -> bool {
        self.version_cap.is_none_or(|cap| cap.can_serve(version))
    }

    fn check(
        &self,
        method: &str,
        args_raw: Result<Box<serde_json::value::RawValue>, String>,
    ) -> Result<RpcMessage, RpcError> {
        let version = self.target.version.unwrap_or(Version::DEFAULT);
        if let Some(cap) = self.version_cap {
            if !cap.can_serve(version) {
                return Err(RpcError::VersionCap { version, cap });
            }
        }
        if self.target.topic.is_empty() {
            return Err(RpcError::InvalidTarget {
                target: self.target.to_string(),
                reason: "a topic is required",
            });
        }
        Ok(RpcMessage {
            method: method.to_owned(),
            args: args_raw.map_err(RpcError::Encode)?,
            namespace: self.target.namespace.clone(),
            version: self.version_text.as_deref().map(str::to_owned),
        })
    }

    fn options(&self, wait_for_reply: bool) -> SendOptions {
        SendOptions {
            wait_for_reply,
            timeout: wait_for_reply.then_some(self.timeout),
            call_monitor_timeout: self.call_monitor_timeout.filter(|_| wait_for_reply),
            retry: self.retry,
            mandatory: self.mandatory,
        }
    }

    /// Calls `method` and waits for its result, at most the timeout.
    ///
    /// `args` must serialize to a JSON object (its fields are the keyword
    /// arguments; `&()` sends none); the result is deserialized into `R`
    /// (`serde_json::Value` takes anything). To call one server, prepare
    /// with a server; calls without one go to any server on the topic.
    ///
    /// # Errors
    ///
    /// [`RpcError::Timeout`] when no reply came in time (a late reply is
    /// dropped), or, with a call-monitor timeout, when neither the reply nor
    /// a heartbeat came for that long; [`RpcError::Remote`], [`RpcError::NoSuchMethod`],
    /// [`RpcError::UnsupportedVersion`] from the server;
    /// [`RpcError::VersionCap`], [`RpcError::InvalidTarget`] (fanout),
    /// [`RpcError::Encode`], [`RpcError::Decode`], [`RpcError::Transport`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with the time driver enabled.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future abandons the call (it may still run
    /// on the server); its reply, if any, is dropped and never reaches
    /// another call.
    pub async fn call<A, R>(&self, ctx: &Context, method: &str, args: &A) -> Result<R, RpcError>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        if self.target.fanout {
            return Err(RpcError::InvalidTarget {
                target: self.target.to_string(),
                reason: "a call cannot be used with fanout",
            });
        }
        let message = self.check(method, args_to_raw(args))?;
        let send = self
            .transport
            .send(&self.target, ctx, message, self.options(true));
        let reply = match tokio::time::timeout(self.timeout, send).await {
            Err(_) => {
                return Err(RpcError::Timeout {
                    method: method.to_owned(),
                    timeout: self.timeout,
                })
            }
            Ok(Err(TransportError::CallMonitorTimeout(timeout))) => {
                return Err(RpcError::Timeout {
                    method: method.to_owned(),
                    timeout,
                })
            }
            Ok(r) => r?,
        };
        match reply {
            Some(Reply::Result(raw)) => serde_json::from_str(raw.get()).map_err(RpcError::Decode),
            Some(Reply::Failure(remote)) => Err(self.classify(remote, method)),
            None => Err(RpcError::Transport(crate::TransportError::Closed)),
        }
    }

    /// Sends `method` without waiting for anything (oslo's `cast`); with
    /// `fanout` in the target, to every server on the topic.
    ///
    /// # Errors
    ///
    /// [`RpcError::VersionCap`], [`RpcError::Encode`],
    /// [`RpcError::InvalidTarget`], [`RpcError::Transport`]. What the server
    /// does with it is not reported.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes may or may not have sent the
    /// message.
    pub async fn cast<A>(&self, ctx: &Context, method: &str, args: &A) -> Result<(), RpcError>
    where
        A: Serialize + ?Sized,
    {
        let message = self.check(method, args_to_raw(args))?;
        self.transport
            .send(&self.target, ctx, message, self.options(false))
            .await?;
        Ok(())
    }

    fn classify(&self, remote: Box<crate::RemoteError>, method: &str) -> RpcError {
        if remote.is_dispatcher("NoSuchMethod") {
            RpcError::NoSuchMethod {
                method: method.to_owned(),
            }
        } else if remote.is_dispatcher("UnsupportedVersion") {
            // warren-rpc servers send the version as the first argument;
            // Python's send the whole message there: then it is the one
            // this client sent.
            let version = remote
                .args()
                .first()
                .and_then(|v| v.as_str())
                .filter(|v| v.parse::<Version>().is_ok())
                .map(str::to_owned)
                .unwrap_or_else(|| self.target.version.unwrap_or(Version::DEFAULT).to_string());
            RpcError::UnsupportedVersion {
                version,
                method: method.to_owned(),
            }
        } else {
            RpcError::Remote(remote)
        }
    }
}
