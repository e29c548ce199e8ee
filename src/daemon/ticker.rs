//! The ticker: time moves forward without packets (calls and streams time out on a quiet
//! line, and ended calls' records are released once their grace passed), and the gauges and
//! counters that are read rather than pushed follow, every tick (250 ms).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinHandle;

use super::{lock, Context, TICK};
use crate::observe::events::{DecodeErrors, DropReason, InternalEvent, NewSince, RecordsDropped};
use crate::observe::{AgentMetrics, Stage};
use crate::pipeline::LivePipeline;
use crate::record::gap::{GapReason, GapRecord};
use crate::record::Record;
use crate::spool::Spool;

/// Starts the ticker; it stops with the sources.
pub(super) fn spawn(ctx: &Context, spool: &Arc<Mutex<Spool>>) -> JoinHandle<InputLosses> {
    let spool = Arc::clone(spool);
    let mut spool_age = SpoolAge::new(lock(&spool).stats().records);
    let node = lock(&spool).node_id().to_owned();
    let mut input_losses = InputLosses::default();
    let mut contained_told = Instant::now();
    let ctx = ctx.clone();
    ctx.tracker.clone().spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = ctx.sources.cancelled() => break,
            }
            // A panic of a tick (a bug in the correlator or the statistics) is caught here:
            // announced, the daemon asked to stop, and the next tick goes on meanwhile.
            let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::panics::inject("ticker");
                let metrics = &ctx.metrics;
                {
                    let p = &ctx.pipeline;
                    let records = &ctx.records;
                    p.tick(ctx.live_now.now(), &mut |r| records.push(r));
                    publish_pipeline_counters(p, metrics, &mut lock(&ctx.losses_told));
                    // The status page's snapshot, once a second: the active calls of every
                    // shard, one shard locked at a time; the rest is built without a lock.
                    if let Some(status) = ctx.status.as_ref().filter(|s| s.due()) {
                        let (calls, more) = p.correlator().active_calls(super::status::CALLS);
                        status.publish(&calls, more, ctx.live_now.now(), metrics, &ctx.health);
                    }
                }
                // try_lock: a flush in progress is not worth waiting for; next tick.
                if let Ok(s) = spool.try_lock() {
                    let age = spool_age.update(&s.stats(), SystemTime::now());
                    drop(s);
                    metrics.spool_oldest_age_seconds.set(age);
                }
                let totals = LossTotals::of(&ctx);
                for gap in input_losses.due(&node, metrics, totals, Instant::now(), false) {
                    ctx.records.push(Record::Gap(Box::new(gap)));
                }
                // Panics of HEP connections after the first (the daemon ran on): summed,
                // once a minute.
                if contained_told.elapsed() >= InputLosses::EVERY {
                    contained_told = Instant::now();
                    for gap in ctx.supervisor.contained_due() {
                        ctx.records.push(Record::Gap(Box::new(gap)));
                    }
                }
            }));
            if let Err(payload) = ticked {
                // What the tick had taken out of the call tables is unknown.
                if let Some(gap) = ctx.supervisor.caught("ticker", payload.as_ref(), None) {
                    ctx.records.push(Record::Gap(Box::new(gap)));
                }
            }
            ctx.health.progress(Stage::Correlation);
        }
        // What was counted since the last announcement is announced by the shutdown, once
        // every source has stopped.
        input_losses
    })
}

/// The input's loss totals that are not in the metrics alone.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LossTotals {
    /// Frames or reassembly state dropped by the decode path (every capture input).
    pub decode: u64,
    /// Bytes of stream data the decode path dropped (TCP, SIP framing): a count of bytes,
    /// announced apart — until 2026-12-04 (branch `attack6`) it was added to `decode`, so a
    /// TCP flood's gap said "87,575,200 frames or reassembly state" of which 82.6 million
    /// were bytes.
    pub decode_bytes: u64,
    /// HEP frames from the listener whose content the pipeline could not use.
    pub hep_unused: u64,
}

