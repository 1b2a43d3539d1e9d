//! Helpers shared by the integration tests.
//!
//! Behaviour tests run on every transport: [`each_transport!`] turns one
//! test body into a test per transport (`<name>::inproc`,
//! `<name>::inproc_bare`, `<name>::amqp`), each with a [`Rig`]: its
//! transport, a way to make another one on the same broker, unique names,
//! and a look at the broker's queues. `inproc_bare` sends bodies without
//! oslo's envelope, and its [`Rig::another`] transports with it, so a test
//! with two transports also mixes the two layouts.
//!
//! The `amqp` variant needs the `amqp` feature and a broker URL in
//! `WARREN_TEST_AMQP_URL` (for example the RabbitMQ that
//! `tests/python/oslo/rabbitmq.sh start` runs:
//! `amqp://guest:guest@127.0.0.1:5673/%2F`); without them it prints why and
//! passes. Tests share that broker and run in parallel, so every topic,
//! pool and exchange a test uses goes through [`Rig::name`].
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use warren_rpc::{Context, RpcClient, RpcError};

use warren_core::Broker;
use warren_rpc::{InprocTransport, Transport};

/// How long a test waits for an event before it fails. Generous: it only
/// matters when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The environment variable naming the AMQP broker for the tests.
pub const AMQP_URL_VAR: &str = "WARREN_TEST_AMQP_URL";

/// Waits for `f`, failing the test if it does not complete in time.
pub async fn within<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for an event"),
    }
}

/// A transport over a fresh broker, and the broker.
pub fn fresh() -> (Arc<dyn Transport>, Broker) {
    let broker = Broker::new();
    (Arc::new(InprocTransport::new(broker.clone())), broker)
}

/// Another transport (its own reply queue) over the same broker.
pub fn another(broker: &Broker) -> Arc<dyn Transport> {
    Arc::new(InprocTransport::new(broker.clone()))
}

/// The broker URL for AMQP tests, or `None` (with a message saying so).
pub fn amqp_url(test: &str) -> Option<String> {
    match std::env::var(AMQP_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "SKIPPED {test} on amqp: {AMQP_URL_VAR} is not set \
                 (e.g. tests/python/oslo/rabbitmq.sh start, then \
                 {AMQP_URL_VAR}=amqp://guest:guest@127.0.0.1:5673/%2F)"
            );
            None
        }
    }
}

/// Declares the topic exchange `exchange` and a queue `probe` bound to it
/// with `key`, on an in-process broker: to look at what is published there.
pub fn probe(broker: &Broker, exchange: &str, key: &str) {
    broker
        .declare_exchange(
            exchange,
            warren_core::ExchangeKind::Topic,
            Default::default(),
        )
        .unwrap();
    broker.declare_queue("probe", Default::default()).unwrap();
    broker
        .bind_queue("probe", exchange, key, &Default::default())
        .unwrap();
}

/// The next message in the probe queue (see [`probe`]); fails the test if
/// there is none.
pub fn probed(broker: &Broker) -> warren_core::Delivery {
    broker
        .get("probe", Default::default())
        .unwrap()
        .expect("a message in the probe queue")
}

/// A short random suffix that keeps one test's names apart from another's
/// on a shared broker.
pub fn unique_suffix() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("-{}", &u[..10])
}

enum Backend {
    Inproc(Broker),
    #[cfg(feature = "amqp")]
    Amqp(String),
}

/// One test's transport, and what the test needs around it.
pub struct Rig {
    backend: Backend,
    suffix: String,
    transport: Arc<dyn Transport>,
    /// In process: whether the rig's own transport sends bare bodies.
    bare: bool,
}

impl Rig {
    /// A fresh in-process broker.
    pub fn inproc() -> Rig {
        let broker = Broker::new();
        Rig {
            transport: Arc::new(InprocTransport::new(broker.clone())),
            backend: Backend::Inproc(broker),
            suffix: String::new(),
            bare: false,
        }
    }

    /// A fresh in-process broker; the rig's transport sends bare bodies
    /// (no envelope), the others it makes send the envelope.
    pub fn inproc_bare() -> Rig {
        let broker = Broker::new();
        Rig {
            transport: Arc::new(InprocTransport::new(broker.clone()).with_envelope(false)),
            backend: Backend::Inproc(broker),
            suffix: String::new(),
            bare: true,
        }
    }

    /// The AMQP broker of `WARREN_TEST_AMQP_URL`, or `None` (printed).
    pub async fn amqp(test: &str) -> Option<Rig> {
        let url = amqp_url(test)?;
        Rig::amqp_at(test, url)
    }

    #[cfg(feature = "amqp")]
    fn amqp_at(_test: &str, url: String) -> Option<Rig> {
        let t = warren_rpc::AmqpTransport::from_url(&url).expect("a valid WARREN_TEST_AMQP_URL");
        Some(Rig {
            transport: Arc::new(t),
            backend: Backend::Amqp(url),
            suffix: unique_suffix(),
            bare: false,
        })
    }

    #[cfg(not(feature = "amqp"))]
    fn amqp_at(test: &str, url: String) -> Option<Rig> {
        eprintln!("SKIPPED {test} on amqp ({url}): built without the `amqp` feature");
        None
    }

