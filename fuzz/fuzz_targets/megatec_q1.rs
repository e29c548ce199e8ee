//! The Megatec Q1 UPS reply decoder on arbitrary serial-line bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = teledge::sensors::megatec::parse_q1(data);
});
