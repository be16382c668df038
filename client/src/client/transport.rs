//! How an operation reaches the cluster: the view of its members (learned, kept
//! fresh, installed), one request to one node over the pool, and the attempt loop
//! that fails over from owner to owner, then to any member, with backoff, breakers
//! and retries; node errors as typed [`Error`]s.

use crate::error::{Error, Result};
use crate::options::jitter;
use crate::pool::exchange;
use crate::topology::{ClusterReport, Member, Topology};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::*;

impl crate::near::WatchLink for Inner {
    fn seeds(&self) -> &[String] {
        &self.seeds
    }

    /// Opens a near-cache watch on `seed` (its own connection: the stream lasts).
    async fn open_watch(&self, seed: &str) -> Result<hyper::body::Incoming> {
        let mut request = Request::get("/invalidations").header(http::header::HOST, seed);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut sender = self.pool.connect_plain(seed).await?;
        let response = tokio::time::timeout(self.settings.timeout, exchange(&mut sender, request))
            .await
            .map_err(|_| Error::Timeout(self.settings.timeout))?
            .map_err(|e| Error::Unreachable(format!("{seed}: {e}")))?;
        if response.status() != StatusCode::OK {
            return Err(Error::Server {
                node: seed.to_string(),
                status: response.status().as_u16(),
                message: "the invalidation watch was refused".into(),
            });
        }
        Ok(response.into_body())
    }

    /// Confirms to `seed` that watcher `id` applied every invalidation up to `seq`.
    async fn confirm(&self, seed: &str, id: u64, seq: u64) -> Result<()> {
        let path = format!("/invalidations/{id}/ack?seq={seq}");
        let answer = self.admin_at(seed, Method::POST, &path, None).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(status_error(seed, &answer))
        }
    }
}

