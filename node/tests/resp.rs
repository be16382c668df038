//! The Redis-protocol port (`resp_addr`) of a real `fanz-node` process, driven by
//! Redis's own client (`redis-cli`, Debian's redis-tools) and by a raw socket for
//! the framing: the same keys as the KV API, the same invalidation, its limits.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::cluster::{start_cluster, FAST};
use common::*;
use http::{Method, StatusCode};

/// `redis-cli -p PORT args...`: its output, trimmed (nil prints as an empty line,
/// errors as their text). Without redis-cli installed, the same command over
/// [`Raw`], its reply printed as redis-cli prints it, unless
/// `FANZ_REQUIRE_REDIS_CLI` is set (`.ci/run` sets it and installs redis-tools).
fn cli(node: &TestNode, args: &[&str]) -> String {
    let run = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &node.resp.port().to_string()])
        .args(args)
        .output();
    match run {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        Err(e) => {
            assert!(
                std::env::var_os("FANZ_REQUIRE_REDIS_CLI").is_none(),
                "redis-cli is required (Debian's redis-tools): {e}"
            );
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            printed(&Raw::connect(node).call(&args))
        }
    }
}

/// A reply as `redis-cli` prints it when its output is not a terminal.
fn printed(reply: &Reply) -> String {
    match reply {
        Reply::Simple(s) | Reply::Error(s) => s.clone(),
        Reply::Integer(n) => n.to_string(),
        Reply::Bulk(None) => String::new(),
        Reply::Bulk(Some(v)) => String::from_utf8_lossy(v).into_owned(),
        Reply::Array(items) => items.iter().map(printed).collect::<Vec<_>>().join("\n"),
    }
}

/// A reply, as a test reads it.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A connection to the port speaking RESP by hand.
struct Raw(BufReader<TcpStream>);

impl Raw {
    fn connect(node: &TestNode) -> Raw {
        let s = TcpStream::connect(node.resp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(BufReader::new(s))
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).unwrap();
    }

    /// Sends one command, encoded as a client does.
    fn command(&mut self, args: &[&[u8]]) {
        let mut wire = BytesMut::new();
        fanz_protocol::resp::command(&mut wire, args);
        self.send(&wire);
    }

