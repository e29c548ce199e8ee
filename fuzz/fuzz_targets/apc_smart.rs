//! The APC Smart decoders on arbitrary serial-line bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teledge::sensors::apc;

fuzz_target!(|data: &[u8]| {
    let (_, rest) = apc::split_alerts(data);
    let _ = apc::parse_status(&rest);
    let _ = apc::parse_status(data);
});
