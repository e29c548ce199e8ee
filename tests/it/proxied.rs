//! Calls through a proxy on the tapped box, captured by several capture threads.
//!
//! Real parts only: Kamailio 5.6 from Debian as a stateful, record-routing proxy (`tm`, `rr`)
//! on the loopback between SIPp's built-in uac and uas. Two daemons capture the loopback live
//! at the same time: one with two capture threads in a `PACKET_FANOUT` group and two
//! correlation shards, one with a single capture thread (its packets in capture order: the
//! single-threaded reference); dumpcap (Debian's wireshark-common, with tshark) writes the
//! same packets into a pcap that `teledge replay` reads single-threaded too. Each call has two
//! hops with one Call-ID (UAC → Kamailio, Kamailio → UAS), two flows the fanout may hand to
//! two threads, whose packets then reach the call's shard out of capture order by up to a
//! ring block; the two-thread daemon's records must be the single thread's and the replay's,
//! field for field (times within what separate capture sockets stamp apart), naming the
//! first hop (UAC → proxy) as caller and callee.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::{agent_config, collected, free_port, http_get, teledge, Agent};
use crate::hep_out::{sipp_through_proxy, Kamailio, MODULES};
use crate::uplink::{collector, pki};

#[test]
fn proxied_calls_captured_by_two_threads_give_the_records_of_a_time_ordered_replay() {
    crate::live::in_fresh_netns(proxied_calls_in_netns);
}

/// dumpcap writing what the loopback carries into `pcap` until stopped (SIGINT, so it
/// writes out what it has).
struct Dumpcap(std::process::Child);

impl Dumpcap {
    fn start(pcap: &Path) -> Dumpcap {
        let child = Command::new("dumpcap")
            .args(["-i", "lo", "-P", "-q", "-w"])
            .arg(pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dumpcap is needed (Debian package wireshark-common, with tshark; scripts/test.sh installs tshark)");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The pcap header is written once it captures.
        while std::fs::metadata(pcap).map_or(0, |m| m.len()) < 24 {
            assert!(Instant::now() < deadline, "dumpcap never started capturing");
            thread::sleep(Duration::from_millis(50));
        }
        Dumpcap(child)
    }

    fn stop(mut self) {
        // SAFETY: kill takes a pid (of the child this test started) and a signal number.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(rc, 0, "kill dumpcap: {}", std::io::Error::last_os_error());
        let _ = self.0.wait();
    }
}

impl Drop for Dumpcap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proxied_calls_in_netns() {
    crate::daemon::require_sipp();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let (proxy_port, uas_port, uac_port, metrics_port) =
        (free_port(), free_port(), free_port(), free_port());

    let pcap = dir.path().join("lo.pcap");
    let dumpcap = Dumpcap::start(&pcap);
    // Two capture threads and two shards whatever the machine's cores; and one thread.
    let start_agent = |name: &str, capture: &str, metrics: Option<u16>| {
        let dir = dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("collected");
        let c = collector(&pki, "collector", &out);
        let config = agent_config(&pki, &dir, c.port, capture, metrics);
        let mut agent = Agent::start(&config);
        agent.wait_for_log("teledge running");
        (agent, c, out)
    };
    let (agent, _c, out) = start_agent(
        "two-threads",
        "[[capture]]\ninterface = \"lo\"\nring_mib = 8\nblock_kib = 256\nthreads = 2\n\
         [correlation]\nshards = 2\n",
        Some(metrics_port),
    );
    let (single_agent, _single_c, single_out) = start_agent(
        "one-thread",
        "[[capture]]\ninterface = \"lo\"\nring_mib = 8\nblock_kib = 256\nthreads = 1\n",
        None,
    );

