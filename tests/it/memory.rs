//! Memory as the kernel counts it (`VmHWM`, `VmRSS` from `/proc`), for the bounds the README
//! states: bytes per active RTP stream in `teledge replay`.

use std::path::Path;
use std::process::Command;

use crate::robustness::replay_peak_rss_kib;

fn gencap(out: &Path, args: &[&str]) {
    let status = Command::new(crate::support::tool("teledge-gencap"))
        .arg("--out")
        .arg(out)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
}

/// An active RTP stream costs at most 1.375 KiB of resident memory: the analysis state, its
/// place in the stream table and the SSRC and call indexes, and the allocator's share.
/// Measured as the kernel counts it: the peak RSS of `teledge replay` on 3000 calls (4000
/// streams measured at once), minus its peak on the same calls (same SIP, same SDP, same
/// timing) sending no RTP, over the most streams measured at once. Before the stream state
/// was packed (a 68-byte key held four times, streams stored inline in the table, `Vec`s
/// and `Option`s per stream) this read 1.7 KiB; packed, 1.0–1.2 KiB; with the state at 552
/// bytes and the SSRC index inline (2026-12-03) 0.9–1.0 KiB in release, where the heap's
/// own difference (DHAT) is 833 bytes; this debug-build test read 924–1,196 bytes in
/// three runs. The bound leaves room for peak RSS's noise; issue 14's 1 KiB is checked by
/// `scripts/bench-offline.sh`.
#[test]
fn an_active_rtp_stream_costs_at_most_1408_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let with_rtp = dir.path().join("rtp.pcap");
    let silent = dir.path().join("silent.pcap");
    let common = ["--calls", "3000", "--rtp", "110", "--interval-ms", "1"];
    gencap(&with_rtp, &common);
    gencap(&silent, &[&common[..], &["--no-rtp-packets"]].concat());
    let (peak_rtp, summary) = replay_peak_rss_kib(&with_rtp, 64);
    let (peak_silent, silent_summary) = replay_peak_rss_kib(&silent, 64);
    assert_eq!(silent_summary["media"]["streams"], 0);
    assert_eq!(summary["calls"], silent_summary["calls"]);
    let streams = summary["media"]["peak_active_streams"].as_u64().unwrap();
    assert!(
        streams >= 1500,
        "{streams} streams at once: too few to measure"
    );
    let per_stream = peak_rtp.saturating_sub(peak_silent) * 1024 / streams;
    println!(
        "peak RSS {peak_rtp} KiB with RTP, {peak_silent} KiB without; {streams} streams at once: \
         {per_stream} bytes per stream"
    );
    assert!(
        per_stream <= 1408,
        "{per_stream} bytes per active stream ({peak_rtp} KiB vs {peak_silent} KiB, {streams} streams)"
    );
}

/// Fields of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, fields: &[&str]) -> Vec<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    fields
        .iter()
        .map(|f| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:")))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {f} in {status}"))
        })
        .collect()
}

/// `teledge run` with one capture (loopback, one capture thread starting with a 512 KiB ring
/// that would grow to the default 16 MiB), idle: its resident memory as the kernel counts it.
/// The capture ring is mapped into the process whole at start (the kernel inserts every page
/// of it at mmap), so VmRSS is the ring plus the process's own memory; the process's own
/// (anonymous) memory must stay within 10 MiB (release build). `VmRSS` itself was about
/// 29 MiB with the whole 16 MiB ring from the start: the ring, 8.5 MiB of program text mapped
/// from the binary (shared, reclaimable page cache) and 2.7 MiB of the process's own.
#[test]
fn idle_daemon_with_one_capture_stays_small() {
    assert!(
        crate::daemon::is_root(),
        "live capture needs root (CAP_NET_RAW), as CI has"
    );
    let pki = crate::uplink::pki();
    let dir = tempfile::tempdir().unwrap();
    let c = crate::uplink::collector(&pki, "collector", &dir.path().join("collected"));
    let config = crate::daemon::agent_config(
        &pki,
        dir.path(),
        c.port,
        "[[capture]]\ninterface = \"lo\"\nring_start_kib = 512\nthreads = 1\n",
        None,
    );
    let mut agent = crate::daemon::Agent::start(&config);
    agent.wait_for_log("teledge running");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let fields = [
        "VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads",
    ];
    let v = status_kib(agent.pid(), &fields);
    let ring = mapped_rss_kib(agent.pid(), |name| name.starts_with("socket:"));
    let program = mapped_rss_kib(agent.pid(), |name| name.ends_with("/teledge"));
    println!(
        "idle teledge run, one capture: VmRSS {} KiB, VmHWM {} KiB, RssAnon {} KiB, RssFile {} KiB \
         (capture ring {ring} KiB, program {program} KiB), RssShmem {} KiB, {} threads",
        v[0], v[1], v[2], v[3], v[4], v[5]
    );
    agent.stop();
    // The ring is the start ring asked for (a box idle most of the time), resident from the
    // start; it grows to the configured 16 MiB only when traffic needs it. The rest is the
    // process.
    assert_eq!(ring, 512, "the capture ring");
    // Measured: 2.7 MiB in a release build, 25 MiB in a debug build (which the test suite
    // runs; where the debug build's extra 22 MiB go was not investigated), so each gets its
    // own bound.
    let bound = if cfg!(debug_assertions) { 32 } else { 10 };
    assert!(
        v[2] <= bound * 1024,
        "anonymous memory {} KiB, bound {bound} MiB",
        v[2]
    );
}

/// Resident KiB of the mappings of a process whose name passes `pick` (`/proc/<pid>/smaps`).
fn mapped_rss_kib(pid: u32, pick: impl Fn(&str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut picked = false;
    let mut total = 0;
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            picked = line.split_whitespace().nth(5).is_some_and(&pick);
        } else if picked && first == "Rss:" {
            total += parts
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}
