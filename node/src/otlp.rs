//! OpenTelemetry export (the `otlp` cargo feature): request spans go to an
//! OTLP/HTTP collector as JSON, batched on a thread of their own. Each request span
//! is made a child of the caller's `traceparent`, and this node's span id is the
//! one the origin and the owners then see (see `front::trace`).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::http::traceparent::TraceContext;

/// Flushes and stops the exporter when dropped (at the end of `main`).
#[derive(Debug)]
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("fanz-node: flushing spans to the OTLP collector failed: {e}");
        }
    }
}

/// A tracing layer exporting spans to `endpoint` (`http://host:port`, the
/// collector's base URL), and the handle that flushes it.
pub fn layer<S>(
    endpoint: &str,
    node_id: &str,
) -> Result<(impl tracing_subscriber::Layer<S>, Exporter), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("fanz-edge")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node_id.to_string(),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("fanz-node");
    // From now on request spans are opened for every request, as the exporter
    // assigns their ids.
    crate::http::traceparent::install_exporter(link);
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Exporter(provider),
    ))
}

/// Makes `span` a child of `parent` (when the caller sent one) and returns the
/// span's own place in the trace; `None` when no exporter is installed.
pub fn link(span: &tracing::Span, parent: Option<TraceContext>) -> Option<TraceContext> {
    if let Some(p) = parent {
        let remote = SpanContext::new(
            TraceId::from(p.trace_id),
            SpanId::from(p.span_id),
            if p.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| TraceContext {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(own.span_id().to_bytes()),
        sampled: own.is_sampled(),
    })
}
