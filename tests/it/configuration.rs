//! One configuration file for every command: `run`, `check-config` and `replay --forward`
//! read the same file, given the same way (`--config PATH`), each using the sections it
//! needs; every problem is reported with its TOML path and line, exit 78.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::daemon::{agent_config, teledge};
use crate::support::data_path;
use crate::uplink::{collector, forward_config, pki, stored, Pki};

/// `replay --forward --config PATH` over the bundled capture, with up to 20 s to drain.
fn replay_forward(config: &Path, env: &[(&str, &Path)]) -> Output {
    let mut command = teledge();
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .args(["replay", "--no-progress", "--forward-timeout", "20"])
        .args(["--forward", "--config"])
        .arg(config)
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number in "N records spooled".
fn spooled(out: &Output) -> usize {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.contains("records spooled"))
        .unwrap_or_else(|| panic!("no spool line in {stderr}"));
    line.trim_start_matches("teledge: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// The shipped example with its key and certificate paths in `etc`, its spool in `etc`, its
/// uplink pointed at a collector on `port`.
fn example_configuration(pki: &Pki, etc: &Path, port: u16) -> PathBuf {
    pki.install_as_edge_01(etc);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("teledge.example.toml")).unwrap();
    let url = "https://collector.example.net:8443/v1/batches";
    let spool = "/var/lib/teledge/spool";
    assert!(example.contains(url) && example.contains(spool));
    let text = example
        .replace("/etc/teledge/", &format!("{}/", etc.display()))
        .replace(spool, &etc.join("spool").display().to_string())
        .replace(url, &format!("https://localhost:{port}/v1/batches"));
    let path = etc.join("teledge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn replay_forward_takes_the_daemons_configuration_file() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let collector = collector(&pki, "collector", &out);
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = example_configuration(&pki, &etc, collector.port);
    // The example seals with a systemd credential, as the unit hands it over.
    let result = replay_forward(&config, &[("CREDENTIALS_DIRECTORY", &etc)]);
    assert!(result.status.success(), "{}", text(&result));
    let spooled = spooled(&result);
    assert!(spooled > 0, "{}", text(&result));
    assert_eq!(stored(&out).len(), spooled, "{}", text(&result));
    // The same file is what `check-config --config` and `run --config` read.
    let check = teledge()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CREDENTIALS_DIRECTORY", &etc)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check));
}

/// `check-config` run by hand, outside the unit, on a configuration whose spool key is a
/// systemd credential: without $CREDENTIALS_DIRECTORY it says how to give the file; with
/// `--credential NAME=FILE` it reads it as the unit's `LoadCredential=` would hand it over.
#[test]
fn check_config_by_hand_takes_a_credential_file_and_says_how_without_it() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let config = example_configuration(&pki, &etc, 8443);
    let by_hand = teledge()
        .env_remove("CREDENTIALS_DIRECTORY")
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(by_hand.status.code(), Some(78), "{}", text(&by_hand));
    assert!(
        text(&by_hand).contains("spool.key_credential (line")
            && text(&by_hand).contains("teledge check-config --credential spool-key=FILE"),
        "{}",
        text(&by_hand)
    );
    let given = teledge()
        .env_remove("CREDENTIALS_DIRECTORY")
        .args(["check-config", "--config"])
        .arg(&config)
        .arg("--credential")
        .arg(format!("spool-key={}", etc.join("spool-key").display()))
        .output()
        .unwrap();
    assert!(given.status.success(), "{}", text(&given));
    // A wrong file is the same problem the service would have.
    let wrong = teledge()
        .env_remove("CREDENTIALS_DIRECTORY")
        .args(["check-config", "--config"])
        .arg(&config)
        .args(["--credential", "spool-key=/nonexistent/spool.key"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(78), "{}", text(&wrong));
    assert!(text(&wrong).contains("spool-key"), "{}", text(&wrong));
    let bad = teledge()
        .args(["check-config", "--credential", "../x=/etc/passwd"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}

#[test]
fn a_forwarding_only_configuration_still_works_in_the_old_form_too() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let collector = collector(&pki, "collector", &out);
    let config = forward_config(
        &pki,
        &dir.path().join("spool"),
        "edge-01",
        "edge-01",
        "ca.pem",
        collector.port,
    );
    let new_form = replay_forward(&config, &[]);
    assert!(new_form.status.success(), "{}", text(&new_form));
    let first = spooled(&new_form);
    assert_eq!(stored(&out).len(), first);
    // `--forward CONFIG FILE...`, as scripts written before `--config` say it.
    let old_form = teledge()
        .args(["replay", "--no-progress", "--forward"])
        .arg(&config)
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap();
    assert!(old_form.status.success(), "{}", text(&old_form));
    assert!(
        text(&old_form).contains("--forward --config"),
        "{}",
        text(&old_form)
    );
    assert_eq!(spooled(&old_form), first);
    assert_eq!(stored(&out).len(), 2 * first);
}

#[test]
fn replay_forward_reports_every_problem_with_its_path_and_line_and_exits_78() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let good = agent_config(
        &pki,
        dir.path(),
        9,
        "[[capture]]\ninterface = \"eth0\"\n",
        None,
    );
    let text_of = std::fs::read_to_string(&good).unwrap();
    let bad = text_of
        .replace("id = \"edge-01\"", "id = \"edge/01\"")
        .replace("https://localhost", "http://localhost")
        .replace("flush_interval_ms = 20", "flush_interval_ms = 0");
    let line = |needle: &str| bad.lines().position(|l| l.contains(needle)).unwrap() + 1;
    std::fs::write(&good, &bad).unwrap();
    let result = replay_forward(&good, &[]);
    assert_eq!(result.status.code(), Some(78), "{}", text(&result));
    let all = text(&result);
    for expected in [
        format!("node.id (line {})", line("edge/01")),
        format!("uplink.url (line {})", line("http://")),
        format!(
            "spool.flush_interval_ms (line {})",
            line("flush_interval_ms")
        ),
    ] {
        assert!(all.contains(&expected), "{expected} missing in:\n{all}");
    }
    // A field no section has is refused by every command, placed by its line.
    let typo = text_of.replace("[spool]\n", "[spool]\nmax_byte = 1\n");
    std::fs::write(&good, &typo).unwrap();
    let result = replay_forward(&good, &[]);
    assert_eq!(result.status.code(), Some(78), "{}", text(&result));
    let typo_line = typo.lines().position(|l| l == "max_byte = 1").unwrap() + 1;
    assert!(
        text(&result).contains(&format!("line {typo_line}")) && text(&result).contains("max_byte"),
        "{}",
        text(&result)
    );
}

#[test]
fn check_config_takes_the_file_with_config_or_as_an_argument() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        &pki,
        dir.path(),
        9,
        "[hep]\nudp = \"127.0.0.1:9060\"\n",
        None,
    );
    for args in [&["check-config", "--config"][..], &["check-config"][..]] {
        let out = teledge().args(args).arg(&config).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // Both at once is a usage error, not a guess.
    let out = teledge()
        .args(["check-config", "--config"])
        .arg(&config)
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // `--config` without `--forward` or `--format table` would be ignored by `replay`:
    // refused instead.
    let out = teledge()
        .args(["replay", "--config"])
        .arg(&config)
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// `dead-letters` reads the forwarding sections of the daemon's file: a problem in a section
/// it does not use (a sensor profile) does not stop it, as it did when it needed the whole
/// file valid or else a forwarding-only one.
#[test]
fn dead_letters_take_the_daemons_file_using_the_forwarding_sections() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(
        &pki,
        dir.path(),
        9,
        "[[sensors]]\nname = \"ups\"\nport = \"/dev/ttyUSB9\"\nprofile = \"no-such-profile\"\n",
        None,
    );
    let check = teledge()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(78), "{}", text(&check));
    assert!(
        text(&check).contains("sensors[0].profile"),
        "{}",
        text(&check)
    );
    let list = teledge()
        .args(["dead-letters", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list));
}

