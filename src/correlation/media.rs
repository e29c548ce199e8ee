//! Media correlation: RTP and RTCP datagrams in, measured streams attached to their calls (or
//! reported as orphan streams) out.
//!
//! - SDP offers and answers (and re-INVITEs that move media) announce media endpoints: the
//!   RTP address and port of each `m=audio` line and its RTCP port (`a=rtcp`, RFC 3605; the
//!   RTP port with `a=rtcp-mux`; else port + 1). The newest announcement of an address wins.
//! - A stream is keyed by its 5-tuple plus SSRC, never by SSRC alone: media relays reuse one
//!   SSRC on both legs. A stream belongs to the call whose endpoint is its destination or, for
//!   an endpoint behind NAT that sends from another address than it announced, its source.
//! - RTP that matches no endpoint is recognised by content (version 2, a payload type that is
//!   not RTCP, and two packets of one 5-tuple and SSRC with consecutive sequence numbers) and
//!   measured as
//!   an orphan stream; its probation packets are replayed into the analysis, so its counts are
//!   complete. Orphans are reported as records of their own, never dropped silently.
//! - RTCP from or to a call's endpoints is kept with the call and joined to the streams it
//!   reports on (by SSRC, preferring reports sent by the stream's receiver). RTCP of no call
//!   (a capture joined mid-call, RTP without SIP) is counted (`rtcp_unattributed`) and kept
//!   with the open orphan streams whose SSRC it names through one of its addresses, within
//!   the same bounds, so an orphan's record says what its receiver reported too.
//! - Two open calls that announce the same address (the legs of a B2BUA with direct media)
//!   both keep it: a stream between two endpoints that another call also negotiated (both
//!   of them) is attributed to that call too, in its own direction, and RTCP to or from such
//!   an endpoint is kept with every leg. The stream is measured once and appears in each
//!   leg's record. When one leg ends, the others keep the stream and the endpoints.
//! - When a call ends, its endpoints are remembered for `ended_linger`: RTP and RTCP still
//!   in flight after the BYE are counted (`rtp_after_call_end`, `rtcp_after_call_end`), not
//!   measured and not turned into orphan streams.
//! - Orphan stream records are bounded per minute of capture time
//!   (`max_orphan_records_per_minute`); further orphans of that minute are summed up in one
//!   [`OrphanStreamsSummary`] (counted in `orphan_streams_summarised`), so an orphan RTP flood
//!   cannot push call records out of the spool during an outage.
//! - Round-trip time comes from what the tap saw, never from an endpoint's clock (which may be
//!   off by seconds or hours): a report block's LSR names the SR it answers (the middle 32
//!   bits of that SR's NTP time); the SR is looked up among the call's RTCP sent the other way
//!   (same addresses reversed, else the same SSRC), and RTT = capture time of the report −
//!   capture time of that SR − DLSR, as TShark's `rtcp.roundtrip-delay` does. That is the
//!   round trip between the tap and the reporting endpoint (end to end when the tap sits
//!   beside the stream's sender). Samples outside [`RTT_PLAUSIBLE_MS`] are counted as
//!   rejected and never feed the score. The score's `delay_source` says where its delay came
//!   from: `rtcp_capture` (mean of the accepted samples), `rtcp_xr` (the round trip an
//!   endpoint put in an RFC 3611 VoIP metrics block, measured on its own clock) or
//!   `assumed_default` (G.107's default, 0 ms).
//!
//! Bounded: streams (open, or closed and waiting in their call), endpoints, probation
//! candidates, streams per call ([`MAX_STREAMS_PER_CALL`]) and RTCP per call all have caps,
//! and hitting one is counted. What is learnt from SDP and RTCP (endpoints open and
//! lingering, each call's list of them, codec lists, RTCP kept with calls) is also bounded
//! by what it holds ([`MediaLimits::max_bytes`], [`MediaTracker::held_bytes`]), each
//! allocation as the allocator takes it, with the call table's accounting
//! ([`super::footprint`]).

use crate::correlation::footprint::{arc_str, heap, table_share, vec};
use crate::correlation::hasher::KeyedMap;
use std::mem::size_of;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::correlation::calls::Side;
use crate::decode::sdp::{static_payload_type, Codec, SdpSummary};
use crate::decode::turn;
use crate::dissect::DatagramMeta;
use crate::media::emodel::{self, DelaySource, NotScored, Score};
use crate::media::packet::{self, Kind, RtcpSummary, RtpPacket};
use crate::media::stream::{PayloadInfo, StreamAnalyzer, JITTER_BUFFERS_MS};
use crate::media::tap::{ListenTap, TapDirection};
use crate::record::media::{
    MediaQuality, OrphanStreamsSummary, RtcpReported, StreamQuality, StreamRecord,
    ORPHAN_SUMMARY_SCHEMA, STREAM_SCHEMA,
};
use crate::record::{stable_id, text as record_text};
use crate::time::Timestamp;

/// Most streams one call holds (open, closed while it lasts, and legs of a relay): a real
/// call has a handful (two directions, a few more after re-INVITEs, transfers, music on
/// hold). Without it, RTP sprayed at a call's announced media port under ever new SSRCs
/// made one stream each, all kept until the call ended: memory without bound over a long
/// call, and one call record of megabytes that no collector would take. Beyond it a new
/// stream is measured as an orphan (its own record or the minute's summary) and counted in
/// `streams_beyond_call_cap`.
pub const MAX_STREAMS_PER_CALL: usize = 64;

/// Most media endpoints one call keeps announced (RTP and RTCP addresses of its SDP, newest
/// kept): a real call has a handful (two sides, RTCP, a re-INVITE or transfer moving them).
/// Without it every SDP of a dialog added endpoints that stayed until the dialog ended, so
/// one dialog re-INVITEd with ever new ports filled the endpoint table and every later
/// call's SDP was turned away, its RTP measured as orphans. Beyond it the call's oldest
/// endpoint is forgotten (a stream already flowing there keeps being measured, and keeps
/// the address known until it closes, counted in `endpoints_kept_for_streams`, so a sharded
/// correlator keeps its route), counted in `call_endpoints_forgotten`.
pub const MAX_ENDPOINTS_PER_CALL: usize = 32;

/// Most open streams of one SSRC in the SSRC index (a relay's legs: two; a few more when
/// several relays or a conference forward one sender). Each new stream is compared with the
/// others of its SSRC (is it another leg of a call's stream?), and RTCP on an unannounced
/// leg looks its SSRC up there, so without it RTP sprayed under one SSRC from ever new
/// addresses cost time growing with the square of the streams (a capture thread stalled, its
/// ring overflowing). A stream beyond it is measured, but not linked to a call by its SSRC;
/// counted in `streams_not_indexed_by_ssrc`.
pub const MAX_STREAMS_PER_SSRC: usize = 8;

/// Bounds of the media tables.
#[derive(Debug, Clone, Copy)]
pub struct MediaLimits {
    /// Most streams held: measured now, or closed for inactivity and waiting in their
    /// call for its record (with the measured legs of B2BUA calls). Closed streams used to
    /// be outside it: a call's 64 streams, opened and left idle, waited in every call for
    /// its end (up to `max_call_duration`), ~1 KiB each, so 100,000 calls could hold 6.4
    /// million of them; now the table's 100,000 streams of ~1 KiB are the bound.
    pub max_streams: usize,
    pub max_endpoints: usize,
    /// Most bytes the state learnt from SDP and RTCP holds ([`MediaTracker::held_bytes`]:
    /// the media endpoints, open and lingering after their call, each call's list of them,
    /// the codec lists, and the RTCP kept per call), each allocation as the allocator takes
    /// it. At the bound the oldest lingering endpoints are forgotten first
    /// (`ended_endpoints_forgotten`), then a new endpoint is turned away
    /// (`endpoints_dropped_at_byte_bound`); RTCP is kept only below half of it
    /// (`rtcp_dropped_at_byte_bound`), so an RTCP flood cannot turn calls' SDP away.
    pub max_bytes: usize,
    pub max_candidates: usize,
    /// A stream silent this long is closed (its call keeps it; an orphan is reported).
    pub stream_idle: Duration,
    /// Probation packets of an unconfirmed flow are forgotten after this long.
    pub candidate_ttl: Duration,
    pub max_rtcp_per_call: usize,
    /// How long the media endpoints of an ended call are remembered, so that RTP and RTCP
    /// still in flight after its BYE are counted, not measured as orphans (the call
    /// tracker's linger; [`super::Correlator`] sets it).
    pub ended_linger: Duration,
    /// Orphan stream records made per minute of capture time; further orphan streams of
    /// that minute are summed up in one [`OrphanStreamsSummary`] record.
    pub max_orphan_records_per_minute: usize,
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            max_streams: 100_000,
            // 50,000 calls' four endpoints, lingering ones as many again; with the bytes
            // below they keep the media tables and the sharded route table (two routes an
            // endpoint) within the unit's MemoryHigh= beside every other bound
            // (systemd/README.md, "Memory"). They were 400,000 and no byte bound.
            max_endpoints: 200_000,
            max_bytes: 64 << 20,
            max_candidates: 65_536,
            stream_idle: Duration::from_secs(60),
            candidate_ttl: Duration::from_secs(10),
            max_rtcp_per_call: 256,
            ended_linger: Duration::from_secs(32),
            max_orphan_records_per_minute: 300,
        }
    }
}

/// Counters of the media path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCounters {
    /// RTP packets of measured streams (in a call or orphan).
    pub rtp_packets: u64,
    /// RTP packets of streams attached to a call.
    pub rtp_packets_in_calls: u64,
    pub rtp_decode_errors: u64,
    pub rtcp_packets: u64,
    pub rtcp_decode_errors: u64,
    /// RTCP that belongs to no known call (kept with the orphan streams it names, if any).
    pub rtcp_unattributed: u64,
    /// RTCP of a call beyond `max_rtcp_per_call`, not kept.
    pub rtcp_dropped_at_capacity: u64,
    pub streams: u64,
    /// Most streams measured at the same time.
    pub peak_active_streams: u64,
    pub orphan_streams: u64,
    /// Datagrams that look like neither RTP nor RTCP.
    pub other_datagrams: u64,
    /// RTP-looking packets that never formed a stream (no consecutive sequence numbers).
    pub probation_discarded: u64,
    pub streams_dropped_at_capacity: u64,
    pub endpoints_dropped_at_capacity: u64,
    /// New media endpoints turned away at `max_bytes` (no lingering endpoint was left to
    /// forget).
    pub endpoints_dropped_at_byte_bound: u64,
    /// RTCP packets not kept with their call because the learnt state held half of
    /// `max_bytes` or more.
    pub rtcp_dropped_at_byte_bound: u64,
    /// Most bytes the learnt state held ([`MediaTracker::held_bytes`]; summed over shards,
    /// each shard's own peak).
    pub peak_held_bytes: u64,
    /// RTP packets to or from the media endpoints of a call that already ended (in flight
    /// after its BYE): counted, not measured.
    pub rtp_after_call_end: u64,
    /// RTCP packets to or from the media endpoints of a call that already ended.
    pub rtcp_after_call_end: u64,
    /// Ended calls' endpoints forgotten before their linger passed (at `max_endpoints`).
    pub ended_endpoints_forgotten: u64,
    /// Orphan streams beyond `max_orphan_records_per_minute`, reported in a summary record
    /// instead of one record each.
    pub orphan_streams_summarised: u64,
    /// Streams to or from a call's media endpoints beyond [`MAX_STREAMS_PER_CALL`],
    /// measured as orphans instead of joining the call.
    pub streams_beyond_call_cap: u64,
    /// Orphan streams closed early (and reported) to make room in a full stream table for
    /// a stream a call's SDP announced: an orphan RTP flood cannot keep calls unmeasured.
    pub orphans_closed_for_calls: u64,
    /// A call's oldest media endpoints forgotten beyond [`MAX_ENDPOINTS_PER_CALL`].
    pub call_endpoints_forgotten: u64,
    /// Of those, endpoints a stream of the call still ran through: the address stays known
    /// (a sharded correlator keeps its route) until the stream closes, so the stream stays
    /// measured in its call, never a second time as an orphan.
    pub endpoints_kept_for_streams: u64,
    /// Streams of an SSRC beyond [`MAX_STREAMS_PER_SSRC`]: measured, not indexed by SSRC.
    pub streams_not_indexed_by_ssrc: u64,
    /// SDP media lines announcing RTP over TCP (`TCP/RTP/AVP`, RFC 4571, and its secure
    /// forms): their media is not measured (no endpoint is learnt from them).
    pub rtp_over_tcp_unmeasured: u64,
    /// Datagrams carrying RTP or RTCP relayed by a TURN server (ChannelData, Send or Data
    /// indications): counted, not measured.
    pub turn_relayed_unmeasured: u64,
    /// Streams reported (in a call's record or as an orphan) with a counter saturated at
    /// 2^32 − 1: their `metrics.saturated` names the figures that are lower bounds.
    pub streams_with_saturated_counters: u64,
}

impl MediaCounters {
    /// Adds another tracker's counters (the shards of a sharded correlator). Every field is
    /// named, so a new counter cannot be left out of the sum.
    pub fn add(&mut self, other: &Self) {
        let MediaCounters {
            rtp_packets,
            rtp_packets_in_calls,
            rtp_decode_errors,
            rtcp_packets,
            rtcp_decode_errors,
            rtcp_unattributed,
            rtcp_dropped_at_capacity,
            streams,
            peak_active_streams,
            orphan_streams,
            other_datagrams,
            probation_discarded,
            streams_dropped_at_capacity,
            endpoints_dropped_at_capacity,
            endpoints_dropped_at_byte_bound,
            rtcp_dropped_at_byte_bound,
            peak_held_bytes,
            rtp_after_call_end,
            rtcp_after_call_end,
            ended_endpoints_forgotten,
            orphan_streams_summarised,
            streams_beyond_call_cap,
            orphans_closed_for_calls,
            call_endpoints_forgotten,
            endpoints_kept_for_streams,
            streams_not_indexed_by_ssrc,
            rtp_over_tcp_unmeasured,
            turn_relayed_unmeasured,
            streams_with_saturated_counters,
        } = *other;
        self.rtp_packets += rtp_packets;
        self.rtp_packets_in_calls += rtp_packets_in_calls;
        self.rtp_decode_errors += rtp_decode_errors;
        self.rtcp_packets += rtcp_packets;
        self.rtcp_decode_errors += rtcp_decode_errors;
        self.rtcp_unattributed += rtcp_unattributed;
        self.rtcp_dropped_at_capacity += rtcp_dropped_at_capacity;
        self.streams += streams;
        self.peak_active_streams += peak_active_streams;
        self.orphan_streams += orphan_streams;
        self.other_datagrams += other_datagrams;
        self.probation_discarded += probation_discarded;
        self.streams_dropped_at_capacity += streams_dropped_at_capacity;
        self.endpoints_dropped_at_capacity += endpoints_dropped_at_capacity;
        self.endpoints_dropped_at_byte_bound += endpoints_dropped_at_byte_bound;
        self.rtcp_dropped_at_byte_bound += rtcp_dropped_at_byte_bound;
        self.peak_held_bytes += peak_held_bytes;
        self.rtp_after_call_end += rtp_after_call_end;
        self.rtcp_after_call_end += rtcp_after_call_end;
        self.ended_endpoints_forgotten += ended_endpoints_forgotten;
        self.orphan_streams_summarised += orphan_streams_summarised;
        self.streams_beyond_call_cap += streams_beyond_call_cap;
        self.orphans_closed_for_calls += orphans_closed_for_calls;
        self.call_endpoints_forgotten += call_endpoints_forgotten;
        self.endpoints_kept_for_streams += endpoints_kept_for_streams;
        self.streams_not_indexed_by_ssrc += streams_not_indexed_by_ssrc;
        self.rtp_over_tcp_unmeasured += rtp_over_tcp_unmeasured;
        self.turn_relayed_unmeasured += turn_relayed_unmeasured;
        self.streams_with_saturated_counters += streams_with_saturated_counters;
    }
}

