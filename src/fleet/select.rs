//! Which signed target is for this node: the `custom.teledge` object of a TUF target says
//! what it is and whom it is for. Pure.
//!
//! ```json
//! "packages/teledge_0.2.0_arm64.deb": {"length": …, "hashes": {…}, "custom": {"teledge": {
//!     "kind": "package", "version": "0.2.0", "arch": "arm64",
//!     "groups": ["site-a"], "rollout_percent": 10, "canary_groups": ["lab"]}}}
//! "config/site-a.toml": {…, "custom": {"teledge": {
//!     "kind": "config", "version": 7, "nodes": ["edge-01"], "groups": ["site-a"]}}}
//! ```
//!
//! - A package is for a node when its `arch` is the node's Debian architecture, the node is
//!   in one of `groups` (absent: every node), and the node's rollout bucket is below
//!   `rollout_percent` (absent: 100) or the node is in one of `canary_groups`. The bucket
//!   (0–99) is a hash of the node id alone, so a rollout that grows from 5 to 50 to 100 %
//!   keeps the nodes it had, and the same nodes go first every release (canary first).
//! - A configuration is for a node when `nodes` names it or `groups` shares a group with it
//!   (at least one of the two is required: a configuration for every node is refused as a
//!   mistake). Its `version` is an integer that only grows.
//! - Of several, the highest version wins.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::tuf::TargetFile;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub node: String,
    /// Debian architecture name (`amd64`, `arm64`, `armhf`).
    pub arch: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Custom {
    Package {
        version: String,
        arch: String,
        #[serde(default)]
        groups: Vec<String>,
        rollout_percent: Option<u8>,
        #[serde(default)]
        canary_groups: Vec<String>,
    },
    Config {
        version: u64,
        #[serde(default)]
        nodes: Vec<String>,
        #[serde(default)]
        groups: Vec<String>,
    },
}

fn custom(target: &TargetFile) -> Option<Custom> {
    let value = target.custom.as_ref()?.get("teledge")?;
    serde_json::from_value(value.clone()).ok()
}

/// A package target.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageTarget {
    pub name: String,
    pub target: TargetFile,
    pub version: String,
    pub arch: String,
}

/// A configuration target.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigTarget {
    pub name: String,
    pub target: TargetFile,
    pub version: u64,
}

