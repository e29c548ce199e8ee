//! The spool writer: a thread of its own (sled's appends and fsyncs block) that takes records
//! from the record queue to the [`Spooler`].
//!
//! It is also where the service statistics see the calls: every call record passes here in
//! clear, before the spooler pseudonymises it, so it is classified into its service on its
//! clear called number ([`crate::stats::service`]) and counted by the [`Aggregator`]; the
//! interval records the aggregator emits (after the grace, revisions, and at shutdown the
//! open intervals with `final: false`) are spooled like any record. The open intervals'
//! figures are published as metrics once a second. Queue contact records (`teledge.queue/1`)
//! are counted too, as queue facts in the `[[service]]` named like their queue
//! ([`Aggregator::queue_record`]); with a queue source configured, a call record and the
//! queue record of the same contact are joined and counted once (the call's keys made by
//! the spooler's pseudonymiser, see [`Aggregator::with_queue_join`]); queue records that
//! tell no arrival are counted in `teledge_stats_queue_no_arrival_total` and in the
//! interval's `queue_no_arrival`. The correlation's per-minute registration records
//! (`teledge.registrations/1`) are spooled and summed into the first service's interval
//! (`sip.registrations`, `sip.rrd_*`, and `node_sip`, where every call's RFC 6076 facts are
//! summed too, whatever its service). Agent state records (`teledge.agent/1`, from the
//! queue sources) give each service's staffed and paused agent time (`agents`); the open
//! interval's agent figures and the node's RFC 6076 inputs are in the metrics too
//! (`teledge_interval_agents`, `teledge_interval_node_sip`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;

use crate::bounded::BoundedReceiver;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::observe::agent::AgentMetrics;
use crate::observe::events::{DropReason, InternalEvent, RecordsDropped, SpoolAppendFailed};
use crate::observe::{Health, Stage};
use crate::record::Record;
use crate::spooler::{Spooler, SpoolerError};
use crate::stats::Aggregator;
use crate::time::Timestamp;

use super::supervise::Supervisor;

/// The running writer.
#[derive(Debug)]
pub(super) struct SpoolWriter {
    thread: JoinHandle<u64>,
}

/// How many panics the writer goes on after (each with the record in hand lost and
/// announced); past them it only counts what the queue still brings, as lost (announced by
/// the spool), so a queue that nothing drains can never hold the shutdown up.
const PANICS_TOLERATED: u32 = 4;

impl SpoolWriter {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn(
        rx: BoundedReceiver<Record>,
        spooler: Spooler,
        health: Arc<Health>,
        metrics: Arc<AgentMetrics>,
        queue_dropped: Arc<AtomicU64>,
        status: Option<Arc<super::status::StatusFeed>>,
        stats: Option<(Aggregator, Arc<AtomicU64>)>,
        supervisor: Arc<Supervisor>,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                let mut writer = Writer {
                    rx: &rx,
                    spooler,
                    health: &health,
                    metrics: &metrics,
                    queue_dropped: &queue_dropped,
                    status: status.as_deref(),
                    stats,
                    queue_announced: 0,
                    spool_drops_seen: 0,
                    in_hand: 0,
                };
                writer.spool_drops_seen = writer.spooler.spool_drops();
                supervised(&mut writer, &supervisor)
            })?;
        Ok(SpoolWriter { thread })
    }

    /// Waits until the queue is closed (every sender dropped), drained and committed;
    /// returns the records spooled.
    pub(super) async fn join(self) -> u64 {
        match tokio::task::spawn_blocking(move || self.thread.join()).await {
            Ok(Ok(n)) => n,
            _ => {
                tracing::error!("Spool writer failed.");
                0
            }
        }
    }
}

/// The writer's loop under the [`Supervisor`]: a panic (in the spool, the statistics, a
/// serialiser) is caught here, the records it had in hand are announced lost
/// (`component_panicked`, with their count), the daemon is asked to stop, and the loop
/// starts again with the same queue and spooler, so what waits in the queue and what the
/// shutdown still sends is spooled, not dropped as `queue_closed`. After
/// [`PANICS_TOLERATED`] panics the queue is only drained and counted as lost.
fn supervised(writer: &mut Writer<'_>, supervisor: &Supervisor) -> u64 {
    let mut panics = 0;
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run()));
        let payload = match run {
            Ok(spooled) => return spooled,
            Err(payload) => payload,
        };
        panics += 1;
        let lost = std::mem::take(&mut writer.in_hand);
        writer.health.records_lost(lost);
        writer.spooler.mark_appended();
        if let Some(gap) = supervisor.caught("spool_writer", payload.as_ref(), Some(lost)) {
            let announced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                append(
                    &mut writer.spooler,
                    Record::Gap(Box::new(gap)),
                    writer.health,
                    writer.metrics,
                );
                writer.spooler.commit()
            }));
            if !matches!(announced, Ok(Ok(()))) {
                tracing::error!("The spool writer's panic could not be announced in the spool; the run marker stays, so the next start announces this run as ended uncleanly.");
            }
        }
        if panics > 1 {
            // The statistics or the status feed may be what panics: the records first.
            writer.stats = None;
            writer.status = None;
        }
        if panics > PANICS_TOLERATED {
            let mut lost = 0;
            loop {
                match writer.rx.recv_timeout(std::time::Duration::from_secs(1)) {
                    Ok(_) => lost += 1,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            let counted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                writer.announce_queue_drops();
                writer
                    .spooler
                    .note_lost("spool writer panicked repeatedly", lost);
                let _ = writer.spooler.commit();
            }));
            tracing::error!(lost, counted = counted.is_ok(), "The spool writer panicked {panics} times: the records still queued were counted as lost.");
            writer.health.records_lost(lost);
            return writer.spooler.spooled();
        }
    }
}

