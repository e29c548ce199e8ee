//! A rollout's progress for the fleet owner (`teledge fleet status`): what each node runs and
//! where it stands with the newest release of its architecture, from the records the
//! collector holds (`teledge collect --out DIR`: `DIR/<node>/<day>.jsonl`) and the signed
//! targets of the repository.
//!
//! - The inventory is the newest `teledge.heartbeat/1` of each node: version, architecture,
//!   configuration digest, uptime, and when it was made (a node whose last heartbeat is
//!   older than `stale_after` is `stale`: offline, or its records are still in its spool).
//! - The progress is the newest `teledge.update/1` of kind `package` of each node for the
//!   release: `healthy` (done), `rolled_back`, `refused` (with the reason), in progress
//!   (`offered` … `installed`), or no record yet: `waiting` when the node is in the
//!   release's rollout (its bucket below the percentage, and no group restriction),
//!   `not_in_rollout` when its bucket is not, `unknown_groups` when the release names groups
//!   (the node's groups are in its own configuration: its `offered` record is what says it is
//!   in). A node whose heartbeat already shows the release's upstream version is `running`
//!   (installed by hand, or its records came before the collector's history).
//! - The newest metadata refusal of each node (kind `metadata`: an expired timestamp, a
//!   signature below threshold…) is shown too: it means the node sees no release at all.
//!
//! Records are read line by line and only the newest per node and step kind is kept, so a
//! year of records costs the time to read them, not memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use super::select::{compare_versions, rollout_bucket};
use super::tuf::TargetFile;
use crate::record::heartbeat::HeartbeatRecord;
use crate::record::update::{UpdateKind, UpdateRecord, UpdateStep};

/// What the collector's records say of one node.
#[derive(Debug, Clone, Default)]
pub struct NodeRecords {
    pub heartbeat: Option<HeartbeatRecord>,
    /// The newest package update record per version.
    pub packages: BTreeMap<String, UpdateRecord>,
    /// The newest metadata refusal and whether a package step came after it.
    pub metadata_refusal: Option<UpdateRecord>,
    /// The newest configuration update record.
    pub config: Option<UpdateRecord>,
}

/// Lines that could not be read (file:line: why), counted, not fatal.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub nodes: BTreeMap<String, NodeRecords>,
    pub unreadable: Vec<String>,
}

/// Reads `dir/<node>/*.jsonl` in file order (days, then lines: the order records were
/// stored).
pub fn read_collected(dir: &Path) -> std::io::Result<Collected> {
    let mut nodes: BTreeMap<String, NodeRecords> = BTreeMap::new();
    let unreadable = crate::record::stored::read_stored(
        dir,
        |line| line.contains("\"heartbeat\"") || line.contains("\"update\""),
        |record| {
            match record.get("type").and_then(Value::as_str) {
                Some("heartbeat") => {
                    let h = serde_json::from_value::<HeartbeatRecord>(record.clone())
                        .map_err(|e| e.to_string())?;
                    let node = h.node.clone();
                    nodes.entry(node).or_default().heartbeat = Some(h);
                }
                Some("update") => {
                    let u = serde_json::from_value::<UpdateRecord>(record.clone())
                        .map_err(|e| e.to_string())?;
                    note_update(nodes.entry(u.node.clone()).or_default(), u);
                }
                _ => {}
            }
            Ok(())
        },
    )?;
    Ok(Collected { nodes, unreadable })
}

/// Keeps the newest update record of each kind (per version for packages).
fn note_update(node: &mut NodeRecords, u: UpdateRecord) {
    match u.kind {
        UpdateKind::Package => {
            if let Some(v) = &u.version {
                // "Failed before" repeats a rollback: the rollback says more.
                let repeat = u.step == UpdateStep::Refused
                    && u.reason.as_deref() == Some("failed_before")
                    && node
                        .packages
                        .get(v)
                        .is_some_and(|old| old.step == UpdateStep::RolledBack);
                if !repeat {
                    node.packages.insert(v.clone(), u);
                }
            }
        }
        UpdateKind::Config => node.config = Some(u),
        UpdateKind::Metadata => node.metadata_refusal = Some(u),
    }
}

