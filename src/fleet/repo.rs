//! The fleet owner's side of TUF: keeps the keys, signs and publishes the repository that
//! `teledge collect --fleet DIR` serves (`teledge fleet …`). It writes with the same
//! canonical JSON ([`super::canonical`]) and ed25519 (`ring`) the client ([`super::tuf`])
//! verifies with, and the metadata is what python-tuf's `ngclient` accepts (checked by
//! `tests/it/fleet_owner.rs`).
//!
//! # Directories
//!
//! | Path | What |
//! |---|---|
//! | `REPO/metadata/` | `N.root.json` (every root ever, and `root.json`, the newest), `N.targets.json`, `N.snapshot.json`, `timestamp.json`: served |
//! | `REPO/targets/` | `packages/HASH.NAME`, `config/HASH.NAME` (consistent snapshots): served |
//! | `REPO/staged.json` | the targets of the next release, unsigned, with their `custom.teledge` (never served: the collector serves only `metadata/` and `targets/`) |
//! | `KEYS/` | the online keys: `targets-ID.key`, `snapshot-ID.key`, `timestamp-ID.key` (PKCS#8 PEM, 0600, directory 0700) |
//! | `ROOT_KEYS/` | the root keys, `root-ID.key`: kept offline, brought in only for `init` and `rotate` |
//!
//! A key file's role and key id are read from its content (the id is the SHA-256 of the
//! key's canonical JSON, as python-tuf computes it); the name is for people. A role is signed
//! with every key of the directory that the newest root lists for it; fewer than the
//! threshold is an error before anything is written. Keys a rotation replaced move to
//! `retired/` in their directory.
//!
//! # Versions and expiry
//!
//! Every publication signs a new targets, snapshot and timestamp version (each one above the
//! last: versions never go back, whatever the clock says); `refresh` re-signs the timestamp
//! (and the snapshot or targets when they come within a third of their lifetime of expiry),
//! for a timer to run well within the timestamp's lifetime. Lifetimes by default: root 365
//! days, targets 90, snapshot 7, timestamp 1. `rotate` writes root N+1, signed by a threshold
//! of root N's keys and of its own, then publishes again with the new keys.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::canonical;
use super::tuf::{format_time, Digests, TargetFile};

/// The TUF specification version written into every role.
pub const SPEC_VERSION: &str = "1.0.31";
/// The four top-level roles.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];
/// The roles whose keys stay online, beside the repository.
pub const ONLINE_ROLES: [&str; 3] = ["targets", "snapshot", "timestamp"];

/// Why a repository operation failed. Nothing is written when it fails before signing.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("{role}: {found} key(s) of the role in {dir}, threshold {threshold}")]
    NotEnoughKeys {
        role: String,
        found: usize,
        threshold: u64,
        dir: PathBuf,
    },
    #[error("{0}")]
    Usage(String),
    #[error("ed25519: {0}")]
    Crypto(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad(path: &Path, message: impl ToString) -> RepoError {
    RepoError::Bad {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// How long each role's signature lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub root: Duration,
    pub targets: Duration,
    pub snapshot: Duration,
    pub timestamp: Duration,
}

const DAY: u64 = 86_400;

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(7 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

impl Lifetimes {
    fn of(&self, role: &str) -> Duration {
        match role {
            "root" => self.root,
            "targets" => self.targets,
            "snapshot" => self.snapshot,
            _ => self.timestamp,
        }
    }
}

/// An ed25519 key pair and its TUF identity.
pub struct SigningKey {
    pub role: String,
    pub keyid: String,
    pub public_hex: String,
    pair: Ed25519KeyPair,
    pub path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("role", &self.role)
            .field("keyid", &self.keyid)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The public key as TUF writes it.
pub fn public_key_json(public_hex: &str) -> Value {
    json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": public_hex}})
}

/// The key id: SHA-256 of the key's canonical JSON.
pub fn keyid(public_hex: &str) -> String {
    let bytes = canonical::encode(&public_key_json(public_hex)).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

const PEM_TAG: &str = "PRIVATE KEY";
/// The role is kept in a PEM header line before the block, as a comment for people and
/// the tool: `teledge-fleet-role: targets`.
const ROLE_LINE: &str = "teledge-fleet-role: ";

impl SigningKey {
    fn from_pkcs8(role: &str, der: &[u8], path: &Path) -> Result<Self, RepoError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| bad(path, format!("not an ed25519 PKCS#8 key: {e}")))?;
        let public_hex = hex::encode(pair.public_key().as_ref());
        Ok(SigningKey {
            role: role.to_owned(),
            keyid: keyid(&public_hex),
            public_hex,
            pair,
            path: path.to_owned(),
        })
    }

    /// Makes a new key for `role` and writes it (0600) into `dir` (made 0700).
    pub fn generate(role: &str, dir: &Path) -> Result<Self, RepoError> {
        let rng = ring::rand::SystemRandom::new();
        let der =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| RepoError::Crypto(e.to_string()))?;
        let key = SigningKey::from_pkcs8(role, der.as_ref(), dir)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let path = dir.join(format!("{role}-{}.key", &key.keyid[..16]));
        let text = format!(
            "{ROLE_LINE}{role}\n{}",
            pem::encode(&pem::Pem::new(PEM_TAG, der.as_ref().to_vec()))
        );
        write_new(&path, text.as_bytes(), 0o600)?;
        Ok(SigningKey { path, ..key })
    }

    /// Reads a key file written by [`SigningKey::generate`].
    pub fn load(path: &Path) -> Result<Self, RepoError> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let role = text
            .lines()
            .find_map(|l| l.strip_prefix(ROLE_LINE))
            .map(str::trim)
            .filter(|r| ROLES.contains(r))
            .ok_or_else(|| bad(path, format!("no {ROLE_LINE:?} line naming a role")))?;
        let start = text
            .find("-----BEGIN")
            .ok_or_else(|| bad(path, "no PEM block"))?;
        let block = pem::parse(&text[start..]).map_err(|e| bad(path, e))?;
        if block.tag() != PEM_TAG {
            return Err(bad(
                path,
                format!("PEM block {:?}, expected {PEM_TAG:?}", block.tag()),
            ));
        }
        SigningKey::from_pkcs8(role, block.contents(), path)
    }

    fn sign(&self, message: &[u8]) -> Value {
        json!({"keyid": self.keyid, "sig": hex::encode(self.pair.sign(message).as_ref())})
    }
}

/// Every key file (`*.key`) directly in `dir`.
pub fn load_keys(dir: &Path) -> Result<Vec<SigningKey>, RepoError> {
    let mut keys = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "key") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        keys.push(SigningKey::load(&path)?);
    }
    Ok(keys)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RepoError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    super::tuf::write_atomic(path, bytes).map_err(io(path))
}

