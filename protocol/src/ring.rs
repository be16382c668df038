//! Key ownership: which members of the cluster own a key, computed the same way by
//! every node and by the client library, from nothing but the member list.
//!
//! # Why rendezvous hashing
//!
//! Each member gets a score per key, a hash of (key, member); the `R` highest scores
//! own the key, in order (the first is the primary, the others are replicas). We
//! chose this (highest random weight, Thaler & Ravishankar 1996) over a virtual-node
//! ring and over Maglev because:
//! - **Minimal disruption, exactly.** A key moves only when the member that joined
//!   out-scores its owners or when one of its owners left, so a change moves ~1/N of
//!   the keys and only to or from the member that changed. A virtual-node ring gets
//!   close to that only with hundreds of points per node; Maglev moves a few extra.
//! - **Replicas for free.** The next-highest scores are the replicas, each distinct,
//!   with no walk skipping duplicate physical nodes.
//! - **Balance without tuning.** With a good hash each member's share is binomial:
//!   with 10 members and 1M keys the spread is well under 1%.
//! - **No state to build or agree on.** Lookups need only the member list, so a
//!   client that learned the list routes exactly like the nodes.
//!
//! The cost is O(N) hashes per lookup (a virtual-node ring is O(log V)). For the
//! clusters this serves (tens of nodes) that is tens of nanoseconds per member;
//! measured in `node/benches/ring.rs`.
//!
//! Weights use the logarithmic method (Schindelhauer & Schomaker): score =
//! `weight / -ln(u)` with `u` the hash mapped to (0, 1), which gives each member a
//! share proportional to its weight and keeps the minimal-disruption property.
//! When all weights are equal the hash itself is compared (same order, no `ln`).
//!
//! The hash is defined here ([`hash64`]: FNV-1a folded through the murmur3
//! finalizer), not taken from `std`, because every node and every client must
//! compute the same owners whatever their Rust version or platform.

/// A stable 64-bit hash of `bytes`: identical on every platform and release.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h ^ bytes.len() as u64)
}

/// murmur3's 64-bit finalizer: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A member as the ring sees it: an id (unique in the cluster) and a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingMember {
    /// The member's node id.
    pub id: String,
    /// Relative capacity; 0 owns nothing.
    pub weight: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    seed: u64,
    weight: f64,
}

/// The owners of every key for one member list and replication factor.
#[derive(Debug, Clone)]
pub struct Ring {
    members: Vec<RingMember>,
    slots: Vec<Slot>,
    replicas: usize,
    equal_weights: bool,
}

impl Ring {
    /// A ring over `members` (duplicates by id are kept once, the first weight wins)
    /// with `replicas` owners per key (at least 1; fewer when fewer members).
    pub fn new(members: impl IntoIterator<Item = RingMember>, replicas: usize) -> Self {
        let mut list: Vec<RingMember> = Vec::new();
        for m in members {
            if m.weight > 0 && !list.iter().any(|x| x.id == m.id) {
                list.push(m);
            }
        }
        // Order does not change ownership; sorting makes `members()` predictable.
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let slots = list
            .iter()
            .map(|m| Slot {
                seed: hash64(m.id.as_bytes()),
                weight: f64::from(m.weight),
            })
            .collect();
        let equal_weights = list.windows(2).all(|w| w[0].weight == w[1].weight);
        Self {
            members: list,
            slots,
            replicas: replicas.max(1),
            equal_weights,
        }
    }

    /// Members that own keys (weight above 0), sorted by id.
    pub fn members(&self) -> &[RingMember] {
        &self.members
    }

    /// Owners per key.
    pub fn replicas(&self) -> usize {
        self.replicas.min(self.members.len())
    }

    /// The owners of `key`, primary first. Empty only when the ring is.
    pub fn owners(&self, key: &[u8]) -> Vec<&RingMember> {
        let h = hash64(key);
        let want = self.replicas();
        // Keep the `want` best (score, index) pairs; `want` is small, so insertion
        // into a short sorted list beats sorting every member.
        let mut best: Vec<(f64, u64, usize)> = Vec::with_capacity(want + 1);
        for (i, slot) in self.slots.iter().enumerate() {
            let mixed = fmix64(h ^ slot.seed);
            let score = if self.equal_weights {
                0.0
            } else {
                weighted_score(mixed, slot.weight)
            };
            let pos = best
                .iter()
                .position(|&(s, m, _)| (score, mixed) > (s, m))
                .unwrap_or(best.len());
            if pos < want {
                best.insert(pos, (score, mixed, i));
                best.truncate(want);
            }
        }
        best.into_iter().map(|(_, _, i)| &self.members[i]).collect()
    }

    /// The primary owner of `key`.
    pub fn primary(&self, key: &[u8]) -> Option<&RingMember> {
        self.owners(key).into_iter().next()
    }

    /// Whether `id` is one of the owners of `key`.
    pub fn is_owner(&self, key: &[u8], id: &str) -> bool {
        self.owners(key).iter().any(|m| m.id == id)
    }

    /// Each member's expected share of primary ownership (weight / total), which
    /// is what rendezvous hashing converges to.
    pub fn shares(&self) -> Vec<(&str, f64)> {
        let total: f64 = self.slots.iter().map(|s| s.weight).sum();
        self.members
            .iter()
            .zip(&self.slots)
            .map(|(m, s)| (m.id.as_str(), s.weight / total))
            .collect()
    }
}

