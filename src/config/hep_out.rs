//! `[hep_out]`: the HEP relay to a HOMER server (or any HEPv3 receiver), owned by
//! [`crate::relay`]. Off unless the section is present with `enabled = true`.
//!
//! ```toml
//! [hep_out]
//! enabled = true
//! address = "homer.example.net:9060"   # host:port of heplify-server / HOMER
//! transport = "udp"                     # udp (default), tcp or tls
//! capture_id = 2002                     # HEP chunk 0x000c (heplify's default)
//! auth_key_file = "/etc/teledge/hep-out.key"   # chunk 0x000e; or auth_key = "..."
//! node_name = "site-a"                  # chunk 0x0013; default [node] id
//! queue_frames = 10000                  # frames waiting to be sent; beyond: dropped, counted
//! queue_bytes = 33554432                # and their bytes (32 MiB): a frame is up to 64 KiB
//! sip = true                            # type 1: every SIP message
//! rtcp = true                           # type 5: RTCP of calls, as heplify's JSON
//! stream_reports = true                 # type 34: per-stream quality when a call ends
//! # TLS: the server's CA, optionally its name and a client certificate (mutual TLS).
//! # tls_ca_file = "/etc/teledge/homer-ca.pem"
//! # tls_server_name = "homer.example.net"
//! # tls_cert_file = "/etc/teledge/node.pem"
//! # tls_key_file = "/etc/teledge/node.key"
//! ```
//!
//! Validated with every problem listed: the address (`host:port`, the host a name or an IP
//! address), the transport, TLS files readable and the client key matching its certificate,
//! TLS settings without `transport = "tls"`, the key (not empty, not both forms), the queue
//! bound, the reconnect waits, at least one kind of frame enabled. Without TLS to another
//! box, the SIP as captured (identities), the reports' Call-IDs and the key travel in clear:
//! a warning, worded with the others of its kind in [`super::in_clear`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{check_key_pair, readable_file, ConfigProblem};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHepOut {
    #[serde(default)]
    enabled: bool,
    address: Option<String>,
    #[serde(default = "default_transport")]
    transport: String,
    #[serde(default = "default_capture_id")]
    capture_id: u32,
    auth_key: Option<Secret<String>>,
    auth_key_file: Option<PathBuf>,
    node_name: Option<String>,
    #[serde(default = "default_queue_frames")]
    queue_frames: usize,
    #[serde(default = "default_queue_bytes")]
    queue_bytes: usize,
    #[serde(default = "yes")]
    sip: bool,
    #[serde(default = "yes")]
    rtcp: bool,
    #[serde(default = "yes")]
    stream_reports: bool,
    tls_ca_file: Option<PathBuf>,
    tls_server_name: Option<String>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    #[serde(default = "default_reconnect_min_ms")]
    reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_s")]
    reconnect_max_s: u64,
}

fn default_transport() -> String {
    "udp".into()
}
/// heplify's default capture id (`-hi 2002`).
pub const DEFAULT_CAPTURE_ID: u32 = 2002;
fn default_capture_id() -> u32 {
    DEFAULT_CAPTURE_ID
}
/// Default bound of the relay's queue, in frames.
pub const DEFAULT_QUEUE_FRAMES: usize = 10_000;
fn default_queue_frames() -> usize {
    DEFAULT_QUEUE_FRAMES
}
/// Default bound of the relay's queue, in bytes (frames as held). A frame is up to 64 KiB
/// (a SIP message's largest), so the frame bound alone let a sender of large SIP messages
/// hold 10,000 × 64 KiB = 640 MiB while HOMER was away; 32 MiB is 10,000 frames of a
/// typical 3 KiB, as the HEP input's queue.
pub const DEFAULT_QUEUE_BYTES: usize = 32 << 20;
fn default_queue_bytes() -> usize {
    DEFAULT_QUEUE_BYTES
}
fn yes() -> bool {
    true
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_s() -> u64 {
    30
}

/// How frames reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HepOutTransport {
    /// One frame per datagram (heplify-server's `HEPAddr`, on by default).
    Udp,
    /// Frames back to back on one connection (`HEPTCPAddr`).
    Tcp,
    /// The same over TLS (`HEPTLSAddr`), rustls with `ring`.
    Tls(HepOutTls),
}

