//! The statistics sections: `[stats]` (intervals, zone, attribution, grace) and
//! `[[service]]` (which calls are contacts of which service, and each service's
//! thresholds), validated into [`StatsSettings`] with every problem listed by its TOML
//! path. Read by `teledge run` (with the rest of the file) and by `teledge report` (only
//! these sections: [`parse_stats`]).
//!
//! ```toml
//! [stats]
//! enabled = true             # interval records from the daemon
//! interval_minutes = 15      # 15, 30 or 60
//! time_zone = "Europe/Berlin" # IANA name; intervals align in local time (default "UTC")
//! attribution = "event"      # "event" (answer/abandon/threshold expiry) or "arrival"
//! grace_s = 300              # wait after an interval's end for late calls (0..=3600)
//!
//! [[service]]
//! name = "sales"             # 1..=64 of [A-Za-z0-9._-], unique
//! numbers = ["4930123456", "0800*"] # called numbers (To user), clear; `*` ends a prefix
//! trunks = ["192.0.2.10", "198.51.100.0/24"] # trunk/PBX addresses or CIDR blocks
//! direction = "inbound"      # "inbound" (default with trunks), "outbound", "any"
//! short_abandon_s = 5        # abandons shorter than this are short abandons
//! sl_threshold_s = 20        # service-level threshold T
//! sl_target_percent = 80
//! monitorable = true         # supervisors may listen live (default false; see [[supervisor]])
//! ```

use serde::Deserialize;

use super::{ConfigErrors, ConfigProblem};
use crate::stats::service::{Direction, Net, NumberPattern, ServiceSettings, Services};
use crate::stats::{Attribution, IntervalClock, StatsSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_minutes")]
    interval_minutes: u32,
    #[serde(default = "default_zone")]
    time_zone: String,
    #[serde(default = "default_attribution")]
    attribution: String,
    #[serde(default = "default_grace")]
    grace_s: u64,
}

