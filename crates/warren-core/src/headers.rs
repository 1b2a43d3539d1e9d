//! The headers exchange's matching rules, as RabbitMQ implements them.
//!
//! # Semantics
//!
//! A binding to a headers exchange carries an argument table; a message
//! matches when its `headers` satisfy it. These are RabbitMQ's rules
//! (`rabbit_exchange_type_headers`), each checked against RabbitMQ 3.10.8 by
//! `tests/rabbitmq/headers_semantics.py`:
//!
//! * **`x-match`** says how the arguments combine: `all` (every argument must
//!   match; the default when `x-match` is absent) or `any` (at least one).
//!   `all` with no arguments to check matches every message, even one without
//!   headers; `any` with none matches nothing.
//! * **`x-` arguments** are ignored by `all` and `any`, and checked like any
//!   other argument by `all-with-x` and `any-with-x`. `x-match` itself is
//!   never an argument to check, in any mode.
//! * **Refused bindings**: an `x-match` whose value is a string other than the
//!   four above (`"ALL"`, `""`, ...) is a 406 `PRECONDITION_FAILED`
//!   (`Invalid x-match field value <<"foo">>; expected all, any, all-with-x, or
//!   any-with-x`), and so is an `x-match` that is not a string at all: an int,
//!   a bool, void, or even the byte array `"all"` (`Invalid x-match field type
//!   signedint (value 1); expected longstr`). (RabbitMQ has no short-string
//!   field kind; warren's [`AMQPValue::ShortString`] counts as a string.)
//! * **A void argument** matches when the message has the header, whatever
//!   its value (void included).
//! * **Other arguments** match when the message has the header and its value
//!   is equal. The comparison is Erlang's `==` on the values with their kinds
//!   dropped:
//!   - numbers compare by exact numeric value across every integer kind, the
//!     timestamp, `float` and `double`: int `1` = long `1` = double `1.0` =
//!     timestamp `1`, and `0.0` = `-0.0`. "Exact" means no rounding: the
//!     `float` 0.1 is 0.100000001490116..., so it does not equal the `double`
//!     0.1, and the long 2^53 + 1 does not equal the double 2^53;
//!   - short strings, long strings and byte arrays compare by their bytes, so
//!     the string `"a"` = the byte array `"a"`;
//!   - a bool equals only the same bool (`true` ≠ `1`), a decimal only a
//!     decimal with the same scale and digits (`1.0` written as scale 1,
//!     value 10 ≠ scale 0, value 1, and ≠ int `1`), and a string never equals
//!     a number (`"1"` ≠ `1`);
//!   - arrays and nested tables compare structurally: same length, same order,
//!     and each element (or key and value) of the same kind with an equal
//!     value, with no numeric or string coercion inside and no void wildcard
//!     (`[int 1]` ≠ `[long 1]`, `{a, b}` ≠ `{b, a}`). The one kind pair that
//!     is the same inside is short string / long string: RabbitMQ has no
//!     short-string field kind, so both are its `longstr`;
//!   - an empty array equals an empty table (both are Erlang's `[]`).
//!
//!   A NaN equals nothing. (RabbitMQ cannot hold one: publishing a NaN or
//!   infinite `float` / `double` header gets the connection closed with 541
//!   `INTERNAL_ERROR`.)
//!
//! Which header names exist is decided by the broker before matching: it
//! strips `BCC` and handles `CC`; this module sees the headers as given.
//!
//! # Cost
//!
//! [`HeadersBinding::compile`] runs once, at bind time: it validates
//! `x-match`, drops the arguments the mode ignores, and turns each remaining
//! value into the form it is compared in. [`HeadersBinding::matches`] then
//! looks each argument up in the headers and compares, stopping at the first
//! miss (`all`) or hit (`any`); it does not allocate.
//!
//! # Index
//!
//! An exchange does not check every binding against every message: a
//! [`HeadersIndex`] files each binding under the (header name, value) pairs
//! it requires, and a message's own headers select the bindings to check.
//!
//! * An `all` / `all-with-x` binding is filed under **one** of its arguments:
//!   every matching message satisfies all of them, so any one will do. It is
//!   the argument whose pair has the fewest bindings filed so far, an argument
//!   with a value before a void one.
//! * An `any` / `any-with-x` binding is filed under **every** argument: a
//!   matching message satisfies at least one.
//! * An argument with a value is filed under its name and a *fingerprint* of
//!   the value's canonical form; a void argument (any value) under its name
//!   alone. The canonical form follows the comparison rules above, so that
//!   values the matcher calls equal always get the same fingerprint: a number
//!   by its exact value (a whole `float` / `double` as the integer it equals,
//!   `-0.0` as `0`), strings and byte arrays by their bytes, an empty array
//!   or table as one value, a non-empty array or table by its elements'
//!   kinds (short and long strings being one) and values, in order, with
//!   `-0.0` inside as `0.0`. Unequal values may share a fingerprint; that only
//!   adds a candidate.
//! * Residual bindings, checked against every message, are those with no
//!   argument to check (`all`: every message matches; `any`: none does) and
//!   those with a NaN argument (equal to nothing, not even itself: no class
//!   of equal values to hash). Neither reaches the index.
//!
//! Routing a message looks up each of its header names, then, for the
//! arguments with values, the fingerprint of its value there; each binding
//! found is a *candidate*, verified with the matcher (for `all`, the whole
//! binding; for `any`, the argument it was found through, as a header name
//! appears once in a table). So the index decides which bindings are looked
//! at, never whether one matches, and a message costs in proportion to its
//! headers and its candidates (plus the residual list), not to the number of
//! bindings. Destinations come out once each, sorted, like the topic trie's.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;

use crate::error::Error;
use crate::field::{AMQPValue, DecimalValue, FieldTable};

/// A compiled headers-exchange binding: the `x-match` mode and the arguments
/// to check, each in the form it is compared in.
#[derive(Debug, Clone)]
pub(crate) struct HeadersBinding {
    /// How the arguments combine.
    mode: XMatch,
    /// The arguments the mode checks, in the binding's order; never `x-match`.
    args: Box<[(Box<str>, Pattern)]>,
}

impl HeadersBinding {
    /// Compiles binding arguments.
    ///
    /// An `x-match` other than the strings `all`, `any`, `all-with-x` and
    /// `any-with-x` is a 406 [`Error::PreconditionFailed`] worded as
    /// RabbitMQ words it.
    pub(crate) fn compile(args: &FieldTable) -> Result<Self, Error> {
        let mode = XMatch::parse(args.get(X_MATCH))?;
        let args = args
            .iter()
            .filter(|(key, _)| *key != X_MATCH && (mode.with_x() || !key.starts_with("x-")))
            .map(|(key, value)| (Box::from(key), Pattern::compile(value)))
            .collect();
        Ok(HeadersBinding { mode, args })
    }

    /// Whether the header value `value` satisfies argument number `arg` (the
    /// matcher's test of one argument, for a header named as the argument).
    fn arg_accepts(&self, arg: usize, value: &AMQPValue) -> bool {
        self.args
            .get(arg)
            .is_some_and(|(_, pattern)| pattern.accepts(value))
    }

    /// Whether a message with these headers (`None`: no headers property)
    /// matches the binding.
    pub(crate) fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let hit = |(key, pattern): &(Box<str>, Pattern)| {
            headers
                .and_then(|h| h.get(key))
                .is_some_and(|value| pattern.accepts(value))
        };
        if self.mode.is_any() {
            self.args.iter().any(hit)
        } else {
            self.args.iter().all(hit)
        }
    }
}

/// Whether two header values are equal under the headers exchange's rules for
/// a top-level value (see the module docs): numbers by exact value
/// across kinds, strings and byte arrays by bytes, arrays and tables
/// structurally. Void equals only void here; the "any value" meaning of a void
/// binding argument is [`HeadersBinding`]'s.
// Offered to the broker for comparing single header values; only the tests
// call it so far.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    Term::of(a).equals(Term::of(b))
}

/// The binding argument that selects the mode.
const X_MATCH: &str = "x-match";

/// The `x-match` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XMatch {
    /// `all` (the default): every argument except `x-` ones must match.
    All,
    /// `any`: at least one argument except `x-` ones must match.
    Any,
    /// `all-with-x`: every argument (`x-match` aside) must match.
    AllWithX,
    /// `any-with-x`: at least one argument (`x-match` aside) must match.
    AnyWithX,
}

impl XMatch {
    /// Reads the `x-match` argument, refusing what RabbitMQ refuses.
    fn parse(value: Option<&AMQPValue>) -> Result<Self, Error> {
        let text: &[u8] = match value {
            None => return Ok(XMatch::All),
            Some(AMQPValue::LongString(b)) => b,
            // RabbitMQ has no short-string field kind; warren's is text too.
            Some(AMQPValue::ShortString(s)) => s.as_bytes(),
            Some(other) => {
                return Err(Error::PreconditionFailed(format!(
                    "Invalid x-match field type {} (value {}); expected longstr",
                    kind_name(other),
                    erlang_term(other)
                )))
            }
        };
        match text {
            b"all" => Ok(XMatch::All),
            b"any" => Ok(XMatch::Any),
            b"all-with-x" => Ok(XMatch::AllWithX),
            b"any-with-x" => Ok(XMatch::AnyWithX),
            _ => {
                let mut shown = Vec::new();
                write_binary(text, &mut shown);
                Err(Error::PreconditionFailed(format!(
                    "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
                    String::from_utf8_lossy(&shown)
                )))
            }
        }
    }

    /// Whether one matching argument is enough.
    fn is_any(self) -> bool {
        matches!(self, XMatch::Any | XMatch::AnyWithX)
    }

    /// Whether `x-` arguments are checked.
    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }
}

/// What one binding argument requires of the header with its name.
#[derive(Debug, Clone)]
enum Pattern {
    /// A void argument: the header is present, with any value.
    Present,
    /// The header's value equals this one (see [`values_equal`]).
    Equal(OwnedTerm),
}

