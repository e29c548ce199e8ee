//! Is the data path making progress? One [`Health`] the pipeline updates and `/health` and
//! the systemd watchdog read.
//!
//! Each stage of the pipeline calls [`Health::progress`] on every turn of its loop, including
//! idle turns (a poll timeout on a quiet interface, a flush tick with nothing to flush, a
//! backoff wait that ended): progress means "the loop is alive", not "data arrived", so a
//! quiet night is not a degradation. A stage that stops turning for longer than
//! [`HealthThresholds::stall_after`] is stalled.
//!
//! The uplink is judged apart: a collector out of reach is not a stuck process (restarting
//! would not help, and the spool is there to ride it out), so the uplink makes `/health`
//! answer 503 but never stops the watchdog. Its rules, each after
//! [`HealthThresholds::uplink_failing_after`] (`observe.uplink_failing_after_s`, default
//! 60 s):
//!
//! - **failing uplink**: every attempt since then failed (collector unreachable, TLS refused,
//!   a status such as 401/403/404/5xx, a bad acknowledgement) — the reason names the last
//!   failure;
//! - **stalled drain**: the spool has not been seen drained and no batch was acknowledged for
//!   that long, i.e. records are waiting and none goes out (since start if never);
//! - **dead letters**: at once, while the dead-letter area holds records the collector
//!   refused (until an operator resends or removes them).
//!
//! The report says when a batch was last acknowledged, or `null` with
//! `uplink_ever_acknowledged: false` when none ever was since start — never a recent success
//! it did not see.
//!
//! Times are kept as milliseconds since the `Health` was made, in atomics, so updating is one
//! relaxed store and never blocks a hot path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The stages of the pipeline whose loops are watched (a closed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Capture loops (live interfaces, HEP listeners).
    Capture,
    /// Decode and call/stream correlation.
    Correlation,
    /// The task that appends to the spool and flushes it (group commit).
    SpoolWriter,
    /// The forwarder: reads batches, sends them, waits out backoff.
    Uplink,
    /// Serial sensor polling.
    Sensors,
}

const STAGES: [Stage; 5] = [
    Stage::Capture,
    Stage::Correlation,
    Stage::SpoolWriter,
    Stage::Uplink,
    Stage::Sensors,
];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Correlation => "correlation",
            Stage::SpoolWriter => "spool_writer",
            Stage::Uplink => "uplink",
            Stage::Sensors => "sensors",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// When the data path counts as degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthThresholds {
    /// A stage without progress for this long is stalled. Longer than the uplink's largest
    /// backoff wait (60 s), so waiting out a backoff is not a stall.
    pub stall_after: Duration,
    /// An uplink failing for this long, or a spool not drained (records waiting, none
    /// acknowledged) for this long, makes `/health` 503. Longer than a few backoff waits
    /// and the uplink timeout, so one lost connection is not an alarm.
    pub uplink_failing_after: Duration,
    /// After start, a stage that has not turned yet is not stalled until this has passed
    /// (spool recovery, first connection).
    pub startup_grace: Duration,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            stall_after: Duration::from_secs(120),
            uplink_failing_after: Duration::from_secs(60),
            startup_grace: Duration::from_secs(120),
        }
    }
}

