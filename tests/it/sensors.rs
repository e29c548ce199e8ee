//! Sensors against device simulators on real pseudo-terminals: socat joins two ptys, teledge
//! opens one end by its path (as it would `/dev/serial/by-id/...`) and a simulator written here
//! answers on the other end with the exact frames of the reference
//! (`../shared/reference/sensors.md`). Killing socat is an unplug: the path disappears and
//! the open descriptor hangs up; starting it again is a replug, at a new /dev/pts index.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use teledge::sensors::modbus::crc16;

pub(crate) fn profile_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("firmware-config")
        .join(format!("{name}.toml"))
}

/// A socat pty pair: `dev` for teledge, `sim` for the simulator.
pub(crate) struct PtyPair {
    socat: Child,
    pub(crate) dev: PathBuf,
    sim: PathBuf,
}

impl PtyPair {
    pub(crate) fn start(dir: &Path) -> PtyPair {
        let dev = dir.join("dev");
        let sim = dir.join("sim");
        let socat = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", sim.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is needed for the sensor tests (Debian package socat; scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(dev.exists() && sim.exists()) {
            assert!(Instant::now() < deadline, "socat did not create the ptys");
            thread::sleep(Duration::from_millis(10));
        }
        PtyPair { socat, dev, sim }
    }

    /// Unplug: both ends go away.
    fn stop(mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
        // SIGKILL leaves socat's links behind, pointing at pty numbers the next socat may be
        // given the other way round: a replug could then see both links resolve before the
        // new socat replaced them, and the simulator talk to the wrong end (a flaky
        // "communication restored" under load). A real unplug removes the device node.
        let _ = std::fs::remove_file(&self.dev);
        let _ = std::fs::remove_file(&self.sim);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.dev.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn open_sim(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.sim)
            .unwrap()
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.socat.kill();
        let _ = self.socat.wait();
    }
}

/// A Modbus RTU slave: registers by (function, address); answers exceptions for unknown
/// registers, and corrupts its CRCs while `bad_crc` is set.
#[derive(Clone, Default)]
pub(crate) struct ModbusSim {
    address: u8,
    registers: Arc<Mutex<HashMap<(u8, u16), u16>>>,
    bad_crc: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl ModbusSim {
    pub(crate) fn new(address: u8, registers: &[(u8, u16, u16)]) -> ModbusSim {
        let sim = ModbusSim {
            address,
            ..ModbusSim::default()
        };
        for &(f, r, v) in registers {
            sim.set(f, r, v);
        }
        sim
    }

    pub(crate) fn set(&self, function: u8, register: u16, value: u16) {
        self.registers
            .lock()
            .unwrap()
            .insert((function, register), value);
    }

    fn reply(&self, request: &[u8]) -> Option<Vec<u8>> {
        if request.len() != 8 || request[0] != self.address {
            return None;
        }
        if crc16(&request[..6]).to_le_bytes() != request[6..8] {
            return None;
        }
        let function = request[1];
        let start = u16::from_be_bytes([request[2], request[3]]);
        let count = u16::from_be_bytes([request[4], request[5]]);
        let registers = self.registers.lock().unwrap();
        let values: Option<Vec<u16>> = (start..start + count)
            .map(|r| registers.get(&(function, r)).copied())
            .collect();
        let mut frame = match values {
            Some(values) => {
                let mut f = vec![self.address, function, (values.len() * 2) as u8];
                for v in values {
                    f.extend_from_slice(&v.to_be_bytes());
                }
                f
            }
            // Exception 02: illegal data address.
            None => vec![self.address, function | 0x80, 0x02],
        };
        let mut crc = crc16(&frame).to_le_bytes();
        if self.bad_crc.load(Ordering::SeqCst) {
            crc[0] ^= 0x55;
        }
        frame.extend_from_slice(&crc);
        Some(frame)
    }

    /// Serves requests until the pty goes away.
    pub(crate) fn serve(&self, pty: &PtyPair) -> thread::JoinHandle<()> {
        let mut port = pty.open_sim();
        let sim = self.clone();
        thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                match port.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
                while pending.len() >= 8 {
                    let request: Vec<u8> = pending.drain(..8).collect();
                    sim.requests.lock().unwrap().push(request.clone());
                    match sim.reply(&request) {
                        Some(reply) => {
                            if port.write_all(&reply).is_err() {
                                return;
                            }
                        }
                        None => pending.clear(),
                    }
                }
            }
        })
    }
}

