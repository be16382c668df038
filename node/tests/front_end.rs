//! Hostile input at the TCP front end: request smuggling shapes, oversized header
//! sections. Each is sent as raw bytes, since well-behaved clients cannot send them.

mod common;

use common::*;
use std::time::{Duration, Instant};

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
    // Only the status line counts: a random request id may contain "204".
    assert!(
        !answer.contains("HTTP/1.1 204"),
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

/// Reads one response (headers and a Content-Length body) from a keep-alive
/// connection, leaving it open.
fn read_one_response(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read a response");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

/// How long until the server closes `stream` (reads hit the end), at most `limit`.
fn time_until_closed(stream: &mut std::net::TcpStream, limit: Duration) -> Duration {
    use std::io::Read;
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => continue,
        }
    }
}

/// The slowloris guard and the keep-alive idle timeout are separate clocks: an idle
/// keep-alive connection outlives the header timeout, is closed after the idle
/// timeout, and a request head that stalls is cut off after the header timeout.
#[test]
fn idle_keep_alive_connections_outlive_the_header_timeout_but_stalled_heads_do_not() {
    use std::io::Write;
    let (_tmp, data) = data_dir();
    let node = TestNode::start(
        &data,
        &["--header-read-timeout", "1s", "--keepalive-timeout", "4s"],
    );
    let request = b"GET /kv/none HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut idle = std::net::TcpStream::connect(node.http).unwrap();
    idle.write_all(request).unwrap();
    assert!(read_one_response(&mut idle).starts_with("HTTP/1.1 404"));
    std::thread::sleep(Duration::from_millis(2500));
    idle.write_all(request).unwrap();
    assert!(
        read_one_response(&mut idle).starts_with("HTTP/1.1 404"),
        "a keep-alive connection idle for 2.5 s (header timeout 1 s) was not served"
    );
    let closed_after = time_until_closed(&mut idle, Duration::from_secs(10));
    assert!(
        (Duration::from_millis(3500)..Duration::from_secs(7)).contains(&closed_after),
        "idle connection closed after {closed_after:?}, keep-alive timeout 4 s"
    );

    let mut slow = std::net::TcpStream::connect(node.http).unwrap();
    slow.write_all(request).unwrap();
    read_one_response(&mut slow);
    slow.write_all(b"GET /kv/none HTTP/1.1\r\nHo").unwrap();
    let closed_after = time_until_closed(&mut slow, Duration::from_secs(10));
    assert!(
        closed_after < Duration::from_millis(2500),
        "a stalled request head lasted {closed_after:?}, header timeout 1 s"
    );

    let mut silent = std::net::TcpStream::connect(node.http).unwrap();
    let closed_after = time_until_closed(&mut silent, Duration::from_secs(10));
    assert!(
        closed_after < Duration::from_millis(2500),
        "a connection that never sent a byte lasted {closed_after:?}, header timeout 1 s"
    );
}

/// How many HTTP/1.1 connections the node holds parked, once that settles at
/// `want` (at most 3 s).
async fn parked_becomes(node: &TestNode, want: f64) {
    let (limit, every) = (Duration::from_secs(3), Duration::from_millis(50));
    let what = format!("{want} parked connections");
    eventually(limit, every, &what, || async {
        let parked = metric_value(&node.metrics().await, "fanz_http_connections_parked");
        if parked == Some(want) {
            Ok(())
        } else {
            Err(parked)
        }
    })
    .await;
}

/// Issue 21, part 4: an idle HTTP/1.1 keep-alive connection is parked (hyper's state
/// and buffers dropped, the socket kept) and carries on as the same connection: the
/// next request after a park, pipelined requests, a head that began before the park
/// check and finished after it, and a large response the client was slow to read
/// all come through whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_parked_and_carry_on() {
    use std::io::{Read, Write};
    let (_tmp, node) = node();
    let big: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
    let r = send_over(
        false,
        http::Method::PUT,
        &node.url("/kv/big"),
        &[],
        big.clone(),
    )
    .await;
    assert!(r.status.is_success(), "{}", r.status);
    assert!(put(&node, "a", "hello", &[]).await.status.is_success());
    parked_becomes(&node, 0.0).await;

    let mut stream = std::net::TcpStream::connect(node.http).unwrap();
    let get_a = b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(get_a).unwrap();
    assert!(read_one_response(&mut stream).ends_with("hello"));
    parked_becomes(&node, 1.0).await;

    // Woken by two pipelined requests at once: both answered (the two responses
    // may arrive in one read).
    stream
        .write_all(&[&get_a[..], &get_a[..]].concat())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut both = String::new();
    let mut buf = [0u8; 4096];
    while both.matches("hello").count() < 2 {
        let n = stream.read(&mut buf).expect("both pipelined responses");
        assert!(n > 0, "closed before both pipelined responses: {both}");
        both.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    parked_becomes(&node, 1.0).await;

    // A head begun and stalled for several park checks: not parked mid-head.
    stream.write_all(&get_a[..10]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    parked_becomes(&node, 0.0).await;
    stream.write_all(&get_a[10..]).unwrap();
    assert!(read_one_response(&mut stream).ends_with("hello"));

    // A large answer the client does not read for a while: nothing is lost when
    // the connection goes quiet with bytes still to send.
    stream
        .write_all(b"GET /kv/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let body_start = loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed mid-response after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    while got.len() < body_start + big.len() {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed mid-body after {} bytes",
            got.len() - body_start
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got[body_start..] == big[..], "the body came back damaged");
    parked_becomes(&node, 1.0).await;
    // Still the same keep-alive connection.
    stream.write_all(get_a).unwrap();
    assert!(read_one_response(&mut stream).ends_with("hello"));

    drop(stream);
    parked_becomes(&node, 0.0).await;
}

/// The open-file limit's soft and hard values, from /proc/PID/limits.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open-file limit");
    let fields: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    (fields[0].to_string(), fields[1].to_string())
}

/// Every connection is a file descriptor. systemd services and recent Docker start
/// processes with a soft open-file limit of 1024 (hard limit far higher), which
/// would cap a node at about a thousand connections against `max_connections`
/// 25 000: the node raises the soft limit to the hard one at start-up.
#[test]
fn a_low_soft_open_file_limit_is_raised_to_the_hard_one() {
    let (_tmp, data) = data_dir();
    let admin = free_addr();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -S -n 256 && exec \"$0\" \"$@\"")
        .arg(binary())
        .args(["--http-addr", &free_addr().to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args([
            "--h3-addr",
            "off",
            "--resp-addr",
            "off",
            "--disk-capacity",
            "0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn fanz-node under sh");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                break true;
            }
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let limits = ready.then(|| open_file_limits(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let (soft, hard) = limits.expect("the node started");
    assert_ne!(soft, "256", "the soft limit was left as it was");
    assert_eq!(soft, hard);
}
