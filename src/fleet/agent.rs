//! The unprivileged side of fleet updates, run by the daemon at `[fleet] poll_interval_s`
//! with up to `poll_jitter_s` of random delay (so a fleet does not poll in step). See the
//! module doc of [`crate::fleet`] for the files.
//!
//! One poll: the installer's outcomes are read and spooled (also every few seconds between
//! polls); if a request is still waiting for the installer or being applied, nothing else
//! happens. Otherwise the TUF metadata is refreshed (a
//! refusal is one `refused` record of kind `metadata`, announced once per reason until a
//! refresh succeeds), then:
//!
//! - **package**: the newest package for this node ([`super::select`]). Older than the
//!   running version: `refused` (`target_rollback`). A version that failed before:
//!   `refused` (`failed_before`), never downloaded again. Newer: `offered`, downloaded into
//!   `downloads/` within its signed length (and `max_target_bytes`), `downloaded`; its
//!   control fields read with `dpkg-deb --field` must be the configured package, the signed
//!   version and this node's architecture (or `all`): `verified`, else `refused`
//!   (`wrong_arch`, `wrong_package`, `wrong_version`). The running version's own package
//!   is fetched and verified the same way, so the installer can always go back (`refused`,
//!   `no_rollback_package`, when the repository does not carry it). Then the request is
//!   written: `handed_over`.
//! - **configuration**: the newest configuration for this node with a version above the
//!   one applied, not failed before: `offered`, `downloaded`, then validated exactly as
//!   `check-config` validates a file, and its `[node] id` must be this node's: `verified`
//!   or `refused` (`invalid_config`, with every problem). Then `handed_over`.
//!
//! Refusals of a target are announced once (the state remembers them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::select::{self, compare_versions, NodeIdentity};
use super::tuf::{write_atomic, Client, TargetFile, Transport, Trusted};
use super::{read_json, FleetSettings, Request};
use crate::record::update::{UpdateKind, UpdateRecord, UpdateStep};

/// What the agent remembers between polls and restarts (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Package versions that failed (rolled back or refused by the installer): never again.
    pub failed_packages: BTreeSet<String>,
    /// Configuration versions that failed.
    pub failed_configs: BTreeSet<u64>,
    /// The configuration version in place (0: none from the fleet yet).
    pub config_version: u64,
    /// Lines of `outcomes.jsonl` already spooled.
    pub outcomes_read: u64,
    /// Refusals already announced (`target|reason`), so a poll does not repeat them.
    pub announced: BTreeSet<String>,
}

/// Why a poll could not run at all (its own files); refusals are records, not errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The fleet client of one node.
#[derive(Debug)]
pub struct FleetAgent<T> {
    settings: FleetSettings,
    client: Client<T>,
    me: NodeIdentity,
    current_version: String,
    state: AgentState,
}

/// A refusal found while preparing a target.
struct Refusal {
    reason: &'static str,
    detail: String,
}