impl Pattern {
    /// The pattern a binding argument's value stands for.
    fn compile(value: &AMQPValue) -> Self {
        match Term::of(value) {
            Term::Undefined => Pattern::Present,
            Term::Number(n) => Pattern::Equal(OwnedTerm::Number(n)),
            Term::Binary(bytes) => Pattern::Equal(OwnedTerm::Binary(match value {
                // Shares the buffer instead of copying it.
                AMQPValue::LongString(b) | AMQPValue::ByteArray(b) => b.clone(),
                _ => Bytes::copy_from_slice(bytes),
            })),
            Term::Bool(b) => Pattern::Equal(OwnedTerm::Bool(b)),
            Term::Decimal(d) => Pattern::Equal(OwnedTerm::Decimal(d)),
            Term::EmptyList => Pattern::Equal(OwnedTerm::EmptyList),
            Term::Array(a) => Pattern::Equal(OwnedTerm::Array(a.into())),
            Term::Table(t) => Pattern::Equal(OwnedTerm::Table(t.clone())),
        }
    }

    /// Whether a header value satisfies the pattern.
    fn accepts(&self, value: &AMQPValue) -> bool {
        match self {
            Pattern::Present => true,
            Pattern::Equal(term) => term.as_term().equals(Term::of(value)),
        }
    }
}

/// A binding argument's value as compiled: an owned [`Term`].
#[derive(Debug, Clone)]
enum OwnedTerm {
    /// Any number.
    Number(Number),
    /// A string or byte array.
    Binary(Bytes),
    /// A bool.
    Bool(bool),
    /// A decimal.
    Decimal(DecimalValue),
    /// An empty array or table.
    EmptyList,
    /// A non-empty array.
    Array(Box<[AMQPValue]>),
    /// A non-empty table.
    Table(FieldTable),
}

impl OwnedTerm {
    /// The borrowed form, for comparing.
    fn as_term(&self) -> Term<'_> {
        match self {
            OwnedTerm::Number(n) => Term::Number(*n),
            OwnedTerm::Binary(b) => Term::Binary(b),
            OwnedTerm::Bool(b) => Term::Bool(*b),
            OwnedTerm::Decimal(d) => Term::Decimal(*d),
            OwnedTerm::EmptyList => Term::EmptyList,
            OwnedTerm::Array(a) => Term::Array(a),
            OwnedTerm::Table(t) => Term::Table(t),
        }
    }
}

/// A top-level field value as RabbitMQ's `==` sees it: the Erlang term it
/// decodes to, without its kind tag.
#[derive(Debug, Clone, Copy)]
enum Term<'a> {
    /// An integer kind, a timestamp, a `float` or a `double`.
    Number(Number),
    /// A short string, long string or byte array (an Erlang binary).
    Binary(&'a [u8]),
    /// A bool (an Erlang atom).
    Bool(bool),
    /// A decimal (an Erlang tuple `{Scale, Value}`).
    Decimal(DecimalValue),
    /// An empty array or empty table (both Erlang's `[]`).
    EmptyList,
    /// A non-empty array: a list of `{Kind, Value}`.
    Array(&'a [AMQPValue]),
    /// A non-empty table: a list of `{Key, Kind, Value}`.
    Table(&'a FieldTable),
    /// Void (the atom `undefined`).
    Undefined,
}

impl<'a> Term<'a> {
    /// The term a value decodes to.
    fn of(value: &'a AMQPValue) -> Self {
        use AMQPValue as V;
        match value {
            V::ShortShortInt(v) => Term::Number(Number::Int((*v).into())),
            V::ShortShortUInt(v) => Term::Number(Number::Int((*v).into())),
            V::ShortInt(v) => Term::Number(Number::Int((*v).into())),
            V::ShortUInt(v) => Term::Number(Number::Int((*v).into())),
            V::LongInt(v) => Term::Number(Number::Int((*v).into())),
            V::LongUInt(v) => Term::Number(Number::Int((*v).into())),
            V::LongLongInt(v) => Term::Number(Number::Int((*v).into())),
            V::Timestamp(v) => Term::Number(Number::Int((*v).into())),
            // Widening is exact: the float keeps its own value, 0.1f32 stays
            // 0.100000001490116...
            V::Float(v) => Term::Number(Number::Float((*v).into())),
            V::Double(v) => Term::Number(Number::Float(*v)),
            V::ShortString(s) => Term::Binary(s.as_bytes()),
            V::LongString(b) | V::ByteArray(b) => Term::Binary(b),
            V::Boolean(b) => Term::Bool(*b),
            V::DecimalValue(d) => Term::Decimal(*d),
            V::FieldArray(a) if a.is_empty() => Term::EmptyList,
            V::FieldArray(a) => Term::Array(a),
            V::FieldTable(t) if t.is_empty() => Term::EmptyList,
            V::FieldTable(t) => Term::Table(t),
            V::Void => Term::Undefined,
        }
    }

    /// Erlang's `==` on two terms.
    fn equals(self, other: Term<'_>) -> bool {
        match (self, other) {
            (Term::Number(a), Term::Number(b)) => a.equals(b),
            (Term::Binary(a), Term::Binary(b)) => a == b,
            (Term::Bool(a), Term::Bool(b)) => a == b,
            (Term::Decimal(a), Term::Decimal(b)) => a == b,
            (Term::EmptyList, Term::EmptyList) | (Term::Undefined, Term::Undefined) => true,
            (Term::Array(a), Term::Array(b)) => arrays_identical(a, b),
            (Term::Table(a), Term::Table(b)) => tables_identical(a, b),
            _ => false,
        }
    }
}

/// A number of any kind, kept exactly.
#[derive(Debug, Clone, Copy)]
enum Number {
    /// An integer kind or a timestamp: every one fits in `i128`.
    Int(i128),
    /// A `float` (widened exactly) or a `double`.
    Float(f64),
}

impl Number {
    /// Exact numeric equality, as Erlang compares an integer and a float.
    fn equals(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (Number::Float(a), Number::Float(b)) => a == b,
            (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
                // Integers here lie in [-2^63, 2^64). A whole float in
                // [-2^64, 2^64] converts to i128 exactly; NaN and the
                // infinities have no zero fraction.
                f.fract() == 0.0 && (-TWO_64..=TWO_64).contains(&f) && f as i128 == i
            }
        }
    }

    /// The one representative of the numbers [`equals`](Self::equals) calls
    /// equal to this one, for hashing: a whole float in [-2^64, 2^64] (the
    /// integers' range and a little more, `-0.0` included) becomes that
    /// integer; other floats (fractions, larger ones, infinities, NaN) stay
    /// floats, which equal only floats, and only with the same bits (`0.0`
    /// and `-0.0`, the one exception, are whole).
    fn canonical(self) -> Number {
        match self {
            Number::Float(f) if f.fract() == 0.0 && (-TWO_64..=TWO_64).contains(&f) => {
                Number::Int(f as i128)
            }
            n => n,
        }
    }
}

/// 2^64, as a float.
const TWO_64: f64 = 18_446_744_073_709_551_616.0;

/// Structural equality inside an array or nested table: same kind, equal
/// value, no coercion. Short and long strings are one kind (RabbitMQ's
/// `longstr`); floats compare with `==` (so `0.0` = `-0.0`, NaN ≠ NaN).
fn identical(a: &AMQPValue, b: &AMQPValue) -> bool {
    use AMQPValue as V;
    match (a, b) {
        (V::ShortString(_) | V::LongString(_), V::ShortString(_) | V::LongString(_)) => {
            text_bytes(a) == text_bytes(b)
        }
        (V::FieldArray(x), V::FieldArray(y)) => arrays_identical(x, y),
        (V::FieldTable(x), V::FieldTable(y)) => tables_identical(x, y),
        _ => a == b,
    }
}

/// The bytes of a short or long string.
fn text_bytes(value: &AMQPValue) -> &[u8] {
    match value {
        AMQPValue::ShortString(s) => s.as_bytes(),
        AMQPValue::LongString(b) => b,
        _ => &[],
    }
}

/// Arrays equal element by element, in order.
fn arrays_identical(a: &[AMQPValue], b: &[AMQPValue]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| identical(x, y))
}

/// Tables equal entry by entry, in order (RabbitMQ does not sort nested
/// tables).
fn tables_identical(a: &FieldTable, b: &FieldTable) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && identical(va, vb))
}

/// RabbitMQ's name for a value's kind (its field-type atom).
fn kind_name(value: &AMQPValue) -> &'static str {
    use AMQPValue as V;
    match value {
        V::Boolean(_) => "bool",
        V::ShortShortInt(_) => "byte",
        V::ShortShortUInt(_) => "unsignedbyte",
        V::ShortInt(_) => "short",
        V::ShortUInt(_) => "unsignedshort",
        V::LongInt(_) => "signedint",
        V::LongUInt(_) => "unsignedint",
        V::LongLongInt(_) => "long",
        V::Float(_) => "float",
        V::Double(_) => "double",
        V::DecimalValue(_) => "decimal",
        V::ShortString(_) | V::LongString(_) => "longstr",
        V::ByteArray(_) => "binary",
        V::FieldArray(_) => "array",
        V::Timestamp(_) => "timestamp",
        V::FieldTable(_) => "table",
        V::Void => "void",
    }
}

