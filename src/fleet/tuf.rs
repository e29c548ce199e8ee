//! The client side of The Update Framework (specification 1.0.34, "detailed client
//! workflow") for the four top-level roles: root, timestamp, snapshot and targets, ed25519
//! keys, thresholds, expiry, versions that never go back, root rotation, consistent
//! snapshots. Delegated targets roles are not followed: teledge's repository signs every
//! target with the top-level targets role, and a delegation in `targets.json` is ignored
//! (nothing is trusted through it).
//!
//! Why not a crate: `tough` (the maintained Rust client) depends on aws-lc-rs without an
//! option to use ring, and teledge builds with rustls/ring only; `tuf` (rust-tuf) is a beta
//! that is hardly maintained and pulls hyper 0.14. This module uses ring's ed25519 (already
//! linked for TLS) and [`super::canonical`].
//!
//! # What the client promises
//!
//! - One time `T` per refresh: the later of the wall clock and the latest time a previous
//!   refresh saw (kept in the store), so a clock set back cannot revive expired metadata.
//! - Root: `N+1.root.json` is fetched until not found (at most [`Limits::max_root_rotations`]);
//!   each must be signed by a threshold of the trusted root's root keys *and* of its own,
//!   carry version exactly N+1, and is stored before the next; the final root must not be
//!   expired at `T`. When the timestamp or snapshot keys changed, the stored timestamp and
//!   snapshot are forgotten (fast-forward recovery).
//! - Timestamp: a threshold of timestamp keys; a version below the stored one is a rollback;
//!   the snapshot version it names must not go below the stored one; not expired.
//! - Snapshot: length bounded by the timestamp's (or [`Limits::snapshot_bytes`]), hashes
//!   equal to the timestamp's, then signatures, version equal to the timestamp's
//!   (mix-and-match), no targets file's version lower than stored or gone; not expired.
//! - Targets: the same against the snapshot's entry; not expired.
//! - A target file: at most its signed `length` bytes are read (the transport stops there:
//!   endless data), then every known hash (sha256, sha512) must match; it lands under its
//!   final name only after that.
//! - Only distinct *public keys* count towards a threshold (two key ids for one key count
//!   once); a threshold below 1 is refused.
//!
//! Every refusal is a [`TufError`] whose [`TufError::reason`] is a short stable code (it is
//! the `reason` of the `teledge.update/1` record) and whose message says what and why.
//!
//! # The trusted store
//!
//! A directory holding every root after the shipped one (`N.root.json`), the last trusted
//! `timestamp.json`, `snapshot.json`, `targets.json` (the bytes as fetched, each written to a
//! temporary file, synced and renamed) and `latest_time`. Stored files are verified again on
//! load, the roots as a chain from the shipped root (so the store's owner cannot plant a
//! root); a role file that no longer verifies (keys rotated) is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use super::canonical;

/// Size and count bounds of a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub root_bytes: u64,
    pub timestamp_bytes: u64,
    /// Used when the timestamp does not state the snapshot's length.
    pub snapshot_bytes: u64,
    /// Used when the snapshot does not state the targets file's length.
    pub targets_bytes: u64,
    pub max_root_rotations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            root_bytes: 512 << 10,
            timestamp_bytes: 16 << 10,
            snapshot_bytes: 2 << 20,
            targets_bytes: 8 << 20,
            max_root_rotations: 256,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("not found")]
    NotFound,
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Other(String),
}

