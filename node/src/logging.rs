//! Logging: the process's tracing subscriber (text or JSON lines on standard error,
//! the level reloadable, the corruption counter, span export with the `otlp`
//! feature), and span fields that cost nothing until something is logged.
//!
//! Every request runs in a `request` span carrying its ids. The fmt layer formats a
//! span's fields into a string when the span opens, and that formatting cost more
//! than serving a cache hit, which logs nothing at all. So a request span opens
//! with empty fields and its values wait, unformatted, in the span's extensions
//! ([`defer`]). The first event logged inside the span writes them into it
//! ([`WriteDeferred`], wrapped around the event formatter), through the layer's own
//! field formatter: text and JSON lines read as if the fields had been recorded when
//! the span opened.

use std::io::IsTerminal;

use tracing::field::{FieldSet, ValueSet};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{Config, LogFormat};
use crate::store::CorruptionLayer;

/// Values of a span's fields, recorded only when an event inside the span is logged.
pub trait DeferredFields: Send + Sync + 'static {
    /// Hands `record` the values, as values of the span's `fields`.
    fn record(&self, fields: &FieldSet, record: &mut dyn FnMut(&ValueSet<'_>));

    /// Records the values in `span` now (when they cannot wait: see [`defer`]).
    fn record_now(&self, span: &tracing::Span) {
        if let Some(meta) = span.metadata() {
            self.record(meta.fields(), &mut |values| {
                span.record_all(values);
            });
        }
    }
}

/// The extension holding a span's deferred values until they are written.
struct Deferred(Box<dyn DeferredFields>);

/// Keeps `values` for `span`'s fields until an event inside it is logged. Returns
/// `false` (and keeps nothing) when the span is disabled or the process's subscriber
/// is not one this module built; the caller then records the values itself.
pub fn defer(span: &tracing::Span, values: impl DeferredFields) -> bool {
    span.with_subscriber(|(id, dispatch)| {
        let Some(span) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        else {
            return false;
        };
        span.extensions_mut().insert(Deferred(Box::new(values)));
        true
    })
    .unwrap_or(false)
}

/// An event formatter that first writes the deferred fields of the spans around
/// the event (see the module documentation), then formats it with `E`.
#[derive(Debug)]
pub struct WriteDeferred<E>(pub E);

impl<S, N, E> FormatEvent<S, N> for WriteDeferred<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let mut extensions = span.extensions_mut();
                let Some(Deferred(values)) = extensions.remove::<Deferred>() else {
                    continue;
                };
                if let Some(formatted) = extensions.get_mut::<FormattedFields<N>>() {
                    values.record(span.metadata().fields(), &mut |values| {
                        let _ = ctx
                            .field_format()
                            .add_fields(formatted, &Record::new(values));
                    });
                }
            }
        }
        self.0.format_event(ctx, writer, event)
    }
}

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
/// The installed subscriber's filter, which a reload may change.
static LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// Changes the log filter to `directives` (a reload of `log_level`); `None` when
/// this module installed no subscriber (tests), so the level needs a restart.
pub fn set_level(directives: &str) -> Option<Result<(), String>> {
    LEVEL.get().map(|set| set(directives))
}

/// What [`init`] leaves running: the span exporter, with the `otlp` feature.
#[cfg(feature = "otlp")]
pub type Exporter = Option<crate::otlp::Exporter>;
/// What [`init`] leaves running: nothing without the `otlp` feature.
#[cfg(not(feature = "otlp"))]
pub type Exporter = Option<std::convert::Infallible>;

/// Installs the process's subscriber for `config`: log lines on standard error (ANSI
/// colours only on a terminal), the level changeable by a reload, foyer's corruption
/// warnings counted whatever the level, and span export when configured.
pub fn init(config: &Config) -> Exporter {
    // Validated when the config was parsed.
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .map_event_format(WriteDeferred)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .map_event_format(WriteDeferred)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // A reload may change the level (`log_level`); the new filter was validated
    // when the reloaded config resolved.
    let (filter, level) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LEVEL.set(Box::new(move |directives| {
        let new = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        level.reload(new).map_err(|e| e.to_string())
    }));
    // The corruption counter sees foyer's warnings whatever the log level is.
    let corruption = CorruptionLayer
        .with_filter(Targets::new().with_target("foyer_storage", tracing::Level::WARN));
    let registry = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(corruption);
    #[cfg(feature = "otlp")]
    {
        let node_id = config.node_id.as_deref().unwrap_or("local");
        match config
            .otlp_endpoint
            .as_deref()
            .map(|e| crate::otlp::layer(e, node_id))
        {
            Some(Ok((layer, exporter))) => {
                // Request spans and what they cause, not the dependencies' spans.
                let ours = Targets::new().with_target("fanz_node", tracing::Level::INFO);
                registry.with(layer.with_filter(ours)).init();
                Some(exporter)
            }
            Some(Err(e)) => {
                registry.init();
                tracing::error!(error = %e, "span export is off");
                None
            }
            None => {
                registry.init();
                None
            }
        }
    }
    #[cfg(not(feature = "otlp"))]
    {
        registry.init();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Empty, Value};

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    struct Ids {
        id: String,
        n: u64,
    }

    impl DeferredFields for Ids {
        fn record(&self, fields: &FieldSet, record: &mut dyn FnMut(&ValueSet<'_>)) {
            let (Some(id), Some(n)) = (fields.field("id"), fields.field("n")) else {
                return;
            };
            let values = [
                (&id, Some(&self.id.as_str() as &dyn Value)),
                (&n, Some(&self.n as &dyn Value)),
            ];
            record(&fields.value_set(&values));
        }
    }

    /// Logs one event inside a span whose fields were deferred, with `json` or text.
    fn logged(json: bool, log_inside: bool) -> String {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let fmt = if json {
            tracing_subscriber::fmt::layer()
                .json()
                .map_event_format(WriteDeferred)
                .with_writer(writer)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .map_event_format(WriteDeferred)
                .with_writer(writer)
                .boxed()
        };
        let subscriber = tracing_subscriber::registry().with(fmt);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", id = Empty, n = Empty, kept = 7);
            assert!(defer(
                &span,
                Ids {
                    id: "req-1".into(),
                    n: 42
                }
            ));
            let _in = span.enter();
            if log_inside {
                tracing::info!(extra = 1, "first");
                tracing::info!("second");
            }
        });
        out.text()
    }

    #[test]
    fn deferred_fields_appear_in_text_lines_as_if_recorded() {
        let text = logged(false, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            assert!(line.contains("request{kept=7 id=\"req-1\" n=42}"), "{line}");
        }
    }

    #[test]
    fn deferred_fields_appear_in_json_lines_as_if_recorded() {
        let text = logged(true, true);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert_eq!(line["span"]["id"], "req-1", "{line}");
            assert_eq!(line["span"]["n"], 42, "{line}");
            assert_eq!(line["span"]["kept"], 7, "{line}");
            assert_eq!(line["span"]["name"], "request", "{line}");
        }
        assert_eq!(lines[0]["fields"]["extra"], 1);
    }

    #[test]
    fn a_span_nothing_logs_in_writes_nothing() {
        assert_eq!(logged(false, false), "");
    }

    #[test]
    fn without_this_subscriber_nothing_is_deferred() {
        let span = tracing::info_span!("request", id = Empty, n = Empty);
        assert!(!defer(
            &span,
            Ids {
                id: "x".into(),
                n: 1
            }
        ));
    }
}
