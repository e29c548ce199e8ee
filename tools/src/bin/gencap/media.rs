//! Media scenarios of `teledge-gencap --media-scenario NAME`: one small capture each, built to
//! reproduce one way RTP/RTCP analysis goes wrong, kept in `tests/data/` with TShark's figures
//! beside them (see tests/data/README.md). Deterministic: the output depends only on the name.

use std::io::Write;

use etherparse::PacketBuilder;

/// The media scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Two calls with SR/RR both ways; one callee's clock is an hour ahead of the tap's, the
    /// other's 1.478 s behind. Seen from the tap, every round trip is 2 or 3 ms.
    RtcpClockOffset,
    /// The first second of a stream arrives 120 ms earlier than the rest (a relay warming up);
    /// the other direction has talkspurts (marker bit) whose path delay alternates by 80 ms.
    EarlyBurst,
    /// The caller keeps SSRC and sequence but restarts its RTP timestamp at 0 after a
    /// re-INVITE (a switch to fax), 20 s into a 40 s call.
    TimestampReset,
    /// A voice stream with RFC 4733 DTMF events, a payload type its SDP does not name and a
    /// timestamp that goes back inside it.
    DtmfInVoice,
    /// Streams of every static payload type TShark 4.0 has a clock for that the others do
    /// not use: audio 1, 2, 9 and 19 (old comfort noise inside PCMA), video 25, 26, 28, 31-34.
    StaticPayloadTypes,
}

/// Unix time of the first packet (2026-01-01).
const EPOCH_NS: i64 = 1_767_225_600_000_000_000;
const MS: i64 = 1_000_000;
const CALLER: [u8; 4] = [10, 20, 0, 1];
const CALLEE: [u8; 4] = [10, 20, 0, 2];

/// A packet at a capture time (ns since [`EPOCH_NS`]).
struct Packet {
    at: i64,
    frame: Vec<u8>,
}

/// Writes the scenario as a microsecond pcap.
pub fn write(scenario: Scenario, out: &mut impl Write) -> anyhow::Result<usize> {
    let mut packets = match scenario {
        Scenario::RtcpClockOffset => rtcp_clock_offset()?,
        Scenario::EarlyBurst => early_burst()?,
        Scenario::TimestampReset => timestamp_reset()?,
        Scenario::DtmfInVoice => dtmf_in_voice()?,
        Scenario::StaticPayloadTypes => static_payload_types()?,
    };
    packets.sort_by_key(|p| p.at);
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&[0u8; 8])?;
    out.write_all(&65_535u32.to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?;
    for p in &packets {
        let t = EPOCH_NS + p.at;
        out.write_all(&((t / 1_000_000_000) as u32).to_le_bytes())?;
        out.write_all(&((t % 1_000_000_000 / 1000) as u32).to_le_bytes())?;
        out.write_all(&(p.frame.len() as u32).to_le_bytes())?;
        out.write_all(&(p.frame.len() as u32).to_le_bytes())?;
        out.write_all(&p.frame)?;
    }
    Ok(packets.len())
}

fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload)?;
    Ok(frame)
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xD5u8, payload_len));
    p
}

/// Deterministic jitter in 0..=max µs (a linear congruential sequence).
struct Jitter(u64);

impl Jitter {
    fn next_us(&mut self, max: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ((self.0 >> 33) as i64) % (max + 1)
    }
}