/// Keeps an RTCP observation in the list of `key` (a call or an orphan stream) in `map`,
/// whose entries cost `slot` bytes each: not when the learnt state already holds half its
/// byte bound (`full`), nor beyond `cap` a list — each counted. `held` follows the bytes.
fn keep_in<K: std::hash::Hash + Eq>(
    map: &mut KeyedMap<K, Vec<RtcpObservation>>,
    key: K,
    slot: usize,
    observation: RtcpObservation,
    (full, cap): (bool, usize),
    held: &mut usize,
    counters: &mut MediaCounters,
) {
    if full {
        counters.rtcp_dropped_at_byte_bound += 1;
        return;
    }
    let list = match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => {
            *held += slot;
            e.insert(Vec::new())
        }
    };
    if list.len() >= cap {
        counters.rtcp_dropped_at_capacity += 1;
        return;
    }
    let before = vec(list);
    let bytes = rtcp_heap_bytes(&observation);
    list.push(observation);
    *held = (*held + vec(list) + bytes).saturating_sub(before);
}

/// The media endpoints an SDP announces, as [`MediaTracker::learn`] learns them: the RTP
/// address of each `m=` line with a port (not on hold, `c=0.0.0.0`; not over TCP, whose
/// RTP teledge does not measure) and, when it differs, its RTCP address (`true`: RTCP only),
/// with the line's codecs.
pub fn announced(sdp: &SdpSummary) -> impl Iterator<Item = (SocketAddr, bool, &[Codec])> + '_ {
    sdp.media
        .iter()
        .filter(|m| m.port != 0 && !m.is_over_tcp())
        .filter_map(|media| {
            let ip = media
                .address
                .as_deref()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .filter(|ip| !ip.is_unspecified())?;
            let codecs = media.codecs.as_slice();
            let rtcp = media
                .rtcp_port
                .filter(|p| *p != media.port)
                .map(|p| (SocketAddr::new(ip, p), true, codecs));
            Some(std::iter::once((SocketAddr::new(ip, media.port), false, codecs)).chain(rtcp))
        })
        .flatten()
}

/// Which way a stream runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    CallerToCallee,
    CalleeToCaller,
}

#[derive(Debug, Clone)]
struct Endpoint {
    call: Arc<str>,
    /// Who announced it: media sent *to* it goes to this side.
    side: Side,
    rtcp_only: bool,
    codecs: Codecs,
    /// Other open calls that announced the same address, with their side: the legs of a
    /// B2BUA with direct media negotiate the same endpoints under two Call-IDs. Boxed:
    /// most endpoints have none (8 bytes in every endpoint's slot instead of a `Vec`'s 24).
    #[allow(clippy::box_collection)]
    others: Option<Box<Legs<Side>>>,
}

/// Other calls with their side of an endpoint, or their direction of a stream.
type Legs<T> = Vec<(Arc<str>, T)>;

/// An SDP line's codecs, shared by the endpoints that announce an equal list and their
/// streams (see [`MediaTracker::shared_codecs`]). A thin pointer: 8 bytes in every stream
/// and endpoint where an `Arc<[Codec]>` takes 16, for one allocation more per distinct list.
type Codecs = Arc<CodecList>;

/// A shared codec list, accounted in its tracker's byte bound for as long as anything holds
/// it (an endpoint, a stream, the tracker's list of recent ones): its bytes are added when
/// it is made and taken off when the last holder lets it go. A sender who announces a new
/// list in every SDP makes one per endpoint; the bound sees each.
#[derive(Debug)]
struct CodecList {
    codecs: Vec<Codec>,
    /// What it holds: [`CodecList::bytes_of`] when made.
    bytes: usize,
    /// The tracker's count of codec list bytes ([`MediaTracker::codec_bytes`]).
    held: Arc<AtomicUsize>,
}

impl CodecList {
    fn new(codecs: &[Codec], held: &Arc<AtomicUsize>) -> Self {
        let bytes = Self::bytes_of(codecs);
        let codecs = codecs.to_vec();
        held.fetch_add(bytes, Ordering::Relaxed);
        CodecList {
            codecs,
            bytes,
            held: held.clone(),
        }
    }

    /// The `Arc`'s allocation (its counts and the list), the codecs and their names.
    fn bytes_of(codecs: &[Codec]) -> usize {
        heap(2 * size_of::<usize>() + size_of::<CodecList>())
            + heap(size_of_val(codecs))
            + codecs
                .iter()
                .map(|c| c.name.as_ref().map_or(0, |n| heap(n.capacity())))
                .sum::<usize>()
    }
}

impl std::ops::Deref for CodecList {
    type Target = Vec<Codec>;

    fn deref(&self) -> &Vec<Codec> {
        &self.codecs
    }
}

impl Drop for CodecList {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What the learnt state's entries cost ([`MediaTracker::held_bytes`]): a slot of each table,
/// with its growth slack ([`table_share`]); the heap parts are added where they are made.
const ENDPOINT_SLOT: usize = table_share(size_of::<(SocketAddr, Endpoint)>());
const BY_CALL_SLOT: usize = table_share(size_of::<(Arc<str>, Vec<SocketAddr>)>());
const ENDED_SLOT: usize = table_share(size_of::<(SocketAddr, Timestamp)>());
const ENDED_ORDER_SLOT: usize = table_share(size_of::<(Timestamp, SocketAddr)>());
const KEPT_SLOT: usize = table_share(size_of::<(SocketAddr, u32)>());
const RTCP_BY_CALL_SLOT: usize = table_share(size_of::<(Arc<str>, Vec<RtcpObservation>)>());
const RTCP_BY_ORPHAN_SLOT: usize = table_share(size_of::<(StreamKey, Vec<RtcpObservation>)>());
/// Orphan streams one RTCP packet is kept with, at most: its sender's and those of its
/// report blocks, where several streams share an SSRC (a relay's legs).
const MAX_ORPHANS_PER_RTCP: usize = 8;

/// An endpoint's share: its slot and the list of other legs.
fn endpoint_bytes(endpoint: &Endpoint) -> usize {
    ENDPOINT_SLOT
        + endpoint
            .others
            .as_deref()
            .map_or(0, |o| heap(size_of::<Legs<Side>>()) + vec(o))
}

/// A call's list of its endpoints: its slot, its Call-ID (which the endpoints share) and
/// the list.
fn by_call_bytes(call: &str, addrs: &Vec<SocketAddr>) -> usize {
    BY_CALL_SLOT + arc_str(call.len()) + vec(addrs)
}

/// What an RTCP packet kept with a call holds beyond its place in the call's list.
fn rtcp_heap_bytes(o: &RtcpObservation) -> usize {
    vec(&o.summary.reports)
        + vec(&o.summary.voip_metrics)
        + o.summary.cname.as_ref().map_or(0, |c| heap(c.capacity()))
}

impl Endpoint {
    /// The other open calls that announced the address, with their side.
    fn others(&self) -> &[(Arc<str>, Side)] {
        self.others.as_deref().map_or(&[], Vec::as_slice)
    }
}

/// Most other calls remembered per endpoint.
const MAX_LEGS: usize = 4;

/// A stream's 5-tuple and SSRC, packed: 44 bytes where two `SocketAddr` and the SSRC take 68.
/// A stream's key is held four times (the stream table, the stream, the SSRC and call
/// indexes), so this is a good part of what a stream costs.
///
/// Every RTP packet looks its stream up by this key, so it is compared and hashed as a few
/// machine words: the derived `PartialEq` of a byte array called `bcmp` on every probe, and
/// the derived `Hash` fed the hasher four pieces (a length, the bytes, the SSRC, the flags).
#[derive(Debug, Clone, Copy)]
struct StreamKey {
    /// Source address, destination address (four words each, IPv4 mapped into IPv6, in
    /// network order), then source port << 16 | destination port.
    words: [u32; 9],
    ssrc: u32,
    /// Bit 0: the source is IPv6, bit 1: the destination is (so `::ffff:a.b.c.d` and
    /// `a.b.c.d` stay apart).
    v6: u8,
}

impl PartialEq for StreamKey {
    fn eq(&self, other: &Self) -> bool {
        let mut diff = (self.ssrc ^ other.ssrc) | u32::from(self.v6 ^ other.v6);
        for (a, b) in self.words.iter().zip(&other.words) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl Eq for StreamKey {}

impl std::hash::Hash for StreamKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let w = |i: usize| u64::from(self.words[i]) << 32 | u64::from(self.words[i + 1]);
        if self.v6 == 0 {
            // Both addresses IPv4: their first three words are those of the IPv4-mapped
            // prefix (`::ffff:0:0/96`), the same in every such key, so the last words, the
            // ports and the SSRC are the whole key: one 128-bit write instead of four. Equal
            // keys still hash alike (`v6` is part of the key, and an IPv6 key takes the
            // other branch), and no bit a sender chooses is left out.
            let word = |i: usize| u128::from(self.words[i]);
            state.write_u128(word(3) << 96 | word(7) << 64 | word(8) << 32 | u128::from(self.ssrc));
            return;
        }
        state.write_u128(u128::from(w(0)) << 64 | u128::from(w(2)));
        state.write_u128(u128::from(w(4)) << 64 | u128::from(w(6)));
        state.write_u64(u64::from(self.words[8]) << 32 | u64::from(self.ssrc));
        state.write_u8(self.v6);
    }
}

impl StreamKey {
    fn new(src: SocketAddr, dst: SocketAddr, ssrc: u32) -> Self {
        // An address as four words in network order (IPv4 mapped into IPv6).
        // An IPv4 address is its mapped form's last word: no 16-byte round trip per packet.
        let ip_words = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => [0, 0, 0xFFFF, u32::from(v4)],
            IpAddr::V6(v6) => {
                let b = v6.octets();
                std::array::from_fn::<u32, 4, _>(|i| {
                    u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
                })
            }
        };
        let mut words = [0u32; 9];
        words[..4].copy_from_slice(&ip_words(src.ip()));
        words[4..8].copy_from_slice(&ip_words(dst.ip()));
        words[8] = u32::from(src.port()) << 16 | u32::from(dst.port());
        StreamKey {
            words,
            ssrc,
            v6: u8::from(src.is_ipv6()) | u8::from(dst.is_ipv6()) << 1,
        }
    }

    fn src(&self) -> SocketAddr {
        self.addr(0, (self.words[8] >> 16) as u16, 1)
    }

    fn dst(&self) -> SocketAddr {
        self.addr(4, self.words[8] as u16, 2)
    }

    fn addr(&self, at: usize, port: u16, v6_bit: u8) -> SocketAddr {
        let w = &self.words[at..at + 4];
        let ip = std::net::Ipv6Addr::from(
            u128::from(w[0]) << 96
                | u128::from(w[1]) << 64
                | u128::from(w[2]) << 32
                | u128::from(w[3]),
        );
        let ip = match ip.to_ipv4_mapped() {
            Some(v4) if self.v6 & v6_bit == 0 => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        };
        SocketAddr::new(ip, port)
    }
}

/// The tables keyed by [`StreamKey`].
type StreamMap<V> = KeyedMap<StreamKey, V>;

/// A measured stream. Its key is not repeated here (the table and the indexes hold it):
/// what needs it is handed it.
#[derive(Debug)]
struct Stream {
    call: Option<Arc<str>>,
    direction: Option<Direction>,
    codecs: Codecs,
    voice_pt: Option<u8>,
    analyzer: StreamAnalyzer,
    /// The last payload type's meaning, when it does not depend on the packet.
    info_cache: Option<(u8, PayloadInfo)>,
    /// Other calls (B2BUA legs) that negotiated both of this stream's endpoints, with the
    /// stream's direction in each. Boxed: most streams have none, and 8 bytes in every
    /// stream's state are cheaper than a `Vec`'s 24.
    #[allow(clippy::box_collection)]
    legs: Option<Box<Legs<Direction>>>,
    /// Which of its addresses this stream keeps known ([`MediaTracker::kept_for_streams`])
    /// after its call forgot the endpoint there: [`KEPT_SRC`], [`KEPT_DST`].
    keeps: u8,
}

/// [`Stream::keeps`]: the stream keeps its source address known.
const KEPT_SRC: u8 = 1;
/// [`Stream::keeps`]: the stream keeps its destination address known.
const KEPT_DST: u8 = 2;

#[derive(Debug)]
struct Candidate {
    packets: Vec<(Timestamp, RtpPacket)>,
    first_seen: Timestamp,
}

#[derive(Debug, Clone)]
struct RtcpObservation {
    time: Timestamp,
    src: SocketAddr,
    dst: SocketAddr,
    summary: RtcpSummary,
}

/// Round-trip samples accepted for the score, in ms: below is a clock or matching error,
/// above no conversation is possible. Samples a little below zero (an endpoint that rounds
/// its DLSR, next to a tap that sees a round trip near zero) count as 0.
pub const RTT_PLAUSIBLE_MS: std::ops::RangeInclusive<f64> = -2.0..=5000.0;

/// Codec lists the tracker keeps to share among the endpoints that announce them.
const SHARED_CODEC_LISTS: usize = 8;

/// Probation packets kept per unconfirmed flow.
const PROBATION_PACKETS: usize = 4;