/// The spool writer's state, kept across a panic of its loop.
struct Writer<'a> {
    rx: &'a BoundedReceiver<Record>,
    spooler: Spooler,
    health: &'a Health,
    metrics: &'a AgentMetrics,
    queue_dropped: &'a AtomicU64,
    status: Option<&'a super::status::StatusFeed>,
    stats: Option<(Aggregator, Arc<AtomicU64>)>,
    /// The queue's drops announced so far, the spool's own drops told to `/health`.
    queue_announced: u64,
    spool_drops_seen: u64,
    /// Records taken (from the queue, or made by the statistics) and not yet handed to the
    /// spool: what a panic loses.
    in_hand: u64,
}

impl Writer<'_> {
    /// The queue's drops counted so far, announced (a `records_not_spooled` gap record by
    /// the spool) and told to `/health`.
    fn announce_queue_drops(&mut self) {
        let queue_lost = self.queue_dropped.load(Ordering::Acquire);
        if queue_lost > self.queue_announced {
            self.spooler.note_lost(
                "record queue full (or half full, for records of calls no response came for)",
                queue_lost - self.queue_announced,
            );
            self.health.records_lost(queue_lost - self.queue_announced);
            self.queue_announced = queue_lost;
        }
    }

    /// Hands records to the [`Spooler`] (pseudonymise, append), commits in groups (durable
    /// at most one flush interval after the append, the uplink woken), and commits what is
    /// left when the queue closes. Returns records spooled. Every record lost on the way
    /// (the queue full, an append that failed) is also announced upstream by a gap record.
    fn run(&mut self) -> u64 {
        let flush_every = self.spooler.flush_every().min(STATS_EVERY);
        let mut stats_due = std::time::Instant::now();
        let (health, metrics) = (self.health, self.metrics);
        loop {
            self.announce_queue_drops();
            let spool_drops = self.spooler.spool_drops();
            if spool_drops > self.spool_drops_seen {
                health.records_lost(spool_drops - self.spool_drops_seen);
                self.spool_drops_seen = spool_drops;
            }
            let received = self.rx.recv_timeout(flush_every);
            let closed = matches!(received, Err(RecvTimeoutError::Disconnected));
            if closed {
                // The last read of the drop counter, after the last possible drop: every
                // sender is gone (a drop is counted before its sender can go), so nothing can
                // be counted after this. The read at the top of the loop came before the wait
                // for the close, and a drop in between was counted and never announced.
                self.announce_queue_drops();
            }
            if let Ok(record) = received {
                self.in_hand = 1;
                crate::panics::inject("spool_writer");
                match (self.stats.as_mut(), &record) {
                    (Some((aggregator, _)), Record::Call(call)) => {
                        // Classified on the clear number, before the spooler pseudonymises
                        // it; keyed as the queue sources key their records, to join them.
                        let keys = crate::stats::interval::JoinKeys::of(
                            call,
                            self.spooler.pseudonymizer(),
                        );
                        aggregator.call_keyed(call, keys, Timestamp::now());
                    }
                    (Some((aggregator, _)), Record::Queue(queue)) => {
                        // Pseudonymised at ingest already: counted on its own, in the service
                        // named like its queue (see `Aggregator::queue_record`).
                        aggregator.queue_record(queue, Timestamp::now());
                    }
                    (Some((aggregator, _)), Record::Agent(agent)) => {
                        // An agent's presence in a queue (pseudonymised at ingest): staffed
                        // and paused time in the service named like its queue.
                        aggregator.agent_state(agent, Timestamp::now());
                    }
                    (Some((aggregator, _)), Record::Registrations(minute)) => {
                        // The node's REGISTER attempts (RFC 6076 RRD, IRA): its first service.
                        aggregator.registrations(minute, Timestamp::now());
                    }
                    _ => {}
                }
                if let Some(status) = self.status {
                    status.record(&record);
                }
                append(&mut self.spooler, record, health, metrics);
                self.in_hand = 0;
            }
            if let Some((aggregator, produced)) = self.stats.as_mut() {
                let now = Timestamp::now();
                let intervals = if closed {
                    aggregator.finish(now)
                } else if stats_due.elapsed() >= STATS_EVERY {
                    stats_due = std::time::Instant::now();
                    publish_open(aggregator, now, metrics);
                    if let Some(status) = self.status {
                        status.open_intervals(&aggregator.open(now));
                    }
                    aggregator.tick(now)
                } else {
                    Vec::new()
                };
                self.in_hand = intervals.len() as u64;
                for interval in intervals {
                    // Made here, not in the record queue: counted as produced here.
                    produced.fetch_add(1, Ordering::Relaxed);
                    metrics.records_produced.with(&["interval"]).inc();
                    metrics.stats_interval_records.inc();
                    if interval.revision > 0 {
                        metrics.stats_interval_revisions.inc();
                    }
                    let interval = Record::Interval(Box::new(interval));
                    if let Some(status) = self.status {
                        status.record(&interval);
                    }
                    append(&mut self.spooler, interval, health, metrics);
                    self.in_hand -= 1;
                }
            }
            let committed = if closed {
                self.spooler.commit()
            } else {
                self.spooler.commit_if_due().map(|_| ())
            };
            if let Err(e) = committed {
                // Once a flush interval while the store cannot be written: logged at most
                // once a minute, with how many failed since (the spool's own state and
                // `/health` say the rest).
                if let Some(failed) = metrics.log_limiter.due(("spool_commit_failed", ""), 1) {
                    tracing::error!(error = %crate::report::Chain(&e), failed, "Spool commit failed.");
                }
            }
            health.progress(Stage::SpoolWriter);
            if closed {
                return self.spooler.spooled();
            }
        }
    }
}

