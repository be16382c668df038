//! Request identity end to end: a client's `traceparent` reaches the origin with
//! this node's span as the parent, `X-Request-Id` comes back on the response, and
//! the JSON logs (access log and diagnostics) carry the request id and trace id.

mod common;

use common::origin::{respond, TestOrigin};
use common::*;
use http::Method;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread")]
async fn the_trace_reaches_the_origin_and_the_logs_name_the_request() {
    let origin =
        TestOrigin::start(|_, _| respond(200, &[("cache-control", "max-age=60")], "page")).await;
    let (_tmp, data) = data_dir();
    let node = TestNode::start(
        &data,
        &[
            "--origin",
            &origin.url(),
            "--log-format",
            "json",
            "--log-level",
            "fanz_node=debug",
            "--access-log",
            "json",
        ],
    );
    let answer = request(
        &node,
        Method::GET,
        "/page",
        &[("traceparent", CALLER), ("x-request-id", "req-42")],
        "",
    )
    .await;
    assert_eq!(answer.text(), "page");
    assert_eq!(answer.header("x-request-id").as_deref(), Some("req-42"));

    let seen = origin.last("/page").expect("the origin was asked");
    let sent = seen.headers["traceparent"].to_str().unwrap();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields.len(), 4, "{sent}");
    assert_eq!(
        fields[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "same trace: {sent}"
    );
    assert_ne!(
        fields[2], "00f067aa0ba902b7",
        "this node's span is the parent: {sent}"
    );
    assert_eq!(seen.headers["x-request-id"], "req-42");

    // Without either header the node starts a trace and makes an id.
    let fresh = request(&node, Method::GET, "/page", &[], "").await;
    let made = fresh.header("x-request-id").expect("a request id");
    assert_eq!(made.len(), 16, "{made}");

    // The access log: one JSON object per request, with its ids.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let access = loop {
        let out = node.stdout_text();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["listener"] == "main")
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(access[0]["request_id"], "req-42", "{access:?}");
    assert_eq!(access[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(access[1]["request_id"], made.as_str());

    // Diagnostics logged while serving it carry the request's span fields.
    let log = node.log_text();
    let in_request: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["span"]["request_id"] == "req-42")
        .collect();
    assert!(!in_request.is_empty(), "no log line names req-42:\n{log}");
    assert_eq!(
        in_request[0]["span"]["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}
