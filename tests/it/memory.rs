//! Memory as the kernel counts it (`VmHWM`, `VmRSS` from `/proc`), for the bounds the README
//! states: bytes per active RTP stream in `teledge replay`.

use std::path::Path;
use std::process::Command;

use crate::robustness::replay_peak_rss_kib;

fn gencap(out: &Path, args: &[&str]) {
    let status = Command::new(env!("CARGO_BIN_EXE_teledge-gencap"))
        .arg("--out")
        .arg(out)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
}

/// An active RTP stream costs at most 1.5 KiB of resident memory: the analysis state, its
/// place in the stream table and the SSRC and call indexes, and the allocator's share.
/// Measured as the kernel counts it: the peak RSS of `teledge replay` on 3000 calls (about
/// 3300 streams measured at once), minus its peak on the same calls (same SIP, same SDP,
/// same timing) sending no RTP, over the most streams measured at once. Before the stream
/// state was packed (a 68-byte key held four times, streams stored inline in the table,
/// `Vec`s and `Option`s per stream) this read 1.7 KiB; packed, 1.2 KiB. (The goal
/// is 1 KiB: not reached, see docs/performance.md.)
#[test]
fn an_active_rtp_stream_costs_at_most_one_and_a_half_kib() {
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
        per_stream <= 1536,
        "{per_stream} bytes per active stream ({peak_rtp} KiB vs {peak_silent} KiB, {streams} streams)"
    );
}
