//! The status page in a real browser: `teledge run` captures a SIPp call live on loopback
//! (a network namespace of its own), and Debian's Chromium, headless, driven by
//! puppeteer-core (`tests/browser/status_page.cjs`, installed into `target/puppeteer` by
//! `scripts/test.sh`), is refused without a token and with a wrong one, logs in with a
//! token from `teledge supervisor-token`, sees the call appear with its pseudonymised
//! parties, its service and its live figures updating, takes the screenshots kept in
//! `docs/`, and sees the call go when it ends. The logins leave `teledge.audit/1` records
//! at a real collector.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{agent_config, free_port, http_get, sipp, Agent};
use crate::uplink::{collector, pki, stored};

/// Where puppeteer-core is installed (scripts/test.sh).
fn puppeteer_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/puppeteer");
    assert!(
        dir.join("node_modules/puppeteer-core/package.json").is_file(),
        "puppeteer-core is needed in {} (scripts/test.sh installs it: npm install --prefix target/puppeteer puppeteer-core@24.43.1)",
        dir.display()
    );
    dir
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn number(text: &str) -> Option<f64> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|t| !t.is_empty())
        .and_then(|t| t.parse().ok())
}

/// `m:ss` or `h:mm:ss` → seconds.
fn seconds(text: &str) -> u64 {
    text.split(':')
        .fold(0, |acc, part| acc * 60 + part.parse::<u64>().unwrap_or(0))
}

#[test]
fn chromium_logs_in_and_watches_a_live_sipp_call_on_the_status_page() {
    crate::live::in_fresh_netns(chromium_watches_a_live_call);
}