/// Regression: a key, a secret or the configuration itself named by a path to a device was
/// read for ever (`check-config` hung filling memory on `/dev/zero` or `/dev/urandom`), a
/// file that is not UTF-8 said so without a line, and a problem with a file two sections
/// read was told twice. Each is one clear problem now, exit 78, well within a few seconds.
#[test]
fn devices_huge_files_and_non_utf8_are_one_clear_problem_each_never_a_hang() {
    use std::time::{Duration, Instant};
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(&pki, dir.path(), 1, "[hep]\nudp = \"127.0.0.1:0\"", None);
    let good = std::fs::read_to_string(&config).unwrap();
    // `check-config` with a deadline: a hang is a failure, not a stuck test.
    let check = |file: &[u8]| -> (Option<i32>, String) {
        let path = dir.path().join("hostile.toml");
        std::fs::write(&path, file).unwrap();
        let mut child = teledge()
            .args(["check-config"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "check-config still running after 20 s on {}",
                    String::from_utf8_lossy(file)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code(), text(&out))
    };
    let site_key = good
        .lines()
        .find_map(|l| l.strip_prefix("site_key_file = "))
        .unwrap()
        .to_owned();
    let spool_key = good
        .lines()
        .find_map(|l| {
            l.strip_prefix("key_file = ")
                .filter(|k| k.contains("spool"))
        })
        .unwrap_or_else(|| panic!("no spool key_file in {good}"))
        .to_owned();
    for (what, text, expected) in [
        (
            "site key",
            good.replace(&site_key, "\"/dev/zero\""),
            "privacy.site_key_file (line",
        ),
        (
            "spool key",
            good.replace(&spool_key, "\"/dev/urandom\""),
            "spool.key_file (line",
        ),
        (
            "HEP auth key",
            good.replace("[hep]\n", "[hep]\nauth_key_file = \"/dev/zero\"\n"),
            "hep.auth_key_file (line",
        ),
    ] {
        let (code, said) = check(text.as_bytes());
        assert_eq!(code, Some(78), "{what}: {said}");
        assert!(
            said.contains(expected) && said.contains("not a regular file"),
            "{what}: {said}"
        );
        assert_eq!(
            said.matches("not a regular file").count(),
            1,
            "{what}: told once: {said}"
        );
    }
    // The configuration itself: a device, more than 4 MiB, not UTF-8 (line and column).
    let (code, said) = {
        let out = teledge()
            .args(["check-config", "/dev/zero"])
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    assert_eq!(code, Some(78), "{said}");
    assert!(said.contains("not a regular file"), "{said}");
    let mut huge = good.clone().into_bytes();
    huge.extend(std::iter::repeat_n(b'#', 5 << 20));
    let (code, said) = check(&huge);
    assert_eq!(code, Some(78), "{said}");
    assert!(said.contains("larger than 4194304 bytes"), "{said}");
    let mut latin1 = good.clone().into_bytes();
    latin1.extend(b"# caf\xe9\n");
    let line = good.lines().count() + 1;
    let (code, said) = check(&latin1);
    assert_eq!(code, Some(78), "{said}");
    assert!(
        said.contains(&format!("line {line}, column 6: not UTF-8 (byte 0xe9)")),
        "{said}"
    );
}

/// The bounds of records in flight (the daemon's record queue, calls in their grace) are
/// configuration, checked like every key: a bad value is refused naming key and line; good
/// ones pass. They were constants (65,536 records and 48 MiB; 10,000 records and 16 MiB).
#[test]
fn the_bounds_of_records_in_flight_are_checked_configuration() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let bounds = |queue_records: u64, queue_bytes: u64, grace_records: u64, grace_bytes: u64| {
        format!(
            "[hep]\nudp = \"127.0.0.1:0\"\n[correlation]\nrecord_queue_records = {queue_records}\n\
             record_queue_bytes = {queue_bytes}\ngrace_records = {grace_records}\n\
             grace_bytes = {grace_bytes}\n"
        )
    };
    let check = |config: &Path| {
        teledge()
            .args(["check-config", "--config"])
            .arg(config)
            .output()
            .unwrap()
    };
    let good = agent_config(
        &pki,
        dir.path(),
        9,
        &bounds(4096, 8 << 20, 100, 2 << 20),
        None,
    );
    let result = check(&good);
    assert!(result.status.success(), "{}", text(&result));
    let bad = agent_config(&pki, dir.path(), 9, &bounds(5, 1000, 0, 0), None);
    let written = std::fs::read_to_string(&bad).unwrap();
    let line = |key: &str| {
        written
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")))
            .unwrap()
            + 1
    };
    let result = check(&bad);
    assert_eq!(result.status.code(), Some(78), "{}", text(&result));
    let said = text(&result);
    for key in [
        "record_queue_records",
        "record_queue_bytes",
        "grace_records",
        "grace_bytes",
    ] {
        let expected = format!("correlation.{key} (line {})", line(key));
        assert!(said.contains(&expected), "{expected} missing in:\n{said}");
    }
}
