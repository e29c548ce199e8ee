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
    assert!(table.contains("not reached"));
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

/// `--record-grace-ms`: how long a record waits for its media in flight. sngrep_aaa.pcap has
/// an RTCP report a few seconds after its call ended: counted apart with the default 1 s,
/// measured into the call with 10 s. Out of range is a clear error, not a silent clamp.
#[test]
fn replay_record_grace_is_configurable_and_bounded() {
    let rtcp_after_end = |grace: Option<&str>| {
        let mut command = teledge();
        command.args(["replay", "--no-progress"]);
        if let Some(ms) = grace {
            command.args(["--record-grace-ms", ms]);
        }
        let out = command.arg(data_path("sngrep_aaa.pcap")).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let summary: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap()).unwrap();
        summary["media"]["rtcp_after_call_end"].as_u64().unwrap()
    };
    assert_eq!(rtcp_after_end(None), 1, "default grace: after the end");
    assert_eq!(rtcp_after_end(Some("1000")), 1);
    assert_eq!(rtcp_after_end(Some("10000")), 0, "within a 10 s grace");
    let out = teledge()
        .args(["replay", "--record-grace-ms", "10001"])
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--record-grace-ms 10001 is out of range: must be between 0 and 10000"),
        "{stderr}"
    );
}

