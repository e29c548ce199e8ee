//! Fleet updates with real parts: TUF metadata made by python-tuf (`tests/tuf/make_repo.py`,
//! an implementation independent of teledge's), served by a real `teledge collect --fleet`
//! over mutual TLS, fetched by teledge's client; packages built by `dpkg-deb` and installed by
//! the real `dpkg` into a temporary root (`dpkg --root`); the service a real `teledge run`
//! process whose `/health` the installer watches.
//!
//! What is not real: systemd cannot run as PID 1 here, so `systemctl restart teledge` is a
//! shell script that stops the old process (SIGCONT, SIGTERM, then SIGKILL) and starts
//! the installed `/usr/bin/teledge` of the temporary root, and `teledge-update.path` is the
//! test itself, which runs `teledge update-apply` once the request file appears. The unit
//! files are checked with `systemd-analyze verify`. The packaged programs are wrappers: the
//! good ones `exec` the real teledge binary under test, the one that "fails to start" exits
//! 1, and the one whose "data path stalls" execs teledge after arranging a SIGSTOP of itself
//! two seconds later (it reaches READY and answers /health 200, then answers nothing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use teledge::fleet::agent::FleetAgent;
use teledge::fleet::transport::HttpsTransport;
use teledge::fleet::tuf::Client;
use teledge::fleet::FleetSettings;
use teledge::record::update::{UpdateKind, UpdateRecord, UpdateStep};

use crate::daemon::{agent_config, free_port, teledge};
use crate::uplink::{collector_with, forward_config, pki, stored, Collector, Pki};

/// The interpreter with python-tuf: `TELEDGE_TEST_PYTHON`, or the virtual environment
/// `scripts/test.sh` makes. Missing is a failure, never a skip.
pub(crate) fn python() -> PathBuf {
    let python = std::env::var_os("TELEDGE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tuf-venv/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import tuf, securesystemslib, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python-tuf is missing at {}: run scripts/test.sh (it creates target/tuf-venv) or set TELEDGE_TEST_PYTHON",
        python.display()
    );
    python
}

/// Runs make_repo.py on `spec`; the output directory (`root.json`, one directory per state).
fn make_repo(dir: &Path, spec: Value) -> PathBuf {
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let out = dir.join("repo");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf/make_repo.py");
    let run = Command::new(python())
        .arg(script)
        .arg(&spec_file)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "make_repo.py: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

fn keys() -> Value {
    json!({"root": 1, "targets": 2, "snapshot": 1, "timestamp": 1})
}

pub(crate) fn my_arch() -> &'static str {
    teledge::fleet::native_arch()
}

pub(crate) fn other_arch() -> &'static str {
    if my_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

