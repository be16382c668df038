//! What the client knows of the cluster: its members, the ring that says which of
//! them own a key (the same `fanz_protocol::ring` the nodes use, so the client goes
//! straight to an owner), and the KV facts the nodes announce (prefix, limits).
//! Learned from any seed's admin `GET /cluster`; a lone node describes itself as a
//! cluster of one.

use fanz_protocol::ring::{Ring, RingMember};
use fanz_protocol::CacheKey;
use serde::Deserialize;

use crate::error::{Error, Result};

/// One member as `GET /cluster` reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    /// Node id (the ring hashes it).
    pub id: String,
    /// Main HTTP address (`host:port`): where its KV API is.
    pub http: String,
    /// `alive`, `suspect` or `down`.
    pub state: String,
    /// Relative capacity on the ring.
    #[serde(default = "one")]
    pub weight: u32,
    /// Failure domain.
    #[serde(default)]
    pub zone: String,
}

fn one() -> u32 {
    1
}

/// The body of `GET /cluster`, the parts the client uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterReport {
    /// The answering node.
    pub node_id: String,
    /// Owners per key.
    pub replicas: usize,
    /// Every member it knows.
    pub members: Vec<Member>,
    /// Path prefix of the KV API (`/kv/`).
    pub kv_prefix: String,
    /// Longest key the nodes accept.
    pub max_key_size: usize,
    /// Largest value the nodes accept.
    pub max_value_size: u64,
}

/// Members and ownership at one moment.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The report it was built from.
    pub report: ClusterReport,
    ring: Ring,
}

impl Topology {
    /// Builds the ring over the members that are not down, as the nodes do.
    pub fn new(report: ClusterReport) -> Result<Self> {
        if report.members.is_empty() {
            return Err(Error::Protocol {
                node: report.node_id.clone(),
                message: "cluster report without members".into(),
            });
        }
        let ring = Ring::new(
            report
                .members
                .iter()
                .filter(|m| m.state != "down")
                .map(|m| RingMember {
                    id: m.id.clone(),
                    weight: m.weight,
                }),
            report.replicas,
        );
        Ok(Self { report, ring })
    }

    /// Where to send an operation on `key`, best first: its owners in ring order
    /// (alive before suspect), then every other alive member (any node forwards
    /// to the owners).
    pub fn candidates(&self, key: &[u8]) -> Vec<&Member> {
        let encoded = CacheKey::kv(key);
        let owners: Vec<&Member> = self
            .ring
            .owners(encoded.encoded())
            .into_iter()
            .filter_map(|o| self.member(&o.id))
            .collect();
        let mut out: Vec<&Member> = owners
            .iter()
            .copied()
            .filter(|m| m.state == "alive")
            .collect();
        out.extend(owners.iter().copied().filter(|m| m.state == "suspect"));
        out.extend(
            self.report
                .members
                .iter()
                .filter(|m| m.state == "alive" && !owners.iter().any(|o| o.id == m.id)),
        );
        out
    }

    /// The owners of `key` in ring order, whatever their state.
    pub fn owners(&self, key: &[u8]) -> Vec<&Member> {
        self.ring
            .owners(CacheKey::kv(key).encoded())
            .into_iter()
            .filter_map(|o| self.member(&o.id))
            .collect()
    }

    /// Every member not down.
    pub fn alive(&self) -> impl Iterator<Item = &Member> {
        self.report.members.iter().filter(|m| m.state != "down")
    }

    fn member(&self, id: &str) -> Option<&Member> {
        self.report.members.iter().find(|m| m.id == id)
    }

    /// Share of the keys each member owns as primary.
    pub fn shares(&self) -> Vec<(String, f64)> {
        self.ring
            .shares()
            .into_iter()
            .map(|(id, share)| (id.to_string(), share))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(states: &[(&str, &str)]) -> ClusterReport {
        ClusterReport {
            node_id: "a".into(),
            replicas: 2,
            members: states
                .iter()
                .enumerate()
                .map(|(i, (id, state))| Member {
                    id: id.to_string(),
                    http: format!("127.0.0.1:{}", 8000 + i),
                    state: state.to_string(),
                    weight: 1,
                    zone: String::new(),
                })
                .collect(),
            kv_prefix: "/kv/".into(),
            max_key_size: 8192,
            max_value_size: 1 << 20,
        }
    }

    #[test]
    fn owners_come_first_then_every_other_alive_member() {
        let t = Topology::new(report(&[
            ("a", "alive"),
            ("b", "alive"),
            ("c", "alive"),
            ("d", "alive"),
        ]))
        .unwrap();
        for key in [&b"k1"[..], b"k2", b"user:42"] {
            let owners: Vec<_> = t.owners(key).iter().map(|m| m.id.clone()).collect();
            let candidates: Vec<_> = t.candidates(key).iter().map(|m| m.id.clone()).collect();
            assert_eq!(owners.len(), 2);
            assert_eq!(candidates[..2], owners[..]);
            assert_eq!(candidates.len(), 4, "every member is a fallback");
        }
    }

    #[test]
    fn down_members_own_nothing_and_are_never_candidates() {
        let t = Topology::new(report(&[("a", "alive"), ("b", "down"), ("c", "alive")])).unwrap();
        for i in 0..200 {
            let key = format!("k{i}");
            assert!(t.owners(key.as_bytes()).iter().all(|m| m.id != "b"));
            assert!(t.candidates(key.as_bytes()).iter().all(|m| m.id != "b"));
        }
    }

    #[test]
    fn suspect_owners_are_tried_after_alive_ones() {
        let t = Topology::new(report(&[("a", "alive"), ("b", "suspect"), ("c", "alive")])).unwrap();
        for i in 0..200 {
            let key = format!("k{i}");
            let c = t.candidates(key.as_bytes());
            if let Some(pos) = c.iter().position(|m| m.state == "suspect") {
                assert!(c[pos..].iter().all(|m| m.state == "suspect"
                    || !t.owners(key.as_bytes()).iter().any(|o| o.id == m.id)));
            }
        }
    }

    #[test]
    fn an_empty_report_is_an_error() {
        assert!(Topology::new(report(&[])).is_err());
    }
}
