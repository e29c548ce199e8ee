//! Enrolment over the network: the collector's enrolment listener (`teledge collect
//! --enrol-ca DIR --enrol-listen ADDR`) and the box's client (`teledge enrol`).
//!
//! The box has no client certificate yet, so the listener is a separate port with
//! server-authenticated TLS only (the collector's own certificate), serving one thing:
//! `POST /v1/enrol` with `{"token": "<64 hex>", "csr": "<PEM>"}` (at most 16 KiB). The answer
//! is 200 with the node certificate (PEM), 403 with the reason (unknown or spent token,
//! expired, CSR for another node), 400 for a malformed request, 404/405 otherwise. The box
//! pins the site CA given to it out of band (`--ca-cert`), makes its key locally and never
//! sends it. Bounds: 16 connections at once and 4 from one source address (an IPv6 /64;
//! more are closed, counted), so one address that opens connections and sends nothing
//! cannot keep the boxes out; 10 s handshake, 10 s for the request, 30 s for the whole
//! connection, and a write that waits 10 s for a peer that reads nothing ends it. Every
//! outcome is counted and logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::PkiError;

/// The enrolment endpoint.
pub const ENROL_PATH: &str = "/v1/enrol";
const MAX_BODY: usize = 16 << 10;
const MAX_CONNECTIONS: usize = 16;
const MAX_CONNECTIONS_PER_ADDRESS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the enrolment listener did.
#[derive(Debug, Default, serde::Serialize)]
pub struct EnrolStats {
    pub enrolled: AtomicU64,
    pub refused: AtomicU64,
    pub bad_requests: AtomicU64,
    pub failed_handshakes: AtomicU64,
    pub refused_connections: AtomicU64,
    /// Closed at once: the source address held its share of the connections.
    pub refused_address_connections: AtomicU64,
}

#[derive(serde::Deserialize)]
struct EnrolRequest {
    token: String,
    csr: String,
}

#[derive(serde::Serialize)]
struct EnrolRequestOut<'a> {
    token: &'a str,
    csr: &'a str,
}

