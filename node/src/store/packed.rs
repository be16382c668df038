//! The disk tier of small entries (those [`super::small::SmallTier`] takes): records
//! packed back to back in the segments of one file, written a batch at a time, found
//! through an index in memory. foyer's block engine, which keeps the larger entries,
//! aligns each entry to a 4 KiB page and writes it through its own per-entry path;
//! here a 1 KiB entry takes about 1 KiB of disk and a batch one `pwrite`
//! (docs/PERFORMANCE.md, "KV writes: the disk tier writes a page per entry").
//!
//! **Layout.** The file is `segments` regions of `segment_size` bytes, used as a
//! ring, oldest reused first. A segment starts with a header (magic, its sequence
//! number, its size, the length written into the segment before it, crc) and holds
//! records: `head crc | body crc | kind | key length | value length | key | value`.
//! The head crc covers the segment's sequence number and the key, so that the
//! records a reused segment held before stop parsing once its new header is
//! written; the body crc covers the value. Values end with their own crc32 (an
//! entry's encoding does), so the body crc of every put is the same constant
//! ([`SELF_CHECKED_CRC`]), written without a second pass over the value and checked
//! against the value as read: a damaged value, or one written without its crc,
//! fails it.
//!
//! **Removals.** A removal drops the key's index entry and writes a tombstone with
//! the next batch. A removal of a key in the batch being written marks it there, so
//! that the batch does not index it afterwards. A tombstone is always newer than
//! the records it removes, and segments are reused oldest first, so it outlives
//! them.
//!
//! **Recovery** reads the segments in sequence order: a key's newest record wins, a
//! tombstone removes it. A record whose head is whole but whose value fails its crc
//! removes its key (an older value must not come back) and is counted as corrupt.
//! A segment whose records stop short of the length its successor's header gives
//! for it was damaged in the middle: what it held after the damage is unknown (a
//! newer value, a tombstone), so everything recovered up to there is dropped. In
//! the newest segment, records end where the last write before a stop ended; new
//! writes start in a fresh segment.
//!
//! A collision of two keys' 64-bit hashes only ever costs a miss: the index keeps
//! one location per hash, removals and tombstones act on the hash, and a read
//! checks the key.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{BufMut, Bytes};
use fanz_protocol::CacheKey;

use super::codec::CORRUPT_ENTRIES;

/// The file's name in the disk tier's directory (beside foyer's files).
pub(super) const FILE_NAME: &str = "small-entries.log";
const MAGIC: u32 = u32::from_le_bytes(*b"FZLG");
/// Bytes before a segment's first record: magic, sequence, segment size, length of
/// the previous segment, crc; padded.
const HEADER: usize = 32;
/// Bytes before a record's key: head crc, body crc, kind, key and value lengths.
const HEAD: usize = 17;
const PUT: u8 = 1;
const TOMBSTONE: u8 = 2;
/// Largest and smallest segment.
const MAX_SEGMENT: u64 = 16 << 20;
const MIN_SEGMENT: u64 = 64 << 10;
/// Segments the log is cut into, when its capacity allows.
const SEGMENTS: u64 = 32;
/// A segment's length as its successor's header gives it after a failed write.
const UNKNOWN_LEN: u32 = u32::MAX;
/// A batch takes at most this share of the log (1/n): a larger one would wrap
/// round the ring onto its own records.
const MAX_BATCH_SHARE: u64 = 4;

/// The crc32 of any bytes followed by their own crc32 (IEEE, little-endian): the
/// same for every such value (CRC-32's residue). The log's values are all such (an
/// entry's encoding ends with its crc), so a record's body crc is this, written
/// without reading the value again, and checked against the value as read.
pub(super) const SELF_CHECKED_CRC: u32 = 0x2144_DF1C;

/// Where a record is: its segment (24 bits), its offset there (24: segments are at
/// most 16 MiB) and its length (16), in one word, so that an index entry takes 16
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc(u64);

/// Longest record [`Loc`] can name.
const MAX_RECORD: usize = u16::MAX as usize;

impl Loc {
    fn new(segment: u32, offset: u32, len: usize) -> Self {
        debug_assert!(segment < 1 << 24 && offset < 1 << 24 && len <= MAX_RECORD);
        Self((segment as u64) << 40 | (offset as u64) << 16 | len as u64)
    }

    fn segment(self) -> u32 {
        (self.0 >> 40) as u32
    }

    fn offset(self) -> u32 {
        (self.0 >> 16) as u32 & 0xff_ffff
    }

    fn len(self) -> usize {
        self.0 as u16 as usize
    }
}

/// Hashes are already [`super::small::SmallTier::hash`]es: used as they are.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 hashes are indexed")
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

type Index = HashMap<u64, Loc, BuildHasherDefault<PassThrough>>;

/// Each key's newest value in a batch taken and not yet indexed, by the key's hash:
/// its batch, and the key and value (`None` once removed meanwhile).
type Writing = HashMap<u64, (u64, Option<(CacheKey, Bytes)>), BuildHasherDefault<PassThrough>>;

