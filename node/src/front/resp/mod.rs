//! The Redis-protocol port (`resp_addr`): RESP2 over plain TCP, so that Redis
//! clients (and `redis-cli`, `redis-benchmark`) read and write the KV API's keys.
//!
//! This module owns the listener and each connection's life: the shared accept
//! loop ([`super::server::accept_loop`]), commands read with
//! [`fanz_protocol::resp::take_command`] and run one after another by
//! [`commands`], and the replies of every command one read brought (a pipeline)
//! written together. A framing error is answered and the connection closed, as
//! Redis does. The timers: `keepalive_timeout` between commands,
//! `body_read_timeout` for a command's bytes to arrive once its first byte has.
//! An idle connection holds no read buffer: it waits for the socket to be
//! readable and only then takes one.

mod commands;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fanz_protocol::resp::{self, Limits};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::kv::MainService;
use super::server::{accept_loop, Accepting};
use crate::metrics::Metrics;

/// How much a connection reads at a time (more when a command is larger).
const READ_CHUNK: usize = 16 * 1024;
/// Bulk replies at least this large are written from the stored value itself
/// rather than copied into the reply buffer.
const COPY_LIMIT: usize = 16 * 1024;
/// A reply buffer that grew past this is let go once written.
const KEEP_OUT: usize = 64 * 1024;
/// Replies held back for the rest of a pipeline are written out once they reach
/// this (a client that pipelines without reading cannot make the node buffer more).
const FLUSH_AT: usize = 1024 * 1024;

/// The port's limits and timers.
#[derive(Debug, Clone)]
pub struct RespLimits {
    /// Connections served at once, and how long they may finish after shutdown.
    pub accepting: Accepting,
    /// Longest key (longer: an error reply).
    pub max_key_size: usize,
    /// Largest value (larger: an error reply, and the connection is closed before
    /// the value is read).
    pub max_value_size: usize,
    /// Idle time between commands after which a connection is closed.
    pub keepalive_timeout: Duration,
    /// Time a command's bytes have to arrive once its first byte did.
    pub command_timeout: Duration,
    /// Write a JSON access log line per command to standard output.
    pub access_log: bool,
}

/// Serves the Redis protocol on `listener` until `shutdown` resolves; connections
/// waiting for a command then close, and those running one close after it.
pub async fn serve_resp(
    listener: TcpListener,
    limits: RespLimits,
    service: Arc<MainService>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tracing::info!(addr = ?listener.local_addr().ok(), "Redis protocol (RESP2) listening");
    let accepting = limits.accepting;
    let port = Arc::new(commands::Port {
        service,
        metrics,
        max_key_size: limits.max_key_size,
        access_log: limits.access_log,
    });
    let limits = Arc::new(limits);
    accept_loop(listener, accepting, shutdown, move |stream, peer, stop| {
        let (port, limits) = (port.clone(), limits.clone());
        async move {
            if let Err(e) = connection(stream, peer, &port, &limits, stop).await {
                tracing::debug!(%peer, error = %e, "RESP connection ended with an error");
            }
        }
    })
    .await;
}

/// Why a connection stops reading.
enum Stop {
    /// The client closed it, or timed out, or the listener is stopping.
    Closed,
    /// Bytes that are not RESP: answered, then closed.
    Framing(resp::RespError),
}

