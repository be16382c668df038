//! Who is in the cluster: the identity each node gossips about itself, and the view
//! (members, their state, the ring) the rest of the node reads.

use std::net::SocketAddr;
use std::sync::Arc;

use fanz_protocol::ring::{Ring, RingMember};
use serde::{Deserialize, Serialize};

/// What a node tells the cluster about itself; carried in SWIM packets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Unique, stable node id: the ring hashes it.
    pub id: String,
    /// Gossip (UDP) address: SWIM's identity address.
    pub gossip: SocketAddr,
    /// Peer protocol (QUIC) address.
    pub peer: SocketAddr,
    /// Main HTTP address.
    pub http: SocketAddr,
    /// Failure domain, e.g. a zone name.
    pub zone: String,
    /// Relative capacity on the ring.
    pub weight: u32,
    /// Distinguishes this run of the node from earlier ones at the same address
    /// (milliseconds since the epoch at start-up, +1 on each rejoin), so a
    /// restarted node replaces its old, down identity at once.
    pub generation: u64,
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// A member's liveness as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; declared down unless it refutes in time.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl From<foca::State> for MemberState {
    fn from(s: foca::State) -> Self {
        match s {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        }
    }
}

/// One member in a [`View`].
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Its identity.
    #[serde(flatten)]
    pub identity: NodeIdentity,
    /// Its state.
    pub state: MemberState,
    /// SWIM incarnation (raised by a member to refute suspicion).
    pub incarnation: u16,
    /// Whether it is this node.
    pub local: bool,
}

/// The cluster as this node sees it at one moment.
#[derive(Debug, Clone)]
pub struct View {
    /// Every member known, this node included, sorted by id.
    pub members: Vec<Member>,
    /// Ownership over the members that are alive or suspect (a suspect member
    /// keeps its keys until it is declared down, so one missed probe does not
    /// move keys back and forth).
    pub ring: Arc<Ring>,
}

impl View {
    /// The view of a cluster of `members` with `replicas` owners per key.
    pub fn new(mut members: Vec<Member>, replicas: usize) -> Self {
        members.sort_by(|a, b| a.identity.id.cmp(&b.identity.id));
        let ring = Ring::new(
            members
                .iter()
                .filter(|m| m.state != MemberState::Down)
                .map(|m| RingMember {
                    id: m.identity.id.clone(),
                    weight: m.identity.weight,
                }),
            replicas,
        );
        Self {
            members,
            ring: Arc::new(ring),
        }
    }

    /// The view of a cluster of one: this node, alive, owning every key.
    pub fn alone(identity: NodeIdentity) -> Self {
        let me = Member {
            identity,
            state: MemberState::Alive,
            incarnation: 0,
            local: true,
        };
        Self::new(vec![me], 1)
    }

    /// The member with node id `id`.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.identity.id == id)
    }

    /// Members that are alive (this node included).
    pub fn alive(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
    }
}
