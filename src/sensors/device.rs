//! One task per device: opens its port, polls it on aligned ticks with a per-request timeout
//! and bounded retries, reopens it with backoff when it disappears, and turns what it reads
//! into sensor records (at their own cadence, flagged stale when old) and alert records
//! (deviations with start, end and duration; communication lost and restored).
//!
//! A device that is gone costs nothing while it is gone: the task sleeps until the next
//! reopen attempt (exponential backoff with jitter, capped), it never spins on a dead
//! descriptor (end of file and EIO close the port), and a closed port is dropped, so no
//! descriptor leaks however often the device comes and goes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::record::sensor::{
    AlertKind, AlertPhase, AlertRecord, Communication, PortCounters, SensorRecord, SensorValue,
    ALERT_SCHEMA, SENSOR_SCHEMA,
};
use crate::record::{stable_id, Record};
use crate::sensors::apc::ApcAlert;
use crate::sensors::deviation::{AlertEvent, Breach, Deviation, Limits};
use crate::sensors::profile::{Profile, Protocol};
use crate::sensors::serial::{self, OpenError, SerialLine};
use crate::sensors::session::{PollError, Sample, Session, Unsolicited};
use crate::time::Timestamp;

/// How a device is read, from its profile and the configuration.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// The device's name in records (`server-room-ups`).
    pub name: String,
    pub port: PathBuf,
    pub profile: Profile,
    pub poll_interval: Duration,
    /// Cadence of sensor records (alerts are evaluated at every poll regardless).
    pub record_interval: Duration,
    pub timeout: Duration,
    /// Extra attempts of a failed poll within one tick.
    pub retries: u32,
    /// Values older than this are flagged stale.
    pub stale_after: Duration,
    /// No good poll for this long: communication lost, the port is closed and reopened.
    pub lost_after: Duration,
    pub reopen_min: Duration,
    pub reopen_max: Duration,
}

impl DeviceSettings {
    /// Settings from a profile alone: its poll interval and timeout; records at every poll;
    /// stale after three missed polls (NUT's MAXAGE is 15 s for a 5 s poll); lost after three.
    pub fn from_profile(
        name: impl Into<String>,
        port: impl Into<PathBuf>,
        profile: Profile,
    ) -> Self {
        let poll_interval = Duration::from_secs(profile.serial.poll_interval_s.max(1));
        DeviceSettings {
            name: name.into(),
            port: port.into(),
            poll_interval,
            record_interval: poll_interval,
            timeout: Duration::from_millis(profile.serial.timeout_ms.max(1)),
            retries: 1,
            stale_after: poll_interval * 3,
            lost_after: poll_interval * 3,
            reopen_min: Duration::from_secs(1),
            reopen_max: Duration::from_secs(30),
            profile,
        }
    }
}

/// Opens the port of a device; a trait so tests can hand in pseudo-terminal pairs.
pub trait Opener: Send {
    type Port: SerialLine;
    fn open(&mut self) -> Result<Self::Port, OpenError>;
}

/// Opens a real serial port by path (re-resolved on every attempt, so a by-id symlink that
/// now points to another ttyUSB index is followed).
#[derive(Debug, Clone)]
pub struct SerialOpener {
    pub path: PathBuf,
    pub serial: crate::sensors::profile::SerialSettings,
}

impl Opener for SerialOpener {
    type Port = tokio_serial::SerialStream;
    fn open(&mut self) -> Result<Self::Port, OpenError> {
        serial::open(&self.path, &self.serial)
    }
}

/// Status flags that are deviations when set, per protocol.
fn alerting_states(protocol: Protocol) -> &'static [&'static str] {
    match protocol {
        Protocol::MegatecQ1 => &["on_battery", "battery_low", "ups_fault", "shutdown_active"],
        Protocol::ApcSmart => &["on_battery", "battery_low", "overload", "replace_battery"],
        _ => &[],
    }
}

/// Units of the values a UPS protocol defines.
fn protocol_unit(name: &str) -> &'static str {
    if name.ends_with("_voltage") {
        "V"
    } else if name.ends_with("_percent") {
        "%"
    } else if name.ends_with("_hz") {
        "Hz"
    } else if name.starts_with("temperature") {
        "°C"
    } else {
        ""
    }
}

/// The alert state of one reading or flag.
#[derive(Debug)]
struct Watch {
    kind: AlertKind,
    limits: Limits,
    unit: String,
    deviation: Deviation,
}

