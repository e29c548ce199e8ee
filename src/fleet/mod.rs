//! Signed fleet updates: packages and configuration from a TUF repository the collector
//! serves, installed by a privileged one-shot unit and rolled back when the new version is
//! not healthy.
//!
//! - [`canonical`], [`tuf`]: the TUF client (root, timestamp, snapshot, targets; why not a
//!   crate is in [`tuf`]'s doc). [`transport`]: the repository over the uplink's mutual TLS.
//! - [`select`]: which target is for this node (architecture, groups, rollout percentage,
//!   canaries; configuration per node or group).
//! - [`agent`]: the unprivileged side, inside `teledge run`: polls at `[fleet]
//!   poll_interval_s` with jitter, downloads into its state directory within the signed
//!   length, verifies, and writes a hand-off request. It never writes outside its state
//!   directory.
//! - [`apply`]: the privileged side, `teledge update-apply`, run by `teledge-update.service`
//!   when `teledge-update.path` sees the request: verifies the request again against the
//!   trusted metadata on disk (a request the daemon's user forged names no signed target),
//!   installs with dpkg (or puts the configuration in place), restarts or reloads, then
//!   holds a probation: the service must answer `/health` 200 within `start_timeout_s` and
//!   keep answering 200 for `probation_s`. Otherwise the previous package (or configuration)
//!   is put back and the failed version is never tried again.
//! - [`repo`]: the fleet owner's side, `teledge fleet`: keys (root offline, the others
//!   online), staging and signing releases, rotation, re-signing before expiry.
//!   [`status`]: a rollout's progress from the records the collector holds.
//! - Every step is a `teledge.update/1` record ([`crate::record::update`]): the agent's own
//!   steps go straight to the spool; the installer's (it cannot open the daemon's spool)
//!   are appended to `outcomes.jsonl` in the hand-off directory, which the agent reads and
//!   spools on its next poll (after a restart, the new daemon's first poll).
//!
//! # Files (under `[fleet] state_dir`, default `/var/lib/teledge/fleet`)
//!
//! | Path | Written by | What |
//! |---|---|---|
//! | `trusted/` | agent | the TUF trusted store |
//! | `downloads/` | agent | verified targets (a `.part` file until verified) |
//! | `state.json` | agent | failed versions, applied configuration version, outcomes read |
//! | `handoff/request.json` | agent | what to install (the path unit's trigger) |
//! | `handoff/request.applying.json` | installer | an update is under way (the agent waits) |
//! | `handoff/request.done.json` | installer | the request, once handled |
//! | `handoff/outcomes.jsonl` | installer | its steps, as update records |

pub mod agent;
pub mod apply;
pub mod canonical;
pub mod repo;
pub mod select;
pub mod status;
pub mod transport;
pub mod tuf;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::update::UpdateKind;

pub use crate::config::fleet::{native_arch, FleetSettings};

/// What the agent asks the installer to do (`handoff/request.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub kind: UpdateKind,
    pub node: String,
    /// The signed target to install, and where the agent put it.
    pub target: String,
    pub file: PathBuf,
    pub version: String,
    /// What runs now (package version, or configuration version), to go back to.
    pub previous: Option<String>,
    /// The signed target of the previous package, and its file (packages only).
    pub previous_target: Option<String>,
    pub previous_file: Option<PathBuf>,
    pub targets_version: u64,
}

/// Reads a small JSON file, `None` when it does not exist.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
