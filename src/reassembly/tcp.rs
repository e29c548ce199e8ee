//! TCP stream reassembly: segments in capture order in, each direction's byte stream out.
//!
//! Handles what a passive tap sees on SIP trunks: retransmissions (dropped, counted),
//! overlapping retransmissions that carry some new bytes (trimmed), out-of-order segments
//! (held until the hole fills, within a bounded window), and captures that start in the middle
//! of a connection (the stream starts at the first segment seen and is marked as starting
//! after a gap). A hole that is not filled within the window or the timeout is skipped: the
//! consumer is told there was a gap and must resynchronise. Sequence numbers are compared with
//! wrapping arithmetic, so streams crossing 2^32 work.
//!
//! Each direction carries an application state `A` (the SIP framer, in practice) that the
//! delivery callback receives with the bytes, so the caller keeps no second flow table.
//!
//! Memory: every byte a direction holds — out-of-order segments and what its consumer buffers
//! ([`StreamConsumer::held_bytes`]) — counts against one budget ([`TcpLimits::max_bytes`],
//! lowered by the caller with [`TcpReassembler::set_budget`] when it shares a budget with
//! other pools). After each segment the bytes held are within the budget: beyond it, the
//! directions holding bytes that were least recently active are dropped whole, counted in
//! [`TcpStats::flows_evicted_memory`] and [`TcpStats::bytes_dropped`]. A direction that holds
//! bytes and sees nothing for [`TcpLimits::stall_timeout`] (a message that never completes),
//! or that has carried no byte at all by then (a SYN never followed by data: a half-open
//! connection), is dropped the same way ([`TcpStats::flows_stalled`]); one that holds nothing
//! is forgotten after [`TcpLimits::idle_timeout`]. A dropped direction that speaks again
//! starts afresh after a gap. The table itself is bounded by [`TcpLimits::max_flows`] (each
//! entry costs about half a KiB beside what it holds).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::time::Timestamp;

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Bounds of the reassembler.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Directions tracked at once; the least recently active is dropped beyond it.
    pub max_flows: usize,
    /// Out-of-order bytes held per direction while waiting for a hole to fill.
    pub max_pending_bytes: usize,
    /// Bytes held across all directions (out-of-order segments and the consumers' buffers);
    /// beyond it, the least recently active directions holding bytes are dropped.
    pub max_bytes: usize,
    /// How long (capture time) a hole may stay open before it is skipped.
    pub hole_timeout: Duration,
    /// A direction holding bytes, or that never carried any, silent for this long is dropped
    /// (half-open connections, messages that never complete).
    pub stall_timeout: Duration,
    /// A direction silent for this long is forgotten.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_flows: 65_536,
            max_pending_bytes: 1024 * 1024,
            max_bytes: 64 * 1024 * 1024,
            hole_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Counters of the reassembler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    pub segments: u64,
    pub retransmitted: u64,
    pub out_of_order: u64,
    /// Holes skipped because they were not filled in time or the window overflowed.
    pub gaps: u64,
    /// Directions dropped because the table was full.
    pub flows_evicted: u64,
    /// Directions dropped, with what they held, because the memory budget was reached.
    pub flows_evicted_memory: u64,
    /// Directions dropped, with what they held, after holding bytes silently for the stall
    /// timeout, or after it without ever carrying a byte (half-open).
    pub flows_stalled: u64,
    /// Directions forgotten after the idle timeout (holding nothing).
    pub flows_expired: u64,
    /// Bytes thrown away with dropped directions (out-of-order segments and partial
    /// messages).
    pub bytes_dropped: u64,
}

/// The consumer of a direction's bytes. A consumer that has lost interest (the stream is not
/// SIP) gets nothing more, and nothing is held for it.
pub trait StreamConsumer: Default {
    fn wants_more(&self) -> bool {
        true
    }

    /// Bytes of memory the consumer holds (its buffers' capacity), for the budget.
    fn held_bytes(&self) -> usize {
        0
    }
}

