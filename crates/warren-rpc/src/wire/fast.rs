//! One pass over a message as this crate and oslo.messaging write it: the
//! fields are read straight from the body, from the envelope's string
//! without unescaping it first.
//!
//! Inside the envelope, the message's JSON text is written as the content
//! of a JSON string: each `"` of the message as `\"`, each `\` as `\\`
//! (and, by other writers, perhaps other characters as escapes too). This
//! reader takes that text as it is: a message's quote is `\"`, and a string
//! of the message without escapes of its own (ids, names, methods: most)
//! is the same text at both levels, borrowed from the body as it is. Only
//! the values kept as JSON text (`args`, `result`, ...) and the strings
//! with escapes are unescaped, each on its own.
//!
//! It reads the usual form only, and gives up ([`None`]) at anything else:
//! an escape of the envelope other than `\"` and `\\` (another writer's
//! whitespace or non-ASCII escapes), a key with escapes, an envelope key in
//! a bare body, a value of an unusual type, invalid JSON. The general path
//! (unescape the whole message, then serde) reads those, and reports the
//! errors: so whatever this reader accepts, it reads as the general path
//! does (the tests compare them).

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{special_lanes, Fields, CONTEXT_PREFIX};

/// The envelope's start, as this crate and Python's `json.dumps` write it:
/// the message's text follows.
const HEADS: [&[u8]; 2] = [
    br#"{"oslo.version":"2.0","oslo.message":""#,
    br#"{"oslo.version": "2.0", "oslo.message": ""#,
];

/// Deeper values are left to the general path (and to serde's recursion
/// limit).
const MAX_DEPTH: usize = 64;

/// Reads the fields of a body in the usual form (see the module docs) into
/// `f`, which the caller made with [`Fields::default`]. On `None`, `f` holds
/// a part of them: the caller drops it.
///
/// Filled in place rather than returned: `Fields` is some 400 bytes, and
/// each move is a copy.
pub(super) fn read<'de>(body: &'de [u8], f: &mut Fields<'de>) -> Option<()> {
    match HEADS.iter().find_map(|h| body.strip_prefix(*h)) {
        Some(rest) => {
            let mut r = Reader::new(std::str::from_utf8(rest).ok()?, true);
            r.object(f)?;
            // The envelope's string ends right after the message; then only
            // the envelope's closing brace.
            r.skip_ws();
            r.eat(b'"')?;
            (r.rest().trim_ascii() == b"}").then_some(())
        }
        None => {
            let mut r = Reader::new(std::str::from_utf8(body).ok()?, false);
            r.object(f)?;
            r.skip_ws();
            r.rest().is_empty().then_some(())
        }
    }
}

/// A cursor over a message's JSON text, bare or written inside the
/// envelope's string (`escaped`).
struct Reader<'de> {
    text: &'de str,
    pos: usize,
    escaped: bool,
}

impl<'de> Reader<'de> {
    fn new(text: &'de str, escaped: bool) -> Reader<'de> {
        Reader {
            text,
            pos: 0,
            escaped,
        }
    }

    fn bytes(&self) -> &'de [u8] {
        self.text.as_bytes()
    }

    fn rest(&self) -> &'de [u8] {
        self.bytes().get(self.pos..).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// Takes `word` (`null`, `true`, `false`) if it comes next.
    fn eat_word(&mut self, word: &[u8]) -> bool {
        let found = self.rest().starts_with(word);
        if found {
            self.pos += word.len();
        }
        found
    }

