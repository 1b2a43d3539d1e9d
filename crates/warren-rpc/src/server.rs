//! The RPC server: endpoints, the dispatcher, the executor bound, and
//! graceful stop (semantics on [`RpcServer`]).

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::context::Context;
use crate::error::{RemoteError, RpcError, TransportError, DISPATCHER_MODULE};
use crate::pump::Pump;
use crate::target::{Target, Version};
use crate::transport::{BoxFuture, IncomingCall, ListenOptions, Reply, Responder, Transport};
use crate::util::{log_debug, log_error, panic_message, CatchUnwind};
use crate::wire::RpcMessage;

/// The error a handler returns: sent to the caller as a
/// [`RemoteError`] (type name, message, data).
///
/// Any `std::error::Error` converts into it with `?`: the class is the
/// error's type name, the module its path, the message its `Display`, the
/// traceback its `source()` chain. Build one by hand with
/// [`new`](Self::new) to choose the type name and attach data.
///
/// Mark it [`expected`](Self::expected) (or declare the error type on the
/// endpoint with [`Endpoint::expected_error`]) when it is an answer, not a
/// fault: the caller gets it the same, the server does not count or log it
/// as a failure (oslo's `expected_exceptions`).
///
/// Deliberately not a `std::error::Error` itself, so that the blanket
/// conversion exists.
///
/// # Examples
///
/// ```
/// use serde_json::json;
/// use warren_rpc::HandlerError;
///
/// let e = HandlerError::new("VolumeNotFound", "volume v9 could not be found")
///     .with_data(json!({"volume_id": "v9"}))
///     .expected();
/// assert_eq!(e.remote().class(), "VolumeNotFound");
/// assert!(e.is_expected());
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("disk full")]
/// struct DiskFull;
/// let e = HandlerError::from(DiskFull);
/// assert_eq!(e.remote().class(), "DiskFull");
/// assert_eq!(e.remote().message(), "disk full");
/// ```
pub struct HandlerError {
    remote: RemoteError,
    expected: bool,
    type_id: Option<TypeId>,
}

impl HandlerError {
    /// An error of type `class` with this message.
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> HandlerError {
        HandlerError {
            remote: RemoteError::new(class, message),
            expected: false,
            type_id: None,
        }
    }

    /// Passes a remote error on as it is (a handler forwarding another
    /// service's failure), class and data unchanged.
    pub fn from_remote(remote: RemoteError) -> HandlerError {
        HandlerError {
            remote,
            expected: false,
            type_id: None,
        }
    }

    /// Sets the module the caller sees.
    pub fn with_module(mut self, module: impl Into<String>) -> HandlerError {
        self.remote = self.remote.with_module(module);
        self
    }

    /// Attaches data (oslo's `kwargs`): an object's entries, or any other
    /// value under the key `data`.
    pub fn with_data(mut self, data: impl Into<Value>) -> HandlerError {
        self.remote = self.remote.with_data(data);
        self
    }

    /// Marks it expected: not a server failure.
    pub fn expected(mut self) -> HandlerError {
        self.expected = true;
        self
    }

    /// Whether it was marked expected.
    pub fn is_expected(&self) -> bool {
        self.expected
    }

    /// What the caller will get.
    pub fn remote(&self) -> &RemoteError {
        &self.remote
    }

    /// Unwraps into what the caller will get.
    pub fn into_remote(self) -> RemoteError {
        self.remote
    }

    fn invalid_arguments(method: &str, e: &serde_json::Error) -> HandlerError {
        // As Python raises TypeError for bad keyword arguments. The caller's
        // fault, not the server's: expected.
        HandlerError::new(
            "TypeError",
            format!("{method}() got invalid arguments: {e}"),
        )
        .with_module("builtins")
        .expected()
    }
}

