//! The cluster: membership ([`gossip`], SWIM via foca, encrypted with the
//! [`keyring`]), who owns which key ([`membership::View`] and its ring, from
//! `fanz_protocol::ring`; [`routing`]), the trust material ([`pki`]), the peer
//! protocol over QUIC with mutual TLS ([`transport`]; what a node answers on it is
//! `front::peer`), cluster-wide invalidation and anti-entropy ([`replication`]),
//! which feeds whether this node may vouch for its hits (`crate::sync_gate`), and
//! the rules that make both safe, as pure functions ([`safety`]).
//!
//! Every node has a [`Cluster`]. With `cluster_dir` set it joins the others; without
//! it, it is a cluster of one: a fixed view of itself, owning every key, with no
//! gossip, no peer endpoint and no one to send a record to. The rest of the node
//! uses the same [`Routing`], [`Replicator`] and [`SyncGate`] either way.

pub mod gossip;
pub mod keyring;
pub mod membership;
pub mod pki;
pub mod replication;
pub mod routing;
pub mod safety;
pub mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::cache::Cache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sync_gate::SyncGate;
use fanz_protocol::log::Record;
use gossip::{Gossip, GossipConfig};
use membership::{Member, NodeIdentity, View};
use replication::{Replicator, ReplicatorBase};
use routing::Routing;
use transport::{PeerService, PeerTransport};

/// This node's cluster: a joined membership, or a cluster of one.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    transport: Arc<PeerTransport>,
    routing: Arc<Routing>,
    replicator: Arc<Replicator>,
    /// SWIM membership; `None` for a cluster of one, whose view never changes.
    gossip: Option<Gossip>,
    view: watch::Receiver<Arc<View>>,
}

/// What the cluster is built on.
#[derive(Debug)]
pub struct ClusterParts {
    /// The node's cache.
    pub cache: Arc<Cache>,
    /// The node's sync state, which the cache asks before every hit.
    pub gate: Arc<SyncGate>,
    /// The dependency edges the node records, to replicate (a cluster of one drops
    /// them).
    pub edges: mpsc::UnboundedReceiver<Vec<Record>>,
    /// Largest peer frame accepted (a whole KV value and its metadata).
    pub max_frame: usize,
    /// How long an owner has to start answering a fetch.
    pub fetch_timeout: Duration,
    /// The node's data directory (what it has applied of the cluster's purges).
    pub data_dir: PathBuf,
}

/// How long a starting node waits for a peer to catch up from before serving.
const INITIAL_SYNC_LIMIT: Duration = Duration::from_secs(3);
/// The node id of a cluster of one without `node_id`.
const ALONE_ID: &str = "local";

impl Cluster {
    /// The cluster the `settings` describe: joined (or started) when `cluster_dir`
    /// is set, else a cluster of one. `http` is this node's main HTTP address, as
    /// advertised to the others. Peers are not served until [`Cluster::serve`].
    pub async fn open(
        settings: &Config,
        http: SocketAddr,
        metrics: Arc<Metrics>,
        parts: ClusterParts,
    ) -> Result<Self, String> {
        match &settings.cluster_dir {
            Some(dir) => Self::join(dir, settings, http, metrics, parts).await,
            None => Ok(Self::alone(settings, http, metrics, parts)),
        }
    }

    fn alone(
        settings: &Config,
        http: SocketAddr,
        metrics: Arc<Metrics>,
        parts: ClusterParts,
    ) -> Self {
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(|| ALONE_ID.to_string());
        let identity = NodeIdentity {
            id: node_id.clone(),
            gossip: settings.gossip_addr,
            peer: settings.peer_addr,
            http,
            zone: settings.zone.clone(),
            weight: settings.weight,
            generation: 0,
        };
        // The sender goes at once: the view of one never changes.
        let (_, view) = watch::channel(Arc::new(View::alone(identity)));
        let transport = Arc::new(PeerTransport::none(node_id.clone(), metrics.clone()));
        let routing = Arc::new(Routing::new(
            node_id.clone(),
            view.clone(),
            transport.clone(),
            parts.fetch_timeout,
        ));
        let replicator = Replicator::alone(ReplicatorBase {
            node_id: node_id.clone(),
            generation: 0,
            cache: parts.cache,
            transport: transport.clone(),
            view: view.clone(),
            gate: parts.gate,
            metrics,
        });
        Self {
            node_id,
            transport,
            routing,
            replicator,
            gossip: None,
            view,
        }
    }