/// A value printed as Erlang's `~p` prints the term RabbitMQ decodes it to,
/// on one line (RabbitMQ's pretty printer wraps long terms at 80 columns).
fn erlang_term(value: &AMQPValue) -> String {
    let mut out = Vec::new();
    write_term(value, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends the `~p` form of the term a value decodes to.
fn write_term(value: &AMQPValue, out: &mut Vec<u8>) {
    use AMQPValue as V;
    let text = match value {
        V::Boolean(b) => b.to_string(),
        V::ShortShortInt(v) => v.to_string(),
        V::ShortShortUInt(v) => v.to_string(),
        V::ShortInt(v) => v.to_string(),
        V::ShortUInt(v) => v.to_string(),
        V::LongInt(v) => v.to_string(),
        V::LongUInt(v) => v.to_string(),
        V::LongLongInt(v) => v.to_string(),
        V::Timestamp(v) => v.to_string(),
        V::Float(v) => erlang_float((*v).into()),
        V::Double(v) => erlang_float(*v),
        V::DecimalValue(d) => format!("{{{},{}}}", d.scale, d.value),
        V::Void => "undefined".to_owned(),
        V::ShortString(_) | V::LongString(_) | V::ByteArray(_) => {
            let bytes = match value {
                V::LongString(b) | V::ByteArray(b) => &b[..],
                _ => text_bytes(value),
            };
            return write_binary(bytes, out);
        }
        V::FieldArray(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                out.extend_from_slice(kind_name(item).as_bytes());
                out.push(b',');
                write_term(item, out);
                out.push(b'}');
            }
            out.push(b']');
            return;
        }
        V::FieldTable(table) => {
            out.push(b'[');
            for (i, (key, item)) in table.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                write_binary(key.as_bytes(), out);
                out.push(b',');
                out.extend_from_slice(kind_name(item).as_bytes());
                out.push(b',');
                write_term(item, out);
                out.push(b'}');
            }
            out.push(b']');
            return;
        }
    };
    out.extend_from_slice(text.as_bytes());
}

/// Appends an Erlang binary as `~p` prints it: `<<"text">>` with escapes when
/// every byte is printable Latin-1, else `<<1,2,3>>`.
fn write_binary(bytes: &[u8], out: &mut Vec<u8>) {
    let printable = |b: u8| matches!(b, b' '..=b'~' | 0xA0..=0xFF | 8..=13 | 27);
    out.extend_from_slice(b"<<");
    if bytes.iter().all(|&b| printable(b)) {
        if !bytes.is_empty() {
            out.push(b'"');
            for &b in bytes {
                let escaped: &[u8] = match b {
                    b'"' => b"\\\"",
                    b'\\' => b"\\\\",
                    b'\n' => b"\\n",
                    b'\r' => b"\\r",
                    b'\t' => b"\\t",
                    11 => b"\\v",
                    8 => b"\\b",
                    12 => b"\\f",
                    27 => b"\\e",
                    _ => {
                        out.push(b);
                        continue;
                    }
                };
                out.extend_from_slice(escaped);
            }
            out.push(b'"');
        }
    } else {
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b.to_string().as_bytes());
        }
    }
    out.extend_from_slice(b">>");
}

/// A float as Erlang prints it (`float_to_list(F, [short])`): the shortest
/// digits that read back exactly, in plain notation unless scientific is
/// strictly shorter, and always scientific from 2^53 up (`1.0e20`, `0.001`,
/// `1.0e-5`, `123456789.0`, `9.007199254740992e15`).
fn erlang_float(f: f64) -> String {
    if !f.is_finite() {
        // Not an Erlang float; RabbitMQ never gets this far with one.
        return f.to_string();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the same shortest round-trip digits: "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let Some((mantissa, exponent)) = sci.split_once('e') else {
        return f.to_string();
    };
    let Ok(exponent) = exponent.parse::<i64>() else {
        return f.to_string();
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if digits.is_empty() || !digits.is_ascii() {
        return f.to_string();
    }
    let len = digits.len() as i64;
    // The value is 0.<digits> * 10^place.
    let place = exponent + 1;
    let (first, rest) = digits.split_at(1);
    let scientific = if rest.is_empty() {
        format!("{first}.0e{exponent}")
    } else {
        format!("{first}.{rest}e{exponent}")
    };
    let plain = if place <= 0 {
        format!("0.{}{digits}", "0".repeat((-place) as usize))
    } else if place >= len {
        format!("{digits}{}.0", "0".repeat((place - len) as usize))
    } else {
        let (int, frac) = digits.split_at(place as usize);
        format!("{int}.{frac}")
    };
    let use_plain = f.abs() < 9_007_199_254_740_992.0 && plain.len() <= scientific.len();
    format!("{sign}{}", if use_plain { plain } else { scientific })
}

/// A headers exchange's bindings, indexed by the (header name, value) pairs
/// they require, so that routing a message costs in proportion to its
/// headers and to the bindings they select, not to the number of bindings.
///
/// See the module docs ("Index") for what is indexed how. Every binding
/// found through the index is verified with its matcher, so the index decides
/// only which bindings are looked at, never whether one matches.
#[derive(Debug)]
pub(crate) struct HeadersIndex<T> {
    /// The bindings, by slot; `None` for a free slot.
    slots: Vec<Option<Slot<T>>>,
    /// Free slots, reused first.
    free: Vec<usize>,
    /// Per header name, the bindings that an argument with that name selects.
    keys: HashMap<Box<str>, KeyPostings, foldhash::fast::RandomState>,
    /// Slots of the bindings checked against every message (see
    /// [`Place::Residual`]).
    residual: Vec<usize>,
    /// Turns a value's canonical form into a fingerprint; seeded per index.
    hasher: foldhash::fast::RandomState,
}

/// One binding in a [`HeadersIndex`].
#[derive(Debug)]
struct Slot<T> {
    binding: HeadersBinding,
    value: T,
    place: Place,
}

/// Where a binding is filed in a [`HeadersIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the residual list, checked against every message: a binding with
    /// no argument to check (`all`: matches everything; `any`: nothing), or
    /// one with a NaN argument, a value equal to nothing (not even itself)
    /// and so no class of equal values to hash.
    Residual,
    /// `all` / `all-with-x`: under one argument (its position in the
    /// binding's arguments), which every matching message must satisfy.
    One(usize),
    /// `any` / `any-with-x`: under every argument, any of which suffices.
    Every,
}

/// The bindings selected by one header name.
#[derive(Debug, Default)]
struct KeyPostings {
    /// Arguments requiring an equal value, by the fingerprint of that value.
    equal: HashMap<u64, Vec<Posting>, foldhash::fast::RandomState>,
    /// Void arguments: the header is present, whatever its value.
    present: Vec<Posting>,
}

impl KeyPostings {
    fn is_empty(&self) -> bool {
        self.equal.is_empty() && self.present.is_empty()
    }
}

/// A binding's argument, filed under that argument's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Posting {
    /// The binding's slot.
    slot: usize,
    /// The argument's position in the binding's arguments.
    arg: usize,
}

impl<T: Clone + Ord> HeadersIndex<T> {
    /// An empty index.
    pub(crate) fn new() -> Self {
        HeadersIndex {
            slots: Vec::new(),
            free: Vec::new(),
            keys: HashMap::default(),
            residual: Vec::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// Adds a binding leading to `value`; returns its slot, the handle for
    /// [`remove`](Self::remove). The same binding may be added any number of
    /// times (each gets its own slot).
    pub(crate) fn insert(&mut self, binding: HeadersBinding, value: T) -> usize {
        let place = self.place_for(&binding);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        match place {
            Place::Residual => self.residual.push(slot),
            Place::One(arg) => self.post(&binding, Posting { slot, arg }),
            Place::Every => {
                for arg in 0..binding.args.len() {
                    self.post(&binding, Posting { slot, arg });
                }
            }
        }
        if let Some(free) = self.slots.get_mut(slot) {
            *free = Some(Slot {
                binding,
                value,
                place,
            });
        }
        slot
    }

    /// Removes the binding in `slot`; returns its value, `None` if the slot
    /// was free.
    pub(crate) fn remove(&mut self, slot: usize) -> Option<T> {
        let s = self.slots.get_mut(slot)?.take()?;
        match s.place {
            Place::Residual => {
                if let Some(at) = self.residual.iter().position(|&r| r == slot) {
                    self.residual.swap_remove(at);
                }
            }
            Place::One(arg) => self.unpost(&s.binding, Posting { slot, arg }),
            Place::Every => {
                for arg in 0..s.binding.args.len() {
                    self.unpost(&s.binding, Posting { slot, arg });
                }
            }
        }
        self.free.push(slot);
        Some(s.value)
    }

    /// Forgets every binding.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.keys.clear();
        self.residual.clear();
    }

    /// Appends the values of the bindings matching a message with these
    /// headers (`None`: no headers property), each value once, sorted.
    pub(crate) fn route_into(&self, headers: Option<&FieldTable>, out: &mut Vec<T>) {
        let start = out.len();
        for &slot in &self.residual {
            if let Some(Some(s)) = self.slots.get(slot) {
                if s.binding.matches(headers) {
                    out.push(s.value.clone());
                }
            }
        }
        if let Some(headers) = headers {
            // Header names are unique in a `FieldTable`, so `value` is what
            // the matcher's own lookup of `name` finds.
            for (name, value) in headers {
                let Some(postings) = self.keys.get(name) else {
                    continue;
                };
                for &p in &postings.present {
                    self.verify(p, headers, value, out);
                }
                if !postings.equal.is_empty() {
                    if let Some(candidates) = postings.equal.get(&self.fingerprint(Term::of(value)))
                    {
                        for &p in candidates {
                            self.verify(p, headers, value, out);
                        }
                    }
                }
            }
        }
        // A value reached through several bindings, or an `any` binding
        // through several of its arguments, is reported once.
        if let Some(tail) = out.get_mut(start..) {
            if tail.len() > 1 {
                tail.sort_unstable();
                let mut w = 1;
                for r in 1..tail.len() {
                    if tail[w - 1] != tail[r] {
                        tail.swap(w, r);
                        w += 1;
                    }
                }
                out.truncate(start + w);
            }
        }
    }

    /// Checks a candidate found through header `value` with the matcher and
    /// appends its value when it matches. For `any` the candidate's own
    /// argument decides (the binding matches when one argument does, and the
    /// others are found through their own postings); for `all` the whole
    /// binding is checked.
    fn verify(&self, p: Posting, headers: &FieldTable, value: &AMQPValue, out: &mut Vec<T>) {
        let Some(Some(s)) = self.slots.get(p.slot) else {
            return;
        };
        let hit = if s.binding.mode.is_any() {
            s.binding.arg_accepts(p.arg, value)
        } else {
            s.binding.matches(Some(headers))
        };
        if hit {
            out.push(s.value.clone());
        }
    }

    /// Where a new binding goes. An `all` binding goes under the argument
    /// with the fewest bindings already filed under the same (name, value)
    /// pair, preferring arguments with a value to void ones (which select
    /// every message carrying the header).
    fn place_for(&self, binding: &HeadersBinding) -> Place {
        let nan = |(_, pattern): &(Box<str>, Pattern)| matches!(pattern, Pattern::Equal(OwnedTerm::Number(Number::Float(f))) if f.is_nan());
        if binding.args.is_empty() || binding.args.iter().any(nan) {
            return Place::Residual;
        }
        if binding.mode.is_any() {
            return Place::Every;
        }
        let load = |(name, pattern): &(Box<str>, Pattern)| {
            let postings = self.keys.get(&**name);
            match pattern {
                Pattern::Present => (1, postings.map_or(0, |k| k.present.len())),
                Pattern::Equal(term) => (
                    0,
                    postings
                        .and_then(|k| k.equal.get(&self.fingerprint(term.as_term())))
                        .map_or(0, Vec::len),
                ),
            }
        };
        let best = (0..binding.args.len())
            .min_by_key(|&i| binding.args.get(i).map(load))
            .unwrap_or(0);
        Place::One(best)
    }

    /// Files argument `p.arg` of `binding` under its name.
    fn post(&mut self, binding: &HeadersBinding, p: Posting) {
        let Some((name, pattern)) = binding.args.get(p.arg) else {
            return;
        };
        let fingerprint = match pattern {
            Pattern::Present => None,
            Pattern::Equal(term) => Some(self.fingerprint(term.as_term())),
        };
        if !self.keys.contains_key(&**name) {
            self.keys.insert(name.clone(), KeyPostings::default());
        }
        let Some(postings) = self.keys.get_mut(&**name) else {
            return;
        };
        match fingerprint {
            None => postings.present.push(p),
            Some(f) => postings.equal.entry(f).or_default().push(p),
        }
    }

    /// Undoes [`post`](Self::post), dropping what becomes empty.
    fn unpost(&mut self, binding: &HeadersBinding, p: Posting) {
        let Some((name, pattern)) = binding.args.get(p.arg) else {
            return;
        };
        let fingerprint = match pattern {
            Pattern::Present => None,
            Pattern::Equal(term) => Some(self.fingerprint(term.as_term())),
        };
        let Some(postings) = self.keys.get_mut(&**name) else {
            return;
        };
        let list = match fingerprint {
            None => Some(&mut postings.present),
            Some(f) => postings.equal.get_mut(&f),
        };
        if let Some(list) = list {
            if let Some(at) = list.iter().position(|&q| q == p) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                if let Some(f) = fingerprint {
                    postings.equal.remove(&f);
                }
            }
        }
        if postings.is_empty() {
            self.keys.remove(&**name);
        }
    }

