//! Per-stream RTP analysis, conformant with Wireshark's RTP stream analysis
//! (`tshark -z rtp,streams`), plus what Wireshark does not do: duplicates and reordering
//! told apart, a loss-burst histogram and fixed jitter-buffer emulation.
//!
//! Wireshark's rules, reproduced here because conformance depends on their details:
//! - time is in milliseconds; the first packet only initialises the state;
//! - a packet whose (extended) RTP timestamp is older than the last in-sequence one is "wrong
//!   timestamp" and does not move the reference time;
//! - jitter follows RFC 3550 §6.4.1 in ms: `J = (15·J + |arrival − expected|) / 16`, where
//!   `expected = previous arrival + Δtimestamp / (clock/1000)`, only with a known clock rate;
//!   telephone-event packets and unknown dynamic payload types have none;
//! - min/max/mean delta and jitter only count regular packets: not the first, not marked, not
//!   comfort noise (PT 13/19), not right after comfort noise, not wrong-timestamp; the means
//!   divide by the packets seen before this one (Wireshark's running-mean formula);
//! - expected = last sequence + 65536·cycles − first sequence + 1; lost = expected − received
//!   (duplicates make it negative, as TShark shows; [`StreamReport::lost`] is the sane count).
//!
//! Memory per stream is constant: no per-packet history is kept.

use serde::Serialize;

use crate::media::packet::RtpPacket;
use crate::time::Timestamp;

/// How to interpret a payload type of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadInfo {
    /// RTP clock rate; `None` when unknown (no jitter can be computed).
    pub clock_rate: Option<u32>,
    /// RFC 4733 telephone-event: events, not voice.
    pub is_event: bool,
    /// Comfort noise (RFC 3389).
    pub is_comfort_noise: bool,
}

/// Fixed jitter-buffer sizes emulated for every stream, in ms.
pub const JITTER_BUFFERS_MS: [f64; 2] = [50.0, 200.0];
/// Loss-burst histogram buckets: runs of 1..=9 lost packets, and 10 or more.
pub const BURST_BUCKETS: usize = 10;
/// DTMF events kept per stream.
const MAX_EVENTS: usize = 64;
/// Payload types remembered per stream.
const MAX_PAYLOAD_TYPES: usize = 8;
/// Sequence numbers remembered below the highest, to tell duplicates from late packets.
const SEQ_WINDOW: u64 = 128;

/// A DTMF digit carried as an RFC 4733 event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DtmfEvent {
    pub digit: char,
    pub time: Timestamp,
    /// Event duration from the end packet (or the last seen), in ms when the clock is known.
    pub duration_ms: Option<f64>,
}

/// Jitter-buffer emulation results.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct JitterBufferReport {
    pub size_ms: f64,
    /// Packets that arrived too late for this buffer.
    pub discarded: u64,
    /// Lost plus discarded, over expected, in percent.
    pub effective_loss_percent: f64,
    /// Mean length of runs of lost-or-discarded packets, over what random loss would give
    /// (G.107 BurstR); 1 for random loss.
    pub burst_ratio: f64,
}

/// The analysis of one stream, as reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamReport {
    pub start_time: Timestamp,
    pub end_time: Timestamp,
    pub duration_s: f64,
    pub packets: u64,
    pub expected: i64,
    /// Packets never received (expected − distinct received), never negative.
    pub lost: i64,
    pub lost_percent: f64,
    /// Expected − received, as TShark shows it (negative with duplicates).
    pub lost_wireshark: i64,
    pub sequence_errors: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub min_delta_ms: Option<f64>,
    pub mean_delta_ms: Option<f64>,
    pub max_delta_ms: Option<f64>,
    pub min_jitter_ms: Option<f64>,
    pub mean_jitter_ms: Option<f64>,
    pub max_jitter_ms: Option<f64>,
    pub max_skew_ms: Option<f64>,
    pub payload_types: Vec<u8>,
    /// Runs of 1..=9 and 10+ consecutive lost packets.
    pub loss_bursts: [u64; BURST_BUCKETS],
    pub jitter_buffers: Vec<JitterBufferReport>,
    pub comfort_noise_packets: u64,
    pub dtmf: Vec<DtmfEvent>,
}