/// The SIP of one call: INVITE/200/ACK with SDP (PCMA and telephone-event) at `start`, an
/// optional re-INVITE/200/ACK at `reinvite`, BYE/200 at `end`. Times in ms; `ports` are
/// the caller's and callee's RTP ports.
fn call(
    id: &str,
    start: i64,
    reinvite: Option<i64>,
    end: i64,
    ports: (u16, u16),
) -> anyhow::Result<Vec<Packet>> {
    let sdp = |ip: &str, port: u16, version: u32| {
        format!(
            "v=0\r\no=- 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
        )
    };
    let message = |first: &str, cseq: &str, to_tag: bool, body: Option<String>| {
        let body = body.unwrap_or_default();
        let mut text = format!(
            "{first}\r\nVia: SIP/2.0/UDP 10.20.0.1:5060;branch=z9hG4bK{id}{}\r\n\
             From: <sip:caller@10.20.0.1>;tag=c{id}\r\nTo: <sip:agent@10.20.0.2>{}\r\n\
             Call-ID: {id}@10.20.0.1\r\nCSeq: {cseq}\r\nContact: <sip:caller@10.20.0.1>\r\n\
             Max-Forwards: 70\r\nUser-Agent: teledge-gencap\r\n",
            cseq.replace(' ', ""),
            if to_tag {
                format!(";tag=a{id}")
            } else {
                String::new()
            },
        );
        if !body.is_empty() {
            text.push_str("Content-Type: application/sdp\r\n");
        }
        text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        text
    };
    let caller = (CALLER, 5060);
    let callee = (CALLEE, 5060);
    let mut out = Vec::new();
    let mut push = |at: i64, from_caller: bool, text: String| -> anyhow::Result<()> {
        let (src, dst) = if from_caller {
            (caller, callee)
        } else {
            (callee, caller)
        };
        out.push(Packet {
            at: at * MS,
            frame: udp(src, dst, text.as_bytes())?,
        });
        Ok(())
    };
    let uri = "sip:agent@10.20.0.2 SIP/2.0";
    let offer = Some(sdp("10.20.0.1", ports.0, 1));
    let answer = Some(sdp("10.20.0.2", ports.1, 1));
    push(
        start,
        true,
        message(&format!("INVITE {uri}"), "1 INVITE", false, offer),
    )?;
    push(
        start + 5,
        false,
        message("SIP/2.0 200 OK", "1 INVITE", true, answer),
    )?;
    push(
        start + 10,
        true,
        message(&format!("ACK {uri}"), "1 ACK", true, None),
    )?;
    if let Some(at) = reinvite {
        let offer = Some(sdp("10.20.0.1", ports.0, 2));
        let answer = Some(sdp("10.20.0.2", ports.1, 2));
        push(
            at,
            true,
            message(&format!("INVITE {uri}"), "2 INVITE", true, offer),
        )?;
        push(
            at + 5,
            false,
            message("SIP/2.0 200 OK", "2 INVITE", true, answer),
        )?;
        push(
            at + 10,
            true,
            message(&format!("ACK {uri}"), "2 ACK", true, None),
        )?;
    }
    push(
        end,
        true,
        message(&format!("BYE {uri}"), "3 BYE", true, None),
    )?;
    push(
        end + 5,
        false,
        message("SIP/2.0 200 OK", "3 BYE", true, None),
    )?;
    Ok(out)
}

/// A regular PCMA stream: `count` packets 20 ms apart from `start` ms, with up to
/// `jitter_us` of jitter; `delay` gives extra path delay (ms) by packet index.
#[allow(clippy::too_many_arguments)]
fn pcma(
    from: ([u8; 4], u16),
    to: ([u8; 4], u16),
    ssrc: u32,
    start: i64,
    count: u32,
    jitter_us: i64,
    delay: impl Fn(u32) -> i64,
    seed: u64,
) -> anyhow::Result<Vec<Packet>> {
    let mut jitter = Jitter(seed);
    let mut out = Vec::new();
    for i in 0..count {
        let at = (start + i64::from(i) * 20 + delay(i)) * MS + jitter.next_us(jitter_us) * 1000;
        let payload = rtp(8, i == 0, i as u16, 8000 + i * 160, ssrc, 160);
        out.push(Packet {
            at,
            frame: udp(from, to, &payload)?,
        });
    }
    Ok(out)
}

/// The middle 32 bits of the NTP timestamp of a time in ns since the Unix epoch.
fn ntp_middle(unix_ns: i64) -> u32 {
    const NTP_UNIX_OFFSET: i64 = 2_208_988_800;
    let secs = unix_ns.div_euclid(1_000_000_000) + NTP_UNIX_OFFSET;
    let frac = ((unix_ns.rem_euclid(1_000_000_000) as u64) << 32) / 1_000_000_000;
    (((secs as u64 & 0xFFFF) << 16) | (frac >> 16)) as u32
}