impl<E: std::error::Error + 'static> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let full = std::any::type_name::<E>();
        let path = full.split('<').next().unwrap_or(full);
        let (module, class) = path.rsplit_once("::").unwrap_or(("", path));
        let mut traceback = Vec::new();
        let mut source = e.source();
        while let Some(s) = source {
            traceback.push(format!("caused by: {s}"));
            source = s.source();
        }
        HandlerError {
            remote: RemoteError::new(class, e.to_string())
                .with_module(module)
                .with_traceback(traceback),
            expected: false,
            type_id: Some(TypeId::of::<E>()),
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("remote", &self.remote)
            .field("expected", &self.expected)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.remote.class(), self.remote.message())
    }
}

type HandlerFn = dyn Fn(Context, Box<RawValue>) -> BoxFuture<'static, Result<Box<RawValue>, HandlerError>>
    + Send
    + Sync;

/// A set of methods, with the namespace and version they implement
/// (oslo's endpoint object with its `target`).
///
/// Each method is an async function of the request context and its
/// arguments (deserialized from the call's keyword arguments: use a struct
/// whose fields are the argument names), returning a result to serialize or
/// an error convertible into a [`HandlerError`].
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use warren_rpc::{Context, Endpoint, HandlerError, Version};
///
/// #[derive(Deserialize)]
/// struct GetVolume { volume_id: String }
/// #[derive(Serialize)]
/// struct Volume { id: String, size_gb: u32 }
///
/// let endpoint = Endpoint::new()
///     .with_version(Version::new(3, 1))
///     .method("get_volume", |_ctx: Context, args: GetVolume| async move {
///         Ok::<_, HandlerError>(Volume { id: args.volume_id, size_gb: 10 })
///     });
/// assert!(endpoint.has_method("get_volume"));
/// ```
#[derive(Clone)]
pub struct Endpoint {
    namespace: Option<String>,
    version: Version,
    /// By name; foldhash (see `SeenIds`): looked up on every call.
    methods: HashMap<String, Arc<HandlerFn>, foldhash::fast::RandomState>,
    expected: Vec<TypeId>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<&str> = self.methods.keys().map(String::as_str).collect();
        methods.sort_unstable();
        f.debug_struct("Endpoint")
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .field("methods", &methods)
            .finish()
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::new()
    }
}

impl Endpoint {
    /// An endpoint with no namespace, version `1.0`, no method.
    pub fn new() -> Endpoint {
        Endpoint {
            namespace: None,
            version: Version::DEFAULT,
            methods: HashMap::default(),
            expected: Vec::new(),
        }
    }

    /// Serves calls for this namespace only (calls without one go to
    /// endpoints without one).
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Endpoint {
        self.namespace = Some(namespace.into());
        self
    }

    /// The API version implemented (default `1.0`): it serves calls asking
    /// for the same major and a minor up to this one.
    pub fn with_version(mut self, version: Version) -> Endpoint {
        self.version = version;
        self
    }

    /// Errors of type `E` returned by this endpoint's methods (through
    /// `HandlerError::from`) are expected: returned to the caller, not
    /// counted or logged as server failures.
    pub fn expected_error<E: 'static>(mut self) -> Endpoint {
        self.expected.push(TypeId::of::<E>());
        self
    }

    /// Registers method `name`. `A` is deserialized from the call's keyword
    /// arguments (`()` accepts none), the returned value is serialized as
    /// the result.
    pub fn method<A, R, E, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Endpoint
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        E: Into<HandlerError> + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
    {
        let name = name.into();
        let method = name.clone();
        let f: Arc<HandlerFn> = Arc::new(move |ctx: Context, raw: Box<RawValue>| {
            let args = match decode_args::<A>(&raw) {
                Ok(a) => a,
                Err(e) => {
                    let err = HandlerError::invalid_arguments(&method, &e);
                    return Box::pin(std::future::ready(Err(err)));
                }
            };
            let fut = handler(ctx, args);
            Box::pin(async move {
                let value = fut.await.map_err(Into::into)?;
                serde_json::value::to_raw_value(&value).map_err(|e| {
                    HandlerError::new(
                        "SerializationError",
                        format!("cannot encode the result: {e}"),
                    )
                })
            })
        });
        self.methods.insert(name, f);
        self
    }

    /// Whether a method of this name is registered.
    pub fn has_method(&self, name: &str) -> bool {
        self.methods.contains_key(name)
    }

    /// The namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The version.
    pub fn version(&self) -> Version {
        self.version
    }
}

