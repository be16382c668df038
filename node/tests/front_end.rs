//! Hostile input at the TCP front end: request smuggling shapes, oversized header
//! sections. Each is sent as raw bytes, since well-behaved clients cannot send them.

mod common;

use common::*;

fn node() -> (tempfile::TempDir, TestNode) {
    let (tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    (tmp, node)
}

/// Sends `request` and returns the first response, asserting the connection is then
/// closed (no second response to a smuggled request).
fn answer_and_close(node: &TestNode, request: &[u8]) -> String {
    let answer = raw_request(node.http, request);
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "more than one response: {answer}"
    );
    answer
}

/// Content-Length with Transfer-Encoding: hyper frames the request by
/// Transfer-Encoding alone and closes the connection after answering (RFC 9112 §6.3
/// allows this instead of a 400), so a request smuggled behind it is never read.
#[test]
fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let (_tmp, node) = node();
    let answer = answer_and_close(
        &node,
        b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nDELETE /kv/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(
        !answer.contains("204"),
        "the smuggled DELETE was answered: {answer}"
    );
}

#[test]
fn differing_duplicate_content_lengths_are_refused() {
    let (_tmp, node) = node();
    let answer = answer_and_close(
        &node,
        b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn malformed_chunk_sizes_are_refused() {
    let (_tmp, node) = node();
    let answer = answer_and_close(&node, b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw_request(
        node.http,
        b"GET /kv/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "something was stored: {answer}"
    );
}

#[test]
fn header_sections_over_the_limit_get_431() {
    let (_tmp, node) = node();
    let mut request = b"GET /kv/a HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..100 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let answer = raw_request(node.http, &request);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    // Just under the limit is fine.
    let mut request = b"GET /kv/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".to_vec();
    for i in 0..50 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let answer = raw_request(node.http, &request);
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "{}",
        &answer[..answer.len().min(200)]
    );
}
