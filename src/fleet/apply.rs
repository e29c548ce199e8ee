//! The privileged side of fleet updates: `teledge update-apply`, run as root by
//! `teledge-update.service` when `teledge-update.path` sees `handoff/request.json`. It is a
//! separate unit, not a child of the daemon, because restarting the daemon kills the
//! daemon's whole control group (and the daemon itself may not write `/usr` nor `/etc`).
//!
//! 1. The request (a regular file, never followed through a link) is removed from the
//!    hand-off directory, and it and its files are copied into the installer's own staging
//!    directory (root only, `--staging`, `/var/lib/teledge-update`), where the staged request
//!    is kept as `applying.json` (a power cut from here on is found at the next run: the
//!    previous version is put back, `rolled_back`, `interrupted`). Nothing the daemon's
//!    user can still change is used after this. `handoff/request.applying.json` tells the
//!    agent (restarted during the probation) that an update is under way.
//! 2. The staged files are verified, offline, against the agent's trusted TUF store from
//!    the *shipped* root (root chain, signatures, the version chain, expiry); their length
//!    and hashes must be those of the signed target they name. A file that is no signed
//!    target is `refused` (`not_signed`); nothing else is trusted from the daemon's user.
//! 3. **Package**: newer than the installed version (`target_rollback` otherwise), its
//!    control fields again (package, version, architecture), then the
//!    install command (`dpkg -i`), `installed`, the restart command, then the probation.
//!    **Configuration**: validated as `check-config` does, `[node] id` and the whole
//!    `[fleet]` section must be unchanged (a pushed configuration cannot cut a node off the
//!    fleet nor change what runs as root); the running file is kept as
//!    `<file>.fleet-previous`, the new one written in its place with the same mode and
//!    owner, `installed`; then a reload (SIGHUP) when every changed section applies at once
//!    ([`crate::config::reload::ReloadPlan`]), else a restart; then the probation.
//! 4. Probation: `/health` must answer 200 within `start_timeout_s` (READY: for a
//!    `Type=notify` unit the restart command itself returns only once READY, or fails), and
//!    then at every check for `probation_s` (three failed checks in a row end it; a streak
//!    under way when the time is up is followed to its end). Passed:
//!    `healthy`. Failed: the previous package is installed again (or the previous file put
//!    back), the service restarted and checked again, `rolled_back` with the reason and
//!    whether the previous version is healthy; the agent never retries the failed version.
//! 5. The steps are appended to `handoff/outcomes.jsonl` (owned like the directory, so the
//!    daemon's user reads them; never written through a link) and the request is kept as
//!    `request.done.json`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use super::tuf::{verify_file, Client, DirTransport, Trusted};
use super::{read_json, FleetSettings, Request};
use crate::record::update::{UpdateKind, UpdateRecord, UpdateStep};

/// Why the installer could not run (its own files); refusals are records.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the installer needs besides `[fleet]`.
#[derive(Debug, Clone)]
pub struct Installer {
    pub settings: FleetSettings,
    /// The configuration file the service runs with (replaced by configuration updates).
    pub config_path: PathBuf,
    /// Where `/health` is served.
    pub health: SocketAddr,
    /// This node (for a record about a request that cannot be read).
    pub node: String,
    /// A root-only directory: the request and its files are copied here before anything is
    /// checked, so the daemon's user cannot swap them between the check and dpkg.
    pub staging: PathBuf,
}

/// Largest request file read.
const MAX_REQUEST: u64 = 64 << 10;

/// Opens a regular file for reading without following a symbolic link (and without
/// blocking on a FIFO): the hand-off directory belongs to the daemon's user.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Reads at most `limit` bytes of a regular file; `None` when it does not exist.
fn read_regular(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = match open_regular(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(Some(bytes))
}

/// Writes (or appends to) a file in the daemon's directory without following a symbolic
/// link, owned like the directory so the daemon's user can read it.
fn write_in_handoff(path: &Path, bytes: &[u8], append: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.create(true).custom_flags(libc::O_NOFOLLOW);
    if append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let mut file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(meta) = path.parent().and_then(|d| std::fs::metadata(d).ok()) {
        let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(())
}

/// One health check: the HTTP status of `GET /health`, or why there was none.
pub fn probe(addr: SocketAddr) -> Result<u16, String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))
}

