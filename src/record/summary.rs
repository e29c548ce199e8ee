//! The counters a capture summary carries (schema documented in the parent module): the
//! decode path's, the media path's and the call tracker's, each named here field by field so
//! that renaming a counter inside the pipeline cannot rename it on the wire.

use std::collections::BTreeMap;

use serde::Serialize;

/// Packets the capture files themselves say were lost before they were written (by the
/// capturing tool, the OS or the capture card): not network loss, not teledge's; the calls
/// and streams they belonged to are measured without them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CaptureDrops {
    /// pcapng Interface Statistics Blocks (`isb_ifdrop` + `isb_osdrop` of each interface's
    /// last block; dumpcap writes the kernel's drops there).
    pub interface_statistics: u64,
    /// pcapng Enhanced Packet Blocks' `epb_dropcount`.
    pub packet_drop_counts: u64,
    /// ERF records' loss counters (`lctr`).
    pub erf_loss_counters: u64,
    /// snoop files' cumulative drop counts (each file's highest).
    pub snoop_cumulative_drops: u64,
}

impl CaptureDrops {
    /// All of them (they come from different formats, so they do not overlap in one file).
    pub fn total(&self) -> u64 {
        self.interface_statistics
            .saturating_add(self.packet_drop_counts)
            .saturating_add(self.erf_loss_counters)
            .saturating_add(self.snoop_cumulative_drops)
    }
}

/// Counters of the decode path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DecodeCounters {
    pub frames: u64,
    pub bytes: u64,
    /// Frames in which a decode problem was found (every kind in `errors`).
    pub frames_failed: u64,
    /// Problems by kind (`link`, `ip`, `udp`, `tcp`, `sctp`, `gre`, `tunnel`, `depth`, `hep`,
    /// `sip`, `tcp-resync`, `sip-oversized`, `websocket`), every one counted.
    pub errors: BTreeMap<String, u64>,
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
    /// HEP frames of other types than SIP.
    pub hep_other: u64,
    /// Stream bytes thrown away to resynchronise, or in over-long messages.
    pub stream_bytes_discarded: u64,
    /// IP packets (not fragments) cut by the snapshot length inside their payload.
    pub snaplen_cut: u64,
    /// RTP and RTCP relayed inside TURN over TCP: counted, not measured.
    pub turn_tcp_relayed: u64,
    /// SCTP packets (IP protocol 132).
    pub sctp_packets: u64,
    /// DATA chunks in them.
    pub sctp_data_chunks: u64,
    pub fragments: FragmentCounters,
    pub tcp: TcpCounters,
    /// Reassembly of fragmented SCTP user messages.
    pub sctp: SctpCounters,
    pub memory: MemoryCounters,
    /// The first problems, with frame numbers.
    pub problems: Vec<DecodeProblem>,
}

impl DecodeCounters {
    /// SIP messages decoded over every transport.
    pub fn sip_messages(&self) -> u64 {
        self.sip_messages_udp
            + self.sip_messages_tcp
            + self.sip_messages_ws
            + self.sip_messages_sctp
            + self.sip_messages_hep
    }
}

/// A decode problem with the frame it was found in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecodeProblem {
    pub frame: u64,
    pub kind: String,
    pub detail: String,
}

/// IP fragment reassembly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FragmentCounters {
    pub fragments: u64,
    pub reassembled: u64,
    pub timed_out: u64,
    /// Dropped because the pool was full (datagram count or bytes).
    pub evicted: u64,
    pub overlap_conflicts: u64,
    /// Fragments with impossible offsets or lengths.
    pub malformed: u64,
    /// Size of the largest datagram payload reassembled.
    pub largest_reassembled: u64,
    /// Datagrams not reassembled because a fragment was cut by the snapshot length.
    pub snaplen_cut: u64,
}

/// TCP stream reassembly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounters {
    pub segments: u64,
    pub retransmitted: u64,
    pub out_of_order: u64,
    /// Holes skipped because they were not filled in time or the window overflowed.
    pub gaps: u64,
    /// Directions dropped because the table was full.
    pub flows_evicted: u64,
    /// Directions dropped because the memory budget was reached.
    pub flows_evicted_memory: u64,
    /// Directions dropped after the stall timeout, or half-open.
    pub flows_stalled: u64,
    /// Directions forgotten after the idle timeout (holding nothing).
    pub flows_expired: u64,
    /// Bytes thrown away with dropped directions.
    pub bytes_dropped: u64,
}

/// SCTP user message reassembly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SctpCounters {
    pub fragments: u64,
    pub reassembled: u64,
    pub duplicates: u64,
    pub timed_out: u64,
    pub evicted: u64,
    pub oversized: u64,
}

/// Memory held by reassembly against its budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryCounters {
    pub budget_bytes: u64,
    /// Bytes held after the last frame.
    pub held_bytes: u64,
    /// Most bytes held after any frame.
    pub peak_bytes: u64,
}