impl<T: Transport> FleetAgent<T> {
    /// `current_version` is the installed package's version (see [`installed_version`]).
    pub fn new(
        settings: FleetSettings,
        node: &str,
        transport: T,
        current_version: String,
    ) -> Result<Self, AgentError> {
        for dir in [
            settings.state_dir.clone(),
            settings.trusted_dir(),
            settings.downloads_dir(),
            settings.handoff_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let root = std::fs::read(&settings.root_file).map_err(io(&settings.root_file))?;
        let state_file = settings.state_file();
        let state = read_json(&state_file)
            .map_err(io(&state_file))?
            .unwrap_or_default();
        Ok(FleetAgent {
            client: Client::new(&settings.trusted_dir(), root, transport),
            me: NodeIdentity {
                node: node.to_owned(),
                arch: settings.arch.clone(),
                groups: settings.groups.clone(),
            },
            settings,
            current_version,
            state,
        })
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    pub fn client(&self) -> &Client<T> {
        &self.client
    }

    fn record(&self, kind: UpdateKind, step: UpdateStep) -> UpdateRecord {
        UpdateRecord::new(&self.me.node, kind, step)
    }

    fn save(&self) -> Result<(), AgentError> {
        let path = self.settings.state_file();
        let bytes = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        write_atomic(&path, &bytes).map_err(io(&path))
    }

    /// Spools the installer's new outcomes and learns from them (the daemon calls it between
    /// polls too, so a result is reported within seconds, not a poll interval later).
    pub fn read_outcomes(
        &mut self,
        emit: &mut (dyn FnMut(UpdateRecord) + Send),
    ) -> Result<(), AgentError> {
        let path = self.settings.outcomes_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&path)(e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        let skip = self.state.outcomes_read as usize;
        for line in lines.iter().skip(skip) {
            match serde_json::from_str::<UpdateRecord>(line) {
                Ok(record) => {
                    let failed =
                        matches!(record.step, UpdateStep::RolledBack | UpdateStep::Refused);
                    match (record.kind, record.version.as_deref()) {
                        (UpdateKind::Package, Some(v)) if failed => {
                            self.state.failed_packages.insert(v.to_owned());
                        }
                        (UpdateKind::Config, Some(v)) => {
                            if let Ok(v) = v.parse::<u64>() {
                                if failed {
                                    self.state.failed_configs.insert(v);
                                } else if record.step == UpdateStep::Healthy {
                                    self.state.config_version = v;
                                }
                            }
                        }
                        _ => {}
                    }
                    emit(record);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "Unreadable installer outcome skipped.")
                }
            }
        }
        if lines.len() > skip {
            self.state.outcomes_read = lines.len() as u64;
            self.save()?;
        }
        Ok(())
    }

    /// One poll (see the module doc). Records go to `emit`.
    pub async fn poll(
        &mut self,
        now: SystemTime,
        emit: &mut (dyn FnMut(UpdateRecord) + Send),
    ) -> Result<(), AgentError> {
        self.read_outcomes(emit)?;
        // A request waiting for the installer, or one it is applying (the installer restarts
        // this daemon during its probation and while going back): nothing new until done.
        let applying = self.settings.handoff_dir().join("request.applying.json");
        if self.settings.request_file().exists() || applying.exists() {
            tracing::debug!("An update is still waiting for the installer.");
            return Ok(());
        }
        let trusted = match self.client.refresh(now).await {
            Ok(t) => {
                // Metadata refusals are over; refusals of targets no longer signed are
                // forgotten (the set stays as small as the repository).
                let before = self.state.announced.len();
                self.state.announced.retain(|a| {
                    a.split_once('|')
                        .is_some_and(|(target, _)| t.targets.contains_key(target))
                });
                if self.state.announced.len() != before {
                    self.save()?;
                }
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = e.reason(), "Fleet metadata refused.");
                let key = format!("metadata|{}|{e}", e.reason());
                if self.state.announced.insert(key) {
                    let mut r = self.record(UpdateKind::Metadata, UpdateStep::Refused);
                    r.reason = Some(e.reason().to_owned());
                    r.detail = Some(e.to_string());
                    emit(r);
                    self.save()?;
                }
                return Ok(());
            }
        };
        if self.package(&trusted, emit).await? {
            return Ok(());
        }
        self.config(&trusted, emit).await
    }

    fn refuse(
        &mut self,
        kind: UpdateKind,
        target: &str,
        version: &str,
        refusal: Refusal,
        targets_version: u64,
        emit: &mut (dyn FnMut(UpdateRecord) + Send),
    ) -> Result<(), AgentError> {
        tracing::warn!(%target, %version, reason = refusal.reason, detail = %refusal.detail, "Update refused.");
        if self
            .state
            .announced
            .insert(format!("{target}|{}", refusal.reason))
        {
            let mut r = self.record(kind, UpdateStep::Refused);
            r.target = Some(target.to_owned());
            r.version = Some(version.to_owned());
            r.reason = Some(refusal.reason.to_owned());
            r.detail = Some(refusal.detail);
            r.targets_version = Some(targets_version);
            emit(r);
            self.save()?;
        }
        Ok(())
    }

    async fn fetch(
        &self,
        trusted: &Trusted,
        name: &str,
        target: &TargetFile,
    ) -> Result<PathBuf, Refusal> {
        if target.length > self.settings.max_target_bytes {
            return Err(Refusal {
                reason: "too_large",
                detail: format!(
                    "{name}: {} bytes declared, more than max_target_bytes {}",
                    target.length, self.settings.max_target_bytes
                ),
            });
        }
        let base = name.rsplit('/').next().unwrap_or(name);
        let dest = self.settings.downloads_dir().join(base);
        self.client
            .download(trusted, name, target, &dest)
            .await
            .map_err(|e| Refusal {
                reason: e.reason(),
                detail: e.to_string(),
            })?;
        Ok(dest)
    }

    /// Downloads and checks a package target; the file on success.
    async fn prepare_package(
        &self,
        trusted: &Trusted,
        p: &select::PackageTarget,
    ) -> Result<PathBuf, Refusal> {
        let file = self.fetch(trusted, &p.name, &p.target).await?;
        check_package(&file, &self.settings.package, &p.version, &self.me.arch)?;
        Ok(file)
    }

