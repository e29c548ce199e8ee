//! The fleet owner's side end to end, with real parts: the repository is made, signed,
//! rotated and re-signed by the real `teledge fleet` commands; a real `teledge collect
//! --fleet` serves it over mutual TLS; teledge's own agent and client take it, and so does
//! python-tuf's `ngclient` (an independent TUF client, `tests/tuf/ngclient_fetch.py`, over
//! the same mutual TLS). The progress test runs the real daemon (`teledge run`) with
//! `[fleet]`, the real installer (`teledge update-apply`) with `dpkg --root`, and reads the
//! records the collector stored with `teledge fleet status`.
//!
//! Not real, as in `fleet.rs`: systemd as PID 1 (`systemctl restart` is a script, the path
//! unit is the test running `update-apply`), and the packaged programs are wrappers that
//! exec the binary under test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use teledge::fleet::agent::FleetAgent;
use teledge::fleet::select::rollout_bucket;
use teledge::fleet::tuf::Client;
use teledge::record::update::UpdateStep;

use crate::daemon::{free_port, teledge};
use crate::fleet::{
    deb, dpkg_version, fleet, fleet_config, install_when_handed_over, is_root, my_arch, other_arch,
    poll, python, runtime, service, settings, steps, transport, wait_collected, Fleet,
};

/// Runs `teledge fleet ARGS`; its stdout, or a panic with its stderr.
fn owner(args: &[&str]) -> String {
    let out = teledge().arg("fleet").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "teledge fleet {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Owner {
    repo: String,
    keys: String,
    offline: String,
}

impl Owner {
    fn new(fleet: &Fleet) -> Self {
        let work = fleet.dir.path();
        Owner {
            repo: fleet.served.display().to_string(),
            keys: work.join("owner-keys").display().to_string(),
            offline: work.join("offline-root-keys").display().to_string(),
        }
    }

    fn run(&self, command: &str, args: &[&str]) -> String {
        let mut all = vec![command, "--repo", &self.repo, "--keys", &self.keys];
        all.extend_from_slice(args);
        owner(&all)
    }
}

