//! `teledge pki` and `teledge enrol` with the real binaries: the certificates they make carry
//! records from `teledge replay --forward` to `teledge collect` over mutual TLS, and the
//! refusals (another node's certificate, a spent, expired or mismatched token) hold.

use std::path::Path;
use std::process::{Command, Output};

use crate::daemon::free_port;
use crate::uplink::{
    collector, collector_with, connect_from, forward_config, replay_forward, stored, Pki,
};

fn teledge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A site made by `teledge pki` only: the CA in `ca/`, the collector's files, and the test
/// directory laid out as the uplink tests expect (`ca.pem`, `<name>.pem`, `<name>.key`).
fn site() -> (Pki, std::path::PathBuf) {
    let pki = Pki {
        dir: tempfile::tempdir().unwrap(),
    };
    let root = pki.dir.path();
    let ca = root.join("ca");
    ok(teledge(&[
        "pki",
        "init-ca",
        "--dir",
        s(&ca),
        "--name",
        "Site CA",
    ]));
    let col = root.join("col");
    ok(teledge(&[
        "pki",
        "issue-collector",
        "--ca",
        s(&ca),
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
        "--out",
        s(&col),
    ]));
    std::fs::copy(ca.join("ca.pem"), root.join("ca.pem")).unwrap();
    std::fs::copy(col.join("collector.pem"), root.join("collector.pem")).unwrap();
    std::fs::copy(col.join("collector.key"), root.join("collector.key")).unwrap();
    std::fs::write(root.join("spool.key"), [11u8; 32]).unwrap();
    std::fs::write(root.join("site.key"), [12u8; 32]).unwrap();
    (pki, ca)
}

