//! Node settings, each defined once: one table (the `settings!` invocation below)
//! gives every setting its name, type, default, parser, printed form, whether a
//! reload applies it, and help. From it come [`SETTINGS`] (and so the command-line
//! flags `--http-addr`, the environment variables `FANZ_HTTP_ADDR`, the TOML keys
//! `http_addr` and `fanz-node --help`), the fields of [`Config`], its parser and
//! [`Config::effective`] (`print-config`, reload diffs).
//!
//! Precedence, lowest first: built-in default, TOML file (`--config PATH`), environment,
//! flag. [`Config::resolve`] turns the raw strings into typed values, then checks
//! settings against each other; it takes a plain map so tests need neither files
//! nor environment variables. Every bad value is an error naming the setting and
//! where the value came from.
//!
//! Here: the table, the types it uses and the checks across settings. [`spec`]: what a
//! setting is, and the macro. [`parse`]: the file, the parser and the value parsers.

mod cidr;
mod origin;
mod parse;
pub mod rules;
mod spec;
mod tls_certs;
mod units;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cidr::Cidr;
pub use origin::{ForwardHost, OriginUrl};
pub use parse::read_file;
pub use rules::Rules;
pub use spec::{ConfigError, Origin, Spec};
pub use tls_certs::CertEntry;
pub use units::{parse_duration, parse_size};

use origin::{parse_routes, parse_statuses};
use parse::{
    addr, addr_or_off, duration, list, one_of, path, positive_duration, shown, size, switch, text,
    tokens, whole, word,
};

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

const PARTITION_MODES: &[(&str, PartitionMode)] = &[
    ("availability", PartitionMode::Availability),
    ("consistency", PartitionMode::Consistency),
];

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

const RETRY_POLICIES: &[(&str, RetryPolicy)] = &[
    ("always", RetryPolicy::Always),
    ("off", RetryPolicy::Off),
    ("auto", RetryPolicy::UnderLoad),
];

/// When a KV write is acknowledged (`kv_write_ack`), and so what a crash may take
/// of the writes already answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAck {
    /// Once in memory; the disk tier writes it within a few milliseconds.
    Memory,
    /// Once the disk tier has written it to the operating system.
    Written,
    /// Once written and flushed to the device (`fdatasync`).
    Synced,
}

const WRITE_ACKS: &[(&str, WriteAck)] = &[
    ("memory", WriteAck::Memory),
    ("written", WriteAck::Written),
    ("synced", WriteAck::Synced),
];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

/// The HTTP version spoken to origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginProtocol {
    /// HTTP/1.1 to http://, h2 or http/1.1 by ALPN to https://.
    Auto,
    /// HTTP/2 only (prior knowledge, h2c, to http://).
    H2,
}

const ORIGIN_PROTOCOLS: &[(&str, OriginProtocol)] =
    &[("auto", OriginProtocol::Auto), ("h2", OriginProtocol::H2)];

const FORWARD_HOSTS: &[(&str, ForwardHost)] = &[
    ("client", ForwardHost::Client),
    ("origin", ForwardHost::Origin),
];

/// `access_log`: off, or one JSON line per request.
const ACCESS_LOGS: &[(&str, bool)] = &[("off", false), ("json", true)];

/// Largest key the entry format and the log can carry (u16 length fields with room
/// for the namespace and kind bytes).
const KEY_FORMAT_LIMIT: u64 = 65_000;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const NO_LIMIT: u64 = u64::MAX;

