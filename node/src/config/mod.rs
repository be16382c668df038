//! Node settings: one table ([`SETTINGS`]) defines every setting once — its name,
//! default and help — and from it come the command-line flags (`--http-addr`), the
//! environment variables (`FANZ_HTTP_ADDR`), the TOML keys (`http_addr`) and
//! `fanz-node --help`.
//!
//! Precedence, lowest first: built-in default, TOML file (`--config PATH`), environment,
//! flag. [`Config::resolve`] turns the raw strings into typed values; it takes a plain
//! map so tests need neither files nor environment variables. Every bad value is an
//! error naming the setting and where the value came from.

mod origin;
mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use origin::{ForwardHost, OriginUrl};
pub use units::{parse_duration, parse_size};

use origin::{parse_routes, parse_statuses};

/// One setting: name (TOML key), default, help.
#[derive(Debug)]
pub struct Spec {
    /// TOML key; the flag is `--` plus this with dashes, the variable `FANZ_` plus it upper-cased.
    pub name: &'static str,
    /// Built-in default; `None` means unset.
    pub default: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
}

impl Spec {
    /// `--http-addr` for `http_addr`.
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }
    /// `FANZ_HTTP_ADDR` for `http_addr`.
    pub fn env(&self) -> String {
        format!("FANZ_{}", self.name.to_ascii_uppercase())
    }
}