/// A Megatec Q1 UPS: answers `Q1\r` with the current status line, echoes anything else.
fn serve_q1(pty: &PtyPair, status: Arc<Mutex<String>>) -> thread::JoinHandle<()> {
    let mut port = pty.open_sim();
    thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match port.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            while let Some(pos) = pending.iter().position(|&b| b == b'\r') {
                let command: Vec<u8> = pending.drain(..=pos).collect();
                let reply = if command == b"Q1\r" {
                    status.lock().unwrap().clone().into_bytes()
                } else {
                    command
                };
                if port.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    })
}

/// An APC Smart-UPS: `Y` → `SM`, `Q` → the status byte, the other polls → fixed values;
/// `alerts` are sent unasked, and one is slipped into the middle of a reply.
fn serve_apc(
    pty: &PtyPair,
    status: Arc<AtomicU8>,
    alerts: mpsc::Receiver<u8>,
) -> thread::JoinHandle<()> {
    let mut port = pty.open_sim();
    let mut writer = port.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_alerts = Arc::clone(&stop);
    let mut alert_writer = port.try_clone().unwrap();
    thread::spawn(move || {
        while !stop_alerts.load(Ordering::SeqCst) {
            if let Ok(a) = alerts.recv_timeout(Duration::from_millis(50)) {
                let _ = alert_writer.write_all(&[a]);
            }
        }
    });
    thread::spawn(move || {
        let mut buf = [0u8; 16];
        loop {
            let n = match port.read(&mut buf) {
                Ok(0) | Err(_) => {
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => n,
            };
            for &command in &buf[..n] {
                let reply: String = match command {
                    b'Y' => "SM".into(),
                    b'Q' => format!("{:02X}", status.load(Ordering::SeqCst)),
                    b'P' => "054.0".into(),
                    // A '#' (replace battery) in the middle of a reply.
                    b'f' => "09#5.0".into(),
                    b'C' => "031.5".into(),
                    b'B' => "27.30".into(),
                    b'L' => "230.4".into(),
                    b'O' => "229.8".into(),
                    b'F' => "NA".into(),
                    _ => "NA".into(),
                };
                if writer.write_all(format!("{reply}\r\n").as_bytes()).is_err() {
                    return;
                }
            }
        }
    })
}

/// A line sensor sending `lines` over and over, every `every`.
fn serve_lines(pty: &PtyPair, lines: Vec<Vec<u8>>, every: Duration) -> thread::JoinHandle<()> {
    let mut port = pty.open_sim();
    thread::spawn(move || loop {
        for line in &lines {
            if port.write_all(line).is_err() {
                return;
            }
            thread::sleep(every);
        }
    })
}

fn teledge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teledge"))
}