fn decode_args<A: DeserializeOwned>(raw: &RawValue) -> Result<A, serde_json::Error> {
    match serde_json::from_str(raw.get()) {
        Ok(a) => Ok(a),
        // `()` and unit structs take no keyword arguments.
        Err(e) if raw.get() == "{}" => serde_json::from_str("null").map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// Settings of an [`RpcServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcServerOptions {
    /// At most this many requests handled at once (oslo's executor pool
    /// size; default 64). Others wait in the queues.
    pub max_in_flight: usize,
}

impl Default for RpcServerOptions {
    fn default() -> Self {
        RpcServerOptions { max_in_flight: 64 }
    }
}

/// Counters of an [`RpcServer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Calls received (a reply was expected).
    pub calls: u64,
    /// Casts received.
    pub casts: u64,
    /// Requests whose handler returned a result.
    pub succeeded: u64,
    /// Handler errors not declared expected: server failures (logged).
    pub failed: u64,
    /// Handler errors declared expected (not logged as failures).
    pub expected_failures: u64,
    /// Handlers that panicked.
    pub panics: u64,
    /// Requests for a method no compatible endpoint has.
    pub no_such_method: u64,
    /// Requests no endpoint's namespace and version could serve.
    pub unsupported_version: u64,
    /// Call-monitor heartbeats sent to callers waiting on a running
    /// handler.
    pub heartbeats: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    casts: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    expected_failures: AtomicU64,
    panics: AtomicU64,
    no_such_method: AtomicU64,
    unsupported_version: AtomicU64,
    /// A watched count, so that [`RpcServer::wait_for_heartbeats`] waits on
    /// the event itself (heartbeats are seconds apart: no hot path).
    heartbeats: watch::Sender<u64>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct ServerInner {
    transport: Arc<dyn Transport>,
    target: Target,
    endpoints: Vec<Endpoint>,
    counters: Counters,
}

/// Serves RPC requests for one server on a topic (oslo's `RPCServer`).
///
/// An [`RpcServer`] listens as one server (`Target.server`) on a topic. It
/// takes requests from three queues: the topic's shared queue (requests for
/// any server: each goes to one of them), its own `topic.server` queue, and
/// its own fanout queue (every server gets a copy).
///
/// Each request is dispatched as oslo's dispatcher does: among the
/// [`Endpoint`]s whose namespace equals the request's and whose version can
/// serve the requested one (`1.0` when unset), the first that has the method
/// runs it. If some endpoint was compatible but none has the method, the
/// caller gets *no such method*; if none was compatible, *unsupported
/// version*.
///
/// Requests are taken off their queue when they start (at most once, as
/// oslo): at most [`RpcServerOptions::max_in_flight`] run at once, the
/// others wait in the queues, where another server on the topic may take
/// them. [`RpcServer::stop`] stops taking requests and waits for those
/// running; [`RpcServer::start`] resumes.
///
/// A call whose caller set a call-monitor timeout (oslo's
/// `call_monitor_timeout`, sent as `_timeout`) gets a heartbeat every half
/// of it while its handler runs (at most every 10 ms), so that the caller
/// can tell a slow handler from a dead server; see
/// [`ServerStats::heartbeats`].
///
/// A handler that returns an error sends it to the caller as a remote
/// error. Errors the endpoint declares as expected are not counted or logged
/// as server failures. A handler that panics becomes a remote error
/// (`Panic`) for its caller, and the server goes on.
///
/// A handler runs first on the server's own task, and continues in a task
/// of its own once it has to wait: one that computes for long without
/// awaiting holds up the intake of requests meanwhile (move such work to
/// `tokio::task::spawn_blocking`).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), warren_rpc::RpcError> {
/// use std::sync::Arc;
/// use serde_json::{json, Value};
/// use warren_rpc::*;
///
/// let transport: Arc<dyn Transport> = Arc::new(InprocTransport::new(warren_core::Broker::new()));
/// let endpoint = Endpoint::new().method("add", |_ctx: Context, args: Value| async move {
///     let sum = args["a"].as_i64().unwrap_or(0) + args["b"].as_i64().unwrap_or(0);
///     Ok::<_, HandlerError>(sum)
/// });
/// let server = RpcServer::new(transport.clone(), Target::new("calc").with_server("c1"), vec![endpoint]);
/// server.start().await?;
///
/// let client = RpcClient::new(transport, Target::new("calc"));
/// let sum: i64 = client.call(&Context::new(), "add", &json!({"a": 2, "b": 3})).await?;
/// assert_eq!(sum, 5);
/// server.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct RpcServer {
    inner: Arc<ServerInner>,
    pump: Pump,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("target", &self.inner.target)
            .field("endpoints", &self.inner.endpoints)
            .field("max_in_flight", &self.pump.max_in_flight())
            .field("running", &self.is_running())
            .finish()
    }
}