/// An SR with one report block.
fn sender_report(ssrc: u32, ntp_unix_ns: i64, about: u32, lsr: u32, dlsr: u32) -> Vec<u8> {
    const NTP_UNIX_OFFSET: i64 = 2_208_988_800;
    let secs = (ntp_unix_ns.div_euclid(1_000_000_000) + NTP_UNIX_OFFSET) as u32;
    let frac = (((ntp_unix_ns.rem_euclid(1_000_000_000) as u64) << 32) / 1_000_000_000) as u32;
    let mut p = vec![0x81, 200, 0, 12];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&secs.to_be_bytes());
    p.extend_from_slice(&frac.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // RTP timestamp
    p.extend_from_slice(&100u32.to_be_bytes()); // packets
    p.extend_from_slice(&16_000u32.to_be_bytes()); // octets
    p.extend_from_slice(&about.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // fraction lost, cumulative lost
    p.extend_from_slice(&100u32.to_be_bytes()); // highest sequence
    p.extend_from_slice(&8u32.to_be_bytes()); // jitter
    p.extend_from_slice(&lsr.to_be_bytes());
    p.extend_from_slice(&dlsr.to_be_bytes());
    p
}

fn rtcp_clock_offset() -> anyhow::Result<Vec<Packet>> {
    let mut out = Vec::new();
    // (Call-ID, start ms, callee clock offset ns)
    let calls: [(&str, i64, i64); 2] = [
        ("clock-hour-ahead", 0, 3_600_000 * MS),
        ("clock-behind", 15_000, -1_478 * MS),
    ];
    for (n, (id, start, offset)) in calls.into_iter().enumerate() {
        let n = n as u16;
        let caller = (CALLER, 20_000 + 2 * n);
        let callee = (CALLEE, 30_000 + 2 * n);
        out.extend(call(id, start, None, start + 11_000, (caller.1, callee.1))?);
        let (a, b) = (0xA000_0000 + u32::from(n), 0xB000_0000 + u32::from(n));
        let media = start + 100;
        out.extend(pcma(caller, callee, a, media, 500, 300, |_| 0, 1)?);
        out.extend(pcma(callee, caller, b, media, 500, 300, |_| 0, 2)?);
        // RTCP about once a second, alternating sides, each SR carrying a report block
        // about the other side's stream that answers the other side's last SR. The tap is
        // 1 ms from the caller and 1.5 ms from the callee: a report seen at the tap answers
        // an SR that went on to the reporter and came back, so the round trips seen at the
        // tap are 2 ms (caller reporting) and 3 ms (callee reporting), whatever the clocks.
        let (d_caller, d_callee) = (MS, 1_500_000);
        let hold = 800 * MS; // how long the reporter holds an SR before reporting
        let mut last_sr: Option<(u32, i64)> = None; // (LSR, tap time)
        for k in 0..9i64 {
            let from_caller = k % 2 == 1;
            let reach = if from_caller { d_caller } else { d_callee };
            let (at, lsr, dlsr) = match last_sr {
                Some((lsr, seen)) => {
                    let at = seen + 2 * reach + hold;
                    (at, lsr, (hold as u64 * 65_536 / 1_000_000_000) as u32)
                }
                None => ((media + 1000) * MS, 0, 0),
            };
            // When the reporter sent it, on its own clock.
            let sent = EPOCH_NS + at - reach;
            let clock = if from_caller { sent } else { sent + offset };
            let (ssrc, about, src, dst) = if from_caller {
                (a, b, caller, callee)
            } else {
                (b, a, callee, caller)
            };
            let sr = sender_report(ssrc, clock, about, lsr, dlsr);
            out.push(Packet {
                at,
                frame: udp((src.0, src.1 + 1), (dst.0, dst.1 + 1), &sr)?,
            });
            last_sr = Some((ntp_middle(clock), at));
        }
    }
    Ok(out)
}

fn early_burst() -> anyhow::Result<Vec<Packet>> {
    let mut out = call("early-burst", 0, None, 31_000, (20_000, 30_000))?;
    let caller = (CALLER, 20_000);
    let callee = (CALLEE, 30_000);
    // Caller to callee: the first 50 packets take a path 120 ms shorter.
    out.extend(pcma(
        caller,
        callee,
        0xE000_0001,
        100,
        1500,
        2000,
        |i| if i < 50 { 0 } else { 120 },
        3,
    )?);
    // Callee to caller: 15 talkspurts of 1 s (marker bit on the first packet), 1 s of
    // silence between them, and a path delay that alternates by 80 ms from one to the next.
    let mut jitter = Jitter(4);
    let mut seq = 0u16;
    for spurt in 0..15u32 {
        let delay = i64::from(spurt % 2) * 80;
        for i in 0..50u32 {
            let media_ms = i64::from(spurt) * 2000 + i64::from(i) * 20;
            let at = (100 + media_ms + delay) * MS + jitter.next_us(2000) * 1000;
            let ts = 8000 + (media_ms * 8) as u32;
            let payload = rtp(8, i == 0, seq, ts, 0xE000_0002, 160);
            out.push(Packet {
                at,
                frame: udp(callee, caller, &payload)?,
            });
            seq += 1;
        }
    }
    Ok(out)
}

fn timestamp_reset() -> anyhow::Result<Vec<Packet>> {
    let mut out = call("timestamp-reset", 0, Some(20_000), 40_200, (20_000, 30_000))?;
    let caller = (CALLER, 20_000);
    let callee = (CALLEE, 30_000);
    let mut jitter = Jitter(5);
    for i in 0..2000u32 {
        let at = (100 + i64::from(i) * 20) * MS + jitter.next_us(1000) * 1000;
        // After the re-INVITE (packet 1000, 20.1 s) the timestamp starts again at 0.
        let ts = if i < 1000 {
            1_000_000 + i * 160
        } else {
            (i - 1000) * 160
        };
        let payload = rtp(8, i == 0 || i == 1000, i as u16, ts, 0xF000_0001, 160);
        out.push(Packet {
            at,
            frame: udp(caller, callee, &payload)?,
        });
    }
    out.extend(pcma(
        callee,
        caller,
        0xF000_0002,
        100,
        2000,
        1000,
        |_| 0,
        6,
    )?);
    Ok(out)
}

fn dtmf_in_voice() -> anyhow::Result<Vec<Packet>> {
    let mut out = call("dtmf-in-voice", 0, None, 12_000, (20_000, 30_000))?;
    let caller = (CALLER, 20_000);
    let callee = (CALLEE, 30_000);
    let ssrc = 0xD000_0001;
    let mut jitter = Jitter(7);
    let mut seq = 0u16;
    let mut push = |at: i64, payload: Vec<u8>| -> anyhow::Result<()> {
        out.push(Packet {
            at,
            frame: udp(caller, callee, &payload)?,
        });
        Ok(())
    };
    // 20 ms slots for 11 s. Digits at slots 100, 250 and 400 replace voice for 10 slots
    // (events carry the timestamp of their start, RFC 4733 §2.5.1.1; the end is sent three
    // times); slots 300-302 carry PT 98, which the SDP does not name; slot 200 carries a
    // timestamp 3 packets behind.
    let mut slot = 0u32;
    while slot < 550 {
        let at = (100 + i64::from(slot) * 20) * MS + jitter.next_us(1500) * 1000;
        let ts = 8000 + slot * 160;
        if [100, 250, 400].contains(&slot) {
            let digit = (slot / 100) as u8;
            for k in 0..10u32 {
                let at = (100 + i64::from(slot + k) * 20) * MS + jitter.next_us(1500) * 1000;
                let end = k == 9;
                let duration = ((k + 1) * 160) as u16;
                let mut event = rtp(101, k == 0, seq, ts, ssrc, 0);
                event.extend_from_slice(&[digit, if end { 0x80 | 10 } else { 10 }]);
                event.extend_from_slice(&duration.to_be_bytes());
                // The end packet goes three times, as one packet repeated (RFC 4733 §2.5.1.4).
                let copies = if end { 3 } else { 1 };
                for _ in 0..copies {
                    push(at, event.clone())?;
                }
                seq = seq.wrapping_add(1);
            }
            slot += 10;
            continue;
        }
        let (pt, ts) = match slot {
            300..=302 => (98, ts),
            200 => (8, ts - 3 * 160),
            _ => (8, ts),
        };
        push(at, rtp(pt, slot == 0, seq, ts, ssrc, 160))?;
        seq = seq.wrapping_add(1);
        slot += 1;
    }
    Ok(out)
}

fn static_payload_types() -> anyhow::Result<Vec<Packet>> {
    let mut out = Vec::new();
    let mut jitter = Jitter(8);
    let src = [10, 30, 0, 1];
    let dst = [10, 30, 0, 2];
    // Audio: 20 ms packets at 8 kHz.
    for (n, pt) in [1u8, 2, 9].into_iter().enumerate() {
        let port = 40_000 + 2 * n as u16;
        for i in 0..100u32 {
            let at = (i64::from(i) * 20) * MS + jitter.next_us(1000) * 1000;
            let payload = rtp(
                pt,
                i == 0,
                i as u16,
                i * 160,
                0x5000_0000 + u32::from(pt),
                40,
            );
            out.push(Packet {
                at,
                frame: udp((src, port), (dst, port), &payload)?,
            });
        }
    }
    // PCMA with old comfort noise (PT 19) for 10 packets in the middle.
    for i in 0..100u32 {
        let at = (i64::from(i) * 20) * MS + jitter.next_us(1000) * 1000;
        let pt = if (40..50).contains(&i) { 19 } else { 8 };
        let payload = rtp(pt, i == 0 || i == 50, i as u16, i * 160, 0x5000_0013, 160);
        out.push(Packet {
            at,
            frame: udp((src, 40_010), (dst, 40_010), &payload)?,
        });
    }
    // Video at 90 kHz: 25 frames per second, two packets per frame (marker on the last).
    for (n, pt) in [25u8, 26, 28, 31, 32, 33, 34].into_iter().enumerate() {
        let port = 41_000 + 2 * n as u16;
        let mut seq = 0u16;
        for frame in 0..100u32 {
            let ts = frame * 3600;
            for part in 0..2 {
                let at = (i64::from(frame) * 40 + part * 2) * MS + jitter.next_us(1000) * 1000;
                let payload = rtp(pt, part == 1, seq, ts, 0x6000_0000 + u32::from(pt), 400);
                out.push(Packet {
                    at,
                    frame: udp((src, port), (dst, port), &payload)?,
                });
                seq += 1;
            }
        }
    }
    Ok(out)
}