/// Every setting of the node. Defaults are documented here, where they are defined.
pub const SETTINGS: &[Spec] = &[
    Spec { name: "http_addr", default: Some("127.0.0.1:8080"), help: "Address of the main HTTP listener (KV API, PURGE)." },
    Spec { name: "h3_addr", default: Some("127.0.0.1:8443"), help: "UDP address of the HTTP/3 (QUIC) listener, or `off`. Uses tls_cert/tls_key, or a development certificate made in data_dir (see `fanz-node print-dev-cert`)." },
    Spec { name: "h3_max_streams", default: Some("100"), help: "Concurrent HTTP/3 requests per QUIC connection." },
    Spec { name: "h3_retry", default: Some("auto"), help: "QUIC address validation (Retry) before a handshake: `always`, `off`, or `auto` (only while more than 64 handshakes are under way, as under a flood)." },
    Spec { name: "h3_stream_window", default: Some("1MiB"), help: "QUIC receive window per stream: how much of one request body a client may send ahead." },
    Spec { name: "h3_connection_window", default: Some("8MiB"), help: "QUIC receive window per connection, over all its streams." },
    Spec { name: "h3_early_data", default: Some("false"), help: "Accept TLS 1.3 0-RTT early data on HTTP/3 resumptions. Early data can be replayed, so only GET, HEAD and OPTIONS are served from it (forwarded to origins with `Early-Data: 1`); other methods wait for the handshake to complete." },
    Spec { name: "h3_max_udp_payload", default: Some("1452"), help: "Largest UDP payload QUIC path-MTU discovery may try (1200 to 65527). 1452 fits an Ethernet MTU of 1500; raise it on networks with jumbo frames (8952 for MTU 9000)." },
    Spec { name: "h3_idle_timeout", default: Some("30s"), help: "Idle time after which a QUIC connection is closed." },
    Spec { name: "cluster_dir", default: None, help: "Directory with the cluster CA (ca.pem), this node's certificate (node.pem, node-key.pem) and the gossip keyring (cluster.keys), as `fanz-node cluster-init` makes. Unset: the node runs alone." },
    Spec { name: "node_id", default: None, help: "This node's id in the cluster: unique and stable across restarts (the ring hashes it). Default: the host name and the gossip port." },
    Spec { name: "gossip_addr", default: Some("127.0.0.1:7946"), help: "UDP address for SWIM membership gossip (with cluster_dir)." },
    Spec { name: "peer_addr", default: Some("127.0.0.1:7947"), help: "UDP address of the peer protocol (QUIC, mutual TLS) (with cluster_dir)." },
    Spec { name: "seeds", default: None, help: "Comma-separated gossip addresses (`host:port`) to join through; a name resolving to several addresses (a Kubernetes headless Service) stands for all of them. Re-resolved periodically." },
    Spec { name: "zone", default: Some("default"), help: "Failure domain of this node, reported to the cluster." },
    Spec { name: "weight", default: Some("1"), help: "This node's share of the keys relative to the others (1 to 1000); 0 keeps it in the cluster owning nothing." },
    Spec { name: "replicas", default: Some("2"), help: "Owners per key (the first is primary)." },
    Spec { name: "gossip_probe_period", default: Some("1s"), help: "How often each node probes one other member (SWIM). Shorter detects failures sooner and sends more." },
    Spec { name: "gossip_suspicion", default: Some("4s"), help: "How long a suspected member has to refute before it is declared down. Shorter detects failures sooner and risks declaring slow nodes down." },
    Spec { name: "partition_mode", default: Some("consistency"), help: "When this node has not synced invalidations with a majority of the cluster for max_unsynced (cut off, or most members down), purges may complete without it: `consistency` revalidates every hit with the owner or the origin first (KV reads no owner answers get 503); `availability` keeps serving hits, marked `Cache-Status: ...; detail=unsynced`, purged content included." },
    Spec { name: "max_unsynced", default: Some("2s"), help: "The sync lease: how long after an anti-entropy round that reached a majority of the members this node counts as in sync. Past it partition_mode applies; purgers complete a purge without an unreachable member one lease (+0.5 s) after a majority applied it. Keep it several sync_intervals long." },
    Spec { name: "sync_interval", default: Some("500ms"), help: "How often a node pulls missed invalidations from enough random peers to make a majority with itself (anti-entropy; renews the sync lease)." },
    Spec { name: "purge_ack_timeout", default: Some("5s"), help: "How long a `wait=all` purge waits for every member's acknowledgement; members that have not acked by then are named in the answer." },
    Spec { name: "admin_addr", default: Some("127.0.0.1:9090"), help: "Address of the admin API (purge, health, metrics). Without an admin token it must be a loopback address." },
    Spec { name: "admin_token", default: None, help: "Bearer token required by the admin API and by PURGE. Unset: only loopback clients may purge." },
    Spec { name: "data_dir", default: Some("./fanz-data"), help: "Directory for the disk tier and the invalidation log. Created if missing." },
    Spec { name: "memory_capacity", default: Some("256MiB"), help: "Memory tier capacity (bytes of keys and encoded entries)." },
    Spec { name: "disk_capacity", default: Some("1GiB"), help: "Disk tier capacity; 0 disables the disk tier. Entries larger than 1/16 of it (at most 16 MiB) stay in memory only." },
    Spec { name: "default_ttl", default: Some("1h"), help: "TTL of a KV value stored without Cache-Control: max-age." },
    Spec { name: "max_ttl", default: Some("7d"), help: "Longest freshness lifetime of any stored entry (a KV TTL, an origin's max-age or Expires); longer ones are clamped. With max_stale, bounds how long tombstones are kept." },
    Spec { name: "max_stale", default: Some("1d"), help: "Longest stale-while-revalidate / stale-if-error window of any stored entry; longer ones are clamped. No entry is served, even stale, past max_ttl + max_stale from its fill." },
    Spec { name: "max_key_size", default: Some("8KiB"), help: "Longest key accepted (longer: 414)." },
    Spec { name: "max_value_size", default: Some("64MiB"), help: "Largest value accepted (larger: 413, refused before the body is read)." },
    Spec { name: "max_connections", default: Some("25000"), help: "Most client connections served at once per listener; further ones wait to be accepted." },
    Spec { name: "max_header_size", default: Some("64KiB"), help: "Largest request header section (431 beyond). The request line may add up to three times max_key_size." },
    Spec { name: "header_read_timeout", default: Some("10s"), help: "Time a client has to send a request's head once its first byte arrived, and a new connection its first request (slowloris guard; also the TLS handshake's limit)." },
    Spec { name: "keepalive_timeout", default: Some("75s"), help: "Idle time between requests after which an HTTP/1.1 or HTTP/2 connection is closed (nginx's keepalive_timeout is 75 s, Varnish's timeout_idle 5 s)." },
    Spec { name: "body_read_timeout", default: Some("30s"), help: "Time a client has to send a request body (408 after it)." },
    Spec { name: "shutdown_grace", default: Some("10s"), help: "On SIGTERM/SIGINT, how long in-flight requests may take to finish." },
    Spec { name: "access_log", default: Some("off"), help: "Access log: `off`, or `json` (one JSON object per request on standard output)." },
    Spec { name: "log_level", default: Some("info"), help: "Log filter (tracing EnvFilter syntax, e.g. `info,fanz_node=debug`)." },
    Spec { name: "log_format", default: Some("text"), help: "Log format: `text` or `json`." },
    Spec { name: "tls_cert", default: None, help: "PEM certificate chain: the main listener speaks HTTPS (ALPN h2 and http/1.1). Needs tls_key." },
    Spec { name: "tls_key", default: None, help: "PEM private key for tls_cert." },
    Spec { name: "origin_ca_file", default: None, help: "PEM file of CA certificates trusted for https:// origins, besides the system's." },
    Spec { name: "origin", default: None, help: "Default origin URL (http://host:port or https://...) for pull-through caching. Unset: only the KV API is served." },
    Spec { name: "origin_routes", default: None, help: "Per-Host origins, `host=URL` pairs separated by commas (e.g. `a.example=http://10.0.0.1:80,b.example=https://b.internal`). A request for a host neither routed nor served by `origin` gets 421." },
    Spec { name: "forward_host", default: Some("client"), help: "Host header sent to the origin: `client` (the request's Host) or `origin` (the origin URL's authority)." },
    Spec { name: "forward_headers", default: None, help: "Comma-separated request headers forwarded to the origin although they could poison the cache (X-Forwarded-Host, X-Original-URL, ...). By default they are dropped." },
    Spec { name: "kv_prefix", default: Some("/kv/"), help: "Path prefix of the KV API on the main port; requests under it never go to an origin. An origin's own paths under it are unreachable: choose a prefix the origin does not use." },
    Spec { name: "origin_protocol", default: Some("auto"), help: "HTTP version to origins: `auto` (HTTP/1.1 to http://, h2 or http/1.1 by ALPN to https://) or `h2` (HTTP/2 only; prior knowledge, h2c, to http://)." },
    Spec { name: "origin_connect_timeout", default: Some("2s"), help: "Time to connect to an origin." },
    Spec { name: "origin_first_byte_timeout", default: Some("15s"), help: "Time from sending a request to an origin to its response head." },
    Spec { name: "origin_total_timeout", default: Some("60s"), help: "Time for a whole origin response, body included." },
    Spec { name: "origin_max_concurrency", default: Some("256"), help: "Requests in flight to one origin at once (bulkhead); beyond it, 503." },
    Spec { name: "origin_retries", default: Some("2"), help: "Retries of an idempotent request whose origin connection failed before any byte came back (exponential backoff, full jitter)." },
    Spec { name: "breaker_failures", default: Some("5"), help: "Consecutive origin failures that open its circuit breaker." },
    Spec { name: "breaker_open", default: Some("10s"), help: "How long an open breaker refuses requests before letting one probe through." },
    Spec { name: "breaker_statuses", default: None, help: "Comma-separated response statuses that count as origin failures for the breaker (for example 502,503,504). By default none do: an origin that answers is alive, and only transport failures (refused, reset, TLS, timeouts, a response cut off) count." },
    Spec { name: "max_object_size", default: Some("16MiB"), help: "Largest response stored; larger ones pass through uncached." },
    Spec { name: "uncacheable_ttl", default: Some("10s"), help: "How long a URL that answered uncacheable skips request collapsing (hit-for-miss)." },
    Spec { name: "strip_tag_headers", default: Some("true"), help: "Remove Surrogate-Key and Cache-Tag from responses to clients." },
    Spec { name: "log_compact_size", default: Some("64MiB"), help: "Compact the invalidation log once it is this large and twice its last compacted size." },
    Spec { name: "otlp_endpoint", default: None, help: "OTLP/HTTP collector (e.g. http://127.0.0.1:4318) to export request spans to, as JSON. Needs a build with the `otlp` cargo feature." },
    Spec { name: "config_watch", default: Some("0s"), help: "How often to check the config file (--config) for changes and reload it; 0s: only on SIGHUP. Reloads apply origins, the TTL policy, the admin token and the log level; other settings need a restart." },
    Spec { name: "maintenance_interval", default: Some("60s"), help: "How often expired tombstones and edges are collected." },
];

