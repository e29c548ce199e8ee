//! The heartbeat record (`"type": "heartbeat"`, `"schema": "teledge.heartbeat/1"`): what a
//! node runs, so the central site has an inventory of its fleet and sees a box that went
//! quiet. Made by the daemon's heartbeat component ([`crate::daemon`]) once at start, every
//! `[node] heartbeat_interval_s` (300 s by default) and at once after a SIGHUP that read a
//! changed configuration file.
//!
//! | field | meaning |
//! |---|---|
//! | `schema` | `"teledge.heartbeat/1"` |
//! | `node` | the node id (`[node] id`) |
//! | `version` | the running binary's version (`teledge --version`) |
//! | `arch` | the Debian architecture the binary was built for (`amd64`, `arm64`, `armhf`), as the fleet's targets name it |
//! | `config_sha256` | SHA-256 (64 hex chars) of the configuration file's bytes as last read (at start or by a valid SIGHUP): equal digests mean equal files |
//! | `reason` | `start`, `interval` or `reload` |
//! | `started` | when this daemon started (RFC 3339, milliseconds) |
//! | `uptime_s` | seconds since then (monotonic clock, milliseconds precision) |
//! | `time` | when the record was made (RFC 3339, milliseconds) |
//!
//! Kept as is by pseudonymisation: versions, an architecture, a digest and times, no
//! personal data (the configuration's contents do not leave the box, only their digest).

use serde::Serialize;

/// Schema id of a heartbeat record.
pub const HEARTBEAT_SCHEMA: &str = "teledge.heartbeat/1";

/// Why a heartbeat was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatReason {
    /// The daemon started.
    Start,
    /// The interval passed.
    Interval,
    /// A SIGHUP read a valid configuration file whose digest differs.
    Reload,
}

/// A heartbeat record.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct HeartbeatRecord {
    pub schema: String,
    pub node: String,
    pub version: String,
    pub arch: String,
    pub config_sha256: String,
    pub reason: HeartbeatReason,
    pub started: String,
    pub uptime_s: f64,
    pub time: String,
}
