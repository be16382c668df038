//! The memory tier for small entries: one allocation per entry (key and encoded
//! entry together), slots in a vector, an index of 32-bit slot numbers, and
//! S3-FIFO eviction over slot numbers, in shards.
//!
//! foyer's memory tier keeps, per entry, a reference-counted record (key and value
//! handles, hash, weight, eviction links, flags) beside the key's and the value's
//! own allocations: about 160 bytes before the value, which put 100-byte values at
//! 1.8x memcached's memory (issue 21, part 3). Here an entry costs its blob, a
//! 24-byte slot, an 8-byte queue place and its index slot.
//!
//! Eviction is S3-FIFO, as foyer's was (the Zipf hit ratio must not fall): new keys
//! enter a small FIFO (a tenth of the capacity); one read there moves an entry to
//! the main FIFO when it reaches the front, otherwise it is evicted and its hash
//! remembered (the ghost, as many as there are entries); a key whose hash is in
//! the ghost enters the main FIFO directly. In the main FIFO an entry read since it last reached the front goes
//! round again (its count lowered), one not read is evicted.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fanz_protocol::{CacheKey, Entry};
use hashbrown::HashTable;

/// Entries whose encoding is at most this long live here; larger ones in foyer's
/// memory tier.
pub(super) const SMALL_ENTRY_MAX: usize = 16 * 1024;
const SHARDS: usize = 64;
/// Where the key starts in a blob (after its length).
const KEY_AT: usize = 4;
/// Largest access count (S3-FIFO's two bits).
const MAX_FREQ: u8 = 3;

/// The small-entry tier. Cheap to share (`Arc` it).
pub(super) struct SmallTier {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    usage: AtomicUsize,
}

impl std::fmt::Debug for SmallTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmallTier")
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

struct Slot {
    /// `[key length: u32 LE][key][encoded entry]`; `None` when the slot is free.
    /// An `Arc<[u8]>` (16 bytes here) rather than `Bytes` (32): a hit wraps a clone
    /// of it in a `Bytes` (one small allocation while the response lives).
    blob: Option<Arc<[u8]>>,
    freq: u8,
    /// Bumped whenever the slot is freed, so that queue places of an earlier
    /// occupant are recognised and skipped.
    generation: u32,
    /// Queued in the small FIFO (else in the main one).
    in_small: bool,
}

impl Slot {
    fn blob(&self) -> &[u8] {
        self.blob.as_deref().unwrap_or_default()
    }

    fn key(&self) -> &[u8] {
        key_of(self.blob())
    }
}

fn key_of(blob: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]);
    &blob[KEY_AT..KEY_AT + len as usize]
}

/// An entry encoded for this tier ([`SmallTier::encode`]): its key and its
/// encoding in the one allocation it lives in.
#[derive(Debug)]
pub(super) struct Encoded(Arc<[u8]>);

impl Encoded {
    /// The entry's encoding: a `Bytes` over the allocation (a small handle, for the
    /// disk tier's queue or a read).
    pub(super) fn encoding(&self) -> Bytes {
        let key_len = key_of(&self.0).len();
        Bytes::from_owner(self.0.clone()).slice(KEY_AT + key_len..)
    }
}

/// When [`SmallTier::put`] stores.
#[derive(Debug, Clone, Copy)]
pub(super) enum Put {
    /// Always.
    Always,
    /// Only over a value held under the key; counted as a use of it, as a read is
    /// (a client's write of a key is one: Redis's LRU counts writes too).
    Replace,
    /// Unless the key's shard changed since it stood at this ([`SmallTier::changes`]).
    Unchanged(u64),
}

/// What [`SmallTier::put`] did.
pub(super) struct Stored {
    /// Entries evicted to make room.
    pub(super) evicted: usize,
    /// The value it replaced.
    pub(super) replaced: Option<Encoded>,
}

/// A queue place: slot number and the generation it was queued with.
type Place = (u32, u32);

#[derive(Default)]
struct Shard {
    index: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    small: VecDeque<Place>,
    main: VecDeque<Place>,
    /// Fingerprints (the hash's low half) of keys recently evicted from the small
    /// FIFO, oldest first, and how many times each is in it.
    ghost: VecDeque<u32>,
    ghost_counts: HashMap<u32, u8>,
    small_weight: usize,
    weight: usize,
    capacity: usize,
    /// Inserts and removals made here so far, of any key (a removal of a key not
    /// held counts too: its value may have moved to the other memory tier). A read
    /// from disk notes it before and keeps what it read only if it has not moved
    /// ([`SmallTier::promote`]).
    changes: u64,
}