/// Where a setting's value came from; named in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A TOML file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// A setting that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid setting `{setting}` (from {origin}): {message}")]
    Invalid {
        /// Setting name.
        setting: &'static str,
        /// Where the value came from.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A key in the file that is not a setting.
    #[error("unknown setting `{key}` in {path}")]
    Unknown {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// The file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Cluster settings; the node joins a cluster only when `dir` is set.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// CA, node certificate and keyring (see `fanz-node cluster-init`).
    pub dir: Option<PathBuf>,
    /// Explicit node id.
    pub node_id: Option<String>,
    /// Gossip (UDP) address.
    pub gossip_addr: SocketAddr,
    /// Peer protocol (QUIC) address.
    pub peer_addr: SocketAddr,
    /// Seeds, `host:port`.
    pub seeds: Vec<String>,
    /// Failure domain.
    pub zone: String,
    /// Ring weight.
    pub weight: u32,
    /// Owners per key.
    pub replicas: usize,
    /// SWIM probe period.
    pub probe_period: Duration,
    /// SWIM suspicion timeout.
    pub suspicion: Duration,
    /// What an out-of-sync node does with hits.
    pub partition_mode: PartitionMode,
    /// Out of sync after this long without an anti-entropy round.
    pub max_unsynced: Duration,
    /// Anti-entropy period.
    pub sync_interval: Duration,
    /// `wait=all` bound.
    pub purge_ack_timeout: Duration,
}

/// When the HTTP/3 listener makes clients prove their address with a QUIC Retry
/// (quinn never sends one by itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Every new connection.
    Always,
    /// Never.
    Off,
    /// While many handshakes are under way (a flood of spoofed Initial packets).
    UnderLoad,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Raw setting values with their origins, before parsing.
pub type RawSettings = BTreeMap<&'static str, (String, Origin)>;

/// What to do under a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionMode {
    /// Keep serving hits, marked `detail=unsynced`.
    Availability,
    /// Revalidate every hit first.
    Consistency,
}

