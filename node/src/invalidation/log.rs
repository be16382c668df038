//! The durable invalidation log: an append-only file of framed records
//! (`fanz_protocol::log`) in the data directory.
//!
//! One thread owns the file. Appends arrive over a bounded channel; the thread takes
//! every append waiting, writes them in one `write`, and issues one `fsync` for the
//! batch when any of them asked for durability (group commit: concurrent purges share
//! an fsync). Compaction runs on the same thread, between batches: it writes a snapshot
//! of the live state to a new file, fsyncs it and renames it over the log. Records
//! applied to the state before they were appended are in the snapshot; records
//! appended after are written to the new file; replaying a record twice is harmless.
//!
//! On open, the file is replayed up to the first damaged or partial record (a crash
//! in the middle of a write) and cut there.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fanz_protocol::log::{decode_frames, Record, Replay};
use tokio::sync::{mpsc, oneshot};

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "invalidation.log";
const QUEUE_DEPTH: usize = 1024;
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system refused.
    #[error("invalidation log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The writer thread has stopped (the node is shutting down).
    #[error("invalidation log is closed")]
    Closed,
}

type Snapshot = Box<dyn FnOnce() -> Vec<Record> + Send>;

enum Command {
    Append {
        frames: Bytes,
        durable: bool,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Compact {
        snapshot: Snapshot,
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// Write and sync everything queued before it, then stop.
    Close { done: oneshot::Sender<()> },
}

/// Counters the log keeps for metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Current size of the file in bytes.
    pub bytes: AtomicU64,
    /// Number of fsyncs issued.
    pub fsyncs: AtomicU64,
    /// Total time spent in fsync, microseconds.
    pub fsync_micros: AtomicU64,
}

/// A failure the writer thread reported.
fn io_error(message: String) -> LogError {
    LogError::Io {
        path: PathBuf::from(LOG_FILE),
        source: io::Error::other(message),
    }
}

/// An append or sync queued on the log: resolves once it is written (and, if it
/// asked, synced).
#[derive(Debug)]
#[must_use = "the append is durable only once this resolves"]
pub(crate) struct Durable {
    wait: Option<oneshot::Receiver<Result<(), String>>>,
}

impl Durable {
    /// Nothing to wait for.
    pub(crate) fn done() -> Self {
        Self { wait: None }
    }
}

impl std::future::Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(wait) = self.wait.as_mut() else {
            return std::task::Poll::Ready(Ok(()));
        };
        std::pin::Pin::new(wait)
            .poll(cx)
            .map(|done| done.map_err(|_| LogError::Closed)?.map_err(io_error))
    }
}

/// Handle to the log writer thread. [`InvalidationLog::close`] (or dropping the
/// handle) stops the thread after it has written and synced what was queued.
#[derive(Debug)]
pub(crate) struct InvalidationLog {
    tx: mpsc::Sender<Command>,
    stats: Arc<LogStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Append { .. } => "Append",
            Command::Compact { .. } => "Compact",
            Command::Close { .. } => "Close",
        })
    }
}

