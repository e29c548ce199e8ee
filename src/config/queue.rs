//! The queue-event sources of the daemon: `[[queue_log]]` (Asterisk's `queue_log` file) and
//! `[[callcenter]]` (FreeSWITCH `mod_callcenter` over the event socket).
//!
//! ```toml
//! [[queue_log]]
//! path = "/var/log/asterisk/queue_log"
//! # Position and open queue calls across restarts (default: beside the spool directory,
//! # queue_log-<group>.state).
//! state_file = "/var/lib/teledge/queue_log-pbx1.state"
//! group = "pbx1"             # names the PBX in every record (default "default")
//! start_at = "end"           # a file never read before: "end" (new lines) or "beginning"
//! max_line_bytes = 8192      # longer lines are skipped and counted
//! max_open_calls = 10000     # open queue calls held; beyond, the stalest is emitted as evicted
//! max_open_age_s = 14400     # an open call without events this long (log time) is emitted as expired
//! max_agents = 10000
//! poll_interval_ms = 250
//!
//! [[callcenter]]
//! address = "127.0.0.1:8021" # FreeSWITCH event socket (mod_event_socket)
//! password_file = "/etc/teledge/esl-password"   # or password = "…" (never printed)
//! group = "fs1"
//! max_open_calls = 10000
//! max_open_age_s = 14400
//! max_agents = 10000
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigProblem;
use crate::correlation::queue::QueueLimits;
use crate::secret::Secret;
use crate::sources::queue_log::StartAt;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueueLog {
    path: PathBuf,
    state_file: Option<PathBuf>,
    #[serde(default = "default_group")]
    group: String,
    #[serde(default = "default_start_at")]
    start_at: String,
    #[serde(default = "default_max_line")]
    max_line_bytes: usize,
    #[serde(default = "default_max_open")]
    max_open_calls: usize,
    #[serde(default = "default_max_age")]
    max_open_age_s: u64,
    #[serde(default = "default_max_open")]
    max_agents: usize,
    #[serde(default = "default_poll_ms")]
    poll_interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallcenter {
    address: String,
    password: Option<Secret<String>>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_group")]
    group: String,
    #[serde(default = "default_max_open")]
    max_open_calls: usize,
    #[serde(default = "default_max_age")]
    max_open_age_s: u64,
    #[serde(default = "default_max_open")]
    max_agents: usize,
}

fn default_group() -> String {
    "default".into()
}
fn default_start_at() -> String {
    "end".into()
}
fn default_max_line() -> usize {
    crate::decode::queue_log::MAX_LINE_LEN
}
fn default_max_open() -> usize {
    10_000
}
fn default_max_age() -> u64 {
    4 * 3600
}
fn default_poll_ms() -> u64 {
    250
}

/// One `[[queue_log]]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLogConfig {
    pub path: PathBuf,
    pub state_file: PathBuf,
    pub group: String,
    pub start_at: StartAt,
    pub max_line_len: usize,
    pub limits: QueueLimits,
    pub poll_interval: Duration,
}

/// One `[[callcenter]]`, validated.
#[derive(Debug, Clone)]
pub struct CallcenterConfig {
    pub address: SocketAddr,
    /// Never printed (see [`Secret`]); read from `password_file` after validation.
    pub password: Secret<String>,
    pub group: String,
    pub limits: QueueLimits,
}

/// A group names the PBX in records and in the state file's name.
fn check_group(group: &str, at: &str, problems: &mut Vec<ConfigProblem>) {
    let ok = !group.is_empty()
        && group.len() <= 64
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        problems.push(ConfigProblem {
            path: format!("{at}.group"),
            message: format!("{group:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
        });
    }
}

fn check_limits(
    at: &str,
    max_open: usize,
    max_age_s: u64,
    max_agents: usize,
    problems: &mut Vec<ConfigProblem>,
) -> QueueLimits {
    for (field, value, min, max) in [
        ("max_open_calls", max_open as u64, 1, 1_000_000),
        ("max_open_age_s", max_age_s, 60, 7 * 86_400),
        ("max_agents", max_agents as u64, 1, 1_000_000),
    ] {
        if value < min || value > max {
            problems.push(ConfigProblem {
                path: format!("{at}.{field}"),
                message: format!("{value}: must be between {min} and {max}"),
            });
        }
    }
    QueueLimits {
        max_open: max_open.max(1),
        max_open_age: Duration::from_secs(max_age_s),
        max_agents: max_agents.max(1),
    }
}

