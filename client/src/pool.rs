//! Keep-alive HTTP/1.1 connections to the nodes, pooled per node address: an
//! operation takes an idle connection (or opens one), sends one request, reads the
//! whole answer, and gives the connection back. Leaner than a general-purpose
//! client pool: no URI authority parsing or keyed hashing per request. With a TLS
//! configuration, connections to the nodes' KV API are TLS (the admin seeds stay
//! plain HTTP, as the nodes serve them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::client::conn::http1::{handshake, SendRequest};
use hyper_util::rt::TokioIo;

use crate::error::{Error, Result};

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections by node address (`host:port`).
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<Sender>>>,
    per_node: usize,
    connect_timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("per_node", &self.per_node)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Pool {
    pub(crate) fn new(
        per_node: usize,
        connect_timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            per_node: per_node.max(1),
            connect_timeout,
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }

    /// A new plain-HTTP connection to `node` (the admin API), outside the pool.
    pub(crate) async fn connect_plain(&self, node: &str) -> Result<Sender> {
        let stream = self.tcp(node).await?;
        http1(node, stream).await
    }

    /// An idle, open connection to `node`, or a new one (over TLS when `secure` and
    /// the pool has a TLS configuration). A node address is either a KV or an admin
    /// listener, never both, so one pool per address holds one kind.
    pub(crate) async fn take(&self, node: &str, secure: bool) -> Result<Sender> {
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
        if secure {
            self.connect(node).await
        } else {
            self.connect_plain(node).await
        }
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

    async fn tcp(&self, node: &str) -> Result<tokio::net::TcpStream> {
        let stream =
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(node))
                .await
                .map_err(|_| Error::Timeout(self.connect_timeout))?
                .map_err(|e| Error::Unreachable(format!("{node}: {e}")))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect(&self, node: &str) -> Result<Sender> {
        let stream = self.tcp(node).await?;
        let Some(tls) = &self.tls else {
            return http1(node, stream).await;
        };
        let host = node.rsplit_once(':').map_or(node, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Error::Config(format!("{host:?} is not a TLS server name: {e}")))?;
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, stream))
            .await
            .map_err(|_| Error::Timeout(self.connect_timeout))?
            // A certificate the client does not trust: the node is not usable.
            .map_err(|e| Error::Unreachable(format!("{node}: TLS: {e}")))?;
        http1(node, stream).await
    }
}

/// The HTTP/1.1 handshake over `io`, its connection driven by its own task.
async fn http1<T>(node: &str, io: T) -> Result<Sender>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = handshake(TokioIo::new(io))
        .await
        .map_err(|e| Error::Unreachable(format!("{node}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "node connection ended");
        }
    });
    Ok(sender)
}

/// Sends `request` on `sender` once it is ready.
pub(crate) async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> std::result::Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(request).await
}