/// Puts `dir/node.pem` and `dir/node.key` in the test directory as `<name>.pem/.key`.
fn adopt(pki: &Pki, dir: &Path, name: &str) {
    std::fs::copy(dir.join("node.pem"), pki.path(&format!("{name}.pem"))).unwrap();
    std::fs::copy(dir.join("node.key"), pki.path(&format!("{name}.key"))).unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn check_config(pki: &Pki, node: &str, client: &str) -> Output {
    let work = pki.path(&format!("check-{client}"));
    let config = forward_config(pki, &work, node, client, "ca.pem", 8443);
    // The agent's check wants a source as well.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[hep]\nudp = \"127.0.0.1:9060\"\n");
    std::fs::write(&config, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn certificates_from_teledge_pki_forward_over_mutual_tls() {
    let (pki, ca) = site();
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.path("col/collector.key")), 0o600);
    for id in ["edge-01", "edge-02"] {
        let out = pki.path(id);
        ok(teledge(&[
            "pki",
            "issue-node",
            "--ca",
            s(&ca),
            "--node-id",
            id,
            "--out",
            s(&out),
        ]));
        assert_eq!(mode(&out.join("node.key")), 0o600);
        adopt(&pki, &out, id);
    }
    // A second init-ca over the same directory is refused and keeps the CA.
    let again = teledge(&["pki", "init-ca", "--dir", s(&ca), "--name", "Other"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // An id the collector would refuse is refused before anything is signed.
    let bad = teledge(&[
        "pki",
        "issue-node",
        "--ca",
        s(&ca),
        "--node-id",
        "../x",
        "--out",
        s(&pki.path("bad")),
    ]);
    assert!(!bad.status.success());
    assert!(!pki.path("bad").exists());

    // check-config accepts the files, and refuses another node's certificate.
    let fine = check_config(&pki, "edge-01", "edge-01");
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
    let wrong = check_config(&pki, "edge-01", "edge-02");
    assert_eq!(wrong.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("edge-02"));

    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("collected");
    let c = collector(&pki, "collector", &out);
    // edge-02's certificate used as edge-01: refused, nothing stored.
    let spool = work.path().join("spool-wrong");
    let config = forward_config(&pki, &spool, "edge-01", "edge-02", "ca.pem", c.port);
    let refused = replay_forward(&config, 4);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(stored(&out).is_empty());
    // edge-01's own certificate: every record arrives.
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-01", "edge-01", "ca.pem", c.port);
    let sent = replay_forward(&config, 30);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let lines = stored(&out);
    assert!(!lines.is_empty());
    assert!(out.join("edge-01").is_dir());
    assert!(!out.join("edge-02").exists());
}

fn enrol(url: &str, token: &str, ca_cert: &Path, node: &str, out: &Path) -> Output {
    teledge(&[
        "enrol",
        "--collector",
        url,
        "--token",
        token,
        "--ca-cert",
        s(ca_cert),
        "--node-id",
        node,
        "--out",
        s(out),
    ])
}

fn token(ca: &Path, node: &str, ttl_s: u32) -> String {
    ok(teledge(&[
        "pki",
        "enrol-token",
        "--ca",
        s(ca),
        "--node-id",
        node,
        "--ttl-s",
        &ttl_s.to_string(),
    ]))
    .trim()
    .to_owned()
}

fn refused_with(out: Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
}

#[test]
fn a_box_enrols_once_with_a_token_and_then_forwards() {
    let (pki, ca) = site();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("collected");
    let port = free_port();
    let c = collector_with(
        &pki,
        "collector",
        &out,
        0,
        &[
            "--enrol-ca",
            s(&ca),
            "--enrol-listen",
            &format!("127.0.0.1:{port}"),
        ],
        None,
    );
    let url = format!("https://localhost:{port}");
    // The CA certificate the box was given out of band.
    let ca_cert = work.path().join("site-ca.pem");
    std::fs::copy(ca.join("ca.pem"), &ca_cert).unwrap();
    let boxdir = work.path().join("box");
    let first = token(&ca, "edge-05", 600);
    assert_eq!(first.len(), 64);
    assert!(!std::fs::read_dir(ca.join("tokens"))
        .unwrap()
        .any(|e| std::fs::read(e.unwrap().path())
            .is_ok_and(|b| b.windows(first.len()).any(|w| w == first.as_bytes()))));

    // A box given another CA does not trust the listener: nothing is sent, the token lives.
    let rogue = work.path().join("rogue");
    ok(teledge(&[
        "pki",
        "init-ca",
        "--dir",
        s(&rogue),
        "--name",
        "Rogue",
    ]));
    let mut untrusting = enrol(&url, &first, &rogue.join("ca.pem"), "edge-05", &boxdir);
    for _ in 0..50 {
        // The listener may still be starting.
        if !String::from_utf8_lossy(&untrusting.stderr).contains("cannot reach") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        untrusting = enrol(&url, &first, &rogue.join("ca.pem"), "edge-05", &boxdir);
    }
    refused_with(untrusting, "UnknownIssuer");
    assert!(!boxdir.join("node.key").exists());

    let enrolled = enrol(&url, &first, &ca_cert, "edge-05", &boxdir);
    // No group teledge on this machine (the package is not installed): the key stays 0600
    // and the message says what gives it to the daemon.
    assert!(
        String::from_utf8_lossy(&enrolled.stderr).contains("group \"teledge\" does not exist yet"),
        "{enrolled:?}"
    );
    ok(enrolled);
    assert_eq!(mode(&boxdir.join("node.key")), 0o600);
    // With the daemon's group present (here: nogroup, which every Debian has), the key is
    // made readable to it: 0640, that group.
    let grouped = work.path().join("grouped");
    let again = token(&ca, "edge-05", 600);
    let grouped_run = teledge(&[
        "enrol",
        "--collector",
        &url,
        "--token",
        &again,
        "--ca-cert",
        s(&ca_cert),
        "--node-id",
        "edge-05",
        "--out",
        s(&grouped),
        "--key-group",
        "nogroup",
    ]);
    ok(grouped_run);
    assert_eq!(mode(&grouped.join("node.key")), 0o640);
    use std::os::unix::fs::MetadataExt;
    let nogroup = std::fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("nogroup:x:")
                .map(|r| r.trim_end_matches(':').parse::<u32>().unwrap())
        })
        .unwrap();
    assert_eq!(
        std::fs::metadata(grouped.join("node.key")).unwrap().gid(),
        nogroup
    );
    // The key was made on the box: the CA directory holds no private key but its own.
    for entry in walk(&ca) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        if text.contains("PRIVATE KEY") {
            assert_eq!(entry, ca.join("ca.key"));
        }
    }
    adopt(&pki, &boxdir, "edge-05");

    // Spent, expired, or for another node: refused.
    refused_with(
        enrol(
            &url,
            &first,
            &ca_cert,
            "edge-05",
            &work.path().join("again"),
        ),
        "unknown or already used token",
    );
    let short = token(&ca, "edge-05", 1);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    refused_with(
        enrol(&url, &short, &ca_cert, "edge-05", &work.path().join("late")),
        "token expired",
    );
    let other = token(&ca, "edge-05", 600);
    refused_with(
        enrol(
            &url,
            &other,
            &ca_cert,
            "edge-06",
            &work.path().join("other"),
        ),
        "the CSR names \"edge-06\", the token is for \"edge-05\"",
    );
    assert!(!work.path().join("other").join("node.key").exists());

    // The enrolled box forwards over mutual TLS to the same collector.
    let spool = work.path().join("spool");
    let config = forward_config(&pki, &spool, "edge-05", "edge-05", "ca.pem", c.port);
    let sent = replay_forward(&config, 30);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(!stored(&out).is_empty());
    assert!(out.join("edge-05").is_dir());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Regression: the enrolment listener took 16 connections from anyone and closed the rest,
/// so one address holding 16 idle connections (renewed every 10 s) kept every box from
/// enrolling. Now an address holds at most 4; a box from another enrols beside the flood.
#[test]
fn an_idle_flood_from_one_address_does_not_keep_a_box_from_enrolling() {
    let (pki, ca) = site();
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let c = collector_with(
        &pki,
        "collector",
        &work.path().join("collected"),
        0,
        &[
            "--enrol-ca",
            s(&ca),
            "--enrol-listen",
            &format!("127.0.0.1:{port}"),
        ],
        None,
    );
    // The listener may still be starting: wait until it accepts.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let flood: Vec<_> = (0..100).map(|_| connect_from("127.0.0.2", port)).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let url = format!("https://localhost:{port}");
    let boxdir = work.path().join("box");
    let enrolled = enrol(
        &url,
        &token(&ca, "edge-07", 600),
        &ca.join("ca.pem"),
        "edge-07",
        &boxdir,
    );
    ok(enrolled);
    assert!(boxdir.join("node.pem").is_file());
    assert!(
        c.log()
            .contains("Too many enrolment connections from this address; refused."),
        "{}",
        c.log()
    );
    drop(flood);
}

/// Regression: `teledge enrol` read the answer's body without a time limit, so a listener
/// (or something in the middle holding the collector's certificate) that sent a head and
/// then nothing held the box's installation for ever. It now gives up after its timeout.
#[test]
fn enrol_gives_up_on_an_answer_whose_body_never_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (pki, ca) = site();
    let work = tempfile::tempdir().unwrap();
    let config = teledge::uplink::tls::server_config_without_client_auth(
        &pki.path("collector.pem"),
        &pki.path("collector.key"),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = [0u8; 65536];
                let _ = tls.read(&mut request).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n-----BEGIN")
                    .await;
                let _ = tls.flush().await;
                held.push(tls);
            }
        });
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_teledge"))
        .args(["enrol", "--collector", &format!("https://localhost:{port}")])
        .args(["--token", &"ab".repeat(32), "--ca-cert"])
        .arg(ca.join("ca.pem"))
        .args(["--node-id", "edge-08", "--out"])
        .arg(work.path().join("box"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("teledge enrol still waiting for the body after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    refused_with(out, "timed out");
    assert!(!work.path().join("box/node.key").exists());
}

/// Every file teledge replaces goes through one function that fsyncs the directory after the
/// rename (`teledge::durable`): seen in the system calls of a real run (strace), since a
/// power cut cannot be staged here. Three of the five copies it replaced did not.
#[test]
fn a_replaced_file_is_renamed_then_its_directory_synced() {
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca");
    let log = work.path().join("strace.log");
    let out = Command::new("strace")
        .args([
            "-f",
            "-e",
            "trace=openat,fsync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&log)
        .arg(env!("CARGO_BIN_EXE_teledge"))
        .args(["pki", "init-ca", "--dir", s(&ca), "--name", "Test CA"])
        .output()
        .expect("strace (scripts/test.sh installs it)");
    ok(out);
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let ca_dir = format!("openat(AT_FDCWD, \"{}\", O_RDONLY", s(&ca));
    let mut renames = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("rename(") || !line.contains(s(&ca)) {
            continue;
        }
        renames += 1;
        // The directory is opened and that descriptor fsynced after the rename.
        let open = lines[i + 1..]
            .iter()
            .position(|l| l.contains(&ca_dir))
            .map(|at| lines[i + 1 + at])
            .unwrap_or_else(|| panic!("no directory open after {line}"));
        let fd = open.rsplit("= ").next().unwrap().trim();
        assert!(
            lines[i + 1..]
                .iter()
                .any(|l| l.contains(&format!("fsync({fd})"))),
            "the directory is not synced after {line}"
        );
    }
    assert_eq!(renames, 2, "ca.key and ca.pem: {log}");
}
