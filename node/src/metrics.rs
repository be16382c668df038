//! The node's Prometheus metrics: one explicit registry, the families every part
//! records into, and the text exposition served at `/metrics`.
//!
//! Values that live elsewhere (tier usage, tombstone counts, log size) are copied into
//! gauges by the admin handler right before each scrape.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::http::cache_status::Outcome;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Defines a label enum whose Prometheus values are the given lowercase names.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// Storage tier.
    TierLabel {
        /// Memory tier.
        Memory => "memory",
        /// Disk tier.
        Disk => "disk",
    }
}

label_enum! {
    /// Outcome of a lookup.
    LookupResult {
        /// Served fresh.
        Hit => "hit",
        /// Served stale (inside stale-while-revalidate).
        Stale => "stale",
        /// Found but expired beyond its stale windows.
        Expired => "expired",
        /// Found but covered by a purge.
        Invalidated => "invalidated",
        /// Not found in any tier.
        Miss => "miss",
    }
}

/// Labels of `fanz_cache_lookups_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// Tier the entry came from (`memory` for plain misses).
    pub tier: TierLabel,
    /// Outcome.
    pub result: LookupResult,
}

label_enum! {
    /// What a purge targeted.
    PurgeKind {
        /// Keys.
        Key => "key",
        /// Tags.
        Tag => "tag",
        /// Key prefixes.
        Prefix => "prefix",
        /// Dependents of an overwritten or purged id.
        Dependent => "dependent",
    }
}

/// Labels of `fanz_purge_targets_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PurgeLabels {
    /// Target kind.
    pub kind: PurgeKind,
    /// `true` for soft purges.
    pub soft: bool,
}

label_enum! {
    /// Which listener served a request.
    Api {
        /// Main port: KV API and PURGE.
        Main => "main",
        /// Admin port.
        Admin => "admin",
    }
}

label_enum! {
    /// A command of the Redis-protocol port, as counted.
    RespCommand {
        /// `GET`.
        Get => "get",
        /// `SET`.
        Set => "set",
        /// `DEL`.
        Del => "del",
        /// `EXISTS`.
        Exists => "exists",
        /// Connection commands (`PING`, `ECHO`, `SELECT`, `QUIT`, `HELLO`...).
        Connection => "connection",
        /// Anything the port does not know.
        Unknown => "unknown",
    }
}

label_enum! {
    /// How a Redis-protocol command ended.
    RespResult {
        /// Done, with a value or `OK`.
        Ok => "ok",
        /// Done, with no value (a missing key, a `SET NX` that did not write).
        Nil => "nil",
        /// Refused or failed: an error reply.
        Error => "error",
    }
}

/// Labels of `fanz_resp_commands_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RespLabels {
    /// The command.
    pub command: RespCommand,
    /// How it ended.
    pub result: RespResult,
}

/// Labels of `fanz_http_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Listener.
    pub api: Api,
    /// Status code.
    pub status: u16,
    /// What the cache did (`hit`, the `fwd` reason, or `none`).
    pub cache: Outcome,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

label_enum! {
    /// How an origin request ended.
    OriginOutcome {
        /// A response arrived (any status).
        Response => "response",
        /// Refused by the open circuit breaker.
        BreakerOpen => "breaker_open",
        /// Refused by the bulkhead.
        Busy => "busy",
        /// No connection or a broken one.
        Unreachable => "unreachable",
        /// No response head in time.
        Timeout => "timeout",
    }
}

/// Labels of `fanz_origin_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabels {
    /// How it ended.
    pub outcome: OriginOutcome,
    /// Status class of the response (`2xx`...), or empty.
    pub class: &'static str,
}

label_enum! {
    /// What became of a gossip datagram.
    GossipOutcome {
        /// Opened and handed to SWIM.
        Accepted => "accepted",
        /// Sealed under a key this node does not have.
        UnknownKey => "unknown_key",
        /// Failed authentication.
        Forged => "forged",
        /// Not a sealed datagram at all.
        Malformed => "malformed",
    }
}

/// Labels of `fanz_gossip_datagrams_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    /// What became of it.
    pub outcome: GossipOutcome,
}

