//! The peer protocol's transport: one QUIC endpoint (quinn) per node on `peer_addr`,
//! serving peers and connecting to them, with mutual TLS against the cluster CA
//! ([`pki::peer_tls`](super::pki::peer_tls)).
//!
//! Per connection, the first stream carries the [`Message::Hello`] exchange that
//! fixes the version; then one request per stream: the requester writes one frame
//! and finishes its side, the server answers with one or more frames and finishes.
//! A frame that fails its checksum, announces too much, or is not a message of this
//! version resets *that stream* (and is counted); the connection and its other
//! streams carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fanz_protocol::peer::{negotiate, Contacts, ErrorCode, FrameError, Message, VERSION};
use tokio::sync::Mutex;

use crate::metrics::{Metrics, PeerRefusal};

/// Stream error code sent when a frame is refused.
const BAD_FRAME: u32 = 1;
/// How long a peer has to send its request frame once a stream is open.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which a peer connection is considered dead.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting (handshake and Hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A peer request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Could not connect, or the connection broke.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(SocketAddr, String),
    /// The peer did not answer in time.
    #[error("peer {0} timed out")]
    Timeout(SocketAddr),
    /// The peer sent something this node cannot accept.
    #[error("peer {0} sent a bad frame: {1}")]
    BadFrame(SocketAddr, FrameError),
    /// The peer answered with an error (it may accept the same request later).
    #[error("peer {0} refused: {1}")]
    Refused(SocketAddr, String),
    /// The peer says the request itself is bad: sending it again cannot help.
    #[error("peer {0} rejected the request as bad: {1}")]
    Rejected(SocketAddr, String),
}

impl PeerError {
    /// Whether the same request may succeed if sent again: everything but a
    /// request the peer rejected as bad.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PeerError::Rejected(..))
    }
}

/// What a node serves to its peers. `respond` writes the answer frames.
pub trait PeerService: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        request: Message,
        respond: Responder,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// The sending half of a request's stream, for the answer.
pub struct Responder {
    send: quinn::SendStream,
    version: u16,
}

impl Responder {
    /// The protocol version agreed with the asker: an answer kind newer than it
    /// must not be sent.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Writes one frame; `false` if the peer went away.
    pub async fn send(&mut self, message: &Message) -> bool {
        self.send.write_chunk(message.to_frame()).await.is_ok()
    }

    /// Writes a body chunk as a Data frame without copying it: the frame header
    /// and the bytes go to quinn as separate chunks.
    pub async fn send_data(&mut self, bytes: Bytes) -> bool {
        let header = fanz_protocol::peer::data_frame_header(&bytes);
        self.send
            .write_all_chunks(&mut [header, bytes])
            .await
            .is_ok()
    }

    /// Finishes the answer.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// Reads frames from a stream, bounded by the frame limit.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_frame: usize,
    peer: SocketAddr,
}

impl FrameReader {
    fn new(recv: quinn::RecvStream, max_frame: usize, peer: SocketAddr) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            max_frame,
            peer,
        }
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Message>, PeerError> {
        loop {
            match Message::decode(&mut self.buf, self.max_frame) {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => {
                    let _ = self.recv.stop(BAD_FRAME.into());
                    return Err(PeerError::BadFrame(self.peer, e));
                }
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(PeerError::Unreachable(
                        self.peer,
                        "stream ended inside a frame".into(),
                    ))
                }
                Err(e) => return Err(PeerError::Unreachable(self.peer, e.to_string())),
            }
        }
    }
}

/// The node's peer endpoint: serves peers and connects to them. A cluster of one
/// has none ([`PeerTransport::none`]): it has no peer to talk to.
pub struct PeerTransport {
    bound: Option<Bound>,
    node_id: String,
    max_frame: usize,
    /// One slot per peer: connecting to one peer (up to the connect timeout when it
    /// is dead) never holds up requests to the others.
    connections: std::sync::Mutex<HashMap<SocketAddr, Arc<Mutex<Option<quinn::Connection>>>>>,
    /// When each peer (by node id) last sent this node a request. A member's
    /// anti-entropy round reaches this node no later than that, so fencing bounds
    /// the leases a member may hold by it ([`Contacts`], `cluster::safety`).
    contacts: std::sync::Mutex<HashMap<String, Instant>>,
    /// When this transport started: no peer not in `contacts` asked anything since.
    started: Instant,
    metrics: Arc<Metrics>,
}

/// A bound endpoint and the TLS it connects to peers with.
struct Bound {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("node_id", &self.node_id)
            .field("addr", &self.local_addr())
            .finish()
    }
}

