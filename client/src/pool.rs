//! Keep-alive HTTP/1.1 connections to the nodes, pooled per node address: an
//! operation takes an idle connection (or opens one), sends one request, reads the
//! whole answer, and gives the connection back. Leaner than a general-purpose
//! client pool: no URI authority parsing or keyed hashing per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections by node address (`host:port`).
#[derive(Debug)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Sender>>>,
    per_node: usize,
    connect_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(per_node: usize, connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            per_node: per_node.max(1),
            connect_timeout,
        }
    }

    /// An idle, open connection to `node`, or a new one.
    pub(crate) async fn take(&self, node: &str) -> Result<Sender> {
        loop {
            let idle = self
                .idle
                .lock()
                .expect("pool lock")
                .get_mut(node)
                .and_then(Vec::pop);
            match idle {
                // Not necessarily ready yet (the connection task may still be
                // finishing the last exchange): `exchange` waits for that.
                Some(sender) if !sender.is_closed() => return Ok(sender),
                Some(_) => continue, // closed while idle
                None => break,
            }
        }
        self.connect(node).await
    }

    /// Returns a connection whose exchange completed.
    pub(crate) fn give_back(&self, node: &str, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        match idle.get_mut(node) {
            Some(list) if list.len() < self.per_node => list.push(sender),
            Some(_) => {}
            None => {
                idle.insert(node.to_string(), vec![sender]);
            }
        }
    }

    /// A new connection to `node`, not from (nor returned to) the pool.
    pub(crate) async fn connect_new(&self, node: &str) -> Result<Sender> {
        self.connect(node).await
    }

    async fn connect(&self, node: &str) -> Result<Sender> {
        let unreachable = |e: &dyn std::fmt::Display| Error::Unreachable(format!("{node}: {e}"));
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(node))
                .await
                .map_err(|_| Error::Timeout(self.connect_timeout))?
                .map_err(|e| unreachable(&e))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "node connection ended");
            }
        });
        Ok(sender)
    }
}

/// Sends `request` on `sender` once it is ready.
pub(crate) async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> std::result::Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(request).await
}
