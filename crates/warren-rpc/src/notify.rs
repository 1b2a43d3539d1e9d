//! Notifications (see [`Notifier`] and [`NotificationListener`]).

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::Context;
use crate::error::RpcError;
use crate::pump::Pump;
use crate::target::Target;
use crate::transport::{BoxFuture, IncomingNotification, ListenOptions, Transport};
use crate::util::{log_error, panic_message, utc_timestamp, CatchUnwind};
use crate::wire::WireNotification;

/// A notification's priority (oslo's seven levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// `audit`
    Audit,
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
    /// `critical`
    Critical,
    /// `sample`
    Sample,
}

impl Priority {
    /// Every priority, in oslo's order.
    pub const ALL: [Priority; 7] = [
        Priority::Audit,
        Priority::Debug,
        Priority::Info,
        Priority::Warn,
        Priority::Error,
        Priority::Critical,
        Priority::Sample,
    ];

    /// The lower-case name used in routing keys: `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Audit => "audit",
            Priority::Debug => "debug",
            Priority::Info => "info",
            Priority::Warn => "warn",
            Priority::Error => "error",
            Priority::Critical => "critical",
            Priority::Sample => "sample",
        }
    }

    /// The upper-case name sent in the message: `INFO`.
    pub fn as_wire_str(self) -> &'static str {
        match self {
            Priority::Audit => "AUDIT",
            Priority::Debug => "DEBUG",
            Priority::Info => "INFO",
            Priority::Warn => "WARN",
            Priority::Error => "ERROR",
            Priority::Critical => "CRITICAL",
            Priority::Sample => "SAMPLE",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown priority name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown notification priority '{0}'")]
pub struct PriorityParseError(pub String);

impl FromStr for Priority {
    type Err = PriorityParseError;

    /// Parses a priority name in any case (`info`, `INFO`); `warning` is
    /// `warn`, as oslo's notifier accepts.
    ///
    /// # Errors
    ///
    /// [`PriorityParseError`] for other names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "audit" => Priority::Audit,
            "debug" => Priority::Debug,
            "info" => Priority::Info,
            "warn" | "warning" => Priority::Warn,
            "error" => Priority::Error,
            "critical" => Priority::Critical,
            "sample" => Priority::Sample,
            _ => return Err(PriorityParseError(s.to_owned())),
        })
    }
}

/// Sends notifications (oslo's `Notifier` with the `messagingv2` driver).
///
/// Notifications are events a service publishes for whoever listens
/// (billing, auditing, monitoring), with no reply.
///
/// A [`Notifier`] sends each notification — publisher id, event type,
/// priority, payload, context — to every topic it was given (default
/// `notifications`), with routing key `<topic>.<priority>` on the control
/// exchange. The topic's default queue (`notifications.info`, ...) is
/// declared on the first send, so notifications wait there until a listener
/// comes.
///
/// A [`NotificationListener`] calls its endpoints' handlers for the
/// priorities they handle and whose [`NotificationFilter`] matches.
/// Listeners without a pool share the default queues; listeners in the same
/// *pool* share the pool's queue (each notification goes to one of them),
/// and each pool gets its own copy of every notification.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), warren_rpc::RpcError> {
/// use serde_json::json;
/// use warren_rpc::{Context, Notifier, InprocTransport};
///
/// let transport = std::sync::Arc::new(InprocTransport::new(warren_core::Broker::new()));
/// let notifier = Notifier::new(transport.clone(), "volume.host1");
/// let ctx = Context::new().with("request_id", "req-1");
/// notifier.info(&ctx, "volume.create.end", &json!({"volume_id": "v1"})).await?;
/// // Nobody listens yet: it waits in the default queue.
/// assert_eq!(transport.broker().queue_stats("notifications.info").unwrap().ready, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Notifier {
    transport: Arc<dyn Transport>,
    publisher_id: String,
    topics: Arc<[String]>,
    exchange: Option<String>,
    retry: Option<u32>,
}

