//! One pipeline whatever the source: `teledge run` capturing a veth (one capture thread, and
//! two in a PACKET_FANOUT group) and `teledge run`'s HEP listener give the records that
//! `teledge replay` gives for the same bytes at the same times. The campaign behind these
//! (every bundled capture, paced and at top speed, against the original file and a tap) is
//! `scripts/sources-campaign.sh`; these keep the property guarded in seconds.
//!
//! Live: the test opens its own AF_PACKET socket on the capturing interface (a tap, as
//! tcpdump would) to learn the kernel's receive time of every frame it sent; the reference
//! is `Replay` over the frames as sent (the capture's own bytes, so a tag the kernel strips
//! and the daemon restores must come back exactly) stamped with those times. HEP: the
//! frames are made by the daemon's own relay encoder (`teledge::relay::frames`, what
//! `[hep_out]` and `replay --hep-out` send) from a replay of the capture moved to the
//! present, and sent over TCP; the reference is that replay's records.
//!
//! Compared: every call and orphan-stream record, field by field (times within 5 µs, see
//! [`differences`]), except `record_id` (the
//! daemon stores it keyed under the identifier key, see `teledge::privacy`) and `closed_by`
//! of calls open when input ended, which names the end: `capture_end` in replay,
//! `shutdown` in the daemon. Privacy is `clear` so identifiers compare as captured.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use teledge::dissect::Frame;
use teledge::pipeline::{Mirror, Mirrored};
use teledge::record::Record;
use teledge::relay::frames::{self as relay, Identity, Kinds, Made};
use teledge::replay::{Replay, ReplaySettings};
use teledge::sources::afpacket::{CaptureFilter, LiveCapture, RingSettings};
use teledge::sources::capture_file;
use teledge::time::Timestamp;

use crate::daemon::{agent_config, free_port, Agent};
use crate::live::{in_fresh_netns, ip, RawSender};
use crate::support::data;
use crate::uplink::{collected_or_spooled, collector, pki, Pki};

/// The frames of a bundled capture: (time, bytes).
fn frames_of(capture: &str) -> Vec<(Timestamp, Vec<u8>)> {
    let mut frames = Vec::new();
    capture_file::read_frames(std::io::Cursor::new(data(capture)), |f: &Frame<'_>, _| {
        frames.push((f.time, f.data.to_vec()))
    })
    .unwrap();
    frames
}

/// A pcap (nanosecond, Ethernet) of these frames.
fn pcap(frames: &[(Timestamp, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xa1b2_3c4du32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0u8; 8]);
    out.extend(262_144u32.to_le_bytes());
    out.extend(1u32.to_le_bytes());
    for (time, bytes) in frames {
        let ns = time.as_nanos();
        out.extend((ns.div_euclid(1_000_000_000) as u32).to_le_bytes());
        out.extend((ns.rem_euclid(1_000_000_000) as u32).to_le_bytes());
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend((bytes.len() as u32).to_le_bytes());
        out.extend(bytes);
    }
    out
}

/// Replays capture bytes; every record as JSON, and what a mirror was handed.
fn replay(bytes: &[u8], mirror: Option<Box<dyn Mirror>>) -> Vec<Value> {
    let mut replay = Replay::new(ReplaySettings::default());
    if let Some(mirror) = mirror {
        replay.set_mirror(mirror);
    }
    let mut records = Vec::new();
    let mut sink = |r: Record| records.push(serde_json::to_value(&r).unwrap());
    replay
        .read("reference", std::io::Cursor::new(bytes), &mut sink, |_| {})
        .unwrap();
    replay.finish(&mut sink);
    records
}

/// Call records by (Call-ID, n-th of that Call-ID by first message), orphan streams by
/// flow and SSRC; `record_id` taken out, and `closed_by` of a call open at the end of input
/// named as replay names it.
fn keyed(records: &[Value], with_streams: bool) -> BTreeMap<String, Value> {
    let mut calls: Vec<&Value> = records.iter().filter(|r| r["type"] == "call").collect();
    calls.sort_by_key(|r| r["first_message_time"].as_str().unwrap_or("").to_owned());
    let mut by = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for call in calls {
        let id = call["call_id"].as_str().unwrap().to_owned();
        let n = seen.entry(id.clone()).or_default();
        *n += 1;
        let mut call = call.clone();
        call.as_object_mut().unwrap().remove("record_id");
        if call["closed_by"] == "shutdown" {
            call["closed_by"] = "capture_end".into();
        }
        by.insert(format!("call {id} #{n}"), call);
    }
    if with_streams {
        for stream in records.iter().filter(|r| r["type"] == "stream") {
            let mut stream = stream.clone();
            stream.as_object_mut().unwrap().remove("record_id");
            let key = format!(
                "stream {} {} {}",
                stream["src"], stream["dst"], stream["ssrc"]
            );
            by.insert(key, stream);
        }
    }
    by
}