/// The node's typed settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Main HTTP listener.
    pub http_addr: SocketAddr,
    /// HTTP/3 listener, if enabled.
    pub h3_addr: Option<SocketAddr>,
    /// HTTP/3 streams per connection.
    pub h3_max_streams: u32,
    /// QUIC per-stream receive window.
    pub h3_stream_window: u64,
    /// QUIC per-connection receive window.
    pub h3_connection_window: u64,
    /// QUIC idle timeout.
    pub h3_idle_timeout: Duration,
    /// When to ask QUIC clients to prove their address.
    pub h3_retry: RetryPolicy,
    /// Accept 0-RTT early data (safe methods only).
    pub h3_early_data: bool,
    /// Upper bound of QUIC path-MTU discovery (UDP payload bytes).
    pub h3_max_udp_payload: u16,
    /// Cluster membership (on when `cluster.dir` is set).
    pub cluster: ClusterSettings,
    /// Admin listener.
    pub admin_addr: SocketAddr,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Memory tier bytes.
    pub memory_capacity: u64,
    /// Disk tier bytes (0: no disk tier).
    pub disk_capacity: u64,
    /// Default KV TTL.
    pub default_ttl: Duration,
    /// TTL clamp.
    pub max_ttl: Duration,
    /// Stale window clamp.
    pub max_stale: Duration,
    /// Key length limit.
    pub max_key_size: usize,
    /// Value length limit.
    pub max_value_size: u64,
    /// Connection limit per listener.
    pub max_connections: usize,
    /// Request header section limit.
    pub max_header_size: usize,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Idle time between requests before a connection is closed.
    pub keepalive_timeout: Duration,
    /// Body read timeout.
    pub body_read_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// JSON access log on stdout.
    pub access_log: bool,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log compaction threshold.
    pub log_compact_size: u64,
    /// TLS certificate chain for the main listener.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key for the main listener.
    pub tls_key: Option<PathBuf>,
    /// Extra CAs for origins.
    pub origin_ca_file: Option<PathBuf>,
    /// Default origin.
    pub origin: Option<OriginUrl>,
    /// Per-host origins.
    pub origin_routes: Vec<(String, OriginUrl)>,
    /// Host header policy.
    pub forward_host: ForwardHost,
    /// Poisoning-prone headers forwarded anyway (lower-case).
    pub forward_headers: Vec<String>,
    /// KV API path prefix.
    pub kv_prefix: String,
    /// HTTP/2 only to origins.
    pub origin_h2_only: bool,
    /// Origin connect timeout.
    pub origin_connect_timeout: Duration,
    /// Origin first-byte timeout.
    pub origin_first_byte_timeout: Duration,
    /// Origin total timeout.
    pub origin_total_timeout: Duration,
    /// Origin bulkhead.
    pub origin_max_concurrency: usize,
    /// Origin retries.
    pub origin_retries: u32,
    /// Breaker threshold.
    pub breaker_failures: u32,
    /// Breaker open time.
    pub breaker_open: Duration,
    /// Response statuses that count as breaker failures (empty: none).
    pub breaker_statuses: Vec<u16>,
    /// Largest stored response.
    pub max_object_size: u64,
    /// Hit-for-miss memory.
    pub uncacheable_ttl: Duration,
    /// Strip tag headers from client responses.
    pub strip_tag_headers: bool,
    /// Maintenance period.
    pub maintenance_interval: Duration,
    /// OTLP/HTTP collector for request spans (`otlp` feature).
    pub otlp_endpoint: Option<String>,
    /// How often the config file is checked for changes (zero: SIGHUP only).
    pub config_watch: Duration,
    /// The settings file given with `--config`, if any (not a setting itself).
    pub config_file: Option<PathBuf>,
}

/// Largest key the entry format and the log can carry (u16 length fields with room
/// for the namespace and kind bytes).
const KEY_FORMAT_LIMIT: u64 = 65_000;

impl Config {
    /// Every setting at its default.
    pub fn defaults() -> Config {
        // Invariant: the built-in defaults are valid; a unit test checks it.
        Self::resolve(&RawSettings::new()).expect("built-in defaults are valid")
    }

