//! The forwarding sections of the configuration file (`[node]`, `[spool]`, `[privacy]`,
//! `[uplink]`), validated into a [`ForwardConfig`] with *every* problem listed by its TOML
//! path and line: all that `replay --forward` and `dead-letters` use. They read the daemon's
//! whole file (its other sections held to the schema, not validated further) or a file with
//! only these sections, such as:
//!
//! ```toml
//! [node]
//! id = "edge-01"                       # must match the CN of the client certificate
//!
//! [spool]
//! dir = "/var/lib/teledge/spool"
//! max_bytes = 1073741824               # sealed record bytes held
//! when_full = "drop_oldest"            # or "drop_newest"
//! flush_interval_ms = 50               # group commit
//! cache_bytes = 16777216
//! disk_reserve_bytes = 16777216       # free space kept; below it new records are dropped
//! key_file = "/etc/teledge/spool.key"  # or key_credential = "spool-key" ($CREDENTIALS_DIRECTORY)
//! key_id = 1
//! old_keys = [{ id = 0, file = "/etc/teledge/spool-0.key" }]
//!
//! [privacy]
//! mode = "keyed_hash"                  # or "last_digits" or "clear"
//! site_key_file = "/etc/teledge/site.key"
//! keep_digits = 4                      # for last_digits; at most 6
//! addresses = "keep"                   # or "hash" or "truncate" (IPv4 /24, IPv6 /48)
//!
//! [uplink]
//! url = "https://collector.example:8443/v1/batches"
//! ca_file = "/etc/teledge/ca.pem"      # the only trust root
//! cert_file = "/etc/teledge/node.pem"  # client certificate (mutual TLS)
//! key_file = "/etc/teledge/node.key"
//! min_tls = "1.3"                      # or "1.2"
//! batch_records = 500
//! batch_max_bytes = 4194304            # uncompressed JSON lines per batch (one record at least)
//! compression_level = 1                # gzip level of a batch: 0 (none) to 9
//! timeout_ms = 10000
//! dead_letter_max_bytes = 67108864
//! ```
//!
//! With `url = "nats://…"` or `"tls://…"` the records go to NATS JetStream instead of the
//! HTTPS collector, with the settings of `[uplink.nats]` ([`super::nats`]); the files, batch
//! bounds, timeout and dead letters above apply the same way.
//!
//! Beyond the shape, validation checks what would break the service later: every number
//! within a range that works (no zero timeouts or caches, no disk reserve larger than the
//! spool's file system), the node id usable as a directory name at the collector
//! (`[A-Za-z0-9._-]`, not `.` or `..`) and equal to the client certificate's common name,
//! every file readable and of the right kind (a certificate file holds certificates, a key
//! file a private key matching its certificate), and no key used for two purposes (site
//! key and spool key; the keys themselves are read after validation, in `config::keys`).
//! Findings that do not stop the service (a spool bound larger than its
//! file system) are warnings: printed by `check-config`, logged by `run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::keys::{self, KeyPaths, KeyPlan, KeySources, ModeChoice};
use super::{
    check_key_pair, parse_raw, placed, read_file, readable_file, ConfigErrors, ConfigProblem,
    RawFile, Strictness,
};

use crate::privacy::{AddressMode, Privacy, MAX_KEEP_DIGITS};
use crate::seal::{KeySource, Keyring};
use crate::spool::{SpoolConfig, WhenFull};
use crate::uplink::UplinkSettings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    id: String,
    /// `[node] heartbeat_interval_s`: validated by the daemon's configuration (agent.rs).
    pub(super) heartbeat_interval_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    dir: PathBuf,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_when_full")]
    when_full: String,
    #[serde(default = "default_flush_ms")]
    flush_interval_ms: u64,
    #[serde(default = "default_cache")]
    cache_bytes: u64,
    #[serde(default = "default_reserve")]
    disk_reserve_bytes: u64,
    key_file: Option<PathBuf>,
    key_credential: Option<String>,
    #[serde(default)]
    key_id: u32,
    #[serde(default)]
    old_keys: Vec<RawOldKey>,
}