impl Notifier {
    /// A notifier sending as `publisher_id` to topic `notifications`.
    pub fn new(transport: Arc<dyn Transport>, publisher_id: impl Into<String>) -> Notifier {
        Notifier {
            transport,
            publisher_id: publisher_id.into(),
            topics: Arc::from(vec!["notifications".to_owned()]),
            exchange: None,
            retry: None,
        }
    }

    /// Sends to these topics instead (oslo's driver `topics`): one copy each.
    pub fn with_topics<I, S>(mut self, topics: I) -> Notifier
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Sends on this exchange instead of the transport's control exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Notifier {
        self.exchange = Some(exchange.into());
        self
    }

    /// Connection retries for drivers that have a connection (`None`:
    /// without limit).
    pub fn with_retry(mut self, retry: Option<u32>) -> Notifier {
        self.retry = retry;
        self
    }

    /// The same notifier with another publisher id (oslo's `prepare`).
    pub fn prepare(&self, publisher_id: impl Into<String>) -> Notifier {
        Notifier {
            publisher_id: publisher_id.into(),
            ..self.clone()
        }
    }

    /// The publisher id.
    pub fn publisher_id(&self) -> &str {
        &self.publisher_id
    }

    /// Sends a notification with this priority to every topic.
    ///
    /// # Errors
    ///
    /// [`RpcError::Encode`] when the payload does not serialize,
    /// [`RpcError::Transport`] when a send fails (topics before it were
    /// sent).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe with several topics: dropping the future may leave
    /// later topics unsent.
    pub async fn notify<P: Serialize + ?Sized>(
        &self,
        ctx: &Context,
        priority: Priority,
        event_type: &str,
        payload: &P,
    ) -> Result<(), RpcError> {
        let payload = serde_json::value::to_raw_value(payload)
            .map_err(|e| RpcError::Encode(e.to_string()))?;
        let message = WireNotification {
            message_id: uuid::Uuid::new_v4().to_string(),
            publisher_id: self.publisher_id.clone(),
            event_type: event_type.to_owned(),
            priority: priority.as_wire_str().to_owned(),
            payload,
            timestamp: utc_timestamp(),
            ctx: ctx.clone(),
            unique_id: None,
        };
        for topic in self.topics.iter() {
            // As oslo's driver: the copy for each topic is a message of its
            // own, with its own `_unique_id` (one listener on two topics
            // must not take the second for a duplicate of the first); the
            // `message_id` is the notification's.
            let mut copy = message.clone();
            copy.unique_id = Some(uuid::Uuid::new_v4().simple().to_string());
            self.transport
                .send_notification_with_retry(
                    self.exchange.as_deref(),
                    topic,
                    priority,
                    copy,
                    self.retry,
                )
                .await?;
        }
        Ok(())
    }
}

macro_rules! priority_methods {
    ($($(#[$doc:meta])* $name:ident => $prio:ident;)*) => {
        impl Notifier {
            $(
                $(#[$doc])*
                ///
                /// # Errors
                ///
                /// As [`notify`](Self::notify).
                ///
                /// # Cancel safety
                ///
                /// As [`notify`](Self::notify).
                pub async fn $name<P: Serialize + ?Sized>(
                    &self,
                    ctx: &Context,
                    event_type: &str,
                    payload: &P,
                ) -> Result<(), RpcError> {
                    self.notify(ctx, Priority::$prio, event_type, payload).await
                }
            )*
        }
    };
}

priority_methods! {
    /// Sends with priority `audit`.
    audit => Audit;
    /// Sends with priority `debug`.
    debug => Debug;
    /// Sends with priority `info`.
    info => Info;
    /// Sends with priority `warn`.
    warn => Warn;
    /// Sends with priority `error`.
    error => Error;
    /// Sends with priority `critical`.
    critical => Critical;
    /// Sends with priority `sample`.
    sample => Sample;
}

/// A received notification, as a handler gets it.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    /// The request context, as the notifier sent it.
    pub ctx: Context,
    /// Who sent it.
    pub publisher_id: String,
    /// What happened.
    pub event_type: String,
    /// Its priority.
    pub priority: Priority,
    /// The payload.
    pub payload: Value,
    /// oslo's metadata: `message_id` and `timestamp`.
    pub metadata: NotificationMetadata,
}

impl Notification {
    /// The payload, deserialized.
    ///
    /// # Errors
    ///
    /// When the payload does not fit `T`.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }
}

/// A notification's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotificationMetadata {
    /// A UUID per notification.
    pub message_id: String,
    /// When it was sent (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub timestamp: String,
}

/// What a handler did with a notification.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotificationResult {
    /// Done: acknowledged.
    #[default]
    Handled,
    /// Put it back in the queue to be delivered again (only when the
    /// listener allows requeue; otherwise acknowledged like `Handled`).
    Requeue,
}

