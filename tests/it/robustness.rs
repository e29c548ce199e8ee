//! Damaged and hostile input: every fixture truncated at many offsets and with bytes flipped
//! is read without a panic or a hang, a truncated file reports where it was cut, a file no
//! frame of which decodes is an error, and thousands of half-open TCP flows with partial SIP
//! messages stay within the memory budget — counted by the decoder and measured by the kernel.

use std::process::Command;

use etherparse::PacketBuilder;
use teledge::dissect::DissectLimits;
use teledge::replay::ReplaySettings;
use teledge::sources::capture_file::CaptureError;

use crate::support::*;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn truncated_fixtures_yield_a_clear_error_and_no_panic() {
    for name in ALL_CAPTURES {
        let bytes = data(name);
        let cuts = 40.min(bytes.len());
        for i in 1..cuts {
            let cut = bytes.len() * i / cuts;
            let (_, summary, result) = replay_bytes(&bytes[..cut], ReplaySettings::default());
            match result {
                Err(CaptureError::Truncated { frame, .. }) => {
                    assert_eq!(frame, summary.decode.frames + 1, "{name} cut at {cut}")
                }
                // A cut on a record boundary is a shorter, valid file.
                Ok(_) => {}
                Err(e) => panic!("{name} cut at {cut}: unexpected {e}"),
            }
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for name in ALL_CAPTURES {
        let original = data(name);
        let rounds = if original.len() > 200_000 { 15 } else { 60 };
        for _ in 0..rounds {
            let mut bytes = original.clone();
            let flips = 1 + rng.next() % 32;
            for _ in 0..flips {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (rng.next() % 8);
            }
            // Any result is fine; a panic or a hang is not.
            let _ = replay_bytes(&bytes, ReplaySettings::default());
        }
    }
}

#[test]
fn garbage_is_not_a_capture() {
    let (_, _, result) = replay_bytes(
        b"this is not a capture file at all",
        ReplaySettings::default(),
    );
    assert!(matches!(result, Err(CaptureError::NotACapture)));
    let (_, _, result) = replay_bytes(b"", ReplaySettings::default());
    assert!(matches!(result, Err(CaptureError::NotACapture)));
}

fn teledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
}

/// The last line of a JSON Lines replay: the capture summary.
fn summary_line(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"))
}

/// Every frame of a real capture failing (here: a link type no decoder knows, as a capture
/// tool writing the wrong header produces) used to look like an empty capture: exit 0, no
/// call, nothing said.
#[test]
fn a_capture_whose_every_frame_fails_is_an_error_not_an_empty_capture() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = data("sip_loopback_sll.pcap");
    // The pcap header's link type (little-endian file): 113 (Linux cooked v1) -> 147 (USER0).
    assert_eq!(bytes[20..24], 113u32.to_le_bytes());
    bytes[20..24].copy_from_slice(&147u32.to_le_bytes());
    let user0 = dir.path().join("user0.pcap");
    std::fs::write(&user0, &bytes).unwrap();
    let out = teledge()
        .args(["replay", "--no-progress"])
        .arg(&user0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("user0.pcap"), "{stderr}");
    assert!(
        stderr.contains("none of the 269 frames could be decoded (link 269"),
        "{stderr}"
    );
    let summary = summary_line(&out.stdout);
    assert_eq!(summary["undecodable_files"][0], user0.display().to_string());
    assert_eq!(summary["decode"]["errors"]["link"], 269);
    assert_eq!(summary["decode"]["frames_failed"], 269);
    assert_eq!(summary["calls"], 0);

    // The same frames with their real link type: two calls, exit 0.
    let out = teledge()
        .args(["replay", "--no-progress"])
        .arg(data_path("sip_loopback_sll.pcap"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = summary_line(&out.stdout);
    assert_eq!(summary["calls"], 2);
    assert_eq!(summary["undecodable_files"], serde_json::json!([]));

    // A capture without any frame is empty, not undecodable.
    let empty = dir.path().join("empty.pcap");
    std::fs::write(&empty, &bytes[..24]).unwrap();
    let out = teledge()
        .args(["replay", "--no-progress"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Microseconds since the Unix epoch of the hostile capture's first frame (2026-01-01).
const T0_US: u64 = 1_767_225_600_000_000;

/// A classic little-endian pcap of Ethernet frames, microsecond timestamps.
fn pcap(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65_535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (us, frame) in frames {
        for v in [
            (us / 1_000_000) as u32,
            (us % 1_000_000) as u32,
            frame.len() as u32,
            frame.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

/// An Ethernet frame with an IPv4 packet built by hand (fragment fields included).
fn ipv4_frame(
    src: [u8; 4],
    protocol: u8,
    id: u16,
    more_fragments: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let total = (20 + payload.len()) as u16;
    let flags: u16 = if more_fragments { 0x2000 } else { 0 };
    let mut header = vec![0x45, 0];
    header.extend_from_slice(&total.to_be_bytes());
    header.extend_from_slice(&id.to_be_bytes());
    header.extend_from_slice(&flags.to_be_bytes());
    header.extend_from_slice(&[64, protocol, 0, 0]);
    header.extend_from_slice(&src);
    header.extend_from_slice(&[192, 0, 2, 1]);
    let sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xFFFF) + (sum >> 16);
    let checksum = !((folded & 0xFFFF) + (folded >> 16)) as u16;
    header[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    frame
}

/// An SCTP packet with one DATA chunk: the first fragment (B, not E) of a user message.
fn sctp_first_fragment(tsn: u32, payload: &[u8]) -> Vec<u8> {
    let mut packet = vec![0x13, 0xC4, 0x13, 0xC4, 0, 0, 0, 1, 0, 0, 0, 0];
    packet.extend_from_slice(&[0, 0x02]);
    packet.extend_from_slice(&((16 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&tsn.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
    packet.extend_from_slice(payload);
    packet
}

/// A UDP datagram that is neither SIP nor RTP: traffic that costs time but holds nothing.
fn udp_junk(src: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, [192, 0, 2, 1], 64)
        .udp(src.1, 9);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).unwrap();
    out
}

fn tcp_frame(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, dst.0, 64)
        .tcp(src.1, dst.1, seq, 65_535);
    let builder = if syn {
        builder.syn()
    } else {
        builder.ack(1).psh()
    };
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).unwrap();
    out
}

const HOSTILE_FLOWS: u32 = 1000;
const HOSTILE_ROUNDS: u32 = 12;
const SEGMENT: usize = 1400;
const REAL_CALL_ID: &str = "real-call-under-attack@192.0.2.50";

/// Thousands of half-open TCP connections to the SIP port (a SYN, never answered), each
/// sending an INVITE that claims a 60,000-byte body and then about 16 KiB of it, never
/// finishing; every fourth one leaves a hole at its start so its segments wait out of order.
/// Every tenth also leaves an IP datagram and an SCTP user message unfinished each round. All
/// within a few seconds, below every timeout: only the memory budget holds them. In the
/// middle, a real call over TCP: INVITE, 180, 200, ACK, BYE, 200. Without the attack, the
/// same bytes come as UDP datagrams that are neither SIP nor RTP (a baseline that takes as
/// long to read but holds nothing), with the same real call.
fn hostile_capture(with_attack: bool) -> Vec<u8> {
    /// Frames 100 µs apart.
    struct Frames(Vec<(u64, Vec<u8>)>);
    impl Frames {
        fn push(&mut self, frame: Vec<u8>) {
            let at = T0_US + 100 * (self.0.len() as u64 + 1);
            self.0.push((at, frame));
        }
    }
    let server = ([192, 0, 2, 1], 5060);
    let caller = ([192, 0, 2, 50], 40_000);
    let mut frames = Frames(Vec::new());
    let claim = |flow: u32| {
        let mut invite = format!(
            "INVITE sip:{flow}@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 10.66.0.1;branch=z9hG4bK{flow}\r\n\
             From: <sip:x@10.66.0.1>;tag={flow}\r\nTo: <sip:{flow}@192.0.2.1>\r\n\
             Call-ID: flood-{flow}\r\nCSeq: 1 INVITE\r\nContent-Length: 60000\r\n\r\n"
        )
        .into_bytes();
        invite.resize(SEGMENT * HOSTILE_ROUNDS as usize, b'x');
        invite
    };
    let client = |flow: u32| {
        (
            [10, 66, (flow >> 8) as u8, flow as u8],
            20_000 + (flow % 30_000) as u16,
        )
    };
    let isn = |flow: u32| flow.wrapping_mul(2_654_435_761);
    let sip = |first: &str, cseq: &str, to_tag: bool| {
        format!(
            "{first}\r\nVia: SIP/2.0/TCP 192.0.2.50:40000;branch=z9hG4bK-{cseq}\r\n\
             From: <sip:1012@192.0.2.50>;tag=caller\r\nTo: <sip:5551234@192.0.2.1>{}\r\n\
             Call-ID: {REAL_CALL_ID}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n",
            if to_tag { ";tag=callee" } else { "" }
        )
        .into_bytes()
    };
    // The real call's next sequence numbers: caller to server, server to caller.
    let mut next = [1000u32, 5000u32];
    let mut call = |frames: &mut Frames, from_caller: bool, message: Vec<u8>| {
        let (src, dst, i) = if from_caller {
            (caller, server, 0)
        } else {
            (server, caller, 1)
        };
        frames.push(tcp_frame(src, dst, next[i], false, &message));
        next[i] = next[i].wrapping_add(message.len() as u32);
    };

    if with_attack {
        for flow in 0..HOSTILE_FLOWS {
            frames.push(tcp_frame(client(flow), server, isn(flow), true, b""));
        }
    }
    frames.push(tcp_frame(caller, server, 999, true, b""));
    frames.push(tcp_frame(server, caller, 4999, true, b""));
    for round in 0..HOSTILE_ROUNDS {
        for flow in 0..HOSTILE_FLOWS {
            let invite = claim(flow);
            let at = round as usize * SEGMENT;
            if !with_attack {
                frames.push(udp_junk(client(flow), &[b'x'; SEGMENT]));
                continue;
            }
            // Every tenth flow also opens an IP datagram and an SCTP user message that never
            // complete: first fragments only, each in the same budget.
            if flow % 10 == 0 {
                let src = [10, 67, (flow >> 8) as u8, flow as u8];
                let id = (round * HOSTILE_FLOWS + flow) as u16;
                let fragment = vec![b'f'; SEGMENT];
                frames.push(ipv4_frame(src, 17, id, true, &fragment));
                let tsn = round * HOSTILE_FLOWS + flow;
                let sctp = sctp_first_fragment(tsn, &invite[..SEGMENT]);
                frames.push(ipv4_frame(src, 132, id, false, &sctp));
            }
            // Every fourth flow never sends its first segment: the rest waits.
            if flow % 4 == 0 && round == 0 {
                continue;
            }
            let seq = isn(flow).wrapping_add(1).wrapping_add(at as u32);
            let payload = &invite[at..at + SEGMENT];
            frames.push(tcp_frame(client(flow), server, seq, false, payload));
        }
        match round {
            5 => {
                let invite = sip("INVITE sip:5551234@192.0.2.1 SIP/2.0", "1 INVITE", false);
                call(&mut frames, true, invite);
                call(
                    &mut frames,
                    false,
                    sip("SIP/2.0 180 Ringing", "1 INVITE", true),
                );
                call(&mut frames, false, sip("SIP/2.0 200 OK", "1 INVITE", true));
                call(
                    &mut frames,
                    true,
                    sip("ACK sip:5551234@192.0.2.1 SIP/2.0", "1 ACK", true),
                );
            }
            10 => {
                call(
                    &mut frames,
                    true,
                    sip("BYE sip:5551234@192.0.2.1 SIP/2.0", "2 BYE", true),
                );
                call(&mut frames, false, sip("SIP/2.0 200 OK", "2 BYE", true));
            }
            _ => {}
        }
    }
    pcap(&frames.0)
}

/// The memory budget of the hostile tests: 2 MiB, against 16 MiB of partial messages.
const TEST_BUDGET: usize = 2 * 1024 * 1024;

#[test]
fn half_open_tcp_flows_with_partial_sip_stay_within_the_budget_and_the_real_call_survives() {
    let bytes = hostile_capture(true);
    let limits = DissectLimits {
        memory_budget: TEST_BUDGET,
        ..DissectLimits::default()
    };
    let settings = ReplaySettings {
        dissect: limits,
        ..ReplaySettings::default()
    };
    let (calls, summary, result) = replay_bytes(&bytes, settings);
    result.unwrap();
    // The decoder's accounting: the most held after any frame is within the budget, and it
    // was needed (without it, every flow's partial message would still be held).
    let memory = summary.decode.memory;
    assert!(memory.peak_bytes <= TEST_BUDGET as u64, "{memory:?}");
    assert!(memory.peak_bytes > TEST_BUDGET as u64 / 2, "{memory:?}");
    let tcp = summary.decode.tcp;
    assert!(
        tcp.flows_evicted_memory > u64::from(HOSTILE_FLOWS) / 2,
        "{tcp:?}"
    );
    assert!(tcp.bytes_dropped > 8 * 1024 * 1024, "{tcp:?}");
    // IP fragments and SCTP fragments drew on the same budget, and had to give way too.
    let (fragments, sctp) = (summary.decode.fragments, summary.decode.sctp);
    let opened = u64::from(HOSTILE_FLOWS / 10 * HOSTILE_ROUNDS);
    assert_eq!(fragments.fragments, opened);
    assert!(fragments.evicted > 0, "{fragments:?}");
    assert_eq!(sctp.fragments, opened);
    assert!(sctp.evicted > 0, "{sctp:?}");
    // The real call in the middle of it is whole.
    let real = call(&calls, REAL_CALL_ID);
    assert_eq!(real.outcome, teledge::record::Outcome::Answered);
    assert_eq!(real.closed_by, teledge::record::ClosedBy::Bye);
    // INVITE, 100, 200, ACK, BYE: the record is made at the BYE, so its 200 is counted late.
    assert_eq!(real.messages, 5);
}

/// Runs `teledge replay` on a capture and returns its peak resident memory (KiB), as the
/// kernel counts it for the process (VmHWM in /proc/<pid>/status, read until it exits: the
/// high-water mark only grows, so the last reading is the peak up to the last millisecond),
/// with the summary it wrote. (wait4's ru_maxrss would not do: it also counts the memory of
/// this test process, which the child shares between fork and exec.)
pub(crate) fn replay_peak_rss_kib(
    capture: &std::path::Path,
    budget_mib: usize,
) -> (u64, serde_json::Value) {
    let out = capture.with_extension("jsonl");
    let mut child = teledge()
        .args(["replay", "--no-progress", "--memory-budget"])
        .arg(budget_mib.to_string())
        .arg("--output")
        .arg(&out)
        .arg(capture)
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        // Gone between the two calls (exited, not yet reaped): the last reading stands.
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert!(status.success(), "{status}");
    assert!(peak > 0, "no VmHWM read from {status_file}");
    let text = std::fs::read(&out).unwrap();
    (peak, summary_line(&text))
}

#[test]
fn hostile_tcp_flood_keeps_the_replay_process_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.pcap");
    let hostile = dir.path().join("hostile.pcap");
    std::fs::write(&clean, hostile_capture(false)).unwrap();
    std::fs::write(&hostile, hostile_capture(true)).unwrap();
    let budget_mib = TEST_BUDGET / (1024 * 1024);
    let (baseline, _) = replay_peak_rss_kib(&clean, budget_mib);
    let (peak, summary) = replay_peak_rss_kib(&hostile, budget_mib);
    // Unbounded, the partial messages alone are 1000 x 16.4 KiB (in buffers of 32 KiB):
    // over 16 MiB above the baseline. Bounded: the budget plus allocator slack.
    let allowed = baseline + (budget_mib as u64 + 8) * 1024;
    assert!(
        peak <= allowed,
        "peak RSS {peak} KiB, baseline {baseline} KiB, allowed {allowed} KiB"
    );
    assert_eq!(summary["calls"], 1);
    assert_eq!(summary["outcomes"]["answered"], 1);
    let evicted = summary["decode"]["tcp"]["flows_evicted_memory"]
        .as_u64()
        .unwrap();
    assert!(evicted > u64::from(HOSTILE_FLOWS) / 2, "{summary}");
    assert!(
        summary["decode"]["memory"]["peak_bytes"].as_u64().unwrap() <= TEST_BUDGET as u64,
        "{summary}"
    );
}

/// A UDP frame from `src` to `dst`.
fn udp_frame(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).unwrap();
    out
}

/// Streams sprayed by `SPRAY_RATE` new SSRCs a second of capture time for `SPRAY_SECONDS`.
const SPRAY_RATE: u64 = 10;
const SPRAY_SECONDS: u64 = 900;

/// A 15-minute answered call whose caller's announced media port is sprayed with RTP under
/// ever new SSRCs (5 packets each, enough for an orphan to pass probation) — by anyone who
/// can send UDP to it. With `to_the_call` false the same spray goes to a port no SDP
/// announced: the orphan baseline.
fn ssrc_spray_capture(to_the_call: bool) -> Vec<u8> {
    let (caller, pbx, attacker) = ([10, 0, 0, 1], [10, 0, 0, 2], [203, 0, 113, 9]);
    let sdp = |ip: [u8; 4], port: u16| {
        let ip = std::net::Ipv4Addr::from(ip);
        format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    };
    let sip = |start: &str, cseq: &str, to_tag: &str, body: &str| {
        let ct = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{start}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{}\r\nFrom: <sip:100@10.0.0.1>;tag=a\r\nTo: <sip:200@10.0.0.2>{to_tag}\r\nCall-ID: spray@test\r\nCSeq: {cseq}\r\nContact: <sip:100@10.0.0.1>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            cseq.replace(' ', ""),
            body.len()
        )
        .into_bytes()
    };
    let t0 = 1_700_000_000_000_000u64;
    let (a, b) = ((caller, 5060), (pbx, 5060));
    let mut frames = vec![
        (
            t0,
            udp_frame(
                a,
                b,
                &sip(
                    "INVITE sip:200@10.0.0.2 SIP/2.0",
                    "1 INVITE",
                    "",
                    &sdp(caller, 40000),
                ),
            ),
        ),
        (
            t0 + 100_000,
            udp_frame(
                b,
                a,
                &sip("SIP/2.0 200 OK", "1 INVITE", ";tag=b", &sdp(pbx, 50000)),
            ),
        ),
        (
            t0 + 200_000,
            udp_frame(
                a,
                b,
                &sip("ACK sip:200@10.0.0.2 SIP/2.0", "1 ACK", ";tag=b", ""),
            ),
        ),
    ];
    let target = (caller, if to_the_call { 40000 } else { 41000 });
    for i in 0..SPRAY_RATE * SPRAY_SECONDS {
        let start = t0 + 1_000_000 + i * 1_000_000 / SPRAY_RATE;
        for k in 0..5u16 {
            let mut rtp = vec![0x80, 0];
            rtp.extend_from_slice(&k.to_be_bytes());
            rtp.extend_from_slice(&(u32::from(k) * 160).to_be_bytes());
            rtp.extend_from_slice(&(0x1000_0000u32 + i as u32).to_be_bytes());
            rtp.extend_from_slice(&[0xFF; 160]);
            frames.push((
                start + u64::from(k) * 20_000,
                udp_frame((attacker, 30000), target, &rtp),
            ));
        }
    }
    let end = t0 + (SPRAY_SECONDS + 2) * 1_000_000;
    frames.push((
        end,
        udp_frame(
            a,
            b,
            &sip("BYE sip:200@10.0.0.2 SIP/2.0", "2 BYE", ";tag=b", ""),
        ),
    ));
    frames.push((
        end + 50_000,
        udp_frame(b, a, &sip("SIP/2.0 200 OK", "2 BYE", ";tag=b", "")),
    ));
    pcap(&frames)
}

/// RTP sprayed at a call's media port under ever new SSRCs made a stream of the call each,
/// all kept until the call ended: memory growing for as long as the call lasted, and one
/// call record of tens of megabytes (beyond what the collector takes: the real call lost).
/// A call now holds at most `MAX_STREAMS_PER_CALL` streams; the rest are measured as orphans
/// (their records or the minute's summary), counted.
#[test]
fn an_ssrc_spray_at_a_call_media_port_is_bounded_per_call_and_counted() {
    use teledge::correlation::media::MAX_STREAMS_PER_CALL;
    let dir = tempfile::tempdir().unwrap();
    let baseline_capture = dir.path().join("orphan-spray.pcap");
    let attack_capture = dir.path().join("call-spray.pcap");
    std::fs::write(&baseline_capture, ssrc_spray_capture(false)).unwrap();
    std::fs::write(&attack_capture, ssrc_spray_capture(true)).unwrap();
    let (baseline, _) = replay_peak_rss_kib(&baseline_capture, 64);
    let (peak, summary) = replay_peak_rss_kib(&attack_capture, 64);
    let sprayed = SPRAY_RATE * SPRAY_SECONDS;
    let text = std::fs::read_to_string(attack_capture.with_extension("jsonl")).unwrap();
    let call_line = text
        .lines()
        .find(|l| l.starts_with("{\"type\":\"call\""))
        .unwrap_or_else(|| panic!("no call record: {summary}"));
    let call: serde_json::Value = serde_json::from_str(call_line).unwrap();
    assert_eq!(call["outcome"], "answered");
    let streams: usize = ["caller_to_callee", "callee_to_caller", "unknown_direction"]
        .iter()
        .map(|d| call["media_quality"][d].as_array().unwrap().len())
        .sum();
    assert_eq!(streams, MAX_STREAMS_PER_CALL, "{summary}");
    assert!(
        call_line.len() < 1 << 20,
        "call record of {} bytes",
        call_line.len()
    );
    let media = &summary["media"];
    assert_eq!(
        media["streams_beyond_call_cap"].as_u64(),
        Some(sprayed - MAX_STREAMS_PER_CALL as u64),
        "{summary}"
    );
    // Every sprayed stream is accounted for: in the call or as an orphan.
    assert_eq!(media["streams"].as_u64(), Some(sprayed), "{summary}");
    assert_eq!(
        media["orphan_streams"].as_u64(),
        Some(sprayed - MAX_STREAMS_PER_CALL as u64),
        "{summary}"
    );
    // And the process holds no more than for the same spray without a call.
    assert!(
        peak <= baseline + 16 * 1024,
        "peak RSS {peak} KiB, baseline (orphans) {baseline} KiB"
    );
}