/// The node's rollout bucket, 0–99.
pub fn rollout_bucket(node: &str) -> u8 {
    let digest = Sha256::digest(format!("teledge-rollout:{node}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

fn shares(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.contains(x))
}

/// Every package target of the node's architecture that is for this node.
pub fn packages_for(
    targets: &BTreeMap<String, TargetFile>,
    me: &NodeIdentity,
) -> Vec<PackageTarget> {
    let mut out = Vec::new();
    for (name, target) in targets {
        let Some(Custom::Package {
            version,
            arch,
            groups,
            rollout_percent,
            canary_groups,
        }) = custom(target)
        else {
            continue;
        };
        if arch != me.arch {
            continue;
        }
        if !groups.is_empty() && !shares(&groups, &me.groups) {
            continue;
        }
        let percent = rollout_percent.unwrap_or(100);
        if rollout_bucket(&me.node) >= percent && !shares(&canary_groups, &me.groups) {
            continue;
        }
        out.push(PackageTarget {
            name: name.clone(),
            target: target.clone(),
            version,
            arch,
        });
    }
    out.sort_by(|a, b| compare_versions(&a.version, &b.version));
    out
}

/// The package target of exactly `version` for the node's architecture, whoever it is for
/// (the package to go back to).
pub fn package_of_version(
    targets: &BTreeMap<String, TargetFile>,
    version: &str,
    arch: &str,
) -> Option<PackageTarget> {
    targets
        .iter()
        .find_map(|(name, target)| match custom(target) {
            Some(Custom::Package {
                version: v,
                arch: a,
                ..
            }) if v == version && a == arch => Some(PackageTarget {
                name: name.clone(),
                target: target.clone(),
                version: v,
                arch: a,
            }),
            _ => None,
        })
}

/// The newest configuration target for this node.
pub fn newest_config(
    targets: &BTreeMap<String, TargetFile>,
    me: &NodeIdentity,
) -> Option<ConfigTarget> {
    targets
        .iter()
        .filter_map(|(name, target)| match custom(target) {
            Some(Custom::Config {
                version,
                nodes,
                groups,
            }) if nodes.contains(&me.node) || shares(&groups, &me.groups) => Some(ConfigTarget {
                name: name.clone(),
                target: target.clone(),
                version,
            }),
            _ => None,
        })
        .max_by_key(|c| c.version)
}

/// Compares version strings the way Debian orders plain upstream versions: runs of digits
/// numerically, other runs by their text, `~` before anything.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for c in s.chars() {
            let digit = c.is_ascii_digit();
            match out.last_mut() {
                Some((d, run)) if *d == digit && c != '~' && !run.starts_with('~') => run.push(c),
                _ => out.push((digit, c.to_string())),
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let ord = match (pa.get(i), pb.get(i)) {
            (Some((_, x)), None) if x.starts_with('~') => Ordering::Less,
            (None, Some((_, y))) if y.starts_with('~') => Ordering::Greater,
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (Some((true, x)), Some((true, y))) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            (Some((_, x)), Some((_, y))) if x.starts_with('~') != y.starts_with('~') => {
                if x.starts_with('~') {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (Some((_, x)), Some((_, y))) => x.cmp(y),
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target(custom: serde_json::Value) -> TargetFile {
        TargetFile {
            length: 1,
            hashes: BTreeMap::new(),
            custom: Some(serde_json::json!({ "teledge": custom })),
        }
    }

    #[test]
    fn versions_order_numerically_and_tilde_first() {
        assert_eq!(compare_versions("0.10.0", "0.9.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.0", "1.0.1"), Ordering::Less);
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(compare_versions("0.2.0", "0.2.0"), Ordering::Equal);
    }

    #[test]
    fn rollout_grows_monotonically_and_canaries_go_first() {
        let nodes: Vec<String> = (0..400).map(|i| format!("edge-{i:03}")).collect();
        let me = |node: &str, groups: &[&str]| NodeIdentity {
            node: node.into(),
            arch: "amd64".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let mut previous = 0;
        for percent in [0u8, 10, 50, 100] {
            let mut targets = BTreeMap::new();
            targets.insert(
                "p".to_string(),
                target(
                    serde_json::json!({"kind": "package", "version": "2", "arch": "amd64",
                    "rollout_percent": percent, "canary_groups": ["lab"]}),
                ),
            );
            let eligible: Vec<&String> = nodes
                .iter()
                .filter(|n| !packages_for(&targets, &me(n, &[])).is_empty())
                .collect();
            // Roughly the percentage, and every node eligible before still is.
            assert!(eligible.len() >= previous, "{percent}%: {}", eligible.len());
            let share = eligible.len() * 100 / nodes.len();
            assert!(
                share.abs_diff(percent as usize) <= 8,
                "{percent}%: {share}%"
            );
            previous = eligible.len();
            // A canary is eligible at any percentage; another architecture never.
            assert_eq!(packages_for(&targets, &me("edge-999", &["lab"])).len(), 1);
            let mut arm = me("edge-999", &["lab"]);
            arm.arch = "arm64".into();
            assert!(packages_for(&targets, &arm).is_empty());
        }
    }

    #[test]
    fn a_configuration_is_for_the_nodes_or_groups_it_names_newest_first() {
        let mut targets = BTreeMap::new();
        targets.insert(
            "c/a".to_string(),
            target(serde_json::json!({"kind": "config", "version": 3, "groups": ["site-a"]})),
        );
        targets.insert(
            "c/b".to_string(),
            target(serde_json::json!({"kind": "config", "version": 5, "nodes": ["edge-01"]})),
        );
        targets.insert(
            "c/all".to_string(),
            target(serde_json::json!({"kind": "config", "version": 9})),
        );
        let me = |node: &str, group: &str| NodeIdentity {
            node: node.into(),
            arch: "amd64".into(),
            groups: vec![group.into()],
        };
        assert_eq!(
            newest_config(&targets, &me("edge-01", "site-a"))
                .unwrap()
                .name,
            "c/b"
        );
        assert_eq!(
            newest_config(&targets, &me("edge-02", "site-a"))
                .unwrap()
                .name,
            "c/a"
        );
        assert!(newest_config(&targets, &me("edge-02", "site-b")).is_none());
    }
}