/// A signed metadata file: `signed`, signed by `keys` (canonical JSON), as pretty JSON.
fn envelope(signed: &Value, keys: &[&SigningKey]) -> Result<Vec<u8>, RepoError> {
    let bytes = canonical::encode(signed).map_err(|e| RepoError::Usage(e.to_string()))?;
    let signatures: Vec<Value> = keys.iter().map(|k| k.sign(&bytes)).collect();
    let mut out = serde_json::to_vec_pretty(&json!({"signed": signed, "signatures": signatures}))
        .map_err(|e| RepoError::Usage(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// A target of the next release (what `staged.json` holds per path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedTarget {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    pub custom: Value,
}

/// `staged.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    pub targets: BTreeMap<String, StagedTarget>,
}

/// What a package target says of itself (`custom.teledge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageSpec {
    pub package: String,
    pub version: String,
    pub arch: String,
}

/// Who a package is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audience {
    /// Empty: every node.
    pub groups: Vec<String>,
    /// 0–100; `None`: 100.
    pub rollout_percent: Option<u8>,
    pub canary_groups: Vec<String>,
}

/// Who a configuration is for (at least one of the two).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigAudience {
    pub nodes: Vec<String>,
    pub groups: Vec<String>,
}

/// The current signed state of a repository, as its files say.
#[derive(Debug, Clone)]
pub struct Published {
    pub root: Value,
    pub root_version: u64,
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    /// `expires` of each role.
    pub expires: BTreeMap<String, String>,
    /// The signed targets (path → its file entry).
    pub targets: BTreeMap<String, TargetFile>,
}

/// A repository directory and its key directories.
#[derive(Debug, Clone)]
pub struct Repository {
    pub dir: PathBuf,
    pub keys: PathBuf,
    pub lifetimes: Lifetimes,
}

fn read_signed(path: &Path) -> Result<Value, RepoError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| bad(path, e))?;
    value
        .get("signed")
        .cloned()
        .ok_or_else(|| bad(path, "no \"signed\" object"))
}

fn version_of(path: &Path, signed: &Value) -> Result<u64, RepoError> {
    signed["version"]
        .as_u64()
        .ok_or_else(|| bad(path, "no integer version"))
}

fn meta_version(path: &Path, signed: &Value, file: &str) -> Result<u64, RepoError> {
    signed["meta"][file]["version"]
        .as_u64()
        .ok_or_else(|| bad(path, format!("no {file} version in meta")))
}