    fn reply(&mut self) -> Reply {
        let mut line = Vec::new();
        self.0.read_until(b'\n', &mut line).unwrap();
        assert!(
            line.ends_with(b"\r\n"),
            "{:?}",
            String::from_utf8_lossy(&line)
        );
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
        match line[0] {
            b'+' => Reply::Simple(text),
            b'-' => Reply::Error(text),
            b':' => Reply::Integer(text.parse().unwrap()),
            b'$' => {
                let len: i64 = text.parse().unwrap();
                if len < 0 {
                    return Reply::Bulk(None);
                }
                let mut value = vec![0; len as usize + 2];
                self.0.read_exact(&mut value).unwrap();
                assert_eq!(&value[len as usize..], b"\r\n");
                value.truncate(len as usize);
                Reply::Bulk(Some(value))
            }
            b'*' => Reply::Array(
                (0..text.parse::<usize>().unwrap())
                    .map(|_| self.reply())
                    .collect(),
            ),
            other => panic!("not a reply: {other:?} {text}"),
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Reply {
        self.command(args);
        self.reply()
    }

    /// Whether the node closed the connection (reads end).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.0.read_to_end(&mut rest), Ok(0))
    }
}

fn bulk(v: &str) -> Reply {
    Reply::Bulk(Some(v.as_bytes().to_vec()))
}

#[tokio::test]
async fn redis_cli_reads_and_writes_the_kv_api_keys() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    assert_eq!(cli(&node, &["PING"]), "PONG");
    assert_eq!(cli(&node, &["SET", "user:1", "ada"]), "OK");
    assert_eq!(cli(&node, &["GET", "user:1"]), "ada");
    // The same key through the HTTP KV API, both ways.
    let r = get(&node, "user:1").await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "ada".to_string()));
    put(&node, "user:2", "grace", &[]).await;
    assert_eq!(cli(&node, &["GET", "user:2"]), "grace");
    assert_eq!(
        cli(&node, &["MGET", "user:1", "nobody", "user:2"]),
        "ada\n\ngrace"
    );
    assert_eq!(cli(&node, &["EXISTS", "user:1", "nobody", "user:1"]), "2");
    // NX writes only a new key, XX only an existing one; nil when nothing was written.
    assert_eq!(cli(&node, &["SET", "user:1", "other", "NX"]), "");
    assert_eq!(cli(&node, &["SET", "user:3", "other", "XX"]), "");
    assert_eq!(cli(&node, &["GET", "user:1"]), "ada");
    assert_eq!(cli(&node, &["EXISTS", "user:3"]), "0");
    assert_eq!(
        cli(&node, &["SET", "user:3", "new", "NX", "EX", "100"]),
        "OK"
    );
    assert_eq!(cli(&node, &["SET", "user:3", "newer", "XX"]), "OK");
    assert_eq!(cli(&node, &["GET", "user:3"]), "newer");
    // The older spellings clients still send.
    assert_eq!(cli(&node, &["SETNX", "user:3", "no"]), "0");
    assert_eq!(cli(&node, &["SETNX", "user:4", "yes"]), "1");
    assert_eq!(cli(&node, &["GET", "user:4"]), "yes");
    assert_eq!(cli(&node, &["SETEX", "user:5", "30", "five"]), "OK");
    assert_eq!(cli(&node, &["TTL", "user:5"]), "30");
    assert_eq!(cli(&node, &["PSETEX", "user:5", "20000", "five"]), "OK");
    assert_eq!(cli(&node, &["TTL", "user:5"]), "20");
    // EX and PX are TTLs, as Cache-Control: max-age is over HTTP.
    assert_eq!(cli(&node, &["SET", "short", "v", "PX", "60000"]), "OK");
    let ttl: u64 = cli(&node, &["TTL", "short"]).parse().unwrap();
    assert!((59..=60).contains(&ttl), "{ttl}");
    let r = get(&node, "short").await;
    assert!(
        r.header("cache-control").unwrap().starts_with("max-age=59")
            || r.header("cache-control").unwrap() == "max-age=60",
        "{:?}",
        r.header("cache-control")
    );
    assert_eq!(cli(&node, &["TTL", "nobody"]), "-2");
    // DEL counts the keys that had a value, and purges them: gone over HTTP too.
    assert_eq!(cli(&node, &["DEL", "user:1", "nobody", "user:2"]), "2");
    assert_eq!(get(&node, "user:1").await.status, StatusCode::NOT_FOUND);
    assert_eq!(cli(&node, &["GET", "user:2"]), "");
    // Counted on the admin port's metrics.
    let metrics = admin_get(&node, "/metrics", TOKEN).await.text();
    assert!(
        metrics.contains(r#"fanz_resp_commands_total{command="set",result="nil"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"fanz_resp_commands_total{command="del",result="ok"} 1"#));
}

#[tokio::test]
async fn a_resp_set_invalidates_the_keys_dependents_as_a_put_does() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    put(&node, "price", "10", &[]).await;
    let r = put(&node, "page", "costs 10", &[("fanz-depends-on", "price")]).await;
    assert!(r.status.is_success(), "{}", r.status);
    assert_eq!(cli(&node, &["GET", "page"]), "costs 10");
    assert_eq!(cli(&node, &["SET", "price", "12"]), "OK");
    // The page depended on the old price: gone, over either protocol.
    assert_eq!(get(&node, "page").await.status, StatusCode::NOT_FOUND);
    assert_eq!(cli(&node, &["GET", "page"]), "");
    // And a purge made over HTTP is seen over RESP.
    assert_eq!(cli(&node, &["SET", "tagged", "x"]), "OK");
    let bearer = format!("Bearer {TOKEN}");
    let r = request(
        &node,
        Method::from_bytes(b"PURGE").unwrap(),
        "/kv/tagged",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert!(r.status.is_success(), "{}", r.status);
    assert_eq!(cli(&node, &["GET", "tagged"]), "");
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_and_values_keep_every_byte() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &[]);
    let mut c = Raw::connect(&node);
    // Three commands in one write, and an inline one as a person types it.
    let mut wire = BytesMut::new();
    fanz_protocol::resp::command(&mut wire, &[b"SET", b"bin", b"\r\n\0\xff"]);
    fanz_protocol::resp::command(&mut wire, &[b"GET", b"bin"]);
    fanz_protocol::resp::command(&mut wire, &[b"GET", b"none"]);
    wire.extend_from_slice(b"ECHO hello\r\n");
    c.send(&wire);
    assert_eq!(c.reply(), Reply::Simple("OK".into()));
    assert_eq!(c.reply(), Reply::Bulk(Some(b"\r\n\0\xff".to_vec())));
    assert_eq!(c.reply(), Reply::Bulk(None));
    assert_eq!(c.reply(), bulk("hello"));
    // A large value goes out without a copy into the reply buffer: every byte back.
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(c.call(&[b"SET", b"big", &big]), Reply::Simple("OK".into()));
    assert_eq!(c.call(&[b"GET", b"big"]), Reply::Bulk(Some(big.clone())));
    let r = get(&node, "big").await;
    assert_eq!(r.body.as_ref(), big.as_slice());
    // A long pipeline whose replies outgrow what the node holds back (1 MiB): written
    // as they come, every reply in order.
    let mut wire = BytesMut::new();
    for _ in 0..40 {
        fanz_protocol::resp::command(&mut wire, &[b"GET", b"mid"]);
        fanz_protocol::resp::command(&mut wire, &[b"EXISTS", b"mid"]);
    }
    let mid = vec![b'm'; 100 * 1024];
    assert_eq!(c.call(&[b"SET", b"mid", &mid]), Reply::Simple("OK".into()));
    c.send(&wire);
    for _ in 0..40 {
        assert_eq!(c.reply(), Reply::Bulk(Some(mid.clone())));
        assert_eq!(c.reply(), Reply::Integer(1));
    }
    // Connection commands clients send on connecting.
    assert_eq!(c.call(&[b"SELECT", b"0"]), Reply::Simple("OK".into()));
    assert!(matches!(c.call(&[b"SELECT", b"1"]), Reply::Error(e) if e.starts_with("ERR DB index")));
    assert_eq!(
        c.call(&[b"CLIENT", b"SETNAME", b"t"]),
        Reply::Simple("OK".into())
    );
    let Reply::Array(hello) = c.call(&[b"HELLO", b"2"]) else {
        panic!("HELLO answers an array")
    };
    assert_eq!(hello[0..2], [bulk("server"), bulk("fanz-node")]);
    assert!(matches!(c.call(&[b"HELLO", b"3"]), Reply::Error(e) if e.starts_with("NOPROTO")));
    assert!(matches!(c.call(&[b"AUTH", b"x"]), Reply::Error(e) if e.starts_with("ERR AUTH")));
    assert_eq!(c.call(&[b"QUIT"]), Reply::Simple("OK".into()));
    assert!(c.closed());
}

