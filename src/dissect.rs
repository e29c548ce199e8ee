//! From captured frames to SIP messages: the decode path that file replay and live capture
//! share.
//!
//! A frame goes through its link layer, VLAN/MPLS shims, IP (reassembling fragments), any
//! tunnels (IP-in-IP, GRE, ERSPAN, VXLAN, Geneve; nested up to [`MAX_ENCAPSULATION_DEPTH`]), then UDP,
//! TCP (reassembling the stream, following WebSocket upgrades) or SCTP (DATA chunks, bundled
//! or fragmented, RFC 4168). Payloads that are SIP by their content become [`SipMessage`]s
//! handed to the caller (so does the SIP inside HEPv3 frames found in UDP, with the addresses
//! and time the HEP agent reported) with their capture time, addresses and transport.
//! Everything that is not SIP is skipped; everything that is damaged is counted in
//! [`DissectStats`] by kind, and the first few problems are kept with their frame number.
//!
//! Memory: everything the decode path holds between frames — IP fragments, TCP out-of-order
//! segments, SIP messages being framed on TCP, WebSocket messages being assembled, SCTP
//! fragments — counts against one budget, [`DissectLimits::memory_budget`] (64 MiB by
//! default). Between frames the bytes held never exceed it: each pool gets what the others
//! leave, within its own cap, and drops its oldest or least recently active state to stay
//! inside, every drop counted ([`DissectStats::memory`] has the bytes held, their peak and
//! the budget). The tables themselves are bounded by count (TCP directions, datagrams,
//! fragments), so the decode path's memory is bounded whatever the traffic.
//!
//! No I/O: the caller feeds frames and receives messages through a callback, so the same code
//! runs over a file, a live ring buffer or a test vector.

use std::net::{IpAddr, SocketAddr};

use etherparse::{Ipv6ExtensionSlice, LaxIpSlice, TcpHeaderSlice, UdpHeaderSlice};

use crate::decode::hep::{self, HepFrame, IpProtocol, ProtoType};
use crate::decode::link::{self, LinkType};
use crate::decode::sctp::{self, Chunk};
use crate::decode::sip::{self, SipMessage};
use crate::decode::tunnel::{self, Inner};
use crate::reassembly::ip_fragments::{FragmentKey, FragmentLimits, FragmentPool, FragmentStats};
use crate::reassembly::sctp::{
    AssociationKey, Reassembled, SctpLimits, SctpReassembler, SctpStats,
};
use crate::reassembly::sip_stream::{DiscardReason, SipStream, StreamCarrier, StreamEvent};
use crate::reassembly::tcp::{Delivery, FlowKey, Segment, TcpLimits, TcpReassembler, TcpStats};
use crate::time::Timestamp;

/// Tunnels nested deeper than this are not followed (a crafted packet could nest forever).
pub const MAX_ENCAPSULATION_DEPTH: u8 = 8;
/// Problems kept with their frame number for the report; the rest are only counted.
const MAX_PROBLEMS_KEPT: usize = 32;

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// 1-based position in the capture, for error messages.
    pub number: u64,
    pub time: Timestamp,
    pub link: LinkType,
    pub data: &'a [u8],
}

/// How a SIP message travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over WebSocket (RFC 7118), on TCP.
    Ws,
    /// SIP over SCTP (RFC 4168), tapped or reported by a HEP agent.
    Sctp,
}

/// Where and when a SIP message was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    /// The frame that completed the message (for TCP, the last segment of it).
    pub frame: u64,
    pub time: Timestamp,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
}

/// A UDP datagram that is not SIP (RTP, RTCP, anything else), for the media analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramMeta {
    pub frame: u64,
    pub time: Timestamp,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// What the decode path hands on: SIP messages, and UDP payloads that are not SIP.
pub trait Observer {
    fn sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>);

    /// A UDP payload that is not SIP. Ignored unless the observer analyses media.
    fn datagram(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        let _ = (meta, payload);
    }

    /// A HEP frame found in a UDP datagram that does not carry SIP (RTCP JSON, logs, ...);
    /// the SIP of type-1 frames goes to [`Observer::sip`]. `frame` is the capture frame number.
    fn hep(&mut self, frame: u64, hep: &HepFrame<'_>) {
        let _ = (frame, hep);
    }

    /// The SIP message of a type-1 HEP frame found in a UDP datagram, with the frame it came
    /// in (for an observer that relays frames as received). By default, [`Observer::sip`].
    fn hep_sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>, hep: &HepFrame<'_>) {
        let _ = hep;
        self.sip(meta, message);
    }
}

/// Where and when the message inside a HEP frame was seen: at the agent that captured it,
/// with the transport the agent reported. Agents that send a wrong protocol number (Kamailio
/// did) are taken as UDP, the common case. `frame` is the caller's number for the frame.
pub fn hep_message_meta(hep: &HepFrame<'_>, frame: u64) -> MessageMeta {
    MessageMeta {
        frame,
        time: hep.time,
        src: hep.src,
        dst: hep.dst,
        transport: match hep.ip_protocol {
            IpProtocol::Tcp => Transport::Tcp,
            IpProtocol::Sctp => Transport::Sctp,
            IpProtocol::Udp | IpProtocol::Other(_) => Transport::Udp,
        },
    }
}

/// A closure observes SIP messages only.
impl<F: FnMut(&MessageMeta, &SipMessage<'_>)> Observer for F {
    fn sip(&mut self, meta: &MessageMeta, message: &SipMessage<'_>) {
        self(meta, message)
    }
}

/// A decode problem worth showing a user, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub frame: u64,
    pub kind: &'static str,
    pub detail: String,
}

/// Memory held by the decode path's reassembly against its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// [`DissectLimits::memory_budget`].
    pub budget_bytes: u64,
    /// Bytes held now (after the last frame).
    pub held_bytes: u64,
    /// Most bytes held after any frame.
    pub peak_bytes: u64,
}