    /// `"inproc"` or `"amqp"`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Inproc(_) => "inproc",
            #[cfg(feature = "amqp")]
            Backend::Amqp(_) => "amqp",
        }
    }

    /// The test's transport.
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// Another transport (its own reply queue, and for AMQP its own
    /// connection) on the same broker. For a bare rig, one that sends the
    /// envelope.
    pub fn another(&self) -> Arc<dyn Transport> {
        match &self.backend {
            Backend::Inproc(b) => Arc::new(InprocTransport::new(b.clone())),
            #[cfg(feature = "amqp")]
            Backend::Amqp(url) => {
                Arc::new(warren_rpc::AmqpTransport::from_url(url).expect("a valid URL"))
            }
        }
    }

    /// `base`, made unique on a shared broker (unchanged in process).
    pub fn name(&self, base: &str) -> String {
        format!("{base}{}", self.suffix)
    }

    /// The in-process broker, for the checks only it can answer.
    pub fn broker(&self) -> Option<&Broker> {
        match &self.backend {
            Backend::Inproc(b) => Some(b),
            #[cfg(feature = "amqp")]
            Backend::Amqp(_) => None,
        }
    }

    /// Messages ready in `queue`, `None` if there is no such queue.
    pub async fn ready(&self, queue: &str) -> Option<u64> {
        match &self.backend {
            Backend::Inproc(b) => b.queue_stats(queue).ok().map(|s| s.ready),
            #[cfg(feature = "amqp")]
            Backend::Amqp(url) => amqp_probe::ready(url, queue).await,
        }
    }

    /// How many queues have names starting with `prefix`, when the broker
    /// can list them (in process only).
    pub fn count_queues(&self, prefix: &str) -> Option<usize> {
        self.broker().map(|b| {
            b.queue_names()
                .iter()
                .filter(|q| q.starts_with(prefix))
                .count()
        })
    }

    /// Publishes a raw body, as another program on the broker would.
    pub async fn publish_raw(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        match &self.backend {
            Backend::Inproc(b) => {
                b.publish(exchange, routing_key, body.to_vec())
                    .expect("raw publish");
            }
            #[cfg(feature = "amqp")]
            Backend::Amqp(url) => amqp_probe::publish(url, exchange, routing_key, body).await,
        }
    }
}

/// Calls in a loop from several tasks, counting successes; every call is
/// bounded by its timeout.
pub struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    progress: Arc<Notify>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    pub fn start(client: RpcClient, callers: usize) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..callers {
            let (client, ok, failed, progress, stop) = (
                client.clone(),
                ok.clone(),
                failed.clone(),
                progress.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let args = json!({"caller": i, "n": n});
                    // Never hangs: the call's timeout bounds it.
                    match client
                        .call::<_, Value>(&Context::new(), "echo", &args)
                        .await
                    {
                        Ok(v) => {
                            assert_eq!(v, args, "a reply to another call");
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            assert!(
                                e.is_timeout() || matches!(e, RpcError::Transport(_)),
                                "{e:?}"
                            );
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    progress.notify_waiters();
                }
            });
        }
        Load {
            ok,
            failed,
            progress,
            stop,
            tasks,
        }
    }

    /// Waits until `more` further calls succeeded.
    pub async fn succeeded(&self, more: u64) {
        let target = self.ok.load(Ordering::SeqCst) + more;
        within(async {
            loop {
                let notified = self.progress.notified();
                if self.ok.load(Ordering::SeqCst) >= target {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    pub async fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(r) = within(self.tasks.join_next()).await {
            r.expect("a caller panicked");
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// One test body per transport: `each_transport! { #[tokio::test] async fn
/// name(rig) { ... } }` makes `name::inproc` and `name::amqp`.
#[macro_export]
macro_rules! each_transport {
    ($(#[$attr:meta])* async fn $name:ident($rig:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            async fn inproc() {
                let $rig = common::Rig::inproc();
                $body
            }

            $(#[$attr])*
            async fn inproc_bare() {
                let $rig = common::Rig::inproc_bare();
                $body
            }

            $(#[$attr])*
            async fn amqp() {
                let Some($rig) = common::Rig::amqp(stringify!($name)).await else {
                    return;
                };
                $body
            }
        }
    };
}

/// Raw AMQP access for the checks: a connection per check (tests are not
/// about speed).
#[cfg(feature = "amqp")]
pub mod amqp_probe {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    pub use lapin::BasicProperties;
    use lapin::{Connection, ConnectionProperties};

    /// A connection to `url`.
    pub async fn connect(url: &str) -> Connection {
        Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("probe connection")
    }

    /// Messages ready in `queue` (passive declare), `None` if it does not
    /// exist.
    pub async fn ready(url: &str, queue: &str) -> Option<u64> {
        let conn = connect(url).await;
        let ch = conn.create_channel().await.expect("probe channel");
        let r = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = conn.close(200, "OK".into()).await;
        r.ok().map(|q| u64::from(q.message_count()))
    }

    /// Publishes `body` with confirms.
    pub async fn publish(url: &str, exchange: &str, routing_key: &str, body: &[u8]) {
        publish_with(url, exchange, routing_key, body, BasicProperties::default()).await
    }

    /// Publishes `body` with these properties, with confirms.
    pub async fn publish_with(
        url: &str,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let conn = connect(url).await;
        let ch = conn.create_channel().await.expect("probe channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        let _ = conn.close(200, "OK".into()).await;
    }
}