/// A ghost's 32 bits of a key's hash (the low half: the shard is chosen by others).
fn fingerprint(hash: u64) -> u32 {
    hash as u32
}

/// What an entry counts against the capacity: its key and encoding, as foyer's
/// weigher counts them. The bookkeeping (slot, queue place, index, ghost: about 50
/// bytes) is not counted, as foyer's record (about 160) was not: counting it would
/// hold fewer entries in the same setting than before, and lower the hit ratio.
fn weigh(blob: &[u8]) -> usize {
    blob.len()
}

impl SmallTier {
    /// A tier holding at most `capacity` bytes of keys and encodings.
    pub(super) fn new(capacity: usize) -> Self {
        let per_shard = (capacity / SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        capacity: per_shard,
                        ..Shard::default()
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            usage: AtomicUsize::new(0),
        }
    }

    /// Bytes held (keys and encodings; see [`weigh`]).
    pub(super) fn usage(&self) -> usize {
        self.usage.load(Ordering::Relaxed)
    }

    /// The shard of `hash`, chosen by bits 32-37: hashbrown takes its buckets from
    /// the low bits and its control bytes from the top seven, which must still
    /// differ between the keys of one shard.
    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(hash >> 32) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The encoded entry under `key`, counted as a read.
    pub(super) fn get(&self, key: &CacheKey) -> Option<Bytes> {
        let raw = key.encoded();
        let hash = self.hasher.hash_one(raw);
        let mut shard = self.shard(hash);
        let Shard { index, slots, .. } = &mut *shard;
        let &id = index.find(hash, |&id| slots[id as usize].key() == raw)?;
        let slot = &mut slots[id as usize];
        slot.freq = (slot.freq + 1).min(MAX_FREQ);
        let blob = slot.blob.clone()?;
        drop(shard);
        Some(Bytes::from_owner(blob).slice(KEY_AT + raw.len()..))
    }

    /// `key`'s hash, as this tier computes it.
    pub(super) fn hash(&self, key: &CacheKey) -> u64 {
        self.hasher.hash_one(key.encoded())
    }

    /// Whether `key` is held (not counted as a read).
    pub(super) fn contains(&self, key: &CacheKey) -> bool {
        self.with_slot(key, |slot| slot.is_some())
    }

    /// Runs `f` on the slot holding `key`, if any, under its shard's lock.
    fn with_slot<R>(&self, key: &CacheKey, f: impl FnOnce(Option<&Slot>) -> R) -> R {
        let raw = key.encoded();
        let hash = self.hasher.hash_one(raw);
        let shard = self.shard(hash);
        let found = shard
            .index
            .find(hash, |&id| shard.slots[id as usize].key() == raw);
        f(found.map(|&id| &shard.slots[id as usize]))
    }

    /// Whether `entry` belongs here: its encoding is at most [`SMALL_ENTRY_MAX`].
    pub(super) fn takes(entry: &Entry) -> bool {
        entry.encoded_len() <= SMALL_ENTRY_MAX
    }

    /// Stores `entry` (one [`SmallTier::takes`]) under `key`, replacing what it
    /// held. Returns how many entries were evicted to make room.
    #[cfg(test)]
    pub(super) fn insert(&self, key: &CacheKey, entry: &Entry) -> usize {
        let stored = self.put(self.hash(key), key, Self::encode(key, entry), Put::Always);
        stored.expect("an unconditional put").evicted
    }

    /// `entry` (one [`SmallTier::takes`]) encoded for `key`, once, into the
    /// allocation it will live in.
    pub(super) fn encode(key: &CacheKey, entry: &Entry) -> Encoded {
        Encoded(Self::blob(key, entry.encoded_len(), |b| {
            entry.encode_to_slice(b)
        }))
    }