/// A `.deb` of package `teledge` whose `/usr/bin/teledge` is `program`.
pub(crate) fn deb(dir: &Path, version: &str, arch: &str, program: &str) -> PathBuf {
    let tree = dir.join(format!("pkg-{version}-{arch}"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: teledge\nVersion: {version}\nArchitecture: {arch}\nMaintainer: test <test@example.org>\nDescription: fleet test package\n"
        ),
    )
    .unwrap();
    let bin = tree.join("usr/bin/teledge");
    std::fs::write(&bin, program).unwrap();
    Command::new("chmod").arg("755").arg(&bin).status().unwrap();
    let out = dir.join(format!("teledge_{version}_{arch}.deb"));
    let built = Command::new("dpkg-deb")
        .args(["-Zgzip", "--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&out)
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    out
}

fn package(file: &Path, version: &str, arch: &str) -> Value {
    json!({
        "path": format!("packages/teledge_{version}_{arch}.deb"),
        "file": file,
        "custom": {"teledge": {"kind": "package", "version": version, "arch": arch}},
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Publishes a state of the repository as the collector's `--fleet` directory.
fn serve(served: &Path, repo: &Path, state: &str) {
    let _ = std::fs::remove_dir_all(served);
    copy_dir(&repo.join(state), served);
}

/// The file a target has in a served repository (consistent snapshots: `HASH.name`).
fn served_target(served: &Path, dir: &str, suffix: &str) -> PathBuf {
    std::fs::read_dir(served.join("targets").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no target *{suffix} served"))
}

pub(crate) struct Fleet {
    pub(crate) pki: Pki,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) served: PathBuf,
    pub(crate) port: u16,
    pub(crate) collector: Option<Collector>,
}

pub(crate) fn fleet() -> Fleet {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let collector = start_collector(&pki, dir.path(), &served, 0);
    Fleet {
        pki,
        dir,
        served,
        port: collector.port,
        collector: Some(collector),
    }
}

pub(crate) fn start_collector(pki: &Pki, dir: &Path, served: &Path, port: u16) -> Collector {
    collector_with(
        pki,
        "collector",
        &dir.join("out"),
        port,
        &["--fleet", served.to_str().unwrap()],
        None,
    )
}

pub(crate) fn transport(fleet: &Fleet, client_cert: &str) -> HttpsTransport {
    let spool = fleet.dir.path().join(format!("spool-{client_cert}"));
    let config = forward_config(
        &fleet.pki,
        &spool,
        "edge-01",
        client_cert,
        "ca.pem",
        fleet.port,
    );
    let forward = teledge::config::load_forward(&config).unwrap();
    HttpsTransport::new(&forward.uplink).unwrap()
}

pub(crate) fn settings(state_dir: &Path, root: &Path) -> FleetSettings {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    FleetSettings {
        root_file: root.to_owned(),
        state_dir: state_dir.to_owned(),
        poll_interval: Duration::from_secs(60),
        poll_jitter: Duration::ZERO,
        groups: Vec::new(),
        arch: my_arch().into(),
        package: "teledge".into(),
        start_timeout: Duration::from_secs(5),
        probation: Duration::from_secs(2),
        install_command: strings(&["false"]),
        restart_command: strings(&["false"]),
        reload_command: strings(&["false"]),
        version_command: strings(&["false"]),
        max_target_bytes: 64 << 20,
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub(crate) fn poll_at(
    rt: &tokio::runtime::Runtime,
    agent: &mut FleetAgent<HttpsTransport>,
    now: SystemTime,
) -> Vec<UpdateRecord> {
    let mut records = Vec::new();
    rt.block_on(agent.poll(now, &mut |r| records.push(r)))
        .unwrap();
    records
}

pub(crate) fn poll(
    rt: &tokio::runtime::Runtime,
    agent: &mut FleetAgent<HttpsTransport>,
) -> Vec<UpdateRecord> {
    poll_at(rt, agent, SystemTime::now())
}

/// The one refusal among `records`, with its reason.
fn refusal<'a>(records: &'a [UpdateRecord], reason: &str) -> &'a UpdateRecord {
    let refused: Vec<&UpdateRecord> = records
        .iter()
        .filter(|r| r.step == UpdateStep::Refused)
        .collect();
    assert_eq!(refused.len(), 1, "one refusal expected: {records:#?}");
    assert_eq!(refused[0].reason.as_deref(), Some(reason), "{records:#?}");
    assert!(
        refused[0].detail.as_deref().is_some_and(|d| d.len() > 10),
        "a refusal says why: {records:#?}"
    );
    refused[0]
}

pub(crate) fn steps(records: &[UpdateRecord]) -> Vec<UpdateStep> {
    records.iter().map(|r| r.step).collect()
}

#[test]
fn a_python_tuf_repository_is_accepted_over_mutual_tls_and_its_root_rotation_followed() {
    let fleet = fleet();
    let work = fleet.dir.path();
    let old = deb(work, "0.1.0", my_arch(), "#!/bin/sh\n");
    let new = deb(work, "0.2.0", my_arch(), "#!/bin/sh\n");
    let targets = json!([
        package(&old, "0.1.0", my_arch()),
        package(&new, "0.2.0", my_arch())
    ]);
    let repo = make_repo(
        work,
        json!({"keys": keys(), "thresholds": {"targets": 2}, "states": [
            {"name": "s1", "targets": targets},
            {"name": "s2", "targets": targets, "rotate": "timestamp"},
            {"name": "s3", "targets": targets, "rotate": "root", "without_old_root_keys": true},
        ]}),
    );
    let root = std::fs::read(repo.join("root.json")).unwrap();
    let store = work.join("trusted");
    let rt = runtime();
    serve(&fleet.served, &repo, "s1");
    let client = Client::new(&store, root.clone(), transport(&fleet, "edge-01"));
    let trusted = rt.block_on(client.refresh(SystemTime::now())).unwrap();
    assert_eq!(
        (
            trusted.root_version,
            trusted.timestamp_version,
            trusted.snapshot_version,
            trusted.targets_version
        ),
        (1, 1, 1, 1)
    );
    assert!(trusted.consistent_snapshot);
    let name = format!("packages/teledge_0.2.0_{}.deb", my_arch());
    let target = &trusted.targets[&name];
    assert_eq!(
        target.custom.as_ref().unwrap()["teledge"]["version"],
        "0.2.0"
    );
    let dest = work.join("download.deb");
    rt.block_on(client.download(&trusted, &name, target, &dest))
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&new).unwrap());

    // A new root with a new timestamp key, signed by the old and the new root keys.
    serve(&fleet.served, &repo, "s2");
    let trusted = rt.block_on(client.refresh(SystemTime::now())).unwrap();
    assert_eq!((trusted.root_version, trusted.timestamp_version), (2, 2));
    let stored_root: Value =
        serde_json::from_slice(&std::fs::read(store.join("2.root.json")).unwrap()).unwrap();
    assert_eq!(stored_root["signed"]["version"], 2);

    // A third root signed only by its own new key, not by a threshold of the trusted root's.
    serve(&fleet.served, &repo, "s3");
    let e = rt.block_on(client.refresh(SystemTime::now())).unwrap_err();
    assert_eq!(e.reason(), "signature_threshold", "{e}");
    assert!(e.to_string().contains("3.root.json"), "{e}");
    assert!(!store.join("3.root.json").exists());
    // A root planted in the store by its owner (the daemon's user) is not trusted either:
    // the chain is verified from the shipped root at every load.
    std::fs::copy(
        repo.join("s3/metadata/3.root.json"),
        store.join("3.root.json"),
    )
    .unwrap();
    let e = rt.block_on(client.refresh(SystemTime::now())).unwrap_err();
    assert_eq!(e.reason(), "signature_threshold", "{e}");

    // The same repository with a client certificate of another CA: no TLS, nothing trusted.
    let rogue = Client::new(
        &work.join("rogue"),
        root,
        transport(&fleet, "edge-01-rogue"),
    );
    let e = rt.block_on(rogue.refresh(SystemTime::now())).unwrap_err();
    assert_eq!(e.reason(), "unreachable", "{e}");
}

#[test]
fn metadata_attacks_are_refused_with_a_reason_and_a_record() {
    let fleet = fleet();
    let work = fleet.dir.path();
    let current = deb(work, "0.1.0", my_arch(), "#!/bin/sh\n");
    let targets = json!([package(&current, "0.1.0", my_arch())]);
    let repo = make_repo(
        work,
        json!({"keys": keys(), "thresholds": {"targets": 2}, "states": [
            {"name": "v1", "targets": targets},
            {"name": "v2", "targets": targets},
            {"name": "v3-one-targets-signature", "targets": targets, "targets_signers": 1},
            {"name": "v4-expired-timestamp", "targets": targets, "expired": ["timestamp"]},
            {"name": "v5", "targets": targets},
        ]}),
    );
    let rt = runtime();
    let mut agent = FleetAgent::new(
        settings(&work.join("fleet"), &repo.join("root.json")),
        "edge-01",
        transport(&fleet, "edge-01"),
        "0.1.0".into(),
    )
    .unwrap();
    serve(&fleet.served, &repo, "v1");
    assert_eq!(poll(&rt, &mut agent), []);

    // Mix-and-match: version 2's timestamp and snapshot with version 1's targets file.
    serve(&fleet.served, &repo, "v2");
    std::fs::copy(
        repo.join("v1/metadata/1.targets.json"),
        fleet.served.join("metadata/2.targets.json"),
    )
    .unwrap();
    let records = poll(&rt, &mut agent);
    let r = refusal(&records, "mix_and_match");
    assert_eq!(r.kind, UpdateKind::Metadata);

    // Targets signed by one key of two (threshold 2).
    serve(&fleet.served, &repo, "v3-one-targets-signature");
    let records = poll(&rt, &mut agent);
    let r = refusal(&records, "signature_threshold");
    assert!(r.detail.as_ref().unwrap().contains("threshold 2"), "{r:?}");

    // A timestamp that expired (freeze).
    serve(&fleet.served, &repo, "v4-expired-timestamp");
    refusal(&poll(&rt, &mut agent), "expired");

    // Back to version 2 after version 3's timestamp was trusted: rollback.
    serve(&fleet.served, &repo, "v2");
    let records = poll(&rt, &mut agent);
    let r = refusal(&records, "version_rollback");
    assert!(
        r.detail
            .as_ref()
            .unwrap()
            .contains("below the trusted version 3"),
        "{r:?}"
    );
    // The same refusal again is not announced twice.
    assert_eq!(poll(&rt, &mut agent), []);

    // A good repository is taken again.
    serve(&fleet.served, &repo, "v5");
    assert_eq!(poll(&rt, &mut agent), []);

    // A clock two days ahead finds the timestamp (one day) expired; the clock set back
    // again cannot revive it: the client keeps the latest time it saw.
    let ahead = SystemTime::now() + Duration::from_secs(2 * 86_400);
    refusal(&poll_at(&rt, &mut agent, ahead), "expired");
    let e = rt
        .block_on(agent.client().refresh(SystemTime::now()))
        .unwrap_err();
    assert_eq!(e.reason(), "expired", "{e}");
}

#[test]
fn target_attacks_are_refused_and_nothing_partial_is_kept() {
    let fleet = fleet();
    let work = fleet.dir.path();
    let arch = my_arch();
    let current = deb(work, "0.1.0", arch, "#!/bin/sh\n");
    let next = deb(work, "0.2.0", arch, "#!/bin/sh\necho 0.2.0\n");
    let foreign = deb(work, "0.3.0", other_arch(), "#!/bin/sh\n");
    let old = deb(work, "0.0.9", arch, "#!/bin/sh\n");
    let good = deb(work, "0.4.0", arch, "#!/bin/sh\necho 0.4.0\n");
    let repo = make_repo(
        work,
        json!({"keys": keys(), "thresholds": {"targets": 2}, "states": [
            {"name": "next", "targets": [package(&current, "0.1.0", arch), package(&next, "0.2.0", arch)]},
            // Signed as this node's architecture, built for another.
            {"name": "foreign", "targets": [package(&current, "0.1.0", arch), package(&foreign, "0.3.0", arch)]},
            {"name": "older", "targets": [package(&old, "0.0.9", arch)]},
            {"name": "good", "targets": [package(&current, "0.1.0", arch), package(&good, "0.4.0", arch)]},
        ]}),
    );
    let rt = runtime();
    let state = work.join("fleet");
    let mut agent = FleetAgent::new(
        settings(&state, &repo.join("root.json")),
        "edge-01",
        transport(&fleet, "edge-01"),
        "0.1.0".into(),
    )
    .unwrap();
    let downloads = state.join("downloads");
    let downloaded = || -> Vec<String> {
        std::fs::read_dir(&downloads)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };

    // Tampered: one byte changed, same length.
    serve(&fleet.served, &repo, "next");
    let file = served_target(
        &fleet.served,
        "packages",
        &format!("teledge_0.2.0_{arch}.deb"),
    );
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let records = poll(&rt, &mut agent);
    assert_eq!(steps(&records), [UpdateStep::Offered, UpdateStep::Refused]);
    refusal(&records, "hash_mismatch");
    assert_eq!(downloaded(), Vec::<String>::new());

    // Longer than its signed length (endless data): the read stops after the length.
    bytes[last] ^= 0xff;
    bytes.extend(std::iter::repeat_n(0u8, 4 << 20));
    std::fs::write(&file, &bytes).unwrap();
    let records = poll(&rt, &mut agent);
    refusal(&records, "too_large");
    assert_eq!(downloaded(), Vec::<String>::new());

    // For another architecture than the signed custom field says.
    serve(&fleet.served, &repo, "foreign");
    let records = poll(&rt, &mut agent);
    assert_eq!(
        steps(&records),
        [
            UpdateStep::Offered,
            UpdateStep::Downloaded,
            UpdateStep::Refused
        ]
    );
    let r = refusal(&records, "wrong_arch");
    assert!(r.detail.as_ref().unwrap().contains(other_arch()), "{r:?}");
    assert_eq!(downloaded(), Vec::<String>::new());

    // The newest signed package is older than what runs.
    serve(&fleet.served, &repo, "older");
    refusal(&poll(&rt, &mut agent), "target_rollback");

    // A good one is handed over with the package to go back to.
    serve(&fleet.served, &repo, "good");
    let records = poll(&rt, &mut agent);
    assert_eq!(
        steps(&records),
        [
            UpdateStep::Offered,
            UpdateStep::Downloaded,
            UpdateStep::Verified,
            UpdateStep::HandedOver
        ]
    );
    assert!(records
        .iter()
        .all(|r| r.version.as_deref() == Some("0.4.0") && r.previous.as_deref() == Some("0.1.0")));
    let request: teledge::fleet::Request =
        serde_json::from_slice(&std::fs::read(state.join("handoff/request.json")).unwrap())
            .unwrap();
    assert_eq!(
        std::fs::read(&request.file).unwrap(),
        std::fs::read(&good).unwrap()
    );
    assert_eq!(
        std::fs::read(request.previous_file.unwrap()).unwrap(),
        std::fs::read(&current).unwrap()
    );
    // While the installer has not taken the request, polls do nothing.
    assert_eq!(poll(&rt, &mut agent), []);
}

#[test]
fn a_node_offline_during_a_rollout_catches_up_when_it_returns() {
    let mut fleet = fleet();
    let work = fleet.dir.path().to_owned();
    let arch = my_arch();
    let v1 = deb(&work, "0.1.0", arch, "#!/bin/sh\n");
    let v2 = deb(&work, "0.2.0", arch, "#!/bin/sh\n");
    let v3 = deb(&work, "0.3.0", arch, "#!/bin/sh\n");
    let canary = |file: &Path, version: &str| {
        let mut p = package(file, version, arch);
        // Canaries first: a rollout to 0 % except the lab.
        p["custom"]["teledge"]["rollout_percent"] = json!(0);
        p["custom"]["teledge"]["canary_groups"] = json!(["lab"]);
        p
    };
    let repo = make_repo(
        &work,
        json!({"keys": keys(), "thresholds": {"targets": 2}, "states": [
            {"name": "r1", "targets": [package(&v1, "0.1.0", arch)]},
            {"name": "r2", "targets": [package(&v1, "0.1.0", arch), canary(&v2, "0.2.0")]},
            {"name": "r3", "targets": [package(&v1, "0.1.0", arch), package(&v2, "0.2.0", arch), package(&v3, "0.3.0", arch)]},
        ]}),
    );
    let rt = runtime();
    let mut agent = FleetAgent::new(
        settings(&work.join("fleet"), &repo.join("root.json")),
        "edge-01",
        transport(&fleet, "edge-01"),
        "0.1.0".into(),
    )
    .unwrap();
    serve(&fleet.served, &repo, "r1");
    assert_eq!(poll(&rt, &mut agent), []);
    // The canary stage does not reach this node (not in the lab, 0 %).
    serve(&fleet.served, &repo, "r2");
    assert_eq!(poll(&rt, &mut agent), []);
    // The node loses the collector while the rollout goes on to everyone with 0.3.0.
    drop(fleet.collector.take());
    let records = poll(&rt, &mut agent);
    refusal(&records, "unreachable");
    serve(&fleet.served, &repo, "r3");
    // Back: the newest version at once, the versions between skipped.
    fleet.collector = Some(start_collector(
        &fleet.pki,
        &work,
        &fleet.served,
        fleet.port,
    ));
    let records = poll(&rt, &mut agent);
    assert_eq!(
        steps(&records),
        [
            UpdateStep::Offered,
            UpdateStep::Downloaded,
            UpdateStep::Verified,
            UpdateStep::HandedOver
        ]
    );
    assert_eq!(records[0].version.as_deref(), Some("0.3.0"));
    assert_eq!(records[0].targets_version, Some(3));
}

/// The service as the tests run it: `restart.sh` stands in for `systemctl restart`.
pub(crate) struct Service {
    dir: PathBuf,
    health: u16,
}

impl Service {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub(crate) fn healthy(&self) -> bool {
        teledge::fleet::apply::probe(([127, 0, 0, 1], self.health).into()) == Ok(200)
    }

    pub(crate) fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "service not healthy: {}",
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn restart(&self) {
        let status = Command::new("sh")
            .arg(self.dir.join("restart.sh"))
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            for signal in ["-CONT", "-KILL"] {
                let _ = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

/// Writes the stand-ins for `systemctl restart` and `reload`: the program started is
/// `program` (the installed `/usr/bin/teledge`, or the binary under test).
pub(crate) fn service(dir: &Path, program: &str, health: u16) -> Service {
    std::fs::write(
        dir.join("restart.sh"),
        format!(
            r#"#!/bin/sh
# Stand-in for `systemctl restart teledge.service` (no systemd as PID 1 here).
pid=$(cat {dir}/pid 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  kill -CONT "$pid"; kill -TERM "$pid"
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
fi
setsid {program} >>{dir}/daemon.log 2>&1 </dev/null &
echo $! >{dir}/pid
"#,
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("reload.sh"),
        format!(
            "#!/bin/sh\n# Stand-in for `systemctl reload teledge.service`.\nkill -HUP $(cat {}/pid)\n",
            dir.display()
        ),
    )
    .unwrap();
    Service {
        dir: dir.to_owned(),
        health,
    }
}

/// The daemon's configuration with `[fleet]` (its installer's commands are the stand-ins).
pub(crate) fn fleet_config(
    pki: &Pki,
    dir: &Path,
    collector: u16,
    health: u16,
    root: &Path,
    version_command: &str,
    extra: &str,
) -> PathBuf {
    let fleet = format!(
        r#"
[fleet]
root_file = "{root}"
state_dir = "{state}"
poll_interval_s = 60
poll_jitter_s = 0
probation_s = 4
start_timeout_s = 6
install_command = ["dpkg", "--root={dir}/root", "--force-confdef", "--force-confold", "-i"]
restart_command = ["sh", "{dir}/restart.sh"]
reload_command = ["sh", "{dir}/reload.sh"]
version_command = {version_command}
{extra}
# A source, so the daemon has something to run (port 0: any free port).
[hep]
udp = "127.0.0.1:0"
"#,
        root = root.display(),
        state = dir.join("fleet").display(),
        dir = dir.display(),
    );
    let config = agent_config(pki, dir, collector, &fleet, Some(health));
    // Health reports a failing uplink quickly; the shutdown drain is short.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("drain_timeout_s = 20", "drain_timeout_s = 2");
    std::fs::write(&config, text).unwrap();
    config
}

/// Waits for the daemon's request, then runs the installer as the path unit would.
pub(crate) fn install_when_handed_over(dir: &Path, config: &Path) -> Vec<UpdateRecord> {
    let request = dir.join("fleet/handoff/request.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !request.exists() {
        assert!(
            Instant::now() < deadline,
            "no request handed over: {}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = teledge()
        .arg("update-apply")
        .arg("--config")
        .arg(config)
        .arg("--staging")
        .arg(dir.join("staging"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "update-apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn dpkg_version(root: &Path) -> String {
    let out = Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .args(["--showformat=${Version}", "--show", "teledge"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Update records the collector stored (sent through the daemon's spool).
pub(crate) fn collected_updates(out: &Path) -> Vec<Value> {
    stored(out)
        .into_iter()
        .map(|line| line["record"].clone())
        .filter(|r| r["type"] == "update")
        .collect()
}

pub(crate) fn wait_collected(out: &Path, what: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = collected_updates(out);
        if what(&records) {
            return records;
        }
        assert!(Instant::now() < deadline, "collected: {records:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[test]
fn a_version_that_fails_to_start_and_one_that_stalls_are_rolled_back_and_a_good_one_stays() {
    assert!(
        is_root(),
        "dpkg installs into a temporary root: this test needs root (CI runs as root)"
    );
    let fleet = fleet();
    let work = fleet.dir.path();
    let arch = my_arch();
    let dpkg_root = work.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(dpkg_root.join(d)).unwrap();
    }
    std::fs::write(dpkg_root.join("var/lib/dpkg/status"), "").unwrap();
    let health = free_port();
    let repo_root = work.join("repo/root.json");
    let version_command = format!(
        "[\"dpkg-query\", \"--root={}\", \"--showformat=${{Version}}\", \"--show\", \"teledge\"]",
        dpkg_root.display()
    );
    let config = fleet_config(
        &fleet.pki,
        work,
        fleet.port,
        health,
        &repo_root,
        &version_command,
        "",
    );
    let real = env!("CARGO_BIN_EXE_teledge");
    let good = format!("#!/bin/sh\nexec {real} run --config {}\n", config.display());
    let fails = "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n".to_string();
    let stalls = format!(
        "#!/bin/sh\n(sleep 2; kill -STOP $$) &\nexec {real} run --config {}\n",
        config.display()
    );
    let v1 = deb(work, "0.1.0", arch, &good);
    let v2 = deb(work, "0.2.0", arch, &fails);
    let v3 = deb(work, "0.3.0", arch, &stalls);
    let v4 = deb(work, "0.4.0", arch, &good);
    let repo = make_repo(
        work,
        json!({"keys": keys(), "thresholds": {"targets": 2}, "states": [
            {"name": "r2", "targets": [package(&v1, "0.1.0", arch), package(&v2, "0.2.0", arch)]},
            {"name": "r3", "targets": [package(&v1, "0.1.0", arch), package(&v2, "0.2.0", arch), package(&v3, "0.3.0", arch)]},
            {"name": "r4", "targets": [package(&v1, "0.1.0", arch), package(&v4, "0.4.0", arch)]},
        ]}),
    );
    assert_eq!(repo.join("root.json"), repo_root);
    let installed = Command::new("dpkg")
        .arg(format!("--root={}", dpkg_root.display()))
        .arg("-i")
        .arg(&v1)
        .output()
        .unwrap();
    assert!(installed.status.success(), "{installed:?}");
    let svc = service(
        work,
        &dpkg_root.join("usr/bin/teledge").display().to_string(),
        health,
    );

    // 0.2.0 cannot start: rolled back, back on 0.1.0 and healthy.
    serve(&fleet.served, &repo, "r2");
    svc.restart();
    svc.wait_healthy();
    let steps_taken = install_when_handed_over(work, &config);
    assert_eq!(
        steps(&steps_taken),
        [UpdateStep::Installed, UpdateStep::RolledBack],
        "{steps_taken:#?}"
    );
    let back = &steps_taken[1];
    assert_eq!(back.reason.as_deref(), Some("unhealthy"));
    assert!(
        back.detail
            .as_ref()
            .unwrap()
            .contains("back on 0.1.0, healthy"),
        "{back:?}"
    );
    assert_eq!(dpkg_version(&dpkg_root), "0.1.0");
    assert!(svc.healthy());

    // The node polls again (when it restarts; the poll interval is a minute): 0.2.0 is
    // still the newest, and is refused without a download.
    svc.restart();
    svc.wait_healthy();
    let out = work.join("out");
    wait_collected(&out, |r| {
        r.iter()
            .any(|r| r["version"] == "0.2.0" && r["reason"] == "failed_before")
    });
    assert!(!work.join("fleet/handoff/request.json").exists());

    // 0.3.0 starts, answers, then stalls: rolled back too. The node polls again when it
    // restarts (a daemon restarted by hand here; the poll interval is a minute).
    serve(&fleet.served, &repo, "r3");
    svc.restart();
    svc.wait_healthy();
    let steps_taken = install_when_handed_over(work, &config);
    assert_eq!(
        steps(&steps_taken),
        [UpdateStep::Installed, UpdateStep::RolledBack],
        "{steps_taken:#?}"
    );
    assert!(
        steps_taken[1]
            .detail
            .as_ref()
            .unwrap()
            .contains("probation"),
        "{steps_taken:#?}"
    );
    assert_eq!(dpkg_version(&dpkg_root), "0.1.0");
    assert!(svc.healthy());

    // 0.4.0 is good and stays.
    serve(&fleet.served, &repo, "r4");
    svc.restart();
    svc.wait_healthy();
    let steps_taken = install_when_handed_over(work, &config);
    assert_eq!(
        steps(&steps_taken),
        [UpdateStep::Installed, UpdateStep::Healthy],
        "{steps_taken:#?}"
    );
    assert_eq!(dpkg_version(&dpkg_root), "0.4.0");
    svc.wait_healthy();

    // Every step reached the collector through the daemon's spool; 0.2.0 was never
    // offered again after it failed.
    let records = wait_collected(&out, |r| {
        r.iter()
            .any(|r| r["step"] == "healthy" && r["version"] == "0.4.0")
    });
    let seen = |version: &str, step: &str| {
        records
            .iter()
            .filter(|r| r["version"] == version && r["step"] == step)
            .count()
    };
    for version in ["0.2.0", "0.3.0", "0.4.0"] {
        for step in [
            "offered",
            "downloaded",
            "verified",
            "handed_over",
            "installed",
        ] {
            assert_eq!(seen(version, step), 1, "{version} {step}: {records:#?}");
        }
    }
    // Each one as its schema says (schema/teledge.update-1.schema.json).
    let schemas = crate::schema::Schemas::load();
    for record in &records {
        let errors = schemas.check(record);
        assert!(errors.is_empty(), "{errors:#?}\n{record}");
    }
    assert_eq!(seen("0.2.0", "rolled_back"), 1);
    assert_eq!(seen("0.3.0", "rolled_back"), 1);
    assert_eq!(seen("0.4.0", "healthy"), 1);
    let retried = records
        .iter()
        .find(|r| r["version"] == "0.2.0" && r["step"] == "refused")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(retried["reason"], "failed_before");
}

#[test]
fn signed_configuration_is_verified_applied_and_rolled_back_when_unhealthy_and_unsigned_is_refused()
{
    let fleet = fleet();
    let work = fleet.dir.path();
    let health = free_port();
    let repo_root = work.join("repo/root.json");
    let config = fleet_config(
        &fleet.pki,
        work,
        fleet.port,
        health,
        &repo_root,
        // No package in the repository: configuration only.
        "[\"echo\", \"0.1.0\"]",
        "groups = [\"site-a\"]\n",
    );
    let original = std::fs::read_to_string(&config).unwrap();
    // Version 1 changes what applies at once ([shutdown]): a reload.
    let v1 = work.join("v1.toml");
    std::fs::write(
        &v1,
        original.replace("drain_timeout_s = 2", "drain_timeout_s = 3"),
    )
    .unwrap();
    // Version 2 is valid for check-config, but its HEP port is taken at run time: the
    // daemon cannot start with it.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let v2 = work.join("v2.toml");
    std::fs::write(
        &v2,
        std::fs::read_to_string(&v1).unwrap().replace(
            "udp = \"127.0.0.1:0\"",
            &format!("udp = \"{}\"", taken.local_addr().unwrap()),
        ),
    )
    .unwrap();
    // Version 3 is good, but the installer loses power during its probation.
    let v3 = work.join("v3.toml");
    std::fs::write(
        &v3,
        original.replace("drain_timeout_s = 2", "drain_timeout_s = 4"),
    )
    .unwrap();
    let conf = |file: &Path, version: u64| {
        json!({"path": format!("config/site-a-{version}.toml"), "file": file,
               "custom": {"teledge": {"kind": "config", "version": version, "groups": ["site-a"]}}})
    };
    let repo = make_repo(
        work,
        json!({"keys": keys(), "thresholds": {"targets": 2}, "states": [
            {"name": "c1", "targets": [conf(&v1, 1)]},
            {"name": "c2", "targets": [conf(&v1, 1), conf(&v2, 2)]},
            {"name": "c3", "targets": [conf(&v1, 1), conf(&v2, 2), conf(&v3, 3)]},
        ]}),
    );
    assert_eq!(repo.join("root.json"), repo_root);
    let real = env!("CARGO_BIN_EXE_teledge");
    let svc = service(
        work,
        &format!("{real} run --config {}", config.display()),
        health,
    );
    serve(&fleet.served, &repo, "c1");
    svc.restart();
    svc.wait_healthy();
    let steps_taken = install_when_handed_over(work, &config);
    assert_eq!(
        steps(&steps_taken),
        [UpdateStep::Installed, UpdateStep::Healthy],
        "{steps_taken:#?}"
    );
    assert!(
        steps_taken[0]
            .detail
            .as_ref()
            .unwrap()
            .contains("Applied: shutdown"),
        "a reload, not a restart: {steps_taken:#?}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(&v1).unwrap());

    serve(&fleet.served, &repo, "c2");
    svc.restart();
    svc.wait_healthy();
    let steps_taken = install_when_handed_over(work, &config);
    assert_eq!(
        steps(&steps_taken),
        [UpdateStep::Installed, UpdateStep::RolledBack],
        "{steps_taken:#?}"
    );
    assert!(
        steps_taken[1]
            .detail
            .as_ref()
            .unwrap()
            .contains("back on 1, healthy"),
        "{steps_taken:#?}"
    );
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(&v1).unwrap());
    svc.wait_healthy();

    // Unsigned: a request the daemon's user forged, naming a file that is no signed target,
    // and one naming a signed target with other content. Neither is applied.
    let evil = work.join("fleet/downloads/evil.toml");
    std::fs::write(
        &evil,
        original.replace("drain_timeout_s = 2", "drain_timeout_s = 9"),
    )
    .unwrap();
    let forged = |target: &str| {
        let request = teledge::fleet::Request {
            kind: UpdateKind::Config,
            node: "edge-01".into(),
            target: target.into(),
            file: evil.clone(),
            version: "7".into(),
            previous: Some("1".into()),
            previous_target: None,
            previous_file: None,
            targets_version: 2,
        };
        std::fs::write(
            work.join("fleet/handoff/request.json"),
            serde_json::to_vec(&request).unwrap(),
        )
        .unwrap();
        install_when_handed_over(work, &config)
    };
    for target in ["config/evil.toml", "config/site-a-1.toml"] {
        let steps_taken = forged(target);
        let r = refusal(&steps_taken, "not_signed");
        assert_eq!(steps_taken.len(), 1, "{r:?}");
        assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(&v1).unwrap());
    }
    svc.wait_healthy();

    // A power cut during the probation (the installer SIGKILLed once version 3 is in
    // place): the next run puts version 1 back.
    serve(&fleet.served, &repo, "c3");
    svc.restart();
    svc.wait_healthy();
    let request = work.join("fleet/handoff/request.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !request.exists() {
        assert!(Instant::now() < deadline, "version 3 not handed over");
        std::thread::sleep(Duration::from_millis(100));
    }
    let staging = work.join("staging");
    let mut installer = teledge()
        .arg("update-apply")
        .arg("--config")
        .arg(&config)
        .arg("--staging")
        .arg(&staging)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::fs::read(&config).unwrap() != std::fs::read(&v3).unwrap() {
        assert!(Instant::now() < deadline, "version 3 never put in place");
        std::thread::sleep(Duration::from_millis(50));
    }
    installer.kill().unwrap();
    installer.wait().unwrap();
    assert!(staging.join("applying.json").exists());
    let out = teledge()
        .arg("update-apply")
        .arg("--config")
        .arg(&config)
        .arg("--staging")
        .arg(&staging)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let steps_taken: Vec<UpdateRecord> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        steps(&steps_taken),
        [UpdateStep::RolledBack],
        "{steps_taken:#?}"
    );
    assert_eq!(steps_taken[0].reason.as_deref(), Some("interrupted"));
    assert_eq!(steps_taken[0].version.as_deref(), Some("3"));
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(&v1).unwrap());
    svc.wait_healthy();

    // The central site saw it all, through the spool.
    let out = work.join("out");
    let records = wait_collected(&out, |r| {
        r.iter()
            .any(|r| r["step"] == "rolled_back" && r["version"] == "2")
            && r.iter().filter(|r| r["reason"] == "not_signed").count() == 2
    });
    assert!(records
        .iter()
        .any(|r| r["kind"] == "config" && r["step"] == "healthy" && r["version"] == "1"));

    // The hand-off directory belongs to the daemon's user: a link planted there does not
    // make the root installer read or write through it.
    let victim = work.join("victim");
    std::fs::write(&victim, "untouched\n").unwrap();
    let outcomes = work.join("fleet/handoff/outcomes.jsonl");
    std::fs::remove_file(&outcomes).unwrap();
    std::os::unix::fs::symlink(&victim, &outcomes).unwrap();
    let request = work.join("fleet/handoff/request.json");
    std::os::unix::fs::symlink(&victim, &request).unwrap();
    let out = teledge()
        .arg("update-apply")
        .arg("--config")
        .arg(&config)
        .arg("--staging")
        .arg(work.join("staging"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert!(
        !request.exists(),
        "the request is taken away even when refused"
    );
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(&v1).unwrap());
}

#[test]
fn the_installer_units_pass_systemd_analyze_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(units.join("teledge-update.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/bin/teledge update-apply"));
    assert!(service.contains("Type=oneshot") && service.contains("User=root"));
    // The daemon that downloads and verifies stays unprivileged and cannot write /usr: its
    // own user, the whole file system read-only but its state directory, no privileges
    // gained by exec.
    let daemon = std::fs::read_to_string(units.join("teledge.service")).unwrap();
    for line in [
        "User=teledge",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            daemon.lines().any(|l| l == line),
            "teledge.service lacks {line}"
        );
    }
    assert!(
        !daemon
            .lines()
            .any(|l| l.starts_with("ReadWritePaths=") && l.contains("/usr")),
        "teledge.service may write /usr"
    );
    std::fs::write(
        dir.path().join("teledge-update.service"),
        service.replace("/usr/bin/teledge", env!("CARGO_BIN_EXE_teledge")),
    )
    .unwrap();
    let path_unit = std::fs::read_to_string(units.join("teledge-update.path")).unwrap();
    // The path unit watches the file the agent writes (default [fleet] state_dir).
    assert!(path_unit.contains("PathExists=/var/lib/teledge/fleet/handoff/request.json"));
    std::fs::write(dir.path().join("teledge-update.path"), path_unit).unwrap();
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing: install the Debian package `systemd`"
    );
    let out = Command::new(analyze)
        .current_dir(dir.path())
        .args(["verify", "teledge-update.service", "teledge-update.path"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_lists_every_fleet_problem_and_update_apply_needs_a_fleet() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"
[fleet]
root_file = "/nonexistent/root.json"
state_dir = "relative/fleet"
poll_interval_s = 5
poll_jitter_s = 10
probation_s = 0
install_command = []
groups = ["site a"]
[hep]
udp = "127.0.0.1:0"
"#;
    // Without [observe] (no /health) the probation has nothing to watch.
    let config = agent_config(&pki, dir.path(), 1, bad, None);
    let out = teledge().arg("check-config").arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "fleet.root_file",
        "fleet.state_dir",
        "fleet.poll_interval_s",
        "fleet.poll_jitter_s",
        "fleet.probation_s",
        "fleet.install_command",
        "fleet.groups[0]",
    ] {
        assert!(stderr.contains(path), "{path} not reported:\n{stderr}");
    }
    assert!(stderr.contains("[observe] must be enabled"), "{stderr}");

    let root = dir.path().join("root.json");
    std::fs::write(&root, "{}").unwrap();
    let good = format!(
        "[fleet]\nroot_file = \"{}\"\n[hep]\nudp = \"127.0.0.1:0\"\n",
        root.display()
    );
    let config = agent_config(&pki, dir.path(), 1, &good, Some(free_port()));
    let out = teledge().arg("check-config").arg(&config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let without = agent_config(
        &pki,
        dir.path(),
        1,
        "[hep]\nudp = \"127.0.0.1:0\"\n",
        Some(free_port()),
    );
    let out = teledge()
        .arg("update-apply")
        .arg("--config")
        .arg(&without)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [fleet] section"));
}
