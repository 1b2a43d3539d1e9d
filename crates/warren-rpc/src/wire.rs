//! oslo.messaging's wire format (see [`WireRequest`]).

use std::borrow::Cow;
use std::fmt;
use std::io;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::context::Context;
use crate::error::RemoteError;
use crate::target::Version;
use crate::util::Utf8;

mod fast;

const ENVELOPE_VERSION: Version = Version::new(2, 0);
const CONTEXT_PREFIX: &str = "_context_";

/// A literal piece of a message's JSON text in both forms: as it is (for a
/// bare body) and escaped for the envelope's string. [`lit!`] makes it at
/// compile time.
struct Lit {
    plain: &'static [u8],
    escaped: [u8; Lit::MAX],
    len: usize,
}

impl Lit {
    const MAX: usize = 48;

    /// Escapes `plain`'s quotes and backslashes (the only special bytes a
    /// literal here has); a literal too long for `MAX` fails the build.
    const fn new(plain: &'static str) -> Lit {
        let p = plain.as_bytes();
        let mut escaped = [0u8; Lit::MAX];
        let (mut i, mut n) = (0, 0);
        while i < p.len() {
            if p[i] == b'"' || p[i] == b'\\' {
                escaped[n] = b'\\';
                n += 1;
            }
            escaped[n] = p[i];
            n += 1;
            i += 1;
        }
        Lit {
            plain: p,
            escaped,
            len: n,
        }
    }
}

/// `lit!(writer, "json text")`: appends a literal piece of JSON text in the
/// writer's form.
macro_rules! lit {
    ($w:expr, $s:expr) => {{
        const L: Lit = Lit::new($s);
        $w.lit(&L)
    }};
}

/// Why a body could not be read as an oslo message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not valid JSON, or not of the expected shape.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// The envelope's `oslo.version` is not compatible with 2.0.
    #[error("unsupported envelope version '{0}'")]
    UnsupportedEnvelope(String),
    /// A required field is missing.
    #[error("message has no '{0}'")]
    Missing(&'static str),
    /// A field has the wrong type or value.
    #[error("invalid '{0}' in message")]
    Invalid(&'static str),
}

/// An RPC request's payload: the method, its keyword arguments, and the
/// namespace and version that select the endpoint.
#[derive(Clone, Debug)]
pub struct RpcMessage {
    /// The method name.
    pub method: String,
    /// The keyword arguments: the JSON text of an object.
    pub args: Box<RawValue>,
    /// The endpoint namespace.
    pub namespace: Option<String>,
    /// The API version, as on the wire (`"3.1"`); `None` means `1.0`.
    pub version: Option<String>,
}

impl RpcMessage {
    /// A message for `method` with these arguments, no namespace or version.
    ///
    /// # Errors
    ///
    /// When `args` does not serialize to a JSON object; `()` and `None`
    /// serialize to `null`, taken as no arguments (`{}`).
    pub fn new<A: serde::Serialize + ?Sized>(
        method: impl Into<String>,
        args: &A,
    ) -> Result<RpcMessage, String> {
        Ok(RpcMessage {
            method: method.into(),
            args: args_to_raw(args)?,
            namespace: None,
            version: None,
        })
    }
}

/// Serializes keyword arguments: a JSON object, `null` meaning none.
pub(crate) fn args_to_raw<A: serde::Serialize + ?Sized>(args: &A) -> Result<Box<RawValue>, String> {
    let raw = serde_json::value::to_raw_value(args).map_err(|e| e.to_string())?;
    match raw.get().as_bytes().first() {
        Some(b'{') => Ok(raw),
        _ if raw.get() == "null" => empty_object(),
        _ => Err(format!(
            "arguments must serialize to a JSON object (keyword arguments), got {}",
            truncate(raw.get(), 40)
        )),
    }
}

pub(crate) fn empty_object() -> Result<Box<RawValue>, String> {
    RawValue::from_string("{}".to_owned()).map_err(|e| e.to_string())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A request as it travels: the message plus oslo's bookkeeping fields.
///
/// oslo.messaging's wire format, so that a Rust service and a Python
/// OpenStack service read each other's messages.
///
/// Every body is the *envelope* (format 2.0):
///
/// ```json
/// {"oslo.version": "2.0", "oslo.message": "<the message, as a JSON string>"}
/// ```
///
/// The inner message of a request has `method`, `args` (keyword arguments:
/// a JSON object), `namespace` and `version` when set, the request context
/// flattened as `_context_<key>`, `_unique_id`, and for calls `_msg_id`,
/// `_reply_q` and `_timeout`. A reply has `result`, `failure` (a JSON string,
/// see [`RemoteError`]), `ending: true` and `_msg_id`. A notification has
/// `message_id`, `publisher_id`, `event_type`, `priority` (upper case),
/// `payload`, `timestamp` and the context.
///
/// Decoding is liberal as oslo's is: a body that is a JSON object without the
/// envelope keys is taken as the message itself (format 1.0), read in one
/// pass. An in-process transport can send such bare bodies
/// ([`InprocTransport::with_envelope`](crate::InprocTransport::with_envelope)).
///
/// Encoding writes the inner message straight into the envelope's string,
/// escaping as it goes: one pass, one buffer. Decoding reads a message in
/// the usual form (this crate's or Python's) straight from the envelope's
/// string in one pass, too, and anything else by unescaping the message
/// first.
#[derive(Clone, Debug)]
pub struct WireRequest {
    /// Method, arguments, namespace, version.
    pub message: RpcMessage,
    /// The request context (the `_context_*` keys).
    pub ctx: Context,
    /// `_msg_id`: set for calls; the reply carries it back.
    pub msg_id: Option<String>,
    /// `_reply_q`: the queue the reply goes to (calls).
    pub reply_q: Option<String>,
    /// `_unique_id`: a fresh id per message, for duplicate detection.
    pub unique_id: Option<String>,
    /// `_timeout`: oslo's call-monitor timeout in seconds (usually `null`).
    pub timeout: Option<f64>,
}

impl WireRequest {
    /// The envelope bytes.
    ///
    /// # Errors
    ///
    /// Only if a context value cannot be written as JSON (never for values
    /// built by `serde_json`).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_request(
            &self.message,
            &self.ctx,
            &RequestFields {
                msg_id: self.msg_id.as_deref().map(Utf8::from),
                reply_q: self.reply_q.as_deref(),
                unique_id: self.unique_id.as_deref().map(Utf8::from),
                timeout: self.timeout,
                call: self.msg_id.is_some(),
            },
            Wrap::Envelope,
        )
    }

    /// Reads a request body (envelope or bare message).
    ///
    /// # Errors
    ///
    /// [`WireError`] for bad JSON, an unsupported envelope, or no `method`.
    pub fn decode(body: &[u8]) -> Result<WireRequest, WireError> {
        read_request(body, |r| WireRequest {
            message: r.message,
            ctx: r.ctx,
            msg_id: r.msg_id.map(Cow::into_owned),
            reply_q: r.reply_q.map(Cow::into_owned),
            unique_id: r.unique_id.map(Cow::into_owned),
            timeout: r.timeout,
        })
    }
}

