//! The cluster's trust material: `fanz-node cluster-init` makes a CA, one
//! certificate per node signed by it, and the gossip keyring; `--cluster-dir` reads
//! them back.
//!
//! Layout made by `cluster-init DIR --nodes N`:
//! - `DIR/ca.pem`, `DIR/ca-key.pem`: the cluster CA (keep the key offline; it is only
//!   needed to add nodes);
//! - `DIR/cluster.keys`: the gossip keyring;
//! - `DIR/node-1/` ... `DIR/node-N/`: one directory per node, each a complete
//!   `--cluster-dir`: `ca.pem`, `node.pem`, `node-key.pem`, `cluster.keys`.
//!
//! Node certificates name [`PEER_SERVER_NAME`] (every node verifies peers against
//! that name and the cluster CA, so a node needs no list of its peers' names) and
//! are valid for both TLS server and client authentication (mutual TLS).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::keyring;

/// The DNS name in every node certificate, and the name peers verify.
pub const PEER_SERVER_NAME: &str = "fanz-peer";
/// CA certificate file in a cluster directory.
pub const CA_CERT: &str = "ca.pem";
/// This node's certificate.
pub const NODE_CERT: &str = "node.pem";
/// This node's key.
pub const NODE_KEY: &str = "node-key.pem";
/// The gossip keyring.
pub const KEYRING: &str = "cluster.keys";

/// Makes a cluster's CA, `nodes` node directories and a keyring under `dir`.
/// Refuses to overwrite an existing CA. Returns the node directories.
pub fn cluster_init(dir: &Path, nodes: usize) -> Result<Vec<PathBuf>, String> {
    if dir.join(CA_CERT).exists() {
        return Err(format!(
            "{} already holds a cluster CA; refusing to overwrite it",
            dir.display()
        ));
    }
    let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tls = |e: rcgen::Error| e.to_string();

    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "FANZ Edge cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let keyring_text = format!(
        "# FANZ Edge gossip keyring: the first key seals, every key opens.\n{}\n",
        keyring::generate_key_line()
    );
    write_private(&dir.join(CA_CERT), &ca_cert.pem(), false)?;
    write_private(&dir.join("ca-key.pem"), &issuer.key().serialize_pem(), true)?;
    write_private(&dir.join(KEYRING), &keyring_text, true)?;

    let mut made = Vec::new();
    for n in 1..=nodes {
        let node_dir = dir.join(format!("node-{n}"));
        std::fs::create_dir_all(&node_dir).map_err(|e| io(&node_dir, e))?;
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(vec![
            PEER_SERVER_NAME.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("node-{n}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).map_err(tls)?;
        write_private(&node_dir.join(CA_CERT), &ca_cert.pem(), false)?;
        write_private(&node_dir.join(NODE_CERT), &cert.pem(), false)?;
        write_private(&node_dir.join(NODE_KEY), &key.serialize_pem(), true)?;
        write_private(&node_dir.join(KEYRING), &keyring_text, true)?;
        made.push(node_dir);
    }
    Ok(made)
}

/// Writes `text` to `path`; secrets are readable by their owner only.
fn write_private(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut file = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The peer protocol's TLS configurations (server, client) from the trust material
/// in cluster directory `dir`.
pub fn peer_tls(
    dir: &std::path::Path,
) -> Result<
    (
        std::sync::Arc<rustls::ServerConfig>,
        std::sync::Arc<rustls::ClientConfig>,
    ),
    crate::tls::TlsError,
> {
    crate::tls::peer_configs(crate::tls::PeerFiles {
        ca: &dir.join(CA_CERT),
        cert: &dir.join(NODE_CERT),
        key: &dir.join(NODE_KEY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_complete_node_directories_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = cluster_init(tmp.path(), 3).unwrap();
        assert_eq!(dirs.len(), 3);
        for d in &dirs {
            for f in [CA_CERT, NODE_CERT, NODE_KEY, KEYRING] {
                assert!(d.join(f).is_file(), "{}/{f}", d.display());
            }
            keyring::Keyring::load(&d.join(KEYRING)).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dirs[0].join(NODE_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private");
        }
        let err = cluster_init(tmp.path(), 1).unwrap_err();
        assert!(err.contains("refusing to overwrite"), "{err}");
    }
}