impl HepOutTransport {
    pub fn as_str(&self) -> &'static str {
        match self {
            HepOutTransport::Udp => "udp",
            HepOutTransport::Tcp => "tcp",
            HepOutTransport::Tls(_) => "tls",
        }
    }
}

/// TLS toward the server: its CA, the name its certificate must carry, and a client
/// certificate for servers that ask for one (heplify-server ≥ 1.60.6 can).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepOutTls {
    pub ca_file: PathBuf,
    /// Default: the host of `address`.
    pub server_name: String,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The relay's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepOutConfig {
    /// `host:port`, resolved at every (re)connection.
    pub address: String,
    pub transport: HepOutTransport,
    /// Chunk 0x000c of every frame.
    pub capture_id: u32,
    /// Chunk 0x000e; never printed.
    pub auth_key: Option<Secret<String>>,
    /// Chunk 0x0013.
    pub node_name: Option<String>,
    pub queue_frames: usize,
    /// Bytes of the frames waiting (each as held: its buffer and its slot).
    pub queue_bytes: usize,
    /// Which frames are made: SIP (type 1), RTCP (type 5), stream reports (type 34).
    pub sip: bool,
    pub rtcp: bool,
    pub stream_reports: bool,
    /// Waits between reconnection attempts (TCP/TLS): exponential with jitter, min to max.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl HepOutConfig {
    /// A relay to `address` over UDP or TCP with the defaults (what `replay --hep-out` uses).
    pub fn to(address: &str, transport: HepOutTransport) -> HepOutConfig {
        HepOutConfig {
            address: address.to_owned(),
            transport,
            capture_id: DEFAULT_CAPTURE_ID,
            auth_key: None,
            node_name: None,
            queue_frames: DEFAULT_QUEUE_FRAMES,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            sip: true,
            rtcp: true,
            stream_reports: true,
            reconnect_min: Duration::from_millis(default_reconnect_min_ms()),
            reconnect_max: Duration::from_secs(default_reconnect_max_s()),
        }
    }
}

