//! Media quality in records: per stream, per direction of a call, and orphan streams.

use serde::Serialize;

use crate::time::Timestamp;

/// Schema id of an orphan stream record.
pub const STREAM_SCHEMA: &str = "teledge.stream/1";

/// What the receiver of a stream said about it in RTCP, next to what the tap measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RtcpReported {
    pub reports: u32,
    /// Fraction lost in the last report, in percent.
    pub last_fraction_lost_percent: Option<f64>,
    pub last_cumulative_lost: Option<i32>,
    pub max_jitter_ms: Option<f64>,
    pub last_jitter_ms: Option<f64>,
    /// Round trips (ms) from capture times: report time − time of the SR its LSR names −
    /// DLSR (see [`crate::correlation::media`]); only samples in the plausible range.
    pub round_trip_samples: u32,
    /// Samples outside the plausible range (negative or over 5 s), left out.
    pub round_trip_rejected: u32,
    pub min_round_trip_ms: Option<f64>,
    pub mean_round_trip_ms: Option<f64>,
    pub max_round_trip_ms: Option<f64>,
    pub last_round_trip_ms: Option<f64>,
    /// RFC 3611 VoIP metrics of the last XR about this stream.
    pub voip_metrics: Option<VoipMetrics>,
}

/// One RTP stream, measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamQuality {
    pub src: String,
    pub dst: String,
    pub ssrc: String,
    /// The voice codec (first payload type that is neither comfort noise nor an event).
    pub codec: Option<String>,
    /// Names of every payload type seen.
    pub codecs: Vec<String>,
    pub metrics: StreamMetrics,
    pub score: Option<Score>,
    /// Why there is no score.
    pub not_scored: Option<NotScored>,
    pub rtcp: Option<RtcpReported>,
}

/// Media of a call, by direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MediaQuality {
    pub caller_to_callee: Vec<StreamQuality>,
    pub callee_to_caller: Vec<StreamQuality>,
    /// Streams of the call whose direction the SDP did not tell.
    pub unknown_direction: Vec<StreamQuality>,
    /// The worse direction's score: what a supervisor sorts by. `None` without a score.
    pub verdict: Option<Verdict>,
}

/// The call-level quality verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub mos: f64,
    pub r_factor: f64,
    /// `caller_to_callee`, `callee_to_caller` or `unknown`: where the worst stream ran.
    pub worst_direction: &'static str,
}

impl MediaQuality {
    /// Sets the verdict from the lowest-scoring stream (longest streams first on ties).
    pub fn decide(&mut self) {
        let all = [
            ("caller_to_callee", &self.caller_to_callee),
            ("callee_to_caller", &self.callee_to_caller),
            ("unknown", &self.unknown_direction),
        ];
        self.verdict = all
            .iter()
            .flat_map(|(dir, streams)| streams.iter().map(move |s| (*dir, s)))
            .filter_map(|(dir, s)| s.score.as_ref().map(|score| (dir, score)))
            .min_by(|a, b| a.1.r_factor.total_cmp(&b.1.r_factor))
            .map(|(dir, score)| Verdict {
                mos: score.mos,
                r_factor: score.r_factor,
                worst_direction: dir,
            });
    }

    pub fn streams(&self) -> usize {
        self.caller_to_callee.len() + self.callee_to_caller.len() + self.unknown_direction.len()
    }
}

/// An RTP stream that matched no call: measured all the same, never dropped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamRecord {
    pub schema: &'static str,
    pub record_id: String,
    #[serde(flatten)]
    pub stream: StreamQuality,
}

/// Schema id of an orphan streams summary.
pub const ORPHAN_SUMMARY_SCHEMA: &str = "teledge.orphan_streams/1";

/// Orphan streams of one minute beyond the per-minute budget of individual records, summed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrphanStreamsSummary {
    pub schema: &'static str,
    pub record_id: String,
    /// End time of the first stream summed (the minute starts with the first orphan record).
    pub interval_start: Timestamp,
    /// End time of the last stream summed.
    pub interval_end: Timestamp,
    pub streams: u64,
    pub packets: u64,
    /// Packets lost (never negative per stream).
    pub lost: u64,
    /// Streams and packets by source IP address, the first [`MAX_SUMMARY_SOURCES`] seen.
    pub by_source: Vec<OrphanSource>,
    /// Streams from sources beyond those.
    pub other_sources: u64,
}

/// Orphan streams from one source address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrphanSource {
    pub src_ip: String,
    pub streams: u64,
    pub packets: u64,
}

/// Most sources named in a summary.
pub const MAX_SUMMARY_SOURCES: usize = 16;