impl PeerTransport {
    /// Binds `addr` with the cluster's TLS; frames over `max_frame` bytes are refused.
    pub fn bind(
        addr: SocketAddr,
        (server_tls, client_tls): (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>),
        node_id: String,
        max_frame: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(1024u32.into());
        // A peer that stops answering (killed, partitioned) fails its connection
        // within the idle timeout, so requests waiting on it move on to the next
        // owner instead of hanging; the keep-alives keep healthy idle connections up.
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(PEER_IDLE_TIMEOUT).map_err(|e| e.to_string())?,
        ));
        transport.keep_alive_interval(Some(PEER_IDLE_TIMEOUT / 3));
        let transport = Arc::new(transport);
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| e.to_string())?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport.clone());
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)
            .map_err(|e| e.to_string())?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server, addr).map_err(|e| e.to_string())?;
        Ok(Self {
            bound: Some(Bound { endpoint, client }),
            node_id,
            max_frame,
            connections: std::sync::Mutex::new(HashMap::new()),
            contacts: std::sync::Mutex::new(HashMap::new()),
            started: Instant::now(),
            metrics,
        })
    }

    /// The transport of a cluster of one: no endpoint, nothing served, and every
    /// request fails as unreachable (its routing never makes one).
    pub fn none(node_id: String, metrics: Arc<Metrics>) -> Self {
        Self {
            bound: None,
            node_id,
            max_frame: 0,
            connections: std::sync::Mutex::new(HashMap::new()),
            contacts: std::sync::Mutex::new(HashMap::new()),
            started: Instant::now(),
            metrics,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.bound.as_ref()?.endpoint.local_addr().ok()
    }

    /// Serves peers with `service` until the endpoint closes.
    pub async fn serve<S: PeerService>(self: Arc<Self>, service: Arc<S>) {
        let Some(bound) = &self.bound else { return };
        while let Some(incoming) = bound.endpoint.accept().await {
            let (this, service) = (self.clone(), service.clone());
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let connection = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        // An unknown CA, no client certificate: refused here.
                        tracing::warn!(peer = %remote, error = %e, "peer connection refused");
                        this.metrics.count_peer_refusal(PeerRefusal::Handshake);
                        return;
                    }
                    Err(_) => return,
                };
                this.serve_connection(connection, remote, service).await;
            });
        }
    }

    async fn serve_connection<S: PeerService>(
        &self,
        connection: quinn::Connection,
        remote: SocketAddr,
        service: Arc<S>,
    ) {
        // The first stream: Hello each way.
        let hello = async {
            let (mut send, recv) = connection.accept_bi().await.ok()?;
            let mut reader = FrameReader::new(recv, self.max_frame, remote);
            let Ok(Some(Message::Hello { version, node_id })) = reader.next().await else {
                return None;
            };
            let Some(agreed) = negotiate(version) else {
                let refusal = Message::Error {
                    code: ErrorCode::Version,
                    message: format!(
                        "version {version} is not supported (this node speaks {VERSION})"
                    ),
                };
                let _ = send.write_chunk(refusal.to_frame()).await;
                let _ = send.finish();
                self.metrics.count_peer_refusal(PeerRefusal::Version);
                // Let the refusal arrive before the connection is closed under it.
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                return None;
            };
            let reply = Message::Hello {
                version: agreed,
                node_id: self.node_id.clone(),
            };
            send.write_chunk(reply.to_frame()).await.ok()?;
            let _ = send.finish();
            Some((node_id, agreed))
        };
        let Ok(Some((peer_id, version))) = tokio::time::timeout(CONNECT_TIMEOUT, hello).await
        else {
            connection.close(1u32.into(), b"no valid hello");
            return;
        };
        tracing::debug!(peer = %remote, %peer_id, "peer connected");
        while let Ok((send, recv)) = connection.accept_bi().await {
            self.note_contact(&peer_id);
            let service = service.clone();
            let (max_frame, metrics) = (self.max_frame, self.metrics.clone());
            tokio::spawn(async move {
                let mut reader = FrameReader::new(recv, max_frame, remote);
                let request = match tokio::time::timeout(REQUEST_TIMEOUT, reader.next()).await {
                    Ok(Ok(Some(request))) => request,
                    Ok(Err(PeerError::BadFrame(_, e))) => {
                        tracing::debug!(peer = %remote, error = %e, "bad peer frame; stream reset");
                        metrics.count_peer_refusal(PeerRefusal::from(&e));
                        let mut send = send;
                        let _ = send.reset(BAD_FRAME.into());
                        return;
                    }
                    _ => return,
                };
                service.handle(request, Responder { send, version }).await;
            });
        }
    }

    /// Sends `request` to the peer at `to` and returns a reader of its answer.
    pub async fn request(
        &self,
        to: SocketAddr,
        request: &Message,
    ) -> Result<FrameReader, PeerError> {
        let connection = self.connection(to).await?;
        let opened = async {
            let (mut send, recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_chunk(request.to_frame())
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            Ok::<_, String>(recv)
        };
        match opened.await {
            Ok(recv) => Ok(FrameReader::new(recv, self.max_frame, to)),
            Err(e) => {
                // A broken connection is dropped; the next request reconnects.
                *self.slot(to).lock().await = None;
                Err(PeerError::Unreachable(to, e))
            }
        }
    }

    fn slot(&self, to: SocketAddr) -> Arc<Mutex<Option<quinn::Connection>>> {
        let mut slots = self.connections.lock().expect("connection map lock");
        slots.entry(to).or_default().clone()
    }

    /// `node_id` sent this node a request just now (allocates only for a new peer:
    /// this runs for every request).
    fn note_contact(&self, node_id: &str) {
        let now = Instant::now();
        let mut contacts = self.contacts.lock().expect("contacts lock");
        match contacts.get_mut(node_id) {
            Some(at) => *at = now,
            None => {
                contacts.insert(node_id.to_string(), now);
            }
        }
    }

    /// How long ago each peer last sent this node a request, and how long this
    /// transport has been up: what an ack tells the record's sender.
    pub fn contacts(&self) -> Contacts {
        let now = Instant::now();
        let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
        Contacts {
            uptime_ms: ms(self.started),
            ages_ms: self
                .contacts
                .lock()
                .expect("contacts lock")
                .iter()
                .map(|(id, at)| (id.clone(), ms(*at)))
                .collect(),
        }
    }

    /// Closes the connection to `to`, if there is one: its peer left or restarted.
    /// A restarted peer cannot tell the old connection's packets from noise, so
    /// without this every request on it would wait out the idle timeout.
    pub async fn forget(&self, to: SocketAddr) {
        let slot = self
            .connections
            .lock()
            .expect("connection map lock")
            .get(&to)
            .cloned();
        let Some(slot) = slot else { return };
        let connection = slot.lock().await.take();
        if let Some(connection) = connection {
            connection.close(0u32.into(), b"peer left");
        }
    }

    /// A one-frame request and its one-frame answer within `timeout`; an `Error`
    /// answer is a [`PeerError::Refused`].
    pub async fn call(
        &self,
        to: SocketAddr,
        request: &Message,
        timeout: Duration,
    ) -> Result<Message, PeerError> {
        let exchange = async {
            let mut reader = self.request(to, request).await?;
            match reader.next().await? {
                Some(Message::Error {
                    code: ErrorCode::BadRequest,
                    message,
                }) => Err(PeerError::Rejected(to, message)),
                Some(Message::Error { message, .. }) => Err(PeerError::Refused(to, message)),
                Some(answer) => Ok(answer),
                None => Err(PeerError::Refused(to, "no answer".into())),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PeerError::Timeout(to))?
    }

    async fn connection(&self, to: SocketAddr) -> Result<quinn::Connection, PeerError> {
        let slot = self.slot(to);
        let mut current = slot.lock().await;
        if let Some(c) = current.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(c.clone());
        }
        // Connecting under this peer's lock: concurrent requests to it share one
        // connection instead of racing to open several.
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(to))
            .await
            .map_err(|_| PeerError::Timeout(to))??;
        *current = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(&self, to: SocketAddr) -> Result<quinn::Connection, PeerError> {
        let unreachable = |e: String| PeerError::Unreachable(to, e);
        let bound = self
            .bound
            .as_ref()
            .ok_or_else(|| unreachable("a cluster of one has no peer endpoint".into()))?;
        let connection = bound
            .endpoint
            .connect_with(
                bound.client.clone(),
                to,
                crate::cluster::pki::PEER_SERVER_NAME,
            )
            .map_err(|e| unreachable(e.to_string()))?
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let hello = Message::Hello {
            version: VERSION,
            node_id: self.node_id.clone(),
        };
        send.write_chunk(hello.to_frame())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = send.finish();
        match FrameReader::new(recv, self.max_frame, to).next().await? {
            Some(Message::Hello { version, .. }) if negotiate(version).is_some() => Ok(connection),
            Some(Message::Error { message, .. }) => Err(PeerError::Refused(to, message)),
            other => Err(PeerError::Refused(
                to,
                format!("unexpected hello: {other:?}"),
            )),
        }
    }

    /// Closes every connection and the endpoint.
    pub async fn close(&self) {
        let Some(bound) = &self.bound else { return };
        bound.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), bound.endpoint.wait_idle()).await;
    }
}