/// One connection: read commands, run them in order, write their replies.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    port: &commands::Port,
    limits: &RespLimits,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let parse_limits = Limits {
        max_args: commands::MAX_ARGS,
        max_arg_len: limits.max_value_size.max(limits.max_key_size),
        max_inline: 64 * 1024,
    };
    let mut buf = BytesMut::new();
    let mut replies = Replies::default();
    // When the first bytes of the command not yet complete arrived.
    let mut partial_since: Option<Instant> = None;
    loop {
        // Every complete command the buffer holds, in order (a pipeline).
        let mut close = false;
        loop {
            match resp::take_command(&mut buf, &parse_limits) {
                Ok(Some(command)) => {
                    if port.run(command, peer, &mut replies).await == commands::Next::Close {
                        close = true;
                        break;
                    }
                    if replies.len() >= FLUSH_AT {
                        replies.write_to(&mut stream).await?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    e.reply(&mut replies.out);
                    replies.write_to(&mut stream).await?;
                    tracing::debug!(error = %e, "RESP framing error; closing the connection");
                    return Ok(());
                }
            }
        }
        replies.write_to(&mut stream).await?;
        if close {
            return Ok(());
        }
        let deadline = if buf.is_empty() {
            // Idle: hold no buffer while waiting (its bytes may still be shared
            // with values being stored, which keep them alive as long as needed).
            buf = BytesMut::new();
            partial_since = None;
            Instant::now() + limits.keepalive_timeout
        } else {
            // A command has begun: it has command_timeout from its first bytes,
            // however slowly the rest trickles in.
            *partial_since.get_or_insert_with(Instant::now) + limits.command_timeout
        };
        match read_more(&mut stream, &mut buf, deadline, &mut stop).await? {
            None => {}
            Some(Stop::Closed) => return Ok(()),
            Some(Stop::Framing(e)) => {
                e.reply(&mut replies.out);
                replies.write_to(&mut stream).await?;
                return Ok(());
            }
        }
    }
}

/// Waits until `deadline` for more bytes and appends them to `buf`: `None` when
/// some arrived. Between commands (`buf` empty) the wait also ends when the
/// listener stops; inside one, the command is let finish.
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
) -> std::io::Result<Option<Stop>> {
    let idle = buf.is_empty();
    loop {
        tokio::select! {
            ready = tokio::time::timeout_at(deadline, stream.readable()) => match ready {
                Ok(ready) => ready?,
                Err(_) if idle => return Ok(Some(Stop::Closed)),
                Err(_) => {
                    return Ok(Some(Stop::Framing(resp::RespError::Malformed(
                        "the command did not arrive within body_read_timeout",
                    ))))
                }
            },
            // Only idle connections end at once; a command being received is let
            // finish (the grace period bounds it).
            _ = stop.wait_for(|stopping| *stopping), if idle => return Ok(Some(Stop::Closed)),
        }
        buf.reserve(READ_CHUNK);
        match stream.try_read_buf(buf) {
            Ok(0) => return Ok(Some(Stop::Closed)),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Readiness that was not (a new connection is reported readable
                // before its first bytes): wait again without the buffer.
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The replies of the commands run since the last write: small ones copied into
/// `out`, large values queued as they are stored, in order.
#[derive(Default)]
pub(crate) struct Replies {
    /// Reply bytes not yet queued.
    pub(crate) out: BytesMut,
    /// Earlier reply bytes and large values, to write before `out`.
    queued: Vec<Bytes>,
    /// Bytes in `queued`.
    queued_len: usize,
}

impl Replies {
    /// Bytes not yet written.
    fn len(&self) -> usize {
        self.queued_len + self.out.len()
    }

    /// A bulk reply of `value`, without copying it when it is large.
    pub(crate) fn bulk(&mut self, value: &Bytes) {
        if value.len() < COPY_LIMIT {
            resp::bulk(&mut self.out, value);
            return;
        }
        resp::bulk_head(&mut self.out, value.len());
        let head = self.out.split().freeze();
        self.queued_len += head.len() + value.len();
        self.queued.push(head);
        self.queued.push(value.clone());
        self.out.extend_from_slice(resp::BULK_END);
    }

    /// Writes everything, in order.
    async fn write_to(&mut self, stream: &mut TcpStream) -> std::io::Result<()> {
        for chunk in self.queued.drain(..) {
            stream.write_all(&chunk).await?;
        }
        self.queued_len = 0;
        if !self.out.is_empty() {
            stream.write_all(&self.out).await?;
            self.out.clear();
        }
        if self.out.capacity() > KEEP_OUT {
            self.out = BytesMut::new();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection waiting for its next command holds no read buffer, even after
    /// the socket was reported readable with nothing to read (as a new connection
    /// is): 16 KiB per idle connection otherwise.
    #[tokio::test]
    async fn an_idle_connection_waits_without_a_read_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (_stopping, mut stop) = watch::channel(false);
        let mut buf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_millis(200);
        let waited = read_more(&mut server, &mut buf, deadline, &mut stop)
            .await
            .unwrap();
        assert!(
            matches!(waited, Some(Stop::Closed)),
            "the idle timer closes it"
        );
        assert_eq!(buf.capacity(), 0, "no buffer held while waiting");
    }
}
