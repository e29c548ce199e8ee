//! Sensor readings and deviation alerts, in the same record envelope as calls.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::time::Timestamp;

/// Schema id of a sensor reading record.
pub const SENSOR_SCHEMA: &str = "teledge.sensor/1";
/// Schema id of an alert record.
pub const ALERT_SCHEMA: &str = "teledge.alert/1";

/// Whether the agent could talk to the device when the record was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Communication {
    Ok,
    Lost,
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorValue {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

/// Counters of one port since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PortCounters {
    pub polls: u64,
    pub polls_failed: u64,
    pub timeouts: u64,
    pub retries: u64,
    pub bad_crc: u64,
    pub exceptions: u64,
    /// Replies or lines that did not decode (wrong length, bad checksum, echo, junk).
    pub bad_replies: u64,
    /// Bytes thrown away to resynchronise.
    pub garbage_bytes: u64,
    /// Times the port was (re)opened after the first time.
    pub reopens: u64,
    /// Failed attempts to open the port.
    pub open_failures: u64,
    /// Unsolicited UPS alert characters caught.
    pub unsolicited_alerts: u64,
}

/// A sensor reading record (`teledge.sensor/1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorRecord {
    pub schema: &'static str,
    pub record_id: String,
    /// The device's name in the configuration (e.g. `server-room-ups`).
    pub device: String,
    pub model: String,
    pub port: String,
    pub time: Timestamp,
    pub communication: Communication,
    /// When the values were last read successfully (`null`: never since start).
    pub last_good_time: Option<Timestamp>,
    /// The values are older than the staleness bound; they are the last ones known.
    pub stale: bool,
    pub values: Vec<SensorValue>,
    /// Protocol status flags (UPS on battery, battery low, ...).
    pub states: BTreeMap<String, bool>,
    pub counters: PortCounters,
}

/// Which limit was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breach {
    Low,
    High,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A value outside its limits.
    Limit,
    /// A status flag of the device (on battery, low battery, fault).
    State,
    /// The device stopped answering.
    Communication,
}

/// Whether this record opens or closes the deviation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertPhase {
    Started,
    Ended,
}

/// An alert record (`teledge.alert/1`): one when a deviation starts and one when it ends; both
/// carry the same `alert_id`, and the end carries the duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    pub schema: &'static str,
    pub record_id: String,
    pub alert_id: String,
    pub device: String,
    pub model: String,
    pub port: String,
    pub kind: AlertKind,
    /// The reading or flag (`temperature`, `on_battery`, `communication`).
    pub reading: String,
    pub phase: AlertPhase,
    /// `high` or `low` for limits; `null` for states and communication.
    pub breach: Option<Breach>,
    /// The limit crossed.
    pub limit: Option<f64>,
    pub unit: String,
    pub started: Timestamp,
    pub ended: Option<Timestamp>,
    pub duration_s: Option<f64>,
    /// The value that opened the deviation.
    pub value: Option<f64>,
    /// The worst value during the deviation (on the end record).
    pub extreme: Option<f64>,
}
