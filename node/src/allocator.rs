//! The global allocator (mimalloc, its v2 series) and its upkeep: when freed memory
//! goes back to the system.
//!
//! mimalloc returns memory freed in a span of its pages to the system 10 ms after it
//! was freed. A cache under writes frees and allocates all the time (replaced entries,
//! request buffers, the disk queue's batches), so that memory soon came back as fresh
//! pages: page faults and zeroing, about 4% of a KV PUT's CPU (docs/PERFORMANCE.md,
//! "The allocator's purge delay"). The delay is raised to a second here.
//!
//! A delayed purge only runs when its thread next allocates or frees, so a node that
//! goes idle would keep what its last second freed. [`purge_when_idle`] watches how
//! busy the runtime's workers are; when a busy node goes quiet, it asks every worker
//! to give back what it holds, which each does as it next parks ([`on_worker_park`]).
//! Purging everything that way is too dear to do under load (once a second per worker
//! cost a PUT as much as the delay saved), so it happens once per quiet spell.
//!
//! Unsafe code is allowed here for the two calls into mimalloc's C API.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{c_int, c_long};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// mimalloc as the global allocator rather than glibc's malloc: a cache is mostly
/// many small allocations that live long (entries, keys, index records). With it,
/// 1 M entries of 100 bytes take 350 bytes each instead of 417, and hits and KV
/// writes are faster (docs/PERFORMANCE.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long freed memory waits before it goes back to the system.
const PURGE_DELAY_MS: c_long = 1000;
/// How often [`purge_when_idle`] looks at how busy the workers were.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// The workers' busy time in a tick, all together, at or under which the node is
/// quiet (its own timers, a trickle of requests).
const QUIET_BUSY: Duration = Duration::from_millis(5);

// The two functions of mimalloc's C API used here (`mimalloc.h`, v2), from the library
// `libmimalloc-sys` builds and links for the `mimalloc` crate.
extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}
/// `mi_option_purge_delay` in v2's `mi_option_t`.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// Sets the allocator's options; call first thing in `main`.
pub(crate) fn configure() {
    // SAFETY: mimalloc's options may be set at any time, from any thread.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Raised each time the node goes quiet; a worker that has not purged since purges.
static PURGE_ROUND: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last purge round this worker took part in.
    static PURGED_ROUND: Cell<u64> = const { Cell::new(0) };
}

/// Runs on a runtime worker about to park (`on_thread_park`): gives what this thread
/// freed back to the system if the node went quiet since it last did.
pub(crate) fn on_worker_park() {
    let round = PURGE_ROUND.load(Ordering::Relaxed);
    PURGED_ROUND.with(|purged| {
        if purged.get() != round {
            purged.set(round);
            // SAFETY: collects the calling thread's own heap (and the shared arenas,
            // which mimalloc locks); callable from any thread at any time.
            unsafe { mi_collect(true) };
        }
    });
}

/// Runs for the node's life: when the workers, busy in the last tick, spend no
/// more than [`QUIET_BUSY`] of the next one at work, starts a purge round and wakes
/// the workers so that each parks again soon (a parked worker may otherwise sleep
/// until the next request). The wake is a nudge, not a guarantee: a worker that
/// misses it purges at its next park after any later wake.
pub(crate) async fn purge_when_idle() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let workers = metrics.num_workers();
    let busy_so_far = || -> Duration {
        (0..workers)
            .map(|w| metrics.worker_total_busy_duration(w))
            .sum()
    };
    let mut tick = tokio::time::interval(IDLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = busy_so_far();
    let mut was_busy = false;
    loop {
        tick.tick().await;
        let now = busy_so_far();
        let busy = now.saturating_sub(std::mem::replace(&mut seen, now)) > QUIET_BUSY;
        if !busy && was_busy {
            PURGE_ROUND.fetch_add(1, Ordering::Relaxed);
            // Tasks spawned here beyond the first make the scheduler wake a parked
            // worker to take them.
            for _ in 0..workers {
                tokio::spawn(async {});
            }
        }
        was_busy = busy;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option's number is v2's; a mimalloc whose options are numbered otherwise
    /// would have this set some other option. mimalloc's own default for the purge
    /// delay is 10 ms.
    #[test]
    fn the_purge_delay_is_the_option_configure_sets() {
        // SAFETY: reading an option is allowed at any time, from any thread.
        let default = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 10,
            "option {MI_OPTION_PURGE_DELAY} is not mimalloc v2's purge delay"
        );
        configure();
        // SAFETY: as above.
        let set = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(set, PURGE_DELAY_MS);
    }
}