    /// Parses raw values (missing ones take their defaults) and checks them together.
    pub fn resolve(raw: &RawSettings) -> Result<Config, ConfigError> {
        let p = Parser { raw };
        let admin_token = p.optional("admin_token")?;
        let config = Config {
            http_addr: p.parse("http_addr", parse_addr)?,
            h3_addr: p.parse("h3_addr", |s| {
                if s == "off" {
                    Ok(None)
                } else {
                    parse_addr(s).map(Some)
                }
            })?,
            h3_max_streams: p.parse("h3_max_streams", |s| {
                let n: u32 = s
                    .parse()
                    .map_err(|_| format!("expected a whole number, got {s:?}"))?;
                Ok(at_least(u64::from(n), 1, "1")? as u32)
            })?,
            h3_stream_window: p.parse("h3_stream_window", |s| quic_window(parse_size(s)?))?,
            h3_connection_window: p
                .parse("h3_connection_window", |s| quic_window(parse_size(s)?))?,
            h3_idle_timeout: p.parse("h3_idle_timeout", positive_duration)?,
            h3_early_data: p.parse("h3_early_data", parse_bool)?,
            cluster: ClusterSettings {
                dir: p.optional("cluster_dir")?.map(PathBuf::from),
                node_id: p.optional("node_id")?,
                gossip_addr: p.parse("gossip_addr", parse_addr)?,
                peer_addr: p.parse("peer_addr", parse_addr)?,
                seeds: p
                    .optional("seeds")?
                    .map(|s| {
                        s.split(',')
                            .map(|h| h.trim().to_string())
                            .filter(|h| !h.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
                zone: p.parse("zone", |s| Ok(s.to_string()))?,
                weight: p.parse("weight", |s| match s.parse::<u32>() {
                    Ok(n) if n <= 1000 => Ok(n),
                    _ => Err(format!("expected a whole number from 0 to 1000, got {s:?}")),
                })?,
                replicas: p.parse("replicas", |s| match s.parse::<usize>() {
                    Ok(n) if (1..=16).contains(&n) => Ok(n),
                    _ => Err(format!("expected a whole number from 1 to 16, got {s:?}")),
                })?,
                probe_period: p.parse("gossip_probe_period", positive_duration)?,
                suspicion: p.parse("gossip_suspicion", positive_duration)?,
                partition_mode: p.parse("partition_mode", |s| match s {
                    "availability" => Ok(PartitionMode::Availability),
                    "consistency" => Ok(PartitionMode::Consistency),
                    _ => Err(format!(
                        "expected `availability` or `consistency`, got {s:?}"
                    )),
                })?,
                max_unsynced: p.parse("max_unsynced", positive_duration)?,
                sync_interval: p.parse("sync_interval", positive_duration)?,
                purge_ack_timeout: p.parse("purge_ack_timeout", positive_duration)?,
            },
            h3_max_udp_payload: p.parse("h3_max_udp_payload", |s| match s.parse::<u16>() {
                Ok(n) if (1200..=65527).contains(&n) => Ok(n),
                _ => Err(format!(
                    "expected a whole number from 1200 to 65527, got {s:?}"
                )),
            })?,
            h3_retry: p.parse("h3_retry", |s| match s {
                "always" => Ok(RetryPolicy::Always),
                "off" => Ok(RetryPolicy::Off),
                "auto" => Ok(RetryPolicy::UnderLoad),
                _ => Err(format!("expected `always`, `off` or `auto`, got {s:?}")),
            })?,
            admin_addr: p.parse("admin_addr", parse_addr)?,
            data_dir: p.parse("data_dir", |s| {
                if s.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(PathBuf::from(s))
                }
            })?,
            memory_capacity: p.parse("memory_capacity", |s| {
                at_least(parse_size(s)?, 1 << 20, "1MiB")
            })?,
            disk_capacity: p.parse("disk_capacity", |s| {
                let n = parse_size(s)?;
                if n != 0 && n < 16 << 20 {
                    return Err("must be 0 (no disk tier) or at least 16MiB".into());
                }
                Ok(n)
            })?,
            default_ttl: p.parse("default_ttl", parse_duration)?,
            max_ttl: p.parse("max_ttl", parse_duration)?,
            max_stale: p.parse("max_stale", parse_duration)?,
            max_key_size: p.parse("max_key_size", |s| {
                let n = at_least(parse_size(s)?, 1, "1 byte")?;
                if n > KEY_FORMAT_LIMIT {
                    return Err(format!("must be at most {KEY_FORMAT_LIMIT} bytes"));
                }
                Ok(n as usize)
            })?,
            max_value_size: p.parse("max_value_size", |s| {
                let n = at_least(parse_size(s)?, 1, "1 byte")?;
                if n > 1 << 30 {
                    return Err("must be at most 1GiB".into());
                }
                Ok(n)
            })?,
            max_connections: p.parse("max_connections", |s| {
                let n: usize = s
                    .parse()
                    .map_err(|_| format!("expected a whole number, got {s:?}"))?;
                Ok(at_least(n as u64, 1, "1")? as usize)
            })?,
            max_header_size: p.parse("max_header_size", |s| {
                let n = at_least(parse_size(s)?, 8192, "8KiB")?;
                if n > 16 << 20 {
                    return Err("must be at most 16MiB".into());
                }
                Ok(n as usize)
            })?,
            header_read_timeout: p.parse("header_read_timeout", positive_duration)?,
            keepalive_timeout: p.parse("keepalive_timeout", positive_duration)?,
            body_read_timeout: p.parse("body_read_timeout", positive_duration)?,
            shutdown_grace: p.parse("shutdown_grace", parse_duration)?,
            access_log: p.parse("access_log", |s| match s {
                "off" => Ok(false),
                "json" => Ok(true),
                _ => Err(format!("expected `off` or `json`, got {s:?}")),
            })?,
            log_level: p.parse("log_level", |s| {
                tracing_subscriber::EnvFilter::try_new(s)
                    .map(|_| s.to_string())
                    .map_err(|e| e.to_string())
            })?,
            log_format: p.parse("log_format", |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("expected `text` or `json`, got {s:?}")),
            })?,
            log_compact_size: p.parse("log_compact_size", |s| {
                at_least(parse_size(s)?, 1 << 20, "1MiB")
            })?,
            maintenance_interval: p.parse("maintenance_interval", positive_duration)?,
            config_watch: p.parse("config_watch", parse_duration)?,
            otlp_endpoint: p.optional("otlp_endpoint")?,
            config_file: None,
            tls_cert: p.optional("tls_cert")?.map(PathBuf::from),
            tls_key: p.optional("tls_key")?.map(PathBuf::from),
            origin_ca_file: p.optional("origin_ca_file")?.map(PathBuf::from),
            origin: p
                .optional("origin")?
                .map(|s| OriginUrl::parse(&s))
                .transpose()
                .map_err(|m| p.invalid("origin", m))?,
            origin_routes: match p.optional("origin_routes")? {
                None => Vec::new(),
                Some(s) => parse_routes(&s).map_err(|m| p.invalid("origin_routes", m))?,
            },
            forward_host: p.parse("forward_host", |s| match s {
                "client" => Ok(ForwardHost::Client),
                "origin" => Ok(ForwardHost::Origin),
                _ => Err(format!("expected `client` or `origin`, got {s:?}")),
            })?,
            forward_headers: p
                .optional("forward_headers")?
                .map(|s| {
                    s.split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            kv_prefix: p.parse("kv_prefix", |s| {
                if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
                    Ok(s.to_string())
                } else {
                    Err(format!("must start and end with `/`, like /kv/, got {s:?}"))
                }
            })?,
            origin_h2_only: p.parse("origin_protocol", |s| match s {
                "auto" => Ok(false),
                "h2" => Ok(true),
                _ => Err(format!("expected `auto` or `h2`, got {s:?}")),
            })?,
            origin_connect_timeout: p.parse("origin_connect_timeout", positive_duration)?,
            origin_first_byte_timeout: p.parse("origin_first_byte_timeout", positive_duration)?,
            origin_total_timeout: p.parse("origin_total_timeout", positive_duration)?,
            origin_max_concurrency: p.parse("origin_max_concurrency", |s| {
                let n: usize = s
                    .parse()
                    .map_err(|_| format!("expected a whole number, got {s:?}"))?;
                Ok(at_least(n as u64, 1, "1")? as usize)
            })?,
            origin_retries: p.parse("origin_retries", |s| {
                s.parse()
                    .map_err(|_| format!("expected a whole number, got {s:?}"))
            })?,
            breaker_failures: p.parse("breaker_failures", |s| {
                let n: u32 = s
                    .parse()
                    .map_err(|_| format!("expected a whole number, got {s:?}"))?;
                Ok(at_least(u64::from(n), 1, "1")? as u32)
            })?,
            breaker_open: p.parse("breaker_open", positive_duration)?,
            breaker_statuses: match p.optional("breaker_statuses")? {
                None => Vec::new(),
                Some(s) => parse_statuses(&s).map_err(|m| p.invalid("breaker_statuses", m))?,
            },
            max_object_size: p.parse("max_object_size", |s| {
                let n = parse_size(s)?;
                if n > 1 << 30 {
                    return Err("must be at most 1GiB".into());
                }
                Ok(n)
            })?,
            uncacheable_ttl: p.parse("uncacheable_ttl", parse_duration)?,
            strip_tag_headers: p.parse("strip_tag_headers", parse_bool)?,
            admin_token,
        };
        if config.default_ttl > config.max_ttl {
            return Err(p.invalid("default_ttl", "must not exceed max_ttl".into()));
        }
        if config.h3_stream_window > config.h3_connection_window {
            return Err(p.invalid(
                "h3_stream_window",
                "must not exceed h3_connection_window".into(),
            ));
        }
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            let missing = if config.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            };
            return Err(p.invalid(
                missing,
                "tls_cert and tls_key go together: set both or neither".into(),
            ));
        }
        if config.cluster.max_unsynced < config.cluster.sync_interval * 2 {
            return Err(p.invalid(
                "max_unsynced",
                "must be at least twice sync_interval: the sync lease it sets would lapse between two healthy rounds".into(),
            ));
        }
        if let Some(endpoint) = &config.otlp_endpoint {
            if !cfg!(feature = "otlp") {
                return Err(p.invalid(
                    "otlp_endpoint",
                    "this fanz-node was built without the `otlp` cargo feature (cargo build --features otlp)".into(),
                ));
            }
            if !endpoint.starts_with("http://") {
                return Err(p.invalid(
                    "otlp_endpoint",
                    format!("{endpoint:?}: expected an http:// URL of an OTLP/HTTP collector (a local agent or sidecar)"),
                ));
            }
        }
        // Members dial each other at the addresses they bind: 0.0.0.0 would be
        // advertised as such and reach nobody.
        if config.cluster.dir.is_some() {
            for (setting, addr) in [
                ("gossip_addr", config.cluster.gossip_addr),
                ("peer_addr", config.cluster.peer_addr),
            ] {
                if addr.ip().is_unspecified() {
                    return Err(p.invalid(
                        setting,
                        format!("{addr} is advertised to the other members as this node's address: bind the address they reach it at (in Kubernetes, $(POD_IP) from the downward API)"),
                    ));
                }
            }
        }
        if config.admin_token.is_none() && !config.admin_addr.ip().is_loopback() {
            return Err(p.invalid(
                "admin_addr",
                "is not a loopback address and no admin_token is set: refusing to expose an unauthenticated admin API".into(),
            ));
        }
        Ok(config)
    }

    /// Every tombstone older than this can be forgotten: no entry older than it can
    /// still be served.
    pub fn tombstone_retention(&self) -> Duration {
        self.max_ttl + self.max_stale
    }

    /// The effective settings as TOML, the token redacted.
    pub fn to_toml(&self) -> String {
        self.effective()
            .iter()
            .map(|(k, v)| format!("{k} = {}\n", toml::Value::String(v.clone())))
            .collect()
    }

    /// Every setting's effective value, as text, the token redacted.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let d = |d: Duration| format!("{}ms", d.as_millis());
        let lines = [
            ("http_addr", self.http_addr.to_string()),
            (
                "h3_addr",
                self.h3_addr.map_or("off".into(), |a| a.to_string()),
            ),
            ("h3_max_streams", self.h3_max_streams.to_string()),
            ("h3_stream_window", self.h3_stream_window.to_string()),
            (
                "h3_connection_window",
                self.h3_connection_window.to_string(),
            ),
            ("h3_idle_timeout", d(self.h3_idle_timeout)),
            ("h3_early_data", self.h3_early_data.to_string()),
            ("h3_max_udp_payload", self.h3_max_udp_payload.to_string()),
            (
                "h3_retry",
                format!("{:?}", self.h3_retry).to_ascii_lowercase(),
            ),
            ("admin_addr", self.admin_addr.to_string()),
            (
                "admin_token",
                self.admin_token
                    .as_ref()
                    .map_or("(unset)".into(), |_| "(redacted)".into()),
            ),
            ("data_dir", self.data_dir.display().to_string()),
            ("memory_capacity", self.memory_capacity.to_string()),
            ("disk_capacity", self.disk_capacity.to_string()),
            ("default_ttl", d(self.default_ttl)),
            ("max_ttl", d(self.max_ttl)),
            ("max_stale", d(self.max_stale)),
            ("max_key_size", self.max_key_size.to_string()),
            ("max_value_size", self.max_value_size.to_string()),
            ("max_connections", self.max_connections.to_string()),
            ("max_header_size", self.max_header_size.to_string()),
            ("header_read_timeout", d(self.header_read_timeout)),
            ("keepalive_timeout", d(self.keepalive_timeout)),
            ("body_read_timeout", d(self.body_read_timeout)),
            ("shutdown_grace", d(self.shutdown_grace)),
            (
                "access_log",
                if self.access_log { "json" } else { "off" }.to_string(),
            ),
            ("log_level", self.log_level.clone()),
            (
                "log_format",
                format!("{:?}", self.log_format).to_ascii_lowercase(),
            ),
            ("log_compact_size", self.log_compact_size.to_string()),
            ("maintenance_interval", d(self.maintenance_interval)),
            ("config_watch", d(self.config_watch)),
            (
                "otlp_endpoint",
                self.otlp_endpoint.clone().unwrap_or("(unset)".into()),
            ),
            (
                "origin",
                self.origin
                    .as_ref()
                    .map_or("(unset)".into(), |o| o.to_string()),
            ),
            (
                "origin_routes",
                self.origin_routes
                    .iter()
                    .map(|(h, o)| format!("{h}={o}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "forward_host",
                format!("{:?}", self.forward_host).to_ascii_lowercase(),
            ),
            ("forward_headers", self.forward_headers.join(",")),
            ("kv_prefix", self.kv_prefix.clone()),
            (
                "origin_protocol",
                if self.origin_h2_only { "h2" } else { "auto" }.to_string(),
            ),
            ("origin_connect_timeout", d(self.origin_connect_timeout)),
            (
                "origin_first_byte_timeout",
                d(self.origin_first_byte_timeout),
            ),
            ("origin_total_timeout", d(self.origin_total_timeout)),
            (
                "origin_max_concurrency",
                self.origin_max_concurrency.to_string(),
            ),
            ("origin_retries", self.origin_retries.to_string()),
            ("breaker_failures", self.breaker_failures.to_string()),
            ("breaker_open", d(self.breaker_open)),
            (
                "breaker_statuses",
                self.breaker_statuses
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("max_object_size", self.max_object_size.to_string()),
            ("uncacheable_ttl", d(self.uncacheable_ttl)),
            ("strip_tag_headers", self.strip_tag_headers.to_string()),
            (
                "cluster_dir",
                self.cluster
                    .dir
                    .as_ref()
                    .map_or("(unset)".into(), |d| d.display().to_string()),
            ),
            (
                "node_id",
                self.cluster.node_id.clone().unwrap_or("(unset)".into()),
            ),
            ("gossip_addr", self.cluster.gossip_addr.to_string()),
            ("peer_addr", self.cluster.peer_addr.to_string()),
            ("seeds", self.cluster.seeds.join(",")),
            ("zone", self.cluster.zone.clone()),
            ("weight", self.cluster.weight.to_string()),
            ("replicas", self.cluster.replicas.to_string()),
            ("gossip_probe_period", d(self.cluster.probe_period)),
            ("gossip_suspicion", d(self.cluster.suspicion)),
            (
                "partition_mode",
                format!("{:?}", self.cluster.partition_mode).to_ascii_lowercase(),
            ),
            ("max_unsynced", d(self.cluster.max_unsynced)),
            ("sync_interval", d(self.cluster.sync_interval)),
            ("purge_ack_timeout", d(self.cluster.purge_ack_timeout)),
        ];
        lines.into()
    }
}

/// Reads a TOML settings file into raw values.
pub fn read_file(path: &Path) -> Result<RawSettings, ConfigError> {
    let file_err = |message: String| ConfigError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
    let mut raw = RawSettings::new();
    for (key, value) in table {
        let Some(spec) = SETTINGS.iter().find(|s| s.name == key) else {
            return Err(ConfigError::Unknown {
                key,
                path: path.to_path_buf(),
            });
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ConfigError::Invalid {
                    setting: spec.name,
                    origin: Origin::File(path.to_path_buf()),
                    message: format!("expected a string or a number, got {}", other.type_str()),
                })
            }
        };
        raw.insert(spec.name, (text, Origin::File(path.to_path_buf())));
    }
    Ok(raw)
}