impl LossTotals {
    pub(super) fn of(ctx: &Context) -> Self {
        let (decode, decode_bytes) = split_decode_losses(&ctx.pipeline.loss_totals());
        LossTotals {
            decode,
            decode_bytes,
            hep_unused: ctx.hep_unused.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The correlation's bounded tables by their `teledge_state_evictions_total` label, with
/// what each evicted or turned away: the one list the metric is written from, and every
/// name in it is announced (`DETAIL_TABLES`, or an input loss; a unit test holds them
/// together).
fn correlation_evictions(
    calls: &crate::correlation::calls::CallCounters,
    media: &crate::correlation::media::MediaCounters,
    shards: &crate::correlation::sharded::ShardStats,
) -> [(&'static str, u64); 12] {
    [
        ("calls_in_setup", calls.evicted_in_setup),
        ("ended_dialogs", calls.ended_forgotten),
        ("ended_media_endpoints", media.ended_endpoints_forgotten),
        ("orphan_stream_records", media.orphan_streams_summarised),
        ("orphan_streams_for_calls", media.orphans_closed_for_calls),
        ("call_media_endpoints", media.call_endpoints_forgotten),
        // Turned away at a full table, by count or by the bytes the media state holds (one
        // label each; the capture summary tells the two apart).
        (
            "media_endpoints",
            media.endpoints_dropped_at_capacity + media.endpoints_dropped_at_byte_bound,
        ),
        (
            "call_rtcp",
            media.rtcp_dropped_at_capacity + media.rtcp_dropped_at_byte_bound,
        ),
        ("streams", media.streams_dropped_at_capacity),
        ("ssrc_index", media.streams_not_indexed_by_ssrc),
        ("calls_joined_mid_dialog", calls.partial_calls_refused),
        ("media_routes", shards.routes_dropped_at_capacity),
    ]
}

/// The decode path's loss totals as (frames and reassembly state, bytes): the kinds that
/// count bytes (`*_bytes_*`) apart from those that count frames, fragments or flows.
pub(super) fn split_decode_losses(totals: &std::collections::BTreeMap<&str, u64>) -> (u64, u64) {
    totals.iter().fold((0, 0), |(items, bytes), (kind, n)| {
        if kind.contains("_bytes_") {
            (items, bytes + n)
        } else {
            (items + n, bytes)
        }
    })
}

/// Input lost before it became records — kernel ring drops, HEP frames refused by a full
/// queue, frames and reassembly state the decode path dropped, HEP frames malformed,
/// unauthenticated or not usable, new calls refused by a full call table — and HEP frames
/// the relay to HOMER lost on the way out (`[hep_out]`: queue full, server gone, a send that
/// failed, the stop's drain deadline), announced upstream by an `input_dropped` gap record
/// per kind, at most once a minute, and at shutdown what is left (`force`), so the collector
/// learns of every loss, not only the metrics. Each names its count and the time range it
/// was counted in (`counted_since`: the previous announcement of its kind, or the run's
/// start; up to `time`).
///
/// The same way, once a minute per table, evictions of the bounded correlation tables that
/// cost measurement detail but no record are announced by a `state_evicted` gap record
/// (what the table lost, how many entries, since when): until 2026-12-04 (branch
/// `attack6`) they were only counted (`teledge_state_evictions_total`).
#[derive(Debug)]
pub(super) struct InputLosses {
    announced: [u64; KINDS],
    since: [SystemTime; KINDS],
    last: Option<Instant>,
}

const KINDS: usize = RECORD_KINDS + DETAIL_TABLES.len();
/// The kinds announced as `input_dropped`.
const RECORD_KINDS: usize = 10;

impl Default for InputLosses {
    fn default() -> Self {
        InputLosses {
            announced: [0; KINDS],
            since: [SystemTime::now(); KINDS],
            last: None,
        }
    }
}

/// The correlation tables (`teledge_state_evictions_total{table}`) whose evictions cost
/// measurement detail but no record, and what the records lack for them. (Those that cost
/// records, `calls_joined_mid_dialog` and `streams`, are input losses above.)
const DETAIL_TABLES: [(&str, &str); 10] = [
    (
        "calls_in_setup",
        "calls still in setup closed early as evicted (call table full): their records end at the eviction",
    ),
    (
        "ended_dialogs",
        "ended dialogs forgotten early (bound of remembered dialogs): a late message of one is not matched to its call",
    ),
    (
        "ended_media_endpoints",
        "media endpoints of ended calls forgotten early (media bound): their late RTP counted as orphan, not with the call",
    ),
    (
        "orphan_stream_records",
        "orphan RTP streams summed up in an orphan_streams record (beyond the rate of stream records), not one record each",
    ),
    (
        "orphan_streams_for_calls",
        "orphan RTP streams closed early (stream table full) to measure a stream a call announced",
    ),
    (
        "call_media_endpoints",
        "media endpoints of a call forgotten (beyond the bound a call): its RTP to them not attributed to the call",
    ),
    (
        "media_endpoints",
        "media endpoints from SDP not kept (endpoint table or media bytes full): their RTP not attributed to its call",
    ),
    (
        "call_rtcp",
        "RTCP packets not kept with their call or stream (bound reached): their reports missing from its quality",
    ),
    (
        "ssrc_index",
        "RTP streams not indexed by SSRC (beyond 8 an SSRC): measured, not linked across relays",
    ),
    (
        "media_routes",
        "media routes not written (route table full, sharded daemon): that RTP handled as orphan, not with its call",
    ),
];

impl InputLosses {
    const EVERY: Duration = Duration::from_secs(60);

    pub(super) fn due(
        &mut self,
        node: &str,
        metrics: &AgentMetrics,
        totals: LossTotals,
        now: Instant,
        force: bool,
    ) -> Vec<GapRecord> {
        if !force
            && self
                .last
                .is_some_and(|at| now.duration_since(at) < Self::EVERY)
        {
            return Vec::new();
        }
        let dropped = &metrics.records_dropped;
        let decode_errors = &metrics.decode_errors;
        let mut current = [0u64; KINDS];
        let mut details = [""; KINDS];
        // (Read without making a series in `/metrics`.)
        let hep_socket = metrics.source_kernel_drops.peek(&["hep"]);
        let record_losses: [u64; RECORD_KINDS] = [
            metrics.source_kernel_drops.total() - hep_socket,
            dropped.with(&["hep_queue_full"]).get() + dropped.with(&["hep_queue_bytes"]).get(),
            totals.decode,
            decode_errors.with(&["hep_malformed"]).get()
                + decode_errors.with(&["hep_auth_rejected"]).get()
                + totals.hep_unused,
            dropped.with(&["call_table_full"]).get(),
            // A panic of the relay announces its own losses (`component_panicked`).
            // (Read without making a series of each reason in `/metrics`.)
            metrics.hep_out_dropped.total() - metrics.hep_out_dropped.peek(&["panicked"]),
            // Losses of records the bounded correlation tables cause (published as
            // `teledge_state_evictions_total` by `publish_pipeline_counters`); the other
            // tables' evictions cost measurement detail, not a record.
            metrics.state_evictions.peek(&["calls_joined_mid_dialog"]),
            metrics.state_evictions.peek(&["streams"]),
            hep_socket,
            totals.decode_bytes,
        ];
        let record_details: [&str; RECORD_KINDS] = [
            "packets dropped by the kernel (capture ring full)",
            "HEP frames dropped (queue full)",
            "frames or reassembly state dropped by the decode path",
            "HEP frames refused or not used (malformed, unauthenticated, content not usable)",
            "new calls not followed (call table full of answered calls)",
            "HEP frames not relayed to HOMER ([hep_out]: queue full, server gone, send failed, or left at the stop)",
            "messages of dialogs joined mid-call not followed (beyond 1,000 such calls a minute): those calls get no record",
            "RTP streams not measured (stream table full): no stream record, no quality in their call's record",
            "HEP datagrams dropped by the kernel (the UDP socket's receive buffer full)",
            "bytes of stream data (TCP, SIP framing) dropped by the decode path: a count of bytes, not packets",
        ];
        current[..RECORD_KINDS].copy_from_slice(&record_losses);
        details[..RECORD_KINDS].copy_from_slice(&record_details);
        for (i, (table, detail)) in DETAIL_TABLES.iter().enumerate() {
            current[RECORD_KINDS + i] = metrics.state_evictions.peek(&[table]);
            details[RECORD_KINDS + i] = detail;
        }
        let wall = SystemTime::now();
        let mut gaps = Vec::new();
        for (kind, (((now_total, announced), since), detail)) in current
            .iter()
            .zip(self.announced.iter_mut())
            .zip(self.since.iter_mut())
            .zip(details)
            .enumerate()
        {
            if *now_total > *announced {
                let reason = if kind < RECORD_KINDS {
                    GapReason::InputDropped
                } else {
                    GapReason::StateEvicted
                };
                let mut gap = GapRecord::new(node, reason, Some(now_total - *announced));
                gap.detail = Some(detail.to_owned());
                gap.counted_since = Some(humantime::format_rfc3339_seconds(*since).to_string());
                gaps.push(gap);
                *announced = *now_total;
                *since = wall;
            }
        }
        if !gaps.is_empty() {
            self.last = Some(now);
        }
        gaps
    }
}

/// Publishes the correlator's gauges and eviction counters, and tells the decode path's and
/// the call table's new losses as events (`told` remembers what was told).
pub(super) fn publish_pipeline_counters(
    p: &LivePipeline,
    metrics: &AgentMetrics,
    told: &mut NewSince,
) {
    let c = p.correlator();
    let (mut open, mut held, mut streams) = (0, 0, 0);
    c.for_each(|shard| {
        open += shard.calls().open_calls();
        held += shard.calls().held_bytes();
        streams += shard.media().active_streams();
    });
    metrics.calls_active.set(open as i64);
    metrics.call_table_bytes.set(held as i64);
    let (calls, media) = c.counters();
    let shards = c.stats();
    metrics
        .correlation_shard_lock_waits
        .raise_to(shards.lock_waits);
    metrics.correlation_media_routes.set(shards.routes as i64);
    metrics.correlation_shards.set(shards.shards as i64);
    let held = p.hold_counters();
    for (outcome, n) in [
        ("routed", held.released_routed),
        ("unrouted", held.released_unrouted),
        ("hold_full", held.not_held_full),
    ] {
        if n > 0 {
            metrics.correlation_media_held.with(&[outcome]).raise_to(n);
        }
    }
    for (outcome, n) in [
        ("reordered", shards.sip_reordered),
        ("late", shards.sip_late),
        ("window_full", shards.sip_window_full),
    ] {
        if n > 0 {
            metrics
                .correlation_sip_reordered
                .with(&[outcome])
                .raise_to(n);
        }
    }
    for (table, n) in correlation_evictions(&calls, &media, &shards) {
        if n > 0 {
            metrics.state_evictions.with(&[table]).raise_to(n);
        }
    }
    RecordsDropped {
        reason: DropReason::CallTableFull,
        count: told.new_since("call_table_full", calls.dropped_at_capacity),
    }
    .emit(metrics);
    metrics.streams_active.set(streams as i64);
    publish_decode_counters(p, metrics, told);
}

/// Publishes the decode path's error and drop counters by kind, summed over every capture
/// interface (they only grow), and the bytes each interface's reassembly holds.
pub(super) fn publish_decode_counters(
    pipeline: &LivePipeline,
    metrics: &AgentMetrics,
    told: &mut NewSince,
) {
    for (kind, n) in pipeline.loss_totals() {
        DecodeErrors {
            source: "pipeline",
            kind,
            count: told.new_since(kind, n),
        }
        .emit(metrics);
    }
    for (interface, held) in pipeline.bytes_held() {
        metrics
            .reassembly_bytes_held
            .with(&[&interface])
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }
}

/// The age of the oldest record in the spool. The spool keeps no append times (they would
/// cost a write per record), so the daemon notes, once a second, how many records had been
/// appended by then; the oldest record's age is the age of the first note that counts it —
/// never more than a second too young. Records left from before this start count as old as
/// the start (a lower bound). The notes are bounded: when full, every other one is dropped,
/// which only coarsens the answer for very old backlogs.
#[derive(Debug)]
struct SpoolAge {
    /// (records appended since open, when)
    notes: std::collections::VecDeque<(u64, SystemTime)>,
    backlog_at_open: u64,
    started: SystemTime,
}

impl SpoolAge {
    const MAX_NOTES: usize = 4096;

    fn new(backlog_at_open: u64) -> Self {
        SpoolAge {
            notes: std::collections::VecDeque::new(),
            backlog_at_open,
            started: SystemTime::now(),
        }
    }

    /// Notes the counters and returns the oldest record's age in seconds.
    fn update(&mut self, stats: &crate::spool::SpoolStats, now: SystemTime) -> f64 {
        if self.notes.back().is_none_or(|&(n, _)| n < stats.appended) {
            if self.notes.len() >= Self::MAX_NOTES {
                let kept: std::collections::VecDeque<_> =
                    self.notes.iter().copied().step_by(2).collect();
                self.notes = kept;
            }
            self.notes.push_back((stats.appended, now));
        }
        if stats.records == 0 {
            return 0.0;
        }
        let removed = stats.acked + stats.dropped_oldest;
        let since = match removed.checked_sub(self.backlog_at_open) {
            // Still a record from before this start.
            None => self.started,
            // The oldest record is the one appended `index`-th since open.
            Some(index) => {
                while self.notes.len() > 1 && self.notes.get(1).is_some_and(|&(n, _)| n <= index) {
                    self.notes.pop_front();
                }
                self.notes
                    .iter()
                    .find(|&&(n, _)| n > index)
                    .map_or(now, |&(_, t)| t)
            }
        };
        now.duration_since(since).unwrap_or_default().as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::correlation::sharded::ShardedCorrelator;
    use crate::dissect::DissectLimits;
    use crate::spool::SpoolStats;
    use crate::time::Timestamp;

    fn stats(records: u64, appended: u64, acked: u64) -> SpoolStats {
        SpoolStats {
            records,
            appended,
            acked,
            ..SpoolStats::default()
        }
    }
    /// With several capture interfaces, each thread used to raise the one counter to its own
    /// total, so the metric showed the largest interface's count, not the sum.
    #[test]
    fn input_losses_are_announced_upstream_once_a_minute_by_kind() {
        let metrics = AgentMetrics::new();
        let mut losses = InputLosses::default();
        let t0 = Instant::now();
        assert!(
            losses
                .due("edge-01", &metrics, LossTotals::default(), t0, false)
                .is_empty(),
            "nothing lost"
        );
        metrics.source_kernel_drops.with(&["eth0"]).add(5);
        metrics.source_kernel_drops.with(&["eth1"]).add(2);
        metrics.records_dropped.with(&["hep_queue_full"]).add(3);
        let four = LossTotals {
            decode: 4,
            decode_bytes: 0,
            hep_unused: 0,
        };
        let gaps = losses.due(
            "edge-01",
            &metrics,
            four,
            t0 + Duration::from_secs(1),
            false,
        );
        let counts: Vec<_> = gaps.iter().map(|g| (g.reason, g.dropped)).collect();
        assert_eq!(
            counts,
            [
                (GapReason::InputDropped, Some(7)),
                (GapReason::InputDropped, Some(3)),
                (GapReason::InputDropped, Some(4))
            ]
        );
        // More losses within the minute wait for it; then only the new ones are announced.
        metrics.source_kernel_drops.with(&["eth0"]).add(1);
        assert!(losses
            .due(
                "edge-01",
                &metrics,
                four,
                t0 + Duration::from_secs(30),
                false
            )
            .is_empty());
        let gaps = losses.due(
            "edge-01",
            &metrics,
            four,
            t0 + Duration::from_secs(62),
            false,
        );
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].dropped, Some(1));
        assert!(gaps[0].detail.as_deref().unwrap().contains("kernel"));
    }

    /// New calls refused by a full call table were counted (`call_table_full`) and never
    /// announced; a forced round (the shutdown's) announces within the minute.
    #[test]
    fn refused_calls_and_unused_hep_frames_are_announced_and_a_forced_round_does_not_wait() {
        let metrics = AgentMetrics::new();
        let mut losses = InputLosses::default();
        let t0 = Instant::now();
        metrics.records_dropped.with(&["call_table_full"]).add(3);
        let gaps = losses.due("edge-01", &metrics, LossTotals::default(), t0, false);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].dropped, Some(3));
        assert!(gaps[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("call table full"));
        let unused = LossTotals {
            decode: 0,
            decode_bytes: 0,
            hep_unused: 2,
        };
        let later = t0 + Duration::from_secs(5);
        assert!(losses
            .due("edge-01", &metrics, unused, later, false)
            .is_empty());
        let gaps = losses.due("edge-01", &metrics, unused, later, true);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].dropped, Some(2));
        assert!(gaps[0].detail.as_deref().unwrap().starts_with("HEP frames"));
    }