/// Progress of the pipeline, updated by its stages.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    thresholds: HealthThresholds,
    expected: [bool; STAGES.len()],
    /// Per stage: milliseconds since `origin` of the last progress, plus one (0: never).
    last: [AtomicU64; STAGES.len()],
    /// Bumped by every progress of any stage.
    epoch: AtomicU64,
    spool_open: AtomicBool,
    /// Stamps (milliseconds since `origin`, plus one; 0: never) of the last batch
    /// acknowledged, the last sign the drain is current (an acknowledgement or a drained
    /// spool), and the first of the failures since the last success (0: not failing).
    uplink_acked: AtomicU64,
    drain_current: AtomicU64,
    uplink_failing_since: AtomicU64,
    /// The last failure, for the reason text (written on failures only, never on a hot path).
    uplink_failure: Mutex<String>,
    dead_letters: AtomicU64,
    /// Records lost on the way to the spool or by the spool's bounds: total, and the stamp of
    /// the last loss (0: never).
    records_lost: AtomicU64,
    last_loss: AtomicU64,
}

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// `"ok"` or `"degraded"`.
    pub status: &'static str,
    pub reasons: Vec<String>,
    pub uptime_seconds: f64,
    pub spool_open: bool,
    /// Since the last batch the collector acknowledged; `None`: never since start.
    pub uplink_last_success_seconds_ago: Option<f64>,
    pub uplink_ever_acknowledged: bool,
    /// Since the first of the failures going on now; `None`: not failing.
    pub uplink_failing_seconds: Option<f64>,
    pub uplink_last_failure: Option<String>,
    /// Since the spool was last seen drained or a batch acknowledged; `None`: never.
    pub spool_drain_seconds_ago: Option<f64>,
    /// Records held in the dead-letter area.
    pub dead_letter_records: u64,
    /// Records lost since start (record queue full, failed appends, the spool's full-store
    /// and full-disk drops); each also announced upstream by a gap record.
    pub records_lost: u64,
    pub stages: Vec<StageReport>,
}

impl HealthReport {
    pub fn healthy(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    pub last_progress_seconds_ago: Option<f64>,
}

impl Health {
    /// Health of a pipeline made of the `expected` stages (others are ignored).
    pub fn new(expected: &[Stage], thresholds: HealthThresholds) -> Self {
        Health::new_at(expected, thresholds, Instant::now())
    }

    /// As [`Health::new`], with the start time given (tests drive time by hand).
    pub fn new_at(expected: &[Stage], thresholds: HealthThresholds, origin: Instant) -> Self {
        let mut flags = [false; STAGES.len()];
        for s in expected {
            flags[s.index()] = true;
        }
        Health {
            origin,
            thresholds,
            expected: flags,
            last: Default::default(),
            epoch: AtomicU64::new(0),
            spool_open: AtomicBool::new(false),
            uplink_acked: AtomicU64::new(0),
            drain_current: AtomicU64::new(0),
            uplink_failing_since: AtomicU64::new(0),
            uplink_failure: Mutex::new(String::new()),
            dead_letters: AtomicU64::new(0),
            records_lost: AtomicU64::new(0),
            last_loss: AtomicU64::new(0),
        }
    }

    pub fn thresholds(&self) -> &HealthThresholds {
        &self.thresholds
    }

    /// A stage's loop turned.
    pub fn progress(&self, stage: Stage) {
        self.progress_at(stage, Instant::now());
    }