/// Where repository files come from: `path` is relative to the repository (`metadata/…`,
/// `targets/…`). An implementation must stop reading once more than `limit` bytes came
/// (and answer [`TransportError::TooLarge`]), so nothing unbounded is ever held or written.
#[allow(async_fn_in_trait)]
pub trait Transport {
    async fn fetch(
        &self,
        path: &str,
        limit: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64, TransportError>;
}

/// Why the repository's metadata or a target was refused.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error("{file}: {source}")]
    Fetch {
        file: String,
        source: TransportError,
    },
    #[error("{file}: malformed: {message}")]
    Malformed { file: String, message: String },
    #[error("{file}: {valid} valid signature(s) of the {role} role, threshold {threshold}")]
    Threshold {
        file: String,
        role: String,
        valid: usize,
        threshold: u64,
    },
    #[error("{file}: expired at {expires} (now {now})")]
    Expired {
        file: String,
        expires: String,
        now: String,
    },
    #[error("{file}: version {got} is below the trusted version {trusted} (rollback)")]
    Rollback {
        file: String,
        got: u64,
        trusted: u64,
    },
    #[error("{file}: version {got}, but {by} says {expected} (mix-and-match)")]
    VersionMismatch {
        file: String,
        got: u64,
        expected: u64,
        by: String,
    },
    #[error("{file}: {algorithm} hash mismatch")]
    HashMismatch { file: String, algorithm: String },
    #[error("{file}: {got} bytes, {expected} declared")]
    LengthMismatch {
        file: String,
        got: u64,
        expected: u64,
    },
    #[error("{file}: more than the {limit} bytes declared (endless data)")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: no hash this client knows (sha256, sha512)")]
    NoKnownHash { file: String },
    #[error("trusted store {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl TufError {
    /// A short stable code for records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            TufError::Fetch {
                source: TransportError::TooLarge { .. },
                ..
            }
            | TufError::TooLarge { .. } => "too_large",
            TufError::Fetch {
                source: TransportError::NotFound,
                ..
            } => "not_found",
            TufError::Fetch { .. } => "unreachable",
            TufError::Malformed { .. } => "malformed",
            TufError::Threshold { .. } => "signature_threshold",
            TufError::Expired { .. } => "expired",
            TufError::Rollback { .. } => "version_rollback",
            TufError::VersionMismatch { .. } => "mix_and_match",
            TufError::HashMismatch { .. } | TufError::NoKnownHash { .. } => "hash_mismatch",
            TufError::LengthMismatch { .. } => "length_mismatch",
            TufError::Store { .. } => "store",
        }
    }
}

fn malformed(file: &str, message: impl ToString) -> TufError {
    TufError::Malformed {
        file: file.to_owned(),
        message: message.to_string(),
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Envelope {
    signed: Value,
    signatures: Vec<Signature>,
}

#[derive(Debug, Clone, Deserialize)]
struct Signature {
    keyid: String,
    sig: String,
}

/// A public key as TUF writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Key {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KeyVal {
    pub public: String,
}

/// The keys and threshold of a role.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u64,
}

/// Fields every role carries.
#[derive(Debug, Clone, Deserialize)]
struct Common {
    #[serde(rename = "_type")]
    kind: String,
    version: u64,
    expires: String,
}

/// `root.json`'s signed part.
#[derive(Debug, Clone, Deserialize)]
pub struct Root {
    pub version: u64,
    pub expires: String,
    #[serde(default)]
    pub consistent_snapshot: bool,
    pub keys: BTreeMap<String, Key>,
    pub roles: BTreeMap<String, RoleKeys>,
}

/// A file's version (and optionally length and hashes) as the timestamp or snapshot pins it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MetaFile {
    pub version: u64,
    pub length: Option<u64>,
    pub hashes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct MetaRole {
    version: u64,
    meta: BTreeMap<String, MetaFile>,
}

/// One signed target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TargetFile {
    pub length: u64,
    pub hashes: BTreeMap<String, String>,
    #[serde(default)]
    pub custom: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
struct TargetsRole {
    version: u64,
    #[serde(default)]
    targets: BTreeMap<String, TargetFile>,
}

/// A verified metadata file: its parsed content and its bytes (kept to persist them).
#[derive(Debug, Clone)]
struct Verified<T> {
    value: T,
    bytes: Vec<u8>,
}

/// What a refresh established: the trusted targets and the versions it stands on.
#[derive(Debug, Clone)]
pub struct Trusted {
    pub root_version: u64,
    pub timestamp_version: u64,
    pub snapshot_version: u64,
    pub targets_version: u64,
    pub consistent_snapshot: bool,
    pub targets: BTreeMap<String, TargetFile>,
    /// Whether this refresh found new metadata (a new timestamp).
    pub changed: bool,
}