/// Every field that differs, as paths.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                differences(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{path}.{k}"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                differences(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (Value::String(x), Value::String(y)) if x != y => {
            // Two AF_PACKET sockets (the test's tap and the daemon's) each read the clock
            // as the kernel hands them the frame: their times may differ by a microsecond
            // or two. Times are compared within 5 µs.
            let close = match (humantime::parse_rfc3339(x), humantime::parse_rfc3339(y)) {
                (Ok(x), Ok(y)) => x
                    .duration_since(y)
                    .or_else(|_| y.duration_since(x))
                    .is_ok_and(|d| d <= Duration::from_micros(5)),
                _ => false,
            };
            if !close {
                out.push(format!("{path}: replay {a} / daemon {b}"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            // ... and what is computed from times (seconds, milliseconds, scores rounded
            // to two decimals) within what a few microseconds make.
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let tolerance = if path.ends_with("_s") { 1e-5 } else { 0.011 };
            if (x - y).abs() > tolerance {
                out.push(format!("{path}: replay {a} / daemon {b}"));
            }
        }
        _ if a != b => out.push(format!("{path}: replay {a} / daemon {b}")),
        _ => {}
    }
}

/// Asserts the daemon's records are the reference's; returns how many were compared.
fn assert_same(reference: &[Value], daemon: &[Value], with_streams: bool) -> usize {
    let a = keyed(reference, with_streams);
    let b = keyed(daemon, with_streams);
    let mut diffs = Vec::new();
    for key in a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) => differences(x, y, key, &mut diffs),
            (Some(_), None) => diffs.push(format!("{key}: missing from the daemon's records")),
            (None, Some(_)) => diffs.push(format!("{key}: only in the daemon's records")),
            (None, None) => {}
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    a.len()
}