    pub fn progress_at(&self, stage: Stage, at: Instant) {
        self.last[stage.index()].store(self.stamp(at), Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_spool_open(&self, open: bool) {
        self.spool_open.store(open, Ordering::Relaxed);
    }

    /// The collector acknowledged a batch: the uplink works and the drain is current.
    pub fn uplink_acked(&self) {
        self.uplink_acked_at(Instant::now());
    }

    pub fn uplink_acked_at(&self, at: Instant) {
        let stamp = self.stamp(at);
        self.uplink_acked.store(stamp, Ordering::Relaxed);
        self.drain_current.store(stamp, Ordering::Relaxed);
        self.uplink_failing_since.store(0, Ordering::Relaxed);
    }

    /// The forwarder found nothing durable left to send.
    pub fn spool_drained(&self) {
        self.spool_drained_at(Instant::now());
    }

    pub fn spool_drained_at(&self, at: Instant) {
        self.drain_current.store(self.stamp(at), Ordering::Relaxed);
    }

    /// The collector answered, even if not with an acknowledgement (it refused a record's
    /// content): the uplink is not failing.
    pub fn uplink_answered(&self) {
        self.uplink_failing_since.store(0, Ordering::Relaxed);
    }

    /// An attempt failed and will be retried.
    pub fn uplink_failed(&self, reason: &str) {
        self.uplink_failed_at(reason, Instant::now());
    }

    pub fn uplink_failed_at(&self, reason: &str, at: Instant) {
        let stamp = self.stamp(at);
        let _ = self.uplink_failing_since.compare_exchange(
            0,
            stamp,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let mut last = self
            .uplink_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        last.clear();
        last.push_str(reason);
    }

    /// `count` records were lost (queue, failed append, spool bounds): `/health` is degraded
    /// for `uplink_failing_after` from the last loss.
    pub fn records_lost(&self, count: u64) {
        self.records_lost_at(count, Instant::now());
    }

    pub fn records_lost_at(&self, count: u64, at: Instant) {
        if count == 0 {
            return;
        }
        self.records_lost.fetch_add(count, Ordering::Relaxed);
        self.last_loss.store(self.stamp(at), Ordering::Relaxed);
    }

    /// Records held in the dead-letter area now.
    pub fn set_dead_letters(&self, records: u64) {
        self.dead_letters.store(records, Ordering::Relaxed);
    }

    /// A count of every progress so far (for the watchdog).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    fn stamp(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64 + 1
    }

    /// Time since a stamp, `None` for never.
    fn age(&self, stamp: u64, now: Instant) -> Option<Duration> {
        let at = stamp.checked_sub(1)?;
        let uptime = now.saturating_duration_since(self.origin);
        Some(uptime.saturating_sub(Duration::from_millis(at)))
    }

    /// Stages expected but stalled at `now`, with why.
    fn stalled(&self, now: Instant) -> Vec<String> {
        let uptime = now.saturating_duration_since(self.origin);
        let mut reasons = Vec::new();
        for stage in STAGES {
            if !self.expected[stage.index()] {
                continue;
            }
            match self.age(self.last[stage.index()].load(Ordering::Relaxed), now) {
                None if uptime > self.thresholds.startup_grace => reasons.push(format!(
                    "{} has made no progress since start ({} s ago)",
                    stage.name(),
                    uptime.as_secs()
                )),
                Some(age) if age > self.thresholds.stall_after => reasons.push(format!(
                    "{} has made no progress for {} s",
                    stage.name(),
                    age.as_secs()
                )),
                _ => {}
            }
        }
        reasons
    }

    /// The report `/health` answers with.
    pub fn check(&self, now: Instant) -> HealthReport {
        let uptime = now.saturating_duration_since(self.origin);
        let mut reasons = self.stalled(now);
        let spool_open = self.spool_open.load(Ordering::Relaxed);
        if !spool_open {
            reasons.push("spool is not open".into());
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let limit = self.thresholds.uplink_failing_after;
        let acked = self.age(load(&self.uplink_acked), now);
        let last_success = match acked {
            Some(age) => format!("last batch acknowledged {} s ago", age.as_secs()),
            None => "no batch acknowledged since start".to_owned(),
        };
        let failing = self.age(load(&self.uplink_failing_since), now);
        let last_failure = failing.map(|_| {
            self.uplink_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
        if let (Some(age), Some(why)) = (failing, &last_failure) {
            if age > limit {
                reasons.push(format!(
                    "uplink failing for {} s ({last_success}): {why}",
                    age.as_secs()
                ));
            }
        }
        let drain = self.age(load(&self.drain_current), now);
        // Never current: measured from start, so a fresh process is not degraded at once.
        let drain_age = drain.unwrap_or(uptime);
        if drain_age > limit {
            reasons.push(format!(
                "spool not drained: records waiting and none acknowledged for {} s ({last_success})",
                drain_age.as_secs()
            ));
        }
        let records_lost = load(&self.records_lost);
        if let Some(age) = self.age(load(&self.last_loss), now) {
            if age <= limit {
                reasons.push(format!(
                    "records lost {} s ago ({records_lost} since start; announced upstream, \
                     see teledge_records_dropped_total and the spool's drops)",
                    age.as_secs()
                ));
            }
        }
        let dead_letters = load(&self.dead_letters);
        if dead_letters > 0 {
            reasons.push(format!(
                "{dead_letters} record(s) refused by the collector held as dead letters \
                 (teledge dead-letters list)"
            ));
        }
        let stages = STAGES
            .iter()
            .filter(|s| self.expected[s.index()])
            .map(|&s| StageReport {
                stage: s.name(),
                last_progress_seconds_ago: self
                    .age(self.last[s.index()].load(Ordering::Relaxed), now)
                    .map(|d| d.as_secs_f64()),
            })
            .collect();
        HealthReport {
            status: if reasons.is_empty() { "ok" } else { "degraded" },
            reasons,
            uptime_seconds: uptime.as_secs_f64(),
            spool_open,
            uplink_last_success_seconds_ago: acked.map(|d| d.as_secs_f64()),
            uplink_ever_acknowledged: acked.is_some(),
            uplink_failing_seconds: failing.map(|d| d.as_secs_f64()),
            uplink_last_failure: last_failure,
            spool_drain_seconds_ago: drain.map(|d| d.as_secs_f64()),
            dead_letter_records: dead_letters,
            records_lost,
            stages,
        }
    }

    /// The watchdog's question: did the data path make progress since the last call, and is
    /// no expected stage stalled? (A busy stage must not hide a stuck one, hence both.) The
    /// uplink's staleness and the spool flag are left out on purpose: a restart fixes
    /// neither a cut WAN nor a spool that did not open.
    pub fn watchdog_probe(self: Arc<Self>) -> impl FnMut() -> bool + Send + 'static {
        let mut advanced = epoch_advanced({
            let health = self.clone();
            move || health.epoch()
        });
        move || {
            let moved = advanced();
            moved && self.stalled(Instant::now()).is_empty()
        }
    }
}

/// True on each call where `epoch()` differs from what it was at the previous call (or at
/// creation, for the first call).
pub fn epoch_advanced(epoch: impl Fn() -> u64 + Send) -> impl FnMut() -> bool + Send {
    let mut seen = epoch();
    move || {
        let now = epoch();
        let moved = now != seen;
        seen = now;
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> HealthThresholds {
        HealthThresholds {
            stall_after: Duration::from_secs(10),
            uplink_failing_after: Duration::from_secs(60),
            startup_grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn healthy_when_every_expected_stage_turns() {
        let t0 = Instant::now();
        let h = Health::new_at(&[Stage::Capture, Stage::SpoolWriter], thresholds(), t0);
        h.set_spool_open(true);
        let t = t0 + Duration::from_secs(30);
        h.progress_at(Stage::Capture, t);
        h.progress_at(Stage::SpoolWriter, t);
        h.uplink_acked_at(t);
        let r = h.check(t + Duration::from_secs(1));
        assert!(r.healthy(), "{r:?}");
        assert_eq!(r.status, "ok");
        assert_eq!(r.stages.len(), 2);
    }

    #[test]
    fn stalled_stage_spool_closed_and_stale_uplink_are_each_reported() {
        let t0 = Instant::now();
        let h = Health::new_at(&[Stage::Capture, Stage::Uplink], thresholds(), t0);
        h.progress_at(Stage::Capture, t0 + Duration::from_secs(1));
        let r = h.check(t0 + Duration::from_secs(70));
        assert_eq!(r.status, "degraded");
        assert_eq!(r.reasons.len(), 4, "{:?}", r.reasons);
        assert!(r.reasons[0].starts_with("capture has made no progress for 69 s"));
        assert!(r.reasons[1].starts_with("uplink has made no progress since start"));
        assert_eq!(r.reasons[2], "spool is not open");
        assert!(
            r.reasons[3].starts_with("spool not drained: records waiting and none acknowledged for 70 s (no batch acknowledged since start)"),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn lost_records_degrade_health_for_the_uplink_failing_time() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let h = Health::new_at(&[], thresholds(), t0);
        h.set_spool_open(true);
        h.spool_drained_at(at(1));
        assert!(h.check(at(2)).healthy());
        // The record queue overflowed: degraded at once, with the count.
        h.records_lost_at(7, at(3));
        let r = h.check(at(4));
        assert!(!r.healthy(), "{r:?}");
        assert_eq!(r.records_lost, 7);
        assert!(
            r.reasons[0].starts_with("records lost 1 s ago (7 since start"),
            "{r:?}"
        );
        // No further loss: healthy again once the time has passed; the total stays.
        h.spool_drained_at(at(70));
        let r = h.check(at(70));
        assert!(r.healthy(), "{r:?}");
        assert_eq!(r.records_lost, 7);
    }

    #[test]
    fn a_failing_uplink_degrades_after_its_time_and_never_is_not_a_success() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let h = Health::new_at(&[], thresholds(), t0);
        h.set_spool_open(true);
        // Records waiting from the start, every attempt refused.
        for s in (1..=61).step_by(5) {
            h.uplink_failed_at("collector answered 404 to /v1/batchez: not found", at(s));
        }
        let r = h.check(at(50));
        assert!(r.healthy(), "{r:?}");
        assert_eq!(r.uplink_last_success_seconds_ago, None);
        assert!(!r.uplink_ever_acknowledged);
        assert_eq!(r.uplink_failing_seconds, Some(49.0));
        let r = h.check(at(62));
        assert_eq!(r.reasons.len(), 2, "{:?}", r.reasons);
        assert_eq!(
            r.reasons[0],
            "uplink failing for 61 s (no batch acknowledged since start): collector answered 404 to /v1/batchez: not found"
        );
        assert!(r.reasons[1].starts_with("spool not drained"));
        // It works again: healthy at once, and the success is recent.
        h.uplink_acked_at(at(63));
        let r = h.check(at(64));
        assert!(r.healthy(), "{r:?}");
        assert_eq!(r.uplink_last_success_seconds_ago, Some(1.0));
        assert_eq!(r.uplink_failing_seconds, None);
        // A quiet spool keeps it healthy without new acknowledgements.
        for s in 64..200 {
            h.spool_drained_at(at(s));
        }
        assert!(h.check(at(200)).healthy());
        // Records waiting but not going out (the forwarder sees no drained spool and no
        // acknowledgement), with no failure reported: degraded after the same time.
        let r = h.check(at(200 + 61));
        assert_eq!(r.reasons.len(), 1, "{:?}", r.reasons);
        assert!(
            r.reasons[0].contains("none acknowledged for 62 s (last batch acknowledged 198 s ago)"),
            "{:?}",
            r.reasons
        );
        // A dead letter degrades at once, until it is gone.
        h.spool_drained_at(at(262));
        h.set_dead_letters(2);
        let r = h.check(at(262));
        assert_eq!(r.dead_letter_records, 2);
        assert!(
            r.reasons[0].starts_with("2 record(s) refused"),
            "{:?}",
            r.reasons
        );
        h.set_dead_letters(0);
        assert!(h.check(at(262)).healthy());
    }

    #[test]
    fn a_stage_not_yet_started_is_given_the_startup_grace() {
        let t0 = Instant::now();
        let h = Health::new_at(&[Stage::Capture], thresholds(), t0);
        h.set_spool_open(true);
        assert!(h.check(t0 + Duration::from_secs(4)).healthy());
        assert!(!h.check(t0 + Duration::from_secs(6)).healthy());
    }

    #[test]
    fn epoch_advanced_reports_change_once() {
        let h = Arc::new(Health::new(&[], HealthThresholds::default()));
        let h2 = h.clone();
        let mut probe = epoch_advanced(move || h2.epoch());
        assert!(!probe());
        h.progress(Stage::Capture);
        assert!(probe());
        assert!(!probe());
    }
}