    /// Stores `encoded` under `key` (of `hash`), replacing what it held, as `how`
    /// says; hands `encoded` back when it is not stored.
    pub(super) fn put(
        &self,
        hash: u64,
        key: &CacheKey,
        encoded: Encoded,
        how: Put,
    ) -> Result<Stored, Encoded> {
        let raw = key.encoded();
        let mut shard = self.shard(hash);
        let replace_only = match how {
            Put::Always => false,
            Put::Replace => true,
            Put::Unchanged(changes_before) if shard.changes != changes_before => {
                return Err(encoded)
            }
            Put::Unchanged(_) => false,
        };
        let before = shard.weight;
        let stored = shard.insert(hash, raw, encoded.0, replace_only, &self.hasher);
        if stored.is_ok() {
            shard.changes = shard.changes.wrapping_add(1);
        }
        let after = shard.weight;
        drop(shard);
        self.account(before, after);
        stored.map_err(Encoded)
    }

    /// Where `key`'s shard stands ([`Shard::changes`]): taken before a disk read
    /// whose result [`SmallTier::promote`] may keep.
    pub(super) fn changes(&self, key: &CacheKey) -> u64 {
        self.shard(self.hash(key)).changes
    }

    /// Keeps an entry's encoding read back from the disk tier, unless its shard
    /// changed since `changes_before` (taken before the read): the key may have
    /// been written or removed meanwhile, and the read's value is then older than
    /// what memory holds or the removal. Returns how many entries were evicted to
    /// make room, or `None` when it was not kept (the next read goes to disk again).
    pub(super) fn promote(
        &self,
        key: &CacheKey,
        encoded: &[u8],
        changes_before: u64,
    ) -> Option<usize> {
        let blob = Encoded(Self::blob(key, encoded.len(), |b| {
            b.copy_from_slice(encoded)
        }));
        let stored = self.put(self.hash(key), key, blob, Put::Unchanged(changes_before));
        stored.ok().map(|stored| stored.evicted)
    }

    /// A blob of `key` and an encoding of `encoded_len` bytes that `encode` writes,
    /// made in its one allocation.
    fn blob(key: &CacheKey, encoded_len: usize, encode: impl FnOnce(&mut [u8])) -> Arc<[u8]> {
        let raw = key.encoded();
        let encoded_at = KEY_AT + raw.len();
        // Collected from an iterator of known length: allocated once, in place.
        let mut blob: Arc<[u8]> = std::iter::repeat_n(0u8, encoded_at + encoded_len).collect();
        let out = Arc::get_mut(&mut blob).expect("not shared yet");
        out[..KEY_AT].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        out[KEY_AT..encoded_at].copy_from_slice(raw);
        encode(&mut out[encoded_at..]);
        blob
    }

    /// Removes `key`; whether it was held.
    pub(super) fn remove(&self, key: &CacheKey) -> bool {
        let raw = key.encoded();
        let hash = self.hasher.hash_one(raw);
        let mut shard = self.shard(hash);
        shard.changes = shard.changes.wrapping_add(1);
        let before = shard.weight;
        let removed = shard.remove(hash, raw);
        let after = shard.weight;
        drop(shard);
        self.account(before, after);
        removed
    }

    fn account(&self, before: usize, after: usize) {
        if after >= before {
            self.usage.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.usage.fetch_sub(before - after, Ordering::Relaxed);
        }
    }
}

impl Shard {
    /// Stores `blob` under `raw` (of `hash`), replacing what it held (only that,
    /// with `replace_only`: else `blob` is handed back), and evicts down to the
    /// capacity.
    fn insert(
        &mut self,
        hash: u64,
        raw: &[u8],
        blob: Arc<[u8]>,
        replace_only: bool,
        hasher: &RandomState,
    ) -> Result<Stored, Arc<[u8]>> {
        let weight = weigh(&blob);
        let Shard { index, slots, .. } = self;
        let mut replaced = None;
        if let Some(&id) = index.find(hash, |&id| slots[id as usize].key() == raw) {
            // Replaced in place: the key keeps its place and its reads.
            let slot = &mut slots[id as usize];
            let old = weigh(slot.blob());
            replaced = slot.blob.replace(blob).map(Encoded);
            if replace_only {
                slot.freq = (slot.freq + 1).min(MAX_FREQ);
            }
            self.weight = self.weight + weight - old;
            if slot.in_small {
                self.small_weight = self.small_weight + weight - old;
            }
        } else if replace_only {
            return Err(blob);
        } else {
            let id = match self.free.pop() {
                Some(id) => {
                    self.slots[id as usize].blob = Some(blob);
                    id
                }
                None => {
                    self.slots.push(Slot {
                        blob: Some(blob),
                        freq: 0,
                        generation: 0,
                        in_small: false,
                    });
                    (self.slots.len() - 1) as u32
                }
            };
            let slots = &self.slots;
            self.index
                .insert_unique(hash, id, |&id| hasher.hash_one(slots[id as usize].key()));
            let place = (id, self.slots[id as usize].generation);
            let in_small = !self.ghost_counts.contains_key(&fingerprint(hash));
            self.slots[id as usize].in_small = in_small;
            if in_small {
                self.small.push_back(place);
                self.small_weight += weight;
            } else {
                self.main.push_back(place);
            }
            self.weight += weight;
            self.compact_queues();
        }
        let mut evicted = 0;
        while self.weight > self.capacity && !self.index.is_empty() {
            if self.evict_one(hasher) {
                evicted += 1;
            }
        }
        Ok(Stored { evicted, replaced })
    }