/// python-tuf's ngclient, with its own state in `state`, fetching `targets`.
fn ngclient(fleet: &Fleet, root: &Path, state: &Path, targets: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf/ngclient_fetch.py");
    let out = Command::new(python())
        .arg(script)
        .arg(format!("https://localhost:{}/v1/fleet/", fleet.port))
        .arg(fleet.pki.path("ca.pem"))
        .arg(fleet.pki.path("edge-02.pem"))
        .arg(fleet.pki.path("edge-02.key"))
        .arg(root)
        .arg(state)
        .args(targets)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ngclient: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `nth` node id whose rollout bucket is in `range`.
fn node_in(range: std::ops::Range<u8>, nth: usize) -> String {
    (0..1000)
        .map(|i| format!("node-{i}"))
        .filter(|n| range.contains(&rollout_bucket(n)))
        .nth(nth)
        .unwrap()
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn key_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_release_signed_by_teledge_fleet_is_taken_by_our_agent_and_by_python_tuf_through_rollout_rotation_and_resigning(
) {
    let fleet = fleet();
    let work = fleet.dir.path().to_owned();
    let o = Owner::new(&fleet);
    let arch = my_arch();

    // The keys: the root's apart (offline), the online ones beside the repository, 0600.
    let out = o.run(
        "init",
        &[
            "--root-keys",
            &o.offline,
            "--root-key-count",
            "2",
            "--root-threshold",
            "2",
        ],
    );
    assert!(out.contains("root v1, targets v1"), "{out}");
    let root = fleet.served.join("metadata/1.root.json");
    assert_eq!(key_files(&o.offline).len(), 2);
    assert_eq!(key_files(&o.keys).len(), 3);
    for key in key_files(&o.offline).iter().chain(&key_files(&o.keys)) {
        assert_eq!(file_mode(key), 0o600, "{}", key.display());
    }
    assert!(key_files(&o.repo).is_empty());

    // Release 1: 0.1.0-1 for this architecture and another, for every node.
    let v1 = deb(&work, "0.1.0-1", arch, "#!/bin/sh\n");
    let v1_other = deb(&work, "0.1.0-1", other_arch(), "#!/bin/sh\n");
    let out = o.run(
        "add-target",
        &[
            "--package",
            v1.to_str().unwrap(),
            "--package",
            v1_other.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains(&format!("staged packages/teledge_0.1.0-1_{arch}.deb")),
        "{out}"
    );
    o.run("publish", &[]);

    // Release 2: 0.2.0-1, canaries first: 10 % of the nodes and the lab group.
    let v2 = deb(&work, "0.2.0-1", arch, "#!/bin/sh\necho two\n");
    o.run(
        "add-target",
        &[
            "--package",
            v2.to_str().unwrap(),
            "--rollout-percent",
            "10",
            "--canary-group",
            "lab",
        ],
    );
    // Staged is not signed: nothing changes for the nodes until publish.
    let listed = o.run("list", &[]);
    assert!(listed.contains("(not published)"), "{listed}");
    o.run("publish", &[]);

    let rt = runtime();
    let agent = |node: &str, groups: &[&str]| {
        let mut s = settings(&work.join(format!("state-{node}")), &root);
        s.groups = groups.iter().map(|g| g.to_string()).collect();
        FleetAgent::new(s, node, transport(&fleet, "edge-01"), "0.1.0-1".into()).unwrap()
    };
    let first = node_in(0..10, 0);
    let later = node_in(10..100, 0);
    let lab = node_in(10..100, 1);
    let mut early = agent(&first, &[]);
    let mut waiting = agent(&later, &[]);
    let mut canary = agent(&lab, &["lab"]);
    let handed_over = [
        UpdateStep::Offered,
        UpdateStep::Downloaded,
        UpdateStep::Verified,
        UpdateStep::HandedOver,
    ];
    let records = poll(&rt, &mut early);
    assert_eq!(steps(&records), handed_over, "{records:#?}");
    assert_eq!(records[0].version.as_deref(), Some("0.2.0-1"));
    assert_eq!(records[0].targets_version, Some(3));
    assert_eq!(steps(&poll(&rt, &mut canary)), handed_over);
    assert_eq!(poll(&rt, &mut waiting), []);

    // python-tuf's client takes the same repository and gets the same bytes.
    let ng_state = work.join("ngclient");
    let v2_target = format!("packages/teledge_0.2.0-1_{arch}.deb");
    let got = ngclient(&fleet, &root, &ng_state, &[&v2_target, "packages/none.deb"]);
    assert_eq!(got["targets_version"], 3, "{got}");
    assert_eq!(got["targets"]["packages/none.deb"], Value::Null);
    let entry = &got["targets"][&v2_target];
    assert_eq!(entry["custom"]["teledge"]["rollout_percent"], 10, "{got}");
    assert_eq!(entry["custom"]["teledge"]["canary_groups"][0], "lab");
    assert_eq!(
        std::fs::read(entry["file"].as_str().unwrap()).unwrap(),
        std::fs::read(&v2).unwrap()
    );

    // The rollout widens to everyone: the waiting node is offered it now.
    o.run(
        "rollout",
        &["--version", "0.2.0-1", "--rollout-percent", "100"],
    );
    o.run("publish", &[]);
    assert_eq!(steps(&poll(&rt, &mut waiting)), handed_over);

    // Rotations: the timestamp key, then the root keys (root 3 is signed by root 2's two
    // keys and its own new one). Our client and ngclient follow both.
    let client = Client::new(
        &work.join("trusted"),
        std::fs::read(&root).unwrap(),
        transport(&fleet, "edge-01"),
    );
    assert_eq!(
        rt.block_on(client.refresh(SystemTime::now()))
            .unwrap()
            .root_version,
        1
    );
    o.run(
        "rotate",
        &["--root-keys", &o.offline, "--role", "timestamp"],
    );
    assert_eq!(key_files(&format!("{}/retired", o.keys)).len(), 1);
    o.run("rotate", &["--root-keys", &o.offline, "--role", "root"]);
    assert_eq!(key_files(&o.offline).len(), 1);
    let trusted = rt.block_on(client.refresh(SystemTime::now())).unwrap();
    assert_eq!(trusted.root_version, 3);
    assert!(trusted.targets.contains_key(&v2_target));
    let got = ngclient(&fleet, &root, &ng_state, &[&v2_target]);
    assert_eq!(got["root_version"], 3, "{got}");
    // Without the offline keys nothing can be rotated.
    let e = teledge()
        .args([
            "fleet",
            "rotate",
            "--repo",
            &o.repo,
            "--keys",
            &o.keys,
            "--root-keys",
        ])
        .arg(work.join("empty"))
        .args(["--role", "targets"])
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("threshold"),
        "{e:?}"
    );

    // A one-hour timestamp: two hours on, a node refuses the frozen metadata; `refresh`
    // (what the owner's timer runs) re-signs it and the node goes on.
    o.run("publish", &["--timestamp-hours", "1"]);
    let in_two_hours = SystemTime::now() + Duration::from_secs(2 * 3600);
    let e = rt.block_on(client.refresh(in_two_hours)).unwrap_err();
    assert_eq!(e.reason(), "expired", "{e}");
    let before = rt.block_on(client.refresh(SystemTime::now() + Duration::from_secs(60)));
    assert!(before.is_err(), "the client keeps the latest time it saw");
    let out = o.run("refresh", &["--timestamp-hours", "3"]);
    assert!(out.contains("re-signed timestamp"), "{out}");
    let trusted = rt.block_on(client.refresh(in_two_hours)).unwrap();
    assert!(trusted.changed);
    let got = ngclient(&fleet, &root, &ng_state, &[]);
    assert_eq!(got["timestamp_version"], trusted.timestamp_version, "{got}");

    // A package of another name than the nodes' is refused before anything is staged; a
    // target removed is no longer signed.
    let stranger = teledge()
        .args([
            "fleet",
            "add-target",
            "--repo",
            &o.repo,
            "--keys",
            &o.keys,
            "--package",
        ])
        .arg(&v2)
        .args(["--package-name", "teledge-other"])
        .output()
        .unwrap();
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr).contains("expected \"teledge-other\""),
        "{stranger:?}"
    );
    let other_target = format!("packages/teledge_0.1.0-1_{}.deb", other_arch());
    o.run("remove-target", &[&other_target]);
    o.run("publish", &[]);
    let got = ngclient(&fleet, &root, &ng_state, &[&other_target, &v2_target]);
    assert_eq!(got["targets"][&other_target], Value::Null, "{got}");
    assert!(got["targets"][&v2_target].is_object(), "{got}");
}

