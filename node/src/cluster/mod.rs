//! The cluster: membership ([`gossip`], SWIM via foca, encrypted with the
//! [`keyring`]), who owns which key ([`membership::View`] and its ring, from
//! `fanz_protocol::ring`; [`routing`]), the trust material ([`pki`]), the peer
//! protocol over QUIC with mutual TLS ([`transport`], served by [`service`]),
//! cluster-wide invalidation and anti-entropy ([`replication`]), whether this node
//! may vouch for its hits ([`sync`]), and the rules that make both safe, as pure
//! functions ([`safety`]).
//!
//! A node joins a cluster when `cluster_dir` is set; without it, it runs alone and
//! none of this starts.

pub mod gossip;
pub mod keyring;
pub mod membership;
pub mod pki;
pub mod replication;
pub mod routing;
pub mod safety;
pub mod service;
pub mod sync;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::cache::Cache;
use crate::config::ClusterSettings;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use gossip::{Gossip, GossipConfig};
use membership::{Member, NodeIdentity, View};
use replication::Replicator;
use routing::Routing;
use service::NodePeerService;
use sync::SyncGate;
use transport::PeerTransport;

/// A running cluster membership.
#[derive(Debug)]
pub struct Cluster {
    node_id: String,
    gossip: Gossip,
    transport: Arc<PeerTransport>,
    routing: Arc<Routing>,
    replicator: Arc<Replicator>,
}

/// What the cluster serves to peers and routes through them.
#[derive(Debug)]
pub struct ClusterParts {
    /// The node's cache.
    pub cache: Arc<Cache>,
    /// The node's proxy, when it has origins.
    pub proxy: Option<Arc<Proxy>>,
    /// Largest peer frame accepted (a whole KV value and its metadata).
    pub max_frame: usize,
    /// How long an owner has to start answering a fetch.
    pub fetch_timeout: Duration,
    /// The node's data directory (what it has applied of the cluster's purges).
    pub data_dir: std::path::PathBuf,
}

/// How long a starting node waits for a peer to catch up from before serving.
const INITIAL_SYNC_LIMIT: Duration = Duration::from_secs(3);

impl Cluster {
    /// Joins (or starts) the cluster described by `settings`; `http` is this node's
    /// main HTTP address, as advertised to the others.
    pub async fn start(
        settings: &ClusterSettings,
        http: SocketAddr,
        metrics: Arc<Metrics>,
        parts: ClusterParts,
    ) -> Result<Self, String> {
        let dir = settings
            .dir
            .as_ref()
            .ok_or("cluster_dir is not set")?
            .clone();
        let keyring = keyring::Keyring::load(&dir.join(pki::KEYRING))
            .map_err(|e| format!("{}: {e}", dir.join(pki::KEYRING).display()))?;
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", host_name(), settings.gossip_addr.port()));
        let generation = crate::clock::now_ms();
        let tls = crate::tls::peer_configs(&dir).map_err(|e| e.to_string())?;
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
        let cache = parts.cache.clone();
        let service = Arc::new(NodePeerService::new(parts.cache, parts.proxy.clone()));
        tokio::spawn(transport.clone().serve(service.clone()));
        let identity = NodeIdentity {
            id: node_id.clone(),
            gossip: settings.gossip_addr,
            peer: transport.local_addr().unwrap_or(settings.peer_addr),
            http,
            zone: settings.zone.clone(),
            weight: settings.weight,
            generation,
        };
        let (piggyback_tx, mut piggyback_rx) = tokio::sync::mpsc::unbounded_channel();
        let gossip = Gossip::start(
            GossipConfig {
                identity,
                bind: settings.gossip_addr,
                seeds: settings.seeds.clone(),
                keyring: Arc::new(keyring),
                replicas: settings.replicas,
                suspicion: settings.suspicion,
                probe_period: settings.probe_period,
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
        let gate = SyncGate::new(
            settings.partition_mode,
            settings.max_unsynced,
            metrics.clone(),
        );
        gate.start_ticker();
        let replicator = Replicator::new(
            node_id.clone(),
            generation,
            cache.clone(),
            transport.clone(),
            gossip.view(),
            gate.clone(),
            metrics,
            settings.purge_ack_timeout,
            settings.suspicion,
            parts.data_dir,
            gossip.broadcaster(),
        );
        {
            // Invalidations that arrive by SWIM piggyback (the backstop path).
            let replicator = replicator.clone();
            tokio::spawn(async move {
                while let Some(record) = piggyback_rx.recv().await {
                    if let Err(e) = replicator.apply(record).await {
                        tracing::debug!(error = %e, "a piggybacked invalidation was not applied");
                    }
                }
            });
        }
        service.attach_replicator(replicator.clone());
        if let Some(proxy) = &parts.proxy {
            proxy.attach_cluster(routing.clone(), replicator.clone());
        }
        replicator.track_down_members();
        replicator.replicate_edges();
        // Catch up on what was purged while this node was away before serving.
        replicator.initial_sync(INITIAL_SYNC_LIMIT).await;
        // State from an earlier run: it may hold values, and miss purges, that the
        // others made while it was away or not yet seen back.
        if replicator.resumed() {
            // The others see it alive within a few probe periods of its announce.
            gate.rejoining(settings.probe_period * 4 + Duration::from_millis(500));
        }
        cache.attach_sync_gate(gate);
        replicator.start_anti_entropy(settings.sync_interval);
        Ok(Self {
            node_id,
            gossip,
            transport,
            routing,
            replicator,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The current view of the cluster (members and ring).
    pub fn view(&self) -> Arc<View> {
        self.gossip.view().borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.gossip.view()
    }

    /// What `GET /cluster` shows.
    pub fn report(&self) -> ClusterReport {
        let view = self.view();
        let shares: std::collections::HashMap<&str, f64> = view.ring.shares().into_iter().collect();
        ClusterReport {
            node_id: self.node_id.clone(),
            replicas: view.ring.replicas(),
            local_health: self.gossip.local_health(),
            members: view
                .members
                .iter()
                .map(|m| MemberReport {
                    share: shares.get(m.identity.id.as_str()).copied().unwrap_or(0.0),
                    member: m.clone(),
                })
                .collect(),
        }
    }

    /// Owner routing.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// Cluster-wide invalidation.
    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.replicator
    }

    /// The peer transport.
    pub fn transport(&self) -> &Arc<PeerTransport> {
        &self.transport
    }

    /// Leaves the cluster gracefully (its keys move to the others at once).
    pub async fn leave(&self) {
        // First stop vouching for hits: once the others see this node down they
        // complete purges without it.
        self.replicator.leaving();
        self.gossip.leave().await;
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

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}