/// What the log holds of a key, as [`PackedLog::find`] answers.
#[derive(Debug)]
pub(super) enum Found {
    /// Its value, in the batch being written.
    Writing(Bytes),
    /// Its record, read with [`PackedLog::read`].
    At(Loc, u64),
    /// Nothing.
    Absent,
}

/// Entries taken for one write ([`PackedLog::take`]), then written
/// ([`PackedLog::write`]).
#[derive(Debug, Default)]
pub(super) struct Batch {
    id: u64,
    records: Vec<Placed>,
}

impl Batch {
    /// Bytes the batch's records take in the log.
    pub(super) fn len(&self) -> usize {
        self.records.iter().map(Placed::len).sum()
    }
}

/// A record of a batch and its place in the log.
#[derive(Debug)]
struct Placed {
    segment: u32,
    offset: u32,
    /// The segment's sequence number.
    seq: u64,
    /// The segment's header, for its first record.
    header: Option<[u8; HEADER]>,
    /// The key's hash (puts only), the key, the value (`None`: a tombstone).
    hash: u64,
    key: CacheKey,
    value: Option<Bytes>,
}

impl Placed {
    /// The record's length on disk.
    fn len(&self) -> usize {
        record_len(&self.key, self.value.as_ref())
    }
}

/// The log. Reads and the batch writer use the file at once (`pread`, `pwrite`).
pub(super) struct PackedLog {
    file: File,
    segment_size: u64,
    segments: u32,
    state: Mutex<State>,
    /// The writer's buffer, kept from batch to batch (a fresh one each time cost
    /// page faults on every write).
    buffer: Mutex<Vec<u8>>,
    /// A written batch's list of records, emptied, for the next batch to fill (for
    /// the same reason).
    spare_records: Mutex<Vec<Placed>>,
    written: AtomicU64,
    read: AtomicU64,
    /// Whether the last write failed (so that a disk that stays full is logged
    /// once, not at every batch).
    failing: AtomicBool,
    /// Makes writes fail (tests only), and counts them.
    #[cfg(test)]
    pub(super) fail_writes: AtomicBool,
    #[cfg(test)]
    failed_writes: AtomicU64,
}

impl std::fmt::Debug for PackedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLog")
            .field("segment_size", &self.segment_size)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

struct State {
    index: Index,
    /// Per segment: its sequence number (0: never written) and the hashes of the
    /// puts it holds (to drop their index entries when it is reused).
    seqs: Vec<u64>,
    hashes: Vec<Vec<u64>>,
    /// The segment written to, and where its next record goes.
    current: u32,
    end: u32,
    /// Whether the next record starts a segment (after a recovery).
    fresh: bool,
    next_seq: u64,
    /// Removals to write with the next batch (each key once).
    tombstones: std::collections::HashSet<CacheKey>,
    /// The batches taken and not yet indexed: each key's newest value and its
    /// batch, the value `None` once removed meanwhile.
    writing: Writing,
    /// The number of the next batch taken.
    next_batch: u64,
}

impl PackedLog {
    /// Opens (creating) the log at `dir` with `capacity` bytes, recovering its
    /// index; `hash` is the hash the index is keyed by.
    pub(super) fn open(
        dir: &Path,
        capacity: u64,
        hash: impl Fn(&CacheKey) -> u64,
    ) -> io::Result<Self> {
        let segment_size = (capacity / SEGMENTS).clamp(MIN_SEGMENT, MAX_SEGMENT) / 4096 * 4096;
        let segments = (capacity / segment_size).min(1 << 24) as u32;
        if segments < 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{capacity} bytes are too few for the small-entry log"),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE_NAME))?;
        let size = segment_size * segments as u64;
        if file.metadata()?.len() != size {
            file.set_len(size)?;
        }
        let log = Self {
            file,
            segment_size,
            segments,
            state: Mutex::new(State {
                index: Index::default(),
                seqs: vec![0; segments as usize],
                hashes: vec![Vec::new(); segments as usize],
                current: segments - 1,
                end: 0,
                fresh: true,
                next_seq: 1,
                tombstones: Default::default(),
                writing: Default::default(),
                next_batch: 0,
            }),
            buffer: Mutex::new(Vec::new()),
            spare_records: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
            #[cfg(test)]
            failed_writes: AtomicU64::new(0),
        };
        log.recover(&hash)?;
        Ok(log)
    }

    /// Removals waiting for the next batch.
    #[cfg(test)]
    pub(super) fn tombstones_waiting(&self) -> usize {
        self.lock().tombstones.len()
    }