fn chromium_watches_a_live_call() {
    crate::daemon::require_sipp();
    assert!(
        Path::new("/usr/bin/chromium").is_file(),
        "Chromium is needed (Debian package chromium; scripts/test.sh installs it)"
    );
    assert!(
        Command::new("node").arg("--version").output().is_ok(),
        "Node.js is needed (Debian package nodejs; scripts/test.sh installs it)"
    );
    let puppeteer = puppeteer_dir();
    let (token, hash) = crate::status_page::supervisor_token("alice");

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let port = free_port();
    let sections = format!(
        "[[capture]]\ninterface = \"lo\"\nring_mib = 8\nblock_kib = 256\n\
         [status]\nenabled = true\n\
         [[service]]\nname = \"sales\"\nnumbers = [\"service\"]\nmonitorable = true\n\
         [[supervisor]]\nid = \"alice\"\ntoken_sha256 = \"{hash}\"\nview = [\"*\"]\nlisten = [\"sales\"]\n"
    );
    let config = agent_config(&pki, dir.path(), c.port, &sections, Some(port));
    let mut agent = Agent::start(&config);
    agent.wait_for_log("teledge running");

    // Over plain HTTP first: no token, a wrong one.
    let plain = http_get(port, "/api/snapshot");
    assert!(plain.starts_with("HTTP/1.1 401"), "{plain}");

    // SIPp: an answering side, and (once the browser is in) a caller playing 8 s of G.711.
    let work = dir.path().join("sipp");
    std::fs::create_dir_all(work.join("pcap")).unwrap();
    std::os::unix::fs::symlink(
        "/usr/share/sip-tester/g711a.pcap",
        work.join("pcap/g711a.pcap"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/usr/share/sip-tester/dtmf_2833_1.pcap",
        work.join("pcap/dtmf_2833_1.pcap"),
    )
    .unwrap();
    let uas_port = free_port();
    let _uas = Killed(
        sipp(
            &[
                "-sn",
                "uas",
                "-i",
                "127.0.0.1",
                "-p",
                &uas_port.to_string(),
                "-mp",
                "16000",
            ],
            &work,
        )
        .spawn()
        .unwrap(),
    );

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let _ = std::fs::remove_file(shots.join("status-page.png"));
    let mut browser = Killed(
        Command::new("node")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.cjs"))
            .env("TELEDGE_URL", format!("http://127.0.0.1:{port}"))
            .env("TELEDGE_TOKEN", &token)
            .env("TELEDGE_SCREENSHOTS", &shots)
            .env("TELEDGE_PUPPETEER", &puppeteer)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = browser.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = |what: &str, within: Duration| -> Value {
        rx.recv_timeout(within)
            .unwrap_or_else(|_| panic!("the browser script's {what} within {within:?}"))
    };
    let ready = next("login", Duration::from_secs(60));
    if ready["step"] != "ready" {
        panic!("the browser did not get in: {ready:#}");
    }
    let caller = {
        let work = work.clone();
        thread::spawn(move || {
            let port = free_port().to_string();
            let target = format!("127.0.0.1:{uas_port}");
            let args = [
                "-sn",
                "uac_pcap",
                "-mp",
                "17000",
                "-i",
                "127.0.0.1",
                "-p",
                &port,
                "-m",
                "1",
                &target,
            ];
            let status = sipp(&args, &work).status().unwrap();
            assert!(status.success(), "sipp {args:?}: {status:?}");
        })
    };
    let started = Instant::now();
    let mut summary = Value::Null;
    while started.elapsed() < Duration::from_secs(90) {
        let v = next("summary", Duration::from_secs(90));
        if v["step"] == "summary" {
            summary = v["summary"].clone();
            break;
        }
    }
    caller.join().unwrap();
    println!("browser summary: {summary:#}");
    assert!(summary["error"].is_null(), "{summary:#}");

    // Refused without a session and with a wrong token; in with the right one.
    assert_eq!(summary["no_token_status"], 401);
    assert_eq!(
        summary["wrong_token_message"],
        "This token is not accepted."
    );
    assert!(summary["wrong_token_url"].as_str().unwrap().ends_with('/'));
    assert_eq!(summary["login_page_status"], 200);
    assert_eq!(summary["cookie_http_only"], true);
    assert_eq!(summary["script_sees_cookie"], false);
    assert_eq!(summary["calls_before"], 0);

    // The call appeared: pseudonymised parties (keyed hash), its service, listenable,
    // and its figures updated from one snapshot to the next.
    let samples = summary["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{summary:#}");
    let first = &samples[0];
    let last = samples.last().unwrap();
    assert_eq!(first["service"], "sales");
    assert_eq!(first["listen"], true);
    let parties = first["parties"].as_str().unwrap();
    assert!(
        !parties.contains("sipp") && !parties.contains("service") && parties.contains(" → "),
        "parties are pseudonymised: {parties}"
    );
    assert!(first["id"].as_str().unwrap().len() >= 16);
    assert!(last["seq"].as_u64() > first["seq"].as_u64(), "{samples:#?}");
    assert!(
        seconds(last["duration"].as_str().unwrap()) > seconds(first["duration"].as_str().unwrap()),
        "the duration counts up: {samples:#?}"
    );
    assert!(
        samples.iter().any(|s| s["state"] == "connected"),
        "{samples:#?}"
    );
    // The caller's direction carries the G.711 audio: a MOS for it, in range.
    let mos = samples
        .iter()
        .rev()
        .find_map(|s| number(s["forward"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no MOS in {samples:#?}"));
    assert!((3.5..=4.5).contains(&mos), "MOS {mos}");
    assert_eq!(summary["screenshot"], true);
    assert!(
        summary["phone_scroll_width"].as_u64().unwrap() <= 392,
        "the page fits a phone's width (tables scroll inside their box): {summary:#}"
    );
    let png = std::fs::read(shots.join("status-page.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );

    // The call ended and left the page; no CSP violation, no script error.
    assert_eq!(summary["call_gone"], true);
    assert_eq!(summary["csp_violations"], serde_json::json!([]));
    // (Chromium logs the two refusals it was shown, 401, as resource errors: expected.)
    let errors: Vec<_> = summary["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e.as_str().unwrap_or("").contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "{summary:#}");

    // The logins are in the audit trail at the collector: one refused, one accepted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let audits = loop {
        let audits: Vec<Value> = stored(&out)
            .into_iter()
            .map(|l| l["record"].clone())
            .filter(|r| r["type"] == "audit")
            .collect();
        if audits.len() >= 2 || Instant::now() > deadline {
            break audits;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let logins: Vec<_> = audits
        .iter()
        .map(|a| {
            (
                a["action"].as_str(),
                a["outcome"].as_str(),
                a["principal"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        logins,
        vec![
            (Some("login"), Some("refused"), None),
            (Some("login"), Some("ok"), Some("alice"))
        ],
        "{audits:#?}"
    );
    assert!(audits[1]["user_agent"].as_str().unwrap().contains("Chrome"));
    agent.stop();
}