/// The agent's configuration with identifiers in clear (compared as captured).
fn clear_config(pki: &Pki, dir: &Path, port: u16, sources: &str) -> std::path::PathBuf {
    let path = agent_config(pki, dir, port, sources, None);
    let text = std::fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("site_key_file"))
        .map(|l| {
            if l.starts_with("mode = ") {
                "mode = \"clear\"\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// How fast the capture is sent.
#[derive(Clone, Copy)]
enum Pace {
    /// The capture's own spacing, divided by this.
    Faster(u32),
    /// As fast as the sender goes.
    Top,
}

/// Sends `capture` onto a veth whose peer `teledge run` captures with `threads` capture
/// threads, and asserts its records are replay's of the same frames at the kernel's times.
fn live_gives_replays_records(capture: &'static str, threads: usize, pace: Pace) -> usize {
    in_fresh_netns(move || {
        ip(&["link", "add", "te0", "type", "veth", "peer", "name", "te1"]);
        for dev in ["te0", "te1"] {
            ip(&["link", "set", dev, "mtu", "65000"]);
            ip(&["link", "set", dev, "up"]);
        }
        let frames = frames_of(capture);
        let pki = pki();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("collected");
        let c = collector(&pki, "collector", &out);
        // A block timeout of 100 ms: with two threads the SIP reorder window is 250 ms, so a
        // call sent at top speed is applied in one window, as a stalled thread's is.
        let config = clear_config(
            &pki,
            dir.path(),
            c.port,
            &format!(
                "[[capture]]\ninterface = \"te1\"\nthreads = {threads}\nring_mib = 8\n\
                 block_kib = 256\nblock_timeout_ms = 100\n"
            ),
        );
        // Unfiltered, as tcpdump without a filter: the daemon's own kernel filter is part
        // of what is compared.
        let mut tap = LiveCapture::open_with_filter(
            "te1",
            RingSettings::default(),
            false,
            CaptureFilter::All,
        )
        .unwrap();
        let mut agent = Agent::start(&config);
        agent.wait_for_log("teledge running");
        std::thread::sleep(Duration::from_millis(300));

        let sender = RawSender::open("te0");
        let started = Instant::now();
        let first = frames[0].0;
        for (time, bytes) in &frames {
            if let Pace::Faster(by) = pace {
                let due = Duration::from_nanos(
                    (time.as_nanos() - first.as_nanos()).max(0) as u64 / u64::from(by),
                );
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            sender.send(bytes);
        }
        // The kernel's time of every frame sent, from the tap, in order (the kernel's own
        // frames, IPv6 neighbour discovery, are not ours and are passed over).
        let mut tapped: Vec<(Timestamp, Vec<u8>)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let got = tap
                .next_batch(Duration::from_millis(100), |p| {
                    tapped.push((p.time, p.data.to_vec()))
                })
                .unwrap();
            if got == 0 && tapped.len() >= frames.len() {
                break;
            }
        }
        let mut at = tapped.iter();
        let stamped: Vec<(Timestamp, Vec<u8>)> = frames
            .iter()
            .enumerate()
            .map(|(i, (_, bytes))| {
                let (time, _) = at
                    .by_ref()
                    .find(|(_, seen)| seen == bytes)
                    .unwrap_or_else(|| panic!("frame {} of {capture} not seen as sent", i + 1));
                (*time, bytes.clone())
            })
            .collect();
        // The record grace (1 s) and the reorder window pass before the stop, so calls that
        // ended are made as they are live; the rest is flushed by the stop.
        std::thread::sleep(Duration::from_millis(2000));
        let summary = agent.stop();
        assert_eq!(summary["kernel_drops"], 0, "{summary}");
        let daemon = collected_or_spooled(&out, &config);
        let reference = replay(&pcap(&stamped), None);
        assert_same(&reference, &daemon, true)
    })
}

/// Issue: sources (one capture thread, paced): TCP-framed SIP and its RTP, every record the
/// same as replay's.
#[test]
fn live_capture_one_thread_gives_the_records_replay_gives() {
    let compared = live_gives_replays_records("sip_ipv4_tcp.pcap", 1, Pace::Faster(10));
    assert!(compared >= 1, "a call to compare");
}

/// Two capture threads in a fanout group, the whole capture at top speed: SIP and RTP of a
/// call on different threads, the call's SIP (INVITE to BYE) applied at once by the reorder
/// window while its RTP was held for the route. The RTP, captured before the BYE, must be
/// the call's, as in replay (it was counted as media after the end: no stream at all).
#[test]
fn live_capture_two_threads_gives_the_records_replay_gives() {
    let compared = live_gives_replays_records("gen_rtcp_clock_offset.pcap", 2, Pace::Top);
    assert!(compared >= 2, "two calls to compare");
}

/// Every encapsulation replay decodes reaches the live decoder too: the kernel filter of
/// the capture kept IP, VLAN tags and MPLS only, and dropped SIP over PPPoE (one of this
/// capture's three calls was missing).
#[test]
fn live_capture_keeps_every_encapsulation_replay_decodes() {
    let compared = live_gives_replays_records("pppoe_sip_reqs.pcap", 1, Pace::Top);
    assert!(compared >= 3, "three calls to compare");
}

/// Collects the HEP frames the relay makes of what a replay passes (SIP and RTCP of calls).
#[derive(Debug)]
struct HepFrames(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Mirror for HepFrames {
    fn mirror(&mut self, event: Mirrored<'_>) {
        let id = Identity {
            capture_id: 2002,
            auth_key: None,
            node_name: None,
        };
        let kinds = Kinds {
            sip: true,
            rtcp: true,
            stream_reports: false,
        };
        for made in relay::frames(event, &id, kinds) {
            if let Made::Frame(_, frame) = made {
                self.0.lock().unwrap().push(frame);
            }
        }
    }
}

/// HEPv3 over TCP to `teledge run`'s listener: the records of replay, but for RTP (HEP
/// carries SIP and RTCP, not RTP: no stream is measured from it).
#[test]
fn hep_listener_gives_the_records_replay_gives() {
    // The capture moved so that it ends a second ago: the daemon's clock guard keeps
    // sender times within 300 s in the past and 2 s ahead, and its timeouts run on the
    // wall clock, as with a PBX that stamps its own time.
    let mut frames = frames_of("rtp_rtcp_sip_ipv4_udp.pcap");
    let last = frames.last().unwrap().0;
    let shift = Timestamp::now().as_nanos() - 1_000_000_000 - last.as_nanos();
    for (time, _) in &mut frames {
        // HEP carries microseconds.
        *time = Timestamp::from_nanos((time.as_nanos() + shift) / 1000 * 1000);
    }
    let made = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reference = replay(&pcap(&frames), Some(Box::new(HepFrames(made.clone()))));
    let hep_frames = made.lock().unwrap().clone();
    assert!(hep_frames.len() > 10, "{}", hep_frames.len());

    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("collected");
    let c = collector(&pki, "collector", &out);
    let hep_port = free_port();
    let config = clear_config(
        &pki,
        dir.path(),
        c.port,
        &format!("[hep]\ntcp = \"127.0.0.1:{hep_port}\"\n"),
    );
    let mut agent = Agent::start(&config);
    agent.wait_for_log("teledge running");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", hep_port)).unwrap();
    for frame in &hep_frames {
        stream.write_all(frame).unwrap();
    }
    stream.flush().unwrap();
    drop(stream);
    std::thread::sleep(Duration::from_millis(2000));
    agent.stop();
    let daemon = collected_or_spooled(&out, &config);
    let without_rtp: Vec<Value> = reference
        .into_iter()
        .map(|mut r| {
            if r["type"] == "call" {
                r.as_object_mut().unwrap().remove("media_quality");
                r.as_object_mut().unwrap().remove("hep_rtcp");
            }
            r
        })
        .collect();
    let daemon: Vec<Value> = daemon
        .into_iter()
        .map(|mut r| {
            if r["type"] == "call" {
                r.as_object_mut().unwrap().remove("media_quality");
                r.as_object_mut().unwrap().remove("hep_rtcp");
            }
            r
        })
        .collect();
    let compared = assert_same(&without_rtp, &daemon, false);
    assert!(compared >= 2, "calls to compare");
}