fn probe(port: &Path, profile: &Path) -> (bool, String) {
    let out = teledge()
        .args(["sensors", "probe"])
        .arg(port)
        .arg("--profile")
        .arg(profile)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A running `teledge sensors watch`, its records arriving with the time they arrived.
struct Watch {
    child: Child,
    records: mpsc::Receiver<(Instant, Value)>,
    seen: Vec<(Instant, Value)>,
}

impl Watch {
    fn start(port: &Path, profile: &Path, extra: &[&str]) -> Watch {
        let mut child = teledge()
            .args(["sensors", "watch"])
            .arg(port)
            .arg("--profile")
            .arg(profile)
            .args(["--name", "dut"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value: Value = serde_json::from_str(&line).unwrap();
                if tx.send((Instant::now(), value)).is_err() {
                    return;
                }
            }
        });
        Watch {
            child,
            records: rx,
            seen: Vec::new(),
        }
    }

    /// A record already seen that matches `want`, or the next one to arrive.
    fn seen_or_wait(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        if let Some(found) = self.seen.iter().find(|(_, v)| want(v)) {
            return Some(found.clone());
        }
        self.wait_for(timeout, want)
    }

    /// Waits for a record matching `want`, keeping every record seen.
    fn wait_for(
        &mut self,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Option<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.records.recv_timeout(left) {
                Ok((at, v)) => {
                    self.seen.push((at, v.clone()));
                    if want(&v) {
                        return Some((at, v));
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits `settle` for stragglers, then every alert record about `reading` seen so far.
    fn alerts_about(&mut self, settle: Duration, reading: &str) -> Vec<Value> {
        thread::sleep(settle);
        while let Ok(r) = self.records.try_recv() {
            self.seen.push(r);
        }
        self.seen
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["type"] == "alert" && v["reading"] == reading)
            .cloned()
            .collect()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_reading(v: &Value) -> bool {
    v["type"] == "sensor"
}

fn good_reading(v: &Value) -> bool {
    is_reading(v)
        && v["communication"] == "ok"
        && v["stale"] == false
        && !v["values"].as_array().unwrap().is_empty()
}

fn value_of(record: &Value, name: &str) -> Option<f64> {
    record["values"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["value"].as_f64())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rfc3339_secs(v: &Value) -> f64 {
    let t = humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn xy_md02_reference_frames_decode_exactly_including_negative_and_x100() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    // 0x0131 = 30.5 °C, 0x0222 = 54.6 %RH: the reference reply 01 04 04 01 31 02 22 2A CE.
    let sim = ModbusSim::new(1, &[(4, 1, 0x0131), (4, 2, 0x0222)]);
    let _server = sim.serve(&pty);
    let (ok, out) = probe(&pty.dev, &profile_path("xy-md02"));
    assert!(ok, "{out}");
    assert!(out.contains("temperature = 30.5 °C"), "{out}");
    assert!(out.contains("humidity = 54.6 %RH"), "{out}");
    // Both registers in one request, byte for byte the reference request.
    assert_eq!(
        sim.requests.lock().unwrap()[0],
        vec![0x01, 0x04, 0x00, 0x01, 0x00, 0x02, 0x20, 0x0B]
    );

    // -20.5 °C (0xFF33).
    sim.set(4, 1, 0xFF33);
    let (ok, out) = probe(&pty.dev, &profile_path("xy-md02"));
    assert!(ok && out.contains("temperature = -20.5 °C"), "{out}");

    // The ×100 lots: 0x0BEA = 30.50 °C, 0x1554 = 54.60 %RH with scale 0.01 in the profile.
    let x100 = std::fs::read_to_string(profile_path("xy-md02"))
        .unwrap()
        .replace("scale = 0.1", "scale = 0.01");
    let x100_path = dir.path().join("xy-md02-x100.toml");
    std::fs::write(&x100_path, x100).unwrap();
    sim.set(4, 1, 0x0BEA);
    sim.set(4, 2, 0x1554);
    let (ok, out) = probe(&pty.dev, &x100_path);
    assert!(
        ok && out.contains("temperature = 30.5 °C") && out.contains("humidity = 54.6 %RH"),
        "{out}"
    );
}

#[test]
fn senseair_s8_reads_904_ppm_at_the_any_sensor_address() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let sim = ModbusSim::new(0xFE, &[(4, 3, 0x0388)]);
    let _server = sim.serve(&pty);
    let (ok, out) = probe(&pty.dev, &profile_path("senseair-s8"));
    assert!(ok && out.contains("co2 = 904 ppm"), "{out}");
    // FE 04 00 03 00 01 D5 C5, as in the reference.
    assert_eq!(
        sim.requests.lock().unwrap()[0],
        vec![0xFE, 0x04, 0x00, 0x03, 0x00, 0x01, 0xD5, 0xC5]
    );
}

#[test]
fn modbus_exceptions_and_bad_crcs_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    // Register 2 missing: the device answers exception 02 (illegal data address) for the
    // request covering registers 1 and 2.
    let sim = ModbusSim::new(1, &[(4, 1, 0x0131)]);
    let _server = sim.serve(&pty);
    let (ok, out) = probe(&pty.dev, &profile_path("xy-md02"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("exception 0x02 (illegal data address)"),
        "{out}"
    );

    sim.set(4, 2, 0x0222);
    sim.bad_crc.store(true, Ordering::SeqCst);
    let (ok, out) = probe(&pty.dev, &profile_path("xy-md02"));
    assert!(!ok, "{out}");
    assert!(out.contains("bad CRC"), "{out}");

    // Counted in the records of a running watch, and the readings resume once the line is clean.
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("xy-md02"),
        &["--poll-interval", "0.3"],
    );
    let bad = watch
        .wait_for(Duration::from_secs(10), |v| {
            is_reading(v) && v["counters"]["bad_crc"].as_u64() >= Some(2)
        })
        .expect("bad CRCs counted");
    assert!(bad.1["values"].as_array().unwrap().is_empty());
    sim.bad_crc.store(false, Ordering::SeqCst);
    let good = watch
        .wait_for(Duration::from_secs(10), good_reading)
        .expect("readings after the CRC errors");
    assert_eq!(value_of(&good.1, "temperature"), Some(30.5));
    assert_eq!(value_of(&good.1, "humidity"), Some(54.6));
}

#[test]
fn megatec_q1_status_line_and_an_on_battery_alert_with_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    // The NUT source example: line-interactive, on line.
    let on_line = "(226.0 195.0 226.0 014 49.0 27.5 30.0 00001000\r";
    let on_battery = "(000.0 000.0 226.0 034 49.0 25.1 30.0 10001000\r";
    let status = Arc::new(Mutex::new(on_line.to_string()));
    let _server = serve_q1(&pty, Arc::clone(&status));
    let (ok, out) = probe(&pty.dev, &profile_path("megatec-q1-ups"));
    assert!(ok, "{out}");
    for expected in [
        "input_voltage = 226",
        "input_fault_voltage = 195",
        "load_percent = 14",
        "input_frequency_hz = 49",
        "battery_voltage = 27.5",
        "temperature_c = 30",
        "on_battery: no",
        "standby_type: yes",
    ] {
        assert!(out.contains(expected), "{expected} missing in {out}");
    }

    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("megatec-q1-ups"),
        &["--poll-interval", "0.25"],
    );
    watch
        .wait_for(Duration::from_secs(10), good_reading)
        .expect("first reading");
    thread::sleep(Duration::from_millis(500));
    let went = unix_now();
    *status.lock().unwrap() = on_battery.to_string();
    thread::sleep(Duration::from_millis(2000));
    let back = unix_now();
    *status.lock().unwrap() = on_line.to_string();
    let (_, ended) = watch
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "alert" && v["reading"] == "on_battery" && v["phase"] == "ended"
        })
        .expect("on_battery ended");
    let alerts = watch.alerts_about(Duration::from_millis(600), "on_battery");
    assert_eq!(alerts.len(), 2, "one start, one end: {alerts:?}");
    assert_eq!(alerts[0]["phase"], "started");
    assert_eq!(alerts[0]["kind"], "state");
    assert_eq!(alerts[0]["alert_id"], ended["alert_id"]);
    let started = rfc3339_secs(&ended["started"]);
    let end = rfc3339_secs(&ended["ended"]);
    // Seen at the first poll after each change (0.25 s polls).
    assert!(
        started >= went && started - went < 0.6,
        "start {started} vs {went}"
    );
    assert!(end >= back && end - back < 0.6, "end {end} vs {back}");
    let duration = ended["duration_s"].as_f64().unwrap();
    assert!((duration - (end - started)).abs() < 1e-3);
    assert!((duration - 2.0).abs() < 0.6, "duration {duration}");
}