impl RpcServer {
    /// A server for `target` (which needs a topic and a server name) with
    /// these endpoints and default options. Not started.
    pub fn new(
        transport: Arc<dyn Transport>,
        target: Target,
        endpoints: Vec<Endpoint>,
    ) -> RpcServer {
        RpcServer::with_options(transport, target, endpoints, RpcServerOptions::default())
    }

    /// A server with these options.
    pub fn with_options(
        transport: Arc<dyn Transport>,
        target: Target,
        endpoints: Vec<Endpoint>,
        options: RpcServerOptions,
    ) -> RpcServer {
        RpcServer {
            inner: Arc::new(ServerInner {
                transport,
                target,
                endpoints,
                counters: Counters::default(),
            }),
            pump: Pump::new(options.max_in_flight),
        }
    }

    /// The target it serves.
    pub fn target(&self) -> &Target {
        &self.inner.target
    }

    /// Whether it is started.
    pub fn is_running(&self) -> bool {
        self.pump.is_running()
    }

    /// Starts serving: declares the exchange and queues, then takes requests
    /// in a task. Starting a running server does nothing.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidTarget`] without a topic or a server name;
    /// [`RpcError::Transport`] when the queues cannot be set up or no Tokio
    /// runtime runs.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped before it completes, the server is not
    /// started.
    pub async fn start(&self) -> Result<(), RpcError> {
        let target = &self.inner.target;
        if target.topic.is_empty() {
            return Err(RpcError::InvalidTarget {
                target: target.to_string(),
                reason: "a server needs a topic",
            });
        }
        if target.server.as_deref().is_none_or(str::is_empty) {
            return Err(RpcError::InvalidTarget {
                target: target.to_string(),
                reason: "a server needs a server name",
            });
        }
        let inner = self.inner.clone();
        let open = || async {
            // Requests are taken off their queue when they start; a
            // prefetch of one keeps a busy server from holding requests
            // another server could run.
            Ok(self
                .inner
                .transport
                .listen(target, ListenOptions { prefetch: 1 })
                .await?)
        };
        self.pump
            .start(format!("RPC server on {target}"), open, move |call| {
                handle(inner.clone(), call)
            })
            .await
    }

