//! Device profiles: one TOML file per device model in `firmware-config/`, so an installer adds
//! a device by configuration, not code. A raw serde mirror (unknown fields rejected) becomes a
//! validated [`Profile`]; every problem is reported with its path.
//!
//! ```toml
//! [device]
//! model = "XY-MD02 temperature/humidity transmitter"
//! protocol = "modbus_rtu"        # megatec_q1 | apc_smart | modbus_rtu | ascii_kv | nmea
//!
//! [serial]
//! baud = 9600
//! parity = "none"                # none | even | odd
//! stop_bits = 1
//! timeout_ms = 1000
//! poll_interval_s = 10
//! modbus_address = 1             # modbus_rtu only
//!
//! [[readings]]
//! name = "temperature"
//! unit = "°C"
//! register = 1                   # modbus_rtu: register address
//! function = 4                   # 3 holding, 4 input
//! data_type = "i16"              # i16 | u16 | i32 | u32 | f32
//! byte_order = "big"             # big | little | big_swap | little_swap (32-bit word order)
//! scale = 0.1
//! low = 20.0                     # alert limits, optional
//! high = 26.0
//! hysteresis = 0.5
//! ```
//!
//! For `ascii_kv` a reading names the `key` of the line; for `nmea` the sentence `kind` and
//! field `index`; for the UPS protocols the readings are fixed by the protocol and the profile
//! only sets limits.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config_problem::{read_file, toml_problem, ConfigErrors, ConfigProblem};
use crate::sensors::deviation::Limits;

/// The wire protocol of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    MegatecQ1,
    ApcSmart,
    ModbusRtu,
    AsciiKv,
    Nmea,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// Register data types of the generic Modbus map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    I16,
    U16,
    I32,
    U32,
    F32,
}

/// Byte and word order of multi-byte registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    Big,
    Little,
    BigSwap,
    LittleSwap,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    device: RawDevice,
    serial: RawSerial,
    #[serde(default)]
    readings: Vec<RawReading>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    model: String,
    protocol: Protocol,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    baud: u32,
    #[serde(default = "default_parity")]
    parity: Parity,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_poll")]
    poll_interval_s: u64,
    modbus_address: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReading {
    name: String,
    #[serde(default)]
    unit: String,
    register: Option<u16>,
    function: Option<u8>,
    data_type: Option<DataType>,
    byte_order: Option<ByteOrder>,
    #[serde(default = "default_scale")]
    scale: f64,
    key: Option<String>,
    kind: Option<String>,
    index: Option<usize>,
    low: Option<f64>,
    high: Option<f64>,
    #[serde(default)]
    hysteresis: f64,
}

fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_timeout() -> u64 {
    1000
}
fn default_poll() -> u64 {
    10
}
fn default_scale() -> f64 {
    1.0
}

/// Serial line settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSettings {
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: u8,
    pub timeout_ms: u64,
    pub poll_interval_s: u64,
    pub modbus_address: Option<u8>,
}

/// Where a reading comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Fixed by the UPS protocol; the reading's name picks the field.
    Protocol,
    Register {
        register: u16,
        function: u8,
        data_type: DataType,
        byte_order: ByteOrder,
    },
    Key(String),
    NmeaField {
        kind: String,
        index: usize,
    },
}

/// One reading of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: String,
    pub unit: String,
    pub source: Source,
    pub scale: f64,
    pub limits: Option<Limits>,
}

/// A validated device profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub model: String,
    pub protocol: Protocol,
    pub serial: SerialSettings,
    pub readings: Vec<Reading>,
}

/// Reads and validates a profile file.
pub fn load(path: &Path) -> Result<Profile, ConfigErrors> {
    parse(&read_file(path)?)
}

