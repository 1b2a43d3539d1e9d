//! Small helpers: message ids, timestamps, log macros, panic capture.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

/// Logs at error level with the `tracing` feature; compiles to nothing
/// (but still type-checks its arguments) without it.
macro_rules! log_error {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        { tracing::error!($($arg)*); }
        #[cfg(not(feature = "tracing"))]
        { if false { let _ = format_args!($($arg)*); } }
    }};
}

/// Logs at debug level with the `tracing` feature.
macro_rules! log_debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        { tracing::debug!($($arg)*); }
        #[cfg(not(feature = "tracing"))]
        { if false { let _ = format_args!($($arg)*); } }
    }};
}

/// Logs at warn level with the `tracing` feature.
macro_rules! log_warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        { tracing::warn!($($arg)*); }
        #[cfg(not(feature = "tracing"))]
        { if false { let _ = format_args!($($arg)*); } }
    }};
}

pub(crate) use {log_debug, log_error, log_warn};

/// Message ids: 32 lowercase hex digits like oslo's `uuid4().hex`, made of a
/// random 64-bit prefix (one per generator) and a counter, so making one
/// costs no system call and a reply's id maps back to a `u64` key.
#[derive(Debug)]
pub(crate) struct IdGen {
    prefix: u64,
    /// `prefix` in hex digits, the first half of every id.
    prefix_text: [u8; 16],
    next: AtomicU64,
}

impl IdGen {
    pub(crate) fn new() -> IdGen {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let prefix = hi ^ lo.rotate_left(17);
        IdGen {
            prefix,
            prefix_text: hex16(prefix),
            next: AtomicU64::new(1),
        }
    }

    /// The next id: its counter and its text.
    pub(crate) fn next(&self) -> (u64, Id) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        text[..16].copy_from_slice(&self.prefix_text);
        text[16..].copy_from_slice(&hex16(n));
        (n, Id(text))
    }

    /// The counter of an id this generator made, if it is one.
    pub(crate) fn parse(&self, id: &str) -> Option<u64> {
        let (prefix, counter) = id.as_bytes().split_at_checked(16)?;
        if counter.len() != 16 || parse_hex(prefix)? != u128::from(self.prefix) {
            return None;
        }
        u64::try_from(parse_hex(counter)?).ok()
    }
}

/// The number written in hex digits (either case), at most 32 of them:
/// each digit's value from a table, an invalid one noticed once at the end
/// (no branch per digit), in two 64-bit halves. Several times cheaper than
/// `from_str_radix` on these ids (and without its leading `+`); it runs two
/// or three times per call.
pub(crate) fn parse_hex(digits: &[u8]) -> Option<u128> {
    /// Each byte's value as a hex digit; `INVALID` for other bytes.
    const INVALID: u8 = 0x80;
    const VALUES: [u8; 256] = {
        let mut t = [INVALID; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    if digits.is_empty() || digits.len() > 32 {
        return None;
    }
    // The high half takes the digits beyond the low half's 16.
    let (high, low) = digits.split_at(digits.len().saturating_sub(16));
    let mut invalid = 0;
    let mut half = |digits: &[u8]| {
        digits.iter().fold(0u64, |n, &d| {
            let v = VALUES[usize::from(d)];
            invalid |= v;
            n << 4 | u64::from(v)
        })
    };
    let n = u128::from(half(high)) << 64 | u128::from(half(low));
    (invalid & INVALID == 0).then_some(n)
}

/// An id's text, on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Id([u8; 32]);

/// `word` in 16 lowercase hex digits, a byte (two digits) at a time.
fn hex16(word: u64) -> [u8; 16] {
    /// The two digits of each byte.
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        t
    };
    let mut out = [0u8; 16];
    for (pair, byte) in out.chunks_exact_mut(2).zip(word.to_be_bytes()) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
    out
}

impl Id {
    pub(crate) fn as_str(&self) -> &str {
        // Hex digits only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The text for an encoder (see [`Utf8`]).
    pub(crate) fn text(&self) -> Utf8<'_> {
        // Hex digits only.
        Utf8(&self.0)
    }
}

/// Text known to be UTF-8, as bytes: made from a `str`, or from an [`Id`]
/// or a [`SmallStr`], which hold bytes that were one. The encoders write
/// it as it is, where a `str` would have to be made of those bytes first,
/// checking each of them (for each id of each message).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Utf8<'a>(&'a [u8]);

impl<'a> Utf8<'a> {
    pub(crate) fn bytes(self) -> &'a [u8] {
        self.0
    }
}

impl<'a> From<&'a str> for Utf8<'a> {
    fn from(s: &'a str) -> Self {
        Utf8(s.as_bytes())
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A short string kept inline, a longer one on the heap: for the names and
/// ids a message needs per call (a routing key `topic.server`, a `_msg_id`
/// of 32 hex digits), which then cost no allocation.
#[derive(Clone)]
pub(crate) enum SmallStr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> SmallStr<N> {
    /// The concatenation of `parts`.
    pub(crate) fn concat(parts: &[&str]) -> SmallStr<N> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > N || total > usize::from(u8::MAX) {
            return SmallStr::Heap(parts.concat().into_boxed_str());
        }
        let mut bytes = [0u8; N];
        let mut len = 0;
        for p in parts {
            bytes[len..len + p.len()].copy_from_slice(p.as_bytes());
            len += p.len();
        }
        SmallStr::Inline {
            len: len as u8,
            bytes,
        }
    }

    /// The text for an encoder (see [`Utf8`]).
    pub(crate) fn text(&self) -> Utf8<'_> {
        match self {
            // Whole `&str`s were copied in.
            SmallStr::Inline { len, bytes } => Utf8(&bytes[..usize::from(*len)]),
            SmallStr::Heap(s) => Utf8(s.as_bytes()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Whole `&str`s were copied in: always UTF-8.
            SmallStr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            SmallStr::Heap(s) => s,
        }
    }
}