/// The media tables.
#[derive(Debug)]
pub struct MediaTracker {
    limits: MediaLimits,
    endpoints: KeyedMap<SocketAddr, Endpoint>,
    endpoints_by_call: KeyedMap<Arc<str>, Vec<SocketAddr>>,
    /// Boxed: the table then holds small entries (key and pointer) that stay in cache while
    /// it is probed, and a half-empty table after growth costs pointers, not whole streams.
    streams: StreamMap<Box<Stream>>,
    streams_by_call: KeyedMap<Arc<str>, Vec<StreamKey>>,
    /// Streams of calls closed for inactivity, waiting for their call record.
    closed_by_call: KeyedMap<Arc<str>, Vec<(StreamKey, Box<Stream>)>>,
    rtcp_by_call: KeyedMap<Arc<str>, Vec<RtcpObservation>>,
    /// RTCP of no call kept with the open orphan streams it reports on or is sent by (a
    /// capture joined mid-call, RTP without SIP): their records carry what their receivers
    /// reported, as a call's streams do. Bounded and counted as `rtcp_by_call` is; an entry
    /// goes when its stream is reported or joins a call (which takes the list).
    rtcp_by_orphan: StreamMap<Vec<RtcpObservation>>,
    /// Measured streams of B2BUA legs whose stream was closed (or taken) by another leg.
    closed_legs: KeyedMap<Arc<str>, Vec<(Option<Direction>, StreamQuality)>>,
    /// Streams in `closed_by_call` and `closed_legs`: they count against `max_streams`.
    closed_streams: usize,
    candidates: StreamMap<Candidate>,
    /// Open streams by SSRC, to link the legs of a media relay: the first open stream of
    /// each SSRC, inline (a slot of 48 bytes where a one-key `Vec` took a 32-byte slot and a
    /// 64-byte allocation), ...
    streams_by_ssrc: KeyedMap<u32, StreamKey>,
    /// ... and the further ones of an SSRC already there, in the order they opened (a
    /// relay's second leg; empty on most captures).
    more_by_ssrc: KeyedMap<u32, Vec<StreamKey>>,
    /// Addresses of endpoints a call forgot ([`MAX_ENDPOINTS_PER_CALL`]) while a stream of
    /// the call still ran through them, with the number of such streams: the address stays
    /// known ([`Self::knows_endpoint`]) until the last of them closes, so that a sharded
    /// correlator keeps routing the stream here rather than to an orphan's shard, where it
    /// would be measured a second time. At most two per open stream.
    kept_for_streams: KeyedMap<SocketAddr, u32>,
    /// Media endpoints of ended calls, with the time the call ended, for `ended_linger`.
    ended_endpoints: KeyedMap<SocketAddr, Timestamp>,
    /// Calls that ended and wait out their record grace, with the capture time they ended
    /// at: their streams still measure what is in flight, and no stream that starts after
    /// that time opens for them.
    closing: std::collections::HashMap<Arc<str>, Timestamp>,
    ended_order: std::collections::VecDeque<(Timestamp, SocketAddr)>,
    /// The current minute of orphan records: its start, records made, and the summary of
    /// the rest.
    orphan_window: Option<(Timestamp, usize)>,
    orphan_summary: Option<OrphanStreamsSummary>,
    /// Summaries of past minutes, waiting to be taken.
    orphan_summaries_ready: Vec<OrphanStreamsSummary>,
    counters: MediaCounters,
    last_sweep: Timestamp,
    /// Live listen's hook: RTP of listened calls goes there (nothing is done while no one
    /// listens; see [`crate::media::tap`]).
    tap: ListenTap,
    /// The correlation shard this tracker measures for (part of its orphan summaries' ids
    /// when not 0: every shard sums up its own orphans of a minute).
    shard: u32,
    /// What the learnt state holds (see [`MediaLimits::max_bytes`]) but its codec lists.
    held_bytes: usize,
    /// What the codec lists alive hold ([`CodecList`]: they count themselves).
    codec_bytes: Arc<AtomicUsize>,
    /// The codec lists of recent SDPs, the last used first, at most [`SHARED_CODEC_LISTS`]:
    /// the endpoints that announce an equal list share one (most SDPs at a site offer one
    /// of a few lists), so an endpoint costs a reference, not a copy of its list with every
    /// codec's name.
    codec_lists: Vec<Codecs>,
}

impl MediaTracker {
    pub fn new(limits: MediaLimits) -> Self {
        MediaTracker {
            limits,
            endpoints: KeyedMap::default(),
            endpoints_by_call: KeyedMap::default(),
            streams: StreamMap::default(),
            streams_by_call: KeyedMap::default(),
            closed_by_call: KeyedMap::default(),
            rtcp_by_call: KeyedMap::default(),
            rtcp_by_orphan: StreamMap::default(),
            closed_legs: KeyedMap::default(),
            closed_streams: 0,
            candidates: StreamMap::default(),
            streams_by_ssrc: KeyedMap::default(),
            more_by_ssrc: KeyedMap::default(),
            kept_for_streams: KeyedMap::default(),
            ended_endpoints: KeyedMap::default(),
            closing: std::collections::HashMap::new(),
            ended_order: std::collections::VecDeque::new(),
            orphan_window: None,
            orphan_summary: None,
            orphan_summaries_ready: Vec::new(),
            counters: MediaCounters::default(),
            last_sweep: Timestamp::default(),
            tap: ListenTap::default(),
            shard: 0,
            codec_lists: Vec::with_capacity(SHARED_CODEC_LISTS),
            held_bytes: 0,
            codec_bytes: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The tracker of correlation shard `shard` ([`crate::correlation::sharded`]): its
    /// orphan summaries' ids carry the shard (shard 0's are an unsharded tracker's), so two
    /// shards' summaries whose windows start at the same instant are not taken for
    /// duplicates by a collector.
    pub fn set_shard(&mut self, shard: u32) {
        self.shard = shard;
    }

    pub fn counters(&self) -> MediaCounters {
        self.counters
    }

    /// Addresses known only because a stream still runs through them after its call forgot
    /// the endpoint ([`Self::kept_for_streams`]).
    pub fn kept_for_streams(&self) -> usize {
        self.kept_for_streams.len()
    }

    /// Streams being measured now.
    pub fn active_streams(&self) -> usize {
        self.streams.len()
    }

    /// Learns the media endpoints an SDP announces for a call, from `side`.
    pub fn learn(&mut self, call_id: &str, side: Side, sdp: &SdpSummary) {
        let call: Arc<str> = match self.endpoints_by_call.get_key_value(call_id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(call_id),
        };
        self.counters.rtp_over_tcp_unmeasured += sdp
            .media
            .iter()
            .filter(|m| m.port != 0 && m.is_rtp_over_tcp())
            .count() as u64;
        for (addr, rtcp_only, codecs) in announced(sdp) {
            if self.endpoints.len() >= self.limits.max_endpoints
                && !self.endpoints.contains_key(&addr)
            {
                self.counters.endpoints_dropped_at_capacity += 1;
                continue;
            }
            let others = match self.endpoints.get(&addr) {
                Some(old) if old.call != call => {
                    let mut others: Vec<(Arc<str>, Side)> = old
                        .others()
                        .iter()
                        .filter(|(c, _)| *c != call)
                        .cloned()
                        .collect();
                    others.insert(0, (old.call.clone(), old.side));
                    others.truncate(MAX_LEGS);
                    Some(Box::new(others))
                }
                Some(old) => old.others.clone(),
                None => None,
            };
            if !self.room_to_learn(&call, addr, others.as_deref(), codecs) {
                self.counters.endpoints_dropped_at_byte_bound += 1;
                continue;
            }
            if self.ended_endpoints.remove(&addr).is_some() {
                self.held_bytes = self.held_bytes.saturating_sub(ENDED_SLOT);
            }
            let codecs = self.shared_codecs(codecs);
            let endpoint = Endpoint {
                call: call.clone(),
                side,
                rtcp_only,
                codecs,
                others,
            };
            self.held_bytes += endpoint_bytes(&endpoint);
            if let Some(old) = self.endpoints.insert(addr, endpoint) {
                self.held_bytes = self.held_bytes.saturating_sub(endpoint_bytes(&old));
            }
            let addrs = match self.endpoints_by_call.entry(call.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    self.held_bytes += by_call_bytes(&call, &Vec::new());
                    e.insert(Vec::new())
                }
            };
            let before = vec(addrs);
            // Announced again (a session refresh, hold and resume): now the newest.
            addrs.retain(|a| *a != addr);
            addrs.push(addr);
            let oldest = (addrs.len() > MAX_ENDPOINTS_PER_CALL).then(|| addrs.remove(0));
            self.held_bytes = (self.held_bytes + vec(addrs)).saturating_sub(before);
            if let Some(oldest) = oldest {
                self.counters.call_endpoints_forgotten += 1;
                self.forget_endpoint(&call, oldest);
                if !self.endpoints.contains_key(&oldest) {
                    self.keep_for_streams(&call, oldest);
                }
            }
        }
        self.note_peak();
    }

    /// Takes `call`'s claim off the endpoint at `addr`: another leg that announced it too
    /// keeps it, else it is forgotten.
    fn forget_endpoint(&mut self, call: &str, addr: SocketAddr) {
        let Some(endpoint) = self.endpoints.get_mut(&addr) else {
            return;
        };
        if let Some(others) = endpoint.others.as_deref_mut() {
            others.retain(|(c, _)| &**c != call);
        }
        if &*endpoint.call == call {
            match endpoint.others.as_deref_mut().and_then(Vec::pop) {
                // Another leg announced it too: the endpoint is now that leg's.
                Some((other, side)) => {
                    endpoint.call = other;
                    endpoint.side = side;
                }
                None => {
                    if let Some(old) = self.endpoints.remove(&addr) {
                        self.held_bytes = self.held_bytes.saturating_sub(endpoint_bytes(&old));
                    }
                }
            }
        }
    }

    /// Whether `call`'s announcement of `addr` (with these other legs and codecs) fits in
    /// `max_bytes`, after forgetting as many of the oldest lingering endpoints of ended calls
    /// as that takes (counted in `ended_endpoints_forgotten`). What it would add: the
    /// endpoint (less the one it replaces), a new codec list, and the call's list of
    /// endpoints (made, or grown).
    fn room_to_learn(
        &mut self,
        call: &Arc<str>,
        addr: SocketAddr,
        others: Option<&Legs<Side>>,
        codecs: &[Codec],
    ) -> bool {
        let new = ENDPOINT_SLOT + others.map_or(0, |o| heap(size_of::<Legs<Side>>()) + vec(o));
        let old = self.endpoints.get(&addr).map_or(0, endpoint_bytes);
        let mut need = new.saturating_sub(old);
        if !self
            .codec_lists
            .iter()
            .any(|l| l.codecs.as_slice() == codecs)
        {
            need += CodecList::bytes_of(codecs);
        }
        let grown = |cap: usize| heap(cap.saturating_mul(2).max(4) * size_of::<SocketAddr>());
        need += match self.endpoints_by_call.get(call) {
            None => by_call_bytes(call, &Vec::new()) + grown(0),
            Some(addrs) if addrs.len() == addrs.capacity() && !addrs.contains(&addr) => {
                grown(addrs.capacity()) - vec(addrs)
            }
            Some(_) => 0,
        };
        if need == 0 {
            return true;
        }
        while self.held_bytes() + need > self.limits.max_bytes {
            if !self.forget_oldest_ended() {
                return false;
            }
        }
        true
    }

    /// Forgets the oldest entry of the lingering endpoints' queue (and the endpoint, when the
    /// entry is its latest: counted in `ended_endpoints_forgotten`). False when it is empty.
    fn forget_oldest_ended(&mut self) -> bool {
        let Some((at, oldest)) = self.ended_order.pop_front() else {
            return false;
        };
        self.held_bytes = self.held_bytes.saturating_sub(ENDED_ORDER_SLOT);
        if self.ended_endpoints.get(&oldest) == Some(&at) {
            self.ended_endpoints.remove(&oldest);
            self.held_bytes = self.held_bytes.saturating_sub(ENDED_SLOT);
            self.counters.ended_endpoints_forgotten += 1;
        }
        true
    }

    /// What the state learnt from SDP and RTCP holds (see [`MediaLimits::max_bytes`]):
    /// endpoints, open and lingering, each call's list of them, codec lists, and the RTCP
    /// kept with calls, each allocation as the allocator takes it.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes + self.codec_bytes.load(Ordering::Relaxed)
    }

    /// Notes the learnt state's peak.
    fn note_peak(&mut self) {
        let held = self.held_bytes() as u64;
        if held > self.counters.peak_held_bytes {
            self.counters.peak_held_bytes = held;
        }
    }

    /// An endpoint `call` forgot: the call's open streams through it keep the address known
    /// until they close (see [`Self::kept_for_streams`]); counted in
    /// `endpoints_kept_for_streams` when there is one.
    fn keep_for_streams(&mut self, call: &Arc<str>, addr: SocketAddr) {
        let Some(keys) = self.streams_by_call.get(call) else {
            return;
        };
        let mut kept = 0;
        for key in keys {
            let Some(stream) = self.streams.get_mut(key) else {
                continue;
            };
            let bit = match (key.src() == addr, key.dst() == addr) {
                (_, true) => KEPT_DST,
                (true, false) => KEPT_SRC,
                (false, false) => continue,
            };
            if stream.keeps & bit == 0 {
                stream.keeps |= bit;
                kept += 1;
            }
        }
        if kept > 0 {
            let n = self.kept_for_streams.entry(addr).or_insert_with(|| {
                self.held_bytes += KEPT_SLOT;
                0
            });
            *n += kept;
            self.counters.endpoints_kept_for_streams += 1;
        }
    }

