//! The status page's feed ([`StatusFeed`]): what the daemon knows, gathered into one
//! [`Snapshot`] once a second and published through a `watch` channel the page reads.
//!
//! - The ticker (which holds the pipeline lock for its tick anyway) takes the correlator's
//!   active calls ([`crate::correlation::Correlator::active_calls`]), and publishes.
//! - The spool writer, which sees every record, keeps the last reading of each sensor, the
//!   open alerts, the closed intervals of each service and the open interval's figures
//!   (from the aggregator) on the board.
//!
//! Identities are pseudonymised here exactly as the spooler does it for records (the same
//! [`Pseudonymizer`]), so the page shows a call's id as its record will carry it; services
//! are classified by the same rules as the statistics, on the clear called number.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::correlation::{ActiveCall, LiveStream};
use crate::observe::status::{
    AlertView, CallView, CaptureView, DirectionView, IntervalView, SensorValueView, SensorView,
    ServiceView, Snapshot, SnapshotTx, SpoolView, UplinkView, HISTORY, MAX_CALLS_SHOWN,
};
use crate::observe::{AgentMetrics, Health};
use crate::privacy::Pseudonymizer;
use crate::record::interval::IntervalRecord;
use crate::record::sensor::{AlertPhase, AlertRecord, SensorRecord};
use crate::record::Record;
use crate::stats::service::Services;
use crate::time::Timestamp;

/// How often a snapshot is published.
pub(super) const EVERY: Duration = Duration::from_secs(1);
/// Open alerts kept on the board (beyond: the oldest is no longer shown).
const MAX_ALERTS: usize = 256;
/// Sensors kept on the board (the configuration names fewer).
const MAX_SENSORS: usize = 256;

#[derive(Debug, Default)]
struct Board {
    sensors: BTreeMap<String, SensorView>,
    alerts: BTreeMap<String, AlertView>,
    /// Per service: the open interval, and closed ones by start.
    open: BTreeMap<String, IntervalView>,
    closed: BTreeMap<String, VecDeque<IntervalView>>,
}