/// Counters of the decode path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DissectStats {
    pub frames: u64,
    pub bytes: u64,
    /// Frames in which a decode problem was found (every kind in `errors`).
    pub frames_failed: u64,
    /// Problems by kind (`link`, `ip`, `udp`, `tcp`, `sctp`, `gre`, `tunnel`, `depth`,
    /// `hep`, `sip`, `tcp-resync`, `sip-oversized`, `websocket`; and what the capture's
    /// snapshot length cut, not the sender: `sip-snaplen`, `hep-snaplen`, `ip-snaplen`,
    /// `tcp-snaplen`, `rtcp-snaplen`):
    /// every one counted, not only the first few kept in `problems`.
    pub errors: std::collections::BTreeMap<&'static str, u64>,
    /// The sum of `errors`, kept so each frame can tell cheaply whether it failed.
    problems_total: u64,
    /// Frames without IP (ARP, LLDP, STP, ...).
    pub non_ip: u64,
    pub link_errors: u64,
    pub ip_errors: u64,
    pub tunnel_errors: u64,
    pub depth_exceeded: u64,
    pub udp_datagrams: u64,
    pub sip_messages_udp: u64,
    pub sip_messages_tcp: u64,
    pub sip_messages_ws: u64,
    pub sip_messages_sctp: u64,
    /// SIP messages inside HEP frames (type 1) found in UDP datagrams.
    pub sip_messages_hep: u64,
    pub sip_parse_errors: u64,
    /// UDP datagrams starting with the HEPv3 magic.
    pub hep_frames: u64,
    /// Of those, frames that did not decode.
    pub hep_errors: u64,
    /// HEP frames of other types than SIP (handed to [`Observer::hep`]).
    pub hep_other: u64,
    /// Stream bytes thrown away to resynchronise, or in over-long messages.
    pub stream_bytes_discarded: u64,
    /// IP packets (not fragments) cut by the capture's snapshot length inside their
    /// payload, handed on as captured: an RTP header survives most cuts; a cut TCP segment's
    /// stream goes on right after the bytes it misses (no hole waited for, no `tcp.gaps`),
    /// the SIP message it cut kept as far as it goes or said as `sip-snaplen`, and the rest
    /// of that message in the next segment discarded as `tcp-snaplen`; SIP that cannot be
    /// read is a `sip-snaplen` problem.
    pub snaplen_cut: u64,
    /// RTP and RTCP packets relayed inside TURN over TCP: counted, not measured (over UDP
    /// they are `media.turn_relayed_unmeasured`).
    pub turn_tcp_relayed: u64,
    /// SCTP packets (IP protocol 132).
    pub sctp_packets: u64,
    /// DATA chunks in them.
    pub sctp_data_chunks: u64,
    pub fragments: FragmentStats,
    pub tcp: TcpStats,
    /// Reassembly of fragmented SCTP user messages.
    pub sctp: SctpStats,
    pub memory: MemoryStats,
    /// The first problems, with frame numbers.
    pub problems: Vec<Problem>,
}

impl DissectStats {
    /// SIP messages decoded over every transport.
    pub fn sip_messages(&self) -> u64 {
        self.sip_messages_udp
            + self.sip_messages_tcp
            + self.sip_messages_ws
            + self.sip_messages_sctp
            + self.sip_messages_hep
    }

    /// Every count of something lost or refused, by a stable name: decode problems by kind
    /// and the drops of every bounded pool. For metrics (`teledge_decode_errors_total`).
    pub fn loss_counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters: Vec<(&'static str, u64)> =
            self.errors.iter().map(|(k, n)| (*k, *n)).collect();
        counters.extend([
            ("stream_bytes_discarded", self.stream_bytes_discarded),
            ("snaplen_cut", self.snaplen_cut),
            ("fragments_timed_out", self.fragments.timed_out),
            ("fragments_snaplen_cut", self.fragments.snaplen_cut),
            ("fragments_evicted", self.fragments.evicted),
            (
                "fragments_overlap_conflicts",
                self.fragments.overlap_conflicts,
            ),
            ("fragments_malformed", self.fragments.malformed),
            ("tcp_gaps", self.tcp.gaps),
            ("tcp_flows_evicted", self.tcp.flows_evicted),
            ("tcp_flows_evicted_memory", self.tcp.flows_evicted_memory),
            ("tcp_flows_stalled", self.tcp.flows_stalled),
            ("tcp_bytes_dropped", self.tcp.bytes_dropped),
            ("sctp_fragments_timed_out", self.sctp.timed_out),
            ("sctp_fragments_evicted", self.sctp.evicted),
            ("sctp_messages_oversized", self.sctp.oversized),
        ]);
        counters
    }

    fn problem(&mut self, frame: u64, kind: &'static str, detail: impl ToString) {
        *self.errors.entry(kind).or_default() += 1;
        self.problems_total += 1;
        if self.problems.len() < MAX_PROBLEMS_KEPT {
            self.problems.push(Problem {
                frame,
                kind,
                detail: detail.to_string(),
            });
        }
    }
}

/// Limits of the stateful parts of the decode path.
#[derive(Debug, Clone, Copy)]
pub struct DissectLimits {
    pub fragments: FragmentLimits,
    pub tcp: TcpLimits,
    pub sctp: SctpLimits,
    /// Bytes held by all reassembly together (IP fragments, TCP segments and SIP framing,
    /// WebSocket messages, SCTP fragments); each pool's own cap applies within it.
    pub memory_budget: usize,
}

/// Default [`DissectLimits::memory_budget`].
pub const DEFAULT_MEMORY_BUDGET: usize = 64 * 1024 * 1024;

