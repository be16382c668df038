//! Protocol drivers: a connection that sends one request at a time and reads the
//! whole answer, over HTTP/1.1 or HTTP/2 (prior knowledge over plain TCP, or chosen by
//! ALPN over TLS for an `https://` target), HTTP/3, or through the `fanz-client`
//! library (KV operations routed to each key's owner).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, Bytes};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;

/// Which protocol a driver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 over TCP, keep-alive.
    H1,
    /// HTTP/2 over TCP with prior knowledge.
    H2,
    /// HTTP/3 over QUIC.
    H3,
    /// The `fanz-client` library: the URL names a node's admin API (the seed) and
    /// the key (`http://127.0.0.1:9090/{key}`); GETs and PUTs become `get` and `set`.
    Client,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "h1" => Ok(Protocol::H1),
            "h2" => Ok(Protocol::H2),
            "h3" => Ok(Protocol::H3),
            "client" => Ok(Protocol::Client),
            _ => Err(format!(
                "unknown protocol {s:?}: expected h1, h2, h3 or client"
            )),
        }
    }
}

/// One connection of a driver.
pub enum Connection {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    /// HTTP/3 (the endpoint is kept alive with it).
    H3(
        h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        quinn::Endpoint,
    ),
    /// A `fanz-client` with one pooled connection per node.
    Client(fanz_client::Client),
}

/// Where to send requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// Address to connect to.
    pub addr: SocketAddr,
    /// `Host` / `:authority` and TLS server name.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// HTTP/1.1 and HTTP/2 over TLS (an `https://` URL), trusting
    /// [`DriverOptions::ca_cert`].
    pub tls: bool,
}

/// Settings some drivers need.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The certificate to trust (PEM): the node's (HTTP/3, and HTTPS).
    pub ca_cert: Option<PathBuf>,
    /// Upper bound of path-MTU discovery (UDP payload bytes, HTTP/3).
    pub max_udp_payload: u16,
    /// Admin token (the client driver learns the cluster through the admin API).
    pub token: Option<String>,
}

impl DriverOptions {
    /// Defaults (nothing HTTP/1.1 and HTTP/2 connections need).
    pub fn none() -> Self {
        Self {
            ca_cert: None,
            max_udp_payload: 1452,
            token: None,
        }
    }
}

impl Connection {
    /// Opens a connection.
    pub async fn open(
        protocol: Protocol,
        target: &Target,
        options: &DriverOptions,
    ) -> anyhow::Result<Self> {
        match protocol {
            Protocol::H1 | Protocol::H2 => {
                let stream = tokio::net::TcpStream::connect(target.addr)
                    .await
                    .context("connect")?;
                stream.set_nodelay(true)?;
                if target.tls {
                    let alpn: &[u8] = if protocol == Protocol::H1 {
                        b"http/1.1"
                    } else {
                        b"h2"
                    };
                    let tls = tls_client(options, "HTTPS", alpn)?;
                    let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
                    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                        .connect(name, stream)
                        .await
                        .context("TLS handshake")?;
                    Self::handshake(protocol, TokioIo::new(stream)).await
                } else {
                    Self::handshake(protocol, TokioIo::new(stream)).await
                }
            }
            Protocol::H3 => {
                let tls = tls_client(options, "HTTP/3", b"h3")?;
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
                let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
                let mut client = quinn::ClientConfig::new(Arc::new(crypto));
                let mut mtu = quinn::MtuDiscoveryConfig::default();
                mtu.upper_bound(options.max_udp_payload);
                let mut transport = quinn::TransportConfig::default();
                transport.mtu_discovery_config(Some(mtu));
                client.transport_config(Arc::new(transport));
                endpoint.set_default_client_config(client);
                let conn = endpoint.connect(target.addr, &target.host)?.await?;
                let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
                tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
                Ok(Connection::H3(send, endpoint))
            }
            Protocol::Client => {
                let mut builder = fanz_client::Client::builder()
                    .seeds([format!("http://{}", target.addr)])
                    .pool_size(1);
                if let Some(token) = &options.token {
                    builder = builder.token(token.clone());
                }
                Ok(Connection::Client(builder.build().await?))
            }
        }
    }

    /// HTTP/1.1 or HTTP/2 over `io`, plain or TLS.
    async fn handshake<T>(protocol: Protocol, io: TokioIo<T>) -> anyhow::Result<Self>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        if protocol == Protocol::H1 {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Connection::H1(send))
        } else {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Connection::H2(send))
        }
    }

    /// Sends a GET for the target's path and reads the whole body; returns its length.
    pub async fn get(&mut self, target: &Target) -> anyhow::Result<usize> {
        let request = Request::get(target.path.as_str()).body(Bytes::new())?;
        self.send(target, request).await
    }

    /// Sends `request` (its URI is a path; the target gives host and scheme) and
    /// reads the whole response body; returns its length. A non-2xx answer is an error.
    pub async fn send(
        &mut self,
        target: &Target,
        request: Request<Bytes>,
    ) -> anyhow::Result<usize> {
        let (mut parts, body) = request.into_parts();
        match self {
            Connection::H1(send) => {
                send.ready().await?;
                parts
                    .headers
                    .insert(http::header::HOST, target.host.parse()?);
                let resp = send
                    .send_request(Request::from_parts(parts, Full::new(body)))
                    .await?;
                read_hyper(resp).await
            }
            Connection::H2(send) => {
                send.ready().await?;
                let scheme = if target.tls { "https" } else { "http" };
                parts.uri = format!("{scheme}://{}{}", target.host, parts.uri).parse()?;
                let resp = send
                    .send_request(Request::from_parts(parts, Full::new(body)))
                    .await?;
                read_hyper(resp).await
            }
            Connection::H3(send, _) => {
                parts.uri = format!("https://{}{}", target.host, parts.uri).parse()?;
                let mut stream = send.send_request(Request::from_parts(parts, ())).await?;
                if !body.is_empty() {
                    stream.send_data(body).await?;
                }
                // The server may stop the request side once it has answered (RFC 9114 §4.1).
                let _ = stream.finish().await;
                let resp = stream.recv_response().await?;
                if !resp.status().is_success() {
                    bail!("status {}", resp.status());
                }
                let mut n = 0;
                while let Some(chunk) = stream.recv_data().await? {
                    n += chunk.remaining();
                }
                Ok(n)
            }
            Connection::Client(client) => {
                // The path is "/" and the key.
                let key = parts.uri.path().trim_start_matches('/');
                match parts.method {
                    http::Method::GET => match client.get(key).await? {
                        Some(value) => Ok(value.len()),
                        None => bail!("{key}: not found"),
                    },
                    http::Method::PUT => {
                        client
                            .set(key, body, &fanz_client::SetOptions::default())
                            .await?;
                        Ok(0)
                    }
                    other => bail!("the client driver sends GET and PUT, not {other}"),
                }
            }
        }
    }
}

async fn read_hyper(resp: http::Response<hyper::body::Incoming>) -> anyhow::Result<usize> {
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes().len())
}

/// A TLS 1.3 client (ring) trusting only `options.ca_cert`, offering `alpn`; `what`
/// names the protocol in the error when no certificate was given.
fn tls_client(
    options: &DriverOptions,
    what: &str,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let ca = options
        .ca_cert
        .as_deref()
        .ok_or_else(|| anyhow!("{what} needs --ca-cert (the node's certificate)"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(ca).context("reading --ca-cert")?)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}