impl StreamConsumer for String {
    fn held_bytes(&self) -> usize {
        self.capacity()
    }
}

/// A TCP segment, as the decoder sees it.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
    /// Payload bytes the capture's snapshot length cut off the end of this segment (0 for a
    /// whole one). The stream skips them at once, with no hole to wait for, and the delivery
    /// of the bytes before them says so ([`Delivery::cut`]): a cut, not a gap in the stream.
    pub cut: u32,
}

/// Bytes handed to the consumer.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub data: &'a [u8],
    /// Capture time of the segment that made these bytes available.
    pub time: Timestamp,
    /// True when bytes are missing before these (mid-stream start or a skipped hole).
    pub after_gap: bool,
    /// Bytes missing right after these because the capture's snapshot length cut the
    /// segment that carried them ([`Segment::cut`]), 0 when none; the stream goes on after
    /// them.
    pub cut: u32,
}

/// Bookkeeping cost of one held out-of-order segment beyond its bytes (its `Vec` and its
/// share of a B-tree node), so a flood of one-byte segments is accounted for what it costs.
const SEGMENT_OVERHEAD: usize = 64;

/// An out-of-order segment held until the hole before it fills.
#[derive(Debug, Default)]
struct Held {
    data: Vec<u8>,
    /// Bytes the snapshot length cut off its end ([`Segment::cut`]).
    cut: u32,
}

impl Held {
    /// Sequence space it covers, captured or not.
    fn extent(&self) -> usize {
        self.data.len() + self.cut as usize
    }
}

#[derive(Debug)]
struct Direction<A> {
    next_seq: u32,
    /// Out-of-order segments by sequence number.
    pending: BTreeMap<u32, Held>,
    pending_bytes: usize,
    /// When the current hole opened.
    hole_since: Option<Timestamp>,
    last_seen: Timestamp,
    /// The next delivery follows a gap.
    gap: bool,
    /// A segment with payload has been seen.
    carried: bool,
    /// Bytes of memory held (pending segments and the consumer's buffers), as accounted.
    held: usize,
    app: A,
}

impl<A: StreamConsumer> Direction<A> {
    fn measure(&self) -> usize {
        self.pending_bytes + self.pending.len() * SEGMENT_OVERHEAD + self.app.held_bytes()
    }
}

/// Reassembles every TCP direction seen.
#[derive(Debug)]
pub struct TcpReassembler<A> {
    limits: TcpLimits,
    flows: HashMap<FlowKey, Direction<A>>,
    /// Every direction by last activity, oldest first.
    by_activity: BTreeSet<(Timestamp, FlowKey)>,
    /// Directions holding bytes by last activity, oldest first: who is dropped first.
    holding: BTreeSet<(Timestamp, FlowKey)>,
    /// Directions that have carried no byte yet (after a SYN) by last activity.
    silent: BTreeSet<(Timestamp, FlowKey)>,
    /// Bytes held across all directions (sum of `Direction::held`).
    held: usize,
    /// The budget in force (at most `limits.max_bytes`).
    budget: usize,
    /// Most bytes held after a segment.
    peak: usize,
    stats: TcpStats,
}

/// Signed distance from `b` to `a` in sequence space (RFC 9293 §3.4 comparison).
fn seq_diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

/// The indexes the stall timeout sweeps.
#[derive(Debug, Clone, Copy)]
enum Index {
    Holding,
    Silent,
}

/// Why a direction was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// Closed (FIN, RST) or replaced by a new SYN.
    Closed,
    TableFull,
    Memory,
    Stalled,
    Idle,
}

impl<A: StreamConsumer> TcpReassembler<A> {
    pub fn new(limits: TcpLimits) -> Self {
        TcpReassembler {
            limits,
            flows: HashMap::new(),
            by_activity: BTreeSet::new(),
            holding: BTreeSet::new(),
            silent: BTreeSet::new(),
            held: 0,
            budget: limits.max_bytes,
            peak: 0,
            stats: TcpStats::default(),
        }
    }

    pub fn stats(&self) -> TcpStats {
        self.stats
    }

