//! `teledge-gencap`: writes a deterministic synthetic capture of many SIP calls with RTP, for
//! benchmarks (replay throughput against TShark on the same file) and load tests.
//!
//! Every call gets the same shape with a rotating outcome: answered (INVITE, 100, 180, 200,
//! ACK, RTP both ways, BYE, 200), busy (486 + ACK), or abandoned (CANCEL, 200, 487, ACK).
//! One call in ten runs over TCP, with the INVITE split across two segments. Calls start
//! `--interval-ms` apart and overlap. The output depends only on the arguments.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use etherparse::PacketBuilder;

#[path = "gencap/media.rs"]
mod media;

#[derive(Debug, Parser)]
#[command(about = "Write a deterministic synthetic SIP/RTP capture (pcap)")]
struct Args {
    /// Output pcap file.
    #[arg(long, short)]
    out: PathBuf,
    /// Number of calls.
    #[arg(long, default_value_t = 5000)]
    calls: u32,
    /// RTP packets per direction of an answered call (20 ms apart).
    #[arg(long, default_value_t = 20)]
    rtp: u32,
    /// Calls keep their timing and SDP but send no RTP (`--rtp` still sets how long they
    /// last): the baseline against which memory per RTP stream is measured.
    #[arg(long)]
    no_rtp_packets: bool,
    /// Milliseconds between call starts.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Instead of many calls, one call through a B2BUA with direct media: two Call-IDs
    /// whose SDP announce the same two media endpoints, RTP and RTCP flowing between them.
    #[arg(long)]
    b2bua_direct_media: bool,
    /// Write one media scenario instead (see `src/bin/gencap/media.rs`).
    #[arg(long, value_enum)]
    media_scenario: Option<media::Scenario>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Invite,
    Trying,
    Ringing,
    Ok,
    Ack,
    Rtp { forward: bool, seq: u16 },
    Bye,
    ByeOk,
    Busy,
    Cancel,
    CancelOk,
    Terminated,
}

/// Unix time of the first call (2026-01-01).
const EPOCH_NS: u64 = 1_767_225_600_000_000_000;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.b2bua_direct_media {
        return b2bua_direct_media(&args);
    }
    if let Some(scenario) = args.media_scenario {
        let file =
            File::create(&args.out).with_context(|| format!("create {}", args.out.display()))?;
        let mut out = BufWriter::new(file);
        let packets = media::write(scenario, &mut out)?;
        out.flush()?;
        eprintln!("{}: {packets} packets", args.out.display());
        return Ok(());
    }
    let mut events: Vec<(u64, u32, Event)> = Vec::new();
    for call in 0..args.calls {
        let start = EPOCH_NS + u64::from(call) * args.interval_ms * 1_000_000;
        let ms = |m: u64| start + m * 1_000_000;
        events.push((ms(0), call, Event::Invite));
        events.push((ms(5), call, Event::Trying));
        events.push((ms(40), call, Event::Ringing));
        match call % 6 {
            0..=3 => {
                let answer = 2000;
                events.push((ms(answer), call, Event::Ok));
                events.push((ms(answer + 10), call, Event::Ack));
                for i in (0..args.rtp).filter(|_| !args.no_rtp_packets) {
                    let at = answer + 20 + u64::from(i) * 20;
                    let seq = i as u16;
                    events.push((ms(at), call, Event::Rtp { forward: true, seq }));
                    events.push((
                        ms(at + 3),
                        call,
                        Event::Rtp {
                            forward: false,
                            seq,
                        },
                    ));
                }
                let end = answer + 40 + u64::from(args.rtp) * 20;
                events.push((ms(end), call, Event::Bye));
                events.push((ms(end + 15), call, Event::ByeOk));
            }
            4 => {
                events.push((ms(3000), call, Event::Cancel));
                events.push((ms(3005), call, Event::CancelOk));
                events.push((ms(3010), call, Event::Terminated));
                events.push((ms(3020), call, Event::Ack));
            }
            _ => {
                events.push((ms(1500), call, Event::Busy));
                events.push((ms(1510), call, Event::Ack));
            }
        }
    }
    events.sort_by_key(|e| (e.0, e.1));

    let file = File::create(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    // pcap header: microsecond, little endian, Ethernet.
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&[0u8; 8])?;
    out.write_all(&65_535u32.to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?;

    let mut tcp_seq = vec![[1000u32, 5000u32]; args.calls as usize];
    let mut packets = 0u64;
    for (time, call, event) in events {
        for frame in frames(call, event, &mut tcp_seq[call as usize])? {
            let secs = time / 1_000_000_000;
            let micros = (time % 1_000_000_000) / 1000;
            out.write_all(&(secs as u32).to_le_bytes())?;
            out.write_all(&(micros as u32).to_le_bytes())?;
            out.write_all(&(frame.len() as u32).to_le_bytes())?;
            out.write_all(&(frame.len() as u32).to_le_bytes())?;
            out.write_all(&frame)?;
            packets += 1;
        }
    }
    out.flush()?;
    eprintln!(
        "{}: {} calls, {packets} packets",
        args.out.display(),
        args.calls
    );
    Ok(())
}

