//! What the pipeline hands the relay ([`Mirrored`]) turned into HEPv3 frames: pure, no I/O.
//!
//! | seen | HEP type | CID (0x0011) | payload (0x000f) |
//! |---|---|---|---|
//! | a SIP message (live, file, HEP) | 1 SIP | its Call-ID | the message's bytes as captured |
//! | an RTCP packet of a call | 5 RTCP | the call's Call-ID | heplify's RTCP JSON |
//! | a stream of a call, at the call's end | 34 report | the call's Call-ID | the stream's quality as JSON, MOS × 100 in 0x0020 |
//! | a HEP frame of type 1 or 5 received | as received | as received | as received |
//!
//! Every frame carries the original addresses, ports and transport of what was captured,
//! its capture time (µs), and the node's identity: capture id (0x000c), auth key (0x000e,
//! when set) and node name (0x0013). Frames received over HEP are relayed with that identity
//! too (the relay is the agent HOMER hears from); one that already carries it — the relay's
//! own output captured again on the wire — is skipped, so a capture interface that sees the
//! relay's traffic makes no loop.
//!
//! Why type 34 for stream reports: HOMER (heplify-server's homer7 path) stores a type-5
//! frame as RTCP (`hep_proto_5_default`, the QoS tab reads it as SR/RR fields) and every
//! other type ≥ 2 with a non-empty CID in `hep_proto_35_default`, its report table; 34 is
//! "MOS full report (JSON)" in the HEP specification and heplify-server's Prometheus path
//! reads it as an RTP-agent report. A stream measured by teledge is such a report, not an
//! RTCP packet: sending it as type 5 would mix it with the endpoints' own RTCP.

use std::borrow::Cow;
use std::net::SocketAddr;

use serde_json::json;

use crate::decode::hep::{encode, EncodeError, HepFrame, IpFamily, IpProtocol, ProtoType};
use crate::dissect::Transport;
use crate::pipeline::Mirrored;
use crate::record::media::StreamQuality;
use crate::record::{CallRecord, Record};
use crate::secret::Secret;
use crate::time::Timestamp;

/// HEP protocol type of a stream quality report ("MOS full report", JSON).
pub const STREAM_REPORT_TYPE: u8 = 34;

/// Who the frames say they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub capture_id: u32,
    /// Never printed ([`Secret`]).
    pub auth_key: Option<Secret<Vec<u8>>>,
    pub node_name: Option<Vec<u8>>,
}

/// Which frames are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub sip: bool,
    pub rtcp: bool,
    pub stream_reports: bool,
}

/// What a frame carries: the label of `teledge_hep_out_frames_total{type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    Sip,
    Rtcp,
    StreamReport,
}

impl FrameKind {
    pub const ALL: [FrameKind; 3] = [FrameKind::Sip, FrameKind::Rtcp, FrameKind::StreamReport];

    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Sip => "sip",
            FrameKind::Rtcp => "rtcp",
            FrameKind::StreamReport => "stream_report",
        }
    }
}

/// One outcome of turning an event into frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    Frame(FrameKind, Vec<u8>),
    /// The frame could not be encoded (too large, ...): counted as dropped.
    Failed(FrameKind, EncodeError),
    /// Not relayed on purpose, by reason: `own_frame` (the relay's output seen again),
    /// `stream_without_call` (HOMER stores no report without a Call-ID), `rtcp_unreadable`.
    Skipped(&'static str),
}

