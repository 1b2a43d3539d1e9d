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
                const TWO_64: f64 = 18_446_744_073_709_551_616.0;
                f.fract() == 0.0 && (-TWO_64..=TWO_64).contains(&f) && f as i128 == i
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    //! Every case is marked with what RabbitMQ 3.10.8 did with the same typed
    //! values (see `tests/rabbitmq/headers_semantics.py`): "RabbitMQ: routed",
    //! "RabbitMQ: not routed", or the error text it sent.

    use super::*;
    use AMQPValue as V;

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        entries.into_iter().collect()
    }

    fn binding(entries: Vec<(&str, AMQPValue)>) -> HeadersBinding {
        match HeadersBinding::compile(&table(entries)) {
            Ok(b) => b,
            Err(e) => panic!("binding refused: {e}"),
        }
    }

    fn s(text: &str) -> AMQPValue {
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
