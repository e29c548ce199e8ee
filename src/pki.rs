//! The site's public-key infrastructure (`teledge pki`, `teledge enrol`): a site CA, the
//! collector's server certificate, the nodes' client certificates, and enrolment of a new box
//! with a one-time token so that no private key ever travels.
//!
//! Contract, as the rest of teledge checks it (src/uplink/tls.rs, src/collect.rs):
//! - Keys are ECDSA P-256 (PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`), which rustls with the
//!   `ring` provider signs with; certificates are PEM. Every private key file is written
//!   mode 0600 (created so, never widened), the CA directory 0700.
//! - The CA (`DIR/ca.pem`, `DIR/ca.key`) is a CA with path length 0 (it signs leaves only),
//!   key usages keyCertSign and cRLSign. `init-ca` never overwrites an existing CA.
//! - A collector certificate has the serverAuth extended key usage and the given DNS names
//!   and IP addresses as subject alternative names (the uplink verifies the host name).
//! - A node certificate has the clientAuth extended key usage and the node id as its subject
//!   common name, and nothing else: the collector files the node's records under that name,
//!   so the id must pass [`crate::uplink::valid_node_id`], checked here before signing.
//! - Enrolment: `enrol-token` writes a random 256-bit token to stdout and keeps only its
//!   SHA-256 in `DIR/tokens/<hash>.json` with the node id and the expiry. Redeeming renames
//!   the file into `DIR/tokens/used/` first (atomic: one redemption wins), then checks the
//!   expiry and that the CSR names exactly the token's node id; a failed check still spends
//!   the token. The CA chooses the certificate's names and usages; the CSR's are ignored
//!   beyond that check.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::Digest;

pub mod enrol;

/// The CA certificate's file name in the CA directory (and next to issued certificates).
pub const CA_CERT: &str = "ca.pem";
/// The CA private key's file name in the CA directory.
pub const CA_KEY: &str = "ca.key";
/// Longest lifetime of an enrolment token.
pub const MAX_TOKEN_TTL_S: u64 = 24 * 3600;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a CA")]
    Exists(PathBuf),
    #[error("certificate")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: not a usable CA ({reason})")]
    BadCa { path: PathBuf, reason: String },
    #[error(
        "node id {0:?} is not valid ([A-Za-z0-9._-], 1-64 characters, not . or ..): the collector would refuse it"
    )]
    BadNodeId(String),
    #[error("a collector certificate needs at least one --dns name or --ip address")]
    NoNames,
    #[error("{0:?} is not a valid DNS name")]
    BadDnsName(String),
    #[error("validity must be 1 to 36500 days, not {0}")]
    BadDays(u32),
    #[error("token lifetime must be 1 to {MAX_TOKEN_TTL_S} seconds, not {0}")]
    BadTtl(u64),
    #[error("{0}")]
    Internal(String),
    #[error("enrolment refused: {0}")]
    Refused(Refusal),
}

/// Why an enrolment request was refused (sent back to the box as the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown or already used token")]
    UnknownToken,
    #[error("token expired")]
    Expired,
    #[error("the CSR cannot be read or its signature is bad")]
    BadCsr,
    #[error("the CSR names {found:?}, the token is for {expected:?}")]
    WrongNode { expected: String, found: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `content` to `path` durably ([`crate::durable::replace`]), created with `mode`.
fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::durable::replace(path, content, crate::durable::Mode::Exactly(mode)).map_err(io(path))
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), PkiError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io(dir))
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if (1..=36500).contains(&days) {
        Ok(())
    } else {
        Err(PkiError::BadDays(days))
    }
}

/// Valid from the start of today (UTC) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let today = jiff::tz::TimeZone::UTC
        .to_datetime(jiff::Timestamp::now())
        .date();
    let end = today
        .checked_add(jiff::Span::new().days(i64::from(days)))
        .unwrap_or(jiff::civil::Date::MAX);
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(today);
    params.not_after = ymd(end);
}

fn random_serial(params: &mut CertificateParams) -> Result<(), PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| PkiError::Internal(format!("system random source: {e}")))?;
    bytes[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&bytes));
    Ok(())
}

/// Creates the site CA in `dir`: `ca.pem` and `ca.key` (0600); `dir` is created 0700.
pub fn init_ca(dir: &Path, name: &str, days: u32) -> Result<(), PkiError> {
    check_days(days)?;
    make_dir(dir, 0o700)?;
    for file in [CA_CERT, CA_KEY] {
        if dir.join(file).exists() {
            return Err(PkiError::Exists(dir.join(file)));
        }
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, days);
    random_serial(&mut params)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)
}