    // Stateful (tm) and record-routing (rr): it answers 100 Trying itself, and the
    // in-dialog requests (ACK, BYE) pass through it as well.
    let mut kamailio = Kamailio::start(&format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
listen=udp:127.0.0.1:{proxy_port}
mpath="{MODULES}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (has_totag()) {{
        if (!loose_route()) {{ $du = "sip:127.0.0.1:{uas_port}"; }}
        t_relay();
        exit;
    }}
    t_check_trans();
    record_route();
    $du = "sip:127.0.0.1:{uas_port}";
    t_relay();
    exit;
}}
"#
    ));
    let calls = 8;
    sipp_through_proxy(
        &mut kamailio,
        Duration::from_millis(1000),
        &dir.path().join("sipp"),
        (proxy_port, uas_port, uac_port),
        calls,
        &["-r", "8", "-d", "200"],
    );

    let live = collected(
        &out,
        |r| r["type"] == "call",
        calls,
        Duration::from_secs(20),
    );
    let single = collected(
        &single_out,
        |r| r["type"] == "call",
        calls,
        Duration::from_secs(20),
    );
    let metrics = http_get(metrics_port, "/metrics");
    println!("two threads: {}", agent.stop());
    println!("one thread: {}", single_agent.stop());
    dumpcap.stop();
    drop(kamailio);
    let reordered: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("teledge_correlation_sip_reordered_total"))
        .collect();
    println!("reorder window: {reordered:?}");
    assert!(
        metrics.contains("teledge_correlation_shards 2"),
        "two shards:\n{metrics}"
    );

    // The same packets, single-threaded and in capture order.
    let replay = teledge()
        .args(["replay", "--no-progress"])
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(replay.status.success(), "replay: {replay:?}");
    let replayed: Vec<Value> = String::from_utf8(replay.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["type"] == "call")
        .collect();
    assert_eq!(replayed.len(), calls, "{replayed:#?}");
    assert_eq!(live.len(), calls, "{live:#?}");
    assert_eq!(single.len(), calls, "{single:#?}");
    let caller = format!("127.0.0.1:{uac_port}");
    let proxy = format!("127.0.0.1:{proxy_port}");
    for r in &single {
        // The first hop: SIPp's uac calling Kamailio.
        assert_eq!(
            (r["caller_address"].as_str(), r["callee_address"].as_str()),
            (Some(caller.as_str()), Some(proxy.as_str())),
            "{r:#}"
        );
        assert_eq!(r["outcome"], "answered", "{r:#}");
        assert_eq!(r["forks"], 1, "one To-tag, seen on both hops: {r:#}");
    }
    // Each packet socket stamps a packet itself: the single-threaded daemon's stamps are
    // within a few microseconds of the two threads' (so record ids, which hash the INVITE's
    // nanoseconds, differ); the pcap holds microseconds, and dumpcap's socket may stamp tens
    // of microseconds apart under load. The hops of a call are further apart than that
    // (Kamailio's turn), so a time taken from the wrong hop still shows.
    compare(&live, &single, 50e-6, "one thread");
    compare(&live, &replayed, 200e-6, "replay");
}

/// The records of `live` and `reference` are the same calls (matched by INVITE time), with
/// the same fields and times within `tolerance` seconds.
fn compare(live: &[Value], reference: &[Value], tolerance: f64, what: &str) {
    let time = |v: &Value| -> Option<f64> {
        let t = humantime::parse_rfc3339(v.as_str()?).unwrap();
        Some(
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64(),
        )
    };
    let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() < tolerance,
        (a, b) => a.is_none() && b.is_none(),
    };
    assert_eq!(live.len(), reference.len());
    for r in reference {
        let matching: Vec<&Value> = live
            .iter()
            .filter(|l| close(time(&l["invite_time"]), time(&r["invite_time"])))
            .collect();
        assert_eq!(matching.len(), 1, "{what}: {r:#}\nlive {live:#?}");
        let l = matching[0];
        for field in [
            "caller_address",
            "callee_address",
            "transport",
            "outcome",
            "state",
            "closed_by",
            "final_status",
            "complete",
            "started_before_capture",
            "roles_known",
            "hangup_by",
            "messages",
            "retransmissions",
            "forks",
            "early_media",
            "user_agents",
            "media",
        ] {
            // Addresses are kept (the default address mode), SDP addresses too.
            assert_eq!(
                l[field], r[field],
                "{what}: {field}\nlive {l:#}\n{what} {r:#}"
            );
        }
        for field in [
            "invite_time",
            "first_message_time",
            "first_provisional_time",
            "ringing_time",
            "answer_time",
            "end_time",
            "bye_answered_time",
            "last_message_time",
        ] {
            assert!(
                close(time(&l[field]), time(&r[field])),
                "{what}: {field}\nlive {l:#}\n{what} {r:#}"
            );
        }
        for field in [
            "post_dial_delay_s",
            "time_to_answer_s",
            "ring_duration_s",
            "talk_duration_s",
        ] {
            let (a, b) = (l[field].as_f64(), r[field].as_f64());
            assert!(
                a.zip(b)
                    .is_some_and(|(a, b)| (a - b).abs() < 2.0 * tolerance)
                    || a.is_none() && b.is_none(),
                "{what}: {field}\nlive {l:#}\n{what} {r:#}"
            );
        }
    }
}