/// The time from now to the next multiple of `interval` since the epoch, so that devices
/// with the same interval are polled together and records line up across boxes.
fn until_aligned(interval: Duration) -> Duration {
    let interval_ns = interval.as_nanos().max(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let wait = interval_ns - now % interval_ns;
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// A device being read.
#[derive(Debug)]
pub struct Device<O: Opener> {
    settings: DeviceSettings,
    opener: O,
    counters: PortCounters,
    latest: Sample,
    last_good: Option<Timestamp>,
    /// Last good poll (or the start), for the communication-lost bound.
    last_good_instant: Instant,
    /// `Some(start)` while communication is lost.
    lost_since: Option<Timestamp>,
    watches: BTreeMap<String, Watch>,
    opened_before: bool,
    backoff: Backoff,
    out: mpsc::Sender<Record>,
    receiver_gone: bool,
}

impl<O: Opener> Device<O> {
    pub fn new(settings: DeviceSettings, opener: O, out: mpsc::Sender<Record>) -> Self {
        let mut watches = BTreeMap::new();
        for reading in &settings.profile.readings {
            if let Some(limits) = reading.limits {
                let unit = if reading.unit.is_empty() {
                    protocol_unit(&reading.name).to_string()
                } else {
                    reading.unit.clone()
                };
                watches.insert(
                    reading.name.clone(),
                    Watch {
                        kind: AlertKind::Limit,
                        limits,
                        unit,
                        deviation: Deviation::new(limits),
                    },
                );
            }
        }
        for state in alerting_states(settings.profile.protocol) {
            // A flag is a value of 0 or 1 with a high limit of one half.
            let limits = Limits {
                low: None,
                high: Some(0.5),
                hysteresis: 0.0,
            };
            watches.insert(
                (*state).to_string(),
                Watch {
                    kind: AlertKind::State,
                    limits,
                    unit: String::new(),
                    deviation: Deviation::new(limits),
                },
            );
        }
        let backoff = Backoff::new(settings.reopen_min, settings.reopen_max);
        Device {
            settings,
            opener,
            counters: PortCounters::default(),
            latest: Sample::default(),
            last_good: None,
            last_good_instant: Instant::now(),
            lost_since: None,
            watches,
            opened_before: false,
            backoff,
            out,
            receiver_gone: false,
        }
    }

    /// Reads the device until `stop` is cancelled (or the record
    /// receiver does). Returns the port's counters.
    pub async fn run(mut self, stop: CancellationToken) -> PortCounters {
        let mut session: Option<Session<O::Port>> = None;
        let mut next_poll = Instant::now();
        let mut reopen_at = Instant::now();
        let mut next_record = Instant::now() + until_aligned(self.settings.record_interval);
        while !stop.is_cancelled() && !self.receiver_gone {
            if session.is_none() && Instant::now() >= reopen_at {
                match self.opener.open() {
                    Ok(port) => {
                        if self.opened_before {
                            self.counters.reopens += 1;
                        }
                        self.opened_before = true;
                        tracing::info!(device = %self.settings.name, port = %self.settings.port.display(), "port open");
                        session = Some(Session::new(port, &self.settings.profile));
                        next_poll = Instant::now();
                    }
                    Err(e) => {
                        self.counters.open_failures += 1;
                        let wait = self.backoff.next_wait();
                        // Said once per outage at warn level; the retries only at debug.
                        if self.counters.open_failures == 1 || self.lost_since.is_none() {
                            tracing::warn!(device = %self.settings.name, error = %crate::report::Chain(&e), "Cannot open; retrying with backoff.");
                        } else {
                            tracing::debug!(device = %self.settings.name, error = %crate::report::Chain(&e), "Cannot open; next try in {wait:?}.");
                        }
                        reopen_at = Instant::now() + wait;
                    }
                }
            }
            if self.last_good_instant.elapsed() >= self.settings.lost_after
                && self.lost_since.is_none()
            {
                self.communication_lost("no good reply").await;
                if session.take().is_some() {
                    reopen_at = Instant::now() + self.backoff.next_wait();
                }
            }
            let wake = if session.is_some() {
                next_poll
            } else {
                reopen_at
            };
            let lost_check = self.last_good_instant + self.settings.lost_after;
            let counters = &mut self.counters;
            let idle = async {
                match session.as_mut() {
                    Some(s) => s.idle(counters).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next_record) => {
                    self.emit_reading().await;
                    next_record = Instant::now() + until_aligned(self.settings.record_interval);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if let Some(s) = session.as_mut() {
                        if let Err(reason) = self.poll(s).await {
                            session = None;
                            self.communication_lost(&reason).await;
                            reopen_at = Instant::now() + self.backoff.next_wait();
                        }
                        next_poll = Instant::now() + until_aligned(self.settings.poll_interval);
                    }
                }
                _ = tokio::time::sleep_until(lost_check), if self.lost_since.is_none() => {}
                unsolicited = idle => {
                    match unsolicited {
                        Ok(Unsolicited::Alerts(alerts)) => {
                            let now = Timestamp::now();
                            self.apply_apc_alerts(&alerts, now).await;
                        }
                        Ok(Unsolicited::Line | Unsolicited::Nothing) => {}
                        Err(e) => {
                            session = None;
                            self.communication_lost(&e.to_string()).await;
                            reopen_at = Instant::now() + self.backoff.next_wait();
                        }
                    }
                }
            }
        }
        drop(session);
        self.counters
    }

    /// One poll with its retries. `Err` when the port is gone.
    async fn poll(&mut self, session: &mut Session<O::Port>) -> Result<(), String> {
        self.counters.polls += 1;
        let mut alerts = Vec::new();
        let mut outcome = Err(PollError::Timeout(self.settings.timeout));
        for attempt in 0..=self.settings.retries {
            if attempt > 0 {
                self.counters.retries += 1;
            }
            outcome = session
                .poll(self.settings.timeout, &mut self.counters, &mut alerts)
                .await;
            match &outcome {
                Ok(_) | Err(PollError::Disconnected(_)) => break,
                // The device understood and refused: asking again changes nothing.
                Err(PollError::Exception { .. }) => break,
                Err(_) => {}
            }
        }
        let now = Timestamp::now();
        self.apply_apc_alerts(&alerts, now).await;
        match outcome {
            Ok(sample) => {
                self.last_good = Some(now);
                self.last_good_instant = Instant::now();
                self.backoff.reset();
                if let Some(started) = self.lost_since.take() {
                    tracing::info!(device = %self.settings.name, "communication restored");
                    self.emit_communication(AlertPhase::Ended, started, Some(now))
                        .await;
                }
                self.latest = sample;
                let values: Vec<(String, f64)> = self
                    .latest
                    .values
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .chain(
                        self.latest
                            .states
                            .iter()
                            .map(|(k, on)| (k.clone(), f64::from(u8::from(*on)))),
                    )
                    .collect();
                for (name, value) in values {
                    self.evaluate(&name, now, value).await;
                }
                Ok(())
            }
            Err(e @ PollError::Disconnected(_)) => {
                self.counters.polls_failed += 1;
                Err(crate::report::chain(&e))
            }
            Err(e) => {
                self.counters.polls_failed += 1;
                tracing::debug!(device = %self.settings.name, error = %crate::report::Chain(&e), "Poll failed.");
                Ok(())
            }
        }
    }

    async fn apply_apc_alerts(&mut self, alerts: &[ApcAlert], now: Timestamp) {
        for alert in alerts {
            self.counters.unsolicited_alerts += 1;
            let (state, on) = match alert {
                ApcAlert::OnBattery => ("on_battery", true),
                ApcAlert::BackOnLine => ("on_battery", false),
                ApcAlert::BatteryLow => ("battery_low", true),
                ApcAlert::BatteryLowCleared => ("battery_low", false),
                ApcAlert::ReplaceBattery => ("replace_battery", true),
                ApcAlert::Overload => ("overload", true),
                ApcAlert::OverloadCleared => ("overload", false),
            };
            tracing::info!(device = %self.settings.name, "UPS alert: {alert:?}");
            self.latest.states.insert(state.into(), on);
            if state == "on_battery" {
                self.latest.states.insert("on_line".into(), !on);
            }
            self.evaluate(state, now, f64::from(u8::from(on))).await;
        }
    }

    async fn evaluate(&mut self, name: &str, now: Timestamp, value: f64) {
        let Some(watch) = self.watches.get_mut(name) else {
            return;
        };
        let Some(event) = watch.deviation.reading(now, value) else {
            return;
        };
        let (kind, unit, limits) = (watch.kind, watch.unit.clone(), watch.limits);
        let limit_of = |breach: Breach| match breach {
            Breach::High => limits.high,
            Breach::Low => limits.low,
        };
        let (phase, breach, started, ended, duration_s, value, extreme) = match event {
            AlertEvent::Started { breach, at, value } => (
                AlertPhase::Started,
                breach,
                at,
                None,
                None,
                Some(value),
                None,
            ),
            AlertEvent::Ended {
                breach,
                started,
                ended,
                duration_s,
                extreme,
            } => (
                AlertPhase::Ended,
                breach,
                started,
                Some(ended),
                Some(duration_s),
                None,
                Some(extreme),
            ),
        };
        let is_limit = kind == AlertKind::Limit;
        let record = self.alert(
            kind,
            name,
            phase,
            is_limit.then_some(breach),
            if is_limit { limit_of(breach) } else { None },
            unit,
            started,
            ended,
            duration_s,
            if is_limit { value } else { None },
            if is_limit { extreme } else { None },
        );
        tracing::info!(device = %self.settings.name, reading = name, "deviation {phase:?}");
        self.send(Record::Alert(Box::new(record))).await;
    }

    async fn communication_lost(&mut self, reason: &str) {
        if self.lost_since.is_some() {
            return;
        }
        let now = Timestamp::now();
        tracing::warn!(device = %self.settings.name, "communication lost: {reason}");
        self.lost_since = Some(now);
        self.emit_communication(AlertPhase::Started, now, None)
            .await;
    }

    async fn emit_communication(
        &mut self,
        phase: AlertPhase,
        started: Timestamp,
        ended: Option<Timestamp>,
    ) {
        let duration_s = ended.map(|e| crate::time::round_secs(e.seconds_since(started)));
        let record = self.alert(
            AlertKind::Communication,
            "communication",
            phase,
            None,
            None,
            String::new(),
            started,
            ended,
            duration_s,
            None,
            None,
        );
        self.send(Record::Alert(Box::new(record))).await;
    }

    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        kind: AlertKind,
        reading: &str,
        phase: AlertPhase,
        breach: Option<Breach>,
        limit: Option<f64>,
        unit: String,
        started: Timestamp,
        ended: Option<Timestamp>,
        duration_s: Option<f64>,
        value: Option<f64>,
        extreme: Option<f64>,
    ) -> AlertRecord {
        let start_ns = started.as_nanos().to_be_bytes();
        let alert_id = stable_id(&[self.settings.name.as_bytes(), reading.as_bytes(), &start_ns]);
        let phase_name: &[u8] = match phase {
            AlertPhase::Started => b"started",
            AlertPhase::Ended => b"ended",
        };
        AlertRecord {
            schema: ALERT_SCHEMA,
            record_id: stable_id(&[alert_id.as_bytes(), phase_name]),
            alert_id,
            device: self.settings.name.clone(),
            model: self.settings.profile.model.clone(),
            port: self.settings.port.display().to_string(),
            kind,
            reading: reading.to_string(),
            phase,
            breach: breach.map(Into::into),
            limit,
            unit,
            started,
            ended,
            duration_s,
            value,
            extreme,
        }
    }

    /// The current sensor record.
    pub fn reading_record(&self, now: Timestamp) -> SensorRecord {
        let stale = self
            .last_good
            .is_none_or(|t| now.seconds_since(t) > self.settings.stale_after.as_secs_f64());
        let unit_of = |name: &str| {
            self.settings
                .profile
                .readings
                .iter()
                .find(|r| r.name == name && !r.unit.is_empty())
                .map(|r| r.unit.clone())
                .unwrap_or_else(|| protocol_unit(name).to_string())
        };
        SensorRecord {
            schema: SENSOR_SCHEMA,
            record_id: stable_id(&[self.settings.name.as_bytes(), &now.as_nanos().to_be_bytes()]),
            device: self.settings.name.clone(),
            model: self.settings.profile.model.clone(),
            port: self.settings.port.display().to_string(),
            time: now,
            communication: if self.lost_since.is_some() {
                Communication::Lost
            } else {
                Communication::Ok
            },
            last_good_time: self.last_good,
            stale,
            values: self
                .latest
                .values
                .iter()
                .map(|(name, value)| SensorValue {
                    name: name.clone(),
                    value: *value,
                    unit: unit_of(name),
                })
                .collect(),
            states: self.latest.states.clone(),
            counters: self.counters.clone(),
        }
    }

    async fn emit_reading(&mut self) {
        let record = self.reading_record(Timestamp::now());
        self.send(Record::Sensor(Box::new(record))).await;
    }

    async fn send(&mut self, record: Record) {
        if self.out.send(record).await.is_err() {
            self.receiver_gone = true;
        }
    }
}

/// Reads a device once (for `teledge sensors probe`): opens the port, polls with the
/// profile's timeout and retries, and returns what it got.
pub async fn probe(
    settings: &DeviceSettings,
) -> Result<(Sample, PortCounters, Vec<ApcAlert>), String> {
    let mut opener = SerialOpener {
        path: settings.port.clone(),
        serial: settings.profile.serial.clone(),
    };
    let port = opener.open().map_err(|e| crate::report::chain(&e))?;
    let mut session = Session::new(port, &settings.profile);
    let mut counters = PortCounters::default();
    let mut alerts = Vec::new();
    let mut last = String::new();
    for _ in 0..=settings.retries {
        counters.polls += 1;
        match session
            .poll(settings.timeout, &mut counters, &mut alerts)
            .await
        {
            Ok(sample) => return Ok((sample, counters, alerts)),
            Err(e) => last = crate::report::chain(&e),
        }
    }
    Err(last)
}
