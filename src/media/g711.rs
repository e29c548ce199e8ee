//! G.711 (ITU-T G.711, µ-law and A-law) to and from linear 16-bit samples, and the mix of a
//! call's two directions into one signal for live listen (WHEP carries one audio track).
//!
//! Pure functions, no state: the classic segment encoders (as in Sun's g711.c, public
//! domain), checked against the standard's reference points in the tests.

/// Which G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    /// µ-law, RTP payload type 0 (PCMU).
    Mu,
    /// A-law, RTP payload type 8 (PCMA).
    A,
}

impl Law {
    /// The law of an RTP payload type: only the static types 0 and 8 (RFC 3551).
    pub fn of_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Mu),
            8 => Some(Law::A),
            _ => None,
        }
    }

    /// The law of an SDP encoding name (`PCMU`, `PCMA`, any case).
    pub fn of_name(name: &str) -> Option<Law> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Law::Mu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Law::A)
        } else {
            None
        }
    }

    pub fn payload_type(self) -> u8 {
        match self {
            Law::Mu => 0,
            Law::A => 8,
        }
    }

    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Law::Mu => ulaw_to_linear(byte),
            Law::A => alaw_to_linear(byte),
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Law::Mu => linear_to_ulaw(sample),
            Law::A => linear_to_alaw(sample),
        }
    }
}

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

pub fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13 bits.
    let mut s = i32::from(sample) >> 3;
    let mask = if s >= 0 {
        0xD5
    } else {
        s = -s - 1;
        0x55
    };
    let s = s.min(0x0FFF);
    let byte = if s < 32 {
        (s >> 1) as u8
    } else {
        let segment = (31 - s.leading_zeros() as i32) - 4; // 1..=7
        ((segment << 4) | ((s >> segment) & 0x0F)) as u8
    };
    byte ^ mask
}

pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let segment = i32::from((a & 0x70) >> 4);
    let mut t = i32::from(a & 0x0F) << 4;
    t = match segment {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (segment - 1),
    };
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// Adds `other` into `into`, saturating: the two directions of a call heard together.
pub fn mix_into(into: &mut [i16], other: &[i16]) {
    for (a, b) in into.iter_mut().zip(other) {
        *a = a.saturating_add(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_reference_points() {
        // µ-law 0xFF and A-law 0xD5 are the standard's zero codes.
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        // Full scale.
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
    }

    #[test]
    fn every_code_survives_a_round_trip() {
        for law in [Law::Mu, Law::A] {
            for byte in 0..=255u8 {
                let linear = law.decode(byte);
                let back = law.encode(linear);
                // µ-law has two zeros (0x7F and 0xFF); both decode to 0.
                if law == Law::Mu && byte == 0x7F {
                    assert_eq!(back, 0xFF);
                    continue;
                }
                assert_eq!(back, byte, "{law:?} {byte:#04x} -> {linear}");
            }
        }
    }

    #[test]
    fn encoding_is_monotonic_and_error_is_small() {
        for law in [Law::Mu, Law::A] {
            let mut last = i16::MIN;
            for s in (-32768i32..=32767).step_by(7) {
                let decoded = law.decode(law.encode(s as i16));
                assert!(decoded >= last, "{law:?} not monotonic at {s}");
                last = decoded;
                // Quantisation error below 1/16 of the magnitude plus the finest step.
                let err = (i32::from(decoded) - s).abs();
                assert!(err <= s.abs() / 16 + 16, "{law:?} {s} -> {decoded}");
            }
        }
    }

    #[test]
    fn mixing_saturates() {
        let mut a = [30_000i16, -30_000, 5];
        mix_into(&mut a, &[10_000, -10_000, 6]);
        assert_eq!(a, [i16::MAX, i16::MIN, 11]);
    }
}
