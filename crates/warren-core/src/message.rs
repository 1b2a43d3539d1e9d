//! Messages: a body, AMQP basic properties, and what the broker stores.
//!
//! A published message becomes one immutable, reference-counted [`Content`]
//! shared by every queue it reaches: a fanout to ten queues stores one body and
//! one set of properties, not ten. Properties that are all unset cost one
//! pointer-sized `None`.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;

use crate::field::FieldTable;

/// AMQP 0-9-1 basic properties (the content header), named as in lapin.
///
/// Every field is optional; `BasicProperties::default()` sets none. The
/// `with_*` methods build one fluently.
///
/// # Examples
///
/// ```
/// use warren_core::BasicProperties;
///
/// let p = BasicProperties::default()
///     .with_content_type("application/json")
///     .with_correlation_id("42")
///     .with_reply_to("replies");
/// assert_eq!(p.correlation_id.as_deref(), Some("42"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<String>,
    /// MIME content encoding.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority, 0 to 9.
    pub priority: Option<u8>,
    /// Correlation id (RPC).
    pub correlation_id: Option<String>,
    /// Queue to reply to (RPC).
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a decimal string (RabbitMQ's rule).
    pub expiration: Option<String>,
    /// Application message id.
    pub message_id: Option<String>,
    /// Timestamp, seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Message type name (AMQP's `type`).
    pub kind: Option<String>,
    /// Creating user id.
    pub user_id: Option<String>,
    /// Creating application id.
    pub app_id: Option<String>,
    /// Reserved by AMQP (`cluster-id`).
    pub cluster_id: Option<String>,
}

static DEFAULT_PROPERTIES: BasicProperties = BasicProperties {
    content_type: None,
    content_encoding: None,
    headers: None,
    delivery_mode: None,
    priority: None,
    correlation_id: None,
    reply_to: None,
    expiration: None,
    message_id: None,
    timestamp: None,
    kind: None,
    user_id: None,
    app_id: None,
    cluster_id: None,
};

macro_rules! with_string {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$field = Some(value.into());
            self
        }
    )*};
}

impl BasicProperties {
    with_string! {
        /// Sets `content_type`.
        with_content_type => content_type;
        /// Sets `content_encoding`.
        with_content_encoding => content_encoding;
        /// Sets `correlation_id`.
        with_correlation_id => correlation_id;
        /// Sets `reply_to`.
        with_reply_to => reply_to;
        /// Sets `expiration` (milliseconds, as a decimal string).
        with_expiration => expiration;
        /// Sets `message_id`.
        with_message_id => message_id;
        /// Sets `kind` (AMQP's `type`).
        with_kind => kind;
        /// Sets `user_id`.
        with_user_id => user_id;
        /// Sets `app_id`.
        with_app_id => app_id;
    }

    /// Sets `headers`.
    pub fn with_headers(mut self, headers: FieldTable) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Sets `delivery_mode` (1 transient, 2 persistent).
    pub fn with_delivery_mode(mut self, mode: u8) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Sets `priority`.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets `timestamp` (seconds since the epoch).
    pub fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// A shared reference to properties with nothing set.
    pub fn empty() -> &'static BasicProperties {
        &DEFAULT_PROPERTIES
    }

    /// Whether no property is set: a field-by-field look (comparing with
    /// the default compiles to a call comparing some 300 bytes). Inlined
    /// into `Broker::publish`, which is generic and so compiled in the
    /// caller's crate: there, for a message built from a body, the compiler
    /// sees every field `None` and nothing of the check (or of the
    /// properties) is left.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        let BasicProperties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        } = self;
        content_type.is_none()
            && content_encoding.is_none()
            && headers.is_none()
            && delivery_mode.is_none()
            && priority.is_none()
            && correlation_id.is_none()
            && reply_to.is_none()
            && expiration.is_none()
            && message_id.is_none()
            && timestamp.is_none()
            && kind.is_none()
            && user_id.is_none()
            && app_id.is_none()
            && cluster_id.is_none()
    }
}