/// The frames for one event (none for what is not relayed: other records, kinds turned off).
pub fn frames(event: Mirrored<'_>, id: &Identity, kinds: Kinds) -> Vec<Made> {
    match event {
        Mirrored::Sip { meta, message } if kinds.sip => {
            let frame = base(
                meta.src,
                meta.dst,
                meta.time,
                ip_protocol(meta.transport),
                ProtoType::Sip,
                id,
                Cow::Borrowed(message.raw),
                Some(message.call_id.as_bytes()),
            );
            vec![made(FrameKind::Sip, &frame)]
        }
        Mirrored::Rtcp {
            meta,
            payload,
            call_id,
        } if kinds.rtcp => match rtcp_json(payload) {
            Some(json) => {
                let frame = base(
                    meta.src,
                    meta.dst,
                    meta.time,
                    IpProtocol::Udp,
                    ProtoType::RtcpJson,
                    id,
                    Cow::Owned(json),
                    Some(call_id.as_bytes()),
                );
                vec![made(FrameKind::Rtcp, &frame)]
            }
            None => vec![Made::Skipped("rtcp_unreadable")],
        },
        Mirrored::Hep(hep) => {
            let kind = match hep.proto_type {
                ProtoType::Sip if kinds.sip => FrameKind::Sip,
                ProtoType::RtcpJson if kinds.rtcp => FrameKind::Rtcp,
                _ => return Vec::new(),
            };
            if is_own(hep, id) {
                return vec![Made::Skipped("own_frame")];
            }
            let frame = HepFrame {
                capture_id: Some(id.capture_id),
                auth_key: id.auth_key.as_ref().map(|k| Cow::Borrowed(&k.expose()[..])),
                node_name: id.node_name.as_deref().map(Cow::Borrowed),
                payload: Cow::Borrowed(&hep.payload),
                correlation_id: hep.correlation_id.as_deref().map(Cow::Borrowed),
                keep_alive_s: None,
                ..hep.clone()
            };
            vec![made(kind, &frame)]
        }
        Mirrored::Record(Record::Call(call)) if kinds.stream_reports => stream_reports(call, id),
        Mirrored::Record(Record::Stream(_)) if kinds.stream_reports => {
            vec![Made::Skipped("stream_without_call")]
        }
        _ => Vec::new(),
    }
}

/// A frame that carries this relay's identity: its own output, captured again.
pub fn is_own(hep: &HepFrame<'_>, id: &Identity) -> bool {
    hep.capture_id == Some(id.capture_id) && hep.node_name.as_deref() == id.node_name.as_deref()
}

fn made(kind: FrameKind, frame: &HepFrame<'_>) -> Made {
    match encode(frame) {
        Ok(bytes) => Made::Frame(kind, bytes),
        Err(e) => Made::Failed(kind, e),
    }
}

fn ip_protocol(transport: Transport) -> IpProtocol {
    match transport {
        Transport::Udp => IpProtocol::Udp,
        Transport::Tcp | Transport::Ws => IpProtocol::Tcp,
        Transport::Sctp => IpProtocol::Sctp,
    }
}

#[allow(clippy::too_many_arguments)]
fn base<'a>(
    src: SocketAddr,
    dst: SocketAddr,
    time: Timestamp,
    ip_protocol: IpProtocol,
    proto_type: ProtoType,
    id: &'a Identity,
    payload: Cow<'a, [u8]>,
    correlation_id: Option<&'a [u8]>,
) -> HepFrame<'a> {
    HepFrame {
        family: if src.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        },
        ip_protocol,
        src,
        dst,
        time,
        proto_type,
        capture_id: Some(id.capture_id),
        keep_alive_s: None,
        auth_key: id.auth_key.as_ref().map(|k| Cow::Borrowed(&k.expose()[..])),
        payload,
        compressed: false,
        correlation_id: correlation_id.map(Cow::Borrowed),
        vlan: None,
        node_name: id.node_name.as_deref().map(Cow::Borrowed),
        tcp_flags: None,
        ip_tos: None,
        mos: None,
        vendor_chunks: 0,
        skipped_chunks: 0,
    }
}

/// One type-34 frame per stream of the call, at the stream's end time.
fn stream_reports(call: &CallRecord, id: &Identity) -> Vec<Made> {
    let q = &call.media_quality;
    let streams = [
        ("caller_to_callee", &q.caller_to_callee),
        ("callee_to_caller", &q.callee_to_caller),
        ("unknown", &q.unknown_direction),
    ];
    let mut out = Vec::new();
    for (direction, list) in streams {
        for stream in list {
            let (Ok(src), Ok(dst)) = (
                stream.src.parse::<SocketAddr>(),
                stream.dst.parse::<SocketAddr>(),
            ) else {
                out.push(Made::Skipped("stream_address_unreadable"));
                continue;
            };
            let json = stream_report_json(&call.call_id, direction, stream);
            let mut frame = base(
                src,
                dst,
                stream.metrics.end_time,
                IpProtocol::Udp,
                ProtoType::Other(STREAM_REPORT_TYPE),
                id,
                Cow::Owned(json),
                Some(call.call_id.as_bytes()),
            );
            frame.mos = stream
                .score
                .as_ref()
                .map(|s| (s.mos * 100.0).round().clamp(0.0, 500.0) as u16);
            out.push(made(FrameKind::StreamReport, &frame));
        }
    }
    out
}

