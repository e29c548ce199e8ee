//! Line-based ASCII sensors: `key=value` lists (microcontroller bridges, sound-level meters)
//! and NMEA-0183 style sentences with their XOR checksum.
//!
//! Grammar of a `key=value` line: pairs separated by `,`, `;` or spaces; values are numbers
//! with an optional unit suffix (`47.2dB`, `23.4C`), kept raw when not numeric; an optional
//! `*HH` suffix is an XOR checksum as in NMEA. CR, LF and CRLF all end a line. Lines are
//! bounded ([`MAX_LINE`]); a longer one is an error and the reader resynchronises on the next
//! line end. Pure, no panics (fuzz target `ascii_line`).

use serde::Serialize;

/// Longest line accepted (NMEA allows 82 bytes; devices exceed it, gpsd allows 102).
pub const MAX_LINE: usize = 256;

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("line is not ASCII text")]
    NotText,
    #[error("checksum mismatch: line says {stated:02X}, computed {computed:02X}")]
    Checksum { stated: u8, computed: u8 },
    #[error("malformed checksum suffix")]
    BadChecksum,
    #[error("no key=value pair in the line")]
    Empty,
}

/// One value of a line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    pub key: String,
    /// The number, when the value is numeric (unit suffix stripped).
    pub value: Option<f64>,
    /// The value as written.
    pub raw: String,
}

/// An NMEA sentence: talker+type (`WIXDR`) and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sentence {
    pub kind: String,
    pub fields: Vec<String>,
}

fn text(line: &[u8]) -> Result<&str, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    let s = std::str::from_utf8(line).map_err(|_| LineError::NotText)?;
    if !s.is_ascii() {
        return Err(LineError::NotText);
    }
    Ok(s.trim_end_matches(['\r', '\n']))
}

/// Splits off and checks a `*HH` checksum over `body` (XOR of its bytes).
fn checked(s: &str) -> Result<&str, LineError> {
    let Some((body, sum)) = s.rsplit_once('*') else {
        return Ok(s);
    };
    let stated = (sum.len() == 2)
        .then(|| u8::from_str_radix(sum, 16).ok())
        .flatten()
        .ok_or(LineError::BadChecksum)?;
    let computed = body
        .trim_start_matches('$')
        .bytes()
        .fold(0u8, |acc, b| acc ^ b);
    if stated != computed {
        return Err(LineError::Checksum { stated, computed });
    }
    Ok(body)
}

/// Decodes an NMEA-style sentence `$TTSSS,f1,f2,...*HH`.
pub fn parse_nmea(line: &[u8]) -> Result<Sentence, LineError> {
    let s = text(line)?;
    let s = s.strip_prefix('$').ok_or(LineError::Empty)?;
    let body = checked(s)?;
    let mut parts = body.split(',');
    let kind = parts.next().unwrap_or("").to_owned();
    if kind.is_empty() {
        return Err(LineError::Empty);
    }
    Ok(Sentence {
        kind,
        fields: parts.map(str::to_owned).collect(),
    })
}

/// Decodes a `key=value` line.
pub fn parse_key_values(line: &[u8]) -> Result<Vec<Field>, LineError> {
    let s = checked(text(line)?)?;
    let fields: Vec<Field> = s
        .split([',', ';', ' ', '\t'])
        .filter_map(|pair| {
            let (key, raw) = pair.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            let raw = raw.trim();
            Some(Field {
                key: key.to_owned(),
                value: leading_number(raw),
                raw: raw.to_owned(),
            })
        })
        .collect();
    if fields.is_empty() {
        return Err(LineError::Empty);
    }
    Ok(fields)
}

/// The number at the start of a value, before any unit suffix (`47.2dB` → 47.2).
fn leading_number(raw: &str) -> Option<f64> {
    let end = raw
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '-' || *c == '+'))))
        .map_or(raw.len(), |(i, _)| i);
    raw[..end].parse().ok().filter(|v: &f64| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_xdr_sentence() {
        let s = parse_nmea(b"$WIXDR,H,092,P,RH,C,014.1,C,TEMP,P,1.025,B,PRESS,C,009.9,C,DP*08\r\n")
            .unwrap();
        assert_eq!(s.kind, "WIXDR");
        assert_eq!(s.fields[1], "092");
        assert_eq!(s.fields[5], "014.1");
        let bad = parse_nmea(b"$WIXDR,H,093,P,RH*08\r\n");
        assert!(matches!(bad, Err(LineError::Checksum { .. })));
    }

    #[test]
    fn decodes_key_values_with_units_and_raw_values() {
        let f = parse_key_values(b"T=23.4,RH=41.0;CO2=812 LAeq=47.2dB state=ok\n").unwrap();
        let get = |k: &str| f.iter().find(|x| x.key == k).unwrap().clone();
        assert_eq!(get("T").value, Some(23.4));
        assert_eq!(get("CO2").value, Some(812.0));
        assert_eq!(get("LAeq").value, Some(47.2));
        assert_eq!(get("LAeq").raw, "47.2dB");
        assert_eq!(get("state").value, None);
        assert_eq!(
            parse_key_values(b"T=-20.5\r").unwrap()[0].value,
            Some(-20.5)
        );
    }

    #[test]
    fn garbage_and_long_lines_are_refused() {
        assert_eq!(parse_key_values(b"\xff\xfe=1"), Err(LineError::NotText));
        assert_eq!(parse_key_values(&[b'a'; 300]), Err(LineError::TooLong));
        assert_eq!(parse_key_values(b"no pairs here"), Err(LineError::Empty));
        assert_eq!(parse_key_values(b"T=1*ZZ"), Err(LineError::BadChecksum));
    }
}
