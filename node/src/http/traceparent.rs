//! The W3C Trace Context (`traceparent`): a position in a distributed trace
//! ([`TraceContext`]), parsed and written without `fmt`, and the hook through which
//! a span exporter (the `otlp` feature) places each request's span in its trace
//! ([`install_exporter`]): the front ends read it, the exporter installs it, and
//! neither imports the other.

use http::{HeaderName, HeaderValue};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A position in a distributed trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace (never zero).
    pub trace_id: u128,
    /// The span (never zero).
    pub span_id: u64,
    /// The caller's sampling decision.
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>` (a later version
    /// may append fields; version `ff` and all-zero ids are invalid). Lower-case hex
    /// only, as the specification requires.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let mut fields = value.trim().split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, sampled.
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: nonzero(u128::from(fresh_u64()) << 64 | u128::from(fresh_u64())),
            span_id: nonzero(fresh_u64()),
            sampled: true,
        }
    }

    /// A span of this trace under this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: nonzero(fresh_u64()),
            ..*self
        }
    }

    /// The `traceparent` value.
    pub fn header(&self) -> String {
        String::from_utf8_lossy(&self.header_bytes()).into_owned()
    }

    /// The `traceparent` value as a header value, formatted without `fmt`.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.header_bytes()).expect("hex digits and dashes")
    }

    fn header_bytes(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut out[3..35], self.trace_id);
        hex_into(&mut out[36..52], u128::from(self.span_id));
        hex_into(&mut out[53..55], u128::from(self.sampled));
        out
    }
}

/// Writes the low `out.len() * 4` bits of `n` into `out` as lower-case hex.
pub fn hex_into(out: &mut [u8], mut n: u128) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// A fresh random id: the next number of this thread's SplitMix64 sequence, seeded
/// once per thread from `rand`'s generator. Every request draws two or three (its
/// span, and its trace when the caller sent none); `rand::random` costs a ChaCha
/// block's share and a thread-local lookup each, which showed in a KV write's
/// profile. Ids must be unique, not secret: nothing trusts them.
fn fresh_u64() -> u64 {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
    }
    let x = NEXT.with(|next| {
        let x = next.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        next.set(x);
        x
    });
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn nonzero<T: PartialEq + From<u8>>(n: T) -> T {
    if n == T::from(0) {
        T::from(1)
    } else {
        n
    }
}

/// How an exporter places a request's span in its trace: links `span` under the
/// caller's `parent` and says the span's own place (`None` if it made none).
pub type SpanLink = fn(&tracing::Span, Option<TraceContext>) -> Option<TraceContext>;

/// The exporter's link, once one is installed (the `otlp` feature installs it; the
/// front ends know nothing of it otherwise).
static EXPORTER: std::sync::OnceLock<SpanLink> = std::sync::OnceLock::new();

/// Installs an exporter: from now on every request's span is opened at once and
/// placed by `link`.
pub fn install_exporter(link: SpanLink) {
    let _ = EXPORTER.set(link);
}

/// The installed exporter's link, if any.
pub fn exporter() -> Option<SpanLink> {
    EXPORTER.get().copied()
}