impl Default for RawStats {
    fn default() -> Self {
        RawStats {
            enabled: true,
            interval_minutes: default_minutes(),
            time_zone: default_zone(),
            attribution: default_attribution(),
            grace_s: default_grace(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: String,
    #[serde(default)]
    numbers: Vec<String>,
    #[serde(default)]
    trunks: Vec<String>,
    direction: Option<String>,
    #[serde(default = "default_short")]
    short_abandon_s: u32,
    #[serde(default = "default_threshold")]
    sl_threshold_s: u32,
    #[serde(default = "default_target")]
    sl_target_percent: u32,
    #[serde(default)]
    monitorable: bool,
}

fn yes() -> bool {
    true
}
fn default_minutes() -> u32 {
    15
}
fn default_zone() -> String {
    "UTC".into()
}
fn default_attribution() -> String {
    "event".into()
}
fn default_grace() -> u64 {
    300
}
fn default_short() -> u32 {
    5
}
fn default_threshold() -> u32 {
    20
}
fn default_target() -> u32 {
    80
}

/// Each `[[service]]`'s name and whether it is `monitorable` (for `config::access`).
pub(super) fn service_monitorable(services: &[RawService]) -> Vec<(&str, bool)> {
    services
        .iter()
        .map(|s| (s.name.as_str(), s.monitorable))
        .collect()
}

/// The statistics settings, and whether the daemon emits interval records.
#[derive(Debug, Clone)]
pub struct StatsConfig {
    pub enabled: bool,
    pub settings: StatsSettings,
}

/// Validates `[stats]` and `[[service]]`, pushing every problem.
pub(super) fn validate_stats(
    stats: &RawStats,
    services: &[RawService],
    problems: &mut Vec<ConfigProblem>,
) -> Option<StatsConfig> {
    let before = problems.len();
    let mut push = |path: String, message: String| problems.push(ConfigProblem { path, message });
    let clock = match IntervalClock::new(&stats.time_zone, stats.interval_minutes) {
        Ok(c) => Some(c),
        Err(e @ crate::stats::interval::ClockError::Minutes(_)) => {
            push("stats.interval_minutes".into(), e.to_string());
            None
        }
        Err(e) => {
            push("stats.time_zone".into(), e.to_string());
            None
        }
    };
    let attribution = match stats.attribution.as_str() {
        "event" => Attribution::Event,
        "arrival" => Attribution::Arrival,
        other => {
            push(
                "stats.attribution".into(),
                format!("{other:?}: expected \"event\" or \"arrival\""),
            );
            Attribution::Event
        }
    };
    if stats.grace_s > 3600 {
        push("stats.grace_s".into(), "must be between 0 and 3600".into());
    }
    let mut names = std::collections::BTreeSet::new();
    let mut valid = Vec::new();
    for (i, s) in services.iter().enumerate() {
        let at = |field: &str| format!("service[{i}].{field}");
        let name_ok = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok {
            push(
                at("name"),
                format!("{:?}: 1 to 64 of A-Z a-z 0-9 . _ -", s.name),
            );
        } else if !names.insert(s.name.clone()) {
            push(at("name"), format!("{:?} is used twice", s.name));
        }
        let mut trunks = Vec::new();
        for t in &s.trunks {
            match Net::parse(t) {
                Ok(n) => trunks.push(n),
                Err(message) => push(at("trunks"), message),
            }
        }
        let direction = match (s.direction.as_deref(), trunks.is_empty()) {
            (None, true) => Direction::Any,
            (None, false) | (Some("inbound"), false) => Direction::Inbound,
            (Some("outbound"), false) => Direction::Outbound,
            (Some("any"), _) => Direction::Any,
            (Some("inbound" | "outbound"), true) => {
                push(
                    at("direction"),
                    "a direction is told by trunks: list the trunk or PBX addresses".into(),
                );
                Direction::Any
            }
            (Some(other), _) => {
                push(
                    at("direction"),
                    format!("{other:?}: expected \"inbound\", \"outbound\" or \"any\""),
                );
                Direction::Any
            }
        };
        if s.numbers.iter().any(|n| n.is_empty() || n == "*") {
            push(
                at("numbers"),
                "an empty pattern matches every number: leave numbers out instead".into(),
            );
        }
        if !(1..=3600).contains(&s.sl_threshold_s) {
            push(at("sl_threshold_s"), "must be between 1 and 3600".into());
        }
        if s.short_abandon_s > s.sl_threshold_s {
            push(
                at("short_abandon_s"),
                format!(
                    "{} is above sl_threshold_s ({}): a short abandon must be within the threshold",
                    s.short_abandon_s, s.sl_threshold_s
                ),
            );
        }
        if !(1..=100).contains(&s.sl_target_percent) {
            push(at("sl_target_percent"), "must be between 1 and 100".into());
        }
        valid.push(ServiceSettings {
            name: s.name.clone(),
            numbers: s.numbers.iter().map(|n| NumberPattern::parse(n)).collect(),
            trunks,
            direction,
            short_abandon_s: s.short_abandon_s,
            sl_threshold_s: s.sl_threshold_s,
            sl_target_percent: s.sl_target_percent,
            monitorable: s.monitorable,
        });
    }
    let clock = clock?;
    (problems.len() == before).then(|| StatsConfig {
        enabled: stats.enabled,
        settings: StatsSettings {
            clock,
            attribution,
            grace: std::time::Duration::from_secs(stats.grace_s),
            services: Services::new(valid),
        },
    })
}

/// Only the statistics sections of a file (others are ignored): for `teledge report`.
#[derive(Debug, Deserialize)]
struct RawStatsFile {
    #[serde(default)]
    stats: RawStats,
    #[serde(default)]
    service: Vec<RawService>,
}

/// Reads `[stats]` and `[[service]]` from configuration text, ignoring other sections.
pub fn parse_stats(text: &str) -> Result<StatsConfig, ConfigErrors> {
    let raw: RawStatsFile = toml::from_str(text).map_err(|e| super::toml_problem(text, &e))?;
    let mut problems = Vec::new();
    match validate_stats(&raw.stats, &raw.service, &mut problems) {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigErrors(super::placed(text, problems))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_problem_of_the_statistics_sections_is_listed_with_its_path() {
        let text = r#"
[stats]
interval_minutes = 20
time_zone = "Mars/Olympus"
attribution = "whenever"
grace_s = 4000

[[service]]
name = "sales desk"
trunks = ["192.0.2.300"]
direction = "sideways"
short_abandon_s = 30
sl_threshold_s = 20
sl_target_percent = 0

[[service]]
name = "support"
direction = "inbound"
numbers = ["*"]
"#;
        let ConfigErrors(problems) = parse_stats(text).unwrap_err();
        let paths: Vec<&str> = problems
            .iter()
            .map(|p| p.path.split(" (line").next().unwrap())
            .collect();
        for expected in [
            "stats.interval_minutes",
            "stats.attribution",
            "stats.grace_s",
            "service[0].name",
            "service[0].trunks",
            "service[0].direction",
            "service[0].short_abandon_s",
            "service[0].sl_target_percent",
            "service[1].direction",
            "service[1].numbers",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing in {problems:#?}"
            );
        }
        let zone = "[stats]\ntime_zone = \"Mars/Olympus\"\n";
        let ConfigErrors(problems) = parse_stats(zone).unwrap_err();
        assert!(
            problems[0].path.starts_with("stats.time_zone"),
            "{problems:?}"
        );
    }

    #[test]
    fn without_sections_every_call_is_one_default_service_in_utc_quarter_hours() {
        let config = parse_stats("[node]\nid = \"x\"\n").unwrap();
        assert!(config.enabled);
        let s = &config.settings;
        assert_eq!(s.clock.minutes(), 15);
        assert_eq!(s.clock.zone_name(), "UTC");
        assert_eq!(s.attribution, Attribution::Event);
        assert_eq!(s.services.len(), 1);
        let default = s.services.get(0).unwrap();
        assert_eq!(
            (
                default.name.as_str(),
                default.short_abandon_s,
                default.sl_threshold_s,
                default.sl_target_percent
            ),
            ("default", 5, 20, 80)
        );
    }
}