    /// The package part of a poll; true when a request was handed over.
    async fn package(
        &mut self,
        trusted: &Trusted,
        emit: &mut (dyn FnMut(UpdateRecord) + Send),
    ) -> Result<bool, AgentError> {
        let Some(newest) = select::packages_for(&trusted.targets, &self.me).pop() else {
            return Ok(false);
        };
        let tv = trusted.targets_version;
        let current = self.current_version.clone();
        match compare_versions(&newest.version, &current) {
            std::cmp::Ordering::Equal => return Ok(false),
            std::cmp::Ordering::Less => {
                let detail = format!(
                    "the newest package offered, {}, is older than the running {current}",
                    newest.version
                );
                self.refuse(
                    UpdateKind::Package,
                    &newest.name,
                    &newest.version,
                    Refusal {
                        reason: "target_rollback",
                        detail,
                    },
                    tv,
                    emit,
                )?;
                return Ok(false);
            }
            std::cmp::Ordering::Greater => {}
        }
        if self.state.failed_packages.contains(&newest.version) {
            let detail = format!(
                "{} failed before on this node; never retried",
                newest.version
            );
            self.refuse(
                UpdateKind::Package,
                &newest.name,
                &newest.version,
                Refusal {
                    reason: "failed_before",
                    detail,
                },
                tv,
                emit,
            )?;
            return Ok(false);
        }
        let step = |step: UpdateStep| {
            let mut r = UpdateRecord::new(&self.me.node, UpdateKind::Package, step);
            r.target = Some(newest.name.clone());
            r.version = Some(newest.version.clone());
            r.previous = Some(current.clone());
            r.targets_version = Some(tv);
            r
        };
        let key = format!("{}|offered", newest.name);
        if !self.state.announced.contains(&key) {
            emit(step(UpdateStep::Offered));
        }
        let staged = self
            .stage_package(trusted, &newest, &current, &mut |s| emit(step(s)))
            .await;
        let (file, previous) = match staged {
            Ok(staged) => staged,
            Err(refusal) => {
                self.state.announced.insert(key);
                self.refuse(
                    UpdateKind::Package,
                    &newest.name,
                    &newest.version,
                    refusal,
                    tv,
                    emit,
                )?;
                return Ok(false);
            }
        };
        let request = Request {
            kind: UpdateKind::Package,
            node: self.me.node.clone(),
            target: newest.name.clone(),
            file,
            version: newest.version.clone(),
            previous: Some(current.clone()),
            previous_target: Some(previous.0),
            previous_file: Some(previous.1),
            targets_version: tv,
        };
        self.hand_over(&request)?;
        emit(step(UpdateStep::HandedOver));
        Ok(true)
    }

    /// Fetches and checks the offered package and the running version's own package (the way
    /// back), announcing `Downloaded` and `Verified` on the way; a refusal names what failed.
    async fn stage_package(
        &self,
        trusted: &Trusted,
        newest: &select::PackageTarget,
        current: &str,
        announce: &mut (dyn FnMut(UpdateStep) + Send),
    ) -> Result<(PathBuf, (String, PathBuf)), Refusal> {
        let file = self.fetch(trusted, &newest.name, &newest.target).await?;
        announce(UpdateStep::Downloaded);
        if let Err(refusal) = check_package(
            &file,
            &self.settings.package,
            &newest.version,
            &self.me.arch,
        ) {
            let _ = std::fs::remove_file(&file);
            return Err(refusal);
        }
        announce(UpdateStep::Verified);
        // The way back: the running version's own signed package.
        let Some(p) = select::package_of_version(&trusted.targets, current, &self.me.arch) else {
            return Err(Refusal {
                reason: "no_rollback_package",
                detail: format!(
                    "the repository carries no package of the running version {current} for {}: there would be no way back",
                    self.me.arch
                ),
            });
        };
        match self.prepare_package(trusted, &p).await {
            Ok(back) => Ok((file, (p.name, back))),
            Err(refusal) => Err(Refusal {
                reason: "no_rollback_package",
                detail: format!(
                    "the package to go back to ({current}) failed its checks: {}",
                    refusal.detail
                ),
            }),
        }
    }

    fn hand_over(&self, request: &Request) -> Result<(), AgentError> {
        let path = self.settings.request_file();
        let bytes = serde_json::to_vec_pretty(request).unwrap_or_default();
        write_atomic(&path, &bytes).map_err(io(&path))?;
        tracing::info!(target = %request.target, version = %request.version, "Update handed over to the installer.");
        Ok(())
    }

