//! Start-up and the one shutdown path of a node.
//!
//! ```text
//! data dir (create, probe, lock) -> invalidation log replay -> storage tiers recovery
//!   -> serve main + admin listeners -> ready
//! shutdown signal -> not ready -> stop accepting -> drain (grace) -> flush log -> close tiers
//! ```

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{AdminParts, AdminService, KvFacts};
use crate::auth::{AccessRules, Auth};
use crate::cache::Cache;
use crate::clock::Clock;
use crate::cluster::{Cluster, ClusterParts};
use crate::config::Config;
use crate::config::TtlPolicy;
use crate::front::kv::{KvLimits, MainService};
use crate::front::peer::NodePeerService;
use crate::front::purge::Purger;
use crate::front::resp::RespLimits;
use crate::front::server::{serve, Accepting, ServeLimits};
use crate::http::Answer;
use crate::invalidation::{edge_channel, Invalidator};
use crate::live::Live;
use crate::metrics::{Api, Metrics};
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::store::{Store, StoreConfig, CORRUPT_ENTRIES};
use crate::sync_gate::SyncGate;
use crate::tls;

/// Method, version and the rest of a request line besides its target.
/// Room in a peer frame for an entry's metadata (key, headers, tags) beside its body.
const PEER_FRAME_OVERHEAD: usize = 256 * 1024;
const REQUEST_LINE_OVERHEAD: usize = 1024;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot be used as given (address taken, directory unwritable, ...).
    #[error("cannot use setting `{setting}` ({value}): {message}")]
    Setting {
        /// Setting name.
        setting: &'static str,
        /// Its value.
        value: String,
        /// What went wrong.
        message: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// Process exit code: 2 for a bad setting, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Setting { .. } => 2,
            StartError::Other(_) => 1,
        }
    }
}

/// Binds a listener, naming the setting when it fails.
pub async fn bind(
    setting: &'static str,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Setting {
            setting,
            value: addr.to_string(),
            message: e.to_string(),
        })
}

/// Creates the data directory, proves it writable, and takes its lock so two nodes
/// never share one. The returned file holds the lock until it is dropped.
pub fn prepare_data_dir(dir: &Path) -> Result<File, StartError> {
    let fail = |message: String| StartError::Setting {
        setting: "data_dir",
        value: dir.display().to_string(),
        message,
    };
    fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
    let probe = dir.join(".write-probe");
    File::create(&probe)
        .and_then(|mut f| f.write_all(b"ok").and_then(|()| f.sync_all()))
        .and_then(|()| fs::remove_file(&probe))
        .map_err(|e| fail(format!("not writable: {e}")))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| fail(format!("cannot open its lock file: {e}")))?;
    lock.try_lock()
        .map_err(|_| fail("another fanz-node is using it (LOCK is held)".into()))?;
    Ok(lock)
}

/// Descriptors kept for everything but client connections: the disk tier, the
/// invalidation log, peer and origin connections, QUIC sockets.
const OTHER_FILES: u64 = 1024;

/// Raises the soft open-file limit to the hard one. Every connection is a file
/// descriptor, and systemd services and recent Docker start processes with a soft
/// limit of 1024 (the hard one far higher), which would cap the node at about a
/// thousand connections whatever `max_connections` says. Warns when even the hard
/// limit leaves less than `max_connections` per listener.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                let shown = |l: Option<u64>| l.map_or("unlimited".into(), |l| l.to_string());
                tracing::info!(
                    from = %shown(before.current),
                    to = %shown(before.maximum),
                    "raised the open-file limit to its hard value"
                )
            }
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
    }
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let wanted = (max_connections as u64).saturating_add(OTHER_FILES);
    if limit < wanted {
        tracing::warn!(
            limit,
            max_connections,
            "the open-file limit is below max_connections plus {OTHER_FILES}: connections past it wait to be accepted; raise the hard limit (LimitNOFILE, ulimit -Hn, --ulimit nofile)"
        );
    }
}

