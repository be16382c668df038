//! Owner routing: which node a miss should be fetched from, and the fetch itself
//! over the peer protocol.
//!
//! Only a key's primary owner talks to the origin for it (origin shielding). Any
//! other node asks the owners in ring order; an owner that fails or is too slow is
//! skipped for the next one; when this node's own turn comes (it is the next
//! owner) or every owner failed, it goes to the origin itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanz_protocol::peer::Message;
use fanz_protocol::CacheKey;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use tokio::sync::watch;

use super::membership::{MemberState, View};
use super::transport::{FrameReader, PeerError, PeerTransport};
use crate::http::{channel_body, Body, BoxError};

/// This node's relation to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// First owner: fetches from the origin.
    Primary,
    /// Another owner: keeps a copy, fetches through the primary.
    Replica,
    /// Not an owner: fetches through the owners, keeps hot copies only.
    Other,
}

/// Routing of misses to owners.
#[derive(Debug)]
pub struct Routing {
    node_id: String,
    view: watch::Receiver<Arc<View>>,
    transport: Arc<PeerTransport>,
    /// How long an owner has to start answering before the next one is tried. Longer
    /// than the origin's own first-byte timeout, so a slow origin is not taken for
    /// a slow owner.
    timeout: Duration,
}

impl Routing {
    /// Routing for node `node_id` over `transport`, following `view`.
    pub fn new(
        node_id: String,
        view: watch::Receiver<Arc<View>>,
        transport: Arc<PeerTransport>,
        timeout: Duration,
    ) -> Self {
        Self {
            node_id,
            view,
            transport,
            timeout,
        }
    }

    /// This node's role for `key`.
    pub fn role(&self, key: &CacheKey) -> Role {
        let view = self.view.borrow();
        let owners = view.ring.owners(key.encoded());
        match owners.iter().position(|m| m.id == self.node_id) {
            Some(0) => Role::Primary,
            Some(_) => Role::Replica,
            // Alone (no ring member is alive, not even this node: weight 0): origin.
            None if owners.is_empty() => Role::Primary,
            None => Role::Other,
        }
    }

    /// The owners to ask before going to the origin: those ahead of this node in
    /// ring order (all of them when this node is not an owner), as (id, peer
    /// address). Suspected owners keep their keys on the ring but are skipped here:
    /// asking one would most likely wait for a timeout.
    pub fn owners_ahead(&self, key: &CacheKey) -> Vec<(String, SocketAddr)> {
        let view = self.view.borrow();
        view.ring
            .owners(key.encoded())
            .into_iter()
            .take_while(|m| m.id != self.node_id)
            .filter_map(|m| view.member(&m.id))
            .filter(|member| member.state == MemberState::Alive)
            .map(|member| (member.identity.id.clone(), member.identity.peer))
            .collect()
    }

    /// Whether this node knows of no other member (a node on its own, or one that
    /// has not joined anyone yet): then it alone orders the writes of every key.
    pub fn alone(&self) -> bool {
        let view = self.view.borrow();
        view.members.iter().all(|m| m.identity.id == self.node_id)
    }

    /// Whether this node owns `key` (or no ring member is alive): the KV hit path's
    /// check, without building the list of other owners.
    pub fn is_owner(&self, key: &CacheKey) -> bool {
        let view = self.view.borrow();
        let owners = view.ring.owners(key.encoded());
        owners.is_empty() || owners.iter().any(|m| m.id == self.node_id)
    }

    /// The owners of `key` other than this node, alive, in ring order, and whether
    /// this node is an owner itself.
    pub fn other_owners(&self, key: &CacheKey) -> (bool, Vec<(String, SocketAddr)>) {
        let view = self.view.borrow();
        let owners = view.ring.owners(key.encoded());
        let is_owner = owners.is_empty() || owners.iter().any(|m| m.id == self.node_id);
        let others = owners
            .into_iter()
            .filter(|m| m.id != self.node_id)
            .filter_map(|m| view.member(&m.id))
            .filter(|member| member.state == MemberState::Alive)
            .map(|member| (member.identity.id.clone(), member.identity.peer))
            .collect();
        (is_owner, others)
    }

    /// Sends a one-frame request (Get, Put, Delete) and reads its one-frame answer.
    pub async fn call(&self, to: SocketAddr, request: &Message) -> Result<Message, PeerError> {
        self.transport.call(to, request, self.timeout).await
    }

    /// Asks the node at `to` to answer `method url` as its proxy would; the
    /// response streams as it arrives.
    pub async fn fetch(
        &self,
        to: SocketAddr,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, PeerError> {
        let request = Message::Fetch {
            method: method.as_str().to_string(),
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        Bytes::copy_from_slice(k.as_str().as_bytes()),
                        Bytes::copy_from_slice(v.as_bytes()),
                    )
                })
                .collect(),
        };
        let head = async {
            let mut reader = self.transport.request(to, &request).await?;
            let first = reader.next().await?;
            Ok::<_, PeerError>((reader, first))
        };
        let (reader, first) = tokio::time::timeout(self.timeout, head)
            .await
            .map_err(|_| PeerError::Timeout(to))??;
        let (status, fields) = match first {
            Some(Message::Head { status, headers }) => (status, headers),
            Some(Message::Error { message, .. }) => return Err(PeerError::Refused(to, message)),
            other => {
                return Err(PeerError::Refused(
                    to,
                    format!("expected a response head, got {other:?}"),
                ))
            }
        };
        let mut response = Response::new(stream_body(reader));
        *response.status_mut() = StatusCode::from_u16(status)
            .map_err(|_| PeerError::Refused(to, format!("bad status {status}")))?;
        for (name, value) in fields {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&name),
                HeaderValue::from_maybe_shared(value),
            ) else {
                return Err(PeerError::Refused(to, "bad response header".into()));
            };
            response.headers_mut().append(name, value);
        }
        Ok(response)
    }
}

/// The Data frames of a fetch answer as a body; ends in an error unless an End
/// frame closes it, so a cut-off answer is never stored as complete.
fn stream_body(mut reader: FrameReader) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let item: Result<Bytes, BoxError> = match reader.next().await {
                Ok(Some(Message::Data { bytes })) => Ok(bytes),
                Ok(Some(Message::End)) => return,
                Ok(other) => Err(format!("peer answer cut off or malformed: {other:?}").into()),
                Err(e) => Err(e.to_string().into()),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    channel_body(rx)
}