#[test]
fn apc_smart_values_and_unsolicited_alerts_between_and_inside_replies() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let status = Arc::new(AtomicU8::new(0x08));
    let (alert_tx, alert_rx) = mpsc::channel();
    let _server = serve_apc(&pty, Arc::clone(&status), alert_rx);
    // Slow polls: the on-battery alert must come from the '!' character, not from a poll.
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("apc-smart-ups"),
        &["--poll-interval", "5"],
    );
    let (_, first) = watch
        .wait_for(Duration::from_secs(10), good_reading)
        .expect("first reading");
    assert_eq!(value_of(&first, "load_percent"), Some(54.0));
    assert_eq!(
        value_of(&first, "battery_charge_percent"),
        Some(95.0),
        "'#' taken out of the reply"
    );
    assert_eq!(value_of(&first, "temperature_c"), Some(31.5));
    assert_eq!(value_of(&first, "battery_voltage"), Some(27.3));
    assert_eq!(
        value_of(&first, "input_frequency_hz"),
        None,
        "NA is no value"
    );
    assert_eq!(first["states"]["on_line"], true);
    // The '#' inside the reply opened a replace-battery alert.
    watch
        .seen_or_wait(Duration::from_secs(2), |v| {
            v["type"] == "alert" && v["reading"] == "replace_battery" && v["phase"] == "started"
        })
        .expect("replace battery alert from the character inside a reply");

    status.store(0x10, Ordering::SeqCst);
    let sent = Instant::now();
    alert_tx.send(b'!').unwrap();
    let (at, started) = watch
        .wait_for(Duration::from_secs(3), |v| {
            v["type"] == "alert" && v["reading"] == "on_battery"
        })
        .expect("on battery alert");
    assert_eq!(started["phase"], "started");
    assert!(
        at - sent < Duration::from_secs(1),
        "alert took {:?}",
        at - sent
    );
    status.store(0x08, Ordering::SeqCst);
    alert_tx.send(b'$').unwrap();
    let (_, ended) = watch
        .wait_for(Duration::from_secs(3), |v| {
            v["type"] == "alert" && v["reading"] == "on_battery" && v["phase"] == "ended"
        })
        .expect("back on line");
    assert_eq!(ended["alert_id"], started["alert_id"]);
    assert!(ended["duration_s"].as_f64().unwrap() < 2.0);
    let reading = watch
        .wait_for(Duration::from_secs(8), is_reading)
        .unwrap()
        .1;
    assert!(reading["counters"]["unsolicited_alerts"].as_u64().unwrap() >= 3);
}