/// The time as TUF writes it (`2030-01-01T00:00:00Z`).
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn parse_time(file: &str, s: &str) -> Result<SystemTime, TufError> {
    humantime::parse_rfc3339(s).map_err(|e| malformed(file, format!("expires {s:?}: {e}")))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses an envelope and checks its `_type`; returns it with the canonical bytes signed.
fn open(file: &str, bytes: &[u8], kind: &str) -> Result<(Envelope, Common, Vec<u8>), TufError> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| malformed(file, e))?;
    let common: Common =
        serde_json::from_value(envelope.signed.clone()).map_err(|e| malformed(file, e))?;
    if common.kind != kind {
        return Err(malformed(
            file,
            format!("_type {:?}, expected {kind:?}", common.kind),
        ));
    }
    let signed = canonical::encode(&envelope.signed).map_err(|e| malformed(file, e))?;
    Ok((envelope, common, signed))
}

/// Checks that a threshold of `role`'s keys in `root` signed `signed`.
fn check_threshold(
    file: &str,
    role: &str,
    root: &Root,
    envelope: &Envelope,
    signed: &[u8],
) -> Result<(), TufError> {
    let Some(keys) = root.roles.get(role) else {
        return Err(malformed(file, format!("root has no {role} role")));
    };
    let mut valid: BTreeSet<Vec<u8>> = BTreeSet::new();
    for signature in &envelope.signatures {
        if !keys.keyids.contains(&signature.keyid) {
            continue;
        }
        let Some(key) = root.keys.get(&signature.keyid) else {
            continue;
        };
        if key.keytype != "ed25519" || key.scheme != "ed25519" {
            continue;
        }
        let (Some(public), Some(sig)) = (unhex(&key.keyval.public), unhex(&signature.sig)) else {
            continue;
        };
        let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public);
        if verifier.verify(signed, &sig).is_ok() {
            // Distinct keys, not key ids: one key listed twice must not count twice.
            valid.insert(public);
        }
    }
    if keys.threshold < 1 || (valid.len() as u64) < keys.threshold {
        return Err(TufError::Threshold {
            file: file.to_owned(),
            role: role.to_owned(),
            valid: valid.len(),
            threshold: keys.threshold,
        });
    }
    Ok(())
}

fn check_expiry(file: &str, expires: &str, now: SystemTime) -> Result<(), TufError> {
    let at = parse_time(file, expires)?;
    if at <= now {
        return Err(TufError::Expired {
            file: file.to_owned(),
            expires: expires.to_owned(),
            now: format_time(now),
        });
    }
    Ok(())
}

/// Checks `bytes` against a length and hashes; at least one hash must be one we know.
pub fn check_hashes(
    file: &str,
    bytes_len: u64,
    length: Option<u64>,
    hashes: &BTreeMap<String, String>,
    digests: &Digests,
) -> Result<(), TufError> {
    if let Some(expected) = length {
        if bytes_len != expected {
            return Err(TufError::LengthMismatch {
                file: file.to_owned(),
                got: bytes_len,
                expected,
            });
        }
    }
    let mut known = 0;
    for (algorithm, expected) in hashes {
        let got = match algorithm.as_str() {
            "sha256" => &digests.sha256,
            "sha512" => &digests.sha512,
            _ => continue,
        };
        known += 1;
        if !got.eq_ignore_ascii_case(expected) {
            return Err(TufError::HashMismatch {
                file: file.to_owned(),
                algorithm: algorithm.clone(),
            });
        }
    }
    if known == 0 {
        return Err(TufError::NoKnownHash {
            file: file.to_owned(),
        });
    }
    Ok(())
}

/// SHA-256 and SHA-512 of some bytes, as lower-case hex.
#[derive(Debug, Clone)]
pub struct Digests {
    pub sha256: String,
    pub sha512: String,
}