/// A stream's report: upper-case keys in the style of RTP-agent reports (`CORRELATION_ID`,
/// `MOS`, `JITTER`, `PACKET_LOSS`, ...; not checked against a running heplify-server, none
/// runs here), then teledge's own measurement in full (`teledge`: the `media_quality`
/// stream of `teledge.call/1`).
pub fn stream_report_json(call_id: &str, direction: &str, s: &StreamQuality) -> Vec<u8> {
    let m = &s.metrics;
    let (src_ip, src_port) = split(&s.src);
    let (dst_ip, dst_port) = split(&s.dst);
    let value = json!({
        "CORRELATION_ID": call_id,
        "RTP_SIP_CALL_ID": call_id,
        "DIR": direction,
        "SRC_IP": src_ip,
        "SRC_PORT": src_port,
        "DST_IP": dst_ip,
        "DST_PORT": dst_port,
        "SSRC": s.ssrc,
        "CODEC_NAME": s.codec,
        "TOTAL_PK": m.packets,
        "EXPECTED_PK": m.expected,
        "PACKET_LOSS": m.lost,
        "MAX_JITTER": m.max_jitter_ms,
        "JITTER": m.mean_jitter_ms,
        "DELTA": m.max_delta_ms,
        "MOS": s.score.as_ref().map(|sc| sc.mos),
        "R_FACTOR": s.score.as_ref().map(|sc| sc.r_factor),
        "REPORT_START": m.start_time.as_nanos() / 1_000_000,
        "REPORT_END": m.end_time.as_nanos() / 1_000_000,
        "teledge": s,
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

fn split(addr: &str) -> (String, u16) {
    addr.parse::<SocketAddr>()
        .map(|a| (a.ip().to_string(), a.port()))
        .unwrap_or_else(|_| (addr.to_owned(), 0))
}

/// An RTCP compound packet as heplify writes it in a type-5 frame (protocol reference §2.5):
/// the first SR or RR gives `type`, `ssrc` and `sender_information`; the report blocks of
/// every SR and RR follow; an SDES gives `sdes_ssrc`. `None` when no SR, RR or SDES decodes.
pub fn rtcp_json(payload: &[u8]) -> Option<Vec<u8>> {
    use rtcp::receiver_report::ReceiverReport;
    use rtcp::reception_report::ReceptionReport;
    use rtcp::sender_report::SenderReport;
    use rtcp::source_description::SourceDescription;

    let packets = crate::media::packet::rtcp_packets(payload).ok()?;
    let block = |r: &ReceptionReport| {
        json!({
            "source_ssrc": r.ssrc,
            "fraction_lost": r.fraction_lost,
            // A 24-bit signed count (RFC 3550 §6.4.1).
            "packets_lost": ((r.total_lost << 8) as i32) >> 8,
            "highest_seq_no": r.last_sequence_number,
            "ia_jitter": r.jitter,
            "lsr": r.last_sender_report,
            "dlsr": r.delay,
        })
    };
    let mut head: Option<serde_json::Map<String, serde_json::Value>> = None;
    let mut blocks = Vec::new();
    let mut sdes_ssrc = None;
    for packet in &packets {
        let any = packet.as_any();
        if let Some(sr) = any.downcast_ref::<SenderReport>() {
            let frac = sr.ntp_time & 0xffff_ffff;
            head.get_or_insert_with(|| {
                let mut m = serde_json::Map::new();
                m.insert(
                    "sender_information".into(),
                    json!({
                        "ntp_timestamp_sec": sr.ntp_time >> 32,
                        "ntp_timestamp_usec": (frac * 1_000_000) >> 32,
                        "rtp_timestamp": sr.rtp_time,
                        "packets": sr.packet_count,
                        "octets": sr.octet_count,
                    }),
                );
                m.insert("ssrc".into(), json!(sr.ssrc));
                m.insert("type".into(), json!(200));
                m
            });
            blocks.extend(sr.reports.iter().map(block));
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            head.get_or_insert_with(|| {
                let mut m = serde_json::Map::new();
                m.insert("ssrc".into(), json!(rr.ssrc));
                m.insert("type".into(), json!(201));
                m
            });
            blocks.extend(rr.reports.iter().map(block));
        } else if let Some(sdes) = any.downcast_ref::<SourceDescription>() {
            sdes_ssrc = sdes_ssrc.or(sdes.chunks.first().map(|c| c.source));
        }
    }
    if head.is_none() && sdes_ssrc.is_none() {
        return None;
    }
    let mut m = head.unwrap_or_default();
    m.insert("report_count".into(), json!(blocks.len()));
    m.insert("report_blocks".into(), json!(blocks));
    if let Some(ssrc) = sdes_ssrc {
        m.insert("sdes_ssrc".into(), json!(ssrc));
    }
    serde_json::to_vec(&serde_json::Value::Object(m)).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::decode::hep::{parse, rtcp_json as read_rtcp_json};
    use crate::dissect::{DatagramMeta, MessageMeta};

    fn identity() -> Identity {
        Identity {
            capture_id: 2002,
            auth_key: Some(Secret::new(b"myHep".to_vec())),
            node_name: Some(b"edge-1".to_vec()),
        }
    }

    const ALL: Kinds = Kinds {
        sip: true,
        rtcp: true,
        stream_reports: true,
    };

    fn one(made: Vec<Made>) -> (FrameKind, Vec<u8>) {
        match made.as_slice() {
            [Made::Frame(kind, bytes)] => (*kind, bytes.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sip_keeps_addresses_transport_time_and_bytes() {
        let raw = b"BYE sip:b@h SIP/2.0\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c-42\r\nCSeq: 7 BYE\r\n\r\n";
        let message = crate::decode::sip::parse(raw).unwrap();
        let meta = MessageMeta {
            frame: 3,
            time: Timestamp::from_secs_nanos(1_700_000_000, 123_456_789),
            src: "[2001:db8::1]:5070".parse().unwrap(),
            dst: "[2001:db8::2]:5060".parse().unwrap(),
            transport: Transport::Tcp,
        };
        let (kind, bytes) = one(frames(
            Mirrored::Sip {
                meta: &meta,
                message: &message,
            },
            &identity(),
            ALL,
        ));
        assert_eq!(kind, FrameKind::Sip);
        let f = parse(&bytes).unwrap();
        assert_eq!((f.src, f.dst), (meta.src, meta.dst));
        assert_eq!(f.family, IpFamily::V6);
        assert_eq!(f.ip_protocol, IpProtocol::Tcp);
        assert_eq!(
            f.time,
            Timestamp::from_secs_nanos(1_700_000_000, 123_456_000)
        );
        assert_eq!(f.proto_type, ProtoType::Sip);
        assert_eq!(&*f.payload, &raw[..]);
        assert_eq!(f.capture_id, Some(2002));
        assert_eq!(f.auth_key.as_deref(), Some(&b"myHep"[..]));
        assert_eq!(f.node_name_str(), Some("edge-1"));
        assert_eq!(f.correlation_id_str(), Some("c-42"));
        // The key is in the frame, never in Debug output.
        assert!(!format!("{:?}", identity()).contains("myHep"));
        // Turned off: nothing.
        let off = Kinds { sip: false, ..ALL };
        assert!(frames(
            Mirrored::Sip {
                meta: &meta,
                message: &message
            },
            &identity(),
            off
        )
        .is_empty());
    }

    /// An SR with one report block and an SDES, as a softphone sends it.
    fn sr_sdes() -> Vec<u8> {
        let mut p = vec![0x81, 200, 0, 12];
        p.extend_from_slice(&0x1111_2222u32.to_be_bytes()); // SSRC
        p.extend_from_slice(&0xe000_0000u32.to_be_bytes()); // NTP seconds
        p.extend_from_slice(&0x8000_0000u32.to_be_bytes()); // NTP fraction: .5 s
        p.extend_from_slice(&160u32.to_be_bytes()); // RTP timestamp
        p.extend_from_slice(&50u32.to_be_bytes()); // packets
        p.extend_from_slice(&8000u32.to_be_bytes()); // octets
        p.extend_from_slice(&0x3333_4444u32.to_be_bytes()); // source
        p.extend_from_slice(&[64, 0xff, 0xff, 0xfe]); // 25 % lost, cumulative -2
        p.extend_from_slice(&1234u32.to_be_bytes()); // highest sequence
        p.extend_from_slice(&80u32.to_be_bytes()); // jitter
        p.extend_from_slice(&7u32.to_be_bytes()); // LSR
        p.extend_from_slice(&9u32.to_be_bytes()); // DLSR
                                                  // SDES: one chunk, CNAME "a", end.
        p.extend_from_slice(&[0x81, 202, 0, 2]);
        p.extend_from_slice(&0x1111_2222u32.to_be_bytes());
        p.extend_from_slice(&[1, 1, b'a', 0]);
        p
    }

    #[test]
    fn rtcp_becomes_heplify_json_with_the_call_id() {
        let meta = DatagramMeta {
            frame: 1,
            time: Timestamp::from_secs_nanos(1_000, 5_000),
            src: "10.0.0.1:4001".parse().unwrap(),
            dst: "10.0.0.2:5001".parse().unwrap(),
        };
        let payload = sr_sdes();
        let (kind, bytes) = one(frames(
            Mirrored::Rtcp {
                meta: &meta,
                payload: &payload,
                call_id: "call-1@h",
            },
            &identity(),
            ALL,
        ));
        assert_eq!(kind, FrameKind::Rtcp);
        let f = parse(&bytes).unwrap();
        assert_eq!(f.proto_type, ProtoType::RtcpJson);
        assert_eq!(f.correlation_id_str(), Some("call-1@h"));
        assert_eq!((f.src, f.dst), (meta.src, meta.dst));
        // Our own reader of heplify's JSON reads it back.
        let r = read_rtcp_json(&f.payload).unwrap();
        assert_eq!(r.ssrc, Some(0x1111_2222));
        assert_eq!(r.packet_type, Some(200));
        assert_eq!(r.sender_information.as_ref().unwrap().packets, Some(50));
        assert_eq!(r.report_blocks[0].source_ssrc, Some(0x3333_4444));
        assert_eq!(r.report_blocks[0].fraction_lost, Some(64));
        assert_eq!(r.report_blocks[0].packets_lost, Some(-2));
        assert_eq!(r.report_blocks[0].highest_seq_no, Some(1234));
        assert_eq!(r.report_blocks[0].ia_jitter, Some(80));
        let v: serde_json::Value = serde_json::from_slice(&f.payload).unwrap();
        assert_eq!(v["sender_information"]["ntp_timestamp_usec"], 500_000);
        assert_eq!(v["sdes_ssrc"], 0x1111_2222u32);
        assert_eq!(v["report_count"], 1);
        assert_eq!(rtcp_json(b"\x80\xc8\x00"), None);
    }

    #[test]
    fn hep_frames_are_relayed_with_our_identity_and_our_own_are_not() {
        let theirs = crate::decode::hep::test_frames::Builder::v4()
            .c(0x0c, &1u32.to_be_bytes())
            .c(0x11, b"cid")
            .c(0x0f, b"OPTIONS sip:x SIP/2.0\r\n\r\n")
            .build();
        let received = parse(&theirs).unwrap();
        let (_, bytes) = one(frames(Mirrored::Hep(&received), &identity(), ALL));
        let f = parse(&bytes).unwrap();
        assert_eq!(f.capture_id, Some(2002));
        assert_eq!(f.node_name_str(), Some("edge-1"));
        assert_eq!(
            (f.src, f.dst, f.time),
            (received.src, received.dst, received.time)
        );
        assert_eq!(f.payload, received.payload);
        assert_eq!(f.correlation_id_str(), Some("cid"));
        // What we sent, seen again: skipped.
        assert_eq!(
            frames(Mirrored::Hep(&f), &identity(), ALL),
            vec![Made::Skipped("own_frame")]
        );
    }
}
