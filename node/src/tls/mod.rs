//! TLS: the server configurations for terminating TLS on the main listener (ALPN
//! `h2` and `http/1.1`) and HTTP/3, both presenting the certificates of one
//! [`CertStore`] (chosen by SNI, reloaded while the node runs: `certs`), and the
//! client configuration for HTTPS origins (the system's
//! roots plus an optional CA file). Both use the ring provider, passed explicitly, so
//! no process-wide provider has to be installed.

mod certs;

use std::path::Path;
use std::sync::Arc;

pub use certs::{file_stamp, CertSource, CertStore, Stamp};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{setting} ({path}): {message}")]
pub struct TlsError {
    /// The setting that named the file.
    pub setting: &'static str,
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError {
        setting,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// A server configuration presenting `certs`' certificates, for the given protocol
/// versions and ALPN protocols.
fn server_with(
    certs: Arc<CertStore>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError {
            setting: "tls_cert",
            path: String::new(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The main listener's configuration: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    server_with(certs, rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]).map(Arc::new)
}

/// The QUIC (HTTP/3) server configuration: TLS 1.3 only, ALPN `h3`; 0-RTT only when
/// `early_data` is set.
///
/// With 0-RTT on, resumption tickets are single-use (rustls' stateful session cache
/// hands each one out once), and the HTTP/3 front end serves only safe methods
/// before the handshake completes (see the HTTP/3 front end, `front::h3`).
pub fn h3_server_config(
    certs: Arc<CertStore>,
    early_data: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = server_with(certs, &[&rustls::version::TLS13], &[b"h3"])?;
    // QUIC allows only "none" or "unlimited" here: the transport's flow control bounds
    // early data instead (RFC 9001 §4.6.1).
    config.max_early_data_size = if early_data { u32::MAX } else { 0 };
    Ok(Arc::new(config))
}

/// The certificate files the TLS listeners present: `tls_cert`/`tls_key` (the
/// default), then `tls_certs` by server name.
pub fn cert_sources(config: &crate::config::Config) -> Vec<CertSource> {
    let main = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(CertSource {
            names: Vec::new(),
            cert: cert.clone(),
            key: key.clone(),
            index: None,
        }),
        _ => None,
    };
    main.into_iter()
        .chain(
            config
                .tls_certs
                .iter()
                .enumerate()
                .map(|(i, e)| CertSource {
                    names: e.names.clone(),
                    cert: e.cert.clone(),
                    key: e.key.clone(),
                    index: Some(i),
                }),
        )
        .collect()
}

/// File names of the development certificate in the data directory.
pub const DEV_CERT: &str = "dev-cert.pem";
/// File name of the development certificate's key.
pub const DEV_KEY: &str = "dev-key.pem";

/// The development certificate (for `localhost` and 127.0.0.1) kept in `dir`, made
/// the first time it is needed. Returns the certificate and key paths.
pub fn dev_certificate(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
    let (cert, key) = (dir.join(DEV_CERT), dir.join(DEV_KEY));
    if !cert.exists() || !key.exists() {
        let err = |message: String| TlsError {
            setting: "data_dir",
            path: dir.display().to_string(),
            message,
        };
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let rcgen::CertifiedKey {
            cert: c,
            signing_key,
        } = rcgen::generate_simple_self_signed(names).map_err(|e| err(e.to_string()))?;
        std::fs::write(&key, signing_key.serialize_pem()).map_err(|e| err(e.to_string()))?;
        std::fs::write(&cert, c.pem()).map_err(|e| err(e.to_string()))?;
    }
    Ok((cert, key))
}

/// SHA-256 fingerprint of the first certificate in a PEM file, as colon-separated hex.
pub fn fingerprint(cert: &Path) -> Result<String, TlsError> {
    let der = certificates("tls_cert", cert)?.remove(0);
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// The client configuration for HTTPS origins: the system's trusted roots, plus the
/// certificates of `extra_ca` when given.
pub fn origin_client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "could not load some system CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates for origins");
    if let Some(path) = extra_ca {
        for cert in certificates("origin_ca_file", path)? {
            roots.add(cert).map_err(|e| TlsError {
                setting: "origin_ca_file",
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
    }
    // No ALPN here: the HTTPS connector sets h2 and http/1.1 itself (and refuses a
    // configuration that already has them).
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            setting: "origin",
            path: String::new(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// ALPN of the peer protocol.
pub const PEER_ALPN: &[u8] = b"fanz-peer";

/// The files of a cluster's trust material (`cluster::pki` names them).
#[derive(Debug, Clone, Copy)]
pub struct PeerFiles<'a> {
    /// The cluster CA's certificate.
    pub ca: &'a Path,
    /// This node's certificate chain.
    pub cert: &'a Path,
    /// This node's private key.
    pub key: &'a Path,
}

/// The peer protocol's TLS: mutual TLS 1.3 where both sides present a certificate
/// signed by the cluster CA, and nothing else is trusted (not the system's roots).
pub fn peer_configs(
    files: PeerFiles<'_>,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>), TlsError> {
    let err = |path: &Path, message: String| TlsError {
        setting: "cluster_dir",
        path: path.display().to_string(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for ca in certificates("cluster_dir", files.ca)? {
        roots.add(ca).map_err(|e| err(files.ca, e.to_string()))?;
    }
    let roots = Arc::new(roots);
    let chain = certificates("cluster_dir", files.cert)?;
    let key_path = files.key;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| err(key_path, e.to_string()))?;

    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| err(files.ca, e.to_string()))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
        })
        .map_err(|e| err(key_path, e.to_string()))?;
    server.alpn_protocols = vec![PEER_ALPN.to_vec()];
    server.max_early_data_size = 0;

    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(key_path, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err(key_path, e.to_string()))?;
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    Ok((Arc::new(server), Arc::new(client)))
}
