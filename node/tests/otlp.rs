//! Span export (`--features otlp`): a request's span reaches an OTLP/HTTP collector
//! as a child of the caller's `traceparent`, under the span id the origin was given.
//! CI runs it with `cargo test -p fanz-node --features otlp --test otlp`.
#![cfg(feature = "otlp")]

mod common;

use common::origin::{respond, TestOrigin};
use common::*;
use http::Method;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread")]
async fn request_spans_reach_the_collector_as_children_of_the_callers_trace() {
    let collector =
        TestOrigin::start(|_, _| respond(200, &[("content-type", "application/json")], "{}")).await;
    let origin =
        TestOrigin::start(|_, _| respond(200, &[("cache-control", "max-age=60")], "page")).await;
    let (_tmp, data) = data_dir();
    let mut node = TestNode::start(
        &data,
        &[
            "--origin",
            &origin.url(),
            "--otlp-endpoint",
            &collector.url(),
            "--node-id",
            "edge-otlp",
        ],
    );
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let answer = request(&node, Method::GET, "/page", &[("traceparent", &caller)], "").await;
    assert_eq!(answer.text(), "page");
    let sent = origin.last("/page").unwrap().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let node_span = sent.split('-').nth(2).unwrap().to_string();

    // Stopping flushes the batch.
    assert!(node.terminate().success());
    let mut spans = Vec::new();
    let exports = collector.count("/v1/traces");
    assert!(
        exports >= 1,
        "nothing was exported; log:\n{}",
        node.log_text()
    );
    let seen = collector.last("/v1/traces").unwrap();
    assert_eq!(seen.method, Method::POST);
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    for resource in body["resourceSpans"].as_array().unwrap() {
        for scope in resource["scopeSpans"].as_array().unwrap() {
            spans.extend(scope["spans"].as_array().unwrap().iter().cloned());
        }
    }
    let request = spans
        .iter()
        .find(|s| s["name"] == "request" && s["traceId"] == CALLER_TRACE)
        .unwrap_or_else(|| panic!("no request span of the caller's trace in {body}"));
    assert_eq!(request["parentSpanId"], CALLER_SPAN, "{request}");
    assert_eq!(
        request["spanId"],
        node_span.as_str(),
        "the origin saw this span as its parent"
    );
    let service = body.to_string();
    assert!(
        service.contains("fanz-edge") && service.contains("edge-otlp"),
        "{service}"
    );
}
