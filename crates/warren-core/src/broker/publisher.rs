//! A publisher bound to one exchange and routing key.

use std::fmt;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{
    Broker, BrokerInner, CachedRoute, CountOn, PublishAsync, PublishError, Published, Wait,
};
use crate::message::{Content, Message, SharedProperties, NO_PROPERTIES};

/// Publishes to one exchange with one routing key, again and again: what a
/// producer that always sends the same kind of message holds (kombu's
/// `Producer` with a default exchange and routing key, a crossbeam
/// `Sender`).
///
/// It keeps the route it last computed, valid while the broker's topology
/// has not changed (as the thread-local route cache behind
/// [`Broker::publish`] does), so a publish with it looks nothing up: no
/// thread-local cache, no name comparison, about a quarter fewer
/// instructions than [`Broker::publish`] on a cached route. Its semantics are [`Broker::publish`]'s in every respect;
/// when the topology changes it routes again on its next publish, and a
/// publish that the route cannot take (a headers exchange on the way, `CC`
/// or `BCC` headers, a missing or internal exchange) goes the general way,
/// with the same outcome and errors.
///
/// # Examples
///
/// ```
/// use warren_core::{Broker, ConsumeOptions, QueueDeclareOptions};
///
/// let broker = Broker::new();
/// broker.declare_queue("jobs", QueueDeclareOptions::default())?;
/// let jobs = broker.consume("jobs", ConsumeOptions::default())?;
///
/// let mut publisher = broker.publisher("", "jobs");
/// for job in ["resize 1", "resize 2"] {
///     assert_eq!(publisher.publish(job)?.routed, 1);
/// }
/// assert_eq!(&jobs.recv()?.body()[..], b"resize 1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Publisher {
    broker: Broker,
    exchange: Box<str>,
    routing_key: Box<str>,
    /// The topology `route` was computed at, `u64::MAX` before the first
    /// publish. `route` is `None` at that topology when the route cannot be
    /// kept (see [`BrokerInner::resolve`]).
    resolved_at: u64,
    route: Option<CachedRoute>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish()
    }
}

impl Broker {
    /// A publisher for `exchange` and `routing_key` (see [`Publisher`]).
    /// Nothing is checked until it publishes: a missing exchange is a
    /// publish's error, as with [`publish`](Self::publish).
    pub fn publisher(&self, exchange: &str, routing_key: &str) -> Publisher {
        Publisher {
            broker: self.clone(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            resolved_at: u64::MAX,
            route: None,
        }
    }
}

impl Publisher {
    /// Publishes a body with no properties, as [`Broker::publish`]: waits
    /// for room in a full queue whose overflow is `block`.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub fn publish(&mut self, body: impl Into<Bytes>) -> Result<Published, PublishError> {
        self.send(&NO_PROPERTIES, body.into(), Wait::Block)
    }

    /// Publishes a body with shared properties, as
    /// [`Broker::publish_shared`].
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub fn publish_shared(
        &mut self,
        properties: &SharedProperties,
        body: impl Into<Bytes>,
    ) -> Result<Published, PublishError> {
        self.send(properties, body.into(), Wait::Block)
    }

    /// Publishes a body with no properties without ever waiting, as
    /// [`Broker::try_publish`].
    ///
    /// # Errors
    ///
    /// As [`Broker::try_publish`]: [`PublishError::Full`] when a `block`
    /// queue it routes to is full.
    pub fn try_publish(&mut self, body: impl Into<Bytes>) -> Result<Published, PublishError> {
        self.send(&NO_PROPERTIES, body.into(), Wait::Never)
    }

    /// Publishes a body with no properties, waiting asynchronously for room
    /// in a full queue whose overflow is `block`: [`Broker::publish_async`]
    /// with this publisher's exchange and routing key. It routes as that
    /// does, with the thread's route cache rather than this publisher's
    /// route.
    ///
    /// # Cancel safety
    ///
    /// As [`Broker::publish_async`]: not cancel safe while it waits for
    /// room.
    ///
    /// # Errors
    ///
    /// As [`Broker::publish`].
    pub fn publish_async(&mut self, body: impl Into<Bytes>) -> PublishAsync {
        let message = Message::new(body.into());
        self.broker
            .publish_async(&self.exchange, &self.routing_key, message)
    }

    /// The exchange it publishes to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The routing key it publishes with.
    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    fn send(
        &mut self,
        properties: &SharedProperties,
        body: Bytes,
        wait: Wait,
    ) -> Result<Published, PublishError> {
        let inner = &*self.broker.inner;
        if let Some(ttl) = properties.route_ttl {
            // Read before routing, as a thread's route cache does: a route
            // kept at this value is one this publish could have computed.
            let topology = inner.topology.load(Ordering::Acquire);
            if topology != self.resolved_at {
                self.route = inner.resolve(topology, &self.exchange, &self.routing_key);
                self.resolved_at = topology;
            }
            if let Some(route) = &self.route {
                let content = Content::shared(route.names.clone(), properties, body);
                let count = CountOn::Cell(&route.counts);
                let offered = inner.offer_all(count, &route.queues, Some(content), ttl, None, wait);
                return super::published(offered);
            }
        }
        let mut message = Message {
            properties: properties.properties().clone(),
            body,
        };
        inner.publish(&self.exchange, &self.routing_key, &mut message, wait)
    }
}

impl BrokerInner {
    /// The route a message with no headers takes from `exchange` with
    /// `routing_key`, at `topology` (read before this is called), if it can
    /// be kept: `None` for a missing or internal exchange (the general path
    /// refuses those) or a route through a headers exchange.
    fn resolve(&self, topology: u64, exchange: &str, routing_key: &str) -> Option<CachedRoute> {
        let x = self.exchange(exchange).ok()?;
        if x.internal {
            return None;
        }
        let mut queues = Vec::new();
        let mut scratch = super::Scratch::default();
        if !self.route(&x, &[routing_key], None, &mut queues, &mut scratch) {
            return None;
        }
        Some(self.cached_route(topology, x, routing_key, &queues))
    }
}