/// The call table speaks a supervisor's language: local time in the zone asked for, time to
/// answer, ring time only for calls that rang, who hung up, the outcome; SIP status codes
/// and Call-IDs only with `--verbose`. sngrep_aaa.pcap (TShark: first INVITE 2005-07-04
/// 09:40:49 UTC) holds an attempt given up after a 100 Trying, two refused with 407 then
/// 403 (they showed 34 s and 51 s of "ring"), and one that rang (183) and got 480.
#[test]
fn replay_table_speaks_a_supervisors_language() {
    let table = |args: &[&str]| {
        let out = teledge()
            .args(["replay", "--format", "table"])
            .args(args)
            .arg(data_path("sngrep_aaa.pcap"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let column = |text: &str, header: &str, row: usize| -> String {
        let lines: Vec<&str> = text.lines().collect();
        let at = lines[0].find(header).unwrap();
        let end = at + header.len();
        // Numbers are right-aligned under their header.
        lines[row + 1][..end].rsplit(' ').next().unwrap().to_owned()
    };
    let berlin = table(&["--tz", "Europe/Berlin"]);
    assert!(berlin.starts_with("TIME (Europe/Berlin)"), "{berlin}");
    let rows: Vec<&str> = berlin.lines().skip(1).take(4).collect();
    assert!(rows[0].starts_with("2005-07-04 11:40:49 CEST"), "{berlin}");
    assert!(rows[0].contains("abandoned"), "{berlin}");
    assert!(
        rows[1].contains("rejected") && rows[2].contains("rejected"),
        "{berlin}"
    );
    assert!(rows[3].contains("not reached"), "{berlin}");
    // Ring: only the call that rang (183 → 480, 0.04 s).
    assert_eq!(column(&berlin, "RING s", 0), "-", "never rang");
    assert_eq!(
        column(&berlin, "RING s", 1),
        "-",
        "407 then 403: never rang"
    );
    assert_eq!(
        column(&berlin, "RING s", 2),
        "-",
        "407 then 403: never rang"
    );
    assert_eq!(column(&berlin, "RING s", 3), "0.0");
    assert_eq!(column(&berlin, "ANSWER s", 0), "-", "never answered");
    assert!(rows[0].contains("caller"), "the caller gave up: {berlin}");
    // No SIP codes, no Call-IDs by default.
    assert!(
        !berlin.contains("CALL-ID") && !berlin.contains("@192.168.1.2"),
        "{berlin}"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.contains(" 403 ") || r.contains(" 408 ")),
        "{berlin}"
    );

    let verbose = table(&["--tz", "Asia/Kathmandu", "--verbose"]);
    assert!(
        verbose
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("2005-07-04 15:25:49 +0545"),
        "{verbose}"
    );
    assert!(verbose.contains("CALL-ID") && verbose.contains("85216695-42dcdb1d@192.168.1.2"));
    assert!(
        verbose.lines().nth(2).unwrap().contains(" 403 "),
        "{verbose}"
    );

    // An answered call: time to answer and talk time, as its record has them.
    let out = teledge()
        .args(["replay", "--format", "table", "--tz", "UTC"])
        .arg(data_path("sip_ipv4_tcp.pcap"))
        .output()
        .unwrap();
    let answered = String::from_utf8(out.stdout).unwrap();
    let out = teledge()
        .arg("replay")
        .arg(data_path("sip_ipv4_tcp.pcap"))
        .output()
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(record["outcome"], "answered");
    let invite = record["invite_time"].as_str().unwrap().replace('T', " ");
    assert!(
        answered
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{} UTC", &invite[..19])),
        "{answered}"
    );
    let figure = |field: &str| format!("{:.1}", record[field].as_f64().unwrap());
    assert_eq!(column(&answered, "ANSWER s", 0), figure("time_to_answer_s"));
    assert_eq!(column(&answered, "RING s", 0), figure("ring_duration_s"));
    assert_eq!(column(&answered, "TALK s", 0), figure("talk_duration_s"));

    let out = teledge()
        .args(["replay", "--format", "table", "--tz", "Mars/Olympus"])
        .arg(data_path("sngrep_aaa.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--tz \"Mars/Olympus\": not a time zone"),
        "{stderr}"
    );
}

/// `replay --format table --config`: the configuration's `[stats] time_zone` is the table's
/// zone unless `--tz` names one, and its `[[service]]` give a SERVICE column, classified on
/// the clear called numbers (sngrep_aaa.pcap: three calls to 97239287044 / 0097239287044,
/// one to 35104724, first INVITE 09:40:49 UTC = 15:25:49 +0545).
#[test]
fn replay_table_takes_its_zone_and_services_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("teledge.toml");
    std::fs::write(
        &config,
        "[stats]\ntime_zone = \"Asia/Kathmandu\"\n\n\
         [[service]]\nname = \"israel\"\nnumbers = [\"972*\", \"00972*\"]\n\n\
         [[service]]\nname = \"denmark\"\nnumbers = [\"35104724\"]\n",
    )
    .unwrap();
    let table = |args: &[&str], config: &std::path::Path| {
        let out = teledge()
            .args(["replay", "--format", "table", "--config"])
            .arg(config)
            .args(args)
            .arg(data_path("sngrep_aaa.pcap"))
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, text) = table(&[], &config);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("TIME (Asia/Kathmandu)"), "{text}");
    let rows: Vec<&str> = text.lines().skip(1).take(4).collect();
    assert!(rows[0].starts_with("2005-07-04 15:25:49 +0545"), "{text}");
    let at = text.lines().next().unwrap().find("SERVICE").unwrap();
    let service = |row: &str| row[at..].split_whitespace().next().unwrap().to_owned();
    assert_eq!(
        rows.iter().map(|r| service(r)).collect::<Vec<_>>(),
        ["israel", "israel", "israel", "denmark"],
        "{text}"
    );

    // --tz wins; a service matching none of the calls shows `-`.
    std::fs::write(
        &config,
        "[[service]]\nname = \"denmark\"\nnumbers = [\"35104724\"]\n",
    )
    .unwrap();
    let (code, text) = table(&["--tz", "Europe/Berlin"], &config);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("TIME (Europe/Berlin)"), "{text}");
    let at = text.lines().next().unwrap().find("SERVICE").unwrap();
    let services: Vec<String> = text
        .lines()
        .skip(1)
        .take(4)
        .map(|r| r[at..].split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(services, ["-", "-", "-", "denmark"], "{text}");

    // A bad statistics section is a configuration error, exit 78.
    std::fs::write(&config, "[stats]\ntime_zone = \"Mars/Olympus\"\n").unwrap();
    let (code, _) = table(&[], &config);
    assert_eq!(code, Some(78));
}
