//! Damaged input: every fixture truncated at many offsets and with bytes flipped is read
//! without a panic or a hang, and a truncated file reports where it was cut.

use teledge::replay::ReplaySettings;
use teledge::sources::capture_file::CaptureError;

use crate::support::*;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn truncated_fixtures_yield_a_clear_error_and_no_panic() {
    for name in ALL_CAPTURES {
        let bytes = data(name);
        let cuts = 40.min(bytes.len());
        for i in 1..cuts {
            let cut = bytes.len() * i / cuts;
            let (_, summary, result) = replay_bytes(&bytes[..cut], ReplaySettings::default());
            match result {
                Err(CaptureError::Truncated { frame, .. }) => {
                    assert_eq!(frame, summary.decode.frames + 1, "{name} cut at {cut}")
                }
                // A cut on a record boundary is a shorter, valid file.
                Ok(_) => {}
                Err(e) => panic!("{name} cut at {cut}: unexpected {e}"),
            }
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for name in ALL_CAPTURES {
        let original = data(name);
        let rounds = if original.len() > 200_000 { 15 } else { 60 };
        for _ in 0..rounds {
            let mut bytes = original.clone();
            let flips = 1 + rng.next() % 32;
            for _ in 0..flips {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (rng.next() % 8);
            }
            // Any result is fine; a panic or a hang is not.
            let _ = replay_bytes(&bytes, ReplaySettings::default());
        }
    }
}

#[test]
fn garbage_is_not_a_capture() {
    let (_, _, result) = replay_bytes(
        b"this is not a capture file at all",
        ReplaySettings::default(),
    );
    assert!(matches!(result, Err(CaptureError::NotACapture)));
    let (_, _, result) = replay_bytes(b"", ReplaySettings::default());
    assert!(matches!(result, Err(CaptureError::NotACapture)));
}