/// Runs a node on the given listeners until `shutdown` resolves, then shuts down
/// cleanly. The binary binds real ports; tests bind port 0.
pub async fn run(
    config: Config,
    http_listener: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let _lock = prepare_data_dir(&config.data_dir)?;
    raise_open_file_limit(config.max_connections);
    let clock = Arc::new(Clock::system());
    let metrics = Arc::new(Metrics::new(CORRUPT_ENTRIES.clone()));
    let (edge_sink, edges) = edge_channel();
    let invalidator = Invalidator::open(
        &config.data_dir,
        clock.clone(),
        config.tombstone_retention(),
        config.log_compact_size,
        edge_sink,
    )
    .await
    .map_err(|e| data_dir_error(&config, e))?;
    let invalidator = Arc::new(invalidator);
    let store = Store::open(
        StoreConfig {
            memory_capacity: config.memory_capacity,
            disk_capacity: config.disk_capacity,
            dir: config.data_dir.join("cache"),
            sendfile_min_size: config.sendfile_min_size,
            write_ack: config.kv_write_ack,
        },
        metrics.evictions.clone(),
    )
    .await
    .map_err(|e| data_dir_error(&config, e))?;
    let gate = SyncGate::new(config.partition_mode, config.max_unsynced, metrics.clone());
    let cache = Arc::new(Cache::new(
        store.clone(),
        invalidator.clone(),
        clock,
        metrics.clone(),
        gate.clone(),
    ));
    let auth = {
        let metrics = metrics.clone();
        Auth::new(AccessRules::of(&config))
            .counting(move |refusal| metrics.count_admin_refusal(refusal.as_str()))
    };
    if config.admin_token.is_none() {
        tracing::warn!(
            "no admin token configured: purges and the admin API are open to loopback clients only"
        );
    }
    let origin_tls =
        tls::origin_client_config(config.origin_ca_file.as_deref()).map_err(tls_error)?;
    let ttl = Arc::new(Live::new(TtlPolicy {
        default_ttl: config.default_ttl,
        max_ttl: config.max_ttl,
        max_stale: config.max_stale,
    }));
    let http = http_listener
        .local_addr()
        .map_err(|e| StartError::Setting {
            setting: "http_addr",
            value: config.http_addr.to_string(),
            message: e.to_string(),
        })?;
    let parts = ClusterParts {
        cache: cache.clone(),
        gate,
        edges,
        max_frame: usize::try_from(config.max_value_size)
            .unwrap_or(usize::MAX)
            .saturating_add(PEER_FRAME_OVERHEAD),
        fetch_timeout: config.origin_first_byte_timeout + Duration::from_secs(1),
        data_dir: config.data_dir.clone(),
    };
    let cluster = Cluster::open(&config, http, metrics.clone(), parts)
        .await
        .map_err(|message| StartError::Setting {
            setting: "cluster_dir",
            value: config
                .cluster_dir
                .as_ref()
                .map_or(String::new(), |d| d.display().to_string()),
            message,
        })?;
    let cluster = Arc::new(cluster);
    let (routing, replicator) = (cluster.routing().clone(), cluster.replicator().clone());
    let proxy = Some(Arc::new(Proxy::new(
        cache.clone(),
        &config,
        &origin_tls,
        metrics.clone(),
        ttl.clone(),
        routing.clone(),
        replicator.clone(),
    )))
    .filter(|p| p.enabled());
    // The certificates both TLS listeners present, reloaded while the node runs.
    let certs = match tls::cert_sources(&config) {
        sources if sources.is_empty() => None,
        sources => Some(tls::CertStore::open(sources).map_err(tls_error)?),
    };
    let front_tls = match &certs {
        Some(certs) => Some(tls::server_config(certs.clone()).map_err(tls_error)?),
        None => None,
    };
    if let Some(origin) = &config.origin {
        tracing::info!(%origin, routes = config.origin_routes.len(), "pull-through caching enabled");
    }
    let peer_service = Arc::new(NodePeerService::new(
        cache.clone(),
        proxy.clone(),
        replicator.clone(),
    ));
    cluster.serve(&config, peer_service).await;
    let ready = Arc::new(AtomicBool::new(false));
    let purger = Arc::new(Purger::new(replicator.clone()));
    let main_service = Arc::new(MainService::new(
        cache.clone(),
        auth.clone(),
        KvLimits {
            max_key_size: config.max_key_size,
            max_value_size: config.max_value_size,
            body_read_timeout: config.body_read_timeout,
            ttl: ttl.clone(),
            prefix: config.kv_prefix.clone(),
        },
        proxy.clone(),
        (routing, replicator),
        purger.clone(),
    ));
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        auth.clone(),
        ttl,
        proxy.clone(),
        certs.clone(),
        metrics.clone(),
    ));
    let admin_service = Arc::new(AdminService::new(AdminParts {
        cache: cache.clone(),
        auth,
        metrics: metrics.clone(),
        ready: ready.clone(),
        proxy,
        cluster: cluster.clone(),
        purger,
        kv: KvFacts {
            kv_prefix: config.kv_prefix.clone(),
            max_key_size: config.max_key_size,
            max_value_size: config.max_value_size,
        },
    }));
    let limits = ServeLimits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
        keepalive_timeout: config.keepalive_timeout,
        // The request line (a percent-encoded key of up to 3x its size) plus headers.
        max_head_bytes: config.max_key_size * 3 + REQUEST_LINE_OVERHEAD + config.max_header_size,
        shutdown_grace: config.shutdown_grace,
        tls: None,
        access_log: config.access_log,
        alt_svc: None,
    };

    let h3 = match config.h3_addr {
        Some(addr) => Some(open_h3(&config, addr, certs)?),
        None => None,
    };
    let resp = match config.resp_addr {
        Some(addr) => Some(bind("resp_addr", addr).await?),
        None => None,
    };
    let alt_svc = h3
        .as_ref()
        .and_then(|e| e.local_addr().ok())
        .and_then(|a| http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", a.port())).ok());

    // The main listener drains first; the admin listener stays up meanwhile, so
    // probes see /readyz answer 503 while in-flight requests finish.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_admin_tx, stop_admin_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let h3_service = main_service.clone();
    let resp_server = resp.map(|listener| {
        tokio::spawn(crate::front::resp::serve_resp(
            listener,
            RespLimits {
                accepting: Accepting {
                    max_connections: config.max_connections,
                    shutdown_grace: config.shutdown_grace,
                },
                max_key_size: config.max_key_size,
                max_value_size: usize::try_from(config.max_value_size).unwrap_or(usize::MAX),
                keepalive_timeout: config.keepalive_timeout,
                command_timeout: config.body_read_timeout,
                access_log: config.access_log,
            },
            main_service.clone(),
            metrics.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    let main_server = tokio::spawn(serve(
        http_listener,
        ServeLimits {
            tls: front_tls,
            alt_svc,
            ..limits.clone()
        },
        (metrics.clone(), Api::Main),
        move |req, peer| main_service.answer(req, peer),
        stopped(stop_rx.clone()),
    ));
    let h3_server = h3.map(|endpoint| {
        let service = h3_service.clone();
        tokio::spawn(crate::front::h3::serve_h3(
            endpoint,
            h3_limits(&config),
            (metrics.clone(), Api::Main),
            move |req, peer| service.answer(req, peer),
            stopped(stop_rx.clone()),
        ))
    });
    let admin_server = tokio::spawn(serve(
        admin_listener,
        limits,
        (metrics.clone(), Api::Admin),
        move |req, peer| Answer::later(admin_service.clone().handle(req, peer)),
        stopped(stop_admin_rx),
    ));
    let maintenance = {
        let invalidator = invalidator.clone();
        let period = config.maintenance_interval;
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = invalidator.maintain().await {
                            tracing::error!(error = %e, "invalidation log maintenance failed");
                        }
                    }
                    // The only change ever sent is the stop.
                    _ = stop.changed() => break,
                }
            }
        })
    };
    // Near caches serve only while these arrive (their lease).
    let heartbeats = {
        let watchers = invalidator.watchers().clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => watchers.heartbeat(),
                    _ = stop.changed() => break,
                }
            }
            // Their streams end, so the admin listener can drain.
            watchers.close();
        })
    };
    let reloads = reloader.spawn(stop_rx.clone());
    ready.store(true, Ordering::Release);
    tracing::info!(
        http = %config.http_addr,
        admin = %config.admin_addr,
        data_dir = %config.data_dir.display(),
        "fanz-node serving"
    );

    shutdown.await;
    tracing::info!(grace = ?config.shutdown_grace, "shutting down");
    ready.store(false, Ordering::Release);
    // Leave first, so the other members take over this node's keys before its
    // listeners stop.
    cluster.leave().await;
    let _ = stop_tx.send(true);
    let _ = tokio::join!(main_server, maintenance, heartbeats, reloads);
    if let Some(h3) = h3_server {
        let _ = h3.await;
    }
    if let Some(resp) = resp_server {
        let _ = resp.await;
    }
    let _ = stop_admin_tx.send(true);
    let _ = admin_server.await;
    cluster.close().await;
    invalidator.close().await;
    store.close().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