/// Validates profile text, reporting every problem.
pub fn parse(text: &str) -> Result<Profile, ConfigErrors> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| toml_problem(text, &e))?;
    let mut problems = Vec::new();
    let mut problem = |path: String, message: &str| {
        problems.push(ConfigProblem {
            path,
            message: message.to_owned(),
        })
    };
    let protocol = raw.device.protocol;
    if ![1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200].contains(&raw.serial.baud) {
        problem("serial.baud".into(), "not a standard serial rate");
    }
    if !(1..=2).contains(&raw.serial.stop_bits) {
        problem("serial.stop_bits".into(), "must be 1 or 2");
    }
    if raw.serial.timeout_ms == 0 || raw.serial.poll_interval_s == 0 {
        problem(
            "serial".into(),
            "timeout_ms and poll_interval_s must be positive",
        );
    }
    match (protocol, raw.serial.modbus_address) {
        (Protocol::ModbusRtu, None) => {
            problem("serial.modbus_address".into(), "required for modbus_rtu")
        }
        // 254 (0xFE) is the "any sensor" address Senseair-class sensors answer on a
        // point-to-point line; other addresses outside 1..=247 are reserved.
        (Protocol::ModbusRtu, Some(0 | 248..=253 | 255)) => problem(
            "serial.modbus_address".into(),
            "must be 1..=247, or 254 (any sensor)",
        ),
        (Protocol::ModbusRtu, Some(_)) | (_, None) => {}
        (_, Some(_)) => problem("serial.modbus_address".into(), "only for modbus_rtu"),
    }

    let mut readings = Vec::new();
    for (i, r) in raw.readings.iter().enumerate() {
        let at = |field: &str| format!("readings[{i}].{field}");
        if r.name.trim().is_empty() {
            problem(at("name"), "must not be empty");
        }
        if !r.scale.is_finite() || r.scale == 0.0 {
            problem(at("scale"), "must be a non-zero number");
        }
        if let (Some(l), Some(h)) = (r.low, r.high) {
            if l >= h {
                problem(at("low"), "must be below high");
            }
        }
        if r.hysteresis < 0.0 {
            problem(at("hysteresis"), "must not be negative");
        }
        let source = match protocol {
            Protocol::MegatecQ1 | Protocol::ApcSmart => Some(Source::Protocol),
            Protocol::ModbusRtu => match (r.register, r.function, r.data_type) {
                (Some(register), Some(function @ (3 | 4)), Some(data_type)) => {
                    Some(Source::Register {
                        register,
                        function,
                        data_type,
                        byte_order: r.byte_order.unwrap_or(ByteOrder::Big),
                    })
                }
                (_, Some(_), _) => {
                    problem(at("function"), "must be 3 (holding) or 4 (input)");
                    None
                }
                _ => {
                    problem(
                        at("register"),
                        "register, function and data_type are required",
                    );
                    None
                }
            },
            Protocol::AsciiKv => match &r.key {
                Some(k) => Some(Source::Key(k.clone())),
                None => {
                    problem(at("key"), "required for ascii_kv");
                    None
                }
            },
            Protocol::Nmea => match (&r.kind, r.index) {
                (Some(kind), Some(index)) => Some(Source::NmeaField {
                    kind: kind.clone(),
                    index,
                }),
                _ => {
                    problem(at("kind"), "kind and index are required for nmea");
                    None
                }
            },
        };
        if let Some(source) = source {
            let limits = (r.low.is_some() || r.high.is_some()).then_some(Limits {
                low: r.low,
                high: r.high,
                hysteresis: r.hysteresis,
            });
            readings.push(Reading {
                name: r.name.clone(),
                unit: r.unit.clone(),
                source,
                scale: r.scale,
                limits,
            });
        }
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(Profile {
        model: raw.device.model,
        protocol,
        serial: SerialSettings {
            baud: raw.serial.baud,
            parity: raw.serial.parity,
            stop_bits: raw.serial.stop_bits,
            timeout_ms: raw.serial.timeout_ms,
            poll_interval_s: raw.serial.poll_interval_s,
            modbus_address: raw.serial.modbus_address,
        },
        readings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_profile_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-config");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let profile = load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!profile.readings.is_empty(), "{}", path.display());
                loaded += 1;
            }
        }
        assert!(loaded >= 6, "{loaded} profiles");
    }

    #[test]
    fn every_problem_is_listed() {
        let text = r#"
[device]
model = "x"
protocol = "modbus_rtu"
[serial]
baud = 1234
stop_bits = 3
[[readings]]
name = ""
function = 6
scale = 0
low = 30
high = 20
"#;
        let paths: Vec<String> = parse(text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|p| p.path)
            .collect();
        for expected in [
            "serial.baud",
            "serial.stop_bits",
            "serial.modbus_address",
            "readings[0].name",
            "readings[0].scale",
            "readings[0].low",
            "readings[0].function",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{expected} missing from {paths:?}"
            );
        }
    }
}

/// Decodes the registers of a reading (one for 16-bit types, two for 32-bit ones) into its
/// value, scale applied. `None` when too few registers were read.
pub fn decode_registers(
    registers: &[u16],
    data_type: DataType,
    byte_order: ByteOrder,
    scale: f64,
) -> Option<f64> {
    let raw = match data_type {
        DataType::I16 | DataType::U16 => {
            let r = *registers.first()?;
            let r = match byte_order {
                ByteOrder::Little | ByteOrder::LittleSwap => r.swap_bytes(),
                ByteOrder::Big | ByteOrder::BigSwap => r,
            };
            match data_type {
                DataType::I16 => f64::from(r as i16),
                _ => f64::from(r),
            }
        }
        DataType::I32 | DataType::U32 | DataType::F32 => {
            let (hi, lo) = (*registers.first()?, *registers.get(1)?);
            // Word order first, then byte order within the 32-bit value.
            let (hi, lo) = match byte_order {
                ByteOrder::BigSwap | ByteOrder::LittleSwap => (lo, hi),
                ByteOrder::Big | ByteOrder::Little => (hi, lo),
            };
            let bits = (u32::from(hi) << 16) | u32::from(lo);
            let bits = match byte_order {
                ByteOrder::Little | ByteOrder::LittleSwap => bits.swap_bytes(),
                ByteOrder::Big | ByteOrder::BigSwap => bits,
            };
            match data_type {
                DataType::I32 => f64::from(bits as i32),
                DataType::U32 => f64::from(bits),
                // The float's shortest decimal form: 0.95f32 is 0.95, not 0.949999988079071.
                _ => {
                    let f = f32::from_bits(bits);
                    if !f.is_finite() {
                        return None;
                    }
                    let value = f.to_string().parse::<f64>().ok()? * scale;
                    return value.is_finite().then(|| round_significant(value, 7));
                }
            }
        }
    };
    // An integer times the scale has exactly as many decimals as the scale itself: round to
    // them, so there is no float noise (1234567.89, not 1234567.8900000001).
    let scale_text = scale.to_string();
    let decimals = scale_text
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len().min(9)) as i32;
    let factor = 10f64.powi(decimals);
    let value = (raw * scale * factor).round() / factor;
    value.is_finite().then_some(value)
}

