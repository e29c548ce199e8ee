//! Configuration: one TOML file, a serde mirror of it (unknown fields rejected) turned into
//! validated settings, *every* problem listed with its TOML path and line before anything
//! runs. A bad file exits with 78 (EX_CONFIG) so systemd does not restart-loop on it.
//!
//! - [`forward`]: the forwarding sections (`[node]`, `[spool]`, `[privacy]`, `[uplink]`),
//!   all that `replay --forward` needs.
//! - [`agent`]: the daemon's whole file, the forwarding sections plus its sources,
//!   correlation bounds, sensors, observability and shutdown.
//! - [`stats`]: `[stats]` and `[[service]]`, the service statistics (the daemon's and
//!   `teledge report`'s).
//! - [`queue`]: the queue-event sources (`[[queue_log]]`, `[[callcenter]]`).
//! - `keys`: the one step, after validation, that reads key material (sealing keys, the
//!   site key) and builds the keyring and the pseudonymisation settings from it.

use std::path::Path;

use serde::Deserialize;

pub mod access;
pub mod agent;
pub mod fleet;
pub mod forward;
pub mod hep_out;
pub mod in_clear;
mod keys;
pub mod listen;
pub mod nats;
/// The problems' vocabulary: a leaf outside this module ([`crate::config_problem`]), so
/// that a section's owner (sensor profiles) uses it without importing the configuration.
pub use crate::config_problem as problem;
pub mod queue;
pub mod reload;
pub mod stats;

pub use forward::{check_node_id, load_forward, parse_forward, ForwardConfig};
pub(crate) use problem::{read_file, toml_problem};
pub use problem::{ConfigErrors, ConfigProblem};

/// The file: one schema for every command, each using the sections it needs. Unknown
/// sections and fields are refused whichever command reads the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    node: forward::RawNode,
    #[serde(default)]
    capture: Vec<agent::RawCapture>,
    hep: Option<agent::RawHep>,
    #[serde(default)]
    correlation: agent::RawCorrelation,
    #[serde(default)]
    sensors: Vec<agent::RawSensor>,
    #[serde(default)]
    queue_log: Vec<queue::RawQueueLog>,
    #[serde(default)]
    callcenter: Vec<queue::RawCallcenter>,
    spool: forward::RawSpool,
    #[serde(default)]
    privacy: forward::RawPrivacy,
    uplink: forward::RawUplink,
    #[serde(default)]
    observe: agent::RawObserve,
    #[serde(default)]
    shutdown: agent::RawShutdown,
    #[serde(default)]
    stats: stats::RawStats,
    #[serde(default)]
    service: Vec<stats::RawService>,
    /// Signed updates ([`fleet`]); absent: no fleet.
    fleet: Option<fleet::RawFleet>,
    /// The HEP relay ([`hep_out`]); absent: off.
    hep_out: Option<hep_out::RawHepOut>,
    /// The status page ([`access`]).
    #[serde(default)]
    status: access::RawStatus,
    #[serde(default)]
    supervisor: Vec<access::RawSupervisor>,
    /// Live listen, WHEP ([`listen`]).
    #[serde(default)]
    listen: listen::RawListen,
}

/// The file's text in the shape of [`RawFile`], or the first TOML error placed by its line.
pub(super) fn parse_raw(text: &str) -> Result<RawFile, ConfigErrors> {
    toml::from_str(text).map_err(|e| toml_problem(text, &e))
}

/// Problems with the line of their TOML path in `text` added, where it can be found.
pub(super) fn placed(text: &str, problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
    // A file both sections read (the uplink's certificate, the HEP key) is checked by each:
    // the same problem is told once, in the order found.
    let mut seen = std::collections::HashSet::new();
    problems
        .into_iter()
        .filter(|p| seen.insert((p.path.clone(), p.message.clone())))
        .map(|p| ConfigProblem {
            path: match line_of(text, &p.path) {
                Some(line) => format!("{} (line {line})", p.path),
                None => p.path,
            },
            message: p.message,
        })
        .collect()
}

/// Whether findings that would make a service fail for good are errors (the daemon: systemd
/// would restart it forever) or warnings (a command run by hand, whose user reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strictness {
    Daemon,
    Manual,
}

/// A regular file this process can read.
pub(crate) fn readable_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads a certificate and its private key and checks that they belong together; returns
/// the certificate's common name. The error names the field at fault (`cert_file` or
/// `key_file`).
pub(crate) fn check_key_pair(
    cert: &Path,
    key: &Path,
) -> Result<Option<String>, (&'static str, String)> {
    use crate::uplink::tls::{load_certs, load_private_key, node_of_certificate};
    let certs = load_certs(cert).map_err(|e| ("cert_file", crate::report::chain(&e)))?;
    let key_der = load_private_key(key).map_err(|e| ("key_file", crate::report::chain(&e)))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| ("key_file", format!("{}: {e}", key.display())))?;
    let cn = certs.first().and_then(node_of_certificate);
    rustls::sign::CertifiedKey::new(certs, signing)
        .keys_match()
        .map_err(|e| {
            (
                "key_file",
                format!(
                    "{}: does not belong to the certificate {} ({e})",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    Ok(cn)
}

/// The line of a TOML path such as `sensors[1].port`, `uplink.url` or `uplink` in `text`,
/// from the spans the `toml` parser keeps: the line of the last key named (or, for an
/// index, of the array element), wherever the TOML puts it — a `[table]` or `[[array]]`
/// header, a dotted key (`uplink.url = …`), an inline table, after comments. `None` when
/// the text does not parse or the path is not in it.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut at = None;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, indices) = match segment.split_once('[') {
            Some((name, indices)) => (name, Some(indices)),
            None => (segment, None),
        };
        let (key, mut value) = table.iter().find(|(key, _)| key.get_ref() == name)?;
        at = Some(key.span().start);
        for index in indices.into_iter().flat_map(|indices| indices.split('[')) {
            let index: usize = index.strip_suffix(']')?.parse().ok()?;
            let DeValue::Array(items) = value.get_ref() else {
                return None;
            };
            value = items.get(index)?;
            at = Some(value.span().start);
        }
        if segments.peek().is_some() {
            let DeValue::Table(inner) = value.get_ref() else {
                return None;
            };
            table = inner;
        }
    }
    at.map(|offset| problem::line_at(text, offset))
}