    /// Directions currently tracked.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Bytes held now (out-of-order segments and the consumers' buffers).
    pub fn bytes_held(&self) -> usize {
        self.held
    }

    /// Most bytes held after any segment so far.
    pub fn peak_bytes_held(&self) -> usize {
        self.peak
    }

    /// Sets the budget for the next segments (never above [`TcpLimits::max_bytes`]): the
    /// caller's share of a budget shared with other pools.
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes.min(self.limits.max_bytes);
    }

    /// Feeds one segment. `deliver` receives the direction's application state and every run
    /// of in-order bytes this segment made available.
    pub fn segment(
        &mut self,
        key: FlowKey,
        now: Timestamp,
        segment: Segment<'_>,
        mut deliver: impl FnMut(&mut A, Delivery<'_>),
    ) {
        self.stats.segments += 1;
        self.expire(now);
        let data_seq = if segment.syn {
            segment.seq.wrapping_add(1)
        } else {
            segment.seq
        };

        if segment.syn {
            // A SYN starts a new connection on this 4-tuple: forget any previous one.
            self.remove(&key, Drop::Closed);
        }
        // Sequence space the segment's payload covers, what the snapshot length cut included.
        let extent = segment.payload.len() + segment.cut as usize;
        if !self.flows.contains_key(&key) {
            if extent == 0 && !segment.syn {
                return; // a bare ACK/FIN of a connection we never saw carries nothing
            }
            if self.flows.len() >= self.limits.max_flows {
                if let Some(&(_, oldest)) = self.by_activity.first() {
                    self.remove(&oldest, Drop::TableFull);
                }
            }
            self.flows.insert(
                key,
                Direction {
                    next_seq: data_seq,
                    pending: BTreeMap::new(),
                    pending_bytes: 0,
                    hole_since: None,
                    last_seen: now,
                    // Without the SYN we do not know where the stream began.
                    gap: !segment.syn,
                    carried: false,
                    held: 0,
                    app: A::default(),
                },
            );
            self.by_activity.insert((now, key));
            self.silent.insert((now, key));
        }
        let Some(dir) = self.flows.get_mut(&key) else {
            return;
        };
        if dir.last_seen != now {
            self.by_activity.remove(&(dir.last_seen, key));
            self.by_activity.insert((now, key));
            if self.holding.remove(&(dir.last_seen, key)) {
                self.holding.insert((now, key));
            }
            if self.silent.remove(&(dir.last_seen, key)) {
                self.silent.insert((now, key));
            }
            dir.last_seen = now;
        }
        if !dir.carried && extent > 0 {
            dir.carried = true;
            self.silent.remove(&(now, key));
        }

        if !dir.app.wants_more() {
            // Not SIP: keep the flow entry (so it is not re-examined) but hold no bytes.
            dir.pending.clear();
            dir.pending_bytes = 0;
            dir.hole_since = None;
        } else if extent > 0 {
            let offset = seq_diff(data_seq, dir.next_seq);
            if offset + extent as i64 <= 0 {
                self.stats.retransmitted += 1;
            } else if offset <= 0 {
                if offset < 0 {
                    self.stats.retransmitted += 1;
                }
                deliver_from(
                    dir,
                    segment.payload,
                    segment.cut,
                    (-offset) as usize,
                    now,
                    &mut deliver,
                );
                drain_pending(dir, now, &mut deliver);
            } else {
                self.stats.out_of_order += 1;
                let held = dir.pending.entry(data_seq).or_default();
                if extent > held.extent() {
                    dir.pending_bytes =
                        dir.pending_bytes.saturating_sub(held.data.len()) + segment.payload.len();
                    *held = Held {
                        data: segment.payload.to_vec(),
                        cut: segment.cut,
                    };
                }
                dir.hole_since.get_or_insert(now);
            }
        }

        // Skip a hole that has waited too long or holds too much behind it.
        let hole_expired = dir
            .hole_since
            .is_some_and(|since| now.seconds_since(since) > self.limits.hole_timeout.as_secs_f64());
        if !dir.pending.is_empty()
            && (hole_expired || dir.pending_bytes > self.limits.max_pending_bytes)
        {
            self.stats.gaps += 1;
            skip_hole(dir, now, &mut deliver);
        }
        self.account(&key);

        let closed = self
            .flows
            .get(&key)
            .is_some_and(|dir| segment.rst || (segment.fin && dir.pending.is_empty()));
        if closed {
            self.remove(&key, Drop::Closed);
        }
        self.enforce_budget();
        self.peak = self.peak.max(self.held);
    }

    /// Delivers whatever is still held, skipping holes, and forgets every flow. Called at the
    /// end of a capture or on shutdown so no buffered byte is silently lost.
    pub fn flush(
        &mut self,
        now: Timestamp,
        mut deliver: impl FnMut(&FlowKey, &mut A, Delivery<'_>),
    ) {
        self.held = 0;
        self.by_activity.clear();
        self.holding.clear();
        self.silent.clear();
        for (key, mut dir) in self.flows.drain() {
            while !dir.pending.is_empty() {
                self.stats.gaps += 1;
                skip_hole(&mut dir, now, &mut |app: &mut A, d: Delivery<'_>| {
                    deliver(&key, app, d)
                });
            }
        }
    }

    /// Re-measures what a direction holds after its consumer ran.
    fn account(&mut self, key: &FlowKey) {
        let Some(dir) = self.flows.get_mut(key) else {
            return;
        };
        let now_held = dir.measure();
        self.held = (self.held + now_held).saturating_sub(dir.held);
        match (dir.held > 0, now_held > 0) {
            (false, true) => {
                self.holding.insert((dir.last_seen, *key));
            }
            (true, false) => {
                self.holding.remove(&(dir.last_seen, *key));
            }
            _ => {}
        }
        dir.held = now_held;
    }

    /// Drops the least recently active directions holding bytes until within the budget.
    fn enforce_budget(&mut self) {
        while self.held > self.budget {
            let Some(&(_, key)) = self.holding.first() else {
                return;
            };
            self.remove(&key, Drop::Memory);
        }
    }

    fn remove(&mut self, key: &FlowKey, why: Drop) {
        let Some(dir) = self.flows.remove(key) else {
            return;
        };
        self.by_activity.remove(&(dir.last_seen, *key));
        self.holding.remove(&(dir.last_seen, *key));
        self.silent.remove(&(dir.last_seen, *key));
        self.held = self.held.saturating_sub(dir.held);
        // Also on a close: a partial message or a segment after a hole never completes.
        self.stats.bytes_dropped += dir.held as u64;
        match why {
            Drop::Closed => {}
            Drop::TableFull => self.stats.flows_evicted += 1,
            Drop::Memory => self.stats.flows_evicted_memory += 1,
            Drop::Stalled => self.stats.flows_stalled += 1,
            Drop::Idle => self.stats.flows_expired += 1,
        }
    }

    /// Drops directions that held bytes, or never carried any, too long without activity,
    /// and forgets idle ones. Cheap per segment: the indexes are ordered by activity.
    fn expire(&mut self, now: Timestamp) {
        let stall = self.limits.stall_timeout.as_secs_f64();
        for index in [Index::Holding, Index::Silent] {
            loop {
                let set = match index {
                    Index::Holding => &self.holding,
                    Index::Silent => &self.silent,
                };
                let Some(&(seen, key)) = set.first() else {
                    break;
                };
                if now.seconds_since(seen) <= stall {
                    break;
                }
                self.remove(&key, Drop::Stalled);
            }
        }
        let idle = self.limits.idle_timeout.as_secs_f64();
        while let Some(&(seen, key)) = self.by_activity.first() {
            if now.seconds_since(seen) <= idle {
                break;
            }
            self.remove(&key, Drop::Idle);
        }
    }
}

