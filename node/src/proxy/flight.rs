//! Request collapsing: concurrent misses for one key share one origin fetch (a
//! *flight*). The first request leads: it sends the origin request and publishes the
//! outcome. A cacheable response's body is pumped into the flight by a task of its
//! own (it goes on if the leader's client leaves), which hands every chunk to every
//! request of the flight, the leader's included, as it arrives. A request that joins
//! late first gets the chunks so far from a replay buffer. An uncacheable response
//! releases the followers to fetch on their own; a leader that goes away before the
//! response head arrives releases them too.
//!
//! Memory stays bounded: the replay buffer is only kept while the response may still
//! be stored (up to the largest storable size); past that the flight drops it, takes
//! no new requests, and streams on to the ones it has. A slow client slows the pump:
//! chunks are handed over through bounded channels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fanz_protocol::CacheKey;
use http::{HeaderMap, StatusCode};
use tokio::sync::{mpsc, Notify};

use crate::http::{channel_body, Body, BoxError};

/// A cacheable response head shared by a flight.
#[derive(Debug)]
pub struct SharedHead {
    /// Status.
    pub status: StatusCode,
    /// Headers as clients get them (before `Age` and `Cache-Status`).
    pub headers: HeaderMap,
    /// Remaining freshness when it arrived, seconds.
    pub ttl_secs: i64,
    /// Wall-clock ms at which the content was new (its `Age` counts from here).
    pub born_ms: u64,
    /// The varying fields, and the leader's request headers they were matched on.
    pub vary: Option<(Vec<String>, HeaderMap)>,
    /// Version of the entry the response is stored as (told to peers that ask).
    pub version: fanz_protocol::Timestamp,
}

/// An origin request that got no usable answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Status to answer.
    pub status: StatusCode,
    /// Why.
    pub message: Arc<str>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// The origin was not even tried (breaker open, bulkhead full): the cache is
    /// disconnected from it, and may serve stale content (RFC 9111 §4.2.4).
    pub origin_unavailable: bool,
}

/// How a flight turned out.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A cacheable response: stream its body from the flight.
    Shared(Arc<SharedHead>),
    /// Not cacheable: fetch on your own.
    Uncacheable,
    /// The origin failed: answer the failure, or serve stale.
    Failed(Failure),
    /// The leader went away before the head arrived: try again.
    Abandoned,
}

type Chunk = Result<Bytes, BoxError>;

#[derive(Debug, Default)]
struct State {
    outcome: Option<Outcome>,
    /// Chunks so far, for requests that join late; `None` once dropped (overflow).
    replay: Option<Vec<Bytes>>,
    /// Requests streaming the body.
    subscribers: Vec<mpsc::Sender<Chunk>>,
    end: Option<Result<(), Arc<str>>>,
}

/// One shared fetch.
#[derive(Debug)]
pub struct Flight {
    state: Mutex<State>,
    changed: Notify,
}

impl Default for Flight {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                replay: Some(Vec::new()),
                ..State::default()
            }),
            changed: Notify::new(),
        }
    }
}

/// Chunks a subscriber's channel holds before the pump waits for it.
const SUBSCRIBER_BUFFER: usize = 16;

impl Flight {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the outcome (first one wins).
    pub fn publish(&self, outcome: Outcome) {
        self.lock().outcome.get_or_insert(outcome);
        self.changed.notify_waiters();
    }

    /// Hands a body chunk to every subscriber (waiting for slow ones), and keeps it
    /// for late joiners unless the replay buffer was dropped.
    pub async fn push(&self, chunk: Bytes) {
        let subscribers = {
            let mut s = self.lock();
            if let Some(replay) = &mut s.replay {
                replay.push(chunk.clone());
            }
            s.subscribers.clone()
        };
        let mut gone = false;
        for tx in &subscribers {
            gone |= tx.send(Ok(chunk.clone())).await.is_err();
        }
        if gone {
            self.lock().subscribers.retain(|tx| !tx.is_closed());
        }
    }

    /// Drops the replay buffer: requests that join from now on cannot be served from
    /// this flight (the caller also stops new joins).
    pub fn drop_replay(&self) {
        self.lock().replay = None;
    }