/// A package release: the newest package version of an architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub arch: String,
    pub version: String,
    pub target: String,
    pub groups: Vec<String>,
    pub rollout_percent: u8,
    pub canary_groups: Vec<String>,
}

/// The newest package of each architecture among the signed targets.
pub fn releases(targets: &BTreeMap<String, TargetFile>) -> Vec<Release> {
    let mut newest: BTreeMap<String, Release> = BTreeMap::new();
    for (path, t) in targets {
        let Some(c) = t.custom.as_ref().and_then(|c| c.get("teledge")) else {
            continue;
        };
        if c["kind"] != "package" {
            continue;
        }
        let (Some(version), Some(arch)) = (c["version"].as_str(), c["arch"].as_str()) else {
            continue;
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let release = Release {
            arch: arch.to_owned(),
            version: version.to_owned(),
            target: path.clone(),
            groups: strings(&c["groups"]),
            rollout_percent: c["rollout_percent"]
                .as_u64()
                .map_or(100, |p| p.min(100) as u8),
            canary_groups: strings(&c["canary_groups"]),
        };
        match newest.get(arch) {
            Some(r) if compare_versions(&r.version, version).is_ge() => {}
            _ => {
                newest.insert(arch.to_owned(), release);
            }
        }
    }
    newest.into_values().collect()
}

/// Where a node stands with its architecture's release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    Healthy,
    Running,
    RolledBack,
    Refused,
    InProgress,
    Waiting,
    NotInRollout,
    UnknownGroups,
    /// No release for the node's architecture.
    NoRelease,
}

/// One node's line.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub arch: Option<String>,
    pub version: Option<String>,
    pub config_sha256: Option<String>,
    pub uptime_s: Option<f64>,
    pub last_seen: Option<String>,
    pub stale: bool,
    pub bucket: u8,
    pub release: Option<String>,
    pub progress: Progress,
    /// The step of the newest update record for the release, and its reason.
    pub step: Option<UpdateStep>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    /// The newest metadata refusal (the node sees no new release while it lasts).
    pub metadata_refusal: Option<String>,
}

/// Counts per release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseStatus {
    #[serde(flatten)]
    pub release: Release,
    pub nodes: usize,
    pub counts: BTreeMap<String, usize>,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    pub releases: Vec<ReleaseStatus>,
    pub nodes: Vec<NodeStatus>,
}