struct Parser<'a> {
    raw: &'a RawSettings,
}

impl Parser<'_> {
    fn spec(name: &'static str) -> &'static Spec {
        // Invariant: callers pass names from SETTINGS (checked by a unit test).
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .expect("setting is in SETTINGS")
    }

    fn value(&self, name: &'static str) -> Option<(String, Origin)> {
        self.raw.get(name).cloned().or_else(|| {
            Self::spec(name)
                .default
                .map(|d| (d.to_string(), Origin::Default))
        })
    }

    fn invalid(&self, name: &'static str, message: String) -> ConfigError {
        let origin = self.value(name).map_or(Origin::Default, |(_, o)| o);
        ConfigError::Invalid {
            setting: name,
            origin,
            message,
        }
    }

    fn parse<T>(
        &self,
        name: &'static str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (text, origin) = self
            .value(name)
            .ok_or_else(|| self.invalid(name, "has no value".into()))?;
        f(text.trim()).map_err(|message| ConfigError::Invalid {
            setting: name,
            origin,
            message,
        })
    }

    fn optional(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.value(name) {
            None => Ok(None),
            Some((text, _)) if !text.is_empty() => Ok(Some(text)),
            Some(_) => Err(self.invalid(name, "must not be empty when set".into())),
        }
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:8080, got {s:?}"))
}

fn at_least(n: u64, min: u64, shown: &str) -> Result<u64, String> {
    if n < min {
        Err(format!("must be at least {shown}"))
    } else {
        Ok(n)
    }
}

/// A QUIC flow-control window: at least 16 KiB, at most 1 GiB (well inside a varint).
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("expected `true` or `false`, got {s:?}")),
    }
}