/// Why enrolment could not be served or done.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS")]
    Tls(#[from] crate::uplink::tls::TlsError),
    /// The enrolment URL, and what is wrong with it.
    #[error("the enrolment URL: {0}")]
    Url(String),
    #[error("cannot reach {url}")]
    Connect { url: String, source: std::io::Error },
    #[error("HTTP")]
    Http(#[from] hyper::Error),
    #[error("the collector refused the enrolment ({status}): {reason}")]
    Refused { status: u16, reason: String },
    #[error("PKI")]
    Pki(#[from] PkiError),
}

/// Serves `POST /v1/enrol` on `addr` with the server certificate `cert`/`key`, signing with
/// the CA of `ca_dir` for `days` days. Runs until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    ca_dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    days: u32,
) -> Result<(), EnrolError> {
    let tls = crate::uplink::tls::server_config_without_client_auth(&cert, &key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| EnrolError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| EnrolError::Listen { addr, source })?;
    tracing::info!(%local, ca = %ca_dir.display(), "Enrolment listening.");
    let stats = Arc::new(EnrolStats::default());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = crate::admission::PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS);
    let ca_dir = Arc::new(ca_dir);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %crate::report::Chain(&e), "Enrolment accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(address_slot) = per_address.take(peer.ip()) else {
            let n = stats
                .refused_address_connections
                .fetch_add(1, Ordering::Relaxed)
                + 1;
            tracing::warn!(%peer, refused_address_connections = n, "Too many enrolment connections from this address; refused.");
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let n = stats.refused_connections.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%peer, refused_connections = n, "Too many enrolment connections; refused.");
            continue;
        };
        let (acceptor, stats, ca_dir) = (acceptor.clone(), stats.clone(), ca_dir.clone());
        tokio::spawn(async move {
            let _address_slot = address_slot;
            let (tcp, _) = crate::admission::StallGuard::new(tcp, TIMEOUT);
            let tls = match tokio::time::timeout(TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                _ => {
                    let failed_handshakes =
                        stats.failed_handshakes.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(%peer, failed_handshakes, "Enrolment TLS handshake failed or timed out.");
                    return;
                }
            };
            let service = hyper::service::service_fn(|req| {
                let (stats, ca_dir) = (stats.clone(), ca_dir.clone());
                async move { Ok::<_, hyper::Error>(handle(req, peer, &ca_dir, days, &stats).await) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(TIMEOUT)
                .max_buf_size(64 << 10);
            let _ = tokio::time::timeout(
                TIMEOUT * 3,
                builder.serve_connection(TokioIo::new(tls), service),
            )
            .await;
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    ca_dir: &Path,
    days: u32,
    stats: &EnrolStats,
) -> Response<Full<Bytes>> {
    if req.uri().path() != ENROL_PATH {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let bad = |why: &str| {
        let bad_requests = stats.bad_requests.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%peer, why, bad_requests, "Bad enrolment request.");
        reply(StatusCode::BAD_REQUEST, format!("{why}\n"))
    };
    let body = match tokio::time::timeout(
        TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => return bad("body unreadable or larger than 16 KiB"),
        Err(_) => return bad("body too slow"),
    };
    let Ok(request) = serde_json::from_slice::<EnrolRequest>(&body) else {
        return bad("expected JSON {\"token\": ..., \"csr\": ...}");
    };
    match super::redeem(ca_dir, &request.token, &request.csr, days) {
        Ok(cert) => {
            let enrolled = stats.enrolled.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(%peer, enrolled, "Node enrolled.");
            reply(StatusCode::OK, cert)
        }
        Err(PkiError::Refused(reason)) => {
            let refused = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(%peer, %reason, refused, "Enrolment refused.");
            reply(StatusCode::FORBIDDEN, format!("{reason}\n"))
        }
        Err(e) => {
            tracing::error!(%peer, error = %crate::report::Chain(&e), "Enrolment failed.");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "enrolment failed\n")
        }
    }
}

/// Splits `https://host[:port][/…]` into host and port (8444 by default).
fn host_port(url: &str) -> Result<(String, u16), EnrolError> {
    let parsed = crate::server_url::parse_url(url, &[("https", 8444)]).map_err(EnrolError::Url)?;
    Ok((parsed.host, parsed.port))
}

/// Enrols this box as `node_id`: makes a key here, sends a CSR with `token` to the enrolment
/// listener at `url` (verified against `ca_cert` only), and writes `out/node.key` (0600),
/// `out/node.pem` and `out/ca.pem`. The key is written only once the certificate arrived.
pub async fn enrol(
    url: &str,
    token: &str,
    ca_cert: &Path,
    node_id: &str,
    out: &Path,
) -> Result<(), EnrolError> {
    let (host, port) = host_port(url)?;
    let (key, csr) = super::node_csr(node_id)?;
    let roots = crate::uplink::tls::load_roots(ca_cert)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(rustls::ALL_VERSIONS)
    .map_err(crate::uplink::tls::TlsError::from)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connect = |source| EnrolError::Connect {
        url: url.to_owned(),
        source,
    };
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| EnrolError::Url(format!("{url:?}: {e}")))?;
    let tcp = tokio::time::timeout(
        TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
    .map_err(connect)?;
    let tls = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
    .map_err(connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let body = serde_json::to_vec(&EnrolRequestOut { token, csr: &csr })
        .map_err(|e| PkiError::Internal(e.to_string()))?;
    let request = Request::post(ENROL_PATH)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PkiError::Internal(e.to_string()))?;
    let response = tokio::time::timeout(TIMEOUT * 3, sender.send_request(request))
        .await
        .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))??;
    let status = response.status();
    // The body within the same time as the head: a listener that sends a head and then
    // nothing must not hold the box's installation for ever.
    let body = tokio::time::timeout(
        TIMEOUT,
        Limited::new(response.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| connect(std::io::ErrorKind::TimedOut.into()))?
    .map(|b| b.to_bytes())
    .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if status != StatusCode::OK || !text.contains("BEGIN CERTIFICATE") {
        return Err(EnrolError::Refused {
            status: status.as_u16(),
            reason: text,
        });
    }
    let ca = std::fs::read_to_string(ca_cert).map_err(|source| PkiError::Io {
        path: ca_cert.to_owned(),
        source,
    })?;
    super::write_leaf(out, "node", &format!("{text}\n"), &key, &ca)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolment_urls() {
        assert_eq!(
            host_port("https://collector.example:9443/v1/enrol").unwrap(),
            ("collector.example".into(), 9443)
        );
        assert_eq!(
            host_port("https://localhost").unwrap(),
            ("localhost".into(), 8444)
        );
        assert_eq!(host_port("https://[::1]:9").unwrap(), ("::1".into(), 9));
        for bad in ["http://x:1", "https://", "https://x:port"] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }
}