#[test]
fn line_sensors_decode_key_values_and_nmea_and_skip_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let _server = serve_lines(
        &pty,
        vec![
            b"T=23.4,RH=41.0,CO2=812,LAeq=47.2\n".to_vec(),
            b"\x00\xffgarbage without equals\n".to_vec(),
            b"T=23.5;LAeq=46.0dB\r\n".to_vec(),
            // Half a line, then a resynchronising newline.
            b"T=2".to_vec(),
            b"\n".to_vec(),
        ],
        Duration::from_millis(40),
    );
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("ascii-key-value"),
        &["--poll-interval", "0.5"],
    );
    let (_, r) = watch
        .wait_for(Duration::from_secs(10), good_reading)
        .expect("reading");
    let t = value_of(&r, "temperature").unwrap();
    assert!(t == 23.4 || t == 23.5 || t == 2.0, "{t}");
    let noise = value_of(&r, "noise").unwrap();
    assert!(noise == 47.2 || noise == 46.0, "{noise}");
    let (_, r) = watch
        .wait_for(Duration::from_secs(10), |v| {
            is_reading(v) && v["counters"]["bad_replies"].as_u64() > Some(0)
        })
        .expect("garbage counted");
    assert!(r["counters"]["garbage_bytes"].as_u64().unwrap() > 0);
    // Noise above 45 dB(A) is a deviation.
    watch
        .seen_or_wait(Duration::from_secs(5), |v| {
            v["type"] == "alert" && v["reading"] == "noise" && v["breach"] == "high"
        })
        .expect("noise alert");
    drop(watch);
    drop(pty);

    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let _server = serve_lines(
        &pty,
        vec![
            b"$WIXDR,H,092,P,RH,C,014.1,C,TEMP,P,1.025,B,PRESS,C,009.9,C,DP*08\r\n".to_vec(),
            // A wrong checksum: counted, not used.
            b"$WIXDR,H,010,P,RH,C,099.0,C,TEMP*00\r\n".to_vec(),
        ],
        Duration::from_millis(40),
    );
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("nmea-weather"),
        &["--poll-interval", "0.5"],
    );
    let (_, r) = watch
        .wait_for(Duration::from_secs(10), |v| {
            good_reading(v) && v["counters"]["bad_replies"].as_u64() > Some(0)
        })
        .expect("reading");
    assert_eq!(value_of(&r, "humidity"), Some(92.0));
    assert_eq!(value_of(&r, "temperature"), Some(14.1));
}