impl<const N: usize> From<&str> for SmallStr<N> {
    fn from(s: &str) -> Self {
        SmallStr::concat(&[s])
    }
}

impl<const N: usize> AsRef<str> for SmallStr<N> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::ops::Deref for SmallStr<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl<const N: usize> std::fmt::Debug for SmallStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The future of a transport operation that succeeded on the spot. It has
/// no size, so boxing it (as [`BoxFuture`](crate::BoxFuture)s are) costs no
/// allocation, unlike a boxed `std::future::Ready`.
pub(crate) struct Done;

impl Future for Done {
    type Output = Result<(), crate::TransportError>;

    fn poll(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

/// `result` as a boxed future, allocating only for an error (see [`Done`]).
pub(crate) fn finished(
    result: Result<(), crate::TransportError>,
) -> crate::BoxFuture<'static, Result<(), crate::TransportError>> {
    match result {
        Ok(()) => Box::pin(Done),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

/// A hasher for keys that are already well spread (counters): one multiply.
#[derive(Default, Clone, Copy)]
pub(crate) struct CounterHasher(u64);

impl std::hash::Hasher for CounterHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// `BuildHasher` of [`CounterHasher`].
pub(crate) type BuildCounterHasher = std::hash::BuildHasherDefault<CounterHasher>;

/// A fresh random id, 32 hex digits (for queue names).
pub(crate) fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The current UTC time as oslo writes it: `YYYY-MM-DD HH:MM:SS.ffffff`.
pub(crate) fn utc_timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(d.as_secs(), d.subsec_micros())
}

pub(crate) fn format_timestamp(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A future that turns a panic while polling the inner (pinned) future
/// into `Err(payload)`.
pub(crate) struct CatchUnwind<F> {
    inner: F,
}

impl<F: Future + Unpin> CatchUnwind<F> {
    pub(crate) fn new(inner: F) -> Self {
        CatchUnwind { inner }
    }
}

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = Pin::new(&mut self.inner);
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "handler panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let g = IdGen::new();
        let (n, s) = g.next();
        let s = s.as_str().to_owned();
        assert_eq!(s.len(), 32);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(g.parse(&s), Some(n));
        let (m, t) = g.next();
        let t = t.as_str().to_owned();
        assert_ne!(s, t);
        assert_eq!(g.parse(&t), Some(m));
        assert_eq!(IdGen::new().parse(&s), None);
        assert_eq!(g.parse("xyz"), None);
        assert_eq!(g.parse(&"é".repeat(16)), None);
        assert_eq!(g.parse(&s.to_ascii_uppercase()), Some(n));
        assert_eq!(g.parse(&format!("{}+{}", &s[..16], &s[17..])), None);
        assert_eq!(g.parse(&format!("{s}0")), None);
    }

    #[test]
    fn ids_are_hex_of_prefix_and_counter() {
        let g = IdGen::new();
        let (n, id) = g.next();
        assert_eq!(id.as_str(), format!("{:016x}{:016x}", g.prefix, n));
        assert_eq!(hex16(0x0123_4567_89ab_cdef), *b"0123456789abcdef");
        assert_eq!(hex16(u64::MAX), *b"ffffffffffffffff");
    }

    #[test]
    fn hex() {
        assert_eq!(parse_hex(b"0"), Some(0));
        assert_eq!(parse_hex(b"fF09"), Some(0xff09));
        assert_eq!(parse_hex(&[b'f'; 32]), Some(u128::MAX));
        assert_eq!(
            parse_hex(b"0123456789abcdefABCDEF0123456789"),
            Some(0x0123456789abcdefabcdef0123456789)
        );
        assert_eq!(parse_hex(b"1ffffffffffffffff"), Some(0x1ffffffffffffffff));
        for bad in [
            &b""[..],
            b"+1",
            b"g",
            b"-1",
            b" 1",
            &[b'1'; 33],
            b"0123456789abcdef012345678g",
            b"G0123456789abcdef",
            b"0123456789abcdef\xff",
        ] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn small_strings() {
        let k = SmallStr::<8>::concat(&["ab", ".", "cd"]);
        assert!(matches!(k, SmallStr::Inline { len: 5, .. }));
        assert_eq!(&*k, "ab.cd");
        let long = SmallStr::<8>::concat(&["topic", ".", "\u{e9}server"]);
        assert!(matches!(long, SmallStr::Heap(_)));
        assert_eq!(&*long, "topic.\u{e9}server");
        assert_eq!(SmallStr::<4>::from("").as_str(), "");
        assert_eq!(format!("{:?}", SmallStr::<4>::from("x")), "\"x\"");
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0, 0), "1970-01-01 00:00:00.000000");
        // 2000-02-29 (leap day) 12:34:56.789012
        assert_eq!(
            format_timestamp(951_827_696, 789_012),
            "2000-02-29 12:34:56.789012"
        );
        assert_eq!(
            format_timestamp(1_735_689_599, 999_999),
            "2024-12-31 23:59:59.999999"
        );
        assert_eq!(utc_timestamp().len(), 26);
    }

    #[test]
    fn catch_unwind_future() {
        let f = CatchUnwind::new(Box::pin(async { panic!("boom {}", 1) }));
        let mut f = std::pin::pin!(f);
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(Noop));
        let mut cx = TaskContext::from_waker(&waker);
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(Err(p)) => assert_eq!(panic_message(&*p), "boom 1"),
            _ => panic!("expected the panic to be caught"),
        }
    }
}