/// Validates `[hep_out]`; `None` when the relay is off (or the section is wrong: then
/// `problems` says why). The key file is read here, after the rest checked out.
pub(super) fn validate(
    raw: &RawHepOut,
    node_id: Option<&str>,
    problems: &mut Vec<ConfigProblem>,
    warnings: &mut Vec<ConfigProblem>,
) -> Option<HepOutConfig> {
    let before = problems.len();
    let mut problem = |field: &str, message: String| {
        problems.push(ConfigProblem {
            path: format!("hep_out.{field}"),
            message,
        })
    };
    let host = match raw.address.as_deref() {
        None if raw.enabled => {
            problem("address", "the relay needs the server's host:port".into());
            None
        }
        None => None,
        Some(a) => crate::server_url::parse_host_port(a)
            .map(|(host, _)| host)
            .map_err(|m| problem("address", m))
            .ok(),
    };
    let tls_given = raw.tls_ca_file.is_some()
        || raw.tls_server_name.is_some()
        || raw.tls_cert_file.is_some()
        || raw.tls_key_file.is_some();
    let transport = match raw.transport.as_str() {
        "udp" | "tcp" if tls_given => {
            problem(
                "transport",
                format!(
                    "tls_* settings are given but transport is {:?}: set transport = \"tls\"",
                    raw.transport
                ),
            );
            None
        }
        "udp" => Some(HepOutTransport::Udp),
        "tcp" => Some(HepOutTransport::Tcp),
        "tls" => {
            let ca = match &raw.tls_ca_file {
                None => {
                    problem("tls_ca_file", "TLS needs the server's CA file".into());
                    None
                }
                Some(f) => readable_file(f)
                    .map_err(|m| problem("tls_ca_file", m))
                    .ok()
                    .map(|()| f.clone()),
            };
            let client_cert = match (&raw.tls_cert_file, &raw.tls_key_file) {
                (None, None) => Some(None),
                (Some(cert), Some(key)) => {
                    let readable = [("tls_cert_file", cert), ("tls_key_file", key)]
                        .into_iter()
                        .map(|(field, f)| readable_file(f).map_err(|m| problem(field, m)))
                        .filter(Result::is_err)
                        .count()
                        == 0;
                    if readable {
                        match check_key_pair(cert, key) {
                            Ok(_) => Some(Some((cert.clone(), key.clone()))),
                            Err((field, m)) => {
                                problem(&format!("tls_{field}"), m);
                                None
                            }
                        }
                    } else {
                        None
                    }
                }
                _ => {
                    problem(
                        "tls_cert_file",
                        "a client certificate needs both tls_cert_file and tls_key_file".into(),
                    );
                    None
                }
            };
            let server_name = raw
                .tls_server_name
                .clone()
                .or_else(|| host.clone())
                .unwrap_or_default();
            if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
                problem(
                    "tls_server_name",
                    format!("{server_name:?}: not a DNS name or IP address"),
                );
            }
            match (ca, client_cert) {
                (Some(ca_file), Some(client_cert)) => Some(HepOutTransport::Tls(HepOutTls {
                    ca_file,
                    server_name,
                    client_cert,
                })),
                _ => None,
            }
        }
        other => {
            problem(
                "transport",
                format!("{other:?}: must be \"udp\", \"tcp\" or \"tls\""),
            );
            None
        }
    };
    let mut auth_key = match (&raw.auth_key, &raw.auth_key_file) {
        (Some(k), None) if k.expose().is_empty() => {
            problem("auth_key", "must not be empty".into());
            None
        }
        (Some(k), None) => Some(k.clone()),
        (None, Some(f)) => {
            if let Err(m) = readable_file(f) {
                problem("auth_key_file", m);
            }
            None
        }
        (None, None) => None,
        (Some(_), Some(_)) => {
            problem(
                "auth_key",
                "give auth_key or auth_key_file, not both".into(),
            );
            None
        }
    };
    if let Some(name) = &raw.node_name {
        if name.is_empty() || name.len() > 255 {
            problem("node_name", "must be 1 to 255 bytes".into());
        }
    }
    if !(16..=1_000_000).contains(&raw.queue_frames) {
        problem(
            "queue_frames",
            format!("{}: must be between 16 and 1000000", raw.queue_frames),
        );
    }
    // At least a few of the largest frames; at most what a box can spare (4 GiB, or the
    // address space on a 32-bit box), as `[correlation] queue_bytes`.
    let max_bytes = usize::try_from(4u64 << 30).unwrap_or(usize::MAX);
    if !(1 << 20..=max_bytes).contains(&raw.queue_bytes) {
        problem(
            "queue_bytes",
            format!(
                "{}: must be between 1048576 (1 MiB) and {max_bytes}",
                raw.queue_bytes
            ),
        );
    }
    if !(10..=60_000).contains(&raw.reconnect_min_ms) {
        problem(
            "reconnect_min_ms",
            format!("{}: must be between 10 and 60000", raw.reconnect_min_ms),
        );
    }
    if !(1..=3600).contains(&raw.reconnect_max_s)
        || raw.reconnect_max_s.saturating_mul(1000) < raw.reconnect_min_ms
    {
        problem(
            "reconnect_max_s",
            format!(
                "{}: must be between 1 and 3600 and not below reconnect_min_ms",
                raw.reconnect_max_s
            ),
        );
    }
    if !(raw.sip || raw.rtcp || raw.stream_reports) {
        problem(
            "sip",
            "sip, rtcp and stream_reports are all off: nothing to relay".into(),
        );
    }
    if problems.len() > before || !raw.enabled {
        return None;
    }
    if let Some(file) = &raw.auth_key_file {
        match super::keys::read_secret(file) {
            Ok(k) => auth_key = Some(Secret::new(k)),
            Err(m) => {
                problems.push(ConfigProblem {
                    path: "hep_out.auth_key_file".into(),
                    message: m,
                });
                return None;
            }
        }
    }
    let transport = transport?;
    let address = raw.address.clone()?;
    warnings.extend(super::in_clear::hep_out(
        &address,
        transport.as_str(),
        raw.sip,
        raw.rtcp || raw.stream_reports,
        auth_key.is_some(),
    ));
    Some(HepOutConfig {
        address,
        transport,
        capture_id: raw.capture_id,
        auth_key,
        node_name: raw.node_name.clone().or_else(|| node_id.map(str::to_owned)),
        queue_frames: raw.queue_frames,
        queue_bytes: raw.queue_bytes,
        sip: raw.sip,
        rtcp: raw.rtcp,
        stream_reports: raw.stream_reports,
        reconnect_min: Duration::from_millis(raw.reconnect_min_ms),
        reconnect_max: Duration::from_secs(raw.reconnect_max_s),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn run(text: &str) -> (Option<HepOutConfig>, Vec<ConfigProblem>, Vec<ConfigProblem>) {
        let raw: RawHepOut = toml::from_str(text).unwrap();
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        let config = validate(&raw, Some("node-1"), &mut problems, &mut warnings);
        (config, problems, warnings)
    }

    #[test]
    fn off_by_default_and_defaults_when_on() {
        let (config, problems, _) = run("address = \"127.0.0.1:9060\"");
        assert!(config.is_none() && problems.is_empty());
        let (config, problems, warnings) = run("enabled = true\naddress = \"127.0.0.1:9060\"");
        assert!(problems.is_empty() && warnings.is_empty(), "{problems:?}");
        let config = config.unwrap();
        assert_eq!(config.transport, HepOutTransport::Udp);
        assert_eq!(config.capture_id, 2002);
        assert_eq!(config.node_name.as_deref(), Some("node-1"));
        assert!(config.sip && config.rtcp && config.stream_reports);
    }

    #[test]
    fn sip_in_clear_to_another_box_is_a_warning() {
        // The defaults (udp, every kind of frame) to a HOMER elsewhere: the identities in
        // the SIP travel in clear. The service runs.
        let (config, problems, warnings) = run("enabled = true\naddress = \"homer:9060\"");
        assert!(problems.is_empty() && config.is_some(), "{problems:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].path, "hep_out");
        let message = &warnings[0].message;
        assert!(
            message.starts_with("the SIP messages as captured (callers' and callees' numbers")
                && message.contains("travel in clear (udp to homer:9060)")
                && !message.contains("auth key"),
            "{message}"
        );
        // Reports only: their Call-IDs.
        let (_, _, warnings) =
            run("enabled = true\naddress = \"10.1.1.1:9060\"\ntransport = \"tcp\"\nsip = false");
        assert!(
            warnings[0]
                .message
                .starts_with("quality reports (RTCP, stream reports) with their Call-IDs travel"),
            "{warnings:?}"
        );
        // To this box: nothing leaves it.
        let (_, _, warnings) =
            run("enabled = true\naddress = \"localhost:9060\"\nauth_key = \"k\"");
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn every_problem_is_listed() {
        let (config, problems, _) = run(
            "enabled = true\naddress = \"homer\"\ntransport = \"sctp\"\nqueue_frames = 1\nqueue_bytes = 1000\n\
             auth_key = \"\"\nsip = false\nrtcp = false\nstream_reports = false\n\
             reconnect_min_ms = 0\nnode_name = \"\"",
        );
        assert!(config.is_none());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for path in [
            "hep_out.address",
            "hep_out.transport",
            "hep_out.queue_frames",
            "hep_out.queue_bytes",
            "hep_out.auth_key",
            "hep_out.sip",
            "hep_out.reconnect_min_ms",
            "hep_out.node_name",
        ] {
            assert!(paths.contains(&path), "{path} not in {problems:?}");
        }
        let (_, problems, _) = run("enabled = true\naddress = \"h:9060\"\ntls_ca_file = \"/x\"");
        assert_eq!(problems[0].path, "hep_out.transport", "{problems:?}");
        let (_, problems, _) = run(
            "enabled = true\naddress = \"h:9060\"\ntransport = \"tls\"\ntls_cert_file = \"/x\"",
        );
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"hep_out.tls_ca_file"), "{problems:?}");
        assert!(paths.contains(&"hep_out.tls_cert_file"), "{problems:?}");
        assert!(run("enabled = true").1[0].path == "hep_out.address");
    }

    #[test]
    fn a_key_in_clear_is_a_warning_and_never_printed() {
        let (config, problems, warnings) = run(
            "enabled = true\naddress = \"[2001:db8::1]:9060\"\ntransport = \"tcp\"\n\
             auth_key = \"s3cret\"",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].path, "hep_out");
        assert!(
            warnings[0]
                .message
                .contains("and the HEP auth key travel in clear (tcp to [2001:db8::1]:9060)"),
            "{warnings:?}"
        );
        assert!(!format!("{warnings:?}").contains("s3cret"));
        let config = config.unwrap();
        assert_eq!(config.auth_key.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