    async fn config(
        &mut self,
        trusted: &Trusted,
        emit: &mut (dyn FnMut(UpdateRecord) + Send),
    ) -> Result<(), AgentError> {
        let Some(c) = select::newest_config(&trusted.targets, &self.me) else {
            return Ok(());
        };
        let tv = trusted.targets_version;
        let version = c.version.to_string();
        if c.version <= self.state.config_version {
            return Ok(());
        }
        if self.state.failed_configs.contains(&c.version) {
            let detail =
                format!("configuration {version} failed before on this node; never retried");
            return self.refuse(
                UpdateKind::Config,
                &c.name,
                &version,
                Refusal {
                    reason: "failed_before",
                    detail,
                },
                tv,
                emit,
            );
        }
        let previous = self.state.config_version.to_string();
        let step = |step: UpdateStep| {
            let mut r = UpdateRecord::new(&self.me.node, UpdateKind::Config, step);
            r.target = Some(c.name.clone());
            r.version = Some(version.clone());
            r.previous = Some(previous.clone());
            r.targets_version = Some(tv);
            r
        };
        let key = format!("{}|offered", c.name);
        if !self.state.announced.contains(&key) {
            emit(step(UpdateStep::Offered));
        }
        self.state.announced.insert(key);
        let file = match self.fetch(trusted, &c.name, &c.target).await {
            Ok(f) => f,
            Err(refusal) => {
                return self.refuse(UpdateKind::Config, &c.name, &version, refusal, tv, emit)
            }
        };
        emit(step(UpdateStep::Downloaded));
        if let Err(refusal) = check_config_file(&file, &self.me.node) {
            let _ = std::fs::remove_file(&file);
            return self.refuse(UpdateKind::Config, &c.name, &version, refusal, tv, emit);
        }
        emit(step(UpdateStep::Verified));
        let request = Request {
            kind: UpdateKind::Config,
            node: self.me.node.clone(),
            target: c.name.clone(),
            file,
            version: version.clone(),
            previous: Some(previous.clone()),
            previous_target: None,
            previous_file: None,
            targets_version: tv,
        };
        self.hand_over(&request)?;
        emit(step(UpdateStep::HandedOver));
        Ok(())
    }
}

/// Checks a package file's control fields: package name, version, architecture.
fn check_package(file: &Path, package: &str, version: &str, arch: &str) -> Result<(), Refusal> {
    let fields = deb_fields(file).map_err(|detail| Refusal {
        reason: "not_a_package",
        detail,
    })?;
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    if get("Package") != package {
        return Err(Refusal {
            reason: "wrong_package",
            detail: format!(
                "{}: package {:?}, expected {package:?}",
                file.display(),
                get("Package")
            ),
        });
    }
    if get("Version") != version {
        return Err(Refusal {
            reason: "wrong_version",
            detail: format!(
                "{}: version {:?}, the signed target says {version:?}",
                file.display(),
                get("Version")
            ),
        });
    }
    if get("Architecture") != arch && get("Architecture") != "all" {
        return Err(Refusal {
            reason: "wrong_arch",
            detail: format!(
                "{}: architecture {:?}, this node is {arch}",
                file.display(),
                get("Architecture")
            ),
        });
    }
    Ok(())
}

/// The control fields of a `.deb`, read by `dpkg-deb --field`.
pub fn deb_fields(file: &Path) -> Result<BTreeMap<String, String>, String> {
    let out = Command::new("dpkg-deb")
        .arg("--field")
        .arg(file)
        .args(["Package", "Version", "Architecture"])
        .output()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{}: dpkg-deb: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Validates a configuration file as `check-config` does; its node id must be `node`.
fn check_config_file(file: &Path, node: &str) -> Result<(), Refusal> {
    let text = std::fs::read_to_string(file).map_err(|e| Refusal {
        reason: "invalid_config",
        detail: format!("{}: {e}", file.display()),
    })?;
    match crate::config::agent::parse(&text) {
        Ok(config) if config.forward.node_id == node => Ok(()),
        Ok(config) => Err(Refusal {
            reason: "invalid_config",
            detail: format!(
                "[node] id is {:?}, this node is {node:?}",
                config.forward.node_id
            ),
        }),
        Err(errors) => Err(Refusal {
            reason: "invalid_config",
            detail: errors
                .0
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        }),
    }
}

/// The installed package's version (`[fleet] version_command`, `dpkg-query` by default), or
/// this binary's version when the command fails (a build installed by hand).
pub fn installed_version(command: &[String]) -> String {
    command
        .split_first()
        .and_then(|(program, args)| Command::new(program).args(args).output().ok())
        .filter(|o| o.status.success() && !o.stdout.is_empty())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}