    /// Dialogs joined mid-call beyond their rate and streams a full stream table turned
    /// away lose records: counted as state evictions and announced, not only counted.
    #[test]
    fn record_losses_of_the_bounded_tables_are_announced() {
        let metrics = AgentMetrics::new();
        let mut losses = InputLosses::default();
        let t0 = Instant::now();
        assert!(losses
            .due("edge-01", &metrics, LossTotals::default(), t0, true)
            .is_empty());
        metrics
            .state_evictions
            .with(&["calls_joined_mid_dialog"])
            .raise_to(4);
        metrics.state_evictions.with(&["streams"]).raise_to(2);
        let gaps = losses.due("edge-01", &metrics, LossTotals::default(), t0, true);
        let told: Vec<(u64, &str)> = gaps
            .iter()
            .map(|g| (g.dropped.unwrap(), g.detail.as_deref().unwrap()))
            .collect();
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(gaps.iter().all(|g| g.reason == GapReason::InputDropped));
        assert_eq!(told[0].0, 4);
        assert!(told[0].1.starts_with("messages of dialogs joined mid-call"));
        assert_eq!(told[1].0, 2);
        assert!(told[1].1.starts_with("RTP streams not measured"));
        // Told once.
        assert!(losses
            .due("edge-01", &metrics, LossTotals::default(), t0, true)
            .is_empty());
    }