/// Regression: a line over the bound was dropped only up to what had been read, and its
/// tail (after the drop, up to the newline) was then decoded as a line of its own: a
/// 700-byte line of `T=99.0,` gave a reading of 99. The whole line is garbage now,
/// counted; the good lines around it still read.
#[test]
fn the_tail_of_an_overlong_line_is_not_read_as_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let mut long = b"T=99.0,".repeat(100);
    long.push(b'\n');
    let _server = serve_lines(
        &pty,
        vec![b"T=23.4\n".to_vec(), long],
        Duration::from_millis(40),
    );
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("ascii-key-value"),
        &["--poll-interval", "0.3"],
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut readings = 0;
    while Instant::now() < deadline {
        let Some((_, r)) = watch.wait_for(Duration::from_secs(2), good_reading) else {
            continue;
        };
        readings += 1;
        assert_eq!(value_of(&r, "temperature"), Some(23.4), "{r}");
    }
    assert!(readings >= 3, "{readings} readings");
    let (_, r) = watch
        .wait_for(Duration::from_secs(5), |v| {
            is_reading(v) && v["counters"]["garbage_bytes"].as_u64() >= Some(700)
        })
        .expect("the long lines counted as garbage");
    assert!(r["counters"]["bad_replies"].as_u64().unwrap() > 0);
}

#[test]
fn temperature_deviation_opens_once_despite_hovering_and_closes_with_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    let sim = ModbusSim::new(1, &[(4, 1, 230), (4, 2, 450)]);
    let _server = sim.serve(&pty);
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("xy-md02"),
        &["--poll-interval", "0.2"],
    );
    watch
        .wait_for(Duration::from_secs(10), good_reading)
        .expect("first reading");
    // 23.0 → 28.0 (above 26) → hovering 25.8/26.2 (inside the 0.5 hysteresis) → 24.0.
    let rose = unix_now();
    for (value, hold_ms) in [(280, 800), (258, 400), (262, 400), (259, 400)] {
        sim.set(4, 1, value);
        thread::sleep(Duration::from_millis(hold_ms));
    }
    let fell = unix_now();
    sim.set(4, 1, 240);
    let (_, ended) = watch
        .wait_for(Duration::from_secs(5), |v| {
            v["type"] == "alert" && v["reading"] == "temperature" && v["phase"] == "ended"
        })
        .expect("end of the deviation");
    let alerts = watch.alerts_about(Duration::from_millis(400), "temperature");
    assert_eq!(alerts.len(), 2, "no flapping: {alerts:?}");
    assert_eq!(alerts[0]["breach"], "high");
    assert_eq!(alerts[0]["limit"], 26.0);
    assert_eq!(alerts[0]["value"], 28.0);
    assert_eq!(ended["extreme"], 28.0);
    let started = rfc3339_secs(&ended["started"]);
    let end = rfc3339_secs(&ended["ended"]);
    assert!(
        started >= rose && started - rose < 0.5,
        "{started} vs {rose}"
    );
    assert!(end >= fell && end - fell < 0.5, "{end} vs {fell}");
    assert!((ended["duration_s"].as_f64().unwrap() - (end - started)).abs() < 1e-3);
}

