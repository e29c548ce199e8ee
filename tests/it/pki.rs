//! `teledge pki` and `teledge enrol` with the real binaries: the certificates they make carry
//! records from `teledge replay --forward` to `teledge collect` over mutual TLS, and the
//! refusals (another node's certificate, a spent, expired or mismatched token) hold.

use std::path::Path;
use std::process::{Command, Output};

use crate::uplink::{collector, forward_config, replay_forward, stored, Pki};

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