#[tokio::test]
async fn bad_commands_get_errors_and_bad_framing_closes_the_connection() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--max-key-size", "16", "--max-value-size", "1KiB"]);
    let mut c = Raw::connect(&node);
    let err = |r: Reply, start: &str| match r {
        Reply::Error(e) => assert!(e.starts_with(start), "{e}"),
        other => panic!("expected an error starting {start:?}, got {other:?}"),
    };
    // Errors that leave the connection usable, and nothing written.
    err(
        c.call(&[b"SET", b"k"]),
        "ERR wrong number of arguments for 'set'",
    );
    err(
        c.call(&[b"SET", b"k", b"v", b"EX", b"0"]),
        "ERR invalid expire time",
    );
    err(
        c.call(&[b"SET", b"k", b"v", b"EX", b"ten"]),
        "ERR value is not an integer",
    );
    err(
        c.call(&[b"SET", b"k", b"v", b"NX", b"XX"]),
        "ERR syntax error",
    );
    err(
        c.call(&[b"SET", b"k", b"v", b"GET"]),
        "ERR SET ... GET is not supported",
    );
    err(c.call(&[b"SET", b"", b"v"]), "ERR empty keys");
    err(c.call(&[b"SET", &[b'k'; 17], b"v"]), "ERR key of 17 bytes");
    err(c.call(&[b"FLUSHALL"]), "ERR unknown command 'FLUSHALL'");
    // A DEL with one bad key deletes none of them.
    assert_eq!(c.call(&[b"SET", b"kept", b"v"]), Reply::Simple("OK".into()));
    err(c.call(&[b"DEL", b"kept", b""]), "ERR empty keys");
    assert_eq!(c.call(&[b"EXISTS", b"kept"]), Reply::Integer(1));
    assert_eq!(c.call(&[b"EXISTS", b"k"]), Reply::Integer(0));
    assert_eq!(c.call(&[b"PING"]), Reply::Simple("PONG".into()));
    // A value over max_value_size is refused from its length line, before its
    // bytes are read: the connection is closed.
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1025\r\n");
    err(c.reply(), "ERR Protocol error: an argument of 1025 bytes");
    assert!(c.closed());
    // Bytes that are not RESP: answered, then closed.
    let mut c = Raw::connect(&node);
    c.send(b"*1\r\n+PING\r\n");
    err(c.reply(), "ERR Protocol error");
    assert!(c.closed());
    // The node is unharmed.
    assert_eq!(cli(&node, &["EXISTS", "k"]), "0");
    assert_eq!(cli(&node, &["PING"]), "PONG");
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_by_the_timers() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(
        &data,
        &["--keepalive-timeout", "1s", "--body-read-timeout", "1s"],
    );
    let started = Instant::now();
    let mut idle = Raw::connect(&node);
    assert_eq!(idle.call(&[b"PING"]), Reply::Simple("PONG".into()));
    assert!(idle.closed());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    // A command that stops halfway is cut off too, with a reason.
    let mut slow = Raw::connect(&node);
    slow.send(b"*2\r\n$3\r\nGET\r\n");
    match slow.reply() {
        Reply::Error(e) => assert!(e.contains("body_read_timeout"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(slow.closed());
    // A command trickled a byte at a time is cut off at body_read_timeout from its
    // first byte, not from the last one (slowloris).
    let mut trickle = Raw::connect(&node);
    let started = Instant::now();
    trickle.send(b"*2\r\n");
    let rest = b"$3\r\nGET\r\n$3\r\nkey\r\n";
    for byte in &rest[..rest.len() - 1] {
        std::thread::sleep(Duration::from_millis(300));
        if trickle.0.get_mut().write_all(&[*byte]).is_err() {
            break;
        }
    }
    match trickle.reply() {
        Reply::Error(e) => assert!(e.contains("body_read_timeout"), "{e}"),
        other => panic!("{other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2500),
        "cut off after {waited:?}"
    );
}

#[tokio::test]
async fn the_json_access_log_has_a_line_per_command_without_values() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--access-log", "json"]);
    assert_eq!(cli(&node, &["SET", "logged", "secret-value"]), "OK");
    assert_eq!(cli(&node, &["GET", "nothing"]), "");
    let out = node.stdout_text();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|l: &serde_json::Value| l["listener"] == "resp")
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["command"], "SET");
    assert_eq!(lines[0]["key"], "logged");
    assert_eq!(lines[0]["result"], "ok");
    assert_eq!(lines[1]["command"], "GET");
    assert_eq!(lines[1]["result"], "nil");
    assert!(lines[0]["duration_us"].is_u64() && lines[0]["peer"].is_string());
    assert!(!out.contains("secret-value"), "values are never logged");
}