    /// A stream leaves the table: the addresses it kept known are let go.
    fn release_kept(&mut self, key: StreamKey, stream: &Stream) {
        if stream.keeps == 0 {
            return;
        }
        for (bit, addr) in [(KEPT_SRC, key.src()), (KEPT_DST, key.dst())] {
            if stream.keeps & bit == 0 {
                continue;
            }
            if let Some(n) = self.kept_for_streams.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    self.kept_for_streams.remove(&addr);
                    self.held_bytes = self.held_bytes.saturating_sub(KEPT_SLOT);
                }
            }
        }
    }

    /// An endpoint's codec list: an equal one of [`Self::codec_lists`], else a new one,
    /// remembered in place of the least recently used.
    fn shared_codecs(&mut self, codecs: &[Codec]) -> Codecs {
        let lists = &mut self.codec_lists;
        if let Some(i) = lists.iter().position(|l| l.codecs.as_slice() == codecs) {
            lists[..=i].rotate_right(1);
            return lists[0].clone();
        }
        let list = Arc::new(CodecList::new(codecs, &self.codec_bytes));
        if lists.len() >= SHARED_CODEC_LISTS {
            lists.pop();
        }
        lists.insert(0, list.clone());
        list
    }

    /// True while `addr` is a media endpoint of a call here, open or ended within its
    /// linger: where RTP to or from it is measured or counted.
    pub fn knows_endpoint(&self, addr: &SocketAddr) -> bool {
        self.endpoints.contains_key(addr)
            || self.ended_endpoints.contains_key(addr)
            || self.kept_for_streams.contains_key(addr)
    }

    /// Handles a UDP datagram that is not SIP.
    pub fn datagram(
        &mut self,
        meta: &DatagramMeta,
        payload: &[u8],
        out: &mut impl FnMut(StreamRecord),
    ) {
        self.advance(meta.time, out);
        // Name services and the like share RTP's first bits by chance (a DNS or LLMNR
        // transaction id of 0x80xx–0xBFxx reads as RTP, one of 0xa4cf as RTCP XR: campaign
        // 2026-12-03c, counted as RTCP decode errors): on their well-known ports they are not
        // media unless an SDP announced the address.
        if is_service_port(meta) && !self.is_endpoint(meta) {
            self.counters.other_datagrams += 1;
            return;
        }
        match packet::classify(payload) {
            // Media relayed by a TURN server: counted, not measured (decode::turn).
            Kind::Other
                if turn::relayed(payload)
                    .is_some_and(|inner| packet::classify(inner) != Kind::Other) =>
            {
                self.counters.turn_relayed_unmeasured += 1
            }
            Kind::Other => self.counters.other_datagrams += 1,
            Kind::Rtcp => self.rtcp(meta, payload),
            Kind::Rtp => match packet::decode_rtp(payload) {
                Ok(rtp) => {
                    self.rtp(meta, rtp, out);
                    if self.tap.is_listening() {
                        self.tap_rtp(meta, &rtp, payload);
                    }
                }
                // Only an announced media endpoint makes a bad header an RTP error; elsewhere
                // it is some other protocol that shares RTP's first bits.
                Err(_) if self.is_endpoint(meta) => self.counters.rtp_decode_errors += 1,
                Err(_) => self.counters.other_datagrams += 1,
            },
        }
    }

    /// The live-listen hook (see [`crate::media::tap`]).
    pub fn set_tap(&mut self, tap: ListenTap) {
        self.tap = tap;
    }

    pub fn tap(&self) -> &ListenTap {
        &self.tap
    }

    /// Hands an RTP packet of a call's stream to the call's listeners (and those of the
    /// other legs that share the stream).
    fn tap_rtp(&self, meta: &DatagramMeta, rtp: &RtpPacket, datagram: &[u8]) {
        let Some(stream) = self
            .streams
            .get(&StreamKey::new(meta.src, meta.dst, rtp.ssrc))
        else {
            return;
        };
        if let (Some(call), Some(direction)) = (&stream.call, stream.direction) {
            self.tap.rtp(call, tap_direction(direction), rtp, datagram);
        }
        for (leg, direction) in stream.legs() {
            self.tap.rtp(leg, tap_direction(*direction), rtp, datagram);
        }
    }

    /// The codecs a call's media endpoints announced (its newest SDP first), for live
    /// listen to choose the law it plays.
    pub fn call_codecs(&self, call: &str) -> Vec<Codec> {
        let mut codecs: Vec<Codec> = Vec::new();
        for addr in self.endpoints_by_call.get(call).into_iter().flatten().rev() {
            if let Some(ep) = self.endpoints.get(addr).filter(|e| &*e.call == call) {
                for c in ep.codecs.iter() {
                    if !codecs.contains(c) {
                        codecs.push(c.clone());
                    }
                }
            }
        }
        codecs
    }

    fn is_endpoint(&self, meta: &DatagramMeta) -> bool {
        self.endpoints.contains_key(&meta.dst) || self.endpoints.contains_key(&meta.src)
    }

    fn rtp(&mut self, meta: &DatagramMeta, rtp: RtpPacket, out: &mut impl FnMut(StreamRecord)) {
        let key = StreamKey::new(meta.src, meta.dst, rtp.ssrc);
        if let Some(stream) = self.streams.get_mut(&key) {
            self.counters.rtp_packets += 1;
            if stream.call.is_some() {
                self.counters.rtp_packets_in_calls += 1;
            }
            stream.packet(meta.time, &rtp);
            return;
        }
        // A new stream: to or from an announced endpoint, or on probation.
        let to = self.endpoints.get(&meta.dst).filter(|e| !e.rtcp_only);
        let from = self.endpoints.get(&meta.src).filter(|e| !e.rtcp_only);
        let attached = match (to, from) {
            (Some(ep), _) => Some((ep.clone(), toward(ep.side))),
            (None, Some(ep)) => Some((ep.clone(), away_from(ep.side))),
            (None, None) => None,
        };
        // Other calls that negotiated both endpoints (B2BUA legs with direct media) get the
        // stream too, each in its own direction.
        let legs: Vec<(Arc<str>, Direction)> = match (to, from) {
            (Some(to), Some(from)) => to
                .others()
                .iter()
                .filter(|(c, _)| from.call == *c || from.others().iter().any(|(o, _)| o == c))
                .map(|(c, side)| (c.clone(), toward(*side)))
                .collect(),
            _ => Vec::new(),
        };
        match attached {
            // The call ended and waits for media in flight of the streams it had: a stream
            // that only starts after the end is not its conversation (counted like media
            // after the end). Capture time decides, not the order packets are handled in:
            // with several capture threads, RTP captured before the BYE can reach the call's
            // shard after it (held until the SDP's route appears, the SDP and the BYE applied
            // together by the SIP reorder window), and is the call's all the same.
            Some((ep, _))
                if !self.closing.is_empty()
                    && self
                        .closing
                        .get(&ep.call)
                        .is_some_and(|end| meta.time > *end) =>
            {
                self.counters.rtp_after_call_end += 1;
            }
            Some((ep, direction)) => {
                if self.streams_of_call(&ep.call) < MAX_STREAMS_PER_CALL {
                    self.make_room_for_a_call_stream(out);
                }
                self.open_stream(
                    key,
                    Some(ep.call),
                    Some(direction),
                    ep.codecs,
                    &[(meta.time, rtp)],
                );
                let legs: Vec<(Arc<str>, Direction)> = legs
                    .into_iter()
                    .filter(|(leg, _)| self.streams_of_call(leg) < MAX_STREAMS_PER_CALL)
                    .collect();
                // Beyond its call's cap the stream was opened as an orphan: no legs either.
                if let Some(stream) = self.streams.get_mut(&key).filter(|s| s.call.is_some()) {
                    self.counters.rtp_packets_in_calls += 1;
                    for (leg, _) in &legs {
                        self.streams_by_call
                            .entry(leg.clone())
                            .or_default()
                            .push(key);
                    }
                    stream.legs = (!legs.is_empty()).then(|| Box::new(legs));
                }
            }
            None if self.ended_call_media(meta) => self.counters.rtp_after_call_end += 1,
            None => self.probation(meta, rtp),
        }
    }

    /// Whether a datagram runs to or from a media endpoint of a call that ended.
    fn ended_call_media(&self, meta: &DatagramMeta) -> bool {
        !self.ended_endpoints.is_empty()
            && (self.ended_endpoints.contains_key(&meta.dst)
                || self.ended_endpoints.contains_key(&meta.src))
    }

    fn probation(&mut self, meta: &DatagramMeta, rtp: RtpPacket) {
        // Candidates are per 5-tuple and SSRC, so interleaved SSRCs on one flow each get
        // their chance. When the table is full, new candidates are turned away (and counted)
        // until old ones expire: a flood of garbage cannot grow memory, and streams that SDP
        // announced never need probation.
        let key = StreamKey::new(meta.src, meta.dst, rtp.ssrc);
        if !self.candidates.contains_key(&key)
            && self.candidates.len() >= self.limits.max_candidates
        {
            self.counters.probation_discarded += 1;
            return;
        }
        let candidate = self.candidates.entry(key).or_insert_with(|| Candidate {
            packets: Vec::with_capacity(PROBATION_PACKETS),
            first_seen: meta.time,
        });
        let confirmed = candidate.packets.iter().any(|(_, p)| {
            p.payload_type == rtp.payload_type && p.sequence.wrapping_add(1) == rtp.sequence
        });
        if candidate.packets.len() >= PROBATION_PACKETS {
            candidate.packets.remove(0);
            self.counters.probation_discarded += 1;
        }
        candidate.packets.push((meta.time, rtp));
        if !confirmed {
            return;
        }
        if let Some(candidate) = self.candidates.remove(&key) {
            let no_codecs = self.shared_codecs(&[]);
            self.open_stream(key, None, None, no_codecs, &candidate.packets);
        }
    }

    /// At `max_streams`, closes one orphan stream (reported as any orphan, counted in
    /// `orphans_closed_for_calls`) so a stream a call's SDP announced is measured: the table
    /// is otherwise first come, first served, and RTP sprayed under new SSRCs would hold it
    /// against every call. The orphan is the first the table yields among a few looked at
    /// (table order is keyed, so a sender cannot choose it); when none of them is an orphan
    /// the call's stream is turned away as before (`streams_dropped_at_capacity`).
    fn make_room_for_a_call_stream(&mut self, out: &mut impl FnMut(StreamRecord)) {
        /// Entries looked at: bounds the cost when the table holds calls' streams only.
        const LOOK_AT: usize = 64;
        if self.held_streams() < self.limits.max_streams {
            return;
        }
        let orphan = self
            .streams
            .iter()
            .take(LOOK_AT)
            .find(|(_, s)| s.call.is_none())
            .map(|(k, _)| *k);
        if let Some(key) = orphan {
            self.counters.orphans_closed_for_calls += 1;
            self.close_stream(key, out);
        }
    }

    fn open_stream(
        &mut self,
        key: StreamKey,
        call: Option<Arc<str>>,
        direction: Option<Direction>,
        codecs: Codecs,
        packets: &[(Timestamp, RtpPacket)],
    ) {
        let Some(((first_time, first), rest)) = packets.split_first() else {
            return;
        };
        if self.held_streams() >= self.limits.max_streams {
            self.counters.streams_dropped_at_capacity += 1;
            return;
        }
        let (call, direction) = match call {
            Some(c) if self.streams_of_call(&c) >= MAX_STREAMS_PER_CALL => {
                self.counters.streams_beyond_call_cap += 1;
                (None, None)
            }
            other => (other, direction),
        };
        self.counters.streams += 1;
        self.counters.rtp_packets += packets.len() as u64;
        let info = payload_info(&codecs, first);
        let mut stream = Box::new(Stream {
            call: call.clone(),
            direction,
            codecs,
            voice_pt: None,
            analyzer: StreamAnalyzer::new(*first_time, first, info),
            info_cache: None,
            legs: None,
            keeps: 0,
        });
        stream.note_voice(first, info);
        for (time, packet) in rest {
            stream.packet(*time, packet);
        }
        if let Some(call) = call {
            // Sized for a call's two directions (an empty Vec grows to four keys at once).
            self.streams_by_call
                .entry(call)
                .or_insert_with(|| Vec::with_capacity(2))
                .push(key);
        } else {
            self.counters.orphan_streams += 1;
        }
        self.streams.insert(key, stream);
        self.counters.peak_active_streams = self
            .counters
            .peak_active_streams
            .max(self.streams.len() as u64);
        self.link_relayed(key);
    }

    /// A media relay forwards a stream with its SSRC unchanged onto a second leg that no SDP
    /// in the capture may announce. A stream without a call that carries the SSRC of a call's
    /// stream, through an address that call's SDP announced (the relay), is that call's other
    /// leg: it joins the call, in the same direction.
    fn link_relayed(&mut self, key: StreamKey) {
        if self
            .ssrc_streams(key.ssrc)
            .nth(MAX_STREAMS_PER_SSRC - 1)
            .is_some()
        {
            // Measured, but neither indexed nor linked: see MAX_STREAMS_PER_SSRC.
            self.counters.streams_not_indexed_by_ssrc += 1;
            return;
        }
        let peers: Vec<StreamKey> = self
            .ssrc_streams(key.ssrc)
            .filter(|k| **k != key)
            .copied()
            .collect();
        match self.streams_by_ssrc.entry(key.ssrc) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(key);
            }
            // Nearly every SSRC has one stream (a relay's second leg makes two).
            std::collections::hash_map::Entry::Occupied(_) => self
                .more_by_ssrc
                .entry(key.ssrc)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(key),
        }
        for peer in peers {
            let (Some(this), Some(other)) = (self.streams.get(&key), self.streams.get(&peer))
            else {
                continue;
            };
            let ((attached, attached_key), orphan_key) =
                match (this.call.is_some(), other.call.is_some()) {
                    (true, false) => ((this, key), peer),
                    (false, true) => ((other, peer), key),
                    _ => continue,
                };
            let Some(call) = attached.call.clone() else {
                continue;
            };
            if self.streams_of_call(&call) >= MAX_STREAMS_PER_CALL {
                self.counters.streams_beyond_call_cap += 1;
                continue;
            }
            let orphan_ips = [orphan_key.src().ip(), orphan_key.dst().ip()];
            let relay_announced = [attached_key.src().ip(), attached_key.dst().ip()]
                .into_iter()
                .filter(|ip| orphan_ips.contains(ip))
                .any(|ip| {
                    self.endpoints_by_call
                        .get(&call)
                        .is_some_and(|eps| eps.iter().any(|e| e.ip() == ip))
                });
            if !relay_announced {
                continue;
            }
            let direction = attached.direction;
            for observation in self.take_orphan_rtcp(orphan_key) {
                self.keep_rtcp(call.clone(), observation);
            }
            if let Some(orphan) = self.streams.get_mut(&orphan_key) {
                orphan.call = Some(call.clone());
                orphan.direction = direction;
                self.counters.orphan_streams = self.counters.orphan_streams.saturating_sub(1);
                self.counters.rtp_packets_in_calls += orphan.analyzer.packets();
                self.streams_by_call
                    .entry(call)
                    .or_default()
                    .push(orphan_key);
            }
        }
    }

    /// Streams held against `max_streams`: measured now, or closed and waiting for their
    /// call's record.
    fn held_streams(&self) -> usize {
        self.streams.len() + self.closed_streams
    }

    /// Streams a call holds: open, closed while it lasts, and legs measured for it.
    fn streams_of_call(&self, call: &str) -> usize {
        self.streams_by_call.get(call).map_or(0, Vec::len)
            + self.closed_by_call.get(call).map_or(0, Vec::len)
            + self.closed_legs.get(call).map_or(0, Vec::len)
    }

    /// The open streams of an SSRC, in the order they opened.
    fn ssrc_streams(&self, ssrc: u32) -> impl Iterator<Item = &StreamKey> {
        self.streams_by_ssrc
            .get(&ssrc)
            .into_iter()
            .chain(self.more_by_ssrc.get(&ssrc).into_iter().flatten())
    }

    fn unindex_ssrc(&mut self, key: StreamKey) {
        let ssrc = key.ssrc;
        if self.streams_by_ssrc.get(&ssrc) == Some(&key) {
            // The next one, if any, takes its place.
            match self.more_by_ssrc.get_mut(&ssrc) {
                Some(more) => {
                    self.streams_by_ssrc.insert(ssrc, more.remove(0));
                    if more.is_empty() {
                        self.more_by_ssrc.remove(&ssrc);
                    }
                }
                None => {
                    self.streams_by_ssrc.remove(&ssrc);
                }
            }
        } else if let Some(more) = self.more_by_ssrc.get_mut(&ssrc) {
            more.retain(|k| *k != key);
            if more.is_empty() {
                self.more_by_ssrc.remove(&ssrc);
            }
        }
    }

    fn rtcp(&mut self, meta: &DatagramMeta, payload: &[u8]) {
        self.counters.rtcp_packets += 1;
        let summary = match packet::decode_rtcp(payload) {
            Ok(s) => s,
            Err(_) => {
                self.counters.rtcp_decode_errors += 1;
                return;
            }
        };
        let endpoint = self
            .endpoints
            .get(&meta.dst)
            .or_else(|| self.endpoints.get(&meta.src));
        let legs: Vec<Arc<str>> = endpoint
            .map(|e| e.others().iter().map(|(c, _)| c.clone()).collect())
            .unwrap_or_default();
        let call = endpoint
            .map(|e| e.call.clone())
            .or_else(|| self.call_by_ssrc(meta, &summary));
        for leg in legs {
            self.keep_rtcp(
                leg,
                RtcpObservation {
                    time: meta.time,
                    src: meta.src,
                    dst: meta.dst,
                    summary: summary.clone(),
                },
            );
        }
        let Some(call) = call else {
            if self.ended_call_media(meta) {
                self.counters.rtcp_after_call_end += 1;
            } else {
                self.counters.rtcp_unattributed += 1;
                let observation = RtcpObservation {
                    time: meta.time,
                    src: meta.src,
                    dst: meta.dst,
                    summary,
                };
                for key in self.orphans_of_rtcp(meta, &observation.summary) {
                    self.keep_orphan_rtcp(key, observation.clone());
                }
            }
            return;
        };
        self.keep_rtcp(
            call,
            RtcpObservation {
                time: meta.time,
                src: meta.src,
                dst: meta.dst,
                summary,
            },
        );
    }

    /// Keeps an RTCP packet with a call: at most `max_rtcp_per_call` a call, and only while
    /// the learnt state holds less than half of `max_bytes` (so that RTCP cannot take the
    /// room calls' endpoints need); beyond either, counted.
    fn keep_rtcp(&mut self, call: Arc<str>, observation: RtcpObservation) {
        let full = self.held_bytes() >= self.limits.max_bytes / 2;
        let cap = self.limits.max_rtcp_per_call;
        keep_in(
            &mut self.rtcp_by_call,
            call,
            RTCP_BY_CALL_SLOT,
            observation,
            (full, cap),
            &mut self.held_bytes,
            &mut self.counters,
        );
        self.note_peak();
    }

    /// The open orphan streams an RTCP packet of no call reports on or is sent by: a stream
    /// whose SSRC the packet names and which runs through one of its addresses (at most
    /// [`MAX_ORPHANS_PER_RTCP`]).
    fn orphans_of_rtcp(&self, meta: &DatagramMeta, summary: &RtcpSummary) -> Vec<StreamKey> {
        let ips = [meta.src.ip(), meta.dst.ip()];
        let ssrcs = summary
            .sender_ssrc
            .into_iter()
            .chain(summary.reports.iter().map(|r| r.source_ssrc));
        let mut keys: Vec<StreamKey> = Vec::new();
        for ssrc in ssrcs {
            for key in self.ssrc_streams(ssrc) {
                if keys.len() >= MAX_ORPHANS_PER_RTCP {
                    return keys;
                }
                let orphan = self.streams.get(key).is_some_and(|s| s.call.is_none());
                if orphan
                    && (ips.contains(&key.src().ip()) || ips.contains(&key.dst().ip()))
                    && !keys.contains(key)
                {
                    keys.push(*key);
                }
            }
        }
        keys
    }

    /// Keeps an RTCP packet with an orphan stream, within the bounds of [`Self::keep_rtcp`]
    /// (the same counters when beyond them).
    fn keep_orphan_rtcp(&mut self, key: StreamKey, observation: RtcpObservation) {
        let full = self.held_bytes() >= self.limits.max_bytes / 2;
        let cap = self.limits.max_rtcp_per_call;
        keep_in(
            &mut self.rtcp_by_orphan,
            key,
            RTCP_BY_ORPHAN_SLOT,
            observation,
            (full, cap),
            &mut self.held_bytes,
            &mut self.counters,
        );
        self.note_peak();
    }

    /// The RTCP kept with an orphan stream, taken (its stream is reported or joins a call).
    fn take_orphan_rtcp(&mut self, key: StreamKey) -> Vec<RtcpObservation> {
        match self.rtcp_by_orphan.remove(&key) {
            Some(list) => {
                let bytes = RTCP_BY_ORPHAN_SLOT
                    + vec(&list)
                    + list.iter().map(rtcp_heap_bytes).sum::<usize>();
                self.held_bytes = self.held_bytes.saturating_sub(bytes);
                list
            }
            None => Vec::new(),
        }
    }

    /// What a call's kept RTCP holds, its slot in the table included.
    fn rtcp_list_bytes(list: &Vec<RtcpObservation>) -> usize {
        RTCP_BY_CALL_SLOT + vec(list) + list.iter().map(rtcp_heap_bytes).sum::<usize>()
    }

    /// The call an RTCP packet is kept with (the call of the endpoint it goes to or comes
    /// from, else of a stream it reports on): what the HEP relay puts in a type-5 frame's
    /// correlation id. `None` when it does not decode or matches no open call.
    pub fn rtcp_call(&self, meta: &DatagramMeta, payload: &[u8]) -> Option<Arc<str>> {
        let summary = packet::decode_rtcp(payload).ok()?;
        self.endpoints
            .get(&meta.dst)
            .or_else(|| self.endpoints.get(&meta.src))
            .map(|e| e.call.clone())
            .or_else(|| self.call_by_ssrc(meta, &summary))
    }

    /// RTCP on a relay leg no SDP announced: the call of a stream whose SSRC the packet sends
    /// or reports on, and which runs through one of the packet's addresses.
    fn call_by_ssrc(&self, meta: &DatagramMeta, summary: &RtcpSummary) -> Option<Arc<str>> {
        let ssrcs = summary
            .sender_ssrc
            .into_iter()
            .chain(summary.reports.iter().map(|r| r.source_ssrc));
        let ips = [meta.src.ip(), meta.dst.ip()];
        for ssrc in ssrcs {
            for key in self.ssrc_streams(ssrc) {
                let Some(stream) = self.streams.get(key) else {
                    continue;
                };
                if stream.call.is_some()
                    && (ips.contains(&key.src().ip()) || ips.contains(&key.dst().ip()))
                {
                    return stream.call.clone();
                }
            }
        }
        None
    }

    /// Closes idle streams (reporting orphans) and forgets stale probation flows.
    pub fn advance(&mut self, now: Timestamp, out: &mut impl FnMut(StreamRecord)) {
        if now.seconds_since(self.last_sweep) < 1.0 {
            return;
        }
        self.last_sweep = now;
        let idle = self.limits.stream_idle.as_secs_f64();
        let idle_keys: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, s)| now.seconds_since(s.analyzer.last_time()) > idle)
            .map(|(k, _)| *k)
            .collect();
        for key in idle_keys {
            self.close_stream(key, out);
        }
        let ttl = self.limits.candidate_ttl.as_secs_f64();
        let mut dropped = 0u64;
        self.candidates.retain(|_, c| {
            let keep = now.seconds_since(c.first_seen) <= ttl;
            if !keep {
                dropped += c.packets.len() as u64;
            }
            keep
        });
        self.counters.probation_discarded += dropped;
        if self
            .orphan_window
            .is_some_and(|(start, _)| now.seconds_since(start) >= 60.0)
        {
            self.close_orphan_window();
        }
        let linger = self.limits.ended_linger.as_secs_f64();
        while let Some(&(at, addr)) = self.ended_order.front() {
            if now.seconds_since(at) <= linger {
                break;
            }
            self.ended_order.pop_front();
            self.held_bytes = self.held_bytes.saturating_sub(ENDED_ORDER_SLOT);
            if self.ended_endpoints.get(&addr) == Some(&at) {
                self.ended_endpoints.remove(&addr);
                self.held_bytes = self.held_bytes.saturating_sub(ENDED_SLOT);
            }
        }
    }

    fn close_stream(&mut self, key: StreamKey, out: &mut impl FnMut(StreamRecord)) {
        let Some(stream) = self.streams.remove(&key) else {
            return;
        };
        self.unindex_ssrc(key);
        self.release_kept(key, &stream);
        match stream.call.clone() {
            Some(call) => {
                for (leg, direction) in stream.legs() {
                    if let Some(keys) = self.streams_by_call.get_mut(leg) {
                        keys.retain(|k| *k != key);
                    }
                    let rtcp = self.rtcp_by_call.get(leg).map(Vec::as_slice);
                    let q = stream.quality(key, rtcp.or(Some(&[])));
                    self.closed_legs
                        .entry(leg.clone())
                        .or_default()
                        .push((Some(*direction), q));
                    self.closed_streams += 1;
                }
                if let Some(keys) = self.streams_by_call.get_mut(&call) {
                    keys.retain(|k| *k != key);
                }
                self.closed_by_call
                    .entry(call)
                    .or_default()
                    .push((key, stream));
                self.closed_streams += 1;
            }
            None => self.orphan_out(key, &stream, out),
        }
    }

    /// Everything measured for a call that ended at `now`: as [`Self::take_call`], and its
    /// media endpoints are remembered for `ended_linger`, so that what is still in flight
    /// is counted (`rtp_after_call_end`, `rtcp_after_call_end`) and opens no orphan stream.
    /// The call ended at capture time `ended_at`; its record waits for media in flight
    /// (see [`MediaTracker::closing`]): a stream captured from then on does not open for it.
    ///
    /// A stream of the call first captured after `ended_at` is let go now, its packets
    /// counted as media after the end: with several capture threads the final answer or BYE
    /// can be handled after RTP captured later than it (held in the SIP reorder window while
    /// the RTP went on), and in capture order, as a replay reads it, that RTP came after the
    /// end. The mirror of the rule in [`MediaTracker::rtp`].
    pub fn closing(&mut self, call_id: &str, ended_at: Timestamp) {
        let late: Vec<StreamKey> = self
            .streams_by_call
            .get(call_id)
            .into_iter()
            .flatten()
            .filter(|key| {
                self.streams.get(key).is_some_and(|s| {
                    s.call.as_deref() == Some(call_id)
                        && s.legs.is_none()
                        && s.analyzer.first_time() > ended_at
                })
            })
            .copied()
            .collect();
        for key in late {
            if let Some(keys) = self.streams_by_call.get_mut(call_id) {
                keys.retain(|k| *k != key);
            }
            if let Some(stream) = self.streams.remove(&key) {
                let packets = stream.analyzer.packets();
                self.counters.streams = self.counters.streams.saturating_sub(1);
                self.counters.rtp_packets = self.counters.rtp_packets.saturating_sub(packets);
                self.counters.rtp_packets_in_calls =
                    self.counters.rtp_packets_in_calls.saturating_sub(packets);
                self.counters.rtp_after_call_end += packets;
                self.unindex_ssrc(key);
                self.release_kept(key, &stream);
            }
        }
        self.closing.insert(Arc::from(call_id), ended_at);
    }

    pub fn end_call(&mut self, call_id: &str, now: Timestamp) -> MediaQuality {
        let addrs: Vec<SocketAddr> = self
            .endpoints_by_call
            .get(call_id)
            .map(|addrs| {
                addrs
                    .iter()
                    .copied()
                    .filter(|a| self.endpoints.get(a).is_some_and(|e| &*e.call == call_id))
                    .collect()
            })
            .unwrap_or_default();
        let quality = self.take_call(call_id);
        for addr in addrs {
            // Lingering endpoints yield to open ones: at either bound the oldest goes.
            while self.ended_endpoints.len() >= self.limits.max_endpoints.max(1)
                || self.held_bytes() + ENDED_SLOT + ENDED_ORDER_SLOT > self.limits.max_bytes
            {
                if !self.forget_oldest_ended() {
                    break;
                }
            }
            if self.held_bytes() + ENDED_SLOT + ENDED_ORDER_SLOT > self.limits.max_bytes {
                // Nothing lingering left to forget: this one is not remembered either.
                self.counters.ended_endpoints_forgotten += 1;
                continue;
            }
            if self.ended_endpoints.insert(addr, now).is_none() {
                self.held_bytes += ENDED_SLOT;
            }
            self.ended_order.push_back((now, addr));
            self.held_bytes += ENDED_ORDER_SLOT;
        }
        self.note_peak();
        quality
    }

    /// Live figures of a call's open streams so far, by direction (caller → callee,
    /// callee → caller), for the status view: nothing is taken or closed. Streams of no
    /// known direction are left out.
    pub fn live(&self, call_id: &str) -> (Vec<super::LiveStream>, Vec<super::LiveStream>) {
        let mut forward = Vec::new();
        let mut back = Vec::new();
        for key in self.streams_by_call.get(call_id).into_iter().flatten() {
            let Some(stream) = self.streams.get(key) else {
                continue;
            };
            let direction = if stream.call.as_deref() == Some(call_id) {
                stream.direction
            } else {
                stream
                    .legs()
                    .iter()
                    .find(|(c, _)| &**c == call_id)
                    .map(|(_, d)| *d)
            };
            let q = stream.quality(*key, None);
            let live = super::LiveStream {
                codec: q.codec,
                packets: q.metrics.packets,
                lost_percent: q.metrics.lost_percent,
                jitter_ms: q.metrics.mean_jitter_ms,
                mos: q.score.as_ref().map(|s| s.mos),
            };
            match direction {
                Some(Direction::CallerToCallee) => forward.push(live),
                Some(Direction::CalleeToCaller) => back.push(live),
                None => {}
            }
        }
        (forward, back)
    }

    /// Everything measured for a call, which is over: its streams are closed, its endpoints
    /// and RTCP forgotten.
    pub fn take_call(&mut self, call_id: &str) -> MediaQuality {
        self.closing.remove(call_id);
        let rtcp = match self.rtcp_by_call.remove(call_id) {
            Some(list) => {
                self.held_bytes = self.held_bytes.saturating_sub(Self::rtcp_list_bytes(&list));
                list
            }
            None => Vec::new(),
        };
        let mut measured: Vec<(Option<Direction>, StreamQuality)> =
            self.closed_legs.remove(call_id).unwrap_or_default();
        let mut streams = self.closed_by_call.remove(call_id).unwrap_or_default();
        self.closed_streams = self
            .closed_streams
            .saturating_sub(measured.len() + streams.len());
        for key in self.streams_by_call.remove(call_id).unwrap_or_default() {
            let Some(stream) = self.streams.get_mut(&key) else {
                continue;
            };
            if stream.call.as_deref() != Some(call_id) {
                // This call is another leg of the stream: a snapshot, the stream goes on.
                let legs = stream.legs.as_deref_mut();
                if let Some(legs) = legs {
                    if let Some(i) = legs.iter().position(|(c, _)| &**c == call_id) {
                        let (_, direction) = legs.remove(i);
                        measured.push((Some(direction), stream.quality(key, Some(&rtcp))));
                    }
                }
                continue;
            }
            if let Some((next, direction)) = stream.legs.as_deref_mut().and_then(Vec::pop) {
                // The stream's first call ended; another leg keeps it.
                measured.push((stream.direction, stream.quality(key, Some(&rtcp))));
                stream.call = Some(next);
                stream.direction = Some(direction);
                continue;
            }
            if let Some(stream) = self.streams.remove(&key) {
                self.unindex_ssrc(key);
                self.release_kept(key, &stream);
                streams.push((key, stream));
            }
        }
        if let Some(addrs) = self.endpoints_by_call.remove(call_id) {
            self.held_bytes = self
                .held_bytes
                .saturating_sub(by_call_bytes(call_id, &addrs));
            for addr in addrs {
                self.forget_endpoint(call_id, addr);
            }
        }
        for (key, stream) in &streams {
            measured.push((stream.direction, stream.quality(*key, Some(&rtcp))));
        }
        self.counters.streams_with_saturated_counters += measured
            .iter()
            .filter(|(_, q)| !q.metrics.saturated.is_empty())
            .count() as u64;
        measured.sort_by_key(|(_, q)| q.metrics.start_time);
        let mut quality = MediaQuality::default();
        for (direction, q) in measured {
            match direction {
                Some(Direction::CallerToCallee) => quality.caller_to_callee.push(q),
                Some(Direction::CalleeToCaller) => quality.callee_to_caller.push(q),
                None => quality.unknown_direction.push(q),
            }
        }
        quality.decide();
        quality
    }

    /// Reports an orphan stream: its own record while the minute's budget lasts, else into
    /// the minute's summary (so an orphan RTP flood cannot push call records out of the
    /// spool).
    fn orphan_out(&mut self, key: StreamKey, stream: &Stream, out: &mut impl FnMut(StreamRecord)) {
        let rtcp = self.take_orphan_rtcp(key);
        let record = orphan_record(key, stream, &rtcp);
        self.orphan_record_out(record, out);
    }

    fn orphan_record_out(&mut self, record: StreamRecord, out: &mut impl FnMut(StreamRecord)) {
        if !record.stream.metrics.saturated.is_empty() {
            self.counters.streams_with_saturated_counters += 1;
        }
        let time = record
            .stream
            .metrics
            .end_time
            .max(record.stream.metrics.start_time);
        let window = match self.orphan_window {
            Some((start, made)) if time.seconds_since(start) < 60.0 => (start, made),
            _ => {
                self.close_orphan_window();
                (time, 0)
            }
        };
        if window.1 < self.limits.max_orphan_records_per_minute {
            self.orphan_window = Some((window.0, window.1 + 1));
            out(record);
            return;
        }
        self.orphan_window = Some(window);
        self.counters.orphan_streams_summarised += 1;
        let summary = self
            .orphan_summary
            .get_or_insert_with(|| OrphanStreamsSummary {
                schema: ORPHAN_SUMMARY_SCHEMA,
                record_id: String::new(),
                interval_start: window.0,
                interval_end: window.0,
                streams: 0,
                packets: 0,
                lost: 0,
                by_source: Vec::new(),
                other_sources: 0,
            });
        summary.add(&record);
    }

    fn close_orphan_window(&mut self) {
        if let Some(mut summary) = self.orphan_summary.take() {
            let start = summary.interval_start.as_nanos().to_be_bytes();
            let shard = self.shard.to_be_bytes();
            let mut parts: Vec<&[u8]> = vec![ORPHAN_SUMMARY_SCHEMA.as_bytes(), &start];
            if self.shard != 0 {
                parts.push(&shard);
            }
            summary.record_id = stable_id(&parts);
            self.orphan_summaries_ready.push(summary);
        }
        self.orphan_window = None;
    }

    /// Whether summaries wait to be taken: asked for every datagram and frame, so that the
    /// empty case costs a load and a compare, not a `Vec` taken, iterated and dropped.
    #[inline]
    pub fn has_orphan_summaries(&self) -> bool {
        !self.orphan_summaries_ready.is_empty()
    }

    /// Summaries of orphan streams beyond the per-minute budget, for minutes that are over.
    pub fn take_orphan_summaries(&mut self) -> Vec<OrphanStreamsSummary> {
        std::mem::take(&mut self.orphan_summaries_ready)
    }

    /// Reports every orphan stream still open (end of capture or shutdown).
    pub fn finish(&mut self, out: &mut impl FnMut(StreamRecord)) {
        let orphans: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(_, s)| s.call.is_none())
            .map(|(k, _)| *k)
            .collect();
        let mut records: Vec<StreamRecord> = Vec::new();
        for key in orphans {
            if let Some(stream) = self.streams.remove(&key) {
                self.unindex_ssrc(key);
                let rtcp = self.take_orphan_rtcp(key);
                records.push(orphan_record(key, &stream, &rtcp));
            }
        }
        records.sort_by_key(|r| r.stream.metrics.start_time);
        for record in records {
            self.orphan_record_out(record, out);
        }
        self.close_orphan_window();
        self.counters.probation_discarded += self
            .candidates
            .drain()
            .map(|(_, c)| c.packets.len() as u64)
            .sum::<u64>();
    }
}

