//! AMQP field values and field tables.
//!
//! A [`FieldTable`] is what AMQP 0-9-1 calls a *field table*: an ordered list of
//! named, typed values. It carries message headers, queue and exchange
//! arguments, and binding arguments. Values keep their AMQP kind
//! ([`AMQPValue`]): a `long-int` 1 and a `double` 1.0 are different values, even
//! though the headers exchange compares them as equal (see RabbitMQ's rules in
//! the headers exchange docs).
//!
//! The table keeps insertion order (AMQP tables are ordered on the wire, and
//! RabbitMQ compares nested tables in order); inserting an existing key
//! replaces its value in place. Tables are small in practice, so lookups are a
//! linear scan.

use bytes::Bytes;

/// An AMQP `decimal-value`: `value / 10^scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecimalValue {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One AMQP field value, with its kind.
///
/// The variant names follow lapin / amq-protocol's `AMQPValue`, so code that
/// moves between warren and lapin reads the same.
#[derive(Clone, Debug, PartialEq)]
pub enum AMQPValue {
    /// `t`: boolean.
    Boolean(bool),
    /// `b`: signed 8-bit integer.
    ShortShortInt(i8),
    /// `B`: unsigned 8-bit integer.
    ShortShortUInt(u8),
    /// `s` (RabbitMQ) / `U`: signed 16-bit integer.
    ShortInt(i16),
    /// `u`: unsigned 16-bit integer.
    ShortUInt(u16),
    /// `I`: signed 32-bit integer.
    LongInt(i32),
    /// `i`: unsigned 32-bit integer.
    LongUInt(u32),
    /// `l` (RabbitMQ) / `L`: signed 64-bit integer.
    LongLongInt(i64),
    /// `f`: 32-bit float.
    Float(f32),
    /// `d`: 64-bit float.
    Double(f64),
    /// `D`: decimal.
    DecimalValue(DecimalValue),
    /// `s` (0-9-1 spec): short string (at most 255 bytes on the wire).
    ShortString(String),
    /// `S`: long string: arbitrary bytes, usually UTF-8 text.
    LongString(Bytes),
    /// `x`: byte array.
    ByteArray(Bytes),
    /// `A`: array of values.
    FieldArray(Vec<AMQPValue>),
    /// `T`: timestamp, seconds since the epoch.
    Timestamp(u64),
    /// `F`: nested field table.
    FieldTable(FieldTable),
    /// `V`: void (no value).
    Void,
}

impl AMQPValue {
    /// The value as text when it is a short or long string holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AMQPValue::ShortString(s) => Some(s),
            AMQPValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer when it has an integer kind (including a
    /// timestamp) that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            AMQPValue::ShortShortInt(v) => v.into(),
            AMQPValue::ShortShortUInt(v) => v.into(),
            AMQPValue::ShortInt(v) => v.into(),
            AMQPValue::ShortUInt(v) => v.into(),
            AMQPValue::LongInt(v) => v.into(),
            AMQPValue::LongUInt(v) => v.into(),
            AMQPValue::LongLongInt(v) => v,
            AMQPValue::Timestamp(v) => i64::try_from(v).ok()?,
            _ => return None,
        })
    }

    /// The value as a boolean when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            AMQPValue::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// The array when the value is a field array.
    pub fn as_array(&self) -> Option<&[AMQPValue]> {
        match self {
            AMQPValue::FieldArray(a) => Some(a),
            _ => None,
        }
    }

    /// The nested table when the value is one.
    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }
    }
}

impl From<bool> for AMQPValue {
    fn from(v: bool) -> Self {
        AMQPValue::Boolean(v)
    }
}
impl From<i32> for AMQPValue {
    fn from(v: i32) -> Self {
        AMQPValue::LongInt(v)
    }
}
impl From<u32> for AMQPValue {
    fn from(v: u32) -> Self {
        AMQPValue::LongUInt(v)
    }
}
impl From<i64> for AMQPValue {
    fn from(v: i64) -> Self {
        AMQPValue::LongLongInt(v)
    }
}
impl From<f64> for AMQPValue {
    fn from(v: f64) -> Self {
        AMQPValue::Double(v)
    }
}
/// Text becomes a long string, as RabbitMQ's clients send it.
impl From<&str> for AMQPValue {
    fn from(v: &str) -> Self {
        AMQPValue::LongString(Bytes::copy_from_slice(v.as_bytes()))
    }
}
/// Text becomes a long string, as RabbitMQ's clients send it.
impl From<String> for AMQPValue {
    fn from(v: String) -> Self {
        AMQPValue::LongString(Bytes::from(v))
    }
}
impl From<Vec<AMQPValue>> for AMQPValue {
    fn from(v: Vec<AMQPValue>) -> Self {
        AMQPValue::FieldArray(v)
    }
}
impl From<FieldTable> for AMQPValue {
    fn from(v: FieldTable) -> Self {
        AMQPValue::FieldTable(v)
    }
}

/// An ordered AMQP field table.
///
/// # Examples
///
/// ```
/// use warren_core::{AMQPValue, FieldTable};
///
/// let mut t = FieldTable::new();
/// t.insert("x-max-length", 10i64);
/// t.insert("format", "pdf");
/// assert_eq!(t.get("x-max-length").and_then(AMQPValue::as_i64), Some(10));
/// assert_eq!(t.get("format").and_then(AMQPValue::as_str), Some("pdf"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldTable {
    entries: Vec<(String, AMQPValue)>,
}

impl FieldTable {
    /// An empty table.
    pub const fn new() -> Self {
        FieldTable {
            entries: Vec::new(),
        }
    }

    /// Sets `key` to `value`, replacing (in place) a value already there.
    /// Returns the table, so calls chain.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<AMQPValue>) -> &mut Self {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
        self
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<AMQPValue>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&AMQPValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<AMQPValue> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    /// Entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AMQPValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Equality that ignores the order of top-level keys (how RabbitMQ compares
    /// declare and binding arguments).
    pub fn same_entries(&self, other: &FieldTable) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Into<String>, V: Into<AMQPValue>> FromIterator<(K, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut t = FieldTable::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a str, &'a AMQPValue);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, AMQPValue)>,
        fn(&'a (String, AMQPValue)) -> (&'a str, &'a AMQPValue),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let mut t = FieldTable::new();
        t.insert("a", 1i32).insert("b", 2i32).insert("a", 3i32);
        let keys: Vec<_> = t.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(t.get("a"), Some(&AMQPValue::LongInt(3)));
    }

    #[test]
    fn same_entries_ignores_order() {
        let a = FieldTable::new().with("x", 1i32).with("y", "z");
        let b = FieldTable::new().with("y", "z").with("x", 1i32);
        assert!(a.same_entries(&b));
        assert_ne!(a, b);
        assert!(!a.same_entries(&FieldTable::new().with("x", 1i32)));
    }
}