#[derive(Debug, Clone, Copy, Default)]
struct JitterBuffer {
    discarded: u64,
    /// Runs of lost-or-discarded packets, in arrival order.
    runs: u64,
    in_run: bool,
}

/// Running analysis of one stream.
#[derive(Debug, Clone)]
pub struct StreamAnalyzer {
    first_time: Timestamp,
    last_time: Timestamp,
    packets: u64,
    // --- Wireshark's state (tap-rtp-analysis) ---
    start_seq: u16,
    stop_seq: u16,
    seq_num: u16,
    seq_cycles: u32,
    under: bool,
    /// Arrival (ms since the first packet) of the last in-time-sequence packet.
    time_ms: f64,
    /// Extended timestamp of the last in-time-sequence packet.
    seq_timestamp: i64,
    last_nominal: f64,
    last_arrival: f64,
    delta: f64,
    min_delta: Option<f64>,
    max_delta: f64,
    mean_delta: f64,
    jitter: f64,
    min_jitter: Option<f64>,
    max_jitter: f64,
    mean_jitter: f64,
    max_skew: f64,
    any_clock: bool,
    pt: u8,
    sequence_errors: u64,
    // --- RTP timestamp unwrapping ---
    last_raw_ts: u32,
    ext_ts: i64,
    // --- duplicates, reordering, bursts ---
    highest: u64,
    seen: u128,
    duplicates: u64,
    out_of_order: u64,
    loss_bursts: [u64; BURST_BUCKETS],
    lost_in_gaps: u64,
    // --- jitter buffers: minimum transit (arrival − media time, ms) as the reference ---
    min_transit: Option<f64>,
    buffers: [JitterBuffer; 2],
    payload_types: Vec<u8>,
    comfort_noise: u64,
    dtmf: Vec<DtmfEvent>,
    last_event_ts: Option<u32>,
}

impl StreamAnalyzer {
    /// Starts the analysis with the stream's first packet.
    pub fn new(time: Timestamp, packet: &RtpPacket, info: PayloadInfo) -> Self {
        let mut s = StreamAnalyzer {
            first_time: time,
            last_time: time,
            packets: 1,
            start_seq: packet.sequence,
            stop_seq: packet.sequence,
            seq_num: packet.sequence,
            seq_cycles: 0,
            under: false,
            time_ms: 0.0,
            seq_timestamp: i64::from(packet.timestamp),
            last_nominal: 0.0,
            last_arrival: 0.0,
            delta: 0.0,
            min_delta: None,
            max_delta: 0.0,
            mean_delta: 0.0,
            jitter: 0.0,
            min_jitter: None,
            max_jitter: 0.0,
            mean_jitter: 0.0,
            max_skew: 0.0,
            any_clock: false,
            pt: packet.payload_type,
            sequence_errors: 0,
            last_raw_ts: packet.timestamp,
            ext_ts: i64::from(packet.timestamp),
            highest: u64::from(packet.sequence),
            seen: 1,
            duplicates: 0,
            out_of_order: 0,
            loss_bursts: [0; BURST_BUCKETS],
            lost_in_gaps: 0,
            min_transit: None,
            buffers: [JitterBuffer::default(); 2],
            payload_types: vec![packet.payload_type],
            comfort_noise: u64::from(info.is_comfort_noise),
            dtmf: Vec::new(),
            last_event_ts: None,
        };
        s.track_event(time, packet, info);
        s.track_jitter_buffers(0.0, info, false);
        s
    }

