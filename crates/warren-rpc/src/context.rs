//! The request context (see [`Context`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The request context (oslo's `ctxt`): string keys to JSON values.
///
/// A map that travels with every call, cast and notification.
///
/// In OpenStack it carries who asks and why: `user`, `project_id`,
/// `request_id`, `roles`, ... On the wire each entry becomes a top-level key
/// `_context_<key>` of the message (oslo's flattening), and the receiver
/// rebuilds the same map: a handler sees exactly what the caller sent.
///
/// # Examples
///
/// ```
/// use warren_rpc::Context;
///
/// let ctx = Context::new()
///     .with("user", "alice")
///     .with("project_id", "p1")
///     .with("request_id", "req-42")
///     .with("is_admin", false);
/// assert_eq!(ctx.get_str("user"), Some("alice"));
/// assert_eq!(ctx.request_id(), Some("req-42"));
/// assert_eq!(ctx.len(), 4);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Context(Map<String, Value>);

impl Context {
    /// An empty context.
    pub fn new() -> Context {
        Context(Map::new())
    }

    /// Adds an entry, builder style.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Context {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Sets an entry; returns the value it replaced.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes an entry.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// `request_id`, as oslo.context names it.
    pub fn request_id(&self) -> Option<&str> {
        self.get_str("request_id")
    }

    /// The entries, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries as a JSON map.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Unwraps into the JSON map.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

impl From<Map<String, Value>> for Context {
    fn from(map: Map<String, Value>) -> Self {
        Context(map)
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Context {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Context(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}
