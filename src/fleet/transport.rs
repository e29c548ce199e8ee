//! The fleet repository over the uplink's mutual TLS: `GET /v1/fleet/<path>` on the
//! collector (`teledge collect --fleet DIR`), with the node's client certificate and the
//! site CA as the only root (the same [`ClientTls`] as the uplink). 404 is "not found" (the
//! root rotation loop ends on it); a body is read frame by frame and the read stops as soon
//! as it passes the limit, so an endless or oversized answer costs at most limit + one frame.

use std::io::Write;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tuf::{Transport, TransportError};
use crate::uplink::tls::{ClientTls, TlsError};
use crate::uplink::UplinkSettings;

/// The path prefix the collector serves the repository under.
pub const FLEET_PREFIX: &str = "/v1/fleet/";

/// HTTPS with the node's certificate.
#[derive(Clone)]
pub struct HttpsTransport {
    host: String,
    port: u16,
    timeout: std::time::Duration,
    tls: Arc<ClientTls>,
}

impl std::fmt::Debug for HttpsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsTransport")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

impl HttpsTransport {
    pub fn new(uplink: &UplinkSettings) -> Result<Self, TlsError> {
        Ok(HttpsTransport {
            host: uplink.host.clone(),
            port: uplink.port,
            timeout: uplink.timeout,
            tls: Arc::new(ClientTls::new(
                &uplink.ca_file,
                &uplink.cert_file,
                &uplink.key_file,
                uplink.tls12_allowed,
            )?),
        })
    }

    async fn get(
        &self,
        path: &str,
        limit: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64, TransportError> {
        let other = |m: String| TransportError::Other(m);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| other(format!("connect {}:{}: {e}", self.host, self.port)))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| other(e.to_string()))?;
        let tls = TlsConnector::from(self.tls.config())
            .connect(name, tcp)
            .await
            .map_err(|e| other(format!("TLS: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| other(e.to_string()))?;
        let conn = tokio::spawn(connection);
        let request = hyper::Request::get(format!("{FLEET_PREFIX}{path}"))
            .header("host", &self.host)
            .body(Empty::<Bytes>::new())
            .map_err(|e| other(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| other(e.to_string()))?;
        match response.status().as_u16() {
            200 => {}
            404 | 403 | 410 => return Err(TransportError::NotFound),
            s => return Err(other(format!("collector answered {s}"))),
        }
        let mut body = response.into_body();
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| other(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                read += data.len() as u64;
                if read > limit {
                    conn.abort();
                    return Err(TransportError::TooLarge { limit });
                }
                out.write_all(&data).map_err(|e| other(e.to_string()))?;
            }
        }
        Ok(read)
    }
}

impl Transport for HttpsTransport {
    async fn fetch(
        &self,
        path: &str,
        limit: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64, TransportError> {
        // The whole exchange within the uplink's timeout, scaled for large targets.
        let budget = self.timeout * 4 + std::time::Duration::from_secs(limit >> 20);
        match tokio::time::timeout(budget, self.get(path, limit, out)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Other(format!(
                "no complete answer within {budget:?}"
            ))),
        }
    }
}