/// A UDP datagram to write: milliseconds after the epoch, source, destination, ports,
/// payload.
type Datagram = (u64, [u8; 4], [u8; 4], u16, u16, Vec<u8>);

/// One call through a B2BUA (10.0.0.1) with direct media: leg A from the caller
/// (10.1.0.1) to the B2BUA, leg B from the B2BUA to the callee (10.2.0.1). Both legs'
/// SDP name the caller's (10.1.0.1:20000) and the callee's (10.2.0.1:30000) media, which
/// flow directly between the phones: `--rtp` packets each way, then an RTCP SR from each.
fn b2bua_direct_media(args: &Args) -> anyhow::Result<()> {
    const CALLER: [u8; 4] = [10, 1, 0, 1];
    const B2BUA: [u8; 4] = [10, 0, 0, 1];
    const CALLEE: [u8; 4] = [10, 2, 0, 1];
    let sdp = |ip: &str, port: u16| {
        format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n")
    };
    let offer = sdp("10.1.0.1", 20_000);
    let answer = sdp("10.2.0.1", 30_000);
    // (ms, src, dst, SIP text or datagram)
    let mut frames: Vec<Datagram> = Vec::new();
    let mut sip = |at: u64,
                   src: [u8; 4],
                   dst: [u8; 4],
                   leg: &str,
                   first: &str,
                   cseq: &str,
                   to_tag: bool,
                   body: &str| {
        let (from, to) = if leg == "A" {
            ("<sip:4930100@10.1.0.1>;tag=a1", "<sip:200@10.0.0.1>")
        } else {
            ("<sip:4930100@10.0.0.1>;tag=b1", "<sip:200@10.2.0.1>")
        };
        let to_tag = if to_tag {
            format!(";tag={}2", leg.to_lowercase())
        } else {
            String::new()
        };
        let content = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_owned()
        };
        let branch = format!("z9hG4bK{leg}{}", cseq.replace(' ', ""));
        let text = format!(
            "{first}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\nFrom: {from}\r\nTo: {to}{to_tag}\r\nCall-ID: leg{leg}@b2bua.example\r\nCSeq: {cseq}\r\nMax-Forwards: 70\r\n{content}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        frames.push((at, src, dst, 5060, 5060, text.into_bytes()));
    };
    sip(
        0,
        CALLER,
        B2BUA,
        "A",
        "INVITE sip:200@10.0.0.1 SIP/2.0",
        "1 INVITE",
        false,
        &offer,
    );
    sip(
        5,
        B2BUA,
        CALLER,
        "A",
        "SIP/2.0 100 Trying",
        "1 INVITE",
        false,
        "",
    );
    sip(
        10,
        B2BUA,
        CALLEE,
        "B",
        "INVITE sip:200@10.2.0.1 SIP/2.0",
        "1 INVITE",
        false,
        &offer,
    );
    sip(
        40,
        CALLEE,
        B2BUA,
        "B",
        "SIP/2.0 180 Ringing",
        "1 INVITE",
        true,
        "",
    );
    sip(
        45,
        B2BUA,
        CALLER,
        "A",
        "SIP/2.0 180 Ringing",
        "1 INVITE",
        true,
        "",
    );
    sip(
        2000,
        CALLEE,
        B2BUA,
        "B",
        "SIP/2.0 200 OK",
        "1 INVITE",
        true,
        &answer,
    );
    sip(
        2005,
        B2BUA,
        CALLEE,
        "B",
        "ACK sip:200@10.2.0.1 SIP/2.0",
        "1 ACK",
        true,
        "",
    );
    sip(
        2010,
        B2BUA,
        CALLER,
        "A",
        "SIP/2.0 200 OK",
        "1 INVITE",
        true,
        &answer,
    );
    sip(
        2015,
        CALLER,
        B2BUA,
        "A",
        "ACK sip:200@10.0.0.1 SIP/2.0",
        "1 ACK",
        true,
        "",
    );
    let rtp = |seq: u16, ssrc: u32| {
        let mut p = vec![0x80, 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(0xD5u8, 160));
        p
    };
    let (up, down) = (0x0A0A_0001u32, 0x0B0B_0002u32);
    for i in 0..args.rtp {
        let at = 2100 + u64::from(i) * 20;
        let seq = i as u16;
        // A little jitter on the way back, so the figures are not all zero.
        frames.push((at, CALLER, CALLEE, 20_000, 30_000, rtp(seq, up)));
        frames.push((
            at + 3 + u64::from(i % 3),
            CALLEE,
            CALLER,
            30_000,
            20_000,
            rtp(seq, down),
        ));
    }
    // Each SR's NTP time has non-zero middle bits, so a report naming it (LSR) is a real
    // reference: the callee's SR answers the caller's, 2 ms (131/65536 s) after receiving it.
    const CALLER_NTP_MIDDLE: u32 = 0x0001_8000;
    let sr = |ssrc: u32, about: u32, packets: u32, ntp_middle: u32, lsr: u32, dlsr: u32| {
        let mut p = vec![0x81, 200, 0, 12];
        p.extend_from_slice(&ssrc.to_be_bytes());
        let ntp = (0xE900_0000u64 << 32) | (u64::from(ntp_middle) << 16);
        p.extend_from_slice(&ntp.to_be_bytes()); // NTP
        p.extend_from_slice(&(packets * 160).to_be_bytes());
        p.extend_from_slice(&packets.to_be_bytes());
        p.extend_from_slice(&(packets * 160).to_be_bytes());
        p.extend_from_slice(&about.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]); // fraction lost, cumulative lost
        p.extend_from_slice(&(packets.saturating_sub(1)).to_be_bytes());
        p.extend_from_slice(&8u32.to_be_bytes()); // jitter, timestamp units
        p.extend_from_slice(&lsr.to_be_bytes());
        p.extend_from_slice(&dlsr.to_be_bytes());
        p
    };
    let end = 2100 + u64::from(args.rtp) * 20;
    frames.push((
        end,
        CALLER,
        CALLEE,
        20_001,
        30_001,
        sr(up, down, args.rtp, CALLER_NTP_MIDDLE, 0, 0),
    ));
    frames.push((
        end + 5,
        CALLEE,
        CALLER,
        30_001,
        20_001,
        sr(down, up, args.rtp, 0x0002_0000, CALLER_NTP_MIDDLE, 131),
    ));
    let mut sip = |at: u64, src: [u8; 4], dst: [u8; 4], leg: &str, first: &str, cseq: &str| {
        let (from, to) = if leg == "A" {
            ("<sip:4930100@10.1.0.1>;tag=a1", "<sip:200@10.0.0.1>;tag=a2")
        } else {
            ("<sip:4930100@10.0.0.1>;tag=b1", "<sip:200@10.2.0.1>;tag=b2")
        };
        let text = format!(
            "{first}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{leg}bye\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: leg{leg}@b2bua.example\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
        );
        frames.push((at, src, dst, 5060, 5060, text.into_bytes()));
    };
    sip(
        end + 100,
        CALLER,
        B2BUA,
        "A",
        "BYE sip:200@10.0.0.1 SIP/2.0",
        "2 BYE",
    );
    sip(end + 105, B2BUA, CALLER, "A", "SIP/2.0 200 OK", "2 BYE");
    sip(
        end + 110,
        B2BUA,
        CALLEE,
        "B",
        "BYE sip:200@10.2.0.1 SIP/2.0",
        "2 BYE",
    );
    sip(end + 120, CALLEE, B2BUA, "B", "SIP/2.0 200 OK", "2 BYE");
    frames.sort_by_key(|f| f.0);

    let file = File::create(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&[0u8; 8])?;
    out.write_all(&65_535u32.to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?;
    for (at, src, dst, sport, dport, payload) in frames {
        let time = EPOCH_NS + at * 1_000_000;
        let frame = udp_frame(src, dst, sport, dport, &payload)?;
        out.write_all(&((time / 1_000_000_000) as u32).to_le_bytes())?;
        out.write_all(&(((time % 1_000_000_000) / 1000) as u32).to_le_bytes())?;
        out.write_all(&(frame.len() as u32).to_le_bytes())?;
        out.write_all(&(frame.len() as u32).to_le_bytes())?;
        out.write_all(&frame)?;
    }
    out.flush()?;
    Ok(())
}