    /// The fingerprint of a top-level value: values equal under the headers
    /// exchange's rules get the same one.
    fn fingerprint(&self, term: Term<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        hash_term(term, &mut h);
        h.finish()
    }
}

/// Feeds a top-level value's canonical form to `h`, so that two terms that
/// [`Term::equals`] calls equal hash alike: a number by its canonical value
/// (a whole float in the integers' range as that integer, `-0.0` as `0`), a
/// string or byte array by its bytes, an empty array or table as one thing,
/// and a non-empty array or table structurally, as [`identical`] compares it.
fn hash_term<H: Hasher>(term: Term<'_>, h: &mut H) {
    match term {
        Term::Number(n) => match n.canonical() {
            Number::Int(i) => {
                h.write_u8(0);
                h.write_i128(i);
            }
            Number::Float(f) => {
                h.write_u8(1);
                h.write_u64(f.to_bits());
            }
        },
        Term::Binary(b) => {
            h.write_u8(2);
            hash_bytes(b, h);
        }
        Term::Bool(b) => {
            h.write_u8(3);
            h.write_u8(b.into());
        }
        Term::Decimal(d) => {
            h.write_u8(4);
            h.write_u8(d.scale);
            h.write_u32(d.value);
        }
        Term::EmptyList => h.write_u8(5),
        Term::Array(items) => {
            h.write_u8(6);
            hash_items(items, h);
        }
        Term::Table(table) => {
            h.write_u8(7);
            hash_table(table, h);
        }
        Term::Undefined => h.write_u8(8),
    }
}

/// Feeds a value inside an array or nested table to `h`, so that two values
/// [`identical`] calls equal hash alike: its kind (short and long strings
/// being one) and its value, with `-0.0` as `0.0`.
fn hash_identical<H: Hasher>(value: &AMQPValue, h: &mut H) {
    use AMQPValue as V;
    match value {
        V::Boolean(b) => {
            h.write_u8(0);
            h.write_u8((*b).into());
        }
        V::ShortShortInt(v) => {
            h.write_u8(1);
            h.write_i8(*v);
        }
        V::ShortShortUInt(v) => {
            h.write_u8(2);
            h.write_u8(*v);
        }
        V::ShortInt(v) => {
            h.write_u8(3);
            h.write_i16(*v);
        }
        V::ShortUInt(v) => {
            h.write_u8(4);
            h.write_u16(*v);
        }
        V::LongInt(v) => {
            h.write_u8(5);
            h.write_i32(*v);
        }
        V::LongUInt(v) => {
            h.write_u8(6);
            h.write_u32(*v);
        }
        V::LongLongInt(v) => {
            h.write_u8(7);
            h.write_i64(*v);
        }
        V::Float(f) => {
            h.write_u8(8);
            h.write_u32(if *f == 0.0 { 0 } else { f.to_bits() });
        }
        V::Double(f) => {
            h.write_u8(9);
            h.write_u64(if *f == 0.0 { 0 } else { f.to_bits() });
        }
        V::DecimalValue(d) => {
            h.write_u8(10);
            h.write_u8(d.scale);
            h.write_u32(d.value);
        }
        V::ShortString(_) | V::LongString(_) => {
            h.write_u8(11);
            hash_bytes(text_bytes(value), h);
        }
        V::ByteArray(b) => {
            h.write_u8(12);
            hash_bytes(b, h);
        }
        V::FieldArray(items) => {
            h.write_u8(13);
            hash_items(items, h);
        }
        V::Timestamp(v) => {
            h.write_u8(14);
            h.write_u64(*v);
        }
        V::FieldTable(table) => {
            h.write_u8(15);
            hash_table(table, h);
        }
        V::Void => h.write_u8(16),
    }
}

/// Bytes with their length, so that consecutive fields cannot run together.
fn hash_bytes<H: Hasher>(bytes: &[u8], h: &mut H) {
    h.write_usize(bytes.len());
    h.write(bytes);
}

/// An array's elements in order (see [`arrays_identical`]).
fn hash_items<H: Hasher>(items: &[AMQPValue], h: &mut H) {
    h.write_usize(items.len());
    for item in items {
        hash_identical(item, h);
    }
}

/// A table's entries in order (see [`tables_identical`]).
fn hash_table<H: Hasher>(table: &FieldTable, h: &mut H) {
    h.write_usize(table.len());
    for (key, item) in table {
        hash_bytes(key.as_bytes(), h);
        hash_identical(item, h);
    }
}

#[cfg(test)]
mod tests {
    //! Every case is marked with what RabbitMQ 3.10.8 did with the same typed
    //! values (see `tests/rabbitmq/headers_semantics.py`): "RabbitMQ: routed",
    //! "RabbitMQ: not routed", or the error text it sent.

    use super::*;
    use AMQPValue as V;