fn h3_limits(config: &Config) -> crate::front::h3::H3Limits {
    crate::front::h3::H3Limits {
        max_streams: config.h3_max_streams,
        idle_timeout: config.h3_idle_timeout,
        max_header_size: config.max_header_size as u64,
        shutdown_grace: config.shutdown_grace,
        retry: config.h3_retry,
        stream_window: config.h3_stream_window,
        connection_window: config.h3_connection_window,
        early_data: config.h3_early_data,
        max_udp_payload: config.h3_max_udp_payload,
        access_log: config.access_log,
    }
}

/// Opens the HTTP/3 endpoint: the configured certificates, or the development one.
fn open_h3(
    config: &Config,
    addr: std::net::SocketAddr,
    certs: Option<Arc<tls::CertStore>>,
) -> Result<quinn::Endpoint, StartError> {
    let certs = match certs {
        Some(certs) => certs,
        None => {
            let (cert, key) = tls::dev_certificate(&config.data_dir).map_err(tls_error)?;
            let fingerprint = tls::fingerprint(&cert).map_err(tls_error)?;
            tracing::warn!(
                cert = %cert.display(),
                sha256 = %fingerprint,
                "HTTP/3 uses a self-signed development certificate; set tls_cert and tls_key for production"
            );
            tls::CertStore::open(vec![tls::CertSource {
                names: Vec::new(),
                cert,
                key,
                index: None,
            }])
            .map_err(tls_error)?
        }
    };
    let tls_config = tls::h3_server_config(certs, config.h3_early_data).map_err(tls_error)?;
    let endpoint =
        crate::front::h3::endpoint(addr, tls_config, &h3_limits(config)).map_err(|message| {
            StartError::Setting {
                setting: "h3_addr",
                value: addr.to_string(),
                message,
            }
        })?;
    tracing::info!(addr = %endpoint.local_addr().map_or(addr, |a| a), "HTTP/3 listening");
    Ok(endpoint)
}

fn tls_error(e: tls::TlsError) -> StartError {
    StartError::Setting {
        setting: e.setting,
        value: e.path,
        message: e.message,
    }
}

fn data_dir_error(config: &Config, e: impl std::fmt::Display) -> StartError {
    StartError::Setting {
        setting: "data_dir",
        value: config.data_dir.display().to_string(),
        message: e.to_string(),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