/// A message to publish: properties and body.
///
/// # Examples
///
/// ```
/// use warren_core::{BasicProperties, Message};
///
/// let m = Message::new("hello").with_properties(BasicProperties::default().with_priority(3));
/// assert_eq!(&m.body[..], b"hello");
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// The AMQP basic properties.
    pub properties: BasicProperties,
    /// The body; cloning it is a reference-count increment.
    pub body: Bytes,
}

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            properties: BasicProperties::default(),
            body: body.into(),
        }
    }

    /// Replaces the properties.
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

/// Properties built once and published with many messages, through
/// [`Broker::publish_shared`](crate::Broker::publish_shared): each message
/// shares them (a reference count) instead of taking a copy of its own, and
/// no [`Message`] is built per publish. For the properties a service sets
/// the same on every message (a content type and encoding, a reply queue,
/// a fixed `expiration`).
///
/// # Examples
///
/// ```
/// use warren_core::{BasicProperties, Broker, QueueDeclareOptions, SharedProperties};
///
/// let broker = Broker::new();
/// broker.declare_queue("jobs", QueueDeclareOptions::default())?;
/// let json = SharedProperties::new(BasicProperties::default().with_content_type("application/json"));
/// for job in [r#"{"n":1}"#, r#"{"n":2}"#] {
///     broker.publish_shared("", "jobs", &json, job)?;
/// }
/// let d = broker.get("jobs", Default::default())?.unwrap();
/// assert_eq!(d.properties().content_type.as_deref(), Some("application/json"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SharedProperties {
    /// `None` when no property is set, as in [`Content`].
    extra: Option<Arc<Extra>>,
    /// Whether a publish with them may take a cached route, and the TTL it
    /// then has: decided once, here (see `broker::fast_ttl`).
    pub(crate) route_ttl: Option<Option<u64>>,
}

/// No properties, shared: what [`Broker::publish`](crate::Broker::publish)
/// publishes a message that sets none with.
pub(crate) static NO_PROPERTIES: SharedProperties = SharedProperties {
    extra: None,
    route_ttl: Some(None),
};

impl SharedProperties {
    /// Shares these properties.
    pub fn new(properties: BasicProperties) -> SharedProperties {
        let route_ttl = crate::broker::fast_ttl(&properties);
        let extra = (!properties.is_empty()).then(|| {
            Arc::new(Extra {
                properties,
                bcc: Box::default(),
            })
        });
        SharedProperties { extra, route_ttl }
    }

    /// The properties.
    pub fn properties(&self) -> &BasicProperties {
        Extra::properties_of(&self.extra)
    }
}

impl From<BasicProperties> for SharedProperties {
    fn from(properties: BasicProperties) -> Self {
        SharedProperties::new(properties)
    }
}

impl From<Bytes> for Message {
    #[inline]
    fn from(body: Bytes) -> Self {
        Message::new(body)
    }
}
impl From<&'static str> for Message {
    #[inline]
    fn from(body: &'static str) -> Self {
        Message::new(Bytes::from_static(body.as_bytes()))
    }
}
impl From<Vec<u8>> for Message {
    #[inline]
    fn from(body: Vec<u8>) -> Self {
        Message::new(body)
    }
}

/// What the broker stores for one published message: 80 bytes, held by
/// value in each queue entry.
///
/// A copy for another queue shares the body and the properties (reference
/// counts) and copies the names. The common message, with no properties and
/// a short exchange name and routing key, therefore needs no allocation of
/// its own: the publishing thread writes it into the queue, the consuming
/// thread reads it from there, and no memory is handed from one thread's
/// allocator to the other's per message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Content {
    names: Names,
    /// `None` when no property is set (the common case costs 8 bytes).
    extra: Option<Arc<Extra>>,
    pub(crate) body: Bytes,
}

/// The rarer parts of a message, boxed: its properties and its `BCC` keys.
#[derive(Debug)]
struct Extra {
    properties: BasicProperties,
    /// The `BCC` header's keys: removed from the headers before routing,
    /// kept here because a dead letter is routed with them again (as
    /// RabbitMQ routes it with every key the message was published with).
    bcc: Box<[String]>,
}