impl InvalidationLog {
    /// Opens (or creates) the log in `dir`, replays it, cuts a damaged tail, and starts
    /// the writer thread. Returns the records to apply.
    pub(crate) fn open(dir: &Path) -> Result<(Self, Replay), LogError> {
        let path = dir.join(LOG_FILE);
        let io_err = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err)?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io_err)?;
        let total = buf.len();
        let replay = decode_frames(Bytes::from(buf));
        if let Some(damage) = &replay.damage {
            tracing::warn!(
                path = %path.display(),
                kept_bytes = replay.valid_len,
                dropped_bytes = total - replay.valid_len,
                records = replay.records.len(),
                %damage,
                "invalidation log has a damaged or partial tail (crash during a write?); keeping every whole record and cutting the rest"
            );
            file.set_len(replay.valid_len as u64).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        }
        sync_dir(dir).map_err(io_err)?;
        let stats = Arc::new(LogStats::default());
        stats
            .bytes
            .store(replay.valid_len as u64, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            dir: dir.to_path_buf(),
            path: path.clone(),
            file,
            stats: stats.clone(),
            // What an earlier run wrote may not be synced yet (its process died).
            unsynced: true,
        };
        std::thread::Builder::new()
            .name("fanz-inval-log".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err)?;
        Ok((Self { tx, stats }, replay))
    }

    /// Queues a sync of everything queued before it; the returned [`Durable`]
    /// resolves once it is done. The queue's order is fixed when this returns, so a
    /// caller may queue under a lock and wait outside it.
    pub(crate) async fn enqueue_sync(&self) -> Result<Durable, LogError> {
        self.enqueue_frames(Bytes::new(), true).await
    }

    /// Appends `records`. With `durable`, resolves once they are on disk (fsync);
    /// otherwise once they are handed to the writer.
    pub(crate) async fn append(&self, records: &[Record], durable: bool) -> Result<(), LogError> {
        self.enqueue(records, durable).await?.await
    }

    /// Queues `records` (and, if `durable`, a sync after them); the returned future
    /// resolves once they are written (and synced). See [`Self::enqueue_sync`].
    pub(crate) async fn enqueue(
        &self,
        records: &[Record],
        durable: bool,
    ) -> Result<Durable, LogError> {
        if records.is_empty() {
            return Ok(Durable::done());
        }
        let mut frames = BytesMut::new();
        for record in records {
            record.encode_frame(&mut frames);
        }
        self.enqueue_frames(frames.freeze(), durable).await
    }

    async fn enqueue_frames(&self, frames: Bytes, durable: bool) -> Result<Durable, LogError> {
        let (done, wait) = if durable {
            let (done, wait) = oneshot::channel();
            (Some(done), Some(wait))
        } else {
            (None, None)
        };
        let command = Command::Append {
            frames,
            durable,
            done,
        };
        self.tx.send(command).await.map_err(|_| LogError::Closed)?;
        Ok(Durable { wait })
    }

    /// Rewrites the log as `snapshot()` (taken on the writer thread, after everything
    /// queued before this call is written). Returns the new size in bytes.
    pub(crate) async fn compact(
        &self,
        snapshot: impl FnOnce() -> Vec<Record> + Send + 'static,
    ) -> Result<u64, LogError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Compact {
                snapshot: Box::new(snapshot),
                done,
            })
            .await
            .map_err(|_| LogError::Closed)?;
        wait.await.map_err(|_| LogError::Closed)?.map_err(io_error)
    }

    /// Counters for metrics.
    pub(crate) fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }

    /// Writes and syncs everything queued, then stops the writer. Later appends fail
    /// with [`LogError::Closed`].
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Close { done }).await.is_ok() {
            let _ = wait.await;
        }
    }
}