impl Default for DissectLimits {
    fn default() -> Self {
        DissectLimits {
            fragments: FragmentLimits::default(),
            tcp: TcpLimits::default(),
            sctp: SctpLimits::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// The decode path. Feed it frames in capture order.
#[derive(Debug)]
pub struct Dissector {
    fragments: FragmentPool,
    tcp: TcpReassembler<SipStream>,
    sctp: SctpReassembler,
    memory_budget: usize,
    peak_held: usize,
    stats: DissectStats,
}

/// Where the frame being decoded came from; carried down the layers.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    frame: u64,
    time: Timestamp,
    /// Bytes the capture's snapshot length cut off the end of the IP packet being decoded
    /// (0 when whole): a cut TCP segment tells its stream how much it misses.
    cut: usize,
}

impl Dissector {
    pub fn new(limits: DissectLimits) -> Self {
        Dissector {
            fragments: FragmentPool::new(limits.fragments),
            tcp: TcpReassembler::new(limits.tcp),
            sctp: SctpReassembler::new(limits.sctp),
            memory_budget: limits.memory_budget,
            peak_held: 0,
            stats: DissectStats::default(),
        }
    }

    /// Counters so far (fragment, TCP and SCTP counters, and memory, included).
    pub fn stats(&self) -> DissectStats {
        let mut stats = self.stats.clone();
        stats.fragments = self.fragments.stats();
        stats.tcp = self.tcp.stats();
        stats.sctp = self.sctp.stats();
        stats.memory = MemoryStats {
            budget_bytes: self.memory_budget as u64,
            held_bytes: self.bytes_held() as u64,
            peak_bytes: self.peak_held as u64,
        };
        stats
    }

    /// Bytes held by reassembly now; never above the budget between frames.
    pub fn bytes_held(&self) -> usize {
        self.fragments.bytes_held() + self.tcp.bytes_held() + self.sctp.bytes_held()
    }

    /// What the budget leaves for one pool, given what the others hold.
    fn share(&self, others: usize) -> usize {
        self.memory_budget.saturating_sub(others)
    }

    /// Decodes one frame; every SIP message it completes, and every other UDP payload, goes
    /// to `sink`.
    pub fn frame(&mut self, frame: &Frame<'_>, sink: &mut impl Observer) {
        self.stats.frames += 1;
        self.stats.bytes += frame.data.len() as u64;
        let problems_before = self.stats.problems_total;
        let ctx = Ctx {
            frame: frame.number,
            time: frame.time,
            cut: 0,
        };
        match link::ip_payload(frame.link, frame.data) {
            Ok(Some(ip)) => self.ip(ctx, ip, 0, sink),
            Ok(None) => self.stats.non_ip += 1,
            Err(e) => {
                self.stats.link_errors += 1;
                self.stats.problem(frame.number, "link", e);
            }
        }
        if self.stats.problems_total > problems_before {
            self.stats.frames_failed += 1;
        }
        self.peak_held = self.peak_held.max(self.bytes_held());
    }

    /// Flushes buffered stream data at the end of a capture (or on shutdown).
    pub fn finish(&mut self, now: Timestamp, sink: &mut impl Observer) {
        // Holes still open at the end are skipped so whatever follows them is still decoded.
        let stats = &mut self.stats;
        self.tcp.flush(now, |key, stream, delivery| {
            feed_stream(stats, sink, 0, key, stream, delivery);
        });
    }

    fn ethernet(&mut self, ctx: Ctx, frame: &[u8], depth: u8, sink: &mut impl Observer) {
        match link::ethernet_payload(frame) {
            Ok(Some(ip)) => self.ip(ctx, ip, depth, sink),
            Ok(None) => self.stats.non_ip += 1,
            Err(e) => {
                self.stats.tunnel_errors += 1;
                self.stats.problem(ctx.frame, "tunnel", e);
            }
        }
    }

    fn ip(&mut self, ctx: Ctx, data: &[u8], depth: u8, sink: &mut impl Observer) {
        // Whether this packet was cut is this packet's own length to say.
        let ctx = Ctx { cut: 0, ..ctx };
        if depth > MAX_ENCAPSULATION_DEPTH {
            self.stats.depth_exceeded += 1;
            self.stats
                .problem(ctx.frame, "depth", "tunnels nested too deep");
            return;
        }
        if let Some((src, dst, protocol, payload)) = plain_ipv4(data) {
            self.transport(ctx, src, dst, protocol, payload, depth, sink);
            return;
        }
        let slice = match LaxIpSlice::from_slice(data) {
            Ok((slice, _)) => slice,
            Err(e) => {
                self.stats.ip_errors += 1;
                self.stats.problem(ctx.frame, "ip", e);
                return;
            }
        };
        let (src, dst) = (slice.source_addr(), slice.destination_addr());
        let payload = slice.payload();
        let protocol = payload.ip_number.0;
        if !payload.fragmented {
            let mut ctx = ctx;
            if payload.incomplete {
                if !self.cut_packet(ctx, protocol, payload.payload) {
                    return;
                }
                ctx.cut = declared_payload(&slice).saturating_sub(payload.payload.len());
            }
            self.transport(ctx, src, dst, protocol, payload.payload, depth, sink);
            return;
        }
        let fragment = match &slice {
            LaxIpSlice::Ipv4(v4) => {
                let h = v4.header();
                Some((
                    u32::from(h.identification()),
                    usize::from(h.fragments_offset().byte_offset()),
                    h.more_fragments(),
                ))
            }
            // The fragment header is read from its bytes (RFC 8200 §4.5): etherparse 0.18.2's
            // `fragment_offset()` mixes the M flag into the offset (found on
            // ipv6_udp_fragmented.pcap, whose first fragment it reads as offset 8).
            LaxIpSlice::Ipv6(v6) => v6
                .extensions()
                .clone()
                .into_iter()
                .find_map(|ext| match ext {
                    Ipv6ExtensionSlice::Fragment(f) => {
                        let b = f.slice();
                        let offset_and_flags = u16::from_be_bytes([b[2], b[3]]);
                        Some((
                            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                            usize::from(offset_and_flags & 0xFFF8),
                            offset_and_flags & 0x0001 != 0,
                        ))
                    }
                    _ => None,
                }),
        };
        let Some((id, offset, more)) = fragment else {
            self.stats.ip_errors += 1;
            self.stats.problem(
                ctx.frame,
                "ip",
                "fragmented IPv6 packet without a fragment header",
            );
            return;
        };
        let key = FragmentKey {
            src,
            dst,
            id,
            protocol,
        };
        if payload.incomplete {
            self.cut_fragment(ctx, &slice, key, offset, more, payload.payload);
            return;
        }
        self.fragments
            .set_budget(self.share(self.tcp.bytes_held() + self.sctp.bytes_held()));
        if let Some(whole) = self
            .fragments
            .add(key, ctx.time, offset, more, payload.payload)
        {
            self.transport(ctx, src, dst, protocol, &whole, depth, sink);
        }
    }

    /// An IP packet cut by the capture's snapshot length (not a fragment): counted; true when
    /// what was captured is still worth decoding (its transport header made it), false when
    /// the cut fell inside that header, which is said as `ip-snaplen` (it used to be a `tcp`
    /// or `udp` error, an IP error blamed on the sender).
    fn cut_packet(&mut self, ctx: Ctx, protocol: u8, captured: &[u8]) -> bool {
        self.stats.snaplen_cut += 1;
        let (name, header) = match protocol {
            6 => (
                "TCP",
                captured
                    .get(12)
                    .map_or(20, |offset| usize::from(offset >> 4) * 4)
                    .max(20),
            ),
            17 => ("UDP", 8),
            132 => ("SCTP", 12),
            _ => return true,
        };
        if captured.len() >= header {
            return true;
        }
        self.stats.problem(
            ctx.frame,
            "ip-snaplen",
            format!(
                "{name} header cut by the capture's snapshot length ({} of {header} bytes \
                 captured)",
                captured.len()
            ),
        );
        false
    }

    /// A fragment cut by the capture's snapshot length: its datagram cannot be reassembled.
    /// The capture, not the sender, is the cause: counted as `sip-snaplen` when it is the
    /// head of a SIP datagram (as an unfragmented SIP datagram cut short is), as `ip-snaplen`
    /// otherwise, and its datagram as `fragments.snaplen_cut` (not as timed out).
    fn cut_fragment(
        &mut self,
        ctx: Ctx,
        slice: &LaxIpSlice<'_>,
        key: FragmentKey,
        offset: usize,
        more: bool,
        captured: &[u8],
    ) {
        let declared = declared_payload(slice);
        self.fragments
            .add_cut(key, ctx.time, offset, more, declared.max(captured.len()));
        let sip = offset == 0
            && key.protocol == 17
            && captured.get(8..).is_some_and(sip::starts_with_sip);
        let detail = format!(
            "{} cut by the capture's snapshot length ({} of {declared} bytes captured): \
             its datagram cannot be reassembled",
            if sip {
                "first fragment of a SIP datagram"
            } else {
                "IP fragment"
            },
            captured.len()
        );
        if sip {
            self.stats.sip_parse_errors += 1;
            self.stats.problem(ctx.frame, "sip-snaplen", detail);
        } else {
            self.stats.problem(ctx.frame, "ip-snaplen", detail);
        }
    }

    #[allow(clippy::too_many_arguments)] // the IP header's facts, passed down once
    fn transport(
        &mut self,
        ctx: Ctx,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        payload: &[u8],
        depth: u8,
        sink: &mut impl Observer,
    ) {
        match protocol {
            // IP-in-IP (RFC 2003) and IPv6 encapsulation (RFC 2473).
            4 | 41 => self.ip(ctx, payload, depth + 1, sink),
            47 => match tunnel::gre(payload) {
                Ok(Inner::Ethernet(frame)) => self.ethernet(ctx, frame, depth + 1, sink),
                Ok(Inner::Ip(packet)) => self.ip(ctx, packet, depth + 1, sink),
                Err(e) => {
                    self.stats.tunnel_errors += 1;
                    self.stats.problem(ctx.frame, "gre", e);
                }
            },
            17 => self.udp(ctx, src, dst, payload, depth, sink),
            6 => self.tcp(ctx, src, dst, payload, sink),
            132 => self.sctp(ctx, src, dst, payload, sink),
            _ => {}
        }
    }

    fn udp(
        &mut self,
        ctx: Ctx,
        src: IpAddr,
        dst: IpAddr,
        datagram: &[u8],
        depth: u8,
        sink: &mut impl Observer,
    ) {
        let header = match UdpHeaderSlice::from_slice(datagram) {
            Ok(h) => h,
            Err(e) => {
                self.stats.ip_errors += 1;
                self.stats.problem(ctx.frame, "udp", e);
                return;
            }
        };
        self.stats.udp_datagrams += 1;
        // The UDP length bounds the payload (Ethernet padding follows short datagrams). A
        // length beyond what was captured is a frame cut by the capture's snapshot length.
        let declared = usize::from(header.length());
        let end = declared.clamp(8, datagram.len());
        let payload = &datagram[8..end];
        let (src_port, dst_port) = (header.source_port(), header.destination_port());
        if dst_port == tunnel::VXLAN_PORT {
            if let Some(inner) = tunnel::vxlan(payload) {
                self.ethernet(ctx, inner, depth + 1, sink);
                return;
            }
        }
        if dst_port == tunnel::GENEVE_PORT {
            match tunnel::geneve(payload) {
                Some(Inner::Ethernet(frame)) => return self.ethernet(ctx, frame, depth + 1, sink),
                Some(Inner::Ip(packet)) => return self.ip(ctx, packet, depth + 1, sink),
                None => {}
            }
        }
        // HEP agents export to any port (9060 by convention); the magic decides.
        if hep::starts_with_hep3(payload) {
            self.hep(ctx, payload, declared > datagram.len(), sink);
            return;
        }
        // Keep-alives (RFC 5626 §3.5.1) and STUN share SIP ports; only content decides.
        if !sip::starts_with_sip(payload) {
            let meta = DatagramMeta {
                frame: ctx.frame,
                time: ctx.time,
                src: SocketAddr::new(src, src_port),
                dst: SocketAddr::new(dst, dst_port),
            };
            if declared > datagram.len() {
                if let Some(present) = rtcp_as_captured(payload) {
                    self.cut_rtcp(ctx, &meta, payload.len(), &present, sink);
                    return;
                }
            }
            sink.datagram(&meta, payload);
            return;
        }
        let meta = MessageMeta {
            frame: ctx.frame,
            time: ctx.time,
            src: SocketAddr::new(src, src_port),
            dst: SocketAddr::new(dst, dst_port),
            transport: Transport::Udp,
        };
        match sip::parse(payload) {
            Ok(message) => {
                self.stats.sip_messages_udp += 1;
                sink.sip(&meta, &message);
            }
            // Cut before a header a message cannot do without: the capture's snaplen is the
            // cause, not the sender (TShark shows such frames with their start line only).
            Err(e) if declared > datagram.len() => {
                self.stats.sip_parse_errors += 1;
                self.stats.problem(
                    ctx.frame,
                    "sip-snaplen",
                    format!(
                        "SIP message cut by the capture's snapshot length ({} of {} bytes \
                         captured): {e}",
                        payload.len(),
                        declared.saturating_sub(8)
                    ),
                );
            }
            Err(e) => {
                self.stats.sip_parse_errors += 1;
                self.stats.problem(ctx.frame, "sip", e);
            }
        }
    }

    /// An RTCP compound packet cut by the capture's snapshot length: counted as such
    /// (`rtcp-snaplen`), and what was captured whole goes on to the media analysis as RTCP,
    /// as TShark reads it (a Sender Report whose sender info made it still times the round
    /// trips that later reports measure against it; a report block the cut reached does not
    /// count). Nothing goes on when the cut left no whole packet or sender info.
    fn cut_rtcp(
        &mut self,
        ctx: Ctx,
        meta: &DatagramMeta,
        captured: usize,
        present: &[u8],
        sink: &mut impl Observer,
    ) {
        self.stats.problem(
            ctx.frame,
            "rtcp-snaplen",
            format!(
                "RTCP packet cut by the capture's snapshot length ({captured} bytes captured, \
                 {} of them whole packets, sender info and report blocks)",
                present.len()
            ),
        );
        if !present.is_empty() {
            sink.datagram(meta, present);
        }
    }

    /// A HEPv3 frame in a UDP datagram: the SIP inside is decoded like tapped SIP, with the
    /// agent's addresses, transport and capture time; other types go to [`Observer::hep`].
    fn hep(&mut self, ctx: Ctx, payload: &[u8], cut: bool, sink: &mut impl Observer) {
        self.stats.hep_frames += 1;
        let frame = match hep::parse(payload) {
            Ok(frame) => frame,
            // Cut by the capture's snapshot length, not malformed by the agent.
            Err(e) if cut => {
                self.stats.hep_errors += 1;
                self.stats.problem(
                    ctx.frame,
                    "hep-snaplen",
                    format!(
                        "HEP frame cut by the capture's snapshot length ({} bytes captured): {e}",
                        payload.len()
                    ),
                );
                return;
            }
            Err(e) => {
                self.stats.hep_errors += 1;
                self.stats.problem(ctx.frame, "hep", e);
                return;
            }
        };
        if frame.proto_type != ProtoType::Sip {
            self.stats.hep_other += 1;
            sink.hep(ctx.frame, &frame);
            return;
        }
        let meta = hep_message_meta(&frame, ctx.frame);
        match sip::parse(&frame.payload) {
            Ok(message) => {
                self.stats.sip_messages_hep += 1;
                sink.hep_sip(&meta, &message, &frame);
            }
            Err(e) => {
                self.stats.sip_parse_errors += 1;
                self.stats.problem(ctx.frame, "sip", e);
            }
        }
    }

    fn tcp(&mut self, ctx: Ctx, src: IpAddr, dst: IpAddr, data: &[u8], sink: &mut impl Observer) {
        let header = match TcpHeaderSlice::from_slice(data) {
            Ok(h) => h,
            Err(e) => {
                self.stats.ip_errors += 1;
                self.stats.problem(ctx.frame, "tcp", e);
                return;
            }
        };
        let key = FlowKey {
            src: SocketAddr::new(src, header.source_port()),
            dst: SocketAddr::new(dst, header.destination_port()),
        };
        let segment = Segment {
            seq: header.sequence_number(),
            syn: header.syn(),
            fin: header.fin(),
            rst: header.rst(),
            payload: &data[header.slice().len()..],
            cut: u32::try_from(ctx.cut).unwrap_or(u32::MAX),
        };
        self.tcp
            .set_budget(self.share(self.fragments.bytes_held() + self.sctp.bytes_held()));
        let stats = &mut self.stats;
        self.tcp
            .segment(key, ctx.time, segment, |stream, delivery| {
                feed_stream(stats, sink, ctx.frame, &key, stream, delivery);
            });
    }

    /// An SCTP packet: every DATA chunk that carries (or completes) a SIP message. Bundled
    /// chunks are taken in order; fragments are reassembled when their payload protocol
    /// identifier is 0, the one SIP uses (RFC 4168 assigns none), and an unfragmented chunk
    /// of any identifier is SIP if its content is.
    fn sctp(&mut self, ctx: Ctx, src: IpAddr, dst: IpAddr, data: &[u8], sink: &mut impl Observer) {
        let packet = match sctp::parse(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.problem(ctx.frame, "sctp", e);
                return;
            }
        };
        self.stats.sctp_packets += 1;
        let key = AssociationKey {
            src: SocketAddr::new(src, packet.src_port),
            dst: SocketAddr::new(dst, packet.dst_port),
        };
        let meta = MessageMeta {
            frame: ctx.frame,
            time: ctx.time,
            src: key.src,
            dst: key.dst,
            transport: Transport::Sctp,
        };
        for chunk in packet.chunks() {
            let chunk = match chunk {
                Ok(Chunk::Data(c)) => c,
                Ok(Chunk::Other { .. }) => continue,
                Err(e) => {
                    self.stats.problem(ctx.frame, "sctp", e);
                    return;
                }
            };
            self.stats.sctp_data_chunks += 1;
            if chunk.begin && chunk.end {
                self.sctp_message(&meta, chunk.payload, sink);
                continue;
            }
            if chunk.ppid != 0 {
                continue;
            }
            self.sctp
                .set_budget(self.share(self.fragments.bytes_held() + self.tcp.bytes_held()));
            if let Reassembled::Message(message) = self.sctp.add(key, ctx.time, &chunk) {
                self.sctp_message(&meta, &message, sink);
            }
        }
    }

    fn sctp_message(&mut self, meta: &MessageMeta, message: &[u8], sink: &mut impl Observer) {
        if !sip::starts_with_sip(message) {
            return;
        }
        match sip::parse(message) {
            Ok(message) => {
                self.stats.sip_messages_sctp += 1;
                sink.sip(meta, &message);
            }
            Err(e) => {
                self.stats.sip_parse_errors += 1;
                self.stats.problem(meta.frame, "sip", e);
            }
        }
    }
}

/// An RTCP compound packet (RFC 3550 §6) cut short, reduced to what was captured whole: the
/// packets before the cut, then the one it cut when it is a Sender or Receiver Report whose
/// fixed part made it, with the report blocks that made it whole (its count and length
/// rewritten to say so, its padding bit cleared). `None` when the payload does not start as
/// RTCP does (version 2, packet type 200–207, which RTP leaves to RTCP: RFC 5761 §4).
fn rtcp_as_captured(payload: &[u8]) -> Option<Vec<u8>> {
    let head = payload.first_chunk::<2>()?;
    if head[0] >> 6 != 2 || !(200..=207).contains(&head[1]) {
        return None;
    }
    let mut present = Vec::with_capacity(payload.len());
    let mut rest = payload;
    while let Some(header) = rest.first_chunk::<4>() {
        let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        if let Some(whole) = rest.get(..len) {
            present.extend_from_slice(whole);
            rest = &rest[len..];
            continue;
        }
        // The packet the cut fell in: the sender info of an SR (RFC 3550 §6.4.1) or the
        // header of an RR (§6.4.2), and the 24-byte report blocks after them.
        let fixed = match header[1] {
            200 => 28,
            201 => 8,
            _ => break,
        };
        if rest.len() < fixed {
            break;
        }
        let blocks = (header[0] & 0x1F).min(((rest.len() - fixed) / 24) as u8);
        let len = fixed + usize::from(blocks) * 24;
        let mut packet = rest[..len].to_vec();
        packet[0] = (header[0] & 0xC0) | blocks;
        packet[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
        present.extend_from_slice(&packet);
        break;
    }
    Some(present)
}

/// The payload length an IP header declares (after IPv6 extension headers).
fn declared_payload(slice: &LaxIpSlice<'_>) -> usize {
    match slice {
        LaxIpSlice::Ipv4(v4) => {
            let h = v4.header();
            usize::from(h.total_len()).saturating_sub(usize::from(h.ihl()) * 4)
        }
        LaxIpSlice::Ipv6(v6) => {
            usize::from(v6.header().payload_length()).saturating_sub(v6.extensions().slice().len())
        }
    }
}

/// Feeds reassembled stream bytes to the direction's SIP framer and parses what it frames.
fn feed_stream(
    stats: &mut DissectStats,
    sink: &mut impl Observer,
    frame: u64,
    key: &FlowKey,
    stream: &mut SipStream,
    delivery: Delivery<'_>,
) {
    let meta = |carrier| MessageMeta {
        frame,
        time: delivery.time,
        src: key.src,
        dst: key.dst,
        transport: match carrier {
            StreamCarrier::Tcp => Transport::Tcp,
            StreamCarrier::WebSocket => Transport::Ws,
        },
    };
    // A whole message, or the head of one the snapshot length cut: delivered alike.
    let mut deliver = |message: &sip::SipMessage<'_>, carrier, stats: &mut DissectStats| {
        match carrier {
            StreamCarrier::Tcp => stats.sip_messages_tcp += 1,
            StreamCarrier::WebSocket => stats.sip_messages_ws += 1,
        }
        sink.sip(&meta(carrier), message);
    };
    let mut on_event = |event: StreamEvent<'_>| match event {
        StreamEvent::Message(bytes, carrier) => match sip::parse(bytes) {
            Ok(message) => deliver(&message, carrier, stats),
            Err(e) => {
                stats.sip_parse_errors += 1;
                stats.problem(frame, "sip", e);
            }
        },
        // As a SIP datagram cut short: its head is kept when what a message cannot do
        // without made it, else it is the capture's `sip-snaplen`.
        StreamEvent::Cut(bytes, carrier) => match sip::parse(bytes) {
            Ok(message) => deliver(&message, carrier, stats),
            Err(e) => {
                stats.sip_parse_errors += 1;
                stats.stream_bytes_discarded += bytes.len() as u64;
                stats.problem(
                    frame,
                    "sip-snaplen",
                    format!(
                        "SIP message on TCP cut by the capture's snapshot length ({} bytes \
                         captured, {} -> {}): {e}",
                        bytes.len(),
                        key.src,
                        key.dst
                    ),
                );
            }
        },
        StreamEvent::TurnRelayed => stats.turn_tcp_relayed += 1,
        StreamEvent::Discarded { bytes, reason } => {
            stats.stream_bytes_discarded += bytes as u64;
            let kind = match reason {
                DiscardReason::Resync => "tcp-resync",
                DiscardReason::Oversized => "sip-oversized",
                DiscardReason::WebSocketLost => "websocket",
                DiscardReason::Snaplen => "tcp-snaplen",
            };
            stats.problem(
                frame,
                kind,
                format!(
                    "{bytes} stream bytes discarded ({} -> {}){}",
                    key.src,
                    key.dst,
                    if reason == DiscardReason::Snaplen {
                        ": the rest of a message the capture's snapshot length cut"
                    } else {
                        ""
                    }
                ),
            );
        }
    };
    stream.push(delivery.data, delivery.after_gap, &mut on_event);
    if delivery.cut > 0 {
        stream.cut(delivery.cut as usize, &mut on_event);
    }
}