/// How often the statistics close intervals and publish the open ones.
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Appends one record; a record that does not reach the spool is lost: logged, counted and
/// announced upstream as one.
pub(super) fn append(
    spooler: &mut Spooler,
    record: Record,
    health: &Health,
    metrics: &AgentMetrics,
) {
    match spooler.append(record) {
        Ok(_) => {}
        Err(SpoolerError::Serialise(_)) => {
            RecordsDropped {
                reason: DropReason::NotSerialisable,
                count: 1,
            }
            .emit(metrics);
            spooler.note_lost("record not serialisable", 1);
            health.records_lost(1);
        }
        Err(e) => {
            SpoolAppendFailed { error: &e }.emit(metrics);
            spooler.note_lost("spool append failed", 1);
            health.records_lost(1);
        }
    }
}

/// The open interval of each service into the metrics (gauges: they start again at every
/// interval).
fn publish_open(aggregator: &Aggregator, now: Timestamp, metrics: &AgentMetrics) {
    use crate::record::interval::MOS_BUCKETS_CENTI;
    let counters = aggregator.counters();
    metrics
        .stats_calls_unclassified
        .raise_to(counters.unclassified);
    metrics.stats_contacts_too_late.raise_to(counters.too_late);
    metrics
        .stats_queue_no_arrival
        .raise_to(counters.queue_no_arrival);
    metrics.stats_queue_joined.raise_to(counters.joined);
    metrics.stats_join_overflow.raise_to(counters.join_overflow);
    metrics
        .stats_agent_states_unclassified
        .raise_to(counters.agent_states_unclassified);
    let (start, _) = aggregator.settings().clock.interval_of(now);
    let mut open = aggregator.open(now);
    let mut node_sip = crate::record::interval::SipSums::default();
    for service in aggregator.settings().services.iter() {
        let sums = open
            .iter_mut()
            .find(|r| r.service == service.name && r.interval_start == start)
            .map(|r| std::mem::take(&mut r.sums))
            .unwrap_or_default();
        let name = service.name.as_str();
        let contacts = &metrics.interval_contacts;
        for (figure, value) in [
            ("offered", sums.offered),
            ("answered", sums.answered),
            ("abandoned", sums.abandoned),
            ("short_abandoned", sums.short_abandoned),
            ("flowed_out", sums.flowed_out),
            ("not_connected", sums.not_connected),
            ("answered_within_t", sums.answered_within_t),
            ("abandoned_within_t", sums.abandoned_within_t),
        ] {
            contacts.with(&[name, figure]).set(value as i64);
        }
        for outcome in [
            "answered",
            "abandoned",
            "busy",
            "rejected",
            "not_reached",
            "no_answer",
            "failed",
            "timed_out",
        ] {
            let n = sums.outcomes.get(outcome).copied().unwrap_or(0);
            contacts
                .with(&[name, &format!("outcome_{outcome}")])
                .set(n as i64);
        }
        let mut cumulative = 0;
        for (i, bound) in MOS_BUCKETS_CENTI.iter().enumerate() {
            cumulative += sums.mos_buckets.get(i).copied().unwrap_or(0);
            let le = format!("{:.2}", f64::from(*bound) / 100.0);
            metrics
                .interval_mos_calls
                .with(&[name, &le])
                .set(cumulative as i64);
        }
        metrics
            .interval_mos_calls
            .with(&[name, "+Inf"])
            .set(sums.mos_scored as i64);
        metrics
            .interval_wait_answered_ms
            .with(&[name])
            .set(sums.wait_answered_ms as i64);
        metrics
            .interval_peak_concurrent
            .with(&[name])
            .set(i64::from(sums.peak_concurrent()));
        metrics
            .interval_start_timestamp_seconds
            .with(&[name])
            .set(start.as_nanos() / 1_000_000_000);
        let a = &sums.agents;
        for (figure, value) in [
            ("staffed_ms", a.staffed_ms),
            ("paused_ms", a.paused_ms),
            ("logins", a.logins),
            ("logoffs", a.logoffs),
        ] {
            metrics
                .interval_agents
                .with(&[name, figure])
                .set(value as i64);
        }
        node_sip.merge(&sums.node_sip);
    }
    // The node's RFC 6076 section lives in its first service's interval: summed over the
    // services, it is the node's.
    for (figure, value) in [
        ("invites", node_sip.invites),
        ("established", node_sip.established),
        ("redirected", node_sip.redirected),
        ("effective", node_sip.effective),
        ("ineffective", node_sip.ineffective),
        ("completed", node_sip.completed),
        ("completed_ms", node_sip.completed_ms),
        ("pdd_count", node_sip.pdd_count),
        ("pdd_ms", node_sip.pdd_ms),
        ("sdd_count", node_sip.sdd_count),
        ("sdd_ms", node_sip.sdd_ms),
        ("registrations", node_sip.registrations),
        ("registered", node_sip.registered),
        (
            "registrations_ineffective",
            node_sip.registrations_ineffective,
        ),
        ("rrd_ms", node_sip.rrd_ms),
    ] {
        metrics.interval_node_sip.with(&[figure]).set(value as i64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::privacy::{Privacy, Pseudonymizer};
    use crate::seal::Keyring;
    use crate::spool::{Spool, SpoolConfig};

    /// A record dropped while the writer waits for the queue's close — after its last read
    /// of the drop counter, before the last sender goes — is announced. The writer read the
    /// counter only at the top of its loop: such a drop was counted (a metric, a log line)
    /// and never announced.
    #[test]
    fn a_drop_just_before_the_queue_closes_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(
            SpoolConfig::new(dir.path(), "edge-01"),
            Keyring::new((1, [42; 32]), &[]),
        )
        .unwrap();
        let spool = Arc::new(Mutex::new(spool));
        let metrics = Arc::new(AgentMetrics::new());
        let health = Arc::new(Health::new(&[Stage::SpoolWriter], Default::default()));
        let (tx, rx) = crate::bounded::channel_weighted::<Record>(1, 1 << 20);
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = super::super::RecordQueue {
            tx,
            metrics: Arc::clone(&metrics),
            produced: Arc::new(AtomicU64::new(0)),
            dropped: Arc::clone(&dropped),
        };
        // A flush interval long enough that the writer waits (1 s, its statistics' beat)
        // without looking at the counter again before the close.
        let writer = SpoolWriter::spawn(
            rx,
            Spooler::new(
                Arc::clone(&spool),
                Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
                Duration::from_secs(10),
                None,
            ),
            Arc::clone(&health),
            Arc::clone(&metrics),
            Arc::clone(&dropped),
            None,
            None,
            Supervisor::new("edge-01", &metrics),
        )
        .unwrap();
        // The writer has read the counter (0) and waits for a record.
        std::thread::sleep(Duration::from_millis(200));
        // A producer whose place was refused while the queue was full, and whose count lands
        // now, after the writer took the last record and read the counter: the count is
        // the queue's own (`RecordQueue::push` counts a refusal so), then its sender goes.
        // The instant cannot be hit through `push` from a test (the queue is empty once the
        // writer waits), so the count is made as `push` makes it.
        dropped.fetch_add(1, Ordering::Release);
        drop(queue);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(writer.join());
        let mut spool = spool.lock().unwrap();
        spool.announce_drops().unwrap();
        let gaps: Vec<serde_json::Value> = spool
            .read(None, 10)
            .unwrap()
            .iter()
            .map(|r| serde_json::from_slice(&r.payload).unwrap())
            .collect();
        assert_eq!(gaps.len(), 1, "the drop is announced: {gaps:?}");
        assert_eq!(gaps[0]["reason"], "records_not_spooled");
        assert_eq!(gaps[0]["dropped"], 1);
    }
}