    /// Bytes written to and read from the log since it was opened.
    pub(super) fn io(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.read.load(Ordering::Relaxed),
        )
    }

    /// Entries indexed.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().index.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_start(&self, segment: u32) -> u64 {
        segment as u64 * self.segment_size
    }

    /// Where `key` (of `hash`) is, if anywhere.
    pub(super) fn find(&self, hash: u64, key: &CacheKey) -> Found {
        let state = self.lock();
        if let Some((_, writing)) = state.writing.get(&hash) {
            return match writing {
                Some((k, value)) if k == key => Found::Writing(value.clone()),
                // Removed while being written, or another key of the same hash.
                _ => Found::Absent,
            };
        }
        match state.index.get(&hash) {
            Some(&loc) => Found::At(loc, state.seqs[loc.segment() as usize]),
            None => Found::Absent,
        }
    }

    /// Whether the log may hold `hash` (`false` is certain).
    pub(super) fn may_hold(&self, hash: u64) -> bool {
        let state = self.lock();
        state.index.contains_key(&hash) || matches!(state.writing.get(&hash), Some((_, Some(_))))
    }

    /// Reads `key`'s value at `at` (from [`PackedLog::find`]); `None` when the
    /// record is no longer there (its segment reused) or failed its crc (then
    /// dropped and counted). Blocking.
    pub(super) fn read(
        &self,
        hash: u64,
        key: &CacheKey,
        at: (Loc, u64),
    ) -> io::Result<Option<Bytes>> {
        let (loc, seq) = at;
        let mut buf = vec![0; loc.len()];
        self.file.read_exact_at(
            &mut buf,
            self.segment_start(loc.segment()) + loc.offset() as u64,
        )?;
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let buf = Bytes::from(buf);
        match parse(&buf, seq).map(|(record, _)| record) {
            Some(Record::Put { key: k, value }) if k == key.encoded() => Ok(Some(value)),
            Some(Record::Damaged { key: k }) if k == key.encoded() => {
                tracing::error!(?key, "a small entry on disk failed its crc; dropping it");
                CORRUPT_ENTRIES.inc();
                let mut state = self.lock();
                if state.index.get(&hash) == Some(&loc) {
                    state.index.remove(&hash);
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Removes `key` (of `hash`): from the index, and with a tombstone from the
    /// disk, where the log may hold it.
    pub(super) fn remove(&self, hash: u64, key: &CacheKey) {
        forget(&mut self.lock(), hash, key);
    }

    /// Takes `puts` (hash, key, value; each key once) and the removals made since
    /// the last batch for one write, and places them in the log (tombstones
    /// first): batches are placed in the order they are taken, under the queue's
    /// lock, whatever order they are written in. Until it is written, reads find
    /// its values with [`PackedLog::find`] and removals mark them.
    pub(super) fn take(&self, puts: Vec<(u64, CacheKey, Bytes)>) -> Batch {
        let mut state = self.lock();
        let limit = self.segment_size * self.segments as u64 / MAX_BATCH_SHARE;
        let longest = MAX_RECORD.min(self.segment_size as usize - HEADER);
        let id = state.next_batch;
        state.next_batch += 1;
        let mut records =
            std::mem::take(&mut *self.spare_records.lock().unwrap_or_else(|p| p.into_inner()));
        let mut place = |state: &mut State, hash, key, value: Option<Bytes>| {
            let size = record_len(&key, value.as_ref());
            let full = state.end as usize + size > self.segment_size as usize;
            let header = (state.fresh || full).then(|| self.start_segment(state));
            records.push(Placed {
                segment: state.current,
                offset: state.end,
                seq: state.seqs[state.current as usize],
                header,
                hash,
                key,
                value,
            });
            state.end += size as u32;
        };
        // Which puts fit (the batch's share of the log, the longest record).
        let fits = |bytes: &mut u64, key: &CacheKey, value: &Bytes| {
            let len = record_len(key, Some(value));
            *bytes += len as u64;
            *bytes <= limit && len <= longest
        };
        let mut bytes = 0;
        for (hash, key, value) in &puts {
            if !fits(&mut bytes, key, value) {
                // Not written: what the log holds of the key is older, so it goes
                // (its tombstone with this batch's).
                forget(&mut state, *hash, key);
            }
        }
        for key in std::mem::take(&mut state.tombstones) {
            place(&mut state, 0, key, None);
        }
        let mut bytes = 0;
        for (hash, key, value) in puts {
            if !fits(&mut bytes, &key, &value) {
                continue;
            }
            state
                .writing
                .insert(hash, (id, Some((key.clone(), value.clone()))));
            place(&mut state, hash, key, Some(value));
        }
        Batch { id, records }
    }

    /// Writes `batch` where it was placed and indexes its puts not removed
    /// meanwhile, one `pwrite` for each run of records in a segment. On a failed
    /// write its puts are not indexed (and what the index held of their keys is
    /// dropped: it is older) and its tombstones go with the next batch, and the
    /// error is returned. Blocking.
    pub(super) fn write(&self, mut batch: Batch) -> io::Result<()> {
        if batch.records.is_empty() {
            self.keep_for_the_next_batch(batch.records);
            return Ok(());
        }
        // Encoded into the writer's reused buffer, each run of consecutive records
        // into one range of it: (file offset, buffer range).
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        buffer.clear();
        let mut runs: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        let mut locs = Vec::with_capacity(batch.records.len());
        for record in &batch.records {
            let at = self.segment_start(record.segment) + record.offset as u64;
            if let Some(header) = &record.header {
                runs.push((
                    self.segment_start(record.segment),
                    buffer.len()..buffer.len(),
                ));
                buffer.extend_from_slice(header);
            } else if runs
                .last()
                .is_none_or(|(start, range)| start + range.len() as u64 != at)
            {
                runs.push((at, buffer.len()..buffer.len()));
            }
            encode(&mut buffer, record.seq, &record.key, record.value.as_ref());
            runs.last_mut().expect("a run").1.end = buffer.len();
            locs.push(Loc::new(record.segment, record.offset, record.len()));
        }
        let mut failed = None;
        #[cfg(test)]
        if self.fail_writes.load(Ordering::Relaxed) {
            // A write that fails at once, then one that stops part way (the first
            // half of the batch's bytes reach the disk), in turn.
            failed = Some(io::Error::other("a write failed (test)"));
            if self.failed_writes.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
                let (at, range) = runs.last().expect("a run").clone();
                let half = range.start..range.start + range.len() / 2;
                let _ = self.file.write_all_at(&buffer[half], at);
            }
            runs.clear();
        }
        let mut written = 0;
        for (at, range) in &runs {
            match self.file.write_all_at(&buffer[range.clone()], *at) {
                Ok(()) => written += range.len() as u64,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(buffer);
        // Counted once indexed (below): a batch counted as written is found there.
        let _counted = CountOnDrop(&self.written, written);
        let mut state = self.lock();
        let puts = batch
            .records
            .iter()
            .zip(locs)
            .filter(|(r, _)| r.value.is_some());
        for (record, loc) in puts {
            let hash = record.hash;
            let still =
                matches!(state.writing.get(&hash), Some((_, Some((k, _)))) if *k == record.key);
            if state
                .writing
                .get(&hash)
                .is_some_and(|(id, _)| *id == batch.id)
            {
                state.writing.remove(&hash);
            }
            if failed.is_some() {
                // The value may be on disk or not (a write can fail part way), and
                // what the index held of the key is older: both go, from the index
                // here and from the disk by a tombstone. (One per key: a disk that
                // stays full does not grow the list past the keys written.)
                state.index.remove(&hash);
                state.tombstones.insert(record.key.clone());
            } else if still {
                // Not removed since taken. (A later batch may hold a newer value
                // of the key: it is found there until that batch indexes it.)
                state.index.insert(hash, loc);
                state.hashes[loc.segment() as usize].push(hash);
            }
        }
        let outcome = match failed {
            Some(e) => {
                self.after_a_failed_write(&mut state, &batch);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "writing small entries to disk failed; they stay in memory only until writes succeed again");
                }
                let tombstones = batch.records.drain(..).filter(|r| r.value.is_none());
                state.tombstones.extend(tombstones.map(|r| r.key));
                Err(e)
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("writing small entries to disk works again");
                }
                Ok(())
            }
        };
        drop(state);
        self.keep_for_the_next_batch(batch.records);
        outcome
    }

    /// Flushes what was written to the device (`fdatasync`). Blocking.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Keeps a written batch's list of records, emptied, for the next batch.
    fn keep_for_the_next_batch(&self, mut records: Vec<Placed>) {
        records.clear();
        let mut spare = self.spare_records.lock().unwrap_or_else(|p| p.into_inner());
        if spare.capacity() < records.capacity() {
            *spare = records;
        }
    }

    /// Where the next batch goes after `batch` failed to be written. What it was
    /// to write may be on disk in part, followed by a hole where recovery stops;
    /// the tombstones of its keys must come after it: so the next batch starts a
    /// fresh segment, whose header gives the length of this one as unknown. A
    /// segment the batch started may still hold its earlier use, its new header
    /// unwritten: the ring goes back to start it again before any later one is
    /// reused (else its old records, no longer shadowed, would come back on
    /// recovery). Unless another batch was placed after this one meanwhile.
    fn after_a_failed_write(&self, state: &mut State, batch: &Batch) {
        let last = batch.records.last().expect("a record");
        let placed_since = state.current != last.segment
            || state.end as usize != last.offset as usize + last.len();
        if placed_since {
            state.fresh = true;
            return;
        }
        if let Some(first) = batch.records.iter().find(|r| r.header.is_some()) {
            state.current = (first.segment + self.segments - 1) % self.segments;
        }
        state.end = UNKNOWN_LEN;
        state.fresh = true;
    }

    /// Starts the next segment of the ring: drops what the index held in it, gives
    /// it the next sequence number, and returns its header.
    fn start_segment(&self, state: &mut State) -> [u8; HEADER] {
        let previous_len = if state.seqs[state.current as usize] == 0 {
            0
        } else {
            state.end
        };
        let next = (state.current + 1) % self.segments;
        // Drained, not taken: the list keeps its capacity for the segment's next
        // use (growing it again cost page faults on the writer's path).
        let State { index, hashes, .. } = &mut *state;
        for hash in hashes[next as usize].drain(..) {
            if index.get(&hash).is_some_and(|loc| loc.segment() == next) {
                index.remove(&hash);
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.seqs[next as usize] = seq;
        state.current = next;
        state.end = HEADER as u32;
        state.fresh = false;
        header(seq, self.segment_size as u32, previous_len)
    }

    /// Rebuilds the index from the segments, oldest first (see the module's doc).
    fn recover(&self, hash: &impl Fn(&CacheKey) -> u64) -> io::Result<()> {
        let mut headers = Vec::new();
        let mut raw = [0u8; HEADER];
        for segment in 0..self.segments {
            self.file
                .read_exact_at(&mut raw, self.segment_start(segment))?;
            if let Some((seq, previous_len)) = parse_header(&raw, self.segment_size as u32) {
                headers.push((seq, segment, previous_len));
            }
        }
        headers.sort_unstable();
        let mut state = self.lock();
        for (at, &(seq, segment, _)) in headers.iter().enumerate() {
            let mut buf = vec![0u8; self.segment_size as usize];
            self.file
                .read_exact_at(&mut buf, self.segment_start(segment))?;
            let buf = Bytes::from(buf);
            let mut offset = HEADER;
            while let Some((record, len)) = parse(&buf.slice(offset..), seq) {
                let key_of = |raw: &Bytes| CacheKey::from_encoded(raw.clone());
                match record {
                    Record::Put { key, .. } => {
                        if let Some(key) = key_of(&key) {
                            let hash = hash(&key);
                            let loc = Loc::new(segment, offset as u32, len);
                            state.index.insert(hash, loc);
                            state.hashes[segment as usize].push(hash);
                        }
                    }
                    Record::Tombstone { ref key } | Record::Damaged { ref key } => {
                        if matches!(record, Record::Damaged { .. }) {
                            CORRUPT_ENTRIES.inc();
                            tracing::error!(
                                segment,
                                offset,
                                "a small entry on disk failed its crc; dropping it"
                            );
                        }
                        if let Some(key) = key_of(key) {
                            state.index.remove(&hash(&key));
                        }
                    }
                }
                offset += len;
            }
            state.seqs[segment as usize] = seq;
            let successor = headers.get(at + 1).filter(|next| next.0 == seq + 1);
            if let Some(&(_, _, expected)) = successor {
                if expected != UNKNOWN_LEN && expected != offset as u32 {
                    // Damaged in the middle: see the module's doc.
                    CORRUPT_ENTRIES.inc();
                    tracing::error!(
                        segment,
                        offset,
                        expected,
                        "the small-entry log is damaged in the middle of a segment; dropping what it held up to there"
                    );
                    state.index.clear();
                    state.hashes.iter_mut().for_each(Vec::clear);
                }
            }
            state.current = segment;
            state.end = offset as u32;
            state.next_seq = seq + 1;
        }
        state.fresh = true;
        if !headers.is_empty() {
            tracing::info!(
                entries = state.index.len(),
                segments = headers.len(),
                "recovered the small-entry log"
            );
        }
        Ok(())
    }
}

/// Drops `key` (of `hash`) from the index and from the batches being written,
/// queueing a tombstone where the log may hold it.
fn forget(state: &mut State, hash: u64, key: &CacheKey) {
    let indexed = state.index.remove(&hash).is_some();
    let writing = match state.writing.get_mut(&hash) {
        Some((_, value @ Some(_))) => {
            *value = None;
            true
        }
        _ => false,
    };
    if indexed || writing {
        state.tombstones.insert(key.clone());
    }
}

/// Adds to a counter when dropped.
struct CountOnDrop<'a>(&'a AtomicU64, u64);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(self.1, Ordering::Relaxed);
    }
}