#[tokio::test]
async fn the_port_is_off_when_asked() {
    let (_tmp, data) = data_dir();
    let node = TestNode::start(&data, &["--resp-addr", "off"]);
    assert!(
        get(&node, "k").await.status == StatusCode::NOT_FOUND,
        "the node serves"
    );
    assert!(TcpStream::connect(node.resp).is_err(), "nothing listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_cluster_resp_writes_reach_the_owners_and_conditional_ones_are_refused() {
    let (_tmp, nodes) = start_cluster(3, FAST).await;
    // Each key written through a different node, read back through every node, over
    // both protocols.
    for i in 0..6 {
        let writer = &nodes[i % 3].node;
        assert_eq!(
            cli(writer, &["SET", &format!("k{i}"), &format!("v{i}")]),
            "OK"
        );
    }
    for i in 0..6 {
        for n in &nodes {
            assert_eq!(
                cli(&n.node, &["GET", &format!("k{i}")]),
                format!("v{i}"),
                "at {}",
                n.id
            );
            assert_eq!(get(&n.node, &format!("k{i}")).await.text(), format!("v{i}"));
        }
    }
    // NX and XX are not evaluated in a cluster yet (as If-Match is not): refused,
    // nothing written.
    let refused = cli(&nodes[0].node, &["SET", "k0", "changed", "XX"]);
    assert!(refused.starts_with("ERR conditional writes"), "{refused}");
    assert_eq!(cli(&nodes[1].node, &["GET", "k0"]), "v0");
    // A DEL through any node removes the key everywhere.
    assert_eq!(cli(&nodes[2].node, &["DEL", "k0", "k1"]), "2");
    for n in &nodes {
        assert_eq!(cli(&n.node, &["EXISTS", "k0", "k1", "k2"]), "1");
    }
}
