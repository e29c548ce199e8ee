//! The status page's feed ([`StatusFeed`]): what the daemon knows, gathered into one
//! [`Snapshot`] once a second and published through a `watch` channel the page reads.
//!
//! - The ticker, after its tick, takes the active calls of every correlation shard, one
//!   shard locked at a time
//!   ([`crate::correlation::sharded::ShardedCorrelator::active_calls`]), and publishes.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlation::LiveStream;
    use crate::observe::{HealthThresholds, Stage};
    use crate::privacy::Privacy;
    use crate::record::sensor::{AlertKind, Breach, Communication, PortCounters, SensorValue};
    use crate::record::{Party, State};
    use crate::stats::service::{Direction, NumberPattern, ServiceSettings};

    fn feed() -> (StatusFeed, crate::observe::status::SnapshotRx) {
        let (tx, rx) = tokio::sync::watch::channel(Arc::default());
        let sales = ServiceSettings {
            name: "sales".into(),
            numbers: vec![NumberPattern::parse("0800*")],
            trunks: Vec::new(),
            direction: Direction::Any,
            monitorable: true,
            ..ServiceSettings::default_service()
        };
        let feed = StatusFeed::new(
            tx,
            Services::new(vec![sales]),
            Pseudonymizer::new(Privacy::keyed_hash([7; 32])),
            "edge-01",
        );
        (feed, rx)
    }

    fn stream(packets: u64, mos: Option<f64>) -> LiveStream {
        LiveStream {
            codec: Some("PCMA".into()),
            packets,
            lost_percent: 0.5,
            jitter_ms: Some(1.234),
            mos,
        }
    }

    fn party(user: &str) -> Party {
        Party {
            user: Some(user.into()),
            display_name: Some("Erika Mustermann".into()),
            uri: Some(format!("sip:{user}@example.com")),
        }
    }

    fn alert(id: &str, phase: AlertPhase) -> Record {
        Record::Alert(Box::new(AlertRecord {
            schema: crate::record::sensor::ALERT_SCHEMA,
            record_id: id.into(),
            alert_id: id.into(),
            device: "ups".into(),
            model: "Megatec Q1".into(),
            port: "/dev/ttyUSB0".into(),
            kind: AlertKind::Limit,
            reading: "temperature".into(),
            phase,
            breach: Some(Breach::High),
            limit: Some(30.0),
            unit: "°C".into(),
            started: Timestamp::from_secs_nanos(100, 0),
            ended: None,
            duration_s: None,
            value: Some(31.0),
            extreme: None,
        }))
    }

    #[test]
    fn a_snapshot_shows_calls_pseudonymised_and_classified_with_sensors_and_open_alerts() {
        let (feed, rx) = feed();
        let metrics = AgentMetrics::new();
        metrics.source_kernel_drops.with(&["eth0"]).add(3);
        let health = Health::new(&[Stage::SpoolWriter], HealthThresholds::default());
        assert!(feed.due());
        feed.record(&Record::Sensor(Box::new(SensorRecord {
            schema: crate::record::sensor::SENSOR_SCHEMA,
            record_id: "r".into(),
            device: "ups".into(),
            model: "Megatec Q1".into(),
            port: "/dev/ttyUSB0".into(),
            time: Timestamp::from_secs_nanos(100, 0),
            communication: Communication::Ok,
            last_good_time: None,
            stale: false,
            values: vec![SensorValue {
                name: "temperature".into(),
                value: 31.0,
                unit: "°C".into(),
            }],
            states: [("on_battery".to_owned(), true), ("fault".to_owned(), false)].into(),
            counters: PortCounters::default(),
        })));
        feed.record(&alert("a1", AlertPhase::Started));
        feed.record(&alert("a2", AlertPhase::Started));
        feed.record(&alert("a1", AlertPhase::Ended));
        let started = Timestamp::from_secs_nanos(1000, 0);
        let call = ActiveCall {
            call_id: "abc@pbx".into(),
            caller: party("4930111"),
            callee: party("0800123"),
            caller_address: "192.0.2.1:5060".parse().unwrap(),
            callee_address: "192.0.2.2:5060".parse().unwrap(),
            state: State::Connected,
            started,
            answered: Some(started.plus(Duration::from_secs(5))),
            started_before_capture: false,
            caller_to_callee: vec![stream(10, None), stream(500, Some(4.2))],
            callee_to_caller: Vec::new(),
        };
        let now = started.plus(Duration::from_secs(65));
        feed.publish(&[call], 3, now, &metrics, &health);
        assert!(!feed.due(), "once a second");
        let s = rx.borrow().clone();
        assert_eq!(s.seq, 1);
        let c = &s.calls[0];
        let p = Pseudonymizer::new(Privacy::keyed_hash([7; 32]));
        assert_eq!(c.id, p.identifier("abc@pbx"));
        assert_ne!(c.id, "abc@pbx");
        assert_eq!(c.caller.as_deref(), Some(p.number("4930111").as_str()));
        assert!(!format!("{s:?}").contains("Erika") && !format!("{s:?}").contains("0800123"));
        assert_eq!(
            c.service.as_deref(),
            Some("sales"),
            "classified on the clear number"
        );
        assert_eq!(c.state, "connected");
        assert_eq!((c.duration_s, c.talk_s), (65.0, Some(60.0)));
        let forward = c.caller_to_callee.as_ref().unwrap();
        assert_eq!(
            (forward.packets, forward.mos, forward.jitter_ms),
            (500, Some(4.2), Some(1.23))
        );
        assert!(c.callee_to_caller.is_none());
        assert_eq!(s.calls_not_shown, 3);
        assert_eq!(s.sensors.len(), 1);
        assert_eq!(s.sensors[0].states, vec!["on_battery".to_owned()]);
        let alerts: Vec<_> = s.alerts.iter().map(|a| a.reading.as_str()).collect();
        assert_eq!(alerts, vec!["temperature"], "a1 ended, a2 open");
        assert_eq!(s.capture.kernel_drops, 3);
        assert_eq!(s.services[0].name, "sales");
        assert!(s.services[0].monitorable);
    }
}