#[test]
fn the_owner_sees_a_rollout_progress_from_the_records_the_collector_holds() {
    assert!(
        is_root(),
        "dpkg installs into a temporary root: this test needs root (CI runs as root)"
    );
    let fleet = fleet();
    let work = fleet.dir.path();
    let o = Owner::new(&fleet);
    let arch = my_arch();
    let dpkg_root = work.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(dpkg_root.join(d)).unwrap();
    }
    std::fs::write(dpkg_root.join("var/lib/dpkg/status"), "").unwrap();
    o.run("init", &["--root-keys", &o.offline]);
    let health = free_port();
    let version_command = format!(
        "[\"dpkg-query\", \"--root={}\", \"--showformat=${{Version}}\", \"--show\", \"teledge\"]",
        dpkg_root.display()
    );
    let config = fleet_config(
        &fleet.pki,
        work,
        fleet.port,
        health,
        &fleet.served.join("metadata/1.root.json"),
        &version_command,
        "groups = [\"lab\"]",
    );
    let real = env!("CARGO_BIN_EXE_teledge");
    let good = format!("#!/bin/sh\nexec {real} run --config {}\n", config.display());
    let v1 = deb(work, "0.1.0-1", arch, &good);
    let v2 = deb(work, "0.2.0-1", arch, &format!("{good}# 0.2.0\n"));
    o.run("add-target", &["--package", v1.to_str().unwrap()]);
    o.run("publish", &[]);
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
    svc.restart();
    svc.wait_healthy();

    let out = work.join("out");
    let status = || -> Value {
        let text = o.run("status", &["--collected", out.to_str().unwrap(), "--json"]);
        serde_json::from_str(&text).unwrap()
    };
    let node_of = |s: &Value| {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "edge-01")
            .cloned()
    };
    // The heartbeat reached the collector: the node runs the newest release.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = status();
        if node_of(&s).is_some() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat collected: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let n = node_of(&s).unwrap();
    assert_eq!(n["progress"], "running", "{s}");
    assert_eq!(n["arch"], arch);
    assert_eq!(n["stale"], false);
    assert_eq!(n["config_sha256"].as_str().unwrap().len(), 64);

    // 0.2.0-1 for the lab only (0 %): the node is in the lab; it takes it, the installer
    // holds the probation, and the owner sees it healthy.
    o.run(
        "add-target",
        &[
            "--package",
            v2.to_str().unwrap(),
            "--rollout-percent",
            "0",
            "--canary-group",
            "lab",
        ],
    );
    o.run("publish", &[]);
    svc.restart();
    svc.wait_healthy();
    let taken = install_when_handed_over(work, &config);
    assert_eq!(
        steps(&taken),
        [UpdateStep::Installed, UpdateStep::Healthy],
        "{taken:#?}"
    );
    assert_eq!(dpkg_version(&dpkg_root), "0.2.0-1");
    svc.wait_healthy();
    wait_collected(&out, |r| {
        r.iter()
            .any(|r| r["step"] == "healthy" && r["version"] == "0.2.0-1")
    });
    let s = status();
    let n = node_of(&s).unwrap();
    assert_eq!(n["release"], "0.2.0-1", "{s}");
    assert_eq!(n["progress"], "healthy", "{s}");
    let release = &s["releases"][0];
    assert_eq!(release["version"], "0.2.0-1");
    assert_eq!(release["rollout_percent"], 0);
    assert_eq!(release["canary_groups"][0], "lab");
    assert_eq!(release["counts"]["healthy"], 1, "{s}");
    let table = o.run("status", &["--collected", out.to_str().unwrap()]);
    assert!(
        table.contains(&format!(
            "release 0.2.0-1 {arch} (every node, 0 % + canary groups lab): 1 node(s): healthy 1"
        )),
        "{table}"
    );
    assert!(table.contains("edge-01"), "{table}");
}