/// Reads a `.deb`'s control fields with `dpkg-deb --field` (as the agent checks them).
pub fn deb_fields(file: &Path) -> Result<PackageSpec, RepoError> {
    let out = std::process::Command::new("dpkg-deb")
        .arg("--field")
        .arg(file)
        .args(["Package", "Version", "Architecture"])
        .output()
        .map_err(|e| bad(file, format!("dpkg-deb --field: {e} (is dpkg installed?)")))?;
    if !out.status.success() {
        return Err(bad(
            file,
            format!(
                "dpkg-deb --field: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| bad(file, format!("no {name} field")))
    };
    Ok(PackageSpec {
        package: field("Package")?,
        version: field("Version")?,
        arch: field("Architecture")?,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~'))
}

fn check_names(what: &str, names: &[String]) -> Result<(), RepoError> {
    for n in names {
        if !crate::uplink::valid_node_id(n) {
            return Err(RepoError::Usage(format!(
                "{what} {n:?}: 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
    }
    Ok(())
}

impl Repository {
    pub fn new(dir: &Path, keys: &Path) -> Self {
        Repository {
            dir: dir.to_owned(),
            keys: keys.to_owned(),
            lifetimes: Lifetimes::default(),
        }
    }

    fn metadata(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    fn staged_file(&self) -> PathBuf {
        self.dir.join("staged.json")
    }

    /// Creates the keys (root threshold of `root_keys` keys, one key for each online role),
    /// root version 1 and an empty first release. Refuses a directory that has metadata.
    pub fn init(
        &self,
        root_keys_dir: &Path,
        root_keys: usize,
        root_threshold: u64,
        now: SystemTime,
    ) -> Result<Published, RepoError> {
        if root_threshold < 1 || root_threshold as usize > root_keys {
            return Err(RepoError::Usage(format!(
                "root threshold {root_threshold} with {root_keys} root key(s): must be 1..=keys"
            )));
        }
        let meta = self.metadata();
        if meta.join("1.root.json").exists() {
            return Err(bad(&meta, "a repository is already there (1.root.json)"));
        }
        for dir in [&self.dir, &meta, &self.dir.join("targets")] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut keys: BTreeMap<String, Value> = BTreeMap::new();
        let mut roles: BTreeMap<String, Value> = BTreeMap::new();
        let mut root_signers = Vec::new();
        for _ in 0..root_keys {
            root_signers.push(SigningKey::generate("root", root_keys_dir)?);
        }
        let ids: Vec<String> = root_signers.iter().map(|k| k.keyid.clone()).collect();
        for k in &root_signers {
            keys.insert(k.keyid.clone(), public_key_json(&k.public_hex));
        }
        roles.insert(
            "root".into(),
            json!({"keyids": ids, "threshold": root_threshold}),
        );
        for role in ONLINE_ROLES {
            let k = SigningKey::generate(role, &self.keys)?;
            keys.insert(k.keyid.clone(), public_key_json(&k.public_hex));
            roles.insert(role.into(), json!({"keyids": [k.keyid], "threshold": 1}));
        }
        let root = json!({
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": 1,
            "expires": format_time(now + self.lifetimes.root),
            "consistent_snapshot": true,
            "keys": keys,
            "roles": roles,
        });
        let signers: Vec<&SigningKey> = root_signers.iter().collect();
        let bytes = envelope(&root, &signers)?;
        write_file(&meta.join("1.root.json"), &bytes)?;
        write_file(&meta.join("root.json"), &bytes)?;
        self.save_staged(&Staged::default())?;
        self.publish(now)
    }

    /// The newest root (`N.root.json` with the highest N).
    fn newest_root(&self) -> Result<(u64, Value), RepoError> {
        let meta = self.metadata();
        let mut n = 0;
        while meta.join(format!("{}.root.json", n + 1)).exists() {
            n += 1;
        }
        if n == 0 {
            return Err(bad(
                &meta,
                "no 1.root.json: not a repository (teledge fleet init makes one)",
            ));
        }
        let path = meta.join(format!("{n}.root.json"));
        let root = read_signed(&path)?;
        Ok((n, root))
    }

    /// The signed state as the served files say.
    pub fn published(&self) -> Result<Published, RepoError> {
        let meta = self.metadata();
        let (root_version, root) = self.newest_root()?;
        let ts_path = meta.join("timestamp.json");
        let timestamp = read_signed(&ts_path)?;
        let snapshot_version = meta_version(&ts_path, &timestamp, "snapshot.json")?;
        let snap_path = meta.join(format!("{snapshot_version}.snapshot.json"));
        let snapshot = read_signed(&snap_path)?;
        let targets_version = meta_version(&snap_path, &snapshot, "targets.json")?;
        let targets_path = meta.join(format!("{targets_version}.targets.json"));
        let targets = read_signed(&targets_path)?;
        let target_files: BTreeMap<String, TargetFile> =
            serde_json::from_value(targets["targets"].clone())
                .map_err(|e| bad(&targets_path, e))?;
        let mut expires = BTreeMap::new();
        for (role, signed) in [
            ("root", &root),
            ("targets", &targets),
            ("snapshot", &snapshot),
            ("timestamp", &timestamp),
        ] {
            expires.insert(
                role.to_owned(),
                signed["expires"].as_str().unwrap_or_default().to_owned(),
            );
        }
        Ok(Published {
            timestamp_version: version_of(&ts_path, &timestamp)?,
            snapshot_version,
            targets_version,
            root_version,
            root,
            expires,
            targets: target_files,
        })
    }

    pub fn staged(&self) -> Result<Staged, RepoError> {
        let path = self.staged_file();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| bad(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Staged::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn save_staged(&self, staged: &Staged) -> Result<(), RepoError> {
        let path = self.staged_file();
        let mut bytes =
            serde_json::to_vec_pretty(staged).map_err(|e| RepoError::Usage(e.to_string()))?;
        bytes.push(b'\n');
        write_file(&path, &bytes)
    }

    /// Copies `file` into `targets/` under its consistent-snapshot name and stages it as
    /// `path` with `custom`.
    fn stage_file(&self, path: &str, file: &Path, custom: Value) -> Result<(), RepoError> {
        let bytes = std::fs::read(file).map_err(io(file))?;
        let digests = Digests::of(&bytes);
        let (dir, base) = path
            .rsplit_once('/')
            .ok_or_else(|| RepoError::Usage(format!("target path {path:?} has no directory")))?;
        if !valid_name(base) || !dir.split('/').all(valid_name) {
            return Err(RepoError::Usage(format!(
                "target path {path:?}: components of [A-Za-z0-9._+~-] only"
            )));
        }
        let dest = self
            .dir
            .join("targets")
            .join(dir)
            .join(format!("{}.{base}", digests.sha256));
        write_file(&dest, &bytes)?;
        let mut staged = self.staged()?;
        staged.targets.insert(
            path.to_owned(),
            StagedTarget {
                length: bytes.len() as u64,
                hashes: BTreeMap::from([
                    ("sha256".to_owned(), digests.sha256),
                    ("sha512".to_owned(), digests.sha512),
                ]),
                custom,
            },
        );
        self.save_staged(&staged)
    }

    /// Stages a package (its name, version and architecture read from the file). Returns
    /// the target path.
    pub fn add_package(
        &self,
        file: &Path,
        expected_package: &str,
        audience: &Audience,
    ) -> Result<String, RepoError> {
        let spec = deb_fields(file)?;
        if spec.package != expected_package {
            return Err(bad(
                file,
                format!(
                    "package {:?}, expected {expected_package:?} (the nodes' [fleet] package)",
                    spec.package
                ),
            ));
        }
        if let Some(p) = audience.rollout_percent {
            if p > 100 {
                return Err(RepoError::Usage(format!(
                    "rollout percentage {p}: 0 to 100"
                )));
            }
        }
        check_names("group", &audience.groups)?;
        check_names("canary group", &audience.canary_groups)?;
        let path = format!(
            "packages/{}_{}_{}.deb",
            spec.package,
            spec.version.replace(':', "%3a"),
            spec.arch
        );
        let mut custom = json!({"kind": "package", "version": spec.version, "arch": spec.arch});
        if !audience.groups.is_empty() {
            custom["groups"] = json!(audience.groups);
        }
        if let Some(p) = audience.rollout_percent {
            custom["rollout_percent"] = json!(p);
        }
        if !audience.canary_groups.is_empty() {
            custom["canary_groups"] = json!(audience.canary_groups);
        }
        self.stage_file(&path, file, json!({ "teledge": custom }))?;
        Ok(path)
    }

    /// Stages a configuration for nodes or groups; its version is one above every
    /// configuration version the repository has staged or signed. Returns (path, version).
    pub fn add_config(
        &self,
        file: &Path,
        name: &str,
        audience: &ConfigAudience,
    ) -> Result<(String, u64), RepoError> {
        if audience.nodes.is_empty() && audience.groups.is_empty() {
            return Err(RepoError::Usage(
                "a configuration is for nodes or groups (--node, --config-group): the nodes refuse one for everyone"
                    .into(),
            ));
        }
        check_names("node", &audience.nodes)?;
        check_names("group", &audience.groups)?;
        if !crate::uplink::valid_node_id(name) {
            return Err(RepoError::Usage(format!(
                "configuration name {name:?}: 1-64 characters of [A-Za-z0-9._-]"
            )));
        }
        let text = std::fs::read_to_string(file).map_err(io(file))?;
        toml::from_str::<toml::Table>(&text).map_err(|e| bad(file, e))?;
        let staged = self.staged()?;
        let config_version = |custom: Option<&Value>| {
            custom
                .and_then(|c| c.get("teledge"))
                .filter(|t| t["kind"] == "config")
                .and_then(|t| t["version"].as_u64())
                .unwrap_or(0)
        };
        let mut version = staged
            .targets
            .values()
            .map(|t| config_version(Some(&t.custom)))
            .max()
            .unwrap_or(0);
        if let Ok(published) = self.published() {
            for t in published.targets.values() {
                version = version.max(config_version(t.custom.as_ref()));
            }
        }
        let version = version + 1;
        let path = format!("config/{name}-{version}.toml");
        let mut custom = json!({"kind": "config", "version": version});
        if !audience.nodes.is_empty() {
            custom["nodes"] = json!(audience.nodes);
        }
        if !audience.groups.is_empty() {
            custom["groups"] = json!(audience.groups);
        }
        self.stage_file(&path, file, json!({ "teledge": custom }))?;
        Ok((path, version))
    }

    /// Changes who a staged package of `version` (every architecture, or `arch`) is for:
    /// widen a rollout from the canaries to a percentage to everyone. Returns the paths.
    pub fn set_rollout(
        &self,
        version: &str,
        arch: Option<&str>,
        audience: &Audience,
    ) -> Result<Vec<String>, RepoError> {
        if audience.rollout_percent.is_some_and(|p| p > 100) {
            return Err(RepoError::Usage("rollout percentage: 0 to 100".into()));
        }
        check_names("group", &audience.groups)?;
        check_names("canary group", &audience.canary_groups)?;
        let mut staged = self.staged()?;
        let mut changed = Vec::new();
        for (path, target) in staged.targets.iter_mut() {
            let t = &mut target.custom["teledge"];
            if t["kind"] != "package"
                || t["version"] != version
                || arch.is_some_and(|a| t["arch"] != a)
            {
                continue;
            }
            let Some(obj) = t.as_object_mut() else {
                continue;
            };
            for field in ["groups", "rollout_percent", "canary_groups"] {
                obj.remove(field);
            }
            if !audience.groups.is_empty() {
                obj.insert("groups".into(), json!(audience.groups));
            }
            if let Some(p) = audience.rollout_percent {
                obj.insert("rollout_percent".into(), json!(p));
            }
            if !audience.canary_groups.is_empty() {
                obj.insert("canary_groups".into(), json!(audience.canary_groups));
            }
            changed.push(path.clone());
        }
        if changed.is_empty() {
            return Err(RepoError::Usage(format!(
                "no staged package of version {version:?}{}",
                arch.map(|a| format!(" for {a}")).unwrap_or_default()
            )));
        }
        self.save_staged(&staged)?;
        Ok(changed)
    }

    /// Unstages a target (the file stays under `targets/` for nodes on older metadata).
    pub fn remove_target(&self, path: &str) -> Result<(), RepoError> {
        let mut staged = self.staged()?;
        if staged.targets.remove(path).is_none() {
            return Err(RepoError::Usage(format!("{path:?} is not staged")));
        }
        self.save_staged(&staged)
    }

    /// The online keys of `role` the newest root lists, at least its threshold of them.
    fn signers<'k>(
        &self,
        root: &Value,
        role: &str,
        keys: &'k [SigningKey],
        dir: &Path,
    ) -> Result<Vec<&'k SigningKey>, RepoError> {
        let listed: Vec<String> = root["roles"][role]["keyids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let threshold = root["roles"][role]["threshold"].as_u64().unwrap_or(1);
        let found: Vec<&SigningKey> = keys
            .iter()
            .filter(|k| k.role == role && listed.contains(&k.keyid))
            .collect();
        if (found.len() as u64) < threshold {
            return Err(RepoError::NotEnoughKeys {
                role: role.to_owned(),
                found: found.len(),
                threshold,
                dir: dir.to_owned(),
            });
        }
        Ok(found)
    }

    fn next_version(&self, role: &str) -> u64 {
        let meta = self.metadata();
        let existing = |name: &str| {
            std::fs::read_dir(&meta)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(&format!(".{name}.json"))
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .max()
                .unwrap_or(0)
        };
        match role {
            "timestamp" => read_signed(&meta.join("timestamp.json"))
                .ok()
                .and_then(|s| s["version"].as_u64())
                .unwrap_or(0)
                .saturating_add(1),
            other => existing(other).saturating_add(1),
        }
    }

    fn sign_targets(&self, now: SystemTime, staged: &Staged) -> Result<(u64, Vec<u8>), RepoError> {
        let (_, root) = self.newest_root()?;
        let keys = load_keys(&self.keys)?;
        let signers = self.signers(&root, "targets", &keys, &self.keys)?;
        let version = self.next_version("targets");
        let targets: BTreeMap<&String, Value> = staged
            .targets
            .iter()
            .map(|(p, t)| {
                (
                    p,
                    json!({"length": t.length, "hashes": t.hashes, "custom": t.custom}),
                )
            })
            .collect();
        let signed = json!({
            "_type": "targets",
            "spec_version": SPEC_VERSION,
            "version": version,
            "expires": format_time(now + self.lifetimes.targets),
            "targets": targets,
        });
        let bytes = envelope(&signed, &signers)?;
        write_file(
            &self.metadata().join(format!("{version}.targets.json")),
            &bytes,
        )?;
        Ok((version, bytes))
    }

    fn sign_snapshot(
        &self,
        now: SystemTime,
        targets_version: u64,
        targets_bytes: &[u8],
    ) -> Result<(u64, Vec<u8>), RepoError> {
        let (version, bytes) = self.sign_meta_of(
            "snapshot",
            "targets.json",
            now,
            targets_version,
            targets_bytes,
        )?;
        write_file(
            &self.metadata().join(format!("{version}.snapshot.json")),
            &bytes,
        )?;
        Ok((version, bytes))
    }

    fn sign_timestamp(
        &self,
        now: SystemTime,
        snapshot_version: u64,
        snapshot_bytes: &[u8],
    ) -> Result<u64, RepoError> {
        let (version, bytes) = self.sign_meta_of(
            "timestamp",
            "snapshot.json",
            now,
            snapshot_version,
            snapshot_bytes,
        )?;
        write_file(&self.metadata().join("timestamp.json"), &bytes)?;
        Ok(version)
    }

    /// The next version of `role` (snapshot or timestamp), which names one file of the role
    /// below it (`of`) by its version, length and SHA-256, signed by the role's keys.
    fn sign_meta_of(
        &self,
        role: &str,
        of: &str,
        now: SystemTime,
        of_version: u64,
        of_bytes: &[u8],
    ) -> Result<(u64, Vec<u8>), RepoError> {
        let (_, root) = self.newest_root()?;
        let keys = load_keys(&self.keys)?;
        let signers = self.signers(&root, role, &keys, &self.keys)?;
        let version = self.next_version(role);
        let d = Digests::of(of_bytes);
        let signed = json!({
            "_type": role,
            "spec_version": SPEC_VERSION,
            "version": version,
            "expires": format_time(now + self.lifetimes.of(role)),
            "meta": {of: {
                "version": of_version,
                "length": of_bytes.len(),
                "hashes": {"sha256": d.sha256},
            }},
        });
        Ok((version, envelope(&signed, &signers)?))
    }

    /// Signs the staged targets as a new release: targets, snapshot and timestamp, each one
    /// version up. Every package's running version must stay available to go back to is the
    /// owner's business (`status` lists what nodes run).
    pub fn publish(&self, now: SystemTime) -> Result<Published, RepoError> {
        let staged = self.staged()?;
        // Check every role's keys before writing anything.
        let (_, root) = self.newest_root()?;
        let keys = load_keys(&self.keys)?;
        for role in ONLINE_ROLES {
            self.signers(&root, role, &keys, &self.keys)?;
        }
        let (tv, tbytes) = self.sign_targets(now, &staged)?;
        let (sv, sbytes) = self.sign_snapshot(now, tv, &tbytes)?;
        self.sign_timestamp(now, sv, &sbytes)?;
        self.published()
    }

    /// Re-signs what comes near its expiry: the timestamp always; the snapshot and the
    /// targets when less than a third of their lifetime is left (the targets with the
    /// signed content unchanged, not the staged one). Returns the roles re-signed.
    pub fn refresh(&self, now: SystemTime) -> Result<Vec<&'static str>, RepoError> {
        let published = self.published()?;
        let meta = self.metadata();
        let near = |role: &str| {
            let left = published
                .expires
                .get(role)
                .and_then(|e| humantime::parse_rfc3339(e).ok())
                .and_then(|at| at.duration_since(now).ok())
                .unwrap_or(Duration::ZERO);
            left < self.lifetimes.of(role) / 3
        };
        let mut done = Vec::new();
        let targets_path = meta.join(format!("{}.targets.json", published.targets_version));
        let (tv, tbytes) = if near("targets") {
            let staged = Staged {
                targets: published
                    .targets
                    .iter()
                    .map(|(p, t)| {
                        (
                            p.clone(),
                            StagedTarget {
                                length: t.length,
                                hashes: t.hashes.clone(),
                                custom: t.custom.clone().unwrap_or(Value::Null),
                            },
                        )
                    })
                    .collect(),
            };
            done.push("targets");
            self.sign_targets(now, &staged)?
        } else {
            (
                published.targets_version,
                std::fs::read(&targets_path).map_err(io(&targets_path))?,
            )
        };
        let snap_path = meta.join(format!("{}.snapshot.json", published.snapshot_version));
        let (sv, sbytes) = if !done.is_empty() || near("snapshot") {
            done.push("snapshot");
            self.sign_snapshot(now, tv, &tbytes)?
        } else {
            (
                published.snapshot_version,
                std::fs::read(&snap_path).map_err(io(&snap_path))?,
            )
        };
        self.sign_timestamp(now, sv, &sbytes)?;
        done.push("timestamp");
        Ok(done)
    }

    /// Replaces `role`'s keys with one new key (`None`: only renews the root's expiry) and
    /// writes root N+1, signed by the threshold of root N's keys and of its own (both from
    /// `root_keys_dir`); then publishes the staged targets again with the new keys.
    pub fn rotate(
        &self,
        root_keys_dir: &Path,
        role: Option<&str>,
        now: SystemTime,
    ) -> Result<Published, RepoError> {
        if let Some(r) = role {
            if !ROLES.contains(&r) {
                return Err(RepoError::Usage(format!(
                    "role {r:?}: one of root, targets, snapshot, timestamp"
                )));
            }
        }
        let (n, old_root) = self.newest_root()?;
        let root_keys = load_keys(root_keys_dir)?;
        let old_signers = self.signers(&old_root, "root", &root_keys, root_keys_dir)?;
        let mut root = old_root.clone();
        let mut retired: Vec<PathBuf> = Vec::new();
        let mut new_root_key = None;
        if let Some(role) = role {
            let dir = if role == "root" {
                root_keys_dir
            } else {
                &self.keys
            };
            let old_ids: Vec<String> = root["roles"][role]["keyids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let key = SigningKey::generate(role, dir)?;
            root["keys"][&key.keyid] = public_key_json(&key.public_hex);
            root["roles"][role] = json!({"keyids": [key.keyid], "threshold": 1});
            // A key no role lists any more leaves the root's key list.
            let still_used = |id: &str, root: &Value| {
                ROLES.iter().any(|r| {
                    root["roles"][*r]["keyids"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| v == id))
                })
            };
            for id in &old_ids {
                if !still_used(id, &root) {
                    if let Some(keys) = root["keys"].as_object_mut() {
                        keys.remove(id);
                    }
                }
            }
            for k in load_keys(dir)? {
                if k.role == role && old_ids.contains(&k.keyid) {
                    retired.push(k.path.clone());
                }
            }
            if role == "root" {
                new_root_key = Some(key);
            }
        }
        root["version"] = json!(n + 1);
        root["expires"] = json!(format_time(now + self.lifetimes.root));
        let mut signers: Vec<&SigningKey> = old_signers.clone();
        if let Some(k) = &new_root_key {
            signers.push(k);
        }
        let bytes = envelope(&root, &signers)?;
        let meta = self.metadata();
        write_file(&meta.join(format!("{}.root.json", n + 1)), &bytes)?;
        write_file(&meta.join("root.json"), &bytes)?;
        for path in retired {
            if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                let to = dir.join("retired");
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&to)
                    .map_err(io(&to))?;
                std::fs::rename(&path, to.join(name)).map_err(io(&path))?;
            }
        }
        self.publish(now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fleet::tuf::{Client, DirTransport};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_repository_made_here_is_trusted_by_the_client_through_refresh_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(&dir.path().join("repo"), &dir.path().join("keys"));
        let offline = dir.path().join("offline");
        let t0 = SystemTime::now();
        let first = repo.init(&offline, 2, 2, t0).unwrap();
        assert_eq!(
            (
                first.root_version,
                first.targets_version,
                first.timestamp_version
            ),
            (1, 1, 1)
        );
        let shipped = std::fs::read(dir.path().join("repo/metadata/1.root.json")).unwrap();
        let client = Client::new(
            &dir.path().join("trusted"),
            shipped,
            DirTransport(dir.path().join("repo")),
        );
        let rt = runtime();
        let trusted = rt.block_on(client.refresh(t0)).unwrap();
        assert_eq!(trusted.targets_version, 1);
        assert!(trusted.targets.is_empty());

        // A configuration target, published: signed, hashed, with its custom object.
        let conf = dir.path().join("site.toml");
        std::fs::write(&conf, "[node]\nid = \"edge-01\"\n").unwrap();
        let (path, version) = repo
            .add_config(
                &conf,
                "site-a",
                &ConfigAudience {
                    groups: vec!["site-a".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((path.as_str(), version), ("config/site-a-1.toml", 1));
        repo.publish(t0).unwrap();
        let trusted = rt.block_on(client.refresh(t0)).unwrap();
        assert_eq!(trusted.targets_version, 2);
        let target = &trusted.targets[&path];
        assert_eq!(target.custom.as_ref().unwrap()["teledge"]["version"], 1);
        let dest = dir.path().join("got.toml");
        rt.block_on(client.download(&trusted, &path, target, &dest))
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&conf).unwrap());

        // The timestamp re-signed 20 hours later: valid past the first one's expiry.
        let later = t0 + Duration::from_secs(20 * 3600);
        assert_eq!(repo.refresh(later).unwrap(), ["timestamp"]);
        let trusted = rt
            .block_on(client.refresh(t0 + Duration::from_secs(30 * 3600)))
            .unwrap();
        assert_eq!(trusted.timestamp_version, 3);
        // Six days on, the snapshot (7 days) is re-signed with it.
        let week = t0 + Duration::from_secs(6 * DAY);
        assert_eq!(repo.refresh(week).unwrap(), ["snapshot", "timestamp"]);
        rt.block_on(client.refresh(week)).unwrap();

        // Rotations: the timestamp key, then the root keys; the client follows both.
        repo.rotate(&offline, Some("timestamp"), week).unwrap();
        assert_eq!(
            load_keys(&dir.path().join("keys/retired")).unwrap().len(),
            1
        );
        let trusted = rt.block_on(client.refresh(week)).unwrap();
        assert_eq!(trusted.root_version, 2);
        repo.rotate(&offline, Some("root"), week).unwrap();
        let trusted = rt.block_on(client.refresh(week)).unwrap();
        assert_eq!(trusted.root_version, 3);
        // The new root has one root key (threshold 1); the old two are retired.
        assert_eq!(load_keys(&offline).unwrap().len(), 1);
        assert_eq!(load_keys(&offline.join("retired")).unwrap().len(), 2);
        repo.rotate(&offline, None, week).unwrap();
        assert_eq!(rt.block_on(client.refresh(week)).unwrap().root_version, 4);
    }

    #[test]
    fn signing_needs_the_threshold_of_keys_and_nothing_is_written_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(&dir.path().join("repo"), &dir.path().join("keys"));
        let offline = dir.path().join("offline");
        repo.init(&offline, 1, 1, SystemTime::now()).unwrap();
        assert!(matches!(
            repo.init(&offline, 1, 1, SystemTime::now()),
            Err(RepoError::Bad { .. })
        ));
        for k in load_keys(&dir.path().join("keys")).unwrap() {
            if k.role == "snapshot" {
                std::fs::remove_file(&k.path).unwrap();
            }
        }
        let e = repo.publish(SystemTime::now()).unwrap_err();
        assert!(
            matches!(&e, RepoError::NotEnoughKeys { role, found: 0, threshold: 1, .. } if role == "snapshot"),
            "{e}"
        );
        // No targets version 2 was written for a release that could not be completed.
        assert!(!dir.path().join("repo/metadata/2.targets.json").exists());
        // A root rotation needs the offline keys.
        let e = repo
            .rotate(
                &dir.path().join("nowhere"),
                Some("targets"),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(matches!(e, RepoError::NotEnoughKeys { .. }), "{e}");
        assert!(
            Repository::new(&dir.path().join("none"), &dir.path().join("keys"))
                .published()
                .is_err()
        );
        assert!(matches!(
            repo.init(&offline, 1, 2, SystemTime::now()),
            Err(RepoError::Usage(_))
        ));
    }

    #[test]
    fn key_files_say_their_role_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::generate("targets", dir.path()).unwrap();
        let again = SigningKey::load(&k.path).unwrap();
        assert_eq!(
            (again.role.as_str(), again.keyid.clone()),
            ("targets", k.keyid.clone())
        );
        assert_eq!(k.keyid.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let junk = dir.path().join("junk.key");
        std::fs::write(&junk, "teledge-fleet-role: root\nnot pem\n").unwrap();
        assert!(SigningKey::load(&junk).is_err());
        std::fs::write(
            &junk,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(SigningKey::load(&junk).is_err());
        // The key id is python-tuf's: SHA-256 of the canonical key object.
        let expected = hex::encode(Sha256::digest(
            format!(
                "{{\"keytype\":\"ed25519\",\"keyval\":{{\"public\":\"{}\"}},\"scheme\":\"ed25519\"}}",
                k.public_hex
            )
            .as_bytes(),
        ));
        assert_eq!(k.keyid, expected);
    }
}
