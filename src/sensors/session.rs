//! One conversation with a device over an open port: the request and reply of each protocol,
//! with replies read to their terminator under a deadline, bounded buffers, and every bad
//! reply counted and skipped. Knows nothing of reopening, schedules or alerts (see `device`).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::record::sensor::PortCounters;
use crate::sensors::apc::{self, ApcAlert};
use crate::sensors::ascii;
use crate::sensors::megatec;
use crate::sensors::modbus::{plan_requests, ModbusClient, ModbusError, RegisterRequest, Tap};
use crate::sensors::profile::{decode_registers, Profile, Protocol, Source};
use crate::sensors::serial::{IoCause, SerialLine};

/// Longest reply or line kept while waiting for its terminator.
const MAX_REPLY: usize = ascii::MAX_LINE;

/// What one poll read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub values: BTreeMap<String, f64>,
    pub states: BTreeMap<String, bool>,
}

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PollError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("reply with a bad CRC")]
    BadCrc,
    #[error("Modbus exception {code:#04x} ({name})")]
    Exception { code: u8, name: &'static str },
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The port is gone (end of file, EIO): close it and reopen later.
    #[error("device disconnected")]
    Disconnected(#[source] IoCause),
}

impl PollError {
    fn count(&self, counters: &mut PortCounters) {
        match self {
            PollError::Timeout(_) => counters.timeouts += 1,
            PollError::BadCrc => counters.bad_crc += 1,
            PollError::Exception { .. } => counters.exceptions += 1,
            PollError::BadReply(_) => counters.bad_replies += 1,
            PollError::Disconnected(_) => {}
        }
    }
}

/// What a device said without being asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Unsolicited {
    Alerts(Vec<ApcAlert>),
    /// A line sensor sent a good line.
    Line,
    Nothing,
}

/// An open conversation with one device.
#[derive(Debug)]
pub struct Session<T> {
    profile: Profile,
    io: Tap<T>,
    /// Bytes received and not consumed yet (line protocols).
    pending: Vec<u8>,
    /// Line sensors: the line being received went past the bound; everything up to its
    /// terminator is garbage (its tail is no line of its own).
    overlong: bool,
    modbus: Option<ModbusClient<T>>,
    requests: Vec<RegisterRequest>,
    apc_smart_mode: bool,
    /// Line sensors: values of the good lines since the last poll.
    heard: Sample,
    heard_any: bool,
}

impl<T: SerialLine> Session<T> {
    pub fn new(port: T, profile: &Profile) -> Self {
        let io = Tap::new(port);
        let (modbus, requests) = match profile.protocol {
            Protocol::ModbusRtu => (
                Some(ModbusClient::new(
                    io.clone(),
                    profile.serial.modbus_address.unwrap_or(1),
                )),
                plan_requests(&profile.readings),
            ),
            _ => (None, Vec::new()),
        };
        Session {
            profile: profile.clone(),
            io,
            pending: Vec::new(),
            overlong: false,
            modbus,
            requests,
            apc_smart_mode: false,
            heard: Sample::default(),
            heard_any: false,
        }
    }

    /// Polls the device once. Errors are counted in `counters` as well as returned. Alerts
    /// an APC UPS slipped into its replies are appended to `alerts`.
    pub async fn poll(
        &mut self,
        timeout: Duration,
        counters: &mut PortCounters,
        alerts: &mut Vec<ApcAlert>,
    ) -> Result<Sample, PollError> {
        let result = match self.profile.protocol {
            Protocol::MegatecQ1 => self.poll_q1(timeout).await,
            Protocol::ApcSmart => self.poll_apc(timeout, alerts).await,
            Protocol::ModbusRtu => self.poll_modbus(timeout, counters).await,
            Protocol::AsciiKv | Protocol::Nmea => self.poll_lines(timeout),
        };
        if let Err(e) = &result {
            e.count(counters);
        }
        result
    }