/// CPU time (user + system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn unplug_and_replug_resumes_quickly_without_leaks_or_busy_waiting() {
    const CYCLES: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    let sim = ModbusSim::new(1, &[(4, 1, 0x0131), (4, 2, 0x0222)]);
    let mut pty = PtyPair::start(dir.path());
    let mut server = sim.serve(&pty);
    let mut watch = Watch::start(
        &pty.dev,
        &profile_path("xy-md02"),
        &["--poll-interval", "0.2", "--reopen-max", "0.5"],
    );
    watch
        .wait_for(Duration::from_secs(10), good_reading)
        .expect("first reading");
    let pid = watch.pid();
    let fds_before = open_descriptors(pid);
    let mut resume_times = Vec::new();
    let mut absent_cpu = 0.0;
    let mut absent_wall = 0.0;
    let mut fds_absent = Vec::new();
    for _ in 0..CYCLES {
        pty.stop();
        server.join().unwrap();
        watch
            .wait_for(Duration::from_secs(5), |v| {
                v["type"] == "alert" && v["kind"] == "communication" && v["phase"] == "started"
            })
            .expect("communication lost");
        // The device is away: measure what the agent spends meanwhile.
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        thread::sleep(Duration::from_millis(1500));
        absent_cpu += cpu_seconds(pid) - cpu0;
        absent_wall += t0.elapsed().as_secs_f64();
        fds_absent.push(open_descriptors(pid));

        pty = PtyPair::start(dir.path());
        server = sim.serve(&pty);
        let plugged = Instant::now();
        let (at, _) = watch
            .wait_for(Duration::from_secs(5), |v| {
                v["type"] == "alert" && v["kind"] == "communication" && v["phase"] == "ended"
            })
            .expect("communication restored");
        resume_times.push(at - plugged);
        watch
            .wait_for(Duration::from_secs(5), good_reading)
            .expect("readings resume");
    }
    let fds_after = open_descriptors(pid);
    let worst = resume_times.iter().max().unwrap();
    let cpu_share = absent_cpu / absent_wall;
    println!(
        "unplug/replug x{CYCLES}: resume worst {worst:?}, mean {:?}; CPU while absent {:.3}% ({absent_cpu:.2} s in {absent_wall:.1} s); fds before {fds_before}, while absent {fds_absent:?}, after {fds_after}",
        resume_times.iter().sum::<Duration>() / CYCLES as u32,
        cpu_share * 100.0
    );
    // Reopen backoff is capped at 0.5 s here, so a replug is noticed within about that plus a poll.
    assert!(*worst < Duration::from_secs(2), "resume took {worst:?}");
    assert!(
        fds_after <= fds_before,
        "descriptor leak: {fds_before} -> {fds_after}"
    );
    assert!(
        fds_absent.iter().all(|&n| n < fds_before),
        "the port is closed while absent: {fds_absent:?} vs {fds_before}"
    );
    // Near idle: a busy loop would be 100 %.
    assert!(
        cpu_share < 0.02,
        "CPU while the device is absent: {:.2}%",
        cpu_share * 100.0
    );
}

#[test]
fn generic_modbus_map_reads_32_bit_swapped_words_and_floats() {
    let dir = tempfile::tempdir().unwrap();
    let pty = PtyPair::start(dir.path());
    // energy: u32 123456789 (0x075BCD15) with the low word first ("big_swap"), ×0.01 kWh;
    // power factor: f32 0.95 (0x3F733333), big endian, in input registers 120-121.
    let sim = ModbusSim::new(
        7,
        &[
            (3, 100, 0xCD15),
            (3, 101, 0x075B),
            (4, 120, 0x3F73),
            (4, 121, 0x3333),
        ],
    );
    let _server = sim.serve(&pty);
    let (ok, out) = probe(&pty.dev, &profile_path("generic-modbus"));
    assert!(ok, "{out}");
    assert!(out.contains("energy = 1234567.89 kWh"), "{out}");
    let pf: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("power_factor = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((pf - 0.95).abs() < 1e-6, "{pf}");
    // Two requests, one per function, each for both registers of its 32-bit value.
    let requests = sim.requests.lock().unwrap().clone();
    assert_eq!(requests[0][..6], [7, 3, 0, 100, 0, 2]);
    assert_eq!(requests[1][..6], [7, 4, 0, 120, 0, 2]);
}