/// READY and healthy within `start`, then healthy for `probation`.
pub fn probation(addr: SocketAddr, start: Duration, probation: Duration) -> Result<(), String> {
    let deadline = Instant::now() + start;
    let mut last;
    loop {
        last = probe(addr);
        if last == Ok(200) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not healthy within {start:?} (last check: {})",
                describe(&last)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = Instant::now() + probation;
    let mut failures = 0;
    // Until the time is up *and* the last check passed: a streak of failures at the end is
    // decided (three in a row fail it), not cut short.
    while Instant::now() < end || failures > 0 {
        std::thread::sleep(Duration::from_millis(300));
        let check = probe(addr);
        if check == Ok(200) {
            failures = 0;
        } else {
            failures += 1;
            if failures >= 3 {
                return Err(format!(
                    "unhealthy during probation (3 checks in a row; last: {})",
                    describe(&check)
                ));
            }
        }
    }
    Ok(())
}

fn describe(check: &Result<u16, String>) -> String {
    match check {
        Ok(status) => format!("/health answered {status}"),
        Err(e) => format!("/health: {e}"),
    }
}

/// Runs a command with extra arguments; `Err` says how it failed.
fn run(command: &[String], extra: &[&std::ffi::OsStr]) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("empty command".into());
    };
    let out = Command::new(program)
        .args(args)
        .args(extra)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .trim()
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{program} exited with {}: {tail}", out.status));
    }
    Ok(())
}

impl Installer {
    /// The request being applied, in the staging directory (root's own).
    fn applying_file(&self) -> PathBuf {
        self.staging.join("applying.json")
    }

    /// Tells the agent an update is under way (`handoff/request.applying.json`).
    fn marker_file(&self) -> PathBuf {
        self.settings.handoff_dir().join("request.applying.json")
    }

    fn done_file(&self) -> PathBuf {
        self.settings.handoff_dir().join("request.done.json")
    }

    fn record(&self, request: &Request, step: UpdateStep) -> UpdateRecord {
        let mut r = UpdateRecord::new(&request.node, request.kind, step);
        r.target = Some(request.target.clone());
        r.version = Some(request.version.clone());
        r.previous = request.previous.clone();
        r.targets_version = Some(request.targets_version);
        r
    }

    fn with_reason(mut r: UpdateRecord, reason: &str, detail: String) -> UpdateRecord {
        tracing::warn!(step = ?r.step, reason, %detail, "Update step.");
        r.reason = Some(reason.to_owned());
        r.detail = Some(detail);
        r
    }

    fn trusted(&self) -> Result<Trusted, (String, String)> {
        let root = std::fs::read(&self.settings.root_file).map_err(|e| {
            (
                "not_signed".to_owned(),
                format!("{}: {e}", self.settings.root_file.display()),
            )
        })?;
        // Offline: the transport is never used.
        Client::new(
            &self.settings.trusted_dir(),
            root,
            DirTransport(PathBuf::new()),
        )
        .offline(SystemTime::now())
        .map_err(|e| (e.reason().to_owned(), format!("trusted metadata: {e}")))
    }

    /// Checks that `file` is exactly the signed target `name`.
    fn signed(&self, trusted: &Trusted, name: &str, file: &Path) -> Result<(), (String, String)> {
        let target = trusted.targets.get(name).ok_or_else(|| {
            (
                "not_signed".to_owned(),
                format!("{name} is not a target of the trusted metadata"),
            )
        })?;
        verify_file(name, file, target).map_err(|e| ("not_signed".to_owned(), e.to_string()))
    }