    pub(super) fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        entries.into_iter().collect()
    }

    pub(super) fn binding(entries: Vec<(&str, AMQPValue)>) -> HeadersBinding {
        match HeadersBinding::compile(&table(entries)) {
            Ok(b) => b,
            Err(e) => panic!("binding refused: {e}"),
        }
    }

    pub(super) fn s(text: &str) -> AMQPValue {
        V::from(text)
    }

    fn bytes(text: &str) -> AMQPValue {
        V::ByteArray(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn dec(scale: u8, value: u32) -> AMQPValue {
        V::DecimalValue(DecimalValue { scale, value })
    }

    /// Binding `{a: bound}` against headers `{a: sent}`.
    fn a_matches(bound: AMQPValue, sent: AMQPValue) -> bool {
        binding(vec![("a", bound)]).matches(Some(&table(vec![("a", sent)])))
    }

    fn refused(entries: Vec<(&str, AMQPValue)>) -> Error {
        match HeadersBinding::compile(&table(entries)) {
            Ok(b) => panic!("binding accepted: {b:?}"),
            Err(e) => e,
        }
    }

    // ---- x-match modes and the empty pattern ----

    #[test]
    fn all_without_arguments_matches_everything() {
        // RabbitMQ: routed (no x-match, no arguments, no headers).
        assert!(binding(vec![]).matches(None));
        // RabbitMQ: routed (all, no headers / empty headers).
        let all = binding(vec![("x-match", s("all"))]);
        assert!(all.matches(None));
        assert!(all.matches(Some(&FieldTable::new())));
        assert!(all.matches(Some(&table(vec![("z", V::LongInt(1))]))));
    }

    #[test]
    fn any_without_arguments_matches_nothing() {
        let any = binding(vec![("x-match", s("any"))]);
        // RabbitMQ: not routed (no headers; headers {a: 1}).
        assert!(!any.matches(None));
        assert!(!any.matches(Some(&table(vec![("a", V::LongInt(1))]))));
        assert!(!any.matches(Some(&FieldTable::new())));
    }

    #[test]
    fn missing_x_match_means_all() {
        let b = binding(vec![("a", V::LongInt(1)), ("b", V::LongInt(2))]);
        // RabbitMQ: not routed ({a: 1} against {a: 1, b: 2}).
        assert!(!b.matches(Some(&table(vec![("a", V::LongInt(1))]))));
        // RabbitMQ: routed ({b: 2, a: 1}, order of headers irrelevant).
        let both = table(vec![("b", V::LongInt(2)), ("a", V::LongInt(1))]);
        assert!(b.matches(Some(&both)));
        // RabbitMQ: routed (a=1 against a=1).
        assert!(
            binding(vec![("a", V::LongInt(1))]).matches(Some(&table(vec![("a", V::LongInt(1))])))
        );
    }

    #[test]
    fn all_needs_every_argument() {
        let b = binding(vec![("x-match", s("all")), ("a", V::LongInt(1))]);
        // RabbitMQ: not routed ({a: 2}); not routed (no headers).
        assert!(!b.matches(Some(&table(vec![("a", V::LongInt(2))]))));
        assert!(!b.matches(None));
        // RabbitMQ: routed (extra headers are fine).
        let extra = table(vec![("a", V::LongInt(1)), ("c", s("z"))]);
        assert!(b.matches(Some(&extra)));
        // RabbitMQ: routed (binding {b: 1, a: 1} in unsorted order).
        let unsorted = binding(vec![
            ("x-match", s("all")),
            ("b", V::LongInt(1)),
            ("a", V::LongInt(1)),
        ]);
        let sorted = table(vec![("a", V::LongInt(1)), ("b", V::LongInt(1))]);
        assert!(unsorted.matches(Some(&sorted)));
    }

    #[test]
    fn any_needs_one_argument() {
        let b = binding(vec![
            ("x-match", s("any")),
            ("a", V::LongInt(1)),
            ("b", V::LongInt(2)),
        ]);
        // RabbitMQ: routed ({a: 1}); routed ({a: 9, b: 2}).
        assert!(b.matches(Some(&table(vec![("a", V::LongInt(1))]))));
        assert!(b.matches(Some(&table(vec![
            ("a", V::LongInt(9)),
            ("b", V::LongInt(2))
        ]))));
        // RabbitMQ: not routed ({c: 1}); not routed (no headers).
        assert!(!b.matches(Some(&table(vec![("c", V::LongInt(1))]))));
        assert!(!b.matches(None));
    }

    // ---- x- arguments ----

    #[test]
    fn all_and_any_ignore_x_arguments() {
        let all = binding(vec![("x-match", s("all")), ("x-foo", s("bar"))]);
        // RabbitMQ: routed (x-foo ignored, no headers).
        assert!(all.matches(None));
        let all_a = binding(vec![
            ("x-match", s("all")),
            ("x-foo", s("bar")),
            ("a", V::LongInt(1)),
        ]);
        // RabbitMQ: routed ({a: 1}, no x-foo header).
        assert!(all_a.matches(Some(&table(vec![("a", V::LongInt(1))]))));
        let any = binding(vec![("x-match", s("any")), ("x-foo", s("bar"))]);
        // RabbitMQ: not routed (any with only x-foo has nothing to match, even
        // with the header x-foo=bar present).
        assert!(!any.matches(Some(&table(vec![("x-foo", s("bar"))]))));
    }

    #[test]
    fn with_x_modes_check_x_arguments() {
        let all = binding(vec![("x-match", s("all-with-x")), ("x-foo", s("bar"))]);
        // RabbitMQ: routed ({x-foo: bar}); not routed ({x-foo: baz}); not
        // routed (no headers).
        assert!(all.matches(Some(&table(vec![("x-foo", s("bar"))]))));
        assert!(!all.matches(Some(&table(vec![("x-foo", s("baz"))]))));
        assert!(!all.matches(None));
        let any = binding(vec![
            ("x-match", s("any-with-x")),
            ("x-foo", s("bar")),
            ("a", V::LongInt(1)),
        ]);
        // RabbitMQ: routed ({x-foo: bar}).
        assert!(any.matches(Some(&table(vec![("x-foo", s("bar"))]))));
        let any_x = binding(vec![("x-match", s("any-with-x")), ("x-foo", s("bar"))]);
        // RabbitMQ: not routed ({a: 1}).
        assert!(!any_x.matches(Some(&table(vec![("a", V::LongInt(1))]))));
    }

    #[test]
    fn x_match_is_never_an_argument() {
        // RabbitMQ: routed (all-with-x alone, no headers: x-match not required
        // as a header).
        assert!(binding(vec![("x-match", s("all-with-x"))]).matches(None));
        // RabbitMQ: routed (all-with-x, a=1 against {a: 1}).
        let b = binding(vec![("x-match", s("all-with-x")), ("a", V::LongInt(1))]);
        assert!(b.matches(Some(&table(vec![("a", V::LongInt(1))]))));
        // RabbitMQ: not routed (any-with-x alone against a header
        // x-match=any-with-x: x-match is no argument to hit).
        let any = binding(vec![("x-match", s("any-with-x"))]);
        assert!(!any.matches(Some(&table(vec![("x-match", s("any-with-x"))]))));
    }

    // ---- refused x-match values ----

    #[test]
    fn unknown_x_match_strings_are_refused() {
        // RabbitMQ: 406 with these texts.
        for (value, shown) in [("foo", "<<\"foo\">>"), ("ALL", "<<\"ALL\">>"), ("", "<<>>")] {
            let e = refused(vec![("x-match", s(value))]);
            assert_eq!(e.reply_code(), 406);
            assert_eq!(
                e.reply_text(),
                format!(
                    "PRECONDITION_FAILED - Invalid x-match field value {shown}; \
                     expected all, any, all-with-x, or any-with-x"
                )
            );
        }
        // RabbitMQ's ~p forms for odd bytes (observed with x-match values
        // "a\"b\\c", "a\nb", "\x1b", "\x07", "a\x7fb", "\u{85}", "é").
        for (value, shown) in [
            ("a\"b\\c", "<<\"a\\\"b\\\\c\">>"),
            ("a\nb", "<<\"a\\nb\">>"),
            ("a\tb", "<<\"a\\tb\">>"),
            ("\x1b", "<<\"\\e\">>"),
            ("\x00\x01", "<<0,1>>"),
            ("\x07", "<<7>>"),
            ("a\x7fb", "<<97,127,98>>"),
            ("\u{85}", "<<194,133>>"),
            ("é", "<<\"é\">>"),
        ] {
            let e = refused(vec![("x-match", s(value))]);
            assert_eq!(
                e.reply_text(),
                format!(
                    "PRECONDITION_FAILED - Invalid x-match field value {shown}; \
                     expected all, any, all-with-x, or any-with-x"
                )
            );
        }
    }

    #[test]
    fn non_string_x_match_is_refused() {
        // RabbitMQ: 406 with these texts.
        let cases: Vec<(AMQPValue, &str)> = vec![
            (V::LongInt(1), "signedint (value 1)"),
            (V::LongLongInt(1), "long (value 1)"),
            (V::ShortShortInt(-1), "byte (value -1)"),
            (V::Timestamp(5), "timestamp (value 5)"),
            (bytes("all"), "binary (value <<\"all\">>)"),
            (V::Boolean(true), "bool (value true)"),
            (V::Void, "void (value undefined)"),
            (V::Double(1.5), "double (value 1.5)"),
            (V::Double(1e20), "double (value 1.0e20)"),
            (V::Float(0.1), "float (value 0.10000000149011612)"),
            (dec(2, 150), "decimal (value {2,150})"),
            (
                V::FieldArray(vec![s("all")]),
                "array (value [{longstr,<<\"all\">>}])",
            ),
            (
                V::FieldTable(table(vec![("k", V::LongInt(1))])),
                "table (value [{<<\"k\">>,signedint,1}])",
            ),
        ];
        for (value, shown) in cases {
            let e = refused(vec![("x-match", value)]);
            assert_eq!(e.reply_code(), 406);
            assert_eq!(
                e.reply_text(),
                format!(
                    "PRECONDITION_FAILED - Invalid x-match field type {shown}; expected longstr"
                )
            );
        }
    }

    #[test]
    fn non_utf8_x_match_is_refused_without_panic() {
        // RabbitMQ: 406, printing the raw bytes (<<"\xe9">>); the text here is
        // a Rust string, so a lone Latin-1 byte shows as U+FFFD.
        let e = refused(vec![(
            "x-match",
            V::LongString(Bytes::from_static(b"\xe9")),
        )]);
        assert_eq!(e.reply_code(), 406);
        assert!(e.reply_text().contains("field value <<\"\u{fffd}\">>"));
        let e = refused(vec![("x-match", V::ByteArray(Bytes::from_static(b"\xe9")))]);
        assert!(e.reply_text().contains("field type binary"));
    }

    #[test]
    fn short_string_x_match_is_text() {
        // RabbitMQ has no short-string kind; warren's ShortString is text.
        let b = binding(vec![
            ("x-match", V::ShortString("any".into())),
            ("a", V::LongInt(1)),
        ]);
        assert!(b.matches(Some(&table(vec![("a", V::LongInt(1))]))));
        assert!(!b.matches(None));
        let e = refused(vec![("x-match", V::ShortString("nope".into()))]);
        assert!(e.reply_text().contains("field value <<\"nope\">>"));
    }

    #[test]
    fn erlang_float_forms() {
        // io_lib:format("~p", [F]) on OTP 25.
        for (f, shown) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-1.0, "-1.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (100.0, "100.0"),
            (120.0, "120.0"),
            (1200.0, "1.2e3"),
            (1.0e5, "1.0e5"),
            (123000.0, "1.23e5"),
            (1.0e15, "1.0e15"),
            (123456789.0, "123456789.0"),
            (1234567890123456.0, "1234567890123456.0"),
            (9007199254740991.0, "9007199254740991.0"),
            (9007199254740992.0, "9.007199254740992e15"),
            (12345678901234567.0, "1.2345678901234568e16"),
            (18446744073709551616.0, "1.8446744073709552e19"),
            (1.0e100, "1.0e100"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (1.0e-5, "1.0e-5"),
            (1.2e-4, "1.2e-4"),
            (0.00123, "0.00123"),
            (1.2345e-5, "1.2345e-5"),
            (-2.5e-5, "-2.5e-5"),
            (5.0e-324, "5.0e-324"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (999999999999999.9, "999999999999999.9"),
            (0.10000000149011612, "0.10000000149011612"),
        ] {
            assert_eq!(erlang_float(f), shown, "{f:e}");
        }
    }

    // ---- void ----

    #[test]
    fn void_argument_means_present() {
        // RabbitMQ: routed for {a: "anything"}, {a: void}, {a: int 0}.
        assert!(a_matches(V::Void, s("anything")));
        assert!(a_matches(V::Void, V::Void));
        assert!(a_matches(V::Void, V::LongInt(0)));
        let b = binding(vec![("a", V::Void)]);
        // RabbitMQ: not routed ({b: 1}; no headers).
        assert!(!b.matches(Some(&table(vec![("b", V::LongInt(1))]))));
        assert!(!b.matches(None));
        // RabbitMQ: routed (any, a=void, b=1 against {a: timestamp 5}).
        let any = binding(vec![
            ("x-match", s("any")),
            ("a", V::Void),
            ("b", V::LongInt(1)),
        ]);
        assert!(any.matches(Some(&table(vec![("a", V::Timestamp(5))]))));
    }

    #[test]
    fn void_header_matches_only_void_argument() {
        // RabbitMQ: not routed (a=int 1 against {a: void}; a="" against {a: void}).
        assert!(!a_matches(V::LongInt(1), V::Void));
        assert!(!a_matches(s(""), V::Void));
        assert!(values_equal(&V::Void, &V::Void));
    }

    // ---- numbers ----

    #[test]
    fn integers_compare_across_kinds() {
        // RabbitMQ: routed, binding int 1 against each of these.
        for sent in [
            V::LongLongInt(1),
            V::ShortShortInt(1),
            V::ShortShortUInt(1),
            V::ShortInt(1),
            V::ShortUInt(1),
            V::LongUInt(1),
            V::Timestamp(1),
            V::Double(1.0),
            V::Float(1.0),
        ] {
            assert!(a_matches(V::LongInt(1), sent.clone()), "{sent:?}");
        }
        // RabbitMQ: routed (double 1.0 vs timestamp 1; timestamp 1 vs long 1;
        // byte -1 vs long -1).
        assert!(a_matches(V::Double(1.0), V::Timestamp(1)));
        assert!(a_matches(V::Timestamp(1), V::LongLongInt(1)));
        assert!(a_matches(V::ShortShortInt(-1), V::LongLongInt(-1)));
        // RabbitMQ: not routed (unsigned byte 255 vs byte -1; int 1 vs 1.5).
        assert!(!a_matches(V::ShortShortUInt(255), V::ShortShortInt(-1)));
        assert!(!a_matches(V::LongInt(1), V::Double(1.5)));
    }

    #[test]
    fn numbers_compare_exactly() {
        // RabbitMQ: routed (0.0 vs -0.0; int 0 vs -0.0).
        assert!(a_matches(V::Double(0.0), V::Double(-0.0)));
        assert!(a_matches(V::LongInt(0), V::Double(-0.0)));
        // RabbitMQ: not routed (long 2^53+1 vs double 2^53); routed (2^53 vs 2^53).
        assert!(!a_matches(
            V::LongLongInt((1 << 53) + 1),
            V::Double(9007199254740992.0)
        ));
        assert!(a_matches(
            V::LongLongInt(1 << 53),
            V::Double(9007199254740992.0)
        ));
        // RabbitMQ: not routed (timestamp 2^64-1 vs long -1); routed (itself);
        // not routed (vs double 2^64).
        assert!(!a_matches(V::Timestamp(u64::MAX), V::LongLongInt(-1)));
        assert!(a_matches(V::Timestamp(u64::MAX), V::Timestamp(u64::MAX)));
        assert!(!a_matches(
            V::Timestamp(u64::MAX),
            V::Double(18446744073709551616.0)
        ));
        // Not sent to RabbitMQ (it cannot hold them): NaN and infinities.
        assert!(!a_matches(V::Double(f64::NAN), V::Double(f64::NAN)));
        assert!(!a_matches(
            V::LongLongInt(i64::MAX),
            V::Double(f64::INFINITY)
        ));
        assert!(a_matches(
            V::Double(f64::INFINITY),
            V::Double(f64::INFINITY)
        ));
        // Largest and smallest integers against floats near them.
        assert!(a_matches(
            V::LongLongInt(i64::MIN),
            V::Double(-9223372036854775808.0)
        ));
        assert!(!a_matches(
            V::LongLongInt(i64::MAX),
            V::Double(9223372036854775808.0)
        ));
    }

    #[test]
    fn float32_keeps_its_exact_value() {
        // RabbitMQ: not routed (float 0.1 vs double 0.1).
        assert!(!a_matches(V::Float(0.1), V::Double(0.1)));
        // RabbitMQ: routed (float 0.1 vs float 0.1; double 0.1 vs double 0.1;
        // float 0.5 vs double 0.5; float 0.1 vs the double nearest to it).
        assert!(a_matches(V::Float(0.1), V::Float(0.1)));
        assert!(a_matches(V::Double(0.1), V::Double(0.1)));
        assert!(a_matches(V::Float(0.5), V::Double(0.5)));
        assert!(a_matches(V::Float(0.1), V::Double(f64::from(0.1f32))));
    }

    // ---- other kinds ----

    #[test]
    fn bools_are_not_numbers() {
        // RabbitMQ: not routed (true vs int 1; false vs int 0; true vs false).
        assert!(!a_matches(V::Boolean(true), V::LongInt(1)));
        assert!(!a_matches(V::Boolean(false), V::LongInt(0)));
        assert!(!a_matches(V::Boolean(true), V::Boolean(false)));
        // RabbitMQ: routed (true vs true).
        assert!(a_matches(V::Boolean(true), V::Boolean(true)));
    }

    #[test]
    fn decimals_equal_only_the_same_decimal() {
        // RabbitMQ: not routed (D(0,1) vs int 1; D(1,10) vs double 1.0;
        // D(1,10) vs D(0,1)).
        assert!(!a_matches(dec(0, 1), V::LongInt(1)));
        assert!(!a_matches(dec(1, 10), V::Double(1.0)));
        assert!(!a_matches(dec(1, 10), dec(0, 1)));
        // RabbitMQ: routed (D(1,10) vs D(1,10)).
        assert!(a_matches(dec(1, 10), dec(1, 10)));
    }

    #[test]
    fn strings_and_byte_arrays_compare_by_bytes() {
        // RabbitMQ: routed (string "a" vs bytes "a", both ways; bytes vs
        // bytes; "" vs "").
        assert!(a_matches(s("a"), bytes("a")));
        assert!(a_matches(bytes("a"), s("a")));
        assert!(a_matches(bytes("a"), bytes("a")));
        assert!(a_matches(s(""), s("")));
        // RabbitMQ: not routed ("a" vs "A"; "1" vs int 1).
        assert!(!a_matches(s("a"), s("A")));
        assert!(!a_matches(s("1"), V::LongInt(1)));
        // Short strings are strings too (RabbitMQ has no short-string kind).
        assert!(a_matches(V::ShortString("a".into()), s("a")));
        assert!(a_matches(s("a"), V::ShortString("a".into())));
        assert!(a_matches(V::ShortString("a".into()), bytes("a")));
        assert!(!a_matches(V::ShortString("1".into()), V::LongInt(1)));
    }

    // ---- arrays and nested tables ----

    #[test]
    fn arrays_compare_structurally() {
        let bound = || V::FieldArray(vec![V::LongInt(1), s("a")]);
        // RabbitMQ: routed ([int 1, "a"] vs the same).
        assert!(a_matches(
            bound(),
            V::FieldArray(vec![V::LongInt(1), s("a")])
        ));
        // RabbitMQ: not routed ([long 1, "a"]; [double 1.0, "a"];
        // [int 1, bytes "a"]; ["a", int 1]; [int 1]).
        assert!(!a_matches(
            bound(),
            V::FieldArray(vec![V::LongLongInt(1), s("a")])
        ));
        assert!(!a_matches(
            bound(),
            V::FieldArray(vec![V::Double(1.0), s("a")])
        ));
        assert!(!a_matches(
            bound(),
            V::FieldArray(vec![V::LongInt(1), bytes("a")])
        ));
        assert!(!a_matches(
            bound(),
            V::FieldArray(vec![s("a"), V::LongInt(1)])
        ));
        assert!(!a_matches(bound(), V::FieldArray(vec![V::LongInt(1)])));
        // RabbitMQ: routed ([void] vs [void]); not routed ([void] vs [int 1]).
        assert!(a_matches(
            V::FieldArray(vec![V::Void]),
            V::FieldArray(vec![V::Void])
        ));
        assert!(!a_matches(
            V::FieldArray(vec![V::Void]),
            V::FieldArray(vec![V::LongInt(1)])
        ));
        // RabbitMQ: routed ([0.0] vs [-0.0]; [[int 1]] vs [[int 1]]; [] vs []).
        assert!(a_matches(
            V::FieldArray(vec![V::Double(0.0)]),
            V::FieldArray(vec![V::Double(-0.0)])
        ));
        let nested = || V::FieldArray(vec![V::FieldArray(vec![V::LongInt(1)])]);
        assert!(a_matches(nested(), nested()));
        assert!(a_matches(V::FieldArray(vec![]), V::FieldArray(vec![])));
        // RabbitMQ: not routed (int 1 vs [int 1]).
        assert!(!a_matches(
            V::LongInt(1),
            V::FieldArray(vec![V::LongInt(1)])
        ));
        // Short and long strings are one kind inside (RabbitMQ's longstr).
        assert!(a_matches(
            V::FieldArray(vec![V::ShortString("a".into())]),
            V::FieldArray(vec![s("a")])
        ));
    }

    #[test]
    fn nested_tables_compare_structurally() {
        let ab = || V::FieldTable(table(vec![("a", V::LongInt(1)), ("b", V::LongInt(2))]));
        // RabbitMQ: routed ({a: 1, b: 2} vs the same).
        assert!(a_matches(ab(), ab()));
        // RabbitMQ: not routed ({b: 2, a: 1}: order matters inside).
        let ba = V::FieldTable(table(vec![("b", V::LongInt(2)), ("a", V::LongInt(1))]));
        assert!(!a_matches(ab(), ba));
        // RabbitMQ: not routed ({a: int 1} vs {a: long 1}; {a: void} vs
        // {a: int 1}; {a: 1} vs {a: 1, b: 2}).
        let a_int = || V::FieldTable(table(vec![("a", V::LongInt(1))]));
        assert!(!a_matches(
            a_int(),
            V::FieldTable(table(vec![("a", V::LongLongInt(1))]))
        ));
        let a_void = V::FieldTable(table(vec![("a", V::Void)]));
        assert!(!a_matches(a_void, a_int()));
        assert!(!a_matches(a_int(), ab()));
        // RabbitMQ: routed ({} vs {}).
        assert!(a_matches(
            V::FieldTable(FieldTable::new()),
            V::FieldTable(FieldTable::new())
        ));
    }

    #[test]
    fn empty_array_equals_empty_table() {
        // RabbitMQ: routed ([] vs {}; {} vs []), both are Erlang's [].
        assert!(a_matches(
            V::FieldArray(vec![]),
            V::FieldTable(FieldTable::new())
        ));
        assert!(a_matches(
            V::FieldTable(FieldTable::new()),
            V::FieldArray(vec![])
        ));
        // RabbitMQ: not routed ([] vs "").
        assert!(!a_matches(V::FieldArray(vec![]), s("")));
        // Only when empty: [int 1] is no table.
        let one = V::FieldTable(table(vec![("a", V::LongInt(1))]));
        assert!(!a_matches(V::FieldArray(vec![V::LongInt(1)]), one));
    }

    #[test]
    fn values_equal_is_symmetric_on_samples() {
        let samples = [
            V::LongInt(1),
            V::Timestamp(1),
            V::Double(1.0),
            V::Float(0.1),
            V::Double(0.1),
            V::Boolean(true),
            dec(0, 1),
            s("a"),
            bytes("a"),
            V::ShortString("a".into()),
            V::FieldArray(vec![]),
            V::FieldTable(FieldTable::new()),
            V::FieldArray(vec![V::LongInt(1)]),
            V::Void,
        ];
        for x in &samples {
            assert!(values_equal(x, x), "{x:?}");
            for y in &samples {
                assert_eq!(values_equal(x, y), values_equal(y, x), "{x:?} {y:?}");
            }
        }
    }
}

#[cfg(test)]
mod index_tests {
    //! [`HeadersIndex`] against the plain linear scan of the matchers, and
    //! the fingerprints against [`values_equal`].

    use proptest::prelude::*;

    use super::*;
    use AMQPValue as V;

    // The case helpers of the semantics tests.
    use super::tests::{binding, s, table};

    fn short(text: &str) -> AMQPValue {
        V::ShortString(text.into())
    }

    fn bytes(text: &str) -> AMQPValue {
        V::ByteArray(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn dec(scale: u8, value: u32) -> AMQPValue {
        V::DecimalValue(DecimalValue { scale, value })
    }

    /// Values with the tricky equalities: numbers across kinds (and the
    /// near misses), strings / byte arrays / short strings, bools against
    /// numbers, decimals, empty array = empty table, arrays and tables whose
    /// elements differ only by kind or by the sign of zero, NaN, void.
    fn pool() -> Vec<AMQPValue> {
        let two_53 = 9_007_199_254_740_992.0;
        vec![
            V::LongInt(1),
            V::LongLongInt(1),
            V::ShortShortUInt(1),
            V::Timestamp(1),
            V::Double(1.0),
            V::Float(1.0),
            V::LongInt(0),
            V::Double(0.0),
            V::Double(-0.0),
            V::Float(-0.0),
            V::Double(0.5),
            V::Float(0.5),
            V::Float(0.1),
            V::Double(0.1),
            V::Double(f64::from(0.1f32)),
            V::LongLongInt(-1),
            V::ShortShortInt(-1),
            V::ShortShortUInt(255),
            V::Timestamp(u64::MAX),
            V::Double(18_446_744_073_709_551_616.0),
            V::Double(-18_446_744_073_709_551_616.0),
            V::LongLongInt(i64::MIN),
            V::Double(-9_223_372_036_854_775_808.0),
            V::LongLongInt(1 << 53),
            V::LongLongInt((1 << 53) + 1),
            V::Double(two_53),
            V::Double(1e20),
            V::Double(f64::INFINITY),
            V::Float(f32::INFINITY),
            V::Double(f64::NAN),
            V::Boolean(true),
            V::Boolean(false),
            dec(0, 1),
            dec(1, 10),
            s("a"),
            bytes("a"),
            short("a"),
            s("1"),
            s(""),
            bytes(""),
            V::FieldArray(vec![]),
            V::FieldTable(FieldTable::new()),
            V::FieldArray(vec![V::LongInt(1)]),
            V::FieldArray(vec![V::LongLongInt(1)]),
            V::FieldArray(vec![s("a")]),
            V::FieldArray(vec![short("a")]),
            V::FieldArray(vec![bytes("a")]),
            V::FieldArray(vec![V::Double(0.0)]),
            V::FieldArray(vec![V::Double(-0.0)]),
            V::FieldArray(vec![V::Double(f64::NAN)]),
            V::FieldArray(vec![V::Void]),
            V::FieldArray(vec![V::FieldArray(vec![])]),
            V::FieldArray(vec![V::FieldTable(FieldTable::new())]),
            V::FieldArray(vec![V::LongInt(1), s("a")]),
            V::FieldArray(vec![s("a"), V::LongInt(1)]),
            V::FieldTable(table(vec![("a", V::LongInt(1))])),
            V::FieldTable(table(vec![("a", V::LongLongInt(1))])),
            V::FieldTable(table(vec![("a", s("x"))])),
            V::FieldTable(table(vec![("a", short("x"))])),
            V::FieldTable(table(vec![("a", V::Float(-0.0))])),
            V::FieldTable(table(vec![("a", V::Float(0.0))])),
            V::FieldTable(table(vec![("a", V::LongInt(1)), ("b", V::LongInt(2))])),
            V::FieldTable(table(vec![("b", V::LongInt(2)), ("a", V::LongInt(1))])),
            V::Void,
        ]
    }

    fn index() -> HeadersIndex<usize> {
        HeadersIndex::new()
    }

    fn fingerprint(index: &HeadersIndex<usize>, value: &AMQPValue) -> u64 {
        index.fingerprint(Term::of(value))
    }

    /// The index's answer, checking that it only appends, once per value,
    /// sorted.
    fn routed(index: &HeadersIndex<usize>, headers: Option<&FieldTable>) -> Vec<usize> {
        let mut out = vec![usize::MAX];
        index.route_into(headers, &mut out);
        assert_eq!(out.first(), Some(&usize::MAX), "overwrote what was there");
        let got = out.split_off(1);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        got
    }

    #[test]
    fn equal_values_share_a_fingerprint() {
        let pool = pool();
        let ix = index();
        let mut equal_pairs = 0;
        for a in &pool {
            for b in &pool {
                if values_equal(a, b) {
                    equal_pairs += 1;
                    assert_eq!(fingerprint(&ix, a), fingerprint(&ix, b), "{a:?} = {b:?}");
                }
            }
        }
        // The pool holds many equal pairs across kinds, not only x = x.
        assert!(equal_pairs > pool.len() + 40, "{equal_pairs}");
    }

    #[test]
    fn fingerprints_separate_the_near_misses() {
        // Not required for correctness (a shared fingerprint only adds a
        // candidate), but the index would be useless if these collided.
        let ix = index();
        for (a, b) in [
            (V::LongInt(1), V::Boolean(true)),
            (V::LongInt(1), s("1")),
            (V::Float(0.1), V::Double(0.1)),
            (dec(0, 1), V::LongInt(1)),
            (dec(1, 10), dec(0, 1)),
            (s("a"), s("A")),
            (
                V::FieldArray(vec![V::LongInt(1)]),
                V::FieldArray(vec![V::LongLongInt(1)]),
            ),
            (V::FieldArray(vec![s("a")]), V::FieldArray(vec![bytes("a")])),
            (
                V::LongLongInt((1 << 53) + 1),
                V::Double(9_007_199_254_740_992.0),
            ),
        ] {
            assert!(!values_equal(&a, &b));
            assert_ne!(fingerprint(&ix, &a), fingerprint(&ix, &b), "{a:?} {b:?}");
        }
    }

    #[test]
    fn bindings_without_arguments_are_residual() {
        let mut ix = index();
        let all = ix.insert(binding(vec![]), 1);
        // Only `x-` arguments: `all` ignores them all.
        let all_x = ix.insert(binding(vec![("x-k", s("v"))]), 2);
        let any = ix.insert(binding(vec![("x-match", s("any"))]), 3);
        let any_x = ix.insert(binding(vec![("x-match", s("any")), ("x-k", s("v"))]), 4);
        assert_eq!(ix.residual.len(), 4);
        assert!(ix.keys.is_empty());
        // `all` with nothing to check matches every message, even one without
        // headers; `any` with nothing matches none.
        assert_eq!(routed(&ix, None), [1, 2]);
        assert_eq!(routed(&ix, Some(&table(vec![("x-k", s("v"))]))), [1, 2]);
        for slot in [all, all_x, any, any_x] {
            assert!(ix.remove(slot).is_some());
        }
        assert!(ix.residual.is_empty());
        assert_eq!(routed(&ix, None), Vec::<usize>::new());
    }

    #[test]
    fn nan_arguments_are_residual() {
        let mut ix = index();
        ix.insert(binding(vec![("a", V::Double(f64::NAN))]), 1);
        let any = binding(vec![
            ("x-match", s("any")),
            ("a", V::Double(f64::NAN)),
            ("b", V::LongInt(1)),
        ]);
        ix.insert(any, 2);
        assert_eq!(ix.residual.len(), 2);
        assert!(ix.keys.is_empty());
        let nan = table(vec![("a", V::Double(f64::NAN)), ("b", V::Double(1.0))]);
        assert_eq!(routed(&ix, Some(&nan)), [2]);
        assert_eq!(
            routed(&ix, Some(&table(vec![("a", V::Double(f64::NAN))]))),
            []
        );
    }

    #[test]
    fn x_arguments_are_indexed_only_with_x() {
        let mut ix = index();
        ix.insert(binding(vec![("x-k", s("v")), ("a", V::LongInt(1))]), 1);
        ix.insert(
            binding(vec![("x-match", s("all-with-x")), ("x-k", s("v"))]),
            2,
        );
        ix.insert(
            binding(vec![
                ("x-match", s("any-with-x")),
                ("x-k", s("v")),
                ("a", V::Void),
            ]),
            3,
        );
        assert!(ix.residual.is_empty());
        assert_eq!(
            routed(&ix, Some(&table(vec![("a", V::Timestamp(1))]))),
            [1, 3]
        );
        assert_eq!(routed(&ix, Some(&table(vec![("x-k", bytes("v"))]))), [2, 3]);
        assert_eq!(
            routed(
                &ix,
                Some(&table(vec![("x-k", s("v")), ("a", V::Double(1.0))]))
            ),
            [1, 2, 3]
        );
        // `x-match` in the headers is just a header.
        assert_eq!(routed(&ix, Some(&table(vec![("x-match", s("v"))]))), []);
    }

    #[test]
    fn void_arguments_select_by_name() {
        let mut ix = index();
        ix.insert(binding(vec![("a", V::Void)]), 1);
        ix.insert(binding(vec![("a", V::Void), ("b", V::Void)]), 2);
        // An argument with a value is preferred to a void one.
        ix.insert(binding(vec![("a", V::Void), ("b", V::LongInt(1))]), 3);
        assert!(ix.keys.get("b").is_some_and(|k| k.equal.len() == 1));
        assert_eq!(routed(&ix, Some(&table(vec![("a", V::Void)]))), [1]);
        assert_eq!(
            routed(&ix, Some(&table(vec![("b", V::Double(1.0)), ("a", s(""))]))),
            [1, 2, 3]
        );
        assert_eq!(
            routed(&ix, Some(&table(vec![("b", V::Void), ("a", s(""))]))),
            [1, 2]
        );
    }

    #[test]
    fn all_bindings_spread_over_their_arguments() {
        // {f: i % 10, r: i / 10}: filed under whichever pair is less loaded,
        // so no pair collects more than a few bindings.
        let mut ix = index();
        for i in 0..100 {
            ix.insert(
                binding(vec![("f", V::LongInt(i % 10)), ("r", V::LongInt(i / 10))]),
                i as usize,
            );
        }
        let largest = ix
            .keys
            .values()
            .flat_map(|k| k.equal.values())
            .map(Vec::len)
            .max();
        assert!(largest.is_some_and(|n| n <= 10), "{largest:?}");
        for i in 0..100 {
            let h = table(vec![
                ("r", V::LongLongInt(i / 10)),
                ("f", V::Double((i % 10) as f64)),
            ]);
            assert_eq!(routed(&ix, Some(&h)), [i as usize]);
        }
    }

    #[test]
    fn each_value_once() {
        let mut ix = index();
        // An `any` binding reached through two arguments, and a second binding
        // to the same value.
        ix.insert(
            binding(vec![
                ("x-match", s("any")),
                ("a", V::LongInt(1)),
                ("b", V::Void),
            ]),
            7,
        );
        ix.insert(binding(vec![("a", V::Timestamp(1))]), 7);
        ix.insert(binding(vec![]), 7);
        let h = table(vec![("a", V::Double(1.0)), ("b", s("x"))]);
        assert_eq!(routed(&ix, Some(&h)), [7]);
    }

    #[test]
    fn remove_frees_everything() {
        let mut ix = index();
        let b = || {
            binding(vec![
                ("x-match", s("any")),
                ("a", V::LongInt(1)),
                ("b", V::Void),
            ])
        };
        let first = ix.insert(b(), 1);
        let second = ix.insert(b(), 2);
        let third = ix.insert(binding(vec![("c", s("v")), ("d", V::Void)]), 3);
        assert_eq!(ix.remove(first), Some(1));
        assert_eq!(ix.remove(first), None);
        let h = table(vec![("a", V::LongInt(1)), ("c", s("v")), ("d", V::Void)]);
        assert_eq!(routed(&ix, Some(&h)), [2, 3]);
        assert_eq!(ix.remove(second), Some(2));
        assert_eq!(ix.remove(third), Some(3));
        assert!(ix.keys.is_empty() && ix.residual.is_empty());
        assert_eq!(routed(&ix, Some(&h)), []);
        // Slots are reused.
        assert!([first, second, third].contains(&ix.insert(b(), 4)));
        assert_eq!(ix.slots.len(), 3);
        ix.clear();
        assert_eq!(routed(&ix, Some(&h)), []);
    }

    /// One step of a random session.
    #[derive(Debug, Clone)]
    enum Op {
        /// Adds a binding with these arguments leading to a value in 0..4.
        Bind(usize, FieldTable),
        /// Removes the live binding at this position (modulo their number).
        Unbind(usize),
        /// Routes a message with these headers.
        Route(Option<FieldTable>),
    }

    fn value() -> impl Strategy<Value = AMQPValue> {
        prop::sample::select(pool())
    }

    fn arguments() -> impl Strategy<Value = FieldTable> {
        let mode = prop::sample::select(vec![
            None,
            Some("all"),
            Some("any"),
            Some("all-with-x"),
            Some("any-with-x"),
        ]);
        let key = prop::sample::select(vec!["a", "b", "c", "x-d"]);
        (mode, prop::collection::vec((key, value()), 0..4)).prop_map(|(mode, args)| {
            let mut t: FieldTable = args.into_iter().collect();
            if let Some(mode) = mode {
                t.insert("x-match", mode);
            }
            t
        })
    }

    fn headers() -> impl Strategy<Value = Option<FieldTable>> {
        let key = prop::sample::select(vec!["a", "b", "c", "x-d", "x-match", "e"]);
        prop::option::weighted(
            0.9,
            prop::collection::vec((key, value()), 0..5)
                .prop_map(|h| h.into_iter().collect::<FieldTable>()),
        )
    }

    /// A value of any kind, from small alphabets so that equal pairs across
    /// kinds are common; arrays and tables nest.
    fn any_value() -> impl Strategy<Value = AMQPValue> {
        let int = prop::sample::select(vec![-1i64, 0, 1, 2, 255]);
        let float = prop::sample::select(vec![
            0.0f64,
            -0.0,
            1.0,
            2.0,
            0.5,
            0.1,
            -1.0,
            f64::NAN,
            f64::INFINITY,
        ]);
        let text = prop::sample::select(vec!["", "a", "1"]);
        let leaf = prop_oneof![
            (0..8u8, int).prop_map(|(kind, n)| match kind {
                0 => i8::try_from(n).map_or(V::Void, V::ShortShortInt),
                1 => u8::try_from(n).map_or(V::Void, V::ShortShortUInt),
                2 => V::ShortInt(n as i16),
                3 => u16::try_from(n).map_or(V::Void, V::ShortUInt),
                4 => V::LongInt(n as i32),
                5 => u32::try_from(n).map_or(V::Void, V::LongUInt),
                6 => V::LongLongInt(n),
                _ => u64::try_from(n).map_or(V::Void, V::Timestamp),
            }),
            (any::<bool>(), float).prop_map(|(single, f)| if single {
                V::Float(f as f32)
            } else {
                V::Double(f)
            }),
            (0..3u8, text).prop_map(|(kind, t)| match kind {
                0 => short(t),
                1 => s(t),
                _ => bytes(t),
            }),
            any::<bool>().prop_map(V::Boolean),
            (0..2u8, 0..11u32).prop_map(|(scale, value)| dec(scale, value)),
            Just(V::Void),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(V::FieldArray),
                prop::collection::vec((prop::sample::select(vec!["a", "b"]), inner), 0..3)
                    .prop_map(|t| V::FieldTable(t.into_iter().collect())),
            ]
        })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..4usize, arguments()).prop_map(|(v, a)| Op::Bind(v, a)),
            1 => any::<usize>().prop_map(Op::Unbind),
            4 => headers().prop_map(Op::Route),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The index routes exactly as checking every live binding with its
        /// matcher does, through binds and unbinds.
        #[test]
        fn index_agrees_with_linear_scan(ops in prop::collection::vec(op(), 1..60)) {
            let mut ix = HeadersIndex::new();
            let mut live: Vec<(usize, usize, HeadersBinding)> = Vec::new();
            for op in ops {
                match op {
                    Op::Bind(value, args) => {
                        let b = HeadersBinding::compile(&args).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let slot = ix.insert(b.clone(), value);
                        live.push((slot, value, b));
                    }
                    Op::Unbind(at) => {
                        if !live.is_empty() {
                            let (slot, value, _) = live.swap_remove(at % live.len());
                            prop_assert_eq!(ix.remove(slot), Some(value));
                        }
                    }
                    Op::Route(h) => {
                        let mut want: Vec<usize> = live
                            .iter()
                            .filter(|(_, _, b)| b.matches(h.as_ref()))
                            .map(|(_, v, _)| *v)
                            .collect();
                        want.sort_unstable();
                        want.dedup();
                        prop_assert_eq!(routed(&ix, h.as_ref()), want, "headers {:?}", h);
                    }
                }
            }
            // Unbinding everything leaves nothing behind.
            for (slot, value, _) in live {
                prop_assert_eq!(ix.remove(slot), Some(value));
            }
            prop_assert!(ix.keys.is_empty() && ix.residual.is_empty());
        }

        /// Random values, nested too, from small alphabets of every kind:
        /// whenever the matcher calls two equal, they share a fingerprint.
        #[test]
        fn equal_implies_same_fingerprint(a in any_value(), b in any_value()) {
            let ix = index();
            if values_equal(&a, &b) {
                prop_assert_eq!(fingerprint(&ix, &a), fingerprint(&ix, &b), "{:?} = {:?}", a, b);
            }
        }
    }
}
