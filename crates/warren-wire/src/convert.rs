//! Conversions between amq-protocol's wire types and warren-core's.
//!
//! Field tables, field values and basic properties have the same meaning on
//! both sides; only the representations differ. Two things need care:
//!
//! - AMQP short strings hold at most 255 bytes. Names and property values
//!   coming from in-process publishers may be longer; they are cut at a
//!   character boundary rather than panicking.
//! - amq-protocol cannot write a short-string *field value* (0-9-1's `s` is a
//!   16-bit integer for RabbitMQ), so warren's `ShortString` values go out as
//!   long strings, which is what RabbitMQ's clients send anyway.

use amq_protocol::protocol::BasicProperties as WireProperties;
use amq_protocol::types::{
    AMQPValue as WireValue, ByteArray, DecimalValue as WireDecimal, FieldArray,
    FieldTable as WireTable, LongString, ShortString,
};
use bytes::Bytes;
use warren_core::{AMQPValue, BasicProperties, DecimalValue, FieldTable};

/// `s` as an AMQP short string, cut to 255 bytes at a character boundary.
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}

/// A wire field table as a warren one.
pub(crate) fn table_from_wire(t: &WireTable) -> FieldTable {
    let mut out = FieldTable::new();
    for (k, v) in t {
        out.insert(k.as_str(), value_from_wire(v));
    }
    out
}

/// A wire field value as a warren one.
pub(crate) fn value_from_wire(v: &WireValue) -> AMQPValue {
    match v {
        WireValue::Boolean(b) => AMQPValue::Boolean(*b),
        WireValue::ShortShortInt(n) => AMQPValue::ShortShortInt(*n),
        WireValue::ShortShortUInt(n) => AMQPValue::ShortShortUInt(*n),
        WireValue::ShortInt(n) => AMQPValue::ShortInt(*n),
        WireValue::ShortUInt(n) => AMQPValue::ShortUInt(*n),
        WireValue::LongInt(n) => AMQPValue::LongInt(*n),
        WireValue::LongUInt(n) => AMQPValue::LongUInt(*n),
        WireValue::LongLongInt(n) => AMQPValue::LongLongInt(*n),
        WireValue::Float(f) => AMQPValue::Float(*f),
        WireValue::Double(f) => AMQPValue::Double(*f),
        WireValue::DecimalValue(d) => AMQPValue::DecimalValue(DecimalValue {
            scale: d.scale,
            value: d.value,
        }),
        WireValue::ShortString(s) => AMQPValue::ShortString(s.as_str().to_owned()),
        WireValue::LongString(s) => AMQPValue::LongString(Bytes::copy_from_slice(s.as_bytes())),
        WireValue::FieldArray(a) => {
            AMQPValue::FieldArray(a.as_slice().iter().map(value_from_wire).collect())
        }
        WireValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        WireValue::FieldTable(t) => AMQPValue::FieldTable(table_from_wire(t)),
        WireValue::ByteArray(b) => AMQPValue::ByteArray(Bytes::copy_from_slice(b.as_slice())),
        WireValue::Void => AMQPValue::Void,
    }
}

/// A warren field table as a wire one.
pub(crate) fn table_to_wire(t: &FieldTable) -> WireTable {
    let mut out = WireTable::default();
    for (k, v) in t {
        out.insert(short(k), value_to_wire(v));
    }
    out
}

/// A warren field value as a wire one.
pub(crate) fn value_to_wire(v: &AMQPValue) -> WireValue {
    match v {
        AMQPValue::Boolean(b) => WireValue::Boolean(*b),
        AMQPValue::ShortShortInt(n) => WireValue::ShortShortInt(*n),
        AMQPValue::ShortShortUInt(n) => WireValue::ShortShortUInt(*n),
        AMQPValue::ShortInt(n) => WireValue::ShortInt(*n),
        AMQPValue::ShortUInt(n) => WireValue::ShortUInt(*n),
        AMQPValue::LongInt(n) => WireValue::LongInt(*n),
        AMQPValue::LongUInt(n) => WireValue::LongUInt(*n),
        AMQPValue::LongLongInt(n) => WireValue::LongLongInt(*n),
        AMQPValue::Float(f) => WireValue::Float(*f),
        AMQPValue::Double(f) => WireValue::Double(*f),
        AMQPValue::DecimalValue(d) => WireValue::DecimalValue(WireDecimal {
            scale: d.scale,
            value: d.value,
        }),
        AMQPValue::ShortString(s) => WireValue::LongString(LongString::from(s.as_bytes())),
        AMQPValue::LongString(b) => WireValue::LongString(LongString::from(&b[..])),
        AMQPValue::ByteArray(b) => WireValue::ByteArray(ByteArray::from(&b[..])),
        AMQPValue::FieldArray(a) => WireValue::FieldArray(FieldArray::from(
            a.iter().map(value_to_wire).collect::<Vec<_>>(),
        )),
        AMQPValue::Timestamp(t) => WireValue::Timestamp(*t),
        AMQPValue::FieldTable(t) => WireValue::FieldTable(table_to_wire(t)),
        AMQPValue::Void => WireValue::Void,
    }
}