    /// Stops taking requests and waits until those being handled are done
    /// (their replies sent). Requests not yet taken stay in the queues (a
    /// call's request expires with its timeout); the fanout queue goes.
    /// [`start`](Self::start) again resumes.
    ///
    /// # Cancel safety
    ///
    /// If dropped before it completes the server still stops taking
    /// requests; handlers already running finish on their own.
    pub async fn stop(&self) {
        self.pump.stop().await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ServerStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            calls: g(&c.calls),
            casts: g(&c.casts),
            succeeded: g(&c.succeeded),
            failed: g(&c.failed),
            expected_failures: g(&c.expected_failures),
            panics: g(&c.panics),
            no_such_method: g(&c.no_such_method),
            unsupported_version: g(&c.unsupported_version),
            heartbeats: *c.heartbeats.borrow(),
        }
    }

    /// Waits until the server has sent at least `n` call-monitor heartbeats
    /// in all (see [`ServerStats::heartbeats`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_for_heartbeats(&self, n: u64) {
        let mut rx = self.inner.counters.heartbeats.subscribe();
        let _ = rx.wait_for(|sent| *sent >= n).await;
    }
}

/// How one request ended.
enum Outcome {
    Ok(Box<RawValue>),
    Failed(RemoteError),
}

async fn handle(inner: Arc<ServerInner>, call: IncomingCall) {
    let IncomingCall {
        ctx,
        message,
        mut responder,
        call_monitor_timeout,
    } = call;
    let c = &inner.counters;
    bump(if responder.is_some() {
        &c.calls
    } else {
        &c.casts
    });
    // Pinned where it is and awaited through the pin: awaited by value, it
    // would take room in this future twice (as `work` and as what is
    // awaited), and this future is moved whole into the pump's slot for
    // each request.
    let mut work = std::pin::pin!(dispatch(&inner, ctx, message));
    // Borrowed mutably: a responder is `Send`, not `Sync`.
    let outcome = match (&mut responder, call_monitor_timeout) {
        // Boxed, for the same reason: the heartbeats' timer is large, and
        // monitored calls are the rare ones.
        (Some(r), Some(monitor)) if !monitor.is_zero() => {
            Box::pin(with_heartbeats(
                &inner,
                r.as_mut(),
                heartbeat_interval(monitor),
                work.as_mut(),
            ))
            .await
        }
        _ => work.as_mut().await,
    };
    if let Some(responder) = responder {
        let reply = match outcome {
            Outcome::Ok(r) => Reply::Result(r),
            Outcome::Failed(f) => Reply::Failure(Box::new(f)),
        };
        if let Err(e) = responder.reply(reply).await {
            log_error!("cannot reply to a call on {}: {}", inner.target, e);
        }
    }
}

/// The shortest interval between two heartbeats of a call.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// How often to heartbeat a call whose caller gives up after `monitor`
/// without news: every half of it, as oslo's dispatcher, so that a
/// heartbeat delayed in the queues still arrives in time.
fn heartbeat_interval(monitor: Duration) -> Duration {
    (monitor / 2).max(MIN_HEARTBEAT_INTERVAL)
}

/// Runs `work`, sending a heartbeat to the caller every `every` until it
/// is done (oslo's call-monitor watchdog). A heartbeat that cannot be sent
/// (the caller's reply queue is gone) ends the heartbeats, not the work.
/// One still being sent when the work ends is finished first, so that it
/// cannot overtake the reply.
async fn with_heartbeats<F: Future>(
    inner: &ServerInner,
    responder: &mut dyn Responder,
    every: Duration,
    work: F,
) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending: Option<BoxFuture<'static, Result<(), TransportError>>> = None;
    let mut beating = true;
    let sent = |r: Result<(), TransportError>, beating: &mut bool| match r {
        Ok(()) => inner.counters.heartbeats.send_modify(|sent| *sent += 1),
        Err(e) => {
            log_debug!("heartbeats to a caller on {} stop: {}", inner.target, e);
            *beating = false;
        }
    };
    let out = loop {
        tokio::select! {
            biased;
            out = &mut work => break out,
            r = async {
                match sending.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            } => {
                sending = None;
                sent(r, &mut beating);
            }
            _ = ticks.tick(), if beating && sending.is_none() => {
                sending = Some(responder.heartbeat());
            }
        }
    };
    if let Some(f) = sending {
        sent(f.await, &mut beating);
    }
    out
}