fn quic_window(n: u64) -> Result<u64, String> {
    if !(16 << 10..=1 << 30).contains(&n) {
        return Err("must be between 16KiB and 1GiB".into());
    }
    Ok(n)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        Err("must be greater than zero".into())
    } else {
        Ok(d)
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    /// Raw settings as if from FANZ_* variables.
    pub(super) fn raw(pairs: &[(&'static str, &str)]) -> RawSettings {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    (
                        v.to_string(),
                        Origin::Env(format!("FANZ_{}", k.to_uppercase())),
                    ),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::raw;
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documentation() {
        let c = Config::defaults();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin_addr, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.memory_capacity, 256 << 20);
        assert_eq!(c.disk_capacity, 1 << 30);
        assert_eq!(c.data_dir, PathBuf::from("./fanz-data"));
        assert_eq!(c.max_key_size, 8192);
        assert_eq!(c.max_value_size, 64 << 20);
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn every_setting_parses_through_the_table() {
        // Each name used by resolve() must be in SETTINGS; resolve panics otherwise.
        let names: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate setting");
        Config::resolve(&RawSettings::new()).unwrap();
    }

    #[test]
    fn a_bad_value_names_the_setting_and_its_origin() {
        let err = Config::resolve(&raw(&[("memory_capacity", "lots")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`memory_capacity`"), "{text}");
        assert!(text.contains("FANZ_MEMORY_CAPACITY"), "{text}");
    }

    #[test]
    fn unauthenticated_admin_on_a_public_address_is_refused() {
        let err = Config::resolve(&raw(&[("admin_addr", "0.0.0.0:9090")])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "admin_addr",
                    ..
                }
            ),
            "{err}"
        );
        let ok = Config::resolve(&raw(&[
            ("admin_addr", "0.0.0.0:9090"),
            ("admin_token", "s3cret"),
        ]));
        assert!(ok.is_ok());
    }

    #[test]
    fn cross_checks() {
        let err = Config::resolve(&raw(&[("default_ttl", "10d")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                setting: "default_ttl",
                ..
            }
        ));
        assert!(Config::resolve(&raw(&[("disk_capacity", "1MiB")])).is_err());
        assert_eq!(
            Config::resolve(&raw(&[("disk_capacity", "0")]))
                .unwrap()
                .disk_capacity,
            0
        );
        assert!(Config::resolve(&raw(&[("max_key_size", "1MiB")])).is_err());
        assert!(Config::resolve(&raw(&[("log_format", "xml")])).is_err());
        assert!(Config::resolve(&raw(&[("admin_token", "")])).is_err());
        let err =
            Config::resolve(&raw(&[("max_unsynced", "1s"), ("sync_interval", "1s")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                setting: "max_unsynced",
                ..
            }
        ));
        let err = Config::resolve(&raw(&[
            ("cluster_dir", "/tmp/c"),
            ("gossip_addr", "0.0.0.0:7946"),
        ]))
        .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                setting: "gossip_addr",
                ..
            }
        ));
        assert!(
            Config::resolve(&raw(&[("gossip_addr", "0.0.0.0:7946")])).is_ok(),
            "only a cluster member advertises it"
        );
        let otlp = Config::resolve(&raw(&[("otlp_endpoint", "http://127.0.0.1:4318")]));
        assert_eq!(otlp.is_ok(), cfg!(feature = "otlp"), "{otlp:?}");
        assert!(Config::resolve(&raw(&[("otlp_endpoint", "grpc://collector")])).is_err());
    }

    #[test]
    fn http3_settings() {
        let c = Config::defaults();
        assert_eq!(c.h3_addr, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(c.h3_retry, RetryPolicy::UnderLoad);
        assert!(!c.h3_early_data, "0-RTT is off unless asked for");
        let c = Config::resolve(&raw(&[("h3_addr", "off"), ("h3_retry", "always")])).unwrap();
        assert_eq!(c.h3_addr, None);
        assert_eq!(c.h3_retry, RetryPolicy::Always);
        for (setting, bad) in [
            ("h3_stream_window", "1KiB"),
            ("h3_stream_window", "16MiB"),
            ("h3_retry", "sometimes"),
            ("h3_max_streams", "0"),
            ("h3_addr", "udp://x"),
            ("h3_early_data", "yes"),
            ("h3_max_udp_payload", "1199"),
            ("h3_max_udp_payload", "65528"),
        ] {
            let err = Config::resolve(&raw(&[(setting, bad)])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { setting: s, .. } if *s == setting),
                "{setting}={bad}: {err}"
            );
        }
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanz.toml");
        std::fs::write(
            &path,
            "http_addr = \"127.0.0.1:1234\"\nmax_connections = 7\n",
        )
        .unwrap();
        let raw = read_file(&path).unwrap();
        let c = Config::resolve(&raw).unwrap();
        assert_eq!(c.http_addr.port(), 1234);
        assert_eq!(c.max_connections, 7);

        std::fs::write(&path, "http_adr = \"127.0.0.1:1234\"\n").unwrap();
        assert!(
            matches!(read_file(&path), Err(ConfigError::Unknown { key, .. }) if key == "http_adr")
        );
        std::fs::write(&path, "http_addr = [1]\n").unwrap();
        assert!(matches!(
            read_file(&path),
            Err(ConfigError::Invalid {
                setting: "http_addr",
                ..
            })
        ));
        std::fs::write(&path, "not toml at all = = =").unwrap();
        assert!(matches!(read_file(&path), Err(ConfigError::File { .. })));
    }
}