/// Validates every `[[queue_log]]`; `state_dir` is where state files go by default.
pub(super) fn validate_queue_logs(
    raw: &[RawQueueLog],
    state_dir: &Path,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<QueueLogConfig> {
    let mut out = Vec::new();
    let mut seen_paths = std::collections::BTreeSet::new();
    let mut seen_state = std::collections::BTreeSet::new();
    for (i, q) in raw.iter().enumerate() {
        let at = format!("queue_log[{i}]");
        check_group(&q.group, &at, problems);
        if !q.path.is_absolute() {
            problems.push(ConfigProblem {
                path: format!("{at}.path"),
                message: format!("{}: must be an absolute path", q.path.display()),
            });
        } else if q.path.is_dir() {
            problems.push(ConfigProblem {
                path: format!("{at}.path"),
                message: format!(
                    "{}: is a directory, not the queue_log file",
                    q.path.display()
                ),
            });
        }
        if !seen_paths.insert(q.path.clone()) {
            problems.push(ConfigProblem {
                path: format!("{at}.path"),
                message: format!("{} is followed twice", q.path.display()),
            });
        }
        let state_file = q
            .state_file
            .clone()
            .unwrap_or_else(|| state_dir.join(format!("queue_log-{}.state", q.group)));
        if !seen_state.insert(state_file.clone()) {
            problems.push(ConfigProblem {
                path: format!("{at}.state_file"),
                message: format!(
                    "{} is used twice (give each [[queue_log]] its own group or state_file)",
                    state_file.display()
                ),
            });
        }
        let start_at = match q.start_at.as_str() {
            "end" => StartAt::End,
            "beginning" => StartAt::Beginning,
            other => {
                problems.push(ConfigProblem {
                    path: format!("{at}.start_at"),
                    message: format!("{other:?}: expected \"end\" or \"beginning\""),
                });
                StartAt::End
            }
        };
        if !(256..=1 << 20).contains(&q.max_line_bytes) {
            problems.push(ConfigProblem {
                path: format!("{at}.max_line_bytes"),
                message: "must be between 256 and 1048576".into(),
            });
        }
        if !(10..=10_000).contains(&q.poll_interval_ms) {
            problems.push(ConfigProblem {
                path: format!("{at}.poll_interval_ms"),
                message: "must be between 10 and 10000".into(),
            });
        }
        let limits = check_limits(
            &at,
            q.max_open_calls,
            q.max_open_age_s,
            q.max_agents,
            problems,
        );
        out.push(QueueLogConfig {
            path: q.path.clone(),
            state_file,
            group: q.group.clone(),
            start_at,
            max_line_len: q.max_line_bytes,
            limits,
            poll_interval: Duration::from_millis(q.poll_interval_ms),
        });
    }
    out
}

/// Validates every `[[callcenter]]` and reads the password files.
pub(super) fn validate_callcenters(
    raw: &[RawCallcenter],
    problems: &mut Vec<ConfigProblem>,
) -> Vec<CallcenterConfig> {
    let mut out = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let at = format!("callcenter[{i}]");
        check_group(&c.group, &at, problems);
        let address = match c.address.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(ConfigProblem {
                    path: format!("{at}.address"),
                    message: format!("{:?}: expected ip:port, e.g. \"127.0.0.1:8021\"", c.address),
                });
                None
            }
        };
        let password = match (&c.password, &c.password_file) {
            (Some(p), None) => Some(p.expose().clone()),
            (None, Some(file)) => match super::keys::read_secret(file) {
                Ok(p) => Some(p),
                Err(message) => {
                    problems.push(ConfigProblem {
                        path: format!("{at}.password_file"),
                        message,
                    });
                    None
                }
            },
            _ => {
                problems.push(ConfigProblem {
                    path: format!("{at}.password"),
                    message: "give password or password_file (one of them)".into(),
                });
                None
            }
        };
        if password
            .as_deref()
            .is_some_and(|p| p.contains(['\n', '\r']))
        {
            problems.push(ConfigProblem {
                path: format!("{at}.password"),
                message: "must be one line".into(),
            });
        }
        let limits = check_limits(
            &at,
            c.max_open_calls,
            c.max_open_age_s,
            c.max_agents,
            problems,
        );
        if let (Some(address), Some(password)) = (address, password) {
            out.push(CallcenterConfig {
                address,
                password: Secret::new(password),
                group: c.group.clone(),
                limits,
            });
        }
    }
    out
}
