//! The APC "Smart" UPS protocol (NUT `apcsmart`), 2400 8N1: the status byte of `Q` and the
//! unsolicited alert characters a UPS sends at any time, even between a command and its reply.
//! Pure, no panics (fuzz target `apc_smart`).

use serde::Serialize;

/// The status byte answered to `Q` (two hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApcStatus {
    pub calibrating: bool,
    pub trim: bool,
    pub boost: bool,
    pub on_line: bool,
    pub on_battery: bool,
    pub overload: bool,
    pub battery_low: bool,
    pub replace_battery: bool,
}

/// Decodes the reply to `Q`, e.g. `08\r\n` (on line).
pub fn parse_status(reply: &[u8]) -> Option<ApcStatus> {
    let text = std::str::from_utf8(reply).ok()?.trim();
    if text.len() != 2 {
        return None;
    }
    let b = u8::from_str_radix(text, 16).ok()?;
    Some(ApcStatus {
        calibrating: b & 0x01 != 0,
        trim: b & 0x02 != 0,
        boost: b & 0x04 != 0,
        on_line: b & 0x08 != 0,
        on_battery: b & 0x10 != 0,
        overload: b & 0x20 != 0,
        battery_low: b & 0x40 != 0,
        replace_battery: b & 0x80 != 0,
    })
}

/// An unsolicited alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApcAlert {
    OnBattery,
    BackOnLine,
    BatteryLow,
    BatteryLowCleared,
    ReplaceBattery,
    Overload,
    OverloadCleared,
}

/// The alert an unsolicited character means, if any.
pub fn alert(byte: u8) -> Option<ApcAlert> {
    Some(match byte {
        b'!' => ApcAlert::OnBattery,
        b'$' => ApcAlert::BackOnLine,
        b'%' => ApcAlert::BatteryLow,
        b'+' => ApcAlert::BatteryLowCleared,
        b'#' => ApcAlert::ReplaceBattery,
        b'?' => ApcAlert::Overload,
        b'=' => ApcAlert::OverloadCleared,
        _ => return None,
    })
}

/// Separates alert characters from a reply read off the line: the alerts in order, and the
/// reply bytes without them.
pub fn split_alerts(bytes: &[u8]) -> (Vec<ApcAlert>, Vec<u8>) {
    let mut alerts = Vec::new();
    let mut rest = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match alert(b) {
            Some(a) => alerts.push(a),
            None => rest.push(b),
        }
    }
    (alerts, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits() {
        let s = parse_status(b"08\r\n").unwrap();
        assert!(s.on_line && !s.on_battery);
        let s = parse_status(b"50\r\n").unwrap();
        assert!(s.on_battery && s.battery_low && !s.on_line);
        assert_eq!(parse_status(b"ZZ\r\n"), None);
        assert_eq!(parse_status(b"0\r\n"), None);
    }

    #[test]
    fn alerts_arrive_inside_replies() {
        // The UPS went on battery while answering `B` (battery voltage).
        let (alerts, reply) = split_alerts(b"27!.45\r\n");
        assert_eq!(alerts, vec![ApcAlert::OnBattery]);
        assert_eq!(reply, b"27.45\r\n");
        assert_eq!(alert(b'$'), Some(ApcAlert::BackOnLine));
        assert_eq!(alert(b'A'), None);
    }
}