/// A request as read, its bookkeeping fields borrowed from the body where
/// they can be: a listener needs `_unique_id` only to look it up, and keeps
/// `_msg_id` and `_reply_q` as it likes.
pub(crate) struct RequestParts<'a> {
    pub(crate) message: RpcMessage,
    pub(crate) ctx: Context,
    pub(crate) msg_id: Option<Cow<'a, str>>,
    pub(crate) reply_q: Option<Cow<'a, str>>,
    pub(crate) unique_id: Option<Cow<'a, str>>,
    pub(crate) timeout: Option<f64>,
}

/// Reads a request body (envelope or bare message) and hands it to `f`.
///
/// # Errors
///
/// As [`WireRequest::decode`].
pub(crate) fn read_request<R>(
    body: &[u8],
    f: impl FnOnce(RequestParts<'_>) -> R,
) -> Result<R, WireError> {
    read_fields(body, |fields| {
        let method = fields.method.take().ok_or(WireError::Missing("method"))?;
        let args = match fields.args.take() {
            Some(a) if a.get().starts_with('{') => a,
            Some(a) if a.get() != "null" => return Err(WireError::Invalid("args")),
            _ => empty_object().map_err(|_| WireError::Invalid("args"))?,
        };
        Ok(f(RequestParts {
            message: RpcMessage {
                method: method.into_owned(),
                args,
                namespace: fields.namespace.take().map(Cow::into_owned),
                version: fields.version.take().map(Cow::into_owned),
            },
            ctx: Context::from(std::mem::take(&mut fields.ctx)),
            msg_id: fields.msg_id.take(),
            reply_q: fields.reply_q.take(),
            unique_id: fields.unique_id.take(),
            timeout: fields.timeout,
        }))
    })
}

/// A reply as it travels.
#[derive(Clone, Debug)]
pub struct WireReply {
    /// The result (JSON), `None` for `null`.
    pub result: Option<Box<RawValue>>,
    /// The failure, if the call failed.
    pub failure: Option<RemoteError>,
    /// `ending`: true on a final reply; false on a call-monitor heartbeat.
    pub ending: bool,
    /// `_msg_id`: the call's message id.
    pub msg_id: Option<String>,
    /// `_unique_id`.
    pub unique_id: Option<String>,
}

impl WireReply {
    /// The envelope bytes.
    ///
    /// # Errors
    ///
    /// Never in practice (see [`WireRequest::encode`]).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode_reply(
            self.result.as_deref(),
            self.failure.as_ref(),
            self.ending,
            self.msg_id.as_deref().unwrap_or(""),
            self.unique_id.as_deref().unwrap_or(""),
            Wrap::Envelope,
        )
    }

    /// Reads a reply body.
    ///
    /// # Errors
    ///
    /// [`WireError`] for bad JSON or an unsupported envelope.
    pub fn decode(body: &[u8]) -> Result<WireReply, WireError> {
        read_reply(body, |msg_id, unique_id, result, failure, ending| {
            WireReply {
                result,
                failure,
                ending,
                msg_id: msg_id.map(str::to_owned),
                unique_id: unique_id.map(str::to_owned),
            }
        })
    }
}

/// Reads a reply and hands its parts to `f`, the ids borrowed: (`_msg_id`,
/// `_unique_id`, `result`, `failure`, `ending`).
pub(crate) fn read_reply<R>(
    body: &[u8],
    f: impl FnOnce(Option<&str>, Option<&str>, Option<Box<RawValue>>, Option<RemoteError>, bool) -> R,
) -> Result<R, WireError> {
    read_fields(body, |fields| {
        let failure = match fields.failure.take() {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(RemoteError::from_failure_json(&s)?),
            Some(v @ Value::Object(_)) => Some(serde_json::from_value(v)?),
            Some(_) => return Err(WireError::Invalid("failure")),
        };
        Ok(f(
            fields.msg_id.as_deref(),
            fields.unique_id.as_deref(),
            fields.result.take().filter(|r| r.get() != "null"),
            failure,
            fields.ending,
        ))
    })
}

/// A notification as it travels.
#[derive(Clone, Debug)]
pub struct WireNotification {
    /// A fresh UUID per notification.
    pub message_id: String,
    /// Who sent it (`compute.host1`).
    pub publisher_id: String,
    /// What happened (`compute.instance.create.end`).
    pub event_type: String,
    /// The priority, upper case as oslo sends it (`INFO`).
    pub priority: String,
    /// The payload (JSON).
    pub payload: Box<RawValue>,
    /// UTC, `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub timestamp: String,
    /// The request context (the `_context_*` keys).
    pub ctx: Context,
    /// `_unique_id`.
    pub unique_id: Option<String>,
}

