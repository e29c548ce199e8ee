//! The `teledge` binary: formats, output file, exit codes, error messages.

use std::process::Command;

use crate::support::data_path;

fn teledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
}

#[test]
fn replay_writes_json_lines_with_a_summary_last() {
    let out = teledge()
        .args(["replay", "--no-progress"])
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[..4]
        .iter()
        .all(|l| l["type"] == "call" && l["schema"] == "teledge.call/1"));
    assert_eq!(lines[4]["type"], "capture_summary");
}

#[test]
fn replay_table_to_file() {
    let dir = std::env::temp_dir().join(format!("teledge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("calls.txt");
    let status = teledge()
        .args(["replay", "--format", "table", "--output"])
        .arg(&path)
        .arg(data_path("sngrep_aaa.pcap"))
        .status()
        .unwrap();
    assert!(status.success());
    let table = std::fs::read_to_string(&path).unwrap();
    assert!(table.contains("abandoned"));
    assert!(table.contains("not_reached"));
    assert!(table.contains("4 calls"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn damaged_file_gives_partial_records_and_names_file_and_packet() {
    let dir = std::env::temp_dir().join(format!("teledge-cut-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(data_path("sip_ipv4_tcp.pcap")).unwrap();
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let out = teledge()
        .args(["replay", "--no-progress"])
        .arg(&cut)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut.pcap"), "{stderr}");
    assert!(stderr.contains("packet 84"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("158936656982201062716@10.33.6.100"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_an_error() {
    let out = teledge()
        .args(["replay", "/nonexistent.pcap"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.pcap"));
}

/// How often `needle` appears in `text`.
fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// An error printed by the command names each of its causes exactly once. Errors used to
/// put their source's text in their own message *and* return it as their source, and `main`
/// hid the repetition by searching for repeated text; now no message repeats its source and
/// the chain is printed as it is (`{:#}`). Three chains of different depth: a port taken by
/// another process (daemon → HEP listener → bind → OS), an address not on this host (exit 78,
/// printed by `run` itself), a capture file that cannot be opened (anyhow context → OS).
#[test]
fn an_error_chain_names_each_cause_once() {
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = crate::daemon::agent_config(
        &pki,
        dir.path(),
        crate::daemon::free_port(),
        &format!("[hep]\ntcp = \"127.0.0.1:{port}\"\n"),
        None,
    );
    let out = teledge()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("teledge: "))
        .unwrap_or_else(|| panic!("{err}"));
    let os = std::io::Error::from(std::io::ErrorKind::AddrInUse).to_string();
    assert_eq!(
        count(line, &format!("cannot bind 127.0.0.1:{port}")),
        1,
        "{line}"
    );
    assert_eq!(count(line, "Address already in use"), 1, "{line} ({os})");
    assert_eq!(count(line, "HEP"), 1, "{line}");
    drop(taken);

    let config = crate::daemon::agent_config(
        &pki,
        dir.path(),
        crate::daemon::free_port(),
        "[hep]\nudp = \"192.0.2.1:9060\"\n",
        None,
    );
    let out = teledge()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert_eq!(count(&err, "cannot bind 192.0.2.1:9060"), 1, "{err}");
    assert_eq!(count(&err, "Cannot assign requested address"), 1, "{err}");

    let missing = dir.path().join("no-such.pcap");
    let out = teledge()
        .args(["replay", "--no-progress"])
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(count(&err, "no-such.pcap"), 1, "{err}");
    assert_eq!(count(&err, "No such file or directory"), 1, "{err}");
}
