//! Request collapsing: concurrent misses for one key share one origin fetch (a
//! *flight*). The first request leads: it sends the origin request and publishes the
//! outcome. A cacheable response's body is pumped into the flight by a task of its
//! own (it goes on if the leader's client leaves), and every request of the flight,
//! the leader's included, streams it from there as it arrives. An uncacheable
//! response releases the followers to fetch on their own; a leader that goes away
//! before the response head arrives releases them too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fanz_protocol::CacheKey;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};

use crate::http::{Body, BoxError};

/// A cacheable response head shared by a flight.
#[derive(Debug)]
pub struct SharedHead {
    /// Status.
    pub status: StatusCode,
    /// Headers as clients get them (before `Age` and `Cache-Status`).
    pub headers: HeaderMap,
    /// Remaining freshness when it arrived, seconds.
    pub ttl_secs: i64,
    /// The varying fields, and the leader's request headers they were matched on.
    pub vary: Option<(Vec<String>, HeaderMap)>,
}

/// How a flight turned out.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A cacheable response: stream its body from the flight.
    Shared(Arc<SharedHead>),
    /// Not cacheable: fetch on your own.
    Uncacheable,
    /// The origin failed: answer this status, or serve stale.
    Failed {
        /// Status to answer.
        status: StatusCode,
        /// Why.
        message: Arc<str>,
        /// `Retry-After` seconds.
        retry_after: Option<u64>,
    },
    /// The leader went away before the head arrived: try again.
    Abandoned,
}

#[derive(Debug, Default)]
struct State {
    outcome: Option<Outcome>,
    chunks: Vec<Bytes>,
    end: Option<Result<(), Arc<str>>>,
}

/// One shared fetch.
#[derive(Debug, Default)]
pub struct Flight {
    state: Mutex<State>,
    changed: Notify,
}

impl Flight {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_waiters();
    }

    /// Publishes the outcome (first one wins).
    pub fn publish(&self, outcome: Outcome) {
        self.update(|s| {
            s.outcome.get_or_insert(outcome);
        });
    }

    /// Appends a body chunk.
    pub fn push(&self, chunk: Bytes) {
        self.update(|s| s.chunks.push(chunk));
    }

    /// Marks the body complete, or cut off.
    pub fn finish(&self, result: Result<(), Arc<str>>) {
        self.update(|s| {
            s.end.get_or_insert(result);
        });
    }

    /// Waits for the outcome.
    pub async fn outcome(&self) -> Outcome {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.lock().outcome.clone() {
                return outcome;
            }
            notified.await;
        }
    }

    /// A body that streams this flight's chunks from the first, as they arrive.
    pub fn subscribe(self: &Arc<Self>) -> Body {
        let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(16);
        let flight = self.clone();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                let notified = flight.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                // One snapshot: chunks are pushed before the end is set, so an end
                // seen here comes after every chunk seen with it.
                let (chunks, end) = {
                    let s = flight.lock();
                    (s.chunks[next..].to_vec(), s.end.clone())
                };
                next += chunks.len();
                for chunk in chunks {
                    if tx.send(Ok(chunk)).await.is_err() {
                        return; // the client went away
                    }
                }
                match end {
                    Some(Ok(())) => return,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e.to_string().into())).await;
                        return;
                    }
                    None => notified.await,
                }
            }
        });
        channel_body(rx)
    }
}

/// A body fed by a channel.
pub fn channel_body(rx: mpsc::Receiver<Result<Bytes, BoxError>>) -> Body {
    struct ChannelBody(mpsc::Receiver<Result<Bytes, BoxError>>);
    impl hyper::body::Body for ChannelBody {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(hyper::body::Frame::data)))
        }
    }
    ChannelBody(rx).boxed()
}

/// What joining a key's flight made of a request.
#[derive(Debug)]
pub enum Joined {
    /// Fetch from the origin and publish the outcome.
    Leader(Leader),
    /// Wait for the leader's outcome.
    Follower(Arc<Flight>),
}

/// The in-flight fetches, by key.
#[derive(Debug, Default)]
pub struct Flights {
    map: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

impl Flights {
    /// Joins the flight for `key`, starting one if there is none.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Joined {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key) {
            return Joined::Follower(flight.clone());
        }
        let flight = Arc::new(Flight::default());
        map.insert(key.clone(), flight.clone());
        Joined::Leader(Leader {
            flights: self.clone(),
            key: key.clone(),
            flight,
            done: false,
        })
    }

    /// A leader for a fetch of `key` that nobody joins (the request must not be shared).
    pub fn solo(self: &Arc<Self>, key: &CacheKey) -> Leader {
        Leader {
            flights: self.clone(),
            key: key.clone(),
            flight: Arc::new(Flight::default()),
            done: false,
        }
    }

    /// Whether a fetch for `key` is under way.
    pub fn in_flight(&self, key: &CacheKey) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// The leader's hold on a flight. Dropped before [`Leader::complete`], it releases
/// the followers ([`Outcome::Abandoned`]) and ends the flight.
#[derive(Debug)]
pub struct Leader {
    flights: Arc<Flights>,
    key: CacheKey,
    flight: Arc<Flight>,
    done: bool,
}

impl Leader {
    /// The flight.
    pub fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    /// Ends the flight: later requests no longer join it (they find the stored entry,
    /// or start a new flight).
    pub fn complete(mut self) {
        self.done = true;
        self.flights.remove(&self.key, &self.flight);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.done {
            self.flight.publish(Outcome::Abandoned);
            self.flight.finish(Err("the fetch was abandoned".into()));
            self.flights.remove(&self.key, &self.flight);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_stream_what_the_leader_publishes() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey::kv(b"k");
        let Joined::Leader(leader) = flights.join(&key) else {
            panic!("first is the leader")
        };
        let Joined::Follower(follower) = flights.join(&key) else {
            panic!("second follows")
        };
        let head = Arc::new(SharedHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            ttl_secs: 1,
            vary: None,
        });
        leader.flight().push(Bytes::from_static(b"early "));
        leader.flight().publish(Outcome::Shared(head));
        assert!(matches!(follower.outcome().await, Outcome::Shared(_)));
        let body = follower.subscribe();
        let reader = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
        tokio::task::yield_now().await;
        leader.flight().push(Bytes::from_static(b"late"));
        leader.flight().finish(Ok(()));
        leader.complete();
        assert_eq!(&reader.await.unwrap()[..], b"early late");
        assert!(!flights.in_flight(&key));
        assert!(
            matches!(flights.join(&key), Joined::Leader(_)),
            "a new request starts a new flight"
        );
    }

    #[tokio::test]
    async fn a_vanished_leader_releases_its_followers() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey::kv(b"k");
        let Joined::Leader(leader) = flights.join(&key) else {
            panic!()
        };
        let Joined::Follower(follower) = flights.join(&key) else {
            panic!()
        };
        drop(leader);
        assert!(matches!(follower.outcome().await, Outcome::Abandoned));
        assert!(!flights.in_flight(&key));
    }

    #[tokio::test]
    async fn a_cut_off_body_ends_in_an_error() {
        let flight = Arc::new(Flight::default());
        flight.push(Bytes::from_static(b"part"));
        flight.finish(Err("origin closed mid-body".into()));
        assert!(flight.subscribe().collect().await.is_err());
    }
}
