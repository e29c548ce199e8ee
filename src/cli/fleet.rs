//! `teledge fleet`: the fleet owner's tool (see [`teledge::fleet::repo`] and
//! [`teledge::fleet::status`]): make the keys and the repository, stage packages and
//! configurations, publish a release, widen a rollout, rotate keys, re-sign before expiry,
//! and see the rollout's progress.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use teledge::fleet::repo::{Audience, ConfigAudience, Lifetimes, Published, Repository};

// Where the repository and its online keys are. (Plain comments on these flattened `Args`
// structs: a doc comment becomes the subcommand's about text when clap builds it deferred.)
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The repository: `teledge collect --fleet DIR` serves its metadata/ and targets/.
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// The online keys (targets, snapshot, timestamp); default REPO/../keys. Keep it out of
    /// the served directory's reach, 0700.
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
}

impl RepoArgs {
    fn repository(&self) -> Repository {
        let keys = self.keys.clone().unwrap_or_else(|| {
            self.repo
                .parent()
                .map(|p| p.join("keys"))
                .unwrap_or_else(|| PathBuf::from("keys"))
        });
        Repository::new(&self.repo, &keys)
    }
}

// Signature lifetimes.
#[derive(Debug, Args)]
pub struct LifetimeArgs {
    /// Days a root version lasts.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub root_days: u64,
    /// Days a targets version lasts.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub targets_days: u64,
    /// Days a snapshot version lasts.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=365))]
    pub snapshot_days: u64,
    /// Hours a timestamp lasts (re-sign it well within: `teledge fleet refresh` from a timer).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    pub timestamp_hours: u64,
}

impl LifetimeArgs {
    fn lifetimes(&self) -> Lifetimes {
        const DAY: u64 = 86_400;
        Lifetimes {
            root: Duration::from_secs(self.root_days * DAY),
            targets: Duration::from_secs(self.targets_days * DAY),
            snapshot: Duration::from_secs(self.snapshot_days * DAY),
            timestamp: Duration::from_secs(self.timestamp_hours * 3600),
        }
    }
}

// Who a package is for.
#[derive(Debug, Args)]
pub struct AudienceArgs {
    /// Only nodes in one of these groups (`[fleet] groups`); default every node.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Only nodes whose rollout bucket (a hash of the node id, 0-99) is below this; the same
    /// nodes go first every release, and a growing percentage keeps them.
    #[arg(long, value_name = "0-100", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rollout_percent: Option<u8>,
    /// Nodes in these groups get it whatever the percentage (canaries first: 0 % + a lab group).
    #[arg(long = "canary-group", value_name = "GROUP")]
    pub canary_groups: Vec<String>,
}