    /// Analyses the next packet of the stream (in capture order).
    pub fn packet(&mut self, time: Timestamp, packet: &RtpPacket, info: PayloadInfo) {
        self.packets += 1;
        self.last_time = self.last_time.max(time);
        let now_ms = time.seconds_since(self.first_time) * 1000.0;

        // Extended RTP timestamp: follow 32-bit wraps in either direction.
        let step = i64::from(packet.timestamp.wrapping_sub(self.last_raw_ts) as i32);
        self.ext_ts += step;
        self.last_raw_ts = packet.timestamp;
        let ext_ts = self.ext_ts;

        let in_time_sequence = self.seq_timestamp <= ext_ts;
        let wrong_timestamp = !in_time_sequence;
        let seq = packet.sequence;

        // Sequence cycles and errors, Wireshark's way.
        // A sequence number below the first one (or 0 right after 65535) starts a new cycle.
        let wrapped = seq < self.start_seq || (seq == 0 && self.stop_seq == 65535);
        if wrapped && in_time_sequence && !self.under {
            self.seq_cycles += 1;
            self.under = true;
        } else if seq > self.start_seq && in_time_sequence && self.under {
            self.under = false;
        }
        let in_order =
            u32::from(self.seq_num) + 1 == u32::from(seq) || (self.seq_num == 65535 && seq == 0);
        if in_time_sequence && in_order {
            self.seq_num = seq;
        } else if in_time_sequence
            && (u32::from(self.seq_num) + 1 < u32::from(seq)
                || self.seq_num.wrapping_sub(seq) > 0xFF00 && self.seq_num > seq)
        {
            self.seq_num = seq;
            self.sequence_errors += 1;
        } else if u32::from(self.seq_num) + 1 > u32::from(seq) {
            self.sequence_errors += 1;
        }

        let is_cn = info.is_comfort_noise;
        let follows_cn = self.pt == 13 || self.pt == 19;
        self.pt = packet.payload_type;
        if is_cn {
            self.comfort_noise += 1;
        }
        let clock = if info.is_event { None } else { info.clock_rate };

        let mut current_jitter = 0.0;
        let nominal_diff = (ext_ts - self.seq_timestamp) as f64;
        match clock {
            Some(rate) if rate > 0 => {
                self.any_clock = true;
                let nominal_diff = nominal_diff / (f64::from(rate) / 1000.0);
                let expected = self.time_ms + nominal_diff;
                let diff = (now_ms - expected).abs();
                current_jitter = (15.0 * self.jitter + diff) / 16.0;
                self.delta = now_ms - self.time_ms;
                self.jitter = current_jitter;
                let nominal = self.last_nominal + nominal_diff;
                let arrival = self.last_arrival + self.delta;
                let skew = nominal - arrival;
                if skew.abs() > self.max_skew.abs() {
                    self.max_skew = skew;
                }
                self.last_nominal = nominal;
                self.last_arrival = arrival;
            }
            _ => self.delta = now_ms - self.time_ms,
        }

        let regular = !packet.marker && !is_cn && !wrong_timestamp && !follows_cn;
        if regular {
            // Wireshark divides by the packets before this one.
            let n = (self.packets - 1) as f64;
            if self.delta > self.max_delta {
                self.max_delta = self.delta;
            }
            self.min_delta = Some(self.min_delta.map_or(self.delta, |m| m.min(self.delta)));
            self.mean_delta = (self.mean_delta * (n - 1.0) + self.delta) / n;
            if clock.is_some_and(|r| r > 0) {
                if self.jitter > self.max_jitter {
                    self.max_jitter = self.jitter;
                }
                self.mean_jitter = (self.mean_jitter * (n - 1.0) + current_jitter) / n;
                self.min_jitter = Some(self.min_jitter.map_or(self.jitter, |m| m.min(self.jitter)));
            }
        }
        if in_time_sequence {
            self.time_ms = now_ms;
            self.seq_timestamp = ext_ts;
        }
        self.stop_seq = seq;

        if self.payload_types.len() < MAX_PAYLOAD_TYPES
            && !self.payload_types.contains(&packet.payload_type)
        {
            self.payload_types.push(packet.payload_type);
        }
        let gap = self.track_sequence(seq);
        self.track_event(time, packet, info);
        self.track_jitter_buffers(now_ms, info, gap);
    }

    /// Duplicates, reordering and loss bursts from the extended sequence number. Returns true
    /// when this packet revealed a gap (lost packets before it).
    fn track_sequence(&mut self, seq: u16) -> bool {
        let highest16 = self.highest as u16;
        let forward = seq.wrapping_sub(highest16);
        if forward != 0 && forward < 0x8000 {
            let ext = self.highest + u64::from(forward);
            let jump = ext - self.highest;
            self.seen = if jump >= 128 { 0 } else { self.seen << jump };
            self.seen |= 1;
            self.highest = ext;
            if jump > 1 {
                let lost = jump - 1;
                self.lost_in_gaps += lost;
                let bucket = (lost as usize).min(BURST_BUCKETS) - 1;
                self.loss_bursts[bucket] += 1;
                return true;
            }
            return false;
        }
        let back = u64::from(highest16.wrapping_sub(seq));
        if back < SEQ_WINDOW {
            let bit = 1u128 << back;
            if self.seen & bit != 0 {
                self.duplicates += 1;
            } else {
                self.seen |= bit;
                self.out_of_order += 1;
            }
        } else {
            self.out_of_order += 1;
        }
        false
    }

