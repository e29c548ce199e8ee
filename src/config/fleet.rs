//! `[fleet]`: signed updates of packages and configuration (see [`crate::fleet`]). Absent:
//! the node does not take part in a fleet. The repository is the collector of `[uplink]`
//! (`teledge collect --fleet DIR`), reached over the same mutual TLS.
//!
//! ```toml
//! [fleet]
//! root_file = "/etc/teledge/fleet-root.json"   # the repository's first root, shipped
//! state_dir = "/var/lib/teledge/fleet"         # trusted metadata, downloads, hand-off
//! poll_interval_s = 3600                        # 60 .. 604800
//! poll_jitter_s = 600                           # 0 .. poll_interval_s
//! groups = ["site-a"]                           # for group-restricted targets
//! probation_s = 300                             # healthy this long, or rolled back (1 .. 86400)
//! start_timeout_s = 120                         # READY and /health 200 within (1 .. 3600)
//! max_target_bytes = 268435456
//! # arch = "amd64"                              # default: this build's
//! # install_command = ["dpkg", "--force-confdef", "--force-confold", "-i"]
//! # restart_command = ["systemctl", "restart", "teledge.service"]
//! # reload_command = ["systemctl", "reload", "teledge.service"]
//! # version_command = ["dpkg-query", "--showformat=${Version}", "--show", "teledge"]
//! ```
//!
//! The probation needs `/health`: `[observe]` must be enabled with `[fleet]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigProblem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    root_file: PathBuf,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_poll")]
    poll_interval_s: u64,
    poll_jitter_s: Option<u64>,
    #[serde(default)]
    groups: Vec<String>,
    arch: Option<String>,
    #[serde(default = "default_probation")]
    probation_s: u64,
    #[serde(default = "default_start_timeout")]
    start_timeout_s: u64,
    #[serde(default = "default_max_target")]
    max_target_bytes: u64,
    install_command: Option<Vec<String>>,
    restart_command: Option<Vec<String>>,
    reload_command: Option<Vec<String>>,
    version_command: Option<Vec<String>>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/teledge/fleet")
}
fn default_poll() -> u64 {
    3600
}
fn default_probation() -> u64 {
    300
}
fn default_start_timeout() -> u64 {
    120
}
fn default_max_target() -> u64 {
    256 << 20
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Validates `[fleet]`, pushing every problem.
pub(super) fn validate(
    raw: &RawFleet,
    observe_enabled: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<FleetSettings> {
    let before = problems.len();
    let mut problem = |field: &str, message: String| {
        problems.push(ConfigProblem {
            path: format!("fleet.{field}"),
            message,
        })
    };
    if let Err(e) = super::readable_file(&raw.root_file) {
        problem("root_file", e);
    }
    if !raw.state_dir.is_absolute() {
        problem("state_dir", "must be an absolute path".into());
    }
    if !(60..=604_800).contains(&raw.poll_interval_s) {
        problem("poll_interval_s", "must be between 60 and 604800".into());
    }
    let jitter = raw.poll_jitter_s.unwrap_or(raw.poll_interval_s / 6);
    if jitter > raw.poll_interval_s {
        problem("poll_jitter_s", "must not exceed poll_interval_s".into());
    }
    if !(1..=86_400).contains(&raw.probation_s) {
        problem("probation_s", "must be between 1 and 86400".into());
    }
    if !(1..=3600).contains(&raw.start_timeout_s) {
        problem("start_timeout_s", "must be between 1 and 3600".into());
    }
    if raw.max_target_bytes < 1024 {
        problem("max_target_bytes", "must be at least 1024".into());
    }
    for (i, g) in raw.groups.iter().enumerate() {
        if !crate::uplink::valid_node_id(g) {
            problem(
                &format!("groups[{i}]"),
                format!("{g:?}: 1-64 characters of [A-Za-z0-9._-]"),
            );
        }
    }
    for (field, command) in [
        ("install_command", &raw.install_command),
        ("restart_command", &raw.restart_command),
        ("reload_command", &raw.reload_command),
        ("version_command", &raw.version_command),
    ] {
        if command
            .as_ref()
            .is_some_and(|c| c.is_empty() || c[0].is_empty())
        {
            problem(field, "must name a program".into());
        }
    }
    if !observe_enabled {
        problem(
            "probation_s",
            "the probation reads /health: [observe] must be enabled".into(),
        );
    }
    (problems.len() == before).then(|| FleetSettings {
        root_file: raw.root_file.clone(),
        state_dir: raw.state_dir.clone(),
        poll_interval: Duration::from_secs(raw.poll_interval_s),
        poll_jitter: Duration::from_secs(jitter),
        groups: raw.groups.clone(),
        arch: raw.arch.clone().unwrap_or_else(|| native_arch().to_owned()),
        package: "teledge".into(),
        start_timeout: Duration::from_secs(raw.start_timeout_s),
        probation: Duration::from_secs(raw.probation_s),
        install_command: raw
            .install_command
            .clone()
            .unwrap_or_else(|| strings(&["dpkg", "--force-confdef", "--force-confold", "-i"])),
        restart_command: raw
            .restart_command
            .clone()
            .unwrap_or_else(|| strings(&["systemctl", "restart", "teledge.service"])),
        reload_command: raw
            .reload_command
            .clone()
            .unwrap_or_else(|| strings(&["systemctl", "reload", "teledge.service"])),
        version_command: raw.version_command.clone().unwrap_or_else(|| {
            strings(&["dpkg-query", "--showformat=${Version}", "--show", "teledge"])
        }),
        max_target_bytes: raw.max_target_bytes,
    })
}

/// `[fleet]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// The root metadata shipped with the node (trusted on first use of the store only).
    pub root_file: PathBuf,
    pub state_dir: PathBuf,
    pub poll_interval: Duration,
    pub poll_jitter: Duration,
    pub groups: Vec<String>,
    /// Debian architecture of this node.
    pub arch: String,
    /// The package name targets must carry.
    pub package: String,
    pub start_timeout: Duration,
    pub probation: Duration,
    /// Installs a package file (the file is appended).
    pub install_command: Vec<String>,
    /// Restarts the service; for a `Type=notify` unit, returns once READY or failed.
    pub restart_command: Vec<String>,
    /// Makes the service re-read its configuration (SIGHUP).
    pub reload_command: Vec<String>,
    /// Prints the installed package's version (`dpkg-query`); when it fails, this binary's
    /// own version is taken (a build installed by hand).
    pub version_command: Vec<String>,
    /// Largest target accepted, whatever the metadata says.
    pub max_target_bytes: u64,
}

impl FleetSettings {
    pub fn trusted_dir(&self) -> PathBuf {
        self.state_dir.join("trusted")
    }
    pub fn downloads_dir(&self) -> PathBuf {
        self.state_dir.join("downloads")
    }
    pub fn handoff_dir(&self) -> PathBuf {
        self.state_dir.join("handoff")
    }
    pub fn request_file(&self) -> PathBuf {
        self.handoff_dir().join("request.json")
    }
    pub fn outcomes_file(&self) -> PathBuf {
        self.handoff_dir().join("outcomes.jsonl")
    }
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// The Debian architecture this binary was built for.
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "x86" => "i386",
        other => other,
    }
}