fn upstream(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// Puts the records and the releases together as of `now`.
pub fn status(
    targets: &BTreeMap<String, TargetFile>,
    collected: &Collected,
    now: SystemTime,
    stale_after: Duration,
) -> FleetStatus {
    let releases = releases(targets);
    let mut nodes = Vec::new();
    for (node, records) in &collected.nodes {
        let hb = records.heartbeat.as_ref();
        let arch = hb.map(|h| h.arch.clone()).or_else(|| {
            records
                .packages
                .values()
                .find_map(|u| u.target.as_ref())
                .and_then(|t| t.rsplit_once('_'))
                .map(|(_, a)| a.trim_end_matches(".deb").to_owned())
        });
        let stale = hb
            .and_then(|h| humantime::parse_rfc3339(&h.time).ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_none_or(|age| age > stale_after);
        let release = arch
            .as_ref()
            .and_then(|a| releases.iter().find(|r| &r.arch == a));
        let bucket = rollout_bucket(node);
        let newest = release.and_then(|r| records.packages.get(&r.version));
        let progress = match (release, newest) {
            (None, _) => Progress::NoRelease,
            (Some(_), Some(u)) => match u.step {
                UpdateStep::Healthy => Progress::Healthy,
                UpdateStep::RolledBack => Progress::RolledBack,
                UpdateStep::Refused => Progress::Refused,
                _ => Progress::InProgress,
            },
            (Some(r), None) => {
                if hb.is_some_and(|h| compare_versions(&h.version, upstream(&r.version)).is_ge()) {
                    Progress::Running
                } else if !r.groups.is_empty()
                    || (!r.canary_groups.is_empty() && bucket >= r.rollout_percent)
                {
                    Progress::UnknownGroups
                } else if bucket < r.rollout_percent {
                    Progress::Waiting
                } else {
                    Progress::NotInRollout
                }
            }
        };
        nodes.push(NodeStatus {
            node: node.clone(),
            arch,
            version: hb.map(|h| h.version.clone()),
            config_sha256: hb.map(|h| h.config_sha256.clone()),
            uptime_s: hb.map(|h| h.uptime_s),
            last_seen: hb.map(|h| h.time.clone()),
            stale,
            bucket,
            release: release.map(|r| r.version.clone()),
            progress,
            step: newest.map(|u| u.step),
            reason: newest.and_then(|u| u.reason.clone()),
            detail: newest.and_then(|u| u.detail.clone()),
            metadata_refusal: records
                .metadata_refusal
                .as_ref()
                .map(|u| format!("{} ({})", u.reason.clone().unwrap_or_default(), u.time)),
        });
    }
    let releases = releases
        .into_iter()
        .map(|release| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            let mut total = 0;
            for n in nodes
                .iter()
                .filter(|n| n.arch.as_deref() == Some(release.arch.as_str()))
            {
                total += 1;
                let key = serde_json::to_value(n.progress)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                *counts.entry(key).or_default() += 1;
            }
            ReleaseStatus {
                release,
                nodes: total,
                counts,
            }
        })
        .collect();
    FleetStatus { releases, nodes }
}

/// The status as a table for people.
pub fn table(status: &FleetStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in &status.releases {
        let mut who = if r.release.groups.is_empty() {
            "every node".to_owned()
        } else {
            format!("groups {}", r.release.groups.join(","))
        };
        let _ = write!(who, ", {} %", r.release.rollout_percent);
        if !r.release.canary_groups.is_empty() {
            let _ = write!(
                who,
                " + canary groups {}",
                r.release.canary_groups.join(",")
            );
        }
        let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "release {} {} ({who}): {} node(s): {}",
            r.release.version,
            r.release.arch,
            r.nodes,
            if counts.is_empty() {
                "none".to_owned()
            } else {
                counts.join(", ")
            }
        );
    }
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:<12} {:<25} {:>6} {:<14} DETAIL",
        "NODE", "ARCH", "RUNNING", "LAST SEEN", "BUCKET", "PROGRESS"
    );
    for n in &status.nodes {
        let progress = serde_json::to_value(n.progress)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut detail = String::new();
        if let Some(reason) = &n.reason {
            let _ = write!(detail, "{reason}");
        }
        if let Some(d) = &n.detail {
            let _ = write!(detail, "{}{d}", if detail.is_empty() { "" } else { ": " });
        }
        if let Some(m) = &n.metadata_refusal {
            let _ = write!(
                detail,
                "{}metadata refused: {m}",
                if detail.is_empty() { "" } else { "; " }
            );
        }
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<12} {:<25} {:>6} {:<14} {}",
            n.node,
            n.arch.as_deref().unwrap_or("?"),
            n.version.as_deref().unwrap_or("?"),
            format!(
                "{}{}",
                n.last_seen.as_deref().unwrap_or("never"),
                if n.stale { " (stale)" } else { "" }
            ),
            n.bucket,
            progress,
            detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::record::heartbeat::HEARTBEAT_SCHEMA;
    use serde_json::json;

    fn target(custom: Value) -> TargetFile {
        TargetFile {
            length: 1,
            hashes: BTreeMap::new(),
            custom: Some(json!({ "teledge": custom })),
        }
    }

    fn heartbeat(node: &str, version: &str, time: &str) -> Value {
        json!({"id": format!("{node}:1:1"), "record": {
            "type": "heartbeat", "schema": HEARTBEAT_SCHEMA, "node": node, "version": version,
            "arch": "amd64", "config_sha256": "00", "reason": "start",
            "started": time, "uptime_s": 1.5, "time": time}})
    }

    fn update(node: &str, version: &str, step: &str) -> Value {
        json!({"id": format!("{node}:1:2"), "record": {
            "type": "update", "schema": "teledge.update/1", "node": node, "kind": "package",
            "step": step, "target": format!("packages/teledge_{version}_amd64.deb"),
            "version": version, "previous": "0.1.0-1", "reason": null, "detail": null,
            "targets_version": 3, "time": "2026-12-02T10:00:00.000Z"}})
    }

    #[test]
    fn each_node_is_placed_against_the_newest_release_of_its_architecture() {
        // Node ids chosen for their buckets (a hash of the id): under 50 and at 50 or over.
        let low = (0..200)
            .map(|i| format!("edge-{i}"))
            .find(|n| rollout_bucket(n) < 50)
            .unwrap();
        let high = (0..200)
            .map(|i| format!("edge-{i}"))
            .find(|n| rollout_bucket(n) >= 50)
            .unwrap();
        let targets = BTreeMap::from([
            (
                "packages/teledge_0.1.0-1_amd64.deb".to_owned(),
                target(json!({"kind": "package", "version": "0.1.0-1", "arch": "amd64"})),
            ),
            (
                "packages/teledge_0.2.0-1_amd64.deb".to_owned(),
                target(
                    json!({"kind": "package", "version": "0.2.0-1", "arch": "amd64",
                    "rollout_percent": 50}),
                ),
            ),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let fresh = humantime::format_rfc3339_millis(now).to_string();
        let write = |node: &str, lines: &[Value]| {
            std::fs::create_dir_all(dir.path().join(node)).unwrap();
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            std::fs::write(dir.path().join(node).join("2026-12-02.jsonl"), text).unwrap();
        };
        write(
            "done",
            &[
                heartbeat("done", "0.1.0", &fresh),
                update("done", "0.2.0-1", "offered"),
                update("done", "0.2.0-1", "healthy"),
                heartbeat("done", "0.2.0", &fresh),
            ],
        );
        // A rollback, then the refusal of the failed version at the next poll.
        let mut failed_before = update("back", "0.2.0-1", "refused");
        failed_before["record"]["reason"] = json!("failed_before");
        write(
            "back",
            &[
                heartbeat("back", "0.1.0", &fresh),
                update("back", "0.2.0-1", "rolled_back"),
                failed_before,
            ],
        );
        write(&low, &[heartbeat(&low, "0.1.0", &fresh)]);
        write(&high, &[heartbeat(&high, "0.1.0", "2026-01-01T00:00:00Z")]);
        write("manual", &[heartbeat("manual", "0.2.0", &fresh)]);
        std::fs::write(
            dir.path().join("manual/2026-12-03.jsonl"),
            "{\"id\":\"manual:1:9\",\"record\":{\"type\":\"heartbeat\"\n",
        )
        .unwrap();
        let collected = read_collected(dir.path()).unwrap();
        assert_eq!(collected.unreadable.len(), 1, "{:?}", collected.unreadable);
        let s = status(&targets, &collected, now, Duration::from_secs(900));
        let of = |n: &str| s.nodes.iter().find(|x| x.node == n).unwrap();
        assert_eq!(of("done").progress, Progress::Healthy);
        assert_eq!(of("done").version.as_deref(), Some("0.2.0"));
        assert_eq!(of("back").progress, Progress::RolledBack);
        assert_eq!(of(&low).progress, Progress::Waiting);
        assert_eq!(of(&high).progress, Progress::NotInRollout);
        assert!(of(&high).stale && !of(&low).stale);
        assert_eq!(of("manual").progress, Progress::Running);
        assert_eq!(s.releases.len(), 1);
        assert_eq!(s.releases[0].release.version, "0.2.0-1");
        assert_eq!(s.releases[0].nodes, 5);
        assert_eq!(s.releases[0].counts["healthy"], 1);
        let text = table(&s);
        assert!(
            text.contains("release 0.2.0-1 amd64 (every node, 50 %): 5 node(s)"),
            "{text}"
        );
        assert!(text.contains("(stale)"), "{text}");
    }
}
