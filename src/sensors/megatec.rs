//! The Megatec "Q1" UPS protocol (NUT `blazer_ser`/`nutdrv_qx protocol=megatec`), 2400 8N1.
//!
//! `Q1\r` is answered by `(MMM.M NNN.N PPP.P QQQ RR.R S.SS TT.T b7b6b5b4b3b2b1b0\r`: input,
//! input-fault and output voltage, load %, input frequency, battery voltage, temperature and
//! eight status bits. A field the UPS does not measure is filled with `@`; a command the UPS
//! does not support is echoed back. Parsing splits on whitespace (firmware varies the widths)
//! and checks every field, so line noise is an error, never a reading. Pure: no I/O, no panics
//! on any input (fuzz target `megatec_q1`).

use serde::Serialize;

/// Why a reply is not a Q1 status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Q1Error {
    #[error("the UPS echoed the command: Q1 not supported")]
    Echo,
    #[error("reply does not start with '('")]
    NoStart,
    #[error("reply has {0} fields, 8 expected")]
    FieldCount(usize),
    #[error("field {0} is not a number")]
    BadNumber(usize),
    #[error("status field is not eight '0'/'1' characters")]
    BadStatus,
}

/// The eight status bits, b7 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Q1Flags {
    /// b7: the utility failed, the UPS runs on battery.
    pub on_battery: bool,
    /// b6: battery low.
    pub battery_low: bool,
    /// b5: bypass, boost or buck active.
    pub bypass_or_boost: bool,
    /// b4: the UPS failed.
    pub ups_fault: bool,
    /// b3: a standby or line-interactive UPS (false: on-line).
    pub standby_type: bool,
    /// b2: a self test is running.
    pub test_in_progress: bool,
    /// b1: shutdown active.
    pub shutdown_active: bool,
    /// b0: beeper on.
    pub beeper_on: bool,
}

/// A decoded Q1 status; `None` where the UPS sent `@`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Q1Status {
    pub input_voltage: Option<f64>,
    pub input_fault_voltage: Option<f64>,
    pub output_voltage: Option<f64>,
    pub load_percent: Option<f64>,
    pub input_frequency_hz: Option<f64>,
    /// Per cell on on-line units, total on standby units (as the UPS reports it).
    pub battery_voltage: Option<f64>,
    pub temperature_c: Option<f64>,
    pub flags: Q1Flags,
}

/// Decodes one reply line (with or without its trailing `\r`).
pub fn parse_q1(reply: &[u8]) -> Result<Q1Status, Q1Error> {
    let text = std::str::from_utf8(reply).map_err(|_| Q1Error::NoStart)?;
    let text = text.trim_end_matches(['\r', '\n']);
    if text.trim() == "Q1" {
        return Err(Q1Error::Echo);
    }
    let body = text.strip_prefix('(').ok_or(Q1Error::NoStart)?;
    let fields: Vec<&str> = body.split_ascii_whitespace().collect();
    if fields.len() != 8 {
        return Err(Q1Error::FieldCount(fields.len()));
    }
    let number = |i: usize| -> Result<Option<f64>, Q1Error> {
        let f = fields[i];
        // Unavailable: `@` in every digit position (`@@@.@`).
        if f.contains('@') && f.bytes().all(|b| b == b'@' || b == b'.') {
            return Ok(None);
        }
        if !f
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(Q1Error::BadNumber(i + 1));
        }
        f.parse::<f64>()
            .map(Some)
            .map_err(|_| Q1Error::BadNumber(i + 1))
    };
    let bits = fields[7].as_bytes();
    if bits.len() != 8 || !bits.iter().all(|b| *b == b'0' || *b == b'1') {
        return Err(Q1Error::BadStatus);
    }
    let bit = |i: usize| bits[i] == b'1';
    Ok(Q1Status {
        input_voltage: number(0)?,
        input_fault_voltage: number(1)?,
        output_voltage: number(2)?,
        load_percent: number(3)?,
        input_frequency_hz: number(4)?,
        battery_voltage: number(5)?,
        temperature_c: number(6)?,
        flags: Q1Flags {
            on_battery: bit(0),
            battery_low: bit(1),
            bypass_or_boost: bit(2),
            ups_fault: bit(3),
            standby_type: bit(4),
            test_in_progress: bit(5),
            shutdown_active: bit(6),
            beeper_on: bit(7),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_specification_example() {
        let s = parse_q1(b"(208.4 140.0 208.4 034 59.9 2.05 35.0 00110000\r").unwrap();
        assert_eq!(s.input_voltage, Some(208.4));
        assert_eq!(s.input_fault_voltage, Some(140.0));
        assert_eq!(s.output_voltage, Some(208.4));
        assert_eq!(s.load_percent, Some(34.0));
        assert_eq!(s.input_frequency_hz, Some(59.9));
        assert_eq!(s.battery_voltage, Some(2.05));
        assert_eq!(s.temperature_c, Some(35.0));
        assert!(!s.flags.on_battery && !s.flags.battery_low);
        assert!(s.flags.bypass_or_boost && s.flags.ups_fault);
        assert!(!s.flags.standby_type && !s.flags.beeper_on);
    }

    #[test]
    fn decodes_nut_example_and_unavailable_fields() {
        let s = parse_q1(b"(226.0 195.0 226.0 014 49.0 27.5 @@.@ 10001000\r").unwrap();
        assert_eq!(s.battery_voltage, Some(27.5));
        assert_eq!(s.temperature_c, None);
        assert!(s.flags.on_battery && s.flags.standby_type);
        assert!(!s.flags.ups_fault);
    }

    #[test]
    fn refuses_echo_noise_and_partial_lines() {
        assert_eq!(parse_q1(b"Q1\r"), Err(Q1Error::Echo));
        assert_eq!(parse_q1(b"\x00\xff(226.0"), Err(Q1Error::NoStart));
        assert_eq!(
            parse_q1(b"(226.0 195.0 226.0\r"),
            Err(Q1Error::FieldCount(3))
        );
        assert_eq!(
            parse_q1(b"(226.0 195.0 2x6.0 014 49.0 27.5 30.0 00001000\r"),
            Err(Q1Error::BadNumber(3))
        );
        assert_eq!(
            parse_q1(b"(226.0 195.0 226.0 014 49.0 27.5 30.0 0000100\r"),
            Err(Q1Error::BadStatus)
        );
    }
}
