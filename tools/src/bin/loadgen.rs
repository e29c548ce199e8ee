//! `teledge-loadgen`: live-capture load for the benchmark (`scripts/bench-live.sh`).
//!
//! - `send`: N concurrent G.711 calls onto loopback at real-time pacing: per call a SIP INVITE
//!   with SDP, 200 OK and ACK, then RTP both ways (160-byte payload every 20 ms, 50 packets/s
//!   per direction), then BYE and 200 OK. One line of JSON at the end: what was sent and how
//!   far the sender fell behind its schedule.
//! - `capture`: live capture (AF_PACKET ring) into the decode path and the correlator, as the
//!   daemon runs them, for a given time; one line of JSON at the end: packets, kernel drops,
//!   decode and media counters, peak RSS. It stands in for `teledge run` until the daemon has
//!   a live pipeline.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use teledge::correlation::calls::CallLimits;
use teledge::correlation::media::MediaLimits;
use teledge::correlation::Correlator;
use teledge::decode::sip::SipMessage;
use teledge::dissect::{DatagramMeta, DissectLimits, Dissector, MessageMeta, Observer};
use teledge::record::{ClosedBy, Record};
use teledge::sources::afpacket::{LiveCapture, RingSettings};
use teledge::time::Timestamp;

#[derive(Debug, Parser)]
#[command(about = "Live-capture load: send calls onto loopback, or capture and count them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send N concurrent G.711 calls (SIP + RTP both ways) to 127.0.0.1 in real time.
    Send {
        #[arg(long)]
        calls: u32,
        /// How long the RTP runs.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Write the same calls as three pcap files of Ethernet frames for `tcpreplay` into a
    /// veth pair (scripts/bench-live.sh): `setup.pcap` (INVITE with SDP, 200 with SDP, ACK
    /// for every call), `rtp.pcap` (TICKS rounds of one RTP packet each way for every call,
    /// replayed in a loop at a fixed packet rate) and `teardown.pcap` (BYE and 200).
    Pcap {
        #[arg(long)]
        calls: u32,
        /// Rounds of RTP (20 ms of audio each) in rtp.pcap.
        #[arg(long, default_value_t = 10)]
        ticks: u32,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Capture, decode and correlate for a while, then print counters as JSON.
    Capture {
        #[arg(long, default_value = "lo")]
        interface: String,
        #[arg(long, default_value_t = 12)]
        seconds: u64,
        /// Ring size in MiB (blocks of 256 KiB).
        #[arg(long, default_value_t = 4)]
        ring_mib: u64,
    },
}

const PTIME: Duration = Duration::from_millis(20);
const CALLER_SIP: u16 = 5062;
const CALLEE_SIP: u16 = 5060;
/// Every call's media endpoints share these ports; the calls differ by address (below).
const CALLER_RTP: u16 = 20_000;
const CALLEE_RTP: u16 = 40_000;
/// Most calls: addresses 127.1.0.0 to 127.1.255.255 (and 127.2.x.y).
const MAX_CALLS: u32 = 65_536;

/// The media address of one side of a call: 127.1.x.y for the caller, 127.2.x.y for the
/// callee. A socket bound to 0.0.0.0 receives for all of 127/8, so two sockets take every
/// call's RTP and nothing is sent to a closed port (loopback does not rate-limit ICMP port
/// unreachables, which would double the traffic).
fn media_ip(side: u8, call: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, side, (call >> 8) as u8, call as u8)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Send { calls, seconds } => send(calls, Duration::from_secs(seconds)),
        Command::Pcap { calls, ticks, out } => pcap(calls, ticks, &out),
        Command::Capture {
            interface,
            seconds,
            ring_mib,
        } => capture(&interface, Duration::from_secs(seconds), ring_mib),
    }
}

fn sdp(address: std::net::Ipv4Addr, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n"
    )
}