impl Extra {
    /// The properties `extra` holds: none set when it is `None`.
    fn properties_of(extra: &Option<Arc<Extra>>) -> &BasicProperties {
        extra
            .as_deref()
            .map_or(&DEFAULT_PROPERTIES, |e| &e.properties)
    }
}

impl Content {
    /// Moves the message's body and (set) properties into shared content.
    /// `bcc`: the keys of the `BCC` header (already removed from the
    /// headers), if it had one.
    #[inline]
    pub(crate) fn new(names: Names, message: &mut Message, bcc: Vec<String>) -> Content {
        let extra = if message.properties.is_empty() && bcc.is_empty() {
            None
        } else {
            Some(Arc::new(Extra {
                properties: std::mem::take(&mut message.properties),
                bcc: bcc.into_boxed_slice(),
            }))
        };
        Content {
            names,
            extra,
            body: std::mem::take(&mut message.body),
        }
    }

    /// Content with shared properties (see [`SharedProperties`]). Their
    /// headers must hold no `BCC` key: those are taken out of a message's
    /// headers when it is published.
    #[inline]
    pub(crate) fn shared(names: Names, properties: &SharedProperties, body: Bytes) -> Content {
        Content {
            names,
            extra: properties.extra.clone(),
            body,
        }
    }

    /// The copy for one queue: the content itself for the last queue a
    /// message goes to (`last`), a clone for the others. The content is held
    /// in an `Option` so that taking it leaves a `None` (one store, and
    /// nothing to drop) rather than a default content to write and drop.
    #[inline(always)]
    pub(crate) fn copy(src: &mut Option<Content>, last: bool) -> Content {
        if last {
            src.take().unwrap_or_default()
        } else {
            src.clone().unwrap_or_default()
        }
    }

    /// The exchange it was published to.
    pub(crate) fn exchange(&self) -> &str {
        self.names.get().0
    }

    /// The routing key it was published with.
    pub(crate) fn routing_key(&self) -> &str {
        self.names.get().1
    }

    pub(crate) fn properties(&self) -> &BasicProperties {
        Extra::properties_of(&self.extra)
    }

    /// The keys of the `BCC` header it was published with.
    pub(crate) fn bcc(&self) -> &[String] {
        self.extra.as_deref().map_or(&[], |e| &e.bcc)
    }

    /// The body's length: what `x-max-length-bytes` counts, as in RabbitMQ.
    pub(crate) fn body_len(&self) -> usize {
        self.body.len()
    }

    pub(crate) fn to_message(&self) -> Message {
        Message {
            properties: self.properties().clone(),
            body: self.body.clone(),
        }
    }
}

/// The exchange name and routing key of a message, stored inline when they
/// fit together in 36 bytes (most do). Copying the bytes costs less than an
/// allocation, and less than a shared reference count that the publishing
/// and the consuming thread would both write for every message. Longer ones
/// are joined in one shared string; a thread's cached route keeps its names
/// built, so a publish on it clones them (a copy, or a reference count)
/// rather than building them.
#[derive(Clone)]
pub(crate) enum Names {
    Inline(InlineNames),
    Heap { joined: Arc<str>, split: usize },
}

/// Names that fit inline: 40 bytes aligned to 8, and `Copy`, so that a copy
/// moves whole words.
///
/// `lens` holds both lengths and a bit that is always set. A field that
/// cannot be 0 gives [`Names`] a place for its variant, so that it stays 40
/// bytes; four bytes of it at the front leave the bytes after it in whole
/// words. A message's content is moved several times on its way from the
/// publishing call to its ring slot, and from there into the receiver's
/// `Delivery`, each move reading what the one before had just stored. With
/// a one-byte variant tag and two one-byte lengths in front of 37 bytes, a
/// copy moved them in odd, overlapping pieces, which the processor cannot
/// read back from its store buffer: each such read waited for the store to
/// reach the cache. Laid out this way, a publish through `Broker::publish`
/// and a receive with its ack each took some 10 ns less (one thread,
/// alternated in one process).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct InlineNames {
    lens: NonZeroU32,
    bytes: [u8; NAMES_INLINE],
}