/// Hands the in-order bytes of a segment, from `skip` bytes into it (already delivered), to
/// the consumer and advances the stream past them and past what the snapshot length cut off
/// its end (`cut`), saying so.
fn deliver_from<A>(
    dir: &mut Direction<A>,
    data: &[u8],
    cut: u32,
    skip: usize,
    now: Timestamp,
    deliver: &mut impl FnMut(&mut A, Delivery<'_>),
) {
    let fresh = data.get(skip..).unwrap_or_default();
    // A skip past the captured bytes falls inside the cut part.
    let cut = (cut as usize).saturating_sub(skip.saturating_sub(data.len()));
    dir.next_seq = dir.next_seq.wrapping_add((fresh.len() + cut) as u32);
    let after_gap = std::mem::take(&mut dir.gap);
    deliver(
        &mut dir.app,
        Delivery {
            data: fresh,
            time: now,
            after_gap,
            cut: cut as u32,
        },
    );
}

/// Delivers held segments that have become in-order.
fn drain_pending<A>(
    dir: &mut Direction<A>,
    now: Timestamp,
    deliver: &mut impl FnMut(&mut A, Delivery<'_>),
) {
    while let Some((&seq, _)) = dir.pending.first_key_value() {
        let offset = seq_diff(seq, dir.next_seq);
        if offset > 0 {
            return; // still a hole before it
        }
        let Some(held) = dir.pending.remove(&seq) else {
            return;
        };
        dir.pending_bytes = dir.pending_bytes.saturating_sub(held.data.len());
        let skip = (-offset) as usize;
        if skip < held.extent() {
            deliver_from(dir, &held.data, held.cut, skip, now, deliver);
        }
    }
    dir.hole_since = None;
}

/// Jumps over the hole before the first held segment and delivers what follows it.
fn skip_hole<A>(
    dir: &mut Direction<A>,
    now: Timestamp,
    deliver: &mut impl FnMut(&mut A, Delivery<'_>),
) {
    if let Some((&seq, _)) = dir.pending.first_key_value() {
        dir.next_seq = seq;
        dir.gap = true;
        drain_pending(dir, now, deliver);
        if !dir.pending.is_empty() {
            dir.hole_since = Some(now);
        }
    }
}

/// The reassembler's counters as the capture summary writes them (`decode.tcp`).
impl From<&TcpStats> for crate::record::TcpCounters {
    fn from(s: &TcpStats) -> Self {
        // Every field named: a counter added here fails to compile until the record (and its
        // schema file) says whether it is written.
        let TcpStats {
            segments,
            retransmitted,
            out_of_order,
            gaps,
            flows_evicted,
            flows_evicted_memory,
            flows_stalled,
            flows_expired,
            bytes_dropped,
        } = *s;
        crate::record::TcpCounters {
            segments,
            retransmitted,
            out_of_order,
            gaps,
            flows_evicted,
            flows_evicted_memory,
            flows_stalled,
            flows_expired,
            bytes_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src: "10.0.0.1:5060".parse().unwrap(),
            dst: "10.0.0.2:5060".parse().unwrap(),
        }
    }

    fn seg(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            seq,
            syn: false,
            fin: false,
            rst: false,
            payload,
            cut: 0,
        }
    }

    /// Collects the delivered stream, marking gaps with `|` and snapshot length cuts with `/`.
    fn run(segments: &[Segment<'_>], limits: TcpLimits) -> (String, TcpStats) {
        let mut r: TcpReassembler<String> = TcpReassembler::new(limits);
        for (i, s) in segments.iter().enumerate() {
            let now = Timestamp::from_secs_nanos(i as i64, 0);
            r.segment(key(), now, *s, |app, d| {
                if d.after_gap && !app.is_empty() {
                    app.push('|');
                }
                app.push_str(std::str::from_utf8(d.data).unwrap());
                if d.cut > 0 {
                    app.push('/');
                }
            });
        }
        let out = r
            .flows
            .get(&key())
            .map(|d| d.app.clone())
            .unwrap_or_default();
        (out, r.stats())
    }

    #[test]
    fn reorders_and_drops_retransmissions() {
        let syn = Segment {
            seq: u32::MAX - 2, // the stream crosses the 2^32 wrap
            syn: true,
            fin: false,
            rst: false,
            payload: b"",
            cut: 0,
        };
        let base = (u32::MAX - 2).wrapping_add(1);
        let segs = [
            syn,
            seg(base.wrapping_add(5), b"world"),
            seg(base, b"hello"),
            seg(base, b"hello"),                // full retransmission
            seg(base.wrapping_add(8), b"ld!!"), // overlapping with new bytes
        ];
        let (out, stats) = run(&segs, TcpLimits::default());
        assert_eq!(out, "helloworld!!");
        assert_eq!(stats.out_of_order, 1);
        assert_eq!(stats.retransmitted, 2);
    }

    #[test]
    fn skips_hole_after_timeout() {
        let limits = TcpLimits {
            hole_timeout: Duration::from_secs(2),
            ..TcpLimits::default()
        };
        let segs = [
            seg(100, b"aaa"),
            seg(110, b"bbb"), // hole 103..110 never filled
            seg(113, b"ccc"),
            seg(116, b"ddd"),
            seg(119, b"eee"),
        ];
        let (out, stats) = run(&segs, limits);
        assert_eq!(out, "aaa|bbbcccdddeee");
        assert_eq!(stats.gaps, 1);
    }

    #[derive(Default)]
    struct NotInterested;
    impl StreamConsumer for NotInterested {
        fn wants_more(&self) -> bool {
            false
        }
    }

    #[test]
    fn holds_nothing_for_a_consumer_that_lost_interest() {
        let mut r: TcpReassembler<NotInterested> = TcpReassembler::new(TcpLimits::default());
        let now = Timestamp::from_secs_nanos(1, 0);
        let mut delivered = 0;
        for seq in [0u32, 100, 200, 300] {
            r.segment(key(), now, seg(seq, &[0u8; 50]), |_, _| delivered += 1);
        }
        assert_eq!(delivered, 0);
        assert_eq!(r.bytes_held(), 0);
        assert_eq!(r.flows(), 1);
    }

    fn port_key(port: u16) -> FlowKey {
        FlowKey {
            src: SocketAddr::new("10.0.0.1".parse().unwrap(), port),
            dst: "10.0.0.2:5060".parse().unwrap(),
        }
    }

    #[test]
    fn budget_drops_least_recently_active_holders() {
        let limits = TcpLimits {
            max_bytes: 1000,
            ..TcpLimits::default()
        };
        let mut r: TcpReassembler<String> = TcpReassembler::new(limits);
        // Five directions, each holding 200 bytes out of order (plus bookkeeping).
        for port in 1..=5u16 {
            let now = Timestamp::from_secs_nanos(i64::from(port), 0);
            r.segment(port_key(port), now, seg(0, b"a"), |_, _| {});
            r.segment(port_key(port), now, seg(10, &[b'b'; 200]), |_, _| {});
            assert!(r.bytes_held() <= 1000, "{}", r.bytes_held());
        }
        let stats = r.stats();
        assert!(stats.flows_evicted_memory >= 1, "{stats:?}");
        assert!(stats.bytes_dropped >= 200, "{stats:?}");
        // The oldest went first; the newest is still there.
        assert!(!r.flows.contains_key(&port_key(1)));
        assert!(r.flows.contains_key(&port_key(5)));
        assert_eq!(r.held, r.flows.values().map(|d| d.held).sum::<usize>());
        assert!(r.peak_bytes_held() <= 1000);
    }

    #[test]
    fn silent_holder_stalls_while_a_silent_empty_flow_stays() {
        let t = |s| Timestamp::from_secs_nanos(s, 0);
        // Port 1 holds an out-of-order segment; port 2 holds nothing.
        let mut holder: TcpReassembler<String> = TcpReassembler::new(TcpLimits::default());
        holder.segment(port_key(1), t(1), seg(0, b"a"), |_, _| {});
        holder.segment(port_key(1), t(1), seg(50, &[b'x'; 40]), |_, _| {});
        holder.segment(port_key(2), t(1), seg(0, b"a"), |_, _| {});
        assert!(holder.bytes_held() > 40);
        holder.segment(port_key(3), t(40), seg(0, b"a"), |_, _| {});
        let stats = holder.stats();
        assert_eq!(stats.flows_stalled, 1, "{stats:?}");
        assert!(!holder.flows.contains_key(&port_key(1)));
        assert!(holder.flows.contains_key(&port_key(2)));
        assert_eq!(holder.bytes_held(), 0);
        // Ports 2 and 3 have been silent past the idle timeout.
        holder.segment(port_key(4), t(700), seg(1, b"b"), |_, _| {});
        assert_eq!(holder.stats().flows_expired, 2);
        assert_eq!(holder.flows(), 1);
    }

    #[test]
    fn half_open_connections_time_out_at_the_stall_timeout() {
        let mut r: TcpReassembler<String> = TcpReassembler::new(TcpLimits::default());
        let t = |s| Timestamp::from_secs_nanos(s, 0);
        let syn = |seq| Segment {
            seq,
            syn: true,
            fin: false,
            rst: false,
            payload: b"",
            cut: 0,
        };
        // A SYN never followed by data, and one that is.
        r.segment(port_key(1), t(1), syn(0), |_, _| {});
        r.segment(port_key(2), t(1), syn(0), |_, _| {});
        r.segment(port_key(2), t(2), seg(1, b"x"), |_, _| {});
        r.segment(port_key(3), t(40), seg(0, b"y"), |_, _| {});
        assert_eq!(r.stats().flows_stalled, 1);
        assert!(!r.flows.contains_key(&port_key(1)));
        assert!(r.flows.contains_key(&port_key(2)));
        assert!(r.silent.is_empty());
    }

    #[test]
    fn window_overflow_skips_hole() {
        let limits = TcpLimits {
            max_pending_bytes: 4,
            ..TcpLimits::default()
        };
        let segs = [seg(0, b"ab"), seg(10, b"xyz"), seg(13, b"uvw")];
        let (out, stats) = run(&segs, limits);
        assert_eq!(out, "ab|xyzuvw");
        assert_eq!(stats.gaps, 1);
    }

    /// A segment cut by the capture's snapshot length (campaign 2026-12-03c): the stream goes
    /// on right after its missing bytes, in order or not, without a hole to wait for or a gap
    /// to count (the segment after it used to wait as out of order, then be delivered after a
    /// gap, `tcp.gaps`, and its SIP framer resynchronised as if the sender had lost bytes).
    #[test]
    fn a_cut_segment_is_skipped_at_once_not_taken_for_a_hole() {
        let cut = |seq, payload, cut| Segment {
            cut,
            ..seg(seq, payload)
        };
        // In order: 10 bytes declared, 3 captured.
        let (out, stats) = run(
            &[seg(0, b"ab"), cut(2, b"cde", 7), seg(12, b"xyz")],
            TcpLimits::default(),
        );
        assert_eq!(out, "abcde/xyz");
        assert_eq!((stats.gaps, stats.out_of_order), (0, 0), "{stats:?}");
        // Out of order, and cut down to nothing: held with its extent, drained in order.
        let (out, stats) = run(
            &[
                seg(0, b"ab"),
                seg(12, b"xyz"),
                cut(5, b"", 7),
                seg(2, b"cde"),
            ],
            TcpLimits::default(),
        );
        assert_eq!(out, "abcde/xyz");
        assert_eq!(stats.gaps, 0, "{stats:?}");
        // A retransmission overlapping the cut part delivers only what lies past it.
        let (out, stats) = run(
            &[cut(0, b"ab", 8), seg(4, b"cdefghij"), seg(10, b"ijkl")],
            TcpLimits::default(),
        );
        assert_eq!(out, "ab/ijkl");
        assert_eq!((stats.gaps, stats.retransmitted), (0, 2), "{stats:?}");
    }
}