/// A SIP message of call `call`; `body` is SDP or empty.
fn sip(call: u32, first_line: &str, method: &str, cseq: u32, to_tag: bool, body: &str) -> String {
    let tag = if to_tag { ";tag=callee" } else { "" };
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{first_line}\r\nVia: SIP/2.0/UDP 127.0.0.1:{CALLER_SIP};branch=z9hG4bK-{call}-{cseq}\r\n\
         From: <sip:caller{call}@127.0.0.1>;tag=caller{call}\r\nTo: <sip:agent@127.0.0.1>{tag}\r\n\
         Call-ID: load-{call}@127.0.0.1\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:caller{call}@127.0.0.1:{CALLER_SIP}>\r\n{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn send(calls: u32, duration: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_CALLS).contains(&calls),
        "--calls must be 1 to {MAX_CALLS}"
    );
    let bind = |port: u16| {
        UdpSocket::bind(("127.0.0.1", port)).with_context(|| format!("binding 127.0.0.1:{port}"))
    };
    let (caller_sip, callee_sip) = (bind(CALLER_SIP)?, bind(CALLEE_SIP)?);
    let bind_any = |port: u16| {
        UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding 0.0.0.0:{port}"))
    };
    // Sinks for every call's RTP, never read: datagrams beyond their buffers are dropped
    // after the capture tap has seen them.
    let (_caller_sink, _callee_sink) = (bind_any(CALLER_RTP)?, bind_any(CALLEE_RTP)?);
    // One socket per side sends every call's stream of that side; the streams differ by
    // destination address (the other side's SDP endpoint) and SSRC.
    let (caller_rtp, callee_rtp) = (bind(0)?, bind(0)?);
    let to = |port: u16| ("127.0.0.1", port);

    for call in 0..calls {
        let invite_line = "INVITE sip:agent@127.0.0.1 SIP/2.0";
        let invite = sip(
            call,
            invite_line,
            "INVITE",
            1,
            false,
            &sdp(media_ip(1, call), CALLER_RTP),
        );
        caller_sip.send_to(invite.as_bytes(), to(CALLEE_SIP))?;
        let ok = sip(
            call,
            "SIP/2.0 200 OK",
            "INVITE",
            1,
            true,
            &sdp(media_ip(2, call), CALLEE_RTP),
        );
        callee_sip.send_to(ok.as_bytes(), to(CALLER_SIP))?;
        let ack = sip(call, "ACK sip:agent@127.0.0.1 SIP/2.0", "ACK", 1, true, "");
        caller_sip.send_to(ack.as_bytes(), to(CALLEE_SIP))?;
    }

    let ticks = (duration.as_millis() / PTIME.as_millis()) as u32;
    let mut packet = [0xd5u8; 12 + 160]; // A-law silence after the header
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    for tick in 0..ticks {
        let due = start + PTIME * tick;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_lag = max_lag.max(now - due);
        }
        for call in 0..calls {
            for (socket, ssrc, dst) in [
                (&caller_rtp, 2 * call, (media_ip(2, call), CALLEE_RTP)),
                (&callee_rtp, 2 * call + 1, (media_ip(1, call), CALLER_RTP)),
            ] {
                packet[0] = 0x80;
                packet[1] = 8; // PCMA
                packet[2..4].copy_from_slice(&(tick as u16).to_be_bytes());
                packet[4..8].copy_from_slice(&(tick * 160).to_be_bytes());
                packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
                match socket.send_to(&packet, dst) {
                    Ok(_) => sent += 1,
                    Err(_) => errors += 1,
                }
            }
        }
    }
    let elapsed = start.elapsed();

    for call in 0..calls {
        let bye = sip(call, "BYE sip:agent@127.0.0.1 SIP/2.0", "BYE", 2, true, "");
        caller_sip.send_to(bye.as_bytes(), to(CALLEE_SIP))?;
        let ok = sip(call, "SIP/2.0 200 OK", "BYE", 2, true, "");
        callee_sip.send_to(ok.as_bytes(), to(CALLER_SIP))?;
    }
    let target = u64::from(calls) * 2 * u64::from(ticks);
    println!(
        "{}",
        json!({
            "calls": calls,
            "rtp_target": target,
            "rtp_sent": sent,
            "send_errors": errors,
            "seconds": elapsed.as_secs_f64(),
            "target_pps": u64::from(calls) * 100,
            "achieved_pps": sent as f64 / elapsed.as_secs_f64(),
            "max_lag_ms": max_lag.as_secs_f64() * 1e3,
        })
    );
    Ok(())
}

/// A pcap writer of Ethernet frames (microsecond time stamps), one frame every 2 µs: the
/// times do not matter, tcpreplay paces by packet rate.
struct PcapFile {
    out: std::io::BufWriter<std::fs::File>,
    frames: u64,
}