    fn track_event(&mut self, time: Timestamp, packet: &RtpPacket, info: PayloadInfo) {
        if !info.is_event || packet.payload_len < 4 {
            return;
        }
        // RFC 4733 §2.3: event, E|R|volume, duration; one event per RTP timestamp.
        let [event, _end_and_volume, d0, d1] = packet.payload_head;
        let duration = u16::from_be_bytes([d0, d1]);
        let duration_ms = info
            .clock_rate
            .filter(|r| *r > 0)
            .map(|r| f64::from(duration) * 1000.0 / f64::from(r));
        if self.last_event_ts == Some(packet.timestamp) {
            if let Some(last) = self.dtmf.last_mut() {
                last.duration_ms = duration_ms;
            }
            return;
        }
        let digit = match event {
            0..=9 => char::from(b'0' + event),
            10 => '*',
            11 => '#',
            12..=15 => char::from(b'A' + event - 12),
            16 => '!', // flash
            _ => return,
        };
        self.last_event_ts = Some(packet.timestamp);
        if self.dtmf.len() < MAX_EVENTS {
            self.dtmf.push(DtmfEvent {
                digit,
                time,
                duration_ms,
            });
        }
    }

    fn track_jitter_buffers(&mut self, now_ms: f64, info: PayloadInfo, gap: bool) {
        let Some(rate) = info.clock_rate.filter(|r| *r > 0 && !info.is_event) else {
            return;
        };
        let media_ms = self.ext_ts as f64 * 1000.0 / f64::from(rate);
        let transit = now_ms - media_ms;
        let base = *self.min_transit.get_or_insert(transit);
        if transit < base {
            self.min_transit = Some(transit);
        }
        let late_by = transit - self.min_transit.unwrap_or(transit);
        for (buffer, size) in self.buffers.iter_mut().zip(JITTER_BUFFERS_MS) {
            let discarded = late_by > size;
            if discarded {
                buffer.discarded += 1;
            }
            // A run of lost-or-discarded packets: the gap before this packet and this packet,
            // if it is discarded, belong to one run.
            if gap || discarded {
                if !buffer.in_run {
                    buffer.runs += 1;
                }
                buffer.in_run = discarded;
            } else {
                buffer.in_run = false;
            }
        }
    }

    /// The report as it stands.
    pub fn report(&self) -> StreamReport {
        let expected = i64::from(self.stop_seq) + i64::from(self.seq_cycles) * 65_536
            - i64::from(self.start_seq)
            + 1;
        let received = self.packets as i64;
        let distinct = received - self.duplicates as i64;
        let lost = (expected - distinct).max(0);
        let percent = |n: i64| {
            if expected > 0 {
                100.0 * n as f64 / expected as f64
            } else {
                0.0
            }
        };
        let jitter_buffers = self
            .buffers
            .iter()
            .zip(JITTER_BUFFERS_MS)
            .map(|(b, size)| {
                let bad = lost + b.discarded as i64;
                let ppl = percent(bad);
                let events = self.lost_in_gaps + b.discarded;
                let runs = b.runs.max(1);
                let mean_run = events as f64 / runs as f64;
                let burst_ratio = if events == 0 {
                    1.0
                } else {
                    (mean_run * (1.0 - ppl / 100.0)).max(1.0)
                };
                JitterBufferReport {
                    size_ms: size,
                    discarded: b.discarded,
                    effective_loss_percent: round3(ppl),
                    burst_ratio: round3(burst_ratio),
                }
            })
            .collect();
        let has_deltas = self.min_delta.is_some();
        StreamReport {
            start_time: self.first_time,
            end_time: self.last_time,
            duration_s: round3(self.last_time.seconds_since(self.first_time)),
            packets: self.packets,
            expected,
            lost,
            lost_percent: round3(percent(lost)),
            lost_wireshark: expected - received,
            sequence_errors: self.sequence_errors,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            min_delta_ms: self.min_delta.map(round6),
            mean_delta_ms: has_deltas.then_some(round6(self.mean_delta)),
            max_delta_ms: has_deltas.then_some(round6(self.max_delta)),
            min_jitter_ms: self.min_jitter.map(round6),
            mean_jitter_ms: self.min_jitter.map(|_| round6(self.mean_jitter)),
            max_jitter_ms: self.min_jitter.map(|_| round6(self.max_jitter)),
            max_skew_ms: self.any_clock.then_some(round6(self.max_skew)),
            payload_types: self.payload_types.clone(),
            loss_bursts: self.loss_bursts,
            jitter_buffers,
            comfort_noise_packets: self.comfort_noise,
            dtmf: self.dtmf.clone(),
        }
    }