/// What the status page is fed from.
#[derive(Debug)]
pub(super) struct StatusFeed {
    tx: SnapshotTx,
    board: Mutex<Board>,
    services: Services,
    pseudonymizer: Pseudonymizer,
    node: String,
    seq: Mutex<(u64, Option<Instant>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn interval_view(r: &IntervalRecord) -> IntervalView {
    let kpis = crate::stats::kpi::kpis(&r.sums);
    let kpi = |name: &str| kpis.iter().find(|k| k.name == name).and_then(|k| k.value);
    IntervalView {
        start: Some(r.interval_start),
        minutes: r.interval_minutes,
        offered: r.sums.offered,
        answered: r.sums.answered,
        abandoned: r.sums.abandoned,
        service_level_percent: kpi("sl_cisco_negative"),
        abandon_rate_percent: kpi("abandon_rate"),
        asa_s: kpi("asa_s"),
        mos_mean: kpi("mos_mean"),
        peak_concurrent: kpi("peak_concurrent"),
    }
}

fn sensor_view(r: &SensorRecord) -> SensorView {
    SensorView {
        device: r.device.clone(),
        model: r.model.clone(),
        time: r.time,
        communication: serde_json::to_value(r.communication)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        stale: r.stale,
        values: r
            .values
            .iter()
            .map(|v| SensorValueView {
                name: v.name.clone(),
                value: v.value,
                unit: v.unit.clone(),
            })
            .collect(),
        states: r
            .states
            .iter()
            .filter(|(_, on)| **on)
            .map(|(name, _)| name.clone())
            .collect(),
    }
}

fn alert_view(r: &AlertRecord) -> AlertView {
    AlertView {
        device: r.device.clone(),
        kind: serde_json::to_value(r.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        reading: r.reading.clone(),
        started: r.started,
        value: r.value,
        limit: r.limit,
        unit: r.unit.clone(),
    }
}

fn direction(streams: &[LiveStream]) -> Option<DirectionView> {
    // The stream with the most packets: a relay's second leg or a re-INVITE's new stream
    // beside an idle one.
    streams
        .iter()
        .max_by_key(|s| s.packets)
        .map(|s| DirectionView {
            codec: s.codec.clone(),
            packets: s.packets,
            lost_percent: s.lost_percent,
            jitter_ms: s.jitter_ms.map(|j| (j * 100.0).round() / 100.0),
            mos: s.mos,
        })
}

impl StatusFeed {
    pub(super) fn new(
        tx: SnapshotTx,
        services: Services,
        pseudonymizer: Pseudonymizer,
        node: &str,
    ) -> StatusFeed {
        StatusFeed {
            tx,
            board: Mutex::default(),
            services,
            pseudonymizer,
            node: node.to_owned(),
            seq: Mutex::new((0, None)),
        }
    }

    /// Whether a snapshot is due (once per [`EVERY`]).
    pub(super) fn due(&self) -> bool {
        lock(&self.seq).1.is_none_or(|last| last.elapsed() >= EVERY)
    }

    /// A record on its way to the spool (the spool writer calls this for every record,
    /// and for the interval records it makes).
    pub(super) fn record(&self, record: &Record) {
        let mut board = lock(&self.board);
        match record {
            Record::Sensor(s)
                if board.sensors.len() < MAX_SENSORS || board.sensors.contains_key(&s.device) =>
            {
                board.sensors.insert(s.device.clone(), sensor_view(s));
            }
            Record::Alert(a) => match a.phase {
                AlertPhase::Started => {
                    if board.alerts.len() >= MAX_ALERTS {
                        let oldest = board
                            .alerts
                            .iter()
                            .min_by_key(|(_, v)| v.started)
                            .map(|(k, _)| k.clone());
                        if let Some(k) = oldest {
                            board.alerts.remove(&k);
                        }
                    }
                    board.alerts.insert(a.alert_id.clone(), alert_view(a));
                }
                AlertPhase::Ended => {
                    board.alerts.remove(&a.alert_id);
                }
            },
            Record::Interval(i) if i.closed => {
                let history = board.closed.entry(i.service.clone()).or_default();
                // A revision replaces the interval it revises.
                history.retain(|v| v.start != Some(i.interval_start));
                history.push_back(interval_view(i));
                history.make_contiguous().sort_by_key(|v| v.start);
                while history.len() > HISTORY {
                    history.pop_front();
                }
            }
            _ => {}
        }
    }

    /// The open intervals (the aggregator's, once a second).
    pub(super) fn open_intervals(&self, open: &[IntervalRecord]) {
        let mut board = lock(&self.board);
        board.open.clear();
        for r in open {
            let newer = board
                .open
                .get(&r.service)
                .is_none_or(|v| v.start < Some(r.interval_start));
            if newer {
                board.open.insert(r.service.clone(), interval_view(r));
            }
        }
    }

    fn call_view(&self, call: &ActiveCall, now: Timestamp) -> CallView {
        let p = &self.pseudonymizer;
        let service = self
            .services
            .classify_parts(
                call.callee.user.as_deref(),
                &call.caller_address.to_string(),
                &call.callee_address.to_string(),
            )
            .and_then(|i| self.services.get(i))
            .map(|s| s.name.clone());
        let state = serde_json::to_value(call.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        CallView {
            id: p.identifier(&call.call_id),
            service,
            caller: call.caller.user.as_deref().map(|u| p.number(u)),
            callee: call.callee.user.as_deref().map(|u| p.number(u)),
            state,
            started: call.started,
            duration_s: (now.seconds_since(call.started).max(0.0) * 10.0).round() / 10.0,
            talk_s: call
                .answered
                .map(|a| (now.seconds_since(a).max(0.0) * 10.0).round() / 10.0),
            caller_to_callee: direction(&call.caller_to_callee),
            callee_to_caller: direction(&call.callee_to_caller),
            listen: false,
        }
    }

    /// Builds and publishes a snapshot from the correlator's active calls (`more`: open
    /// calls beyond the limit) and the board.
    pub(super) fn publish(
        &self,
        calls: &[ActiveCall],
        more: usize,
        now: Timestamp,
        metrics: &AgentMetrics,
        health: &Health,
    ) {
        let seq = {
            let mut seq = lock(&self.seq);
            seq.0 += 1;
            seq.1 = Some(Instant::now());
            seq.0
        };
        let board = lock(&self.board);
        let services = self
            .services
            .iter()
            .map(|s| ServiceView {
                name: s.name.clone(),
                monitorable: s.monitorable,
                open: board.open.get(&s.name).cloned().unwrap_or_default(),
                history: board
                    .closed
                    .get(&s.name)
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect();
        let report = health.check(Instant::now());
        let last_success = metrics.uplink_last_success_timestamp_seconds.get();
        let snapshot = Snapshot {
            seq,
            time: now,
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            calls: calls.iter().map(|c| self.call_view(c, now)).collect(),
            calls_not_shown: more,
            services,
            sensors: board.sensors.values().cloned().collect(),
            alerts: board.alerts.values().cloned().collect(),
            spool: SpoolView {
                records: metrics.spool_records.sample(),
                bytes: metrics.spool_bytes.sample(),
                oldest_age_s: metrics.spool_oldest_age_seconds.last(),
                records_dropped: metrics.records_dropped.total(),
            },
            uplink: UplinkView {
                records_acked: metrics.uplink_records_acked.get(),
                consecutive_failures: metrics.uplink_consecutive_failures.get(),
                last_success: (last_success > 0)
                    .then(|| Timestamp::from_secs_nanos(last_success, 0)),
            },
            capture: CaptureView {
                packets: metrics.source_packets.total(),
                kernel_drops: metrics.source_kernel_drops.total(),
                active_calls: metrics.calls_active.get(),
                active_streams: metrics.streams_active.get(),
            },
            healthy: report.healthy(),
            health_reasons: report.reasons,
        };
        drop(board);
        self.tx.send_replace(Arc::new(snapshot));
    }
}

/// The limit of calls a snapshot shows.
pub(super) const CALLS: usize = MAX_CALLS_SHOWN;