impl RawSpool {
    /// The spool directory as configured (other state files go beside it).
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOldKey {
    id: u32,
    file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivacy {
    #[serde(default = "default_privacy_mode")]
    mode: String,
    site_key_file: Option<PathBuf>,
    site_key_credential: Option<String>,
    #[serde(default = "default_keep_digits")]
    keep_digits: u8,
    #[serde(default = "default_addresses")]
    addresses: String,
}

impl Default for RawPrivacy {
    fn default() -> Self {
        RawPrivacy {
            mode: default_privacy_mode(),
            site_key_file: None,
            site_key_credential: None,
            keep_digits: default_keep_digits(),
            addresses: default_addresses(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    url: String,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default = "default_min_tls")]
    min_tls: String,
    #[serde(default = "default_batch")]
    batch_records: usize,
    #[serde(default = "default_batch_bytes")]
    batch_max_bytes: usize,
    #[serde(default = "default_compression_level")]
    compression_level: u32,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_dead_letter")]
    dead_letter_max_bytes: u64,
    /// `[uplink.nats]`: the JetStream sink's settings (with a `nats://`/`tls://` url).
    nats: Option<super::nats::RawNats>,
}

fn default_max_bytes() -> u64 {
    1 << 30
}
fn default_when_full() -> String {
    "drop_oldest".into()
}
fn default_flush_ms() -> u64 {
    50
}
fn default_cache() -> u64 {
    16 << 20
}
fn default_reserve() -> u64 {
    16 << 20
}
fn default_privacy_mode() -> String {
    "keyed_hash".into()
}
fn default_keep_digits() -> u8 {
    4
}
fn default_addresses() -> String {
    "keep".into()
}
fn default_min_tls() -> String {
    "1.3".into()
}
fn default_batch() -> usize {
    500
}
fn default_batch_bytes() -> usize {
    4 << 20
}
fn default_compression_level() -> u32 {
    crate::uplink::DEFAULT_COMPRESSION_LEVEL
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_dead_letter() -> u64 {
    64 << 20
}

/// Everything `replay --forward` needs, validated.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub node_id: String,
    pub spool: SpoolConfig,
    pub keyring: Keyring,
    pub privacy: Privacy,
    pub uplink: UplinkSettings,
    /// Findings that do not stop the service; `check-config` prints them, `run` logs them.
    pub warnings: Vec<ConfigProblem>,
}

/// Reads a configuration file and validates what forwarding needs; every problem is
/// reported, not just the first, with its TOML path and line. The daemon's file is such a
/// file: its other sections are held to the schema (no unknown fields, the right types) but
/// not validated further, as forwarding does not use them.
pub fn load_forward(path: &Path) -> Result<ForwardConfig, ConfigErrors> {
    let text = read_file(path)?;
    match parse_forward(&text) {
        Ok(mut config) => {
            config.warnings = placed(&text, std::mem::take(&mut config.warnings));
            Ok(config)
        }
        Err(ConfigErrors(problems)) => Err(ConfigErrors(placed(&text, problems))),
    }
}

/// Validates the forwarding sections of configuration text (see [`load_forward`]).
pub fn parse_forward(text: &str) -> Result<ForwardConfig, ConfigErrors> {
    let raw: RawFile = parse_raw(text)?;
    let mut problems = Vec::new();
    let config = forward_config(
        raw.node,
        raw.spool,
        raw.privacy,
        raw.uplink,
        Strictness::Manual,
        &mut problems,
    );
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors(problems)),
    }
}

/// The forwarding sections, taken out of the file.
struct Sections {
    node: RawNode,
    spool: RawSpool,
    privacy: RawPrivacy,
    uplink: RawUplink,
}

/// Validates the forwarding sections and then, in one step after, reads their key material;
/// problems of both are pushed, `None` when they leave nothing to build.
pub(super) fn forward_config(
    node: RawNode,
    spool: RawSpool,
    privacy: RawPrivacy,
    uplink: RawUplink,
    strictness: Strictness,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ForwardConfig> {
    let valid = validate_forward(node, spool, privacy, uplink, strictness, problems)?;
    with_keys(valid, problems)
}

/// The validated sections with their key material read (problems pushed).
pub(super) fn with_keys(
    valid: ValidForward,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ForwardConfig> {
    let (keyring, privacy) = keys::load(&valid.keys, problems)?;
    Some(ForwardConfig {
        node_id: valid.node_id,
        spool: valid.spool,
        keyring,
        privacy,
        uplink: valid.uplink,
        warnings: valid.warnings,
    })
}

/// The forwarding sections validated, their keys named but not read.
#[derive(Debug)]
pub(super) struct ValidForward {
    pub(super) node_id: String,
    pub(super) spool: SpoolConfig,
    pub(super) keys: KeyPlan,
    pub(super) uplink: UplinkSettings,
    pub(super) warnings: Vec<ConfigProblem>,
}

/// Validates the forwarding sections without reading any key; problems are pushed, `None`
/// when they leave nothing to build.
pub(super) fn validate_forward(
    node: RawNode,
    spool: RawSpool,
    privacy: RawPrivacy,
    uplink: RawUplink,
    strictness: Strictness,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ValidForward> {
    let raw = Sections {
        node,
        spool,
        privacy,
        uplink,
    };
    let mut warnings = Vec::new();
    let mut problem = |path: &str, message: String| {
        problems.push(ConfigProblem {
            path: path.to_owned(),
            message,
        })
    };
    let node_id = raw.node.id.trim().to_owned();
    if let Err(message) = check_node_id(&node_id) {
        problem("node.id", message);
    }

    let when_full = match raw.spool.when_full.as_str() {
        "drop_oldest" => WhenFull::DropOldest,
        "drop_newest" => WhenFull::DropNewest,
        other => {
            problem(
                "spool.when_full",
                format!("{other:?}: expected \"drop_oldest\" or \"drop_newest\""),
            );
            WhenFull::DropOldest
        }
    };
    if raw.spool.max_bytes < 64 * 1024 {
        problem("spool.max_bytes", "must be at least 65536".into());
    }
    if raw.spool.flush_interval_ms == 0 || raw.spool.flush_interval_ms > 10_000 {
        problem(
            "spool.flush_interval_ms",
            "must be between 1 and 10000".into(),
        );
    }
    // sled with no page cache reads every page from disk for every operation; more than a
    // few GiB is memory the box does not have.
    if !(1 << 20..=4 << 30).contains(&raw.spool.cache_bytes) {
        problem(
            "spool.cache_bytes",
            format!(
                "{}: must be between 1048576 (1 MiB) and 4294967296 (4 GiB)",
                raw.spool.cache_bytes
            ),
        );
    }
    if raw.spool.dir.exists() && !raw.spool.dir.is_dir() {
        problem(
            "spool.dir",
            format!("{}: exists and is not a directory", raw.spool.dir.display()),
        );
    } else if let Some(existing) = raw.spool.dir.ancestors().find(|p| p.exists()) {
        // The spool (or the directory it will be made in) must be writable by the user the
        // check runs as: under systemd, ExecStartPre= runs as the service user.
        let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
        match rustix::fs::access(existing, access) {
            Ok(()) => {}
            // A host state, not the configuration's: ext4 remounts itself read-only after an
            // error until someone repairs it, and the daemon waits for a writable spool then
            // (as for a full disk) rather than exiting and ending up down for good.
            Err(rustix::io::Errno::ROFS) => warnings.push(ConfigProblem {
                path: "spool.dir".into(),
                message: format!(
                    "{}: on a read-only file system now; the daemon waits until it is writable",
                    existing.display()
                ),
            }),
            Err(e) => problem(
                "spool.dir",
                format!("{}: not writable by this user ({e})", existing.display()),
            ),
        }
    }
    // The reserve and the bound against the file system the spool will live on.
    if let Some(total) = filesystem_size(&raw.spool.dir) {
        if raw.spool.disk_reserve_bytes >= total {
            problem(
                "spool.disk_reserve_bytes",
                format!(
                    "{} bytes: not less than the whole file system of {} ({total} bytes); \
                     every record would be refused",
                    raw.spool.disk_reserve_bytes,
                    raw.spool.dir.display()
                ),
            );
        } else if raw.spool.max_bytes > total - raw.spool.disk_reserve_bytes {
            warnings.push(ConfigProblem {
                path: "spool.max_bytes".into(),
                message: format!(
                    "{} bytes is more than the file system of {} can hold beside the reserve \
                     ({} bytes): a long outage fills the disk before the bound drops anything",
                    raw.spool.max_bytes,
                    raw.spool.dir.display(),
                    total - raw.spool.disk_reserve_bytes
                ),
            });
        }
    }
    let key_source = match (&raw.spool.key_file, &raw.spool.key_credential) {
        (Some(f), None) => Some(KeySource::File(f.clone())),
        (None, Some(c)) => Some(KeySource::Credential(c.clone())),
        _ => {
            problem(
                "spool.key_file",
                "exactly one of key_file and key_credential is required".into(),
            );
            None
        }
    };
    let mut old_keys = Vec::new();
    for (i, old) in raw.spool.old_keys.iter().enumerate() {
        if old.id == raw.spool.key_id {
            problem(
                &format!("spool.old_keys[{i}].id"),
                "repeats the current key_id".into(),
            );
        }
        old_keys.push((old.id, old.file.clone()));
    }

    let site_key_source = match (&raw.privacy.site_key_file, &raw.privacy.site_key_credential) {
        (Some(f), None) => Some(KeySource::File(f.clone())),
        (None, Some(c)) => Some(KeySource::Credential(c.clone())),
        (None, None) => None,
        _ => {
            problem(
                "privacy.site_key_file",
                "give site_key_file or site_key_credential, not both".into(),
            );
            None
        }
    };
    let mode = match raw.privacy.mode.as_str() {
        "keyed_hash" => {
            if site_key_source.is_none() && !problems_mention(&raw.privacy) {
                problem(
                    "privacy.site_key_file",
                    "keyed_hash needs a site key".into(),
                );
            }
            Some(ModeChoice::KeyedHash)
        }
        "last_digits" => {
            if raw.privacy.keep_digits > MAX_KEEP_DIGITS {
                problem(
                    "privacy.keep_digits",
                    format!(
                        "{}: at most {MAX_KEEP_DIGITS}; more digits leave a number identifiable",
                        raw.privacy.keep_digits
                    ),
                );
            }
            Some(ModeChoice::KeepLastDigits(raw.privacy.keep_digits))
        }
        "clear" => Some(ModeChoice::Clear),
        other => {
            problem(
                "privacy.mode",
                format!("{other:?}: expected \"keyed_hash\", \"last_digits\" or \"clear\""),
            );
            None
        }
    };
    let addresses = match raw.privacy.addresses.as_str() {
        "keep" => AddressMode::Keep,
        "hash" => AddressMode::Hash,
        "truncate" => AddressMode::Truncate,
        other => {
            problem(
                "privacy.addresses",
                format!("{other:?}: expected \"keep\", \"hash\" or \"truncate\""),
            );
            AddressMode::Keep
        }
    };

    // A nats:// or tls:// url: the JetStream sink ([uplink.nats]) instead of the collector.
    let nats_url = super::nats::is_nats_url(&raw.uplink.url);
    let (host, port, url_path) = if nats_url {
        (String::new(), 0, String::new())
    } else {
        if raw.uplink.nats.is_some() {
            problem(
                "uplink.nats",
                "only with a nats:// or tls:// uplink url (the JetStream sink)".into(),
            );
        }
        match parse_https_url(&raw.uplink.url) {
            Ok(parts) => parts,
            Err(message) => {
                problem("uplink.url", message);
                (String::new(), 0, String::new())
            }
        }
    };
    let mut nats_problems = Vec::new();
    let nats = nats_url.then(|| {
        super::nats::validate(
            &raw.uplink.url,
            raw.uplink.nats.unwrap_or_default(),
            &node_id,
            &mut nats_problems,
        )
    });
    let tls12_allowed = match raw.uplink.min_tls.as_str() {
        "1.3" => false,
        "1.2" => true,
        other => {
            problem(
                "uplink.min_tls",
                format!("{other:?}: expected \"1.3\" or \"1.2\""),
            );
            false
        }
    };
    let mut files_ok = true;
    for (name, file) in [
        ("uplink.ca_file", &raw.uplink.ca_file),
        ("uplink.cert_file", &raw.uplink.cert_file),
        ("uplink.key_file", &raw.uplink.key_file),
    ] {
        if let Err(message) = readable_file(file) {
            problem(name, message);
            files_ok = false;
        }
    }
    if files_ok {
        if let Err(message) = crate::uplink::tls::load_roots(&raw.uplink.ca_file) {
            problem(
                "uplink.ca_file",
                format!("{message}: no usable CA certificate"),
            );
        }
        match check_key_pair(&raw.uplink.cert_file, &raw.uplink.key_file) {
            Err((field, message)) => problem(&format!("uplink.{field}"), message),
            // The collector maps the certificate to the node by its CN and refuses every
            // batch of another node: a mismatch here would dead-letter everything. The
            // daemon refuses to start on it; `replay --forward`, run by hand, warns.
            Ok(cn) if cn.as_deref() != Some(node_id.as_str()) => {
                let mismatch = ConfigProblem {
                    path: "node.id".into(),
                    message: format!(
                        "{node_id:?} differs from the common name {cn:?} of the client \
                         certificate {}: the collector would refuse every batch",
                        raw.uplink.cert_file.display()
                    ),
                };
                match strictness {
                    Strictness::Daemon => problem(&mismatch.path, mismatch.message),
                    Strictness::Manual => warnings.push(mismatch),
                }
            }
            Ok(_) => {}
        }
        // Not of the site CA, expired, or without clientAuth: every batch would be refused.
        if let Err(message) = crate::uplink::tls::client_certificate_refusal(
            &raw.uplink.cert_file,
            &raw.uplink.ca_file,
        ) {
            match strictness {
                Strictness::Daemon => problem("uplink.cert_file", message),
                Strictness::Manual => warnings.push(ConfigProblem {
                    path: "uplink.cert_file".into(),
                    message,
                }),
            }
        }
    }
    if raw.uplink.batch_records == 0 || raw.uplink.batch_records > 10_000 {
        problem("uplink.batch_records", "must be between 1 and 10000".into());
    }
    if !(4096..=64 << 20).contains(&raw.uplink.batch_max_bytes) {
        problem(
            "uplink.batch_max_bytes",
            "must be between 4096 and 67108864 (the collector takes 64 MiB at most)".into(),
        );
    }
    if raw.uplink.compression_level > 9 {
        problem(
            "uplink.compression_level",
            format!(
                "{}: must be between 0 (no compression) and 9",
                raw.uplink.compression_level
            ),
        );
    }
    if !(100..=600_000).contains(&raw.uplink.timeout_ms) {
        problem(
            "uplink.timeout_ms",
            format!(
                "{}: must be between 100 and 600000 (10 minutes)",
                raw.uplink.timeout_ms
            ),
        );
    }

    problems.extend(nats_problems);
    let (Some(spool_key), Some(mode)) = (key_source, mode) else {
        return None;
    };
    let mut spool = SpoolConfig::new(raw.spool.dir.clone(), node_id.clone());
    spool.max_bytes = raw.spool.max_bytes;
    spool.when_full = when_full;
    spool.cache_bytes = raw.spool.cache_bytes;
    spool.disk_reserve_bytes = raw.spool.disk_reserve_bytes;
    spool.flush_interval = Duration::from_millis(raw.spool.flush_interval_ms);
    let key_paths = KeyPaths {
        spool: if raw.spool.key_credential.is_some() {
            "spool.key_credential"
        } else {
            "spool.key_file"
        },
        site: if raw.privacy.site_key_credential.is_some() {
            "privacy.site_key_credential"
        } else {
            "privacy.site_key_file"
        },
    };
    Some(ValidForward {
        node_id,
        keys: KeyPlan {
            paths: key_paths,
            sources: KeySources {
                spool: (raw.spool.key_id, spool_key),
                old: old_keys,
                site: site_key_source,
            },
            mode,
            addresses,
        },
        uplink: UplinkSettings {
            host,
            port,
            path: url_path,
            ca_file: raw.uplink.ca_file,
            cert_file: raw.uplink.cert_file,
            key_file: raw.uplink.key_file,
            tls12_allowed,
            batch_records: raw.uplink.batch_records,
            batch_max_bytes: raw.uplink.batch_max_bytes,
            compression_level: raw.uplink.compression_level,
            timeout: Duration::from_millis(raw.uplink.timeout_ms.max(1)),
            dead_letter_dir: raw.spool.dir.join("dead-letter"),
            dead_letter_max_bytes: raw.uplink.dead_letter_max_bytes,
            nats,
        },
        spool,
        warnings,
    })
}

/// True when the site key settings were already reported (both given at once).
fn problems_mention(privacy: &RawPrivacy) -> bool {
    privacy.site_key_file.is_some() || privacy.site_key_credential.is_some()
}

/// A node id is a directory name at the collector and a certificate CN: letters, digits,
/// `.`, `_`, `-`, at most 64 characters, not `.` or `..`.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if !crate::uplink::valid_node_id(id) {
        return Err(format!(
            "{id:?}: must be 1 to 64 of [A-Za-z0-9._-], not \".\" or \"..\""
        ));
    }
    Ok(())
}

/// Size of the file system `dir` is (or will be) on: that of its nearest existing ancestor.
fn filesystem_size(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists())?;
    fs2::total_space(existing).ok()
}

/// `https://host[:port][/path]` → (host, port, path); the path is `/v1/batches` when the URL
/// has none. Only https: plaintext is never allowed ([`crate::server_url`] says what else is
/// refused).
fn parse_https_url(url: &str) -> Result<(String, u16, String), String> {
    let parsed = crate::server_url::parse_url(url, &[("https", 443)])?;
    let path = parsed
        .path_and_query
        .unwrap_or_else(|| "/v1/batches".to_owned());
    Ok((parsed.host, parsed.port, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let text = r#"
[node]
id = "a:b"
[spool]
dir = "/tmp/x"
when_full = "explode"
max_bytes = 10
[privacy]
mode = "keyed_hash"
[uplink]
url = "http://plain.example/v1/batches"
ca_file = "/nonexistent/ca.pem"
cert_file = "/nonexistent/c.pem"
key_file = "/nonexistent/k.pem"
min_tls = "1.0"
compression_level = 10
"#;
        let errors = parse_forward(text).unwrap_err().0;
        let paths: Vec<&str> = errors.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "node.id",
            "spool.when_full",
            "spool.max_bytes",
            "spool.key_file",
            "privacy.site_key_file",
            "uplink.url",
            "uplink.min_tls",
            "uplink.compression_level",
            "uplink.ca_file",
            "uplink.cert_file",
            "uplink.key_file",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_rejected_with_a_line() {
        let text = "[node]\nid = \"n\"\ncolour = \"red\"\n";
        let errors = parse_forward(text).unwrap_err().0;
        assert!(errors[0].message.contains("colour"), "{errors:?}");
        assert!(errors[0].path.starts_with("line"), "{errors:?}");
    }

    /// Validation names the keys and reads none; the loader after it reads them all and
    /// reports each unreadable one at its own TOML path.
    #[test]
    fn validation_reads_no_key_and_the_loader_reads_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
[node]
id = "edge-01"
[spool]
dir = "{}"
key_credential = "no-such-credential"
key_id = 1
old_keys = [{{ id = 0, file = "/nonexistent/old.key" }}]
[privacy]
site_key_file = "/nonexistent/site.key"
[uplink]
url = "https://c.example/v1/batches"
ca_file = "/nonexistent/ca.pem"
cert_file = "/nonexistent/c.pem"
key_file = "/nonexistent/k.pem"
"#,
            dir.path().join("spool").display()
        );
        let raw = parse_raw(&text).unwrap();
        let mut problems = Vec::new();
        let valid = validate_forward(
            raw.node,
            raw.spool,
            raw.privacy,
            raw.uplink,
            Strictness::Manual,
            &mut problems,
        )
        .unwrap();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.iter().all(|p| p.starts_with("uplink.")),
            "{problems:?}"
        );
        let mut key_problems = Vec::new();
        assert!(super::super::keys::load(&valid.keys, &mut key_problems).is_none());
        let paths: Vec<&str> = key_problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spool.key_credential",
                "spool.old_keys[0].file",
                "privacy.site_key_file"
            ],
            "{key_problems:?}"
        );
        // Through the loader, every problem of both steps, placed by line.
        let all = parse_forward(&text).unwrap_err().0;
        let placed = crate::config::placed(&text, all);
        let text_of = |path: &str| placed.iter().find(|p| p.path.starts_with(path)).cloned();
        assert_eq!(
            text_of("spool.key_credential").unwrap().path,
            "spool.key_credential (line 6)"
        );
        assert!(text_of("uplink.ca_file").is_some());
    }

    /// `[uplink.nats]` belongs to a NATS url; a NATS url takes it (or its defaults).
    #[test]
    fn the_jetstream_sink_is_chosen_by_the_url() {
        let text = |url: &str, nats: &str| {
            format!(
                "[node]\nid = \"edge-01\"\n[spool]\ndir = \"/tmp/x\"\nkey_file = \"/nonexistent/k\"\n\
                 [privacy]\nmode = \"clear\"\n[uplink]\nurl = \"{url}\"\nca_file = \"/nonexistent/ca\"\n\
                 cert_file = \"/nonexistent/c\"\nkey_file = \"/nonexistent/k\"\n{nats}"
            )
        };
        let paths = |text: String| -> Vec<String> {
            parse_forward(&text)
                .unwrap_err()
                .0
                .into_iter()
                .map(|p| p.path)
                .collect()
        };
        let https_with_nats = paths(text("https://c.example", "[uplink.nats]\nstream = \"S\"\n"));
        assert!(
            https_with_nats.contains(&"uplink.nats".to_owned()),
            "{https_with_nats:?}"
        );
        let nats = paths(text(
            "tls://127.0.0.1:4222",
            "[uplink.nats]\nsubject_prefix = \"a.>\"\n",
        ));
        assert!(
            nats.contains(&"uplink.nats.subject_prefix".to_owned()),
            "{nats:?}"
        );
        assert!(!nats.contains(&"uplink.url".to_owned()), "{nats:?}");
        let plain = paths(text("tls://127.0.0.1:4222", ""));
        assert!(
            !plain
                .iter()
                .any(|p| p.starts_with("uplink.nats") || p == "uplink.url"),
            "{plain:?}"
        );
    }

    #[test]
    fn https_urls() {
        assert_eq!(
            parse_https_url("https://c.example:8443/v1/batches").unwrap(),
            ("c.example".into(), 8443, "/v1/batches".into())
        );
        assert_eq!(parse_https_url("https://c.example").unwrap().1, 443);
        assert!(parse_https_url("http://c.example").is_err());
    }
}
