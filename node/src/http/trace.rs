//! Request identity: the W3C trace context (`traceparent`) and request ids.
//!
//! Every request runs in a `request` span carrying its request id and trace id,
//! so every log line it causes (JSON logs print the span's fields) can be found by
//! either. The node joins the caller's trace when `traceparent` is valid, else
//! starts one; it then replaces the header with its own span as the parent, so an
//! origin fetch (and a fetch through the owner, which forwards the headers) is a
//! child of this node's span. `X-Request-Id` is taken from the client when it is
//! usable, else made, and returned on the response.

use http::{HeaderName, HeaderValue, Request, Response};

/// `traceparent` (W3C Trace Context).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client request id kept.
const MAX_REQUEST_ID: usize = 128;

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
            trace_id: nonzero(rand::random()),
            span_id: nonzero(rand::random()),
            sampled: true,
        }
    }

    /// A span of this trace under this one.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: nonzero(rand::random()),
            ..*self
        }
    }

    /// The `traceparent` value.
    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

fn nonzero<T: PartialEq + From<u8>>(n: T) -> T {
    if n == T::from(0) {
        T::from(1)
    } else {
        n
    }
}

/// The identity of one request being served.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// This node's span in the request's trace.
    pub context: TraceContext,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<TraceContext>,
    /// The request id (the client's, or this node's span id).
    pub request_id: String,
    /// The span the request runs in.
    pub span: tracing::Span,
}

/// Starts serving `req` on `listener` (`main` or `admin`): joins or starts its
/// trace, puts this node's span in its `traceparent`, and opens its span.
pub fn begin<B>(req: &mut Request<B>, listener: &'static str) -> RequestTrace {
    let span = tracing::info_span!(
        "request",
        request_id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        listener,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let headers = req.headers_mut();
    let parent = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    // With an exporter, the exported span's ids are the ones to pass on.
    let context = exported(&span, parent)
        .unwrap_or_else(|| parent.map_or_else(TraceContext::root, |p| p.child()));
    if let Ok(v) = HeaderValue::from_str(&context.header()) {
        headers.insert(TRACEPARENT, v);
    }
    let request_id = headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| format!("{:016x}", context.span_id), str::to_string);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, v);
    }
    span.record("request_id", request_id.as_str());
    span.record(
        "trace_id",
        tracing::field::display(format_args!("{:032x}", context.trace_id)),
    );
    RequestTrace {
        context,
        parent,
        request_id,
        span,
    }
}

/// The span's place in its trace as the exporter made it (`otlp` feature).
#[cfg(feature = "otlp")]
fn exported(span: &tracing::Span, parent: Option<TraceContext>) -> Option<TraceContext> {
    crate::otlp::link(span, parent)
}

/// Without an exporter, this node makes the ids itself.
#[cfg(not(feature = "otlp"))]
fn exported(_: &tracing::Span, _: Option<TraceContext>) -> Option<TraceContext> {
    None
}

/// Names the request on its response.
pub fn finish<B>(response: &mut Response<B>, trace: &RequestTrace) {
    if let Ok(v) = HeaderValue::from_str(&trace.request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_specification_example_and_rejects_bad_ones() {
        let c =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some()
        );
    }

    #[test]
    fn a_request_joins_the_callers_trace_and_names_itself() {
        let mut req = Request::builder()
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        let trace = begin(&mut req, "main");
        assert_eq!(trace.context.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(trace.context.span_id, 0x00f067aa0ba902b7);
        assert_eq!(trace.request_id, "abc-123");
        let forwarded =
            TraceContext::parse(req.headers()["traceparent"].to_str().unwrap()).unwrap();
        assert_eq!(
            forwarded, trace.context,
            "the origin sees this node's span as parent"
        );

        let mut bare = Request::builder()
            .header("x-request-id", "has space")
            .body(())
            .unwrap();
        let trace = begin(&mut bare, "main");
        assert_eq!(trace.parent, None);
        assert_eq!(trace.request_id, format!("{:016x}", trace.context.span_id));
        let mut response = Response::new(());
        finish(&mut response, &trace);
        assert_eq!(
            response.headers()["x-request-id"],
            trace.request_id.as_str()
        );
    }

    proptest! {
        #[test]
        fn headers_round_trip(trace_id in 1u128.., span_id in 1u64.., sampled: bool) {
            let c = TraceContext { trace_id, span_id, sampled };
            prop_assert_eq!(TraceContext::parse(&c.header()), Some(c));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = TraceContext::parse(&s);
        }
    }
}