impl PcapFile {
    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        let mut header = Vec::new();
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&[0; 8]);
        header.extend_from_slice(&65_535u32.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        std::io::Write::write_all(&mut out, &header)?;
        Ok(PcapFile { out, frames: 0 })
    }

    /// One UDP datagram between two IPv4 addresses.
    fn udp(
        &mut self,
        src: (std::net::Ipv4Addr, u16),
        dst: (std::net::Ipv4Addr, u16),
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .udp(src.1, dst.1);
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut frame, payload)?;
        let micros = 1_700_000_000_000_000u64 + self.frames * 2;
        self.frames += 1;
        let mut record = Vec::with_capacity(16 + frame.len());
        record.extend_from_slice(&((micros / 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&((micros % 1_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        record.extend_from_slice(&frame);
        std::io::Write::write_all(&mut self.out, &record)?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<u64> {
        std::io::Write::flush(&mut self.out)?;
        Ok(self.frames)
    }
}

fn pcap(calls: u32, ticks: u32, dir: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_CALLS).contains(&calls),
        "--calls must be 1 to {MAX_CALLS}"
    );
    std::fs::create_dir_all(dir)?;
    let host = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let (caller, callee) = ((host, CALLER_SIP), (host, CALLEE_SIP));
    let mut setup = PcapFile::create(&dir.join("setup.pcap"))?;
    for call in 0..calls {
        let invite = sip(
            call,
            "INVITE sip:agent@127.0.0.1 SIP/2.0",
            "INVITE",
            1,
            false,
            &sdp(media_ip(1, call), CALLER_RTP),
        );
        setup.udp(caller, callee, invite.as_bytes())?;
        let ok = sip(
            call,
            "SIP/2.0 200 OK",
            "INVITE",
            1,
            true,
            &sdp(media_ip(2, call), CALLEE_RTP),
        );
        setup.udp(callee, caller, ok.as_bytes())?;
        let ack = sip(call, "ACK sip:agent@127.0.0.1 SIP/2.0", "ACK", 1, true, "");
        setup.udp(caller, callee, ack.as_bytes())?;
    }
    let mut rtp = PcapFile::create(&dir.join("rtp.pcap"))?;
    let mut packet = [0xd5u8; 12 + 160];
    for tick in 0..ticks {
        for call in 0..calls {
            for (ssrc, src, dst) in [
                (
                    2 * call,
                    (media_ip(1, call), CALLER_RTP),
                    (media_ip(2, call), CALLEE_RTP),
                ),
                (
                    2 * call + 1,
                    (media_ip(2, call), CALLEE_RTP),
                    (media_ip(1, call), CALLER_RTP),
                ),
            ] {
                packet[0] = 0x80;
                packet[1] = 8;
                packet[2..4].copy_from_slice(&(tick as u16).to_be_bytes());
                packet[4..8].copy_from_slice(&(tick * 160).to_be_bytes());
                packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
                rtp.udp(src, dst, &packet)?;
            }
        }
    }
    let mut teardown = PcapFile::create(&dir.join("teardown.pcap"))?;
    for call in 0..calls {
        let bye = sip(call, "BYE sip:agent@127.0.0.1 SIP/2.0", "BYE", 2, true, "");
        teardown.udp(caller, callee, bye.as_bytes())?;
        let ok = sip(call, "SIP/2.0 200 OK", "BYE", 2, true, "");
        teardown.udp(callee, caller, ok.as_bytes())?;
    }
    println!(
        "{}",
        json!({
            "calls": calls,
            "setup_frames": setup.finish()?,
            "rtp_frames": rtp.finish()?,
            "teardown_frames": teardown.finish()?,
        })
    );
    Ok(())
}

/// Hands decoded events to the correlator; records are only counted.
struct Feed<'a> {
    correlator: &'a mut Correlator,
    records: &'a mut u64,
}

impl Observer for Feed<'_> {
    fn sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>) {
        let records = &mut *self.records;
        self.correlator
            .sip(meta, message, &mut |_: Record| *records += 1);
    }

    fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        let records = &mut *self.records;
        self.correlator
            .datagram(meta, payload, &mut |_: Record| *records += 1);
    }
}

fn capture(interface: &str, duration: Duration, ring_mib: u64) -> anyhow::Result<()> {
    let settings = RingSettings::with_total_bytes(ring_mib << 20);
    let mut capture = LiveCapture::open(interface, settings, false)?;
    let mut dissector = Dissector::new(DissectLimits::default());
    let mut correlator = Correlator::new(CallLimits::default(), MediaLimits::default());
    let mut records = 0u64;
    let mut number = 0u64;
    let mut last = Timestamp::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        capture.next_batch(Duration::from_millis(100), |packet| {
            number += 1;
            last = last.max(packet.time);
            let mut feed = Feed {
                correlator: &mut correlator,
                records: &mut records,
            };
            dissector.frame(&packet.frame(number), &mut feed);
        })?;
        // Time moves per batch, as a live pipeline would move it per tick.
        correlator.advance(last, &mut |_| records += 1);
    }
    let kernel = capture.stats()?;
    let counters = capture.counters();
    let open_calls = correlator.calls().open_calls();
    let active_streams = correlator.media().active_streams();
    correlator.finish(ClosedBy::CaptureEnd, &mut |_| records += 1);
    let decode = dissector.stats();
    let media = correlator.media().counters();
    println!(
        "{}",
        json!({
            "interface": interface,
            "ring_bytes": settings.total_bytes(),
            "kernel": kernel,
            "capture": counters,
            "sip_messages": decode.sip_messages(),
            "udp_datagrams": decode.udp_datagrams,
            "rtp_packets": media.rtp_packets,
            "rtp_packets_in_calls": media.rtp_packets_in_calls,
            "calls": correlator.calls().counters().calls,
            "open_calls_at_end": open_calls,
            "active_streams_at_end": active_streams,
            "records": records,
            "peak_rss_kib": peak_rss_kib(),
        })
    );
    Ok(())
}

/// VmHWM: the most resident memory the process has had.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