impl AudienceArgs {
    fn audience(&self) -> Audience {
        Audience {
            groups: self.groups.clone(),
            rollout_percent: self.rollout_percent,
            canary_groups: self.canary_groups.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum FleetCommand {
    /// Make the keys (root keys into --root-keys, to be kept offline; the online keys into
    /// --keys) and the repository with root version 1 and an empty release. Ship
    /// REPO/metadata/1.root.json to every node as [fleet] root_file.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Where the root keys go: removable or offline storage, not the collector.
        #[arg(long, value_name = "DIR")]
        root_keys: PathBuf,
        /// How many root keys to make.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
        root_key_count: u64,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
        root_threshold: u64,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Stage packages (.deb, one per architecture: name, version and architecture are read
    /// from each) or a configuration for the next release; `publish` signs it.
    AddTarget {
        #[command(flatten)]
        repo: RepoArgs,
        /// A package to stage (repeat for each architecture).
        #[arg(
            long = "package",
            value_name = "DEB",
            required_unless_present = "config"
        )]
        packages: Vec<PathBuf>,
        /// The nodes' `[fleet] package` name.
        #[arg(long, default_value = "teledge")]
        package_name: String,
        #[command(flatten)]
        audience: AudienceArgs,
        /// A configuration file (teledge.toml) for --node or --config-group nodes.
        #[arg(long, value_name = "FILE", conflicts_with = "packages")]
        config: Option<PathBuf>,
        /// The configuration's name in the repository (config/NAME-VERSION.toml).
        #[arg(long, value_name = "NAME", requires = "config")]
        config_name: Option<String>,
        /// A node the configuration is for.
        #[arg(long = "node", value_name = "NODE", requires = "config")]
        nodes: Vec<String>,
        /// A group the configuration is for.
        #[arg(long = "config-group", value_name = "GROUP", requires = "config")]
        config_groups: Vec<String>,
    },
    /// Change who a staged package version is for (widen a rollout), then `publish`.
    Rollout {
        #[command(flatten)]
        repo: RepoArgs,
        /// The package version (as its control file says, e.g. 0.2.0-1).
        #[arg(long)]
        version: String,
        /// Only this architecture's package; default every one of that version.
        #[arg(long)]
        arch: Option<String>,
        #[command(flatten)]
        audience: AudienceArgs,
    },
    /// Unstage a target (a version no node should take any more); then `publish`. Keep the
    /// version nodes run: it is their way back.
    RemoveTarget {
        #[command(flatten)]
        repo: RepoArgs,
        /// The target path (as `status` and `list` show it).
        path: String,
    },
    /// Sign the staged targets as a new release (targets, snapshot, timestamp).
    Publish {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Re-sign the timestamp (and the snapshot or targets near their expiry): run it from a
    /// timer well within the timestamp's lifetime, or the nodes refuse the frozen metadata.
    Refresh {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Replace a role's key (root: the new root key goes into --root-keys) and write the next
    /// root, signed by the old and the new root keys; without --role, only renew the root's
    /// expiry. Publishes again with the new keys.
    Rotate {
        #[command(flatten)]
        repo: RepoArgs,
        /// The root keys (the offline medium).
        #[arg(long, value_name = "DIR")]
        root_keys: PathBuf,
        /// root, targets, snapshot or timestamp.
        #[arg(long)]
        role: Option<String>,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// The signed and the staged targets, and the expiry of each role.
    List {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// The rollout's progress: each node's version, last heartbeat and where it stands with
    /// the newest release of its architecture, from the collector's records.
    Status {
        #[command(flatten)]
        repo: RepoArgs,
        /// The collector's output directory (`teledge collect --out`).
        #[arg(long, value_name = "DIR")]
        collected: PathBuf,
        /// A node whose last heartbeat is older than this is marked stale.
        #[arg(long, default_value_t = 900)]
        stale_after_s: u64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn summary(p: &Published) -> String {
    format!(
        "root v{}, targets v{}, snapshot v{}, timestamp v{} (expires {})",
        p.root_version,
        p.targets_version,
        p.snapshot_version,
        p.timestamp_version,
        p.expires
            .get("timestamp")
            .map(String::as_str)
            .unwrap_or("?")
    )
}

pub fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    match command {
        FleetCommand::Init {
            repo,
            root_keys,
            root_key_count,
            root_threshold,
            lifetimes,
        } => {
            let mut r = repo.repository();
            r.lifetimes = lifetimes.lifetimes();
            let p = r.init(&root_keys, root_key_count as usize, root_threshold, now)?;
            println!("{}", summary(&p));
            println!(
                "ship {} to every node as [fleet] root_file; keep {} offline",
                r.dir.join("metadata/1.root.json").display(),
                root_keys.display()
            );
        }
        FleetCommand::AddTarget {
            repo,
            packages,
            package_name,
            audience,
            config,
            config_name,
            nodes,
            config_groups,
        } => {
            let r = repo.repository();
            if let Some(config) = config {
                let name = config_name.unwrap_or_else(|| {
                    config
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "config".into())
                });
                let (path, version) = r.add_config(
                    &config,
                    &name,
                    &ConfigAudience {
                        nodes,
                        groups: config_groups,
                    },
                )?;
                println!("staged {path} (configuration version {version})");
            }
            for deb in &packages {
                let path = r.add_package(deb, &package_name, &audience.audience())?;
                println!("staged {path}");
            }
            println!("run `teledge fleet publish` to sign the release");
        }
        FleetCommand::Rollout {
            repo,
            version,
            arch,
            audience,
        } => {
            let r = repo.repository();
            for path in r.set_rollout(&version, arch.as_deref(), &audience.audience())? {
                println!("staged {path}");
            }
            println!("run `teledge fleet publish` to sign the release");
        }
        FleetCommand::RemoveTarget { repo, path } => {
            repo.repository().remove_target(&path)?;
            println!("unstaged {path}; run `teledge fleet publish`");
        }
        FleetCommand::Publish { repo, lifetimes } => {
            let mut r = repo.repository();
            r.lifetimes = lifetimes.lifetimes();
            println!("published: {}", summary(&r.publish(now)?));
        }
        FleetCommand::Refresh { repo, lifetimes } => {
            let mut r = repo.repository();
            r.lifetimes = lifetimes.lifetimes();
            let roles = r.refresh(now)?;
            let p = r.published()?;
            println!("re-signed {}: {}", roles.join(", "), summary(&p));
            if let Some(root) = p
                .expires
                .get("root")
                .and_then(|e| humantime::parse_rfc3339(e).ok())
            {
                if root.duration_since(now).unwrap_or_default() < r.lifetimes.root / 6 {
                    eprintln!(
                        "teledge fleet: warning: the root expires at {}: renew it with the root keys (teledge fleet rotate)",
                        p.expires["root"]
                    );
                }
            }
        }
        FleetCommand::Rotate {
            repo,
            root_keys,
            role,
            lifetimes,
        } => {
            let mut r = repo.repository();
            r.lifetimes = lifetimes.lifetimes();
            let p = r.rotate(&root_keys, role.as_deref(), now)?;
            println!(
                "rotated {}: {}",
                role.as_deref().unwrap_or("nothing (root renewed)"),
                summary(&p)
            );
        }
        FleetCommand::List { repo } => {
            let r = repo.repository();
            let p = r.published()?;
            println!("{}", summary(&p));
            for (role, expires) in &p.expires {
                println!("  {role} expires {expires}");
            }
            let staged = r.staged()?;
            for (path, t) in &p.targets {
                let custom = t.custom.as_ref().map(|c| c["teledge"].to_string());
                let mark = if staged.targets.contains_key(path) {
                    ""
                } else {
                    " (unstaged)"
                };
                println!("signed  {path} {}{mark}", custom.unwrap_or_default());
            }
            for (path, t) in &staged.targets {
                let signed = p
                    .targets
                    .get(path)
                    .and_then(|s| s.custom.as_ref())
                    .is_some_and(|c| *c == t.custom);
                if !signed {
                    println!("staged  {path} {} (not published)", t.custom["teledge"]);
                }
            }
        }
        FleetCommand::Status {
            repo,
            collected,
            stale_after_s,
            json,
        } => {
            let p = repo.repository().published()?;
            let found = teledge::fleet::status::read_collected(&collected)
                .map_err(|e| anyhow::anyhow!("{}: {e}", collected.display()))?;
            for line in &found.unreadable {
                eprintln!("teledge fleet: unreadable record: {line}");
            }
            let s = teledge::fleet::status::status(
                &p.targets,
                &found,
                now,
                Duration::from_secs(stale_after_s),
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{}", summary(&p));
                print!("{}", teledge::fleet::status::table(&s));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