impl Inner {
    pub(super) fn install(&self, topology: Arc<Topology>) {
        self.max_answer.store(
            topology.report.max_value_size.saturating_add(ANSWER_SLACK),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.max_key.store(
            topology.report.max_key_size,
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.topology.write().expect("topology lock") = Some(topology);
    }

    pub(super) fn topology(&self) -> Arc<Topology> {
        self.topology
            .read()
            .expect("topology lock")
            .clone()
            .expect("learned before the client is handed out")
    }

    /// The cluster from the first seed that answers.
    pub(super) async fn learn(&self) -> Result<Topology> {
        let mut last = Error::Unreachable("no seed answered".into());
        for seed in &self.seeds {
            match self.admin_at(seed, Method::GET, "/cluster", None).await {
                Ok(answer) if answer.status == StatusCode::OK => {
                    let report: ClusterReport =
                        serde_json::from_slice(&answer.body).map_err(|e| Error::Protocol {
                            node: seed.clone(),
                            message: format!("unreadable cluster report: {e}"),
                        })?;
                    return Topology::new(report);
                }
                Ok(answer) => last = status_error(seed, &answer),
                Err(e) => last = e,
            }
            if matches!(last, Error::Auth(_)) {
                return Err(last);
            }
        }
        Err(last)
    }

    /// One HTTP exchange with `node`'s KV API within the operation timeout.
    pub(super) async fn send(
        &self,
        node: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer> {
        self.send_to(
            Port::Kv,
            node,
            method,
            path,
            headers,
            body,
            self.settings.timeout,
        )
        .await
    }

    /// One HTTP exchange with `node` on `port` within the operation timeout.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_to(
        &self,
        port: Port,
        node: &str,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer> {
        let limit = self.max_answer.load(std::sync::atomic::Ordering::Relaxed);
        let attempt = async {
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, node);
            for (name, value) in headers {
                request = request.header(*name, value.as_str());
            }
            let request = request
                .body(Full::new(body))
                .map_err(|e| Error::Invalid(format!("request: {e}")))?;
            let mut sender = self.pool.take(node, port == Port::Kv).await?;
            let response = exchange(&mut sender, request)
                .await
                .map_err(|e| Error::Unreachable(format!("{node}: {e}")))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit as usize)
                .collect()
                .await
                .map_err(|e| Error::Protocol {
                    node: node.to_string(),
                    message: format!("answer body: {e}"),
                })?
                .to_bytes();
            // The whole answer was read: the connection can carry the next one.
            self.pool.give_back(node, sender);
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    pub(super) async fn admin_at(
        &self,
        seed: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer> {
        self.admin_within(seed, method, path, body, self.settings.timeout)
            .await
    }

    /// [`Self::admin_at`] with its own time limit (purges that wait for members).
    pub(super) async fn admin_within(
        &self,
        seed: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Answer> {
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if body.is_some() {
            headers.push(("content-type", "application/json".to_string()));
        }
        self.send_to(
            Port::Admin,
            seed,
            method,
            path,
            &headers,
            body.unwrap_or_default(),
            timeout,
        )
        .await
    }

    /// Runs `attempt` against the best node for `key`, failing over to the next
    /// candidates with backoff while the error is retryable.
    pub(super) async fn run<T, F, Fut>(&self, key: &[u8], attempt: F) -> Result<T>
    where
        F: Fn(String, Arc<Topology>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tried: Vec<String> = Vec::new();
        let attempt = &attempt;
        self.retrying(Error::Unreachable("no member to ask".into()), |number| {
            let topology = self.topology();
            let node = self.next_candidate(&topology, key, &mut tried, number)?;
            let sent = attempt(node.clone(), topology);
            Some(async move {
                let result = sent.await;
                match &result {
                    Ok(_) => self.breakers.success(&node),
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(%node, error = %e, attempt = number, "attempt failed; failing over");
                        self.breakers.failure(&node);
                        self.refresh.notify_one();
                    }
                    Err(_) => {}
                }
                result
            })
        })
        .await
    }

    /// The node for attempt `number` on `key`: the best candidate not tried yet
    /// (owners first, then the others), whatever breakers opened meanwhile; once
    /// every one was tried, round again. When every breaker is open, it asks anyway
    /// rather than fail without trying. `None` when there is no member to ask.
    pub(super) fn next_candidate(
        &self,
        topology: &Topology,
        key: &[u8],
        tried: &mut Vec<String>,
        number: u32,
    ) -> Option<String> {
        let all = topology.candidates(key);
        let allowed: Vec<&Member> = all
            .iter()
            .copied()
            .filter(|m| self.breakers.allows(&m.http))
            .collect();
        let pool = if allowed.is_empty() { all } else { allowed };
        let node = pool
            .iter()
            .find(|m| !tried.contains(&m.http))
            .or_else(|| pool.get((number - 1) as usize % pool.len().max(1)))?
            .http
            .clone();
        tried.push(node.clone());
        Some(node)
    }

    /// Runs the attempts `attempt` makes (given their number, from 1) until one
    /// succeeds, one fails with an error retrying cannot help, the retry policy's
    /// attempts run out (backing off between them), or `attempt` has nothing to try
    /// (`None`); then the last error, or `nothing` if none was made.
    pub(super) async fn retrying<T, Fut>(
        &self,
        nothing: Error,
        mut attempt: impl FnMut(u32) -> Option<Fut>,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let policy = self.settings.retry;
        let mut last = nothing;
        for number in 1..=policy.max_attempts.max(1) {
            let Some(sent) = attempt(number) else {
                return Err(last);
            };
            match sent.await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_retryable() => last = e,
                Err(e) => return Err(e),
            }
            if number < policy.max_attempts {
                tokio::time::sleep(policy.backoff(number, jitter())).await;
            }
        }
        Err(last)
    }

    pub(super) fn check_key(&self, key: &[u8]) -> Result<()> {
        let limit = self.max_key.load(std::sync::atomic::Ordering::Relaxed);
        if key.is_empty() {
            return Err(Error::Invalid("empty key".into()));
        }
        if key.len() > limit {
            return Err(Error::TooLarge {
                what: "key",
                size: key.len(),
                limit,
            });
        }
        Ok(())
    }
}

/// The typed error for a non-success answer.
pub(super) fn status_error(node: &str, answer: &Answer) -> Error {
    if let Some(incomplete) = incomplete_purge(node, answer) {
        return incomplete;
    }
    let message = String::from_utf8_lossy(&answer.body).trim().to_string();
    match answer.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Auth(message),
        // The node says the request itself is bad: sending it again cannot help.
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG => {
            Error::Invalid(message)
        }
        status => Error::Server {
            node: node.to_string(),
            status: status.as_u16(),
            message,
        },
    }
}

/// A node's 504 for a purge (or delete) that waited for every member and timed out
/// first: [`Error::PurgeIncomplete`] with the members that had not applied it.
pub(super) fn incomplete_purge(node: &str, answer: &Answer) -> Option<Error> {
    if answer.status != StatusCode::GATEWAY_TIMEOUT {
        return None;
    }
    let report: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    if report["status"] != "incomplete" {
        return None;
    }
    let cluster = &report["cluster"];
    Some(Error::PurgeIncomplete {
        node: node.to_string(),
        purge_id: cluster["id"].as_str().map(str::to_string),
        pending: crate::options::pending_members(cluster),
    })
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