/// The CA of `dir`, ready to sign, and its certificate's PEM.
fn load_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, String), PkiError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let key = KeyPair::from_pem(&key).map_err(|e| PkiError::BadCa {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| PkiError::BadCa {
        path: cert_path,
        reason: e.to_string(),
    })?;
    Ok((issuer, cert))
}

/// Writes `<stem>.pem`, `<stem>.key` (0600) and a copy of the CA certificate to `out`.
pub(crate) fn write_leaf(
    out: &Path,
    stem: &str,
    cert: &str,
    key: &str,
    ca: &str,
) -> Result<(), PkiError> {
    make_dir(out, 0o755)?;
    write_file(&out.join(format!("{stem}.key")), key.as_bytes(), 0o600)?;
    write_file(&out.join(format!("{stem}.pem")), cert.as_bytes(), 0o644)?;
    write_file(&out.join(CA_CERT), ca.as_bytes(), 0o644)
}

/// Issues the collector's server certificate: `out/collector.pem`, `out/collector.key`,
/// `out/ca.pem`.
pub fn issue_collector(
    ca_dir: &Path,
    dns: &[String],
    ips: &[IpAddr],
    out: &Path,
    days: u32,
) -> Result<(), PkiError> {
    check_days(days)?;
    if dns.is_empty() && ips.is_empty() {
        return Err(PkiError::NoNames);
    }
    let (issuer, ca) = load_ca(ca_dir)?;
    let mut params = CertificateParams::default();
    for name in dns {
        let san = name
            .clone()
            .try_into()
            .map_err(|_| PkiError::BadDnsName(name.clone()))?;
        params.subject_alt_names.push(SanType::DnsName(san));
    }
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let cn = dns.first().cloned().unwrap_or_else(|| ips[0].to_string());
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    random_serial(&mut params)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_leaf(out, "collector", &cert.pem(), &key.serialize_pem(), &ca)
}