/// The transport as call records write it.
impl From<Transport> for crate::record::Transport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Udp => crate::record::Transport::Udp,
            Transport::Tcp => crate::record::Transport::Tcp,
            Transport::Ws => crate::record::Transport::Ws,
            Transport::Sctp => crate::record::Transport::Sctp,
        }
    }
}

/// The decode counters as the capture summary writes them (`decode`).
impl From<&DissectStats> for crate::record::DecodeCounters {
    fn from(d: &DissectStats) -> Self {
        // Every field named: a counter added to the decode path fails to compile here until
        // the record (and its schema file) says whether it is written.
        let DissectStats {
            frames: _,
            bytes: _,
            frames_failed: _,
            errors: _,
            problems_total: _,
            non_ip: _,
            link_errors: _,
            ip_errors: _,
            tunnel_errors: _,
            depth_exceeded: _,
            udp_datagrams: _,
            sip_messages_udp: _,
            sip_messages_tcp: _,
            sip_messages_ws: _,
            sip_messages_sctp: _,
            sip_messages_hep: _,
            sip_parse_errors: _,
            hep_frames: _,
            hep_errors: _,
            hep_other: _,
            stream_bytes_discarded: _,
            snaplen_cut: _,
            turn_tcp_relayed: _,
            sctp_packets: _,
            sctp_data_chunks: _,
            fragments: _,
            tcp: _,
            sctp: _,
            memory: _,
            problems: _,
        } = d;
        crate::record::DecodeCounters {
            frames: d.frames,
            bytes: d.bytes,
            frames_failed: d.frames_failed,
            errors: d
                .errors
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            non_ip: d.non_ip,
            link_errors: d.link_errors,
            ip_errors: d.ip_errors,
            tunnel_errors: d.tunnel_errors,
            depth_exceeded: d.depth_exceeded,
            udp_datagrams: d.udp_datagrams,
            sip_messages_udp: d.sip_messages_udp,
            sip_messages_tcp: d.sip_messages_tcp,
            sip_messages_ws: d.sip_messages_ws,
            sip_messages_sctp: d.sip_messages_sctp,
            sip_messages_hep: d.sip_messages_hep,
            sip_parse_errors: d.sip_parse_errors,
            hep_frames: d.hep_frames,
            hep_errors: d.hep_errors,
            hep_other: d.hep_other,
            stream_bytes_discarded: d.stream_bytes_discarded,
            snaplen_cut: d.snaplen_cut,
            turn_tcp_relayed: d.turn_tcp_relayed,
            sctp_packets: d.sctp_packets,
            sctp_data_chunks: d.sctp_data_chunks,
            fragments: (&d.fragments).into(),
            tcp: (&d.tcp).into(),
            sctp: (&d.sctp).into(),
            memory: crate::record::MemoryCounters {
                budget_bytes: d.memory.budget_bytes,
                held_bytes: d.memory.held_bytes,
                peak_bytes: d.memory.peak_bytes,
            },
            problems: d
                .problems
                .iter()
                .map(|p| crate::record::DecodeProblem {
                    frame: p.frame,
                    kind: p.kind.to_owned(),
                    detail: p.detail.clone(),
                })
                .collect(),
        }
    }
}