/// `weight / -ln(u)`, `u` in (0, 1) from the top 53 bits of `mixed`.
fn weighted_score(mixed: u64, weight: f64) -> f64 {
    let u = ((mixed >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn ring(n: usize, replicas: usize) -> Ring {
        Ring::new(
            (0..n).map(|i| RingMember {
                id: format!("node-{i}"),
                weight: 1,
            }),
            replicas,
        )
    }

    fn key(i: u64) -> Vec<u8> {
        format!("https://example.com/objects/{i}").into_bytes()
    }

    fn primaries(ring: &Ring, keys: u64) -> HashMap<String, u64> {
        let mut count = HashMap::new();
        for i in 0..keys {
            *count
                .entry(ring.primary(&key(i)).unwrap().id.clone())
                .or_default() += 1;
        }
        count
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Nodes and clients must agree: these values are part of the protocol.
        assert_eq!(hash64(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash64(b"node-1"), 0x9d66_7171_38d6_3ead);
    }

    #[test]
    fn ten_members_and_a_million_keys_are_balanced_within_ten_percent() {
        let ring = ring(10, 2);
        let count = primaries(&ring, 1_000_000);
        assert_eq!(count.len(), 10);
        let mean = 100_000.0;
        let max = *count.values().max().unwrap() as f64;
        assert!(
            max <= 1.10 * mean,
            "most loaded member: {max} vs mean {mean}"
        );
    }

    #[test]
    fn weights_give_proportional_shares() {
        let members = [("a", 1), ("b", 2), ("c", 1)].map(|(id, weight)| RingMember {
            id: id.into(),
            weight,
        });
        let ring = Ring::new(members, 1);
        let count = primaries(&ring, 200_000);
        let b = count["b"] as f64 / 200_000.0;
        assert!((b - 0.5).abs() < 0.01, "b's share {b}");
        assert_eq!(ring.shares()[1], ("b", 0.5));
    }

    #[test]
    fn owners_are_distinct_and_capped_by_the_member_count() {
        let ring = ring(3, 5);
        assert_eq!(ring.replicas(), 3);
        let owners = ring.owners(b"k");
        assert_eq!(owners.len(), 3);
        assert!(owners[0].id != owners[1].id && owners[1].id != owners[2].id);
        assert!(Ring::new([], 2).owners(b"k").is_empty());
        let zero = Ring::new(
            [RingMember {
                id: "idle".into(),
                weight: 0,
            }],
            2,
        );
        assert!(zero.primary(b"k").is_none(), "weight 0 owns nothing");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A join moves about 1/(N+1) of the keys, every one of them to the new
        /// member; a leave moves exactly the leaver's keys.
        #[test]
        fn a_join_or_leave_moves_about_one_nth_only_to_or_from_the_changed_member(
            n in 2usize..16,
            replicas in 1usize..4,
            salt in any::<u64>(),
        ) {
            let keys = 20_000u64;
            let members: Vec<RingMember> = (0..n)
                .map(|i| RingMember { id: format!("m{salt}-{i}"), weight: 1 })
                .collect();
            let before = Ring::new(members.clone(), replicas);
            let joiner = RingMember { id: format!("m{salt}-new"), weight: 1 };
            let after = Ring::new(members.iter().cloned().chain([joiner.clone()]), replicas);
            let without = Ring::new(members[1..].to_vec(), replicas);
            let (mut moved, mut left) = (0u64, 0u64);
            for i in 0..keys {
                let k = format!("{salt}/{i}").into_bytes();
                let (old, new) = (before.owners(&k), after.owners(&k));
                // Owners that stay keep their relative order; only the joiner enters.
                let kept: Vec<_> = new.iter().filter(|m| m.id != joiner.id).collect();
                for m in &kept {
                    prop_assert!(old.iter().any(|o| o.id == m.id), "a key moved to an old member");
                }
                if old[0].id != new[0].id {
                    prop_assert_eq!(&new[0].id, &joiner.id);
                    moved += 1;
                }
                // A leave moves only the leaver's keys.
                if without.primary(&k).unwrap().id != old[0].id {
                    prop_assert_eq!(&old[0].id, &members[0].id);
                    left += 1;
                }
            }
            for (count, members_then) in [(moved, n + 1), (left, n)] {
                let expected = keys as f64 / members_then as f64;
                let ratio = count as f64 / expected;
                prop_assert!((0.8..=1.2).contains(&ratio), "moved {} of {} keys, expected ~{}", count, keys, expected);
            }
        }

        /// Member order and duplicates do not change ownership.
        #[test]
        fn ownership_depends_only_on_the_member_set(ids in proptest::collection::vec("[a-z]{1,6}", 1..12), k in any::<Vec<u8>>()) {
            let members: Vec<RingMember> = ids.iter().map(|id| RingMember { id: id.clone(), weight: 1 }).collect();
            let mut reversed = members.clone();
            reversed.reverse();
            reversed.extend(members.iter().cloned());
            let (a, b) = (Ring::new(members, 2), Ring::new(reversed, 2));
            let ids_a: Vec<_> = a.owners(&k).iter().map(|m| m.id.clone()).collect();
            let ids_b: Vec<_> = b.owners(&k).iter().map(|m| m.id.clone()).collect();
            prop_assert_eq!(ids_a, ids_b);
        }
    }
}