impl From<()> for NotificationResult {
    fn from((): ()) -> Self {
        NotificationResult::Handled
    }
}

/// A bad regular expression in a [`NotificationFilter`].
#[derive(Clone, Debug, thiserror::Error)]
#[error("bad filter pattern for {field}: {source}")]
pub struct FilterError {
    /// Which field's pattern.
    pub field: String,
    /// The regex error.
    #[source]
    pub source: regex::Error,
}

/// Which notifications an endpoint wants (oslo's `NotificationFilter`).
///
/// Each rule is a regular expression matched at the start of the value
/// (Python's `re.match`). A notification passes when every rule matches:
/// `publisher_id`, `event_type`, and for the maps (`context`, `metadata` —
/// `message_id` and `timestamp` —, `payload`) each named key must be present
/// and a string that matches.
///
/// # Examples
///
/// ```
/// use warren_rpc::NotificationFilter;
///
/// let filter = NotificationFilter::builder()
///     .publisher_id(r"^compute.*")
///     .event_type(r"compute\.instance\..*")
///     .context("project_id", "^p1$")
///     .build()?;
/// # let _ = filter;
/// # Ok::<(), warren_rpc::FilterError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct NotificationFilter {
    publisher_id: Option<Regex>,
    event_type: Option<Regex>,
    context: Vec<(String, Regex)>,
    metadata: Vec<(String, Regex)>,
    payload: Vec<(String, Regex)>,
}

/// Builds a [`NotificationFilter`]; patterns compile in
/// [`build`](Self::build).
#[derive(Clone, Debug, Default)]
pub struct NotificationFilterBuilder {
    publisher_id: Option<String>,
    event_type: Option<String>,
    context: Vec<(String, String)>,
    metadata: Vec<(String, String)>,
    payload: Vec<(String, String)>,
}

impl NotificationFilterBuilder {
    /// A rule on the publisher id.
    pub fn publisher_id(mut self, pattern: impl Into<String>) -> Self {
        self.publisher_id = Some(pattern.into());
        self
    }

    /// A rule on the event type.
    pub fn event_type(mut self, pattern: impl Into<String>) -> Self {
        self.event_type = Some(pattern.into());
        self
    }

    /// A rule on a context entry.
    pub fn context(mut self, key: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.context.push((key.into(), pattern.into()));
        self
    }

    /// A rule on a metadata entry (`message_id`, `timestamp`).
    pub fn metadata(mut self, key: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.metadata.push((key.into(), pattern.into()));
        self
    }

    /// A rule on a top-level payload entry.
    pub fn payload(mut self, key: impl Into<String>, pattern: impl Into<String>) -> Self {
        self.payload.push((key.into(), pattern.into()));
        self
    }

