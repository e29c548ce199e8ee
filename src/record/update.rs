//! The update record (`"type": "update"`, `"schema": "teledge.update/1"`): one step of a
//! signed package or configuration update on a node, so the central site sees where each box
//! of its fleet stands. Made by the fleet client (`offered`, `downloaded`, `verified`,
//! `refused`, `handed_over`) and, for the steps the privileged installer takes (`installed`,
//! `healthy`, `rolled_back`, `refused`), by the daemon from the installer's outcome file.
//! Kept as is by pseudonymisation (versions, target names, reasons: no personal data).

use serde::Serialize;

/// Schema id of an update record.
pub const UPDATE_SCHEMA: &str = "teledge.update/1";

/// The step an update reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStep {
    /// The trusted targets name a newer version (or configuration) for this node.
    Offered,
    /// The target was downloaded within its signed length.
    Downloaded,
    /// Hashes, package name, version and architecture checked.
    Verified,
    /// Refused, with `reason` and `detail` (an attack, a bad target, a failed check).
    Refused,
    /// Handed over to the privileged installer.
    HandedOver,
    /// Installed by the privileged installer (package) or put in place (configuration).
    Installed,
    /// The new version passed its probation: READY and healthy for the whole time.
    Healthy,
    /// Probation failed: the previous version was put back; the failed one is never retried.
    RolledBack,
}

/// What is updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    Package,
    Config,
    /// The repository's metadata as a whole (a refusal before any target is looked at).
    Metadata,
}

/// An update record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct UpdateRecord {
    pub schema: String,
    pub node: String,
    pub kind: UpdateKind,
    pub step: UpdateStep,
    /// The TUF target path, when the step is about one.
    pub target: Option<String>,
    /// The version offered or installed (configuration: its integer version as text).
    pub version: Option<String>,
    /// The version running before (package) or applied before (configuration).
    pub previous: Option<String>,
    /// A short stable code (`refused`, `rolled_back`): `signature_threshold`, `expired`,
    /// `version_rollback`, `mix_and_match`, `hash_mismatch`, `too_large`, `wrong_arch`,
    /// `target_rollback`, `failed_before`, `not_signed`, `invalid_config`, `unhealthy`, ...
    pub reason: Option<String>,
    /// What exactly, for a person.
    pub detail: Option<String>,
    /// The trusted targets metadata version the step stood on.
    pub targets_version: Option<u64>,
    /// When (RFC 3339, milliseconds).
    pub time: String,
}

impl UpdateRecord {
    pub fn new(node: &str, kind: UpdateKind, step: UpdateStep) -> Self {
        UpdateRecord {
            schema: UPDATE_SCHEMA.to_owned(),
            node: node.to_owned(),
            kind,
            step,
            target: None,
            version: None,
            previous: None,
            reason: None,
            detail: None,
            targets_version: None,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }
}
