//! TLS for the uplink and the collector: rustls with the `ring` provider (pure Rust enough to
//! cross-compile for armv7), TLS 1.3 unless 1.2 is allowed, the site's own CA as the only
//! trust root, hostname verification always on, and mutual TLS.
//!
//! Certificates and keys are reloaded without a restart: the client certificate is resolved
//! on every handshake and re-read when its files change; the CA bundle is checked before every
//! connection. A broken new file keeps the last good one and counts an alert.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be used, and why (the reader's error, kept as the source).
    #[error("{path}")]
    File {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
    #[error("client verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(tls12_allowed: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls12_allowed {
        rustls::ALL_VERSIONS
    } else {
        &TLS13_ONLY
    }
}

fn file_error(
    path: &Path,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        source: source.into(),
    }
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The trust store: the site CA and nothing else.
pub fn load_roots(ca_file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|e| file_error(ca_file, e))?;
    }
    Ok(roots)
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_private_key(key)?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| file_error(key, e))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| file_error(key, e))?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reload alerts: a new certificate, key or CA file that could not be used.
#[derive(Debug, Default)]
pub struct TlsAlerts {
    pub reload_failures: AtomicU64,
    pub reloads: AtomicU64,
}

/// Resolves a certificate and key on every handshake, re-reading the files when they change:
/// the uplink's client certificate, and the HEP listener's server certificate.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
    alerts: Arc<TlsAlerts>,
}

impl ReloadingCert {
    pub fn new(cert: &Path, key: &Path, alerts: Arc<TlsAlerts>) -> Result<Self, TlsError> {
        let loaded = certified_key(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new((modified(cert), modified(key), loaded)),
            alerts,
        })
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (cert_time, key_time) = (modified(&self.cert), modified(&self.key));
        if (cert_time, key_time) != (state.0, state.1) {
            match certified_key(&self.cert, &self.key) {
                Ok(new) => {
                    state.2 = new;
                    self.alerts.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(cert = %self.cert.display(), "Client certificate reloaded.");
                }
                Err(e) => {
                    self.alerts.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %crate::report::Chain(&e), "New client certificate unusable; keeping the last good one.");
                }
            }
            // Either way, do not retry the same files on every handshake.
            state.0 = cert_time;
            state.1 = key_time;
        }
        Some(state.2.clone())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// Builds client configurations, rebuilding when the CA file changes.
#[derive(Debug)]
pub struct ClientTls {
    ca_file: PathBuf,
    tls12_allowed: bool,
    resolver: Arc<ReloadingCert>,
    state: Mutex<(Option<SystemTime>, Arc<ClientConfig>)>,
    pub alerts: Arc<TlsAlerts>,
}

impl ClientTls {
    pub fn new(
        ca_file: &Path,
        cert: &Path,
        key: &Path,
        tls12_allowed: bool,
    ) -> Result<Self, TlsError> {
        let alerts = Arc::new(TlsAlerts::default());
        let resolver = Arc::new(ReloadingCert::new(cert, key, alerts.clone())?);
        let config = build_client(ca_file, tls12_allowed, resolver.clone())?;
        Ok(ClientTls {
            ca_file: ca_file.to_owned(),
            tls12_allowed,
            resolver,
            state: Mutex::new((modified(ca_file), config)),
            alerts,
        })
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<ClientConfig> {
        // A poisoned lock only means another thread panicked mid-check; the state is whole.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = modified(&self.ca_file);
        if now != state.0 {
            state.0 = now;
            match build_client(&self.ca_file, self.tls12_allowed, self.resolver.clone()) {
                Ok(config) => {
                    state.1 = config;
                    self.alerts.reloads.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.alerts.reload_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %crate::report::Chain(&e), "New CA bundle unusable; keeping the last good one.");
                }
            }
        }
        state.1.clone()
    }
}

fn build_client(
    ca_file: &Path,
    tls12_allowed: bool,
    resolver: Arc<ReloadingCert>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca_file)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12_allowed))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    Ok(Arc::new(config))
}