label_enum! {
    /// Why the peer endpoint refused a connection or a stream.
    PeerRefusal {
        /// TLS handshake failed (no certificate, or not signed by the cluster CA).
        Handshake => "handshake",
        /// The peer speaks no version this node accepts.
        Version => "version",
        /// A frame failed its checksum.
        Checksum => "checksum",
        /// A frame announced more than the limit.
        Oversized => "oversized",
        /// A frame held no valid message.
        Malformed => "malformed",
    }
}

impl From<&fanz_protocol::peer::FrameError> for PeerRefusal {
    fn from(e: &fanz_protocol::peer::FrameError) -> Self {
        use fanz_protocol::peer::FrameError;
        match e {
            FrameError::Checksum => PeerRefusal::Checksum,
            FrameError::Oversized { .. } => PeerRefusal::Oversized,
            FrameError::UnknownKind(_) | FrameError::Malformed(_) => PeerRefusal::Malformed,
        }
    }
}

/// Labels of `fanz_admin_refusals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminRefusalLabels {
    /// Why: `address`, `unauthorized`, `scope` or `rate_limited` (`auth::Refusal`).
    pub reason: &'static str,
}

/// Labels of `fanz_peer_refusals_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerRefusalLabels {
    /// Why.
    pub reason: PeerRefusal,
}

label_enum! {
    /// Outcome of a config reload.
    ReloadResult {
        /// Read and applied.
        Applied => "applied",
        /// Rejected (the file did not parse or resolve); the running config stays.
        Rejected => "rejected",
    }
}

/// Labels of `fanz_config_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// Outcome.
    pub result: ReloadResult,
}

label_enum! {
    /// Member state, as a label.
    MemberStateLabel {
        /// Alive.
        Alive => "alive",
        /// Suspected.
        Suspect => "suspect",
        /// Declared down (or left) and not yet forgotten.
        Down => "down",
    }
}

/// Labels of `fanz_cluster_members`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// State.
    pub state: MemberStateLabel,
}

/// Labels of per-tier gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// Tier.
    pub tier: TierLabel,
}