/// The common IPv4 packet read in place: a 20-byte header (no options), complete (the total
/// length within the frame; what follows it is link padding), not a fragment, not carrying
/// an authentication header. Gives the addresses, the protocol and the payload exactly as
/// etherparse's `LaxIpSlice` does for such a packet (a test checks it); anything else (IPv6,
/// options, fragments, truncated or inconsistent lengths) is left to etherparse. This runs
/// for every media packet, where etherparse's general parse was 7 % of an RTP replay.
fn plain_ipv4(data: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    let header = data.first_chunk::<20>()?;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let fragmenting = u16::from_be_bytes([header[6], header[7]]) & 0x3FFF != 0;
    let protocol = header[9];
    if header[0] != 0x45 || total < 20 || total > data.len() || fragmenting || protocol == 51 {
        return None;
    }
    let src = std::net::Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = std::net::Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    Some((IpAddr::V4(src), IpAddr::V4(dst), protocol, &data[20..total]))
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_cut_rtcp_compound_keeps_its_whole_packets_and_report_blocks() {
        use super::rtcp_as_captured;
        // An RR with two report blocks (8 + 48 bytes), then an SDES; padding bit set.
        let mut rr = vec![0xA2, 201, 0, 13, 1, 2, 3, 4];
        rr.extend((0..48).map(|i| i as u8));
        let sdes = [0x81, 202, 0, 1, 1, 2, 3, 4];
        let whole: Vec<u8> = rr.iter().chain(&sdes).copied().collect();
        // Cut inside the SDES: the RR whole, nothing of the SDES.
        assert_eq!(rtcp_as_captured(&whole[..60]).unwrap(), rr);
        // Cut inside the second block: the header and the first block, said as one block.
        let one = rtcp_as_captured(&whole[..40]).unwrap();
        assert_eq!(one.len(), 32);
        assert_eq!((one[0], one[1], &one[2..4]), (0x81, 201, &[0, 7][..]));
        assert_eq!(one[4..], rr[4..32]);
        // Cut inside the fixed part: nothing whole.
        assert_eq!(rtcp_as_captured(&whole[..6]).unwrap(), Vec::<u8>::new());
        // Not RTCP: RTP, and anything else.
        assert_eq!(rtcp_as_captured(&[0x80, 0x08, 0, 1, 0, 0, 0, 0]), None);
        assert_eq!(rtcp_as_captured(b"OPTIONS"), None);
    }

    #[test]
    fn plain_ipv4_reads_what_etherparse_reads() {
        // Random headers around the fast path's conditions (version and length nibble, total
        // length, flags and offset, protocol 51), compared with etherparse's lax parse.
        let mut next = crate::testing::xorshift(0x2545_F491_4F6C_DD1Du64);
        let mut taken = 0;
        for round in 0..20_000 {
            let len = 20 + (next() % 60) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            data[0] = [0x45, 0x45, 0x45, 0x46, 0x65, 0x44][round % 6];
            let total = match next() % 4 {
                0 => len as u16,
                1 => (next() % len as u64) as u16,
                2 => len as u16 + 1,
                _ => 20,
            };
            data[2..4].copy_from_slice(&total.to_be_bytes());
            if next().is_multiple_of(2) {
                data[6] &= 0x40;
                data[7] = 0;
            }
            if next().is_multiple_of(8) {
                data[9] = 51;
            }
            let Some((src, dst, protocol, payload)) = plain_ipv4(&data) else {
                continue;
            };
            taken += 1;
            let (slice, _) = LaxIpSlice::from_slice(&data).unwrap();
            let p = slice.payload();
            assert_eq!(
                (
                    slice.source_addr(),
                    slice.destination_addr(),
                    p.ip_number.0,
                    p.payload
                ),
                (src, dst, protocol, payload),
                "{data:02x?}"
            );
            assert!(!p.fragmented && !p.incomplete, "{data:02x?}");
        }
        assert!(taken > 1000, "{taken}");
    }
    use super::*;

    /// An Ethernet/IPv4/TCP frame from `port` to 192.0.2.1:5060.
    fn tcp_frame(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [192, 0, 2, 1], 64)
            .tcp(port, 5060, seq, 65_535)
            .ack(1);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// A capture taken with a small snapshot length (`tcpdump -s 300`, a tap that cuts at
    /// 256 bytes) cuts SIP datagrams: one cut after its CSeq is still a message (its head
    /// up to the cut); one cut before it is refused and said to be cut, not "malformed"
    /// (found by the 2026-12-03 campaign on public captures cut with `editcap -s`).
    #[test]
    fn sip_datagrams_cut_by_the_snapshot_length_are_named_as_such() {
        let message = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
            From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: cut@host\r\nCSeq: 1 INVITE\r\n\
            Contact: <sip:x@10.0.0.1>\r\nContent-Length: 0\r\n\r\n";
        let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [192, 0, 2, 1], 64)
            .udp(5060, 5060);
        let mut whole = Vec::new();
        builder.write(&mut whole, message).unwrap();
        let offset_of = |needle: &[u8]| {
            whole
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        let after_cseq = offset_of(b"Contact:");
        let before_cseq = offset_of(b"CSeq:");
        let mut dissector = Dissector::new(DissectLimits::default());
        let mut seen = Vec::new();
        let mut sink = |_: &MessageMeta, m: &SipMessage<'_>| seen.push(m.call_id.to_owned());
        let mut malformed = whole.clone();
        let at = offset_of(b"CSeq:");
        malformed[at..at + 4].copy_from_slice(b"XSeq");
        for (number, data) in [
            (1, &whole[..after_cseq]),
            (2, &whole[..before_cseq]),
            (3, &malformed[..]),
        ] {
            let frame = Frame {
                number,
                time: Timestamp::from_secs_nanos(1, 0),
                link: LinkType::Ethernet,
                data,
            };
            dissector.frame(&frame, &mut sink);
        }
        assert_eq!(seen, ["cut@host"]);
        let stats = dissector.stats();
        assert_eq!(stats.sip_messages_udp, 1);
        assert_eq!(stats.sip_parse_errors, 2);
        assert_eq!(stats.errors.get("sip-snaplen"), Some(&1));
        assert_eq!(stats.errors.get("sip"), Some(&1));
        let cut = &stats.problems[0];
        assert_eq!(cut.frame, 2);
        let captured = before_cseq - 42;
        assert!(
            cut.detail.starts_with(&format!(
                "SIP message cut by the capture's snapshot length ({captured} of {} bytes",
                message.len()
            )),
            "{}",
            cut.detail
        );
    }

    #[test]
    fn budget_bounds_every_flow_and_its_drops_reach_the_loss_counters() {
        let budget = 64 * 1024;
        let mut dissector = Dissector::new(DissectLimits {
            memory_budget: budget,
            ..DissectLimits::default()
        });
        let head = b"INVITE sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 60000\r\n\r\n";
        let mut sink = |_: &MessageMeta, _: &SipMessage<'_>| panic!("no message completes");
        for port in 1..=100u16 {
            let mut payload = head.to_vec();
            payload.resize(4000, b'x');
            let data = tcp_frame(port, 1, &payload);
            let frame = Frame {
                number: u64::from(port),
                time: Timestamp::from_secs_nanos(1, u32::from(port)),
                link: LinkType::Ethernet,
                data: &data,
            };
            dissector.frame(&frame, &mut sink);
            assert!(
                dissector.bytes_held() <= budget,
                "{}",
                dissector.bytes_held()
            );
        }
        let stats = dissector.stats();
        assert!(stats.memory.peak_bytes <= budget as u64);
        assert!(stats.memory.held_bytes > 0);
        let counters: std::collections::BTreeMap<_, _> =
            stats.loss_counters().into_iter().collect();
        assert_eq!(
            counters["tcp_flows_evicted_memory"],
            stats.tcp.flows_evicted_memory
        );
        assert!(counters["tcp_flows_evicted_memory"] > 50, "{counters:?}");
        assert!(counters["tcp_bytes_dropped"] > 50 * 4000, "{counters:?}");
    }
}
