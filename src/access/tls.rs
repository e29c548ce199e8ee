//! HTTPS for the status page (and everything else on the `[observe]` listener) with optional
//! client certificates: `[status] tls_cert_file` / `tls_key_file` make the endpoint speak
//! TLS, and `client_ca_file` (the site CA) lets a supervisor's browser present a client
//! certificate. The certificate is optional at the TLS level (a supervisor may log in with
//! a token instead); one that is presented must chain to the site CA, be valid now and carry
//! the clientAuth usage (webpki's checks), or the handshake fails. Its subject CN reaches
//! the request handlers as a [`ClientCertCn`] request extension, which
//! [`super::Credentials::from_request`] reads.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::uplink::tls::{load_certs, load_private_key, load_roots, node_of_certificate, TlsError};

/// The subject CN of a client certificate the TLS layer verified, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertCn(pub Arc<str>);

/// The endpoint's server configuration: its certificate and key, and the site CA whose
/// client certificates it accepts (optional ones), if given. HTTP/1.1 only (ALPN).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider)
                    .allow_unauthenticated()
                    .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(load_certs(cert)?, load_private_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CN of the verified client certificate of a TLS connection, if it presented one.
pub fn client_cn(conn: &rustls::ServerConnection) -> Option<ClientCertCn> {
    let first = conn.peer_certificates()?.first()?;
    node_of_certificate(first).map(|cn| ClientCertCn(cn.into()))
}