/// Labels of the request latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// Listener.
    pub api: Api,
}

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Lookups by tier and outcome.
    pub lookups: Family<LookupLabels, Counter>,
    /// Entries evicted from the memory tier.
    pub evictions: Counter,
    /// Purge targets by kind.
    pub purge_targets: Family<PurgeLabels, Counter>,
    /// Purge requests acknowledged.
    pub purges: Counter,
    /// Requests by listener and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency by listener.
    pub request_seconds: Family<ApiLabels, Histogram>,
    /// `request_seconds`' histograms, main's then admin's: taken once, not looked
    /// up in the family (a lock and a hash) on every request.
    request_seconds_by_api: [Histogram; 2],
    /// Bytes held per tier (memory: usage; disk: written since start).
    pub tier_bytes: Family<TierLabels, Gauge>,
    /// Capacity per tier.
    pub tier_capacity_bytes: Family<TierLabels, Gauge>,
    /// Bytes read from the disk tier since start.
    pub disk_read_bytes: Gauge,
    /// Tombstones held.
    pub tombstones: Gauge,
    /// Dependency edges held.
    pub dependency_edges: Gauge,
    /// Size of the invalidation log file.
    pub log_bytes: Gauge,
    /// fsyncs of the invalidation log.
    pub log_fsyncs: Gauge,
    /// Requests sent (or refused) to origins.
    pub origin_requests: Family<OriginLabels, Counter>,
    /// Requests answered by joining another request's origin fetch.
    pub collapsed: Counter,
    /// Origins whose circuit breaker is open.
    pub breakers_open: Gauge,
    /// HTTP/3 request streams being served.
    pub h3_open_streams: Gauge,
    /// Safe HTTP/3 requests served from 0-RTT early data, before the handshake completed.
    pub h3_early_served: Counter,
    /// Unsafe HTTP/3 requests that arrived early and were held until the handshake completed.
    pub h3_early_deferred: Counter,
    /// Gossip datagrams received, by outcome.
    pub gossip_datagrams: Family<GossipLabels, Counter>,
    /// Cluster members (this node included) by state.
    pub cluster_members: Family<MemberLabels, Gauge>,
    /// Lifeguard local health multiplier (0 = healthy).
    pub local_health: Gauge,
    /// Peer connections and streams refused, by reason.
    pub peer_refusals: Family<PeerRefusalLabels, Counter>,
    /// Admin and purge requests refused, by reason.
    pub admin_refusals: Family<AdminRefusalLabels, Counter>,
    /// Misses fetched from an owner over the peer protocol.
    pub peer_fetches: Counter,
    /// Peer fetches that failed (the next owner or the origin was tried).
    pub peer_fetch_failures: Counter,
    /// Time from a purge here until every member applied it.
    pub purge_propagation: Histogram,
    /// Purges made here that some member has not acked yet.
    pub purges_pending_ack: Gauge,
    /// Commands of the Redis-protocol port, by command and result.
    pub resp_commands: Family<RespLabels, Counter>,
    /// Latency of the Redis-protocol port's commands.
    pub resp_command_seconds: Histogram,
    /// HTTP/1.1 connections parked while idle (no HTTP state held: `front::conn`).
    pub http_connections_parked: Gauge,
    /// Body bytes sent straight from a stored entry's file (`sendfile`, no copy).
    pub http_body_bytes_sendfile: Counter,
    /// Anti-entropy rounds (pulls from a peer).
    pub anti_entropy_pulls: Counter,
    /// Seconds since the last successful anti-entropy round, once past max_unsynced.
    pub unsynced_seconds: Gauge,
    /// Config reloads by outcome.
    pub reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// Registers every metric. `corrupt_entries` is shared with the store's decoder.
    pub fn new(corrupt_entries: Counter) -> Self {
        let mut registry = Registry::with_prefix("fanz");
        let lookups = Family::<LookupLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by tier and outcome",
            lookups.clone(),
        );
        let evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Entries evicted from the memory tier",
            evictions.clone(),
        );
        registry.register(
            "cache_corrupt_entries_dropped",
            "Entries that failed their checksum when read from disk, dropped and treated as misses",
            corrupt_entries,
        );
        let purge_targets = Family::<PurgeLabels, Counter>::default();
        registry.register(
            "purge_targets",
            "Ids purged, by kind (keys, tags, prefixes, dependents)",
            purge_targets.clone(),
        );
        let purges = Counter::default();
        registry.register(
            "purges",
            "Purge requests acknowledged (durable)",
            purges.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by listener and status",
            requests.clone(),
        );
        let request_seconds = Family::<ApiLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            request_seconds.clone(),
        );
        let tier_bytes = Family::<TierLabels, Gauge>::default();
        registry.register(
            "cache_tier_bytes",
            "Bytes in the memory tier; bytes written to the disk tier since start",
            tier_bytes.clone(),
        );
        let tier_capacity_bytes = Family::<TierLabels, Gauge>::default();
        registry.register(
            "cache_tier_capacity_bytes",
            "Configured capacity per tier",
            tier_capacity_bytes.clone(),
        );
        let disk_read_bytes = Gauge::default();
        registry.register(
            "cache_disk_read_bytes",
            "Bytes read from the disk tier since start",
            disk_read_bytes.clone(),
        );
        let tombstones = Gauge::default();
        registry.register(
            "invalidation_tombstones",
            "Tombstones held (keys, tags, prefixes)",
            tombstones.clone(),
        );
        let dependency_edges = Gauge::default();
        registry.register(
            "invalidation_dependency_edges",
            "Dependency edges held",
            dependency_edges.clone(),
        );
        let log_bytes = Gauge::default();
        registry.register(
            "invalidation_log_bytes",
            "Size of the invalidation log",
            log_bytes.clone(),
        );
        let log_fsyncs = Gauge::default();
        registry.register(
            "invalidation_log_fsyncs",
            "fsyncs of the invalidation log since start",
            log_fsyncs.clone(),
        );
        let origin_requests = Family::<OriginLabels, Counter>::default();
        registry.register(
            "origin_requests",
            "Origin requests by outcome and status class",
            origin_requests.clone(),
        );
        let collapsed = Counter::default();
        registry.register(
            "collapsed_requests",
            "Requests answered from another request's origin fetch",
            collapsed.clone(),
        );
        let breakers_open = Gauge::default();
        registry.register(
            "origin_breakers_open",
            "Origins whose circuit breaker is open",
            breakers_open.clone(),
        );
        let h3_open_streams = Gauge::default();
        registry.register(
            "h3_open_streams",
            "HTTP/3 request streams being served",
            h3_open_streams.clone(),
        );
        let h3_early_served = Counter::default();
        registry.register(
            "h3_early_data_served",
            "Safe HTTP/3 requests served before the handshake completed (0-RTT)",
            h3_early_served.clone(),
        );
        let h3_early_deferred = Counter::default();
        registry.register(
            "h3_early_data_deferred",
            "Unsafe HTTP/3 requests held until the handshake completed (0-RTT replay guard)",
            h3_early_deferred.clone(),
        );
        let gossip_datagrams = Family::<GossipLabels, Counter>::default();
        registry.register(
            "gossip_datagrams",
            "Gossip datagrams received, by outcome",
            gossip_datagrams.clone(),
        );
        let cluster_members = Family::<MemberLabels, Gauge>::default();
        registry.register(
            "cluster_members",
            "Cluster members this node sees, itself included, by state",
            cluster_members.clone(),
        );
        let local_health = Gauge::default();
        registry.register(
            "local_health_multiplier",
            "Lifeguard local health multiplier: 0 is healthy; above 0 failure timers are stretched",
            local_health.clone(),
        );
        let peer_refusals = Family::<PeerRefusalLabels, Counter>::default();
        registry.register(
            "peer_refusals",
            "Peer connections and streams refused, by reason",
            peer_refusals.clone(),
        );
        let admin_refusals = Family::<AdminRefusalLabels, Counter>::default();
        registry.register(
            "admin_refusals",
            "Admin API and purge requests refused: address outside admin_allow, no valid token, a token of too small a scope, or past its rate limit",
            admin_refusals.clone(),
        );
        let peer_fetches = Counter::default();
        registry.register(
            "peer_fetches",
            "Misses fetched from an owner over the peer protocol",
            peer_fetches.clone(),
        );
        let peer_fetch_failures = Counter::default();
        registry.register(
            "peer_fetch_failures",
            "Peer fetches that failed; the next owner or the origin was tried",
            peer_fetch_failures.clone(),
        );
        let purge_propagation = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "purge_propagation_seconds",
            "Time from a purge on this node until every alive member applied it",
            purge_propagation.clone(),
        );
        let purges_pending_ack = Gauge::default();
        registry.register(
            "purges_pending_ack",
            "Purges made on this node that some member has not acknowledged yet",
            purges_pending_ack.clone(),
        );
        let resp_commands = Family::<RespLabels, Counter>::default();
        registry.register(
            "resp_commands",
            "Commands of the Redis-protocol port (resp_addr) by command and result",
            resp_commands.clone(),
        );
        let resp_command_seconds = Histogram::new(exponential_buckets(0.000_005, 2.0, 20));
        registry.register(
            "resp_command_duration_seconds",
            "Latency of the Redis-protocol port's commands, from the command read to its reply queued",
            resp_command_seconds.clone(),
        );
        let http_connections_parked = Gauge::default();
        registry.register(
            "http_connections_parked",
            "Idle HTTP/1.1 keep-alive connections holding no HTTP state (parked until their next request)",
            http_connections_parked.clone(),
        );
        let http_body_bytes_sendfile = Counter::default();
        registry.register(
            "http_body_bytes_sendfile",
            "Response body bytes sent with sendfile from a cached entry's pages, without a copy (plain-TCP HTTP/1.1 and HTTP/2)",
            http_body_bytes_sendfile.clone(),
        );
        let anti_entropy_pulls = Counter::default();
        registry.register(
            "anti_entropy_pulls",
            "Anti-entropy rounds: pulls of missed invalidations from a peer",
            anti_entropy_pulls.clone(),
        );
        let unsynced_seconds = Gauge::default();
        registry.register(
            "unsynced_seconds",
            "Seconds since the last successful anti-entropy round, once past max_unsynced (0 when in sync)",
            unsynced_seconds.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads (SIGHUP or a changed file), by outcome",
            reloads.clone(),
        );
        for &result in ReloadResult::ALL {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        // Series that alerts and dashboards divide by or compare exist from the
        // start, at zero, rather than appearing with the first event.
        for &tier in TierLabel::ALL {
            for &result in LookupResult::ALL {
                let _ = lookups.get_or_create(&LookupLabels { tier, result });
            }
        }
        for &state in MemberStateLabel::ALL {
            let _ = cluster_members.get_or_create(&MemberLabels { state });
        }
        Self {
            registry,
            reloads,
            purge_propagation,
            purges_pending_ack,
            resp_commands,
            resp_command_seconds,
            http_connections_parked,
            http_body_bytes_sendfile,
            anti_entropy_pulls,
            unsynced_seconds,
            peer_refusals,
            admin_refusals,
            peer_fetches,
            peer_fetch_failures,
            gossip_datagrams,
            cluster_members,
            local_health,
            h3_open_streams,
            h3_early_served,
            h3_early_deferred,
            origin_requests,
            collapsed,
            breakers_open,
            lookups,
            evictions,
            purge_targets,
            purges,
            requests,
            request_seconds_by_api: [Api::Main, Api::Admin]
                .map(|api| request_seconds.get_or_create(&ApiLabels { api }).clone()),
            request_seconds,
            tier_bytes,
            tier_capacity_bytes,
            disk_read_bytes,
            tombstones,
            dependency_edges,
            log_bytes,
            log_fsyncs,
        }
    }

    /// Counts a lookup.
    pub fn lookup(&self, tier: TierLabel, result: LookupResult) {
        self.lookups
            .get_or_create(&LookupLabels { tier, result })
            .inc();
    }

    /// Counts a refused peer connection or stream.
    pub fn count_peer_refusal(&self, reason: PeerRefusal) {
        self.peer_refusals
            .get_or_create(&PeerRefusalLabels { reason })
            .inc();
    }

    /// Counts a refused admin or purge request (`reason`: an `auth::Refusal`).
    pub fn count_admin_refusal(&self, reason: &'static str) {
        self.admin_refusals
            .get_or_create(&AdminRefusalLabels { reason })
            .inc();
    }

    /// Counts a config reload.
    pub fn count_reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    /// Counts a gossip datagram.
    pub fn count_gossip(&self, outcome: GossipOutcome) {
        self.gossip_datagrams
            .get_or_create(&GossipLabels { outcome })
            .inc();
    }

    /// Records how many members are alive, suspect and down.
    pub fn set_members(&self, alive: i64, suspect: i64, down: i64) {
        for (state, n) in [
            (MemberStateLabel::Alive, alive),
            (MemberStateLabel::Suspect, suspect),
            (MemberStateLabel::Down, down),
        ] {
            self.cluster_members
                .get_or_create(&MemberLabels { state })
                .set(n);
        }
    }

    /// Records a finished request.
    pub fn observe(
        &self,
        api: Api,
        started: std::time::Instant,
        status: http::StatusCode,
        cache: Outcome,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                api,
                status: status.as_u16(),
                cache,
            })
            .inc();
        let by_api = match api {
            Api::Main => &self.request_seconds_by_api[0],
            Api::Admin => &self.request_seconds_by_api[1],
        };
        by_api.observe(started.elapsed().as_secs_f64());
    }

    /// Counts an origin request.
    pub fn origin_request(&self, outcome: OriginOutcome, status: Option<http::StatusCode>) {
        let class = match status.map(|s| s.as_u16() / 100) {
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(5) => "5xx",
            _ => "",
        };
        self.origin_requests
            .get_or_create(&OriginLabels { outcome, class })
            .inc();
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }
}

/// Sets a gauge from an unsigned count, saturating.
pub fn set_gauge(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}