    /// Every table the eviction metric is written for is announced: as an input loss (it
    /// costs records) or in `DETAIL_TABLES`, and `DETAIL_TABLES` names no other table.
    #[test]
    fn every_evicting_table_is_announced() {
        let named: Vec<&str> = correlation_evictions(
            &Default::default(),
            &Default::default(),
            &Default::default(),
        )
        .iter()
        .map(|(table, _)| *table)
        .collect();
        let costs_records = ["calls_joined_mid_dialog", "streams"];
        for table in &named {
            assert!(
                costs_records.contains(table) || DETAIL_TABLES.iter().any(|(t, _)| t == table),
                "{table} is counted but never announced"
            );
        }
        for (table, _) in DETAIL_TABLES {
            assert!(
                named.contains(&table),
                "{table} is announced but never counted"
            );
        }
    }

    /// Evictions that cost measurement detail but no record (every other table of
    /// `teledge_state_evictions_total`) are announced as `state_evicted`, each table on its
    /// own, with its count and time range, once per announcement and not per eviction.
    #[test]
    fn detail_losses_of_the_bounded_tables_are_announced() {
        let metrics = AgentMetrics::new();
        let mut losses = InputLosses::default();
        let t0 = Instant::now();
        for (n, (table, _)) in DETAIL_TABLES.iter().enumerate() {
            metrics
                .state_evictions
                .with(&[table])
                .raise_to(n as u64 + 1);
        }
        let gaps = losses.due("edge-01", &metrics, LossTotals::default(), t0, true);
        assert_eq!(gaps.len(), DETAIL_TABLES.len(), "{gaps:?}");
        for (n, gap) in gaps.iter().enumerate() {
            assert_eq!(gap.reason, GapReason::StateEvicted);
            assert_eq!(gap.dropped, Some(n as u64 + 1));
            assert_eq!(gap.detail.as_deref(), Some(DETAIL_TABLES[n].1));
            assert!(gap.counted_since.is_some());
        }
        // Within the minute: nothing more, however much more is evicted.
        metrics
            .state_evictions
            .with(&["ssrc_index"])
            .raise_to(1_000);
        let soon = t0 + Duration::from_secs(1);
        assert!(losses
            .due("edge-01", &metrics, LossTotals::default(), soon, false)
            .is_empty());
        let later = t0 + Duration::from_secs(61);
        let gaps = losses.due("edge-01", &metrics, LossTotals::default(), later, false);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].dropped, Some(1_000 - 9));
        // Every table the ticker publishes is either a record loss or a detail loss.
        let published = [
            "calls_in_setup",
            "ended_dialogs",
            "ended_media_endpoints",
            "orphan_stream_records",
            "orphan_streams_for_calls",
            "call_media_endpoints",
            "media_endpoints",
            "call_rtcp",
            "streams",
            "ssrc_index",
            "calls_joined_mid_dialog",
            "media_routes",
        ];
        for table in published {
            assert!(
                ["calls_joined_mid_dialog", "streams"].contains(&table)
                    || DETAIL_TABLES.iter().any(|(t, _)| *t == table),
                "{table} neither announced as a record loss nor as a detail loss"
            );
        }
    }

    /// Byte counts of the decode path are announced apart from its frame and state counts.
    #[test]
    fn the_decode_paths_bytes_are_not_added_to_its_frames() {
        let totals: std::collections::BTreeMap<&str, u64> = [
            ("tcp_bytes_dropped", 1_000),
            ("stream_bytes_discarded", 500),
            ("tcp_flows_evicted", 3),
            ("fragments_timed_out", 2),
        ]
        .into_iter()
        .collect();
        assert_eq!(split_decode_losses(&totals), (5, 1_500));
        let metrics = AgentMetrics::new();
        let mut losses = InputLosses::default();
        let totals = LossTotals {
            decode: 5,
            decode_bytes: 1_500,
            hep_unused: 0,
        };
        let gaps = losses.due("edge-01", &metrics, totals, Instant::now(), true);
        let told: Vec<(u64, &str)> = gaps
            .iter()
            .map(|g| (g.dropped.unwrap(), g.detail.as_deref().unwrap()))
            .collect();
        assert_eq!(told.len(), 2, "{told:?}");
        assert_eq!(told[0].0, 5);
        assert!(told[0].1.starts_with("frames or reassembly state"));
        assert_eq!(told[1].0, 1_500);
        assert!(told[1].1.starts_with("bytes of stream data"));
    }

    #[test]
    fn decode_errors_metric_sums_every_interface() {
        let pipeline = LivePipeline::new(
            ShardedCorrelator::new(
                2,
                crate::correlation::calls::CallLimits::default(),
                crate::correlation::media::MediaLimits::default(),
            ),
            Duration::from_millis(250),
        );
        let metrics = AgentMetrics::new();
        let mut told = NewSince::default();
        let inputs = [
            pipeline.add_input("eth0", DissectLimits::default(), None),
            pipeline.add_input("eth1", DissectLimits::default(), None),
        ];
        for round in 0..2 {
            for (n, input) in inputs.iter().enumerate() {
                // Frames too short for an Ethernet header: 3 on eth0, 2 on eth1 each round.
                for number in 0..(3 - n as u64) {
                    let frame = crate::dissect::Frame {
                        number,
                        time: Timestamp::from_secs_nanos(1, 0),
                        link: crate::decode::link::LinkType::Ethernet,
                        data: &[0; 6],
                    };
                    pipeline.frame(input, &frame, &mut |_| {});
                }
            }
            publish_decode_counters(&pipeline, &metrics, &mut told);
            assert_eq!(metrics.decode_errors.with(&["link"]).get(), 5 * (round + 1));
        }
        let held = metrics.reassembly_bytes_held.with(&["eth1"]).get();
        assert_eq!(held, 0);
    }

    /// The decode path's totals and the HEP task's single events add to one metric. The
    /// ticker used to raise the metric to the decode path's total, which swallowed what the
    /// HEP task had counted under the same kind.
    #[test]
    fn decode_errors_of_two_sources_add_up() {
        let pipeline = LivePipeline::new(
            ShardedCorrelator::new(
                2,
                crate::correlation::calls::CallLimits::default(),
                crate::correlation::media::MediaLimits::default(),
            ),
            Duration::from_millis(250),
        );
        let metrics = AgentMetrics::new();
        let mut told = NewSince::default();
        let input = pipeline.add_input("eth0", DissectLimits::default(), None);
        // The HEP task: 4 frames of kind `link` it could not use.
        DecodeErrors {
            source: "hep",
            kind: "link",
            count: 4,
        }
        .emit(&metrics);
        for number in 0..3 {
            let frame = crate::dissect::Frame {
                number,
                time: Timestamp::from_secs_nanos(1, 0),
                link: crate::decode::link::LinkType::Ethernet,
                data: &[0; 6],
            };
            pipeline.frame(&input, &frame, &mut |_| {});
        }
        publish_decode_counters(&pipeline, &metrics, &mut told);
        publish_decode_counters(&pipeline, &metrics, &mut told);
        assert_eq!(metrics.decode_errors.with(&["link"]).get(), 4 + 3);
    }

    #[test]
    fn oldest_age_follows_appends_and_acks() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut age = SpoolAge::new(0);
        age.started = t0;
        assert_eq!(age.update(&stats(0, 0, 0), at(0)), 0.0);
        // 10 records by t+1, 20 by t+2, 30 by t+3.
        assert_eq!(age.update(&stats(10, 10, 0), at(1)), 0.0);
        age.update(&stats(20, 20, 0), at(2));
        assert_eq!(age.update(&stats(30, 30, 0), at(3)), 2.0);
        // The first 15 acknowledged: the oldest is the 16th, appended by t+2.
        assert_eq!(age.update(&stats(15, 30, 15), at(5)), 3.0);
        // All acknowledged: no age.
        assert_eq!(age.update(&stats(0, 30, 30), at(6)), 0.0);
        // A backlog from before the start counts from the start.
        let mut old = SpoolAge::new(100);
        old.started = t0;
        assert_eq!(old.update(&stats(100, 0, 0), at(7)), 7.0);
        // Bounded notes.
        for i in 1..=10_000 {
            old.update(&stats(100 + i, i, 0), at(7 + i));
        }
        assert!(old.notes.len() <= SpoolAge::MAX_NOTES);
    }
}