fn caller_ip(call: u32) -> [u8; 4] {
    [10, 1, (call >> 8) as u8, call as u8]
}

const PBX_IP: [u8; 4] = [10, 0, 0, 1];

/// Builds the frames of one event (two for a split TCP INVITE).
fn frames(call: u32, event: Event, tcp_seq: &mut [u32; 2]) -> anyhow::Result<Vec<Vec<u8>>> {
    let tcp = call % 10 == 9;
    let caller = caller_ip(call);
    if let Event::Rtp { forward, seq } = event {
        let mut rtp = vec![0x80, 8];
        rtp.extend_from_slice(&seq.to_be_bytes());
        rtp.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        rtp.extend_from_slice(&(0x1000_0000u32 + call * 2 + u32::from(forward)).to_be_bytes());
        rtp.extend(std::iter::repeat_n(0xD5u8, 160));
        let (src, dst, sport, dport) = if forward {
            (caller, PBX_IP, 20_000, 30_000 + (call % 30_000) as u16)
        } else {
            (PBX_IP, caller, 30_000 + (call % 30_000) as u16, 20_000)
        };
        return Ok(vec![udp_frame(src, dst, sport, dport, &rtp)?]);
    }
    let (text, from_caller) = sip_text(call, event, tcp);
    let (src, dst) = if from_caller {
        (caller, PBX_IP)
    } else {
        (PBX_IP, caller)
    };
    if !tcp {
        return Ok(vec![udp_frame(src, dst, 5060, 5060, text.as_bytes())?]);
    }
    let (sport, dport) = if from_caller {
        (40_000, 5060)
    } else {
        (5060, 40_000)
    };
    let seq = &mut tcp_seq[usize::from(!from_caller)];
    let bytes = text.as_bytes();
    let parts: Vec<&[u8]> = if event == Event::Invite {
        let (a, b) = bytes.split_at(bytes.len() / 2);
        vec![a, b]
    } else {
        vec![bytes]
    };
    let mut out = Vec::new();
    for part in parts {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .tcp(sport, dport, *seq, 65_535)
            .ack(1);
        let mut frame = Vec::with_capacity(builder.size(part.len()));
        builder.write(&mut frame, part)?;
        *seq = seq.wrapping_add(part.len() as u32);
        out.push(frame);
    }
    Ok(out)
}