const NAMES_INLINE: usize = 36;

const _: () = assert!(std::mem::size_of::<Names>() == 40);

/// In [`InlineNames::lens`]: the bit always set.
const LENS_SET: u32 = 1 << 16;

impl InlineNames {
    /// `lens` for an exchange name of `exchange` bytes and a routing key of
    /// `total - exchange`.
    fn lens(exchange: u8, total: u8) -> NonZeroU32 {
        // Never 0: `LENS_SET` is set.
        NonZeroU32::new(LENS_SET | u32::from(total) << 8 | u32::from(exchange))
            .unwrap_or(NonZeroU32::MIN)
    }

    /// The exchange name's length, and both names' length.
    fn split(&self) -> (usize, usize) {
        let l = self.lens.get();
        ((l & 0xff) as usize, (l >> 8 & 0xff) as usize)
    }
}

impl Default for Names {
    fn default() -> Names {
        Names::Inline(InlineNames {
            lens: InlineNames::lens(0, 0),
            bytes: [0; NAMES_INLINE],
        })
    }
}

impl Names {
    #[inline]
    pub(crate) fn new(exchange: &str, routing_key: &str) -> Names {
        let total = exchange.len() + routing_key.len();
        if total <= NAMES_INLINE {
            let mut bytes = [0u8; NAMES_INLINE];
            bytes[..exchange.len()].copy_from_slice(exchange.as_bytes());
            bytes[exchange.len()..total].copy_from_slice(routing_key.as_bytes());
            Names::Inline(InlineNames {
                // Both fit in a byte: `total <= NAMES_INLINE`.
                lens: InlineNames::lens(exchange.len() as u8, total as u8),
                bytes,
            })
        } else {
            let mut joined = String::with_capacity(total);
            joined.push_str(exchange);
            joined.push_str(routing_key);
            Names::Heap {
                joined: joined.into(),
                split: exchange.len(),
            }
        }
    }

    fn get(&self) -> (&str, &str) {
        let (all, split): (&[u8], usize) = match self {
            Names::Inline(n) => {
                let (exchange, total) = n.split();
                (&n.bytes[..total.min(NAMES_INLINE)], exchange)
            }
            Names::Heap { joined, split } => (joined.as_bytes(), *split),
        };
        // Both halves were whole `&str`s when copied in, so these never fail.
        let (e, k) = all.split_at(split.min(all.len()));
        (
            std::str::from_utf8(e).unwrap_or_default(),
            std::str::from_utf8(k).unwrap_or_default(),
        )
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (e, k) = self.get();
        f.debug_struct("Names")
            .field("exchange", &e)
            .field("routing_key", &k)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every split of names from 0 to a few bytes past what fits inline
    /// comes back as it went in, whichever way it is stored, and through a
    /// clone.
    #[test]
    fn names_round_trip_inline_and_shared() {
        let text = "é.amq-direct.routing.key.with.words.0123456789";
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        for total in 0..=NAMES_INLINE + 4 {
            // Cut at a character boundary at or before `total` bytes.
            let end = chars
                .iter()
                .map(|&(i, _)| i)
                .chain([text.len()])
                .filter(|&i| i <= total)
                .max()
                .unwrap_or(0);
            let joined = &text[..end];
            for split in (0..=end).filter(|&i| joined.is_char_boundary(i)) {
                let (x, k) = joined.split_at(split);
                let names = Names::new(x, k);
                assert_eq!(
                    matches!(names, Names::Inline(_)),
                    end <= NAMES_INLINE,
                    "{x:?} {k:?}"
                );
                assert_eq!(names.get(), (x, k));
                assert_eq!(names.clone().get(), (x, k));
            }
        }
        assert_eq!(Names::default().get(), ("", ""));
    }
}