/// The length on disk of a record of `key` (a put of `value`, or a tombstone).
fn record_len(key: &CacheKey, value: Option<&Bytes>) -> usize {
    HEAD + key.encoded().len() + value.map_or(0, Bytes::len)
}

fn header(seq: u64, segment_size: u32, previous_len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    let mut at = &mut h[..];
    at.put_u32_le(MAGIC);
    at.put_u64_le(seq);
    at.put_u32_le(segment_size);
    at.put_u32_le(previous_len);
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A segment's sequence number and its predecessor's length, if its header is
/// whole and of a segment this size.
fn parse_header(raw: &[u8; HEADER], segment_size: u32) -> Option<(u64, u32)> {
    let word = |at: usize| u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(raw[4..12].try_into().expect("8 bytes"));
    let whole = word(0) == MAGIC && word(20) == crc32fast::hash(&raw[..20]) && seq > 0;
    (whole && word(12) == segment_size).then_some((seq, word(16)))
}

/// Appends a record of `key` (a put of `value`, or a tombstone) in a segment of
/// sequence `seq`.
fn encode(out: &mut Vec<u8>, seq: u64, key: &CacheKey, value: Option<&Bytes>) {
    let key = key.encoded();
    let (kind, value) = match value {
        Some(value) => (PUT, &value[..]),
        None => (TOMBSTONE, &[][..]),
    };
    let body_crc = if kind == PUT {
        debug_assert_eq!(
            crc32fast::hash(value),
            SELF_CHECKED_CRC,
            "a value without its crc"
        );
        SELF_CHECKED_CRC
    } else {
        crc32fast::hash(value)
    };
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(body_crc);
    out.put_u8(kind);
    out.put_u32_le(key.len() as u32);
    out.put_u32_le(value.len() as u32);
    out.put_slice(key);
    let mut head = crc32fast::Hasher::new();
    head.update(&seq.to_le_bytes());
    head.update(&out[start + 4..]);
    let crc = head.finalize();
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.put_slice(value);
}

/// A record read back.
#[derive(Debug)]
enum Record {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Tombstone {
        key: Bytes,
    },
    /// Whole up to its key; its value failed its crc.
    Damaged {
        key: Bytes,
    },
}

/// The record at the start of `buf` in a segment of sequence `seq`, and its
/// length (a damaged one's from its head, which its crc vouches for); `None` where
/// no whole record starts (the end of what the segment holds).
fn parse(buf: &Bytes, seq: u64) -> Option<(Record, usize)> {
    let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    if buf.len() < HEAD {
        return None;
    }
    let (head_crc, body_crc, kind) = (word(0), word(4), buf[8]);
    let (key_len, value_len) = (word(9) as usize, word(13) as usize);
    let key_end = HEAD.checked_add(key_len)?;
    let end = key_end.checked_add(value_len)?;
    if end > buf.len() || !matches!(kind, PUT | TOMBSTONE) || (kind == TOMBSTONE && value_len > 0) {
        return None;
    }
    let mut head = crc32fast::Hasher::new();
    head.update(&seq.to_le_bytes());
    head.update(&buf[4..key_end]);
    if head.finalize() != head_crc {
        return None;
    }
    let key = buf.slice(HEAD..key_end);
    let value = buf.slice(key_end..end);
    let record = if crc32fast::hash(&value) != body_crc {
        Record::Damaged { key }
    } else if kind == PUT {
        Record::Put { key, value }
    } else {
        Record::Tombstone { key }
    };
    Some((record, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAPACITY: u64 = 4 * MIN_SEGMENT;

    fn hash(key: &CacheKey) -> u64 {
        use std::hash::BuildHasher;
        // Deterministic, so that a reopened log indexes keys as the first did.
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key.encoded())
    }

    fn open(dir: &Path) -> PackedLog {
        PackedLog::open(dir, CAPACITY, hash).unwrap()
    }

    fn key(name: &str) -> CacheKey {
        CacheKey::kv(name.as_bytes())
    }

    /// `value` followed by its crc32, as the log's values are (an entry's encoding
    /// ends so).
    fn sealed(value: &[u8]) -> Bytes {
        let mut sealed = value.to_vec();
        sealed.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
        Bytes::from(sealed)
    }

    /// Writes one batch of `puts` (and the removals made since the last one).
    fn write(log: &PackedLog, puts: &[(&CacheKey, &[u8])]) {
        let puts = puts
            .iter()
            .map(|(k, v)| (hash(k), (*k).clone(), sealed(v)))
            .collect();
        // Failing on purpose in some tests (`fail_writes`): checked by reading back.
        let _ = log.write(log.take(puts));
    }

    fn remove(log: &PackedLog, key: &CacheKey) {
        log.remove(hash(key), key);
    }

    /// What the log holds of `key`, its crc taken off.
    fn read(log: &PackedLog, key: &CacheKey) -> Option<Bytes> {
        let sealed = match log.find(hash(key), key) {
            Found::Absent => None,
            Found::Writing(value) => Some(value),
            Found::At(loc, seq) => log.read(hash(key), key, (loc, seq)).unwrap(),
        }?;
        Some(sealed.slice(..sealed.len() - 4))
    }

    #[test]
    fn the_newest_record_of_a_key_wins_and_tombstones_hold_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (key("a"), key("b"), key("c"));
        {
            let log = open(dir.path());
            write(&log, &[(&a, b"a1"), (&b, b"b1"), (&c, b"c1")]);
            write(&log, &[(&a, b"a2")]);
            remove(&log, &b);
            write(&log, &[]);
            assert_eq!(read(&log, &a).as_deref(), Some(&b"a2"[..]));
            assert_eq!(read(&log, &b), None);
        }
        let log = open(dir.path());
        assert_eq!(read(&log, &a).as_deref(), Some(&b"a2"[..]));
        assert_eq!(read(&log, &b), None, "a removal came back");
        assert_eq!(read(&log, &c).as_deref(), Some(&b"c1"[..]));
        // New writes go on after what was recovered.
        write(&log, &[(&c, b"c2")]);
        drop(log);
        assert_eq!(read(&open(dir.path()), &c).as_deref(), Some(&b"c2"[..]));
    }

    /// A key removed while its batch is being written: the batch does not index it,
    /// and its tombstone (with the next batch) keeps it out after a reopen.
    #[test]
    fn a_removal_during_a_batch_write_is_not_undone_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("k");
        {
            let log = open(dir.path());
            write(&log, &[(&k, b"old")]);
            let batch = log.take(vec![(hash(&k), k.clone(), sealed(b"new"))]);
            assert_eq!(read(&log, &k).as_deref(), Some(&b"new"[..]));
            remove(&log, &k);
            assert_eq!(read(&log, &k), None);
            log.write(batch).unwrap();
            assert_eq!(read(&log, &k), None, "the batch indexed a removed key");
            write(&log, &[]);
        }
        assert_eq!(
            read(&open(dir.path()), &k),
            None,
            "came back after a reopen"
        );
    }

    /// Two batches written in the other order than they were taken (a store
    /// closing while its last batch is on its way): reads and a reopen see the
    /// second batch's value and removal, not the first's.
    #[test]
    fn batches_written_out_of_order_count_in_the_order_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (k, gone) = (key("k"), key("gone"));
        {
            let log = open(dir.path());
            write(&log, &[(&gone, b"here")]);
            let put = |value: &'static [u8]| (hash(&k), k.clone(), sealed(value));
            let first = log.take(vec![
                put(b"first"),
                (hash(&gone), gone.clone(), sealed(b"again")),
            ]);
            remove(&log, &gone);
            let second = log.take(vec![put(b"second")]);
            assert_eq!(read(&log, &k).as_deref(), Some(&b"second"[..]));
            log.write(second).unwrap();
            log.write(first).unwrap();
            assert_eq!(read(&log, &k).as_deref(), Some(&b"second"[..]));
            assert_eq!(read(&log, &gone), None);
        }
        let log = open(dir.path());
        assert_eq!(read(&log, &k).as_deref(), Some(&b"second"[..]));
        assert_eq!(read(&log, &gone), None, "a removal came back");
    }

    /// A failed write (a full disk, say): the batch's values are not indexed, and
    /// what the log held of their keys is older, so it is neither read nor
    /// recovered after the next write succeeds. One tombstone per key, so failures
    /// that go on do not grow the waiting list past the keys written.
    #[test]
    fn a_failed_write_neither_serves_nor_later_recovers_an_older_value() {
        let dir = tempfile::tempdir().unwrap();
        let (k, other) = (key("k"), key("other"));
        {
            let log = open(dir.path());
            write(&log, &[(&k, b"older")]);
            log.fail_writes.store(true, Ordering::Relaxed);
            write(&log, &[(&k, b"newer"), (&other, b"not held before")]);
            assert_eq!(read(&log, &k), None, "the older value was served");
            assert_eq!(log.tombstones_waiting(), 2);
            write(&log, &[(&other, b"again")]);
            assert_eq!(log.tombstones_waiting(), 2, "failures grow the list");
            log.fail_writes.store(false, Ordering::Relaxed);
            write(&log, &[]);
            assert_eq!(log.tombstones_waiting(), 0);
        }
        assert_eq!(
            read(&open(dir.path()), &k),
            None,
            "the older value came back"
        );
    }

    /// Past its capacity the log reuses its oldest segment: what it held there is
    /// gone (a miss), now and after a reopen, and never read as another record.
    #[test]
    fn a_reused_segment_forgets_what_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![5u8; 1000];
        let keys: Vec<CacheKey> = (0..2 * CAPACITY / 1000)
            .map(|i| key(&format!("k{i}")))
            .collect();
        let log = open(dir.path());
        for key in &keys {
            write(&log, &[(key, &value)]);
        }
        assert_eq!(read(&log, &keys[0]), None);
        let last = keys.last().unwrap();
        assert_eq!(read(&log, last).as_deref(), Some(&value[..]));
        let held = log.len();
        assert!(
            held > keys.len() / 4 && held < keys.len() / 2,
            "{held} held"
        );
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.len(), held);
        assert_eq!(read(&log, &keys[0]), None);
        assert_eq!(read(&log, last).as_deref(), Some(&value[..]));
    }

    /// Flips one byte of the file where `marker` is.
    fn corrupt(dir: &Path, marker: &[u8], at: usize) {
        let path = dir.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let found = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap();
        bytes[found + at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
    }

    /// A value that fails its crc is a miss, counted; after a reopen its key is
    /// gone, and an older value of it does not come back in its place.
    #[test]
    fn a_damaged_value_is_dropped_and_does_not_uncover_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        let (k, other) = (key("k"), key("other"));
        let log = open(dir.path());
        write(&log, &[(&k, b"older value")]);
        write(&log, &[(&k, b"NEWER-VALUE"), (&other, b"fine")]);
        corrupt(dir.path(), b"NEWER-VALUE", 3);
        let before = CORRUPT_ENTRIES.get();
        assert_eq!(read(&log, &k), None);
        assert!(CORRUPT_ENTRIES.get() > before);
        drop(log);
        let log = open(dir.path());
        assert_eq!(read(&log, &k), None, "the older value came back");
        assert_eq!(read(&log, &other).as_deref(), Some(&b"fine"[..]));
    }

    /// A record's head damaged in a segment that is not the newest: what came
    /// after it there is unknown (here a tombstone), so nothing up to there is
    /// recovered; later segments are.
    #[test]
    fn damage_in_the_middle_of_a_segment_drops_everything_up_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let (k, removed, damaged, later) = (key("k"), key("removed"), key("DAMAGED"), key("later"));
        let log = open(dir.path());
        write(
            &log,
            &[(&removed, b"removed value"), (&damaged, b"x"), (&k, b"v")],
        );
        remove(&log, &removed);
        write(&log, &[]);
        // Fill the rest of the segment, so that `later` starts the next one.
        let filler = vec![0u8; 1000];
        for i in 0..(MIN_SEGMENT / 1000) {
            write(&log, &[(&key(&format!("f{i}")), &filler)]);
        }
        write(&log, &[(&later, b"later value")]);
        drop(log);
        corrupt(dir.path(), b"DAMAGED", 2);
        let log = open(dir.path());
        assert_eq!(read(&log, &removed), None, "a removal came back");
        assert_eq!(read(&log, &k), None);
        assert_eq!(read(&log, &later).as_deref(), Some(&b"later value"[..]));
    }

    /// The records of a segment's earlier use do not parse once it is reused,
    /// even where the new records have not overwritten them yet.
    #[test]
    fn records_of_a_segments_earlier_use_stop_parsing() {
        let mut out = Vec::new();
        encode(&mut out, 7, &key("k"), Some(&sealed(b"v")));
        let out = Bytes::from(out);
        assert!(matches!(parse(&out, 7), Some((Record::Put { .. }, _))));
        assert!(parse(&out, 8).is_none());
        assert!(parse(&Bytes::from(vec![0u8; 64]), 7).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Remove(u8),
        /// Take a batch, remove a key, then write the batch.
        RemoveWhileWriting(u8, u8, u8),
        /// A put whose write fails.
        FailedPut(u8, u8),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..12).prop_map(Op::Remove),
            1 => (0u8..12, any::<u8>(), 0u8..12).prop_map(|(k, v, r)| Op::RemoveWhileWriting(k, v, r)),
            1 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Op::FailedPut(k, v)),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Whatever the writes, removals and reopens (with the ring reused many
        /// times over), a read finds a key's newest value or nothing: never an
        /// older or a removed one.
        #[test]
        fn a_read_finds_the_newest_value_or_nothing(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path());
            let mut newest: HashMap<u8, Option<Vec<u8>>> = HashMap::new();
            // Values of several KiB: a run goes round the ring a few times.
            let value = |k: u8, v: u8| [vec![v; 4000], vec![k]].concat();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        write(&log, &[(&key(&k.to_string()), &value(k, v))]);
                        newest.insert(k, Some(value(k, v)));
                    }
                    Op::Remove(k) => {
                        remove(&log, &key(&k.to_string()));
                        write(&log, &[]);
                        newest.insert(k, None);
                    }
                    Op::RemoveWhileWriting(k, v, r) => {
                        let batch = log.take(vec![(hash(&key(&k.to_string())), key(&k.to_string()), sealed(&value(k, v)))]);
                        newest.insert(k, Some(value(k, v)));
                        remove(&log, &key(&r.to_string()));
                        newest.insert(r, None);
                        log.write(batch).unwrap();
                    }
                    Op::FailedPut(k, v) => {
                        // Two keys, so that the half of the batch that reaches the
                        // disk may hold the first one whole.
                        let j = (k + 1) % 12;
                        log.fail_writes.store(true, Ordering::Relaxed);
                        let (kk, jk) = (key(&k.to_string()), key(&j.to_string()));
                        write(&log, &[(&kk, &value(k, v)), (&jk, &value(j, v))]);
                        log.fail_writes.store(false, Ordering::Relaxed);
                        // Memory (not modelled here) holds them.
                        newest.insert(k, Some(value(k, v)));
                        newest.insert(j, Some(value(j, v)));
                    }
                    Op::Reopen => {
                        write(&log, &[]);
                        drop(log);
                        log = open(dir.path());
                    }
                }
                for k in 0..12u8 {
                    let read = read(&log, &key(&k.to_string())).map(|v| v.to_vec());
                    let expected = newest.get(&k).cloned().flatten();
                    prop_assert!(read.is_none() || read == expected, "key {}: read {:?}, newest {:?}", k, read.map(|v| (v.len(), v[0])), expected.map(|v| (v.len(), v[0])));
                }
            }
        }
    }
}