fn udp_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload)?;
    Ok(frame)
}

/// The SIP text of an event, and whether the caller sends it.
fn sip_text(call: u32, event: Event, tcp: bool) -> (String, bool) {
    let transport = if tcp { "TCP" } else { "UDP" };
    let [a, b, c, d] = caller_ip(call);
    let caller = format!("{a}.{b}.{c}.{d}");
    let agent = 4000 + call % 200;
    let number = format!("+4930{:07}", call);
    let rtp_port = 30_000 + call % 30_000;
    let (first_line, method, cseq, from_caller, to_tag, sdp) = match event {
        Event::Invite => (
            format!("INVITE sip:{agent}@10.0.0.1 SIP/2.0"),
            "INVITE",
            1,
            true,
            false,
            Some((caller.clone(), 20_000)),
        ),
        Event::Trying => (
            "SIP/2.0 100 Trying".to_owned(),
            "INVITE",
            1,
            false,
            false,
            None,
        ),
        Event::Ringing => (
            "SIP/2.0 180 Ringing".to_owned(),
            "INVITE",
            1,
            false,
            true,
            None,
        ),
        Event::Ok => (
            "SIP/2.0 200 OK".to_owned(),
            "INVITE",
            1,
            false,
            true,
            Some(("10.0.0.1".to_owned(), rtp_port)),
        ),
        Event::Ack => (
            format!("ACK sip:{agent}@10.0.0.1 SIP/2.0"),
            "ACK",
            1,
            true,
            true,
            None,
        ),
        Event::Bye => (
            format!("BYE sip:{agent}@10.0.0.1 SIP/2.0"),
            "BYE",
            2,
            true,
            true,
            None,
        ),
        Event::ByeOk => ("SIP/2.0 200 OK".to_owned(), "BYE", 2, false, true, None),
        Event::Busy => (
            "SIP/2.0 486 Busy Here".to_owned(),
            "INVITE",
            1,
            false,
            true,
            None,
        ),
        Event::Cancel => (
            format!("CANCEL sip:{agent}@10.0.0.1 SIP/2.0"),
            "CANCEL",
            1,
            true,
            false,
            None,
        ),
        Event::CancelOk => ("SIP/2.0 200 OK".to_owned(), "CANCEL", 1, false, true, None),
        Event::Terminated => (
            "SIP/2.0 487 Request Terminated".to_owned(),
            "INVITE",
            1,
            false,
            true,
            None,
        ),
        Event::Rtp { .. } => unreachable!("RTP is not SIP"),
    };
    let branch = match method {
        "ACK" | "BYE" => format!("z9hG4bK{call}{method}"),
        _ => format!("z9hG4bK{call}"),
    };
    let body = sdp
        .map(|(ip, port)| {
            format!("v=0\r\no=- {call} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")
        })
        .unwrap_or_default();
    let mut text = format!(
        "{first_line}\r\nVia: SIP/2.0/{transport} {caller}:5060;branch={branch}\r\nFrom: \"Caller {call}\" <sip:{number}@{caller}>;tag=c{call}\r\nTo: <sip:{agent}@10.0.0.1>{}\r\nCall-ID: gen-{call}@{caller}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nUser-Agent: teledge-gencap\r\n",
        if to_tag { format!(";tag=a{call}") } else { String::new() },
    );
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    (text, from_caller)
}