    /// Compiles the rules.
    ///
    /// # Errors
    ///
    /// [`FilterError`] for a pattern that is not a valid regex.
    pub fn build(self) -> Result<NotificationFilter, FilterError> {
        fn compile(field: &str, p: &str) -> Result<Regex, FilterError> {
            // Anchored at the start only, as Python's re.match.
            Regex::new(&format!(r"\A(?:{p})")).map_err(|source| FilterError {
                field: field.to_owned(),
                source,
            })
        }
        fn compile_all(
            what: &str,
            rules: Vec<(String, String)>,
        ) -> Result<Vec<(String, Regex)>, FilterError> {
            rules
                .into_iter()
                .map(|(k, p)| {
                    let r = compile(&format!("{what}.{k}"), &p)?;
                    Ok((k, r))
                })
                .collect()
        }
        Ok(NotificationFilter {
            publisher_id: self
                .publisher_id
                .map(|p| compile("publisher_id", &p))
                .transpose()?,
            event_type: self
                .event_type
                .map(|p| compile("event_type", &p))
                .transpose()?,
            context: compile_all("context", self.context)?,
            metadata: compile_all("metadata", self.metadata)?,
            payload: compile_all("payload", self.payload)?,
        })
    }
}

impl NotificationFilter {
    /// A builder with no rule (a filter that passes everything).
    pub fn builder() -> NotificationFilterBuilder {
        NotificationFilterBuilder::default()
    }

    /// Whether a notification passes every rule.
    pub fn matches(&self, n: &Notification) -> bool {
        fn one(r: &Option<Regex>, v: &str) -> bool {
            r.as_ref().is_none_or(|r| r.is_match(v))
        }
        fn map(rules: &[(String, Regex)], m: &Map<String, Value>) -> bool {
            rules.iter().all(|(k, r)| {
                m.get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|v| r.is_match(v))
            })
        }
        let metadata_ok = self.metadata.iter().all(|(k, r)| {
            let v = match k.as_str() {
                "message_id" => Some(n.metadata.message_id.as_str()),
                "timestamp" => Some(n.metadata.timestamp.as_str()),
                _ => None,
            };
            v.is_some_and(|v| r.is_match(v))
        });
        let payload_ok =
            self.payload.is_empty() || n.payload.as_object().is_some_and(|p| map(&self.payload, p));
        one(&self.publisher_id, &n.publisher_id)
            && one(&self.event_type, &n.event_type)
            && map(&self.context, n.ctx.as_map())
            && metadata_ok
            && payload_ok
    }
}

type NotifyFn = dyn Fn(Notification) -> BoxFuture<'static, NotificationResult> + Send + Sync;

/// Handlers for some priorities, with an optional filter (oslo's
/// notification endpoint with `info`, `error`, ... methods and a
/// `filter_rule`).
///
/// # Examples
///
/// ```
/// use warren_rpc::{Notification, NotificationEndpoint, NotificationResult};
///
/// let endpoint = NotificationEndpoint::new()
///     .info(|n: Notification| async move {
///         println!("{} from {}", n.event_type, n.publisher_id);
///     })
///     .error(|_n: Notification| async { NotificationResult::Requeue });
/// # let _ = endpoint;
/// ```
#[derive(Clone, Default)]
pub struct NotificationEndpoint {
    handlers: Vec<(Priority, Arc<NotifyFn>)>,
    filter: Option<Arc<NotificationFilter>>,
}

impl fmt::Debug for NotificationEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationEndpoint")
            .field(
                "priorities",
                &self.handlers.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            )
            .field("filter", &self.filter)
            .finish()
    }
}

impl NotificationEndpoint {
    /// An endpoint with no handler.
    pub fn new() -> NotificationEndpoint {
        NotificationEndpoint::default()
    }