impl Digests {
    pub fn of(bytes: &[u8]) -> Self {
        Digests {
            sha256: hex::encode(Sha256::digest(bytes)),
            sha512: hex::encode(Sha512::digest(bytes)),
        }
    }
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    sha256: Sha256,
    sha512: Sha512,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Verifies a target file already on disk against its signed entry (the installer's check).
pub fn verify_file(name: &str, path: &Path, target: &TargetFile) -> Result<(), TufError> {
    let mut file = std::fs::File::open(path).map_err(|source| TufError::Store {
        path: path.to_owned(),
        source,
    })?;
    let mut hashing = Hashing {
        inner: std::io::sink(),
        sha256: Sha256::new(),
        sha512: Sha512::new(),
        written: 0,
    };
    // At most one byte beyond the declared length is read.
    std::io::copy(
        &mut std::io::Read::take(&mut file, target.length + 1),
        &mut hashing,
    )
    .map_err(|source| TufError::Store {
        path: path.to_owned(),
        source,
    })?;
    let digests = Digests {
        sha256: hex::encode(hashing.sha256.finalize()),
        sha512: hex::encode(hashing.sha512.finalize()),
    };
    check_hashes(
        name,
        hashing.written,
        Some(target.length),
        &target.hashes,
        &digests,
    )
}

/// The client: a trusted store, the shipped root, a transport.
#[derive(Debug)]
pub struct Client<T> {
    store: PathBuf,
    shipped_root: Vec<u8>,
    transport: T,
    pub limits: Limits,
}

const ROOT: &str = "root.json";
const TIMESTAMP: &str = "timestamp.json";
const SNAPSHOT: &str = "snapshot.json";
const TARGETS: &str = "targets.json";
const LATEST_TIME: &str = "latest_time";

/// What the store held, verified against the trusted root.
struct Stored {
    root: Verified<Root>,
    timestamp: Option<Verified<MetaRole>>,
    snapshot: Option<Verified<MetaRole>>,
    targets: Option<Verified<TargetsRole>>,
}

impl<T: Transport> Client<T> {
    pub fn new(store: &Path, shipped_root: Vec<u8>, transport: T) -> Self {
        Client {
            store: store.to_owned(),
            shipped_root,
            transport,
            limits: Limits::default(),
        }
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn store_error(&self, name: &str) -> impl Fn(std::io::Error) -> TufError {
        let path = self.store.join(name);
        move |source| TufError::Store {
            path: path.clone(),
            source,
        }
    }

    fn persist(&self, name: &str, bytes: &[u8]) -> Result<(), TufError> {
        write_atomic(&self.store.join(name), bytes).map_err(self.store_error(name))
    }

    fn forget(&self, name: &str) -> Result<(), TufError> {
        match std::fs::remove_file(self.store.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.store_error(name)(e)),
        }
    }

    fn read_stored(&self, name: &str) -> Result<Option<Vec<u8>>, TufError> {
        match std::fs::read(self.store.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.store_error(name)(e)),
        }
    }

    /// The time of this refresh: the later of `now` and the latest time seen before.
    fn fix_time(&self, now: SystemTime) -> Result<SystemTime, TufError> {
        std::fs::create_dir_all(&self.store).map_err(self.store_error(""))?;
        let latest = self
            .read_stored(LATEST_TIME)?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        let t = match latest {
            Some(latest) if latest > now => latest,
            _ => now,
        };
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.persist(LATEST_TIME, secs.to_string().as_bytes())?;
        Ok(t)
    }

    /// Loads the trusted store, verified again: the root chain from the *shipped* root
    /// through every stored `N.root.json` (each signed by a threshold of the previous root's
    /// keys and of its own, versions consecutive), so a root written into the store by
    /// someone else than this client is never trusted; then the other roles against it.
    fn load(&self) -> Result<Stored, TufError> {
        std::fs::create_dir_all(&self.store).map_err(self.store_error(""))?;
        let mut root = verify_root_self(ROOT, &self.shipped_root)?;
        for _ in 0..self.limits.max_root_rotations {
            let next = root.value.version + 1;
            let name = format!("{next}.{ROOT}");
            let Some(bytes) = self.read_stored(&name)? else {
                break;
            };
            root = next_root(&name, &root.value, bytes, next)?;
        }
        let timestamp = self
            .read_stored(TIMESTAMP)?
            .and_then(|b| verify_meta(TIMESTAMP, "timestamp", &root.value, &b).ok());
        let snapshot = self
            .read_stored(SNAPSHOT)?
            .and_then(|b| verify_meta(SNAPSHOT, "snapshot", &root.value, &b).ok());
        let targets = self
            .read_stored(TARGETS)?
            .and_then(|b| verify_targets(TARGETS, &root.value, &b).ok());
        Ok(Stored {
            root,
            timestamp,
            snapshot,
            targets,
        })
    }

    /// The trusted targets as the store holds them, without the network (the installer's
    /// view): every file verified again against the trusted root, the versions chained
    /// (timestamp → snapshot → targets), nothing expired at `now`.
    pub fn offline(&self, now: SystemTime) -> Result<Trusted, TufError> {
        let stored = self.load()?;
        let missing = |f: &str| malformed(f, "not in the trusted store");
        let timestamp = stored.timestamp.ok_or_else(|| missing(TIMESTAMP))?;
        let snapshot = stored.snapshot.ok_or_else(|| missing(SNAPSHOT))?;
        let targets = stored.targets.ok_or_else(|| missing(TARGETS))?;
        let pinned = timestamp
            .value
            .meta
            .get(SNAPSHOT)
            .ok_or_else(|| malformed(TIMESTAMP, "no snapshot.json in meta"))?;
        expect_version(SNAPSHOT, snapshot.value.version, pinned.version, TIMESTAMP)?;
        let pinned = snapshot
            .value
            .meta
            .get(TARGETS)
            .ok_or_else(|| malformed(SNAPSHOT, "no targets.json in meta"))?;
        expect_version(TARGETS, targets.value.version, pinned.version, SNAPSHOT)?;
        check_expiry(ROOT, &stored.root.value.expires, now)?;
        for (file, bytes) in [
            (TIMESTAMP, &timestamp.bytes),
            (SNAPSHOT, &snapshot.bytes),
            (TARGETS, &targets.bytes),
        ] {
            let common: Common = serde_json::from_slice::<Envelope>(bytes)
                .ok()
                .and_then(|e| serde_json::from_value(e.signed).ok())
                .ok_or_else(|| malformed(file, "unreadable"))?;
            check_expiry(file, &common.expires, now)?;
        }
        Ok(Trusted {
            root_version: stored.root.value.version,
            timestamp_version: timestamp.value.version,
            snapshot_version: snapshot.value.version,
            targets_version: targets.value.version,
            consistent_snapshot: stored.root.value.consistent_snapshot,
            targets: targets.value.targets,
            changed: false,
        })
    }

    async fn fetch(&self, path: &str, limit: u64) -> Result<Vec<u8>, TufError> {
        let mut out = Vec::new();
        self.transport
            .fetch(path, limit, &mut out)
            .await
            .map_err(|source| TufError::Fetch {
                file: path.to_owned(),
                source,
            })?;
        if out.len() as u64 > limit {
            return Err(TufError::TooLarge {
                file: path.to_owned(),
                limit,
            });
        }
        Ok(out)
    }

    /// One refresh of the client workflow (module doc); the trusted targets on success.
    pub async fn refresh(&self, now: SystemTime) -> Result<Trusted, TufError> {
        let now = self.fix_time(now)?;
        let stored = self.load()?;
        let first_root = stored.root.value.clone();
        // Root rotation.
        let mut root = stored.root;
        for _ in 0..self.limits.max_root_rotations {
            let next = root.value.version + 1;
            let name = format!("metadata/{next}.root.json");
            let bytes = match self.fetch(&name, self.limits.root_bytes).await {
                Ok(b) => b,
                Err(TufError::Fetch {
                    source: TransportError::NotFound,
                    ..
                }) => break,
                Err(e) => return Err(e),
            };
            root = next_root(&name, &root.value, bytes, next)?;
            self.persist(&format!("{next}.{ROOT}"), &root.bytes)?;
        }
        check_expiry(ROOT, &root.value.expires, now)?;
        let (mut stored_timestamp, mut stored_snapshot, stored_targets) =
            (stored.timestamp, stored.snapshot, stored.targets);
        let rotated = |role: &str| first_root.roles.get(role) != root.value.roles.get(role);
        if rotated("timestamp") || rotated("snapshot") {
            // Fast-forward recovery: versions signed by the old keys no longer bind us.
            self.forget(TIMESTAMP)?;
            self.forget(SNAPSHOT)?;
            stored_timestamp = None;
            stored_snapshot = None;
        }
        let root = root.value;

        // Timestamp.
        let name = format!("metadata/{TIMESTAMP}");
        let bytes = self.fetch(&name, self.limits.timestamp_bytes).await?;
        let timestamp = verify_meta(&name, "timestamp", &root, &bytes)?;
        let snapshot_pin = timestamp
            .value
            .meta
            .get(SNAPSHOT)
            .cloned()
            .ok_or_else(|| malformed(&name, "no snapshot.json in meta"))?;
        let mut changed = true;
        if let Some(trusted) = &stored_timestamp {
            if timestamp.value.version < trusted.value.version {
                return Err(TufError::Rollback {
                    file: name,
                    got: timestamp.value.version,
                    trusted: trusted.value.version,
                });
            }
            if timestamp.value.version == trusted.value.version {
                changed = false;
            }
            if let Some(old) = trusted.value.meta.get(SNAPSHOT) {
                if snapshot_pin.version < old.version {
                    return Err(TufError::Rollback {
                        file: format!("{name} (snapshot.json)"),
                        got: snapshot_pin.version,
                        trusted: old.version,
                    });
                }
            }
        }
        // An equal version is nothing new: the trusted file stays (its bytes included).
        let timestamp = match stored_timestamp {
            Some(trusted) if !changed => trusted,
            _ => timestamp,
        };
        check_expiry(&name, &expires_of(&timestamp.bytes), now)?;
        self.persist(TIMESTAMP, &timestamp.bytes)?;

        // Snapshot.
        let snapshot = match stored_snapshot.take() {
            Some(s) if s.value.version == snapshot_pin.version => s,
            old => {
                let name = meta_path(SNAPSHOT, &snapshot_pin, root.consistent_snapshot);
                let limit = snapshot_pin.length.unwrap_or(self.limits.snapshot_bytes);
                let bytes = self.fetch(&name, limit).await?;
                check_pin(&name, &bytes, &snapshot_pin)?;
                let new = verify_meta(&name, "snapshot", &root, &bytes)?;
                expect_version(&name, new.value.version, snapshot_pin.version, TIMESTAMP)?;
                if let Some(old) = old {
                    for (file, meta) in &old.value.meta {
                        match new.value.meta.get(file) {
                            None => {
                                return Err(malformed(
                                    &name,
                                    format!("{file} vanished from the snapshot (rollback)"),
                                ))
                            }
                            Some(m) if m.version < meta.version => {
                                return Err(TufError::Rollback {
                                    file: format!("{name} ({file})"),
                                    got: m.version,
                                    trusted: meta.version,
                                })
                            }
                            Some(_) => {}
                        }
                    }
                }
                new
            }
        };
        check_expiry(SNAPSHOT, &expires_of(&snapshot.bytes), now)?;
        self.persist(SNAPSHOT, &snapshot.bytes)?;

        // Targets.
        let targets_pin = snapshot
            .value
            .meta
            .get(TARGETS)
            .cloned()
            .ok_or_else(|| malformed(SNAPSHOT, "no targets.json in meta"))?;
        let targets = match stored_targets {
            Some(t) if t.value.version == targets_pin.version => t,
            _ => {
                let name = meta_path(TARGETS, &targets_pin, root.consistent_snapshot);
                let limit = targets_pin.length.unwrap_or(self.limits.targets_bytes);
                let bytes = self.fetch(&name, limit).await?;
                check_pin(&name, &bytes, &targets_pin)?;
                let new = verify_targets(&name, &root, &bytes)?;
                expect_version(&name, new.value.version, targets_pin.version, SNAPSHOT)?;
                new
            }
        };
        check_expiry(TARGETS, &expires_of(&targets.bytes), now)?;
        self.persist(TARGETS, &targets.bytes)?;
        Ok(Trusted {
            root_version: root.version,
            timestamp_version: timestamp.value.version,
            snapshot_version: snapshot.value.version,
            targets_version: targets.value.version,
            consistent_snapshot: root.consistent_snapshot,
            targets: targets.value.targets,
            changed,
        })
    }

    /// Downloads a trusted target to `dest`: at most its signed length is read, the hashes
    /// are checked, and only then is the file renamed to `dest` (a partial or tampered
    /// download never has the final name).
    pub async fn download(
        &self,
        trusted: &Trusted,
        name: &str,
        target: &TargetFile,
        dest: &Path,
    ) -> Result<(), TufError> {
        let remote = if trusted.consistent_snapshot {
            let hash = target
                .hashes
                .get("sha256")
                .or_else(|| target.hashes.values().next())
                .ok_or_else(|| TufError::NoKnownHash {
                    file: name.to_owned(),
                })?;
            match name.rsplit_once('/') {
                Some((dir, base)) => format!("targets/{dir}/{hash}.{base}"),
                None => format!("targets/{hash}.{name}"),
            }
        } else {
            format!("targets/{name}")
        };
        let part = dest.with_extension("part");
        let io = |source| TufError::Store {
            path: part.clone(),
            source,
        };
        let file = std::fs::File::create(&part).map_err(io)?;
        let mut hashing = Hashing {
            inner: std::io::BufWriter::new(file),
            sha256: Sha256::new(),
            sha512: Sha512::new(),
            written: 0,
        };
        let fetched = self
            .transport
            .fetch(&remote, target.length, &mut hashing)
            .await;
        let result = (|| {
            match fetched {
                Err(TransportError::TooLarge { limit }) => {
                    return Err(TufError::TooLarge {
                        file: name.to_owned(),
                        limit,
                    })
                }
                Err(source) => {
                    return Err(TufError::Fetch {
                        file: remote.clone(),
                        source,
                    })
                }
                Ok(_) => {}
            }
            if hashing.written > target.length {
                return Err(TufError::TooLarge {
                    file: name.to_owned(),
                    limit: target.length,
                });
            }
            hashing.flush().map_err(io)?;
            let digests = Digests {
                sha256: hex::encode(hashing.sha256.clone().finalize()),
                sha512: hex::encode(hashing.sha512.clone().finalize()),
            };
            check_hashes(
                name,
                hashing.written,
                Some(target.length),
                &target.hashes,
                &digests,
            )?;
            hashing.inner.get_ref().sync_all().map_err(io)?;
            std::fs::rename(&part, dest).map_err(io)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }
}

fn expires_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<Envelope>(bytes)
        .ok()
        .and_then(|e| serde_json::from_value::<Common>(e.signed).ok())
        .map(|c| c.expires)
        .unwrap_or_default()
}

fn expect_version(file: &str, got: u64, expected: u64, by: &str) -> Result<(), TufError> {
    if got != expected {
        return Err(TufError::VersionMismatch {
            file: file.to_owned(),
            got,
            expected,
            by: by.to_owned(),
        });
    }
    Ok(())
}

/// Where a metadata file pinned by the role above it is fetched from: by version when the
/// repository uses consistent snapshots (TUF 5.6), else by its plain name.
fn meta_path(file: &str, pin: &MetaFile, consistent_snapshot: bool) -> String {
    if consistent_snapshot {
        format!("metadata/{}.{file}", pin.version)
    } else {
        format!("metadata/{file}")
    }
}

fn check_pin(file: &str, bytes: &[u8], pin: &MetaFile) -> Result<(), TufError> {
    if let Some(hashes) = &pin.hashes {
        check_hashes(
            file,
            bytes.len() as u64,
            pin.length,
            hashes,
            &Digests::of(bytes),
        )?;
    } else if let Some(length) = pin.length {
        if bytes.len() as u64 != length {
            return Err(TufError::LengthMismatch {
                file: file.to_owned(),
                got: bytes.len() as u64,
                expected: length,
            });
        }
    }
    Ok(())
}

/// Parses and verifies one metadata file of `role` (`root`, `timestamp`, `snapshot`,
/// `targets`) against a root that must verify itself; its version. Pure (no I/O, no
/// clock): what a repository's bytes meet first, and the fuzz target `tuf_metadata`.
pub fn verify_with_root(root: &[u8], role: &str, bytes: &[u8]) -> Result<u64, TufError> {
    let root = verify_root_self(ROOT, root)?;
    match role {
        "root" => {
            let (envelope, common, signed) = open(role, bytes, "root")?;
            check_threshold(role, "root", &root.value, &envelope, &signed)?;
            Ok(common.version)
        }
        "targets" => Ok(verify_targets(role, &root.value, bytes)?.value.version),
        _ => Ok(verify_meta(role, role, &root.value, bytes)?.value.version),
    }
}

/// The root after `trusted`: signed by a threshold of `trusted`'s root keys and of its own,
/// version exactly `next`.
fn next_root(
    name: &str,
    trusted: &Root,
    bytes: Vec<u8>,
    next: u64,
) -> Result<Verified<Root>, TufError> {
    let (envelope, common, signed) = open(name, &bytes, "root")?;
    let new: Root =
        serde_json::from_value(envelope.signed.clone()).map_err(|e| malformed(name, e))?;
    check_threshold(name, "root", trusted, &envelope, &signed)?;
    check_threshold(name, "root", &new, &envelope, &signed)?;
    if common.version != next {
        return Err(TufError::VersionMismatch {
            file: name.to_owned(),
            got: common.version,
            expected: next,
            by: "the trusted root".into(),
        });
    }
    Ok(Verified { value: new, bytes })
}

fn verify_root_self(file: &str, bytes: &[u8]) -> Result<Verified<Root>, TufError> {
    let (envelope, _, signed) = open(file, bytes, "root")?;
    let root: Root =
        serde_json::from_value(envelope.signed.clone()).map_err(|e| malformed(file, e))?;
    check_threshold(file, "root", &root, &envelope, &signed)?;
    Ok(Verified {
        value: root,
        bytes: bytes.to_vec(),
    })
}

fn verify_meta(
    file: &str,
    role: &str,
    root: &Root,
    bytes: &[u8],
) -> Result<Verified<MetaRole>, TufError> {
    let (envelope, _, signed) = open(file, bytes, role)?;
    check_threshold(file, role, root, &envelope, &signed)?;
    let value: MetaRole =
        serde_json::from_value(envelope.signed).map_err(|e| malformed(file, e))?;
    Ok(Verified {
        value,
        bytes: bytes.to_vec(),
    })
}

fn verify_targets(
    file: &str,
    root: &Root,
    bytes: &[u8],
) -> Result<Verified<TargetsRole>, TufError> {
    let (envelope, _, signed) = open(file, bytes, "targets")?;
    check_threshold(file, "targets", root, &envelope, &signed)?;
    let value: TargetsRole =
        serde_json::from_value(envelope.signed).map_err(|e| malformed(file, e))?;
    Ok(Verified {
        value,
        bytes: bytes.to_vec(),
    })
}

/// Writes a file durably ([`crate::durable::replace`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::replace(path, bytes, crate::durable::Mode::Default)
}

/// A repository in a local directory (`DIR/metadata`, `DIR/targets`): the collector's side
/// reads files this way, and tests use it as a transport.
#[derive(Debug, Clone)]
pub struct DirTransport(pub PathBuf);

impl Transport for DirTransport {
    async fn fetch(
        &self,
        path: &str,
        limit: u64,
        out: &mut (dyn Write + Send),
    ) -> Result<u64, TransportError> {
        let file = repository_path(&self.0, path).ok_or(TransportError::NotFound)?;
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TransportError::NotFound)
            }
            Err(e) => return Err(TransportError::Other(e.to_string())),
        };
        let n = std::io::copy(&mut std::io::Read::take(f, limit + 1), out)
            .map_err(|e| TransportError::Other(e.to_string()))?;
        if n > limit {
            return Err(TransportError::TooLarge { limit });
        }
        Ok(n)
    }
}