/// Counters of the media path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
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
    /// RTCP of a call beyond its cap, not kept.
    pub rtcp_dropped_at_capacity: u64,
    pub streams: u64,
    /// Most streams measured at the same time.
    pub peak_active_streams: u64,
    pub orphan_streams: u64,
    /// Datagrams that look like neither RTP nor RTCP.
    pub other_datagrams: u64,
    /// RTP-looking packets that never formed a stream.
    pub probation_discarded: u64,
    pub streams_dropped_at_capacity: u64,
    pub endpoints_dropped_at_capacity: u64,
    /// New media endpoints turned away at the learnt state's byte bound.
    pub endpoints_dropped_at_byte_bound: u64,
    /// RTCP packets not kept with their call: the learnt state held half its byte bound.
    pub rtcp_dropped_at_byte_bound: u64,
    /// Most bytes the media state learnt from SDP and RTCP held (endpoints, their lists,
    /// codec lists, RTCP kept with calls), as the allocator holds them.
    pub peak_held_bytes: u64,
    /// RTP packets of a call that already ended: counted, not measured.
    pub rtp_after_call_end: u64,
    /// RTCP packets of a call that already ended.
    pub rtcp_after_call_end: u64,
    /// Ended calls' endpoints forgotten before their linger passed.
    pub ended_endpoints_forgotten: u64,
    /// Orphan streams beyond the per-minute budget, summed up in a summary record.
    pub orphan_streams_summarised: u64,
    /// Streams at a call's media endpoints beyond the per-call cap, measured as orphans.
    pub streams_beyond_call_cap: u64,
    /// Orphan streams closed early, and reported, to make room in a full stream table for a
    /// stream a call's SDP announced.
    pub orphans_closed_for_calls: u64,
    /// A call's oldest media endpoints forgotten beyond the per-call cap (32).
    pub call_endpoints_forgotten: u64,
    /// Of those, endpoints a stream of the call still ran through: kept known (and routed,
    /// when sharded) until the stream closed, so it stayed measured in its call.
    pub endpoints_kept_for_streams: u64,
    /// Streams of one SSRC beyond the SSRC index's 8: measured, not linked to a call by it.
    pub streams_not_indexed_by_ssrc: u64,
    /// SDP media lines announcing RTP over TCP (RFC 4571): not measured.
    pub rtp_over_tcp_unmeasured: u64,
    /// Datagrams of RTP or RTCP relayed inside TURN (RFC 8656): counted, not measured.
    pub turn_relayed_unmeasured: u64,
    /// Streams reported with a per-stream counter saturated at 2^32 − 1 (their
    /// `metrics.saturated` names the figures that are lower bounds).
    pub streams_with_saturated_counters: u64,
}

/// Counters of the call tracker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallCounters {
    pub calls: u64,
    /// Calls opened by a message of a dialog whose INVITE was not seen (in `calls` too).
    pub started_before_capture: u64,
    /// REGISTER transactions.
    pub registrations: u64,
    /// Other out-of-dialog transactions (OPTIONS, MESSAGE, SUBSCRIBE, ...).
    pub other_transactions: u64,
    /// Messages of unknown dialogs that are not INVITE dialogs.
    pub orphan_messages: u64,
    /// Messages that would have opened a call mid-dialog beyond the per-minute budget.
    pub partial_calls_refused: u64,
    /// Messages of a dialog after its record was made: counted, not applied.
    pub late_messages: u64,
    /// Messages after a call's final failure while it waited for a new INVITE.
    pub ignored_after_final: u64,
    /// Ended dialogs forgotten before their linger passed.
    pub ended_forgotten: u64,
    /// Calls in setup (or joined mid-call) evicted at the table's bound.
    pub evicted_in_setup: u64,
    /// New calls refused at the bound because every call held was answered.
    pub dropped_at_capacity: u64,
    /// Text fields, tags and SDP lists cut to their caps.
    pub fields_truncated: u64,
    /// HEP RTCP reports (type 5) attached to a tracked call.
    pub hep_rtcp_attached: u64,
    /// HEP RTCP reports whose correlation id names no tracked call.
    pub hep_rtcp_unmatched: u64,
    /// HEP RTCP reports for a call whose record was already made.
    pub hep_rtcp_after_end: u64,
    /// HEP RTCP entries not kept beyond the per-call cap.
    pub hep_rtcp_dropped: u64,
    /// Records made before their grace passed because too many ended calls were waiting.
    pub records_grace_cut_short: u64,
    /// The same because the records waiting held their byte bound (16 MiB).
    pub records_grace_cut_short_bytes: u64,
    /// Call records made with a counter saturated at 2^32 − 1 (named in their `saturated`).
    pub calls_with_saturated_counters: u64,
}