    /// Only notifications this filter passes reach this endpoint.
    pub fn with_filter(mut self, filter: NotificationFilter) -> NotificationEndpoint {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Handles `priority` with `handler` (replacing an earlier one). The
    /// handler returns `()` or a [`NotificationResult`].
    pub fn on<F, Fut, R>(mut self, priority: Priority, handler: F) -> NotificationEndpoint
    where
        F: Fn(Notification) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Into<NotificationResult>,
    {
        let f: Arc<NotifyFn> = Arc::new(move |n| {
            let fut = handler(n);
            Box::pin(async move { fut.await.into() })
        });
        self.handlers.retain(|(p, _)| *p != priority);
        self.handlers.push((priority, f));
        self
    }

    /// The priorities it handles.
    pub fn priorities(&self) -> impl Iterator<Item = Priority> + '_ {
        self.handlers.iter().map(|(p, _)| *p)
    }

    fn handler(&self, priority: Priority) -> Option<&Arc<NotifyFn>> {
        self.handlers
            .iter()
            .find(|(p, _)| *p == priority)
            .map(|(_, h)| h)
    }
}

macro_rules! endpoint_methods {
    ($($(#[$doc:meta])* $name:ident => $prio:ident;)*) => {
        impl NotificationEndpoint {
            $(
                $(#[$doc])*
                pub fn $name<F, Fut, R>(self, handler: F) -> NotificationEndpoint
                where
                    F: Fn(Notification) -> Fut + Send + Sync + 'static,
                    Fut: Future<Output = R> + Send + 'static,
                    R: Into<NotificationResult>,
                {
                    self.on(Priority::$prio, handler)
                }
            )*
        }
    };
}

endpoint_methods! {
    /// Handles `audit` notifications.
    audit => Audit;
    /// Handles `debug` notifications.
    debug => Debug;
    /// Handles `info` notifications.
    info => Info;
    /// Handles `warn` notifications.
    warn => Warn;
    /// Handles `error` notifications.
    error => Error;
    /// Handles `critical` notifications.
    critical => Critical;
    /// Handles `sample` notifications.
    sample => Sample;
}

/// Settings of a [`NotificationListener`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationListenerOptions {
    /// The pool: listeners in one pool share its queue; each pool gets its
    /// own copy. `None`: the topic's default queues.
    pub pool: Option<String>,
    /// At most this many notifications handled at once (default 64).
    pub max_in_flight: usize,
    /// Honour [`NotificationResult::Requeue`] (default false, as oslo).
    pub allow_requeue: bool,
}

impl Default for NotificationListenerOptions {
    fn default() -> Self {
        NotificationListenerOptions {
            pool: None,
            max_in_flight: 64,
            allow_requeue: false,
        }
    }
}

impl NotificationListenerOptions {
    /// Sets `pool`.
    pub fn with_pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }
}

/// Counters of a [`NotificationListener`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Notifications received.
    pub received: u64,
    /// Handler invocations.
    pub dispatched: u64,
    /// Notifications no endpoint took (no handler, or filtered out).
    pub unhandled: u64,
    /// Notifications put back in their queue.
    pub requeued: u64,
    /// Handlers that panicked.
    pub panics: u64,
}

#[derive(Debug, Default)]
struct ListenerCounters {
    received: AtomicU64,
    dispatched: AtomicU64,
    unhandled: AtomicU64,
    requeued: AtomicU64,
    panics: AtomicU64,
}

struct ListenerInner {
    transport: Arc<dyn Transport>,
    targets: Vec<Target>,
    endpoints: Vec<NotificationEndpoint>,
    options: NotificationListenerOptions,
    counters: ListenerCounters,
}