/// The file a repository path names under `base`, if the path is one a repository may hold:
/// `metadata/…` or `targets/…`, components of `[A-Za-z0-9._+~-]`, none `.`/`..` or empty.
pub fn repository_path(base: &Path, path: &str) -> Option<PathBuf> {
    let mut parts = path.split('/');
    let top = parts.next()?;
    if top != "metadata" && top != "targets" {
        return None;
    }
    let mut out = base.join(top);
    let mut any = false;
    for part in parts {
        if part.is_empty()
            || part == "."
            || part == ".."
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'~'))
        {
            return None;
        }
        out.push(part);
        any = true;
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn repository_paths_stay_inside_the_repository() {
        let base = Path::new("/r");
        assert_eq!(
            repository_path(base, "metadata/1.root.json"),
            Some(PathBuf::from("/r/metadata/1.root.json"))
        );
        assert!(repository_path(base, "targets/a/b.deb").is_some());
        for bad in [
            "../etc/passwd",
            "metadata/../x",
            "metadata/",
            "metadata",
            "other/x",
            "targets//x",
            "targets/a b",
            "/metadata/x",
        ] {
            assert_eq!(repository_path(base, bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_round_trip_and_odd_lengths_refused() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(hex::encode([0, 255]), "00ff");
    }
}
