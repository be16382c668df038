//! The order of a node's KV writes of one key, for conditional writes (`If-Match`,
//! `If-None-Match`): from the check of a conditional write's precondition to the end
//! of its write, no other write of the key may come in between, or a create-only
//! write could replace a value written a moment after its check.
//!
//! Writes without preconditions need no order among themselves (the newer version
//! wins), only against conditional ones, and most nodes never see a conditional
//! write. So until the first one arrives a write takes no lock at all: it only
//! counts itself in flight. From the first conditional write on, each key's writes
//! take a read-write lock (by a hash of the key): plain writes share it, a
//! conditional write holds it alone, after waiting for the writes that were in
//! flight, uncounted by any lock, when it arrived.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::http::headers;

/// What a write asks of the key's current value before it is made, whichever
/// protocol carried it.
#[derive(Debug, Clone, Copy)]
pub enum Precondition<'a> {
    /// Nothing: the write is made whatever the key holds.
    Unconditional,
    /// HTTP's `If-Match` and `If-None-Match` (RFC 9110 §13.2), present in these headers.
    Headers(&'a HeaderMap),
    /// Only when the key has no current value (Redis's `SET ... NX`).
    Absent,
    /// Only when it has one (Redis's `SET ... XX`).
    Present,
}

impl<'a> Precondition<'a> {
    /// The preconditions of an HTTP write: `Unconditional` without either header.
    pub fn of_headers(headers: &'a HeaderMap) -> Self {
        if headers::has_write_preconditions(headers) {
            Precondition::Headers(headers)
        } else {
            Precondition::Unconditional
        }
    }

    /// Whether there is anything to check (the write then takes its turn alone).
    pub fn conditional(&self) -> bool {
        !matches!(self, Precondition::Unconditional)
    }

    /// Whether the write may be made over the key's current value, named by its
    /// ETag (`None`: no current value); `Err` names what does not hold.
    pub fn holds(&self, current: Option<&str>) -> Result<(), &'static str> {
        match self {
            Precondition::Unconditional => Ok(()),
            Precondition::Headers(h) => headers::write_preconditions(h, current),
            Precondition::Absent if current.is_some() => Err("NX"),
            Precondition::Present if current.is_none() => Err("XX"),
            Precondition::Absent | Precondition::Present => Ok(()),
        }
    }
}

/// Locks, chosen by a hash of the key.
const STRIPES: usize = 1024;
/// How often a conditional write looks again at the writes in flight before it
/// (only while the first conditional writes arrive: a write of before takes about
/// a millisecond).
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Orders each key's writes (see the module's documentation).
#[derive(Debug)]
pub struct WriteOrder {
    /// Set by the first conditional write, never cleared.
    conditional_seen: AtomicBool,
    /// Writes in flight that took no lock (began before `conditional_seen`).
    unlocked: AtomicUsize,
    stripes: Box<[RwLock<()>]>,
}

/// What a write holds until it is done.
#[derive(Debug)]
pub enum Turn<'a> {
    /// No conditional write yet: counted in flight.
    Unlocked(&'a AtomicUsize),
    /// A plain write, beside other plain writes of the key.
    Shared(RwLockReadGuard<'a, ()>),
    /// A conditional write, alone.
    Alone(RwLockWriteGuard<'a, ()>),
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Turn::Unlocked(count) = self {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Default for WriteOrder {
    fn default() -> Self {
        Self {
            conditional_seen: AtomicBool::new(false),
            unlocked: AtomicUsize::new(0),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl WriteOrder {
    /// The turn of a write of the key whose raw bytes are `key`: `conditional` when
    /// it has preconditions to check (then no other write of the key runs while the
    /// turn is held).
    pub async fn turn(&self, key: &[u8], conditional: bool) -> Turn<'_> {
        if !conditional && !self.conditional_seen.load(Ordering::SeqCst) {
            // Counted first, the flag read after: a conditional write sets the flag
            // first and reads the count after, so one of the two sees the other.
            self.unlocked.fetch_add(1, Ordering::SeqCst);
            if !self.conditional_seen.load(Ordering::SeqCst) {
                return Turn::Unlocked(&self.unlocked);
            }
            self.unlocked.fetch_sub(1, Ordering::SeqCst);
        }
        let stripe = &self.stripes[crc32fast::hash(key) as usize % STRIPES];
        if !conditional {
            return Turn::Shared(stripe.read().await);
        }
        self.conditional_seen.store(true, Ordering::SeqCst);
        let alone = stripe.write().await;
        while self.unlocked.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        Turn::Alone(alone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `future` is still waiting after the runtime had time to run it.
    async fn still_waiting<F: std::future::Future>(future: &mut std::pin::Pin<Box<F>>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), future.as_mut())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn plain_writes_take_no_lock_until_a_conditional_one_and_never_wait_for_each_other() {
        let order = WriteOrder::default();
        let a = order.turn(b"k", false).await;
        let b = order.turn(b"k", false).await;
        assert!(matches!((&a, &b), (Turn::Unlocked(_), Turn::Unlocked(_))));
        assert_eq!(order.unlocked.load(Ordering::SeqCst), 2);
        drop((a, b));
        assert_eq!(order.unlocked.load(Ordering::SeqCst), 0);
        drop(order.turn(b"k", true).await);
        // From then on plain writes share the key's lock.
        let a = order.turn(b"k", false).await;
        let b = order.turn(b"k", false).await;
        assert!(matches!((&a, &b), (Turn::Shared(_), Turn::Shared(_))));
    }

    #[tokio::test]
    async fn a_conditional_write_waits_for_the_writes_in_flight_and_holds_the_key_alone() {
        let order = WriteOrder::default();
        // A plain write began before any conditional one: it holds no lock.
        let before = order.turn(b"k", false).await;
        let mut conditional = Box::pin(order.turn(b"k", true));
        assert!(
            still_waiting(&mut conditional).await,
            "it waits for the write in flight"
        );
        drop(before);
        let alone = conditional.await;
        assert!(matches!(alone, Turn::Alone(_)));
        // Meanwhile no other write of the key gets a turn, plain or conditional.
        let mut plain = Box::pin(order.turn(b"k", false));
        assert!(still_waiting(&mut plain).await);
        let mut other = Box::pin(order.turn(b"k", true));
        assert!(still_waiting(&mut other).await);
        // Another key is not held up (unless it shares the stripe: pick one that does not).
        let free = (0..100u32)
            .map(|i| format!("other-{i}"))
            .find(|k| {
                crc32fast::hash(k.as_bytes()) as usize % STRIPES
                    != crc32fast::hash(b"k") as usize % STRIPES
            })
            .unwrap();
        drop(order.turn(free.as_bytes(), false).await);
        drop(alone);
        assert!(matches!(plain.await, Turn::Shared(_)));
        assert!(matches!(other.await, Turn::Alone(_)));
    }
}