/// Receives notifications and hands them to endpoints (oslo's
/// notification listener).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use warren_rpc::*;
///
/// let transport: Arc<dyn Transport> = Arc::new(InprocTransport::new(warren_core::Broker::new()));
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let endpoint = NotificationEndpoint::new().info(move |n: Notification| {
///     let tx = tx.clone();
///     async move { let _ = tx.send(n.event_type); }
/// });
/// let listener = NotificationListener::new(
///     transport.clone(),
///     vec![Target::new("notifications")],
///     vec![endpoint],
/// );
/// listener.start().await?;
/// Notifier::new(transport, "svc").info(&Context::new(), "thing.done", &()).await?;
/// assert_eq!(rx.recv().await.as_deref(), Some("thing.done"));
/// listener.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct NotificationListener {
    inner: Arc<ListenerInner>,
    pump: Pump,
}

impl fmt::Debug for NotificationListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationListener")
            .field("targets", &self.inner.targets)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl NotificationListener {
    /// A listener on these targets (topics), with default options.
    pub fn new(
        transport: Arc<dyn Transport>,
        targets: Vec<Target>,
        endpoints: Vec<NotificationEndpoint>,
    ) -> NotificationListener {
        NotificationListener::with_options(
            transport,
            targets,
            endpoints,
            NotificationListenerOptions::default(),
        )
    }

    /// A listener with these options (pool, bound, requeue).
    pub fn with_options(
        transport: Arc<dyn Transport>,
        targets: Vec<Target>,
        endpoints: Vec<NotificationEndpoint>,
        options: NotificationListenerOptions,
    ) -> NotificationListener {
        let pump = Pump::new(options.max_in_flight);
        NotificationListener {
            inner: Arc::new(ListenerInner {
                transport,
                targets,
                endpoints,
                options,
                counters: ListenerCounters::default(),
            }),
            pump,
        }
    }

    /// Starts listening: declares and binds the queues, then handles
    /// notifications in tasks. Starting a running listener does nothing.
    ///
    /// # Errors
    ///
    /// [`RpcError::InvalidTarget`] for a target with an empty topic,
    /// [`RpcError::Transport`] when the queues cannot be set up or no Tokio
    /// runtime runs.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped before it completes, the listener is not
    /// started.
    pub async fn start(&self) -> Result<(), RpcError> {
        let inner = &self.inner;
        if let Some(t) = inner.targets.iter().find(|t| t.topic.is_empty()) {
            return Err(RpcError::InvalidTarget {
                target: t.to_string(),
                reason: "a notification target needs a topic",
            });
        }
        let prefetch = self.pump.max_in_flight() as u32;
        let open = || async move {
            let mut priorities: Vec<Priority> = inner
                .endpoints
                .iter()
                .flat_map(NotificationEndpoint::priorities)
                .collect();
            priorities.sort();
            priorities.dedup();
            let pairs: Vec<(Target, Priority)> = inner
                .targets
                .iter()
                .flat_map(|t| priorities.iter().map(move |p| (t.clone(), *p)))
                .collect();
            Ok(inner
                .transport
                .listen_for_notifications(
                    &pairs,
                    inner.options.pool.as_deref(),
                    ListenOptions { prefetch },
                )
                .await?)
        };
        let handler = self.inner.clone();
        self.pump
            .start("notification listener".to_owned(), open, move |n| {
                let inner = handler.clone();
                async move { dispatch(&inner, n).await }
            })
            .await
    }

    /// Stops taking notifications and waits for those being handled.
    /// Notifications not yet taken stay in their queues. [`start`](Self::start)
    /// again resumes.
    ///
    /// # Cancel safety
    ///
    /// If dropped before it completes the listener still stops; handlers
    /// already running finish on their own.
    pub async fn stop(&self) {
        self.pump.stop().await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ListenerStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerStats {
            received: g(&c.received),
            dispatched: g(&c.dispatched),
            unhandled: g(&c.unhandled),
            requeued: g(&c.requeued),
            panics: g(&c.panics),
        }
    }
}

async fn dispatch(inner: &ListenerInner, incoming: IncomingNotification) {
    let c = &inner.counters;
    c.received.fetch_add(1, Ordering::Relaxed);
    let IncomingNotification {
        message,
        acknowledger,
    } = incoming;
    let mut requeue = false;
    if let Ok(priority) = message.priority.parse::<Priority>() {
        let payload = serde_json::from_str(message.payload.get()).unwrap_or(Value::Null);
        let n = Notification {
            ctx: message.ctx,
            publisher_id: message.publisher_id,
            event_type: message.event_type,
            priority,
            payload,
            metadata: NotificationMetadata {
                message_id: message.message_id,
                timestamp: message.timestamp,
            },
        };
        let mut handled = false;
        for ep in &inner.endpoints {
            let Some(h) = ep.handler(priority) else {
                continue;
            };
            if ep.filter.as_ref().is_some_and(|f| !f.matches(&n)) {
                continue;
            }
            handled = true;
            c.dispatched.fetch_add(1, Ordering::Relaxed);
            let h = h.clone();
            let n = n.clone();
            let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(n)));
            let finished = match started {
                Ok(future) => CatchUnwind::new(future).await,
                Err(payload) => Err(payload),
            };
            let result = match finished {
                Ok(r) => r,
                Err(p) => {
                    c.panics.fetch_add(1, Ordering::Relaxed);
                    log_error!("notification handler panicked: {}", panic_message(&*p));
                    NotificationResult::Requeue
                }
            };
            if result == NotificationResult::Requeue {
                requeue = inner.options.allow_requeue;
                break;
            }
        }
        if !handled {
            c.unhandled.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        c.unhandled.fetch_add(1, Ordering::Relaxed);
    }
    if requeue {
        c.requeued.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = acknowledger.settle(requeue).await {
        log_error!("cannot settle a notification: {}", e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn note() -> Notification {
        Notification {
            ctx: Context::new().with("project_id", "p1").with("n", 5),
            publisher_id: "compute.host1".into(),
            event_type: "compute.instance.create.end".into(),
            priority: Priority::Info,
            payload: json!({"state": "active", "size": 1}),
            metadata: NotificationMetadata {
                message_id: "abc".into(),
                timestamp: "2024-08-01 00:00:00.000000".into(),
            },
        }
    }

    #[test]
    fn filter_rules_follow_oslo() {
        let f = |b: NotificationFilterBuilder| b.build().unwrap().matches(&note());
        assert!(f(NotificationFilter::builder()));
        assert!(f(NotificationFilter::builder().publisher_id("^compute.*")));
        assert!(f(NotificationFilter::builder().publisher_id("compute")));
        // re.match anchors at the start only.
        assert!(!f(NotificationFilter::builder().publisher_id("host1")));
        assert!(f(
            NotificationFilter::builder().event_type(r"compute\.instance\..*")
        ));
        assert!(!f(NotificationFilter::builder().event_type(r"^volume\.")));
        assert!(f(
            NotificationFilter::builder().context("project_id", "^p1$")
        ));
        assert!(!f(
            NotificationFilter::builder().context("project_id", "^p2$")
        ));
        // Missing key, or not a string: no match.
        assert!(!f(NotificationFilter::builder().context("user", ".*")));
        assert!(!f(NotificationFilter::builder().context("n", ".*")));
        assert!(f(
            NotificationFilter::builder().metadata("timestamp", "2024-08")
        ));
        assert!(!f(
            NotificationFilter::builder().metadata("timestamp", "Aug")
        ));
        assert!(f(NotificationFilter::builder().payload("state", "^active$")));
        assert!(!f(NotificationFilter::builder().payload("size", ".*")));
        // Every rule must match.
        assert!(!f(NotificationFilter::builder()
            .publisher_id("compute")
            .event_type("volume")));
        // A (?m) inside the pattern cannot unanchor it.
        assert!(!f(NotificationFilter::builder().publisher_id("(?m)^host1")));
        assert!(NotificationFilter::builder()
            .event_type("(")
            .build()
            .is_err());
    }

    #[test]
    fn priorities_parse() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse(), Ok(p));
            assert_eq!(p.as_wire_str().parse(), Ok(p));
        }
        assert_eq!("warning".parse(), Ok(Priority::Warn));
        assert!("loud".parse::<Priority>().is_err());
    }
}