impl OrphanStreamsSummary {
    /// Adds one orphan stream.
    pub fn add(&mut self, record: &StreamRecord) {
        let m = &record.stream.metrics;
        self.streams += 1;
        self.packets += m.packets;
        self.lost += m.lost.max(0) as u64;
        self.interval_end = self.interval_end.max(m.end_time);
        let ip = record
            .stream
            .src
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| record.stream.src.clone());
        if let Some(source) = self.by_source.iter_mut().find(|s| s.src_ip == ip) {
            source.streams += 1;
            source.packets += m.packets;
        } else if self.by_source.len() < MAX_SUMMARY_SOURCES {
            self.by_source.push(OrphanSource {
                src_ip: ip,
                streams: 1,
                packets: m.packets,
            });
        } else {
            self.other_sources += 1;
        }
    }
}

/// What the tap measured of one RTP stream (the rules are in [`crate::media::stream`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamMetrics {
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub duration_s: f64,
    pub packets: u64,
    /// Highest extended sequence number − first + 1 (RFC 3550 A.3).
    pub expected: i64,
    /// Packets never received, never negative.
    pub lost: i64,
    pub lost_percent: f64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Voice packets behind the jitter reference, left out of the jitter.
    pub wrong_timestamp: u64,
    /// Sustained RTP timestamp jumps taken as a new reference.
    pub timestamp_jumps: u64,
    /// Restarts of the sender's sequence numbers (RFC 3550 A.1).
    pub sequence_resets: u64,
    pub min_delta_ms: Option<f64>,
    pub mean_delta_ms: Option<f64>,
    pub max_delta_ms: Option<f64>,
    pub min_jitter_ms: Option<f64>,
    pub mean_jitter_ms: Option<f64>,
    pub max_jitter_ms: Option<f64>,
    pub max_skew_ms: Option<f64>,
    pub payload_types: Vec<u8>,
    /// Runs of 1, 2, ... 9 and 10 or more consecutive lost packets.
    pub loss_bursts: Vec<u64>,
    pub jitter_buffers: Vec<JitterBuffer>,
    pub comfort_noise_packets: u64,
    pub dtmf: Vec<Dtmf>,
    pub wireshark: WiresharkFigures,
    /// The fields above whose per-stream counter saturated at 2^32 − 1 (and those made from
    /// it): each is a lower bound, not a count ([`crate::media::stream`]'s `Count`). Empty
    /// for nearly every stream.
    pub saturated: Vec<&'static str>,
}

/// One emulated fixed playout buffer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct JitterBuffer {
    pub size_ms: f64,
    /// Packets that arrived too late for this buffer.
    pub discarded: u64,
    /// Times the buffer re-synchronised after a sustained shift of the delay.
    pub resyncs: u64,
    /// Lost plus discarded, over expected, in percent.
    pub effective_loss_percent: f64,
    /// G.107 BurstR; 1 for random loss.
    pub burst_ratio: f64,
}

/// A DTMF digit carried as an RFC 4733 event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Dtmf {
    pub digit: char,
    pub time: Timestamp,
    pub duration_ms: Option<f64>,
}

/// What `tshark -z rtp,streams` of `version` prints for the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WiresharkFigures {
    pub version: &'static str,
    pub expected: i64,
    /// Expected − received (negative with duplicates).
    pub lost: i64,
    pub sequence_errors: u64,
    pub wrong_timestamp: u64,
    pub min_delta_ms: Option<f64>,
    pub mean_delta_ms: Option<f64>,
    pub max_delta_ms: Option<f64>,
    pub min_jitter_ms: Option<f64>,
    pub mean_jitter_ms: Option<f64>,
    pub max_jitter_ms: Option<f64>,
    pub max_skew_ms: Option<f64>,
}

/// The G.107 E-model's inputs and result (see [`crate::media::emodel`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub model: &'static str,
    pub codec: String,
    pub ie: f64,
    pub bpl: f64,
    pub packet_loss_percent: f64,
    pub burst_ratio: f64,
    pub one_way_delay_ms: f64,
    pub delay_source: DelaySource,
    pub jitter_buffer_ms: f64,
    pub r_factor: f64,
    pub mos: f64,
}

/// Where the delay fed to the E-model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelaySource {
    RtcpCapture,
    RtcpXr,
    AssumedDefault,
}

/// Why a stream has no score: `{"reason": ..., "codec": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason", content = "codec")]
pub enum NotScored {
    Wideband(String),
    Video(String),
    UnknownCodec(String),
    NoData,
}

/// RFC 3611 §4.7 VoIP metrics, as the endpoint computed them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VoipMetrics {
    pub source_ssrc: u32,
    /// Loss and discard rates, 0..1.
    pub loss_rate: f64,
    pub discard_rate: f64,
    pub round_trip_delay_ms: u16,
    pub end_system_delay_ms: u16,
    /// `None` where the endpoint said "unavailable".
    pub r_factor: Option<u8>,
    pub mos_lq: Option<f64>,
    pub mos_cq: Option<f64>,
}
