//! Acknowledging a write only once the disk tier has it (`kv_write_ack` `written`
//! or `synced`): the batch an entry is queued in carries a [`BatchWritten`], which
//! the hand-over task completes with the batch's outcome once it is written (and
//! flushed, for `synced`); each insert of the batch holds a [`DiskWrite`] to wait
//! for it. At the default (`memory`) none are made: an insert's [`DiskWrite`] is
//! already done, and nothing is allocated on the write path.
//!
//! Batches are written one at a time, in the order taken (`DiskQueue::turn`), so
//! the outcome of the batch an entry was queued in is the outcome of its write.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

/// A batch's outcome: `None` until written; then `Ok`, or why it was not.
type Outcome = Option<Result<(), Arc<str>>>;

/// The sending side, one per batch that has waiters.
#[derive(Debug)]
pub(super) struct BatchWritten(watch::Sender<Outcome>);

impl BatchWritten {
    pub(super) fn new() -> Self {
        Self(watch::channel(None).0)
    }

    /// A waiter for this batch's outcome.
    pub(super) fn waiter(&self) -> DiskWrite {
        DiskWrite(Some(self.0.subscribe()))
    }

    /// Completes the batch: every waiter gets `outcome`.
    pub(super) fn complete(self, outcome: Result<(), String>) {
        self.0.send_replace(Some(outcome.map_err(Arc::from)));
    }
}

/// What an insert waits on before its write may be acknowledged: done at once
/// unless the store acknowledges writes only once on disk.
#[derive(Debug, Default)]
#[must_use = "a write acknowledged before its DiskWrite is done may be lost by a crash"]
pub struct DiskWrite(Option<watch::Receiver<Outcome>>);

impl DiskWrite {
    /// Waits until the entry's batch is written (and flushed, if asked); the
    /// reason when it was not, the entry then being in memory only.
    pub async fn done(self) -> Result<(), String> {
        let Some(mut rx) = self.0 else {
            return Ok(());
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().expect("waited for"),
            // The batch was dropped unwritten (the hand-over task ended: the node
            // is stopping without its store's close).
            Err(_) => Err("the disk tier stopped before writing it".into()),
        };
        outcome.map_err(|e| e.to_string())
    }
}

/// Flushes foyer's files in `dir` to the device (`fdatasync` each): foyer writes
/// its blocks through the page cache and never flushes them.
pub(super) fn sync_foyer_files(dir: &Path) -> std::io::Result<()> {
    for file in std::fs::read_dir(dir)? {
        let file = file?;
        if file
            .file_name()
            .to_string_lossy()
            .starts_with("foyer-storage")
        {
            std::fs::File::open(file.path())?.sync_data()?;
        }
    }
    Ok(())
}