    pub fn first_time(&self) -> Timestamp {
        self.first_time
    }

    pub fn last_time(&self) -> Timestamp {
        self.last_time
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCMA: PayloadInfo = PayloadInfo {
        clock_rate: Some(8000),
        is_event: false,
        is_comfort_noise: false,
    };

    fn packet(seq: u16, ts: u32) -> RtpPacket {
        RtpPacket {
            marker: false,
            payload_type: 8,
            sequence: seq,
            timestamp: ts,
            ssrc: 1,
            payload_len: 160,
            payload_head: [0; 4],
        }
    }

    fn at(ms: f64) -> Timestamp {
        Timestamp::from_nanos((ms * 1e6) as i64)
    }

    #[test]
    fn late_packet_is_discarded_by_the_small_buffer_only() {
        // 20 ms packets; packet 10 arrives 120 ms late.
        let mut s = StreamAnalyzer::new(at(0.0), &packet(0, 0), PCMA);
        for i in 1..50u16 {
            let late = if i == 10 { 120.0 } else { 0.0 };
            s.packet(
                at(f64::from(i) * 20.0 + late),
                &packet(i, u32::from(i) * 160),
                PCMA,
            );
        }
        let r = s.report();
        assert_eq!(r.lost, 0);
        assert_eq!(r.jitter_buffers[0].size_ms, 50.0);
        assert_eq!(r.jitter_buffers[0].discarded, 1);
        assert_eq!(r.jitter_buffers[1].discarded, 0);
        assert!((r.jitter_buffers[0].effective_loss_percent - 2.0).abs() < 1e-9);
    }

    #[test]
    fn gaps_fill_the_burst_histogram_and_raise_burst_ratio() {
        // 100 packets expected; two bursts: 1 lost, then 12 lost.
        let mut s = StreamAnalyzer::new(at(0.0), &packet(0, 0), PCMA);
        for i in 1..100u16 {
            if i == 10 || (50..62).contains(&i) {
                continue;
            }
            s.packet(
                at(f64::from(i) * 20.0),
                &packet(i, u32::from(i) * 160),
                PCMA,
            );
        }
        let r = s.report();
        assert_eq!(r.expected, 100);
        assert_eq!(r.lost, 13);
        assert_eq!(r.loss_bursts[0], 1);
        assert_eq!(r.loss_bursts[BURST_BUCKETS - 1], 1);
        // Mean run 6.5 packets at 13 % loss: BurstR = 6.5 × 0.87.
        let b = r.jitter_buffers[1].burst_ratio;
        assert!((b - 6.5 * 0.87).abs() < 1e-3, "{b}");
    }

    #[test]
    fn duplicates_and_reordering_are_told_apart() {
        let mut s = StreamAnalyzer::new(at(0.0), &packet(0, 0), PCMA);
        let order = [1u16, 3, 2, 3, 4];
        for (n, seq) in order.iter().enumerate() {
            s.packet(
                at(n as f64 * 20.0 + 20.0),
                &packet(*seq, u32::from(*seq) * 160),
                PCMA,
            );
        }
        let r = s.report();
        assert_eq!(r.packets, 6);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.out_of_order, 1);
        assert_eq!(r.lost, 0);
    }
}