fn opt(s: &Option<ShortString>) -> Option<String> {
    s.as_ref().map(|s| s.as_str().to_owned())
}

/// Wire basic properties as warren's.
pub(crate) fn properties_from_wire(p: &WireProperties) -> BasicProperties {
    BasicProperties {
        content_type: opt(p.content_type()),
        content_encoding: opt(p.content_encoding()),
        headers: p.headers().as_ref().map(table_from_wire),
        delivery_mode: *p.delivery_mode(),
        priority: *p.priority(),
        correlation_id: opt(p.correlation_id()),
        reply_to: opt(p.reply_to()),
        expiration: opt(p.expiration()),
        message_id: opt(p.message_id()),
        timestamp: *p.timestamp(),
        kind: opt(p.kind()),
        user_id: opt(p.user_id()),
        app_id: opt(p.app_id()),
        cluster_id: opt(p.cluster_id()),
    }
}

/// warren basic properties as wire ones (boxed: they are large, and travel
/// to the writer task).
pub(crate) fn properties_to_wire(p: &BasicProperties) -> Box<WireProperties> {
    let mut w = WireProperties::default();
    let s = |v: &Option<String>| v.as_deref().map(short);
    if let Some(v) = s(&p.content_type) {
        w = w.with_content_type(v);
    }
    if let Some(v) = s(&p.content_encoding) {
        w = w.with_content_encoding(v);
    }
    if let Some(h) = &p.headers {
        w = w.with_headers(table_to_wire(h));
    }
    if let Some(v) = p.delivery_mode {
        w = w.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        w = w.with_priority(v);
    }
    if let Some(v) = s(&p.correlation_id) {
        w = w.with_correlation_id(v);
    }
    if let Some(v) = s(&p.reply_to) {
        w = w.with_reply_to(v);
    }
    if let Some(v) = s(&p.expiration) {
        w = w.with_expiration(v);
    }
    if let Some(v) = s(&p.message_id) {
        w = w.with_message_id(v);
    }
    if let Some(v) = p.timestamp {
        w = w.with_timestamp(v);
    }
    if let Some(v) = s(&p.kind) {
        w = w.with_type(v);
    }
    if let Some(v) = s(&p.user_id) {
        w = w.with_user_id(v);
    }
    if let Some(v) = s(&p.app_id) {
        w = w.with_app_id(v);
    }
    if let Some(v) = s(&p.cluster_id) {
        w = w.with_cluster_id(v);
    }
    Box::new(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cuts_at_a_char_boundary() {
        let s = "é".repeat(200); // 400 bytes
        let cut = short(&s);
        assert!(cut.as_str().len() <= 255);
        assert_eq!(cut.as_str().len() % 2, 0);
    }

    #[test]
    fn tables_round_trip() {
        let t = FieldTable::new()
            .with("b", true)
            .with("i", 7i32)
            .with("l", -9i64)
            .with("d", 1.5f64)
            .with("s", "text")
            .with("a", vec![AMQPValue::from(1i32), AMQPValue::from("x")])
            .with("t", FieldTable::new().with("inner", AMQPValue::Void))
            .with("ts", AMQPValue::Timestamp(12))
            .with("x", AMQPValue::ByteArray(Bytes::from_static(b"\x00\x01")));
        let back = table_from_wire(&table_to_wire(&t));
        assert!(back.same_entries(&t), "{back:?} != {t:?}");
    }

    #[test]
    fn properties_round_trip() {
        let p = BasicProperties::default()
            .with_content_type("application/json")
            .with_correlation_id("42")
            .with_reply_to("r")
            .with_expiration("100")
            .with_delivery_mode(2)
            .with_priority(3)
            .with_timestamp(99)
            .with_kind("t")
            .with_user_id("guest")
            .with_app_id("app")
            .with_message_id("m")
            .with_content_encoding("gzip")
            .with_headers(FieldTable::new().with("h", "v"));
        assert_eq!(properties_from_wire(&properties_to_wire(&p)), p);
    }
}