    async fn join(
        dir: &std::path::Path,
        settings: &Config,
        http: SocketAddr,
        metrics: Arc<Metrics>,
        parts: ClusterParts,
    ) -> Result<Self, String> {
        let keyring = keyring::Keyring::load(&dir.join(pki::KEYRING))
            .map_err(|e| format!("{}: {e}", dir.join(pki::KEYRING).display()))?;
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name(), settings.gossip_addr.port()));
        let generation = crate::clock::now_ms();
        let tls = pki::peer_tls(dir).map_err(|e| e.to_string())?;
        let transport = Arc::new(
            PeerTransport::bind(
                settings.peer_addr,
                tls,
                node_id.clone(),
                parts.max_frame,
                metrics.clone(),
            )
            .map_err(|e| format!("peer_addr {}: {e}", settings.peer_addr))?,
        );
        let identity = NodeIdentity {
            id: node_id.clone(),
            gossip: settings.gossip_addr,
            peer: transport.local_addr().unwrap_or(settings.peer_addr),
            http,
            zone: settings.zone.clone(),
            weight: settings.weight,
            generation,
        };
        let (piggyback_tx, mut piggyback_rx) = mpsc::unbounded_channel();
        let gossip = Gossip::start(
            GossipConfig {
                identity,
                bind: settings.gossip_addr,
                seeds: settings.seeds.clone(),
                keyring: Arc::new(keyring),
                replicas: settings.replicas,
                suspicion: settings.gossip_suspicion,
                probe_period: settings.gossip_probe_period,
            },
            metrics.clone(),
            piggyback_tx,
        )
        .await?;
        tracing::info!(
            node_id = %node_id,
            gossip = %gossip.local_addr(),
            seeds = settings.seeds.len(),
            "cluster membership started"
        );
        let routing = Arc::new(Routing::new(
            node_id.clone(),
            gossip.view(),
            transport.clone(),
            parts.fetch_timeout,
        ));
        parts.gate.start_ticker();
        let replicator = Replicator::new(
            ReplicatorBase {
                node_id: node_id.clone(),
                generation,
                cache: parts.cache,
                transport: transport.clone(),
                view: gossip.view(),
                gate: parts.gate,
                metrics,
            },
            settings.purge_ack_timeout,
            parts.data_dir,
            gossip.broadcaster(),
        );
        {
            // Invalidations that arrive by SWIM piggyback (the backstop path).
            let replicator = replicator.clone();
            tokio::spawn(async move {
                while let Some(record) = piggyback_rx.recv().await {
                    let replicator = replicator.clone();
                    // Each on its own: one held back (a test hook) holds no other.
                    tokio::spawn(async move {
                        if let Err(e) = replicator.apply_pushed(record).await {
                            tracing::debug!(error = %e, "a piggybacked invalidation was not applied");
                        }
                    });
                }
            });
        }
        replicator.track_membership(rejoin_settle(settings));
        close_connections_to_departed(gossip.view(), transport.clone());
        replicator.replicate_edges(parts.edges);
        Ok(Self {
            node_id,
            transport,
            routing,
            replicator,
            view: gossip.view(),
            gossip: Some(gossip),
        })
    }

    /// Serves peers with `service`, catches up on what was purged while this node
    /// was away, and keeps catching up every `sync_interval`: a joined node is then
    /// ready to serve clients. A cluster of one has nothing to do.
    pub async fn serve<S: PeerService>(&self, settings: &Config, service: Arc<S>) {
        if self.gossip.is_none() {
            return;
        }
        tokio::spawn(self.transport.clone().serve(service));
        let replicator = &self.replicator;
        // Catch up on what was purged while this node was away before serving.
        replicator.initial_sync(INITIAL_SYNC_LIMIT).await;
        // State from an earlier run: it may hold values, and miss purges, that the
        // others made while it was away or not yet seen back.
        if replicator.resumed() {
            // The others see it alive within a few probe periods of its announce.
            replicator.rejoining(rejoin_settle(settings));
        }
        // From now on every hit asks the gate (peers' reads during the catch-up
        // above were answered unchecked, as before issue 19).
        replicator.guard_hits();
        replicator.start_anti_entropy(settings.sync_interval);
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this is a cluster of one (no `cluster_dir`).
    pub fn is_alone(&self) -> bool {
        self.gossip.is_none()
    }

    /// The current view of the cluster (members and ring).
    pub fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// What `GET /cluster` shows. A cluster of one shows itself, alive, owning
    /// every key.
    pub fn report(&self) -> serde_json::Value {
        let view = self.view();
        let Some(gossip) = &self.gossip else {
            let me = &view.members[0].identity;
            return serde_json::json!({
                "node_id": self.node_id,
                "replicas": 1,
                "alone": true,
                "members": [{
                    "id": me.id,
                    "http": me.http.to_string(),
                    "state": "alive",
                    "weight": 1,
                    "zone": "",
                    "local": true,
                    "share": 1.0,
                }],
            });
        };
        let shares: std::collections::HashMap<&str, f64> = view.ring.shares().into_iter().collect();
        let report = ClusterReport {
            node_id: self.node_id.clone(),
            replicas: view.ring.replicas(),
            local_health: gossip.local_health(),
            members: view
                .members
                .iter()
                .map(|m| MemberReport {
                    share: shares.get(m.identity.id.as_str()).copied().unwrap_or(0.0),
                    member: m.clone(),
                })
                .collect(),
        };
        serde_json::to_value(report).unwrap_or_default()
    }

    /// Owner routing.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// Cluster-wide invalidation.
    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.replicator
    }

    /// Leaves the cluster gracefully (its keys move to the others at once). A
    /// cluster of one has no one to leave.
    pub async fn leave(&self) {
        let Some(gossip) = &self.gossip else { return };
        // First stop vouching for hits: once the others see this node down they
        // complete purges without it.
        self.replicator.leaving();
        gossip.leave().await;
    }

    /// Closes the peer endpoint (after the listeners have drained).
    pub async fn close(&self) {
        self.transport.close().await;
    }
}

