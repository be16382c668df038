//! The certificates the main listener and HTTP/3 present: [`CertStore`] is the
//! rustls resolver both share. It picks a certificate by the server name a client
//! asks for (SNI: an exact name, then a one-label wildcard, then the default), and
//! its certificates are replaced while the node runs: [`CertStore::reload`] reads
//! every file again (on SIGHUP, or when a file changed), and a file that does not
//! load leaves the running certificates in place. Connections already open keep
//! their sessions; the next handshake gets the new certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{certificates, provider, TlsError};
use crate::live::Live;

/// One certificate file pair and the names it serves (none: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    /// Server names (lowercase; `*.a.example` for one label).
    pub names: Vec<String>,
    /// PEM chain.
    pub cert: PathBuf,
    /// PEM key.
    pub key: PathBuf,
    /// Its place in `tls_certs`, for errors; `None`: `tls_cert` and `tls_key`.
    pub index: Option<usize>,
}

/// The certificates loaded from the sources.
#[derive(Debug)]
struct Loaded {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the name after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// A file's modification time and length: changed when either is.
pub type Stamp = Option<(SystemTime, u64)>;

/// `path`'s [`Stamp`] now (`None` if it cannot be read): how the watched config file
/// and certificate files are seen to change.
pub fn file_stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

/// The certificates the node presents, by server name; replaceable while it runs.
#[derive(Debug)]
pub struct CertStore {
    sources: Mutex<Vec<CertSource>>,
    loaded: Live<Loaded>,
    /// The files' stamps when they were last read.
    stamps: Mutex<Vec<Stamp>>,
}

impl CertStore {
    /// Loads `sources`; the first is the default for names none of them serves.
    pub fn open(sources: Vec<CertSource>) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(&sources);
        let loaded = load(&sources)?;
        Ok(Arc::new(Self {
            sources: Mutex::new(sources),
            loaded: Live::new(loaded),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Reads every file again (and takes `sources` as the new list, if given); on
    /// an error nothing changes.
    pub fn reload(&self, sources: Option<Vec<CertSource>>) -> Result<(), TlsError> {
        let mut current = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let sources = sources.unwrap_or_else(|| current.clone());
        let stamps_now = stamps(&sources);
        let loaded = load(&sources)?;
        self.loaded.set(loaded);
        *current = sources;
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps_now;
        Ok(())
    }

    /// [`Self::reload`] if a file changed since it was last read; `None` if none did.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let changed = stamps(&sources) != *self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        changed.then(|| self.reload(None))
    }

    /// The certificate for a client that asked for `server_name`.
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let loaded = self.loaded.get();
        let Some(name) = server_name.map(|n| n.to_ascii_lowercase()) else {
            return loaded.default.clone();
        };
        if let Some(key) = loaded.exact.get(&name) {
            return key.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| loaded.wildcard.get(parent))
            .unwrap_or(&loaded.default)
            .clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}

fn stamps(sources: &[CertSource]) -> Vec<Stamp> {
    sources
        .iter()
        .flat_map(|s| [file_stamp(&s.cert), file_stamp(&s.key)])
        .collect()
}

fn load(sources: &[CertSource]) -> Result<Loaded, TlsError> {
    let mut keys = Vec::with_capacity(sources.len());
    for source in sources {
        keys.push(Arc::new(certified_key(source)?));
    }
    let Some(default) = keys.first().cloned() else {
        return Err(TlsError {
            setting: "tls_cert",
            path: String::new(),
            message: "no certificate to serve".into(),
        });
    };
    let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
    for (source, key) in sources.iter().zip(&keys) {
        for name in &source.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), key.clone()),
                None => exact.insert(name.clone(), key.clone()),
            };
        }
    }
    Ok(Loaded {
        default,
        exact,
        wildcard,
    })
}

/// A chain and its key, checked to belong together.
fn certified_key(source: &CertSource) -> Result<CertifiedKey, TlsError> {
    let (cert_setting, key_setting) = match source.index {
        None => ("tls_cert", "tls_key"),
        Some(_) => ("tls_certs", "tls_certs"),
    };
    let entry = source.index.map(|i| format!("[{i}]")).unwrap_or_default();
    let chain = certificates(cert_setting, &source.cert).map_err(|mut e| {
        e.message = format!("{entry} {}", e.message).trim_start().to_string();
        e
    })?;
    let key_err = |message: String| TlsError {
        setting: key_setting,
        path: source.key.display().to_string(),
        message: format!("{entry} {message}").trim_start().to_string(),
    };
    let key = PrivateKeyDer::from_pem_file(&source.key).map_err(|e| key_err(e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| key_err(e.to_string()))
}