struct Writer {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    stats: Arc<LogStats>,
    /// Bytes were written since the last sync: a sync with nothing new to write
    /// (a barrier behind appends already synced) skips the fsync.
    unsynced: bool,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut pending: Vec<Command> = Vec::new();
        let mut closed: Option<oneshot::Sender<()>> = None;
        while let Some(first) = rx.blocking_recv() {
            pending.push(first);
            let mut batch_bytes = 0;
            while batch_bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Command::Append { frames, .. } = &cmd {
                            batch_bytes += frames.len();
                        }
                        pending.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            closed = self.process(&mut pending);
            if closed.is_some() {
                break;
            }
        }
        // Closed, or every handle dropped: everything queued has been written; make it durable.
        if let Err(e) = self.file.sync_data() {
            tracing::error!(path = %self.path.display(), error = %e, "final fsync of the invalidation log failed");
        }
        if let Some(done) = closed {
            let _ = done.send(());
        }
    }

    /// Writes the appends in order; a compaction splits the batch in two. Returns the
    /// close request if one came (appends queued after it are refused).
    fn process(&mut self, pending: &mut Vec<Command>) -> Option<oneshot::Sender<()>> {
        let mut appends: Vec<Command> = Vec::new();
        for cmd in pending.drain(..) {
            match cmd {
                Command::Append { .. } => appends.push(cmd),
                Command::Compact { snapshot, done } => {
                    self.write_appends(&mut appends);
                    let result = self.compact(snapshot).map_err(|e| e.to_string());
                    let _ = done.send(result);
                }
                Command::Close { done } => {
                    self.write_appends(&mut appends);
                    return Some(done);
                }
            }
        }
        self.write_appends(&mut appends);
        None
    }

    fn write_appends(&mut self, appends: &mut Vec<Command>) {
        if appends.is_empty() {
            return;
        }
        let mut buf = BytesMut::new();
        let mut durable = false;
        for cmd in appends.iter() {
            if let Command::Append {
                frames, durable: d, ..
            } = cmd
            {
                buf.extend_from_slice(frames);
                durable |= *d;
            }
        }
        let mut result = self.file.write_all(&buf);
        if result.is_ok() {
            self.stats
                .bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.unsynced |= !buf.is_empty();
            if durable && self.unsynced {
                let started = Instant::now();
                result = self.file.sync_data();
                self.record_fsync(started.elapsed());
                self.unsynced = result.is_err();
            }
        }
        if let Err(e) = &result {
            tracing::error!(path = %self.path.display(), error = %e, "invalidation log write failed");
        }
        for cmd in appends.drain(..) {
            if let Command::Append {
                done: Some(done), ..
            } = cmd
            {
                let _ = done.send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }

    fn record_fsync(&self, took: Duration) {
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fsync_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn compact(&mut self, snapshot: Snapshot) -> io::Result<u64> {
        let records = snapshot();
        let mut buf = BytesMut::new();
        for record in &records {
            record.encode_frame(&mut buf);
        }
        let tmp = self.dir.join(format!("{LOG_FILE}.compact"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        let size = buf.len() as u64;
        self.stats.bytes.store(size, Ordering::Relaxed);
        tracing::info!(
            records = records.len(),
            bytes = size,
            "compacted the invalidation log"
        );
        Ok(size)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanz_protocol::{CacheKey, InvalidationId, Timestamp};

    fn tombstone(tag: &str, at: u64) -> Record {
        Record::Tombstone {
            id: InvalidationId::tag(tag.as_bytes()),
            at: Timestamp::from_u64(at),
            soft: false,
        }
    }

    #[tokio::test]
    async fn durable_appends_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (log, replay) = InvalidationLog::open(dir.path()).unwrap();
        assert!(replay.records.is_empty());
        log.append(&[tombstone("a", 1), tombstone("b", 2)], true)
            .await
            .unwrap();
        log.close().await;
        let (_log, replay) = InvalidationLog::open(dir.path()).unwrap();
        assert_eq!(replay.records, vec![tombstone("a", 1), tombstone("b", 2)]);
    }

    #[tokio::test]
    async fn a_sync_behind_appends_already_synced_costs_no_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = InvalidationLog::open(dir.path()).unwrap();
        let fsyncs = || log.stats().fsyncs.load(Ordering::Relaxed);
        log.append(&[tombstone("a", 1)], true).await.unwrap();
        assert_eq!(fsyncs(), 1);
        // A barrier (what a repeated delivery of an applied record waits on).
        log.enqueue_sync().await.unwrap().await.unwrap();
        assert_eq!(fsyncs(), 1, "nothing new to make durable");
        log.append(&[tombstone("b", 2)], false).await.unwrap();
        log.enqueue_sync().await.unwrap().await.unwrap();
        assert_eq!(fsyncs(), 2, "an unsynced write is synced by the barrier");
        log.close().await;
        let (_log, replay) = InvalidationLog::open(dir.path()).unwrap();
        assert_eq!(replay.records, vec![tombstone("a", 1), tombstone("b", 2)]);
    }

    #[tokio::test]
    async fn concurrent_durable_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = InvalidationLog::open(dir.path()).unwrap();
        let log = Arc::new(log);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(&[tombstone("t", i)], true).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let fsyncs = log.stats().fsyncs.load(Ordering::Relaxed);
        assert!(
            (1..200).contains(&fsyncs),
            "{fsyncs} fsyncs for 200 appends"
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_whole_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = InvalidationLog::open(dir.path()).unwrap();
        log.append(&[tombstone("kept", 1)], true).await.unwrap();
        log.close().await;
        let path = dir.path().join(LOG_FILE);
        let whole = fs::metadata(&path).unwrap().len();
        // A crash in the middle of the second record's write.
        let mut second = BytesMut::new();
        tombstone("torn", 2).encode_frame(&mut second);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&second[..second.len() - 3]).unwrap();
        drop(f);

        let (log, replay) = InvalidationLog::open(dir.path()).unwrap();
        assert_eq!(replay.records, vec![tombstone("kept", 1)]);
        assert!(replay.damage.is_some());
        assert_eq!(fs::metadata(&path).unwrap().len(), whole, "tail not cut");
        // Appending after the cut produces a clean log.
        log.append(&[tombstone("after", 3)], true).await.unwrap();
        log.close().await;
        let (_log, replay) = InvalidationLog::open(dir.path()).unwrap();
        assert_eq!(
            replay.records,
            vec![tombstone("kept", 1), tombstone("after", 3)]
        );
        assert!(replay.damage.is_none());
    }

    #[tokio::test]
    async fn compaction_replaces_the_file_and_keeps_later_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = InvalidationLog::open(dir.path()).unwrap();
        for i in 0..100 {
            log.append(&[tombstone("old", i)], false).await.unwrap();
        }
        let live = vec![Record::Edge {
            from: InvalidationId::tag(b"x"),
            dependent: CacheKey::kv(b"k"),
            expires_ms: 9,
        }];
        let snapshot = live.clone();
        let size = log.compact(move || snapshot).await.unwrap();
        log.append(&[tombstone("new", 1)], true).await.unwrap();
        log.close().await;
        let (_log, replay) = InvalidationLog::open(dir.path()).unwrap();
        assert_eq!(replay.records, vec![live[0].clone(), tombstone("new", 1)]);
        assert!(size > 0);
    }
}