    /// Skips whitespace between tokens. Inside the envelope, spaces only:
    /// other whitespace would be written as an escape.
    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            let ws = b == b' ' || (!self.escaped && matches!(b, b'\n' | b'\t' | b'\r'));
            if !ws {
                break;
            }
            self.pos += 1;
        }
    }

    /// Whether a quote of the message's text comes next.
    fn at_quote(&self) -> bool {
        match self.rest() {
            [b'\\', b'"', ..] => self.escaped,
            [b'"', ..] => !self.escaped,
            _ => false,
        }
    }

    /// Takes a quote of the message's text.
    fn eat_quote(&mut self) -> Option<()> {
        self.at_quote()
            .then(|| self.pos += if self.escaped { 2 } else { 1 })
    }

    /// The rest of a string of the message, its opening quote taken: its
    /// content as written here, and whether it has escapes of its own.
    ///
    /// Always inlined: it runs for each key and string (some twenty per
    /// call), and inlined where it is used it costs about a third less
    /// (measured: no call, its constants and result kept in registers).
    #[inline(always)]
    fn string_body(&mut self) -> Option<(&'de str, bool)> {
        let bytes = self.bytes();
        let start = self.pos;
        let mut escapes = false;
        loop {
            let i = find_special(bytes, self.pos);
            match (bytes.get(i)?, self.escaped) {
                (b'"', false) => {
                    self.pos = i + 1;
                    return Some((self.text.get(start..i)?, escapes));
                }
                (b'\\', false) => {
                    // An escape; `\u` is followed by plain hex digits.
                    escapes = true;
                    self.pos = i + 2;
                }
                (b'\\', true) => match (bytes.get(i + 1), bytes.get(i + 2), bytes.get(i + 3)) {
                    // `\"`: the message's quote, the end.
                    (Some(b'"'), _, _) => {
                        self.pos = i + 2;
                        return Some((self.text.get(start..i)?, escapes));
                    }
                    // `\\` then `\"` or `\\`: the message's `\"` or `\\`.
                    (Some(b'\\'), Some(b'\\'), Some(b'"' | b'\\')) => {
                        escapes = true;
                        self.pos = i + 4;
                    }
                    // `\\` then a letter: the message's `\n`, `\u`, ...
                    (Some(b'\\'), Some(c), _) if c.is_ascii_alphabetic() || *c == b'/' => {
                        escapes = true;
                        self.pos = i + 3;
                    }
                    _ => return None,
                },
                // A control character (invalid), or in the envelope the end
                // of its string (the message is cut short).
                _ => return None,
            }
        }
    }

    /// A string of the message, or `null`.
    fn opt_str(&mut self) -> Option<Option<Cow<'de, str>>> {
        if self.eat_word(b"null") {
            return Some(None);
        }
        self.eat_quote()?;
        let (written, escapes) = self.string_body()?;
        Some(Some(if escapes {
            Cow::Owned(self.decode_string(written)?)
        } else {
            Cow::Borrowed(written)
        }))
    }

    /// The value of a string with escapes, from its content as written.
    fn decode_string(&self, written: &str) -> Option<String> {
        let content = self.unescape(written);
        let mut quoted = String::with_capacity(content.len() + 2);
        quoted.push('"');
        quoted.push_str(&content);
        quoted.push('"');
        serde_json::from_str(&quoted).ok()
    }

    /// Steps over one value of the message, unchecked (whoever reads it
    /// checks it), and returns its JSON text as written here.
    fn skip_value(&mut self) -> Option<&'de str> {
        let start = self.pos;
        let mut depth = 0;
        loop {
            match self.peek()? {
                b'{' | b'[' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    self.pos += 1;
                }
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => {
                    depth -= 1;
                    self.pos += 1;
                    if depth == 0 {
                        break;
                    }
                }
                b'"' | b'\\' => {
                    self.eat_quote()?;
                    self.string_body()?;
                    if depth == 0 {
                        break;
                    }
                }
                b',' | b' ' | b'\n' | b'\t' | b'\r' if depth == 0 => break,
                _ => self.pos += 1,
            }
        }
        let written = self.text.get(start..self.pos)?;
        (!written.is_empty()).then_some(written)
    }

    /// The message's text of `written` (a part of it as written here):
    /// inside the envelope, each `\"` and `\\` taken back to `"` and `\`
    /// (the only escapes [`string_body`](Self::string_body) and
    /// [`skip_value`](Self::skip_value) let through).
    fn unescape(&self, written: &'de str) -> Cow<'de, str> {
        if !self.escaped || !written.contains('\\') {
            return Cow::Borrowed(written);
        }
        let escapes = count_escapes(written.as_bytes());
        let mut out = String::with_capacity(written.len() - escapes);
        let mut rest = written;
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            // The escaped character is `"` or `\`: one byte.
            out.push_str(rest.get(i + 1..i + 2).unwrap_or_default());
            rest = rest.get(i + 2..).unwrap_or_default();
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// A value kept as JSON text, checked.
    fn raw(&mut self) -> Option<Box<RawValue>> {
        let written = self.skip_value()?;
        match self.unescape(written) {
            Cow::Borrowed(text) => serde_json::from_str(text).ok(),
            // Sized exactly: taken as it is.
            Cow::Owned(text) => RawValue::from_string(text).ok(),
        }
    }

    /// Any value, as a JSON value.
    fn value(&mut self) -> Option<Value> {
        if self.at_quote() {
            return Some(Value::String(self.opt_str()??.into_owned()));
        }
        if self.eat_word(b"null") {
            return Some(Value::Null);
        }
        if self.eat_word(b"true") {
            return Some(Value::Bool(true));
        }
        if self.eat_word(b"false") {
            return Some(Value::Bool(false));
        }
        let written = self.skip_value()?;
        serde_json::from_str(&self.unescape(written)).ok()
    }

    /// Any value, checked and dropped.
    fn ignore(&mut self) -> Option<()> {
        let written = self.skip_value()?;
        serde_json::from_str::<IgnoredAny>(&self.unescape(written)).ok()?;
        Some(())
    }

    /// `_timeout`: a number, or `null`.
    fn timeout(&mut self) -> Option<Option<f64>> {
        if self.eat_word(b"null") {
            return Some(None);
        }
        match self.peek()? {
            b'-' | b'0'..=b'9' => serde_json::from_str(self.skip_value()?).ok().map(Some),
            _ => None,
        }
    }

    /// `ending`: `true`, `false`, or `null` (false).
    fn flag(&mut self) -> Option<bool> {
        if self.eat_word(b"true") {
            Some(true)
        } else if self.eat_word(b"false") || self.eat_word(b"null") {
            Some(false)
        } else {
            None
        }
    }

    /// The message: an object of fields, read into `f`.
    fn object(&mut self, f: &mut Fields<'de>) -> Option<()> {
        self.skip_ws();
        self.eat(b'{')?;
        self.skip_ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat_quote()?;
            let (key, escapes) = self.string_body()?;
            if escapes {
                return None;
            }
            self.skip_ws();
            self.eat(b':')?;
            self.skip_ws();
            self.field(f, key)?;
            self.skip_ws();
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.skip_ws();
                }
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads the value of `key` into `f`, as the general path's `Key` and
    /// `Fields` do.
    fn field(&mut self, f: &mut Fields<'de>, key: &'de str) -> Option<()> {
        match key {
            "method" => f.method = self.opt_str()?,
            "args" => f.args = Some(self.raw()?),
            "namespace" => f.namespace = self.opt_str()?,
            // A string or null here; numbers are for the general path.
            "version" => f.version = self.opt_str()?,
            "_msg_id" => f.msg_id = self.opt_str()?,
            "_reply_q" => f.reply_q = self.opt_str()?,
            "_unique_id" => f.unique_id = self.opt_str()?,
            "_timeout" => f.timeout = self.timeout()?,
            "result" => f.result = Some(self.raw()?),
            "failure" => f.failure = Some(self.value()?),
            "ending" => f.ending = self.flag()?,
            "message_id" => f.message_id = self.opt_str()?,
            "publisher_id" => f.publisher_id = self.opt_str()?,
            "event_type" => f.event_type = self.opt_str()?,
            "priority" => f.priority = self.opt_str()?,
            "payload" => f.payload = Some(self.raw()?),
            "timestamp" => f.timestamp = self.opt_str()?,
            // An envelope in another form: for the general path.
            "oslo.version" | "oslo.message" => return None,
            _ => match key.strip_prefix(CONTEXT_PREFIX) {
                Some(k) => {
                    let v = self.value()?;
                    f.ctx.insert(k.to_owned(), v);
                }
                None => self.ignore()?,
            },
        }
        Some(())
    }
}

/// The first position from `i` on holding `"`, `\` or a control character
/// (`bytes.len()` if none): eight bytes at a time.
fn find_special(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let special = special_lanes(u64::from_le_bytes(word));
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = bytes.get(i) {
        if b < 0x20 || b == b'"' || b == b'\\' {
            break;
        }
        i += 1;
    }
    i
}

/// How many two-byte escapes (`\` and the byte after it) `written` has.
fn count_escapes(written: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while let Some(&b) = written.get(i) {
        if b == b'\\' {
            n += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::{read_fields_general, WireError};
    use super::*;
    use serde_json::json;

    /// Everything read, comparable.
    fn summary(f: &Fields<'_>) -> Value {
        let raw = |r: &Option<Box<RawValue>>| r.as_ref().map(|r| r.get().to_owned());
        json!({
            "method": f.method, "args": raw(&f.args), "namespace": f.namespace,
            "version": f.version, "msg_id": f.msg_id, "reply_q": f.reply_q,
            "unique_id": f.unique_id, "timeout": f.timeout.map(f64::to_bits),
            "result": raw(&f.result), "failure": f.failure, "ending": f.ending,
            "message_id": f.message_id, "publisher_id": f.publisher_id,
            "event_type": f.event_type, "priority": f.priority,
            "payload": raw(&f.payload), "timestamp": f.timestamp,
            "ctx": f.ctx, "enveloped": f.enveloped,
        })
    }

    fn general(body: &[u8]) -> Result<Value, WireError> {
        read_fields_general(body, |f| Ok(summary(f)))
    }

    /// Whatever the fast reader reads, the general path reads alike.
    fn agrees(body: &[u8]) -> bool {
        let mut fast = Fields::default();
        if read(body, &mut fast).is_none() {
            return false;
        }
        match general(body) {
            Ok(g) => assert_eq!(summary(&fast), g, "{}", String::from_utf8_lossy(body)),
            Err(e) => panic!(
                "fast read what the general path refuses ({e}): {}",
                String::from_utf8_lossy(body)
            ),
        }
        true
    }

    /// `message` (JSON text) in the envelope, as this crate and as Python
    /// write it.
    fn enveloped(message: &str) -> [Vec<u8>; 2] {
        let string = serde_json::to_string(message).unwrap();
        [
            format!(r#"{{"oslo.version":"2.0","oslo.message":{string}}}"#).into_bytes(),
            format!(r#"{{"oslo.version": "2.0", "oslo.message": {string}}}"#).into_bytes(),
        ]
    }

    const AWKWARD: &str = "q\"b\\s/\n\u{1}\u{1f}\u{7f}\u{e9}\u{1F600}";

    /// Messages in forms the fast reader takes.
    fn usual() -> Vec<String> {
        let awkward = serde_json::to_string(AWKWARD).unwrap();
        vec![
            r#"{"method":"echo","args":{"n":5},"_msg_id":"0123456789abcdef0123456789abcdef","_reply_q":"reply_x","_timeout":null,"_unique_id":"u1","_context_request_id":"req-1"}"#.to_owned(),
            r#"{"method": "ping", "args": {"x": "\u00e9", "l": [1, 2.5, null, {"a": "}]\"\\"}]}, "version": "1.2", "_msg_id": "m", "_reply_q": "reply_q1", "_timeout": 30, "_unique_id": "cb5a", "_context_user": "bob", "_context_roles": ["a"], "_context_n": -1.5e3, "_context_t": true, "_context_f": false, "_context_z": null, "_context_o": {"k": [{}]}}"#.to_owned(),
            format!(r#"{{"method":{awkward},"args":{{"a":{awkward}}},"namespace":{awkward},"version":"3.1","_msg_id":{awkward},"_reply_q":{awkward},"_timeout":7.5,"_unique_id":{awkward},"_context_k":{awkward}}}"#),
            r#"{"result":{"id":1},"failure":null,"ending":true,"_msg_id":"m1","_unique_id":"u1"}"#.to_owned(),
            r#"{"result":null,"failure":"{\"class\": \"E\", \"message\": \"bad \\\"thing\\\"\"}","ending":true,"_msg_id":"m2","_unique_id":"u2"}"#.to_owned(),
            r#"{"result":null,"failure":null,"ending":false,"_msg_id":"m","_unique_id":"u"}"#.to_owned(),
            r#"{"result":"text","failure":null,"ending":null,"_msg_id":null}"#.to_owned(),
            r#"{"result":[1,"2",[3]],"ending":true,"_msg_id":"m"}"#.to_owned(),
            r#"{"result":-0,"ending":true}"#.to_owned(),
            r#"{"message_id":"id","publisher_id":"compute.host1","event_type":"compute.instance.create.end","priority":"INFO","payload":{"state":"active"},"timestamp":"2024-01-02 03:04:05.000006","_unique_id":"u","_context_request_id":"req-1"}"#.to_owned(),
            r#"{"method":"m","args":null}"#.to_owned(),
            r#"{"method":"m","args":{},"other":{"deep":[[[["x"]]]]},"another":12,"_timeout":-1}"#.to_owned(),
            r#"{"method":"m","method":"twice","_context_a":1,"_context_a":2}"#.to_owned(),
            r#"  { "method" : "m" , "args" : { } }  "#.to_owned(),
            "{}".to_owned(),
            r#"{"method":"\u00e9t\u00e9","args":{"s":"\/\b\f\n\r\t"}}"#.to_owned(),
        ]
    }

    #[test]
    fn usual_messages_are_read_fast_and_alike() {
        for message in usual() {
            assert!(agrees(message.as_bytes()), "bare: {message}");
            for body in enveloped(&message) {
                assert!(
                    agrees(&body),
                    "enveloped: {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    #[test]
    fn other_forms_are_left_to_the_general_path() {
        let bodies: Vec<Vec<u8>> = vec![
            // other whitespace inside the envelope, other escapes
            br#"{"oslo.version":"2.0","oslo.message":"{\n\"method\":\"m\"}"}"#.to_vec(),
            br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"\u00e9\"}"}"#.to_vec(),
            br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"a\/b\"}"}"#.to_vec(),
            // another envelope order, a bare body with envelope keys
            br#"{"oslo.message":"{\"method\":\"m\"}","oslo.version":"2.0"}"#.to_vec(),
            br#"{"method":"m","oslo.version":"2.0"}"#.to_vec(),
            // a key with escapes, a number as the version
            br#"{"me\u0074hod":"m"}"#.to_vec(),
            br#"{"method":"m","version":1.2}"#.to_vec(),
            // wrong types
            br#"{"method":5}"#.to_vec(),
            br#"{"method":"m","_timeout":"30"}"#.to_vec(),
            br#"{"ending":1}"#.to_vec(),
            // invalid JSON
            br#"{"method":"m",}"#.to_vec(),
            br#"{"method":"m"} x"#.to_vec(),
            br#"{"method":"m" "args":{}}"#.to_vec(),
            br#"{"method":nul}"#.to_vec(),
            br#"{"method":"m","args":{"a":1}}}"#.to_vec(),
            br#"{"method":"m","args":{"a":01}}"#.to_vec(),
            br#"{"method":"m","args":{"a":"\q"}}"#.to_vec(),
            br#"{"method":"\ud800"}"#.to_vec(),
            b"{\"method\":\"a\x01\"}".to_vec(),
            b"{\"method\":\"\xff\"}".to_vec(),
            br#"{"method":"m","_timeout":1e400}"#.to_vec(),
            br#"{"method":"m""#.to_vec(),
            br#"[1]"#.to_vec(),
            br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"m\"}"} x"#.to_vec(),
            br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"m\"} x"}"#.to_vec(),
            br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"m\"}"#.to_vec(),
            br#"{"oslo.version":"2.0","oslo.message":"{\"method\":\"m\\\"}"}"#.to_vec(),
        ];
        for body in bodies {
            assert!(
                read(&body, &mut Fields::default()).is_none(),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        // Too deep for the fast reader; still read (or refused) alike.
        let deep = format!(r#"{{"args":{}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert!(read(deep.as_bytes(), &mut Fields::default()).is_none());
    }

    /// Random damage to usual bodies: whatever the fast reader still takes,
    /// the general path reads alike.
    #[test]
    fn damaged_bodies_are_read_alike_or_left_alone() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b"\\\"{}[],: nul0-9.eE\x01\xc3\xa9ab_";
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for message in usual() {
            bodies.push(message.clone().into_bytes());
            bodies.extend(enveloped(&message));
        }
        let (mut taken, mut total) = (0, 0);
        for body in &bodies {
            for _ in 0..400 {
                let mut b = body.clone();
                // A message damaged before it was put in the envelope, half
                // the time: the envelope itself stays whole.
                let inner_first = !body.starts_with(b"{\"oslo.") && next(2) == 0;
                for _ in 0..=next(3) {
                    let at = next(b.len() + 1);
                    match next(3) {
                        0 if at < b.len() => {
                            b.remove(at);
                        }
                        1 if at < b.len() => b[at] = alphabet[next(alphabet.len())],
                        _ => b.insert(at, alphabet[next(alphabet.len())]),
                    }
                }
                total += 1;
                if agrees(&b) {
                    taken += 1;
                }
                if inner_first {
                    if let Ok(message) = String::from_utf8(b) {
                        for body in enveloped(&message) {
                            total += 1;
                            if agrees(&body) {
                                taken += 1;
                            }
                        }
                    }
                }
            }
        }
        // Some damage leaves a valid message (a changed letter): those were
        // compared.
        eprintln!("{taken} of {total} damaged bodies read fast");
        assert!(taken > total / 20, "{taken} of {total}");
    }
}