impl Stream {
    /// The other calls (B2BUA legs) of the stream, with its direction in each.
    fn legs(&self) -> &[(Arc<str>, Direction)] {
        self.legs.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Once a packet: inlined into [`MediaTracker::rtp`] (thin LTO left it out of line
    /// once the stream's fields changed: +2 M instructions on 102,030 packets).
    #[inline]
    fn packet(&mut self, time: Timestamp, packet: &RtpPacket) {
        // The payload type rarely changes within a stream: its meaning is looked up in the
        // SDP's codecs (names compared) only when it does, or when it depends on the packet.
        let info = match self.info_cache {
            Some((pt, info)) if pt == packet.payload_type => info,
            _ => {
                let (info, fixed) = payload_info_of(&self.codecs, packet);
                self.info_cache = fixed.then_some((packet.payload_type, info));
                info
            }
        };
        self.note_voice(packet, info);
        self.analyzer.packet(time, packet, info);
    }

    fn note_voice(&mut self, packet: &RtpPacket, info: PayloadInfo) {
        if self.voice_pt.is_none() && !info.is_event && !info.is_comfort_noise {
            self.voice_pt = Some(packet.payload_type);
        }
    }

    fn codec_name(&self, pt: u8) -> Option<String> {
        codec_of(&self.codecs, pt).0
    }

    fn quality(&self, key: StreamKey, rtcp: Option<&[RtcpObservation]>) -> StreamQuality {
        let metrics = self.analyzer.report();
        let codec = self.voice_pt.and_then(|pt| self.codec_name(pt));
        let codecs = metrics
            .payload_types
            .iter()
            .map(|pt| self.codec_name(*pt).unwrap_or_else(|| format!("PT{pt}")))
            .collect();
        let clock = self.voice_pt.and_then(|pt| codec_of(&self.codecs, pt).1);
        let reported = rtcp.and_then(|obs| reported_for(key, clock, obs));
        let delay = reported.as_ref().and_then(|r| {
            r.mean_round_trip_ms
                .map(|rtt| (rtt / 2.0, DelaySource::RtcpCapture))
                .or_else(|| {
                    r.voip_metrics
                        .filter(|vm| vm.round_trip_delay_ms > 0)
                        .map(|vm| (f64::from(vm.round_trip_delay_ms) / 2.0, DelaySource::RtcpXr))
                })
        });
        let (score, not_scored) = match score(codec.as_deref(), &metrics, delay) {
            Ok(s) => (Some(s), None),
            Err(reason) => (None, Some(reason)),
        };
        StreamQuality {
            src: record_text::socket_addr(key.src()),
            dst: record_text::socket_addr(key.dst()),
            ssrc: record_text::ssrc(key.ssrc),
            codec,
            codecs,
            metrics: (&metrics).into(),
            score: score.as_ref().map(Into::into),
            not_scored: not_scored.as_ref().map(Into::into),
            rtcp: reported,
        }
    }
}

fn tap_direction(direction: Direction) -> TapDirection {
    match direction {
        Direction::CallerToCallee => TapDirection::CallerToCallee,
        Direction::CalleeToCaller => TapDirection::CalleeToCaller,
    }
}

fn toward(side: Side) -> Direction {
    match side {
        Side::Callee => Direction::CallerToCallee,
        Side::Caller => Direction::CalleeToCaller,
    }
}

fn away_from(side: Side) -> Direction {
    match side {
        Side::Caller => Direction::CallerToCallee,
        Side::Callee => Direction::CalleeToCaller,
    }
}

/// Name and clock of a payload type: the SDP's rtpmap, else RFC 3551's static table.
fn codec_of(codecs: &[Codec], pt: u8) -> (Option<String>, Option<u32>) {
    if let Some(c) = codecs.iter().find(|c| c.payload_type == pt) {
        if c.name.is_some() {
            return (c.name.clone(), c.clock_rate);
        }
    }
    match static_payload_type(pt) {
        Some((name, clock)) => (Some(name.to_owned()), Some(clock)),
        None => (None, None),
    }
}

fn payload_info(codecs: &[Codec], packet: &RtpPacket) -> PayloadInfo {
    payload_info_of(codecs, packet).0
}

/// The payload info, and whether it holds for every packet of this payload type (false
/// when an unmapped dynamic type is read from the packet's payload).
fn payload_info_of(codecs: &[Codec], packet: &RtpPacket) -> (PayloadInfo, bool) {
    let pt = packet.payload_type;
    let mapped = codecs
        .iter()
        .find(|c| c.payload_type == pt && c.name.is_some());
    let (name, clock) = match mapped {
        Some(c) => (c.name.as_deref(), c.clock_rate),
        None => match static_payload_type(pt) {
            Some((name, clock)) => (Some(name), Some(clock)),
            None => (None, None),
        },
    };
    let is_event = match name {
        Some(n) => n.eq_ignore_ascii_case("telephone-event"),
        // An unmapped dynamic payload type carrying 4-byte payloads with an event code is
        // RFC 4733 (what Wireshark's rtpevent preference assumes for PT 101).
        None => pt >= 96 && packet.payload_len == 4 && packet.payload_head[0] <= 16,
    };
    let info = PayloadInfo {
        // Events keep their clock (for durations); the analysis computes no jitter for them.
        clock_rate: clock.unwrap_or(0),
        is_event,
        is_comfort_noise: pt == 13
            || pt == 19
            || name.is_some_and(|n| n.eq_ignore_ascii_case("CN")),
    };
    (info, name.is_some() || pt < 96)
}

/// What the receiver of `key` reported about it.
fn reported_for(
    key: StreamKey,
    clock: Option<u32>,
    observations: &[RtcpObservation],
) -> Option<RtcpReported> {
    let about = |o: &&RtcpObservation| {
        o.summary.reports.iter().any(|r| r.source_ssrc == key.ssrc)
            || o.summary
                .voip_metrics
                .iter()
                .any(|v| v.source_ssrc == key.ssrc)
    };
    // Relays reuse SSRCs across legs: prefer reports sent by this stream's receiver.
    let from_receiver: Vec<&RtcpObservation> = observations
        .iter()
        .filter(about)
        .filter(|o| o.src.ip() == key.dst().ip())
        .collect();
    let chosen = if from_receiver.is_empty() {
        observations.iter().filter(about).collect()
    } else {
        from_receiver
    };
    if chosen.is_empty() {
        return None;
    }
    let mut reported = RtcpReported::default();
    let mut rtt_sum = 0.0;
    for obs in chosen {
        if let Some(vm) = obs
            .summary
            .voip_metrics
            .iter()
            .find(|v| v.source_ssrc == key.ssrc)
        {
            reported.voip_metrics = Some(vm.into());
        }
        let Some(block) = obs
            .summary
            .reports
            .iter()
            .find(|r| r.source_ssrc == key.ssrc)
        else {
            continue;
        };
        reported.reports += 1;
        reported.last_fraction_lost_percent =
            Some((block.fraction_lost * 100.0 * 1000.0).round() / 1000.0);
        reported.last_cumulative_lost = Some(block.cumulative_lost);
        if let Some(rate) = clock.filter(|r| *r > 0) {
            let jitter = f64::from(block.jitter_units) * 1000.0 / f64::from(rate);
            reported.last_jitter_ms = Some(jitter);
            reported.max_jitter_ms = Some(
                reported
                    .max_jitter_ms
                    .map_or(jitter, |m: f64| m.max(jitter)),
            );
        }
        let Some(rtt) = round_trip(obs, block, observations) else {
            continue;
        };
        if RTT_PLAUSIBLE_MS.contains(&rtt) {
            let rtt = rtt.max(0.0);
            reported.round_trip_samples += 1;
            rtt_sum += rtt;
            reported.last_round_trip_ms = Some(round3(rtt));
            reported.min_round_trip_ms =
                Some(reported.min_round_trip_ms.map_or(rtt, |m: f64| m.min(rtt)));
            reported.max_round_trip_ms =
                Some(reported.max_round_trip_ms.map_or(rtt, |m: f64| m.max(rtt)));
        } else {
            reported.round_trip_rejected += 1;
        }
    }
    if reported.round_trip_samples > 0 {
        reported.mean_round_trip_ms =
            Some(round3(rtt_sum / f64::from(reported.round_trip_samples)));
        reported.min_round_trip_ms = reported.min_round_trip_ms.map(round3);
        reported.max_round_trip_ms = reported.max_round_trip_ms.map(round3);
    }
    Some(reported)
}

/// The round trip a report block shows, from capture times only: the SR its LSR names, sent
/// the other way (the report's addresses reversed, else by the reported SSRC), seen before
/// the report; RTT = report time − SR time − DLSR, in ms. `None` without such an SR.
fn round_trip(
    report: &RtcpObservation,
    block: &crate::media::packet::ReceptionReport,
    observations: &[RtcpObservation],
) -> Option<f64> {
    if block.last_sr == 0 {
        return None; // RFC 3550: no SR received yet
    }
    if report.summary.sender_ssrc == Some(block.source_ssrc) {
        // A sender reporting on itself (seen from real gateways, with its own SR's time as
        // LSR) measures nothing.
        return None;
    }
    // The SR must have passed before the report (TShark: "Don't allow match seemingly
    // calculated from same (or later!) frame").
    let answers = |o: &&RtcpObservation| {
        o.summary.sr_ntp_middle == Some(block.last_sr) && o.time < report.time
    };
    let reversed = observations
        .iter()
        .filter(answers)
        .filter(|o| o.src == report.dst && o.dst == report.src)
        .max_by_key(|o| o.time);
    let sr = reversed.or_else(|| {
        observations
            .iter()
            .filter(answers)
            .filter(|o| o.summary.sender_ssrc == Some(block.source_ssrc))
            .max_by_key(|o| o.time)
    })?;
    let gap_ms = report.time.seconds_since(sr.time) * 1000.0;
    Some(gap_ms - f64::from(block.delay_since_last_sr) * 1000.0 / 65_536.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Scores a stream with the E-model, after the 50 ms jitter buffer; `delay` is the one-way
/// delay and where it came from.
fn score(
    codec: Option<&str>,
    metrics: &crate::media::stream::StreamReport,
    delay: Option<(f64, DelaySource)>,
) -> Result<Score, NotScored> {
    let codec = codec.ok_or(NotScored::NoData)?;
    let impairment = emodel::codec_impairment(codec)?;
    let buffer = metrics.jitter_buffers.first().ok_or(NotScored::NoData)?;
    // No jitter: no two voice packets were timed (a clock rate of 0 in the SDP, or one so
    // wrong that every packet looks like a timestamp jump), so the playout buffers never
    // ran and the loss alone would give a score for what nobody measured.
    if metrics.expected <= 0 || metrics.max_jitter_ms.is_none() {
        return Err(NotScored::NoData);
    }
    let (delay, delay_source) = delay.unwrap_or((0.0, DelaySource::AssumedDefault));
    let r = emodel::r_factor(
        impairment,
        buffer.effective_loss_percent,
        buffer.burst_ratio,
        delay,
    );
    Ok(Score {
        model: emodel::MODEL,
        codec: codec.to_owned(),
        ie: impairment.ie,
        bpl: impairment.bpl,
        packet_loss_percent: buffer.effective_loss_percent,
        burst_ratio: buffer.burst_ratio,
        one_way_delay_ms: round3(delay),
        delay_source,
        jitter_buffer_ms: JITTER_BUFFERS_MS[0],
        r_factor: (r * 100.0).round() / 100.0,
        mos: (emodel::mos(r) * 100.0).round() / 100.0,
    })
}

fn orphan_record(key: StreamKey, stream: &Stream, rtcp: &[RtcpObservation]) -> StreamRecord {
    let quality = stream.quality(key, (!rtcp.is_empty()).then_some(rtcp));
    StreamRecord {
        schema: STREAM_SCHEMA,
        record_id: stable_id(&[
            quality.src.as_bytes(),
            quality.dst.as_bytes(),
            &key.ssrc.to_be_bytes(),
            &quality.metrics.start_time.as_nanos().to_be_bytes(),
        ]),
        stream: quality,
    }
}

/// The media counters as the capture summary writes them (`media`).
impl From<&MediaCounters> for crate::record::MediaCounters {
    fn from(c: &MediaCounters) -> Self {
        // Every field named: a counter added here fails to compile until the record (and its
        // schema file) says whether it is written.
        let MediaCounters {
            rtp_packets,
            rtp_packets_in_calls,
            rtp_decode_errors,
            rtcp_packets,
            rtcp_decode_errors,
            rtcp_unattributed,
            rtcp_dropped_at_capacity,
            streams,
            peak_active_streams,
            orphan_streams,
            other_datagrams,
            probation_discarded,
            streams_dropped_at_capacity,
            endpoints_dropped_at_capacity,
            endpoints_dropped_at_byte_bound,
            rtcp_dropped_at_byte_bound,
            peak_held_bytes,
            rtp_after_call_end,
            rtcp_after_call_end,
            ended_endpoints_forgotten,
            orphan_streams_summarised,
            streams_beyond_call_cap,
            orphans_closed_for_calls,
            call_endpoints_forgotten,
            endpoints_kept_for_streams,
            streams_not_indexed_by_ssrc,
            rtp_over_tcp_unmeasured,
            turn_relayed_unmeasured,
            streams_with_saturated_counters,
        } = *c;
        crate::record::MediaCounters {
            rtp_packets,
            rtp_packets_in_calls,
            rtp_decode_errors,
            rtcp_packets,
            rtcp_decode_errors,
            rtcp_unattributed,
            rtcp_dropped_at_capacity,
            streams,
            peak_active_streams,
            orphan_streams,
            other_datagrams,
            probation_discarded,
            streams_dropped_at_capacity,
            endpoints_dropped_at_capacity,
            endpoints_dropped_at_byte_bound,
            rtcp_dropped_at_byte_bound,
            peak_held_bytes,
            rtp_after_call_end,
            rtcp_after_call_end,
            ended_endpoints_forgotten,
            orphan_streams_summarised,
            streams_beyond_call_cap,
            orphans_closed_for_calls,
            call_endpoints_forgotten,
            endpoints_kept_for_streams,
            streams_not_indexed_by_ssrc,
            rtp_over_tcp_unmeasured,
            turn_relayed_unmeasured,
            streams_with_saturated_counters,
        }
    }
}

/// A datagram to or from the well-known port of a service that is not media: DNS (53),
/// DHCP (67, 68), NTP (123), NetBIOS (137, 138), SNMP (161, 162), SSDP (1900), mDNS (5353),
/// LLMNR (5355).
fn is_service_port(meta: &DatagramMeta) -> bool {
    const SERVICES: [u16; 11] = [53, 67, 68, 123, 137, 138, 161, 162, 1900, 5353, 5355];
    SERVICES.contains(&meta.src.port()) || SERVICES.contains(&meta.dst.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stream held at once costs in the tracker's own structures: its boxed state and
    /// its key's slots in the tables (issue 14 goal 5, ≤ 1 KiB a stream in all). Printed with
    /// `--nocapture`.
    #[test]
    fn the_per_stream_structures_stay_small() {
        use std::mem::size_of;
        let sizes = [
            ("Stream", size_of::<Stream>()),
            ("StreamAnalyzer", size_of::<StreamAnalyzer>()),
            ("StreamKey", size_of::<StreamKey>()),
            (
                "streams slot (StreamKey, Box<Stream>)",
                size_of::<(StreamKey, Box<Stream>)>(),
            ),
            ("streams_by_ssrc slot", size_of::<(u32, StreamKey)>()),
            (
                "streams_by_call slot",
                size_of::<(Arc<str>, Vec<StreamKey>)>(),
            ),
            ("Endpoint", size_of::<Endpoint>()),
        ];
        for (name, size) in sizes {
            println!("size_of::<{name}>() = {size}");
        }
        assert!(size_of::<Stream>() <= 1024, "{sizes:?}");
    }

    /// The word-packed key gives back the addresses it was made of, IPv4, IPv6 and
    /// IPv4-mapped IPv6 kept apart.
    #[test]
    fn a_packed_stream_key_gives_back_its_addresses() {
        for (src, dst) in [
            ("10.0.0.1:4000", "10.0.0.2:5000"),
            ("[2001:db8::1]:4000", "[2001:db8::2]:65535"),
            ("[::ffff:10.0.0.1]:1", "10.0.0.1:2"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let key = StreamKey::new(src, dst, 0xDEAD_BEEF);
            assert_eq!((key.src(), key.dst(), key.ssrc), (src, dst, 0xDEAD_BEEF));
        }
        // An IPv4 address and its IPv6-mapped form are different streams.
        let v4 = StreamKey::new(
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:2".parse().unwrap(),
            1,
        );
        let mapped = StreamKey::new(
            "[::ffff:10.0.0.1]:1".parse().unwrap(),
            "[::ffff:10.0.0.2]:2".parse().unwrap(),
            1,
        );
        assert_ne!(v4, mapped);
    }

    /// The endpoint's clock is an hour ahead of the tap's: only capture times count.
    #[test]
    fn round_trip_from_capture_times_not_the_endpoint_clock() {
        use crate::media::packet::ReceptionReport;
        let sr_seen = Timestamp::from_secs_nanos(1_700_000_000, 0);
        let endpoint_clock = Timestamp::from_secs_nanos(1_700_003_600, 0);
        // The receiver held the SR for 0.5 s; its RR passes the tap 0.58 s after the SR.
        let rr_seen = Timestamp::from_secs_nanos(1_700_000_000, 580_000_000);
        let sender: SocketAddr = "10.0.0.1:4001".parse().unwrap();
        let receiver: SocketAddr = "10.0.0.2:5001".parse().unwrap();
        let key = StreamKey::new(
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:5000".parse().unwrap(),
            7,
        );
        let sr = RtcpObservation {
            time: sr_seen,
            src: sender,
            dst: receiver,
            summary: RtcpSummary {
                sender_ssrc: Some(7),
                sr_ntp_middle: Some(ntp_middle(endpoint_clock)),
                ..RtcpSummary::default()
            },
        };
        let rr = RtcpObservation {
            time: rr_seen,
            src: receiver,
            dst: sender,
            summary: RtcpSummary {
                sender_ssrc: Some(9),
                reports: vec![ReceptionReport {
                    source_ssrc: 7,
                    fraction_lost: 0.25,
                    cumulative_lost: 3,
                    jitter_units: 80,
                    last_sr: ntp_middle(endpoint_clock),
                    delay_since_last_sr: 32_768,
                }],
                ..RtcpSummary::default()
            },
        };
        let r = reported_for(key, Some(8000), &[sr.clone(), rr.clone()]).unwrap();
        assert!((r.last_round_trip_ms.unwrap() - 80.0).abs() < 0.01, "{r:?}");
        assert_eq!(r.round_trip_samples, 1);
        assert_eq!(r.last_jitter_ms, Some(10.0));
        assert_eq!(r.last_fraction_lost_percent, Some(25.0));
        assert_eq!(r.last_cumulative_lost, Some(3));
        // A DLSR larger than the gap (a lying or broken receiver) is rejected, not scored.
        let mut bad = rr;
        bad.summary.reports[0].delay_since_last_sr = 65_536;
        let r = reported_for(key, Some(8000), &[sr, bad]).unwrap();
        assert_eq!((r.round_trip_samples, r.round_trip_rejected), (0, 1));
        assert_eq!(r.mean_round_trip_ms, None);
    }

    /// RTCP beyond a call's bound is counted, not kept silently; the RTT of what was kept
    /// still comes out.
    #[test]
    fn rtcp_of_an_orphan_stream_is_kept_with_it_within_the_call_bound() {
        let limits = MediaLimits {
            max_rtcp_per_call: 4,
            ..MediaLimits::default()
        };
        let mut tracker = MediaTracker::new(limits);
        let mut records = Vec::new();
        // An orphan stream (no SDP): 10.0.0.1:4000 -> 10.0.0.2:5000, SSRC 7.
        for i in 0u16..20 {
            let mut rtp = vec![0x80, 8];
            rtp.extend_from_slice(&i.to_be_bytes());
            rtp.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
            rtp.extend_from_slice(&7u32.to_be_bytes());
            rtp.extend_from_slice(&[0xd5; 160]);
            let meta = DatagramMeta {
                frame: u64::from(i),
                time: Timestamp::from_secs_nanos(1_700_000_000, u32::from(i) * 20_000_000),
                src: "10.0.0.1:4000".parse().unwrap(),
                dst: "10.0.0.2:5000".parse().unwrap(),
            };
            tracker.datagram(&meta, &rtp, &mut |r| records.push(r));
        }
        // What the stream itself holds (its source's learnt state) stays until it closes.
        let with_stream = tracker.held_bytes();
        // Its receiver's RRs about SSRC 7 (10 of them; 4 kept, as for a call).
        let rr = [
            0x81, 201, 0, 7, 0, 0, 0, 9, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 80, 0, 0,
            0, 0, 0, 0, 0, 0,
        ];
        for i in 0..10 {
            let meta = DatagramMeta {
                frame: 100 + i,
                time: Timestamp::from_secs_nanos(1_700_000_001 + i as i64, 0),
                src: "10.0.0.2:5001".parse().unwrap(),
                dst: "10.0.0.1:4001".parse().unwrap(),
            };
            tracker.datagram(&meta, &rr, &mut |r| records.push(r));
        }
        let c = tracker.counters();
        assert_eq!((c.rtcp_unattributed, c.rtcp_dropped_at_capacity), (10, 6));
        assert!(tracker.held_bytes() > with_stream);
        tracker.finish(&mut |r| records.push(r));
        assert!(
            tracker.held_bytes() <= with_stream,
            "the kept RTCP goes with its stream"
        );
        let [record] = records.as_slice() else {
            panic!("{records:?}")
        };
        let rtcp = record.stream.rtcp.as_ref().unwrap();
        assert_eq!(rtcp.reports, 4);
        assert_eq!(rtcp.last_jitter_ms, Some(10.0));
    }

    #[test]
    fn rtcp_beyond_the_call_bound_is_counted() {
        let limits = MediaLimits {
            max_rtcp_per_call: 4,
            ..MediaLimits::default()
        };
        let mut tracker = MediaTracker::new(limits);
        let sdp = crate::decode::sdp::summarize(
            b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
              m=audio 5000 RTP/AVP 8\r\n",
        )
        .unwrap();
        tracker.learn("call", Side::Callee, &sdp);
        let rr = [
            0x81, 201, 0, 7, 0, 0, 0, 9, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 80, 0, 0,
            0, 0, 0, 0, 0, 0,
        ];
        for i in 0..10 {
            let meta = DatagramMeta {
                frame: i,
                time: Timestamp::from_secs_nanos(1_700_000_000 + i as i64, 0),
                src: "10.0.0.1:4001".parse().unwrap(),
                dst: "10.0.0.2:5001".parse().unwrap(),
            };
            tracker.datagram(&meta, &rr, &mut |_| {});
        }
        let c = tracker.counters();
        assert_eq!((c.rtcp_packets, c.rtcp_dropped_at_capacity), (10, 6));
    }

    /// An SDP announcing `ip:port` (and RTCP on port + 1) with `codecs` (payload type, name).
    fn sdp_of(ip: &str, port: u16, codecs: &[(u8, &str)]) -> SdpSummary {
        let pts: Vec<String> = codecs.iter().map(|(pt, _)| pt.to_string()).collect();
        let mut text = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP {}\r\n",
            pts.join(" ")
        );
        for (pt, name) in codecs {
            text.push_str(&format!("a=rtpmap:{pt} {name}/8000\r\n"));
        }
        crate::decode::sdp::summarize(text.as_bytes()).unwrap()
    }

    fn at_ms(ms: i64) -> Timestamp {
        Timestamp::from_nanos(1_700_000_000_000_000_000 + ms * 1_000_000)
    }

    impl MediaTracker {
        /// [`Self::held_bytes`] counted afresh from the tables, for the tests: the running
        /// count must equal it after every change.
        fn recount(&self) -> usize {
            let mut lists = std::collections::HashSet::new();
            let mut codec_bytes = 0;
            let mut list = |l: &Codecs| {
                if lists.insert(Arc::as_ptr(l)) {
                    codec_bytes += l.bytes;
                }
            };
            self.codec_lists.iter().for_each(&mut list);
            self.endpoints.values().for_each(|e| list(&e.codecs));
            self.streams.values().for_each(|s| list(&s.codecs));
            self.closed_by_call
                .values()
                .flatten()
                .for_each(|(_, s)| list(&s.codecs));
            self.endpoints.values().map(endpoint_bytes).sum::<usize>()
                + self
                    .endpoints_by_call
                    .iter()
                    .map(|(c, a)| by_call_bytes(c, a))
                    .sum::<usize>()
                + self.ended_endpoints.len() * ENDED_SLOT
                + self.ended_order.len() * ENDED_ORDER_SLOT
                + self.kept_for_streams.len() * KEPT_SLOT
                + self
                    .rtcp_by_call
                    .values()
                    .map(Self::rtcp_list_bytes)
                    .sum::<usize>()
                + codec_bytes
        }
    }

    /// The endpoint table was bounded by count only (400,000): an INVITE flood's SDPs held
    /// ~70 MB of endpoints, lingering endpoints and lists at its peak (DHAT, 2026-12-03),
    /// nowhere counted. It is now bounded by what it holds: lingering endpoints of ended
    /// calls go first, then new endpoints are turned away, both counted, and the running
    /// count is what the tables hold (each codec list once, however many share it).
    #[test]
    fn the_endpoint_table_is_bounded_by_what_it_holds() {
        let limits = MediaLimits {
            max_bytes: 256 * 1024,
            ..MediaLimits::default()
        };
        let mut tracker = MediaTracker::new(limits);
        let mut peak = 0;
        for i in 0..4_000u32 {
            let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            // A codec list of its own every SDP (a name no other SDP uses).
            let name = format!("X-{i}");
            let sdp = sdp_of(&ip, 4000, &[(0, "PCMU"), (96, &name)]);
            let call = format!("flood-{i}");
            tracker.learn(&call, Side::Caller, &sdp);
            // Every other call ends: its endpoints linger.
            if i % 2 == 0 {
                tracker.end_call(&call, at_ms(i64::from(i)));
            }
            assert_eq!(tracker.held_bytes(), tracker.recount(), "after call {i}");
            peak = peak.max(tracker.held_bytes());
        }
        assert!(peak <= limits.max_bytes, "{peak} > {}", limits.max_bytes);
        let c = tracker.counters();
        assert!(c.ended_endpoints_forgotten > 0, "{c:?}");
        assert!(c.endpoints_dropped_at_byte_bound > 0, "{c:?}");
        assert_eq!(c.peak_held_bytes, peak as u64);
        assert!(
            peak > limits.max_bytes * 9 / 10,
            "the bound is used: {peak}"
        );
        // Everything taken: nothing is held but the recent codec lists.
        for i in 0..4_000u32 {
            tracker.take_call(&format!("flood-{i}"));
        }
        tracker.advance(at_ms(1_000_000), &mut |_| {});
        assert_eq!(tracker.held_bytes(), tracker.recount());
        let lists: usize = tracker.codec_lists.iter().map(|l| l.bytes).sum();
        assert_eq!(tracker.held_bytes(), lists);
    }

    /// RTCP kept with calls was bounded per call (256 packets) only, each packet up to a
    /// datagram's worth of report blocks: sprayed at many calls' endpoints it grew without a
    /// byte bound. It is kept only below half the learnt state's bound, counted beyond.
    #[test]
    fn rtcp_kept_with_calls_is_bounded_by_bytes() {
        let limits = MediaLimits {
            max_bytes: 256 * 1024,
            ..MediaLimits::default()
        };
        let mut tracker = MediaTracker::new(limits);
        // An RR with 31 report blocks.
        let mut rr = vec![0x80 | 31, 201];
        rr.extend_from_slice(&(1u16 + 31 * 6).to_be_bytes());
        rr.extend_from_slice(&9u32.to_be_bytes());
        for b in 0..31u32 {
            rr.extend_from_slice(&b.to_be_bytes());
            rr.extend_from_slice(&[0; 20]);
        }
        for i in 0..100u32 {
            let ip = format!("10.0.{}.{}", i >> 8, i & 255);
            tracker.learn(
                &format!("c{i}"),
                Side::Callee,
                &sdp_of(&ip, 5000, &[(8, "PCMA")]),
            );
            for k in 0..200i64 {
                let meta = DatagramMeta {
                    frame: 0,
                    time: at_ms(k),
                    src: "10.9.0.1:4001".parse().unwrap(),
                    dst: format!("{ip}:5001").parse().unwrap(),
                };
                tracker.datagram(&meta, &rr, &mut |_| {});
            }
            assert_eq!(tracker.held_bytes(), tracker.recount());
        }
        let c = tracker.counters();
        assert_eq!(c.rtcp_decode_errors, 0, "{c:?}");
        assert!(c.rtcp_dropped_at_byte_bound > 0, "{c:?}");
        // RTCP stopped at half the bound (give or take the growth of the last list); the
        // whole stayed within it.
        let rtcp: usize = tracker
            .rtcp_by_call
            .values()
            .map(MediaTracker::rtcp_list_bytes)
            .sum();
        assert!(rtcp <= limits.max_bytes / 2, "{rtcp}: {c:?}");
        assert!(c.peak_held_bytes <= limits.max_bytes as u64, "{c:?}");
        // Endpoints still find room.
        tracker.learn(
            "late",
            Side::Callee,
            &sdp_of("10.8.0.1", 5000, &[(8, "PCMA")]),
        );
        assert!(tracker.knows_endpoint(&"10.8.0.1:5000".parse().unwrap()));
    }

    /// The worst case of each media table a sender can grow, at the defaults, in bytes as
    /// the allocator holds them (README, "Threat model and bounds"). Printed with
    /// `cargo test --lib worst_cases -- --nocapture`.
    #[test]
    fn worst_cases_of_the_media_tables() {
        let d = MediaLimits::default();
        // A stream: its boxed state, its slots in the stream table, the SSRC index and its
        // call's list.
        let stream = heap(size_of::<Stream>())
            + table_share(size_of::<(StreamKey, Box<Stream>)>())
            + table_share(size_of::<(u32, StreamKey)>())
            + 2 * size_of::<StreamKey>();
        let candidate = table_share(size_of::<(StreamKey, Candidate)>())
            + heap(PROBATION_PACKETS * size_of::<(Timestamp, RtpPacket)>());
        let route = table_share(size_of::<(SocketAddr, (usize, bool))>());
        let rows = [
            (
                "streams held (open or closed in a call)",
                d.max_streams,
                stream,
            ),
            ("probation candidates", d.max_candidates, candidate),
            (
                "media routes (sharded), 2 x max_endpoints",
                2 * d.max_endpoints,
                route,
            ),
            (
                "learnt state (endpoints, lists, RTCP): max_bytes",
                1,
                d.max_bytes,
            ),
        ];
        let mut total = 0;
        for (what, count, each) in rows {
            println!(
                "{what}: {count} x {each} B = {:.1} MiB",
                (count * each) as f64 / 1048576.0
            );
            total += count * each;
        }
        println!("media tables in all: {:.1} MiB", total as f64 / 1048576.0);
        println!(
            "per endpoint: {ENDPOINT_SLOT} B slot, lingering {} B; RtcpObservation {} B",
            ENDED_SLOT + ENDED_ORDER_SLOT,
            size_of::<RtcpObservation>()
        );
        assert!(stream <= 1024, "{stream}");
    }

    /// Streams closed for inactivity wait in their call until its record is made, and were
    /// outside `max_streams`: RTP under new SSRCs to calls' announced ports, left idle,
    /// piled up 64 a call in every open call (6.4 million streams of ~1 KiB at the
    /// defaults). They now count against the bound until their call takes them.
    #[test]
    fn streams_closed_in_their_call_count_against_the_stream_bound() {
        let limits = MediaLimits {
            max_streams: 10,
            ..MediaLimits::default()
        };
        let mut tracker = MediaTracker::new(limits);
        for call in 0..3u8 {
            let ip = format!("10.0.0.{call}");
            tracker.learn(
                &format!("c{call}"),
                Side::Callee,
                &sdp_of(&ip, 5000, &[(8, "PCMA")]),
            );
        }
        let rtp = |seq: u16, ssrc: u32| {
            let mut p = vec![0x80, 8];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&[0xD5; 20]);
            p
        };
        // Four streams to each call, one after another, each left idle past `stream_idle`.
        let mut ms = 0;
        for round in 0..4u32 {
            for call in 0..3u32 {
                let meta = DatagramMeta {
                    frame: 0,
                    time: at_ms(ms),
                    src: "10.9.0.1:4000".parse().unwrap(),
                    dst: format!("10.0.0.{call}:5000").parse().unwrap(),
                };
                tracker.datagram(&meta, &rtp(0, round * 10 + call), &mut |_| {});
            }
            ms += 61_000;
            tracker.advance(at_ms(ms), &mut |_| {});
            assert_eq!(tracker.active_streams(), 0, "closed for inactivity");
        }
        let c = tracker.counters();
        assert_eq!(c.streams, 10, "{c:?}");
        assert_eq!(c.streams_dropped_at_capacity, 2, "{c:?}");
        assert_eq!(tracker.held_streams(), 10);
        // A call's record takes its closed streams: room again.
        let q = tracker.take_call("c0");
        assert_eq!(q.callee_to_caller.len() + q.caller_to_callee.len(), 4);
        assert_eq!(tracker.held_streams(), 6);
    }

    /// Every stream of one SSRC went into the SSRC index, and each new one compared itself
    /// with all the others (a relay's second leg): RTP sprayed under one SSRC from ever new
    /// addresses cost time growing with the square of the streams — 60,000 such streams took
    /// a release replay 147 s against 0.5 s for 60,000 SSRCs, a capture thread stalled while
    /// its ring overflowed. The index now holds a few streams an SSRC; the rest are measured
    /// but not indexed, counted.
    #[test]
    fn one_ssrc_from_many_addresses_is_indexed_a_bounded_number_of_times() {
        let mut tracker = MediaTracker::new(MediaLimits::default());
        let streams = 1000u32;
        for i in 0..streams {
            for seq in 0..3u16 {
                let meta = DatagramMeta {
                    frame: 0,
                    time: Timestamp::from_secs_nanos(1_700_000_000, i * 10_000),
                    src: SocketAddr::new([10, 1, (i >> 8) as u8, i as u8].into(), 4000),
                    dst: "10.0.0.2:5000".parse().unwrap(),
                };
                let mut p = vec![0x80, 8];
                p.extend_from_slice(&seq.to_be_bytes());
                p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                p.extend_from_slice(&0x5555u32.to_be_bytes());
                p.extend_from_slice(&[0xD5; 20]);
                tracker.datagram(&meta, &p, &mut |_| {});
            }
        }
        assert_eq!(tracker.active_streams(), streams as usize, "all measured");
        let indexed = tracker.ssrc_streams(0x5555).count();
        assert_eq!(indexed, MAX_STREAMS_PER_SSRC, "the index is bounded");
        let c = tracker.counters();
        assert_eq!(
            c.streams_not_indexed_by_ssrc,
            u64::from(streams) - MAX_STREAMS_PER_SSRC as u64
        );
    }

    /// An SDP may give a voice codec any clock rate: with 0 (or 1, where every 20 ms
    /// packet looks like a timestamp jump) no packet's timing was ever measured — no jitter,
    /// the playout buffers never fed — yet the stream was scored from its sequence numbers
    /// alone, MOS 4.41 for whatever the caller heard. Unmeasured timing is no score.
    #[test]
    fn a_stream_whose_timing_was_never_measured_is_not_scored() {
        for rate in ["0", "1"] {
            let mut tracker = MediaTracker::new(MediaLimits::default());
            let sdp = format!(
                "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n\
                 m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 PCMU/{rate}\r\n"
            );
            let sdp = crate::decode::sdp::summarize(sdp.as_bytes()).unwrap();
            tracker.learn("call", Side::Callee, &sdp);
            for i in 0..50u32 {
                let meta = DatagramMeta {
                    frame: 0,
                    time: Timestamp::from_secs_nanos(1_700_000_000, i * 20_000_000),
                    src: "10.0.0.1:4000".parse().unwrap(),
                    dst: "10.0.0.2:5000".parse().unwrap(),
                };
                let mut p = vec![0x80, 96];
                p.extend_from_slice(&(i as u16).to_be_bytes());
                p.extend_from_slice(&(i * 160).to_be_bytes());
                p.extend_from_slice(&7u32.to_be_bytes());
                p.extend_from_slice(&[0xFF; 160]);
                tracker.datagram(&meta, &p, &mut |_| {});
            }
            let quality = tracker.end_call("call", Timestamp::from_secs_nanos(1_700_000_002, 0));
            let stream = quality
                .caller_to_callee
                .iter()
                .chain(&quality.callee_to_caller)
                .chain(&quality.unknown_direction)
                .next()
                .unwrap();
            assert_eq!(stream.metrics.packets, 50, "rate {rate}");
            assert_eq!(stream.metrics.max_jitter_ms, None, "rate {rate}");
            assert!(stream.score.is_none(), "rate {rate}: {:?}", stream.score);
            assert_eq!(
                stream.not_scored,
                Some(crate::record::media::NotScored::NoData),
                "rate {rate}"
            );
        }
    }

    /// The middle 32 bits of the NTP timestamp of a time.
    fn ntp_middle(time: Timestamp) -> u32 {
        const NTP_UNIX_OFFSET: i64 = 2_208_988_800;
        let nanos = time.as_nanos();
        let secs = nanos.div_euclid(1_000_000_000) + NTP_UNIX_OFFSET;
        let frac = ((nanos.rem_euclid(1_000_000_000) as u64) << 32) / 1_000_000_000;
        (((secs as u64 & 0xFFFF) << 16) | (frac >> 16)) as u32
    }

    #[test]
    fn ntp_middle_bits() {
        // 1970-01-01T00:00:00.5Z is NTP 2208988800.5: low 16 bits of seconds 0x7E80, fraction 0x8000.
        let t = Timestamp::from_secs_nanos(0, 500_000_000);
        assert_eq!(ntp_middle(t), 0x7E80_8000);
    }
}