    /// Handles the waiting request, if there is one; the steps it took.
    pub fn apply(&self) -> Result<Vec<UpdateRecord>, ApplyError> {
        let mut records = Vec::new();
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.staging)
                .map_err(io(&self.staging))?;
            std::fs::set_permissions(&self.staging, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&self.staging))?;
        }
        let applying = self.applying_file();
        if let Some(request) = read_json::<Request>(&applying).map_err(io(&applying))? {
            // A run that did not finish (a power cut): go back to what ran before.
            let mut r = self.record(&request, UpdateStep::RolledBack);
            r = Self::with_reason(
                r,
                "interrupted",
                "the installer did not finish; the previous version is put back".into(),
            );
            let back = self.go_back(&request);
            r.detail = Some(format!("{}; {back}", r.detail.unwrap_or_default()));
            self.finish(&request, std::slice::from_ref(&r))?;
            records.push(r);
        }
        let request_file = self.settings.request_file();
        let read = read_regular(&request_file, MAX_REQUEST);
        // Gone before anything else: the path unit must not start us again for it.
        let _ = std::fs::remove_file(&request_file);
        let request = match read {
            Ok(None) => return Ok(records),
            Ok(Some(bytes)) => serde_json::from_slice::<Request>(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let request = match request.and_then(|r| self.stage(r)) {
            Ok(r) => r,
            Err(detail) => {
                let mut r =
                    UpdateRecord::new(&self.node, UpdateKind::Metadata, UpdateStep::Refused);
                r = Self::with_reason(
                    r,
                    "malformed",
                    format!("{}: {detail}", request_file.display()),
                );
                let line = [serde_json::to_vec(&r).unwrap_or_default(), b"\n".to_vec()].concat();
                let outcomes = self.settings.outcomes_file();
                write_in_handoff(&outcomes, &line, true).map_err(io(&outcomes))?;
                records.push(r);
                return Ok(records);
            }
        };
        // The agent polls again when the service restarts: it must see that an update is
        // under way (and not offer this version again before its outcome is written).
        let marker = self.marker_file();
        write_in_handoff(
            &marker,
            &serde_json::to_vec(&request).unwrap_or_default(),
            false,
        )
        .map_err(io(&marker))?;
        let steps = self.handle(&request);
        self.finish(&request, &steps)?;
        records.extend(steps);
        Ok(records)
    }

    /// Copies the request's files into the staging directory (regular files only, never
    /// through a link, at most `max_target_bytes`) and records the staged request there.
    fn stage(&self, mut request: Request) -> Result<Request, String> {
        if request.node != self.node {
            return Err(format!(
                "request for node {:?}, this is {:?}",
                request.node, self.node
            ));
        }
        let copy = |from: &Path, name: &str| -> Result<PathBuf, String> {
            let to = self.staging.join(name);
            let mut source = open_regular(from).map_err(|e| format!("{}: {e}", from.display()))?;
            let mut dest =
                std::fs::File::create(&to).map_err(|e| format!("{}: {e}", to.display()))?;
            let limit = self.settings.max_target_bytes;
            let n = std::io::copy(&mut (&mut source).take(limit + 1), &mut dest)
                .map_err(|e| format!("{}: {e}", from.display()))?;
            if n > limit {
                return Err(format!("{}: larger than max_target_bytes", from.display()));
            }
            dest.sync_all()
                .map_err(|e| format!("{}: {e}", to.display()))?;
            Ok(to)
        };
        request.file = copy(&request.file, "new")?;
        if let Some(previous) = &request.previous_file {
            request.previous_file = Some(copy(previous, "previous")?);
        }
        let applying = self.applying_file();
        super::tuf::write_atomic(&applying, &serde_json::to_vec(&request).unwrap_or_default())
            .map_err(|e| format!("{}: {e}", applying.display()))?;
        Ok(request)
    }

    fn handle(&self, request: &Request) -> Vec<UpdateRecord> {
        let refused = |reason: &str, detail: String| {
            vec![Self::with_reason(
                self.record(request, UpdateStep::Refused),
                reason,
                detail,
            )]
        };
        let trusted = match self.trusted() {
            Ok(t) => t,
            Err((reason, detail)) => return refused(&reason, detail),
        };
        if let Err((reason, detail)) = self.signed(&trusted, &request.target, &request.file) {
            return refused(&reason, detail);
        }
        match request.kind {
            UpdateKind::Package => self.package(request, &trusted),
            UpdateKind::Config => self.config(request),
            UpdateKind::Metadata => {
                refused("malformed", "a metadata request installs nothing".into())
            }
        }
    }

    fn package(&self, request: &Request, trusted: &Trusted) -> Vec<UpdateRecord> {
        let refused = |reason: &str, detail: String| {
            vec![Self::with_reason(
                self.record(request, UpdateStep::Refused),
                reason,
                detail,
            )]
        };
        let (Some(previous_target), Some(previous_file)) =
            (&request.previous_target, &request.previous_file)
        else {
            return refused(
                "no_rollback_package",
                "the request names no package to go back to".into(),
            );
        };
        if let Err((_, detail)) = self.signed(trusted, previous_target, previous_file) {
            return refused("no_rollback_package", detail);
        }
        let installed = super::agent::installed_version(&self.settings.version_command);
        if super::select::compare_versions(&request.version, &installed)
            != std::cmp::Ordering::Greater
        {
            return refused(
                "target_rollback",
                format!(
                    "{} is not newer than the installed {installed}",
                    request.version
                ),
            );
        }
        match super::agent::deb_fields(&request.file) {
            Ok(fields) => {
                let arch = fields.get("Architecture").map(String::as_str).unwrap_or("");
                if arch != self.settings.arch && arch != "all" {
                    return refused(
                        "wrong_arch",
                        format!("architecture {arch:?}, this node is {}", self.settings.arch),
                    );
                }
                if fields.get("Package") != Some(&self.settings.package)
                    || fields.get("Version") != Some(&request.version)
                {
                    return refused(
                        "wrong_package",
                        format!(
                            "control fields {fields:?} are not {} {}",
                            self.settings.package, request.version
                        ),
                    );
                }
            }
            Err(detail) => return refused("not_a_package", detail),
        }
        let mut records = Vec::new();
        if let Err(detail) = run(&self.settings.install_command, &[request.file.as_os_str()]) {
            let mut r = Self::with_reason(
                self.record(request, UpdateStep::RolledBack),
                "install_failed",
                detail,
            );
            let back = self.go_back(request);
            r.detail = Some(format!("{}; {back}", r.detail.unwrap_or_default()));
            records.push(r);
            return records;
        }
        records.push(self.record(request, UpdateStep::Installed));
        records.push(self.restart_and_watch(request, &self.settings.restart_command));
        records
    }

    /// Restarts (or reloads), holds the probation; `healthy` or, after going back, `rolled_back`.
    fn restart_and_watch(&self, request: &Request, command: &[String]) -> UpdateRecord {
        let verdict = run(command, &[])
            .map_err(|e| format!("did not start: {e}"))
            .and_then(|()| {
                probation(
                    self.health,
                    self.settings.start_timeout,
                    self.settings.probation,
                )
            });
        match verdict {
            Ok(()) => {
                tracing::info!(version = %request.version, "Update healthy after probation.");
                self.record(request, UpdateStep::Healthy)
            }
            Err(detail) => {
                let mut r = Self::with_reason(
                    self.record(request, UpdateStep::RolledBack),
                    "unhealthy",
                    detail,
                );
                let back = self.go_back(request);
                r.detail = Some(format!("{}; {back}", r.detail.unwrap_or_default()));
                r
            }
        }
    }

    /// Puts the previous package or configuration back and restarts; says how that went.
    fn go_back(&self, request: &Request) -> String {
        let restored = match request.kind {
            UpdateKind::Package => match &request.previous_file {
                Some(file) => run(&self.settings.install_command, &[file.as_os_str()]),
                None => Err("no previous package".into()),
            },
            UpdateKind::Config => {
                let backup = previous_config(&self.config_path);
                std::fs::read(&backup)
                    .map_err(|e| format!("{}: {e}", backup.display()))
                    .and_then(|bytes| replace_file(&self.config_path, &bytes))
            }
            UpdateKind::Metadata => Ok(()),
        };
        let previous = request.previous.as_deref().unwrap_or("?");
        if let Err(e) = restored {
            return format!("putting {previous} back FAILED: {e}");
        }
        match run(&self.settings.restart_command, &[])
            .and_then(|()| probation(self.health, self.settings.start_timeout, Duration::ZERO))
        {
            Ok(()) => format!("back on {previous}, healthy"),
            Err(e) => format!("back on {previous}, but not healthy: {e}"),
        }
    }

    fn config(&self, request: &Request) -> Vec<UpdateRecord> {
        let refused = |reason: &str, detail: String| {
            vec![Self::with_reason(
                self.record(request, UpdateStep::Refused),
                reason,
                detail,
            )]
        };
        let new_text = match std::fs::read_to_string(&request.file) {
            Ok(t) => t,
            Err(e) => return refused("invalid_config", format!("{}: {e}", request.file.display())),
        };
        let old_text = match std::fs::read_to_string(&self.config_path) {
            Ok(t) => t,
            Err(e) => {
                return refused(
                    "invalid_config",
                    format!("{}: {e}", self.config_path.display()),
                )
            }
        };
        let new = match crate::config::agent::parse(&new_text) {
            Ok(c) => c,
            Err(errors) => {
                let all: Vec<String> = errors.0.iter().map(|p| p.to_string()).collect();
                return refused("invalid_config", all.join("; "));
            }
        };
        let table = |text: &str| toml::from_str::<toml::Table>(text).unwrap_or_default();
        let (old_table, new_table) = (table(&old_text), table(&new_text));
        if new.forward.node_id != request.node {
            return refused(
                "invalid_config",
                format!(
                    "[node] id is {:?}, this node is {:?}",
                    new.forward.node_id, request.node
                ),
            );
        }
        if old_table.get("fleet") != new_table.get("fleet") {
            return refused(
                "fleet_section_changed",
                "a pushed configuration may not change [fleet]".into(),
            );
        }
        let backup = previous_config(&self.config_path);
        if let Err(e) = std::fs::write(&backup, &old_text) {
            return refused("invalid_config", format!("{}: {e}", backup.display()));
        }
        if let Err(e) = replace_file(&self.config_path, new_text.as_bytes()) {
            return refused("invalid_config", e);
        }
        let plan = crate::config::reload::ReloadPlan::new(&old_table, &new_table);
        let command = if plan.needs_restart.is_empty() {
            &self.settings.reload_command
        } else {
            &self.settings.restart_command
        };
        let mut installed = self.record(request, UpdateStep::Installed);
        installed.detail = Some(plan.summary());
        vec![installed, self.restart_and_watch(request, command)]
    }

    fn finish(&self, request: &Request, records: &[UpdateRecord]) -> Result<(), ApplyError> {
        let outcomes = self.settings.outcomes_file();
        let mut text = Vec::new();
        for r in records {
            text.extend(serde_json::to_vec(r).unwrap_or_default());
            text.push(b'\n');
        }
        write_in_handoff(&outcomes, &text, true).map_err(io(&outcomes))?;
        let done = self.done_file();
        write_in_handoff(
            &done,
            &serde_json::to_vec_pretty(request).unwrap_or_default(),
            false,
        )
        .map_err(io(&done))?;
        for name in ["new", "previous"] {
            let _ = std::fs::remove_file(self.staging.join(name));
        }
        let _ = std::fs::remove_file(self.marker_file());
        let applying = self.applying_file();
        std::fs::remove_file(&applying).map_err(io(&applying))?;
        Ok(())
    }
}

fn previous_config(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".fleet-previous");
    config.with_file_name(name)
}

/// Replaces a file durably, keeping its mode and owner ([`crate::durable::replace`]).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::durable::replace(path, bytes, crate::durable::Mode::KeepExisting)
        .map_err(|e| format!("{}: {e}", path.display()))
}