/// Rounds to `digits` significant digits.
fn round_significant(value: f64, digits: i32) -> f64 {
    if value == 0.0 {
        return 0.0;
    }
    let magnitude = value.abs().log10().floor() as i32;
    let factor = 10f64.powi(digits - 1 - magnitude);
    (value * factor).round() / factor
}

#[cfg(test)]
mod register_tests {
    use super::*;

    #[test]
    fn xy_md02_reference_values() {
        // 01 04 04 01 31 02 22 ...: 0x0131 = 30.5 °C, 0x0222 = 54.6 %RH.
        let t = decode_registers(&[0x0131], DataType::I16, ByteOrder::Big, 0.1).unwrap();
        assert!((t - 30.5).abs() < 1e-9);
        let rh = decode_registers(&[0x0222], DataType::U16, ByteOrder::Big, 0.1).unwrap();
        assert!((rh - 54.6).abs() < 1e-9);
        // Negative temperatures: 0xFF33 = -205 -> -20.5 °C; the ×100 lots: 0x0BEA = 30.50 °C.
        let cold = decode_registers(&[0xFF33], DataType::I16, ByteOrder::Big, 0.1).unwrap();
        assert!((cold + 20.5).abs() < 1e-9);
        let x100 = decode_registers(&[0x0BEA], DataType::I16, ByteOrder::Big, 0.01).unwrap();
        assert!((x100 - 30.5).abs() < 1e-9);
        // Senseair S8: 0x0388 = 904 ppm.
        assert_eq!(
            decode_registers(&[0x0388], DataType::U16, ByteOrder::Big, 1.0),
            Some(904.0)
        );
    }

    #[test]
    fn thirty_two_bit_orders() {
        // 123456789 = 0x075BCD15.
        let big = decode_registers(&[0x075B, 0xCD15], DataType::U32, ByteOrder::Big, 1.0);
        let swapped = decode_registers(&[0xCD15, 0x075B], DataType::U32, ByteOrder::BigSwap, 1.0);
        let little = decode_registers(&[0x15CD, 0x5B07], DataType::U32, ByteOrder::Little, 1.0);
        assert_eq!(big, Some(123_456_789.0));
        assert_eq!(swapped, big);
        assert_eq!(little, big);
        let f = decode_registers(&[0x3F80, 0x0000], DataType::F32, ByteOrder::Big, 1.0);
        assert_eq!(f, Some(1.0));
        assert_eq!(
            decode_registers(&[0x3F80], DataType::F32, ByteOrder::Big, 1.0),
            None
        );
        // Scaled integers carry the scale's decimals, no float noise; floats their shortest form.
        assert_eq!(
            decode_registers(&[0x075B, 0xCD15], DataType::U32, ByteOrder::Big, 0.01),
            Some(1_234_567.89)
        );
        assert_eq!(
            decode_registers(&[3], DataType::U16, ByteOrder::Big, 2.5),
            Some(7.5)
        );
        assert_eq!(
            decode_registers(&[0x3F73, 0x3333], DataType::F32, ByteOrder::Big, 1.0),
            Some(0.95)
        );
        // NaN is not a reading.
        assert_eq!(
            decode_registers(&[0x7FC0, 0x0000], DataType::F32, ByteOrder::Big, 1.0),
            None
        );
    }
}

/// Where profiles are looked up by name: installer overrides, then packaged profiles, then
/// the `firmware-config/` directory of a source checkout.
pub const PROFILE_DIRS: &[&str] = &[
    "/etc/teledge/firmware-config",
    "/usr/share/teledge/firmware-config",
    "firmware-config",
];

/// Finds a profile: a path to a TOML file, or a name (`xy-md02`) looked up in `dirs`.
pub fn resolve(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, String> {
    let direct = Path::new(name);
    if direct.is_file() {
        return Ok(direct.to_path_buf());
    }
    let file = if name.ends_with(".toml") {
        name.to_string()
    } else {
        format!("{name}.toml")
    };
    if !file.contains('/') {
        for dir in dirs {
            let candidate = dir.join(&file);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "no device profile {name:?} (looked for {file} in {})",
        searched.join(", ")
    ))
}

/// The default profile directories as paths.
pub fn default_dirs() -> Vec<PathBuf> {
    PROFILE_DIRS.iter().map(PathBuf::from).collect()
}