impl WireNotification {
    /// The envelope bytes.
    ///
    /// # Errors
    ///
    /// Never in practice (see [`WireRequest::encode`]).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.encode_as(Wrap::Envelope)
    }

    pub(crate) fn encode_as(&self, wrap: Wrap) -> Result<Vec<u8>, WireError> {
        wrap.encode(256 + self.payload.get().len(), |w| {
            lit!(w, r#"{"message_id":"#);
            w.string(&self.message_id);
            lit!(w, r#","publisher_id":"#);
            w.string(&self.publisher_id);
            lit!(w, r#","event_type":"#);
            w.string(&self.event_type);
            lit!(w, r#","priority":"#);
            w.string(&self.priority);
            lit!(w, r#","payload":"#);
            w.json(self.payload.get().as_bytes());
            lit!(w, r#","timestamp":"#);
            w.string(&self.timestamp);
            if let Some(u) = &self.unique_id {
                lit!(w, r#","_unique_id":"#);
                w.string(u);
            }
            w.context(&self.ctx)?;
            lit!(w, "}");
            Ok(())
        })
    }

    /// Reads a notification body.
    ///
    /// # Errors
    ///
    /// [`WireError`] for bad JSON, an unsupported envelope, or a missing
    /// `event_type` / `priority`.
    pub fn decode(body: &[u8]) -> Result<WireNotification, WireError> {
        read_fields(body, WireNotification::from_fields)
    }

    fn from_fields(f: &mut Fields<'_>) -> Result<WireNotification, WireError> {
        let payload = match f.payload.take() {
            Some(p) => p,
            None => RawValue::NULL.to_owned(),
        };
        let owned = |s: Option<Cow<'_, str>>| s.map(Cow::into_owned);
        Ok(WireNotification {
            message_id: owned(f.message_id.take()).unwrap_or_default(),
            publisher_id: owned(f.publisher_id.take()).unwrap_or_default(),
            event_type: owned(f.event_type.take()).ok_or(WireError::Missing("event_type"))?,
            priority: owned(f.priority.take()).ok_or(WireError::Missing("priority"))?,
            payload,
            timestamp: owned(f.timestamp.take()).unwrap_or_default(),
            ctx: Context::from(std::mem::take(&mut f.ctx)),
            unique_id: f.unique_id.take().map(Cow::into_owned),
        })
    }
}

/// The bookkeeping fields of an outgoing request.
pub(crate) struct RequestFields<'a> {
    pub(crate) msg_id: Option<Utf8<'a>>,
    pub(crate) reply_q: Option<&'a str>,
    pub(crate) unique_id: Option<Utf8<'a>>,
    pub(crate) timeout: Option<f64>,
    /// Write `_msg_id`, `_reply_q`, `_timeout` (a call).
    pub(crate) call: bool,
}

impl<'a> RequestFields<'a> {
    /// A cast's: only its `_unique_id`.
    pub(crate) fn cast(unique_id: Utf8<'a>) -> RequestFields<'a> {
        RequestFields {
            msg_id: None,
            reply_q: None,
            unique_id: Some(unique_id),
            timeout: None,
            call: false,
        }
    }
}

pub(crate) fn encode_request(
    message: &RpcMessage,
    ctx: &Context,
    fields: &RequestFields<'_>,
    wrap: Wrap,
) -> Result<Vec<u8>, WireError> {
    let strings = [
        Some(message.method.as_str()),
        message.namespace.as_deref(),
        message.version.as_deref(),
        fields.reply_q,
    ];
    let ids = [fields.msg_id, fields.unique_id];
    let text = 128
        + strings.iter().flatten().map(|s| s.len()).sum::<usize>()
        + ids.iter().flatten().map(|s| s.bytes().len()).sum::<usize>()
        + message.args.get().len()
        + 48 * ctx.len();
    wrap.encode(text, |w| {
        lit!(w, r#"{"method":"#);
        w.string(&message.method);
        lit!(w, r#","args":"#);
        w.json(message.args.get().as_bytes());
        if let Some(ns) = &message.namespace {
            lit!(w, r#","namespace":"#);
            w.string(ns);
        }
        if let Some(v) = &message.version {
            lit!(w, r#","version":"#);
            w.string(v);
        }
        if fields.call {
            lit!(w, r#","_msg_id":"#);
            match fields.msg_id {
                Some(id) => w.text(id),
                None => lit!(w, "null"),
            }
            lit!(w, r#","_reply_q":"#);
            w.opt_string(fields.reply_q);
            lit!(w, r#","_timeout":"#);
            match fields.timeout {
                Some(t) if t.is_finite() => {
                    serde_json::to_writer(&mut *w, &t)?;
                }
                _ => lit!(w, "null"),
            }
        }
        if let Some(u) = fields.unique_id {
            lit!(w, r#","_unique_id":"#);
            w.text(u);
        }
        w.context(ctx)?;
        lit!(w, "}");
        Ok(())
    })
}

/// A call's final reply (`ending: true`) with the handler's result or
/// failure.
pub(crate) fn encode_answer<'a>(
    reply: &crate::transport::Reply,
    msg_id: impl Into<Utf8<'a>>,
    unique_id: impl Into<Utf8<'a>>,
    wrap: Wrap,
) -> Result<Vec<u8>, WireError> {
    use crate::transport::Reply;
    match reply {
        Reply::Result(r) => encode_reply(Some(r), None, true, msg_id, unique_id, wrap),
        Reply::Failure(f) => encode_reply(None, Some(f), true, msg_id, unique_id, wrap),
    }
}

/// A call-monitor heartbeat: a reply with `ending: false` and no result.
pub(crate) fn encode_heartbeat<'a>(
    msg_id: impl Into<Utf8<'a>>,
    unique_id: impl Into<Utf8<'a>>,
    wrap: Wrap,
) -> Result<Vec<u8>, WireError> {
    encode_reply(None, None, false, msg_id, unique_id, wrap)
}

pub(crate) fn encode_reply<'a>(
    result: Option<&RawValue>,
    failure: Option<&RemoteError>,
    ending: bool,
    msg_id: impl Into<Utf8<'a>>,
    unique_id: impl Into<Utf8<'a>>,
    wrap: Wrap,
) -> Result<Vec<u8>, WireError> {
    let (msg_id, unique_id) = (msg_id.into(), unique_id.into());
    let failure = failure.map(RemoteError::to_failure_json);
    let text = 96
        + msg_id.bytes().len()
        + unique_id.bytes().len()
        + result.map_or(0, |r| r.get().len())
        + failure.as_ref().map_or(0, String::len);
    wrap.encode(text, |w| {
        lit!(w, r#"{"result":"#);
        match result {
            Some(r) => w.json(r.get().as_bytes()),
            None => lit!(w, "null"),
        }
        lit!(w, r#","failure":"#);
        match &failure {
            Some(f) => w.string(f),
            None => lit!(w, "null"),
        }
        if ending {
            lit!(w, r#","ending":true,"_msg_id":"#);
        } else {
            lit!(w, r#","ending":false,"_msg_id":"#);
        }
        w.text(msg_id);
        lit!(w, r#","_unique_id":"#);
        w.text(unique_id);
        lit!(w, "}");
        Ok(())
    })
}

/// How a body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrap {
    /// oslo's envelope 2.0: the message as a JSON string inside
    /// `{"oslo.version": "2.0", "oslo.message": "..."}`. What oslo sends.
    Envelope,
    /// The message itself (oslo's format 1.0), which oslo's
    /// `deserialize_msg` reads as it reads the envelope: no escaping on the
    /// way out, no unwrapping on the way in.
    Bare,
}

impl Wrap {
    const HEAD: &'static [u8] = b"{\"oslo.version\":\"2.0\",\"oslo.message\":\"";

    /// The body of a message of about `text` bytes of JSON text, which
    /// `write` writes, in this layout.
    ///
    /// The body comes in a block of its exact size: a body whose length is
    /// its capacity becomes the broker's `Bytes` without a block of its own
    /// for the count of its owners. It is written into this thread's
    /// buffer, then copied out (a copy of a few hundred bytes costs less
    /// than that block); bodies too large for that buffer get one of their
    /// own, sized with room for the escapes the envelope adds (a quarter
    /// more: the quotes of the keys and strings), so that it is rarely
    /// grown.
    fn encode(
        self,
        text: usize,
        write: impl FnOnce(&mut Esc<'_>) -> Result<(), WireError>,
    ) -> Result<Vec<u8>, WireError> {
        let capacity = match self {
            Wrap::Envelope => text + text / 4 + Self::HEAD.len() + 2,
            Wrap::Bare => text,
        };
        if capacity > SCRATCH_MAX {
            return self.write_new(capacity, write);
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut out) => {
                out.clear();
                let written = self.write_into(&mut out, write).map(|()| out.to_vec());
                // A body far larger than its estimate (a large context
                // value) does not leave the buffer that large.
                if out.capacity() > 2 * SCRATCH_MAX {
                    *out = Vec::new();
                }
                written
            }
            // In use (by an encoder that `write` calls somehow).
            Err(_) => self.write_new(capacity, write),
        })
    }

    /// [`encode`](Self::encode) into a block of its own.
    fn write_new(
        self,
        capacity: usize,
        write: impl FnOnce(&mut Esc<'_>) -> Result<(), WireError>,
    ) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(capacity);
        self.write_into(&mut out, write)?;
        Ok(out)
    }

    fn write_into(
        self,
        out: &mut Vec<u8>,
        write: impl FnOnce(&mut Esc<'_>) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        if self == Wrap::Envelope {
            out.extend_from_slice(Self::HEAD);
        }
        write(&mut Esc {
            out: &mut *out,
            bare: self == Wrap::Bare,
        })?;
        if self == Wrap::Envelope {
            out.extend_from_slice(b"\"}");
        }
        Ok(())
    }
}

/// Bodies up to this size (estimated) are written into [`SCRATCH`].
const SCRATCH_MAX: usize = 16 * 1024;

thread_local! {
    /// The buffer bodies are written into before they are copied out at
    /// their size (see [`Wrap::encode`]); it grows to the largest body up
    /// to about [`SCRATCH_MAX`] and stays (one larger is let go).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes the message's JSON text. Into the envelope's JSON string (the
/// usual case) it goes escaped for a JSON string (`"` as `\"`, `\` as `\\`,
/// control characters as `\u00XX`): literals are written already escaped,
/// JSON text is escaped as it is copied, string values are escaped twice
/// (once as JSON strings of the message, once for the envelope) in one
/// pass. A `bare` writer writes the message as it is: literals lose their
/// escapes, JSON text is copied, string values are escaped once.
struct Esc<'a> {
    out: &'a mut Vec<u8>,
    bare: bool,
}

/// Bytes that need escaping in a JSON string.
static SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = true;
        i += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

impl Esc<'_> {
    /// Appends a literal (see [`lit!`]).
    fn lit(&mut self, l: &Lit) {
        if self.bare {
            self.out.extend_from_slice(l.plain);
        } else {
            self.out.extend_from_slice(&l.escaped[..l.len]);
        }
    }

    /// Appends JSON text, escaping it for the envelope.
    fn json(&mut self, bytes: &[u8]) {
        if self.bare {
            self.out.extend_from_slice(bytes);
        } else {
            escape_into(self.out, bytes, &ONCE);
        }
    }

    /// Appends a JSON string literal with this content.
    fn string(&mut self, s: &str) {
        self.text(s.into());
    }

    /// [`string`](Self::string) for text given as UTF-8 bytes.
    fn text(&mut self, s: Utf8<'_>) {
        if self.bare {
            self.out.push(b'"');
            escape_str_into(self.out, s.bytes());
            self.out.push(b'"');
            return;
        }
        self.out.extend_from_slice(br#"\""#);
        self.string_body(s);
        self.out.extend_from_slice(br#"\""#);
    }

    /// Appends the content of a JSON string literal: each special character
    /// escaped for the inner message, and that escape escaped again (once
    /// only when bare).
    fn string_body(&mut self, s: Utf8<'_>) {
        let bytes = s.bytes();
        if self.bare {
            escape_str_into(self.out, bytes);
            return;
        }
        // Most strings need no escaping (see `escape_str_into`).
        if needs_escape(bytes) {
            escape_into(self.out, bytes, &TWICE);
        } else {
            self.out.extend_from_slice(bytes);
        }
    }

    fn opt_string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => lit!(self, "null"),
        }
    }

    /// Appends `,"_context_<key>":<value>` for each entry.
    fn context(&mut self, ctx: &Context) -> Result<(), WireError> {
        for (k, v) in ctx.iter() {
            lit!(self, r#","_context_"#);
            self.string_body(k.into());
            lit!(self, r#"":"#);
            match v {
                Value::String(s) => self.string(s),
                Value::Null => lit!(self, "null"),
                Value::Bool(true) => lit!(self, "true"),
                Value::Bool(false) => lit!(self, "false"),
                other => serde_json::to_writer(&mut *self, other)?,
            }
        }
        Ok(())
    }
}

impl io::Write for Esc<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.json(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How the special characters of a JSON string are written, at one level of
/// escaping or at two (a string inside the envelope's `oslo.message`, itself
/// a JSON string).
struct Escapes {
    quote: &'static [u8],
    backslash: &'static [u8],
    /// Written before `u00XX` for a control character.
    control: &'static [u8],
}

/// `"` as `\"`, `\` as `\\`, control characters as `\u00XX`.
const ONCE: Escapes = Escapes {
    quote: br#"\""#,
    backslash: br"\\",
    control: br"\",
};

/// The escapes of [`ONCE`], escaped again: `"` is `\"` inside the inner
/// message and `\\\"` in the envelope.
const TWICE: Escapes = Escapes {
    quote: br#"\\\""#,
    backslash: br"\\\\",
    control: br"\\",
};

/// Appends `bytes` with its special characters written as `escapes` says.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8], escapes: &Escapes) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !SPECIAL[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(escapes.quote),
            b'\\' => out.extend_from_slice(escapes.backslash),
            _ => {
                out.extend_from_slice(escapes.control);
                push_control_body(out, b);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// As [`escape_into`], for a string value: most (ids, names, methods) need
/// no escaping, and a check with no early exit, which runs vectorized, finds
/// that first.
fn escape_str_into(out: &mut Vec<u8>, bytes: &[u8]) {
    if needs_escape(bytes) {
        escape_into(out, bytes, &ONCE);
    } else {
        out.extend_from_slice(bytes);
    }
}

fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |acc, &b| {
        acc | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// `u00XX` (the part of a `\u00XX` escape after the backslash).
fn push_control_body(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"u00");
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xf)]);
}

/// Reads the message's fields from a body and hands them to `read`: from the
/// envelope's `oslo.message`, or from the body itself when it is a bare
/// message. Lent, for `read` to take what it keeps: `Fields` is some 400
/// bytes, and a move is a copy.
fn read_fields<R>(
    body: &[u8],
    read: impl FnOnce(&mut Fields<'_>) -> Result<R, WireError>,
) -> Result<R, WireError> {
    // The usual form, in one pass; anything else (and any error) in the
    // general way.
    let mut fields = Fields::default();
    match fast::read(body, &mut fields) {
        Some(()) => read(&mut fields),
        None => read_fields_general(body, read),
    }
}

/// [`read_fields`] for any form: the message unescaped from the envelope
/// first, then read by serde.
fn read_fields_general<R>(
    body: &[u8],
    read: impl FnOnce(&mut Fields<'_>) -> Result<R, WireError>,
) -> Result<R, WireError> {
    if let Some(inner) = open_envelope_fast(body) {
        return read(&mut serde_json::from_str(&inner)?);
    }
    // A bare message is read in one pass (after one vectorized UTF-8 check
    // of the whole body, instead of one per string as `from_slice` makes).
    // A body that turns out to be an envelope after all (keys in another
    // order, other spacing) is opened by the general path.
    let text = std::str::from_utf8(body).map_err(|_| WireError::Invalid("body"))?;
    let mut fields: Fields<'_> = serde_json::from_str(text)?;
    if !fields.enveloped {
        return read(&mut fields);
    }
    let inner = open_envelope_slow(body)?;
    read(&mut serde_json::from_str(&inner)?)
}

/// The inner message's JSON text: the envelope's `oslo.message`, or the whole
/// body when it is not an envelope.
#[cfg(test)]
fn open_envelope(body: &[u8]) -> Result<String, WireError> {
    if let Some(inner) = open_envelope_fast(body) {
        return Ok(inner);
    }
    open_envelope_slow(body)
}

/// The envelope as this crate and Python's `json.dumps` write it: version
/// first, then the message, to the end of the body. Anything else, or any
/// doubt, is left to the general path.
fn open_envelope_fast(body: &[u8]) -> Option<String> {
    const HEADS: [&[u8]; 2] = [
        br#"{"oslo.version":"2.0","oslo.message":""#,
        br#"{"oslo.version": "2.0", "oslo.message": ""#,
    ];
    let rest = HEADS.iter().find_map(|h| body.strip_prefix(*h))?;
    // Copied into a buffer of the largest size it can need (unescaping only
    // shrinks): eight bytes at a time up to the next special byte, which the
    // byte path below takes. Runs between escapes are short here, so fixed
    // eight-byte copies beat a search and a copy per run.
    let mut out = vec![0u8; rest.len()];
    let mut n = 0;
    let mut i = 0;
    loop {
        // n <= i always, so a chunk that fits in `rest` fits in `out`.
        while let (Some(chunk), Some(to)) = (rest.get(i..i + 8), out.get_mut(n..n + 8)) {
            let special = special_lanes(u64::from_le_bytes(chunk.try_into().ok()?));
            // The bytes before the first special one are plain: keep them
            // and leave that one to the byte path. (All eight are stored, a
            // fixed-size copy; what lies past the plain ones is written over
            // or truncated away.)
            let plain = (special.trailing_zeros() / 8) as usize;
            to.copy_from_slice(chunk);
            n += plain;
            i += plain;
            if plain < 8 {
                break;
            }
        }
        let b = *rest.get(i)?;
        if b == b'"' {
            break;
        }
        if b < 0x20 {
            return None;
        }
        if b != b'\\' {
            *out.get_mut(n)? = b;
            n += 1;
            i += 1;
            continue;
        }
        let (c, len) = match *rest.get(i + 1)? {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'n' => ('\n', 2),
            b't' => ('\t', 2),
            b'r' => ('\r', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'u' => {
                let hi = hex4(rest.get(i + 2..i + 6)?)?;
                if (0xD800..0xDC00).contains(&hi) {
                    if rest.get(i + 6..i + 8)? != br"\u" {
                        return None;
                    }
                    let lo = hex4(rest.get(i + 8..i + 12)?)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return None;
                    }
                    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    (char::from_u32(c)?, 12)
                } else {
                    (char::from_u32(hi)?, 6)
                }
            }
            _ => return None,
        };
        if c.is_ascii() {
            *out.get_mut(n)? = c as u8;
            n += 1;
        } else {
            let mut tmp = [0u8; 4];
            let utf8 = c.encode_utf8(&mut tmp).as_bytes();
            out.get_mut(n..n + utf8.len())?.copy_from_slice(utf8);
            n += utf8.len();
        }
        i += len;
    }
    out.truncate(n);
    if rest[i + 1..].trim_ascii() != b"}" {
        return None;
    }
    String::from_utf8(out).ok()
}

/// The lanes of `word` (eight bytes, little-endian) holding `"`, `\\` or a
/// control character (below 0x20), the bytes a JSON string escapes: the top
/// bit of each such byte is set. The usual SWAR tests: `(v - 0x01) & !v`
/// sets the top bit of the zero bytes of `v`, `(v - n) & !v` that of the
/// bytes below `n` (n <= 0x80). A borrow can flag a byte above (later than)
/// a flagged one, never below, so the lowest flagged lane is exact.
fn special_lanes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let quote = zero_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    quote | backslash | control
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let mut v = 0;
    for &d in digits {
        v = v * 16 + char::from(d).to_digit(16)?;
    }
    Some(v)
}

fn open_envelope_slow(body: &[u8]) -> Result<String, WireError> {
    #[derive(Deserialize)]
    struct Env {
        #[serde(rename = "oslo.version")]
        version: Option<String>,
        #[serde(rename = "oslo.message")]
        message: Option<String>,
    }
    let env: Env = serde_json::from_slice(body)?;
    match (env.version, env.message) {
        (Some(v), Some(m)) => {
            let ok = v
                .parse::<Version>()
                .is_ok_and(|v| ENVELOPE_VERSION.can_serve(v));
            if ok {
                Ok(m)
            } else {
                Err(WireError::UnsupportedEnvelope(v))
            }
        }
        _ => std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|_| WireError::Invalid("body")),
    }
}

/// Every field any of the three message kinds has; what is absent stays
/// `None`. Strings are borrowed from the text read when they have no
/// escapes (most: ids, names, methods).
#[derive(Default)]
struct Fields<'de> {
    method: Option<Cow<'de, str>>,
    args: Option<Box<RawValue>>,
    namespace: Option<Cow<'de, str>>,
    version: Option<Cow<'de, str>>,
    msg_id: Option<Cow<'de, str>>,
    reply_q: Option<Cow<'de, str>>,
    unique_id: Option<Cow<'de, str>>,
    timeout: Option<f64>,
    result: Option<Box<RawValue>>,
    failure: Option<Value>,
    ending: bool,
    message_id: Option<Cow<'de, str>>,
    publisher_id: Option<Cow<'de, str>>,
    event_type: Option<Cow<'de, str>>,
    priority: Option<Cow<'de, str>>,
    payload: Option<Box<RawValue>>,
    timestamp: Option<Cow<'de, str>>,
    ctx: Map<String, Value>,
    /// `oslo.version` or `oslo.message` was among the keys: an envelope.
    enveloped: bool,
}

enum Key {
    Method,
    Args,
    Namespace,
    Version,
    MsgId,
    ReplyQ,
    UniqueId,
    Timeout,
    Result,
    Failure,
    Ending,
    MessageId,
    PublisherId,
    EventType,
    Priority,
    Payload,
    Timestamp,
    Context(String),
    Envelope,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "method" => Key::Method,
                    "args" => Key::Args,
                    "namespace" => Key::Namespace,
                    "version" => Key::Version,
                    "_msg_id" => Key::MsgId,
                    "_reply_q" => Key::ReplyQ,
                    "_unique_id" => Key::UniqueId,
                    "_timeout" => Key::Timeout,
                    "result" => Key::Result,
                    "failure" => Key::Failure,
                    "ending" => Key::Ending,
                    "message_id" => Key::MessageId,
                    "publisher_id" => Key::PublisherId,
                    "event_type" => Key::EventType,
                    "priority" => Key::Priority,
                    "payload" => Key::Payload,
                    "timestamp" => Key::Timestamp,
                    "oslo.version" | "oslo.message" => Key::Envelope,
                    _ => match s.strip_prefix(CONTEXT_PREFIX) {
                        Some(k) => Key::Context(k.to_owned()),
                        None => Key::Other,
                    },
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fields<'de>, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an oslo.messaging message (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Method => f.method = next_str(&mut map)?,
                        Key::Args => f.args = Some(map.next_value()?),
                        Key::Namespace => f.namespace = next_str(&mut map)?,
                        Key::Version => {
                            f.version = map
                                .next_value::<Option<VersionText>>()?
                                .map(|v| Cow::Owned(v.0))
                        }
                        Key::MsgId => f.msg_id = next_str(&mut map)?,
                        Key::ReplyQ => f.reply_q = next_str(&mut map)?,
                        Key::UniqueId => f.unique_id = next_str(&mut map)?,
                        Key::Timeout => f.timeout = map.next_value::<Value>()?.as_f64(),
                        Key::Result => f.result = Some(map.next_value()?),
                        Key::Failure => f.failure = Some(map.next_value()?),
                        Key::Ending => {
                            f.ending = map.next_value::<Value>()?.as_bool().unwrap_or(false)
                        }
                        Key::MessageId => f.message_id = next_str(&mut map)?,
                        Key::PublisherId => f.publisher_id = next_str(&mut map)?,
                        Key::EventType => f.event_type = next_str(&mut map)?,
                        Key::Priority => f.priority = next_str(&mut map)?,
                        Key::Payload => f.payload = Some(map.next_value()?),
                        Key::Timestamp => {
                            f.timestamp = map
                                .next_value::<Option<TimestampText>>()?
                                .map(|t| Cow::Owned(t.0))
                        }
                        Key::Context(k) => {
                            let v: Value = map.next_value()?;
                            f.ctx.insert(k, v);
                        }
                        Key::Envelope => {
                            f.enveloped = true;
                            map.next_value::<IgnoredAny>()?;
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// The next value of `map`, a string or `null`, borrowed from the input
/// when it has no escapes.
fn next_str<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(map.next_value::<Option<Str<'de>>>()?.map(|s| s.0))
}

/// A string, borrowed from the input when it has no escapes.
struct Str<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

/// A version field: a string, or a number as some old senders wrote it.
struct VersionText(String);

impl<'de> Deserialize<'de> for VersionText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(VersionText(s)),
            Value::Number(n) => Ok(VersionText(n.to_string())),
            _ => Err(de::Error::custom("version must be a string")),
        }
    }
}

/// A timestamp field: a string, or anything else turned into its JSON text.
struct TimestampText(String);

impl<'de> Deserialize<'de> for TimestampText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(TimestampText(s)),
            other => Ok(TimestampText(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inner(body: &[u8]) -> Value {
        let env: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(env["oslo.version"], "2.0");
        serde_json::from_str(env["oslo.message"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn request_shape_is_oslos() {
        let mut msg = RpcMessage::new("get_volume", &json!({"volume_id": "v\"1\\\n"})).unwrap();
        msg.namespace = Some("ns".into());
        msg.version = Some("3.1".into());
        let ctx = Context::new()
            .with("user", "alice")
            .with("roles", json!(["admin"]));
        let req = WireRequest {
            message: msg,
            ctx,
            msg_id: Some("m1".into()),
            reply_q: Some("reply_x".into()),
            unique_id: Some("u1".into()),
            timeout: None,
        };
        let body = req.encode().unwrap();
        let m = inner(&body);
        assert_eq!(
            m,
            json!({
                "method": "get_volume",
                "args": {"volume_id": "v\"1\\\n"},
                "namespace": "ns",
                "version": "3.1",
                "_msg_id": "m1",
                "_reply_q": "reply_x",
                "_timeout": null,
                "_unique_id": "u1",
                "_context_user": "alice",
                "_context_roles": ["admin"],
            })
        );
        let back = WireRequest::decode(&body).unwrap();
        assert_eq!(back.message.method, "get_volume");
        assert_eq!(back.message.args.get(), r#"{"volume_id":"v\"1\\\n"}"#);
        assert_eq!(back.ctx, req.ctx);
        assert_eq!(back.msg_id.as_deref(), Some("m1"));
        assert_eq!(back.reply_q.as_deref(), Some("reply_x"));
        assert_eq!(back.message.version.as_deref(), Some("3.1"));
    }

    #[test]
    fn cast_has_no_reply_fields() {
        let req = WireRequest {
            message: RpcMessage::new("m", &()).unwrap(),
            ctx: Context::new(),
            msg_id: None,
            reply_q: None,
            unique_id: Some("u".into()),
            timeout: None,
        };
        let m = inner(&req.encode().unwrap());
        assert_eq!(m, json!({"method": "m", "args": {}, "_unique_id": "u"}));
    }

    #[test]
    fn reads_python_bodies() {
        // As Python's json.dumps writes it: spaces, \u escapes, ASCII only.
        let body = br#"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"ping\", \"args\": {\"x\": \"\\u00e9\"}, \"_context_user\": \"b\\u00f6b\", \"_unique_id\": \"abc\", \"_msg_id\": \"m\", \"_reply_q\": \"reply_1\", \"_timeout\": 30}"}"#;
        let r = WireRequest::decode(body).unwrap();
        assert_eq!(r.message.method, "ping");
        let args: Value = serde_json::from_str(r.message.args.get()).unwrap();
        assert_eq!(args, json!({"x": "é"}));
        assert_eq!(r.ctx.get_str("user"), Some("böb"));
        assert_eq!(r.timeout, Some(30.0));
        // Format 1.0: no envelope.
        let r = WireRequest::decode(br#"{"method": "m", "args": null}"#).unwrap();
        assert_eq!(r.message.args.get(), "{}");
        assert!(matches!(
            WireRequest::decode(br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#),
            Err(WireError::UnsupportedEnvelope(_))
        ));
        assert!(matches!(
            WireRequest::decode(br#"{"args": {}}"#),
            Err(WireError::Missing("method"))
        ));
        assert!(WireRequest::decode(b"not json").is_err());
        assert!(WireRequest::decode(br#"{"method": "m", "args": [1]}"#).is_err());
    }

    #[test]
    fn reply_round_trip() {
        let raw = serde_json::value::to_raw_value(&json!({"id": 1})).unwrap();
        let body = encode_reply(Some(&raw), None, true, "m1", "u1", Wrap::Envelope).unwrap();
        assert_eq!(
            inner(&body),
            json!({"result": {"id": 1}, "failure": null, "ending": true, "_msg_id": "m1", "_unique_id": "u1"})
        );
        let r = WireReply::decode(&body).unwrap();
        assert_eq!(r.result.unwrap().get(), r#"{"id":1}"#);
        assert!(r.ending && r.failure.is_none());

        let e = RemoteError::new("Boom", "it \"broke\"").with_data(json!({"k": 1}));
        let body = encode_reply(None, Some(&e), true, "m2", "u2", Wrap::Envelope).unwrap();
        let m = inner(&body);
        assert!(m["failure"].is_string());
        let f: Value = serde_json::from_str(m["failure"].as_str().unwrap()).unwrap();
        assert_eq!(f["class"], "Boom");
        assert_eq!(f["message"], "it \"broke\"");
        assert_eq!(f["kwargs"], json!({"k": 1}));
        assert!(f["tb"].is_array() && f["args"].is_array());
        let r = WireReply::decode(&body).unwrap();
        assert_eq!(r.failure, Some(e));
        assert!(r.result.is_none());
    }

    #[test]
    fn notification_round_trip() {
        let n = WireNotification {
            message_id: "id".into(),
            publisher_id: "compute.host1".into(),
            event_type: "compute.instance.create.end".into(),
            priority: "INFO".into(),
            payload: serde_json::value::to_raw_value(&json!({"state": "active"})).unwrap(),
            timestamp: "2024-01-02 03:04:05.000006".into(),
            ctx: Context::new().with("request_id", "req-1"),
            unique_id: Some("u".into()),
        };
        let body = n.encode().unwrap();
        assert_eq!(
            inner(&body),
            json!({
                "message_id": "id",
                "publisher_id": "compute.host1",
                "event_type": "compute.instance.create.end",
                "priority": "INFO",
                "payload": {"state": "active"},
                "timestamp": "2024-01-02 03:04:05.000006",
                "_unique_id": "u",
                "_context_request_id": "req-1",
            })
        );
        let back = WireNotification::decode(&body).unwrap();
        assert_eq!(back.event_type, n.event_type);
        assert_eq!(back.payload.get(), n.payload.get());
        assert_eq!(back.ctx, n.ctx);
    }

    /// Strings that exercise every escape, in every place a string goes.
    const AWKWARD: &str = "q\"b\\s/\n\u{1}\u{1f}\u{7f}\u{e9}\u{1F600}";

    fn awkward_request(call: bool) -> WireRequest {
        let mut message =
            RpcMessage::new(AWKWARD, &json!({"a": AWKWARD, "n": [1, 2.5, null]})).unwrap();
        message.namespace = Some(AWKWARD.into());
        message.version = Some("3.1".into());
        WireRequest {
            message,
            ctx: Context::new()
                .with(AWKWARD, AWKWARD)
                .with("n", 1)
                .with("none", Value::Null)
                .with("yes", true)
                .with("list", json!([AWKWARD, {"k": AWKWARD}])),
            msg_id: call.then(|| AWKWARD.into()),
            reply_q: call.then(|| AWKWARD.into()),
            unique_id: Some(AWKWARD.into()),
            timeout: call.then_some(7.5),
        }
    }

    fn both(encode: impl Fn(Wrap) -> Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        (encode(Wrap::Envelope), encode(Wrap::Bare))
    }

    #[test]
    fn a_bare_body_is_the_envelopes_message_byte_for_byte() {
        let mut bodies = Vec::new();
        for call in [true, false] {
            let r = awkward_request(call);
            let fields = RequestFields {
                msg_id: r.msg_id.as_deref().map(Utf8::from),
                reply_q: r.reply_q.as_deref(),
                unique_id: r.unique_id.as_deref().map(Utf8::from),
                timeout: r.timeout,
                call,
            };
            bodies.push(both(|w| {
                encode_request(&r.message, &r.ctx, &fields, w).unwrap()
            }));
        }
        let result = serde_json::value::to_raw_value(&json!({"r": AWKWARD})).unwrap();
        let failure = RemoteError::new(AWKWARD, AWKWARD);
        bodies.push(both(|w| {
            encode_reply(Some(&result), None, true, AWKWARD, AWKWARD, w).unwrap()
        }));
        bodies.push(both(|w| {
            encode_reply(None, Some(&failure), true, AWKWARD, AWKWARD, w).unwrap()
        }));
        bodies.push(both(|w| {
            encode_reply(None, None, false, AWKWARD, AWKWARD, w).unwrap()
        }));
        let n = WireNotification {
            message_id: AWKWARD.into(),
            publisher_id: AWKWARD.into(),
            event_type: AWKWARD.into(),
            priority: "INFO".into(),
            payload: serde_json::value::to_raw_value(&json!([AWKWARD])).unwrap(),
            timestamp: "2024-01-02 03:04:05.000006".into(),
            ctx: awkward_request(false).ctx,
            unique_id: Some(AWKWARD.into()),
        };
        bodies.push(both(|w| n.encode_as(w).unwrap()));
        for (enveloped, bare) in bodies {
            let inner = open_envelope(&enveloped).unwrap();
            assert_eq!(String::from_utf8(bare.clone()).unwrap(), inner);
            // and it is JSON (an object) on its own
            assert!(serde_json::from_slice::<Value>(&bare).unwrap().is_object());
        }
    }

    #[test]
    fn bare_and_enveloped_bodies_decode_alike() {
        for call in [true, false] {
            let r = awkward_request(call);
            let fields = RequestFields {
                msg_id: r.msg_id.as_deref().map(Utf8::from),
                reply_q: r.reply_q.as_deref(),
                unique_id: r.unique_id.as_deref().map(Utf8::from),
                timeout: r.timeout,
                call,
            };
            let (enveloped, bare) =
                both(|w| encode_request(&r.message, &r.ctx, &fields, w).unwrap());
            // the envelope again, keys the other way round (the general path)
            let reordered = serde_json::to_vec(&json!({
                "oslo.message": open_envelope(&enveloped).unwrap(),
                "oslo.version": "2.0",
            }))
            .unwrap();
            for body in [&enveloped, &bare, &reordered] {
                let back = WireRequest::decode(body).unwrap();
                assert_eq!(back.message.method, AWKWARD);
                assert_eq!(back.message.args.get(), r.message.args.get());
                assert_eq!(back.message.namespace, r.message.namespace);
                assert_eq!(back.message.version, r.message.version);
                assert_eq!(back.ctx, r.ctx);
                assert_eq!(back.msg_id, r.msg_id);
                assert_eq!(back.reply_q, r.reply_q);
                assert_eq!(back.unique_id, r.unique_id);
                assert_eq!(back.timeout, r.timeout);
            }
        }
        let (enveloped, bare) = both(|w| encode_reply(None, None, false, "m", "u", w).unwrap());
        for body in [&enveloped, &bare] {
            let back = WireReply::decode(body).unwrap();
            assert!(!back.ending);
            assert_eq!(back.msg_id.as_deref(), Some("m"));
        }
        // An envelope of another version is refused whatever its key order.
        for body in [
            &br#"{"oslo.version": "9.0", "oslo.message": "{}"}"#[..],
            br#"{"oslo.message": "{}", "oslo.version": "9.0"}"#,
        ] {
            assert!(matches!(
                WireRequest::decode(body),
                Err(WireError::UnsupportedEnvelope(_))
            ));
        }
    }

    #[test]
    fn context_keys_are_escaped() {
        let req = WireRequest {
            message: RpcMessage::new("m", &()).unwrap(),
            ctx: Context::new().with("we\"ird\u{1}", 1),
            msg_id: None,
            reply_q: None,
            unique_id: None,
            timeout: None,
        };
        let back = WireRequest::decode(&req.encode().unwrap()).unwrap();
        assert_eq!(back.ctx, req.ctx);
    }

    #[test]
    fn fast_and_general_envelope_paths_agree() {
        let expected = "q\"b\\s/\n\u{1}\u{e9}\u{1F600}";
        let inner = serde_json::to_string(&json!({ "a": expected })).unwrap();
        let mut compact = br#"{"oslo.version":"2.0","oslo.message":"#.to_vec();
        compact.extend_from_slice(serde_json::to_string(&inner).unwrap().as_bytes());
        compact.push(b'}');
        // As Python's json.dumps writes it: ASCII only, surrogate pairs.
        let python = br#"{"oslo.version": "2.0", "oslo.message": "{\"a\": \"q\\\"b\\\\s/\\n\\u0001\\u00e9\\ud83d\\ude00\"}"}"#.to_vec();
        for body in [&compact, &python] {
            let fast = open_envelope_fast(body).expect("fast path taken");
            let slow = open_envelope_slow(body).unwrap();
            assert_eq!(fast, slow);
            let v: Value = serde_json::from_str(&fast).unwrap();
            assert_eq!(v["a"], expected);
        }
        // Not for the fast path: other key order, trailing data, a lone
        // surrogate, a raw control character.
        for body in [
            &br#"{"oslo.message": "{}", "oslo.version": "2.0"}"#[..],
            br#"{"oslo.version":"2.0","oslo.message":"{}","x":1}"#,
            br#"{"oslo.version":"2.0","oslo.message":"\ud800"}"#,
            b"{\"oslo.version\":\"2.0\",\"oslo.message\":\"\x01\"}",
            br#"{"oslo.version":"2.0","oslo.message":"{}"#,
        ] {
            assert!(
                open_envelope_fast(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            open_envelope(br#"{"oslo.message": "{}", "oslo.version": "2.0"}"#).unwrap(),
            "{}"
        );
    }

    #[test]
    fn the_first_special_lane_is_exact() {
        let is_special = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        let first = |bytes: [u8; 8]| {
            (special_lanes(u64::from_le_bytes(bytes)).trailing_zeros() / 8) as usize
        };
        for lane in 0..8 {
            for b in 0..=255u8 {
                for fill in [b'a', 0x7f, 0x80, 0xff, 0x21, 0x5c + 1, b'"' + 1] {
                    let mut bytes = [fill; 8];
                    bytes[lane] = b;
                    let want = bytes.iter().position(|&c| is_special(c)).unwrap_or(8);
                    assert_eq!(first(bytes), want, "{bytes:x?}");
                }
            }
        }
        // two specials: the first wins, whatever follows
        for (i, j) in [(0, 1), (2, 7), (3, 4), (6, 7)] {
            for (x, y) in [(0u8, b'"'), (b'\\', 0x1f), (b'"', b'\\'), (0x1f, 0)] {
                let mut bytes = [b'z'; 8];
                bytes[i] = x;
                bytes[j] = y;
                assert_eq!(first(bytes), i, "{bytes:x?}");
            }
        }
    }

    #[test]
    fn fast_envelope_path_agrees_on_long_and_mixed_texts() {
        let samples = [
            "plain ascii text that runs for more than eight bytes at a time".to_owned(),
            "\"quoted\" and \\backslashed\\ and \n\t\u{1}\u{1f} controls".to_owned(),
            "\u{e9}t\u{e9} \u{1F600} caf\u{e9} na\u{ef}ve \u{7f}\u{80}\u{ff}".to_owned(),
            "x".repeat(7) + "\"" + &"y".repeat(9) + "\\" + &"z".repeat(16),
        ];
        for text in samples {
            let inner = serde_json::to_string(&json!({ "a": text, "b": [text.clone()] })).unwrap();
            let mut body = br#"{"oslo.version":"2.0","oslo.message":"#.to_vec();
            body.extend_from_slice(serde_json::to_string(&inner).unwrap().as_bytes());
            body.push(b'}');
            assert_eq!(open_envelope_fast(&body).expect("fast path taken"), inner);
            assert_eq!(open_envelope_slow(&body).unwrap(), inner);
        }
    }

    /// Bodies made by oslo.messaging 18.3 itself (`serialize_msg`,
    /// `pack_context`, `serialize_remote_exception`).
    #[test]
    fn reads_bodies_made_by_oslo_messaging() {
        let req = br####"{"oslo.version": "2.0", "oslo.message": "{\"method\": \"ping\", \"args\": {\"x\": \"\\u00e9\"}, \"version\": \"1.2\", \"_msg_id\": \"m\", \"_reply_q\": \"reply_q1\", \"_timeout\": null, \"_unique_id\": \"cb5a5ab59f2d408897029ad1a9e30611\", \"_context_user\": \"bob\", \"_context_roles\": [\"a\"]}"}"####;
        let r = WireRequest::decode(req).unwrap();
        assert_eq!(r.message.method, "ping");
        assert_eq!(r.message.version.as_deref(), Some("1.2"));
        let args: Value = serde_json::from_str(r.message.args.get()).unwrap();
        assert_eq!(args, json!({"x": "é"}));
        assert_eq!(
            r.ctx,
            Context::new()
                .with("user", "bob")
                .with("roles", json!(["a"]))
        );
        assert_eq!(r.msg_id.as_deref(), Some("m"));
        assert_eq!(r.reply_q.as_deref(), Some("reply_q1"));
        assert_eq!(
            r.unique_id.as_deref(),
            Some("cb5a5ab59f2d408897029ad1a9e30611")
        );
        let reply = br####"{"oslo.version": "2.0", "oslo.message": "{\"result\": null, \"failure\": \"{\\\"class\\\": \\\"E\\\", \\\"module\\\": \\\"__main__\\\", \\\"message\\\": \\\"bad thing\\\", \\\"tb\\\": [\\\"Traceback (most recent call last):\\\\n\\\", \\\"  File \\\\\\\"<stdin>\\\\\\\", line 25, in <module>\\\\n\\\", \\\"E: bad thing\\\\n\\\"], \\\"args\\\": [\\\"bad thing\\\"], \\\"kwargs\\\": {\\\"volume_id\\\": \\\"v7\\\"}}\", \"ending\": true, \"_msg_id\": \"abc\", \"_unique_id\": \"b0e71e2c470847338a2deb500f431206\"}"}"####;
        let r = WireReply::decode(reply).unwrap();
        assert!(r.ending && r.result.is_none());
        assert_eq!(r.msg_id.as_deref(), Some("abc"));
        let f = r.failure.unwrap();
        assert_eq!(
            (f.class(), f.module(), f.message()),
            ("E", "__main__", "bad thing")
        );
        assert_eq!(f.data()["volume_id"], "v7");
        assert_eq!(f.args(), [json!("bad thing")]);
        assert_eq!(f.traceback().len(), 3);
        assert!(f.traceback()[1].contains("\"<stdin>\""));
    }

    #[test]
    fn args_must_be_objects() {
        assert!(RpcMessage::new("m", &[1, 2]).is_err());
        assert!(RpcMessage::new("m", &5).is_err());
        assert_eq!(RpcMessage::new("m", &None::<u8>).unwrap().args.get(), "{}");
    }
}