    /// Marks the body complete, or cut off, and closes every subscriber's stream.
    pub async fn finish(&self, result: Result<(), Arc<str>>) {
        let subscribers = {
            let mut s = self.lock();
            s.end.get_or_insert(result.clone());
            std::mem::take(&mut s.subscribers)
        };
        if let Err(e) = result {
            for tx in subscribers {
                let _ = tx.send(Err(e.to_string().into())).await;
            }
        }
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
    /// `None` if the flight can no longer replay its start.
    pub fn subscribe(&self) -> Option<Body> {
        let (tx, rx) = mpsc::channel::<Chunk>(SUBSCRIBER_BUFFER);
        let mut s = self.lock();
        let replay = s.replay.as_ref()?.clone();
        let end = s.end.clone();
        if end.is_none() {
            s.subscribers.push(tx.clone());
        }
        drop(s);
        // The replay may exceed the channel: feed it from a task, ahead of live chunks.
        let (body_tx, body_rx) = mpsc::channel::<Chunk>(SUBSCRIBER_BUFFER);
        tokio::spawn(forward(replay, end, rx, tx, body_tx));
        Some(channel_body(body_rx))
    }
}

/// Sends the replayed chunks, then whatever the pump sends, to the client's body.
async fn forward(
    replay: Vec<Bytes>,
    end: Option<Result<(), Arc<str>>>,
    mut live: mpsc::Receiver<Chunk>,
    live_tx: mpsc::Sender<Chunk>,
    body: mpsc::Sender<Chunk>,
) {
    for chunk in replay {
        if body.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
    match end {
        Some(Ok(())) => return,
        Some(Err(e)) => {
            let _ = body.send(Err(e.to_string().into())).await;
            return;
        }
        None => {}
    }
    // Only the flight's copy of the sender keeps the live stream open.
    drop(live_tx);
    while let Some(chunk) = live.recv().await {
        if body.send(chunk).await.is_err() {
            return;
        }
    }
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

    /// Stops new requests from joining (they start their own fetch), keeping the
    /// flight going for the requests it has.
    pub fn stop_joining(&self) {
        self.flights.remove(&self.key, &self.flight);
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
            // Closing the senders ends every subscriber's stream.
            let mut s = self.flight.lock();
            s.end.get_or_insert(Err("the fetch was abandoned".into()));
            s.subscribers.clear();
            drop(s);
            self.flights.remove(&self.key, &self.flight);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn head() -> Arc<SharedHead> {
        Arc::new(SharedHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            ttl_secs: 1,
            born_ms: 0,
            vary: None,
            version: fanz_protocol::Timestamp::from_u64(0),
        })
    }

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
        leader.flight().publish(Outcome::Shared(head()));
        leader.flight().push(Bytes::from_static(b"early ")).await;
        assert!(matches!(follower.outcome().await, Outcome::Shared(_)));
        let body = follower.subscribe().expect("replay available");
        let reader = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
        leader.flight().push(Bytes::from_static(b"late")).await;
        leader.flight().finish(Ok(())).await;
        leader.complete();
        assert_eq!(&reader.await.unwrap()[..], b"early late");
        assert!(!flights.in_flight(&key));
        assert!(
            matches!(flights.join(&key), Joined::Leader(_)),
            "a new request starts a new flight"
        );
    }

    #[tokio::test]
    async fn after_overflow_subscribers_stream_on_and_nobody_new_joins() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey::kv(b"big");
        let Joined::Leader(leader) = flights.join(&key) else {
            panic!()
        };
        let flight = leader.flight().clone();
        flight.publish(Outcome::Shared(head()));
        let early = flight.subscribe().unwrap();
        let reader = tokio::spawn(async move { early.collect().await.unwrap().to_bytes().len() });
        flight.push(Bytes::from(vec![1u8; 1000])).await;
        flight.drop_replay();
        leader.stop_joining();
        assert!(flight.subscribe().is_none(), "no replay after overflow");
        assert!(!flights.in_flight(&key));
        for _ in 0..100 {
            flight.push(Bytes::from(vec![2u8; 1000])).await;
        }
        flight.finish(Ok(())).await;
        leader.complete();
        assert_eq!(
            reader.await.unwrap(),
            101_000,
            "the early subscriber got the whole body"
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
        let body = flight.subscribe().unwrap();
        let reader = tokio::spawn(async move { body.collect().await });
        flight.push(Bytes::from_static(b"part")).await;
        flight.finish(Err("origin closed mid-body".into())).await;
        assert!(reader.await.unwrap().is_err());
        // A request subscribing after the end replays it, error included.
        assert!(flight.subscribe().unwrap().collect().await.is_err());
    }
}