    /// Waits for bytes the device sends unasked: lines of line sensors, alert characters of
    /// an APC UPS; on request/reply protocols they are garbage. Cancel-safe: meant to run in
    /// a `select!` against the next poll.
    pub async fn idle(&mut self, counters: &mut PortCounters) -> Result<Unsolicited, PollError> {
        let mut buf = [0u8; 256];
        let n = self.read_some(&mut buf).await?;
        let bytes = &buf[..n];
        match self.profile.protocol {
            Protocol::ApcSmart => {
                let (alerts, rest) = apc::split_alerts(bytes);
                counters.garbage_bytes += rest.len() as u64;
                Ok(Unsolicited::Alerts(alerts))
            }
            Protocol::AsciiKv | Protocol::Nmea => {
                self.pending.extend_from_slice(bytes);
                Ok(if self.take_lines(counters) {
                    Unsolicited::Line
                } else {
                    Unsolicited::Nothing
                })
            }
            Protocol::MegatecQ1 | Protocol::ModbusRtu => {
                let _ = self.io.take_seen();
                counters.garbage_bytes += n as u64;
                Ok(Unsolicited::Nothing)
            }
        }
    }

    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, PollError> {
        match self.io.read(buf).await {
            // A tty whose device went away reads as end of file (or EIO below); without
            // this check a reader would spin on it at 100 % CPU.
            Ok(0) => Err(PollError::Disconnected(IoCause::end_of_file())),
            Ok(n) => Ok(n),
            Err(e) => Err(PollError::Disconnected(e.into())),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), PollError> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| PollError::Disconnected(e.into()))?;
        self.io
            .flush()
            .await
            .map_err(|e| PollError::Disconnected(e.into()))
    }

    /// Reads until `terminator`, returning the reply without it. Bytes before a request are
    /// stale: the caller clears `pending` first.
    async fn read_reply(
        &mut self,
        terminator: u8,
        deadline: Instant,
        timeout: Duration,
        mut filter: impl FnMut(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<u8>, PollError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == terminator) {
                let line: Vec<u8> = self.pending.drain(..=pos).take(pos).collect();
                return Ok(line);
            }
            if self.pending.len() > MAX_REPLY {
                self.pending.clear();
                return Err(PollError::BadReply(format!(
                    "over {MAX_REPLY} bytes without a terminator"
                )));
            }
            let mut buf = [0u8; 128];
            let n = match tokio::time::timeout_at(deadline, self.read_some(&mut buf)).await {
                Ok(n) => n?,
                Err(_) => {
                    let partial = !self.pending.is_empty();
                    self.pending.clear();
                    return Err(if partial {
                        PollError::BadReply("partial reply".into())
                    } else {
                        PollError::Timeout(timeout)
                    });
                }
            };
            let kept = filter(&buf[..n]);
            self.pending.extend_from_slice(&kept);
        }
    }

    async fn poll_q1(&mut self, timeout: Duration) -> Result<Sample, PollError> {
        self.pending.clear();
        self.write_all(b"Q1\r").await?;
        let deadline = Instant::now() + timeout;
        let reply = self
            .read_reply(b'\r', deadline, timeout, |b| b.to_vec())
            .await?;
        let status = megatec::parse_q1(&reply).map_err(|e| PollError::BadReply(e.to_string()))?;
        let mut sample = Sample::default();
        for (name, value) in [
            ("input_voltage", status.input_voltage),
            ("input_fault_voltage", status.input_fault_voltage),
            ("output_voltage", status.output_voltage),
            ("load_percent", status.load_percent),
            ("input_frequency_hz", status.input_frequency_hz),
            ("battery_voltage", status.battery_voltage),
            ("temperature_c", status.temperature_c),
        ] {
            if let Some(value) = value {
                sample.values.insert(name.into(), value);
            }
        }
        let f = status.flags;
        for (name, on) in [
            ("on_battery", f.on_battery),
            ("battery_low", f.battery_low),
            ("bypass_or_boost", f.bypass_or_boost),
            ("ups_fault", f.ups_fault),
            ("standby_type", f.standby_type),
            ("test_in_progress", f.test_in_progress),
            ("shutdown_active", f.shutdown_active),
            ("beeper_on", f.beeper_on),
        ] {
            sample.states.insert(name.into(), on);
        }
        Ok(sample)
    }

    /// One APC command: its reply line (CR LF), alert characters taken out of it.
    async fn apc_command(
        &mut self,
        command: &[u8],
        timeout: Duration,
        alerts: &mut Vec<ApcAlert>,
    ) -> Result<String, PollError> {
        self.pending.clear();
        self.write_all(command).await?;
        let deadline = Instant::now() + timeout;
        let reply = self
            .read_reply(b'\n', deadline, timeout, |bytes| {
                let (caught, rest) = apc::split_alerts(bytes);
                alerts.extend(caught);
                rest
            })
            .await?;
        let text = String::from_utf8_lossy(&reply).trim().to_string();
        Ok(text)
    }

    async fn poll_apc(
        &mut self,
        timeout: Duration,
        alerts: &mut Vec<ApcAlert>,
    ) -> Result<Sample, PollError> {
        if !self.apc_smart_mode {
            let answer = self.apc_command(b"Y", timeout, alerts).await?;
            if answer != "SM" {
                return Err(PollError::BadReply(format!(
                    "expected SM to Y (smart mode), got {answer:?}"
                )));
            }
            self.apc_smart_mode = true;
        }
        let status = self.apc_command(b"Q", timeout, alerts).await;
        let status = match status {
            Ok(text) => apc::parse_status(text.as_bytes())
                .ok_or_else(|| PollError::BadReply(format!("status {text:?} is not a hex byte"))),
            Err(e) => Err(e),
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                // Maybe the UPS restarted and left smart mode: ask again next time.
                self.apc_smart_mode = false;
                return Err(e);
            }
        };
        let mut sample = Sample::default();
        for (name, on) in [
            ("on_line", status.on_line),
            ("on_battery", status.on_battery),
            ("battery_low", status.battery_low),
            ("replace_battery", status.replace_battery),
            ("overload", status.overload),
            ("trim", status.trim),
            ("boost", status.boost),
            ("calibrating", status.calibrating),
        ] {
            sample.states.insert(name.into(), on);
        }
        for (command, name) in [
            (b"P", "load_percent"),
            (b"f", "battery_charge_percent"),
            (b"C", "temperature_c"),
            (b"B", "battery_voltage"),
            (b"L", "input_voltage"),
            (b"O", "output_voltage"),
            (b"F", "input_frequency_hz"),
        ] {
            let text = self.apc_command(command, timeout, alerts).await?;
            // "NA": the model does not have it.
            if let Ok(value) = text.parse::<f64>() {
                if value.is_finite() {
                    sample.values.insert(name.into(), value);
                }
            }
        }
        Ok(sample)
    }

    async fn poll_modbus(
        &mut self,
        timeout: Duration,
        counters: &mut PortCounters,
    ) -> Result<Sample, PollError> {
        let Some(client) = self.modbus.as_mut() else {
            return Err(PollError::BadReply("not a Modbus profile".into()));
        };
        let mut sample = Sample::default();
        let mut first_error = None;
        let mut answered = 0;
        for request in &self.requests {
            match client
                .read(request.function, request.start, request.count, timeout)
                .await
            {
                Ok(registers) => {
                    answered += 1;
                    for &(index, offset) in &request.readings {
                        let Some(reading) = self.profile.readings.get(index) else {
                            continue;
                        };
                        let Source::Register {
                            data_type,
                            byte_order,
                            ..
                        } = reading.source
                        else {
                            continue;
                        };
                        let regs = registers.get(usize::from(offset)..).unwrap_or(&[]);
                        if let Some(v) =
                            decode_registers(regs, data_type, byte_order, reading.scale)
                        {
                            sample.values.insert(reading.name.clone(), v);
                        }
                    }
                }
                Err(e) => {
                    let e = match e {
                        ModbusError::Timeout(t) => PollError::Timeout(t),
                        ModbusError::BadCrc(_) => PollError::BadCrc,
                        ModbusError::Exception { code, name } => {
                            PollError::Exception { code, name }
                        }
                        ModbusError::Garbage(n) => {
                            counters.garbage_bytes += n as u64;
                            PollError::BadReply(format!("{n} bytes of garbage"))
                        }
                        ModbusError::Mismatch(m) => PollError::BadReply(m),
                        ModbusError::Io(cause) => return Err(PollError::Disconnected(cause)),
                    };
                    if answered > 0 || first_error.is_some() {
                        // A partial poll: count this failure here, the poll still succeeds.
                        e.count(counters);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if answered == 0 => Err(e),
            Some(e) => {
                tracing::debug!(model = %self.profile.model, "partial Modbus poll: {e}");
                Ok(sample)
            }
            None => Ok(sample),
        }
    }

    /// Takes the complete lines out of `pending`; true when one was good.
    fn take_lines(&mut self, counters: &mut PortCounters) -> bool {
        let mut good = false;
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = self.pending.drain(..=pos).take(pos).collect();
            if self.overlong {
                // The rest of a line already refused as too long.
                self.overlong = false;
                counters.garbage_bytes += line.len() as u64 + 1;
                continue;
            }
            if line.is_empty() {
                continue; // the other half of a CR LF
            }
            if self.line(&line) {
                good = true;
            } else {
                counters.bad_replies += 1;
                counters.garbage_bytes += line.len() as u64 + 1;
            }
        }
        if self.pending.len() > MAX_REPLY {
            // No terminator in sight: drop it, and the rest of the line up to the next
            // terminator with it (resynchronise there). One bad reply per long line.
            if !self.overlong {
                counters.bad_replies += 1;
            }
            counters.garbage_bytes += self.pending.len() as u64;
            self.pending.clear();
            self.overlong = true;
        }
        good
    }

    /// Decodes one line of a line sensor into `heard`; false when it is not a good line.
    fn line(&mut self, line: &[u8]) -> bool {
        let mut found = false;
        match self.profile.protocol {
            Protocol::AsciiKv => {
                let Ok(fields) = ascii::parse_key_values(line) else {
                    return false;
                };
                for reading in &self.profile.readings {
                    let Source::Key(key) = &reading.source else {
                        continue;
                    };
                    let value = fields
                        .iter()
                        .find(|f| f.key.eq_ignore_ascii_case(key))
                        .and_then(|f| f.value);
                    if let Some(v) = value.map(|v| v * reading.scale).filter(|v| v.is_finite()) {
                        self.heard.values.insert(reading.name.clone(), v);
                        found = true;
                    }
                }
                // A well-formed line with none of our keys still shows the device is alive.
                found = found || !fields.is_empty();
            }
            Protocol::Nmea => {
                let Ok(sentence) = ascii::parse_nmea(line) else {
                    return false;
                };
                for reading in &self.profile.readings {
                    let Source::NmeaField { kind, index } = &reading.source else {
                        continue;
                    };
                    if !sentence.kind.eq_ignore_ascii_case(kind) {
                        continue;
                    }
                    let value = sentence
                        .fields
                        .get(*index)
                        .and_then(|f| f.trim().parse::<f64>().ok());
                    if let Some(v) = value.map(|v| v * reading.scale).filter(|v| v.is_finite()) {
                        self.heard.values.insert(reading.name.clone(), v);
                    }
                }
                found = true;
            }
            _ => {}
        }
        self.heard_any |= found;
        found
    }

    fn poll_lines(&mut self, timeout: Duration) -> Result<Sample, PollError> {
        if !self.heard_any {
            return Err(PollError::Timeout(timeout));
        }
        self.heard_any = false;
        Ok(std::mem::take(&mut self.heard))
    }
}