async fn dispatch(inner: &ServerInner, ctx: Context, message: RpcMessage) -> Outcome {
    let c = &inner.counters;
    let RpcMessage {
        method,
        args,
        namespace,
        version,
    } = message;
    let requested = match version.as_deref() {
        None => Some(Version::DEFAULT),
        Some(v) => v.parse::<Version>().ok(),
    };
    let mut compatible = false;
    let mut found = None;
    if let Some(requested) = requested {
        for ep in &inner.endpoints {
            if ep.namespace != namespace || !ep.version.can_serve(requested) {
                continue;
            }
            if let Some(h) = ep.methods.get(&method) {
                found = Some((h.clone(), ep));
                break;
            }
            compatible = true;
        }
    }
    let Some((handler, endpoint)) = found else {
        if compatible {
            bump(&c.no_such_method);
            log_error!("no method {} on {}", method, inner.target);
            return Outcome::Failed(
                RemoteError::new(
                    "NoSuchMethod",
                    format!("Endpoint does not support RPC method {method}"),
                )
                .with_module(DISPATCHER_MODULE)
                .with_args(vec![Value::String(method)]),
            );
        }
        bump(&c.unsupported_version);
        let version = version.unwrap_or_else(|| Version::DEFAULT.to_string());
        log_error!(
            "no endpoint for version {} of {} on {}",
            version,
            method,
            inner.target
        );
        let mut kwargs = Map::new();
        kwargs.insert("method".to_owned(), Value::String(method.clone()));
        return Outcome::Failed(
            RemoteError::new(
                "UnsupportedVersion",
                format!(
                    "Endpoint does not support RPC version {version}. Attempted method: {method}"
                ),
            )
            .with_module(DISPATCHER_MODULE)
            .with_args(vec![Value::String(version)])
            .with_data(Value::Object(kwargs)),
        );
    };
    // The handler's synchronous part runs here, its future in CatchUnwind:
    // a panic in either is caught.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(ctx, args)));
    let finished = match started {
        Ok(future) => CatchUnwind::new(future).await,
        Err(payload) => Err(payload),
    };
    match finished {
        Ok(Ok(result)) => {
            bump(&c.succeeded);
            Outcome::Ok(result)
        }
        Ok(Err(e)) => {
            let expected = e.expected || e.type_id.is_some_and(|t| endpoint.expected.contains(&t));
            if expected {
                bump(&c.expected_failures);
                log_debug!("expected error in {}: {}", method, e);
            } else {
                bump(&c.failed);
                log_error!("error in {} on {}: {}", method, inner.target, e);
            }
            Outcome::Failed(e.remote)
        }
        Err(payload) => {
            bump(&c.panics);
            let msg = panic_message(&*payload);
            log_error!(
                "handler of {} on {} panicked: {}",
                method,
                inner.target,
                msg
            );
            Outcome::Failed(
                RemoteError::new("Panic", format!("handler of {method} panicked: {msg}"))
                    .with_module("warren_rpc"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn errors_convert_with_their_type_name_and_chain() {
        let e = HandlerError::from(Outer(Inner));
        assert_eq!(e.remote().class(), "Outer");
        assert!(e.remote().module().ends_with("server::tests"));
        assert_eq!(e.remote().message(), "outer");
        assert_eq!(e.remote().traceback(), ["caused by: inner"]);
        assert!(!e.is_expected());
        let e = HandlerError::from(std::io::Error::other("x"));
        assert_eq!(e.remote().class(), "Error");
        assert_eq!(e.remote().module(), "std::io::error");
    }

    #[test]
    fn unit_args_accept_an_empty_object() {
        let raw = RawValue::from_string("{}".into()).unwrap();
        decode_args::<()>(&raw).unwrap();
        let v: Value = decode_args(&raw).unwrap();
        assert_eq!(v, serde_json::json!({}));
        let raw = RawValue::from_string("{\"a\":1}".into()).unwrap();
        assert!(decode_args::<()>(&raw).is_err());
    }
}