    /// Drops the queue places of freed slots once they outnumber the live ones
    /// (removals leave them behind, and without eviction nothing pops them).
    fn compact_queues(&mut self) {
        if self.small.len() + self.main.len() <= 2 * self.index.len() + 64 {
            return;
        }
        let slots = &self.slots;
        let live = |&(id, generation): &Place| slots[id as usize].generation == generation;
        self.small.retain(live);
        self.main.retain(live);
    }

    /// Takes one step of S3-FIFO; whether it evicted an entry.
    fn evict_one(&mut self, hasher: &RandomState) -> bool {
        let from_small = self.small_weight > self.capacity / 10 || self.main.is_empty();
        if from_small {
            let Some((id, generation)) = self.small.pop_front() else {
                return false;
            };
            if self.slots[id as usize].generation != generation {
                return false;
            }
            let weight = weigh(self.slots[id as usize].blob());
            self.small_weight -= weight;
            if self.slots[id as usize].freq > 0 {
                // Its reads count on in the main FIFO, as in foyer's S3-FIFO.
                self.slots[id as usize].in_small = false;
                self.main.push_back((id, generation));
                return false;
            }
            let hash = hasher.hash_one(self.slots[id as usize].key());
            self.free_slot(id, hash);
            self.remember(fingerprint(hash));
            true
        } else {
            let Some((id, generation)) = self.main.pop_front() else {
                return false;
            };
            if self.slots[id as usize].generation != generation {
                return false;
            }
            let slot = &mut self.slots[id as usize];
            if slot.freq > 0 {
                slot.freq -= 1;
                self.main.push_back((id, generation));
                return false;
            }
            let hash = hasher.hash_one(slot.key());
            self.free_slot(id, hash);
            true
        }
    }

    /// Adds a ghost, as many as there are entries (as foyer's ghost queue holds
    /// about a capacity's worth; some 12 bytes each, not counted in the weight).
    fn remember(&mut self, print: u32) {
        self.ghost.push_back(print);
        let count = self.ghost_counts.entry(print).or_default();
        *count = count.saturating_add(1);
        while self.ghost.len() > self.index.len().max(16) {
            let Some(old) = self.ghost.pop_front() else {
                break;
            };
            if let std::collections::hash_map::Entry::Occupied(mut seen) =
                self.ghost_counts.entry(old)
            {
                *seen.get_mut() -= 1;
                if *seen.get() == 0 {
                    seen.remove();
                }
            }
        }
    }

    fn remove(&mut self, hash: u64, raw: &[u8]) -> bool {
        let Shard { index, slots, .. } = self;
        let Some(&id) = index.find(hash, |&id| slots[id as usize].key() == raw) else {
            return false;
        };
        if self.slots[id as usize].in_small {
            self.small_weight -= weigh(self.slots[id as usize].blob());
        }
        self.free_slot(id, hash);
        true
    }