/// The collector's server configuration: client certificates from the site CA required.
pub fn server_config(
    ca_file: &Path,
    cert: &Path,
    key: &Path,
    tls12_allowed: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(load_roots(ca_file)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls12_allowed))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_private_key(key)?)?;
    Ok(Arc::new(config))
}

/// A TLS server configuration without client certificates (the HEP listener: PBXs sending
/// HEP over TLS authenticate with the HEP auth key, not a certificate).
pub fn server_config_without_client_auth(
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    // A renewed certificate is picked up at the next handshake, no restart needed.
    let resolver = ReloadingCert::new(cert, key, Arc::new(TlsAlerts::default()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(true))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// When the first certificate of a PEM file expires, in seconds since the Unix epoch (for the
/// certificate-expiry metric; `None` when the file does not hold a readable certificate).
pub fn certificate_not_after(path: &Path) -> Option<i64> {
    let certs = load_certs(path).ok()?;
    let first = certs.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Whether a certificate carries the clientAuth extended key usage. One without any EKU
/// (any purpose) does not: a server certificate of the site CA must not act as a node. The
/// collector refuses such a client, and the agent's configuration check says so first.
pub fn has_client_auth(parsed: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    parsed
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.client_auth)
}

/// Why `teledge collect` would refuse the client certificate `cert` (the first of the
/// file), checked as it checks it: issued by the site CA of `ca_file`, valid now, with the
/// clientAuth extended key usage (a certificate without any EKU is refused too). `Ok` when
/// it would be accepted; the files themselves are checked by the caller.
pub fn client_certificate_refusal(cert: &Path, ca_file: &Path) -> Result<(), String> {
    let certs = load_certs(cert).map_err(|e| crate::report::chain(&e))?;
    let roots = load_roots(ca_file).map_err(|e| crate::report::chain(&e))?;
    let Some((end_entity, intermediates)) = certs.split_first() else {
        return Err(format!("{}: no certificate", cert.display()));
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    verifier
        .verify_client_cert(
            end_entity,
            intermediates,
            rustls::pki_types::UnixTime::now(),
        )
        .map_err(|e| {
            format!(
                "{}: the collector would refuse it ({e}) under the site CA {}",
                cert.display(),
                ca_file.display()
            )
        })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(end_entity.as_ref())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if !has_client_auth(&parsed) {
        return Err(format!(
            "{}: lacks the clientAuth extended key usage; the collector would refuse it",
            cert.display()
        ));
    }
    Ok(())
}

/// The node id a client certificate names: its subject common name.
pub fn node_of_certificate(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("node.pem"), dir.join("node.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn cn(resolver: &ReloadingCert) -> Option<String> {
        node_of_certificate(&resolver.current().unwrap().cert[0])
    }

    /// Moves the file times forward so a rewrite within the same second is seen as new.
    fn touch_later(path: &Path, secs: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(secs);
        file.set_modified(later).unwrap();
    }

    #[test]
    fn client_certificate_reloads_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "edge-01");
        let alerts = Arc::new(TlsAlerts::default());
        let resolver = ReloadingCert::new(&cert, &key, alerts.clone()).unwrap();
        assert_eq!(cn(&resolver).as_deref(), Some("edge-01"));

        // A broken new certificate: the last good one stays, and an alert is counted.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
        touch_later(&cert, 10);
        assert_eq!(cn(&resolver).as_deref(), Some("edge-01"));
        assert_eq!(alerts.reload_failures.load(Ordering::Relaxed), 1);

        // A good new certificate is picked up on the next handshake, without a restart.
        write_cert(dir.path(), "edge-01-renewed");
        touch_later(&cert, 20);
        touch_later(&key, 20);
        assert_eq!(cn(&resolver).as_deref(), Some("edge-01-renewed"));
        assert_eq!(alerts.reloads.load(Ordering::Relaxed), 1);
    }
}
