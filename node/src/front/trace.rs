//! Request identity: the W3C trace context (`traceparent`) and request ids.
//!
//! Every request's work runs in a `request` span carrying its request id and trace
//! id, so every log line it causes (JSON logs print the span's fields) can be found
//! by either. A request answered at once from memory (`http::Answer::Now`) opens no
//! span: nothing on that path logs, and its ids still reach the access log and the
//! response. The span's fields are formatted only if a line is logged inside it
//! (`crate::logging`). The node joins the caller's trace when `traceparent` is valid, else
//! starts one; it then replaces the header with its own span as the parent, so an
//! origin fetch (and a fetch through the owner, which forwards the headers) is a
//! child of this node's span. `X-Request-Id` is taken from the client when it is
//! usable, else made, and returned on the response.

use http::{HeaderName, HeaderValue, Request, Response};
use tracing::field::{display, Empty, FieldSet, Value, ValueSet};

use crate::http::traceparent::{exporter, hex_into, TraceContext};
use crate::logging::DeferredFields;

pub use crate::http::traceparent::TRACEPARENT;
/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client request id kept.
const MAX_REQUEST_ID: usize = 128;

/// The identity of one request being served.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// This node's span in the request's trace.
    pub context: TraceContext,
    /// The caller's span, when it sent a valid `traceparent`.
    pub parent: Option<TraceContext>,
    /// The request id (the client's, or this node's span id in hex).
    pub request_id: HeaderValue,
    /// The span the request runs in, once opened.
    span: Option<tracing::Span>,
    fields: SpanFields,
}

impl RequestTrace {
    /// The span the request's work runs in, opened now if it is not open yet. A
    /// request answered at once never opens one (see [`crate::http::Answer`]).
    pub fn span(&mut self) -> tracing::Span {
        self.span.get_or_insert_with(|| self.fields.open()).clone()
    }
}

/// The request span's field values, formatted only if something inside the span
/// is logged (see `crate::logging`).
#[derive(Debug, Clone)]
struct SpanFields {
    request_id: HeaderValue,
    trace_id: u128,
    listener: &'static str,
    method: http::Method,
    path: http::Uri,
}

impl SpanFields {
    /// A `request` span with these values, deferred where the subscriber allows.
    fn open(&self) -> tracing::Span {
        let span = request_span();
        if !crate::logging::defer(&span, self.clone()) {
            self.record_now(&span);
        }
        span
    }
}

fn request_span() -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id = Empty,
        trace_id = Empty,
        listener = Empty,
        method = Empty,
        path = Empty,
    )
}

impl DeferredFields for SpanFields {
    fn record(&self, fields: &FieldSet, record: &mut dyn FnMut(&ValueSet<'_>)) {
        let names =
            ["request_id", "trace_id", "listener", "method", "path"].map(|n| fields.field(n));
        let [Some(request_id), Some(trace_id), Some(listener), Some(method), Some(path)] = names
        else {
            return;
        };
        let trace = format_args!("{:032x}", self.trace_id);
        let values = [
            (
                &request_id,
                Some(&self.request_id.to_str().unwrap_or("?") as &dyn Value),
            ),
            (&trace_id, Some(&display(trace) as &dyn Value)),
            (&listener, Some(&self.listener as &dyn Value)),
            (&method, Some(&display(self.method.as_str()) as &dyn Value)),
            (&path, Some(&display(self.path.path()) as &dyn Value)),
        ];
        record(&fields.value_set(&values));
    }
}

/// Starts serving `req` on `listener` (`main` or `admin`): joins or starts its
/// trace, puts this node's span in its `traceparent`, and makes sure it has a usable
/// `X-Request-Id`. Nothing here formats text, and the request's span opens only
/// when its work does ([`RequestTrace::span`]), unless spans are exported: then
/// every request has one from the start, whose ids are the ones passed on.
pub fn begin<B>(req: &mut Request<B>, listener: &'static str) -> RequestTrace {
    let headers = req.headers_mut();
    let parent = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let exported = exported(parent);
    let context = exported
        .as_ref()
        .map(|(_, context)| *context)
        .unwrap_or_else(|| parent.map_or_else(TraceContext::root, |p| p.child()));
    headers.insert(TRACEPARENT, context.header_value());
    let request_id = match headers.get(&REQUEST_ID).filter(|v| usable_request_id(v)) {
        Some(id) => id.clone(),
        None => {
            let mut made = [0u8; 16];
            hex_into(&mut made, u128::from(context.span_id));
            let made = HeaderValue::from_bytes(&made).expect("hex digits");
            headers.insert(REQUEST_ID, made.clone());
            made
        }
    };
    let fields = SpanFields {
        request_id: request_id.clone(),
        trace_id: context.trace_id,
        listener,
        method: req.method().clone(),
        path: req.uri().clone(),
    };
    // An exporter wants the fields on the span itself.
    let span = exported.map(|(span, _)| {
        fields.record_now(&span);
        span
    });
    RequestTrace {
        context,
        parent,
        request_id,
        span,
        fields,
    }
}

/// A client's request id worth keeping: visible ASCII, not too long.
fn usable_request_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(u8::is_ascii_graphic)
}

/// With an exporter installed: the request's span, opened now and made a child of
/// `parent`, with its place in the trace as the exporter made it.
fn exported(parent: Option<TraceContext>) -> Option<(tracing::Span, TraceContext)> {
    let link = exporter()?;
    let span = request_span();
    let context = link(&span, parent)?;
    Some((span, context))
}

/// Names the request on its response.
pub fn finish<B>(response: &mut Response<B>, trace: &RequestTrace) {
    response
        .headers_mut()
        .insert(REQUEST_ID, trace.request_id.clone());
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
        assert_eq!(bare.headers()["x-request-id"], trace.request_id);
        let mut response = Response::new(());
        finish(&mut response, &trace);
        assert_eq!(response.headers()["x-request-id"], trace.request_id);
    }

    #[test]
    fn made_ids_do_not_repeat_within_or_across_threads() {
        let draw = || (0..5000).map(|_| TraceContext::root()).collect::<Vec<_>>();
        let other = std::thread::spawn(draw);
        let mut all = draw();
        all.extend(other.join().unwrap());
        let traces: std::collections::HashSet<_> = all.iter().map(|c| c.trace_id).collect();
        let spans: std::collections::HashSet<_> = all.iter().map(|c| c.span_id).collect();
        assert_eq!(traces.len(), all.len());
        assert_eq!(spans.len(), all.len());
        assert!(all
            .iter()
            .all(|c| c.trace_id >> 64 != 0 && c.trace_id as u64 != 0));
        let children: std::collections::HashSet<_> =
            (0..1000).map(|_| all[0].child().span_id).collect();
        assert_eq!(children.len(), 1000);
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