    /// Frees slot `id` (whose key hashes to `hash`): out of the index, its blob
    /// dropped, its queue places made stale.
    fn free_slot(&mut self, id: u32, hash: u64) {
        if let Ok(found) = self.index.find_entry(hash, |&other| other == id) {
            found.remove();
        }
        let slot = &mut self.slots[id as usize];
        self.weight -= weigh(slot.blob());
        slot.blob = None;
        slot.freq = 0;
        slot.in_small = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanz_protocol::EntryMeta;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(body: &[u8]) -> Entry {
        Entry {
            meta: EntryMeta::default(),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn body(tier: &SmallTier, key: &CacheKey) -> Option<Vec<u8>> {
        tier.get(key)
            .map(|encoded| Entry::decode(encoded).unwrap().body.to_vec())
    }

    #[test]
    fn holds_replaces_and_removes_with_the_usage_to_match() {
        let tier = SmallTier::new(1 << 20);
        let (a, b) = (CacheKey::kv(b"a"), CacheKey::kv(b"b"));
        assert_eq!(tier.insert(&a, &entry(b"one")), 0);
        tier.insert(&b, &entry(b"two"));
        assert_eq!(body(&tier, &a).as_deref(), Some(&b"one"[..]));
        tier.insert(&a, &entry(b"one, longer"));
        assert_eq!(body(&tier, &a).as_deref(), Some(&b"one, longer"[..]));
        assert!(tier.contains(&b));
        assert!(tier.remove(&b));
        assert!(!tier.remove(&b));
        assert_eq!(body(&tier, &b), None);
        let one = entry(b"one, longer").encoded_len() + KEY_AT + a.encoded().len();
        assert_eq!(tier.usage(), one);
        tier.remove(&a);
        assert_eq!(tier.usage(), 0);
    }

    // S3-FIFO: entries read since they came in outlive a scan of new ones that are
    // never read; the capacity holds throughout.
    #[test]
    fn read_entries_outlive_a_scan_and_the_capacity_holds() {
        let capacity = 64 * 200 * 4; // about 4 entries of 200 bytes per shard
        let tier = SmallTier::new(capacity);
        let value = [7u8; 100];
        let hot: Vec<_> = (0..40)
            .map(|i| CacheKey::kv(format!("hot{i}").as_bytes()))
            .collect();
        for key in &hot {
            tier.insert(key, &entry(&value));
        }
        let mut evicted = 0;
        for round in 0..20 {
            for key in &hot {
                // Re-inserted when a scan pushed it out before it was read twice.
                if tier.get(key).is_none() {
                    tier.insert(key, &entry(&value));
                }
            }
            for i in 0..200 {
                let cold = CacheKey::kv(format!("cold{round}-{i}").as_bytes());
                evicted += tier.insert(&cold, &entry(&value));
                assert!(
                    tier.usage() <= capacity,
                    "usage {} over {capacity}",
                    tier.usage()
                );
            }
        }
        assert!(evicted > 3000, "only {evicted} evicted");
        let kept = hot.iter().filter(|key| tier.contains(key)).count();
        assert!(
            kept >= 30,
            "only {kept} of 40 read entries kept through the scans"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Remove(u8),
        Get(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..24, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u8..24).prop_map(Op::Remove),
            (0u8..24).prop_map(Op::Get),
        ]
    }

    proptest! {
        // Against a map: a read finds the latest value written, or (only once the
        // capacity forced evictions) nothing; never a removed or older one. The
        // usage stays within the capacity and matches what is held.
        #[test]
        fn reads_never_return_a_removed_or_older_value(
            ops in proptest::collection::vec(op(), 1..300),
            small in any::<bool>(),
        ) {
            let capacity = if small { 64 * 300 } else { 1 << 20 };
            let tier = SmallTier::new(capacity);
            let mut model: HashMap<u8, Vec<u8>> = HashMap::new();
            let mut evicted = 0;
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let value = vec![v; 20 + k as usize * 7];
                        evicted += tier.insert(&CacheKey::kv(&[k]), &entry(&value));
                        model.insert(k, value);
                    }
                    Op::Remove(k) => {
                        tier.remove(&CacheKey::kv(&[k]));
                        model.remove(&k);
                    }
                    Op::Get(k) => {
                        let got = body(&tier, &CacheKey::kv(&[k]));
                        match (&got, model.get(&k)) {
                            (Some(g), Some(m)) => prop_assert_eq!(g, m),
                            (Some(g), None) => prop_assert!(false, "{k} read {g:?} after its removal"),
                            (None, Some(_)) => prop_assert!(evicted > 0, "{k} lost without an eviction"),
                            (None, None) => {}
                        }
                    }
                }
                prop_assert!(tier.usage() <= capacity);
            }
            if evicted == 0 {
                let expected: usize = model
                    .iter()
                    .map(|(k, v)| entry(v).encoded_len() + KEY_AT + CacheKey::kv(&[*k]).encoded().len())
                    .sum();
                prop_assert_eq!(tier.usage(), expected);
            }
        }
    }
}