/// The certificate parameters of a node: CN = node id, clientAuth, nothing else.
fn node_params(node_id: &str, days: u32) -> Result<CertificateParams, PkiError> {
    check_days(days)?;
    if !crate::uplink::valid_node_id(node_id) {
        return Err(PkiError::BadNodeId(node_id.to_owned()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    random_serial(&mut params)?;
    Ok(params)
}

/// Issues a node's client certificate: `out/node.pem`, `out/node.key`, `out/ca.pem` (the
/// names of the example configuration's `[uplink]` section).
pub fn issue_node(ca_dir: &Path, node_id: &str, out: &Path, days: u32) -> Result<(), PkiError> {
    let params = node_params(node_id, days)?;
    let (issuer, ca) = load_ca(ca_dir)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_leaf(out, "node", &cert.pem(), &key.serialize_pem(), &ca)
}

/// A new key and a CSR naming `node_id` (made on the box by `teledge enrol`): (key PEM, CSR
/// PEM).
pub fn node_csr(node_id: &str) -> Result<(String, String), PkiError> {
    if !crate::uplink::valid_node_id(node_id) {
        return Err(PkiError::BadNodeId(node_id.to_owned()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, node_id);
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn token_dir(ca_dir: &Path) -> PathBuf {
    ca_dir.join("tokens")
}

fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TokenEntry {
    node_id: String,
    /// Seconds since the Unix epoch.
    expires_at: i64,
}

/// Makes a one-time enrolment token for `node_id`, valid `ttl_s` seconds; returns the token
/// (64 hex digits). Only its hash is stored, in `ca_dir/tokens/`.
pub fn enrol_token(ca_dir: &Path, node_id: &str, ttl_s: u64) -> Result<String, PkiError> {
    if !crate::uplink::valid_node_id(node_id) {
        return Err(PkiError::BadNodeId(node_id.to_owned()));
    }
    if !(1..=MAX_TOKEN_TTL_S).contains(&ttl_s) {
        return Err(PkiError::BadTtl(ttl_s));
    }
    // The CA must be usable before a token for it is handed out.
    load_ca(ca_dir)?;
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| PkiError::Internal(format!("system random source: {e}")))?;
    let token = hex::encode(bytes);
    let dir = token_dir(ca_dir);
    make_dir(&dir.join("used"), 0o700)?;
    let entry = TokenEntry {
        node_id: node_id.to_owned(),
        expires_at: jiff::Timestamp::now().as_second() + ttl_s as i64,
    };
    let json = serde_json::to_vec(&entry).map_err(|e| PkiError::Internal(e.to_string()))?;
    write_file(
        &dir.join(format!("{}.json", token_hash(&token))),
        &json,
        0o600,
    )?;
    Ok(token)
}

/// Redeems `token` for a certificate for the key of `csr_pem`: the token is spent whatever
/// the outcome; the certificate (PEM) when the token is known, unexpired and the CSR names
/// its node. `Err(PkiError::Refused)` says why not.
pub fn redeem(ca_dir: &Path, token: &str, csr_pem: &str, days: u32) -> Result<String, PkiError> {
    let dir = token_dir(ca_dir);
    let hash = token_hash(token);
    // Only hex reaches the file system, whatever the token held.
    let (live, used) = (
        dir.join(format!("{hash}.json")),
        dir.join("used").join(format!("{hash}.json")),
    );
    match std::fs::rename(&live, &used) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PkiError::Refused(Refusal::UnknownToken))
        }
        Err(e) => return Err(io(&live)(e)),
    }
    // Spent for good before any certificate is made: a power cut must not bring it back.
    for d in [&dir, &dir.join("used")] {
        crate::durable::sync_dir(d).map_err(io(d))?;
    }
    let text = std::fs::read(&used).map_err(io(&used))?;
    let entry: TokenEntry =
        serde_json::from_slice(&text).map_err(|_| PkiError::Refused(Refusal::UnknownToken))?;
    if jiff::Timestamp::now().as_second() >= entry.expires_at {
        return Err(PkiError::Refused(Refusal::Expired));
    }
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|_| PkiError::Refused(Refusal::BadCsr))?;
    let found = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .map(|value| match value {
            DnValue::Utf8String(s) => s.clone(),
            DnValue::PrintableString(s) => s.as_str().to_owned(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default();
    if found != entry.node_id || !csr.params.subject_alt_names.is_empty() {
        return Err(PkiError::Refused(Refusal::WrongNode {
            expected: entry.node_id,
            found,
        }));
    }
    let (issuer, _) = load_ca(ca_dir)?;
    // The CA's own parameters, only the public key is taken from the request.
    let signed = CertificateSigningRequestParams {
        params: node_params(&entry.node_id, days)?,
        public_key: csr.public_key,
    }
    .signed_by(&issuer)?;
    Ok(signed.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_ca_refuses_to_overwrite_and_keeps_the_key_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "site CA", 3650).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.join(CA_KEY)), 0o600);
        assert_eq!(mode(&ca), 0o700);
        let before = std::fs::read(ca.join(CA_KEY)).unwrap();
        assert!(matches!(
            init_ca(&ca, "other", 3650),
            Err(PkiError::Exists(_))
        ));
        assert_eq!(std::fs::read(ca.join(CA_KEY)).unwrap(), before);
    }

    #[test]
    fn issued_certificates_pass_the_collectors_checks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "site CA", 3650).unwrap();
        let node = dir.path().join("node");
        issue_node(&ca, "edge-07", &node, 30).unwrap();
        let cert_file = node.join("node.pem");
        crate::uplink::tls::client_certificate_refusal(&cert_file, &ca.join(CA_CERT)).unwrap();
        let certs = crate::uplink::tls::load_certs(&cert_file).unwrap();
        assert_eq!(
            crate::collect::node_of_client_certificate(&certs[0]).unwrap(),
            "edge-07"
        );
        // A collector certificate is not a node certificate.
        let col = dir.path().join("col");
        issue_collector(&ca, &["localhost".into()], &[], &col, 30).unwrap();
        assert!(crate::uplink::tls::client_certificate_refusal(
            &col.join("collector.pem"),
            &ca.join(CA_CERT)
        )
        .is_err());
        // Ids the collector would refuse are refused before signing.
        for bad in ["..", "a/b", "", &"x".repeat(65)] {
            assert!(matches!(
                issue_node(&ca, bad, &node, 30),
                Err(PkiError::BadNodeId(_))
            ));
        }
    }

    #[test]
    fn a_token_is_spent_once_and_binds_the_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, "site CA", 3650).unwrap();
        let token = enrol_token(&ca, "edge-09", 600).unwrap();
        assert_eq!(token.len(), 64);
        let (_, csr) = node_csr("edge-09").unwrap();
        let cert = redeem(&ca, &token, &csr, 30).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"));
        assert!(matches!(
            redeem(&ca, &token, &csr, 30),
            Err(PkiError::Refused(Refusal::UnknownToken))
        ));
        let other = enrol_token(&ca, "edge-09", 600).unwrap();
        let (_, wrong) = node_csr("edge-10").unwrap();
        assert!(matches!(
            redeem(&ca, &other, &wrong, 30),
            Err(PkiError::Refused(Refusal::WrongNode { .. }))
        ));
        // Redeemed at once from many threads: exactly one wins.
        let raced = enrol_token(&ca, "edge-09", 600).unwrap();
        let wins = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| redeem(&ca, &raced, &csr, 30).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(false))
                .filter(|won| *won)
                .count()
        });
        assert_eq!(wins, 1);
        assert!(matches!(
            redeem(&ca, "../../etc/passwd", &csr, 30),
            Err(PkiError::Refused(Refusal::UnknownToken))
        ));
    }
}
