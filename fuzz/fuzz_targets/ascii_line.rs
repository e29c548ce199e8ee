//! The ASCII line decoders (key=value, NMEA) on arbitrary serial-line bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::sensors::ascii;

fuzz_target!(|data: &[u8]| {
    let _ = ascii::parse_key_values(data);
    let _ = ascii::parse_nmea(data);
});