spec::settings! {
    // name: Type = default, how(parser), shown, reloadable|fixed, "help";
    http_addr: SocketAddr = Some("127.0.0.1:8080"), required(addr), shown::text, fixed,
        "Address of the main HTTP listener (KV API, PURGE).";
    h3_addr: Option<SocketAddr> = Some("127.0.0.1:8443"), required(addr_or_off), shown::addr_or_off, fixed,
        "UDP address of the HTTP/3 (QUIC) listener, or `off`. Uses tls_cert/tls_key, or a development certificate made in data_dir (see `fanz-node print-dev-cert`).";
    h3_max_streams: u32 = Some("100"), required(whole(1, u32::MAX)), shown::text, fixed,
        "Concurrent HTTP/3 requests per QUIC connection.";
    h3_retry: RetryPolicy = Some("auto"), required(one_of(RETRY_POLICIES)), |v| word(RETRY_POLICIES, v), fixed,
        "QUIC address validation (Retry) before a handshake: `always`, `off`, or `auto` (only while more than 64 handshakes are under way, as under a flood).";
    h3_stream_window: u64 = Some("1MiB"), required(size(16 * KIB, GIB)), shown::text, fixed,
        "QUIC receive window per stream: how much of one request body a client may send ahead.";
    h3_connection_window: u64 = Some("8MiB"), required(size(16 * KIB, GIB)), shown::text, fixed,
        "QUIC receive window per connection, over all its streams.";
    h3_early_data: bool = Some("false"), required(switch), shown::text, fixed,
        "Accept TLS 1.3 0-RTT early data on HTTP/3 resumptions. Early data can be replayed, so only GET, HEAD and OPTIONS are served from it (forwarded to origins with `Early-Data: 1`); other methods wait for the handshake to complete.";
    h3_max_udp_payload: u16 = Some("1452"), required(whole(1200, 65527)), shown::text, fixed,
        "Largest UDP payload QUIC path-MTU discovery may try (1200 to 65527). 1452 fits an Ethernet MTU of 1500; raise it on networks with jumbo frames (8952 for MTU 9000).";
    h3_idle_timeout: Duration = Some("30s"), required(positive_duration), shown::ms, fixed,
        "Idle time after which a QUIC connection is closed.";
    resp_addr: Option<SocketAddr> = Some("127.0.0.1:6380"), required(addr_or_off), shown::addr_or_off, fixed,
        "TCP address of the Redis-protocol (RESP2) port, or `off`: the KV API's keys for Redis clients (GET, MGET, SET with EX/PX/NX/XX, DEL, EXISTS, PING...), with its semantics: a SET is an overwrite that invalidates the key's dependents, a DEL a purge of the key. Plain TCP and no password, like the KV API on http_addr; max_connections, max_key_size, max_value_size, keepalive_timeout and body_read_timeout apply.";
    cluster_dir: Option<PathBuf> = None, optional(path), shown::unset_path, fixed,
        "Directory with the cluster CA (ca.pem), this node's certificate (node.pem, node-key.pem) and the gossip keyring (cluster.keys), as `fanz-node cluster-init` makes. Unset: the node runs alone.";
    node_id: Option<String> = None, optional(text), shown::unset, fixed,
        "This node's id in the cluster: unique and stable across restarts (the ring hashes it). Default: the host name and the gossip port.";
    gossip_addr: SocketAddr = Some("127.0.0.1:7946"), required(addr), shown::text, fixed,
        "UDP address for SWIM membership gossip (with cluster_dir).";
    peer_addr: SocketAddr = Some("127.0.0.1:7947"), required(addr), shown::text, fixed,
        "UDP address of the peer protocol (QUIC, mutual TLS) (with cluster_dir).";
    seeds: Vec<String> = None, or_empty(list), |v: &Vec<String>| shown::list(v), fixed,
        "Comma-separated gossip addresses (`host:port`) to join through; a name resolving to several addresses (a Kubernetes headless Service) stands for all of them. Re-resolved periodically.";
    zone: String = Some("default"), required(text), shown::text, fixed,
        "Failure domain of this node, reported to the cluster.";
    weight: u32 = Some("1"), required(whole(0, 1000)), shown::text, fixed,
        "This node's share of the keys relative to the others (1 to 1000); 0 keeps it in the cluster owning nothing.";
    replicas: usize = Some("2"), required(whole(1, 16)), shown::text, fixed,
        "Owners per key (the first is primary).";
    gossip_probe_period: Duration = Some("1s"), required(positive_duration), shown::ms, fixed,
        "How often each node probes one other member (SWIM). Shorter detects failures sooner and sends more.";
    gossip_suspicion: Duration = Some("4s"), required(positive_duration), shown::ms, fixed,
        "How long a suspected member has to refute before it is declared down. Shorter detects failures sooner and risks declaring slow nodes down.";
    partition_mode: PartitionMode = Some("consistency"), required(one_of(PARTITION_MODES)), |v| word(PARTITION_MODES, v), fixed,
        "When this node has not synced invalidations with a majority of the cluster for max_unsynced (cut off, or most members down), purges may complete without it: `consistency` revalidates every hit with the owner or the origin first (KV reads no owner answers get 503); `availability` keeps serving hits, marked `Cache-Status: ...; detail=unsynced`, purged content included.";
    max_unsynced: Duration = Some("2s"), required(positive_duration), shown::ms, fixed,
        "The sync lease: how long after an anti-entropy round that reached a majority of the members this node counts as in sync. Past it partition_mode applies; purgers complete a purge without an unreachable member one lease (+0.5 s) after a majority applied it. Keep it several sync_intervals long.";
    sync_interval: Duration = Some("500ms"), required(positive_duration), shown::ms, fixed,
        "How often a node pulls missed invalidations from enough random peers to make a majority with itself (anti-entropy; renews the sync lease).";
    purge_ack_timeout: Duration = Some("5s"), required(positive_duration), shown::ms, fixed,
        "How long a `wait=all` purge waits for every member's acknowledgement; members that have not acked by then are named in the answer.";
    admin_addr: SocketAddr = Some("127.0.0.1:9090"), required(addr), shown::text, fixed,
        "Address of the admin API (purge, health, metrics). Without an admin token it must be a loopback address.";
    admin_token: Option<Vec<String>> = None, optional(tokens), shown::redacted, reloadable,
        "Bearer token required by the admin API and by PURGE; several, comma-separated, are all valid (rotate a token by a reload that adds the new one, then one that drops the old). Unset: only loopback clients may use them.";
    purge_token: Option<Vec<String>> = None, optional(tokens), shown::redacted, reloadable,
        "Bearer tokens (comma-separated) that may purge (POST /purge, GET /purge/{id}, PURGE) and do nothing else on the admin API, for the tools and people that only purge.";
    admin_allow: Vec<Cidr> = None, or_empty(|s| list(s)?.iter().map(|c| Cidr::parse(c)).collect()), |v: &Vec<Cidr>| shown::list(v), reloadable,
        "Comma-separated CIDR blocks (`10.0.0.0/8,::1`) that may use the admin API and PURGE; others get 403 before their token is looked at. /healthz and /readyz stay open to all. Empty: any address (tokens still apply).";
    admin_rate_limit: u32 = Some("10000"), required(whole(0, 10_000_000)), shown::text, reloadable,
        "Admin and purge requests per second per token (bursts of twice that); past it, 429 with Retry-After. The default stops a runaway script without slowing the heaviest legitimate purger (a node makes fewer durable purges a second than that); set a lower one per your tools. 0: no limit.";
    data_dir: PathBuf = Some("./fanz-data"), required(|s| if s.is_empty() { Err("must not be empty".into()) } else { path(s) }), shown::path, fixed,
        "Directory for the disk tier and the invalidation log. Created if missing.";
    memory_capacity: u64 = Some("256MiB"), required(size(MIB, NO_LIMIT)), shown::text, fixed,
        "Memory tier capacity (bytes of keys and encoded entries). Entries over 16 KiB encoded always have at least an eighth of it, so when small entries fill the rest the two memory tiers together may hold up to an eighth more.";
    sendfile_min_size: Option<u64> = None, optional(size(32 * KIB, GIB)), shown::unset, fixed,
        "Keep cached entries at least this large (at least 32KiB) in memory files and send their bodies with sendfile over plain-TCP HTTP/1.1 and HTTP/2, without a copy. Unset (the default): bodies are copied. Each such entry holds a file descriptor (at most a quarter of the open-file limit at once). Measured here over loopback it made hits slower (see docs/PERFORMANCE.md, \"Large bodies and sendfile\"); measure it on your own network cards before turning it on.";
    disk_capacity: u64 = Some("1GiB"), required(|s| match parse_size(s)? { n if n != 0 && n < 16 * MIB => Err("must be 0 (no disk tier) or at least 16MiB".into()), n => Ok(n) }), shown::text, fixed,
        "Disk tier capacity; 0 disables the disk tier. Half of it holds entries of up to 16 KiB encoded, packed back to back (a 1 KiB value takes about 1.1 KiB; their index, about 30 bytes an entry, is held in memory beside memory_capacity); the other half larger ones, each rounded up to 4 KiB pages. Entries larger than 1/16 of it (at most 16 MiB) stay in memory only.";
    kv_write_ack: WriteAck = Some("memory"), required(one_of(WRITE_ACKS)), |v| word(WRITE_ACKS, v), fixed,
        "When a KV write (PUT, and its copies on the other owners) is answered. `memory`: once stored in memory; the disk tier writes it within about 2 ms, so a killed process loses the writes of that batch (their keys read their previous values after a restart) and a power loss what the kernel had not yet written back. `written`: once the disk tier has handed it to the operating system: a killed process loses no answered write; adds about 2 ms to each write. `synced`: once it is also flushed to the device (fdatasync), for writes that must survive a power loss; adds a flush per batch. Purges, deletes and dependency edges are flushed before their answer whatever this says. Needs a disk tier.";
    default_ttl: Duration = Some("1h"), required(duration), shown::ms, reloadable,
        "TTL of a KV value stored without Cache-Control: max-age.";
    max_ttl: Duration = Some("7d"), required(duration), shown::ms, reloadable,
        "Longest freshness lifetime of any stored entry (a KV TTL, an origin's max-age or Expires); longer ones are clamped. With max_stale, bounds how long tombstones are kept.";
    max_stale: Duration = Some("1d"), required(duration), shown::ms, reloadable,
        "Longest stale-while-revalidate / stale-if-error window of any stored entry; longer ones are clamped. No entry is served, even stale, past max_ttl + max_stale from its fill.";
    max_key_size: usize = Some("8KiB"), required(size(1, KEY_FORMAT_LIMIT)), shown::text, fixed,
        "Longest key accepted (longer: 414).";
    max_value_size: u64 = Some("64MiB"), required(size(1, GIB)), shown::text, fixed,
        "Largest value accepted (larger: 413, refused before the body is read).";
    max_connections: usize = Some("25000"), required(whole(1, usize::MAX)), shown::text, fixed,
        "Most client connections served at once per listener; further ones wait to be accepted.";
    max_header_size: usize = Some("64KiB"), required(size(8 * KIB, 16 * MIB)), shown::text, fixed,
        "Largest request header section (431 beyond). The request line may add up to three times max_key_size.";
    header_read_timeout: Duration = Some("10s"), required(positive_duration), shown::ms, fixed,
        "Time a client has to send a request's head once its first byte arrived, and a new connection its first request (slowloris guard; also the TLS handshake's limit).";
    keepalive_timeout: Duration = Some("75s"), required(positive_duration), shown::ms, fixed,
        "Idle time between requests after which an HTTP/1.1 or HTTP/2 connection is closed (nginx's keepalive_timeout is 75 s, Varnish's timeout_idle 5 s).";
    body_read_timeout: Duration = Some("30s"), required(positive_duration), shown::ms, fixed,
        "Time a client has to send a request body (408 after it).";
    shutdown_grace: Duration = Some("10s"), required(duration), shown::ms, fixed,
        "On SIGTERM/SIGINT, how long in-flight requests may take to finish.";
    access_log: bool = Some("off"), required(one_of(ACCESS_LOGS)), |v| word(ACCESS_LOGS, v), fixed,
        "Access log: `off`, or `json` (one JSON object per HTTP request, and per command on the Redis-protocol port, on standard output).";
    log_level: String = Some("info"), required(|s| tracing_subscriber::EnvFilter::try_new(s).map(|_| s.to_string()).map_err(|e| e.to_string())), shown::text, reloadable,
        "Log filter (tracing EnvFilter syntax, e.g. `info,fanz_node=debug`).";
    log_format: LogFormat = Some("text"), required(one_of(LOG_FORMATS)), |v| word(LOG_FORMATS, v), fixed,
        "Log format: `text` or `json`.";
    tls_cert: Option<PathBuf> = None, optional(path), shown::unset_path, fixed,
        "PEM certificate chain: the main listener speaks HTTPS (ALPN h2 and http/1.1). Needs tls_key.";
    tls_key: Option<PathBuf> = None, optional(path), shown::unset_path, fixed,
        "PEM private key for tls_cert.";
    tls_certs: Vec<CertEntry> = None, or_empty(tls_certs::parse), |v: &Vec<CertEntry>| tls_certs::show(v), reloadable,
        "More certificates, chosen by the server name a client asks for (SNI), on the main listener and HTTP/3: `[[tls.certs]]` tables in the config file, each with `names` (host names, or `*.` wildcards for one label), `cert` and `key`. A name none of them serves gets tls_cert (or the first of these). Certificate files are read again on SIGHUP and when they change (tls_watch), without dropping connections.";
    tls_watch: Duration = Some("10s"), required(duration), shown::ms, fixed,
        "How often the certificate and key files are checked for changes (a renewal by certbot or cert-manager) and read again; 0s: on SIGHUP only.";
    origin_ca_file: Option<PathBuf> = None, optional(path), shown::unset_path, fixed,
        "PEM file of CA certificates trusted for https:// origins, besides the system's.";
    origin: Option<OriginUrl> = None, optional(OriginUrl::parse), shown::unset, reloadable,
        "Default origin URL (http://host:port or https://...) for pull-through caching. Unset: only the KV API is served.";
    origin_routes: Vec<(String, OriginUrl)> = None, or_empty(parse_routes), |routes: &Vec<(String, OriginUrl)>| routes.iter().map(|(h, o)| format!("{h}={o}")).collect::<Vec<_>>().join(","), reloadable,
        "Per-Host origins, `host=URL` pairs separated by commas (e.g. `a.example=http://10.0.0.1:80,b.example=https://b.internal`). A request for a host neither routed nor served by `origin` gets 421.";
    forward_host: ForwardHost = Some("client"), required(one_of(FORWARD_HOSTS)), |v| word(FORWARD_HOSTS, v), reloadable,
        "Host header sent to the origin: `client` (the request's Host) or `origin` (the origin URL's authority).";
    forward_headers: Vec<String> = None, or_empty(|s| Ok(list(s)?.iter().map(|h| h.to_ascii_lowercase()).collect())), |v: &Vec<String>| shown::list(v), reloadable,
        "Comma-separated request headers forwarded to the origin although they could poison the cache (X-Forwarded-Host, X-Original-URL, ...). By default they are dropped.";
    kv_prefix: String = Some("/kv/"), required(|s| if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') { Ok(s.to_string()) } else { Err(format!("must start and end with `/`, like /kv/, got {s:?}")) }), shown::text, fixed,
        "Path prefix of the KV API on the main port; requests under it never go to an origin. An origin's own paths under it are unreachable: choose a prefix the origin does not use.";
    origin_protocol: OriginProtocol = Some("auto"), required(one_of(ORIGIN_PROTOCOLS)), |v| word(ORIGIN_PROTOCOLS, v), fixed,
        "HTTP version to origins: `auto` (HTTP/1.1 to http://, h2 or http/1.1 by ALPN to https://) or `h2` (HTTP/2 only; prior knowledge, h2c, to http://).";
    origin_connect_timeout: Duration = Some("2s"), required(positive_duration), shown::ms, reloadable,
        "Time to connect to an origin.";
    origin_first_byte_timeout: Duration = Some("15s"), required(positive_duration), shown::ms, reloadable,
        "Time from sending a request to an origin to its response head.";
    origin_total_timeout: Duration = Some("60s"), required(positive_duration), shown::ms, reloadable,
        "Time for a whole origin response, body included.";
    origin_max_concurrency: usize = Some("256"), required(whole(1, usize::MAX)), shown::text, reloadable,
        "Requests in flight to one origin at once (bulkhead); beyond it, 503.";
    origin_retries: u32 = Some("2"), required(whole(0, u32::MAX)), shown::text, reloadable,
        "Retries of an idempotent request whose origin connection failed before any byte came back (exponential backoff, full jitter).";
    breaker_failures: u32 = Some("5"), required(whole(1, u32::MAX)), shown::text, reloadable,
        "Consecutive origin failures that open its circuit breaker.";
    breaker_open: Duration = Some("10s"), required(positive_duration), shown::ms, reloadable,
        "How long an open breaker refuses requests before letting one probe through.";
    breaker_statuses: Vec<u16> = None, or_empty(parse_statuses), |v: &Vec<u16>| shown::list(v), reloadable,
        "Comma-separated response statuses that count as origin failures for the breaker (for example 502,503,504). By default none do: an origin that answers is alive, and only transport failures (refused, reset, TLS, timeouts, a response cut off) count.";
    max_object_size: u64 = Some("16MiB"), required(size(0, GIB)), shown::text, fixed,
        "Largest response stored; larger ones pass through uncached.";
    uncacheable_ttl: Duration = Some("10s"), required(duration), shown::ms, reloadable,
        "How long a URL that answered uncacheable skips request collapsing (hit-for-miss).";
    strip_tag_headers: bool = Some("true"), required(switch), shown::text, fixed,
        "Remove Surrogate-Key and Cache-Tag from responses to clients.";
    log_compact_size: u64 = Some("64MiB"), required(size(MIB, NO_LIMIT)), shown::text, fixed,
        "Compact the invalidation log once it is this large and twice its last compacted size.";
    otlp_endpoint: Option<String> = None, optional(text), shown::unset, fixed,
        "OTLP/HTTP collector (e.g. http://127.0.0.1:4318) to export request spans to, as JSON. Needs a build with the `otlp` cargo feature.";
    config_watch: Duration = Some("0s"), required(duration), shown::ms, fixed,
        "How often to check the config file (--config) for changes and reload it; 0s: only on SIGHUP. Reloads apply origins, the TTL policy, the admin token and the log level; other settings need a restart.";
    maintenance_interval: Duration = Some("60s"), required(positive_duration), shown::ms, fixed,
        "How often expired tombstones and edges are collected.";
    rules: Rules = None, or_empty(rules::parse), rules::show, reloadable,
        "Per host and path rules, first match wins: the config file's [[rules]] tables (here, as a TOML inline array). Each may set host and path globs, query (keep, sort or ignore), drop_params (globs of query parameters left out of the cache key and the origin request) and bypass (never cache). See `config::rules`.";
}

impl Config {
    /// Every setting at its default.
    pub fn defaults() -> Config {
        // Invariant: the built-in defaults are valid; a unit test checks it.
        Self::resolve(&RawSettings::new()).expect("built-in defaults are valid")
    }

    /// Parses raw values (missing ones take their defaults) and checks them together.
    pub fn resolve(raw: &RawSettings) -> Result<Config, ConfigError> {
        let p = parse::Parser { raw };
        let config = Config::parse_each(&p)?;
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
        if config.max_unsynced < config.sync_interval * 2 {
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
        if config.cluster_dir.is_some() {
            for (setting, addr) in [
                ("gossip_addr", config.gossip_addr),
                ("peer_addr", config.peer_addr),
            ] {
                if addr.ip().is_unspecified() {
                    return Err(p.invalid(
                        setting,
                        format!("{addr} is advertised to the other members as this node's address: bind the address they reach it at (in Kubernetes, $(POD_IP) from the downward API)"),
                    ));
                }
            }
        }
        if let (Some(admin), Some(purge)) = (&config.admin_token, &config.purge_token) {
            if purge.iter().any(|t| admin.contains(t)) {
                return Err(p.invalid(
                    "purge_token",
                    "a purge token is also an admin token: one token, one scope".into(),
                ));
            }
        }
        if config.kv_write_ack != WriteAck::Memory && config.disk_capacity == 0 {
            return Err(p.invalid(
                "kv_write_ack",
                "waits for the disk tier, and disk_capacity = 0 turns it off: keep `memory` or give the node a disk tier".into(),
            ));
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
}

/// The lifetime clamps of every stored entry and the TTL of KV writes: the
/// reloadable part of `default_ttl`, `max_ttl` and `max_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// TTL without `max-age`.
    pub default_ttl: Duration,
    /// TTL clamp.
    pub max_ttl: Duration,
    /// Stale window clamp.
    pub max_stale: Duration,
}

impl TtlPolicy {
    /// The policy `config` sets, kept within `ceiling`: tombstones are kept for
    /// the start-up `max_ttl + max_stale`, so no entry may outlive that, or a purged
    /// entry could come back once its tombstone is collected.
    pub fn of(config: &Config, ceiling: &TtlPolicy) -> TtlPolicy {
        TtlPolicy {
            default_ttl: config.default_ttl.min(ceiling.max_ttl),
            max_ttl: config.max_ttl.min(ceiling.max_ttl),
            max_stale: config.max_stale.min(ceiling.max_stale),
        }
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
    fn what_print_config_shows_parses_back_to_the_same_settings() {
        let changed = Config::resolve(&raw(&[
            ("h3_addr", "off"),
            ("h3_retry", "always"),
            ("seeds", "a:1, b:2"),
            ("forward_headers", "X-Forwarded-Host"),
            ("breaker_statuses", "502,503"),
            ("origin_routes", "a.example=http://127.0.0.1:1"),
            ("access_log", "json"),
            ("origin_protocol", "h2"),
            ("cluster_dir", "/tmp/c"),
        ]))
        .unwrap();
        for config in [Config::defaults(), changed] {
            let shown = config.effective();
            let again: RawSettings = shown
                .iter()
                .filter(|(_, v)| v != "(unset)" && v != "(redacted)")
                .map(|(k, v)| (*k, (v.clone(), Origin::Default)))
                .collect();
            let again = Config::resolve(&again).unwrap();
            assert_eq!(again.effective(), shown);
        }
    }

    #[test]
    fn the_table_says_which_settings_a_reload_applies() {
        let reloadable = |name: &str| SETTINGS.iter().any(|s| s.name == name && s.reloadable);
        for name in [
            "admin_token",
            "log_level",
            "origin",
            "default_ttl",
            "breaker_open",
        ] {
            assert!(reloadable(name), "{name}");
        }
        for name in ["http_addr", "data_dir", "cluster_dir", "memory_capacity"] {
            assert!(!reloadable(name), "{name}");
        }
    }

    #[test]
    fn numbers_and_sizes_out_of_range_say_the_range() {
        let message = |setting, value| match Config::resolve(&raw(&[(setting, value)])) {
            Err(ConfigError::Invalid { message, .. }) => message,
            other => panic!("{setting}={value}: {other:?}"),
        };
        assert_eq!(
            message("replicas", "17"),
            "expected a whole number from 1 to 16, got \"17\""
        );
        assert_eq!(
            message("max_connections", "0"),
            "expected a whole number of at least 1, got \"0\""
        );
        assert_eq!(message("memory_capacity", "1KiB"), "must be at least 1MiB");
        assert_eq!(message("max_header_size", "32MiB"), "must be at most 16MiB");
        assert_eq!(
            message("log_format", "xml"),
            "expected `text` or `json`, got \"xml\""
        );
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
        // Waiting for a disk tier there is not.
        let err = Config::resolve(&raw(&[("kv_write_ack", "written"), ("disk_capacity", "0")]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                setting: "kv_write_ack",
                ..
            }
        ));
        assert_eq!(
            Config::resolve(&raw(&[("kv_write_ack", "synced")]))
                .unwrap()
                .kv_write_ack,
            WriteAck::Synced
        );
        assert!(Config::resolve(&raw(&[("kv_write_ack", "always")])).is_err());
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
