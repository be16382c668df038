//! Hot reload: on SIGHUP, or when the config file changes (`config_watch`), the
//! settings are read again (file, environment, flags, as at start) and the ones
//! that can change in a running node are applied without dropping a connection:
//! origins and their client settings, the TTL policy, the admin and purge tokens
//! and their limits, the log level, and the TLS certificates (also read again when
//! their files change, every `tls_watch`). A file that does not parse or resolve is rejected with a log line and a
//! counted `rejected` reload; the running settings stay. Other changed settings are
//! named in a warning: they need a restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::auth::{AccessRules, Auth};
use crate::cli::{self, Invocation};
use crate::config::{Config, TtlPolicy};
use crate::live::Live;
use crate::metrics::{Metrics, ReloadResult};
use crate::proxy::Proxy;
use crate::tls::CertStore;

/// Whether a reload applies a change of setting `name` (the settings table says).
fn is_reloadable(name: &str) -> bool {
    crate::config::SETTINGS
        .iter()
        .any(|spec| spec.name == name && spec.reloadable)
}

/// Whether the proxy rebuilds its origins for this setting.
fn is_origin_setting(name: &str) -> bool {
    name.starts_with("origin")
        || name.starts_with("forward_")
        || name.starts_with("breaker_")
        || name == "uncacheable_ttl"
        || name == "rules"
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings changed and applied.
    pub applied: Vec<&'static str>,
    /// Settings changed that need a restart (their running values stay).
    pub need_restart: Vec<&'static str>,
}

/// The running node's reloadable parts and the settings they run with.
#[derive(Debug)]
pub struct Reloader {
    current: Mutex<Config>,
    /// The TTL policy the node started with: reloads stay within it.
    ceiling: TtlPolicy,
    auth: Auth,
    ttl: Arc<Live<TtlPolicy>>,
    proxy: Option<Arc<Proxy>>,
    /// The certificates the TLS listeners present, if they were configured.
    certs: Option<Arc<CertStore>>,
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Reloads into these parts; `config` is what they run with now.
    pub fn new(
        config: Config,
        auth: Auth,
        ttl: Arc<Live<TtlPolicy>>,
        proxy: Option<Arc<Proxy>>,
        certs: Option<Arc<CertStore>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ceiling = *ttl.get();
        Self {
            current: Mutex::new(config),
            ceiling,
            auth,
            ttl,
            proxy,
            certs,
            metrics,
        }
    }

    /// Reads the settings again, as at start, and applies them.
    pub fn reload_from_process_args(&self) -> Result<Reloaded, String> {
        match cli::parse(std::env::args_os()) {
            Ok(Invocation::Serve(config)) => self.apply(config),
            Ok(_) => Err("the command line is not `serve`".into()),
            Err(e) => Err(e.to_string()),
        }
        .inspect_err(|reason| {
            self.metrics.count_reload(ReloadResult::Rejected);
            tracing::error!(%reason, "config reload rejected; the running config stays");
        })
    }

    /// Applies what changed from the running settings to `new`.
    pub fn apply(&self, new: Config) -> Result<Reloaded, String> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let before: std::collections::HashMap<_, _> = current.effective().into_iter().collect();
        let mut changed: Vec<&'static str> = new
            .effective()
            .into_iter()
            .filter(|(name, value)| before.get(name) != Some(value))
            .map(|(name, _)| name)
            .collect();
        // Shown redacted, so compared here.
        if new.admin_token != current.admin_token {
            changed.push("admin_token");
        }
        if new.purge_token != current.purge_token {
            changed.push("purge_token");
        }
        let (mut applied, need_restart): (Vec<_>, Vec<_>) =
            changed.into_iter().partition(|name| is_reloadable(name));
        // Certificate files are read again on every reload, changed or not (a
        // renewal keeps the names): one that does not load rejects the reload.
        if let Some(certs) = &self.certs {
            certs
                .reload(Some(crate::tls::cert_sources(&new)))
                .map_err(|e| format!("certificates not reloaded: {e}"))?;
        }
        if applied.contains(&"log_level") {
            match crate::logging::set_level(&new.log_level) {
                Some(set) => set?,
                None => applied.retain(|n| *n != "log_level"),
            }
        }
        let access = AccessRules::of(&new);
        if access != AccessRules::of(&current) {
            self.auth.set_rules(access);
        }
        if new.max_ttl > self.ceiling.max_ttl || new.max_stale > self.ceiling.max_stale {
            tracing::warn!(
                max_ttl = ?self.ceiling.max_ttl,
                max_stale = ?self.ceiling.max_stale,
                "max_ttl and max_stale cannot grow past their start-up values (tombstones are kept that long): clamped"
            );
        }
        self.ttl.set(TtlPolicy::of(&new, &self.ceiling));
        if applied.iter().any(|n| is_origin_setting(n)) {
            match &self.proxy {
                Some(proxy) => proxy.reload(&new),
                None => {
                    applied.retain(|n| !is_origin_setting(n));
                    tracing::warn!("origins changed, but the node started without one: restart it to enable pull-through caching");
                }
            }
        }
        if !need_restart.is_empty() {
            tracing::warn!(settings = ?need_restart, "changed settings that need a restart; their running values stay");
        }
        tracing::info!(applied = ?applied, "config reloaded");
        self.metrics.count_reload(ReloadResult::Applied);
        *current = new;
        Ok(Reloaded {
            applied,
            need_restart,
        })
    }

    /// Reloads on SIGHUP and, with `config_watch` and a config file, when the file
    /// changes; until `stop`. The SIGHUP handler is in place when this returns (until
    /// then SIGHUP would end the process).
    pub fn spawn(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot handle SIGHUP; reload by file watch only");
                None
            }
        };
        let (file, period, tls_period) = {
            let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
            (c.config_file.clone(), c.config_watch, c.tls_watch)
        };
        let certs = self.certs.clone().filter(|_| !tls_period.is_zero());
        let mut tls_tick = tokio::time::interval(tls_period.max(Duration::from_millis(10)));
        tokio::spawn(async move {
            let watched = file.filter(|_| !period.is_zero());
            let stamp = crate::tls::file_stamp;
            let mut last = watched.as_deref().and_then(stamp);
            let mut tick = tokio::time::interval(if period.is_zero() {
                Duration::from_secs(3600)
            } else {
                period
            });
            tick.tick().await;
            tls_tick.tick().await;
            loop {
                tokio::select! {
                    Some(_) = async { hup.as_mut()?.recv().await } => {
                        tracing::info!("SIGHUP received: reloading the config");
                        let _ = self.reload_from_process_args();
                    }
                    _ = tick.tick(), if watched.is_some() => {
                        let now = watched.as_deref().and_then(stamp);
                        if now != last {
                            last = now;
                            tracing::info!("config file changed: reloading it");
                            let _ = self.reload_from_process_args();
                        }
                    }
                    _ = tls_tick.tick(), if certs.is_some() => {
                        match certs.as_deref().and_then(CertStore::reload_if_changed) {
                            Some(Ok(())) => {
                                tracing::info!("certificate files changed: the next handshakes get the new ones");
                                self.metrics.count_reload(ReloadResult::Applied);
                            }
                            Some(Err(e)) => {
                                tracing::error!(error = %e, "certificate files changed but do not load; the running certificates stay");
                                self.metrics.count_reload(ReloadResult::Rejected);
                            }
                            None => {}
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        })
    }
}
