//! What a node answers its peers: HTTP fetches for URLs it owns (through its proxy,
//! so concurrent misses from every node collapse into one origin request), and KV
//! reads, writes and deletes for keys it owns.

use std::net::IpAddr;
use std::sync::Arc;

use fanz_protocol::peer::{ErrorCode, Message, CONTACTS_SINCE, UNVOUCHED_SINCE};
use fanz_protocol::Entry;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;

use crate::cache::HitPolicy;
use crate::cache::{Cache, Lookup};
use crate::cluster::replication::Replicator;
use crate::cluster::transport::{PeerService, Responder};
use crate::invalidation::PurgeTargets;
use crate::proxy::Proxy;

/// Body bytes per Data frame: large enough to amortise framing, small enough to
/// stream.
const DATA_CHUNK: usize = 256 * 1024;

/// The node's answers to its peers.
#[derive(Debug)]
pub struct NodePeerService {
    cache: Arc<Cache>,
    proxy: Option<Arc<Proxy>>,
    replicator: Arc<Replicator>,
}

impl NodePeerService {
    /// Answers from `cache`, fetches URLs through `proxy` when one is configured,
    /// and applies replicated invalidations and answers pulls with `replicator`.
    pub fn new(cache: Arc<Cache>, proxy: Option<Arc<Proxy>>, replicator: Arc<Replicator>) -> Self {
        Self {
            cache,
            proxy,
            replicator,
        }
    }

    async fn fetch(
        &self,
        method: String,
        url: String,
        headers: Vec<(bytes::Bytes, bytes::Bytes)>,
        mut respond: Responder,
    ) {
        let Some(proxy) = self.proxy.clone() else {
            refuse(
                respond,
                ErrorCode::BadRequest,
                "this node proxies no origin",
            )
            .await;
            return;
        };
        let mut request = Request::builder().uri(url.as_str());
        match Method::from_bytes(method.as_bytes()) {
            Ok(m) => request = request.method(m),
            Err(_) => return refuse(respond, ErrorCode::BadRequest, "bad method").await,
        }
        for (name, value) in headers {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&name),
                HeaderValue::from_maybe_shared(value),
            ) else {
                return refuse(respond, ErrorCode::BadRequest, "bad header").await;
            };
            request = request.header(name, value);
        }
        let Ok(request) = request.body(()) else {
            return refuse(respond, ErrorCode::BadRequest, "bad request URL").await;
        };
        let (parts, ()) = request.into_parts();
        // The requesting node is the client here (its own client's address is not
        // forwarded yet).
        let response = proxy
            .handle_for_peer(parts, IpAddr::from([127, 0, 0, 1]))
            .await;
        let (parts, mut body) = response.into_parts();
        let head = Message::Head {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        bytes::Bytes::copy_from_slice(k.as_str().as_bytes()),
                        bytes::Bytes::copy_from_slice(v.as_bytes()),
                    )
                })
                .collect(),
        };
        if !respond.send(&head).await {
            return;
        }
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue;
                    };
                    while !data.is_empty() {
                        let chunk = data.split_to(data.len().min(DATA_CHUNK));
                        if !respond.send_data(chunk).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    // No End frame: the asking node sees the answer cut off and
                    // does not store it.
                    tracing::debug!(error = %e, "body failed while answering a peer");
                    return;
                }
            }
        }
        if respond.send(&Message::End).await {
            respond.finish();
        }
    }
}

/// The answer to a Get this node cannot vouch for: its copy (or none) to an asker
/// that speaks [`Message::Unvouched`], which can check the copy against the purges
/// it applied itself and knows a returning owner holds nothing newer than it says;
/// a refusal to an older one, which then asks the next owner.
fn unvouched(lookup: Lookup, version: u16) -> Message {
    if version < UNVOUCHED_SINCE {
        return Message::Error {
            code: ErrorCode::Unavailable,
            message: "catching up with the cluster; ask another owner".into(),
        };
    }
    Message::Unvouched {
        entry: match lookup {
            Lookup::Hit(hit) => Some(hit.entry().encode()),
            Lookup::Miss(_) => None,
        },
    }
}

async fn refuse(mut respond: Responder, code: ErrorCode, message: &str) {
    let error = Message::Error {
        code,
        message: message.to_string(),
    };
    if respond.send(&error).await {
        respond.finish();
    }
}

impl PeerService for NodePeerService {
    async fn handle(&self, request: Message, mut respond: Responder) {
        let answer = match request {
            Message::Fetch {
                method,
                url,
                headers,
            } => return self.fetch(method, url, headers, respond).await,
            Message::Replicate { record } => match self.replicator.apply_pushed(record).await {
                // Whom this node heard from, as of now (after applying): the
                // sender fences members by it.
                Ok(invalidated) => Message::Applied {
                    invalidated,
                    contacts: (respond.version() >= CONTACTS_SINCE)
                        .then(|| self.replicator.contacts()),
                },
                Err(e) => Message::Error {
                    code: e.code(),
                    message: e.to_string(),
                },
            },
            Message::Pull { since } => {
                let (records, gap) = self.replicator.answer_pull(&since);
                Message::Records { records, gap }
            }
            Message::Get { key } => {
                let lookup = self.cache.get(&key).await;
                if self.cache.hit_policy().await == HitPolicy::Revalidate {
                    // What this node cannot vouch for (stalled, rejoining, or without
                    // a sync lease in consistency mode) is said to be so: "not found"
                    // would be taken as the answer. What it holds is still worth
                    // saying to an asker that can judge it.
                    unvouched(lookup, respond.version())
                } else {
                    match lookup {
                        Lookup::Hit(hit) => Message::Found {
                            entry: hit.entry().encode(),
                        },
                        Lookup::Miss(_) => Message::NotFound,
                    }
                }
            }
            Message::Put { key, entry } => match Entry::decode(entry) {
                Ok(entry) => match self.cache.set_replica(key, entry).await {
                    Ok(_) => Message::Done,
                    Err(e) => Message::Error {
                        code: ErrorCode::Unavailable,
                        message: e.to_string(),
                    },
                },
                Err(e) => Message::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("bad entry: {e}"),
                },
            },
            Message::Delete { key } => {
                let targets = PurgeTargets {
                    keys: vec![key],
                    ..PurgeTargets::default()
                };
                match self.cache.purge(&targets).await {
                    Ok(_) => Message::Done,
                    Err(e) => Message::Error {
                        code: ErrorCode::Unavailable,
                        message: e.to_string(),
                    },
                }
            }
            _ => Message::Error {
                code: ErrorCode::BadRequest,
                message: "not a request".into(),
            },
        };
        if respond.send(&answer).await {
            respond.finish();
        }
    }
}