/// The cluster as `GET /cluster` reports it.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// This node.
    pub node_id: String,
    /// Owners per key.
    pub replicas: usize,
    /// Lifeguard local health multiplier (0 = healthy).
    pub local_health: u32,
    /// Every member known, with its share of the keys.
    pub members: Vec<MemberReport>,
}

/// One member in a [`ClusterReport`].
#[derive(Debug, Serialize)]
pub struct MemberReport {
    /// The member.
    #[serde(flatten)]
    pub member: Member,
    /// Expected fraction of keys it owns as primary (0 when down).
    pub share: f64,
}

/// How long after a node comes back (restarted, or rejoined after being declared
/// down) the others take to see it alive: its first catch-up round that counts
/// begins after it.
fn rejoin_settle(settings: &Config) -> Duration {
    settings.gossip_probe_period * 4 + Duration::from_millis(500)
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Closes the peer connection to every member that goes down or comes back as a
/// new run (another generation), as the view changes: requests then reconnect at
/// once instead of waiting out a dead connection's idle timeout.
fn close_connections_to_departed(
    mut view: watch::Receiver<Arc<View>>,
    transport: Arc<PeerTransport>,
) {
    tokio::spawn(async move {
        // Each member's run and peer address, as last seen alive.
        let mut runs: std::collections::HashMap<String, (u64, SocketAddr)> = Default::default();
        loop {
            let departed = departed_peers(&view.borrow_and_update(), &mut runs);
            for peer in departed {
                transport.forget(peer).await;
            }
            if view.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The peer addresses of the runs in `runs` that `view` shows down or replaced;
/// `runs` is brought up to date.
fn departed_peers(
    view: &View,
    runs: &mut std::collections::HashMap<String, (u64, SocketAddr)>,
) -> Vec<SocketAddr> {
    let mut departed = Vec::new();
    for member in view.members.iter().filter(|m| !m.local) {
        let id = &member.identity;
        let run = (id.generation, id.peer);
        if member.state == membership::MemberState::Down {
            departed.extend(runs.remove(&id.id).map(|(_, peer)| peer));
        } else if let Some(old) = runs.insert(id.id.clone(), run) {
            if old != run {
                departed.push(old.1);
            }
        }
    }
    departed
}

#[cfg(test)]
mod tests {
    use super::*;
    use membership::MemberState;

    fn member(id: &str, generation: u64, state: MemberState, local: bool) -> Member {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let n: u16 = id[1..].parse().unwrap();
        Member {
            identity: NodeIdentity {
                id: id.into(),
                gossip: addr(7000 + n),
                peer: addr(8000 + n),
                http: addr(9000 + n),
                zone: String::new(),
                weight: 1,
                generation,
            },
            state,
            incarnation: 0,
            local,
        }
    }

    #[test]
    fn connections_close_when_a_member_goes_down_or_comes_back_as_a_new_run() {
        use MemberState::*;
        let mut runs = Default::default();
        let view = |members| View::new(members, 2);
        let n2 = SocketAddr::from(([127, 0, 0, 1], 8002));
        let me = || member("n1", 1, Alive, true);
        let seen = view(vec![me(), member("n2", 5, Alive, false)]);
        assert!(departed_peers(&seen, &mut runs).is_empty());
        // Suspected is not gone: its connection may still carry answers.
        let suspect = view(vec![me(), member("n2", 5, Suspect, false)]);
        assert!(departed_peers(&suspect, &mut runs).is_empty());
        // Restarted before anyone noticed: a new generation at the same address.
        let restarted = view(vec![me(), member("n2", 9, Alive, false)]);
        assert_eq!(departed_peers(&restarted, &mut runs), vec![n2]);
        assert!(departed_peers(&restarted, &mut runs).is_empty());
        let down = view(vec![me(), member("n2", 9, Down, false)]);
        assert_eq!(departed_peers(&down, &mut runs), vec![n2]);
        assert!(departed_peers(&down, &mut runs).is_empty(), "once");
        // This node's own entry is never a peer.
        assert!(departed_peers(&view(vec![member("n1", 2, Alive, true)]), &mut runs).is_empty());
    }
}
